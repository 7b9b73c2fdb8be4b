"""Compile one .cu with a given libnvrtc (through ctypes) exactly as the runtime does, and print
ptxas' report as JSON: {"version": [major, minor], "kernels": {name expression: [registers,
stack bytes, spill stores, spill loads]}}. tests/test_compile_cuda.py runs it in a
subprocess with the lent GPUs' NVRTC (13.0; `make test` installs it into .venv/runtime-nvrtc):
a second libnvrtc.so.13 loaded into the test process would take the place of CuPy's for every
later test, as both have the same soname.

    python3 tests/runtime_nvrtc.py LIBDIR FILE ARCH
"""
import ctypes
import json
import os
import sys

import ptxas_report  # tests/ptxas_report.py (this script's folder is on sys.path)


def load(libdir):
    # NVRTC opens its builtins by soname: loaded first and global, that one is found
    builtins = [f for f in os.listdir(libdir)
                if f.startswith("libnvrtc-builtins.so.") and ".alt." not in f]
    ctypes.CDLL(os.path.join(libdir, builtins[0]), mode=ctypes.RTLD_GLOBAL)
    return ctypes.CDLL(os.path.join(libdir, "libnvrtc.so.13"))


def main():
    libdir, file, arch = sys.argv[1], sys.argv[2], int(sys.argv[3])
    from convgpu.kernels.cuda import sources as _module
    lib = load(libdir)
    major, minor = ctypes.c_int(), ctypes.c_int()
    lib.nvrtcVersion(ctypes.byref(major), ctypes.byref(minor))
    prog = ctypes.c_void_p()

    def check(rc, what):
        if rc != 0:
            n = ctypes.c_size_t()
            lib.nvrtcGetProgramLogSize(prog, ctypes.byref(n))
            log = ctypes.create_string_buffer(n.value)
            lib.nvrtcGetProgramLog(prog, log)
            sys.exit(f"{what} failed ({rc}):\n{log.value.decode(errors='replace')[-4000:]}")

    check(lib.nvrtcCreateProgram(ctypes.byref(prog), _module.source(file).encode(),
                                 file.encode(), 0, None, None), "nvrtcCreateProgram")
    exprs = _module.NAME_EXPRESSIONS[file]
    for e in exprs:
        check(lib.nvrtcAddNameExpression(prog, e.encode()), "nvrtcAddNameExpression")
    opts = list(_module.options()) + list(_module.RUNTIME_ADDED_OPTIONS) + \
        [f"-arch=sm_{arch}", "--ptxas-options=-v"]
    check(lib.nvrtcCompileProgram(prog, len(opts),
                                  (ctypes.c_char_p * len(opts))(*[o.encode() for o in opts])),
          "nvrtcCompileProgram")
    n = ctypes.c_size_t()
    lib.nvrtcGetProgramLogSize(prog, ctypes.byref(n))
    buf = ctypes.create_string_buffer(n.value)
    lib.nvrtcGetProgramLog(prog, buf)
    log = buf.value.decode(errors="replace")
    report = ptxas_report.report(log)
    kernels = {}
    for e in exprs:
        low = ctypes.c_char_p()
        check(lib.nvrtcGetLoweredName(prog, e.encode(), ctypes.byref(low)), "nvrtcGetLoweredName")
        rep = report.get(low.value.decode())
        kernels[e] = list(rep) if rep is not None else None
    print(json.dumps({"version": [major.value, minor.value], "kernels": kernels}))


if __name__ == "__main__":
    main()
