"""Launchers of batch normalisation on either layout: NCHW on norm.cu (norm.py), NHWC (the
(M, C, 1) view of an (N, H, W, C) input, M = N*H*W) on norm_nhwc.cu's reductions, 32
channels a block, and norm.cu's finish kernels and flat elementwise passes over the same
memory; every dtype norm.py serves (the half types in FP32, statistics in float32 or the
data's type)."""
from __future__ import annotations

import numpy as np

from convgpu.kernels.cuda import norm
from convgpu.kernels.cuda.launch import MAX_GRID_YZ, ceil_div
from convgpu.kernels.cuda.module import ctype, get_function

LANES = 32                  # norm_nhwc.cu: NHWC_LANES, the channels of a block
ROWS = norm.NORM_THREADS // LANES


def nhwc_splits(C: int, M: int) -> int:
    """S, the row splits of the reductions: about norm.NORM_BLOCKS blocks in all, each
    thread at least norm.NORM_MIN_PER_THREAD rows. A function of the shape only, so the
    summation order (and the result) is too."""
    return max(1, min(ceil_div(norm.NORM_BLOCKS, ceil_div(C, LANES)),
                      M // (ROWS * norm.NORM_MIN_PER_THREAD), MAX_GRID_YZ))


def _splits(C, M, L):
    return nhwc_splits(C, M)


def _partials(x3, part):
    """Block (32 channels, split s): part[c, s] = (mean, m2) of split s's rows."""
    M, C, _ = x3.shape
    S = part.shape[1]
    get_function("norm_nhwc.cu", f"batch_norm_nhwc_partials<{ctype(x3.dtype)}>")(
        (ceil_div(C, LANES), S), (norm.NORM_THREADS,),
        (x3, part, np.int64(M), np.int32(C), np.int32(S)))


def _bwd_partials(g3, x3, mean, part, pd):
    M, C, _ = x3.shape
    S = part.shape[1]
    targs = norm.template_args(x3.dtype, pd)
    get_function("norm_nhwc.cu", f"batch_norm_nhwc_bwd_partials<{targs}>")(
        (ceil_div(C, LANES), S), (norm.NORM_THREADS,),
        (g3, x3, mean, part, np.int64(M), np.int32(C), np.int32(S)))


def batch_norm(a, x3, running_mean, running_var, w, b, h):
    """NHWC: norm.cu's launch sequence with this file's reductions on the (M, C, 1) view."""
    nhwc = a.layout == "NHWC"
    return norm.batch_norm(a, x3, running_mean, running_var, w, b, h,
                           *((_splits, _partials) if nhwc else ()))


def batch_norm_backward(a, g3, x3, mean, invstd, w):
    nhwc = a.layout == "NHWC"
    return norm.batch_norm_backward(a, g3, x3, mean, invstd, w,
                                    *((_splits, _bwd_partials) if nhwc else ()))
