"""GPU tier of the float16 / bfloat16 kernels that are not the tensor-core GEMMs (`pytest -m
gpu`, skipped without a CUDA GPU): tests/half_checks.py's bodies, the emulation tier's
(test_half.py), on the device. Every device implementation (cuda; numba where it serves
float16) of pooling, batch norm (both layouts, parameters in float32 or the half type), relu,
bias add, the bias gradient, linear, cross-entropy, the optimiser steps and the direct and
depthwise convolutions, each op on device arrays, at the same bounds against the float64
reference; and the NHWC pooling kernels bitwise the NCHW ones transposed, on the device.
test_gpu_half.py covers the implicit-GEMM and GEMM kernels from their launchers.

The arrays cross as CuPy arrays (bfloat16 as ml_dtypes' dtype: CuPy 14, as test_gpu_half.py);
tests/test_stand_in_device.py runs this file's code on the stand-in device without a GPU."""
import inspect

import numpy as np
import pytest

pytestmark = pytest.mark.gpu

from gpu_gate import cupy_with_a_gpu  # noqa: E402

cupy = cupy_with_a_gpu()

import half_checks  # noqa: E402
from half_checks import (CONV_CASES, check_avg_pool2d, check_batch_norm, check_conv2d,  # noqa: E402
                         check_conv2d_backward, check_conv2d_backward_bias, check_elementwise,
                         check_global_and_adaptive, check_linear, check_max_pool2d,
                         check_optim, check_xent, conv_impl_params, distinct_planes, f64, half,
                         impl_params)
from helpers import AVGP_SMALL, MAXP_SMALL  # noqa: E402

import convgpu  # noqa: E402

STAND_IN = getattr(cupy, "STAND_IN", False)
DEVICE_BACKENDS = ("cuda",) if STAND_IN else ("cuda", "numba")


def on_device(impl):
    """The implementations this tier runs: the device backends' (tensor-core kernels and
    algo="transpose" excepted: test_gpu_half.py, and the NCHW kernels it copies through)."""
    return impl.backend in DEVICE_BACKENDS and "mma16" not in impl.algo \
        and impl.algo != "transpose"


def device_run(op, backend, algo, *args, monkeypatch=None, **kw):
    """half_checks.run on the device: array arguments copied there as CuPy arrays; results
    copied back, and so are the arguments an op updates in place (running estimates,
    optimiser state)."""
    fn = getattr(convgpu, op)
    if algo is not None and "algo" in inspect.signature(fn).parameters:
        kw["algo"] = algo
    dev = [cupy.asarray(a) if isinstance(a, np.ndarray) else a for a in args]
    out = fn(*dev, backend=backend, **kw)
    for a, d in zip(args, dev):
        if isinstance(a, np.ndarray):
            a[...] = cupy.asnumpy(d)
    host = lambda o: cupy.asnumpy(o) if isinstance(o, cupy.ndarray) else o   # noqa: E731
    return tuple(map(host, out)) if isinstance(out, tuple) else host(out)


@pytest.fixture(autouse=True)
def device(monkeypatch):
    monkeypatch.setenv("CONVGPU_POISON", "1")      # outputs start as NaN
    monkeypatch.setattr(half_checks, "run", device_run)


def _params(op):
    return impl_params(op, on_device)


@pytest.mark.parametrize("case", MAXP_SMALL[:3], ids=lambda c: str(c[:5]))
@pytest.mark.parametrize("dtype, backend, algo", _params("max_pool2d"))
def test_max_pool2d(rng, dtype, backend, algo, case, monkeypatch):
    check_max_pool2d(rng, dtype, backend, algo, case, monkeypatch)


@pytest.mark.parametrize("case", AVGP_SMALL[:3], ids=lambda c: str(c[:5]))
@pytest.mark.parametrize("dtype, backend, algo", _params("avg_pool2d"))
def test_avg_pool2d(rng, dtype, backend, algo, case, monkeypatch):
    check_avg_pool2d(rng, dtype, backend, case, monkeypatch)


@pytest.mark.parametrize("dtype, backend, algo", _params("adaptive_avg_pool2d"))
def test_global_and_adaptive_pool(rng, dtype, backend, algo, monkeypatch):
    check_global_and_adaptive(rng, dtype, backend, monkeypatch)


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("params", ["float32", "half"])
@pytest.mark.parametrize("dtype, backend, algo", _params("batch_norm"))
def test_batch_norm(rng, dtype, backend, algo, params, layout, monkeypatch):
    check_batch_norm(rng, dtype, backend, np.float32 if params == "float32" else dtype,
                     monkeypatch, layout=layout)


