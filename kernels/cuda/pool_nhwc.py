"""Launchers of pool_nhwc.cu: max (with argmax indices) and average pooling on channels-last
(NHWC) tensors, forward and the backward gathers (max: the indices validated on the device,
as pool.py's gathers; the half types 8 channels a thread where they can be: lanes());
adaptive and global average pooling and their gradients."""
from __future__ import annotations

import numpy as np

from convgpu.kernels.cuda.launch import THREADS, elementwise_grid, fastdiv, index_type, vec8_fits
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


def lanes(C, *arrays):
    """V, the channels a thread of the four vector kernels takes: 8 for the half types where
    C is a multiple of 8 and every array's base is 16-byte aligned (one 16-byte load or
    store a tap), else 1."""
    return 8 if C % 8 == 0 and vec8_fits(arrays[0].dtype, *arrays) else 1


def _kernel(name, dtype, it, V):
    """A kernel of the four with V channels a thread (the <T, I> name where V = 1)."""
    return get_function("pool_nhwc.cu", f"{name}<{ctype(dtype)}, {it}{f', {V}' if V > 1 else ''}>")


def _nc(a, V=1):
    """C and the multiply-shift constant of the C / V channel groups."""
    return np.int32(a.C), np.uint64(fastdiv(a.C // V))


def max_pool2d(a, x):
    y = empty(a.y_shape, x.dtype, x)
    idx = empty(a.y_shape, np.int64, x)
    it, ic = index_type(max(y.size, x.size))
    V = lanes(a.C, x, y)
    _kernel("max_pool2d_nhwc_fwd", x.dtype, it, V)(
        elementwise_grid(y.size // V), (THREADS,),
        (x, y, idx, ic(a.N), *_nc(a, V), *pool_ints(a, a.H, a.W, a.P, a.Q)))
    return y, idx


def avg_pool2d(a, x):
    y = empty(a.y_shape, x.dtype, x)
    it, ic = index_type(max(y.size, x.size))
    V = lanes(a.C, x, y)
    _kernel("avg_pool2d_nhwc_fwd", x.dtype, it, V)(
        elementwise_grid(y.size // V), (THREADS,),
        (x, y, ic(a.N), *_nc(a, V), *pool_ints(a, a.H, a.W, a.P, a.Q, dil=False)))
    return y


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
    V = lanes(g.C, gy, gx)
    _kernel("max_pool2d_nhwc_bwd_gather", gy.dtype, it, V)(
        elementwise_grid(gx.size // V), (THREADS,),
        (gy, idx, gx, ic(g.N), *_nc(g, V), *pool_ints(g, g.H, g.W, g.P, g.Q)))
    raise_if_flagged(bad, g)
    return gx


def avg_pool2d_backward(a, gy):
    gx = empty(a.x_shape, gy.dtype, gy)
    it, ic = index_type(max(gx.size, gy.size))
    V = lanes(a.C, gy, gx)
    _kernel("avg_pool2d_nhwc_bwd_gather", gy.dtype, it, V)(
        elementwise_grid(gx.size // V), (THREADS,),
        (gy, gx, ic(a.N), *_nc(a, V), *pool_ints(a, a.H, a.W, a.P, a.Q, dil=False)))
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
