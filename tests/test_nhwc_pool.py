"""Channels-last (NHWC) pooling: max (with indices), average, adaptive and global average
pooling and their gradients with layout="NHWC" (input (N, H, W, C), output (N, P, Q, C);
max-pool indices flat over the unpadded plane, h*W + w, as torch gives them for
channels_last input).

- the reference against torch's channels_last results (values, indices, gradients);
- every registered implementation that serves NHWC, one body per op: numpy, and the cuda
  backend's (the NHWC kernels of pool_nhwc.cu, algo="transpose") in the host emulation,
  both thread orders, outputs poisoned, in float32, float64, float16 and bfloat16; pooling
  sums each window in the same order in either layout (the half types in FP32, rounded
  once), so every NHWC result is bitwise the same backend's NCHW result transposed;
- torch channels_last tensors run NHWC and come back channels_last;
- bad input: one ValueError before any launch.
"""
import numpy as np
import pytest

import convgpu
from convgpu import bounds
from convgpu.core.args import BFLOAT16
from convgpu.ops._registry import all_impls
from helpers import AVGP_SMALL, MAXP_SMALL, TOL, assert_close, rand, shuffled_linspace
from helpers import both_orders_on as both_orders, host_backend  # noqa: F401 (a fixture)

try:
    import torch
    F = torch.nn.functional
except ImportError:                      # the torch checks skip; the rest runs
    torch = None

needs_torch = pytest.mark.skipif(torch is None, reason="torch is not installed")
HALF = (np.dtype(np.float16), BFLOAT16)
FLOATS = (np.dtype(np.float32), np.dtype(np.float64)) + HALF


def nhwc(a):
    return np.ascontiguousarray(a.transpose(0, 2, 3, 1))


def nchw(a):
    return np.ascontiguousarray(a.transpose(0, 3, 1, 2))


def _params(op):
    return [pytest.param(i.backend, i.algo, id=f"{i.backend}-{i.algo}")
            for i in all_impls(op, layout="NHWC") if i.backend in ("numpy", "cuda")]


def test_every_pool_op_has_nhwc_implementations():
    for op in ("max_pool2d", "max_pool2d_backward", "avg_pool2d", "avg_pool2d_backward",
               "adaptive_avg_pool2d", "adaptive_avg_pool2d_backward", "global_avg_pool2d",
               "global_avg_pool2d_backward"):
        assert {"numpy", "numba", "cuda"} <= {b for b, _ in convgpu.implementations(
            op, layout="NHWC")}, op
    for op in ("max_pool2d", "avg_pool2d"):
        assert ("cuda", "direct_nhwc") in convgpu.implementations(op, layout="NHWC")


def _maxp(case):
    N, C, H, W, k, s, p, d, ceil = case
    return (N, C, H, W), dict(kernel_size=k, stride=s, padding=p, dilation=d, ceil_mode=ceil)


def _avgp(case):
    N, C, H, W, k, s, p, ceil, incl, div = case
    return (N, C, H, W), dict(kernel_size=k, stride=s, padding=p, ceil_mode=ceil,
                              count_include_pad=incl, divisor_override=div)


@pytest.mark.parametrize("host_backend,algo", _params("max_pool2d"), indirect=["host_backend"])
@pytest.mark.parametrize("case", MAXP_SMALL)
def test_max_pool2d_nhwc(rng, host_backend, algo, case):
    """Values and indices bitwise the NCHW op's transposed (ties broken the same way: a
    plane of repeated values; a NaN propagates with its index)."""
    shape, kw = _maxp(case)
    for dtype in FLOATS:
        x = shuffled_linspace(rng, shape, dtype)
        x[0, 0, 1, :] = x[0, 0, 1, 0]                        # ties along a row
        x[-1, -1, 0, 0] = np.nan
        y, idx = both_orders(host_backend, lambda: convgpu.max_pool2d(
            nhwc(x), **kw, return_indices=True, layout="NHWC", backend=host_backend,
            algo=algo))
        y_ref, idx_ref = convgpu.max_pool2d(x, **kw, return_indices=True,
                                            backend=host_backend)
        assert y.dtype == dtype and idx.dtype == np.int64
        np.testing.assert_array_equal(nchw(y), y_ref)
        np.testing.assert_array_equal(nchw(idx), idx_ref)


@pytest.mark.parametrize("host_backend,algo", _params("max_pool2d_backward"),
                         indirect=["host_backend"])
