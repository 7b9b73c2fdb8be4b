"""Numba FFT convolution: transforms by cuFFT through cupy.fft (numpy.fft under the
simulator); the frequency-domain multiply-accumulate over channels is hand-written here.

All three passes use one transform size L >= the padded input (rounded up to a fast
length), so no wanted output wraps around:
  forward      Y[n,k]  = sum_c  X[n,c] . conj(Wf[k,c])     (correlation), then crop every
               stride-th sample
  input grad   GX[n,c] = sum_k  GYu[n,k] . Wf[k,c]         (full convolution of the
               zero-stuffed gy with w), then crop the padding
  weight grad  GW[k,c] = sum_n  X[n,c] . conj(GYu[n,k])    (correlation of x with gy), keep
               the first R x S taps
Complex arrays go to the kernels as interleaved (re, im) float arrays (..., F, 2), so the
kernels are plain float code in the input's precision. Dilation is not served (supports()).

Kernels: mac_fwd_k, mac_bwd_input_k, mac_bwd_weight_k: one thread per output frequency
sample, summing its channel (or batch) loop in a fixed order.
"""
from __future__ import annotations

import functools

import numpy as np
from numba import cuda

from convgpu.arrays import xp_of
from convgpu.kernels.fft_common import COMPLEX, dilation_reason, padded, stuffed, transform_size
from convgpu.kernels.numba.elementwise import NB_TYPES, bias_add
from convgpu.kernels.numba.launch import THREADS, blocks_for, launch
from convgpu.kernels.outputs import contiguous, empty


