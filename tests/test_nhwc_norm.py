"""Channels-last (NHWC) batch normalisation: batch_norm and batch_norm_backward with
layout="NHWC" (a 4-D (N, H, W, C) input, statistics per channel over N, H and W).

- every registered implementation that serves NHWC, one body: numpy, and the cuda
  backend's (norm_nhwc.cu's reductions, 32 channels a block, and norm.cu's elementwise
  passes) in the host emulation, both thread orders, outputs poisoned, against the float64
  reference on the NCHW input at the design's tolerance: training (running estimates
  updated in place) and evaluation, forward and the three gradients; shapes whose channel
  count is not a multiple of 32 and whose rows do not divide into the splits;
- torch channels_last tensors run NHWC, come back channels_last, and equal torch's
  F.batch_norm and its autograd gradients;
- bad input: one ValueError before any launch.
"""
import numpy as np
import pytest

import convgpu
from convgpu import reference
from convgpu.ops._registry import all_impls
from helpers import TOL, assert_close, rand
from helpers import both_orders_on as both_orders, host_backend  # noqa: F401 (a fixture)

try:
    import torch
    F = torch.nn.functional
except ImportError:                      # the torch checks skip; the rest runs
    torch = None


def nhwc(a):
    return np.ascontiguousarray(a.transpose(0, 2, 3, 1))


def nchw(a):
    return np.ascontiguousarray(a.transpose(0, 3, 1, 2))


BACKENDS = [pytest.param(i.backend, id=i.backend)
            for i in all_impls("batch_norm", layout="NHWC") if i.backend in ("numpy", "cuda")]

# (N, H, W, C): C below, at and above the 32 channels of a cuda block; rows M = N*H*W of
# 6 to 495
SHAPES = [(2, 3, 1, 5), (3, 5, 7, 33), (1, 4, 6, 32), (5, 9, 11, 3)]


def test_every_implementation_serves_nhwc():
    for op in ("batch_norm", "batch_norm_backward"):
        assert {"numpy", "numba", "cuda"} <= {b for b, _ in convgpu.implementations(
            op, layout="NHWC")}


@pytest.mark.parametrize("host_backend", BACKENDS, indirect=True)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("training", [True, False])
def test_batch_norm_nhwc(rng, host_backend, shape, training, monkeypatch):
    C = shape[3]
    launched = []
    if host_backend == "cuda":                  # the NHWC reductions are what runs
        from convgpu.kernels.cuda import norm_nhwc
        real = norm_nhwc.get_function
        monkeypatch.setattr(norm_nhwc, "get_function",
                            lambda f, e: launched.append(e) or real(f, e))
    for dtype in (np.float32, np.float64):
        x = rand(rng, shape, dtype) + dtype(3)          # a mean far from 0
        w, b = rand(rng, (C,), dtype), rand(rng, (C,), dtype)
        rm0, rv0 = rand(rng, (C,), dtype), np.abs(rand(rng, (C,), dtype))

        def run():
            rm, rv = rm0.copy(), rv0.copy()
            y, mean, invstd = convgpu.batch_norm(x, rm, rv, w, b, training, 0.2, 1e-4,
                                                 return_stats=True, layout="NHWC",
                                                 backend=host_backend)
            return y, mean, invstd, rm, rv
        y, mean, invstd, rm, rv = both_orders(host_backend, run)
        x64 = nchw(x).astype(np.float64)
        if training:
            m_ref, i_ref, var_u = reference.batch_norm_stats(x64, 1e-4)
            assert_close(rm, 0.8 * rm0 + 0.2 * m_ref, TOL[dtype])
            assert_close(rv, 0.8 * rv0 + 0.2 * var_u, TOL[dtype])
        else:
            m_ref, i_ref = rm0.astype(np.float64), 1 / np.sqrt(rv0.astype(np.float64) + 1e-4)
            np.testing.assert_array_equal(rm, rm0)
        assert_close(mean, m_ref, TOL[dtype])
        assert_close(invstd, i_ref, TOL[dtype])
        y_ref = reference.batch_norm(x64, m_ref, i_ref, w.astype(np.float64),
                                     b.astype(np.float64))
        assert y.dtype == dtype and y.shape == shape
        assert_close(nchw(y), y_ref, TOL[dtype])

        gy = rand(rng, shape, dtype)
        gx, gw, gb = both_orders(host_backend, lambda: convgpu.batch_norm_backward(
            gy, x, mean, invstd, w, training, layout="NHWC", backend=host_backend))
        refs = reference.batch_norm_backward(nchw(gy).astype(np.float64), x64,
                                             mean.astype(np.float64), invstd.astype(np.float64),
                                             w.astype(np.float64), training)
        assert_close(nchw(gx), refs[0], TOL[dtype])
        assert_close(gw, refs[1], TOL[dtype])
        assert_close(gb, refs[2], TOL[dtype])
    if host_backend == "cuda":
        assert any(e.startswith("batch_norm_nhwc_bwd_partials") for e in launched)
        assert any(e.startswith("batch_norm_nhwc_partials") for e in launched) == training


