"""`convgpu bench`: kernel timings against cuDNN (through torch) on real layer shapes.

Method (ARCHITECTURE, Benchmarks): each implementation is validated against the reference
once before it is timed (a failing one is reported, never timed); timing uses CUDA events
after warm-up, with the L2 flushed (a 256 MiB buffer rewritten) before every repetition;
the median and the 20%/80% quantiles are reported, with TFLOP/s (2*N*K*(C/g)*R*S*P*Q for
conv), GB/s (each input read once, each output written once) and the ratio to cuDNN
measured in the same run (TF32 off for float32). The machine's ceilings are measured in
the same run too: device-to-device copy bandwidth, the FP32 rate as cuBLAS SGEMM reaches
it (TF32 off) and the TF32 rate of cuBLAS's TF32 GEMM. (The design asks for an FP32 FMA
rate from a kernel of ours; that kernel has not been written yet: cuBLAS's SGEMM is the
attainable FP32 matrix rate meanwhile.)

    convgpu bench [--quick] [--json PATH] [--plot PATH] [--shapes S ...] [--ops OP ...]
                  [--impl I ...]

The suite (convgpu.shapes) holds real layer shapes with their sources. Without a GPU the
command says so and times the numpy backend at batch 1 on the quick shapes, with torch's
CPU convolution beside it when torch is importable.
"""
from __future__ import annotations

import json
import platform
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional

import numpy as np

from convgpu import reference
from convgpu import shapes as SH
from convgpu.check import tolerance

def quantiles(times_ms: List[float]) -> Dict[str, float]:
    a = np.asarray(times_ms, dtype=np.float64)
    return {"median_ms": float(np.median(a)), "q20_ms": float(np.quantile(a, 0.2)),
            "q80_ms": float(np.quantile(a, 0.8))}


