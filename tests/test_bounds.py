"""The error bounds of convgpu.bounds (docs/tolerances.md) on the NumPy side: correct
outputs in each format pass them, including tiny outputs whose result cancels; a bug
planted into a correct output of a ResNet-sized layer fails the element-wise bound even
where the norm-wise check misses it."""
import numpy as np
import pytest
import scipy.fft

from convgpu import bounds
from convgpu import reference as R
from helpers import CONV_SMALL, rand, tf32_round

# a ResNet-50 3x3 layer (conv2_x) at batch 2: 401k outputs of 576 terms each
RESNET = dict(x=(2, 64, 56, 56), w=(64, 64, 3, 3), kw=dict(stride=1, padding=1))


def _fft_conv_fp32(x, w):
    """A correct single-precision FFT convolution (stride 1, padding 1): complex64
    transforms, the product summed over channels, cropped."""
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    L = (scipy.fft.next_fast_len(xp.shape[2], real=True),
         scipy.fft.next_fast_len(xp.shape[3], real=True))
    X = scipy.fft.rfft2(xp, s=L)
    Wf = scipy.fft.rfft2(w[:, :, ::-1, ::-1], s=L)
    Y = np.einsum("ncij,kcij->nkij", X, Wf)
    full = scipy.fft.irfft2(Y, s=L).astype(np.float32)
    P, Q = x.shape[2], x.shape[3]               # 3x3, padding 1: the input's size
    return full[:, :, 2:2 + P, 2:2 + Q]


@pytest.fixture(scope="module")
def resnet():
    rng = np.random.default_rng(2026)
    x, w, b = rand(rng, RESNET["x"]), rand(rng, RESNET["w"]), rand(rng, RESNET["w"][:1])
    kw = RESNET["kw"]
    ref = R.conv2d(x, w, b, (1, 1), (1, 1), (1, 1), 1)
    x32, w32, b32 = (a.astype(np.float32) for a in (x, w, b))
    outs = {"im2col": R.conv2d(x32, w32, b32, (1, 1), (1, 1), (1, 1), 1),
            "implicit_gemm_tf32": R.conv2d(tf32_round(x32), tf32_round(w32), b32, (1, 1),
                                           (1, 1), (1, 1), 1),
            "fft": _fft_conv_fp32(x32, w32) + b32[None, :, None, None]}
    return x, w, b, kw, ref, outs


def _errors(out, algo, data):
    x, w, b, kw, ref, _ = data
    return bounds.conv_errors(out, ref, "conv2d", algo, np.float32, x, w, None, kw, b)


@pytest.mark.parametrize("algo", ["im2col", "implicit_gemm_tf32", "fft"])
def test_correct_resnet_outputs_pass_both_checks(resnet, algo):
    norm, elem = _errors(resnet[5][algo], algo, resnet)
    assert norm <= bounds.tolerance(algo, np.float32) and elem <= 1, (norm, elem)


def _zero_one(out):
    bad = out.copy()
    bad[1, 17, 30, 41] = 0
    return bad


def _drop_a_tap(out, data):
    """One filter tap (k=5, c=9, r=2, s=0) left out of every output of channel 5."""
    x, w = data[0], data[1]
    bad = out.copy()
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    bad[:, 5] -= (xp[:, 9, 2:2 + 56, 0:56] * w[5, 9, 2, 0]).astype(np.float32)
    return bad


def _nudge_one(out, data):
    """One output off by 2 % of its value: a wrong index into a rarely hit tail, say."""
    bad = out.copy()
    bad[0, 3, 55, 55] *= 1.02
    return bad


@pytest.mark.parametrize("algo", ["im2col", "implicit_gemm_tf32", "fft"])
@pytest.mark.parametrize("bug", ["zeroed output", "dropped tap"])
def test_a_planted_bug_fails_the_elementwise_bound(resnet, algo, bug):
    out = resnet[5][algo]
    bad = _zero_one(out) if bug == "zeroed output" else _drop_a_tap(out, resnet)
    norm, elem = _errors(bad, algo, resnet)
    assert elem > 1, f"{bug} passed the element-wise bound ({elem:.3g} of it)"


