"""Simulator tier, half precision: every Numba implementation registered for float16 (the
elementwise ops, pooling, the direct convolutions: float16 data, float32 sums) through the
test bodies of tests/half_checks.py, against the float64 reference rounded once at the
derived bound; and every Numba implementation refusing bfloat16 (Numba CUDA has no
bfloat16 type) with one ValueError that names it, before any launch."""
import numpy as np
import pytest

import convgpu
from convgpu.ops._registry import all_impls
from half_checks import (CONV_CASES, check_avg_pool2d, check_conv2d, check_conv2d_backward,
                         check_conv2d_backward_bias, check_elementwise,
                         check_global_and_adaptive, check_max_pool2d, check_optim, half,
                         impl_params)
from helpers import AVGP_SMALL, MAXP_SMALL

BF16 = np.dtype("bfloat16")


@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: str(c[:7]))
@pytest.mark.parametrize("dtype, backend, algo", impl_params("conv2d"))
def test_conv2d(rng, dtype, backend, algo, case, monkeypatch):
    check_conv2d(rng, dtype, backend, algo, case, monkeypatch)


@pytest.mark.parametrize("case", CONV_CASES[:2], ids=lambda c: str(c[:7]))
@pytest.mark.parametrize("dtype, backend, algo", impl_params("conv2d_backward_input"))
def test_conv2d_backward_input(rng, dtype, backend, algo, case, monkeypatch):
    check_conv2d_backward(rng, dtype, backend, algo, case, "input", monkeypatch)


@pytest.mark.parametrize("case", CONV_CASES[:2], ids=lambda c: str(c[:7]))
@pytest.mark.parametrize("dtype, backend, algo", impl_params("conv2d_backward_weight"))
def test_conv2d_backward_weight(rng, dtype, backend, algo, case, monkeypatch):
    check_conv2d_backward(rng, dtype, backend, algo, case, "weight", monkeypatch)


@pytest.mark.parametrize("dtype, backend, algo", impl_params("conv2d_backward_bias"))
def test_conv2d_backward_bias(rng, dtype, backend, algo, monkeypatch):
    check_conv2d_backward_bias(rng, dtype, backend, algo, monkeypatch)


@pytest.mark.parametrize("case", MAXP_SMALL[:3], ids=lambda c: str(c[:5]))
@pytest.mark.parametrize("dtype, backend, algo", impl_params("max_pool2d"))
def test_max_pool2d(rng, dtype, backend, algo, case, monkeypatch):
    check_max_pool2d(rng, dtype, backend, algo, case, monkeypatch)


@pytest.mark.parametrize("case", AVGP_SMALL[:3], ids=lambda c: str(c[:5]))
@pytest.mark.parametrize("dtype, backend, algo", impl_params("avg_pool2d"))
def test_avg_pool2d(rng, dtype, backend, algo, case, monkeypatch):
    check_avg_pool2d(rng, dtype, backend, case, monkeypatch)


@pytest.mark.parametrize("dtype, backend, algo", impl_params("adaptive_avg_pool2d"))
def test_global_and_adaptive_pool(rng, dtype, backend, algo, monkeypatch):
    check_global_and_adaptive(rng, dtype, backend, monkeypatch)


@pytest.mark.parametrize("dtype, backend, algo", impl_params("relu"))
def test_elementwise(rng, dtype, backend, algo, monkeypatch):
    check_elementwise(rng, dtype, backend, monkeypatch)


@pytest.mark.parametrize("dtype, backend, algo", impl_params("adam_step"))
def test_optimiser_steps(rng, dtype, backend, algo, monkeypatch):
    check_optim(rng, dtype, backend, monkeypatch)


def test_float16_plane_walk_declines_and_the_gather_serves(rng):
    """The plane walk adds into its float16 output in place (a rounding per add): it is not
    registered for float16, so without the geometry no numba implementation serves it."""
    x = half(rng, (1, 2, 6, 6), np.float16)
    y, idx = convgpu.max_pool2d(x, 2, return_indices=True, backend="numba")
    with pytest.raises(ValueError, match="max_pool2d_backward numba:plane serves float32, "
                       "float64; not float16"):
        convgpu.max_pool2d_backward(y, idx, x.shape, backend="numba", algo="plane")
    gx = convgpu.max_pool2d_backward(y, idx, x.shape, 2, backend="numba")
    assert gx.dtype == np.float16


@pytest.mark.parametrize("op", ["conv2d", "relu", "max_pool2d", "batch_norm", "linear"])
def test_no_numba_implementation_serves_bfloat16(rng, op):
    assert all("bfloat16" not in i.dtypes for i in all_impls(op) if i.backend == "numba")
    x = half(rng, (1, 2, 6, 6), BF16)
    call = {"conv2d": lambda: convgpu.conv2d(x, half(rng, (2, 2, 3, 3), BF16),
                                             backend="numba", algo="direct"),
            "relu": lambda: convgpu.relu(x, backend="numba"),
            "max_pool2d": lambda: convgpu.max_pool2d(x, 2, backend="numba", algo="direct"),
            "batch_norm": lambda: convgpu.batch_norm(x, None, None, training=True,
                                                     backend="numba"),
            "linear": lambda: convgpu.linear(x[0, 0], half(rng, (3, 6), BF16),
                                             backend="numba")}[op]
    with pytest.raises(ValueError, match=f"{op} numba:[a-z_]+ serves float.*; not bfloat16"):
        call()


def _half_boundary_margin(v):
    """How far each float64 value lies from the nearest midpoint between neighbouring
    float16 values (where its rounding would flip), relative to the value."""
    h = v.astype(np.float16)
    up = np.nextafter(h, np.float16(np.inf)).astype(np.float64)
    down = np.nextafter(h, np.float16(-np.inf)).astype(np.float64)
    hv = h.astype(np.float64)
    mid = np.minimum(abs(v - (hv + up) / 2), abs(v - (hv + down) / 2))
    return mid / abs(v)


def test_float16_xent_backward_scales_before_its_one_rounding():
    """The Numba cross-entropy gradient times grad_output, rounded once to float16: the
    product taken after a float16 store rounds twice and differs on these inputs (uniform
    rows of 7 and 5 classes: p = 1/7, 1/5; grad_output 1.7). The numba row kernels serve
    float32 and float64 through the op API (not float16), so the launcher is called here
    the way ops/loss.py calls it."""
    from convgpu.ops.loss import XentArgs, _numba_xent_backward
    for n, c, label in ((1, 7, 0), (2, 5, 3)):
        z = np.zeros((n, c), np.float16)
        t = np.full(n, label, np.int64)
        scale = np.array(1.7, np.float16)
        q = np.full((n, c), 1.0 / c)
        q[:, label] -= 1
        exact = q / n * float(scale)
        assert _half_boundary_margin(exact).min() > 1e-4      # far from a rounding flip
        once = exact.astype(np.float16)
        twice = ((q / n).astype(np.float16).astype(np.float64) * float(scale)).astype(np.float16)
        assert (once != twice).sum() >= c - 1                 # the test can fail
        g = _numba_xent_backward(XentArgs(n, c, "mean", False, None, 0.0), z, t, None, scale)
        assert g.dtype == np.float16
        np.testing.assert_array_equal(g, once)
