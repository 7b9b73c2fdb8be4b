"""Launchers of pool_nhwc.cu: max (with argmax indices) and average pooling on channels-last
(NHWC) tensors, forward and the backward gathers (max: the indices validated on the device,
as pool.py's gathers); adaptive and global average pooling and their gradients."""
from __future__ import annotations

import numpy as np

from convgpu.kernels.cuda.launch import THREADS, elementwise_grid, fastdiv, index_type
from convgpu.kernels.cuda.module import ctype, get_function
from convgpu.kernels.cuda.pool import index_flag, pool_ints, raise_if_flagged
from convgpu.kernels.outputs import contiguous, empty


def nhwc_supports(a):
    """The kernels index a plane (the stored indices h*W + w) in 32 bits; the max-pool
    gather needs the forward's geometry."""
    if hasattr(a, "pool"):                          # max_pool2d_backward's record
        if a.pool is None:
            return "needs the forward's kernel_size/stride/padding/dilation to gather"
        a = a.pool
    if a.H * a.W >= 2 ** 31:
        return "the CUDA C kernels index within a plane in 32 bits (H*W < 2**31)"
    return None


def max_pool2d(a, x):
    y = empty(a.y_shape, x.dtype, x)
    idx = empty(a.y_shape, np.int64, x)
    it, ic = index_type(max(y.size, x.size))
    fn = get_function("pool_nhwc.cu", f"max_pool2d_nhwc_fwd<{ctype(x.dtype)}, {it}>")
    fn(elementwise_grid(y.size), (THREADS,),
       (x, y, idx, ic(a.N), np.int32(a.C), np.uint64(fastdiv(a.C)),
        *pool_ints(a, a.H, a.W, a.P, a.Q)))
    return y, idx


def avg_pool2d(a, x):
    y = empty(a.y_shape, x.dtype, x)
    it, ic = index_type(max(y.size, x.size))
    fn = get_function("pool_nhwc.cu", f"avg_pool2d_nhwc_fwd<{ctype(x.dtype)}, {it}>")
    fn(elementwise_grid(y.size), (THREADS,),
       (x, y, ic(a.N), np.int32(a.C), np.uint64(fastdiv(a.C)),
        *pool_ints(a, a.H, a.W, a.P, a.Q, dil=False)))
    return y


def _nc(a):
    return np.int32(a.C), np.uint64(fastdiv(a.C))


def max_pool2d_backward_gather(a, gy, idx):
    """Each index is validated on the device (in its plane, inside its window) unless
    a.check_indices is False; a bad one raises ValueError after the launch (one 4-byte
    read, which waits for the kernel)."""
    g = a.pool
    gx = empty(g.x_shape, gy.dtype, gy)
    bad = index_flag(a, gy)
    it, ic = index_type(max(gx.size, idx.size))
    if bad is not None:
        get_function("pool_nhwc.cu", f"max_pool2d_nhwc_check_indices<{it}>")(
            elementwise_grid(idx.size), (THREADS,),
            (idx, bad, ic(g.N), *_nc(g), *pool_ints(g, g.H, g.W, g.P, g.Q)))
    get_function("pool_nhwc.cu", f"max_pool2d_nhwc_bwd_gather<{ctype(gy.dtype)}, {it}>")(
        elementwise_grid(gx.size), (THREADS,),
        (gy, idx, gx, ic(g.N), *_nc(g), *pool_ints(g, g.H, g.W, g.P, g.Q)))
    raise_if_flagged(bad, g)
    return gx


def avg_pool2d_backward(a, gy):
    gx = empty(a.x_shape, gy.dtype, gy)
    it, ic = index_type(max(gx.size, gy.size))
    get_function("pool_nhwc.cu", f"avg_pool2d_nhwc_bwd_gather<{ctype(gy.dtype)}, {it}>")(
        elementwise_grid(gx.size), (THREADS,),
        (gy, gx, ic(a.N), *_nc(a), *pool_ints(a, a.H, a.W, a.P, a.Q, dil=False)))
    return gx


def _i32(*v):
    return tuple(np.int32(x) for x in v)


def _adaptive(name, out_shape, src, N, C, H, W, P, Q):
    out = empty(out_shape, src.dtype, src)
    it, ic = index_type(max(out.size, src.size))
    get_function("pool_nhwc.cu", f"adaptive_avg_pool2d_nhwc_{name}<{ctype(src.dtype)}, {it}>")(
        elementwise_grid(out.size), (THREADS,), (src, out, ic(N), *_i32(C, H, W, P, Q)))
    return out


def adaptive_avg_pool2d(a, x):
    return _adaptive("fwd", a.y_shape, x, a.N, a.C, a.H, a.W, a.P, a.Q)


def adaptive_avg_pool2d_backward(a, gy):
    return _adaptive("bwd", a.x_shape, contiguous(gy), a.N, a.C, a.H, a.W, a.P, a.Q)


def global_avg_pool2d(rec, x):
    """(N, H, W, C) -> (N, C): the adaptive kernel with a 1 x 1 output."""
    N, H, W, C = rec.shape
    return _adaptive("fwd", (N, 1, 1, C), x, N, C, H, W, 1, 1).reshape(N, C)


def global_avg_pool2d_backward(rec, gy):
    N, H, W, C = rec.shape
    return _adaptive("bwd", rec.shape, contiguous(gy), N, C, H, W, 1, 1)
