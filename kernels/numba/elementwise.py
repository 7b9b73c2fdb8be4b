"""Numba kernels for the small ops: relu, relu backward, bias add, the bias gradient (a
fixed-order reduction), softmax cross-entropy forward and backward.

Kernels (each built per dtype by a memoised factory so float32 arithmetic stays float32;
float16 data is loaded into and summed in float32, A, and rounded to float16 once at the
store; Numba has no bfloat16):
  adam_step_k, sgd_step_k                 optimiser steps in place, one thread per element
  relu_k, relu_backward_k, bias_add_k      one thread per element, grid-stride
  channel_sum_k                           one block per channel: strided partial sums (along
                                          each row, or over the (b, l) pairs where rows are
                                          shorter than the block), then a shared-memory tree
                                          in a fixed order (deterministic)
  xent_rows_k                             one thread per row: log-sum-exp, the row's loss
  xent_backward_k                         one thread per row: (softmax - onehot) / N times
                                          the loss's gradient, in A, rounded once
Then the launchers, with the registry's signature (args, *arrays).
"""
from __future__ import annotations

import functools
import math

import numpy as np
from numba import cuda, float32, float64
from numba.core.types import float16

from convgpu.arrays import xp_of
from convgpu.kernels.numba.launch import THREADS, block_sum, blocks_for, launch
from convgpu.kernels.outputs import contiguous, empty

NB_TYPES = {np.dtype(np.float16): float16, np.dtype(np.float32): float32,
            np.dtype(np.float64): float64}
# the type every sum is carried in: float32 for float16 data (FP32 accumulation)
ACC_TYPES = {np.dtype(np.float16): float32, np.dtype(np.float32): float32,
             np.dtype(np.float64): float64}


