"""The CUDA C kernels that are not GEMMs in the half types (float16, bfloat16: half.cuh),
under the host emulation: tests/half_checks.py's bodies again with threads and blocks in
reverse order (test_half.py runs them forward; a result that changes with the order is a
race), and what those bodies do not reach: the 16-byte vector kernels' tails and their
scalar fallback for misaligned views, NaN, ties and infinities in max pooling, a max-pool
backward whose windows overlap (a half output added into in place, one rounding per window,
fails its bound), pooling's half results pinned bitwise, the direct and depthwise
convolutions, batch norm's plane kernels (long planes, vectors of 8) in both parameter
dtypes, and the optimiser steps' float32 scalars (eps = 1e-8 is 0 in float16).

Against the float64 reference on the same half inputs, rounded once, at docs/tolerances.md's
half bounds (bounds.half_bound through helpers.assert_bounded). Compiled and emulated only:
none of these kernels has run on a GPU here.
"""
from hashlib import sha256

import numpy as np
import pytest

import convgpu
from convgpu import reference as R
from convgpu.core.args import BFLOAT16
from convgpu.kernels.cuda.emulator import cuda_host

import half_checks as H

pytestmark = pytest.mark.skipif(not cuda_host.available(),
                                reason="the host emulation needs a C++ compiler")

HALF = H.HALF


@pytest.fixture(autouse=True)
def _emulated(monkeypatch):
    monkeypatch.setenv("CONVGPU_CUDA_HOST", "1")


@pytest.fixture
def rng():
    return np.random.default_rng(19)


def _spy(monkeypatch, module):
    """Records the name expressions `module` asks get_function for."""
    seen = []
    real = module.get_function

    def spy(file, expr):
        seen.append(expr)
        return real(file, expr)
    monkeypatch.setattr(module, "get_function", spy)
    return seen


# ----------------------------------------------------------------------------------------
# half_checks' bodies, reverse order

POOL = (2, 3, 9, 8, (3, 3), (2, 2), (1, 1), (1, 1), True)      # overlapping windows
AVG = (2, 3, 9, 8, (3, 3), (2, 2), (1, 1), True, False, None)


@pytest.mark.parametrize("dtype", HALF)
def test_bodies_in_reverse_order(rng, dtype, monkeypatch):
    with cuda_host.order("reverse"):
        H.check_elementwise(rng, dtype, "cuda", monkeypatch)
        H.check_max_pool2d(rng, dtype, "cuda", "direct", POOL, monkeypatch)
        H.check_avg_pool2d(rng, dtype, "cuda", AVG, monkeypatch)
        H.check_global_and_adaptive(rng, dtype, "cuda", monkeypatch)
        H.check_xent(rng, dtype, "cuda", "rowwise", monkeypatch)
        H.check_optim(rng, dtype, "cuda", monkeypatch)
        for pd in (np.float32, dtype):
            H.check_batch_norm(rng, dtype, "cuda", pd, monkeypatch)
        for case in H.CONV_CASES:
            H.check_conv2d(rng, dtype, "cuda", "direct", case, monkeypatch)


@pytest.mark.parametrize("dtype", HALF)
def test_conv_bias_gradient_sums_in_fp32(rng, dtype):
    """conv2d_backward_bias: channel_sum<T>, FP32 sums of 2 * 300 values (long rows) and of
    40 * 1 (short rows), rounded once."""
    for shape in ((2, 3, 15, 20), (40, 3, 1, 1)):
        gy = H.half(rng, shape, dtype)
        gb = convgpu.conv2d_backward_bias(gy, backend="cuda")
        n = shape[0] * shape[2] * shape[3]
        H.assert_half(gb, H.f64(gy).sum(axis=(0, 2, 3)).astype(dtype),
                      np.abs(H.f64(gy)).sum(axis=(0, 2, 3)), n, dtype)


# depthwise convolution (groups = C): the forward (3x3 unrolled and general, 1 or 2 rows a
# thread), the input gradient (the forward on rotated filters: one filter a channel at stride
# 1; else the gather), the weight gradient (3x3: FP32 split partials, here 3 splits; else a
# block per tap). (N, C, H, W, K, R, S, stride, padding, dilation, groups)
DEPTHWISE = [
    (3, 4, 19, 9, 4, 3, 3, (1, 1), (1, 1), (1, 1), 4),      # rotated input gradient, RP = 2
    (3, 3, 9, 10, 6, 3, 3, (2, 1), (1, 0), (1, 2), 3),      # two filters a channel: gather
    (2, 2, 8, 7, 2, 5, 3, (1, 2), (2, 1), (1, 1), 2),       # the general (R x S) paths
]


