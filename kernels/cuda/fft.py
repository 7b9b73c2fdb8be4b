"""The FFT convolutions on CUDA: cuFFT transforms (cupy.fft), the multiply-accumulate over
channels as a batched GEMM on gemm.py, its operands laid out from the spectra (and its result
back) by fft.cu's two layout kernels."""
from __future__ import annotations

import numpy as np

from convgpu.arrays import xp_of
from convgpu.kernels.cuda.gemm import gemm
from convgpu.kernels.cuda.launch import MAX_GRID_YZ, ceil_div, i32, tf32_supports
from convgpu.kernels.cuda.module import ctype, get_function
from convgpu.kernels.fft_common import COMPLEX, dilation_reason, padded, stuffed, transform_size
from convgpu.kernels.outputs import contiguous, empty

# FFT convolution: cuFFT transforms (cupy.fft), the multiply-accumulate over channels as a
# batched GEMM on the hand-written GEMMs. A complex product per frequency f,
# Y[f] = X[f] @ conj(W[f])^T, is one real GEMM on stacked parts:
#     [Xr | Xi] (N x 2C)  @  [[Wr, -Wi], [Wi, Wr]] (2C x 2K)  =  [Yr | Yi] (N x 2K)
# batched over (group, frequency). One transform size L >= the padded input for all three
# passes, so no wanted sample wraps around (kernels/numba/fft.py derives the three products).
# The stacked operands are written straight from cuFFT's spectra (complex, contiguous along
# f) and the GEMM's result straight back, by fft.cu's two layout kernels: one coalesced
# pass each. The array module follows the inputs, so the tests can check this algebra on
# NumPy arrays under the host emulation (tests/test_fft_algebra.py); on a GPU it is CuPy.

# which part and sign each quadrant of a stacked operand takes (spectra_stack's code):
# bit 2q imaginary, bit 2q + 1 negated, quadrant q = 2 * (row block) + (column block)
RE, IM, NEG = 0, 1, 2
def _code(*quadrants):
    return sum(v << (2 * q) for q, v in enumerate(quadrants))


STACK_RE_IM = _code(RE, IM)                              # [re | im], side by side
STACK_RE_OVER_IM = _code(RE, RE, IM)                     # [re; im], one above the other
STACK_FORWARD_W = _code(RE, IM | NEG, IM, RE)            # [[re, -im], [im, re]]
STACK_INPUT_GRAD_W = _code(RE, IM, IM | NEG, RE)         # [[re, im], [-im, re]]
STACK_WEIGHT_GRAD_X = _code(RE, IM, IM, RE | NEG)        # [[re, im], [im, -re]]
SPECTRA_TILE, SPECTRA_ROWS = 32, 8      # fft.cu's SP_TILE, SP_ROWS: blockDim (32, 8)


def _spectra_grid(F, Rj, rows):
    return (ceil_div(F, SPECTRA_TILE), ceil_div(Rj, SPECTRA_TILE), max(1, min(rows, MAX_GRID_YZ)))


def _spectra_stack(S, dtype, G, Ri, Rj, QR, QC, sg, si, sj, code):
    """Spectra S (complex, contiguous, frequencies F innermost; element (g, i, j, f) at
    g sg + i si + j sj + f) -> the real (G * F, QR * Ri, QC * Rj) operand whose quadrants
    `code` names (spectra_stack)."""
    S = contiguous(S.astype(COMPLEX[np.dtype(dtype)], copy=False))    # NumPy's FFT: complex128
    F = S.shape[-2] * S.shape[-1]
    out = empty((G * F, QR * Ri, QC * Rj), dtype, S)
    fn = get_function("fft.cu", f"spectra_stack<{ctype(dtype)}>")
    fn(_spectra_grid(F, Rj, G * Ri), (SPECTRA_TILE, SPECTRA_ROWS),
       (S.view(dtype), out, *i32(G, F, Ri, Rj, QR, QC), np.int64(sg), np.int64(si),
        np.int64(sj), np.int32(code)))
    return out


def _spectra_unstack(Y, shape, G, Ri, Rj, sg, si, sj):
    """A GEMM result Y (G * F, Ri, 2 Rj), [real | imaginary] columns -> complex spectra of
    `shape` (..., L0, L1 // 2 + 1) with element (g, i, j, f) at g sg + i si + j sj + f."""
    F = shape[-2] * shape[-1]
    S = empty(shape, COMPLEX[np.dtype(Y.dtype)], Y)
    fn = get_function("fft.cu", f"spectra_unstack<{ctype(Y.dtype)}>")
    fn(_spectra_grid(F, Rj, G * Ri), (SPECTRA_TILE, SPECTRA_ROWS),
       (contiguous(Y), S.view(Y.dtype), *i32(G, F, Ri, Rj), np.int64(sg), np.int64(si),
        np.int64(sj)))
    return S


