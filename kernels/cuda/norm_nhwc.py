"""Launchers of batch normalisation on either layout: NCHW on norm.cu (norm.py), NHWC (the
(M, C, 1) view of an (N, H, W, C) input, M = N*H*W) on norm_nhwc.cu's reductions, 32
channels a block, and norm.cu's flat elementwise passes over the same memory."""
from __future__ import annotations

import numpy as np

from convgpu.kernels.cuda import norm
from convgpu.kernels.cuda.launch import MAX_GRID_YZ, THREADS, ceil_div, null_or
from convgpu.kernels.cuda.module import ctype, get_function
from convgpu.kernels.outputs import contiguous, empty

LANES = 32                  # norm_nhwc.cu: NHWC_LANES, the channels of a block
ROWS = norm.NORM_THREADS // LANES


def nhwc_splits(C: int, M: int) -> int:
    """S, the row splits of the reductions: about norm.NORM_BLOCKS blocks in all, each
    thread at least norm.NORM_MIN_PER_THREAD rows. A function of the shape only, so the
    summation order (and the result) is too."""
    return max(1, min(ceil_div(norm.NORM_BLOCKS, ceil_div(C, LANES)),
                      M // (ROWS * norm.NORM_MIN_PER_THREAD), MAX_GRID_YZ))


def supports(a):
    """norm_nhwc.cu's reductions are float32 / float64 (the half types: NCHW only, norm.cu)."""
    if a.layout == "NHWC" and a.dtype in ("float16", "bfloat16"):
        return f"NHWC batch norm serves float32 and float64, not {a.dtype}"
    return None


def _nhwc(name, dtype):
    return get_function("norm_nhwc.cu", f"batch_norm_nhwc_{name}<{ctype(dtype)}>")


def batch_norm(a, x3, running_mean, running_var, w, b, h):
    if a.layout != "NHWC":
        return norm.batch_norm(a, x3, running_mean, running_var, w, b, h)
    M, C, _ = x3.shape
    t = x3.dtype.type
    mean, invstd = empty((C,), x3.dtype, x3), empty((C,), x3.dtype, x3)
    S = nhwc_splits(C, M) if a.training else 0
    part = empty((C, S, 3), x3.dtype, x3) if a.training else None   # evaluation reads none
    if a.training:
        _nhwc("partials", x3.dtype)((ceil_div(C, LANES), S), (norm.NORM_THREADS,),
                                    (x3, part, np.int64(M), np.int32(C), np.int32(S)))
    _nhwc("finish", x3.dtype)((ceil_div(C, THREADS),), (THREADS,),
                              (null_or(part), mean, invstd, null_or(running_mean),
                               null_or(running_var), np.int32(C), np.int32(S),
                               np.int32(a.training), np.int32(a.update_running),
                               t(h.momentum), t(h.eps), t(M / max(M - 1, 1))))
    y = empty(x3.shape, x3.dtype, x3)
    norm._norm_apply("apply", x3, (x3, y), (x3, mean, invstd, null_or(w), null_or(b), y), ())
    return y, mean, invstd


def batch_norm_backward(a, g3, x3, mean, invstd, w):
    if a.layout != "NHWC":
        return norm.batch_norm_backward(a, g3, x3, mean, invstd, w)
    M, C, _ = x3.shape
    S = nhwc_splits(C, M)
    g3 = contiguous(g3)
    part = empty((C, S, 2), x3.dtype, x3)
    _nhwc("bwd_partials", x3.dtype)((ceil_div(C, LANES), S), (norm.NORM_THREADS,),
                                    (g3, x3, mean, part, np.int64(M), np.int32(C), np.int32(S)))
    gw, gb = empty((C,), x3.dtype, x3), empty((C,), x3.dtype, x3)
    get_function("norm.cu", f"batch_norm_bwd_finish<{ctype(x3.dtype)}>")(
        (ceil_div(C, THREADS),), (THREADS,),
        (part, invstd, gw, gb, np.int32(C), np.int32(S), null_or(None), null_or(None)))
    gx = empty(x3.shape, x3.dtype, x3)
    norm._norm_apply("bwd_apply", x3, (g3, x3, gx),
                     (g3, x3, mean, invstd, null_or(w), gw, gb, gx),
                     (np.int64(M), np.int32(a.training)))
    return gx, gw, gb