@pytest.mark.parametrize("case", DEPTHWISE, ids=lambda c: str(c[:7]))
@pytest.mark.parametrize("order", ["forward", "reverse"])
@pytest.mark.parametrize("dtype", HALF)
def test_depthwise(rng, dtype, order, case, monkeypatch):
    with cuda_host.order(order):
        H.check_conv2d(rng, dtype, "cuda", "depthwise", case, monkeypatch)
        for which in ("input", "weight"):
            H.check_conv2d_backward(rng, dtype, "cuda", "depthwise", case, which, monkeypatch)


# im2col / col2im on gemm_mma16: the 1x1 problem, which the FP32 path runs without the column
# matrix, and three groups with a bias (one fused GEMM a group)
IM2COL = [
    (2, 8, 5, 6, 16, 1, 1, (1, 1), (0, 0), (1, 1), 1),
    (2, 6, 7, 5, 9, 3, 2, (2, 1), (1, 1), (1, 2), 3),
]


@pytest.mark.parametrize("case", IM2COL, ids=["pointwise", "groups"])
@pytest.mark.parametrize("order", ["forward", "reverse"])
@pytest.mark.parametrize("dtype", HALF)
def test_im2col_rounds_once(rng, dtype, order, case, monkeypatch):
    """Each output the GEMM's FP32 sum rounded once: the forward with the bias added in the
    GEMM's epilogue, the input gradient's FP32 columns summed by col2im<T, float> (the 1x1
    one straight from the GEMM), the weight gradient through the column matrix."""
    from convgpu.kernels.cuda import im2col
    seen = _spy(monkeypatch, im2col)
    with cuda_host.order(order):
        H.check_conv2d(rng, dtype, "cuda", "im2col", case, monkeypatch)
        H.check_conv2d_backward(rng, dtype, "cuda", "col2im", case, "input", monkeypatch)
        H.check_conv2d_backward(rng, dtype, "cuda", "im2col", case, "weight", monkeypatch)
    t = {"float16": "__half", "bfloat16": "__nv_bfloat16"}[dtype.name]
    dgrad = [] if case[5:7] == (1, 1) else [f"col2im<{t}, float>"]
    assert seen == [f"im2col<{t}>"] + dgrad + [f"im2col<{t}>"]


# ----------------------------------------------------------------------------------------
# the vector kernels (8 halves a load) and their tails


@pytest.mark.parametrize("n", [1, 7, 8, 9, 8 * 37 + 5])
@pytest.mark.parametrize("dtype", HALF)
def test_vector_kernels_and_tails(rng, dtype, n, monkeypatch):
    from convgpu.kernels.cuda import elementwise
    seen = _spy(monkeypatch, elementwise)
    x = H.half(rng, (1, 1, n), dtype)
    x.reshape(-1)[::3] = np.nan                     # NaN stays NaN through relu
    gy, b = H.half(rng, (1, 1, n), dtype), H.half(rng, (1,), dtype)
    for order in ("forward", "reverse"):
        with cuda_host.order(order):
            y = convgpu.relu(x, backend="cuda")
            g = convgpu.relu_backward(gy, x, backend="cuda")
            yb = convgpu.bias_add(x, b, backend="cuda")
        xf = H.f64(x)
        H.assert_exact(y, np.where(np.isnan(xf) | (xf > 0), xf, 0), dtype)
        H.assert_exact(g, np.where(xf > 0, H.f64(gy), 0), dtype)
        H.assert_exact(yb, (xf + H.f64(b)[0]).astype(dtype), dtype)    # one exact add, rounded
    assert {"relu_fwd_vec8", "relu_bwd_vec8", "bias_add_vec8"} <= {e.split("<")[0] for e in seen}


@pytest.mark.parametrize("dtype", HALF)
def test_misaligned_views_take_the_scalar_kernels(rng, dtype, monkeypatch):
    from convgpu.kernels.cuda import elementwise
    seen = _spy(monkeypatch, elementwise)
    big = H.half(rng, (1, 1, 42), dtype)
    x = big[:, :, 1:]                       # 2 bytes past a 16-byte boundary, contiguous
    assert x.ctypes.data % 16 == 2 and x.flags.c_contiguous
    y = convgpu.relu(x, backend="cuda")
    H.assert_exact(y, np.maximum(H.f64(x), 0), dtype)
    assert [e.split("<")[0] for e in seen] == ["relu_fwd"]


