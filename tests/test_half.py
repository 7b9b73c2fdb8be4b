"""Half precision (float16, bfloat16) on the host: every op on every implementation that
serves the dtype here (tests/half_checks.py: the numpy backend, and the cuda backend's half
kernels in the host emulation), against the float64 reference rounded once, at the derived
bounds; the same ops against torch's CPU result in the same dtype; the dtype contract
(which mixes are allowed, which implementation serves which dtype); the torch bridge."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import convgpu
import convgpu.torch as ct
import convgpu.torch.functional as CF
from convgpu import bounds
from convgpu.ops import _registry as REG
from half_checks import (CONV_CASES, HALF, assert_half, assert_torch_half, bn_bounds,
                         check_avg_pool2d,
                         check_batch_norm, check_conv2d, check_conv2d_backward,
                         check_conv2d_backward_bias, check_elementwise,
                         check_global_and_adaptive, check_linear, check_max_pool2d,
                         check_optim, check_xent, conv_impl_params, f64, half, impl_params,
                         xent_bounds)
from helpers import AVGP_SMALL, MAXP_SMALL, assert_conv_close

TORCH = {"float16": torch.float16, "bfloat16": torch.bfloat16}


def tt(a):
    """A NumPy half array as a CPU tensor of the same dtype (through the bridge's view)."""
    from convgpu.arrays import _torch_from_host
    return _torch_from_host(np.ascontiguousarray(a)).clone()


def tn(t):
    return t.detach().double().numpy()


def torch_conv_close(out_t, ref, op, a, b, shape, kw, bias=None):
    """torch's conv result at the half-type computation bound (assert_torch_half)."""
    mag = bounds.magnitude(op, "direct", a, b, shape, kw, bias)
    n = bounds.reduction_length(op, "direct", a.shape, b.shape, shape, kw.get("groups", 1))
    assert_torch_half(out_t, ref, mag, n, ref.dtype)


# ----------------------------------------------------------------------------------------
# every op, every implementation serving the half type, against the reference; and the
# reference path against torch's CPU op in the same dtype, at the same bound


@pytest.mark.parametrize("dtype, backend, algo, case", conv_impl_params("conv2d", CONV_CASES))
def test_conv2d(rng, dtype, backend, algo, case, monkeypatch):
    x, w, b, kw, ref64 = check_conv2d(rng, dtype, backend, algo, case, monkeypatch)
    yt = F.conv2d(tt(x), tt(w), tt(b), **kw)
    assert yt.dtype == TORCH[dtype.name]
    torch_conv_close(yt, ref64.astype(dtype), "conv2d", f64(x), f64(w), None, kw, f64(b))


@pytest.mark.parametrize("dtype, backend, algo, case",
                         conv_impl_params("conv2d_backward_input", CONV_CASES[:2]))
def test_conv2d_backward_input(rng, dtype, backend, algo, case, monkeypatch):
    x, w, gy, kw, out = check_conv2d_backward(rng, dtype, backend, algo, case, "input",
                                              monkeypatch)
    from convgpu import reference as R
    xt = tt(x).requires_grad_()
    F.conv2d(xt, tt(w), **kw).backward(tt(gy))
    # torch's gradient at the bound ours met: both within it of the rounded reference
    pairs = {k: (v, v) if isinstance(v, int) else v for k, v in kw.items() if k != "groups"}
    ref64 = R.conv2d_backward_input(f64(gy), f64(w), x.shape, pairs["stride"],
                                    pairs["padding"], pairs["dilation"], kw["groups"])
    assert xt.grad.dtype == TORCH[dtype.name]
    torch_conv_close(xt.grad, ref64.astype(dtype), "conv2d_backward_input", f64(gy), f64(w),
                     x.shape, kw)


@pytest.mark.parametrize("dtype, backend, algo, case",
                         conv_impl_params("conv2d_backward_weight", CONV_CASES[:2]))
def test_conv2d_backward_weight(rng, dtype, backend, algo, case, monkeypatch):
    x, w, gy, kw, out = check_conv2d_backward(rng, dtype, backend, algo, case, "weight",
                                              monkeypatch)
    from convgpu import reference as R
    wt = tt(w).requires_grad_()
    F.conv2d(tt(x), wt, **kw).backward(tt(gy))
    pairs = {k: (v, v) if isinstance(v, int) else v for k, v in kw.items() if k != "groups"}
    ref64 = R.conv2d_backward_weight(f64(x), f64(gy), w.shape, pairs["stride"],
                                     pairs["padding"], pairs["dilation"], kw["groups"])
    assert wt.grad.dtype == TORCH[dtype.name]
    torch_conv_close(wt.grad, ref64.astype(dtype), "conv2d_backward_weight", f64(x), f64(gy),
                     w.shape, kw)


@pytest.mark.parametrize("dtype, backend, algo", impl_params("conv2d_backward_bias"))
def test_conv2d_backward_bias(rng, dtype, backend, algo, monkeypatch):
    gy, out = check_conv2d_backward_bias(rng, dtype, backend, algo, monkeypatch)
    assert_torch_half(tt(gy).sum(dim=(0, 2, 3)), f64(gy).sum(axis=(0, 2, 3)).astype(dtype),
                      np.abs(f64(gy)).sum(axis=(0, 2, 3)), 3 * 7 * 6, dtype)


@pytest.mark.parametrize("dtype", HALF)
def test_conv_transpose2d_against_torch(rng, dtype):
    x, w, b = half(rng, (2, 4, 5, 6), dtype), half(rng, (4, 3, 3, 2), dtype), \
        half(rng, (6,), dtype)
    kw = dict(stride=2, padding=1, output_padding=1, groups=2)
    y = convgpu.conv_transpose2d(x, w, b, **kw)
    yt = F.conv_transpose2d(tt(x), tt(w), tt(b), **kw)
    assert y.dtype == dtype and yt.dtype == TORCH[dtype.name]
    from convgpu import reference as R
    ref = R.conv_transpose2d(f64(x), f64(w), f64(b), (2, 2), (1, 1), (1, 1), 2)
    mag = R.conv_transpose2d(np.abs(f64(x)), np.abs(f64(w)), np.abs(f64(b)), (2, 2), (1, 1),
                             (1, 1), 2)
    n = 2 * 3 * 2                               # input channels per group x the kernel
    # the op is conv2d_backward_input, rounded to the half type, then bias_add, rounded
    # again: the first rounding costs u_h |g| <= u_h (mag - |b|) more (docs/tolerances.md)
    g_mag = mag - np.abs(f64(b))[None, :, None, None]
    u = bounds.U[bounds.half_format(dtype)]
    bound = bounds.half_bound(dtype, ref.astype(dtype).astype(np.float64),
                              bounds.factor("direct", dtype, n) * mag + u * (1 + u) * g_mag)
    assert bounds.elementwise(y, ref.astype(dtype), bound) <= 1
    assert_torch_half(yt, ref.astype(dtype), mag, n, dtype)


@pytest.mark.parametrize("case", MAXP_SMALL[:3], ids=lambda c: str(c[:5]))
@pytest.mark.parametrize("dtype, backend, algo", impl_params("max_pool2d"))
def test_max_pool2d(rng, dtype, backend, algo, case, monkeypatch):
    x, y, idx, gy, gx = check_max_pool2d(rng, dtype, backend, algo, case, monkeypatch)
    N, C, H, W, k, s, p, d, ceil = case
    xt = tt(x).requires_grad_()
    yt, it = F.max_pool2d(xt, k, s, p, d, ceil, return_indices=True)
    assert yt.dtype == TORCH[dtype.name]
    assert np.array_equal(tn(yt), f64(y)) and np.array_equal(it.numpy(), idx)
    yt.backward(tt(gy))
    from convgpu import reference as R
    assert_torch_half(xt.grad, R.max_pool2d_backward(f64(gy), idx, x.shape).astype(dtype),
                      R.max_pool2d_backward(np.abs(f64(gy)), idx, x.shape), k[0] * k[1], dtype)


@pytest.mark.parametrize("case", AVGP_SMALL[:3], ids=lambda c: str(c[:5]))
@pytest.mark.parametrize("dtype, backend, algo", impl_params("avg_pool2d"))
def test_avg_pool2d(rng, dtype, backend, algo, case, monkeypatch):
    x, y, gy, gx = check_avg_pool2d(rng, dtype, backend, case, monkeypatch)
    N, C, H, W, k, s, p, ceil, incl, div = case
    kw = dict(ceil_mode=ceil, count_include_pad=incl, divisor_override=div)
    xt = tt(x).requires_grad_()
    yt = F.avg_pool2d(xt, k, s, p, **kw)
    yt.backward(tt(gy))
    from convgpu import reference as R
    assert_torch_half(yt, R.avg_pool2d(f64(x), k, s, p, **kw).astype(dtype),
                      R.avg_pool2d(np.abs(f64(x)), k, s, p, **kw), k[0] * k[1], dtype)
    assert_torch_half(xt.grad, R.avg_pool2d_backward(f64(gy), x.shape, k, s, p, **kw)
                      .astype(dtype),
                      R.avg_pool2d_backward(np.abs(f64(gy)), x.shape, k, s, p, **kw),
                      k[0] * k[1], dtype)


@pytest.mark.parametrize("dtype, backend, algo", impl_params("adaptive_avg_pool2d"))
def test_global_and_adaptive_pool(rng, dtype, backend, algo, monkeypatch):
    x, y, ya = check_global_and_adaptive(rng, dtype, backend, monkeypatch)
    from convgpu import reference as R
    assert_torch_half(F.adaptive_avg_pool2d(tt(x), 1).reshape(y.shape),
                      R.global_avg_pool2d(f64(x)).astype(dtype),
                      R.global_avg_pool2d(np.abs(f64(x))), 35, dtype)
    assert_torch_half(F.adaptive_avg_pool2d(tt(x), (3, 2)),
                      R.adaptive_avg_pool2d(f64(x), (3, 2)).astype(dtype),
                      R.adaptive_avg_pool2d(np.abs(f64(x)), (3, 2)), 35, dtype)


@pytest.mark.parametrize("dtype, backend, algo", impl_params("relu"))
def test_elementwise(rng, dtype, backend, algo, monkeypatch):
    check_elementwise(rng, dtype, backend, monkeypatch)
    x = half(rng, (3, 4), dtype)
    assert np.array_equal(tn(F.relu(tt(x))), f64(convgpu.relu(x)))


@pytest.mark.parametrize("dtype, backend, algo", impl_params("linear"))
def test_linear(rng, dtype, backend, algo, monkeypatch):
    x, w, b, y, gy, grads = check_linear(rng, dtype, backend, algo, monkeypatch)
    xt, wt, bt = (tt(a).requires_grad_() for a in (x, w, b))
    yt = F.linear(xt, wt, bt)
    yt.backward(tt(gy))
    ax, aw, ag = np.abs(f64(x)), np.abs(f64(w)), np.abs(f64(gy))
    assert_torch_half(yt, (f64(x) @ f64(w).T + f64(b)).astype(dtype), ax @ aw.T + np.abs(f64(b)),
                      19, dtype)
    assert_torch_half(xt.grad, (f64(gy) @ f64(w)).astype(dtype), ag @ aw, 7, dtype)
    assert_torch_half(wt.grad, (f64(gy).T @ f64(x)).astype(dtype), ag.T @ ax, 5, dtype)


@pytest.mark.parametrize("dtype, backend, algo", impl_params("softmax_cross_entropy"))
def test_cross_entropy(rng, dtype, backend, algo, monkeypatch):
    z, t, loss, g = check_xent(rng, dtype, backend, algo, monkeypatch)
    zt = tt(z).requires_grad_()
    lt = F.cross_entropy(zt, torch.from_numpy(t))
    lt.backward()
    assert lt.dtype == TORCH[dtype.name] and zt.grad.dtype == TORCH[dtype.name]
    ref, mag, n, gref, gmag, gn = xent_bounds(f64(z), t)
    assert_torch_half(lt.reshape(1), np.asarray(ref, dtype=dtype).reshape(1), np.array([mag]),
                      n, dtype)
    assert_torch_half(zt.grad, gref.astype(dtype), gmag, gn, dtype)


@pytest.mark.parametrize("params", ["float32", "half"])
@pytest.mark.parametrize("dtype, backend, algo", impl_params("batch_norm"))
def test_batch_norm(rng, dtype, backend, algo, params, monkeypatch):
    pd = np.float32 if params == "float32" else dtype
    x, w, b, y, mean, invstd, rm, rv, gy, (gx, gw, gb) = check_batch_norm(
        rng, dtype, backend, pd, monkeypatch)
    # torch's mixed (or all-half) batch norm on the same values
    wt, bt = (tt(a) if params == "half" else torch.from_numpy(a.copy()) for a in (w, b))
    wt.requires_grad_(), bt.requires_grad_()
    xt = tt(x).requires_grad_()
    rmt = torch.zeros(3, dtype=wt.dtype)
    rvt = torch.ones(3, dtype=wt.dtype)
    yt = F.batch_norm(xt, rmt, rvt, wt, bt, training=True, momentum=0.1, eps=1e-5)
    yt.backward(tt(gy))
    ry, ymag, *_, n, rgx, gxmag, rgw, gwmag, rgb, gbmag = bn_bounds(f64(x), f64(w), f64(b),
                                                                   f64(gy))
    assert yt.dtype == TORCH[dtype.name] and wt.grad.dtype == wt.dtype
    assert_torch_half(yt, ry.astype(dtype), ymag, n, dtype)
    assert_torch_half(xt.grad, rgx.astype(dtype), gxmag, n, dtype)
    pdt = np.dtype(pd)
    if pdt == np.float32:                       # torch's float32 results at the FP32 bound
        assert_half(tn(wt.grad).astype(pdt), rgw.astype(pdt), gwmag, n, pdt)
        assert_half(tn(bt.grad).astype(pdt), rgb.astype(pdt), gbmag, n, pdt)
        assert_half(tn(rvt).astype(pdt), f64(rv).astype(pdt), 0.9 + 0.1 * np.abs(f64(rv)), n,
                    pdt)
    else:
        assert_torch_half(wt.grad, rgw.astype(pdt), gwmag, n, pdt)
        assert_torch_half(bt.grad, rgb.astype(pdt), gbmag, n, pdt)
        assert_torch_half(rvt, f64(rv).astype(pdt), 0.9 + 0.1 * np.abs(f64(rv)), n, pdt)


@pytest.mark.parametrize("params", ["float32", "half"])
@pytest.mark.parametrize("dtype, backend, algo", impl_params("batch_norm"))
def test_batch_norm_channels_last(rng, dtype, backend, algo, params, monkeypatch):
    """layout="NHWC" at the same bounds: on cuda, norm_nhwc.cu's reductions in FP32."""
    launched = []
    if backend == "cuda":
        from convgpu.kernels.cuda import norm_nhwc
        real = norm_nhwc.get_function
        monkeypatch.setattr(norm_nhwc, "get_function",
                            lambda f, e: launched.append(e) or real(f, e))
    check_batch_norm(rng, dtype, backend, np.float32 if params == "float32" else dtype,
                     monkeypatch, layout="NHWC")
    if backend == "cuda":
        ct = {"float16": "__half", "bfloat16": "__nv_bfloat16"}[dtype.name]
        p = ", float" if params == "float32" else ""
        assert launched == [f"batch_norm_nhwc_partials<{ct}>",
                            f"batch_norm_nhwc_bwd_partials<{ct}{p}>"]


@pytest.mark.parametrize("dtype, backend, algo", impl_params("adam_step"))
def test_optimiser_steps(rng, dtype, backend, algo, monkeypatch):
    check_optim(rng, dtype, backend, monkeypatch)


@pytest.mark.parametrize("dtype", HALF)
def test_optimiser_state_dtype_is_torch_optims(dtype):
    """torch.optim keeps Adam's exp_avg / exp_avg_sq and SGD's momentum buffer in the
    parameter's dtype (no FP32 copy): so do the steps, which take state of the parameter's
    dtype and refuse float32 state beside a half parameter."""
    p = torch.nn.Parameter(torch.ones(4, dtype=TORCH[dtype.name]))
    p.grad = torch.ones_like(p)
    opt = torch.optim.Adam([p])
    opt.step()
    assert opt.state[p]["exp_avg"].dtype == opt.state[p]["exp_avg_sq"].dtype == p.dtype
    ours = np.ones(4, dtype)
    with pytest.raises(TypeError, match="adam_step: exp_avg is float32 but param is " +
                       dtype.name):
        convgpu.adam_step(ours, ours.copy(), np.zeros(4, np.float32), np.zeros(4, np.float32), 1)


# ----------------------------------------------------------------------------------------
# the reference: float64 from the half inputs, rounded once


@pytest.mark.parametrize("dtype", HALF)
def test_reference_rounds_once_from_float64(rng, dtype):
    """A sum whose float64 value lies between two half numbers: rounded once it goes to the
    nearer; summed in the half type it would drift. And the result keeps the half dtype."""
    x = np.full((1, 1, 1, 64), 1.0, dtype)
    w = np.full((1, 1, 1, 64), 1.0, dtype)
    x[0, 0, 0, 0] = 256.0                       # then 63 ones: 319, where the spacing is > 1
    y = convgpu.conv2d(x, w)
    assert y.dtype == dtype
    assert f64(y)[0, 0, 0, 0] == float(np.asarray(319.0).astype(dtype))


# ----------------------------------------------------------------------------------------
# the contract: mixes, refusals, the registry


@pytest.mark.parametrize("dtype", HALF)
def test_half_weight_with_float32_input_is_one_type_error(rng, dtype):
    x = rng.standard_normal((1, 2, 5, 5)).astype(np.float32)
    w = half(rng, (3, 2, 3, 3), dtype)
    with pytest.raises(TypeError, match=f"conv2d: weight is {dtype.name} but input is float32"):
        convgpu.conv2d(x, w)
    with pytest.raises(TypeError, match=f"linear: weight is {dtype.name} but input is float32"):
        convgpu.linear(x.reshape(2, -1)[:, :9], w.reshape(6, -1)[:, :9])
    other = np.float16 if dtype == BF16 else BF16
    with pytest.raises(TypeError, match="relu_backward: input is"):
        convgpu.relu_backward(half(rng, (3,), dtype), half(rng, (3,), other))


BF16 = np.dtype("bfloat16")


@pytest.mark.parametrize("dtype", HALF)
def test_batch_norm_mixes_are_torchs(rng, dtype):
    """Allowed: half input with weight, bias, running estimates all float32 (torch's mixed
    form) or all the half type. Refused, as torch refuses them: parameters of two dtypes,
    float64 parameters beside half data, float32 data with half parameters."""
    x = half(rng, (4, 3, 2, 2), dtype)
    f32 = lambda v: np.full(3, v, np.float32)      # noqa: E731
    y = convgpu.batch_norm(x, f32(0), f32(1), f32(1), f32(0), training=True)
    assert y.dtype == dtype
    with pytest.raises(TypeError, match="batch_norm: weight is .* but running_mean is float32"):
        convgpu.batch_norm(x, f32(0), f32(1), f32(1).astype(dtype), f32(0), training=True)
    with pytest.raises(TypeError, match="must be .* or float32"):
        convgpu.batch_norm(x, f32(0).astype(np.float64), f32(1).astype(np.float64),
                           training=True)
    with pytest.raises(TypeError, match="must be float32$"):
        convgpu.batch_norm(x.astype(np.float32), f32(0).astype(dtype), f32(1).astype(dtype),
                           training=True)
    # the statistics come back in the parameters' dtype, as torch's native_batch_norm
    _, mean, invstd = convgpu.batch_norm(x, None, None, training=True, return_stats=True)
    assert mean.dtype == invstd.dtype == dtype


def _host_emulation(monkeypatch):
    from convgpu.kernels.cuda.emulator import cuda_host
    if not cuda_host.available():
        pytest.skip("no C++ compiler for the host emulation")
    monkeypatch.setenv("CONVGPU_CUDA_HOST", "1")


@pytest.mark.parametrize("dtype", HALF)
def test_named_algo_that_does_not_serve_the_dtype_is_one_value_error(rng, dtype, monkeypatch):
    _host_emulation(monkeypatch)
    x, w = half(rng, (1, 2, 5, 5), dtype), half(rng, (3, 2, 3, 3), dtype)
    for algo, served in REG.served_dtypes("conv2d").items():
        if algo[0] == "cuda" and dtype.name not in served:
            with pytest.raises(ValueError) as e:
                convgpu.conv2d(x, w, backend="cuda", algo=algo[1])
            msg = str(e.value)
            assert f"conv2d cuda:{algo[1]} serves {', '.join(served)}; not {dtype.name}" in msg
            assert "\n" not in msg


def test_auto_passes_over_an_implementation_that_does_not_serve_the_dtype(monkeypatch):
    monkeypatch.setattr(REG, "_REGISTRY", {})
    monkeypatch.setattr(REG, "_CHOICE", {})
    monkeypatch.setattr(REG, "backend_unavailable", lambda b: None)
    REG.register("toy", "cuda", "wide", "x:y")                          # float32, float64
    REG.register("toy", "cuda", "half", "x:y", dtypes=("float16", "bfloat16"))
    wide, half_ = REG.all_impls("toy")
    wide._fn, half_._fn = (lambda a, x: -x), (lambda a, x: +x)
    h, s = np.ones(2, np.float16), np.ones(2, np.float32)
    assert [i.algo for i in REG.select("toy", (2,), "cuda", "auto", True, h.dtype)] == ["half"]
    assert [i.algo for i in REG.select("toy", (2,), "cuda", "auto", True, s.dtype)] == ["wide"]
    assert list(REG.dispatch("toy", (2,), "cuda", "auto", True, h)) == [1, 1]
    assert list(REG.dispatch("toy", (2,), "cuda", "auto", True, s)) == [-1, -1]   # not cached
    with pytest.raises(ValueError, match=r"toy: \(cuda, half\) cannot serve this call: toy "
                       r"cuda:half serves float16, bfloat16; not float32"):
        REG.select("toy", (2,), "cuda", "half", True, s.dtype)
    with pytest.raises(ValueError, match="dtypes must name"):
        REG.register("toy", "cuda", "bad", "numpy:positive", dtypes=("int8",))


def test_registry_defaults(monkeypatch):
    """The numpy backend (the reference) serves every float dtype for every op; a device
    implementation registered without dtypes= serves float32 and float64."""
    for op in REG.ops():
        if op not in REG.ALIASES:
            numpy = [d for (b, _), d in REG.served_dtypes(op).items() if b == "numpy"]
            assert numpy and all(d == REG.DTYPE_NAMES for d in numpy), op
    monkeypatch.setattr(REG, "_REGISTRY", {})
    for backend in ("numba", "cuda"):
        REG.register("toy", backend, "plain", "x:y")
    REG.register("toy", "numpy", "plain", "x:y")
    assert REG.served_dtypes("toy") == {("numba", "plain"): ("float32", "float64"),
                                        ("cuda", "plain"): ("float32", "float64"),
                                        ("numpy", "plain"): REG.DTYPE_NAMES}


# ----------------------------------------------------------------------------------------
# bounds


def test_half_bounds_are_the_formats():
    assert bounds.U["fp16"] == 2.0 ** -11 and bounds.U["bf16"] == 2.0 ** -8
    assert bounds.tolerance("direct", np.float16) == 2 * 2.0 ** -11 + 1e-5
    assert bounds.tolerance("implicit_gemm", BF16) == 2 * 2.0 ** -8 + 1e-5
    assert bounds.factor("direct", np.float16, 10) == 12 * 2.0 ** -23
    # one half-ulp step between out and ref at 1.0 (a rounding each way) is inside, two are not
    ref = np.array([1.0])
    b = bounds.half_bound(np.float16, ref, np.zeros(1))
    assert 2.0 ** -10 <= b[0] < 2 * 2.0 ** -10
    assert bounds.half_bound(np.float32, ref, np.ones(1) * 3) == 3


@pytest.mark.parametrize("dtype", HALF)
def test_bound_catches_an_error_of_two_ulps(rng, dtype):
    """The half bound is tight enough to fail a result off by two units in the last place
    (a kernel that rounds twice, or accumulates in the half type)."""
    x, w = half(rng, (1, 4, 6, 6), dtype), half(rng, (2, 4, 3, 3), dtype)
    from convgpu import reference as R
    ref = R.conv2d(f64(x), f64(w), None, (1, 1), (0, 0), (1, 1), 1).astype(dtype)
    bad = f64(ref).copy()
    i = np.unravel_index(np.argmax(np.abs(bad)), bad.shape)
    bad[i] += 2 * float(np.abs(bad[i])) * float(np.finfo(dtype).eps)
    with pytest.raises(AssertionError):
        assert_conv_close(bad.astype(dtype), ref, "conv2d", "direct", dtype, f64(x), f64(w))


# ----------------------------------------------------------------------------------------
# the torch bridge


@pytest.mark.parametrize("dtype", HALF)
def test_torch_half_tensors_round_trip(rng, dtype):
    tdt = TORCH[dtype.name]
    x = torch.randn(2, 3, 6, 5).to(tdt)
    y = convgpu.relu(x)
    assert isinstance(y, torch.Tensor) and y.dtype == tdt and torch.equal(y, F.relu(x))
    w = torch.randn(4, 3, 3, 3).to(tdt)
    yc = convgpu.conv2d(x, w, padding=1)
    assert yc.dtype == tdt
    ref = F.conv2d(x.double(), w.double(), padding=1)
    assert_conv_close(tn(yc), tn(ref.to(tdt)), "conv2d", "direct", np.dtype(dtype),
                      tn(x), tn(w), padding=1)
    cl = x.contiguous(memory_format=torch.channels_last)
    assert convgpu.relu(cl).is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("dtype", HALF)
def test_functional_autograd_in_half(rng, dtype):
    tdt = TORCH[dtype.name]
    x = torch.randn(2, 3, 6, 6).to(tdt).requires_grad_()
    w = torch.randn(4, 3, 3, 3).to(tdt).requires_grad_()
    y = CF.max_pool2d(CF.relu(CF.conv2d(x, w, padding=1)), 2)
    y.backward(torch.ones_like(y))
    assert y.dtype == x.grad.dtype == w.grad.dtype == tdt


@pytest.mark.parametrize("dtype", HALF)
def test_converted_half_model_and_amp_batch_norm(rng, dtype):
    """model.half() / .bfloat16() converts (every layer served) and runs in the half type;
    a float32 BatchNorm2d takes half input as torch's does (AMP's mixed form)."""
    tdt = TORCH[dtype.name]
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 3, padding=1), torch.nn.BatchNorm2d(3),
                                torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                                torch.nn.Flatten(), torch.nn.Linear(3, 4)).to(tdt)
    ours = ct.convert(__import__("copy").deepcopy(model))
    x = torch.randn(4, 2, 5, 5).to(tdt)
    y = ours(x)
    assert y.dtype == tdt and model(x).shape == y.shape
    bn, bn_t = ct.BatchNorm2d(3), torch.nn.BatchNorm2d(3)
    h = torch.randn(4, 3, 5, 5).to(tdt)
    out, out_t = bn(h), bn_t(h)
    assert out.dtype == out_t.dtype == tdt and bn.running_mean.dtype == torch.float32
    ry, ymag, *_, n, _, _, _, _, _, _ = bn_bounds(tn(h), np.ones(3), np.zeros(3),
                                                  np.zeros(tuple(h.shape)))
    assert_half(tn(out).astype(dtype), ry.astype(dtype), ymag, n, np.dtype(dtype))
    assert_torch_half(out_t, ry.astype(dtype), ymag, n, np.dtype(dtype))


