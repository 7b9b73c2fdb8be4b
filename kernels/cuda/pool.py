"""Launchers of pool.cu: max pooling with argmax (forward; the backward as a gather by
stride-sized cells or by element, indices validated on the device), average and adaptive
average pooling and their backward gathers."""
from __future__ import annotations

import numpy as np

from convgpu.arrays import xp_of
from convgpu.kernels.cuda.launch import (THREADS, ceil_div, elementwise_grid, fastdiv, i32,
                                         index_type, null_or)
from convgpu.kernels.cuda.module import ctype, get_function
from convgpu.kernels.outputs import contiguous, empty


def pool_ints(a, H, W, P, Q, dil=True):
    d = a.dilation if dil else (1, 1)
    return i32(H, W, P, Q, a.kernel[0], a.kernel[1], a.stride[0], a.stride[1], a.padding[0],
                a.padding[1], d[0], d[1], a.count_include_pad, a.divisor_override or 0) + \
        tuple(np.uint64(fastdiv(v)) for v in (Q, P, W, H, a.stride[0], a.stride[1]))



def max_pool2d_window(a) -> int:
    """The K of max_pool2d_fwd<T, I, K>: 2 or 3 for square windows of that size (unrolled
    exactly, clamped without masks at dilation 1), else 0 (the general kernel)."""
    kh, kw = a.kernel
    return kh if kh == kw and kh in (2, 3) else 0


def max_pool2d(a, x):
    y = empty(a.y_shape, x.dtype, x)
    idx = empty(a.y_shape, np.int64, x)
    it, ic = index_type(max(y.size, x.size))
    fn = get_function("pool.cu", f"max_pool2d_fwd<{ctype(x.dtype)}, {it}, {max_pool2d_window(a)}>")
    fn(elementwise_grid(y.size), (THREADS,),
       (x, y, idx, ic(a.N * a.C), *pool_ints(a, a.H, a.W, a.P, a.Q)))
    return y, idx


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
    fn = get_function("pool.cu", f"max_pool2d_fwd_tiled<{ctype(x.dtype)}, {it}, "
                                 f"{max_pool2d_window(a)}>")
    fn((min(blocks, TILED_MAX_GRID),), (THREADS,),
       (contiguous(x), y, idx, ic(a.N * a.C), *i32(to, bands),
        *pool_ints(a, a.H, a.W, a.P, a.Q)), shared_mem=smem)
    return y, idx