# ----------------------------------------------------------------------------------------
# max pooling: NaN, ties, infinities; the backward's overlapping windows


@pytest.mark.parametrize("dtype", HALF)
def test_max_pool_nan_ties_and_infinities(dtype):
    x = np.zeros((1, 2, 4, 4), dtype)
    inf = np.inf
    x[0, 0] = [[1, 3, 3, 0], [3, np.nan, 2, np.nan], [-inf, -inf, 5, 5], [-inf, -inf, 5, 1]]
    x[0, 1] = [[-0.0, 0.0, 2, 2], [0.0, -0.0, 2, 2], [-np.inf] * 4, [-np.inf] * 4]
    for order in ("forward", "reverse"):
        with cuda_host.order(order):
            y, idx = convgpu.max_pool2d(x, 2, 2, return_indices=True, backend="cuda")
            y3, idx3 = convgpu.max_pool2d(x, 3, 1, 1, return_indices=True, backend="cuda")
        ry, ridx = R.max_pool2d(H.f64(x), (2, 2), (2, 2), (0, 0), (1, 1), False)
        H.assert_exact(y, ry, dtype)
        assert np.array_equal(idx, ridx)
        # the first NaN, the first of tied maxima (-0.0 before 0.0), -inf windows: their first
        assert list(idx[0, 0].ravel()) == [5, 7, 8, 10]
        assert list(idx[0, 1].ravel()) == [0, 2, 8, 10]
        assert np.signbit(H.f64(y[0, 1, 0, 0]))                 # the element itself: -0.0
        ry3, ridx3 = R.max_pool2d(H.f64(x), (3, 3), (1, 1), (1, 1), (1, 1), False)
        H.assert_exact(y3, ry3, dtype)
        assert np.array_equal(idx3, ridx3)


@pytest.mark.parametrize("dtype", HALF)
def test_max_pool_backward_sums_once(dtype):
    """A 3x3 / 1 pool over a plane whose maximum sits in the middle: that element collects
    the gradients of 9 windows. Their sum in FP32 rounded once is within the bound; the
    gradients are chosen so that adding them into a half output (one rounding each) loses
    the small ones: 1 + 2**-12 rounds to 1 in float16, so adding 8 of them one at a time
    leaves 1, where the FP32 sum rounds once to 1 + 2**-9 (bfloat16: 2**-10 each, 1 + 2**-7)."""
    x = np.zeros((1, 1, 5, 5), dtype)
    x[0, 0, 2, 2] = 4
    y, idx = convgpu.max_pool2d(x, 3, 1, 1, return_indices=True, backend="cuda")
    assert (idx[0, 0, 1:4, 1:4] == 12).all()
    small = 2.0 ** (-12 if dtype == np.float16 else -10)
    gy = np.zeros(y.shape, dtype)
    gy[0, 0, 1:4, 1:4] = small
    gy[0, 0, 1, 1] = 1                      # the first window in the gather's (p, q) order
    for order in ("forward", "reverse"):
        with cuda_host.order(order):
            gx = convgpu.max_pool2d_backward(gy, idx, x.shape, 3, 1, 1, backend="cuda")
        ref = R.max_pool2d_backward(H.f64(gy), idx, x.shape)
        assert H.f64(gx)[0, 0, 2, 2] == float(np.asarray(1 + 8 * small).astype(dtype)) != 1
        H.assert_half(gx, ref.astype(dtype), R.max_pool2d_backward(np.abs(H.f64(gy)), idx,
                                                                    x.shape), 9, dtype)


# ----------------------------------------------------------------------------------------
# pool.cu's half results, pinned: SHA-256 (first 16 hex digits) of every output's bytes,
# recorded from the *_half kernels before one templated body came to serve every dtype.
# The reference tests above judge accuracy; this one says the bits did not move (FP32 sums
# in the same order, one rounding per output, the element itself stored by max pooling).