def fft_supports(a):
    return dilation_reason(a)


def fft_tf32_supports(a):
    return tf32_supports(a) or fft_supports(a)


def conv2d_fft_tf32(a, x, w, b):
    return conv2d_fft(a, x, w, b, tf32=True)


def conv2d_fft(a, x, w, b, tf32=False):
    """cuFFT transforms around the per-frequency GEMM (stacked real form); with tf32 that
    GEMM runs on the tensor cores (gemm_pipelined where it fits)."""
    cp = xp_of(x)
    L, F = transform_size(a)
    G, N, Cg, Kg = a.groups, a.N, a.Cg, a.Kg
    X = cp.fft.rfft2(padded(a, x), s=L)                               # N, C, F
    Wt = cp.fft.rfft2(w, s=L)                                         # K, Cg, F
    A = _spectra_stack(X, x.dtype, G, N, Cg, 1, 2, Cg * F, a.C * F, F, STACK_RE_IM)
    Bm = _spectra_stack(Wt, x.dtype, G, Cg, Kg, 2, 2, Kg * Cg * F, F, Cg * F, STACK_FORWARD_W)
    Y = gemm(A, Bm, tf32=tf32)                                        # G F, N, 2 Kg
    Ys = _spectra_unstack(Y, (N, a.K, L[0], L[1] // 2 + 1), G, N, Kg, Kg * F, a.K * F, F)
    full = cp.fft.irfft2(Ys, s=L)
    sh, sw = a.stride
    y = full[:, :, :(a.P - 1) * sh + 1:sh, :(a.Q - 1) * sw + 1:sw]
    if b is not None:                  # the crop and the bias in one pass
        y = y + b.reshape(1, -1, 1, 1)
    return contiguous(y.astype(x.dtype, copy=False))


def backward_input_fft_tf32(a, gy, w):
    return backward_input_fft(a, gy, w, tf32=True)


def backward_input_fft(a, gy, w, tf32=False):
    """GX[f] = GYu[f] @ W[f] (full convolution of the stride-stuffed gy with w)."""
    cp = xp_of(gy)
    L, F = transform_size(a)
    G, N, Cg, Kg = a.groups, a.N, a.Cg, a.Kg
    Gs = cp.fft.rfft2(stuffed(a, gy), s=L)                            # N, K, F
    Wt = cp.fft.rfft2(w, s=L)                                         # K, Cg, F
    A = _spectra_stack(Gs, gy.dtype, G, N, Kg, 1, 2, Kg * F, a.K * F, F, STACK_RE_IM)
    Bm = _spectra_stack(Wt, gy.dtype, G, Kg, Cg, 2, 2, Kg * Cg * F, Cg * F, F,
                        STACK_INPUT_GRAD_W)
    GX = gemm(A, Bm, tf32=tf32)                                       # G F, N, 2 Cg
    S = _spectra_unstack(GX, (N, a.C, L[0], L[1] // 2 + 1), G, N, Cg, Cg * F, a.C * F, F)
    full = cp.fft.irfft2(S, s=L)
    ph, pw = a.padding
    return contiguous(full[:, :, ph:ph + a.H, pw:pw + a.W].astype(gy.dtype))


def backward_weight_fft_tf32(a, x, gy):
    return backward_weight_fft(a, x, gy, tf32=True)


def backward_weight_fft(a, x, gy, tf32=False):
    """GW[f] = GYu[f]^H @ X[f], summed over the batch inside the GEMM (fixed order)."""
    cp = xp_of(x)
    L, F = transform_size(a)
    G, N, Cg, Kg = a.groups, a.N, a.Cg, a.Kg
    X = cp.fft.rfft2(padded(a, x), s=L)                               # N, C, F
    Gs = cp.fft.rfft2(stuffed(a, gy), s=L)                            # N, K, F
    A = _spectra_stack(Gs, x.dtype, G, N, Kg, 2, 1, Kg * F, a.K * F, F, STACK_RE_OVER_IM)
    Bm = _spectra_stack(X, x.dtype, G, N, Cg, 2, 2, Cg * F, a.C * F, F, STACK_WEIGHT_GRAD_X)
    GW = gemm(A, Bm, ta=True, tf32=tf32)                              # G F, Kg, 2 Cg
    S = _spectra_unstack(GW, (a.K, Cg, L[0], L[1] // 2 + 1), G, Kg, Cg, Kg * Cg * F, Cg * F, F)
    full = cp.fft.irfft2(S, s=L)
    return contiguous(full[:, :, :a.R, :a.S].astype(x.dtype))