def max_pool2d_cells(a):
    """(CH, CW), the grid of stride-sized input cells of max_pool2d_bwd_cells, or None where
    that kernel does not serve: strides up to 2 and windows reaching at most one stride back
    ((k - 1) * d < 2 * s per axis), so that 2 x 2 candidate windows cover a cell."""
    if not all(s <= 2 and (k - 1) * d < 2 * s
               for k, s, d in zip(a.kernel, a.stride, a.dilation)):
        return None
    return tuple((n - 1 + p) // s + 1 for n, p, s in zip((a.H, a.W), a.padding, a.stride))


POOL_BAD_RANGE, POOL_BAD_WINDOW = 1, 2      # pool.cu's validation flag bits


def _index_flag(a, like):
    """The device flag the gathers set for a bad index (pool.cu index_violation), or None
    where the caller asked for no validation."""
    return xp_of(like).zeros(1, np.int32) if a.check_indices else None


def _raise_if_flagged(bad, a) -> None:
    """After the launch: one 4-byte read (it waits for the kernel), ValueError if set."""
    flags = 0 if bad is None else int(bad[0])
    if flags & POOL_BAD_RANGE:
        raise ValueError(f"max_pool2d_backward: indices must lie in [0, {a.H * a.W}) (H*W of "
                         "the input); found one outside")
    if flags:
        raise ValueError("max_pool2d_backward: an index lies outside its window: indices must "
                         f"be those max_pool2d returned for kernel_size={a.kernel}, "
                         f"stride={a.stride}, padding={a.padding}, dilation={a.dilation}")


def max_pool2d_backward_gather(a, gy, idx):
    """The gather by cells where it serves (max_pool2d_cells), else by element. Both only
    compare indices, so each index is validated on the device (in its plane, inside its
    window: the by-cells kernel inline, the by-element path with max_pool2d_check_indices)
    and a bad one raises ValueError after the launch: one 4-byte read, which waits for the
    kernel. a.check_indices=False skips it (indices known to come from max_pool2d)."""
    g = a.pool                       # the forward's geometry
    gx = empty(g.x_shape, gy.dtype, gy)
    bad = _index_flag(a, gy)
    cells = max_pool2d_cells(g)
    if cells:
        CH, CW = cells
        it, ic = index_type(max(gx.size, g.N * g.C * CH * CW))
        fn = get_function("pool.cu", f"max_pool2d_bwd_cells<{ctype(gy.dtype)}, {it}>")
        fn(elementwise_grid(g.N * g.C * CH * CW), (THREADS,),
           (gy, idx, gx, null_or(bad), ic(g.N * g.C), *i32(CH, CW),
            np.uint64(fastdiv(CH)), np.uint64(fastdiv(CW)), *pool_ints(g, g.H, g.W, g.P, g.Q)))
    else:
        it, ic = index_type(max(gx.size, idx.size))
        if bad is not None:
            get_function("pool.cu", f"max_pool2d_check_indices<{it}>")(
                elementwise_grid(idx.size), (THREADS,),
                (idx, bad, ic(g.N * g.C), *pool_ints(g, g.H, g.W, g.P, g.Q)))
        fn = get_function("pool.cu", f"max_pool2d_bwd_gather<{ctype(gy.dtype)}, {it}>")
        fn(elementwise_grid(gx.size), (THREADS,),
           (gy, idx, gx, ic(g.N * g.C), *pool_ints(g, g.H, g.W, g.P, g.Q)))
    _raise_if_flagged(bad, g)
    return gx


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
    bad = _index_flag(a, gy)
    blocks = g.N * g.C * bands
    it, ic = index_type(max(gx.size, idx.size, blocks))
    fn = get_function("pool.cu", f"max_pool2d_bwd_tiled<{ctype(gy.dtype)}, {it}>")
    fn((min(blocks, TILED_MAX_GRID),), (THREADS,),
       (gy, idx, gx, null_or(bad), ic(g.N * g.C), *i32(ti, bands),
        *pool_ints(g, g.H, g.W, g.P, g.Q)), shared_mem=smem)
    _raise_if_flagged(bad, g)
    return gx


def avg_pool2d(a, x):
    y = empty(a.y_shape, x.dtype, x)
    it, ic = index_type(max(y.size, x.size))
    fn = get_function("pool.cu", f"avg_pool2d_fwd<{ctype(x.dtype)}, {it}>")
    fn(elementwise_grid(y.size), (THREADS,),
       (x, y, ic(a.N * a.C), *pool_ints(a, a.H, a.W, a.P, a.Q, dil=False)))
    return y


def avg_pool2d_backward(a, gy):
    gx = empty(a.x_shape, gy.dtype, gy)
    it, ic = index_type(gx.size)
    fn = get_function("pool.cu", f"avg_pool2d_bwd_gather<{ctype(gy.dtype)}, {it}>")
    fn(elementwise_grid(gx.size), (THREADS,),
       (gy, gx, ic(a.N * a.C), *pool_ints(a, a.H, a.W, a.P, a.Q, dil=False)))
    return gx


def adaptive_avg_pool2d(a, x):
    y = empty(a.y_shape, x.dtype, x)
    it, ic = index_type(max(y.size, x.size))
    fn = get_function("pool.cu", f"adaptive_avg_pool2d_fwd<{ctype(x.dtype)}, {it}>")
    fn(elementwise_grid(y.size), (THREADS,), (x, y, ic(a.N * a.C), *i32(a.H, a.W, a.P, a.Q)))
    return y


def adaptive_avg_pool2d_backward(a, gy):
    gx = empty(a.x_shape, gy.dtype, gy)
    it, ic = index_type(max(gx.size, gy.size))
    fn = get_function("pool.cu", f"adaptive_avg_pool2d_bwd<{ctype(gy.dtype)}, {it}>")
    fn(elementwise_grid(gx.size), (THREADS,),
       (contiguous(gy), gx, ic(a.N * a.C), *i32(a.H, a.W, a.P, a.Q)))
    return gx

