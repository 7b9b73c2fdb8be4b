"""The fused optimiser steps (adam_step, sgd_step: in place) on every backend
(tests/ops/conftest.py), three steps with weight decay from non-zero moment buffers,
against torch.optim.Adam and SGD stepping float64 copies from the same state; under the
host emulation each thread order from the same start, bitwise equal (both_orders would
apply a step twice)."""
import numpy as np
import pytest

import convgpu
from helpers import ORDERS, TOL, assert_close, rand

ADAM = dict(lr=0.1, beta1=0.8, beta2=0.99, eps=1e-6, weight_decay=0.01)
SGD = dict(lr=0.1, momentum=0.9, weight_decay=0.01)


def torch_steps(p0, g, m0, v0, steps):
    """(p, m, v) after Adam's and (q, b) after SGD's `steps` steps from p0 with gradient g,
    the moments starting at m0 and v0 (SGD's buffer at m0): torch.optim in float64."""
    torch = pytest.importorskip("torch")
    t = lambda a: torch.tensor(a, dtype=torch.float64)            # noqa: E731
    p, q = t(p0), t(p0)
    adam = torch.optim.Adam([p], lr=ADAM["lr"], betas=(ADAM["beta1"], ADAM["beta2"]),
                            eps=ADAM["eps"], weight_decay=ADAM["weight_decay"], foreach=False)
    adam.state[p] = {"step": torch.tensor(0.0), "exp_avg": t(m0), "exp_avg_sq": t(v0)}
    sgd = torch.optim.SGD([q], lr=SGD["lr"], momentum=SGD["momentum"],
                          weight_decay=SGD["weight_decay"], foreach=False)
    sgd.state[q] = {"momentum_buffer": t(m0)}
    for _ in range(steps):
        p.grad, q.grad = t(g), t(g)
        adam.step()
        sgd.step()
    return (p.numpy(), adam.state[p]["exp_avg"].numpy(), adam.state[p]["exp_avg_sq"].numpy(),
            q.numpy(), sgd.state[q]["momentum_buffer"].numpy())


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fused_optimiser_steps(rng, backend, dtype):
    shape = (37, 29)                                   # 1073 elements: a partial block
    p0, g, m0 = (rand(rng, shape) for _ in range(3))
    v0 = np.abs(rand(rng, shape))
    want = torch_steps(p0, g, m0, v0, 3)
    results = []
    for order in ORDERS if backend == "cuda" else [None]:
        p, m, v = (a.astype(dtype) for a in (p0, m0, v0))
        b, q = m0.astype(dtype), p0.astype(dtype)
        with _order(order):
            for step in (1, 2, 3):
                convgpu.adam_step(p, g.astype(dtype), m, v, step, **ADAM, backend=backend)
                convgpu.sgd_step(q, g.astype(dtype), b, **SGD, backend=backend)
        results.append((p, m, v, q, b))
    for got in results:
        for a, w in zip(got, want, strict=True):
            assert a.dtype == dtype
            assert_close(a, w, TOL[dtype])
    for a, b in zip(results[0], results[-1], strict=True):
        assert np.array_equal(a, b)
    p = p0.astype(dtype)
    convgpu.sgd_step(p, g.astype(dtype), lr=0.5, backend=backend)     # no momentum buffer
    assert_close(p, p0 - 0.5 * g, TOL[dtype])


def _order(which):
    import contextlib
    if which is None:
        return contextlib.nullcontext()
    from convgpu.kernels.cuda.emulator import cuda_host
    return cuda_host.order(which)
