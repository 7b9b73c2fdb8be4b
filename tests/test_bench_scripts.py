"""The GPU-only bench scripts that bench/gpu_check.sh runs after the benchmark, run through
here with a stand-in CuPy (tests/stand_in: NumPy arrays, kernels in the host emulation,
host-clock events) on tiny shapes: a script that fails would lose its part of a device
run, which this project gets rarely. What they print is checked for its parts; their
numbers mean nothing here."""
import json
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
    code = ("from convgpu.tools import bench; "
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
    code = ("from convgpu.tools import bench; from convgpu.tools.shapes import ConvShape; "
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


def test_bench_pool_and_gemm_stages_run():
    """convgpu bench's pooling and GEMM stages (gpu_check's gemm_pool_norm stage) on tiny
    problems: a non-square plane, every device implementation validated, then timed cold and
    batch; the GEMMs against the stand-in's matmul as the cuBLAS row."""
    code = ("from convgpu.tools import bench, shapes; "
            "t = bench.Timer(reps=2, flush_bytes=1024); "
            "rows = bench.bench_pool(t, [shapes.PoolShape('tiny', 2, 3, 9, 3, 2, 1, False, 11)])"
            " + bench.bench_gemm(t, [(64, 32, 16)]); "
            "[print(r.op, r.shape, r.impl, r.status, r.batch_ms is not None) for r in rows]")
    out = run_script("-c", code, sim=True)
    for op, impl in [("max_pool2d", "cuda:direct"), ("max_pool2d", "numba:direct"),
                     ("max_pool2d_backward", "cuda:gather unchecked"),
                     ("max_pool2d_backward", "cuda:tiled")]:
        assert f"{op} tiny: N2 C3 H9 W11 k3 s2 p1 {impl} ok True" in out, (op, impl, out)
    for impl in ("cublas", "cuda:gemm_tiled", "cuda:gemm_vec", "cuda:gemm_vec64"):
        assert f"gemm 64x32x16 {impl} ok True" in out, (impl, out)


def test_bench_run_on_the_device_path_writes_the_method_and_provenance(tmp_path):
    """bench.run's device path (convgpu bench --shape on a GPU) with the stand-in as the
    device: the JSON names the method, the missing baseline and why, the source hash."""
    out = tmp_path / "b.json"
    code = ("import json, convgpu.core.env as c; c.gpu_count = lambda: 1; "
            "from convgpu.tools import bench; "
            "bench.runner.ceilings = lambda t: {'copy_GBps': 1.0, 'fma_TFLOPs': 1.0, "
            "'sgemm_TFLOPs': 1.0}; "
            "bench.Timer.__init__.__defaults__ = (1, 2, 4096, 2, None); "
            f"d = bench.run(json_path={str(out)!r}, shape_specs=['conv:N=2,C=4,H=6,W=7,K=4,R=3,pad=1'], "
            "ops=['conv2d'], impl=['cuda:implicit_gemm'])")
    text = run_script("-c", code)
    assert "baseline: none (torch" in text and text.count("baseline:") == 1, text
    doc = json.loads(out.read_text())
    assert doc["method"]["cudnn_benchmark_limit"] == 0 and doc["method"]["timing"] == "cold"
    assert doc["baseline"]["name"] is None and "torch" in doc["baseline"]["why_not"]
    assert len(doc["environment"]["source_hash"]) == 64
    rows = [r for r in doc["results"] if r["impl"] == "cuda:implicit_gemm"]
    assert len(rows) == 1 and rows[0]["status"] == "ok" and rows[0]["batch_ms"] is not None
    assert rows[0]["vs_cudnn"] is None and "frac_copy_bw" in rows[0]["extra"]


def test_a_run_killed_mid_stage_keeps_the_shapes_it_measured(tmp_path):
    """gpu_check stops a benchmark stage at its time limit: the JSON written after every
    shape holds the shapes measured before the kill (here: the process ends hard in the
    second shape's timing)."""
    out = tmp_path / "b.json"
    code = ("import os, convgpu.core.env as c; c.gpu_count = lambda: 1; "
            "from convgpu.tools import bench; "
            "bench.runner.ceilings = lambda t: {'copy_GBps': 1.0, 'fma_TFLOPs': 1.0, "
            "'sgemm_TFLOPs': 1.0}; "
            "bench.Timer.__init__.__defaults__ = (1, 2, 4096, 2, None); "
            "calls = []; real = bench.Timer.time; "
            "bench.Timer.time = lambda self, fn: (calls.append(1), "
            "os._exit(3) if len(calls) == 4 else real(self, fn))[1]; "
            f"bench.run(json_path={str(out)!r}, shape_specs=['conv:N=1,C=2,H=5,K=2,R=3', "
            "'conv:N=1,C=2,H=6,K=2,R=3'], ops=['conv2d'], impl=['cuda:implicit_gemm'])")
    env = dict(os.environ, CONVGPU_CUDA_HOST="1",
               PYTHONPATH=os.pathsep.join([str(ROOT / "tests" / "stand_in"),
                                           os.environ.get("PYTHONPATH", "")]))
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 3, r.stdout[-2000:] + r.stderr[-2000:]
    rows = json.loads(out.read_text())["results"]
    # the filter matches implicit_gemm and its two TF32 versions: three timings a shape
    assert [(r["shape"].split(":")[0], r["status"]) for r in rows] == \
        [("user 3x3 C2 K2 H5", "ok")] * 3
