"""conv2d and its gradients with torch's padding="valid" / "same": against the same
convolution written with the input padded by hand (np.pad, asymmetric where the total is
odd: the extra row / column after, as torch) and padding 0."""
import numpy as np
import pytest

import convgpu
from convgpu import nn, reference
from helpers import TOL, assert_close, rand

# (N, C, H, W, K, R, S, dilation, groups): odd and even kernels, dilated, grouped
CASES = [
    (2, 3, 7, 6, 4, 3, 3, (1, 1), 1),      # totals 2, 2: symmetric
    (2, 3, 7, 6, 4, 4, 2, (1, 1), 1),      # totals 3, 1: one extra row and column after
    (1, 4, 9, 8, 6, 4, 3, (1, 2), 2),      # totals 3, 4; grouped
    (2, 2, 6, 9, 3, 2, 5, (3, 1), 1),      # dilated 2-row kernel: total 3
]


def same_pads(R, S, dilation):
    """((top, bottom), (left, right)) of padding="same": half before, the rest after."""
    out = []
    for k, d in ((R, dilation[0]), (S, dilation[1])):
        t = d * (k - 1)
        out.append((t // 2, t - t // 2))
    return out


def by_hand(x, w, dilation, groups):
    (pt, pb), (pl, pr) = same_pads(w.shape[2], w.shape[3], dilation)
    xp = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    return xp, (pt, pl), reference.conv2d(xp, w, None, (1, 1), (0, 0), dilation, groups)


@pytest.mark.parametrize("case", CASES)
def test_same_forward_and_gradients_match_explicit_padding(rng, case):
    N, C, H, W, K, R, S, dil, g = case
    x, w, b = rand(rng, (N, C, H, W)), rand(rng, (K, C // g, R, S)), rand(rng, (K,))
    xp, (pt, pl), y_ref = by_hand(x, w, dil, g)
    y = convgpu.conv2d(x, w, b, padding="same", dilation=dil, groups=g)
    assert y.shape == (N, K, H, W)
    assert_close(y, y_ref + b[None, :, None, None], TOL[np.float64])
    gy = rand(rng, y.shape)
    gx_ref = reference.conv2d_backward_input(gy, w, xp.shape, (1, 1), (0, 0), dil, g)
    gx_ref = gx_ref[:, :, pt:pt + H, pl:pl + W]
    gw_ref = reference.conv2d_backward_weight(xp, gy, w.shape, (1, 1), (0, 0), dil, g)
    gx = convgpu.conv2d_backward_input(gy, w, x.shape, padding="same", dilation=dil, groups=g)
    gw = convgpu.conv2d_backward_weight(x, gy, w.shape, padding="same", dilation=dil, groups=g)
    assert_close(gx, gx_ref, TOL[np.float64])
    assert_close(gw, gw_ref, TOL[np.float64])
    assert y.flags.c_contiguous and gx.flags.c_contiguous


def test_same_unbatched_and_float32(rng):
    x, w = rand(rng, (3, 8, 7), np.float32), rand(rng, (5, 3, 2, 2), np.float32)
    y = convgpu.conv2d(x, w, padding="same")
    _, _, y_ref = by_hand(x[None].astype(np.float64), w.astype(np.float64), (1, 1), 1)
    assert y.shape == (5, 8, 7) and y.dtype == np.float32
    assert_close(y, y_ref[0], TOL[np.float32])


def test_valid_is_no_padding(rng):
    x, w = rand(rng, (2, 3, 8, 7)), rand(rng, (4, 3, 3, 2))
    np.testing.assert_array_equal(convgpu.conv2d(x, w, padding="valid"), convgpu.conv2d(x, w))
    gy = rand(rng, (2, 4, 6, 6))
    np.testing.assert_array_equal(
        convgpu.conv2d_backward_weight(x, gy, w.shape, padding="valid"),
        convgpu.conv2d_backward_weight(x, gy, w.shape))


def test_conv2d_layer_with_same_padding(rng):
    """nn.Conv2d(padding="same") keeps the size and its gradients are the functional ones."""
    layer = nn.Conv2d(3, 4, 4, padding="same", backend="numpy", dtype=np.float64, rng=rng)
    x = rand(rng, (2, 3, 6, 5))
    y = layer.forward(x)
    assert y.shape == (2, 4, 6, 5)
    gy = rand(rng, y.shape)
    gx = layer.backward(gy)
    xp, (pt, pl), _ = by_hand(x, layer.weight.data, (1, 1), 1)
    gw_ref = reference.conv2d_backward_weight(xp, gy, layer.weight.shape, (1, 1), (0, 0), (1, 1), 1)
    gx_ref = reference.conv2d_backward_input(gy, layer.weight.data, xp.shape, (1, 1), (0, 0), (1, 1), 1)
    assert_close(layer.weight.grad, gw_ref, TOL[np.float64])
    assert_close(gx, gx_ref[:, :, pt:pt + 6, pl:pl + 5], TOL[np.float64])


@pytest.mark.parametrize("call, match", [
    (lambda x, w, gy: convgpu.conv2d(x, w, padding="same", stride=2), "needs stride 1"),
    (lambda x, w, gy: convgpu.conv2d(x, w, padding="full"), "one of 'valid', 'same'"),
    (lambda x, w, gy: convgpu.conv2d(x, w, padding="SAME"), "one of 'valid', 'same'"),
    (lambda x, w, gy: convgpu.conv2d_backward_input(gy[:, :, :4], w, x.shape, padding="same"),
     "grad_output's size is the input's"),
    (lambda x, w, gy: convgpu.conv2d_backward_weight(x, gy[:, :, :, 1:], w.shape,
                                                     padding="same"),
     "grad_output's size is the input's"),
    (lambda x, w, gy: convgpu.conv_transpose2d(x, w.transpose(1, 0, 2, 3), padding="same"),
     "padding must be an int or a pair"),
])
def test_padding_string_errors(rng, call, match):
    x, w, gy = rand(rng, (1, 2, 5, 5)), rand(rng, (3, 2, 3, 3)), rand(rng, (1, 3, 5, 5))
    with pytest.raises(ValueError, match=match):
        call(x, w, gy)
