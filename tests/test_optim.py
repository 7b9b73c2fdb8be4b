"""The optimiser-step ops (adam_step, sgd_step) on the numpy backend: in place, float32
stays float32, argument errors before any launch; nn.Adam / nn.SGD over them. (torch.optim
as the oracle: tests/test_torch_oracle.py; the fused kernels: the simulator, host-emulation
and gpu tiers.)"""
import numpy as np
import pytest

import convgpu
from convgpu import reference as R
from convgpu.nn import SGD, Adam, Parameter
from helpers import assert_close, rand


def _state(rng, dt=np.float32, shape=(5, 6)):
    return [rand(rng, shape).astype(dt) for _ in range(3)] + \
        [np.abs(rand(rng, shape)).astype(dt)]


@pytest.mark.parametrize("dt", [np.float32, np.float64])
def test_adam_step_in_place_keeps_dtype_and_buffers(rng, dt):
    p, g, m, v = _state(rng, dt)
    ids = [a.__array_interface__["data"][0] for a in (p, m, v)]
    want = R.adam_step(p.astype(np.float64), g.astype(np.float64), m.astype(np.float64),
                       v.astype(np.float64), 2, 0.1, 0.9, 0.999, 1e-8, 0.01)
    convgpu.adam_step(p, g, m, v, 2, lr=0.1, weight_decay=0.01)
    assert [a.__array_interface__["data"][0] for a in (p, m, v)] == ids
    for got, w in zip((p, m, v), want, strict=True):
        assert got.dtype == dt
        assert_close(got, w, 1e-6 if dt == np.float32 else 1e-12)


def test_sgd_step_without_momentum_needs_no_buffer(rng):
    p, g = rand(rng, (4, 3)), rand(rng, (4, 3))
    want = p - 0.5 * g
    convgpu.sgd_step(p, g, lr=0.5)
    assert_close(p, want, 1e-12)


@pytest.mark.parametrize("call, exc, words", [
    (lambda p, g, m, v: convgpu.adam_step(p, g[:, :3], m, v, 1), ValueError, ["grad", "shape"]),
    (lambda p, g, m, v: convgpu.adam_step(p, g.astype(np.float64), m, v, 1), TypeError,
     ["float64", "float32"]),
    (lambda p, g, m, v: convgpu.adam_step(p.astype(np.int32), g, m, v, 1), TypeError,
     ["param", "int32"]),
    (lambda p, g, m, v: convgpu.adam_step(p[:, ::2], g[:, ::2], m[:, ::2], v[:, ::2], 1),
     ValueError, ["param", "in place", "contiguous"]),
    (lambda p, g, m, v: convgpu.adam_step(p, g, m, v, 0), ValueError, ["step", ">= 1"]),
    (lambda p, g, m, v: convgpu.adam_step(p, g, m, v, 1.0), ValueError, ["step"]),
    (lambda p, g, m, v: convgpu.adam_step(p, g, m, v, 1, lr=-1.0), ValueError, ["lr"]),
    (lambda p, g, m, v: convgpu.adam_step(p, g, m, v, 1, beta1=1.0), ValueError, ["beta1"]),
    (lambda p, g, m, v: convgpu.adam_step(p, g, m, v, 1, eps=0.0), ValueError, ["eps"]),
    (lambda p, g, m, v: convgpu.adam_step(p, g, m, v, 1, lr=float("nan")), TypeError, ["lr"]),
    (lambda p, g, m, v: convgpu.adam_step(p, g, m, [0.0], 1), TypeError, ["exp_avg_sq"]),
    (lambda p, g, m, v: convgpu.sgd_step(p, g, lr=0.1, momentum=0.9), ValueError,
     ["momentum_buffer"]),
    (lambda p, g, m, v: convgpu.sgd_step(p, g, m[:4], lr=0.1, momentum=0.9), ValueError,
     ["momentum_buffer", "shape"]),
])
def test_optimiser_step_errors(rng, call, exc, words):
    p, g, m, v = _state(rng)
    before = [a.copy() for a in (p, m, v)]
    with pytest.raises(exc) as e:
        call(p, g, m, v)
    for w in words:
        assert w in str(e.value), (w, str(e.value))
    for a, b in zip((p, m, v), before, strict=True):            # nothing was written
        np.testing.assert_array_equal(a, b)


