"""Numba kernels for batch normalisation over an (N, C, L) array, the readable versions
(the CUDA C ones in norm.cu split each channel over several blocks and read x once for
its statistics).

Kernels (built per dtype by a memoised factory, so float32 arithmetic stays float32):
  stats_k        one block per channel: two passes over its N * L values in a fixed order,
                 the mean, then the sum of squared deviations from it (no cancellation);
                 mean, invstd = 1 / sqrt(var + eps), and the running estimates updated in
                 place (unbiased variance) when asked
  apply_k        y = (x - mean[c]) * invstd[c] * w[c] + b[c], one thread per element
  bwd_sums_k     one block per channel: gb = sum gy, gw = invstd * sum gy (x - mean)
  bwd_apply_k    gx = w invstd (gy - gb / M - xhat gw / M) in training, w invstd gy in
                 evaluation (xhat = (x - mean) invstd)
"""
from __future__ import annotations

import functools
import math

import numpy as np
from numba import cuda

from convgpu.arrays import xp_of
from convgpu.kernels.numba.elementwise import NB_TYPES
from convgpu.kernels.numba.launch import THREADS, block_sum, blocks_for, launch
from convgpu.kernels.outputs import empty


@functools.lru_cache(maxsize=None)
def _kernels(dtype_name: str):
    T = NB_TYPES[np.dtype(dtype_name)]

    @cuda.jit
    def stats_k(x, mean, invstd, rm, rv, update, momentum, eps, unbias):
        c, t = cuda.blockIdx.x, cuda.threadIdx.x
        buf = cuda.shared.array(THREADS, dtype=T)
        N, L = x.shape[0], x.shape[2]
        M = N * L
        acc = T(0)
        for j in range(t, M, THREADS):
            acc += x[j // L, c, j % L]
        mu = block_sum(buf, t, acc) / T(M)
        acc = T(0)
        for j in range(t, M, THREADS):
            d = x[j // L, c, j % L] - mu
            acc += d * d
        var = block_sum(buf, t, acc) / T(M)
        if t == 0:
            mean[c] = mu
            invstd[c] = T(1) / math.sqrt(var + eps)
            if update:
                rm[c] = (T(1) - momentum) * rm[c] + momentum * mu
                rv[c] = (T(1) - momentum) * rv[c] + momentum * var * unbias

    @cuda.jit
    def apply_k(x, mean, invstd, w, b, y):
        C, L = x.shape[1], x.shape[2]
        for i in range(cuda.grid(1), x.size, cuda.gridsize(1)):
            n, c, l = i // (C * L), (i // L) % C, i % L
            y[n, c, l] = (x[n, c, l] - mean[c]) * (invstd[c] * w[c]) + b[c]

    @cuda.jit
    def bwd_sums_k(gy, x, mean, invstd, gw, gb):
        c, t = cuda.blockIdx.x, cuda.threadIdx.x
        buf = cuda.shared.array(THREADS, dtype=T)
        L = x.shape[2]
        M = x.shape[0] * L
        m = mean[c]
        acc_g, acc_gx = T(0), T(0)
        for j in range(t, M, THREADS):
            g = gy[j // L, c, j % L]
            acc_g += g
            acc_gx += g * (x[j // L, c, j % L] - m)
        sum_g = block_sum(buf, t, acc_g)
        sum_gx = block_sum(buf, t, acc_gx)
        if t == 0:
            gb[c] = sum_g
            gw[c] = sum_gx * invstd[c]

    @cuda.jit
    def bwd_apply_k(gy, x, mean, invstd, w, gw, gb, gx, training):
        C, L = x.shape[1], x.shape[2]
        inv_m = T(1) / T(x.shape[0] * L)
        for i in range(cuda.grid(1), x.size, cuda.gridsize(1)):
            n, c, l = i // (C * L), (i // L) % C, i % L
            k = w[c] * invstd[c]
            if training:
                xhat = (x[n, c, l] - mean[c]) * invstd[c]
                gx[n, c, l] = k * (gy[n, c, l] - gb[c] * inv_m - xhat * gw[c] * inv_m)
            else:
                gx[n, c, l] = k * gy[n, c, l]

    return dict(stats=stats_k, apply=apply_k, bwd_sums=bwd_sums_k, bwd_apply=bwd_apply_k)


def _or(v, C, fill, like):
    """weight / bias, or C ones / zeros in their place."""
    if v is not None:
        return v
    out = empty((C,), like.dtype, like)
    out[...] = fill
    return out


def batch_norm(a, x3, running_mean, running_var, w, b, h):
    N, C, L = x3.shape
    k, t = _kernels(x3.dtype.name), x3.dtype.type
    xp = xp_of(x3)
    mean, invstd = empty((C,), x3.dtype, x3), empty((C,), x3.dtype, x3)
    if a.training:
        # without running estimates to update, stand-ins the kernel does not touch
        rm = running_mean if a.update_running else empty((C,), x3.dtype, x3)
        rv = running_var if a.update_running else empty((C,), x3.dtype, x3)
        M = N * L
        launch(k["stats"], C, THREADS, x3, x3, mean, invstd, rm, rv, a.update_running,
               t(h.momentum), t(h.eps), t(M / max(M - 1, 1)))
    else:
        mean[...] = running_mean
        invstd[...] = 1 / xp.sqrt(running_var + t(h.eps))
    y = empty(x3.shape, x3.dtype, x3)
    launch(k["apply"], blocks_for(x3.size), THREADS, x3, x3, mean, invstd,
           _or(w, C, 1, x3), _or(b, C, 0, x3), y)
    return y, mean, invstd


def batch_norm_backward(a, g3, x3, mean, invstd, w):
    C = x3.shape[1]
    k = _kernels(x3.dtype.name)
    gw, gb = empty((C,), x3.dtype, x3), empty((C,), x3.dtype, x3)
    launch(k["bwd_sums"], C, THREADS, x3, g3, x3, mean, invstd, gw, gb)
    gx = empty(x3.shape, x3.dtype, x3)
    launch(k["bwd_apply"], blocks_for(x3.size), THREADS, x3, g3, x3, mean, invstd,
           _or(w, C, 1, x3), gw, gb, gx, a.training)
    return gx, gw, gb
