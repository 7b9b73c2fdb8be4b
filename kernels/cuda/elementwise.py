"""Launchers of elementwise.cu: relu and its backward, bias add, the fixed-order channel sum
(bias gradients), global average pooling and its backward, softmax cross-entropy and its
backward, and the fused optimiser steps (in place). Every kernel serves float32, float64 and
the half types (float16, bfloat16: FP32 arithmetic, scalars in float32); the half types'
relu, relu backward and bias add go by 16-byte vectors where every pointer is aligned."""
from __future__ import annotations

import numpy as np

from convgpu.kernels.cuda.launch import (THREADS, ceil_div, elementwise_grid, vec8_fits,
                                         warp_grid)
from convgpu.kernels.cuda.module import acc_dtype, ctype, get_function
from convgpu.kernels.outputs import contiguous, empty


def _ew(name, dtype):
    return get_function("elementwise.cu", f"{name}<{ctype(dtype)}>")


def _vec8_grid(n):
    """One thread per 8-element vector (the tail of n % 8 < 8 elements fits in the first
    vector's threads)."""
    return elementwise_grid(ceil_div(n, 8))


def relu(a, x):
    y = empty(x.shape, x.dtype, x)
    n = np.int64(x.size)
    if vec8_fits(x.dtype, x, y):
        _ew("relu_fwd_vec8", x.dtype)(_vec8_grid(x.size), (THREADS,), (x, y, n))
    else:
        _ew("relu_fwd", x.dtype)(elementwise_grid(x.size), (THREADS,), (x, y, n))
    return y


def relu_backward(a, gy, x):
    gx = empty(x.shape, x.dtype, x)
    gy = contiguous(gy)
    n = np.int64(x.size)
    if vec8_fits(x.dtype, gy, x, gx):
        _ew("relu_bwd_vec8", x.dtype)(_vec8_grid(x.size), (THREADS,), (gy, x, gx, n))
    else:
        _ew("relu_bwd", x.dtype)(elementwise_grid(x.size), (THREADS,), (gy, x, gx, n))
    return gx


def bias_add(a, x, b):
    y = empty(x.shape, x.dtype, x)
    b = contiguous(b)
    inner = int(np.prod(x.shape[2:], dtype=np.int64))
    args = (x, b, y, np.int64(x.size), np.int32(x.shape[1]), np.int64(inner))
    if vec8_fits(x.dtype, x, y):             # b is read element by element
        _ew("bias_add_vec8", x.dtype)(_vec8_grid(x.size), (THREADS,), args)
    else:
        _ew("bias_add_fwd", x.dtype)(elementwise_grid(x.size), (THREADS,), args)
    return y


def channel_sum(a3, scale=1.0, out_dtype=None):
    """(B, K, L) -> (K,): scale * the sum over B and L, in a fixed order, in acc_dtype of the
    output's dtype (out_dtype, a3's by default: FP32 sums of float32 rows into a half output
    are channel_sum<float, half type>)."""
    B, K, L = a3.shape
    od = np.dtype(out_dtype or a3.dtype)
    out = empty((K,), od, a3)
    name = (f"channel_sum<{ctype(a3.dtype)}>" if od == a3.dtype
            else f"channel_sum<{ctype(a3.dtype)}, {ctype(od)}>")
    get_function("elementwise.cu", name)(
        (K,), (THREADS,), (contiguous(a3), out, np.int32(B), np.int32(K), np.int64(L),
                           acc_dtype(od).type(scale)))
    return out


def backward_bias(a, gy):
    N, K = gy.shape[:2]
    return channel_sum(contiguous(gy).reshape(N, K, -1))


def global_avg_pool2d(a, x):
    N, C, H, W = a
    y = empty((N, C), x.dtype, x)
    _ew("plane_mean", x.dtype)(warp_grid(N * C), (THREADS,),
                               (x, y, np.int64(N * C), np.int32(H * W)))
    return y


def global_avg_pool2d_backward(a, gy):
    N, C, H, W = a
    gx = empty(a, gy.dtype, gy)
    _ew("plane_spread", gy.dtype)(elementwise_grid(gx.size), (THREADS,),
                                  (contiguous(gy), gx, np.int64(gx.size), np.int32(H * W)))
    return gx


def softmax_cross_entropy(a, z, labels):
    n, c = z.shape
    rows = empty((1, 1, n), acc_dtype(z.dtype), z)        # FP32 rows for the half types
    _ew("xent_rows", z.dtype)(warp_grid(n), (THREADS,),
                              (contiguous(z), contiguous(labels), rows, np.int32(n), np.int32(c)))
    return channel_sum(rows, 1.0 / n, z.dtype).reshape(())


def softmax_cross_entropy_backward(a, z, labels, scale=None):
    """The plain mean loss's gradient, times the scalar grad_output `scale` (an array of
    z's dtype) where given."""
    n, c = z.shape
    g = empty(z.shape, z.dtype, z)
    _ew("xent_bwd", z.dtype)(warp_grid(n), (THREADS,),
                             (contiguous(z), contiguous(labels),
                              contiguous(scale.reshape(1)) if scale is not None else np.uint64(0),
                              g, np.int32(n), np.int32(c)))
    return g



# optimiser steps (in place): the registry's (key, *arrays, hyperparameters)


def adam_step(a, p, g, m, v, h):
    _ew("adam_step", p.dtype)(
        elementwise_grid(p.size), (THREADS,),
        (p, contiguous(g), m, v, np.int64(p.size), *h.kernel_scalars(acc_dtype(p.dtype))))


def sgd_step(a, p, g, buf, h):
    _ew("sgd_step", p.dtype)(
        elementwise_grid(p.size), (THREADS,),
        (p, contiguous(g), buf if buf is not None else np.uint64(0), np.int64(p.size),
         *h.kernel_scalars(acc_dtype(p.dtype))))