@pytest.mark.skipif(torch is None, reason="torch is not installed")
def test_channels_last_batch_norm_matches_torch(rng):
    x = torch.from_numpy(rand(rng, (3, 5, 6, 4))).contiguous(
        memory_format=torch.channels_last).requires_grad_()
    w = torch.from_numpy(rand(rng, (5,))).requires_grad_()
    b = torch.from_numpy(rand(rng, (5,)))
    rm, rv = torch.zeros(5, dtype=torch.float64), torch.ones(5, dtype=torch.float64)
    rm_t, rv_t = rm.clone(), rv.clone()
    y, mean, invstd = convgpu.batch_norm(x.detach(), rm, rv, w.detach(), b, True,
                                         return_stats=True)
    yt = F.batch_norm(x, rm_t, rv_t, w, b, True)
    assert y.is_contiguous(memory_format=torch.channels_last) and not y.is_contiguous()
    for ours, theirs in ((y, yt), (rm, rm_t), (rv, rv_t)):
        assert_close(ours.numpy(), theirs.detach().numpy(), TOL[np.float64])
    gy = torch.from_numpy(rand(rng, tuple(y.shape))).contiguous(memory_format=torch.channels_last)
    yt.backward(gy)
    gx, gw, _ = convgpu.batch_norm_backward(gy, x.detach(), mean, invstd, w.detach(), True)
    assert gx.is_contiguous(memory_format=torch.channels_last)
    assert_close(gx.numpy(), x.grad.numpy(), TOL[np.float64])
    assert_close(gw.numpy(), w.grad.numpy(), TOL[np.float64])


@pytest.mark.parametrize("layout", ["nhwc", None])
def test_bad_layout(rng, layout):
    x = rand(rng, (2, 3, 3, 4))
    with pytest.raises(ValueError, match=r"^batch_norm: layout must be 'NCHW' or 'NHWC'"):
        convgpu.batch_norm(x, None, None, training=True, layout=layout)
    with pytest.raises(ValueError, match=r"^batch_norm_backward: layout must be"):
        convgpu.batch_norm_backward(x, x, np.zeros(4), np.ones(4), layout=layout)


def test_shapes_that_do_not_match_the_layout(rng):
    x = rand(rng, (2, 3, 3, 4))                          # NHWC: 4 channels
    with pytest.raises(ValueError, match=r"running_mean must have shape \(4,\)"):
        convgpu.batch_norm(x, np.zeros(3), np.ones(3), training=True, layout="NHWC")
    with pytest.raises(ValueError, match=r"input must be 4-D \(N, H, W, C\) with "
                                         r"layout='NHWC', got 3-D"):
        convgpu.batch_norm(rand(rng, (2, 3, 4)), None, None, training=True, layout="NHWC")
    with pytest.raises(ValueError, match=r"mean must have shape \(4,\)"):
        convgpu.batch_norm_backward(x, x, np.zeros(3), np.ones(3), layout="NHWC")


def test_launcher_lanes_match_the_cu():
    """norm_nhwc.py sizes its grid by LANES channels a block; the kernel indexes by
    NHWC_LANES (tests/test_cuda_constants.py's check, for this file)."""
    from convgpu.kernels.cuda import norm_nhwc
    from test_cuda_constants import constexprs
    assert constexprs("norm_nhwc.cu")["NHWC_LANES"] == norm_nhwc.LANES
    assert norm_nhwc.ROWS * norm_nhwc.LANES == norm_nhwc.norm.NORM_THREADS
