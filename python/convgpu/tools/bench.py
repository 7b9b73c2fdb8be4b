"""`convgpu bench`: kernel timings against cuDNN / cuBLAS (through torch) on the layers of
real networks, and `time_op` for one problem of one's own.

The method (ARCHITECTURE, Benchmarks), the same for both sides:

- the baseline at its best: `torch.backends.cudnn.benchmark = True` with
  `benchmark_limit = 0` (every cuDNN algorithm tried, not the first 10 heuristics), TF32 off
  for the FP32 rows; cuDNN with TF32 allowed is the baseline of our TF32 rows; torch's
  out-of-the-box setting (TF32 on for convolutions, no benchmark) is its own column
  (`torch_default`). The kernels cuDNN ran are recorded (torch.profiler) in the row.
- two timings of each call, after warm-up: `cold` (the L2 flushed by rewriting a 256 MiB
  buffer, the device synchronised, then CUDA events around the one call, so the host's
  dispatch is inside the span) and `batch` (K calls back to back between two events, time
  per call: host work shows where it exceeds the GPU's). The ratios and the headline use
  `cold`; `median_ms`, `q20_ms`, `q80_ms` are cold, `batch_ms` the batch per-call time.
- every implementation is validated against the float64 reference before it is timed (a
  failing one is reported, never timed).
- a speed ratio is always the baseline's time / ours (above 1: we are faster): `vs_cudnn`
  (cold), `vs_cudnn_batch`; per network, the count-weighted sum of each layer's time, ours
  the best implementation per layer (what algo="auto" keeps), against cuDNN's.
- TFLOP/s counts 2*N*K*(C/g)*R*S*P*Q for conv; GB/s each input read once, each output
  written once; the machine's ceilings (copy bandwidth, our FP32 FMA rate, cuBLAS SGEMM and
  TF32 GEMM) are measured in the same run.
- each run records the commit and `source_hash` (convgpu.core.provenance).

    convgpu bench [--quick] [--suite NAME ...] [--shape SPEC ...] [--json PATH] [--plot PATH]
                  [--shapes S ...] [--ops OP ...] [--impl I ...]

Python: `convgpu.tools.bench.time_op("conv:N=32,C=64,H=56,K=64,R=3,pad=1")` returns the rows of
one problem (the same records as the JSON's `results`). Without a GPU the numpy backend is
timed with torch's CPU ops beside it (when torch is importable), and the run says so.
"""
from __future__ import annotations

import contextlib
import json
import math
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional

import numpy as np

from convgpu import reference
from convgpu.tools import shapes as SH
from convgpu.tools.check import tolerance
from convgpu.ops._registry import NotServed

# what a run under this method records in its JSON (`method`)
METHOD = {"cudnn_benchmark_limit": 0, "cudnn_benchmark": True, "fp32_rows_tf32": False,
          "timing": "cold", "cold": "L2 flushed, device synchronised, events around one call",
          "batch": "K calls back to back between two events, per call"}
# what runs before this method recorded none: torch's default benchmark_limit (10) and the
# flush enqueued before the events with no synchronise, so host dispatch overlapped it
OLD_METHOD = {"cudnn_benchmark_limit": 10, "cudnn_benchmark": True, "fp32_rows_tf32": False,
              "timing": "flush-overlapped"}
BATCH_CALLS = 10


def quantiles(times_ms: List[float]) -> Dict[str, float]:
    a = np.asarray(times_ms, dtype=np.float64)
    return {"median_ms": float(np.median(a)), "q20_ms": float(np.quantile(a, 0.2)),
            "q80_ms": float(np.quantile(a, 0.8))}