@pytest.mark.parametrize("algo", ["im2col", "implicit_gemm_tf32"])
def test_what_the_normwise_check_misses_the_elementwise_bound_catches(resnet, algo):
    """A 2 % error in one of 401k outputs: invisible norm-wise (relative to the whole
    output's norm), caught element by element."""
    norm, elem = _errors(_nudge_one(resnet[5][algo], resnet), algo, resnet)
    assert norm <= bounds.tolerance(algo, np.float32)
    assert elem > 1, elem


def test_tiny_tf32_outputs_with_cancellation_pass():
    """The case whose norm-wise error against ||ref|| failed 3 seeds in 1,500: 4 outputs,
    2 terms each. Operands rounded to TF32, FP32 sums (a correct TF32 kernel), on inputs
    whose two products nearly cancel: the result is tiny, its error is not, and both
    checks still hold, since both measure against sum |a||b|; the old quotient
    ||out - ref|| / ||ref|| calls these correct outputs wrong."""
    N, C, H, W, K, R_, S_, st, pd, dl, g = CONV_SMALL[3]
    rng = np.random.default_rng(7)
    worst = 0.0
    for _ in range(200):
        x, w = rand(rng, (N, C, H, W)), rand(rng, (K, C, R_, S_))
        # channel 1 = -(channel 0) within 1e-3 and the same weights: the two products cancel
        x[:, 1] = -x[:, 0] * rng.uniform(1 - 1e-3, 1 + 1e-3, x[:, 0].shape)
        w[:, 1] = w[:, 0]
        kw = dict(stride=st, padding=pd, dilation=dl, groups=g)
        ref = R.conv2d(x, w, None, st, pd, dl, g)
        out = R.conv2d(tf32_round(x.astype(np.float32)), tf32_round(w.astype(np.float32)),
                       None, st, pd, dl, g)
        norm, elem = bounds.conv_errors(out, ref, "conv2d", "implicit_gemm_tf32", np.float32,
                                        x, w, None, kw)
        assert norm <= 2e-3 and elem <= 1, (norm, elem)
        worst = max(worst, np.linalg.norm(out - ref) / np.linalg.norm(ref))
    assert worst > 2e-3          # what the old quotient said of some of these correct outputs


def test_winograd_growth_bounds_the_absolute_transform_chain():
    """beta of F(2x2, 3x3) and F(4x4, 3x3) against the chain computed on random tiles:
    |A^T| (|G| |g| |G^T| .* |B^T| |d| |B|) |A| <= beta max|d| sum|g|, and beta is attained
    (within 1 %) by some tile."""
    rng = np.random.default_rng(0)
    for m, BT_G_AT in bounds._WINOGRAD.items():
        BT, G, AT = (abs(M) for M in BT_G_AT)
        beta = bounds.winograd_growth(m)
        best = 0.0
        for _ in range(200):
            d = rng.uniform(0, 1, (m + 2, m + 2))
            gf = np.zeros((3, 3))
            gf[rng.integers(3), rng.integers(3)] = 1.0            # one tap: the worst case
            d[rng.random(d.shape) < 0.5] = 1.0
            Y = AT @ ((G @ gf @ G.T) * (BT @ d @ BT.T)) @ AT.T
            ratio = Y.max() / (d.max() * gf.sum())
            assert ratio <= beta * (1 + 1e-12)
            best = max(best, ratio)
        d, gf = np.ones((m + 2, m + 2)), np.zeros((3, 3))
        for a in range(3):
            for c in range(3):
                gf[:] = 0
                gf[a, c] = 1
                Y = AT @ ((G @ gf @ G.T) * (BT @ d @ BT.T)) @ AT.T
                best = max(best, Y.max())
        assert best >= 0.99 * beta, (m, best, beta)
