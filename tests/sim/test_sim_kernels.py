"""Simulator tier: every Numba implementation against the NumPy reference (float64 oracle),
float32 and float64, on tiny shapes that sweep stride, padding, dilation, groups,
non-square kernels, odd GEMM tails, ceil_mode, ties and NaN. Outputs are poisoned (NaN)
before each launch (tests/sim/conftest.py). Each launch is kept to about 30 blocks."""
import numpy as np
import pytest

import convgpu
from convgpu.ops._registry import all_impls
from helpers import (CONV_SMALL, SAME_EDGES, TOL, TOL_FFT, assert_close,
                     assert_conv_close, check_same_edge, check_empty_case, empty_cases, rand)


def numba_algos(op):
    return [i.algo for i in all_impls(op) if i.backend == "numba"]


def tol(algo, dtype):
    return (TOL_FFT if algo in ("fft", "winograd") else TOL)[dtype]


CONV = CONV_SMALL


def _conv(rng, case, dtype):
    N, C, H, W, K, R, S, st, pd, dl, g = case
    x64, w64, b64 = rand(rng, (N, C, H, W)), rand(rng, (K, C // g, R, S)), rand(rng, (K,))
    kw = dict(stride=st, padding=pd, dilation=dl, groups=g)
    return x64, w64, b64, kw, (x64.astype(dtype), w64.astype(dtype), b64.astype(dtype))


def _serves(algo, case):
    """Which geometries each algorithm takes; the others it must decline, with the reason."""
    R, S, st, dl = case[5], case[6], case[7], case[9]
    if algo == "winograd":
        return (R, S) == (3, 3) and st == (1, 1) and dl == (1, 1)
    return not (algo == "fft" and dl != (1, 1))


DECLINE = {"fft": "serves dilation 1 only", "winograd": "serves 3x3 filters at stride 1"}


def _conv_cases(op):
    """(algo, case) for every Numba algorithm and the cases it serves, and one case each
    declining algorithm must refuse (declining costs no launch: one is enough). The Numba
    Winograd weight gradient serves 3x3 at stride and dilation 1 only, which no small case
    is: test_conv2d_winograd checks it on its own shapes."""
    out = []
    for algo in numba_algos(op):
        served = [c for c in CONV if _serves(algo, c)]
        declined = [c for c in CONV if not _serves(algo, c)]
        out += [pytest.param(algo, c, id=f"{algo}-{c[:7]}") for c in served]
        out += [pytest.param(algo, c, id=f"{algo}-declines-{c[:7]}") for c in declined[:1]]
    return out


def _declines(algo, call):
    with pytest.raises(ValueError, match=DECLINE[algo]):
        call()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("algo, case", _conv_cases("conv2d"))
def test_conv2d(rng, algo, case, dtype):
    x64, w64, b64, kw, (x, w, b) = _conv(rng, case, dtype)
    if not _serves(algo, case):
        return _declines(algo, lambda: convgpu.conv2d(x, w, b, **kw, backend="numba", algo=algo))
    ref = convgpu.conv2d(x64, w64, b64, **kw)
    y = convgpu.conv2d(x, w, b, **kw, backend="numba", algo=algo)
    assert y.dtype == dtype
    assert_conv_close(y, ref, "conv2d", algo, dtype, x64, w64, bias=b64, **kw)
    # and without bias
    assert_conv_close(convgpu.conv2d(x, w, None, **kw, backend="numba", algo=algo),
                      convgpu.conv2d(x64, w64, None, **kw), "conv2d", algo, dtype, x64, w64,
                      **kw)


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


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("algo, case", _conv_cases("conv2d_backward_input"))
def test_conv2d_backward_input(rng, algo, case, dtype):
    x64, w64, b64, kw, (x, w, b) = _conv(rng, case, dtype)
    y = convgpu.conv2d(x64, w64, None, **kw)
    gy64 = rand(rng, y.shape)
    call = lambda: convgpu.conv2d_backward_input(gy64.astype(dtype), w, x.shape, **kw,  # noqa
                                                 backend="numba", algo=algo)
    if not _serves(algo, case):
        return _declines(algo, call)
    assert_conv_close(call(), convgpu.conv2d_backward_input(gy64, w64, x.shape, **kw),
                      "conv2d_backward_input", algo, dtype, gy64, w64, x.shape, **kw)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("algo, case", _conv_cases("conv2d_backward_weight"))
def test_conv2d_backward_weight(rng, algo, case, dtype):
    x64, w64, b64, kw, (x, w, b) = _conv(rng, case, dtype)
    y = convgpu.conv2d(x64, w64, None, **kw)
    gy64 = rand(rng, y.shape)
    call = lambda: convgpu.conv2d_backward_weight(x, gy64.astype(dtype), w.shape, **kw,  # noqa
                                                  backend="numba", algo=algo)
    if not _serves(algo, case):
        return _declines(algo, call)
    assert_conv_close(call(), convgpu.conv2d_backward_weight(x64, gy64, w64.shape, **kw),
                      "conv2d_backward_weight", algo, dtype, x64, gy64, w64.shape, **kw)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_conv2d_backward_bias(rng, dtype):
    gy = rand(rng, (2, 5, 3, 7))
    assert_close(convgpu.conv2d_backward_bias(gy.astype(dtype), backend="numba"),
                 gy.sum(axis=(0, 2, 3)), TOL[dtype])


@pytest.mark.parametrize("algo", numba_algos("conv2d_backward_input"))
def test_conv_transpose2d(rng, algo):
    x = rand(rng, (1, 4, 3, 4))
    w = rand(rng, (4, 3, 3, 2))
    b = rand(rng, (6,))
    kw = dict(stride=(2, 1), padding=(1, 0), output_padding=(1, 0), groups=2)
    ref = convgpu.conv_transpose2d(x, w, b, **kw)
    assert_close(convgpu.conv_transpose2d(x.astype(np.float32), w.astype(np.float32),
                                          b.astype(np.float32), **kw, backend="numba", algo=algo),
                 ref, tol(algo, np.float32))


def test_conv2d_auto_picks_a_numba_algo_under_the_simulator(rng):
    x, w = rand(rng, (1, 2, 5, 5)), rand(rng, (2, 2, 3, 3))
    assert_close(convgpu.conv2d(x, w, backend="numba"), convgpu.conv2d(x, w), TOL[np.float64])


# ---- padding="same" (pooling, linear, batch norm, the small ops: tests/ops)


@pytest.mark.parametrize("case", SAME_EDGES)
def test_padding_same_odd_total_matches_torch(rng, case):
    check_same_edge(rng, "numba", case)


# ---- small ops (relu, bias_add, the loss: tests/ops/test_elementwise.py)


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


EMPTY = empty_cases(np.random.default_rng(0))


@pytest.mark.parametrize("label, call, want", EMPTY, ids=[c[0] for c in EMPTY])
def test_empty_problems_launch_nothing(label, call, want):
    """An empty batch, no channels, no features on the Numba backend: answered without a
    launch."""
    check_empty_case(call("numba", np.asarray), want)