def test_autocast_casts_as_torch():
    """Under torch.autocast (CPU, bfloat16) every layer's output has torch's dtype: conv and
    linear in bfloat16, batch norm, pooling and ReLU in their input's, cross_entropy in
    float32; our conv's result is our bfloat16 conv of the cast tensors."""
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 3, 3), torch.nn.BatchNorm2d(3),
                                torch.nn.ReLU(), torch.nn.MaxPool2d(2), torch.nn.Flatten(),
                                torch.nn.Linear(12, 5))
    ours = ct.convert(__import__("copy").deepcopy(model))
    x = torch.randn(2, 1, 6, 6)

    def dtypes(m):
        seen = []
        hooks = [layer.register_forward_hook(lambda mod, i, o: seen.append(o.dtype))
                 for layer in m]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = m(x)
            loss = F.cross_entropy(out, torch.tensor([1, 2])) if m is model else \
                CF.cross_entropy(out, torch.tensor([1, 2]))
        for hk in hooks:
            hk.remove()
        loss.backward()
        return seen, loss.dtype
    assert dtypes(ours) == dtypes(model)
    assert all(p.grad.dtype == torch.float32 for p in ours.parameters())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = CF.conv2d(x, ours[0].weight, ours[0].bias)
    assert y.dtype == torch.bfloat16
    assert torch.equal(y, convgpu.conv2d(x.bfloat16(), ours[0].weight.detach().bfloat16(),
                                         ours[0].bias.detach().bfloat16()))


