"""The yardsticks: cuDNN and cuBLAS through torch at their best (cudnn.benchmark with
benchmark_limit 0, TF32 as the row asks), the kernels they ran, and the machine's ceilings
measured in the same run (copy bandwidth, our FP32 FMA rate, cuBLAS SGEMM and TF32 GEMM)."""
from __future__ import annotations

import contextlib
from typing import Dict, List, Optional

import numpy as np

from convgpu.tools.bench.method import Result, conv_label, quantiles


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


def _conv_baselines(torch, timer, op, sh, call, fl, by, dtype, out, layout="NCHW"):
    """The cuDNN columns of one conv problem (CUDNN_MODES; a half-precision row has no TF32
    column: TF32 means nothing for half inputs); {label: timing}."""
    from convgpu.tools.bench.precision import is_half
    got = {}
    half = is_half(dtype)
    for label, tf32, bench_on in CUDNN_MODES:
        if half and label == "cudnn_tf32":
            continue
        with cudnn_mode(torch, tf32, bench_on):
            try:
                t = timer.time(call)
                names = kernel_names(torch, call)
            except Exception as e:
                if not _oom(e):
                    raise
                out.append(Result(op, conv_label(sh), label, np.dtype(dtype).name,
                                  "not run: out of device memory", suite=sh.suite,
                                  count=sh.count, layout=layout))
                continue
        got[label] = t
        out.append(Result(op, conv_label(sh), label, np.dtype(dtype).name, "ok", **t,
                          tflops=fl / (t["median_ms"] * 1e-3) / 1e12,
                          gbps=by / (t["median_ms"] * 1e-3) / 1e9 if by else None,
                          extra={"kernels": names, "tf32": tf32, "cudnn_benchmark": bench_on,
                                 "cudnn_benchmark_limit": 0},
                          suite=sh.suite, count=sh.count, layout=layout))
    return got
