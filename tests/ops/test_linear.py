"""linear and its backward on every backend (tests/ops/conftest.py): GEMM tails (sizes
that fill no tile, one element, a long reduction), float32 and float64, each element within
the bound of its K-term dot product (docs/tolerances.md) of the products written out here
in float64; leading batch dimensions."""
import numpy as np
import pytest

import convgpu
from helpers import TOL, assert_bounded, assert_close, rand


def linear_oracle(x, w, b=None):
    y = np.einsum("...k,ok->...o", np.asarray(x, np.float64), np.asarray(w, np.float64))
    return y if b is None else y + b


def linear_backward_oracle(gy, x, w):
    """(gx, gw, gb) of y = x w^T + b."""
    return gy @ w, gy.T @ x, gy.sum(axis=0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("M, K, O", [(37, 19, 45), (1, 1, 1), (33, 17, 31), (5, 64, 3)])
def test_linear_and_backward(rng, backend, run, dtype, M, K, O):
    x, w, b = rand(rng, (M, K)), rand(rng, (O, K)), rand(rng, (O,))
    y = run(lambda: convgpu.linear(x.astype(dtype), w.astype(dtype), b.astype(dtype),
                                   backend=backend))
    assert y.dtype == dtype
    assert_bounded(y, linear_oracle(x, w, b), linear_oracle(abs(x), abs(w), abs(b)), K,
                   "gemm", dtype)
    gy = rand(rng, (M, O))
    got = run(lambda: convgpu.linear_backward(gy.astype(dtype), x.astype(dtype),
                                              w.astype(dtype), backend=backend))
    mags = linear_backward_oracle(abs(gy), abs(x), abs(w))
    for g, r, m, n in zip(got, linear_backward_oracle(gy, x, w), mags, (O, M, M), strict=True):
        assert g.dtype == dtype
        assert_bounded(g, r, m, n, "gemm", dtype)


def test_linear_batched_leading_dims(rng, backend, run):
    x, w = rand(rng, (2, 3, 7)), rand(rng, (4, 7))
    assert_close(run(lambda: convgpu.linear(x, w, backend=backend)), linear_oracle(x, w),
                 TOL[np.float64])
