"""Compile tier for the CUDA C kernels: every .cu compiled through NVRTC (the low-level
cupy.cuda.nvrtc API, which needs no GPU) with exactly the options the runtime uses
(kernels/cuda/sources.py: ours plus what CuPy adds), for sm_80 and sm_90, every name expression
instantiated; ptxas' report (through NVRTC's --ptxas-options=-v) must show no spill bytes
and no stack frame for any kernel. Then the same for sm_90 with the NVRTC the lent GPUs run
(13.0), where three builds spill a measured or accounted-for amount (RUNTIME_SPILLS); and
nvcc -cubin for sm_90, no spills."""
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("cupy")
from cupy.cuda import nvrtc  # noqa: E402  (a Cython module: importorskip can't name it)

from convgpu.kernels.cuda import sources as _module  # noqa: E402

import ptxas_report  # noqa: E402  (tests/ptxas_report.py)


def _compile(file, arch):
    prog = nvrtc.createProgram(_module.source(file), file, [], [])
    for e in _module.NAME_EXPRESSIONS[file]:
        nvrtc.addNameExpression(prog, e)
    opts = list(_module.options()) + list(_module.RUNTIME_ADDED_OPTIONS) + \
        [f"-arch=sm_{arch}", "--ptxas-options=-v"]
    try:
        nvrtc.compileProgram(prog, opts)
    except Exception:
        pytest.fail(f"{file} sm_{arch}: NVRTC failed:\n{nvrtc.getProgramLog(prog)}")
    lowered = {e: nvrtc.getLoweredName(prog, e) for e in _module.NAME_EXPRESSIONS[file]}
    return nvrtc.getProgramLog(prog), lowered


def _report(log):
    return ptxas_report.report(log)


@pytest.mark.parametrize("arch", [80, 90])
@pytest.mark.parametrize("file", sorted(_module.NAME_EXPRESSIONS))
def test_cu_compiles_without_spills(file, arch):
    log, lowered = _compile(file, arch)
    rep = _report(log)
    for expr, mangled in lowered.items():
        assert mangled in rep, f"{expr}: no ptxas report (not instantiated?)"
        regs, stack, st, ld = rep[mangled]
        assert (stack, st, ld) == (0, 0, 0), \
            f"{file} {expr} sm_{arch}: {regs} registers, stack {stack} B, spills {st}/{ld} B"
        assert regs <= 255


# The NVRTC the lent GPUs run (their CuPy reports 13.0: bench/results/*_gemm_ab.log), which is
# not the one pip gives this machine (13.5 here): ptxas inside them allocates registers
# differently, so the spill check above says nothing certain about what ran there. `make test`
# installs this one into .venv/runtime-nvrtc (Makefile: RUNTIME_NVRTC) and the test below
# compiles every .cu for sm_90 (the lent GPUs' architecture) with it, in a subprocess.
RUNTIME_NVRTC_VERSION = [13, 0]
RUNTIME_NVRTC = Path(os.environ.get("CONVGPU_RUNTIME_NVRTC",
                                    Path(sys.prefix) / "runtime-nvrtc" / "nvidia" / "cu13" / "lib"))
# The builds that runtime spills, each measured or accounted for; anything else must be
# spill-free, and these must spill exactly this much (stack, stores, loads in bytes):
RUNTIME_SPILLS = {
    # gemm_vec's 128-row tile with both operands along k or both along m / n: 16 B reloaded
    # from L1 in the main loop. Measured (H100, 9bcca5b, bench/gemm_vec_ab.py): 41.3 TFLOP/s,
    # against 39.1 for e8f4431's spill-free build (threadIdx re-read every step instead)
    ("gemm.cu", "gemm_vec<false, false, false>"): (16, 16, 16),
    ("gemm.cu", "gemm_vec<true, true, false>"): (16, 16, 16),
    # the FP32 implicit-GEMM weight gradient: the build every device measurement so far ran
    # (0.46x cuDNN on ResNet conv1, e8f4431); not yet timed against a spill-free variant
    ("conv_implicit.cu", "conv2d_wgrad_implicit_gemm<float, false>"): (24, 20, 20),
}