@pytest.mark.parametrize("case", MAXP_SMALL[:3])
@pytest.mark.parametrize("geometry", [True, False], ids=["gather", "scatter"])
def test_max_pool2d_backward_nhwc(rng, host_backend, algo, case, geometry):
    shape, kw = _maxp(case)
    x = shuffled_linspace(rng, shape)
    y, idx = convgpu.max_pool2d(x, **kw, return_indices=True)
    geo = kw if geometry else {}
    if host_backend == "cuda" and not geometry:     # refused before anything is copied
        with pytest.raises(ValueError, match=r"cannot serve this call: .*needs the forward's "
                                             r"kernel_size/stride/padding/dilation"):
            convgpu.max_pool2d_backward(nhwc(y), nhwc(idx), nhwc(x).shape, layout="NHWC",
                                        backend=host_backend, algo=algo)
        return
    for dtype in (np.float64,) + HALF:
        gy = rand(rng, y.shape, dtype)
        gx = both_orders(host_backend, lambda: convgpu.max_pool2d_backward(
            nhwc(gy), nhwc(idx), nhwc(x).shape, **geo, layout="NHWC", backend=host_backend,
            algo=algo))
        ref = convgpu.max_pool2d_backward(gy, idx, x.shape, **geo, backend=host_backend)
        assert gx.dtype == dtype
        np.testing.assert_array_equal(nchw(gx), ref)


@pytest.mark.parametrize("host_backend", ["numpy", "cuda"], indirect=True)
def test_max_pool2d_backward_nhwc_refuses_bad_indices(rng, host_backend):
    x = shuffled_linspace(rng, (1, 2, 6, 6))
    y, idx = convgpu.max_pool2d(x, 2, return_indices=True)
    bad = nhwc(idx)
    bad[0, 0, 0, 1] = 36                                  # past the 6 x 6 plane
    with pytest.raises(ValueError, match=r"indices must lie in \[0, 36\)"):
        convgpu.max_pool2d_backward(nhwc(y), bad, (1, 6, 6, 2), 2, layout="NHWC",
                                    backend=host_backend)
    if host_backend == "numpy":
        return                      # the host scatter honours any index in the plane
    bad = nhwc(idx)
    bad[0, 1, 1, 0] = 0                                   # inside the plane, outside its window
    with pytest.raises(ValueError, match="an index lies outside its window"):
        convgpu.max_pool2d_backward(nhwc(y), bad, (1, 6, 6, 2), 2, layout="NHWC",
                                    backend=host_backend)


@pytest.mark.parametrize("host_backend,algo", _params("avg_pool2d"), indirect=["host_backend"])
@pytest.mark.parametrize("case", AVGP_SMALL)
def test_avg_pool2d_nhwc(rng, host_backend, algo, case):
    shape, kw = _avgp(case)
    for dtype in FLOATS:
        x = rand(rng, shape, dtype)
        y = both_orders(host_backend, lambda: convgpu.avg_pool2d(
            nhwc(x), **kw, layout="NHWC", backend=host_backend, algo=algo))
        ref = convgpu.avg_pool2d(x, **kw, backend=host_backend)
        assert y.dtype == dtype
        np.testing.assert_array_equal(nchw(y), ref)
        if dtype not in HALF:           # the half kernels' bounds: test_half.py
            assert_close(nchw(y), convgpu.avg_pool2d(x.astype(np.float64), **kw), TOL[dtype.type])


@pytest.mark.parametrize("host_backend,algo", _params("avg_pool2d_backward"),
                         indirect=["host_backend"])
@pytest.mark.parametrize("case", AVGP_SMALL[:3])
def test_avg_pool2d_backward_nhwc(rng, host_backend, algo, case):
    shape, kw = _avgp(case)
    for dtype in (np.float64,) + HALF:
        gy = rand(rng, convgpu.avg_pool2d(np.zeros(shape), **kw).shape, dtype)
        gx = both_orders(host_backend, lambda: convgpu.avg_pool2d_backward(
            nhwc(gy), (shape[0], shape[2], shape[3], shape[1]), **kw, layout="NHWC",
            backend=host_backend, algo=algo))
        assert gx.dtype == dtype
        np.testing.assert_array_equal(nchw(gx), convgpu.avg_pool2d_backward(
            gy, shape, **kw, backend=host_backend))