@pytest.mark.parametrize("dtype, backend, algo", _params("relu"))
def test_elementwise(rng, dtype, backend, algo, monkeypatch):
    check_elementwise(rng, dtype, backend, monkeypatch)


@pytest.mark.parametrize("dtype, backend, algo", _params("conv2d_backward_bias"))
def test_conv2d_backward_bias(rng, dtype, backend, algo, monkeypatch):
    check_conv2d_backward_bias(rng, dtype, backend, algo, monkeypatch)


@pytest.mark.parametrize("dtype, backend, algo", _params("linear"))
def test_linear(rng, dtype, backend, algo, monkeypatch):
    check_linear(rng, dtype, backend, algo, monkeypatch)


@pytest.mark.parametrize("dtype, backend, algo", _params("softmax_cross_entropy"))
def test_cross_entropy(rng, dtype, backend, algo, monkeypatch):
    check_xent(rng, dtype, backend, algo, monkeypatch)


@pytest.mark.parametrize("dtype, backend, algo", _params("adam_step"))
def test_optimiser_steps(rng, dtype, backend, algo, monkeypatch):
    check_optim(rng, dtype, backend, monkeypatch)


@pytest.mark.parametrize("dtype, backend, algo, case",
                         conv_impl_params("conv2d", CONV_CASES, on_device))
def test_conv2d(rng, dtype, backend, algo, case, monkeypatch):
    check_conv2d(rng, dtype, backend, algo, case, monkeypatch)


@pytest.mark.parametrize("dtype, backend, algo, case",
                         conv_impl_params("conv2d_backward_input", CONV_CASES, on_device))
def test_conv2d_backward_input(rng, dtype, backend, algo, case, monkeypatch):
    check_conv2d_backward(rng, dtype, backend, algo, case, "input", monkeypatch)


@pytest.mark.parametrize("dtype, backend, algo, case",
                         conv_impl_params("conv2d_backward_weight", CONV_CASES, on_device))
def test_conv2d_backward_weight(rng, dtype, backend, algo, case, monkeypatch):
    check_conv2d_backward(rng, dtype, backend, algo, case, "weight", monkeypatch)


@pytest.mark.parametrize("dtype", [p.values[0] for p in half_checks.HALF],
                         ids=["float16", "bfloat16"])
def test_nhwc_pooling_is_the_nchw_kernels_transposed(rng, dtype):
    """pool_nhwc.cu sums each window in pool.cu's order, in FP32, rounding once: bitwise
    the NCHW kernels' results transposed, forward and the gathers, on the device."""
    x = distinct_planes(rng, (2, 24, 9, 11), dtype)
    gy = half(rng, (2, 24, 5, 6), dtype)
    t = lambda a: np.ascontiguousarray(a.transpose(0, 2, 3, 1))     # noqa: E731
    run = half_checks.run
    kw = dict(kernel_size=3, stride=2, padding=1)
    y, idx = run("max_pool2d", "cuda", None, x, **kw, return_indices=True)
    yn, idxn = run("max_pool2d", "cuda", "direct_nhwc", t(x), **kw, return_indices=True,
                   layout="NHWC")
    assert np.array_equal(f64(yn), f64(t(y))) and np.array_equal(idxn, t(idx))
    g = run("max_pool2d_backward", "cuda", None, gy, idx, x.shape, **kw)
    gn = run("max_pool2d_backward", "cuda", "gather_nhwc", t(gy), idxn, t(x).shape, **kw,
             layout="NHWC")
    assert np.array_equal(f64(gn), f64(t(g)))
    a = run("avg_pool2d", "cuda", None, x, **kw)
    an = run("avg_pool2d", "cuda", "direct_nhwc", t(x), **kw, layout="NHWC")
    assert np.array_equal(f64(an), f64(t(a)))
    ga = run("avg_pool2d_backward", "cuda", None, gy, x.shape, **kw)
    gan = run("avg_pool2d_backward", "cuda", "gather_nhwc", t(gy), t(x).shape, **kw,
              layout="NHWC")
    assert np.array_equal(f64(gan), f64(t(ga)))
    ad = run("adaptive_avg_pool2d", "cuda", None, x, (4, 5))
    adn = run("adaptive_avg_pool2d", "cuda", "direct_nhwc", t(x), (4, 5), layout="NHWC")
    assert np.array_equal(f64(adn), f64(t(ad)))