@pytest.mark.parametrize("file", sorted(_module.NAME_EXPRESSIONS))
def test_cu_spills_under_the_runtime_nvrtc(file):
    if not (RUNTIME_NVRTC / "libnvrtc.so.13").exists():
        pytest.skip(f"no {RUNTIME_NVRTC}/libnvrtc.so.13: `make test` installs the lent GPUs' "
                    f"NVRTC there")
    r = subprocess.run([sys.executable, str(Path(__file__).with_name("runtime_nvrtc.py")),
                        str(RUNTIME_NVRTC), file, "90"], capture_output=True, text=True,
                       timeout=900)
    assert r.returncode == 0, r.stderr[-4000:]
    out = json.loads(r.stdout)
    assert out["version"] == RUNTIME_NVRTC_VERSION, out["version"]
    found = {}
    for expr, rep in out["kernels"].items():
        assert rep is not None, f"{expr}: no ptxas report (not instantiated?)"
        regs, stack, st, ld = rep
        assert regs <= 255, expr
        if (stack, st, ld) != (0, 0, 0) or (file, expr) in RUNTIME_SPILLS:
            found[(file, expr)] = (stack, st, ld)
    expected = {k: v for k, v in RUNTIME_SPILLS.items() if k[0] == file}
    assert found == expected, f"spills under NVRTC {out['version']}, sm_90: {found}"


NVCC = shutil.which("nvcc")


@pytest.mark.skipif(NVCC is None, reason="nvcc is not on this machine (NVRTC's report above "
                    "still covers every kernel)")
@pytest.mark.parametrize("file", sorted(_module.NAME_EXPRESSIONS))
def test_cu_compiles_without_spills_under_nvcc(file, tmp_path):
    """The same with nvcc -cubin -arch=sm_90 --resource-usage. NVRTC decides what runs, but
    the lent GPU's CUDA (13.0) may be older than the NVRTC here, and ptxas versions allocate
    registers differently (a kernel once took 206 registers under NVRTC 13.5 and spilled 284
    bytes under nvcc 13.0): a kernel must fit under both."""
    tu = tmp_path / "tu.cu"
    tu.write_text(f'#include "{file}"\n' + "".join(
        f"void* keep{i}() {{ return (void*)&{e}; }}\n"
        for i, e in enumerate(_module.NAME_EXPRESSIONS[file])))
    cmd = [NVCC, "-cubin", "-arch=sm_90", "-std=c++17", "-ftz=true",
           *(f"-I{d}" for d in _module.source_dirs()), "--resource-usage", str(tu), "-o", str(tmp_path / "tu.cubin")]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    report = r.stdout + r.stderr
    blocks = re.split(r"Function properties for ", report)[1:]
    assert len(blocks) >= len(_module.NAME_EXPRESSIONS[file]), report
    bad = [b.split()[0] + ": " + m.group(0) for b in blocks
           for m in [re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, "
                               r"(\d+) bytes spill loads", b)]
           if m and m.groups() != ("0", "0", "0")]
    assert not bad, "\n".join(bad)


def rounds_to_tf32(ptx, file):
    """tile::to_tf32's rounding for this file is in the PTX: cvt.rna (CONVGPU_TF32_ROUND 0,
    the default) in conv_implicit.cu; in gemm.cu, which sets mode 1, the same rounding in integer
    arithmetic (two mins and an add of half a TF32 ulp) and no cvt.rna."""
    integer = ("min.u32" in ptx and "min.s32" in ptx
               and re.search(r"add\.s32\s+%r\d+, %r\d+, 4096;", ptx) is not None)
    if file == "gemm.cu":
        return integer and "cvt.rna" not in ptx
    return "cvt.rna.tf32.f32" in ptx


