"""ptxas' resource report (NVRTC's --ptxas-options=-v log) parsed: used by the compile tier
in the test process and by tests/runtime_nvrtc.py in its own (it cannot import the test
module, which loads CuPy's NVRTC)."""
import re


def report(log):
    """{mangled kernel: (registers, stack bytes, spill stores, spill loads)}."""
    out = {}
    for block in re.split(r"Compiling entry function '", log)[1:]:
        name = block.split("'", 1)[0]
        m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads",
                      block)
        r = re.search(r"Used (\d+) registers", block)
        out[name] = (int(r.group(1)), int(m.group(1)), int(m.group(2)), int(m.group(3)))
    return out
