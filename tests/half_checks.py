"""Half precision (float16, bfloat16): one test body per op family, run on every backend
that serves the dtype here (tests/test_half.py: numpy, and the cuda backend's half kernels
under host emulation; tests/sim/test_sim_half.py: the numba backend's in the simulator),
against the float64 reference on the half inputs rounded once to the half type, at the
bounds docs/tolerances.md derives for half precision (convgpu.bounds.half_bound).

Inputs are drawn in the half type (exact there), so the reference sees the same values the
kernels do. `mag` below is the magnitude the FP32 computation's error scales with (the op
applied to absolute values) and `n` the reduction length: see bounds.factor.
"""
import importlib
import inspect
import os
import shutil

import numpy as np
import pytest

import convgpu
from convgpu import bounds, reference as R
from convgpu.core.args import BFLOAT16, conv_out_size
from convgpu.ops._registry import all_impls
from helpers import CONV_SMALL, assert_bounded, assert_conv_close, rand

HALF = [pytest.param(np.dtype(np.float16), id="float16"), pytest.param(BFLOAT16, id="bfloat16")]
SIMULATING = os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0")


def _runs_here(backend):
    if SIMULATING:
        return backend == "numba"
    if backend == "cuda":                   # the host emulation, with a C++ compiler
        return shutil.which(os.environ.get("CXX", "g++")) is not None
    return backend == "numpy"


def served(op, dtype, where=None):
    """(backend, algo) of every implementation of op that serves dtype and runs in this
    process (never the kernels/dev candidates); where(impl), if given, picks them instead
    (the GPU tier's: the device implementations)."""
    name = np.dtype(dtype).name
    return [(i.backend, i.algo) for i in all_impls(op)
            if name in i.dtypes and not i.dev and (where(i) if where else _runs_here(i.backend))]


def impl_params(op, where=None):
    """pytest params (dtype, backend, algo) for op: every half dtype x implementation."""
    out = []
    for d in HALF:
        dtype = d.values[0]
        out += [pytest.param(dtype, b, a, id=f"{d.id}-{b}-{a}")
                for b, a in served(op, dtype, where)]
    return out or [pytest.param(None, None, None, marks=pytest.mark.skip(
        reason=f"no implementation of {op} serves a half type here"))]


def _served_here(backend, supports, a) -> bool:
    """supports(a) is None as the test will run it: a cuda implementation under the host
    emulation (its device limits the emulator's), here at collection time too."""
    if backend != "cuda" or SIMULATING:
        return supports(a) is None
    before = os.environ.get("CONVGPU_CUDA_HOST")
    os.environ["CONVGPU_CUDA_HOST"] = "1"
    try:
        return supports(a) is None
    finally:
        if before is None:
            del os.environ["CONVGPU_CUDA_HOST"]
        else:
            os.environ["CONVGPU_CUDA_HOST"] = before