def _pool_input(dtype):
    """(2, 3, 9, 8) of values from integer arithmetic (no random stream whose bits could
    change with NumPy), with ties, a NaN, -inf and signed zeros."""
    i = np.arange(2 * 3 * 9 * 8)
    x = (((i * 7919) % 1009) - 504) / 37.0
    x[::11] = 3.0                            # ties across windows
    x[5], x[40], x[41] = np.nan, -np.inf, -0.0
    return x.reshape(2, 3, 9, 8).astype(dtype)


def _pool_grad(shape, dtype):
    n = int(np.prod(shape))
    return ((((np.arange(n) * 613) % 127) - 63) / 16.0).reshape(shape).astype(dtype)


def _pool_outputs(dtype):
    x = _pool_input(dtype)
    out = {}
    # (kernel, stride, padding, dilation, ceil_mode): 3x3/2 and 2x2/2 (the launcher's square
    # windows), 2x3 dilated with ceil_mode, 4x4/1 (past the unrolled sizes)
    for i, (k, s, p, d, c) in enumerate([(3, 2, 1, 1, False), (2, 2, 0, 1, True),
                                         ((2, 3), (1, 2), (1, 0), (2, 1), True),
                                         (4, 1, 2, 1, False)]):
        y, idx = convgpu.max_pool2d(x, k, s, p, d, c, return_indices=True, backend="cuda")
        gx = convgpu.max_pool2d_backward(_pool_grad(y.shape, dtype), idx, x.shape, k, s, p, d,
                                         c, backend="cuda")
        out.update({f"max{i}.y": y, f"max{i}.idx": idx, f"max{i}.gx": gx})
    for i, (k, s, p, c, inc, div) in enumerate([(3, 2, 1, False, True, None),
                                                (3, 2, 1, True, False, None),
                                                ((2, 3), (1, 2), (1, 1), True, True, 5)]):
        y = convgpu.avg_pool2d(x, k, s, p, c, inc, div, backend="cuda")
        gx = convgpu.avg_pool2d_backward(_pool_grad(y.shape, dtype), x.shape, k, s, p, c, inc,
                                         div, backend="cuda")
        out.update({f"avg{i}.y": y, f"avg{i}.gx": gx})
    for size in ((4, 3), (9, 5), 1):
        y = convgpu.adaptive_avg_pool2d(x, size, backend="cuda")
        gx = convgpu.adaptive_avg_pool2d_backward(_pool_grad(y.shape, dtype), x.shape,
                                                  backend="cuda")
        out.update({f"adaptive{size}.y": y, f"adaptive{size}.gx": gx})
    return out


POOL_BITS = {
    "float16": {
        "max0.y": "e4d60b68c8b32930",
        "max0.idx": "5579f2c668f49889",
        "max0.gx": "bdb0150c6315fb6c",
        "max1.y": "1ae94e662dc2cb0d",
        "max1.idx": "eb6f09b4d3c4ab25",
        "max1.gx": "8c0172e605e9512b",
        "max2.y": "13803a092b1f549e",
        "max2.idx": "b1bd8f7eefb3eaf8",
        "max2.gx": "4b296b85e7ed0323",
        "max3.y": "8b9f2c9315c89e17",
        "max3.idx": "976cfdf6840816a8",
        "max3.gx": "33b864e0ec902432",
        "avg0.y": "7e63353ea5c090a8",
        "avg0.gx": "8d791ebc242ba910",
        "avg1.y": "ad132808a1948b47",
        "avg1.gx": "b52d70b37d727631",
        "avg2.y": "a71973981094f20c",
        "avg2.gx": "a65b68b6996668c9",
        "adaptive(4, 3).y": "3934e8c8902761d6",
        "adaptive(4, 3).gx": "807fb4eae61c29c4",
        "adaptive(9, 5).y": "bea6051095a35722",
        "adaptive(9, 5).gx": "9d1aba9f848aafb5",
        "adaptive1.y": "aae625973a8a8a17",
        "adaptive1.gx": "55a38c3508140d09",
    },
    "bfloat16": {
        "max0.y": "ca2e690608611d66",
        "max0.idx": "5579f2c668f49889",
        "max0.gx": "ef5e1136dd0513cf",
        "max1.y": "8deef49452614612",
        "max1.idx": "eb6f09b4d3c4ab25",
        "max1.gx": "3e1f9087e165b295",
        "max2.y": "e60499a7db786dbc",
        "max2.idx": "b1bd8f7eefb3eaf8",
        "max2.gx": "eea424c694884e20",
        "max3.y": "fae052c377800a8a",
        "max3.idx": "976cfdf6840816a8",
        "max3.gx": "b749d3f49a6e867d",
        "avg0.y": "f94b50d615c60af8",
        "avg0.gx": "7bcc64e0a1a7adce",
        "avg1.y": "1da09955201eee83",
        "avg1.gx": "d74aa1e109b19ed6",
        "avg2.y": "3d629be58562d3f8",
        "avg2.gx": "d3404a23547c9c3d",
        "adaptive(4, 3).y": "d8681cb813903fd3",
        "adaptive(4, 3).gx": "807cd263af4ae4e5",
        "adaptive(9, 5).y": "30bd6ca12df69f9a",
        "adaptive(9, 5).gx": "936d1f8d53e7e935",
        "adaptive1.y": "ffffda408a52c5eb",
        "adaptive1.gx": "b7dec2d612cebff1",
    },
}


