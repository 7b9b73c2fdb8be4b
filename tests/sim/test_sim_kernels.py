"""Simulator tier: the Numba implementations' tests not yet moved to tests/ops (where the
convolutions, pooling, linear, batch norm, the small ops, the optimiser steps and the empty
problems run one body per backend, the numba one in this process): Winograd's own shapes,
channel sums. Outputs are poisoned (NaN) before each launch (tests/sim/conftest.py). Each
launch is kept to about 30 blocks."""
import numpy as np
import pytest

import convgpu
from helpers import TOL, assert_close, assert_conv_close, rand


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("N, C, H, W, K, pad, groups", [(1, 2, 5, 6, 3, 1, 1),
                                                        (1, 4, 4, 7, 2, 2, 2)])
def test_conv2d_winograd(rng, N, C, H, W, K, pad, groups, dtype):
    """Winograd F(2x2, 3x3), forward and weight gradient: odd output sizes (partial tiles),
    paddings 1 and 2, groups; with a bias in float32, without in float64. (Each launch
    batches 16 x groups simulated GEMMs: kept small.)"""
    x, w, b = rand(rng, (N, C, H, W)), rand(rng, (K, C // groups, 3, 3)), rand(rng, (K,))
    bias = b if dtype == np.float32 else None
    kw = dict(padding=pad, groups=groups)
    ref = convgpu.conv2d(x, w, bias, **kw)
    y = convgpu.conv2d(x.astype(dtype), w.astype(dtype),
                       None if bias is None else bias.astype(dtype), **kw, backend="numba",
                       algo="winograd")
    assert_conv_close(y, ref, "conv2d", "winograd", dtype, x, w, bias=bias, **kw)
    gy = rand(rng, ref.shape)
    gw = convgpu.conv2d_backward_weight(x.astype(dtype), gy.astype(dtype), w.shape, **kw,
                                        backend="numba", algo="winograd")
    assert_conv_close(gw, convgpu.conv2d_backward_weight(x, gy, w.shape, **kw),
                      "conv2d_backward_weight", "winograd", dtype, x, gy, w.shape, **kw)


# ---- sums


def test_poisoning_is_on():
    """The premise of this tier: outputs start as NaN, so a kernel that skips an element
    fails. Check the allocator does poison."""
    from convgpu.kernels.outputs import empty
    a = empty((3,), np.float32, np.zeros(1))
    assert np.isnan(a).all()
    assert (empty((2,), np.int64, np.zeros(1)) == -1).all()


@pytest.mark.parametrize("B, K, L", [(300, 3, 1), (3, 2, 260)])
def test_channel_sum_long_and_short_rows(rng, B, K, L):
    from convgpu.kernels.numba.elementwise import channel_sum
    a = rand(rng, (B, K, L))
    assert_close(channel_sum(a), a.sum(axis=(0, 2)), TOL[np.float64])


