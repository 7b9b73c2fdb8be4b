"""torch as a second oracle for the semantics the contract borrows from it (output sizes,
ceil_mode, count_include_pad, divisor_override, index layout, conv_transpose2d's
output_padding), and torch CPU tensors in -> torch tensors out. Required: `make test`
installs torch (the CPU build), so this oracle runs in every CI run. The edge cases of
helpers.py (avg-pool divisors, adaptive pooling, padding="same") run here on the
reference and in the simulator and host-emulation tiers on the kernels."""
import itertools

import numpy as np
import pytest
import torch

import convgpu
from helpers import (ADAPTIVE_EDGES, AVGP_EDGES, SAME_EDGES, assert_close, check_adaptive_edge,
                     check_avg_pool_edge, check_same_edge, rand)

F = torch.nn.functional


def _k(k):
    return (k, k) if isinstance(k, int) else k


# the geometries torch accepts (padding at most half the (dilated) kernel)
@pytest.mark.parametrize("k, s, p, d, ceil", [
    c for c in itertools.product([2, 3, (3, 2)], [1, 2, 3], [0, 1], [1, 2], [False, True])
    if c[2] <= ((min(_k(c[0])) - 1) * c[3] + 1) // 2
])
def test_max_pool_matches_torch(rng, k, s, p, d, ceil):
    x = rng.permutation(np.linspace(-1, 1, 2 * 3 * 11 * 10)).reshape(2, 3, 11, 10)
    try:
        y, i = convgpu.max_pool2d(x, k, s, p, d, ceil, return_indices=True)
    except ValueError as e:                  # our refusals: only the all-padding window
        assert "entirely in the padding" in str(e)
        return
    yt, it = F.max_pool2d(torch.from_numpy(x), k, s, p, d, ceil, return_indices=True)
    np.testing.assert_array_equal(y, yt.numpy())
    np.testing.assert_array_equal(i, it.numpy())


@pytest.mark.parametrize("k, s, p, ceil, cip, dov", [
    c for c in itertools.product([2, 3, (3, 2)], [1, 2, 3], [0, 1], [False, True],
                                 [True, False], [None, 5])
    if c[2] <= min(_k(c[0])) // 2
])
def test_avg_pool_matches_torch(rng, k, s, p, ceil, cip, dov):
    x = rand(rng, (2, 3, 11, 10))
    y = convgpu.avg_pool2d(x, k, s, p, ceil, cip, dov)
    yt = F.avg_pool2d(torch.from_numpy(x), k, s, p, ceil, cip, dov)
    assert y.shape == tuple(yt.shape)
    assert_close(y, yt.numpy(), 1e-12)
    gy = rand(rng, y.shape)
    xt = torch.from_numpy(x).requires_grad_()
    F.avg_pool2d(xt, k, s, p, ceil, cip, dov).backward(torch.from_numpy(gy))
    assert_close(convgpu.avg_pool2d_backward(gy, x.shape, k, s, p, ceil, cip, dov),
                 xt.grad.numpy(), 1e-12)


@pytest.mark.parametrize("s, p, op, d, g", [
    (1, 0, 0, 1, 1), (2, 1, 1, 1, 1), (3, 2, 2, 1, 2), (2, 0, 1, 2, 1), (1, 1, 0, 2, 2)])