@pytest.mark.parametrize("dtype", HALF)
def test_pool_half_bits_are_pinned(dtype):
    got = {k: sha256(np.ascontiguousarray(v).tobytes()).hexdigest()[:16]
           for k, v in _pool_outputs(dtype).items()}
    want = POOL_BITS[np.dtype(dtype).name]
    assert got.keys() == want.keys()
    assert [k for k in got if got[k] != want[k]] == []


# ----------------------------------------------------------------------------------------
# batch norm's plane kernels: planes of >= 1024 values, vectors of 8 or single values


# vectors of 8; single values; two slices a plane (each a whole number of vectors of 8)
@pytest.mark.parametrize("L", [32 * 40, 32 * 40 + 3, 2056])
@pytest.mark.parametrize("pd", ["float32", "half"])
@pytest.mark.parametrize("dtype", HALF)
def test_batch_norm_planes(rng, dtype, pd, L, monkeypatch):
    from convgpu.kernels.cuda import norm
    seen = _spy(monkeypatch, norm)
    pdt = np.dtype(np.float32) if pd == "float32" else dtype
    x = H.half(rng, (2, 3, L), dtype)
    w, b = H.half(rng, (3,), dtype).astype(pdt), H.half(rng, (3,), dtype).astype(pdt)
    rm, rv = np.zeros(3, pdt), np.ones(3, pdt)
    gy = H.half(rng, x.shape, dtype)
    with cuda_host.order("reverse"):
        y, mean, invstd = convgpu.batch_norm(x, rm, rv, w, b, True, return_stats=True,
                                             backend="cuda")
        gx, gw, gb = convgpu.batch_norm_backward(gy, x, mean, invstd, w, True, backend="cuda")
    v = 8 if L % 8 == 0 else 1
    assert {f"batch_norm_{k}_planes" for k in ("apply", "bwd_apply")} <= \
        {e.split("<")[0] for e in seen}
    assert all(f", {v}" in e for e in seen if "_planes" in e)
    assert y.dtype == gx.dtype == dtype and mean.dtype == gw.dtype == pdt
    ry, ymag, rmean, rinv, rvar, n, rgx, gxmag, rgw, gwmag, rgb, gbmag = \
        H.bn_bounds(H.f64(x), H.f64(w), H.f64(b), H.f64(gy))
    H.assert_half(y, ry.reshape(x.shape).astype(dtype), ymag.reshape(x.shape), n, dtype)
    # the backward from the statistics as returned (rounded to pdt)
    rgx, rgw, rgb = R.batch_norm_backward(H.f64(gy), H.f64(x), H.f64(mean), H.f64(invstd),
                                          H.f64(w), True)
    H.assert_half(gx, rgx.astype(dtype), gxmag.reshape(x.shape), n, dtype)
    H.assert_half(gw, rgw.astype(pdt), gwmag, n, pdt)
    H.assert_half(gb, rgb.astype(pdt), gbmag, n, pdt)


# ----------------------------------------------------------------------------------------
# the optimiser steps' scalars


