"""The GPU-only bench scripts that bench/gpu_check.sh runs after the benchmark, run through
here with a stand-in CuPy (tests/stand_in: NumPy arrays, kernels in the host emulation,
host-clock events) on tiny shapes: a script that fails would lose its part of a device
run, which this project gets rarely. What they print is checked for its parts; their
numbers mean nothing here."""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_script(*args, sim=False):
    env = dict(os.environ, CONVGPU_CUDA_HOST="1", CONVGPU_POISON="1",
               **({"NUMBA_ENABLE_CUDASIM": "1"} if sim else {}),
               PYTHONPATH=os.pathsep.join([str(ROOT / "tests" / "stand_in"),
                                           os.environ.get("PYTHONPATH", "")]))
    r = subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r.stdout


def test_tf32_rounding_script_runs():
    out = run_script(ROOT / "bench" / "tf32_rounding.py", "--small", "--rounds", "1")
    assert out.count("exact: yes") == 3, out           # all three modes, bit-exact
    assert "gemm_pipelined 64^3" in out and "conv wgrad pipelined tiny 3x3" in out, out


def test_gemm_vec_ab_script_runs(tmp_path):
    """bench/gemm_vec_ab.py: the revisions' gemm.cu taken from git (where this checkout has
    them) and the working tree's, built, compared bitwise and timed on both tile heights."""
    out = run_script(ROOT / "bench" / "gemm_vec_ab.py", "--small", "--rounds", "1", "--reps",
                     "1", "--dir", tmp_path)
    for rows in (128, 64):
        assert f"working tree               gemm_vec<false, false, false, {rows}>" in out, out
        assert f"{rows}-row tile: outputs bitwise equal across versions: True" in out, out
    assert out.count("(ok)") == 2 and "FAILED" not in out, out


def test_stage_times_script_runs():
    out = run_script(ROOT / "bench" / "stage_times.py", "--small")
    for part in ("conv2d fft, tiny 5x5", "spectra_stack", "spectra_unstack",
                 "conv2d_backward_weight winograd_4x4, tiny 3x3", "winograd_grad_filter",
                 "conv2d_backward_weight im2col", "LeNet-5 training step", "optimiser"):
        assert part in out, (part, out)


def test_bench_norm_stage_runs():
    """convgpu bench's batch-norm stage (the GPU path: validation against the reference, then
    the timings) on a tiny suite, cuda in the host emulation and numba in the simulator."""
    code = ("from convgpu import bench; "
            "rows = bench.bench_norm(bench.Timer(reps=2, flush_bytes=1024), "
            "[('tiny', (3, 2, 5, 4)), ('tiny 1d', (6, 3))]); "
            "[print(r.op, r.shape, r.impl, r.status, r.gbps is not None) for r in rows]")
    out = run_script("-c", code, sim=True)
    for op in ("batch_norm ", "batch_norm_backward "):
        for shape in ("tiny: 3x2x5x4", "tiny 1d: 6x3"):
            for impl in ("cuda:split", "numba:two_pass"):
                assert f"{op}{shape} {impl} ok True" in out, (op, shape, impl, out)


def test_bench_conv_stages_run_a_grouped_shape():
    """convgpu bench's conv2d and conv2d_backward stages (the GPU path) on a tiny depthwise
    shape (groups = C), two cuda implementations, in the host emulation."""
    code = ("from convgpu import bench; from convgpu.shapes import ConvShape; "
            "suite = [ConvShape('tiny dw', 2, 4, 9, 8, 3, 1, 1, 4)]; "
            "t = bench.Timer(reps=2, flush_bytes=1024); "
            "f = ['cuda:depthwise', 'cuda:implicit_gemm']; "
            "rows = bench.bench_conv(t, suite, impl_filter=f) + "
            "bench.bench_conv_backward(t, suite, impl_filter=f); "
            "[print(r.op, r.shape, r.impl, r.status, r.batch_ms is not None, r.count) "
            "for r in rows]")
    out = run_script("-c", code)
    for op in ("conv2d ", "conv2d_backward_input ", "conv2d_backward_weight "):
        for impl in ("cuda:depthwise", "cuda:implicit_gemm"):
            assert f"{op}tiny dw: N2 C4 H9 K8 R3 s1 p1 g4 {impl} ok True 1" in out, \
                (op, impl, out)
