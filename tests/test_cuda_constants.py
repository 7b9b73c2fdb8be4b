"""The constants a .cu and its launcher module both hold, compared: the launcher sizes its
grids and shared memory by its copy, the kernel indexes by its own, so a change to one side
alone launches the wrong shape. Read from the sources (`constexpr int NAME = literal` and
simple expressions of those), so this runs without a compiler."""
import re

import pytest

from convgpu.kernels.cuda import (ceiling, conv_direct, conv_nhwc16, depthwise, fft, launch,
                                  norm, pool, sources)


def constexprs(file):
    """{name: value} of the file's `constexpr int` declarations at namespace scope whose
    values are integer literals or arithmetic on names declared before them."""
    src = sources.source(file)
    values = {}
    for decl in re.findall(r"^\s*constexpr int ([^;(]+);", src, re.M):
        for part in decl.split(","):
            name, _, expr = part.partition("=")
            name, expr = name.strip(), expr.split("//")[0].strip()
            if re.fullmatch(r"[\w\s+\-*/()]+", expr):
                try:
                    values[name] = int(eval(expr, {"__builtins__": {}}, dict(values)))
                except NameError:
                    continue
    return values


# (file, C++ name, launcher module, Python name)
PAIRS = [
    ("conv_direct.cu", "KT", conv_direct, "DIRECT_KT"),
    ("conv_direct.cu", "TP", conv_direct, "DIRECT_TP"),
    ("conv_direct.cu", "TQ", conv_direct, "DIRECT_TQ"),
    ("conv_direct.cu", "THREADS", conv_direct, "DIRECT_THREADS"),
    ("conv_direct.cu", "SMEM_BYTES", conv_direct, "DIRECT_SMEM"),
    ("depthwise.cu", "TP", depthwise, "DW_TP"),
    ("depthwise.cu", "TQ", depthwise, "DW_TQ"),
    ("depthwise.cu", "THREADS", depthwise, "DW_THREADS"),
    ("norm.cu", "NORM_THREADS", norm, "NORM_THREADS"),
    ("elementwise.cu", "EW_THREADS", launch, "THREADS"),
    ("fft.cu", "SP_TILE", fft, "SPECTRA_TILE"),
    ("fft.cu", "SP_ROWS", fft, "SPECTRA_ROWS"),
    ("ceiling.cu", "CHAINS", ceiling, "FMA_CHAINS"),
    ("ceiling.cu", "UNROLL", ceiling, "FMA_UNROLL"),
    ("pool.cu", "BAD_RANGE", pool, "POOL_BAD_RANGE"),
    ("pool.cu", "BAD_WINDOW", pool, "POOL_BAD_WINDOW"),
    ("common.cuh", "BM", launch, "TILE"),
    ("common.cuh", "BN", launch, "TILE"),
    ("common.cuh", "THREADS", launch, "GEMM_THREADS"),
    ("pipeline.cuh", "BK", launch, "PIPE_BK"),
    ("pipeline.cuh", "STAGES", launch, "PIPE_STAGES"),
    ("pipeline.cuh", "THREADS", launch, "PIPE_THREADS"),
    ("pipeline.cuh", "TABLE_BYTES", launch, "PIPE_TABLE_BYTES"),
    ("conv_nhwc16.cu", "ROW_TABLE_BYTES", conv_nhwc16, "ROW_TABLE_BYTES"),
]


@pytest.mark.parametrize("file, cname, module, pyname", PAIRS,
                         ids=[f"{f}:{c}" for f, c, _, _ in PAIRS])
def test_launcher_constant_matches_the_cu(file, cname, module, pyname):
    values = constexprs(file)
    assert cname in values, f"{file} declares no constexpr int {cname} (parsed {values})"
    assert values[cname] == getattr(module, pyname), \
        f"{file}: {cname} = {values[cname]}, {module.__name__}.{pyname} = {getattr(module, pyname)}"


def test_pipeline_shared_bytes_match_the_tile():
    """launch.pipe_shared_bytes against pipeline.cuh's row lengths: K-major rows of LDK
    floats, row-major rows of LDR, over STAGES stages."""
    v = constexprs("pipeline.cuh")
    for ka, kb, rows in ((True, False, 128), (True, False, 64), (False, True, 128)):
        tile = lambda kmajor, r: r * v["LDK"] if kmajor else v["BK"] * v["LDR"]
        want = 4 * v["STAGES"] * (tile(ka, rows) + tile(kb, 128))
        assert launch.pipe_shared_bytes(ka, kb, a_rows=rows) == want, (ka, kb, rows)
    assert launch.pipe_shared_bytes(True, False, table=True) == \
        launch.pipe_shared_bytes(True, False) + v["TABLE_BYTES"]


def test_the_parser_reads_what_it_compares():
    """A constexpr changed in the source is seen (the comparison above can fail)."""
    v = constexprs("conv_direct.cu")
    assert v["KT"] == 32 and v["SMEM_BYTES"] == 40960
    assert constexprs("pipeline.cuh")["LDK"] == constexprs("pipeline.cuh")["BK"] + 4