@functools.lru_cache(maxsize=None)
def _kernels(dtype_name: str):
    T = NB_TYPES[np.dtype(dtype_name)]
    A = ACC_TYPES[np.dtype(dtype_name)]

    @cuda.jit
    def relu_k(x, y):
        start = cuda.grid(1)
        for i in range(start, x.size, cuda.gridsize(1)):
            v = x[i]
            y[i] = v if (v > T(0) or v != v) else T(0)

    @cuda.jit
    def relu_backward_k(gy, x, gx):
        start = cuda.grid(1)
        for i in range(start, x.size, cuda.gridsize(1)):
            gx[i] = gy[i] if x[i] > T(0) else T(0)

    @cuda.jit
    def bias_add_k(x, b, y, C, inner):
        start = cuda.grid(1)
        for i in range(start, x.size, cuda.gridsize(1)):
            y[i] = T(A(x[i]) + A(b[(i // inner) % C]))

    @cuda.jit
    def channel_sum_k(a, out):
        """a (B, K, L) -> out[k] = sum_{b, l} a[b, k, l]; block k, fixed summation order."""
        k = cuda.blockIdx.x
        t = cuda.threadIdx.x
        buf = cuda.shared.array(THREADS, dtype=A)
        acc = A(0)
        B, L = a.shape[0], a.shape[2]
        if L >= THREADS:                  # long rows: each thread strides along every row
            for b in range(B):
                for l in range(t, L, THREADS):
                    acc += A(a[b, k, l])
        else:                             # short rows (L = 1 for a linear layer): over (b, l)
            for j in range(t, B * L, THREADS):
                acc += A(a[j // L, k, j % L])
        total = block_sum(buf, t, acc)
        if t == 0:
            out[k] = T(total)

    @cuda.jit
    def xent_rows_k(z, labels, loss):
        i = cuda.grid(1)
        if i < z.shape[0]:
            m = z[i, 0]
            for j in range(1, z.shape[1]):
                m = max(m, z[i, j])
            s = T(0)
            for j in range(z.shape[1]):
                s += math.exp(z[i, j] - m)
            loss[0, 0, i] = m + math.log(s) - z[i, labels[i]]

    # scale[0]: grad_output, multiplied in before the store (after it, a float16 gradient
    # would round twice)
    @cuda.jit
    def xent_backward_k(z, labels, scale, g):
        i = cuda.grid(1)
        if i < z.shape[0]:
            n = A(z.shape[0])
            sc = A(scale[0])
            m = A(z[i, 0])
            for j in range(1, z.shape[1]):
                m = max(m, A(z[i, j]))
            s = A(0)
            for j in range(z.shape[1]):
                s += math.exp(A(z[i, j]) - m)
            for j in range(z.shape[1]):
                p = math.exp(A(z[i, j]) - m) / s
                g[i, j] = T((p - A(1) if j == labels[i] else p) / n * sc)

    # the steps compute in A (float32 for float16 state, whose scalars come in float32:
    # eps = 1e-8 is 0 in float16) and round each new value once
    @cuda.jit
    def adam_step_k(p, grad, m, v, lr, b1, c1, b2, c2, eps, wd, bc1, bc2):
        for i in range(cuda.grid(1), p.size, cuda.gridsize(1)):
            w = A(p[i])
            g = A(grad[i]) + wd * w if wd != 0 else A(grad[i])
            mi = b1 * A(m[i]) + c1 * g
            vi = b2 * A(v[i]) + c2 * g * g
            m[i] = T(mi)
            v[i] = T(vi)
            p[i] = T(w - lr * (mi / bc1) / (math.sqrt(vi / bc2) + eps))

    @cuda.jit
    def sgd_step_k(p, grad, buf, has_buf, lr, mu, wd):
        for i in range(cuda.grid(1), p.size, cuda.gridsize(1)):
            w = A(p[i])
            g = A(grad[i]) + wd * w if wd != 0 else A(grad[i])
            if has_buf:
                g = mu * A(buf[i]) + g
                buf[i] = T(g)
            p[i] = T(w - lr * g)

    return dict(relu=relu_k, relu_backward=relu_backward_k, bias_add=bias_add_k,
                channel_sum=channel_sum_k, xent_rows=xent_rows_k, xent_backward=xent_backward_k,
                adam_step=adam_step_k, sgd_step=sgd_step_k)


def kernels_for(dtype):
    return _kernels(np.dtype(dtype).name)


# ----------------------------------------------------------------------------------------
# launchers


def relu(a, x):
    y = empty(x.shape, x.dtype, x)
    launch(kernels_for(x.dtype)["relu"], blocks_for(x.size), THREADS, x, x.ravel(), y.ravel())
    return y


def relu_backward(a, gy, x):
    gx = empty(x.shape, x.dtype, x)
    launch(kernels_for(x.dtype)["relu_backward"], blocks_for(x.size), THREADS, x,
           gy.ravel(), x.ravel(), gx.ravel())
    return gx


def bias_add(a, x, b):
    y = empty(x.shape, x.dtype, x)
    inner = int(np.prod(x.shape[2:], dtype=np.int64))
    launch(kernels_for(x.dtype)["bias_add"], blocks_for(x.size), THREADS, x,
           x.ravel(), b, y.ravel(), x.shape[1], inner)
    return y


def channel_sum(a3):
    """(B, K, L) -> (K,) summed over B and L in a fixed order."""
    out = empty((a3.shape[1],), a3.dtype, a3)
    launch(kernels_for(a3.dtype)["channel_sum"], a3.shape[1], THREADS, a3, a3, out)
    return out


def backward_bias(a, gy):
    N, K = gy.shape[:2]
    return channel_sum(gy.reshape(N, K, -1))


def softmax_cross_entropy(a, z, labels):
    n = z.shape[0]
    rows = empty((1, 1, n), z.dtype, z)
    launch(kernels_for(z.dtype)["xent_rows"], blocks_for(n), THREADS, z, z, labels, rows)
    return (channel_sum(rows) / z.dtype.type(n)).reshape(())


def softmax_cross_entropy_backward(a, z, labels, scale=None):
    """The plain mean loss's gradient, times the scalar grad_output `scale` (an array of
    z's dtype) where given."""
    g = empty(z.shape, z.dtype, z)
    scale = xp_of(z).ones(1, z.dtype) if scale is None else contiguous(scale.reshape(1))
    launch(kernels_for(z.dtype)["xent_backward"], blocks_for(z.shape[0]), THREADS, z,
           z, labels, scale, g)
    return g


def _scalar_dtype(dtype):
    """The step's scalars: the parameters' dtype, float32 for float16."""
    return np.float32 if np.dtype(dtype) == np.float16 else dtype


def adam_step(a, p, g, m, v, h):
    """In place (p, m, v: C-contiguous); the scalars in the computation's dtype."""
    launch(kernels_for(p.dtype)["adam_step"], blocks_for(p.size), THREADS, p, p.ravel(),
           g.ravel(), m.ravel(), v.ravel(), *h.kernel_scalars(_scalar_dtype(p.dtype)))


def sgd_step(a, p, g, buf, h):
    # without momentum the buffer is never read: a 1-element stand-in (not an alias of p,
    # which the simulator would copy back over the update)
    stand_in = buf if buf is not None else empty((1,), p.dtype, p)
    launch(kernels_for(p.dtype)["sgd_step"], blocks_for(p.size), THREADS, p, p.ravel(),
           g.ravel(), stand_in.ravel(), buf is not None,
           *h.kernel_scalars(_scalar_dtype(p.dtype)))