def test_bfloat16_through_plain_dlpack_is_one_type_error():
    """NumPy reads no bfloat16 through DLPack: a producer other than torch (JAX, ...) gets
    one TypeError saying how bfloat16 crosses; float16 goes through."""
    class Producer:
        def __init__(self, t):
            self.t = t

        def __dlpack__(self, **kw):
            return self.t.__dlpack__(**kw)

        def __dlpack_device__(self):
            return self.t.__dlpack_device__()

    t = torch.ones(2, 3)
    with pytest.raises(TypeError, match=r"relu: input \(Producer\) could not be read through "
                       r"DLPack .*bfloat16 crosses as a torch tensor"):
        convgpu.relu(Producer(t.bfloat16()))
    assert convgpu.relu(Producer(t.half())).dtype == np.float16


@pytest.mark.parametrize("dtype", HALF)
def test_nhwc_half_runs_the_nchw_half_kernels_between_copies(rng, dtype, monkeypatch):
    """algo="transpose" takes the half types to the NCHW kernels that serve them: the NHWC
    result is the NCHW one (the same kernel, picked alike) transposed, bit for bit."""
    monkeypatch.setenv("CONVGPU_CUDA_HOST", "1")
    x, w = half(rng, (2, 8, 7, 9), dtype), half(rng, (16, 8, 3, 3), dtype)
    nhwc = lambda a: np.ascontiguousarray(a.transpose(0, 2, 3, 1))  # noqa: E731
    y = convgpu.conv2d(x, w, padding=1, backend="cuda")
    yn = convgpu.conv2d(nhwc(x), nhwc(w), padding=1, backend="cuda", algo="transpose",
                        layout="NHWC")
    assert yn.dtype == dtype and np.array_equal(f64(yn), f64(nhwc(y)))
    p = convgpu.max_pool2d(x, 3, 2, 1, backend="cuda")
    pn = convgpu.max_pool2d(nhwc(x), 3, 2, 1, backend="cuda", algo="transpose", layout="NHWC")
    assert pn.dtype == dtype and np.array_equal(f64(pn), f64(nhwc(p)))
