"""The CUDA backend's FFT convolution (kernels/cuda/fft.py) rests on stacking each complex
product per frequency into one real GEMM. That algebra, the layouts and the crops are
checked here on the CPU: the launchers take their array module from the inputs, so with
NumPy arrays, a NumPy GEMM in place of the CUDA C one and fft.cu's layout kernels in
the host emulation they run end to end against the reference. (The CUDA C GEMM itself is
validated on a GPU: tests/test_gpu.py.)"""
import numpy as np
import pytest

from convgpu import reference as ref
from convgpu.core import args as A
from convgpu.kernels.cuda import fft
from helpers import assert_close, rand


def numpy_gemm(Am, Bm, ta=False, tb=False, splits=1, tf32=False):
    return np.matmul(np.swapaxes(Am, 1, 2) if ta else Am, np.swapaxes(Bm, 1, 2) if tb else Bm)


CASES = [
    (2, 4, 9, 8, 6, 3, 3, (1, 1), (1, 1), 1),
    (3, 6, 11, 7, 4, 5, 3, (2, 1), (2, 0), 2),
    (1, 3, 8, 10, 3, 2, 4, (3, 2), (0, 1), 3),
]


@pytest.mark.parametrize("case", CASES)
def test_fft_launchers_with_numpy_gemm(monkeypatch, rng, case):
    monkeypatch.setenv("CONVGPU_CUDA_HOST", "1")
    monkeypatch.setenv("CONVGPU_POISON", "1")
    monkeypatch.setattr(fft, "gemm", numpy_gemm)
    N, C, H, W, K, R, S, st, pd, g = case
    x, w, b = rand(rng, (N, C, H, W)), rand(rng, (K, C // g, R, S)), rand(rng, (K,))
    a = A.conv_geometry("conv2d", x.shape, w.shape, st, pd, 1, g, np.float64)
    assert fft.fft_supports(a) is None
    y = ref.conv2d(x, w, b, st, pd, (1, 1), g)
    assert_close(fft.conv2d_fft(a, x, w, b), y, 1e-10)
    gy = rand(rng, y.shape)
    assert_close(fft.backward_input_fft(a, gy, w),
                 ref.conv2d_backward_input(gy, w, x.shape, st, pd, (1, 1), g), 1e-10)
    assert_close(fft.backward_weight_fft(a, x, gy),
                 ref.conv2d_backward_weight(x, gy, w.shape, st, pd, (1, 1), g), 1e-10)
    # float32 in, float32 out, within the FFT tolerance
    y32 = fft.conv2d_fft(a, x.astype(np.float32), w.astype(np.float32), b.astype(np.float32))
    assert y32.dtype == np.float32
    assert_close(y32, y, 1e-4)


def test_fft_declines_dilation():
    a = A.conv_geometry("conv2d", (1, 1, 9, 9), (1, 1, 3, 3), 1, 0, 2, 1, np.float32)
    assert "dilation" in fft.fft_supports(a)
