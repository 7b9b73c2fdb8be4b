"""The benchmark's method and units: the timer (cold and batched CUDA event timings), the
result rows, the FLOP and byte counts, the labels, the progress lines, the run's
environment."""
from __future__ import annotations

import platform
import sys
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import numpy as np


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
    layout: str = "NCHW"                    # the operands' layout, both sides (NCHW, NHWC)


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


def _host(a):
    get = getattr(a, "get", None)
    return get() if callable(get) and not isinstance(a, np.ndarray) else np.asarray(a)


def norm_bytes(x_elems, itemsize=4) -> Dict[str, int]:
    """Fewest bytes each training pass must move: forward reads x and writes y; backward
    reads gy and x and writes gx (the per-channel vectors are negligible). Ours reads x
    (forward) and gy, x (backward) twice: once for the sums, once to apply them."""
    return {"forward": 2 * x_elems * itemsize, "backward": 3 * x_elems * itemsize}


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
