"""Reference tier: pooling against brute-force loops, planted ties and NaN, the notes'
upsample example, and finite-difference gradient checks."""
import numpy as np
import pytest

import brute
import convgpu
from helpers import TOL, assert_close, grad_check, rand, shuffled_linspace

# (N, C, H, W, kernel, stride, padding, dilation, ceil_mode)
MAX_CASES = [
    (2, 3, 8, 8, (2, 2), (2, 2), (0, 0), (1, 1), False),
    (1, 2, 7, 9, (3, 3), (2, 2), (1, 1), (1, 1), False),
    (1, 2, 7, 9, (3, 3), (2, 2), (1, 1), (1, 1), True),
    (2, 1, 10, 7, (3, 2), (2, 3), (1, 0), (2, 1), True),
    (1, 3, 6, 11, (2, 3), (1, 2), (1, 1), (1, 2), False),
    (1, 1, 5, 5, (3, 3), (3, 3), (0, 0), (1, 1), True),    # last window hangs off the edge
    (1, 2, 13, 13, (3, 3), (2, 2), (0, 0), (1, 1), True),
]


@pytest.mark.parametrize("case", MAX_CASES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_max_pool2d_against_loops(rng, case, dtype):
    N, C, H, W, k, s, p, d, cm = case
    x = shuffled_linspace(rng, (N, C, H, W), dtype)
    y, idx = convgpu.max_pool2d(x, k, s, p, d, cm, return_indices=True)
    yr, ir = brute.max_pool2d(x, k, s, p, d, cm)
    assert y.dtype == dtype and idx.dtype == np.int64
    np.testing.assert_array_equal(y, yr.astype(dtype))
    np.testing.assert_array_equal(idx, ir)
    # the value at each index is the output
    np.testing.assert_array_equal(np.take_along_axis(x.reshape(N, C, -1), idx.reshape(N, C, -1), 2),
                                  y.reshape(N, C, -1))


@pytest.mark.parametrize("case", MAX_CASES)
def test_max_pool2d_backward(rng, case):
    N, C, H, W, k, s, p, d, cm = case
    x = shuffled_linspace(rng, (N, C, H, W))
    y, idx = convgpu.max_pool2d(x, k, s, p, d, cm, return_indices=True)
    gy = rand(rng, y.shape)
    gx = convgpu.max_pool2d_backward(gy, idx, x.shape)
    ref = np.zeros(x.shape)
    for n, c, i, j in np.ndindex(*y.shape):       # scatter in loop order
        h, w = divmod(int(idx[n, c, i, j]), W)
        ref[n, c, h, w] += gy[n, c, i, j]
    assert_close(gx, ref, TOL[np.float64])
    assert_close(convgpu.max_pool2d_backward(gy, idx, x.shape, k, s, p, d, cm), ref, TOL[np.float64])
    grad_check(lambda x_: float(np.sum(convgpu.max_pool2d(x_, k, s, p, d, cm) * gy)), gx, x, rng)


def test_max_pool2d_ties_first_maximum_wins():
    x = np.zeros((1, 1, 4, 4))
    x[0, 0, :2, :2] = 5.0            # four-way tie in the first window
    x[0, 0, 2, 3] = x[0, 0, 3, 2] = 7.0
    y, idx = convgpu.max_pool2d(x, 2, return_indices=True)
    np.testing.assert_array_equal(y[0, 0], [[5, 0], [0, 7]])
    np.testing.assert_array_equal(idx[0, 0], [[0, 2], [8, 11]])


def test_max_pool2d_nan_propagates_with_its_index():
    x = np.arange(16, dtype=np.float64).reshape(1, 1, 4, 4)
    x[0, 0, 1, 0] = np.nan
    x[0, 0, 3, 3] = np.nan
    x[0, 0, 3, 2] = np.nan           # two NaN in one window: the first one's index
    y, idx = convgpu.max_pool2d(x, 2, return_indices=True)
    assert np.isnan(y[0, 0, 0, 0]) and idx[0, 0, 0, 0] == 4
    assert y[0, 0, 0, 1] == 7 and idx[0, 0, 0, 1] == 7
    assert np.isnan(y[0, 0, 1, 1]) and idx[0, 0, 1, 1] == 14
    yb, ib = brute.max_pool2d(x, (2, 2), (2, 2), (0, 0), (1, 1), False)
    np.testing.assert_array_equal(idx, ib)


def test_max_pool2d_all_minus_inf_window_points_inside_input():
    x = np.full((1, 1, 3, 3), -np.inf)
    y, idx = convgpu.max_pool2d(x, 3, stride=2, padding=1, return_indices=True)
    yb, ib = brute.max_pool2d(x, (3, 3), (2, 2), (1, 1), (1, 1), False)
    np.testing.assert_array_equal(idx, ib)
    assert (idx >= 0).all() and (idx < 9).all()


def test_ceil_mode_output_size_rule():
    """torch: the last window must start inside the input or the left padding."""
    x = np.ones((1, 1, 5, 5))
    assert convgpu.max_pool2d(x, 2, 2).shape == (1, 1, 2, 2)
    assert convgpu.max_pool2d(x, 2, 2, ceil_mode=True).shape == (1, 1, 3, 3)
    # span 5+2-3 = 4: ceil(4/2)+1 = 3, but the 3rd window would start at 4 - 1 + ... check
    x6 = np.ones((1, 1, 6, 6))
    assert convgpu.max_pool2d(x6, 3, 2, 1, ceil_mode=True).shape == (1, 1, 4, 4)
    # (out-1)*s >= H+p drops the last window: H=4, k=2, s=2, p=1 -> ceil(4/2)+1 = 3; 2*2=4 < 5 keeps
    x4 = np.ones((1, 1, 4, 4))
    assert convgpu.max_pool2d(x4, 2, 2, 1, ceil_mode=True).shape == (1, 1, 3, 3)
    # H=5, k=2, s=3, p=1: span 5, ceil(5/3)+1 = 3; (3-1)*3 = 6 >= 6 drops it -> 2
    assert convgpu.max_pool2d(x, 2, 3, 1, ceil_mode=True).shape == (1, 1, 2, 2)


AVG_CASES = [
    (2, 3, 8, 8, (2, 2), (2, 2), (0, 0), False, True, None),
    (1, 2, 7, 9, (3, 3), (2, 2), (1, 1), False, True, None),
    (1, 2, 7, 9, (3, 3), (2, 2), (1, 1), False, False, None),
    (1, 2, 7, 9, (3, 3), (2, 2), (1, 1), True, True, None),
    (1, 2, 7, 9, (3, 3), (2, 2), (1, 1), True, False, None),
    (2, 1, 10, 7, (3, 2), (2, 3), (1, 1), True, True, 5),
    (1, 1, 5, 6, (4, 3), (3, 1), (2, 1), True, False, None),
]


@pytest.mark.parametrize("case", AVG_CASES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_avg_pool2d_against_loops(rng, case, dtype):
    N, C, H, W, k, s, p, cm, cip, dov = case
    x = rand(rng, (N, C, H, W), dtype)
    y = convgpu.avg_pool2d(x, k, s, p, cm, cip, dov)
    assert y.dtype == dtype
    assert_close(y, brute.avg_pool2d(x, k, s, p, cm, cip, dov), TOL[dtype])


@pytest.mark.parametrize("case", AVG_CASES)
def test_avg_pool2d_backward_by_finite_differences(rng, case):
    N, C, H, W, k, s, p, cm, cip, dov = case
    x = rand(rng, (N, C, H, W))
    y = convgpu.avg_pool2d(x, k, s, p, cm, cip, dov)
    gy = rand(rng, y.shape)
    gx = convgpu.avg_pool2d_backward(gy, x.shape, k, s, p, cm, cip, dov)
    grad_check(lambda x_: float(np.sum(convgpu.avg_pool2d(x_, k, s, p, cm, cip, dov) * gy)),
               gx, x, rng)


def test_lecture_notes_mean_pooling_upsample():
    """The notes: with 2x2 mean pooling and a sensitivity map [[1, 3], [2, 4]], the upsampled
    map is each value copied over its 2x2 block; the gradient divides by the 4 inputs."""
    gy = np.array([[1, 3], [2, 4]], dtype=np.float64).reshape(1, 1, 2, 2)
    upsample = np.array([[1, 1, 3, 3], [1, 1, 3, 3], [2, 2, 4, 4], [2, 2, 4, 4]], dtype=np.float64)
    gx = convgpu.avg_pool2d_backward(gy, (1, 1, 4, 4), 2)
    np.testing.assert_array_equal(gx[0, 0] * 4, upsample)
    np.testing.assert_array_equal(convgpu.avg_pool2d_backward(gy, (1, 1, 4, 4), 2,
                                                              divisor_override=1)[0, 0], upsample)


def test_global_avg_pool(rng):
    x = rand(rng, (2, 3, 5, 4))
    y = convgpu.global_avg_pool2d(x)
    assert y.shape == (2, 3)
    assert_close(y, x.mean(axis=(2, 3)), 1e-14)
    gy = rand(rng, y.shape)
    gx = convgpu.global_avg_pool2d_backward(gy, x.shape)
    grad_check(lambda x_: float(np.sum(convgpu.global_avg_pool2d(x_) * gy)), gx, x, rng)


def test_adaptive_avg_pool_worked_example():
    """5 rows pooled to 3: windows [0, 2), [1, 4), [3, 5) (floor(p 5 / 3) to
    ceil((p + 1) 5 / 3)); rows 1 and 3 belong to two windows each."""
    x = np.arange(5.0).reshape(1, 1, 5, 1)
    y = convgpu.adaptive_avg_pool2d(x, (3, 1))
    np.testing.assert_array_equal(y[0, 0, :, 0], [0.5, 2.0, 3.5])
    gx = convgpu.adaptive_avg_pool2d_backward(np.ones((1, 1, 3, 1)), x.shape)
    np.testing.assert_allclose(gx[0, 0, :, 0], [1 / 2, 1 / 2 + 1 / 3, 1 / 3, 1 / 3 + 1 / 2, 1 / 2],
                               rtol=1e-15)


def test_adaptive_avg_pool_special_cases(rng):
    """The output size dividing the input is avg_pool2d with kernel = stride = the quotient;
    1 x 1 is the global mean; the input's own size is the identity."""
    x = rand(rng, (2, 3, 12, 8))
    assert_close(convgpu.adaptive_avg_pool2d(x, (4, 2)), convgpu.avg_pool2d(x, (3, 4)), 1e-15)
    assert_close(convgpu.adaptive_avg_pool2d(x, 1)[:, :, 0, 0], x.mean(axis=(2, 3)), 1e-14)
    np.testing.assert_array_equal(convgpu.adaptive_avg_pool2d(x, (None, None)), x)
    gy = rand(rng, (2, 3, 4, 2))
    assert_close(convgpu.adaptive_avg_pool2d_backward(gy, x.shape),
                 convgpu.avg_pool2d_backward(gy, x.shape, (3, 4)), 1e-15)


@pytest.mark.parametrize("shape, out", [((2, 3, 7, 5), (3, 2)), ((1, 2, 5, 6), (9, 11))])
def test_adaptive_avg_pool_gradient(rng, shape, out):
    x = rand(rng, shape)
    gy = rand(rng, convgpu.adaptive_avg_pool2d(x, out).shape)
    gx = convgpu.adaptive_avg_pool2d_backward(gy, x.shape)
    grad_check(lambda x_: float(np.sum(convgpu.adaptive_avg_pool2d(x_, out) * gy)), gx, x, rng)


def test_unbatched_pooling(rng):
    x = shuffled_linspace(rng, (3, 6, 6))
    y, idx = convgpu.max_pool2d(x, 2, return_indices=True)
    assert y.shape == (3, 3, 3) and idx.shape == (3, 3, 3)
    gx = convgpu.max_pool2d_backward(np.ones_like(y), idx, x.shape)
    assert gx.shape == x.shape and gx.sum() == 27
    assert convgpu.avg_pool2d(x, 2).shape == (3, 3, 3)