def conv_flops(N, C, K, R, S, P, Q, groups=1) -> int:
    return 2 * N * K * (C // groups) * R * S * P * Q


def conv_bytes(N, C, H, W, K, R, S, P, Q, groups, itemsize) -> int:
    return itemsize * (N * C * H * W + K * (C // groups) * R * S + N * K * P * Q)


@dataclass
class Result:
    op: str
    shape: str
    impl: str
    dtype: str
    status: str
    median_ms: Optional[float] = None
    q20_ms: Optional[float] = None
    q80_ms: Optional[float] = None
    tflops: Optional[float] = None
    gbps: Optional[float] = None
    vs_cudnn: Optional[float] = None
    extra: dict = field(default_factory=dict)


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
    """CUDA-event timing with an L2 flush before every repetition."""

    def __init__(self, warmup=2, reps=10, flush_bytes=256 * 2 ** 20):
        import cupy
        self.cupy = cupy
        self.warmup, self.reps = warmup, reps
        self.flush = cupy.empty(flush_bytes // 4, dtype=cupy.float32)

    def __call__(self, fn) -> List[float]:
        """Times fn: warm-up calls, then `reps` timed ones (fewer, at least 3, when one call
        takes over 100 ms, so slow reference kernels don't eat the run)."""
        cp = self.cupy
        t0 = time.perf_counter()
        fn()
        cp.cuda.Device().synchronize()
        first = time.perf_counter() - t0
        for _ in range(self.warmup - 1 if first < 0.1 else 0):
            fn()
        reps = self.reps if first < 0.1 else max(3, min(self.reps, int(1.0 / first)))
        out = []
        for _ in range(reps):
            self.flush.fill(1.0)
            a, b = cp.cuda.Event(), cp.cuda.Event()
            a.record()
            fn()
            b.record()
            b.synchronize()
            out.append(cp.cuda.get_elapsed_time(a, b))
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


def _torch():
    try:
        import torch
        if torch.cuda.is_available():
            torch.backends.cudnn.allow_tf32 = False
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.benchmark = True
            return torch
    except Exception:
        pass
    return None


def _wanted(impl_label, impl_filter):
    return not impl_filter or any(f in impl_label for f in impl_filter)


def bench_conv(timer, suite, dtype=np.float32, progress=print, impl_filter=None) -> List[Result]:
    import cupy as cp
    import convgpu
    from convgpu.core.args import conv_out_size
    from convgpu.ops._registry import all_impls
    torch = _torch()
    out = []
    rng = np.random.default_rng(0)
    for at, (name, N, C, H, K, R, s, p, g) in enumerate(suite, 1):
        P = Q = conv_out_size(H, R, s, p, 1)
        shape = shape_label(name, N, C, H, K, R, s, p, g)
        step(progress, "conv2d", at, len(suite), shape)
        fl = conv_flops(N, C, K, R, R, P, Q, g)
        by = conv_bytes(N, C, H, H, K, R, R, P, Q, g, np.dtype(dtype).itemsize)
        x = cp.asarray(rng.uniform(-1, 1, (N, C, H, H)).astype(dtype))
        w = cp.asarray(rng.uniform(-1, 1, (K, C // g, R, R)).astype(dtype))
        # validation on a slice of the batch against the float64 reference
        nv = min(N, 2)
        yref = reference.conv2d(cp.asnumpy(x[:nv]).astype(np.float64),
                                cp.asnumpy(w).astype(np.float64), None, (s, s), (p, p),
                                (1, 1), g)
        cudnn_ms = None
        if torch is not None:
            xt, wt = torch.from_dlpack(x), torch.from_dlpack(w)
            t = quantiles(timer(lambda: torch.nn.functional.conv2d(xt, wt, None, s, p, 1, g)))
            cudnn_ms = t["median_ms"]
            out.append(Result("conv2d", shape, "cudnn", np.dtype(dtype).name, "ok", **t,
                              tflops=fl / (t["median_ms"] * 1e-3) / 1e12,
                              gbps=by / (t["median_ms"] * 1e-3) / 1e9, vs_cudnn=1.0))
        cudnn_tf32_ms = None
        if torch is not None:
            torch.backends.cudnn.allow_tf32 = True
            t = quantiles(timer(lambda: torch.nn.functional.conv2d(xt, wt, None, s, p, 1, g)))
            torch.backends.cudnn.allow_tf32 = False
            cudnn_tf32_ms = t["median_ms"]
            out.append(Result("conv2d", shape, "cudnn_tf32", np.dtype(dtype).name, "ok", **t,
                              tflops=fl / (t["median_ms"] * 1e-3) / 1e12,
                              gbps=by / (t["median_ms"] * 1e-3) / 1e9, vs_cudnn=1.0))
        for impl in all_impls("conv2d"):
            label = f"{impl.backend}:{impl.algo}"
            if impl.backend == "numpy" or not _wanted(label, impl_filter):
                continue
            tf32 = impl.algo.endswith("tf32")
            base_ms = cudnn_tf32_ms if tf32 else cudnn_ms
            try:
                run = lambda: convgpu.conv2d(x, w, None, s, p, groups=g, backend=impl.backend,
                                             algo=impl.algo, allow_tf32=tf32)
                y = run()
                yv = cp.asnumpy(y[:nv]).astype(np.float64)
                err = float(np.linalg.norm(yv - yref) / np.linalg.norm(yref))
                tol = tolerance(impl.algo, dtype)
                if not err <= tol:
                    out.append(Result("conv2d", shape, label, np.dtype(dtype).name,
                                      f"FAIL rel err {err:.2e}"))
                    continue
                t = quantiles(timer(run))
            except ValueError as e:
                out.append(Result("conv2d", shape, label, np.dtype(dtype).name, f"not served: {e}"))
                continue
            r = Result("conv2d", shape, label, np.dtype(dtype).name, "ok", **t,
                       tflops=fl / (t["median_ms"] * 1e-3) / 1e12,
                       gbps=by / (t["median_ms"] * 1e-3) / 1e9,
                       vs_cudnn=(base_ms / t["median_ms"]) if base_ms else None,
                       extra={"rel_err": err, "baseline": "cudnn_tf32" if tf32 else "cudnn"})
            out.append(r)
            progress(f"  {shape:55s} {label:20s} {t['median_ms']:9.3f} ms "
                     f"{r.tflops:7.2f} TFLOP/s  x{r.vs_cudnn or float('nan'):.3f} of cuDNN")
        del x, w
    return out


def bench_gemm(timer, sizes=((4096, 4096, 4096), (8192, 1024, 2048)), progress=print):
    """The hand-written GEMMs (gemm_tiled, gemm_vec; FP32 and TF32; gemm_pipelined, TF32) against cuBLAS through
    cupy.matmul (TF32 off) and torch.matmul (TF32 on), each validated first."""
    import cupy as cp
    from convgpu.kernels.cuda import gemm
    out = []
    torch = _torch()
    for at, (M, N, K) in enumerate(sizes, 1):
        shape = f"{M}x{N}x{K}"
        step(progress, "gemm", at, len(sizes), shape)
        A = cp.random.default_rng(0).standard_normal((1, M, K), dtype=cp.float32)
        B = cp.random.default_rng(1).standard_normal((1, K, N), dtype=cp.float32)
        ref = (A[0, :64].astype(cp.float64) @ B[0].astype(cp.float64))
        fl = 2 * M * N * K
        base = {}
        t = quantiles(timer(lambda: cp.matmul(A[0], B[0])))
        base[False] = t["median_ms"]
        out.append(Result("gemm", shape, "cublas", "float32", "ok", **t,
                          tflops=fl / (t["median_ms"] * 1e-3) / 1e12, vs_cudnn=1.0))
        if torch is not None:                       # TF32 on both sides
            At, Bt = torch.from_dlpack(A[0]), torch.from_dlpack(B[0])
            torch.backends.cuda.matmul.allow_tf32 = True
            t = quantiles(timer(lambda: torch.matmul(At, Bt)))
            torch.backends.cuda.matmul.allow_tf32 = False
            base[True] = t["median_ms"]
            out.append(Result("gemm", shape, "cublas_tf32", "float32", "ok", **t,
                              tflops=fl / (t["median_ms"] * 1e-3) / 1e12, vs_cudnn=1.0))
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
                t = quantiles(timer(run))
                r = Result("gemm", shape, label, "float32", "ok", **t,
                           tflops=fl / (t["median_ms"] * 1e-3) / 1e12,
                           vs_cudnn=base[tf32] / t["median_ms"],
                           extra={"rel_err": err, "baseline": "cublas_tf32" if tf32 else "cublas"})
                out.append(r)
                progress(f"  gemm {shape:20s} {label:22s} {t['median_ms']:8.3f} ms "
                         f"{r.tflops:6.2f} TFLOP/s = x{r.vs_cudnn:.3f} of cuBLAS"
                         f"{' TF32' if tf32 else ''} ({base[tf32]:.3f} ms)")
    return out


def bench_conv_backward(timer, suite, dtype=np.float32, progress=print,
                        impl_filter=None) -> List[Result]:
    """Input and weight gradients of every device implementation against cuDNN's
    (aten.convolution_backward), each validated on the first images first."""
    import cupy as cp
    import convgpu
    from convgpu.core.args import conv_out_size
    from convgpu.ops._registry import all_impls
    torch = _torch()
    out = []
    rng = np.random.default_rng(1)
    for at, (name, N, C, H, K, R, s, p, g) in enumerate(suite, 1):
        P = conv_out_size(H, R, s, p, 1)
        shape = shape_label(name, N, C, H, K, R, s, p, g)
        step(progress, "conv2d backward", at, len(suite), shape)
        fl = conv_flops(N, C, K, R, R, P, P, g)
        x = cp.asarray(rng.uniform(-1, 1, (N, C, H, H)).astype(dtype))
        w = cp.asarray(rng.uniform(-1, 1, (K, C // g, R, R)).astype(dtype))
        gy = cp.asarray(rng.uniform(-1, 1, (N, K, P, P)).astype(dtype))
        theirs = {}
        if torch is not None:
            xt, wt, gt = (torch.from_dlpack(a) for a in (x, w, gy))
            for op, mask in (("conv2d_backward_input", [True, False, False]),
                             ("conv2d_backward_weight", [False, True, False])):
                fn = lambda m=mask: torch.ops.aten.convolution_backward(
                    gt, xt, wt, None, [s, s], [p, p], [1, 1], False, [0, 0], g, m)
                for tf32 in (False, True):
                    torch.backends.cudnn.allow_tf32 = tf32
                    t = quantiles(timer(fn))
                    torch.backends.cudnn.allow_tf32 = False
                    theirs[(op, tf32)] = t["median_ms"]
                    out.append(Result(op, shape, "cudnn_tf32" if tf32 else "cudnn",
                                      np.dtype(dtype).name, "ok", **t,
                                      tflops=fl / (t["median_ms"] * 1e-3) / 1e12, vs_cudnn=1.0))
        # references on a slice: the input gradient of the first images is exact on a slice;
        # the weight gradient sums over the batch, so validate it on a 2-image problem
        nv = min(N, 2)
        x2, gy2 = cp.asnumpy(x[:nv]).astype(np.float64), cp.asnumpy(gy[:nv]).astype(np.float64)
        w64 = cp.asnumpy(w).astype(np.float64)
        refs = {"conv2d_backward_input": reference.conv2d_backward_input(
                    gy2, w64, x2.shape, (s, s), (p, p), (1, 1), g),
                "conv2d_backward_weight": reference.conv2d_backward_weight(
                    x2, gy2, w64.shape, (s, s), (p, p), (1, 1), g)}
        for op in ("conv2d_backward_input", "conv2d_backward_weight"):
            for impl in all_impls(op):
                label = f"{impl.backend}:{impl.algo}"
                if impl.backend == "numpy" or not _wanted(label, impl_filter):
                    continue
                tf32 = impl.algo.endswith("tf32")
                kw = dict(stride=s, padding=p, groups=g, backend=impl.backend, algo=impl.algo,
                          allow_tf32=tf32)
                if op == "conv2d_backward_input":
                    run = lambda kw=kw: convgpu.conv2d_backward_input(gy, w, x.shape, **kw)
                    check = lambda kw=kw: convgpu.conv2d_backward_input(gy[:nv], w, x2.shape, **kw)
                else:
                    run = lambda kw=kw: convgpu.conv2d_backward_weight(x, gy, w.shape, **kw)
                    check = lambda kw=kw: convgpu.conv2d_backward_weight(x[:nv], gy[:nv], w.shape, **kw)
                try:
                    got = cp.asnumpy(check()).astype(np.float64)
                    err = float(np.linalg.norm(got - refs[op]) / np.linalg.norm(refs[op]))
                    tol = tolerance(impl.algo, dtype)
                    if not err <= tol:
                        out.append(Result(op, shape, label, np.dtype(dtype).name,
                                          f"FAIL rel err {err:.2e}"))
                        continue
                    t = quantiles(timer(run))
                except ValueError as e:
                    out.append(Result(op, shape, label, np.dtype(dtype).name, f"not served: {e}"))
                    continue
                r = Result(op, shape, label, np.dtype(dtype).name, "ok", **t,
                           tflops=fl / (t["median_ms"] * 1e-3) / 1e12,
                           vs_cudnn=(theirs[(op, tf32)] / t["median_ms"])
                           if (op, tf32) in theirs else None,
                           extra={"rel_err": err, "baseline": "cudnn_tf32" if tf32 else "cudnn"})
                out.append(r)
                progress(f"  {op[16:]:16s} {shape:50s} {label:18s} {t['median_ms']:9.3f} ms "
                         f"{r.tflops:6.2f} TFLOP/s x{r.vs_cudnn or float('nan'):.3f} of cuDNN")
        del x, w, gy
    return out


def bench_pool(timer, suite, dtype=np.float32, progress=print, impl_filter=None) -> List[Result]:
    import cupy as cp
    import convgpu
    torch = _torch()
    out = []
    for at, (name, N, C, H, k, s, p, cm) in enumerate(suite, 1):
        shape = f"{name}: N{N} C{C} H{H} k{k} s{s} p{p}"
        step(progress, "pooling", at, len(suite), shape)
        x = cp.random.default_rng(0).standard_normal((N, C, H, H), dtype=cp.float32)
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
                except ValueError:          # a geometry it does not serve: not timed
                    del runs[("max_pool2d", "cuda:tiled", fwd_bytes)]
                else:
                    if not (np.array_equal(cp.asnumpy(it_), i0)
                            and np.array_equal(cp.asnumpy(yt), y0.astype(np.float32))):
                        bad.add(("max_pool2d", "cuda:tiled"))
            if be == "cuda" and ("max_pool2d_backward", "cuda:tiled", bwd_bytes) in runs:
                try:
                    gt = convgpu.max_pool2d_backward(cp.ones_like(yb), ib, x0.shape, k, s, p, 1,
                                                     cm, algo="tiled", backend="cuda")
                except ValueError:          # a geometry it does not serve: not timed
                    del runs[("max_pool2d_backward", "cuda:tiled", bwd_bytes)]
                    runs.pop(("max_pool2d_backward", "cuda:tiled unchecked", bwd_bytes), None)
                else:
                    if not np.array_equal(cp.asnumpy(gt), g0.astype(np.float32)):
                        bad.add(("max_pool2d_backward", "cuda:tiled"))
                        bad.add(("max_pool2d_backward", "cuda:tiled unchecked"))
        for (op, label, nbytes), fn in runs.items():
            if label != "torch" and not _wanted(label, impl_filter):
                continue
            if (op, label) in bad:
                out.append(Result(op, shape, label, "float32", "FAIL validation"))
                continue
            t = quantiles(timer(fn))
            r = Result(op, shape, label, "float32", "ok", **t,
                       gbps=nbytes / (t["median_ms"] * 1e-3) / 1e9)
            out.append(r)
            progress(f"  {op:20s} {shape:40s} {label:14s} {t['median_ms']:8.3f} ms "
                     f"{r.gbps:8.1f} GB/s")
        del x, y, idx, gy
    return out


def norm_bytes(x_elems, itemsize=4) -> Dict[str, int]:
    """Fewest bytes each training pass must move: forward reads x and writes y; backward
    reads gy and x and writes gx (the per-channel vectors are negligible). Ours reads x
    (forward) and gy, x (backward) twice: once for the sums, once to apply them."""
    return {"forward": 2 * x_elems * itemsize, "backward": 3 * x_elems * itemsize}


def bench_norm(timer, suite, progress=print, impl_filter=None) -> List[Result]:
    """batch_norm in training (running estimates updated) and its backward, float32: ours
    beside cuDNN's (aten.cudnn_batch_norm, the kernel torch's BatchNorm2d calls on a GPU) and
    torch's own CUDA kernels (aten.native_batch_norm), validated against the reference on
    the same data before timing."""
    import cupy as cp
    import convgpu
    from convgpu import reference
    torch = _torch()
    out = []
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
            t = quantiles(timer(fn))
            r = Result(op, label, impl, "float32", "ok", **t,
                       gbps=nb / (t["median_ms"] * 1e-3) / 1e9)
            if impl == "cudnn":
                base[op] = t["median_ms"]
            out.append(r)
            progress(f"  {op:20s} {label:40s} {impl:14s} {t['median_ms']:8.3f} ms "
                     f"{r.gbps:8.1f} GB/s")
        for r in out:
            if r.shape == label and r.op in base and r.median_ms and r.impl != "cudnn":
                r.vs_cudnn = ratio(base[r.op], r.median_ms)
        del x, gy
    return out


def environment() -> dict:
    env = {"python": platform.python_version(), "time": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                        time.gmtime())}
    import os
    try:
        env["commit"] = os.environ.get("CONVGPU_COMMIT") or subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True,
                                       text=True, check=False).stdout.strip() or None
    except OSError:
        env["commit"] = None
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
    return env


def shape_label(name, N, C, H, K, R, s, p, g=1) -> str:
    return f"{name}: N{N} C{C} H{H} K{K} R{R} s{s} p{p}" + (f" g{g}" if g > 1 else "")


def pool_bytes(x_elems, y_elems, itemsize=4, index_bytes=8) -> Dict[str, int]:
    """Fewest bytes each pass must move: forward reads x, writes y and the indices; backward
    reads gy and the indices, writes gx."""
    return {"forward": x_elems * itemsize + y_elems * (itemsize + index_bytes),
            "backward": y_elems * (itemsize + index_bytes) + x_elems * itemsize}


def ratio(baseline_ms: float, ours_ms: float) -> float:
    """Speed relative to the baseline measured in the same run: above 1 is faster."""
    return baseline_ms / ours_ms


ALL_OPS = ("gemm", "conv2d", "conv2d_backward", "pool", "norm")


def run(json_path=None, plot_path=None, quick=True, shapes=None, ops=None, impl=None,
        progress=None) -> dict:
    from convgpu.core.env import gpu_count
    progress = progress if progress is not None else Progress()
    ops = set(ops or ALL_OPS)
    unknown = ops - set(ALL_OPS)
    if unknown:
        raise ValueError(f"bench: unknown --ops {sorted(unknown)}; choose from {ALL_OPS}")
    conv = SH.conv_suite(quick, shapes)
    pools = SH.pool_suite(quick, shapes)
    norms = SH.norm_suite(quick, shapes)
    if gpu_count() == 0:
        doc = run_cpu(conv, pools, ops, progress=progress, norms=norms)
    else:
        timer = Timer()
        env = environment()
        progress(f"device {env.get('device')}  commit {env.get('commit')}")
        ceil = ceilings(timer)
        progress(f"ceilings: copy {ceil['copy_GBps']:.0f} GB/s, FP32 FMA (ours) "
                 f"{ceil['fma_TFLOPs']:.1f} TFLOP/s, SGEMM (cuBLAS, TF32 off) "
                 f"{ceil['sgemm_TFLOPs']:.1f} TFLOP/s"
                 + (f", TF32 GEMM (cuBLAS) {ceil['tf32_TFLOPs']:.1f} TFLOP/s"
                    if "tf32_TFLOPs" in ceil else ""))
        results = []
        stages = [("gemm", lambda: bench_gemm(timer, progress=progress) if not shapes else []),
                  ("conv2d", lambda: bench_conv(timer, conv, progress=progress, impl_filter=impl)),
                  # pooling before the backward passes, the longest stage: a run cut short
                  # by a time limit still has the pooling numbers (JSON after every stage)
                  ("pool", lambda: bench_pool(timer, pools, progress=progress, impl_filter=impl)),
                  ("norm", lambda: bench_norm(timer, norms, progress=progress, impl_filter=impl)),
                  ("conv2d_backward", lambda: bench_conv_backward(timer, conv, progress=progress,
                                                                  impl_filter=impl))]
        errors = []
        for name, stage in stages:
            if name not in ops:
                continue
            try:                                # a stage that raises is reported and the
                results += stage()              # next stages still run (the JSON says so)
            except Exception as e:
                import traceback
                traceback.print_exc()
                errors.append(f"{name}: {type(e).__name__}: {e}")
                progress(f"stage {name} FAILED: {errors[-1]}")
            for r in results:
                if r.tflops is not None and "tf32" in r.impl and "tf32_TFLOPs" in ceil:
                    r.extra["frac_tf32_rate"] = r.tflops / ceil["tf32_TFLOPs"]
                elif r.tflops is not None:
                    r.extra["frac_fp32_rate"] = r.tflops / ceil["fma_TFLOPs"]
                    r.extra["frac_sgemm"] = r.tflops / ceil["sgemm_TFLOPs"]
                if r.gbps is not None:
                    r.extra["frac_copy_bw"] = r.gbps / ceil["copy_GBps"]
            doc = {"environment": env, "ceilings": ceil, "device": "gpu",
                   "results": [asdict(r) for r in results], "stage_errors": errors}
            if json_path:                       # written after every stage: a run cut short
                with open(json_path, "w") as f:  # keeps what it measured
                    json.dump(doc, f, indent=1)
        doc = {"environment": env, "ceilings": ceil, "device": "gpu",
               "results": [asdict(r) for r in results], "stage_errors": errors}
    if hasattr(progress, "close"):
        progress.close()
    progress("\n" + format_table(doc["results"]))
    if json_path:
        with open(json_path, "w") as f:
            json.dump(doc, f, indent=1)
        progress(f"wrote {json_path}")
    if plot_path:
        plot(doc, plot_path)
        progress(f"wrote {plot_path}")
    return doc


def run_cpu(conv, pools, ops, progress=print, reps=5, norms=()) -> dict:
    """No GPU: time the numpy backend (batch 1) and torch's CPU ops beside it."""
    import convgpu
    from convgpu.core.args import conv_out_size
    progress("convgpu bench: no GPU visible, so no device kernel is timed here. Timing the "
             "numpy backend at batch 1 on the CPU, with torch's CPU ops beside it if importable.")
    try:
        import torch
    except Exception:
        torch = None

    def clock(fn):
        fn()
        ts = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            ts.append((time.perf_counter() - t0) * 1e3)
        return quantiles(ts)

    rng = np.random.default_rng(0)
    results = []
    for at, sh in enumerate(conv if "conv2d" in ops else [], 1):
        step(progress, "conv2d (CPU)", at, len(conv), sh.name)
        N = 1
        P = conv_out_size(sh.H, sh.R, sh.stride, sh.pad, 1)
        g = sh.groups
        label = shape_label(sh.name, N, sh.C, sh.H, sh.K, sh.R, sh.stride, sh.pad, g)
        fl = conv_flops(N, sh.C, sh.K, sh.R, sh.R, P, P, g)
        x = rng.uniform(-1, 1, (N, sh.C, sh.H, sh.H)).astype(np.float32)
        w = rng.uniform(-1, 1, (sh.K, sh.C // g, sh.R, sh.R)).astype(np.float32)
        base = None
        if torch is not None:
            xt, wt = torch.from_numpy(x), torch.from_numpy(w)
            t = clock(lambda: torch.nn.functional.conv2d(xt, wt, None, sh.stride, sh.pad, 1, g))
            base = t["median_ms"]
            results.append(Result("conv2d", label, "torch-cpu", "float32", "ok", **t,
                                  tflops=fl / (base * 1e-3) / 1e12, vs_cudnn=1.0,
                                  gbps=conv_bytes(N, sh.C, sh.H, sh.H, sh.K, sh.R, sh.R, P, P, g, 4)
                                  / (base * 1e-3) / 1e9))
        by = conv_bytes(N, sh.C, sh.H, sh.H, sh.K, sh.R, sh.R, P, P, g, 4)
        for algo in ("im2col", "fft"):
            t = clock(lambda: convgpu.conv2d(x, w, None, sh.stride, sh.pad, groups=g, algo=algo))
            results.append(Result("conv2d", label, f"numpy:{algo}", "float32", "ok", **t,
                                  tflops=fl / (t["median_ms"] * 1e-3) / 1e12,
                                  gbps=by / (t["median_ms"] * 1e-3) / 1e9,
                                  vs_cudnn=ratio(base, t["median_ms"]) if base else None,
                                  extra={"baseline": "torch-cpu"}))
            progress(f"  {label:55s} numpy:{algo:8s} {t['median_ms']:9.2f} ms")
    for sh in pools if "pool" in ops else []:
        x = rng.standard_normal((1, sh.C, sh.H, sh.H)).astype(np.float32)
        label = f"{sh.name}: N1 C{sh.C} H{sh.H} k{sh.kernel} s{sh.stride} p{sh.pad}"
        t = clock(lambda: convgpu.max_pool2d(x, sh.kernel, sh.stride, sh.pad,
                                             ceil_mode=sh.ceil_mode, return_indices=True))
        results.append(Result("max_pool2d", label, "numpy:reference", "float32", "ok", **t))
        if torch is not None:
            xt = torch.from_numpy(x)
            tt = clock(lambda: torch.nn.functional.max_pool2d(xt, sh.kernel, sh.stride, sh.pad,
                                                              ceil_mode=sh.ceil_mode,
                                                              return_indices=True))
            results.append(Result("max_pool2d", label, "torch-cpu", "float32", "ok", **tt))
            results[-2].vs_cudnn = ratio(tt["median_ms"], t["median_ms"])
    for name, shape in norms if "norm" in ops else []:
        shape = (2,) + tuple(shape[1:])              # batch 2: training needs two values
        x = rng.standard_normal(shape).astype(np.float32)
        C = shape[1]
        label = f"{name}: {'x'.join(map(str, shape))}"
        rm, rv = np.zeros(C, np.float32), np.ones(C, np.float32)
        t = clock(lambda: convgpu.batch_norm(x, rm, rv, training=True))
        results.append(Result("batch_norm", label, "numpy:reference", "float32", "ok", **t))
        if torch is not None:
            xt, rmt, rvt = torch.from_numpy(x), torch.from_numpy(rm), torch.from_numpy(rv)
            tt = clock(lambda: torch.nn.functional.batch_norm(xt, rmt, rvt, training=True))
            results.append(Result("batch_norm", label, "torch-cpu", "float32", "ok", **tt))
            results[-2].vs_cudnn = ratio(tt["median_ms"], t["median_ms"])
    return {"environment": environment(), "device": "cpu", "ceilings": {},
            "results": [asdict(r) for r in results]}


def format_table(results) -> str:
    head = ("op", "shape", "impl", "median ms", "q20-q80", "TFLOP/s", "GB/s", "vs base", "status")
    rows = []
    for r in results:
        ms = r.get("median_ms")
        rows.append((r["op"], r["shape"][:44], r["impl"], f"{ms:.3f}" if ms else "-",
                     f"{r['q20_ms']:.3f}-{r['q80_ms']:.3f}" if ms else "-",
                     f"{r['tflops']:.2f}" if r.get("tflops") else "-",
                     f"{r['gbps']:.0f}" if r.get("gbps") else "-",
                     f"{r['vs_cudnn']:.3f}x" if r.get("vs_cudnn") else "-", r["status"][:40]))
    widths = [max(len(str(x[i])) for x in [head] + rows) for i in range(len(head))]
    fmt = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()
    return "\n".join([fmt(head), fmt(["-" * w for w in widths])] + [fmt(r) for r in rows])


def plot(doc, path) -> None:
    """Left: per conv shape, the speed of each implementation relative to its baseline
    (cuDNN, or torch on the CPU). Right: roofline, achieved TFLOP/s against arithmetic
    intensity (FLOP per byte) with the measured ceilings."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    res = [r for r in doc["results"] if r["op"] == "conv2d" and r.get("vs_cudnn")
           and r["status"] == "ok" and not r["impl"].startswith(("cudnn", "torch"))]
    shapes_ = list(dict.fromkeys(r["shape"] for r in res))
    impls = list(dict.fromkeys(r["impl"] for r in res))
    fig, ax = plt.subplots(1, 2, figsize=(15, 5.5))
    width = 0.8 / max(1, len(impls))
    for j, im in enumerate(impls):
        vals = [next((r["vs_cudnn"] for r in res if r["shape"] == s and r["impl"] == im), 0)
                for s in shapes_]
        ax[0].bar(np.arange(len(shapes_)) + j * width, vals, width, label=im)
    ax[0].axhline(1.0, color="k", lw=0.8)
    ax[0].set_xticks(np.arange(len(shapes_)) + 0.4 - width / 2)
    ax[0].set_xticklabels([s.split(":")[0] for s in shapes_], rotation=40, ha="right", fontsize=7)
    ax[0].set_ylabel("speed relative to baseline (1 = cuDNN on a GPU, torch on the CPU)")
    ax[0].set_yscale("log")
    ax[0].set_title(f"conv2d forward, float32 ({doc['environment'].get('device') or 'CPU'})")
    if impls:
        ax[0].legend(fontsize=7)
    pts = [r for r in doc["results"] if r.get("tflops") and r.get("gbps") and r["status"] == "ok"]
    for im in dict.fromkeys(r["impl"] for r in pts):
        sel = [r for r in pts if r["impl"] == im]
        ax[1].scatter([r["tflops"] * 1e3 / r["gbps"] for r in sel], [r["tflops"] for r in sel],
                      s=14, label=im)
    ceil = doc.get("ceilings") or {}
    if ceil:
        ai = np.logspace(-1, 3.5, 100)
        fp32 = ceil.get("fma_TFLOPs", ceil["sgemm_TFLOPs"])      # older runs: cuBLAS SGEMM
        ax[1].plot(ai, np.minimum(ceil["copy_GBps"] * ai / 1e3, fp32), "k--", lw=1,
                   label="measured ceilings (copy, FP32 FMA)")
        if "tf32_TFLOPs" in ceil:
            ax[1].plot(ai, np.minimum(ceil["copy_GBps"] * ai / 1e3, ceil["tf32_TFLOPs"]), "k:",
                       lw=1, label="TF32 (cuBLAS GEMM)")
    ax[1].set(xscale="log", yscale="log", xlabel="arithmetic intensity (FLOP / byte)",
              ylabel="achieved TFLOP/s", title="roofline")
    if pts or ceil:
        ax[1].legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