def test_conv_and_transpose_match_torch(rng, s, p, op, d, g):
    x = rand(rng, (2, 4, 7, 6))
    w = rand(rng, (6, 4 // g, 3, 2))
    b = rand(rng, (6,))
    assert_close(convgpu.conv2d(x, w, b, s, p, d, g),
                 F.conv2d(*(torch.from_numpy(a) for a in (x, w, b)), s, p, d, g).numpy(), 1e-12)
    wt = rand(rng, (4, 6 // g, 3, 2))
    bt = rand(rng, (6,))
    if op < max(s, d):
        assert_close(convgpu.conv_transpose2d(x, wt, bt, s, p, op, g, d),
                     F.conv_transpose2d(*(torch.from_numpy(a) for a in (x, wt, bt)), s, p, op,
                                        g, d).numpy(), 1e-12)


@pytest.mark.filterwarnings("ignore:Using padding='same'")
@pytest.mark.parametrize("k, d, g", [(3, 1, 1), (4, 1, 1), ((4, 3), (1, 2), 2), ((2, 5), (3, 1), 1)])
def test_conv_padding_strings_match_torch(rng, k, d, g):
    x, w = rand(rng, (2, 4, 9, 8)), rand(rng, (6, 4 // g) + ((k, k) if isinstance(k, int) else k))
    for padding in ("same", "valid"):
        y = convgpu.conv2d(x, w, padding=padding, dilation=d, groups=g)
        yt = F.conv2d(torch.from_numpy(x), torch.from_numpy(w), padding=padding, dilation=d,
                      groups=g)
        assert_close(y, yt.numpy(), 1e-12)


def test_torch_cpu_tensors_round_trip(rng):
    x = torch.from_numpy(rand(rng, (2, 3, 8, 8), np.float32))
    w = torch.from_numpy(rand(rng, (4, 3, 3, 3), np.float32))
    y = convgpu.conv2d(x, w, padding=1)
    assert isinstance(y, torch.Tensor) and y.dtype == torch.float32
    assert_close(y.numpy(), F.conv2d(x.double(), w.double(), padding=1).numpy(), 1e-5)
    yp, i = convgpu.max_pool2d(x.permute(0, 1, 3, 2), 2, return_indices=True)   # non-contiguous
    assert isinstance(i, torch.Tensor) and i.dtype == torch.int64
    with pytest.raises(TypeError, match="torch-cpu"):
        convgpu.conv2d(x, w.numpy())


@pytest.mark.parametrize("wd", [0.0, 0.01])
def test_adam_step_matches_torch_optim_adam(rng, wd):
    """Four adam_step calls (in place, float64) against torch.optim.Adam fed the same
    gradients: parameter and both moment estimates."""
    p0 = rand(rng, (7, 5))
    grads = [rand(rng, (7, 5)) for _ in range(4)]
    kw = dict(lr=0.05, betas=(0.8, 0.99), eps=1e-6, weight_decay=wd)
    pt = torch.tensor(p0.copy(), requires_grad=True)
    opt = torch.optim.Adam([pt], **kw)
    p, m, v = p0.copy(), np.zeros_like(p0), np.zeros_like(p0)
    for step, g in enumerate(grads, 1):
        pt.grad = torch.from_numpy(g.copy())
        opt.step()
        assert convgpu.adam_step(p, g, m, v, step, lr=kw["lr"], beta1=0.8, beta2=0.99,
                                 eps=1e-6, weight_decay=wd) is None
    st = opt.state[pt]
    assert_close(p, pt.detach().numpy(), 1e-12)
    assert_close(m, st["exp_avg"].numpy(), 1e-12)
    assert_close(v, st["exp_avg_sq"].numpy(), 1e-12)


@pytest.mark.parametrize("momentum, wd", [(0.0, 0.0), (0.9, 0.0), (0.9, 0.01)])
def test_sgd_step_matches_torch_optim_sgd(rng, momentum, wd):
    p0 = rand(rng, (6, 4))
    grads = [rand(rng, (6, 4)) for _ in range(3)]
    pt = torch.tensor(p0.copy(), requires_grad=True)
    opt = torch.optim.SGD([pt], lr=0.1, momentum=momentum, weight_decay=wd)
    p, buf = p0.copy(), (np.zeros_like(p0) if momentum else None)
    for g in grads:
        pt.grad = torch.from_numpy(g.copy())
        opt.step()
        convgpu.sgd_step(p, g, buf, lr=0.1, momentum=momentum, weight_decay=wd)
    assert_close(p, pt.detach().numpy(), 1e-12)
    if momentum:
        assert_close(buf, opt.state[pt]["momentum_buffer"].numpy(), 1e-12)


def test_optimiser_steps_update_torch_tensors_in_place(rng):
    p = torch.from_numpy(rand(rng, (3, 4)).astype(np.float32))
    before = p.clone()
    m, v = torch.zeros_like(p), torch.zeros_like(p)
    g = torch.from_numpy(rand(rng, (3, 4)).astype(np.float32))
    convgpu.adam_step(p, g, m, v, 1, lr=0.1)
    assert not torch.equal(p, before) and torch.count_nonzero(m) == 12


@pytest.mark.parametrize("shape", [(4, 3, 5, 6), (6, 5), (3, 2, 9), (2, 3, 2, 3, 2)])
@pytest.mark.parametrize("training", [True, False])
def test_batch_norm_matches_torch(rng, shape, training):
    """F.batch_norm's output, running estimates (momentum 0.3) and gradients (autograd) for
    x, weight and bias."""
    C = shape[1]
    x, gy = rand(rng, shape) * 2 + 3, rand(rng, shape)
    w, b, rm = rand(rng, (C,)), rand(rng, (C,)), rand(rng, (C,))
    rv = rng.uniform(0.5, 2.0, C)
    rm_t, rv_t = torch.from_numpy(rm.copy()), torch.from_numpy(rv.copy())
    xt, wt, bt = (torch.from_numpy(a).requires_grad_() for a in (x, w, b))
    yt = F.batch_norm(xt, rm_t, rv_t, wt, bt, training, 0.3, 1e-4)
    yt.backward(torch.from_numpy(gy))
    y, mean, invstd = convgpu.batch_norm(x, rm, rv, w, b, training, 0.3, 1e-4, return_stats=True)
    gx, gw, gb = convgpu.batch_norm_backward(gy, x, mean, invstd, w, training)
    for got, want in [(y, yt), (rm, rm_t), (rv, rv_t), (gx, xt.grad), (gw, wt.grad),
                      (gb, bt.grad)]:
        assert_close(got, want.detach().numpy(), 1e-12)


def test_batch_norm_refuses_what_torch_refuses():
    one = np.ones((1, 3, 1, 1))
    with pytest.raises(ValueError):
        F.batch_norm(torch.from_numpy(one), None, None, training=True)
    with pytest.raises(ValueError, match="more than one value per channel"):
        convgpu.batch_norm(one, None, None, training=True)
    with pytest.raises(RuntimeError, match="running_mean must be defined"):
        F.batch_norm(torch.from_numpy(one), None, None, training=False)
    with pytest.raises(ValueError, match="running_mean and running_var; they are None"):
        convgpu.batch_norm(one, None, None, training=False)


@pytest.mark.parametrize("shape, out", [((2, 3, 7, 5), (3, 2)), ((1, 2, 5, 6), (9, 11)),
                                        ((2, 2, 13, 13), 6), ((1, 3, 7, 9), (None, 4)),
                                        ((3, 11, 10), (4, 3)), ((2, 3, 7, 5), (0, 2))])
def test_adaptive_avg_pool_matches_torch(rng, shape, out):
    x = rand(rng, shape)
    xt = torch.from_numpy(x).requires_grad_()
    yt = F.adaptive_avg_pool2d(xt, out)
    y = convgpu.adaptive_avg_pool2d(x, out)
    assert y.shape == tuple(yt.shape)
    if y.size:
        assert_close(y, yt.detach().numpy(), 1e-12)
        gy = rand(rng, y.shape)
        yt.backward(torch.from_numpy(gy))
        assert_close(convgpu.adaptive_avg_pool2d_backward(gy, shape), xt.grad.numpy(), 1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", AVGP_EDGES)
def test_avg_pool_divisor_edges_match_torch(rng, case, dtype):
    check_avg_pool_edge(rng, "numpy", case, dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", ADAPTIVE_EDGES)
def test_adaptive_avg_pool_uneven_matches_torch(rng, case, dtype):
    check_adaptive_edge(rng, "numpy", case, dtype)


@pytest.mark.parametrize("case", SAME_EDGES)
def test_padding_same_odd_total_matches_torch(rng, case):
    check_same_edge(rng, "numpy", case)
