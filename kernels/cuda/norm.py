"""Launchers of norm.cu: batch normalisation, each channel's rows split over several blocks
(Welford per thread, Chan's merge in a fixed order), then an elementwise pass over planes or
flat. The half types (float16, bfloat16) compute in FP32 (norm.cu's acc_t), with parameters
and statistics in float32 (torch's mixed form) or in the data's type."""
from __future__ import annotations

import numpy as np

from convgpu.kernels.cuda.launch import (MAX_GRID_YZ, THREADS, aligned16, ceil_div,
                                         elementwise_grid, null_or)
from convgpu.kernels.cuda.module import acc_dtype, ctype, get_function
from convgpu.kernels.outputs import contiguous, empty

NORM_THREADS = 256          # norm.cu: NORM_THREADS
NORM_BLOCKS = 1024          # blocks the splits aim for: several per SM on any current GPU
NORM_MIN_PER_THREAD = 4     # values each thread of a split reduces, at least


def norm_splits(C: int, N: int, L: int) -> int:
    """S, the blocks per channel of the reductions, each a run of whole rows: enough for
    about NORM_BLOCKS blocks in all, but no more than the N rows and no split with fewer
    than NORM_MIN_PER_THREAD values per thread. A function of the shape only, so the
    summation order (and the result) is too."""
    return max(1, min(ceil_div(NORM_BLOCKS, C), N, N * L // (NORM_THREADS * NORM_MIN_PER_THREAD),
                      MAX_GRID_YZ))


NORM_PLANE_MIN = 1024                    # planes this long take the plane kernels
NORM_SLICE_MIN = 4 * NORM_THREADS        # a plane block's slice: 4 values per thread at least
NORM_FLAT_PER_THREAD = 4                 # the flat kernels' values per thread (grid-stride)


