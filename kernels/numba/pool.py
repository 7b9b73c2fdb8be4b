"""Numba pooling kernels: max with argmax, average, global average, and their backwards.

Kernels (one thread per output element for the forwards, one per input element for the
backwards, which gather and so are deterministic; 64-bit flat indices, grid-stride):
  max_pool_k           the window clipped to the input, -inf start, a strict '>' so the
                       first maximum wins; NaN is taken once and kept (its index too)
  max_backward_gather_k  input element (h, w) sums gy over the outputs whose window covers
                       it and whose index points at it
  max_backward_plane_k one thread per (n, c) plane, adding gy into gx in output order (for
                       callers that give no window geometry)
  avg_pool_k           torch's divisor rule (count_include_pad, divisor_override, ceil_mode)
  avg_backward_k       input element gathers gy / divisor over the covering windows
  gap_k, gap_backward_k  global average: one thread per (n, c) plane / per input element
  adaptive_k           adaptive average: output p of P averages rows [floor(p H / P),
                       ceil((p + 1) H / P)), the same along W
  adaptive_backward_k  input element (h, w) gathers gy / area over the outputs whose windows
                       hold it: p in [floor(h P / H), ceil((h + 1) P / H))
Then the launchers.
"""
from __future__ import annotations

import functools

import numpy as np
from numba import cuda

from convgpu.kernels.numba.elementwise import ACC_TYPES, NB_TYPES
from convgpu.kernels.numba.launch import THREADS, blocks_for, launch, unravel4
from convgpu.kernels.outputs import empty, zeros


@cuda.jit(device=True, inline=True)
def _adaptive_start(o, size, out):
    """First input of adaptive window o (of `out` over `size` inputs)."""
    return (o * size) // out


@cuda.jit(device=True, inline=True)
def _adaptive_end(o, size, out):
    """One past the last input of adaptive window o."""
    return ((o + 1) * size + out - 1) // out


@cuda.jit(device=True, inline=True)
def _first_cover(i, pad, k, s, d):
    """Smallest output index o with o*s - pad + (k-1)*d >= i, i.e. whose window can reach
    input index i; never below 0."""
    num = i + pad - (k - 1) * d
    if num <= 0:
        return 0
    return (num + s - 1) // s


