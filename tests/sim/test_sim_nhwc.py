"""Simulator tier, channels last: every Numba implementation that serves layout="NHWC" (the
NCHW kernels between layout copies, algo="transpose", for conv and pooling; batch norm's
kernels on the (N*H*W, C, 1) view), float32 and float64, outputs poisoned, against the
float64 reference; results equal the NCHW kernels' transposed (bitwise: the same kernel on
the same values). Tiny shapes: each launch about 30 blocks."""
import numpy as np
import pytest

import convgpu
from convgpu import reference
from convgpu.ops._registry import all_impls
from helpers import CONV_SMALL, MAXP_SMALL, TOL, assert_close, rand, shuffled_linspace


def nhwc(a):
    return np.ascontiguousarray(a.transpose(0, 2, 3, 1))


def nchw(a):
    return np.ascontiguousarray(a.transpose(0, 3, 1, 2))


def numba_nhwc(op):
    return [i.algo for i in all_impls(op, layout="NHWC") if i.backend == "numba"]


def test_numba_serves_nhwc():
    for op in ("conv2d", "conv2d_backward_input", "conv2d_backward_weight", "max_pool2d",
               "max_pool2d_backward", "avg_pool2d", "avg_pool2d_backward", "batch_norm",
               "batch_norm_backward"):
        assert numba_nhwc(op), op


@pytest.mark.parametrize("case", CONV_SMALL[:2])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_conv_nhwc_transpose(rng, case, dtype):
    N, C, H, W, K, R, S, st, pd, dl, g = case
    kw = dict(stride=st, padding=pd, dilation=dl, groups=g)
    x, w, b = rand(rng, (N, C, H, W), dtype), rand(rng, (K, C // g, R, S), dtype), rand(
        rng, (K,), dtype)
    for algo in numba_nhwc("conv2d"):
        y = convgpu.conv2d(nhwc(x), nhwc(w), b, **kw, layout="NHWC", backend="numba",
                           algo=algo)
        np.testing.assert_array_equal(nchw(y), convgpu.conv2d(x, w, b, **kw, backend="numba"))
        ref = reference.conv2d(x.astype(np.float64), w.astype(np.float64),
                               b.astype(np.float64), st, pd, dl, g)
        assert_close(nchw(y), ref, TOL[dtype])
    gy = rand(rng, ref.shape, dtype)
    for algo in numba_nhwc("conv2d_backward_input"):
        gx = convgpu.conv2d_backward_input(nhwc(gy), nhwc(w), nhwc(x).shape, **kw,
                                           layout="NHWC", backend="numba", algo=algo)
        assert_close(nchw(gx), reference.conv2d_backward_input(
            gy.astype(np.float64), w.astype(np.float64), x.shape, st, pd, dl, g), TOL[dtype])
    for algo in numba_nhwc("conv2d_backward_weight"):
        gw = convgpu.conv2d_backward_weight(nhwc(x), nhwc(gy), nhwc(w).shape, **kw,
                                            layout="NHWC", backend="numba", algo=algo)
        assert_close(nchw(gw), reference.conv2d_backward_weight(
            x.astype(np.float64), gy.astype(np.float64), w.shape, st, pd, dl, g), TOL[dtype])


@pytest.mark.parametrize("case", MAXP_SMALL[:2])
def test_pool_nhwc_transpose(rng, case):
    N, C, H, W, k, s, p, d, ceil = case
    kw = dict(kernel_size=k, stride=s, padding=p, dilation=d, ceil_mode=ceil)
    x = shuffled_linspace(rng, (N, C, H, W), np.float32)
    for algo in numba_nhwc("max_pool2d"):
        y, idx = convgpu.max_pool2d(nhwc(x), **kw, return_indices=True, layout="NHWC",
                                    backend="numba", algo=algo)
        y_ref, idx_ref = reference.max_pool2d(x, k, s, p, d, ceil)
        np.testing.assert_array_equal(nchw(y), y_ref)
        np.testing.assert_array_equal(nchw(idx), idx_ref)
    gy = rand(rng, y_ref.shape, np.float32)
    for algo in numba_nhwc("max_pool2d_backward"):
        gx = convgpu.max_pool2d_backward(nhwc(gy), nhwc(idx_ref), nhwc(x).shape, **kw,
                                         layout="NHWC", backend="numba", algo=algo)
        assert_close(nchw(gx), reference.max_pool2d_backward(gy, idx_ref, x.shape),
                     TOL[np.float32])
    akw = dict(kernel_size=k, stride=s, padding=(min(p[0], k[0] // 2), min(p[1], k[1] // 2)),
               ceil_mode=ceil)
    for algo in numba_nhwc("avg_pool2d"):
        a = convgpu.avg_pool2d(nhwc(x), **akw, layout="NHWC", backend="numba", algo=algo)
        assert_close(nchw(a), convgpu.avg_pool2d(x.astype(np.float64), **akw), TOL[np.float32])


@pytest.mark.parametrize("training", [True, False])
def test_batch_norm_nhwc_view(rng, training):
    x = rand(rng, (2, 3, 4, 5))                           # NHWC, 5 channels
    w, b = rand(rng, (5,)), rand(rng, (5,))
    rm, rv = rand(rng, (5,)), np.abs(rand(rng, (5,)))
    rm_ref, rv_ref = rm.copy(), rv.copy()
    y, mean, invstd = convgpu.batch_norm(x, rm, rv, w, b, training, return_stats=True,
                                         layout="NHWC", backend="numba")
    y_ref = convgpu.batch_norm(nchw(x), rm_ref, rv_ref, w, b, training)
    assert_close(nchw(y), y_ref, TOL[np.float64])
    assert_close(rm, rm_ref, TOL[np.float64])
    gy = rand(rng, x.shape)
    got = convgpu.batch_norm_backward(gy, x, mean, invstd, w, training, layout="NHWC",
                                      backend="numba")
    want = reference.batch_norm_backward(nchw(gy), nchw(x), mean, invstd, w, training)
    assert_close(nchw(got[0]), want[0], TOL[np.float64])
    assert_close(got[1], want[1], TOL[np.float64])
    assert_close(got[2], want[2], TOL[np.float64])