def test_tf32_rounding_modes_compile():
    """Each CONVGPU_TF32_ROUND, given on the command line as bench/tf32_rounding.py builds
    them, overrides gemm.cu's own (1) and compiles: 0 to cvt.rna, 1 to the integer rounding
    (two mins and an add of half a TF32 ulp), 2 to neither."""
    for mode in (0, 1, 2):
        prog = nvrtc.createProgram(_module.source("gemm.cu"), "gemm.cu", [], [])
        nvrtc.addNameExpression(prog, "gemm_pipelined<false, true>")
        nvrtc.compileProgram(prog, list(_module.options()) + list(_module.RUNTIME_ADDED_OPTIONS)
                             + ["-arch=compute_90", f"-DCONVGPU_TF32_ROUND={mode}"])
        ptx = nvrtc.getPTX(prog)
        ptx = ptx.decode() if isinstance(ptx, bytes) else ptx
        assert "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32" in ptx
        assert ("cvt.rna" in ptx) == (mode == 0), mode
        integer = ("min.u32" in ptx and "min.s32" in ptx
                   and re.search(r"add\.s32\s+%r\d+, %r\d+, 4096;", ptx) is not None)
        assert integer == (mode == 1), mode


def test_tf32_kernels_use_tensor_core_mma():
    for file in ("gemm.cu", "conv_implicit.cu"):
        tf32 = [e for e in _module.NAME_EXPRESSIONS[file] if e.endswith("true>")]
        assert tf32, file
        prog = nvrtc.createProgram(_module.source(file), file, [], [])
        for e in tf32:
            nvrtc.addNameExpression(prog, e)
        nvrtc.compileProgram(prog, list(_module.options()) + list(_module.RUNTIME_ADDED_OPTIONS)
                             + ["-arch=compute_90"])
        ptx = nvrtc.getPTX(prog).decode() if isinstance(nvrtc.getPTX(prog), bytes) else nvrtc.getPTX(prog)
        assert "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32" in ptx, file
        assert rounds_to_tf32(ptx, file), file


def _ptx_entries(file, exprs):
    """{expression: its PTX entry's text} compiled for compute_90."""
    prog = nvrtc.createProgram(_module.source(file), file, [], [])
    for e in exprs:
        nvrtc.addNameExpression(prog, e)
    nvrtc.compileProgram(prog, list(_module.options()) + list(_module.RUNTIME_ADDED_OPTIONS)
                         + ["-arch=compute_90"])
    ptx = nvrtc.getPTX(prog)
    ptx = ptx.decode() if isinstance(ptx, bytes) else ptx
    entries = {}
    for e in exprs:
        low = nvrtc.getLoweredName(prog, e)
        start = ptx.index(f".entry {low}(")
        nxt = ptx.find(".entry ", start + 1)
        entries[e] = ptx[start:nxt if nxt > 0 else len(ptx)]
    return entries


def test_pipelined_kernels_copy_asynchronously_and_use_tensor_cores():
    """gemm_pipelined and conv2d_implicit_gemm_pipelined: cp.async copies (16-byte .cg where
    the operands allow, 4-byte .ca for gathers), one wait that leaves a slice in flight,
    mma.sync TF32 with operands rounded to nearest (tile::to_tf32), and no plain global loads
    of operands."""
    cases = {"gemm.cu": [e for e in _module.NAME_EXPRESSIONS["gemm.cu"] if "pipelined" in e],
             "conv_implicit.cu": [e for e in _module.NAME_EXPRESSIONS["conv_implicit.cu"]
                                  if "pipelined" in e]}
    for file, exprs in cases.items():
        assert exprs, file
        for e, body in _ptx_entries(file, exprs).items():
            assert "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32" in body, e
            assert rounds_to_tf32(body, file), e
            assert "cp.async.wait_group 1;" in body and "cp.async.commit_group;" in body, e
            # gemm: all 16-byte; forward <VA, VB>: 16-byte where VA or VB, 4-byte where not
            # both; the gradients: 4-byte gathers only
            if file == "gemm.cu":
                va = vb = True
            elif e.startswith("conv2d_implicit_gemm_pipelined<"):
                va, vb = (v.strip() == "true" for v in e[e.index("<") + 1:-1].split(",")[:2])
            else:
                va = vb = False
            assert ("cp.async.cg.shared.global" in body) == (va or vb), e
            assert ("cp.async.ca.shared.global" in body) == (not (va and vb)), e
            # operands arrive only through cp.async; the conv epilogue reads its 8 bias values
            assert len(re.findall(r"\bld\.global", body)) <= (8 if file == "conv_implicit.cu" else 0), e


