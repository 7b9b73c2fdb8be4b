"""Launchers of pool_tiled.cu: the "tiled" max pooling forward and backward, superseded
(measured slower than cuda/pool.py's kernels on every benchmarked shape: pool_tiled.cu's
header, bench/NOTES.md). Registered as algo="tiled" only under CONVGPU_DEV=1."""
from __future__ import annotations

import numpy as np

from convgpu.kernels.cuda.launch import THREADS, ceil_div, i32, index_type, null_or
from convgpu.kernels.cuda.module import ctype, get_function
from convgpu.kernels.cuda.pool import (index_flag, max_pool2d_cells, max_pool2d_window,
                                       pool_ints, raise_if_flagged)
from convgpu.kernels.outputs import contiguous, empty

# the tiled pooling kernels (max_pool2d_fwd_tiled, max_pool2d_bwd_tiled): shared memory per
# block for the staged rows, the fewest blocks a launch should have, the most it launches
TILED_SHARED_BUDGET = 24 * 1024
TILED_MIN_BLOCKS = 1024             # about 8 blocks per SM of a 132-SM GPU
TILED_MAX_GRID = 1 << 20            # blocks launched; each loops over its share of the bands


def max_pool2d_fwd_tiled_plan(a, itemsize):
    """(TO, bands, shared bytes) of max_pool2d_fwd_tiled: bands of TO output rows whose input
    rows ((TO - 1) * sh + K of them) fit TILED_SHARED_BUDGET, finer where planes are few; None
    where it does not serve (windows other than square 2x2 / 3x3, dilation, a row too long)."""
    K = max_pool2d_window(a)
    if K == 0 or tuple(a.dilation) != (1, 1):
        return None
    sh = a.stride[0]
    to = min(a.P, (TILED_SHARED_BUDGET // (a.W * itemsize) - K) // sh + 1)
    if to < 1:
        return None
    planes = a.N * a.C
    if planes * ceil_div(a.P, to) < TILED_MIN_BLOCKS:
        to = max(1, min(to, ceil_div(a.P, ceil_div(TILED_MIN_BLOCKS, planes))))
    return to, ceil_div(a.P, to), ((to - 1) * sh + K) * a.W * itemsize


def max_pool2d_tiled(a, x):
    """max_pool2d_fwd_tiled: the direct kernel's windows (bitwise its answer) from a band of
    input rows in shared memory, loads and stores in warp-wide runs."""
    plan = max_pool2d_fwd_tiled_plan(a, x.dtype.itemsize)
    if plan is None:
        raise ValueError("max_pool2d (cuda, tiled): square 2x2 or 3x3 windows at dilation 1")
    to, bands, smem = plan
    y = empty(a.y_shape, x.dtype, x)
    idx = empty(a.y_shape, np.int64, x)
    blocks = a.N * a.C * bands
    it, ic = index_type(max(y.size, x.size, blocks))
    fn = get_function("pool_tiled.cu", f"max_pool2d_fwd_tiled<{ctype(x.dtype)}, {it}, "
                                 f"{max_pool2d_window(a)}>")
    fn((min(blocks, TILED_MAX_GRID),), (THREADS,),
       (contiguous(x), y, idx, ic(a.N * a.C), *i32(to, bands),
        *pool_ints(a, a.H, a.W, a.P, a.Q)), shared_mem=smem)
    return y, idx


def max_pool2d_tiled_plan(a, itemsize):
    """(TI, bands, shared bytes) of max_pool2d_bwd_tiled: bands of TI cell rows whose TI + 1
    output rows (indices and gradients) fit TILED_SHARED_BUDGET, cut finer where the planes
    are too few to give TILED_MIN_BLOCKS blocks; None where it does not serve (the cells
    kernel's conditions, or a row too long for one band of one cell row)."""
    cells = max_pool2d_cells(a)
    if not cells:
        return None
    CH, entry = cells[0], 8 + itemsize
    ti = min(CH, TILED_SHARED_BUDGET // (a.Q * entry) - 1)
    if ti < 1:
        return None
    planes = a.N * a.C
    if planes * ceil_div(CH, ti) < TILED_MIN_BLOCKS:
        ti = max(1, min(ti, ceil_div(CH, ceil_div(TILED_MIN_BLOCKS, planes))))
    return ti, ceil_div(CH, ti), (ti + 1) * a.Q * entry


def max_pool2d_backward_tiled(a, gy, idx):
    """The gather with a band of output rows staged in shared memory (max_pool2d_bwd_tiled):
    the same sums in the same order as the cells kernel, coalesced loads and stores; indices
    validated on the device as there."""
    g = a.pool                       # the forward's geometry
    plan = max_pool2d_tiled_plan(g, gy.dtype.itemsize)
    if plan is None:
        raise ValueError("max_pool2d_backward (cuda, tiled): the geometry needs strides <= 2 "
                         "and windows reaching at most one stride back")
    ti, bands, smem = plan
    gx = empty(g.x_shape, gy.dtype, gy)
    bad = index_flag(a, gy)
    blocks = g.N * g.C * bands
    it, ic = index_type(max(gx.size, idx.size, blocks))
    fn = get_function("pool_tiled.cu", f"max_pool2d_bwd_tiled<{ctype(gy.dtype)}, {it}>")
    fn((min(blocks, TILED_MAX_GRID),), (THREADS,),
       (gy, idx, gx, null_or(bad), ic(g.N * g.C), *i32(ti, bands),
        *pool_ints(g, g.H, g.W, g.P, g.Q)), shared_mem=smem)
    raise_if_flagged(bad, g)
    return gx
