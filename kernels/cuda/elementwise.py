"""Launchers of elementwise.cu: relu and its backward, bias add, the fixed-order channel sum
(bias gradients), global average pooling and its backward, softmax cross-entropy and its
backward, and the fused optimiser steps (in place)."""
from __future__ import annotations

import numpy as np

from convgpu.kernels.cuda.launch import THREADS, elementwise_grid, warp_grid
from convgpu.kernels.cuda.module import ctype, get_function
from convgpu.kernels.outputs import contiguous, empty


def _ew(name, dtype):
    return get_function("elementwise.cu", f"{name}<{ctype(dtype)}>")


def relu(a, x):
    y = empty(x.shape, x.dtype, x)
    _ew("relu_fwd", x.dtype)(elementwise_grid(x.size), (THREADS,), (x, y, np.int64(x.size)))
    return y


def relu_backward(a, gy, x):
    gx = empty(x.shape, x.dtype, x)
    _ew("relu_bwd", x.dtype)(elementwise_grid(x.size), (THREADS,),
                             (contiguous(gy), x, gx, np.int64(x.size)))
    return gx


def bias_add(a, x, b):
    y = empty(x.shape, x.dtype, x)
    inner = int(np.prod(x.shape[2:], dtype=np.int64))
    _ew("bias_add_fwd", x.dtype)(elementwise_grid(x.size), (THREADS,),
                                 (x, contiguous(b), y, np.int64(x.size), np.int32(x.shape[1]),
                                  np.int64(inner)))
    return y


def channel_sum(a3, scale=1.0):
    """(B, K, L) -> (K,): scale * the sum over B and L, in a fixed order."""
    B, K, L = a3.shape
    out = empty((K,), a3.dtype, a3)
    _ew("channel_sum", a3.dtype)((K,), (THREADS,), (contiguous(a3), out, np.int32(B),
                                                     np.int32(K), np.int64(L),
                                                     a3.dtype.type(scale)))
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
    rows = empty((1, 1, n), z.dtype, z)
    _ew("xent_rows", z.dtype)(warp_grid(n), (THREADS,),
                              (contiguous(z), contiguous(labels), rows, np.int32(n), np.int32(c)))
    return channel_sum(rows, 1.0 / n).reshape(())


def softmax_cross_entropy_backward(a, z, labels):
    n, c = z.shape
    g = empty(z.shape, z.dtype, z)
    _ew("xent_bwd", z.dtype)(warp_grid(n), (THREADS,),
                             (contiguous(z), contiguous(labels), g, np.int32(n), np.int32(c)))
    return g



# optimiser steps (in place): the registry's (key, *arrays, hyperparameters)


def adam_step(a, p, g, m, v, h):
    _ew("adam_step", p.dtype)(
        elementwise_grid(p.size), (THREADS,),
        (p, contiguous(g), m, v, np.int64(p.size), *h.kernel_scalars(p.dtype)))


def sgd_step(a, p, g, buf, h):
    _ew("sgd_step", p.dtype)(
        elementwise_grid(p.size), (THREADS,),
        (p, contiguous(g), buf if buf is not None else np.uint64(0), np.int64(p.size),
         *h.kernel_scalars(p.dtype)))