@functools.lru_cache(maxsize=None)
def _kernels(dtype_name: str):
    T = NB_TYPES[np.dtype(dtype_name)]
    A = ACC_TYPES[np.dtype(dtype_name)]             # sums in float32 for float16 data

    @cuda.jit
    def max_pool_k(x, y, idx, kh, kw, sh, sw, ph, pw, dh, dw):
        N, C, H, W = x.shape
        P, Q = y.shape[2], y.shape[3]
        total = N * C * P * Q
        for t in range(cuda.grid(1), total, cuda.gridsize(1)):
            n, c, p, q = unravel4(t, C, P, Q)
            h0 = p * sh - ph
            w0 = q * sw - pw
            best = -T(np.inf)
            bi = -1
            for r in range(kh):
                h = h0 + r * dh
                if h < 0 or h >= H:
                    continue
                for s in range(kw):
                    w = w0 + s * dw
                    if w < 0 or w >= W:
                        continue
                    v = x[n, c, h, w]
                    if best != best:               # a NaN was taken: keep it
                        continue
                    if v > best or v != v or bi < 0:
                        best = v
                        bi = h * W + w
            y[n, c, p, q] = best
            idx[n, c, p, q] = bi

    @cuda.jit
    def max_backward_gather_k(gy, idx, gx, kh, kw, sh, sw, ph, pw, dh, dw):
        N, C, H, W = gx.shape
        P, Q = gy.shape[2], gy.shape[3]
        total = N * C * H * W
        for t in range(cuda.grid(1), total, cuda.gridsize(1)):
            n, c, h, w = unravel4(t, C, H, W)
            me = h * W + w
            acc = A(0)
            p_hi = min((h + ph) // sh, P - 1)
            q_hi = min((w + pw) // sw, Q - 1)
            for p in range(_first_cover(h, ph, kh, sh, dh), p_hi + 1):
                if (h + ph - p * sh) % dh != 0:
                    continue
                for q in range(_first_cover(w, pw, kw, sw, dw), q_hi + 1):
                    if (w + pw - q * sw) % dw != 0:
                        continue
                    if idx[n, c, p, q] == me:
                        acc += A(gy[n, c, p, q])
            gx[n, c, h, w] = T(acc)

    @cuda.jit
    def max_backward_plane_k(gy, idx, gx):
        """gx must be zeroed; plane (n, c) is added into by one thread, in output order."""
        N, C = gy.shape[0], gy.shape[1]
        P, Q = gy.shape[2], gy.shape[3]
        W = gx.shape[3]
        for t in range(cuda.grid(1), N * C, cuda.gridsize(1)):
            c = t % C
            n = t // C
            for p in range(P):
                for q in range(Q):
                    i = idx[n, c, p, q]
                    gx[n, c, i // W, i % W] += gy[n, c, p, q]

    @cuda.jit(device=True, inline=True)
    def _divisor(p, q, H, W, kh, kw, sh, sw, ph, pw, include_pad, override):
        if override != 0:
            return A(override)
        h0 = p * sh - ph
        w0 = q * sw - pw
        h1 = min(h0 + kh, H + ph)
        w1 = min(w0 + kw, W + pw)
        if include_pad:
            return A((h1 - h0) * (w1 - w0))
        return A((min(h1, H) - max(h0, 0)) * (min(w1, W) - max(w0, 0)))

    @cuda.jit
    def avg_pool_k(x, y, kh, kw, sh, sw, ph, pw, include_pad, override):
        N, C, H, W = x.shape
        P, Q = y.shape[2], y.shape[3]
        total = N * C * P * Q
        for t in range(cuda.grid(1), total, cuda.gridsize(1)):
            n, c, p, q = unravel4(t, C, P, Q)
            h0 = p * sh - ph
            w0 = q * sw - pw
            acc = A(0)
            for h in range(max(h0, 0), min(h0 + kh, H)):
                for w in range(max(w0, 0), min(w0 + kw, W)):
                    acc += A(x[n, c, h, w])
            y[n, c, p, q] = T(acc / _divisor(p, q, H, W, kh, kw, sh, sw, ph, pw, include_pad,
                                             override))

    @cuda.jit
    def avg_backward_k(gy, gx, kh, kw, sh, sw, ph, pw, include_pad, override):
        N, C, H, W = gx.shape
        P, Q = gy.shape[2], gy.shape[3]
        total = N * C * H * W
        for t in range(cuda.grid(1), total, cuda.gridsize(1)):
            n, c, h, w = unravel4(t, C, H, W)
            acc = A(0)
            for p in range(_first_cover(h, ph, kh, sh, 1), min((h + ph) // sh, P - 1) + 1):
                for q in range(_first_cover(w, pw, kw, sw, 1), min((w + pw) // sw, Q - 1) + 1):
                    acc += A(gy[n, c, p, q]) / _divisor(p, q, H, W, kh, kw, sh, sw, ph, pw,
                                                        include_pad, override)
            gx[n, c, h, w] = T(acc)

    @cuda.jit
    def gap_k(x, y):
        NC, L = x.shape
        for t in range(cuda.grid(1), NC, cuda.gridsize(1)):
            acc = A(0)
            for l in range(L):
                acc += A(x[t, l])
            y[t] = T(acc / A(L))

    @cuda.jit
    def gap_backward_k(gy, gx):
        NC, L = gx.shape
        for t in range(cuda.grid(1), NC * L, cuda.gridsize(1)):
            gx[t // L, t % L] = T(A(gy[t // L]) / A(L))

    @cuda.jit
    def adaptive_k(x, y):
        N, C, H, W = x.shape
        P, Q = y.shape[2], y.shape[3]
        for t in range(cuda.grid(1), N * C * P * Q, cuda.gridsize(1)):
            n, c, p, q = unravel4(t, C, P, Q)
            h0, h1 = _adaptive_start(p, H, P), _adaptive_end(p, H, P)
            w0, w1 = _adaptive_start(q, W, Q), _adaptive_end(q, W, Q)
            acc = A(0)
            for h in range(h0, h1):
                for w in range(w0, w1):
                    acc += A(x[n, c, h, w])
            y[n, c, p, q] = T(acc / A((h1 - h0) * (w1 - w0)))

    @cuda.jit
    def adaptive_backward_k(gy, gx):
        N, C, H, W = gx.shape
        P, Q = gy.shape[2], gy.shape[3]
        for t in range(cuda.grid(1), N * C * H * W, cuda.gridsize(1)):
            n, c, h, w = unravel4(t, C, H, W)
            acc = A(0)
            for p in range(_adaptive_start(h, P, H), _adaptive_end(h, P, H)):
                rows = _adaptive_end(p, H, P) - _adaptive_start(p, H, P)
                for q in range(_adaptive_start(w, Q, W), _adaptive_end(w, Q, W)):
                    cols = _adaptive_end(q, W, Q) - _adaptive_start(q, W, Q)
                    acc += A(gy[n, c, p, q]) / A(rows * cols)
            gx[n, c, h, w] = T(acc)

    return dict(max_pool=max_pool_k, max_backward_gather=max_backward_gather_k,
                max_backward_plane=max_backward_plane_k, avg_pool=avg_pool_k,
                avg_backward=avg_backward_k, gap=gap_k, gap_backward=gap_backward_k,
                adaptive=adaptive_k, adaptive_backward=adaptive_backward_k)


def kernels_for(dtype):
    return _kernels(np.dtype(dtype).name)


# ----------------------------------------------------------------------------------------
# launchers: (args, *arrays) as the registry calls them


def _geom(a):
    return (a.kernel[0], a.kernel[1], a.stride[0], a.stride[1], a.padding[0], a.padding[1])


def max_pool2d(a, x):
    y = empty(a.y_shape, x.dtype, x)
    idx = empty(a.y_shape, np.int64, x)
    launch(kernels_for(x.dtype)["max_pool"], blocks_for(y.size), THREADS, x,
           x, y, idx, *_geom(a), a.dilation[0], a.dilation[1])
    return y, idx


def max_pool2d_backward_gather(a, gy, idx):
    p = a.pool
    gx = empty(a.x_shape, gy.dtype, gy)
    launch(kernels_for(gy.dtype)["max_backward_gather"], blocks_for(gx.size), THREADS, gy,
           gy, idx, gx, *_geom(p), p.dilation[0], p.dilation[1])
    return gx


def max_pool2d_backward_plane(a, gy, idx):
    gx = zeros(a.x_shape, gy.dtype, gy)
    planes = a.x_shape[0] * a.x_shape[1]
    launch(kernels_for(gy.dtype)["max_backward_plane"], blocks_for(planes), THREADS, gy,
           gy, idx, gx)
    return gx


def avg_pool2d(a, x):
    y = empty(a.y_shape, x.dtype, x)
    launch(kernels_for(x.dtype)["avg_pool"], blocks_for(y.size), THREADS, x,
           x, y, *_geom(a), a.count_include_pad, a.divisor_override or 0)
    return y


def avg_pool2d_backward(a, gy):
    gx = empty(a.x_shape, gy.dtype, gy)
    launch(kernels_for(gy.dtype)["avg_backward"], blocks_for(gx.size), THREADS, gy,
           gy, gx, *_geom(a), a.count_include_pad, a.divisor_override or 0)
    return gx


def global_avg_pool2d(a, x):
    N, C, H, W = a
    y = empty((N, C), x.dtype, x)
    launch(kernels_for(x.dtype)["gap"], blocks_for(N * C), THREADS, x,
           x.reshape(N * C, H * W), y.reshape(N * C))
    return y


def global_avg_pool2d_backward(a, gy):
    N, C, H, W = a
    gx = empty(a, gy.dtype, gy)
    launch(kernels_for(gy.dtype)["gap_backward"], blocks_for(gx.size), THREADS, gy,
           gy.reshape(N * C), gx.reshape(N * C, H * W))
    return gx


def adaptive_avg_pool2d(a, x):
    y = empty(a.y_shape, x.dtype, x)
    launch(kernels_for(x.dtype)["adaptive"], blocks_for(y.size), THREADS, x, x, y)
    return y


def adaptive_avg_pool2d_backward(a, gy):
    gx = empty(a.x_shape, gy.dtype, gy)
    launch(kernels_for(gy.dtype)["adaptive_backward"], blocks_for(gx.size), THREADS, gy, gy, gx)
    return gx