def test_read_only_state_is_refused(rng):
    p, g, m, v = _state(rng)
    m.flags.writeable = False
    with pytest.raises(ValueError, match="exp_avg.*writable"):
        convgpu.adam_step(p, g, m, v, 1)


@pytest.mark.parametrize("make", [lambda ps: Adam(ps, lr=0.05, weight_decay=0.01),
                                  lambda ps: SGD(ps, lr=0.1, momentum=0.9, weight_decay=0.01)])
def test_nn_optimisers_update_parameters_in_place_as_the_reference(rng, make):
    w = Parameter(rand(rng, (4, 5)).astype(np.float32))
    data = w.data
    opt = make([w])
    ref_p = w.data.astype(np.float64)
    ref_s = [np.zeros_like(ref_p), np.zeros_like(ref_p)]
    for step in range(1, 4):
        w.grad = rand(rng, (4, 5)).astype(np.float32)
        opt.step()
        g = w.grad.astype(np.float64)
        if isinstance(opt, Adam):
            ref_p, ref_s[0], ref_s[1] = R.adam_step(ref_p, g, ref_s[0], ref_s[1], step, 0.05,
                                                    0.9, 0.999, 1e-8, 0.01)
        else:
            ref_p, ref_s[0] = R.sgd_step(ref_p, g, ref_s[0], 0.1, 0.9, 0.01)
    assert w.data is data                      # updated in place
    assert_close(w.data, ref_p, 1e-5)


@pytest.mark.parametrize("op", ["adam_step", "sgd_step"])
def test_in_place_ops_have_one_implementation_per_backend(op):
    """On a device, dispatch times every implementation that supports a call (autotuning);
    for an in-place step each timed call would apply the step again, so each backend must
    offer exactly one."""
    from convgpu.ops._registry import all_impls
    backends = [i.backend for i in all_impls(op)]
    assert sorted(backends) == sorted(set(backends)) == ["cuda", "numba", "numpy"]


def test_reference_steps_match_a_scalar_loop(rng):
    """reference.adam_step / sgd_step against the algorithms written element by element in
    Python floats (Kingma & Ba, Algorithm 1, with L2 decay added to the gradient; torch's
    SGD with momentum), over three steps. (torch.optim is the second oracle where torch is
    installed: tests/test_torch_oracle.py.)"""
    import math
    p0, m0 = rand(rng, (3, 4)), np.zeros((3, 4))
    grads = [rand(rng, (3, 4)) for _ in range(3)]
    lr, b1, b2, eps, wd, mu = 0.05, 0.8, 0.99, 1e-6, 0.01, 0.9
    p, m, v = p0.copy(), m0.copy(), m0.copy()
    q, buf = p0.copy(), m0.copy()
    for t, g in enumerate(grads, 1):
        p, m, v = R.adam_step(p, g, m, v, t, lr, b1, b2, eps, wd)
        q, buf = R.sgd_step(q, g, buf, lr, mu, wd)
    for idx in np.ndindex(p0.shape):
        theta, mt, vt = float(p0[idx]), 0.0, 0.0
        w, b = float(p0[idx]), 0.0
        for t, g in enumerate(grads, 1):
            gt = float(g[idx]) + wd * theta
            mt = b1 * mt + (1 - b1) * gt
            vt = b2 * vt + (1 - b2) * gt * gt
            theta -= lr * (mt / (1 - b1 ** t)) / (math.sqrt(vt / (1 - b2 ** t)) + eps)
            gs = float(g[idx]) + wd * w
            b = mu * b + gs
            w -= lr * b
        assert math.isclose(p[idx], theta, rel_tol=1e-12) and math.isclose(m[idx], mt, rel_tol=1e-12)
        assert math.isclose(v[idx], vt, rel_tol=1e-12)
        assert math.isclose(q[idx], w, rel_tol=1e-12) and math.isclose(buf[idx], b, rel_tol=1e-12)