def test_nhwc_half_convolutions_use_16_bit_mma_ldmatrix_and_cp_async():
    """conv2d_nhwc_{,wgrad_,dgrad_}implicit_gemm_mma16: the m16n8k16 mma.sync of their type
    (no TF32); the forward's operands K-major (ldmatrix .x4, no .trans), the weight
    gradient's MN-major (.x4.trans only), the input gradient's one of each; 16-byte cp.async
    copies exactly in the builds that take them (forward VEC, the gradients VA or VB), never
    4-byte ones; the forward's VEC build
    reads no operand by plain loads (its only 16-bit global loads: the epilogue's bias, once a
    column)."""
    exprs = _module.NAME_EXPRESSIONS["conv_nhwc16.cu"]
    assert len(exprs) == 20, exprs
    loads = {}
    for e, body in _ptx_entries("conv_nhwc16.cu", exprs).items():
        targs = [v.strip() for v in e[e.index("<") + 1:-1].split(",")]
        ab = "bf16" if targs[0] == "__nv_bfloat16" else "f16"
        assert f"mma.sync.aligned.m16n8k16.row.col.f32.{ab}.{ab}.f32" in body, e
        assert "tf32" not in body, e
        wgrad, dgrad = e.startswith("conv2d_nhwc_wgrad_"), e.startswith("conv2d_nhwc_dgrad_")
        assert ("ldmatrix.sync.aligned.m8n8.x4.shared.b16" in body) == (not wgrad), e
        assert ("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16" in body) == (wgrad or dgrad), e
        vec = "true" in targs[1:]
        assert ("cp.async.cg.shared.global" in body) == vec, e
        assert "cp.async.ca.shared.global" not in body, e
        if vec:
            assert "cp.async.wait_group 1;" in body, e
        loads[e] = len(re.findall(r"\bld\.global\.(?:nc\.)?[ub]16", body))
    for t in _module.HALF_NAMES:
        # 2 bias values for each of a thread's 8 column pairs
        assert loads[f"conv2d_nhwc_implicit_gemm_mma16<{t}, true>"] <= 16, loads
        assert loads[f"conv2d_nhwc_implicit_gemm_mma16<{t}, false>"] > 16, loads


def test_every_launcher_expression_is_declared():
    """The strings the launchers ask for must be among the compiled name expressions."""
    src = "".join(p.read_text() for d in _module.source_dirs() for p in sorted(Path(d).glob("*.py")))
    asked = set(re.findall(r'get_function\("(\w+\.cu)", f?"(\w+)<', src))
    assert len(asked) >= 26, asked          # every family's launches were read
    declared = {(f, e.split("<")[0]) for f, e in _module.all_name_expressions()}
    assert asked <= declared, asked - declared


