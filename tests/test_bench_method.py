"""The benchmark's method on the CPU: the cold timer counts host work (the stand-in CuPy's
events read the host clock), the order of flush / synchronise / events, cuDNN's settings,
count-weighted network totals as baseline / ours, time_op, tune, plots of what was measured,
and the command line's answers to mistakes."""
import importlib.util
import json
import math
import os
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
import pytest

from convgpu.tools import bench, shapes

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def stand_in():
    """tests/stand_in's CuPy as a module of its own name (not `cupy`, so nothing else in
    this process sees it)."""
    spec = importlib.util.spec_from_file_location(
        "stand_in_cupy", ROOT / "tests" / "stand_in" / "cupy" / "__init__.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_cold_timing_counts_slow_host_work(stand_in):
    t = bench.Timer(warmup=1, reps=3, flush_bytes=4096, xp=stand_in)
    fast = t.time(lambda: None)
    slow = t.time(lambda: time.sleep(0.02))
    assert slow["median_ms"] >= 20 > fast["median_ms"] * 4, (slow, fast)
    assert slow["q20_ms"] >= 20
    # batch: the per-call time of back-to-back calls shows the host work too
    assert slow["batch_ms"] >= 20 > fast["batch_ms"] * 4


class _Recorder:
    """A CuPy whose flush buffer, device and events log what the timer does, in order."""

    def __init__(self):
        self.log = []
        rec = self

        class Buf:
            def fill(self, v):
                rec.log.append("flush")

        class Event:
            def record(self):
                rec.log.append("record")
                self.t = len(rec.log)

            def synchronize(self):
                rec.log.append("event sync")

        class Device:
            def synchronize(self):
                rec.log.append("device sync")

        self.float32 = np.float32
        self.empty = lambda n, dtype=None: Buf()
        self.cuda = types.SimpleNamespace(Event=Event, Device=Device,
                                          get_elapsed_time=lambda a, b: float(b.t - a.t))


def test_cold_flushes_then_synchronises_before_the_first_event():
    xp = _Recorder()
    t = bench.Timer(reps=2, flush_bytes=64, xp=xp)
    t.cold(lambda: xp.log.append("call"))
    one = ["flush", "device sync", "record", "call", "record", "event sync"]
    assert xp.log == one * 2
    xp.log.clear()
    t.batched(lambda: xp.log.append("call"), k=3, spans=1)
    assert xp.log == ["device sync", "record", "call", "call", "call", "record", "event sync"]


def test_baseline_at_its_best(monkeypatch):
    torch = pytest.importorskip("torch")
    c = torch.backends.cudnn
    saved = (c.benchmark, c.benchmark_limit, c.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    from convgpu.tools.bench import baseline
    monkeypatch.setattr(baseline, "baseline_unavailable", lambda: None)
    try:
        c.benchmark_limit, c.allow_tf32 = 10, True
        assert baseline._torch() is torch
        assert (c.benchmark, c.benchmark_limit, c.allow_tf32) == (True, 0, False)
        assert torch.backends.cuda.matmul.allow_tf32 is False
        modes = {label: (tf32, b) for label, tf32, b in bench.CUDNN_MODES}
        assert modes == {"cudnn": (False, True), "cudnn_tf32": (True, True),
                         "torch_default": (True, False)}
        with bench.cudnn_mode(torch, True, False):
            assert (c.allow_tf32, c.benchmark, c.benchmark_limit) == (True, False, 0)
        assert (c.allow_tf32, c.benchmark) == (False, True)
    finally:
        c.benchmark, c.benchmark_limit, c.allow_tf32 = saved[:3]
        torch.backends.cuda.matmul.allow_tf32 = saved[3]


def test_no_cuda_torch_is_said_in_one_line():
    why = bench.baseline_unavailable()
    try:
        import torch
        has_cuda = torch.cuda.is_available()
    except Exception:
        has_cuda = False
    if has_cuda:
        assert why is None
    else:
        assert why and "\n" not in why and "torch" in why


def _row(op, shape, impl, ms, suite="net", count=1, status="ok"):
    return {"op": op, "shape": shape, "impl": impl, "status": status, "median_ms": ms,
            "suite": suite, "count": count, "dtype": "float32"}


def test_network_totals_weight_by_count_and_divide_baseline_by_ours():
    rows = [_row("conv2d", "a", "cudnn", 2.0, count=3), _row("conv2d", "a", "cuda:x", 1.0, count=3),
            _row("conv2d", "a", "cuda:y", 4.0, count=3),
            _row("conv2d", "b", "cudnn", 1.0), _row("conv2d", "b", "cuda:y", 2.0),
            _row("conv2d", "b", "cuda:x_tf32", 0.1),        # not an FP32 implementation
            _row("conv2d", "b", "cuda:z", 0.01, status="FAIL rel err 1e-1"),
            _row("conv2d", "b", "numba:fft", 0.5)]           # auto prefers cuda where it serves
    n = bench.network_totals(rows)["net conv2d"]
    # ours: 3 x 1.0 (best of a) + 1 x 2.0 = 5; cuDNN: 3 x 2.0 + 1.0 = 7
    assert (n["ours_ms"], n["baseline_ms"], n["convolutions"]) == (5.0, 7.0, 4)
    assert n["ratio"] == pytest.approx(7 / 5)
    assert n["layer_geomean"] == pytest.approx(math.sqrt(2.0 * 0.5))
    assert n["best"] == {"a": "cuda:x", "b": "cuda:y"}
    # a layer without our timing leaves the sum undefined, never a partial sum
    n = bench.network_totals(rows + [_row("conv2d", "c", "cudnn", 1.0)])["net conv2d"]
    assert n["ratio"] is None and n["missing"] == ["c"]


def test_headline_of_a_network_run():
    rows = []
    for op in ("conv2d", "conv2d_backward_input", "conv2d_backward_weight"):
        rows += [_row(op, "l1", "cudnn", 3.0, "resnet50", 2), _row(op, "l1", "cuda:a", 1.5, "resnet50", 2),
                 _row(op, "l2", "cudnn", 1.0, "resnet50", 1), _row(op, "l2", "cuda:a", 2.0, "resnet50", 1)]
    rows += [_row("gemm", "4096x4096x4096", "cublas", 2.0, None),
             _row("gemm", "4096x4096x4096", "cuda:gemm_vec", 2.5, None),
             _row("gemm", "4096x4096x4096", "cuda:gemm_tiled", 4.0, None)]
    doc = {"environment": {"commit": "abc1234", "source_hash": "f" * 64, "device": "X",
                           "time": "2026-12-06T00:00:00Z"},
           "method": bench.METHOD, "ceilings": {}, "results": rows}
    h = bench.headline(doc, "torch x on cuda: median epoch 0.090 s\n"
                            "convgpu cuda backend: median epoch 0.120 s\n")
    assert set(h["ratios"]) == set(bench.HEADLINE_KEYS)
    r = h["ratios"]
    # (2 x 3.0 + 1.0) / (2 x 1.5 + 2.0) = 7 / 5
    assert r["resnet50_fwd_fp32"] == r["resnet50_bwd_input_fp32"] == pytest.approx(1.4)
    assert r["resnet50_layers_geomean_fwd_fp32"] == pytest.approx(1.0)
    assert r["sgemm_4096"] == pytest.approx(0.8) and r["lenet_train_epoch"] == pytest.approx(0.75)
    assert r["vgg16_fwd_fp32"] is None and r["tf32_gemm_4096"] is None
    assert h["method"] == {"cudnn_benchmark_limit": 0, "timing": "cold"} and "note" not in h
    old = bench.headline(dict(doc, method=None))
    assert old["method"] == {"cudnn_benchmark_limit": 10, "timing": "flush-overlapped"}
    assert "first 10 algorithms" in old["note"]
    with pytest.raises(ValueError, match="CPU run"):
        bench.headline(dict(doc, device="cpu"))


def test_time_op_on_the_cpu_returns_json_rows():
    rows = bench.time_op("conv:N=2,C=4,H=7,W=9,K=6,R=3,S=3,stride=2,pad=1", ops=["conv2d"])
    ours = [r for r in rows if r["impl"].startswith("numpy:")]
    assert {r["impl"] for r in ours} == {"numpy:im2col", "numpy:fft"}
    for r in rows:
        assert r["status"] == "ok" and r["q20_ms"] <= r["median_ms"] <= r["q80_ms"]
        assert r["shape"].endswith("N2 C4 H7 K6 R3 s2 p1")
        json.dumps(r)
    pool = bench.time_op(shapes.parse_shape("pool:N=1,C=2,H=9,k=3,stride=2"))
    assert {r["op"] for r in pool} == {"max_pool2d"}
    with pytest.raises(TypeError, match="spec must be"):
        bench.time_op(42)
    with pytest.raises(ValueError, match="unknown ops"):
        bench.time_op("pool:N=1,C=2,H=9,k=3", ops=["conv3d"])
    with pytest.raises(ValueError, match="missing"):
        bench.time_op("conv:N=1")


def test_tune_calls_every_pass_of_every_layer_with_auto():
    calls = []

    def op(name):
        def f(*a, **kw):
            calls.append((name, kw["algo"], kw["stride"], kw["groups"]))
        return f

    ops = types.SimpleNamespace(conv2d=op("conv2d"),
                                conv2d_backward_input=op("conv2d_backward_input"),
                                conv2d_backward_weight=op("conv2d_backward_weight"))
    layers = [shapes.ConvShape("a", 1, 4, 6, 4, 3, 2, 1, 4), shapes.ConvShape("b", 1, 2, 5, 3, 1, 1, 0)]
    rows = bench.tune(layers, xp=np, ops=ops, progress=lambda *a: None)
    assert len(rows) == 6 and all(r["status"] == "ok" for r in rows)
    assert calls == [(p, "auto", s, g) for s, g in ((2, 4), (1, 1)) for p in bench.TUNE_PASSES]


def test_plot_leaves_out_what_was_not_measured(tmp_path):
    pytest.importorskip("matplotlib")
    env = {"device": None}
    nothing = {"environment": env, "results": [_row("max_pool2d", "p", "numpy:reference", 1.0)]}
    assert bench.plot(nothing, tmp_path / "a.png") == [] and not (tmp_path / "a.png").exists()
    ratios_only = {"environment": env, "results": [dict(_row("conv2d", "s", "numpy:fft", 1.0),
                                                        vs_cudnn=0.5)]}
    assert bench.plot(ratios_only, tmp_path / "b.png") == ["speed vs baseline"]
    roof = {"environment": env, "ceilings": {},
            "results": [dict(_row("conv2d", "s", "numpy:fft", 1.0), tflops=0.1, gbps=1.0)]}
    assert bench.plot(roof, tmp_path / "c.png") == ["roofline"]
    assert (tmp_path / "b.png").stat().st_size > 5000 and (tmp_path / "c.png").exists()


def test_cpu_run_without_torch_says_which_baseline_and_why(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)          # import torch raises
    lines = []
    doc = bench.run(shapes=["layer4 3x3 C512 K512 H7"], ops=["conv2d"], progress=lines.append)
    said = [l for l in lines if l.startswith("baseline:")]
    assert len(said) == 1 and "torch is not importable" in said[0], lines
    assert doc["baseline"]["name"] is None and doc["baseline"]["why_not"]
    assert all(r["vs_cudnn"] is None for r in doc["results"])


def _cli(*args):
    env = dict(os.environ)
    env.pop("NUMBA_ENABLE_CUDASIM", None)
    r = subprocess.run([sys.executable, "-m", "convgpu", *args], capture_output=True, text=True,
                       timeout=300, env=env, cwd=ROOT)
    assert "Traceback" not in r.stdout + r.stderr, r.stdout + r.stderr
    return r


@pytest.mark.parametrize("args, words", [
    (("tune", "--suite", "resnet"), "unknown suite 'resnet'"),
    (("tune",), "--suite"),
    (("bench", "--suite", "vgg16@0"), "positive integer"),
    (("bench", "--shape", "conv:N=32,C=64,H=56,K=64,R=3,Q=2"), "unknown key 'Q'"),
    (("bench", "--shape", "conv:N=32,C=64"), "missing H, K, R"),
    (("bench", "--suite", "vgg16", "--shape", "pool:N=1,C=1,H=4,k=2"), "not allowed with"),
])
def test_cli_mistakes_answer_in_one_line_with_exit_2(args, words):
    r = _cli(*args)
    assert r.returncode == 2 and words in r.stderr, r.stderr
    assert len([l for l in r.stderr.splitlines() if "error:" in l]) == 1


def test_cli_bench_gemm_on_a_cpu_says_why_and_prints_no_empty_table():
    from convgpu.tools.cli import gpu_count
    if gpu_count():
        pytest.skip("a GPU is visible")
    r = _cli("bench", "--ops", "gemm")
    assert r.returncode == 1
    assert "GEMMs are device kernels" in r.stdout and "cold ms" not in r.stdout, r.stdout


def test_cli_tune_without_a_gpu_says_so():
    from convgpu.tools.cli import gpu_count
    if gpu_count():
        pytest.skip("a GPU is visible")
    r = _cli("tune", "--suite", "resnet50")
    assert r.returncode == 1 and "no GPU visible" in r.stderr and len(r.stderr.splitlines()) == 1


def test_kernel_names_keeps_device_kernels_once_in_launch_order(monkeypatch):
    """What a cuDNN row records as the kernels it ran: the device events of one profiled
    call, each name once; a profiler that fails leaves None, never a failed row."""
    class Ev:
        def __init__(self, name, dev):
            self.name, self.device_type = name, dev

    class Prof:
        def __enter__(self):
            return self

        def __exit__(self, *a):
            return False

        def events(self):
            return [Ev("aten::conv2d", "DeviceType.CPU"), Ev("sm90_xmma_fprop", "DeviceType.CUDA"),
                    Ev("cudnn::winograd", "DeviceType.CUDA"), Ev("sm90_xmma_fprop", "DeviceType.CUDA")]

    profiler = types.SimpleNamespace(ProfilerActivity=types.SimpleNamespace(CUDA="cuda"),
                                     profile=lambda activities: Prof())
    monkeypatch.setitem(sys.modules, "torch.profiler", profiler)
    torch = types.SimpleNamespace(cuda=types.SimpleNamespace(synchronize=lambda: None))
    assert bench.kernel_names(torch, lambda: None) == ["sm90_xmma_fprop", "cudnn::winograd"]

    def broken(activities):
        raise RuntimeError("CUPTI unavailable")

    monkeypatch.setitem(sys.modules, "torch.profiler",
                        types.SimpleNamespace(ProfilerActivity=profiler.ProfilerActivity,
                                              profile=broken))
    assert bench.kernel_names(torch, lambda: None) is None
