"""Reference tier: convolution against brute-force loops, scipy.signal, the lecture notes'
worked examples, and float64 finite differences."""
import numpy as np
import pytest
import scipy.signal

import brute
import convgpu
from helpers import TOL, TOL_FFT, assert_close, grad_check, rand

# (N, C, H, W, K, R, S, stride, padding, dilation, groups): sweeps every branch
CASES = [
    (2, 3, 7, 6, 4, 3, 3, (1, 1), (0, 0), (1, 1), 1),
    (1, 2, 8, 9, 3, 3, 2, (2, 1), (1, 0), (1, 1), 1),
    (2, 4, 9, 7, 6, 2, 3, (1, 2), (1, 1), (2, 1), 2),
    (1, 6, 11, 10, 6, 3, 3, (3, 2), (2, 1), (1, 2), 3),
    (3, 1, 5, 5, 2, 5, 5, (1, 1), (2, 2), (1, 1), 1),
    (1, 4, 6, 13, 4, 1, 1, (2, 3), (0, 1), (1, 1), 4),     # 1x1, depthwise-like
    (2, 2, 10, 4, 5, 4, 1, (2, 1), (3, 0), (2, 1), 1),
]


def _problem(rng, case, dtype=np.float64):
    N, C, H, W, K, R, S, st, pd, dl, g = case
    x = rand(rng, (N, C, H, W), dtype)
    w = rand(rng, (K, C // g, R, S), dtype)
    b = rand(rng, (K,), dtype)
    return x, w, b, dict(stride=st, padding=pd, dilation=dl, groups=g)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_conv2d_against_loops(rng, case, dtype):
    x, w, b, kw = _problem(rng, case, dtype)
    ref = brute.conv2d(x.astype(np.float64), w.astype(np.float64), b.astype(np.float64),
                       kw["stride"], kw["padding"], kw["dilation"], kw["groups"])
    y = convgpu.conv2d(x, w, b, **kw)
    assert y.dtype == dtype
    assert_close(y, ref, TOL[dtype])


@pytest.mark.parametrize("case", CASES)
def test_conv2d_fft_path_against_loops(rng, case):
    x, w, b, kw = _problem(rng, case)
    ref = brute.conv2d(x, w, b, kw["stride"], kw["padding"], kw["dilation"], kw["groups"])
    assert_close(convgpu.conv2d(x, w, b, **kw, algo="fft"), ref, TOL_FFT[np.float64])
    x32, w32, b32 = (a.astype(np.float32) for a in (x, w, b))
    assert_close(convgpu.conv2d(x32, w32, b32, **kw, algo="fft"), ref, TOL_FFT[np.float32])


@pytest.mark.parametrize("case", CASES)
def test_conv2d_backward_against_loops(rng, case):
    x, w, b, kw = _problem(rng, case)
    y = convgpu.conv2d(x, w, b, **kw)
    gy = rand(rng, y.shape)
    gx_ref, gw_ref = brute.conv2d_backward(x.shape, w, x, gy, kw["stride"], kw["padding"],
                                           kw["dilation"], kw["groups"])
    assert_close(convgpu.conv2d_backward_input(gy, w, x.shape, **kw), gx_ref, TOL[np.float64])
    assert_close(convgpu.conv2d_backward_weight(x, gy, w.shape, **kw), gw_ref, TOL[np.float64])
    assert_close(convgpu.conv2d_backward_bias(gy), gy.sum(axis=(0, 2, 3)), TOL[np.float64])


@pytest.mark.parametrize("case", CASES[:5])
def test_conv2d_gradients_by_finite_differences(rng, case):
    x, w, b, kw = _problem(rng, case)
    y = convgpu.conv2d(x, w, b, **kw)
    gy = rand(rng, y.shape)

    def loss_x(x_):
        return float(np.sum(convgpu.conv2d(x_, w, b, **kw) * gy))

    def loss_w(w_):
        return float(np.sum(convgpu.conv2d(x, w_, b, **kw) * gy))

    def loss_b(b_):
        return float(np.sum(convgpu.conv2d(x, w, b_, **kw) * gy))

    grad_check(loss_x, convgpu.conv2d_backward_input(gy, w, x.shape, **kw), x, rng)
    grad_check(loss_w, convgpu.conv2d_backward_weight(x, gy, w.shape, **kw), w, rng)
    grad_check(loss_b, convgpu.conv2d_backward_bias(gy), b, rng)


def test_conv2d_single_channel_matches_scipy_correlate(rng):
    x = rand(rng, (1, 1, 9, 12))
    w = rand(rng, (1, 1, 4, 3))
    ref = scipy.signal.correlate2d(x[0, 0], w[0, 0], mode="valid")
    assert_close(convgpu.conv2d(x, w)[0, 0], ref, TOL[np.float64])
    # 'full' correlation = padding R-1, S-1
    full = scipy.signal.correlate2d(x[0, 0], w[0, 0], mode="full")
    assert_close(convgpu.conv2d(x, w, padding=(3, 2))[0, 0], full, TOL[np.float64])


def test_backward_input_is_full_convolution_with_the_filter(rng):
    """Lecture notes: backprop through a convolution is a convolution with the inverted
    (180-degree rotated) filter: gx = convolve2d(gy, w, 'full') = correlate2d(gy, rot180(w))."""
    gy = rand(rng, (1, 1, 6, 5))
    w = rand(rng, (1, 1, 3, 4))
    gx = convgpu.conv2d_backward_input(gy, w, (1, 1, 8, 8))
    assert_close(gx[0, 0], scipy.signal.convolve2d(gy[0, 0], w[0, 0], mode="full"), 1e-12)
    assert_close(gx[0, 0], scipy.signal.correlate2d(gy[0, 0], np.rot90(w[0, 0], 2), "full"), 1e-12)
    # and the weight gradient is the correlation of the input with gy (valid)
    x = rand(rng, (1, 1, 8, 8))
    gw = convgpu.conv2d_backward_weight(x, gy, (1, 1, 3, 4))
    assert_close(gw[0, 0], scipy.signal.correlate2d(x[0, 0], gy[0, 0], mode="valid"), 1e-12)


def test_lecture_notes_1d_example():
    """f = [1,2,3,4,5], g = [1,2,3]: f * g = [1,4,10,16,22,22,15]; without padding [10,16,22].
    Convolution flips g; conv2d is a cross-correlation, so pass the flipped kernel."""
    f = np.array([1, 2, 3, 4, 5], dtype=np.float64).reshape(1, 1, 1, 5)
    g = np.array([1, 2, 3], dtype=np.float64)[::-1].reshape(1, 1, 1, 3).copy()
    np.testing.assert_array_equal(convgpu.conv2d(f, g, padding=(0, 2)).ravel(),
                                  [1, 4, 10, 16, 22, 22, 15])
    np.testing.assert_array_equal(convgpu.conv2d(f, g).ravel(), [10, 16, 22])


F = np.arange(1, 10, dtype=np.float64).reshape(3, 3)
G = np.array([[1, 2], [3, 4]], dtype=np.float64)


def test_lecture_notes_2d_full_convolution():
    """The notes' full convolution of the 3x3 f by the 2x2 g. The notes' typeset matrix says
    65 at (2, 2) but their own scipy session prints 63: 5*4 + 6*3 + 8*2 + 9*1 = 63."""
    full = np.array([[1, 4, 7, 6], [7, 23, 33, 24], [19, 53, 63, 42], [21, 52, 59, 36]],
                    dtype=np.float64)
    gflip = np.rot90(G, 2).copy().reshape(1, 1, 2, 2)
    np.testing.assert_array_equal(convgpu.conv2d(F.reshape(1, 1, 3, 3), gflip, padding=1)[0, 0],
                                  full)
    np.testing.assert_array_equal(convgpu.conv2d(F.reshape(1, 1, 3, 3), gflip)[0, 0],
                                  [[23, 33], [53, 63]])
    # full convolution is exactly the input gradient of a valid correlation with g
    np.testing.assert_array_equal(
        convgpu.conv2d_backward_input(F.reshape(1, 1, 3, 3), G.reshape(1, 1, 2, 2), (1, 1, 4, 4))[0, 0],
        full)


def test_lecture_notes_2d_cross_correlation():
    """f o g of the notes: 'full' and 'valid' cross-correlation tables."""
    full = np.array([[4, 11, 18, 9], [18, 37, 47, 21], [36, 67, 77, 33], [14, 23, 26, 9]],
                    dtype=np.float64)
    x = F.reshape(1, 1, 3, 3)
    w = G.reshape(1, 1, 2, 2)
    np.testing.assert_array_equal(convgpu.conv2d(x, w, padding=1)[0, 0], full)
    np.testing.assert_array_equal(convgpu.conv2d(x, w)[0, 0], [[37, 47], [67, 77]])


def test_output_size_formula_from_the_notes():
    """(N - F)/S + 1: a 7x7 input and 3x3 filter give 5x5 at stride 1 and 3x3 at stride 2;
    with padding 1, 7x7 stays 7x7."""
    x = np.ones((1, 1, 7, 7))
    w = np.ones((1, 1, 3, 3))
    assert convgpu.conv2d(x, w).shape == (1, 1, 5, 5)
    assert convgpu.conv2d(x, w, stride=2).shape == (1, 1, 3, 3)
    assert convgpu.conv2d(x, w, padding=1).shape == (1, 1, 7, 7)
    assert convgpu.conv2d(x, w, stride=3).shape == (1, 1, 2, 2)   # floor((7-3)/3)+1


TCASES = [
    (2, 4, 5, 4, 6, 3, 3, (2, 2), (1, 1), (1, 1), (1, 1), 1),
    (1, 4, 4, 6, 6, 3, 2, (2, 3), (0, 1), (1, 2), (1, 1), 2),
    (1, 3, 3, 5, 2, 2, 3, (3, 1), (1, 0), (0, 0), (2, 1), 1),
]


@pytest.mark.parametrize("case", TCASES)
def test_conv_transpose2d_is_adjoint_of_conv2d(rng, case):
    """<conv2d(u, w), x> = <u, conv_transpose2d(x, w)> for every u: checked on a random u,
    plus the output size formula and the bias."""
    N, Cin, H, W, Cout, R, S, st, pd, op_, dl, g = case
    x = rand(rng, (N, Cin, H, W))
    w = rand(rng, (Cin, Cout // g, R, S))
    b = rand(rng, (Cout,))
    y = convgpu.conv_transpose2d(x, w, None, st, pd, op_, g, dl)
    Ho = (H - 1) * st[0] - 2 * pd[0] + dl[0] * (R - 1) + op_[0] + 1
    Wo = (W - 1) * st[1] - 2 * pd[1] + dl[1] * (S - 1) + op_[1] + 1
    assert y.shape == (N, Cout, Ho, Wo)
    u = rand(rng, y.shape)
    lhs = np.sum(convgpu.conv2d(u, w, None, st, pd, dl, g) * x)
    assert abs(lhs - np.sum(u * y)) <= 1e-10 * abs(lhs)
    yb = convgpu.conv_transpose2d(x, w, b, st, pd, op_, g, dl)
    assert_close(yb, y + b.reshape(1, -1, 1, 1), 1e-14)
    # and against the brute-force scatter
    gx, _ = brute.conv2d_backward((N, Cout, Ho, Wo), w, None, x, st, pd, dl, g)
    assert_close(y, gx, 1e-12)


def test_unbatched_input(rng):
    x = rand(rng, (3, 6, 5))
    w = rand(rng, (2, 3, 3, 3))
    y = convgpu.conv2d(x, w, padding=1)
    assert y.shape == (2, 6, 5)
    assert_close(y, convgpu.conv2d(x[None], w, padding=1)[0], 0)


def test_non_contiguous_input_is_made_contiguous(rng):
    x = rand(rng, (2, 3, 8, 10))
    w = rand(rng, (4, 3, 3, 3))
    xt = np.asfortranarray(x)[:, :, ::2, ::2]
    assert not xt.flags.c_contiguous
    assert_close(convgpu.conv2d(xt, w), convgpu.conv2d(np.ascontiguousarray(xt), w), 0)
