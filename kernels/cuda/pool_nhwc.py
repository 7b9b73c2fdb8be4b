"""Launchers of pool_nhwc.cu: max (with argmax indices) and average pooling forward on
channels-last (NHWC) tensors."""
from __future__ import annotations

import numpy as np

from convgpu.kernels.cuda.launch import THREADS, elementwise_grid, fastdiv, index_type
from convgpu.kernels.cuda.module import ctype, get_function
from convgpu.kernels.cuda.pool import pool_ints
from convgpu.kernels.outputs import empty


def nhwc_supports(a):
    """The kernels index a plane (the stored indices h*W + w) in 32 bits."""
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