@pytest.mark.parametrize("host_backend", ["cuda"], indirect=True)
@pytest.mark.parametrize("dtype", HALF, ids=str)
@pytest.mark.parametrize("C", [8, 24])
def test_half_nhwc_pooling_eight_channels_a_thread(rng, host_backend, dtype, C, monkeypatch):
    """The half types take the <T, I, 8> kernels (16-byte loads and stores) where C is a
    multiple of 8 and the bases are 16-byte aligned, the scalar ones otherwise (a base 2
    bytes off): both bitwise the NCHW kernels' results transposed, ties, a NaN and an
    infinity included."""
    from convgpu.kernels.cuda import pool_nhwc
    from half_helpers import misaligned
    from helpers import spy_get_function
    seen = spy_get_function(monkeypatch)
    x = shuffled_linspace(rng, (2, C, 7, 9), dtype)
    x[0, 1, 2, :] = x[0, 1, 2, 0]
    x[1, C - 1, 3, 3], x[1, 2, 0, 0] = np.nan, np.inf
    mk = dict(kernel_size=3, stride=2, padding=1, dilation=(1, 2))
    ak = dict(kernel_size=(3, 2), stride=(2, 1), padding=1, ceil_mode=True,
              count_include_pad=False)
    y, idx = convgpu.max_pool2d(x, **mk, return_indices=True, backend="cuda")
    ya = convgpu.avg_pool2d(x, **ak, backend="cuda")
    gy, ga = rand(rng, y.shape, dtype), rand(rng, ya.shape, dtype)
    g = convgpu.max_pool2d_backward(gy, idx, x.shape, **mk, backend="cuda")
    gga = convgpu.avg_pool2d_backward(ga, x.shape, **ak, backend="cuda")
    for place, V in ((np.ascontiguousarray, 8), (misaligned, 1)):
        del seen[:]
        xn, gyn, gan = place(nhwc(x)), place(nhwc(gy)), place(nhwc(ga))
        yn, idxn = both_orders("cuda", lambda: convgpu.max_pool2d(
            xn, **mk, return_indices=True, layout="NHWC", backend="cuda", algo="direct_nhwc"))
        assert np.array_equal(nchw(yn).view(np.uint16), y.view(np.uint16))
        np.testing.assert_array_equal(nchw(idxn), idx)
        gn = both_orders("cuda", lambda: convgpu.max_pool2d_backward(
            gyn, nhwc(idx), xn.shape, **mk, layout="NHWC", backend="cuda", algo="gather_nhwc"))
        assert np.array_equal(nchw(gn).view(np.uint16), g.view(np.uint16))
        yan = both_orders("cuda", lambda: convgpu.avg_pool2d(
            xn, **ak, layout="NHWC", backend="cuda", algo="direct_nhwc"))
        assert np.array_equal(nchw(yan).view(np.uint16), ya.view(np.uint16))
        gan_ = both_orders("cuda", lambda: convgpu.avg_pool2d_backward(
            gan, xn.shape, **ak, layout="NHWC", backend="cuda", algo="gather_nhwc"))
        assert np.array_equal(nchw(gan_).view(np.uint16), gga.view(np.uint16))
        vector = [e for e in seen if e.endswith(", 8>")]
        assert len(vector) == (8 if V == 8 else 0), seen     # four kernels, both orders
    assert pool_nhwc.lanes(12, nhwc(x)[..., :4].copy()) == 1     # C not a multiple of 8


def _algos(op, backend):
    return [i.algo for i in all_impls(op, layout="NHWC") if i.backend == backend]


