"""Property tests (hypothesis): random small problems, every argument combination drawn,
the reference against the brute-force loops; output sizes against the formulas."""
import os

import numpy as np
import pytest
from hypothesis import assume, given, settings, strategies as st

import brute
import convgpu
from helpers import TOL, assert_close


@st.composite
def conv_problems(draw):
    g = draw(st.integers(1, 3))
    C = g * draw(st.integers(1, 2))
    K = g * draw(st.integers(1, 2))
    R, S = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    dh, dw = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    ph, pw = draw(st.integers(0, 2)), draw(st.integers(0, 2))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    H = draw(st.integers(max(1, dh * (R - 1) + 1 - 2 * ph), 9))
    W = draw(st.integers(max(1, dw * (S - 1) + 1 - 2 * pw), 9))
    N = draw(st.integers(1, 2))
    seed = draw(st.integers(0, 2 ** 32 - 1))
    return (N, C, H, W, K, R, S, (sh, sw), (ph, pw), (dh, dw), g, seed)


@settings(max_examples=int(os.environ.get("CONVGPU_HYPOTHESIS_EXAMPLES", 60)), deadline=None,
          derandomize=not os.environ.get("CONVGPU_HYPOTHESIS_EXAMPLES"))
@given(conv_problems())
def test_conv2d_and_backward_against_loops(p):
    N, C, H, W, K, R, S, st_, pd, dl, g, seed = p
    rng = np.random.default_rng(seed)
    x = rng.uniform(0.5, 1.5, (N, C, H, W)) * rng.choice([-1, 1], (N, C, H, W))
    w = rng.uniform(0.5, 1.5, (K, C // g, R, S)) * rng.choice([-1, 1], (K, C // g, R, S))
    y = convgpu.conv2d(x, w, None, st_, pd, dl, g)
    assert_close(y, brute.conv2d(x, w, None, st_, pd, dl, g), TOL[np.float64])
    gy = rng.standard_normal(y.shape) + 2.0
    gx, gw = brute.conv2d_backward(x.shape, w, x, gy, st_, pd, dl, g)
    assert_close(convgpu.conv2d_backward_input(gy, w, x.shape, st_, pd, dl, g), gx, TOL[np.float64])
    assert_close(convgpu.conv2d_backward_weight(x, gy, w.shape, st_, pd, dl, g), gw, TOL[np.float64])


@settings(max_examples=int(os.environ.get("CONVGPU_HYPOTHESIS_EXAMPLES", 60)), deadline=None,
          derandomize=not os.environ.get("CONVGPU_HYPOTHESIS_EXAMPLES"))
@given(st.integers(1, 4), st.integers(1, 4), st.integers(1, 3), st.integers(1, 3),
       st.integers(0, 2), st.integers(0, 2), st.integers(1, 2), st.integers(1, 2), st.booleans(),
       st.integers(1, 11), st.integers(1, 11), st.integers(0, 2 ** 32 - 1))
def test_max_pool_against_loops(kh, kw, sh, sw, ph, pw, dh, dw, ceil, H, W, seed):
    ph, pw = min(ph, ((kh - 1) * dh + 1) // 2), min(pw, ((kw - 1) * dw + 1) // 2)
    assume(H + 2 * ph >= dh * (kh - 1) + 1 and W + 2 * pw >= dw * (kw - 1) + 1)
    rng = np.random.default_rng(seed)
    x = rng.permutation(np.linspace(-1, 1, 2 * H * W)).reshape(1, 2, H, W)
    yb, ib = brute.max_pool2d(x, (kh, kw), (sh, sw), (ph, pw), (dh, dw), ceil)
    if (ib < 0).any():              # a window entirely in the padding: refused, with reason
        with pytest.raises(ValueError, match="entirely in the padding"):
            convgpu.max_pool2d(x, (kh, kw), (sh, sw), (ph, pw), (dh, dw), ceil, True)
        return
    y, idx = convgpu.max_pool2d(x, (kh, kw), (sh, sw), (ph, pw), (dh, dw), ceil, True)
    assert y.shape == yb.shape
    np.testing.assert_array_equal(idx, ib)
    np.testing.assert_array_equal(y, yb)
