"""The small ops on every backend (tests/ops/conftest.py): relu and its backward, bias_add,
the bias gradient, the softmax cross-entropy and its gradient, float32 and float64, against
sums and selections written out here (a selection and a copy exact; sums within their
bound, docs/tolerances.md), never against the code under test."""
import numpy as np
import pytest

import convgpu
from helpers import TOL, assert_bounded, assert_close, rand


def xent_oracle(z, t):
    """The mean softmax cross-entropy of rows z with labels t, and its gradient, in float64
    from the definition (log-sum-exp shifted by the row's maximum)."""
    z = np.asarray(z, np.float64)
    top = z.max(axis=1, keepdims=True)
    e = np.exp(z - top)
    lse = np.log(e.sum(axis=1)) + top[:, 0]
    rows = np.arange(len(t))
    loss = float(np.mean(lse - z[rows, t]))
    g = e / e.sum(axis=1, keepdims=True)
    g[rows, t] -= 1
    return loss, g / len(t)


# the loss: a mean of per-row log-sum-exps, each within a few ulps
LOSS_TOL = {np.float32: 1e-6, np.float64: 1e-11}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_small_ops(rng, backend, run, dtype):
    x = rand(rng, (3, 4, 5, 2))
    xd = x.astype(dtype)
    # a selection and a copy: exact
    np.testing.assert_array_equal(run(lambda: convgpu.relu(xd, backend=backend)),
                                  np.maximum(xd, 0))
    gy = rand(rng, x.shape)
    gyd = gy.astype(dtype)
    np.testing.assert_array_equal(run(lambda: convgpu.relu_backward(gyd, xd, backend=backend)),
                                  np.where(xd > 0, gyd, 0))
    b = rand(rng, (4,))
    assert_bounded(run(lambda: convgpu.bias_add(xd, b.astype(dtype), backend=backend)),
                   x + b[None, :, None, None], abs(x) + abs(b[None, :, None, None]), 1,
                   "direct", dtype)
    assert_bounded(run(lambda: convgpu.conv2d_backward_bias(xd, backend=backend)),
                   x.sum(axis=(0, 2, 3)), abs(x).sum(axis=(0, 2, 3)), 3 * 5 * 2, "direct", dtype)
    for n, c in [(7, 10), (3, 45), (40, 3)]:           # rows narrower and wider than a warp
        z = rand(rng, (n, c)) * 4
        t = rng.integers(0, c, size=n)
        want, g_want = xent_oracle(z, t)
        loss = run(lambda: convgpu.softmax_cross_entropy(z.astype(dtype), t, backend=backend))
        assert loss.dtype == dtype
        assert abs(float(loss) - want) <= LOSS_TOL[dtype] * abs(want), (float(loss), want)
        g = run(lambda: convgpu.softmax_cross_entropy_backward(z.astype(dtype), t,
                                                               backend=backend))
        assert g.dtype == dtype
        assert_close(g, g_want, TOL[dtype])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_xent_backward_times_grad_output(rng, backend, run, dtype):
    """The gradient of a loss whose own gradient is not 1 (grad_output, a scalar of the
    logits' dtype): the kernels scale before their store."""
    z = rand(rng, (5, 9)) * 4
    t = rng.integers(0, 9, size=5)
    _, g_want = xent_oracle(z, t)
    scale = np.array(-0.37, dtype)
    g = run(lambda: convgpu.softmax_cross_entropy_backward(z.astype(dtype), t,
                                                           grad_output=scale, backend=backend))
    assert g.dtype == dtype
    assert_close(g, g_want * float(scale), TOL[dtype])


def test_relu_keeps_nan(backend, run):
    y = run(lambda: convgpu.relu(np.array([np.nan, -1.0, 2.0]), backend=backend))
    assert np.isnan(y[0]) and y[1] == 0 and y[2] == 2