@functools.lru_cache(maxsize=None)
def _kernels(dtype_name: str):
    T = NB_TYPES[np.dtype(dtype_name)]

    @cuda.jit
    def mac_fwd_k(X, Wf, Y, groups):
        # X (N, C, F, 2), Wf (K, Cg, F, 2) -> Y (N, K, F, 2); Y = sum_c X * conj(Wf)
        N, C, F = X.shape[0], X.shape[1], X.shape[2]
        K, Cg = Wf.shape[0], Wf.shape[1]
        Kg = K // groups
        for t in range(cuda.grid(1), N * K * F, cuda.gridsize(1)):
            f = t % F
            k = (t // F) % K
            n = t // (F * K)
            c0 = (k // Kg) * Cg
            re = T(0)
            im = T(0)
            for c in range(Cg):
                xr = X[n, c0 + c, f, 0]
                xi = X[n, c0 + c, f, 1]
                wr = Wf[k, c, f, 0]
                wi = Wf[k, c, f, 1]
                re += xr * wr + xi * wi
                im += xi * wr - xr * wi
            Y[n, k, f, 0] = re
            Y[n, k, f, 1] = im

    @cuda.jit
    def mac_bwd_input_k(G, Wf, GX, groups):
        # G (N, K, F, 2), Wf (K, Cg, F, 2) -> GX (N, C, F, 2); GX = sum_k G * Wf
        N, K, F = G.shape[0], G.shape[1], G.shape[2]
        Cg = Wf.shape[1]
        C = Cg * groups
        Kg = K // groups
        for t in range(cuda.grid(1), N * C * F, cuda.gridsize(1)):
            f = t % F
            c = (t // F) % C
            n = t // (F * C)
            g = c // Cg
            cw = c % Cg
            re = T(0)
            im = T(0)
            for k in range(g * Kg, (g + 1) * Kg):
                gr = G[n, k, f, 0]
                gi = G[n, k, f, 1]
                wr = Wf[k, cw, f, 0]
                wi = Wf[k, cw, f, 1]
                re += gr * wr - gi * wi
                im += gr * wi + gi * wr
            GX[n, c, f, 0] = re
            GX[n, c, f, 1] = im

    @cuda.jit
    def mac_bwd_weight_k(X, G, GW, groups):
        # X (N, C, F, 2), G (N, K, F, 2) -> GW (K, Cg, F, 2); GW = sum_n X * conj(G)
        N, C, F = X.shape[0], X.shape[1], X.shape[2]
        K, Cg = GW.shape[0], GW.shape[1]
        Kg = K // groups
        for t in range(cuda.grid(1), K * Cg * F, cuda.gridsize(1)):
            f = t % F
            c = (t // F) % Cg
            k = t // (F * Cg)
            cx = (k // Kg) * Cg + c
            re = T(0)
            im = T(0)
            for n in range(N):
                xr = X[n, cx, f, 0]
                xi = X[n, cx, f, 1]
                gr = G[n, k, f, 0]
                gi = G[n, k, f, 1]
                re += xr * gr + xi * gi
                im += xi * gr - xr * gi
            GW[k, c, f, 0] = re
            GW[k, c, f, 1] = im

    return dict(fwd=mac_fwd_k, bwd_input=mac_bwd_input_k, bwd_weight=mac_bwd_weight_k)


def kernels_for(dtype):
    return _kernels(np.dtype(dtype).name)


def supports(a):
    return dilation_reason(a)


# ----------------------------------------------------------------------------------------
# transforms and launchers


def _rfft(a_real, L, dtype):
    """Real (..., h, w) -> interleaved complex (..., F, 2) in the precision of dtype."""
    xp = xp_of(a_real)
    spec = xp.fft.rfft2(a_real, s=L).astype(COMPLEX[np.dtype(dtype)], copy=False)
    spec = contiguous(spec)
    return spec.reshape(spec.shape[:-2] + (-1,)).view(dtype).reshape(
        spec.shape[:-2] + (spec.shape[-2] * spec.shape[-1], 2))


def _irfft(spec_il, L, lead):
    """Interleaved (..., F, 2) -> real (..., L[0], L[1])."""
    xp = xp_of(spec_il)
    Fw = L[1] // 2 + 1
    cplx = spec_il.reshape(lead + (-1,)).view(COMPLEX[np.dtype(spec_il.dtype)])
    return xp.fft.irfft2(cplx.reshape(lead + (L[0], Fw)), s=L)


def conv2d_fft(a, x, w, b):
    L, _ = transform_size(a)
    X = _rfft(padded(a, x), L, x.dtype)
    Wf = _rfft(w, L, x.dtype)
    Y = empty((a.N, a.K) + X.shape[2:], x.dtype, x)
    launch(kernels_for(x.dtype)["fwd"], blocks_for(a.N * a.K * X.shape[2]), THREADS, x,
           X, Wf, Y, a.groups)
    full = _irfft(Y, L, (a.N, a.K))
    sh, sw = a.stride
    y = contiguous(full[:, :, :(a.P - 1) * sh + 1:sh, :(a.Q - 1) * sw + 1:sw].astype(x.dtype))
    return bias_add(None, y, b) if b is not None else y


def backward_input_fft(a, gy, w):
    L, _ = transform_size(a)
    G = _rfft(stuffed(a, gy), L, gy.dtype)
    Wf = _rfft(w, L, gy.dtype)
    GX = empty((a.N, a.C) + G.shape[2:], gy.dtype, gy)
    launch(kernels_for(gy.dtype)["bwd_input"], blocks_for(a.N * a.C * G.shape[2]), THREADS, gy,
           G, Wf, GX, a.groups)
    full = _irfft(GX, L, (a.N, a.C))
    ph, pw = a.padding
    return contiguous(full[:, :, ph:ph + a.H, pw:pw + a.W].astype(gy.dtype))


def backward_weight_fft(a, x, gy):
    L, _ = transform_size(a)
    X = _rfft(padded(a, x), L, x.dtype)
    G = _rfft(stuffed(a, gy), L, x.dtype)
    GW = empty((a.K, a.Cg) + X.shape[2:], x.dtype, x)
    launch(kernels_for(x.dtype)["bwd_weight"], blocks_for(a.K * a.Cg * X.shape[2]), THREADS, x,
           X, G, GW, a.groups)
    full = _irfft(GW, L, (a.K, a.Cg))
    return contiguous(full[:, :, :a.R, :a.S].astype(x.dtype))