@pytest.mark.parametrize("host_backend", ["numpy", "cuda"], indirect=True)
@pytest.mark.parametrize("shape,out", [((2, 3, 7, 5), (3, 2)), ((1, 2, 5, 6), (9, 11))])
@pytest.mark.parametrize("dtype", (np.dtype(np.float64),) + HALF, ids=str)
def test_adaptive_and_global_nhwc(rng, host_backend, shape, out, dtype):
    """Every implementation of the four ops on this backend; bitwise the NCHW results
    transposed (the same sums in the same order), global pooling's forward to its bound
    against the float64 mean (the NCHW kernel sums a plane by warp lanes): the FP32 sum's
    (n + 2) u_32 mean|x|, and for the half types the one rounding (bounds.half_bound)."""
    x, gy = rand(rng, shape, dtype), rand(rng, (shape[0], shape[1]) + out, dtype)
    g2 = rand(rng, shape[:2], dtype)
    for algo in _algos("adaptive_avg_pool2d", host_backend):
        y = both_orders(host_backend, lambda: convgpu.adaptive_avg_pool2d(
            nhwc(x), out, layout="NHWC", backend=host_backend, algo=algo))
        np.testing.assert_array_equal(nchw(y), convgpu.adaptive_avg_pool2d(
            x, out, backend=host_backend))
    for algo in _algos("adaptive_avg_pool2d_backward", host_backend):
        gx = both_orders(host_backend, lambda: convgpu.adaptive_avg_pool2d_backward(
            nhwc(gy), nhwc(x).shape, layout="NHWC", backend=host_backend, algo=algo))
        np.testing.assert_array_equal(nchw(gx), convgpu.adaptive_avg_pool2d_backward(
            gy, shape, backend=host_backend))
    for algo in _algos("global_avg_pool2d", host_backend):
        g = both_orders(host_backend, lambda: convgpu.global_avg_pool2d(
            nhwc(x), layout="NHWC", backend=host_backend, algo=algo))
        assert g.shape == shape[:2] and g.dtype == dtype
        x64 = x.astype(np.float64)
        if dtype == np.float64:
            assert_close(g, x64.mean(axis=(2, 3)), TOL[np.float64])
        else:
            n = shape[2] * shape[3]
            ref = x64.mean(axis=(2, 3)).astype(dtype).astype(np.float64)
            fp32 = (n + 2) * 2.0 ** -24 * abs(x64).mean(axis=(2, 3))
            bound = bounds.half_bound(dtype, ref, fp32)
            assert np.all(abs(g.astype(np.float64) - ref) <= bound)
    for algo in _algos("global_avg_pool2d_backward", host_backend):
        gx = both_orders(host_backend, lambda: convgpu.global_avg_pool2d_backward(
            g2, nhwc(x).shape, layout="NHWC", backend=host_backend, algo=algo))
        np.testing.assert_array_equal(nchw(gx), convgpu.global_avg_pool2d_backward(
            g2, shape, backend=host_backend))
    if host_backend == "cuda":
        assert "direct_nhwc" in _algos("adaptive_avg_pool2d", "cuda")
        assert "reduce_nhwc" in _algos("global_avg_pool2d", "cuda")


def test_unbatched_nhwc(rng):
    x = shuffled_linspace(rng, (1, 3, 6, 5))
    y, idx = convgpu.max_pool2d(nhwc(x)[0], 2, return_indices=True, layout="NHWC")
    assert y.shape == (3, 2, 3)
    np.testing.assert_array_equal(idx, nhwc(convgpu.max_pool2d(x, 2, return_indices=True)[1])[0])
    gx = convgpu.max_pool2d_backward(y, idx, (6, 5, 3), 2, layout="NHWC")
    assert gx.shape == (6, 5, 3)
    a = convgpu.avg_pool2d(nhwc(x)[0], 3, 2, 1, layout="NHWC")
    np.testing.assert_array_equal(a, nhwc(convgpu.avg_pool2d(x, 3, 2, 1))[0])


# ----------------------------------------------------------------------------------------
# torch channels_last


def _cl(a):
    return torch.from_numpy(a).contiguous(memory_format=torch.channels_last)


