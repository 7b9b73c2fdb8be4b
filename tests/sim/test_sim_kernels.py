"""Simulator tier: the Numba implementations' tests not yet moved to tests/ops (where the
convolutions, pooling, linear, batch norm and the small ops run one body per backend, the
numba one in this process): Winograd's own shapes, the fused optimiser steps, channel
sums. Outputs are poisoned (NaN) before each launch
(tests/sim/conftest.py). Each launch is kept to about 30 blocks."""
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


# ---- the optimisers and sums


def test_poisoning_is_on():
    """The premise of this tier: outputs start as NaN, so a kernel that skips an element
    fails. Check the allocator does poison."""
    from convgpu.kernels.outputs import empty
    a = empty((3,), np.float32, np.zeros(1))
    assert np.isnan(a).all()
    assert (empty((2,), np.int64, np.zeros(1)) == -1).all()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fused_optimiser_steps(rng, dtype):
    """adam_step / sgd_step (numba, in place) against the reference over two steps."""
    from convgpu import reference as R
    p0, g, m0 = (rand(rng, (9, 7)) for _ in range(3))
    v0 = np.abs(rand(rng, (9, 7)))
    p, m, v, q, b = (a.astype(dtype) for a in (p0, m0, v0, p0, m0))
    rp, rm, rv, rq, rb = p0, m0, v0, p0, m0
    for step in (1, 2):
        convgpu.adam_step(p, g.astype(dtype), m, v, step, lr=0.1, weight_decay=0.01,
                          backend="numba")
        convgpu.sgd_step(q, g.astype(dtype), b, lr=0.1, momentum=0.9, weight_decay=0.01,
                         backend="numba")
        rp, rm, rv = R.adam_step(rp, g, rm, rv, step, 0.1, 0.9, 0.999, 1e-8, 0.01)
        rq, rb = R.sgd_step(rq, g, rb, 0.1, 0.9, 0.01)
    for a, w in zip((p, m, v, q, b), (rp, rm, rv, rq, rb), strict=True):
        assert a.dtype == dtype
        assert_close(a, w, TOL[dtype])
    convgpu.sgd_step(q, g.astype(dtype), lr=0.5, backend="numba")
    assert_close(q, rq - 0.5 * g, TOL[dtype])


@pytest.mark.parametrize("B, K, L", [(300, 3, 1), (3, 2, 260)])
def test_channel_sum_long_and_short_rows(rng, B, K, L):
    from convgpu.kernels.numba.elementwise import channel_sum
    a = rand(rng, (B, K, L))
    assert_close(channel_sum(a), a.sum(axis=(0, 2)), TOL[np.float64])


