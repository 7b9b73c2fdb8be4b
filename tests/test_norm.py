"""Batch normalisation on the numpy backend: the reference checked by what does not come
from it (a worked example by hand, finite differences, the output's own statistics), the
op layer's running estimates, modes and array types. Every mode on every backend against
the reference: tests/ops/test_batch_norm.py."""
import itertools

import numpy as np
import pytest
import torch

import convgpu
from helpers import BN_SHAPES, batch_norm_inputs, grad_check, rand


def test_worked_example_by_hand():
    """One channel holding 1, 2, 3, 4 (two images of two values), another 0, 0, 0, 8: mean
    2.5 and 2, biased variance 1.25 and 12, unbiased 5/3 and 16; momentum 0.1 from running
    estimates 0 and 1."""
    x = np.array([[[1.0, 2.0], [0.0, 0.0]], [[3.0, 4.0], [0.0, 8.0]]])      # (N=2, C=2, L=2)
    rm, rv = np.zeros(2), np.ones(2)
    y, mean, invstd = convgpu.batch_norm(x, rm, rv, training=True, momentum=0.1, eps=0.0001,
                                         return_stats=True)
    np.testing.assert_allclose(mean, [2.5, 2.0], rtol=1e-15)
    np.testing.assert_allclose(invstd, [1 / np.sqrt(1.25 + 1e-4), 1 / np.sqrt(12 + 1e-4)],
                               rtol=1e-15)
    np.testing.assert_allclose(rm, [0.25, 0.2], rtol=1e-15)
    np.testing.assert_allclose(rv, [0.9 + 0.1 * 5 / 3, 0.9 + 0.1 * 16], rtol=1e-15)
    s = 1 / np.sqrt(1.25 + 1e-4)
    np.testing.assert_allclose(y[:, 0], [[-1.5 * s, -0.5 * s], [0.5 * s, 1.5 * s]], rtol=1e-14)
    # evaluation with those estimates: (x - 0.25) / sqrt(0.9 + 1/6 + eps)
    ye = convgpu.batch_norm(x, rm, rv, training=False, eps=0.0001)
    np.testing.assert_allclose(ye[:, 0], (x[:, 0] - 0.25) / np.sqrt(0.9 + 1 / 6 + 1e-4),
                               rtol=1e-14)


@pytest.mark.parametrize("shape", BN_SHAPES)
def test_training_output_has_the_affine_statistics(rng, shape):
    """In training each channel of y has mean bias[c] and variance
    weight[c]^2 var / (var + eps)."""
    inp = batch_norm_inputs(rng, shape, np.float64)
    y = convgpu.batch_norm(inp["x"], None, None, inp["w"], inp["b"], True, eps=1e-3)
    axes = (0,) + tuple(range(2, len(shape)))
    var = inp["x"].var(axis=axes)
    np.testing.assert_allclose(y.mean(axis=axes), inp["b"], atol=1e-13)
    np.testing.assert_allclose(y.var(axis=axes), inp["w"] ** 2 * var / (var + 1e-3), rtol=1e-12)


@pytest.mark.parametrize("shape, training", list(itertools.product(BN_SHAPES, [True, False])))
def test_gradients_match_finite_differences(rng, shape, training):
    """<grad, v> against the central difference of sum(gy * batch_norm(...)) along a random
    v, for x, weight and bias; in training the batch statistics move with x."""
    inp = batch_norm_inputs(rng, shape, np.float64)
    x, gy, w, b, rm, rv = (inp[k] for k in ("x", "gy", "w", "b", "rm", "rv"))

    def f(x_=x, w_=w, b_=b):
        return float(np.sum(gy * convgpu.batch_norm(x_, rm.copy(), rv.copy(), w_, b_, training)))

    _, mean, invstd = convgpu.batch_norm(x, rm.copy(), rv.copy(), w, b, training,
                                         return_stats=True)
    gx, gw, gb = convgpu.batch_norm_backward(gy, x, mean, invstd, w, training)
    grad_check(lambda x_: f(x_=x_), gx, x, rng)
    grad_check(lambda w_: f(w_=w_), gw, w, rng)
    grad_check(lambda b_: f(b_=b_), gb, b, rng)


def test_running_estimates_are_left_alone_in_evaluation_and_by_an_empty_batch(rng):
    rm, rv = rand(rng, (3,)), np.abs(rand(rng, (3,)))
    rm0, rv0 = rm.copy(), rv.copy()
    convgpu.batch_norm(rand(rng, (2, 3, 4)), rm, rv, training=False)
    convgpu.batch_norm(np.zeros((0, 3, 4)), rm, rv, training=True)
    np.testing.assert_array_equal(rm, rm0)
    np.testing.assert_array_equal(rv, rv0)


def test_empty_batch_statistics_are_mean_zero_variance_zero():
    y, mean, invstd = convgpu.batch_norm(np.zeros((0, 2, 3), np.float32), None, None,
                                         training=True, eps=0.25, return_stats=True)
    assert y.shape == (0, 2, 3) and mean.dtype == invstd.dtype == np.float32
    np.testing.assert_array_equal(mean, [0, 0])
    np.testing.assert_array_equal(invstd, [2, 2])


def test_unwritable_or_strided_running_estimates_are_refused(rng):
    x = rand(rng, (4, 3))
    rm, rv = np.zeros(3), np.ones(3)
    rm.flags.writeable = False
    with pytest.raises(ValueError, match="running_mean is updated in place and must be writable"):
        convgpu.batch_norm(x, rm, rv, training=True)
    strided = np.zeros(6)[::2]
    with pytest.raises(ValueError, match="running_mean is updated in place and must be C-contig"):
        convgpu.batch_norm(x, strided, rv, training=True)
    # in evaluation nothing is written: a read-only or strided estimate is fine
    convgpu.batch_norm(x, rm, rv, training=False)
    convgpu.batch_norm(x, strided, rv, training=False)


def test_torch_cpu_running_estimates_are_updated_in_place(rng):
    x = torch.from_numpy(rand(rng, (4, 3, 5)))
    rm, rv = torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
    y = convgpu.batch_norm(x, rm, rv, training=True)
    assert isinstance(y, torch.Tensor)
    want = 0.1 * x.numpy().mean(axis=(0, 2))
    np.testing.assert_allclose(rm.numpy(), want, rtol=1e-14)
