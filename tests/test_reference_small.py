"""Reference tier: relu, bias_add, linear, softmax cross-entropy."""
import numpy as np
import pytest

import convgpu
from helpers import assert_close, grad_check, rand


def test_relu_and_backward(rng):
    x = rand(rng, (3, 4, 5))
    y = convgpu.relu(x)
    np.testing.assert_array_equal(y, np.where(x > 0, x, 0))
    gy = rand(rng, x.shape)
    gx = convgpu.relu_backward(gy, x)
    np.testing.assert_array_equal(gx, np.where(x > 0, gy, 0))
    grad_check(lambda x_: float(np.sum(convgpu.relu(x_) * gy)), gx, x, rng)
    assert np.isnan(convgpu.relu(np.array([np.nan, -1.0]))[0])


def test_bias_add(rng):
    x = rand(rng, (2, 3, 4, 5))
    b = rand(rng, (3,))
    assert_close(convgpu.bias_add(x, b), x + b[None, :, None, None], 1e-15)
    x2 = rand(rng, (4, 3))
    assert_close(convgpu.bias_add(x2, b), x2 + b, 1e-15)


@pytest.mark.parametrize("shape", [(5, 7), (2, 3, 7)])
def test_linear_against_loops_and_fd(rng, shape):
    x = rand(rng, shape)
    w = rand(rng, (4, 7))
    b = rand(rng, (4,))
    y = convgpu.linear(x, w, b)
    ref = np.zeros(shape[:-1] + (4,))
    for i in np.ndindex(*shape[:-1]):
        for o in range(4):
            ref[i + (o,)] = b[o] + sum(x[i + (j,)] * w[o, j] for j in range(7))
    assert_close(y, ref, 1e-14)
    gy = rand(rng, y.shape)
    gx, gw, gb = convgpu.linear_backward(gy, x, w)
    grad_check(lambda x_: float(np.sum(convgpu.linear(x_, w, b) * gy)), gx, x, rng)
    grad_check(lambda w_: float(np.sum(convgpu.linear(x, w_, b) * gy)), gw, w, rng)
    grad_check(lambda b_: float(np.sum(convgpu.linear(x, w, b_) * gy)), gb, b, rng)


def test_softmax_cross_entropy(rng):
    z = rand(rng, (6, 5)) * 3
    t = rng.integers(0, 5, size=6)
    loss = convgpu.softmax_cross_entropy(z, t)
    ref = np.mean([-z[i, t[i]] + np.log(np.sum(np.exp(z[i]))) for i in range(6)])
    assert abs(float(loss) - ref) < 1e-12
    g = convgpu.softmax_cross_entropy_backward(z, t)
    grad_check(lambda z_: float(convgpu.softmax_cross_entropy(z_, t)), g, z, rng)
    # large logits stay finite (log-sum-exp)
    assert np.isfinite(convgpu.softmax_cross_entropy(z * 1e3, t))
    assert convgpu.softmax_cross_entropy(z.astype(np.float32), t).dtype == np.float32