def conv_impl_params(op, cases, where=None):
    """pytest params (dtype, backend, algo, case) for a conv op: every half dtype x
    implementation (where as for served) x case whose supports() accepts the case (the
    depthwise kernels serve groups = C only); a pair it refuses is not generated, so
    nothing is skipped."""
    from convgpu.core.args import conv_geometry
    out = []
    for d in HALF:
        dtype = d.values[0]
        for b, algo in served(op, dtype, where):
            impl = next(i for i in all_impls(op) if (i.backend, i.algo) == (b, algo))
            supports = impl.supports
            if isinstance(supports, str):           # "module:function", as the registry's
                mod, name = supports.split(":")
                supports = getattr(importlib.import_module(mod), name)
            for case in cases:
                N, C, H, W, K, Rk, S, st, pd, dl, g = case
                a = conv_geometry(op, (N, C, H, W), (K, C // g, Rk, S), st, pd, dl, g, dtype)
                if supports is None or (supports(a) is None if where else
                                        _served_here(b, supports, a)):
                    out.append(pytest.param(dtype, b, algo, case,
                                            id=f"{d.id}-{b}-{algo}-{case[:7]}"))
    return out or [pytest.param(None, None, None, None, marks=pytest.mark.skip(
        reason=f"no implementation of {op} serves a half type here"))]


def run(op, backend, algo, *args, monkeypatch=None, **kw):
    """convgpu.<op>(*args, backend=..., algo=... where the op takes it); the cuda backend in
    the host emulation."""
    if backend == "cuda" and not SIMULATING:
        monkeypatch.setenv("CONVGPU_CUDA_HOST", "1")
        monkeypatch.setenv("CONVGPU_POISON", "1")     # an unwritten output element fails
    fn = getattr(convgpu, op)
    if algo is not None and "algo" in inspect.signature(fn).parameters:
        kw["algo"] = algo
    return fn(*args, backend=backend, **kw)


def half(rng, shape, dtype):
    return rand(rng, shape).astype(dtype)


def f64(a):
    return np.asarray(a).astype(np.float64)


def assert_exact(out, ref, dtype):
    assert out.dtype == dtype, out.dtype
    assert np.array_equal(f64(out), f64(ref), equal_nan=True)


def assert_half(out, ref, mag, n, dtype):
    """|out - ref| <= half_bound (the two final roundings + the FP32 computation's error over
    n terms of magnitude mag), and the norm-wise check; out in the half type."""
    assert out.dtype == dtype, out.dtype
    assert_bounded(out, f64(ref), mag, n, "direct", dtype)


def assert_torch_half(out_t, ref, mag, n, dtype):
    """torch's CPU result in the half type against the rounded reference, at the bound of a
    computation carried out in the half type (every one of n + 2 operations rounded to it):
    |out - ref| <= 2 u_h |ref| + (n + 2) u_h mag. torch's CPU kernels for several ops round
    to the half type along the way (float16 conv gradients: up to ~1e4 units in the last
    place of the correctly rounded result where the sum cancels, half the elements off;
    bfloat16 cross_entropy's log_softmax), so ours, at the FP32 bound against the same
    reference, and torch's agree to torch's precision."""
    out = np.asarray(out_t.detach().double().numpy() if hasattr(out_t, "detach") else out_t)
    h = bounds.half_format(dtype)
    bound = bounds.half_bound(dtype, f64(ref), (n + 2) * bounds.U[h] * np.asarray(mag))
    assert out.shape == np.shape(ref), (out.shape, np.shape(ref))
    ratio = bounds.elementwise(out, f64(ref), bound)
    assert ratio <= 1, f"torch's result: an element's error is {ratio:.3g} times its bound"


# ----------------------------------------------------------------------------------------
# convolution: (N, C, H, W, K, R, S, stride, padding, dilation, groups)

CONV_CASES = CONV_SMALL[:3]


def conv_problem(rng, case, dtype):
    N, C, H, W, K, Rk, S, st, pd, dl, g = case
    x, w, b = half(rng, (N, C, H, W), dtype), half(rng, (K, C // g, Rk, S), dtype), \
        half(rng, (K,), dtype)
    return x, w, b, dict(stride=st, padding=pd, dilation=dl, groups=g)


def check_conv2d(rng, dtype, backend, algo, case, monkeypatch):
    x, w, b, kw = conv_problem(rng, case, dtype)
    pairs = {k: (v, v) if isinstance(v, int) else v for k, v in kw.items() if k != "groups"}
    ref64 = R.conv2d(f64(x), f64(w), f64(b), pairs["stride"], pairs["padding"],
                     pairs["dilation"], kw["groups"])
    out = run("conv2d", backend, algo, x, w, b, monkeypatch=monkeypatch, **kw)
    assert out.dtype == dtype
    assert_conv_close(out, ref64.astype(dtype), "conv2d", algo, dtype, f64(x), f64(w),
                      bias=f64(b), **kw)
    return x, w, b, kw, ref64


def check_conv2d_backward(rng, dtype, backend, algo, case, which, monkeypatch):
    x, w, _, kw = conv_problem(rng, case, dtype)
    N, C, H, W, K = case[:5]
    pairs = {k: (v, v) if isinstance(v, int) else v for k, v in kw.items() if k != "groups"}
    P = conv_out_size(H, case[5], pairs["stride"][0], pairs["padding"][0],
                             pairs["dilation"][0])
    Q = conv_out_size(W, case[6], pairs["stride"][1], pairs["padding"][1],
                             pairs["dilation"][1])
    gy = half(rng, (N, K, P, Q), dtype)
    geo = (pairs["stride"], pairs["padding"], pairs["dilation"], kw["groups"])
    if which == "input":
        ref64 = R.conv2d_backward_input(f64(gy), f64(w), x.shape, *geo)
        out = run("conv2d_backward_input", backend, algo, gy, w, x.shape,
                  monkeypatch=monkeypatch, **kw)
        assert_conv_close(out, ref64.astype(dtype), "conv2d_backward_input", algo, dtype,
                          f64(gy), f64(w), x.shape, **kw)
    else:
        ref64 = R.conv2d_backward_weight(f64(x), f64(gy), w.shape, *geo)
        out = run("conv2d_backward_weight", backend, algo, x, gy, w.shape,
                  monkeypatch=monkeypatch, **kw)
        assert_conv_close(out, ref64.astype(dtype), "conv2d_backward_weight", algo, dtype,
                          f64(x), f64(gy), w.shape, **kw)
    assert out.dtype == dtype
    return x, w, gy, kw, out


def check_conv2d_backward_bias(rng, dtype, backend, algo, monkeypatch):
    gy = half(rng, (3, 5, 7, 6), dtype)
    out = run("conv2d_backward_bias", backend, algo, gy, monkeypatch=monkeypatch)
    mag = np.abs(f64(gy)).sum(axis=(0, 2, 3))
    assert_half(out, f64(gy).sum(axis=(0, 2, 3)).astype(dtype), mag, 3 * 7 * 6, dtype)
    return gy, out


# ----------------------------------------------------------------------------------------
# pooling


def distinct_planes(rng, shape, dtype):
    """Each plane a permutation of distinct small integers (exact in bfloat16 up to 256,
    float16 up to 2048): no ties inside a window, in either half type."""
    N, C, H, W = shape
    assert H * W <= 256
    v = np.stack([rng.permutation(H * W) - H * W // 2 for _ in range(N * C)])
    return (v.reshape(shape) / 8).astype(dtype)


def check_max_pool2d(rng, dtype, backend, algo, case, monkeypatch):
    N, C, H, W, k, s, p, d, ceil = case
    x = distinct_planes(rng, (N, C, H, W), dtype)
    y, idx = run("max_pool2d", backend, algo, x, k, s, p, d, ceil, return_indices=True,
                 monkeypatch=monkeypatch)
    ry, ridx = R.max_pool2d(f64(x), k, s, p, d, ceil)
    assert_exact(y, ry, dtype)                          # a maximum is exact
    assert np.array_equal(idx, ridx)
    gy = half(rng, y.shape, dtype)
    # with the geometry: the gathers need it (the numba plane walk adds in the half type)
    gx = run("max_pool2d_backward", backend, "auto", gy, ridx, x.shape, k, s, p, d, ceil,
             monkeypatch=monkeypatch)
    ref = R.max_pool2d_backward(f64(gy), ridx, x.shape)
    mag = R.max_pool2d_backward(np.abs(f64(gy)), ridx, x.shape)
    assert_half(gx, ref.astype(dtype), mag, k[0] * k[1], dtype)   # windows that share an element
    return x, y, idx, gy, gx


def check_avg_pool2d(rng, dtype, backend, case, monkeypatch):
    N, C, H, W, k, s, p, ceil, incl, div = case
    x = half(rng, (N, C, H, W), dtype)
    kw = dict(ceil_mode=ceil, count_include_pad=incl, divisor_override=div)
    y = run("avg_pool2d", backend, None, x, k, s, p, **kw, monkeypatch=monkeypatch)
    ref = R.avg_pool2d(f64(x), k, s, p, **kw)
    assert_half(y, ref.astype(dtype), R.avg_pool2d(np.abs(f64(x)), k, s, p, **kw),
                k[0] * k[1], dtype)
    gy = half(rng, y.shape, dtype)
    gx = run("avg_pool2d_backward", backend, None, gy, x.shape, k, s, p, **kw,
             monkeypatch=monkeypatch)
    ref = R.avg_pool2d_backward(f64(gy), x.shape, k, s, p, **kw)
    mag = R.avg_pool2d_backward(np.abs(f64(gy)), x.shape, k, s, p, **kw)
    assert_half(gx, ref.astype(dtype), mag, k[0] * k[1], dtype)
    return x, y, gy, gx


def check_global_and_adaptive(rng, dtype, backend, monkeypatch):
    x = half(rng, (2, 3, 7, 5), dtype)
    y = run("global_avg_pool2d", backend, None, x, monkeypatch=monkeypatch)
    assert_half(y, R.global_avg_pool2d(f64(x)).astype(dtype),
                R.global_avg_pool2d(np.abs(f64(x))), 35, dtype)
    gy = half(rng, y.shape, dtype)
    gx = run("global_avg_pool2d_backward", backend, None, gy, x.shape, monkeypatch=monkeypatch)
    assert_half(gx, R.global_avg_pool2d_backward(f64(gy), x.shape).astype(dtype),
                R.global_avg_pool2d_backward(np.abs(f64(gy)), x.shape), 1, dtype)
    ya = run("adaptive_avg_pool2d", backend, None, x, (3, 2), monkeypatch=monkeypatch)
    assert_half(ya, R.adaptive_avg_pool2d(f64(x), (3, 2)).astype(dtype),
                R.adaptive_avg_pool2d(np.abs(f64(x)), (3, 2)), 7 * 5, dtype)
    ga = half(rng, ya.shape, dtype)
    gxa = run("adaptive_avg_pool2d_backward", backend, None, ga, x.shape,
              monkeypatch=monkeypatch)
    assert_half(gxa, R.adaptive_avg_pool2d_backward(f64(ga), x.shape).astype(dtype),
                R.adaptive_avg_pool2d_backward(np.abs(f64(ga)), x.shape), 3 * 2, dtype)
    return x, y, ya


# ----------------------------------------------------------------------------------------
# small ops


def check_elementwise(rng, dtype, backend, monkeypatch):
    x = half(rng, (2, 3, 5, 7), dtype)
    xn = x.copy()
    xn[0, 0, 0, :3] = [0, -0.0, np.nan]
    y = run("relu", backend, None, xn, monkeypatch=monkeypatch)
    assert_exact(y, np.where(np.isnan(f64(xn)) | (f64(xn) > 0), f64(xn), 0), dtype)
    gy = half(rng, x.shape, dtype)
    g = run("relu_backward", backend, None, gy, x, monkeypatch=monkeypatch)
    assert_exact(g, np.where(f64(x) > 0, f64(gy), 0), dtype)
    b = half(rng, (3,), dtype)
    yb = run("bias_add", backend, None, x, b, monkeypatch=monkeypatch)
    ref = f64(x) + f64(b)[None, :, None, None]
    # one FP32 add (operands exact), then the rounding to the half type
    assert_half(yb, ref.astype(dtype), np.abs(f64(x)) + np.abs(f64(b))[None, :, None, None],
                1, dtype)


def check_linear(rng, dtype, backend, algo, monkeypatch):
    x, w, b = half(rng, (5, 19), dtype), half(rng, (7, 19), dtype), half(rng, (7,), dtype)
    y = run("linear", backend, algo, x, w, b, monkeypatch=monkeypatch)
    ax, aw = np.abs(f64(x)), np.abs(f64(w))
    assert_half(y, (f64(x) @ f64(w).T + f64(b)).astype(dtype), ax @ aw.T + np.abs(f64(b)),
                19, dtype)
    gy = half(rng, (5, 7), dtype)
    gx, gw, gb = run("linear_backward", backend, "auto", gy, x, w, monkeypatch=monkeypatch)
    ag = np.abs(f64(gy))
    assert_half(gx, (f64(gy) @ f64(w)).astype(dtype), ag @ aw, 7, dtype)
    assert_half(gw, (f64(gy).T @ f64(x)).astype(dtype), ag.T @ ax, 5, dtype)
    assert_half(gb, f64(gy).sum(axis=0).astype(dtype), ag.sum(axis=0), 5, dtype)
    return x, w, b, y, gy, (gx, gw, gb)


def _log_softmax64(z):
    m = z.max(axis=1, keepdims=True)
    return z - m - np.log(np.exp(z - m).sum(axis=1, keepdims=True))


def xent_bounds(z, t):
    """The float64 loss and gradient of the mean loss and the magnitudes their FP32
    computation's errors scale with: a row's log-sum-exp costs about C + 8 roundings of
    (max|z| + log C + 1), the mean N more; a gradient element (p - onehot) / N about C + 8
    of (p + onehot) / N."""
    N, C = z.shape
    lp = _log_softmax64(z)
    loss = -lp[np.arange(N), t].mean()
    grad = np.exp(lp)
    grad[np.arange(N), t] -= 1
    grad /= N
    row = np.abs(z).max(axis=1) + np.log(C) + 1
    onehot = np.eye(C)[t]
    return loss, row.mean(), C + N + 8, grad, (np.exp(lp) + onehot) / N, C + 8


def xent_smoothed_bounds(z, t, eps):
    """The same for per-row losses (reduction="none") with label smoothing eps: row i's
    loss (1 - eps)(-lp[i, t_i]) + eps / C sum_c (-lp[i, c]), each term within the row
    magnitude, 2 C + 8 operations; its gradient p - (1 - eps) onehot - eps / C, about C + 8
    of p + onehot + eps / C."""
    N, C = z.shape
    lp = _log_softmax64(z)
    onehot = np.eye(C)[t]
    loss = (1 - eps) * -lp[np.arange(N), t] + eps / C * -lp.sum(axis=1)
    grad = np.exp(lp) - (1 - eps) * onehot - eps / C
    row = np.abs(z).max(axis=1) + np.log(C) + 1
    return loss, row, 2 * C + 8, grad, np.exp(lp) + onehot + eps / C, C + 8


def check_xent(rng, dtype, backend, algo, monkeypatch):
    """The plain mean loss; where algo is array_ops (the cuda backend's options path, which
    declines the plain loss) per-row losses with label smoothing."""
    z, t = half(rng, (6, 11), dtype), rng.integers(0, 11, 6)
    if algo == "array_ops":
        opts = dict(reduction="none", label_smoothing=0.1)
        loss = run("softmax_cross_entropy", backend, algo, z, t, monkeypatch=monkeypatch,
                   **opts)
        g = run("softmax_cross_entropy_backward", backend, algo, z, t,
                monkeypatch=monkeypatch, **opts)
        ref, mag, n, gref, gmag, gn = xent_smoothed_bounds(f64(z), t, 0.1)
        assert loss.shape == (6,) and g.shape == z.shape
        assert_half(loss, ref.astype(dtype), mag, n, dtype)
        assert_half(g, gref.astype(dtype), gmag, gn, dtype)
        return z, t, loss, g
    loss = run("softmax_cross_entropy", backend, algo, z, t, monkeypatch=monkeypatch)
    g = run("softmax_cross_entropy_backward", backend, algo, z, t, monkeypatch=monkeypatch)
    ref, mag, n, gref, gmag, gn = xent_bounds(f64(z), t)
    assert loss.shape == () and g.shape == z.shape
    assert_half(np.asarray(loss).reshape(1), np.asarray(ref, dtype=dtype).reshape(1),
                np.array([mag]), n, dtype)
    assert_half(g, gref.astype(dtype), gmag, gn, dtype)
    return z, t, loss, g


# ----------------------------------------------------------------------------------------
# batch norm: half data; weight, bias and statistics in float32 (torch's mixed form, AMP's)
# or in the half type


def bn_bounds(x, w, b, gy):
    """float64 forward and backward of training batch norm over (N, C, L) and the
    magnitudes of their FP32 computation's errors: the statistics sum M values (M
    roundings of mean|x|, and through invstd, of |x - mean|), so y's error is about
    (2 M + 8) u32 (|x - mean| + mean|x|) invstd |w| + |b|; gw, gb sum M terms, gx
    combines them (docs/tolerances.md, half precision)."""
    N, C = x.shape[:2]
    x3 = x.reshape(N, C, -1)
    M = x3.shape[0] * x3.shape[2]
    mean = x3.mean(axis=(0, 2))
    var = ((x3 - mean[None, :, None]) ** 2).mean(axis=(0, 2))
    inv = 1 / np.sqrt(var + 1e-5)
    col = lambda v: v[None, :, None]            # noqa: E731
    xhat = (x3 - col(mean)) * col(inv)
    y = xhat * col(w) + col(b)
    ymag = (np.abs(x3 - col(mean)) + col(np.abs(x3).mean(axis=(0, 2)))) * col(inv) * \
        col(np.abs(w)) + col(np.abs(b))
    g3 = gy.reshape(x3.shape)
    gb, gw = g3.sum(axis=(0, 2)), (g3 * xhat).sum(axis=(0, 2))
    gx = col(w * inv) * (g3 - col(gb) / M - xhat * col(gw) / M)
    agb, agw = np.abs(g3).sum(axis=(0, 2)), np.abs(g3 * xhat).sum(axis=(0, 2))
    gxmag = col(np.abs(w) * inv) * (np.abs(g3) + col(agb) / M + np.abs(xhat) * col(agw) / M)
    shape = x.shape
    return (y.reshape(shape), ymag.reshape(shape), mean, inv, var * M / (M - 1), 2 * M + 8,
            gx.reshape(shape), gxmag.reshape(shape), gw, agw, gb, agb)


def check_batch_norm(rng, dtype, backend, params_dtype, monkeypatch, layout="NCHW"):
    """layout="NHWC": the same values passed channels last, the results compared in NCHW."""
    x = half(rng, (4, 3, 5, 6), dtype)
    w, b = half(rng, (3,), dtype).astype(params_dtype), half(rng, (3,), dtype).astype(params_dtype)
    rm, rv = np.zeros(3, params_dtype), np.ones(3, params_dtype)
    if layout == "NHWC":
        to = lambda a: np.ascontiguousarray(a.transpose(0, 2, 3, 1))    # noqa: E731
        back = lambda a: np.ascontiguousarray(a.transpose(0, 3, 1, 2))  # noqa: E731
    else:
        to = back = lambda a: a                                        # noqa: E731
    y, mean, invstd = run("batch_norm", backend, None, to(x), rm, rv, w, b, True, 0.1, 1e-5,
                          return_stats=True, layout=layout, monkeypatch=monkeypatch)
    y = back(y)
    gy = half(rng, x.shape, dtype)
    ry, ymag, rmean, rinv, rvar, n, rgx, gxmag, rgw, gwmag, rgb, gbmag = \
        bn_bounds(f64(x), f64(w), f64(b), f64(gy))
    assert_half(y, ry.astype(dtype), ymag, n, dtype)
    assert mean.dtype == invstd.dtype == rm.dtype == np.dtype(params_dtype)
    pd = np.dtype(params_dtype)
    # the statistics in the parameters' dtype: rounded once from the FP32 computation
    assert_half(mean, rmean.astype(pd), np.abs(f64(x)).reshape(4, 3, -1).mean(axis=(0, 2)),
                n, pd)
    absmean = np.abs(f64(x)).reshape(4, 3, -1).mean(axis=(0, 2))
    assert_half(rm, (0.1 * rmean).astype(pd), 0.1 * absmean, n, pd)
    # the unbiased variance's FP32 sums scale with the squares of |x - mean| and mean|x|
    assert_half(rv, (0.9 + 0.1 * rvar).astype(pd), 0.9 + 0.1 * (rvar + absmean ** 2), n, pd)
    # evaluation: the running estimates normalise, one pass of a few operations per element
    ye = back(run("batch_norm", backend, None, to(x), rm, rv, w, b, False, layout=layout,
                  monkeypatch=monkeypatch))
    inv_e = 1 / np.sqrt(f64(rv) + 1e-5)
    ref_e = R.batch_norm(f64(x), f64(rm), inv_e, f64(w), f64(b))
    col = lambda v: v[None, :, None, None]      # noqa: E731
    mag_e = (np.abs(f64(x)) + col(np.abs(f64(rm)))) * col(inv_e * np.abs(f64(w))) + \
        col(np.abs(f64(b)))
    assert_half(ye, ref_e.astype(dtype), mag_e, 8, dtype)
    gx, gw, gb = run("batch_norm_backward", backend, None, to(gy), to(x), mean, invstd, w, True,
                     layout=layout, monkeypatch=monkeypatch)
    gx = back(gx)
    assert gx.dtype == dtype and gw.dtype == gb.dtype == pd
    # the backward takes the statistics as given (rounded to the parameters' dtype): its
    # reference is computed from those
    rgx, rgw, rgb = R.batch_norm_backward(f64(gy), f64(x), f64(mean), f64(invstd), f64(w))
    assert_half(gx, rgx.astype(dtype), gxmag, n, dtype)
    assert_half(gw, rgw.astype(pd), gwmag, n, pd)
    assert_half(gb, rgb.astype(pd), gbmag, n, pd)
    return x, w, b, y, mean, invstd, rm, rv, gy, (gx, gw, gb)


# ----------------------------------------------------------------------------------------
# optimiser steps: the state in the parameter's dtype, as torch.optim keeps it


def check_optim(rng, dtype, backend, monkeypatch):
    p, g = half(rng, (4, 9), dtype), half(rng, (4, 9), dtype)
    m, v = half(rng, (4, 9), dtype), np.abs(half(rng, (4, 9), dtype))
    p0, m0, v0 = f64(p), f64(m), f64(v)
    run("adam_step", backend, None, p, g, m, v, 3, lr=1e-2, weight_decay=0.1,
        monkeypatch=monkeypatch)
    rp, rm_, rv_ = R.adam_step(p0, f64(g), m0, v0, 3, 1e-2, 0.9, 0.999, 1e-8, 0.1)
    # each new value from a few FP32 operations on exact inputs (at most 12 roundings of
    # the terms' magnitudes), then rounded to the half type
    gd = np.abs(f64(g)) + 0.1 * np.abs(p0)
    assert_half(m, rm_.astype(dtype), 0.9 * np.abs(m0) + 0.1 * gd, 4, dtype)
    assert_half(v, rv_.astype(dtype), 0.999 * v0 + 0.001 * gd * gd, 4, dtype)
    mhat, vhat = np.abs(rm_) / (1 - 0.9 ** 3), np.abs(rv_) / (1 - 0.999 ** 3)
    assert_half(p, rp.astype(dtype), np.abs(p0) + 1e-2 * mhat / (np.sqrt(vhat) + 1e-8), 12,
                dtype)
    buf = half(rng, (4, 9), dtype)
    q = half(rng, (4, 9), dtype)
    q0, b0 = f64(q), f64(buf)
    run("sgd_step", backend, None, q, g, buf, lr=0.1, momentum=0.9, monkeypatch=monkeypatch)
    rq, rb = R.sgd_step(q0, f64(g), b0, 0.1, 0.9, 0.0)
    assert_half(buf, rb.astype(dtype), 0.9 * np.abs(b0) + np.abs(f64(g)), 2, dtype)
    assert_half(q, rq.astype(dtype), np.abs(q0) + 0.1 * np.abs(rb), 2, dtype)