@pytest.mark.parametrize("dtype", HALF)
def test_adam_eps_is_fp32(dtype):
    """With v = 0 and a zero gradient the step is lr m / eps: eps = 1e-8 taken in float16
    (0) would divide by zero."""
    p = np.ones(9, dtype)
    g, m, v = np.zeros(9, dtype), np.full(9, 1e-6, dtype), np.zeros(9, dtype)
    m0 = H.f64(m)
    convgpu.adam_step(p, g, m, v, 1, lr=1e-3, backend="cuda")
    rp, rm, rv = R.adam_step(np.ones(9), np.zeros(9), m0, np.zeros(9), 1, 1e-3, 0.9, 0.999,
                             1e-8, 0.0)
    assert np.isfinite(H.f64(p)).all() and (H.f64(p) < 0.5).all()     # a step of about 0.9
    H.assert_half(p, rp.astype(dtype), 1 + 1e-3 * np.abs(rm) / 0.1 / 1e-8, 12, dtype)
    H.assert_half(m, rm.astype(dtype), 0.9 * np.abs(m0), 4, dtype)


def test_half_kernels_are_registered():
    """Every family of this file serves both half types on the cuda backend."""
    from convgpu.ops._registry import all_impls
    for op in ("relu", "relu_backward", "bias_add", "conv2d_backward_bias", "max_pool2d",
               "max_pool2d_backward", "avg_pool2d", "avg_pool2d_backward", "global_avg_pool2d",
               "global_avg_pool2d_backward", "adaptive_avg_pool2d",
               "adaptive_avg_pool2d_backward", "softmax_cross_entropy",
               "softmax_cross_entropy_backward", "adam_step", "sgd_step", "batch_norm",
               "batch_norm_backward"):
        served = [i for i in all_impls(op) if i.backend == "cuda" and not i.dev
                  and {"float16", "bfloat16"} <= set(i.dtypes)]
        assert served, op
    assert BFLOAT16.name == "bfloat16"


@pytest.mark.parametrize("dtype", HALF)
def test_sgd_without_momentum(rng, dtype):
    """No buffer (a null pointer to the kernel): p -= lr (g + wd p) in FP32, rounded once."""
    p, g = H.half(rng, (5, 7), dtype), H.half(rng, (5, 7), dtype)
    p0 = H.f64(p)
    with cuda_host.order("reverse"):
        convgpu.sgd_step(p, g, None, lr=0.1, weight_decay=0.01, backend="cuda")
    rp, _ = R.sgd_step(p0, H.f64(g), None, 0.1, 0.0, 0.01)
    H.assert_half(p, rp.astype(dtype), np.abs(p0) + 0.1 * (np.abs(H.f64(g)) + 0.01 * np.abs(p0)),
                  3, dtype)


@pytest.mark.parametrize("dtype", HALF + [pytest.param(np.dtype(np.float32), id="float32")])
def test_cross_entropy_backward_scales_in_the_kernel(rng, dtype):
    """grad_output multiplies inside xent_bwd, before the one rounding."""
    z, t = H.half(rng, (6, 11), dtype), rng.integers(0, 11, 6)
    s = np.asarray(-1.375, dtype)
    with cuda_host.order("reverse"):
        g = convgpu.softmax_cross_entropy_backward(z, t, grad_output=s, backend="cuda")
    ref, mag, n, gref, gmag, gn = H.xent_bounds(H.f64(z), t)
    assert g.dtype == dtype
    H.assert_half(g, (gref * 1.375 * -1).astype(dtype), gmag * 1.375, gn + 1, dtype)


@pytest.mark.parametrize("dtype", HALF)
def test_cross_entropy_options_compute_in_float32(rng, dtype, monkeypatch):
    """array_ops (the options: here label smoothing, class weights, reduction="none") runs
    the reference's formulas on the half values widened to float32, then rounds once: on a
    device the reference's own float64 widening (NumPy arrays only) would not apply, and the
    formulas would run in the half type."""
    from convgpu.ops import loss
    seen = []
    for name in ("_np_xent", "_np_xent_backward"):
        real = getattr(loss, name)
        monkeypatch.setattr(loss, name, lambda a, z, *r, real=real: seen.append(
            (z.dtype, r[1] is None or r[1].dtype)) or real(a, z, *r))
    z, t, w = H.half(rng, (4, 5), dtype), rng.integers(0, 5, 4), H.half(rng, (5,), dtype)
    kw = dict(weight=abs(w), reduction="none", label_smoothing=0.1, backend="cuda")
    y = convgpu.softmax_cross_entropy(z, t, **kw)
    g = convgpu.softmax_cross_entropy_backward(z, t, **kw)
    assert y.dtype == g.dtype == dtype and y.shape == (4,) and g.shape == (4, 5)
    assert seen == [(np.float32, np.float32)] * 2, seen
