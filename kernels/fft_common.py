"""What the Numba (kernels/numba/fft.py) and CUDA C (kernels/cuda/fft.py) FFT convolutions share:
the transform size, the padded input, the stride-stuffed output gradient, the complex
dtypes and the dilation rule. Plain array code: the array module follows the inputs, so it
runs on NumPy arrays (simulator, host emulation, tests) as on CuPy arrays."""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
from scipy.fft import next_fast_len

from convgpu.arrays import xp_of

COMPLEX = {np.dtype(np.float32): np.complex64, np.dtype(np.float64): np.complex128}


def dilation_reason(a) -> Optional[str]:
    if a.dilation != (1, 1):
        return "the FFT path serves dilation 1 only (a dilated kernel wastes the transform)"
    return None


def transform_size(a) -> Tuple[Tuple[int, int], int]:
    """One size L >= the padded input for all three passes (so no wanted sample wraps
    around), rounded up to a fast length; and F, the samples of one real 2-D spectrum."""
    L = (next_fast_len(a.H + 2 * a.padding[0], real=True),
         next_fast_len(a.W + 2 * a.padding[1], real=True))
    return L, L[0] * (L[1] // 2 + 1)


def padded(a, x):
    if a.padding == (0, 0):
        return x
    return xp_of(x).pad(x, ((0, 0), (0, 0), (a.padding[0],) * 2, (a.padding[1],) * 2))


def stuffed(a, gy):
    """gy with stride - 1 zeros between samples: (N, K, (P-1)*sh + 1, (Q-1)*sw + 1)."""
    sh, sw = a.stride
    if (sh, sw) == (1, 1):
        return gy
    up = xp_of(gy).zeros((a.N, a.K, (a.P - 1) * sh + 1, (a.Q - 1) * sw + 1), dtype=gy.dtype)
    up[:, :, ::sh, ::sw] = gy
    return up
