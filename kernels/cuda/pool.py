"""Launchers of pool.cu: max pooling with argmax (forward; the backward as a gather by
stride-sized cells or by element, indices validated on the device), average and adaptive
average pooling and their backward gathers. The half types (float16, bfloat16) take the same
kernels (FP32 arithmetic, one rounding per output), max pooling's general one (K = 0)."""
from __future__ import annotations

import numpy as np

from convgpu.arrays import xp_of
from convgpu.core.args import HALF_DTYPES
from convgpu.kernels.cuda.launch import (THREADS, ceil_div, elementwise_grid, fastdiv, i32,
                                         index_type, null_or)
from convgpu.kernels.cuda.module import ctype, get_function
from convgpu.kernels.outputs import contiguous, empty


def pool_ints(a, H, W, P, Q, dil=True):
    d = a.dilation if dil else (1, 1)
    return i32(H, W, P, Q, a.kernel[0], a.kernel[1], a.stride[0], a.stride[1], a.padding[0],
                a.padding[1], d[0], d[1], a.count_include_pad, a.divisor_override or 0) + \
        tuple(np.uint64(fastdiv(v)) for v in (Q, P, W, H, a.stride[0], a.stride[1]))



def _half(dtype) -> bool:
    return np.dtype(dtype) in HALF_DTYPES


def max_pool2d_window(a) -> int:
    """The K of max_pool2d_fwd<T, I, K>: 2 or 3 for square windows of that size (unrolled
    exactly, clamped without masks at dilation 1), else 0 (the general kernel)."""
    kh, kw = a.kernel
    return kh if kh == kw and kh in (2, 3) else 0


def max_pool2d(a, x):
    y = empty(a.y_shape, x.dtype, x)
    idx = empty(a.y_shape, np.int64, x)
    it, ic = index_type(max(y.size, x.size))
    # the half types: the general kernel, whose loop stores the first maximum's own bits
    K = 0 if _half(x.dtype) else max_pool2d_window(a)
    fn = get_function("pool.cu", f"max_pool2d_fwd<{ctype(x.dtype)}, {it}, {K}>")
    fn(elementwise_grid(y.size), (THREADS,),
       (x, y, idx, ic(a.N * a.C), *pool_ints(a, a.H, a.W, a.P, a.Q)))
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


def index_flag(a, like):
    """The device flag the gathers set for a bad index (pool.cu index_violation), or None
    where the caller asked for no validation."""
    return xp_of(like).zeros(1, np.int32) if a.check_indices else None


def raise_if_flagged(bad, a) -> None:
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
    bad = index_flag(a, gy)
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
    raise_if_flagged(bad, g)
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