def test_fma_ceiling_kernel_is_pure_fma():
    """The ceiling kernel's loop must compile to one fused multiply-add per chain step: 8
    chains x 16 unrolled steps, and no separate multiply or add left in the PTX loop."""
    prog = nvrtc.createProgram(_module.source("ceiling.cu"), "ceiling.cu", [], [])
    nvrtc.addNameExpression(prog, "fma_peak<float>")
    nvrtc.compileProgram(prog, list(_module.options()) + list(_module.RUNTIME_ADDED_OPTIONS)
                         + ["-arch=compute_90"])
    ptx = nvrtc.getPTX(prog)
    ptx = ptx.decode() if isinstance(ptx, bytes) else ptx
    body = ptx[ptx.index("fma_peak"):]
    assert len(re.findall(r"\bfma\.rn(\.ftz)?\.f32\b", body)) == 8 * 16
    # outside the loop: the 8 initial multiplies and the final sum (0 + 8 chains) only
    assert len(re.findall(r"\bmul(\.ftz)?\.f32\b", body)) == 8
    assert len(re.findall(r"\badd(\.ftz)?\.f32\b", body)) == 8


def test_half_kernels_use_16_bit_mma_and_ldmatrix():
    """gemm_mma16 (float16, bfloat16): the m16n8k16 mma.sync of its type (and no TF32 one),
    fragments through ldmatrix .x4 (K-major operand tiles) and .x4.trans (MN-major ones),
    the cp.async pipeline where VEC (16-byte .cg copies, a wait that leaves a slice in
    flight), element-wise 16-bit loads where not (more of them than the VEC build's, whose
    only 16-bit global loads are the epilogue's bias)."""
    exprs = [e for e in _module.NAME_EXPRESSIONS["gemm.cu"] if e.startswith("gemm_mma16<")]
    assert len(exprs) == 16, exprs
    loads = {}
    for e, body in _ptx_entries("gemm.cu", exprs).items():
        t, ta, tb, vec = (v.strip() for v in e[e.index("<") + 1:-1].split(","))
        ab = "bf16" if t == "__nv_bfloat16" else "f16"
        assert f"mma.sync.aligned.m16n8k16.row.col.f32.{ab}.{ab}.f32" in body, e
        assert "tf32" not in body, e
        plain = "ldmatrix.sync.aligned.m8n8.x4.shared.b16" in body
        trans = "ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16" in body
        # A is K-major unless TA, B K-major where TB: .trans exactly for the MN-major ones
        assert plain == (ta == "false" or tb == "true"), e
        assert trans == (ta == "true" or tb == "false"), e
        copies = "cp.async.cg.shared.global" in body or "cp.async.ca.shared.global" in body
        assert copies == (vec == "true"), e
        if vec == "true":
            assert "cp.async.cg.shared.global" in body and "cp.async.wait_group 1;" in body, e
        loads[(t, ta, tb, vec)] = len(re.findall(r"\bld\.global\.(?:nc\.)?[ub]16", body))
    for (t, ta, tb, vec), n in loads.items():
        if vec == "false":
            assert n > loads[(t, ta, tb, "true")], (t, ta, tb, n)


def test_half_convolutions_use_16_bit_mma_and_ldmatrix():
    """conv2d_{,dgrad_,wgrad_}implicit_gemm_mma16: the m16n8k16 mma.sync of their type (no
    TF32), ldmatrix .x4 for the K-major operand and .x4.trans for the gathered one; 16-byte
    cp.async copies exactly in the forward's VA builds (the gathers and the gradients' A tiles
    move element by element: cp.async copies 4 bytes at least)."""
    exprs = [e for e in _module.NAME_EXPRESSIONS["conv_implicit.cu"] if "_mma16<" in e]
    assert len(exprs) == 10, exprs
    for e, body in _ptx_entries("conv_implicit.cu", exprs).items():
        targs = [v.strip() for v in e[e.index("<") + 1:-1].split(",")]
        ab = "bf16" if targs[0] == "__nv_bfloat16" else "f16"
        assert f"mma.sync.aligned.m16n8k16.row.col.f32.{ab}.{ab}.f32" in body, e
        assert "tf32" not in body, e
        assert "ldmatrix.sync.aligned.m8n8.x4.shared.b16" in body, e
        assert "ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16" in body, e
        va = e.startswith("conv2d_implicit_gemm_mma16<") and targs[1] == "true"
        assert ("cp.async.cg.shared.global" in body) == va, e
        assert "cp.async.ca.shared.global" not in body, e