@needs_torch
def test_channels_last_pooling_matches_torch(rng):
    """max pooling's values and indices (indices channels_last, flat over the plane, as
    torch's), average / adaptive pooling, and every gradient against torch's autograd, on
    channels_last tensors; results come back channels_last."""
    x = _cl(shuffled_linspace(rng, (2, 3, 9, 7))).requires_grad_()
    kw = dict(kernel_size=3, stride=2, padding=1, dilation=(1, 2), ceil_mode=True)
    y, idx = convgpu.max_pool2d(x.detach(), **kw, return_indices=True)
    yt, it = F.max_pool2d(x, **kw, return_indices=True)
    assert idx.is_contiguous(memory_format=torch.channels_last) and not idx.is_contiguous()
    assert it.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(y, yt.detach()) and torch.equal(idx, it)
    gy = _cl(rand(rng, tuple(y.shape)))
    yt.backward(gy)
    gx = convgpu.max_pool2d_backward(gy, idx, tuple(x.shape), **kw)
    assert gx.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(gx, x.grad)

    x.grad = None
    akw = dict(kernel_size=(3, 2), stride=(2, 1), padding=1, ceil_mode=True,
               count_include_pad=False)
    a, at = convgpu.avg_pool2d(x.detach(), **akw), F.avg_pool2d(x, **akw)
    assert a.is_contiguous(memory_format=torch.channels_last)
    assert_close(a.numpy(), at.detach().numpy(), TOL[np.float64])
    ga = _cl(rand(rng, tuple(a.shape)))
    at.backward(ga)
    assert_close(convgpu.avg_pool2d_backward(ga, tuple(x.shape), **akw).numpy(),
                 x.grad.numpy(), TOL[np.float64])
    ad = convgpu.adaptive_avg_pool2d(x.detach(), (4, 3))
    assert ad.is_contiguous(memory_format=torch.channels_last)
    assert_close(ad.numpy(), F.adaptive_avg_pool2d(x.detach(), (4, 3)).numpy(),
                 TOL[np.float64])
    assert_close(convgpu.global_avg_pool2d(x.detach()).numpy(),
                 x.detach().mean((2, 3)).numpy(), TOL[np.float64])
    # the channels_last path against our own NCHW path: the same sums in the same order
    xc = x.detach().contiguous()
    assert torch.equal(convgpu.max_pool2d(xc, **kw), y)
    assert torch.equal(convgpu.avg_pool2d(xc, **akw), a)
    assert torch.equal(convgpu.adaptive_avg_pool2d(xc, (4, 3)), ad)
    assert torch.equal(convgpu.max_pool2d_backward(gy.contiguous(), idx.contiguous(),
                                                   tuple(x.shape), **kw), gx)


# ----------------------------------------------------------------------------------------
# bad input


@pytest.mark.parametrize("layout", ["nhwc", None, "CHWN"])
def test_bad_layout(rng, layout):
    x = rand(rng, (1, 5, 6, 3))
    for call in (lambda: convgpu.max_pool2d(x, 2, layout=layout),
                 lambda: convgpu.avg_pool2d(x, 2, layout=layout),
                 lambda: convgpu.adaptive_avg_pool2d(x, 2, layout=layout),
                 lambda: convgpu.global_avg_pool2d(x, layout=layout),
                 lambda: convgpu.avg_pool2d_backward(x, (1, 5, 6, 3), 2, layout=layout)):
        with pytest.raises(ValueError, match=r"layout must be 'NCHW' or 'NHWC', got "):
            call()


def test_shapes_that_do_not_match_the_layout(rng):
    gy = rand(rng, (1, 3, 3, 2))                        # NHWC: 2 channels
    with pytest.raises(ValueError, match=r"grad_output has shape \(1, 3, 3, 2\) but input_shape "
                                         r"\(1, 2, 6, 6\) has \(N, C\) = \(1, 6\)"):
        convgpu.max_pool2d_backward(gy, np.zeros(gy.shape, np.int64), (1, 2, 6, 6), 2,
                                    layout="NHWC")      # an NCHW input_shape
    with pytest.raises(ValueError, match=r"grad_output has shape \(1, 3, 3, 2\) but pooling "
                                         r"input \(1, 7, 7, 2\) gives \(1, 4, 4, 2\) "
                                         r"\(layout='NHWC'\)"):
        convgpu.avg_pool2d_backward(gy, (1, 7, 7, 2), 2, ceil_mode=True, layout="NHWC")
    with pytest.raises(ValueError, match=r"grad_output has shape \(1, 6\) but input_shape "
                                         r"\(1, 6, 6, 2\) needs \(1, 2\)"):
        convgpu.global_avg_pool2d_backward(rand(rng, (1, 6)), (1, 6, 6, 2), layout="NHWC")
    with pytest.raises(ValueError, match=r"input must be 4-D \(N, H, W, C\)"):
        convgpu.global_avg_pool2d(rand(rng, (6, 6, 2)), layout="NHWC")


def test_nchw_only_kernels_refuse_nhwc(rng, monkeypatch):
    monkeypatch.setenv("CONVGPU_CUDA_HOST", "1")
    x = rand(rng, (1, 6, 6, 2))
    with pytest.raises(ValueError, match=r"\(cuda, direct\) cannot serve this call: serves "
                                         r"layout NCHW only, not NHWC; algo='transpose'"):
        convgpu.max_pool2d(x, 2, layout="NHWC", backend="cuda", algo="direct")
    with pytest.raises(ValueError, match=r"\(cuda, direct_nhwc\) cannot serve this call: "
                                         r"serves layout NHWC only, not NCHW"):
        convgpu.avg_pool2d(nchw(x), 2, backend="cuda", algo="direct_nhwc")