def conv_flops(N, C, K, R, S, P, Q, groups=1) -> int:
    return 2 * N * K * (C // groups) * R * S * P * Q


def conv_bytes(N, C, H, W, K, R, S, P, Q, groups, itemsize) -> int:
    return itemsize * (N * C * H * W + K * (C // groups) * R * S + N * K * P * Q)


def ratio(baseline_ms: float, ours_ms: float) -> float:
    """Speed relative to the baseline measured in the same run: above 1 is faster."""
    return baseline_ms / ours_ms


@dataclass
class Result:
    op: str
    shape: str
    impl: str
    dtype: str
    status: str
    median_ms: Optional[float] = None       # cold
    q20_ms: Optional[float] = None
    q80_ms: Optional[float] = None
    tflops: Optional[float] = None
    gbps: Optional[float] = None
    vs_cudnn: Optional[float] = None        # baseline cold time / ours (the baseline: extra)
    extra: dict = field(default_factory=dict)
    batch_ms: Optional[float] = None        # per call, K calls back to back
    vs_cudnn_batch: Optional[float] = None
    suite: Optional[str] = None             # the network (suite) the layer belongs to
    count: int = 1                          # how many times the network runs it


class Progress:
    """What `convgpu bench` shows while it runs. On a terminal: one progress bar (stage, items
    done of the stage, elapsed time, the current shape) redrawn in place, with each timing
    line printed above it. Elsewhere (a log file, CI): plain lines, one per item and timing."""

    def __init__(self, stream=None, width=30):
        self.stream = stream if stream is not None else sys.stdout
        isatty = getattr(self.stream, "isatty", None)
        self.tty = bool(isatty and isatty())
        self.width = width
        self.bar = ""
        self.t0 = time.perf_counter()

    def _clear(self):
        if self.tty and self.bar:
            self.stream.write("\r\x1b[2K")

    def __call__(self, line: str):
        self._clear()
        self.stream.write(line + "\n")
        if self.tty and self.bar:
            self.stream.write(self.bar)
        self.stream.flush()

    def step(self, stage: str, at: int, total: int, label: str):
        """Item `at` (1-based) of `total` in `stage` is starting."""
        if not self.tty:
            self(f"[{stage} {at}/{total}] {label}")
            return
        done = self.width * (at - 1) // max(total, 1)
        self._clear()
        self.bar = (f"{stage:16s} [{'#' * done}{'.' * (self.width - done)}] {at}/{total} "
                    f"{time.perf_counter() - self.t0:6.0f} s  {label[:60]}")
        self.stream.write(self.bar)
        self.stream.flush()

    def close(self):
        self._clear()
        self.bar = ""
        self.stream.flush()


def step(progress, stage, at, total, label):
    """Report item `at` of `total` to a Progress, or as a line to any other callable."""
    if hasattr(progress, "step"):
        progress.step(stage, at, total, label)
    else:
        progress(f"[{stage} {at}/{total}] {label}")


class Timer:
    """CUDA-event timing, cold and batch (module docstring). `xp` is the CuPy module (a
    stand-in in the tests); by default the real one."""

    def __init__(self, warmup=2, reps=10, flush_bytes=256 * 2 ** 20, batch=BATCH_CALLS,
                 xp=None):
        if xp is None:
            import cupy as xp
        self.cupy = xp
        self.warmup, self.reps, self.batch = warmup, reps, batch
        self.flush = xp.empty(flush_bytes // 4, dtype=xp.float32)

    def cold(self, fn, reps=None) -> List[float]:
        """ms per call: L2 flushed and the device idle before each call's first event, so
        the call's host work (dispatch, argument checks, launches) is inside the span."""
        cp = self.cupy
        dev = cp.cuda.Device()
        out = []
        for _ in range(reps or self.reps):
            self.flush.fill(1.0)
            dev.synchronize()
            a, b = cp.cuda.Event(), cp.cuda.Event()
            a.record()
            fn()
            b.record()
            b.synchronize()
            out.append(cp.cuda.get_elapsed_time(a, b))
        return out

    def batched(self, fn, k=None, spans=3) -> float:
        """ms per call, median over `spans` runs of k calls back to back (L2 warm)."""
        cp = self.cupy
        k = k or self.batch
        cp.cuda.Device().synchronize()
        per = []
        for _ in range(spans):
            a, b = cp.cuda.Event(), cp.cuda.Event()
            a.record()
            for _ in range(k):
                fn()
            b.record()
            b.synchronize()
            per.append(cp.cuda.get_elapsed_time(a, b) / k)
        return float(np.median(per))

    def __call__(self, fn) -> List[float]:
        """The cold times of fn after warm-up (fewer repetitions, at least 3, when one call
        takes over 100 ms, so slow reference kernels don't eat the run)."""
        return self._cold_after_warmup(fn)[0]

    def _cold_after_warmup(self, fn):
        cp = self.cupy
        t0 = time.perf_counter()
        fn()
        cp.cuda.Device().synchronize()
        first = time.perf_counter() - t0
        for _ in range(self.warmup - 1 if first < 0.1 else 0):
            fn()
        reps = self.reps if first < 0.1 else max(3, min(self.reps, int(1.0 / first)))
        return self.cold(fn, reps), first

    def time(self, fn) -> Dict[str, float]:
        """Both timings: {median_ms, q20_ms, q80_ms} cold and batch_ms."""
        cold, first = self._cold_after_warmup(fn)
        out = quantiles(cold)
        slow = first >= 0.1
        out["batch_ms"] = self.batched(fn, k=2 if slow else None, spans=1 if slow else 3)
        return out


def ceilings(timer) -> Dict[str, float]:
    cp = timer.cupy
    n = 1 << 28                                      # 1 GiB of float32
    src = cp.ones(n, dtype=cp.float32)
    dst = cp.empty_like(src)
    t = quantiles(timer(lambda: dst.__setitem__(Ellipsis, src)))["median_ms"]
    bw = 2 * n * 4 / (t * 1e-3) / 1e9
    m = 8192
    A = cp.random.default_rng(0).standard_normal((m, m), dtype=cp.float32)
    B = cp.random.default_rng(1).standard_normal((m, m), dtype=cp.float32)
    t = quantiles(timer(lambda: A @ B))["median_ms"]
    out = {"copy_GBps": bw, "sgemm_TFLOPs": 2 * m ** 3 / (t * 1e-3) / 1e12}
    out["fma_TFLOPs"] = fma_rate(timer)
    torch = _torch()
    if torch is not None:                 # the TF32 ceiling: cuBLAS TF32 GEMM through torch
        At, Bt = torch.from_dlpack(A), torch.from_dlpack(B)
        torch.backends.cuda.matmul.allow_tf32 = True
        t = quantiles(timer(lambda: torch.matmul(At, Bt)))["median_ms"]
        torch.backends.cuda.matmul.allow_tf32 = False
        out["tf32_TFLOPs"] = 2 * m ** 3 / (t * 1e-3) / 1e12
    return out


def fma_rate(timer, iters=4096) -> float:
    """FP32 FMA rate of our ceiling kernel (kernels/cuda/ceiling.cu): 8 blocks of 256 threads per
    SM, each thread 8 independent FFMA chains; TFLOP/s counting an FMA as 2 FLOPs."""
    cp = timer.cupy
    from convgpu.kernels.cuda import ceiling
    sms = cp.cuda.Device().attributes["MultiProcessorCount"]
    like = cp.zeros(1, dtype=cp.float32)
    _, flops = ceiling.fma_peak(sms * 8, iters, np.float32, like)
    t = quantiles(timer(lambda: ceiling.fma_peak(sms * 8, iters, np.float32, like)))["median_ms"]
    return flops / (t * 1e-3) / 1e12


# ----------------------------------------------------------------------------------------
# the baseline


def baseline_unavailable() -> Optional[str]:
    """None when cuDNN/cuBLAS through torch can be timed here, else why not (one line)."""
    try:
        import torch
    except Exception as e:
        return f"torch is not importable ({type(e).__name__}: {e})"
    try:
        if not torch.cuda.is_available():
            return (f"torch {torch.__version__} sees no CUDA device"
                    + (" (a CPU-only build)" if torch.version.cuda is None else ""))
    except Exception as e:
        return f"torch cannot query CUDA ({type(e).__name__}: {e})"
    return None


def _torch():
    """torch with cuDNN at its best for FP32 rows (benchmark, every algorithm tried, TF32
    off), or None where no CUDA torch is available."""
    if baseline_unavailable() is not None:
        return None
    import torch
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.benchmark = True
    torch.backends.cudnn.benchmark_limit = 0
    return torch


# baseline columns of the conv rows: (impl label, TF32 allowed, cudnn.benchmark)
CUDNN_MODES = (("cudnn", False, True), ("cudnn_tf32", True, True),
               ("torch_default", True, False))


@contextlib.contextmanager
def cudnn_mode(torch, tf32: bool, benchmark: bool):
    b = torch.backends.cudnn
    old = (b.allow_tf32, b.benchmark)
    b.allow_tf32, b.benchmark = tf32, benchmark
    b.benchmark_limit = 0
    try:
        yield
    finally:
        b.allow_tf32, b.benchmark = old


def kernel_names(torch, fn) -> Optional[List[str]]:
    """The device kernels one call of fn runs (torch.profiler), in launch order, or None."""
    try:
        from torch.profiler import ProfilerActivity, profile
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            fn()
            torch.cuda.synchronize()
        names = []
        for e in prof.events():
            if "cuda" in str(getattr(e, "device_type", "")).lower() and e.name not in names:
                names.append(e.name)
        return names
    except Exception:                        # the names are a record, never a reason to fail
        return None


def _oom(e: Exception) -> bool:
    return type(e).__name__ in ("OutOfMemoryError", "MemoryError")


def _wanted(impl_label, impl_filter):
    return not impl_filter or any(f in impl_label for f in impl_filter)


def shape_label(name, N, C, H, K, R, s, p, g=1) -> str:
    return f"{name}: N{N} C{C} H{H} K{K} R{R} s{s} p{p}" + (f" g{g}" if g > 1 else "")


def conv_label(sh) -> str:
    return shape_label(sh.name, sh.N, sh.C, sh.H, sh.K, sh.R, sh.stride, sh.pad, sh.groups)


def _ratios(r: Result, base: Optional[dict]):
    if base and r.median_ms:
        r.vs_cudnn = ratio(base["median_ms"], r.median_ms)
        if base.get("batch_ms") and r.batch_ms:
            r.vs_cudnn_batch = ratio(base["batch_ms"], r.batch_ms)


# ----------------------------------------------------------------------------------------
# stages


def _conv_baselines(torch, timer, op, sh, call, fl, by, dtype, out):
    """The cuDNN columns of one conv problem (CUDNN_MODES); {label: timing}."""
    got = {}
    for label, tf32, bench_on in CUDNN_MODES:
        with cudnn_mode(torch, tf32, bench_on):
            try:
                t = timer.time(call)
                names = kernel_names(torch, call)
            except Exception as e:
                if not _oom(e):
                    raise
                out.append(Result(op, conv_label(sh), label, np.dtype(dtype).name,
                                  "not run: out of device memory", suite=sh.suite,
                                  count=sh.count))
                continue
        got[label] = t
        out.append(Result(op, conv_label(sh), label, np.dtype(dtype).name, "ok", **t,
                          tflops=fl / (t["median_ms"] * 1e-3) / 1e12,
                          gbps=by / (t["median_ms"] * 1e-3) / 1e9 if by else None,
                          extra={"kernels": names, "tf32": tf32, "cudnn_benchmark": bench_on,
                                 "cudnn_benchmark_limit": 0},
                          suite=sh.suite, count=sh.count))
    return got


def _our_conv_row(timer, op, sh, label, algo, dtype, run, check, ref, fl, by, base):
    """Validate (check() against ref), then time run(); one Result."""
    tf32 = algo.endswith("tf32")
    common = dict(suite=sh.suite, count=sh.count)
    name = np.dtype(dtype).name
    try:
        got = np.asarray(_host(check())).astype(np.float64)
        err = float(np.linalg.norm(got - ref) / np.linalg.norm(ref))
        tol = tolerance(algo, dtype)
        if not err <= tol:
            return Result(op, conv_label(sh), label, name, f"FAIL rel err {err:.2e}", **common)
        t = timer.time(run)
    except NotServed as e:
        return Result(op, conv_label(sh), label, name, f"not served: {e}", **common)
    except Exception as e:
        if not _oom(e):
            raise
        return Result(op, conv_label(sh), label, name, "not run: out of device memory", **common)
    key = "cudnn_tf32" if tf32 else "cudnn"
    r = Result(op, conv_label(sh), label, name, "ok", **t,
               tflops=fl / (t["median_ms"] * 1e-3) / 1e12,
               gbps=by / (t["median_ms"] * 1e-3) / 1e9 if by else None,
               extra={"rel_err": err, "baseline": key}, **common)
    _ratios(r, base.get(key))
    if base.get("torch_default"):
        r.extra["vs_torch_default"] = ratio(base["torch_default"]["median_ms"], r.median_ms)
    return r


def _host(a):
    get = getattr(a, "get", None)
    return get() if callable(get) and not isinstance(a, np.ndarray) else np.asarray(a)


def bench_conv(timer, suite, dtype=np.float32, progress=print, impl_filter=None, out=None,
               saved=None) -> List[Result]:
    """conv2d forward of every device implementation against cuDNN's three columns."""
    import cupy as cp
    import convgpu
    from convgpu.ops._registry import all_impls
    torch = _torch()
    out = [] if out is None else out      # rows appended as they are measured
    rng = np.random.default_rng(0)
    for at, sh in enumerate(suite, 1):
        W, S, s, p, d, g = sh.width, sh.filter_width, sh.stride, sh.pad, sh.dilation, sh.groups
        P, Q = sh.out_size()
        step(progress, "conv2d", at, len(suite), conv_label(sh))
        fl = conv_flops(sh.N, sh.C, sh.K, sh.R, S, P, Q, g)
        by = conv_bytes(sh.N, sh.C, sh.H, W, sh.K, sh.R, S, P, Q, g, np.dtype(dtype).itemsize)
        x = cp.asarray(rng.uniform(-1, 1, (sh.N, sh.C, sh.H, W)).astype(dtype))
        w = cp.asarray(rng.uniform(-1, 1, (sh.K, sh.C // g, sh.R, S)).astype(dtype))
        nv = min(sh.N, 2)              # validation on a slice of the batch, float64 reference
        yref = reference.conv2d(cp.asnumpy(x[:nv]).astype(np.float64),
                                cp.asnumpy(w).astype(np.float64), None, (s, s), (p, p),
                                (d, d), g)
        base = {}
        if torch is not None:
            xt, wt = torch.from_dlpack(x), torch.from_dlpack(w)
            base = _conv_baselines(torch, timer, "conv2d", sh,
                                   lambda: torch.nn.functional.conv2d(xt, wt, None, s, p, d, g),
                                   fl, by, dtype, out)
        for impl in all_impls("conv2d"):
            label = f"{impl.backend}:{impl.algo}"
            if impl.backend == "numpy" or not _wanted(label, impl_filter):
                continue
            tf32 = impl.algo.endswith("tf32")
            kw = dict(stride=s, padding=p, dilation=d, groups=g, backend=impl.backend,
                      algo=impl.algo, allow_tf32=tf32)
            r = _our_conv_row(timer, "conv2d", sh, label, impl.algo, dtype,
                              lambda kw=kw: convgpu.conv2d(x, w, None, **kw),
                              lambda kw=kw: convgpu.conv2d(x[:nv], w, None, **kw),
                              yref, fl, by, base)
            out.append(r)
            if r.median_ms:
                progress(f"  {conv_label(sh)[:55]:55s} {label:20s} {r.median_ms:9.3f} ms "
                         f"{r.tflops:7.2f} TFLOP/s"
                         + (f"  x{r.vs_cudnn:.3f} cuDNN" if r.vs_cudnn else ""))
        if saved:                   # a run stopped mid-stage keeps these
            saved()
        del x, w
    return out


def bench_conv_backward(timer, suite, dtype=np.float32, progress=print,
                        impl_filter=None, out=None, saved=None) -> List[Result]:
    """Input and weight gradients of every device implementation against cuDNN's
    (aten.convolution_backward), each validated on the first images first."""
    import cupy as cp
    import convgpu
    from convgpu.ops._registry import all_impls
    torch = _torch()
    out = [] if out is None else out      # rows appended as they are measured
    rng = np.random.default_rng(1)
    for at, sh in enumerate(suite, 1):
        W, S, s, p, d, g = sh.width, sh.filter_width, sh.stride, sh.pad, sh.dilation, sh.groups
        P, Q = sh.out_size()
        step(progress, "conv2d backward", at, len(suite), conv_label(sh))
        fl = conv_flops(sh.N, sh.C, sh.K, sh.R, S, P, Q, g)
        x = cp.asarray(rng.uniform(-1, 1, (sh.N, sh.C, sh.H, W)).astype(dtype))
        w = cp.asarray(rng.uniform(-1, 1, (sh.K, sh.C // g, sh.R, S)).astype(dtype))
        gy = cp.asarray(rng.uniform(-1, 1, (sh.N, sh.K, P, Q)).astype(dtype))
        base = {}
        if torch is not None:
            xt, wt, gt = (torch.from_dlpack(a) for a in (x, w, gy))
            for op, mask in (("conv2d_backward_input", [True, False, False]),
                             ("conv2d_backward_weight", [False, True, False])):
                fn = lambda m=mask: torch.ops.aten.convolution_backward(
                    gt, xt, wt, None, [s, s], [p, p], [d, d], False, [0, 0], g, m)
                base[op] = _conv_baselines(torch, timer, op, sh, fn, fl, None, dtype, out)
        # the input gradient of the first images is exact on a slice; the weight gradient
        # sums over the batch, so it is validated on a 2-image problem
        nv = min(sh.N, 2)
        x2, gy2 = cp.asnumpy(x[:nv]).astype(np.float64), cp.asnumpy(gy[:nv]).astype(np.float64)
        w64 = cp.asnumpy(w).astype(np.float64)
        refs = {"conv2d_backward_input": reference.conv2d_backward_input(
                    gy2, w64, x2.shape, (s, s), (p, p), (d, d), g),
                "conv2d_backward_weight": reference.conv2d_backward_weight(
                    x2, gy2, w64.shape, (s, s), (p, p), (d, d), g)}
        for op in ("conv2d_backward_input", "conv2d_backward_weight"):
            for impl in all_impls(op):
                label = f"{impl.backend}:{impl.algo}"
                if impl.backend == "numpy" or not _wanted(label, impl_filter):
                    continue
                tf32 = impl.algo.endswith("tf32")
                kw = dict(stride=s, padding=p, dilation=d, groups=g, backend=impl.backend,
                          algo=impl.algo, allow_tf32=tf32)
                if op == "conv2d_backward_input":
                    run = lambda kw=kw: convgpu.conv2d_backward_input(gy, w, x.shape, **kw)
                    check = lambda kw=kw: convgpu.conv2d_backward_input(gy[:nv], w, x2.shape,
                                                                        **kw)
                else:
                    run = lambda kw=kw: convgpu.conv2d_backward_weight(x, gy, w.shape, **kw)
                    check = lambda kw=kw: convgpu.conv2d_backward_weight(x[:nv], gy[:nv],
                                                                         w.shape, **kw)
                r = _our_conv_row(timer, op, sh, label, impl.algo, dtype, run, check,
                                  refs[op], fl, None, base.get(op, {}))
                out.append(r)
                if r.median_ms:
                    progress(f"  {op[16:]:16s} {conv_label(sh)[:50]:50s} {label:18s} "
                             f"{r.median_ms:9.3f} ms {r.tflops:6.2f} TFLOP/s"
                             + (f" x{r.vs_cudnn:.3f} cuDNN" if r.vs_cudnn else ""))
        if saved:                   # a run stopped mid-stage keeps these
            saved()
        del x, w, gy
    return out


def bench_gemm(timer, sizes=None, progress=print, out=None, saved=None):
    """The hand-written GEMMs (gemm_tiled, gemm_vec; FP32 and TF32; gemm_pipelined, TF32)
    against cuBLAS through cupy.matmul (TF32 off) and torch.matmul (TF32 on), each validated
    first."""
    import cupy as cp
    from convgpu.kernels.cuda import gemm
    out = [] if out is None else out      # rows appended as they are measured
    torch = _torch()
    sizes = sizes or SH.GEMM
    for at, (M, N, K) in enumerate(sizes, 1):
        shape = f"{M}x{N}x{K}"
        step(progress, "gemm", at, len(sizes), shape)
        A = cp.random.default_rng(0).standard_normal((1, M, K), dtype=cp.float32)
        B = cp.random.default_rng(1).standard_normal((1, K, N), dtype=cp.float32)
        ref = (A[0, :64].astype(cp.float64) @ B[0].astype(cp.float64))
        fl = 2 * M * N * K
        base = {}
        t = timer.time(lambda: cp.matmul(A[0], B[0]))
        base[False] = t
        out.append(Result("gemm", shape, "cublas", "float32", "ok", **t,
                          tflops=fl / (t["median_ms"] * 1e-3) / 1e12))
        if torch is not None:                       # TF32 on both sides
            At, Bt = torch.from_dlpack(A[0]), torch.from_dlpack(B[0])
            torch.backends.cuda.matmul.allow_tf32 = True
            t = timer.time(lambda: torch.matmul(At, Bt))
            torch.backends.cuda.matmul.allow_tf32 = False
            base[True] = t
            out.append(Result("gemm", shape, "cublas_tf32", "float32", "ok", **t,
                              tflops=fl / (t["median_ms"] * 1e-3) / 1e12))
        for tf32 in (False, True):
            if tf32 not in base:
                continue
            for variant in ("tiled", "vec") + (("pipelined",) if tf32 else ("vec64",)):
                label = f"cuda:gemm_{variant}" + ("_tf32" if tf32 else "")
                run = lambda: gemm.gemm(A, B, tf32=tf32, variant=variant)
                got = run()[0, :64].astype(cp.float64)
                err = float(cp.linalg.norm(got - ref) / cp.linalg.norm(ref))
                if not err <= (2e-3 if tf32 else 1e-5):
                    out.append(Result("gemm", shape, label, "float32", f"FAIL rel err {err:.2e}"))
                    continue
                t = timer.time(run)
                r = Result("gemm", shape, label, "float32", "ok", **t,
                           tflops=fl / (t["median_ms"] * 1e-3) / 1e12,
                           extra={"rel_err": err, "baseline": "cublas_tf32" if tf32 else "cublas"})
                _ratios(r, base[tf32])
                out.append(r)
                progress(f"  gemm {shape:20s} {label:22s} {t['median_ms']:8.3f} ms "
                         f"{r.tflops:6.2f} TFLOP/s = x{r.vs_cudnn:.3f} cuBLAS"
                         f"{' TF32' if tf32 else ''} ({base[tf32]['median_ms']:.3f} ms)")
        if saved:
            saved()
    return out


def bench_pool(timer, suite, dtype=np.float32, progress=print, impl_filter=None, out=None,
               saved=None) -> List[Result]:
    import cupy as cp
    import convgpu
    torch = _torch()
    out = [] if out is None else out      # rows appended as they are measured
    for at, sh in enumerate(suite, 1):
        name, N, C, H, k, s, p, cm = sh[:8]
        shape = pool_label(sh)
        step(progress, "pooling", at, len(suite), shape)
        x = cp.random.default_rng(0).standard_normal((N, C, H, sh.width), dtype=cp.float32)
        y, idx = convgpu.max_pool2d(x, k, s, p, ceil_mode=cm, return_indices=True)
        nbytes = pool_bytes(x.size, y.size)
        fwd_bytes, bwd_bytes = nbytes["forward"], nbytes["backward"]
        gy = cp.ones_like(y)
        runs = {}
        for be in ("numba", "cuda"):
            runs[("max_pool2d", f"{be}:direct", fwd_bytes)] = \
                lambda be=be: convgpu.max_pool2d(x, k, s, p, ceil_mode=cm, return_indices=True,
                                                 backend=be)
            runs[("max_pool2d_backward", f"{be}:gather", bwd_bytes)] = \
                lambda be=be: convgpu.max_pool2d_backward(gy, idx, x.shape, k, s, p, 1, cm,
                                                          algo="gather", backend=be)
        if ("cuda", "tiled") in convgpu.implementations("max_pool2d"):
            runs[("max_pool2d", "cuda:tiled", fwd_bytes)] = \
                lambda: convgpu.max_pool2d(x, k, s, p, ceil_mode=cm, return_indices=True,
                                           algo="tiled", backend="cuda")
        if ("cuda", "tiled") in convgpu.implementations("max_pool2d_backward"):
            runs[("max_pool2d_backward", "cuda:tiled", bwd_bytes)] = \
                lambda: convgpu.max_pool2d_backward(gy, idx, x.shape, k, s, p, 1, cm,
                                                    algo="tiled", backend="cuda")
        # the CUDA C gathers also without the index validation (check_indices=False, as
        # nn.MaxPool2d calls them; torch validates nothing): the validation's 4-byte read
        # waits for the kernel inside the timed span
        for algo in ("gather", "tiled"):
            if ("max_pool2d_backward", f"cuda:{algo}", bwd_bytes) in runs:
                runs[("max_pool2d_backward", f"cuda:{algo} unchecked", bwd_bytes)] = \
                    lambda algo=algo: convgpu.max_pool2d_backward(
                        gy, idx, x.shape, k, s, p, 1, cm, algo=algo, backend="cuda",
                        check_indices=False)
        if torch is not None:
            xt = torch.from_dlpack(x)
            yt, it = torch.nn.functional.max_pool2d(xt, k, s, p, ceil_mode=cm, return_indices=True)
            gyt = torch.ones_like(yt)
            runs[("max_pool2d", "torch", fwd_bytes)] = lambda: torch.nn.functional.max_pool2d(
                xt, k, s, p, ceil_mode=cm, return_indices=True)
            runs[("max_pool2d_backward", "torch", bwd_bytes)] = \
                lambda: torch.ops.aten.max_pool2d_with_indices_backward(
                    gyt, xt, [k, k], [s, s], [p, p], [1, 1], cm, it)
        # validate each implementation on the first image before timing it
        x0 = cp.asnumpy(x[:1]).astype(np.float64)
        y0, i0 = reference.max_pool2d(x0, (k, k), (s, s), (p, p), (1, 1), cm)
        g0 = reference.max_pool2d_backward(np.ones(y0.shape), i0, x0.shape)
        bad = set()
        for be in ("numba", "cuda"):
            yb, ib = convgpu.max_pool2d(x[:1], k, s, p, ceil_mode=cm, return_indices=True, backend=be)
            gb = convgpu.max_pool2d_backward(cp.ones_like(yb), ib, x0.shape, k, s, p, 1, cm,
                                             algo="gather", backend=be)
            if not (np.array_equal(cp.asnumpy(ib), i0) and np.array_equal(cp.asnumpy(yb), y0.astype(np.float32))):
                bad.add(("max_pool2d", f"{be}:direct"))
            if not np.array_equal(cp.asnumpy(gb), g0.astype(np.float32)):
                bad.add(("max_pool2d_backward", f"{be}:gather"))
                bad.add(("max_pool2d_backward", f"{be}:gather unchecked"))
            if be == "cuda" and ("max_pool2d", "cuda:tiled", fwd_bytes) in runs:
                try:
                    yt, it_ = convgpu.max_pool2d(x[:1], k, s, p, ceil_mode=cm,
                                                 return_indices=True, algo="tiled",
                                                 backend="cuda")
                except NotServed:           # a geometry it does not serve: not timed
                    del runs[("max_pool2d", "cuda:tiled", fwd_bytes)]
                else:
                    if not (np.array_equal(cp.asnumpy(it_), i0)
                            and np.array_equal(cp.asnumpy(yt), y0.astype(np.float32))):
                        bad.add(("max_pool2d", "cuda:tiled"))
            if be == "cuda" and ("max_pool2d_backward", "cuda:tiled", bwd_bytes) in runs:
                try:
                    gt = convgpu.max_pool2d_backward(cp.ones_like(yb), ib, x0.shape, k, s, p, 1,
                                                     cm, algo="tiled", backend="cuda")
                except NotServed:           # a geometry it does not serve: not timed
                    del runs[("max_pool2d_backward", "cuda:tiled", bwd_bytes)]
                    runs.pop(("max_pool2d_backward", "cuda:tiled unchecked", bwd_bytes), None)
                else:
                    if not np.array_equal(cp.asnumpy(gt), g0.astype(np.float32)):
                        bad.add(("max_pool2d_backward", "cuda:tiled"))
                        bad.add(("max_pool2d_backward", "cuda:tiled unchecked"))
        base = {}
        for (op, label, nbytes), fn in runs.items():
            if label != "torch" and not _wanted(label, impl_filter):
                continue
            if (op, label) in bad:
                out.append(Result(op, shape, label, "float32", "FAIL validation"))
                continue
            t = timer.time(fn)
            r = Result(op, shape, label, "float32", "ok", **t,
                       gbps=nbytes / (t["median_ms"] * 1e-3) / 1e9,
                       extra={"baseline": "torch"} if label != "torch" else {})
            if label == "torch":
                base[op] = t
            out.append(r)
            progress(f"  {op:20s} {shape:40s} {label:14s} {t['median_ms']:8.3f} ms "
                     f"{r.gbps:8.1f} GB/s")
        for r in out:
            if r.shape == shape and r.op in base and r.median_ms and r.impl != "torch":
                _ratios(r, base[r.op])
        if saved:                   # a run stopped mid-stage keeps these
            saved()
        del x, y, idx, gy
    return out


def norm_bytes(x_elems, itemsize=4) -> Dict[str, int]:
    """Fewest bytes each training pass must move: forward reads x and writes y; backward
    reads gy and x and writes gx (the per-channel vectors are negligible). Ours reads x
    (forward) and gy, x (backward) twice: once for the sums, once to apply them."""
    return {"forward": 2 * x_elems * itemsize, "backward": 3 * x_elems * itemsize}


def bench_norm(timer, suite, progress=print, impl_filter=None, out=None,
               saved=None) -> List[Result]:
    """batch_norm in training (running estimates updated) and its backward, float32: ours
    beside cuDNN's (aten.cudnn_batch_norm, the kernel torch's BatchNorm2d calls on a GPU) and
    torch's own CUDA kernels (aten.native_batch_norm), validated against the reference on
    the same data before timing."""
    import cupy as cp
    import convgpu
    from convgpu import reference
    torch = _torch()
    out = [] if out is None else out      # rows appended as they are measured
    for at, (name, shape) in enumerate(suite, 1):
        label = f"{name}: {'x'.join(map(str, shape))}"
        step(progress, "batch norm", at, len(suite), label)
        C = shape[1]
        rng = cp.random.default_rng(0)
        x = rng.standard_normal(shape, dtype=cp.float32) * 2 + 1
        gy = rng.standard_normal(shape, dtype=cp.float32)
        w = rng.standard_normal(C, dtype=cp.float32)
        b = rng.standard_normal(C, dtype=cp.float32)
        rm, rv = cp.zeros(C, cp.float32), cp.ones(C, cp.float32)
        nbytes = norm_bytes(x.size)
        runs, bad = {}, set()
        x64, g64, w64, b64 = (cp.asnumpy(a).astype(np.float64) for a in (x, gy, w, b))
        mean64, invstd64, _ = reference.batch_norm_stats(x64, 1e-5)
        want = (reference.batch_norm(x64, mean64, invstd64, w64, b64),) + \
            reference.batch_norm_backward(g64, x64, mean64, invstd64, w64, True)
        for be in ("cuda", "numba"):
            y, mean, invstd = convgpu.batch_norm(x, rm, rv, w, b, True, return_stats=True,
                                                 backend=be)
            got = (y,) + convgpu.batch_norm_backward(gy, x, mean, invstd, w, True, backend=be)
            for g_, w_ in zip(got, want):
                e = np.linalg.norm(cp.asnumpy(g_) - w_) / np.linalg.norm(w_)
                if not e <= 1e-5:
                    bad.add(be)
            runs[("batch_norm", f"{be}:split" if be == "cuda" else f"{be}:two_pass",
                  nbytes["forward"])] = lambda be=be: convgpu.batch_norm(
                x, rm, rv, w, b, True, return_stats=True, backend=be)
            runs[("batch_norm_backward", f"{be}:split" if be == "cuda" else f"{be}:two_pass",
                  nbytes["backward"])] = lambda be=be, mean=mean, invstd=invstd: \
                convgpu.batch_norm_backward(gy, x, mean, invstd, w, True, backend=be)
        if torch is not None:
            xt, gt, wt, bt = (torch.from_dlpack(a) for a in (x, gy, w, b))
            rmt, rvt = torch.zeros(C, device="cuda"), torch.ones(C, device="cuda")
            A = torch.ops.aten
            for lib in ("cudnn", "torch"):
                try:
                    if lib == "cudnn":
                        xt4 = xt if xt.dim() == 4 else xt.reshape(*xt.shape, 1, 1)
                        gt4 = gt.reshape(xt4.shape)
                        yt, sm, sv, rs = A.cudnn_batch_norm(xt4, wt, bt, rmt, rvt, True, 0.1, 1e-5)
                        fwd = lambda: A.cudnn_batch_norm(xt4, wt, bt, rmt, rvt, True, 0.1, 1e-5)
                        bwd = lambda: A.cudnn_batch_norm_backward(xt4, gt4, wt, rmt, rvt, sm, sv,
                                                                  1e-5, rs)
                    else:
                        yt, sm, sv = A.native_batch_norm(xt, wt, bt, rmt, rvt, True, 0.1, 1e-5)
                        fwd = lambda: A.native_batch_norm(xt, wt, bt, rmt, rvt, True, 0.1, 1e-5)
                        bwd = lambda: A.native_batch_norm_backward(gt, xt, wt, rmt, rvt, sm, sv,
                                                                   True, 1e-5, [True] * 3)
                    e = np.linalg.norm(yt.reshape(shape).cpu().double().numpy() - want[0]) \
                        / np.linalg.norm(want[0])
                    if not e <= 1e-4:
                        raise ValueError(f"relative error {e:.1e}")
                    runs[("batch_norm", lib, nbytes["forward"])] = fwd
                    runs[("batch_norm_backward", lib, nbytes["backward"])] = bwd
                except Exception as err:            # a baseline that cannot run is reported
                    progress(f"  batch_norm baseline {lib}: {type(err).__name__}: {err}")
        base = {}
        for (op, impl, nb), fn in runs.items():
            if impl not in ("cudnn", "torch") and not _wanted(impl, impl_filter):
                continue
            if impl.split(":")[0] in bad:
                out.append(Result(op, label, impl, "float32", "FAIL validation"))
                continue
            t = timer.time(fn)
            r = Result(op, label, impl, "float32", "ok", **t,
                       gbps=nb / (t["median_ms"] * 1e-3) / 1e9,
                       extra={"baseline": "cudnn"} if impl not in ("cudnn", "torch") else {})
            if impl == "cudnn":
                base[op] = t
            out.append(r)
            progress(f"  {op:20s} {label:40s} {impl:14s} {t['median_ms']:8.3f} ms "
                     f"{r.gbps:8.1f} GB/s")
        for r in out:
            if r.shape == label and r.op in base and r.median_ms and r.impl != "cudnn":
                _ratios(r, base[r.op])
        if saved:                   # a run stopped mid-stage keeps these
            saved()
        del x, gy
    return out


def pool_label(sh) -> str:
    return (f"{sh.name}: N{sh.N} C{sh.C} H{sh.H}" + (f" W{sh.W}" if sh.width != sh.H else "")
            + f" k{sh.kernel} s{sh.stride} p{sh.pad}")


def environment() -> dict:
    from convgpu.core import provenance
    env = {"python": platform.python_version(),
           "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "commit": provenance.commit()}
    try:
        env["source_hash"] = provenance.source_hash()
    except OSError:
        env["source_hash"] = None
    for mod in ("numpy", "numba", "cupy", "torch"):
        try:
            env[mod] = __import__(mod).__version__
        except Exception:
            env[mod] = None
    try:
        import cupy
        p = cupy.cuda.runtime.getDeviceProperties(0)
        env["device"] = p["name"].decode()
        env["driver"] = cupy.cuda.runtime.driverGetVersion()
        env["cuda_runtime"] = cupy.cuda.runtime.runtimeGetVersion()
    except Exception:
        env["device"] = None
    try:
        import torch
        env["cudnn"] = torch.backends.cudnn.version() if torch.cuda.is_available() else None
    except Exception:
        env["cudnn"] = None
    return env


def pool_bytes(x_elems, y_elems, itemsize=4, index_bytes=8) -> Dict[str, int]:
    """Fewest bytes each pass must move: forward reads x, writes y and the indices; backward
    reads gy and the indices, writes gx."""
    return {"forward": x_elems * itemsize + y_elems * (itemsize + index_bytes),
            "backward": y_elems * (itemsize + index_bytes) + x_elems * itemsize}


ALL_OPS = ("gemm", "conv2d", "conv2d_backward", "pool", "norm")


def _resolve(quick, shapes, suites, shape_specs):
    """(conv layers, pool shapes, norm shapes, gemm sizes) a run times."""
    if shape_specs:
        user = [SH.parse_shape(s) if isinstance(s, str) else s for s in shape_specs]
        conv = [s for s in user if isinstance(s, SH.ConvShape)]
        pools = [s for s in user if isinstance(s, SH.PoolShape)]
        return conv, pools, [], []
    conv = SH.conv_suite(quick, shapes, suites)
    gemm = [] if shapes or suites else (SH.GEMM[:1] if quick else SH.GEMM)
    if suites:                              # a suite run is conv layers only
        return conv, [], [], []
    return conv, SH.pool_suite(quick, shapes), SH.norm_suite(quick, shapes), gemm


def run(json_path=None, plot_path=None, quick=True, shapes=None, ops=None, impl=None,
        progress=None, suites=None, shape_specs=None) -> dict:
    """The benchmark; returns the JSON document (and writes it to json_path). suites: names
    of convgpu.tools.shapes suites ("resnet50", "vgg16@128", ...; default the four networks, or
    ResNet-50 alone when quick); shape_specs: a user's problems ("conv:N=..,C=..", ...)."""
    from convgpu.core.env import gpu_count
    progress = progress if progress is not None else Progress()
    ops = set(ops or ALL_OPS)
    unknown = ops - set(ALL_OPS)
    if unknown:
        raise ValueError(f"bench: unknown --ops {sorted(unknown)}; choose from {ALL_OPS}")
    conv, pools, norms, gemms = _resolve(quick, shapes, suites, shape_specs)
    if gpu_count() == 0:
        doc = run_cpu(conv, pools, ops, progress=progress, norms=norms,
                      batch=None if shape_specs else 1, gemm=bool(gemms))
    else:
        doc = _run_gpu(conv, pools, norms, gemms, ops, impl, json_path, progress)
    if hasattr(progress, "close"):
        progress.close()
    if doc["results"]:
        progress("\n" + format_table(doc["results"]))
        nets = format_networks(network_totals(doc["results"]))
        if nets:
            progress("\n" + nets)
    else:
        progress("bench: nothing was timed (" + "; ".join(doc.get("skipped") or
                                                         ["no shape matched"]) + ")")
    if json_path:
        with open(json_path, "w") as f:
            json.dump(doc, f, indent=1)
        progress(f"wrote {json_path}")
    if plot_path:
        drawn = plot(doc, plot_path)
        progress(f"wrote {plot_path} ({', '.join(drawn)})" if drawn else
                 f"plot: nothing measured to draw, {plot_path} not written")
    return doc


def _run_gpu(conv, pools, norms, gemms, ops, impl, json_path, progress) -> dict:
    timer = Timer()
    env = environment()
    why = baseline_unavailable()
    progress(f"device {env.get('device')}  commit {env.get('commit')}  "
             f"source {str(env.get('source_hash'))[:12]}")
    progress("baseline: cuDNN/cuBLAS through torch (benchmark_limit 0, TF32 off for FP32)"
             if why is None else f"baseline: none ({why}); ours are timed alone")
    ceil = ceilings(timer)
    progress(f"ceilings: copy {ceil['copy_GBps']:.0f} GB/s, FP32 FMA (ours) "
             f"{ceil['fma_TFLOPs']:.1f} TFLOP/s, SGEMM (cuBLAS, TF32 off) "
             f"{ceil['sgemm_TFLOPs']:.1f} TFLOP/s"
             + (f", TF32 GEMM (cuBLAS) {ceil['tf32_TFLOPs']:.1f} TFLOP/s"
                if "tf32_TFLOPs" in ceil else ""))
    results: List[Result] = []
    errors: List[str] = []

    def document():
        for r in results:
            if r.tflops is not None and "tf32" in r.impl and "tf32_TFLOPs" in ceil:
                r.extra["frac_tf32_rate"] = r.tflops / ceil["tf32_TFLOPs"]
            elif r.tflops is not None:
                r.extra["frac_fp32_rate"] = r.tflops / ceil["fma_TFLOPs"]
                r.extra["frac_sgemm"] = r.tflops / ceil["sgemm_TFLOPs"]
            if r.gbps is not None:
                r.extra["frac_copy_bw"] = r.gbps / ceil["copy_GBps"]
        return {"environment": env, "method": METHOD, "ceilings": ceil, "device": "gpu",
                "baseline": {"name": "cudnn" if why is None else None, "why_not": why},
                "results": [asdict(r) for r in results], "stage_errors": errors}

    def save():                             # after every shape: a run stopped by a time
        if json_path:                       # limit keeps what it measured
            with open(json_path, "w") as f:
                json.dump(document(), f, indent=1)

    kw = dict(progress=progress, out=results, saved=save)
    stages = [("gemm", lambda: bench_gemm(timer, gemms, **kw) if gemms else []),
              ("conv2d", lambda: bench_conv(timer, conv, impl_filter=impl, **kw)),
              # pooling before the backward passes, the longest stage
              ("pool", lambda: bench_pool(timer, pools, impl_filter=impl, **kw)),
              ("norm", lambda: bench_norm(timer, norms, impl_filter=impl, **kw)),
              ("conv2d_backward", lambda: bench_conv_backward(timer, conv, impl_filter=impl,
                                                              **kw))]
    for name, stage in stages:
        if name not in ops:
            continue
        try:                                # a stage that raises is reported (its rows so
            stage()                         # far kept) and the next stages still run
        except Exception as e:
            import traceback
            traceback.print_exc()
            errors.append(f"{name}: {type(e).__name__}: {e}")
            progress(f"stage {name} FAILED: {errors[-1]}")
        save()
    doc = document()
    doc["networks"] = network_totals(doc["results"])
    return doc


def run_cpu(conv, pools, ops, progress=print, reps=5, norms=(), batch=1, gemm=False) -> dict:
    """No GPU: time the numpy backend and torch's CPU ops beside it (at batch `batch`;
    None keeps each shape's own batch): conv2d by im2col and, for filters larger than 1x1,
    by FFT; max pooling; batch norm in training."""
    import convgpu
    progress("convgpu bench: no GPU visible, so no device kernel is timed here. Timing the "
             "numpy backend on the CPU"
             + (f" at batch {batch}" if batch else "") + ".")
    why = None
    try:
        import torch
    except Exception as e:
        torch = None
        why = f"torch is not importable ({type(e).__name__}: {e})"
    progress("baseline: torch's CPU ops" if torch is not None else
             f"baseline: none ({why}); the numpy backend is timed alone")
    skipped = []
    if "gemm" in ops and gemm:
        skipped.append("gemm: the hand-written GEMMs are device kernels and no GPU is "
                       "visible")
        progress("gemm: not timed: " + skipped[-1].split(": ", 1)[1])

    def clock(fn):
        t0 = time.perf_counter()
        fn()
        first = time.perf_counter() - t0
        ts = []                             # fewer repetitions (at least 2) for slow calls
        for _ in range(reps if first < 0.2 else max(2, min(reps, int(1.0 / first)))):
            t0 = time.perf_counter()
            fn()
            ts.append((time.perf_counter() - t0) * 1e3)
        return quantiles(ts)

    rng = np.random.default_rng(0)
    results = []
    for at, sh in enumerate(conv if "conv2d" in ops else [], 1):
        step(progress, "conv2d (CPU)", at, len(conv), sh.name)
        sh = sh._replace(N=batch or sh.N)
        W, S, g, d = sh.width, sh.filter_width, sh.groups, sh.dilation
        P, Q = sh.out_size()
        label = conv_label(sh)
        fl = conv_flops(sh.N, sh.C, sh.K, sh.R, S, P, Q, g)
        by = conv_bytes(sh.N, sh.C, sh.H, W, sh.K, sh.R, S, P, Q, g, 4)
        x = rng.uniform(-1, 1, (sh.N, sh.C, sh.H, W)).astype(np.float32)
        w = rng.uniform(-1, 1, (sh.K, sh.C // g, sh.R, S)).astype(np.float32)
        common = dict(suite=sh.suite, count=sh.count)
        base = None
        if torch is not None:
            xt, wt = torch.from_numpy(x), torch.from_numpy(w)
            base = clock(lambda: torch.nn.functional.conv2d(xt, wt, None, sh.stride, sh.pad,
                                                            d, g))
            results.append(Result("conv2d", label, "torch-cpu", "float32", "ok", **base,
                                  tflops=fl / (base["median_ms"] * 1e-3) / 1e12,
                                  gbps=by / (base["median_ms"] * 1e-3) / 1e9, **common))
        # the FFT's transforms cost the same for any filter size: not timed on 1x1 filters,
        # where a CPU run would spend seconds a call on a method no one would pick there
        for algo in ("im2col", "fft") if sh.R * S > 1 else ("im2col",):
            try:
                t = clock(lambda: convgpu.conv2d(x, w, None, sh.stride, sh.pad, d, g,
                                                 algo=algo))
            except NotServed as e:
                results.append(Result("conv2d", label, f"numpy:{algo}", "float32",
                                      f"not served: {e}", **common))
                continue
            r = Result("conv2d", label, f"numpy:{algo}", "float32", "ok", **t,
                       tflops=fl / (t["median_ms"] * 1e-3) / 1e12,
                       gbps=by / (t["median_ms"] * 1e-3) / 1e9,
                       extra={"baseline": "torch-cpu"} if base else {}, **common)
            _ratios(r, base)
            results.append(r)
            progress(f"  {label[:55]:55s} numpy:{algo:8s} {t['median_ms']:9.2f} ms")
    for sh in pools if "pool" in ops else []:
        sh = sh._replace(N=batch or sh.N)
        x = rng.standard_normal((sh.N, sh.C, sh.H, sh.width)).astype(np.float32)
        label = pool_label(sh)
        t = clock(lambda: convgpu.max_pool2d(x, sh.kernel, sh.stride, sh.pad,
                                             ceil_mode=sh.ceil_mode, return_indices=True))
        r = Result("max_pool2d", label, "numpy:reference", "float32", "ok", **t)
        results.append(r)
        if torch is not None:
            xt = torch.from_numpy(x)
            tt = clock(lambda: torch.nn.functional.max_pool2d(xt, sh.kernel, sh.stride, sh.pad,
                                                              ceil_mode=sh.ceil_mode,
                                                              return_indices=True))
            results.append(Result("max_pool2d", label, "torch-cpu", "float32", "ok", **tt))
            r.extra["baseline"] = "torch-cpu"
            _ratios(r, tt)
    for name, shape in norms if "norm" in ops else []:
        shape = (2,) + tuple(shape[1:])              # batch 2: training needs two values
        x = rng.standard_normal(shape).astype(np.float32)
        C = shape[1]
        label = f"{name}: {'x'.join(map(str, shape))}"
        rm, rv = np.zeros(C, np.float32), np.ones(C, np.float32)
        t = clock(lambda: convgpu.batch_norm(x, rm, rv, training=True))
        r = Result("batch_norm", label, "numpy:reference", "float32", "ok", **t)
        results.append(r)
        if torch is not None:
            xt, rmt, rvt = torch.from_numpy(x), torch.from_numpy(rm), torch.from_numpy(rv)
            tt = clock(lambda: torch.nn.functional.batch_norm(xt, rmt, rvt, training=True))
            results.append(Result("batch_norm", label, "torch-cpu", "float32", "ok", **tt))
            r.extra["baseline"] = "torch-cpu"
            _ratios(r, tt)
    rows = [asdict(r) for r in results]
    return {"environment": environment(), "method": {"timing": "host clock (CPU)"},
            "device": "cpu", "ceilings": {},
            "baseline": {"name": "torch-cpu" if torch is not None else None, "why_not": why},
            "results": rows, "networks": network_totals(rows), "skipped": skipped}


def time_op(spec, *, ops=None, impl=None, timer=None, progress=None) -> List[dict]:
    """Time one problem of one's own: every implementation that serves it, the baseline
    beside, each validated first; the rows as the JSON's `results` hold them.

    spec: "conv:N=32,C=64,H=56,W=56,K=64,R=3,S=3,stride=1,pad=1[,groups=G,dilation=D]",
    "pool:N=32,C=64,H=112,k=3,stride=2,pad=1[,ceil_mode=1]", or a convgpu.tools.shapes
    ConvShape / PoolShape. ops: which passes ("conv2d", "conv2d_backward", "pool"; default
    all that apply). impl: only implementations whose label contains one of these strings.
    On a GPU the device kernels are timed against cuDNN; without one, the numpy backend's
    forward passes against torch's CPU ops at the problem's own batch."""
    from convgpu.core.env import gpu_count
    sh = SH.parse_shape(spec) if isinstance(spec, str) else spec
    if not isinstance(sh, (SH.ConvShape, SH.PoolShape)):
        raise TypeError(f"time_op: spec must be a 'conv:...'/'pool:...' string, a ConvShape "
                        f"or a PoolShape; got {type(spec).__name__}")
    ops = set(ops or ("conv2d", "conv2d_backward", "pool"))
    unknown = ops - {"conv2d", "conv2d_backward", "pool"}
    if unknown:
        raise ValueError(f"time_op: unknown ops {sorted(unknown)}; choose from conv2d, "
                         "conv2d_backward, pool")
    impl = [impl] if isinstance(impl, str) else impl
    progress = progress if progress is not None else (lambda *a: None)
    conv = [sh] if isinstance(sh, SH.ConvShape) else []
    pools = [sh] if isinstance(sh, SH.PoolShape) else []
    if gpu_count() == 0 and timer is None:
        return run_cpu(conv, pools, ops, progress=progress, batch=None)["results"]
    timer = timer or Timer()
    rows = []
    if "conv2d" in ops and conv:
        rows += bench_conv(timer, conv, progress=progress, impl_filter=impl)
    if "conv2d_backward" in ops and conv:
        rows += bench_conv_backward(timer, conv, progress=progress, impl_filter=impl)
    if "pool" in ops and pools:
        rows += bench_pool(timer, pools, progress=progress, impl_filter=impl)
    return [asdict(r) for r in rows]


# ----------------------------------------------------------------------------------------
# networks: count-weighted sums


_BASELINES = ("cudnn", "cudnn_tf32", "torch_default", "torch-cpu", "torch", "cublas",
              "cublas_tf32")


def _ours(r) -> bool:
    return r["impl"] not in _BASELINES


def best_per_layer(results, op, tf32=False) -> Dict[str, dict]:
    """shape -> our fastest timed row of `op` (cold), among the implementations algo="auto"
    chooses from on a device: the cuda backend's where one serves the layer, else numba's;
    FP32 ones only, or with TF32 allowed any of them."""
    best: Dict[str, dict] = {}
    rank = lambda r: (0 if r["impl"].startswith("cuda:") else 1, r["median_ms"])
    for r in results:
        if (r["op"] == op and _ours(r) and r["status"] == "ok" and r.get("median_ms")
                and (tf32 or not r["impl"].endswith("tf32"))):
            if r["shape"] not in best or rank(r) < rank(best[r["shape"]]):
                best[r["shape"]] = r
    return best


def network_totals(results, tf32_too=True) -> Dict[str, dict]:
    """For each suite in the results and each pass: the count-weighted sum of the layer
    times, ours (the best per layer) and the baseline's, and the speed ratio baseline /
    ours; None where a layer lacks either side (its names under `missing`)."""
    suites = list(dict.fromkeys(r.get("suite") for r in results if r.get("suite")))
    out = {}
    for suite in suites:
        rows = [r for r in results if r.get("suite") == suite]
        for op in ("conv2d", "conv2d_backward_input", "conv2d_backward_weight"):
            for tf32 in ((False, True) if tf32_too else (False,)):
                if not any(r["op"] == op for r in rows):
                    continue
                on_cpu = any(r["impl"] == "torch-cpu" for r in rows)
                if on_cpu and tf32:                 # no TF32 on the CPU
                    continue
                base_impl = "torch-cpu" if on_cpu else ("cudnn_tf32" if tf32 else "cudnn")
                ours = best_per_layer(rows, op, tf32)
                layers = list(dict.fromkeys(r["shape"] for r in rows if r["op"] == op))
                counts = {r["shape"]: r.get("count", 1) for r in rows if r["op"] == op}
                base = {r["shape"]: r["median_ms"] for r in rows if r["op"] == op
                        and r["impl"] == base_impl and r["status"] == "ok" and r["median_ms"]}
                missing = [s for s in layers if s not in ours or s not in base]
                ours_ms = sum(counts[s] * ours[s]["median_ms"] for s in layers if s in ours)
                base_ms = sum(counts[s] * base[s] for s in layers if s in base)
                key = f"{suite} {op}{' tf32' if tf32 else ''}"
                out[key] = {
                    "suite": suite, "op": op, "tf32": tf32, "baseline": base_impl,
                    "layers": len(layers), "convolutions": sum(counts.values()),
                    "ours_ms": ours_ms if not missing else None,
                    "baseline_ms": base_ms if not missing else None,
                    "ratio": ratio(base_ms, ours_ms) if not missing and ours_ms else None,
                    "layer_geomean": _geomean([base[s] / ours[s]["median_ms"] for s in layers
                                               if s in ours and s in base]),
                    "best": {s: ours[s]["impl"] for s in layers if s in ours},
                    "missing": missing}
    return out


def _geomean(vals):
    vals = [v for v in vals if v]
    return math.exp(sum(map(math.log, vals)) / len(vals)) if vals else None


def format_networks(nets) -> str:
    if not nets:
        return ""
    lines = ["per network (count-weighted sums of each layer's cold time; ours: the best "
             "implementation per layer; speed ratio = baseline / ours):"]
    for key, n in nets.items():
        tot = (f"ours {n['ours_ms']:9.3f} ms  {n['baseline']} {n['baseline_ms']:9.3f} ms  "
               f"{n['ratio']:.3f}x" if n["ratio"] else
               f"incomplete: {len(n['missing'])} of {n['layers']} layers lack a timing")
        lines.append(f"  {key:45s} {n['convolutions']:3d} convs  {tot}")
    return "\n".join(lines)


def format_table(results) -> str:
    head = ("op", "shape", "impl", "cold ms", "q20-q80", "batch ms", "TFLOP/s", "GB/s",
            "speed", "status")
    rows = []
    for r in results:
        ms = r.get("median_ms")
        rows.append((r["op"], r["shape"][:44], r["impl"], f"{ms:.3f}" if ms else "-",
                     f"{r['q20_ms']:.3f}-{r['q80_ms']:.3f}" if ms else "-",
                     f"{r['batch_ms']:.3f}" if r.get("batch_ms") else "-",
                     f"{r['tflops']:.2f}" if r.get("tflops") else "-",
                     f"{r['gbps']:.0f}" if r.get("gbps") else "-",
                     f"{r['vs_cudnn']:.3f}x" if r.get("vs_cudnn") else "-", r["status"][:40]))
    widths = [max(len(str(x[i])) for x in [head] + rows) for i in range(len(head))]
    fmt = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()
    return "\n".join(["speed = the baseline's time / ours (above 1: faster than the baseline)",
                      fmt(head), fmt(["-" * w for w in widths])] + [fmt(r) for r in rows])


def plot(doc, path) -> List[str]:
    """The panels that have data, side by side: per conv shape, the speed of each
    implementation relative to its baseline (cuDNN, or torch on the CPU); a roofline
    (achieved TFLOP/s against FLOP per byte) with the ceilings where they were measured.
    Returns the names of the panels drawn; nothing is written when there are none."""
    res = [r for r in doc["results"] if r["op"] == "conv2d" and r.get("vs_cudnn")
           and r["status"] == "ok" and _ours(r)]
    pts = [r for r in doc["results"] if r.get("tflops") and r.get("gbps") and r["status"] == "ok"]
    panels = (["speed vs baseline"] if res else []) + (["roofline"] if pts else [])
    if not panels:
        return []
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(panels), figsize=(7.5 * len(panels), 5.5), squeeze=False)
    axes = list(axes[0])
    base_name = (doc.get("baseline") or {}).get("name") or "baseline"
    if res:
        ax = axes.pop(0)
        shapes_ = list(dict.fromkeys(r["shape"] for r in res))
        impls = list(dict.fromkeys(r["impl"] for r in res))
        width = 0.8 / max(1, len(impls))
        for j, im in enumerate(impls):
            xs, vals = [], []
            for i, s in enumerate(shapes_):       # only the bars that were measured
                v = next((r["vs_cudnn"] for r in res if r["shape"] == s and r["impl"] == im),
                         None)
                if v:
                    xs.append(i + j * width)
                    vals.append(v)
            ax.bar(xs, vals, width, label=im)
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set_xticks(np.arange(len(shapes_)) + 0.4 - width / 2)
        ax.set_xticklabels([s.split(":")[0] for s in shapes_], rotation=40, ha="right",
                           fontsize=7)
        ax.set_ylabel(f"speed = {base_name} time / ours (TF32 rows: cuDNN TF32)")
        ax.set_yscale("log")
        ax.set_title(f"conv2d forward, float32 ({doc['environment'].get('device') or 'CPU'})")
        ax.legend(fontsize=7)
    if pts:
        ax = axes.pop(0)
        for im in dict.fromkeys(r["impl"] for r in pts):
            sel = [r for r in pts if r["impl"] == im]
            ax.scatter([r["tflops"] * 1e3 / r["gbps"] for r in sel], [r["tflops"] for r in sel],
                       s=14, label=im)
        ceil = doc.get("ceilings") or {}
        if ceil.get("copy_GBps"):
            ai = np.logspace(-1, 3.5, 100)
            fp32 = ceil.get("fma_TFLOPs", ceil.get("sgemm_TFLOPs"))
            if fp32:
                ax.plot(ai, np.minimum(ceil["copy_GBps"] * ai / 1e3, fp32), "k--", lw=1,
                        label="measured ceilings (copy, FP32 FMA)")
            if "tf32_TFLOPs" in ceil:
                ax.plot(ai, np.minimum(ceil["copy_GBps"] * ai / 1e3, ceil["tf32_TFLOPs"]),
                        "k:", lw=1, label="TF32 (cuBLAS GEMM)")
        ax.set(xscale="log", yscale="log", xlabel="arithmetic intensity (FLOP / byte)",
               ylabel="achieved TFLOP/s",
               title="roofline" + ("" if ceil else " (no ceilings measured: no GPU)"))
        ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return panels


# ----------------------------------------------------------------------------------------
# the headline: bench/results/HEADLINE.json (bench/summarize.py writes it from a run)

HEADLINE_KEYS = ("resnet50_fwd_fp32", "resnet50_bwd_input_fp32", "resnet50_bwd_weight_fp32",
                 "resnet50_fwd_tf32", "vgg16_fwd_fp32", "mobilenetv2_fwd_fp32",
                 "resnet50_layers_geomean_fwd_fp32", "sgemm_4096", "tf32_gemm_4096",
                 "maxpool_fwd_copy_fraction", "maxpool_bwd_copy_fraction", "batchnorm_fwd",
                 "batchnorm_bwd", "lenet_train_epoch")
# what each key is: baseline time / ours. For the pooling keys the baseline is a
# device-to-device copy of the fewest bytes the pass must move (so the ratio is our
# fraction of the copy bandwidth measured in the same run)
HEADLINE_MEANING = {
    "resnet50_fwd_fp32": "ResNet-50 (batch 32) forward convolutions, summed, FP32: cuDNN / ours",
    "resnet50_bwd_input_fp32": "ResNet-50 input gradients, summed, FP32: cuDNN / ours",
    "resnet50_bwd_weight_fp32": "ResNet-50 weight gradients, summed, FP32: cuDNN / ours",
    "resnet50_fwd_tf32": "ResNet-50 forward, summed, TF32 allowed on both sides",
    "vgg16_fwd_fp32": "VGG-16 forward convolutions, summed, FP32",
    "mobilenetv2_fwd_fp32": "MobileNetV2 forward convolutions, summed, FP32",
    "resnet50_layers_geomean_fwd_fp32": "ResNet-50's distinct layers, geometric mean of the "
                                        "per-layer forward ratios, FP32",
    "sgemm_4096": "GEMM 4096^3 FP32: cuBLAS / our best",
    "tf32_gemm_4096": "GEMM 4096^3 TF32: cuBLAS TF32 / our best",
    "maxpool_fwd_copy_fraction": "max pooling forward: our best's fraction of the copy "
                                 "bandwidth, geometric mean over the pooling shapes",
    "maxpool_bwd_copy_fraction": "max pooling backward, the same",
    "batchnorm_fwd": "batch norm training forward: cuDNN / ours, geometric mean over shapes",
    "batchnorm_bwd": "batch norm backward: cuDNN / ours, geometric mean over shapes",
    "lenet_train_epoch": "LeNet-5 training epoch on the digits: torch + cuDNN / ours",
}


def _gemm_ratio(results, tf32):
    shape = "4096x4096x4096"
    base = next((r["median_ms"] for r in results if r["op"] == "gemm" and r["shape"] == shape
                 and r["impl"] == ("cublas_tf32" if tf32 else "cublas") and r["median_ms"]),
                None)
    ours = [r["median_ms"] for r in results if r["op"] == "gemm" and r["shape"] == shape
            and _ours(r) and r["status"] == "ok" and r["median_ms"]
            and r["impl"].endswith("tf32") == tf32]
    return ratio(base, min(ours)) if base and ours else None


def _copy_fraction(results, op, copy_gbps):
    if not copy_gbps:
        return None
    best: Dict[str, float] = {}
    for r in results:
        if r["op"] == op and _ours(r) and r["status"] == "ok" and r.get("gbps"):
            best[r["shape"]] = max(best.get(r["shape"], 0.0), r["gbps"] / copy_gbps)
    return _geomean(list(best.values()))


def _norm_ratio(results, op):
    base = {r["shape"]: r["median_ms"] for r in results if r["op"] == op
            and r["impl"] == "cudnn" and r["status"] == "ok" and r["median_ms"]}
    best: Dict[str, float] = {}
    for r in results:
        if r["op"] == op and _ours(r) and r["status"] == "ok" and r["median_ms"] \
                and r["shape"] in base:
            best[r["shape"]] = min(best.get(r["shape"], math.inf), r["median_ms"])
    return _geomean([base[s] / t for s, t in best.items()])


def lenet_ratio(train_log: Optional[str]) -> Optional[float]:
    """torch's median epoch / ours from bench/torch_lenet.py's output."""
    import re
    if not train_log:
        return None
    t = re.search(r"^torch .*median epoch ([0-9.]+) s", train_log, re.M)
    o = re.search(r"^convgpu .*median epoch ([0-9.]+) s", train_log, re.M)
    return ratio(float(t.group(1)), float(o.group(1))) if t and o and float(o.group(1)) else None


def headline(doc, train_log: Optional[str] = None) -> dict:
    """The headline ratios of one run (HEADLINE_KEYS; None where the run has no such
    measurement), with the run's provenance and method."""
    if doc.get("device") == "cpu":
        raise ValueError("headline: this is a CPU run (numpy against torch's CPU ops); the "
                         "headline holds device runs against cuDNN / cuBLAS only")
    env = doc.get("environment", {})
    res = doc["results"]
    nets = network_totals(res)

    def net(suite, op, tf32=False):
        n = nets.get(f"{suite} {op}{' tf32' if tf32 else ''}")
        return n["ratio"] if n else None

    rn = nets.get("resnet50 conv2d")
    copy = (doc.get("ceilings") or {}).get("copy_GBps")
    ratios = {
        "resnet50_fwd_fp32": net("resnet50", "conv2d"),
        "resnet50_bwd_input_fp32": net("resnet50", "conv2d_backward_input"),
        "resnet50_bwd_weight_fp32": net("resnet50", "conv2d_backward_weight"),
        "resnet50_fwd_tf32": net("resnet50", "conv2d", True),
        "vgg16_fwd_fp32": net("vgg16", "conv2d"),
        "mobilenetv2_fwd_fp32": net("mobilenetv2", "conv2d"),
        "resnet50_layers_geomean_fwd_fp32": rn["layer_geomean"] if rn and not rn["missing"]
        else None,
        "sgemm_4096": _gemm_ratio(res, False),
        "tf32_gemm_4096": _gemm_ratio(res, True),
        "maxpool_fwd_copy_fraction": _copy_fraction(res, "max_pool2d", copy),
        "maxpool_bwd_copy_fraction": _copy_fraction(res, "max_pool2d_backward", copy),
        "batchnorm_fwd": _norm_ratio(res, "batch_norm"),
        "batchnorm_bwd": _norm_ratio(res, "batch_norm_backward"),
        "lenet_train_epoch": lenet_ratio(train_log),
    }
    method = doc.get("method") or OLD_METHOD
    out = {"commit": env.get("commit"), "source_hash": env.get("source_hash"),
           "device": env.get("device"), "date": env.get("time"),
           "method": {k: method[k] for k in ("cudnn_benchmark_limit", "timing")},
           "ratios": {k: (round(v, 4) if v is not None else None) for k, v in ratios.items()},
           "meaning": "speed ratio = baseline time / ours (above 1: ours is faster); "
                      "null: the run has no such measurement"}
    if method["timing"] != METHOD["timing"]:
        out["note"] = ("an earlier method: cuDNN tried only its first "
                       f"{method['cudnn_benchmark_limit']} algorithms and the L2 flush was "
                       "queued before the events without a synchronise, so host dispatch "
                       "overlapped it; not comparable with runs under the current method")
    return out


# ----------------------------------------------------------------------------------------
# `convgpu tune`: algo="auto" over a suite's layers, so the choices are made (and cached)
# before training rather than during its first steps

TUNE_PASSES = ("conv2d", "conv2d_backward_input", "conv2d_backward_weight")


def tune(layers, passes=TUNE_PASSES, dtype=np.float32, allow_tf32=False, progress=print,
         xp=None, ops=None) -> List[dict]:
    """Call each pass of each layer once with algo="auto" on device arrays, so dispatch
    times the implementations that serve it and keeps the fastest (ops/_registry.py's tuning
    cache). Returns one record per (layer, pass): the choice where dispatch recorded one.
    xp, ops: the array module and the op namespace (CuPy and convgpu by default)."""
    if xp is None:
        import cupy as xp
    if ops is None:
        import convgpu as ops
    unknown = set(passes) - set(TUNE_PASSES)
    if unknown:
        raise ValueError(f"tune: unknown passes {sorted(unknown)}; choose from {TUNE_PASSES}")
    try:
        from convgpu.ops._registry import autotune_cache
    except ImportError:                     # pragma: no cover
        autotune_cache = dict
    rng = np.random.default_rng(0)
    out = []
    for at, sh in enumerate(layers, 1):
        step(progress, "tune", at, len(layers), sh.name)
        W, S, P_Q = sh.width, sh.filter_width, sh.out_size()
        x = xp.asarray(rng.uniform(-1, 1, (sh.N, sh.C, sh.H, W)).astype(dtype))
        w = xp.asarray(rng.uniform(-1, 1, (sh.K, sh.C // sh.groups, sh.R, S)).astype(dtype))
        gy = xp.asarray(rng.uniform(-1, 1, (sh.N, sh.K) + tuple(P_Q)).astype(dtype))
        kw = dict(stride=sh.stride, padding=sh.pad, dilation=sh.dilation, groups=sh.groups,
                  algo="auto", allow_tf32=allow_tf32)
        calls = {"conv2d": lambda: ops.conv2d(x, w, None, **kw),
                 "conv2d_backward_input": lambda: ops.conv2d_backward_input(gy, w, x.shape,
                                                                            **kw),
                 "conv2d_backward_weight": lambda: ops.conv2d_backward_weight(x, gy, w.shape,
                                                                              **kw)}
        for p in passes:
            before = dict(autotune_cache())
            try:
                calls[p]()
                status = "ok"
            except Exception as e:          # one layer that cannot run does not stop the rest
                if not (_oom(e) or isinstance(e, ValueError)):
                    raise
                status = f"not tuned: {type(e).__name__}: {e}"
            new = {k: v for k, v in autotune_cache().items() if k not in before and k[0] == p}
            choice = next(iter(new.values()), None)
            out.append({"layer": sh.name, "suite": sh.suite, "op": p, "choice": choice,
                        "status": status})
            progress(f"  {sh.name[:50]:50s} {p:24s} "
                     f"{choice or ('(cached or one candidate)' if status == 'ok' else status)}")
        del x, w, gy
    return out