def norm_plane_grid(N: int, C: int, L: int, vec: int = 4):
    """(slices, plane blocks, slice length) of the plane kernels, or None where the N * C
    planes are shorter than NORM_PLANE_MIN (the flat kernels then): a plane is cut into
    slices only where there are too few planes for about 2 * NORM_BLOCKS blocks, each slice
    at least NORM_SLICE_MIN values and a multiple of vec (a whole number of 16-byte vectors:
    4 floats or doubles' pairs, 8 for the half types)."""
    if L < NORM_PLANE_MIN:
        return None
    planes = N * C
    slices = max(1, min(ceil_div(2 * NORM_BLOCKS, planes), L // NORM_SLICE_MIN))
    length = ceil_div(ceil_div(L, slices), vec) * vec
    return ceil_div(L, length), min(planes, MAX_GRID_YZ), length


def template_args(dtype, pdtype, *middle):
    """norm.cu's template arguments: the data type, `middle` (a vector width), and the
    parameters' type P where it is not the data's (P = T is the default)."""
    t = [ctype(dtype), *map(str, middle)]
    if pdtype is not None and np.dtype(pdtype) != np.dtype(dtype):
        t.append(ctype(pdtype))
    return ", ".join(t)


def _norm(name, dtype, pdtype=None):
    return get_function("norm.cu", f"batch_norm_{name}<{template_args(dtype, pdtype)}>")


def _norm_planes(name, L, arrays, pdtype=None):
    """The plane kernel: 16-byte vectors where the planes' length and every array's base
    allow them, single values otherwise."""
    dtype = arrays[0].dtype
    v = 16 // dtype.itemsize
    if L % v or not aligned16(*arrays):
        v = 1
    targs = template_args(dtype, pdtype, v)
    return get_function("norm.cu", f"batch_norm_{name}_planes<{targs}>")


def _norm_apply(name, x3, vectored, head, tail, pdtype=None):
    """An elementwise pass of batch norm (apply, bwd_apply) over x3's (N, C, L): the plane
    kernel where norm_plane_grid gives a grid (vectors if every array in `vectored` allows
    them), else the flat one; its arguments head + the shape's + tail."""
    N, C, L = x3.shape
    plan = norm_plane_grid(N, C, L, max(4, 16 // x3.dtype.itemsize))
    if plan is not None:
        slices, rows, length = plan
        _norm_planes(name, L, vectored, pdtype)(
            (slices, rows), (NORM_THREADS,),
            (*head, np.int64(N * C), np.int32(C), np.int64(L), np.int64(length), *tail))
    else:
        _norm(name, x3.dtype, pdtype)(
            elementwise_grid(ceil_div(x3.size, NORM_FLAT_PER_THREAD)), (THREADS,),
            (*head, np.int64(x3.size), np.int32(C), np.int64(L), *tail))



def _partials(x3, part):
    """Block (c, s) reduces split s of channel c's rows to part[c, s] = (mean, m2)."""
    N, C, L = x3.shape
    S = part.shape[1]
    _norm("partials", x3.dtype)((C, S), (NORM_THREADS,),
                                (x3, part, np.int32(N), np.int32(C), np.int64(L), np.int32(S)))


def _bwd_partials(g3, x3, mean, part, pd):
    """Block (c, s): part[c, s] = (sum gy, sum gy (x - mean)) over split s."""
    N, C, L = x3.shape
    S = part.shape[1]
    _norm("bwd_partials", x3.dtype, pd)((C, S), (NORM_THREADS,),
                                        (g3, x3, mean, part, np.int32(N), np.int32(C),
                                         np.int64(L), np.int32(S)))


def batch_norm(a, x3, running_mean, running_var, w, b, h, splits=None, partials=_partials):
    """x3: (N, C, L). splits (the reductions' S) and partials (their launch into a (C, S, 2)
    array) are norm_nhwc.py's for an NHWC input's (M, C, 1) view."""
    N, C, L = x3.shape
    ad = acc_dtype(x3.dtype)                 # the kernels' arithmetic: float32 for half data
    pd = np.dtype(a.stats_dtype or x3.dtype)   # the parameters' and statistics' dtype
    M, t = N * L, ad.type
    # the statistics the apply pass reads, in ad; rounded to pd as well where it is narrower
    mean, invstd = empty((C,), ad, x3), empty((C,), ad, x3)
    narrow = np.dtype(pd) != ad
    mean_p, invstd_p = (empty((C,), pd, x3), empty((C,), pd, x3)) if narrow else (None, None)
    S = (splits or norm_splits)(C, N, L) if a.training else 0
    part = empty((C, S, 2), ad, x3) if a.training else None   # evaluation reads none
    if a.training:
        partials(x3, part)
    _norm("finish", x3.dtype, pd)((ceil_div(C, THREADS),), (THREADS,),
                                  (null_or(part), mean, invstd, null_or(running_mean),
                                   null_or(running_var), np.int64(N), np.int32(C), np.int64(L),
                                   np.int32(S), np.int32(a.training),
                                   np.int32(a.update_running), t(h.momentum), t(h.eps),
                                   t(M / max(M - 1, 1)), null_or(mean_p), null_or(invstd_p)))
    y = empty(x3.shape, x3.dtype, x3)
    _norm_apply("apply", x3, (x3, y), (x3, mean, invstd, null_or(w), null_or(b), y), (), pd)
    return (y, mean_p, invstd_p) if narrow else (y, mean, invstd)


def batch_norm_backward(a, g3, x3, mean, invstd, w, splits=None, partials=_bwd_partials):
    N, C, L = x3.shape
    M, S = N * L, (splits or norm_splits)(C, N, L)
    ad, pd = acc_dtype(x3.dtype), np.dtype(a.stats_dtype or x3.dtype)
    g3 = contiguous(g3)
    part = empty((C, S, 2), ad, x3)
    partials(g3, x3, mean, part, pd)
    # gw, gb returned in pd; the apply pass reads them unrounded (in ad) where pd is narrower
    gw, gb = empty((C,), pd, x3), empty((C,), pd, x3)
    narrow = np.dtype(pd) != ad
    gw_a, gb_a = (empty((C,), ad, x3), empty((C,), ad, x3)) if narrow else (gw, gb)
    _norm("bwd_finish", x3.dtype, pd)((ceil_div(C, THREADS),), (THREADS,),
                                      (part, invstd, gw, gb, np.int32(C), np.int32(S),
                                       null_or(gw_a if narrow else None),
                                       null_or(gb_a if narrow else None)))
    gx = empty(x3.shape, x3.dtype, x3)
    _norm_apply("bwd_apply", x3, (g3, x3, gx),
                (g3, x3, mean, invstd, null_or(w), gw_a, gb_a, gx),
                (np.int64(M), np.int32(a.training)), pd)
    return gx, gw, gb
