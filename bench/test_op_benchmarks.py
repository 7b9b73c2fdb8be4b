"""pytest-benchmark: whole op calls from Python, launch overhead included, to track
regressions across commits:

    pytest bench --benchmark-only --benchmark-autosave
    pytest bench --benchmark-only --benchmark-compare

CPU backends always; GPU backends only where a GPU is visible (skipped otherwise). README's
test command does not run these."""
import numpy as np
import pytest

import convgpu

pytest.importorskip("pytest_benchmark")


def _gpu():
    try:
        import cupy
        return cupy if cupy.cuda.runtime.getDeviceCount() > 0 else None
    except Exception:
        return None


CP = _gpu()
BACKENDS = ["numpy"] + (["numba", "cuda"] if CP is not None else [])
CONV = {"lenet-c2": ((32, 6, 4, 4), (16, 6, 5, 5), 2), "resnet-3x3": ((4, 64, 28, 28), (64, 64, 3, 3), 1)}


def _arrays(backend, *arrays):
    return arrays if backend == "numpy" else tuple(CP.asarray(a) for a in arrays)


def _sync(backend):
    if backend != "numpy":
        CP.cuda.Device().synchronize()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", list(CONV))
def test_conv2d(benchmark, backend, shape):
    xs, ws, pad = CONV[shape]
    rng = np.random.default_rng(0)
    x, w = _arrays(backend, rng.standard_normal(xs).astype(np.float32),
                   rng.standard_normal(ws).astype(np.float32))
    be = "auto" if backend == "cuda" else backend

    def call():
        convgpu.conv2d(x, w, padding=pad, backend=be)
        _sync(backend)
    benchmark(call)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", list(CONV))
def test_conv2d_backward(benchmark, backend, shape):
    xs, ws, pad = CONV[shape]
    rng = np.random.default_rng(1)
    y = convgpu.conv2d(rng.standard_normal(xs).astype(np.float32),
                       rng.standard_normal(ws).astype(np.float32), padding=pad)
    x, w, gy = _arrays(backend, rng.standard_normal(xs).astype(np.float32),
                       rng.standard_normal(ws).astype(np.float32),
                       rng.standard_normal(y.shape).astype(np.float32))
    be = "auto" if backend == "cuda" else backend

    def call():
        convgpu.conv2d_backward_input(gy, w, xs, padding=pad, backend=be)
        convgpu.conv2d_backward_weight(x, gy, ws, padding=pad, backend=be)
        _sync(backend)
    benchmark(call)


@pytest.mark.parametrize("backend", BACKENDS)
def test_max_pool2d_forward_backward(benchmark, backend):
    rng = np.random.default_rng(2)
    (x,) = _arrays(backend, rng.standard_normal((8, 64, 56, 56)).astype(np.float32))
    be = "auto" if backend == "cuda" else backend

    def call():
        y, idx = convgpu.max_pool2d(x, 3, 2, 1, return_indices=True, backend=be)
        convgpu.max_pool2d_backward(y, idx, x.shape, 3, 2, 1, backend=be)
        _sync(backend)
    benchmark(call)


@pytest.mark.parametrize("backend", BACKENDS)
def test_linear(benchmark, backend):
    rng = np.random.default_rng(3)
    x, w = _arrays(backend, rng.standard_normal((256, 512)).astype(np.float32),
                   rng.standard_normal((128, 512)).astype(np.float32))
    be = "auto" if backend == "cuda" else backend

    def call():
        convgpu.linear(x, w, backend=be)
        _sync(backend)
    benchmark(call)


@pytest.mark.parametrize("backend", BACKENDS)
def test_batch_norm_forward_backward(benchmark, backend):
    rng = np.random.default_rng(4)
    x, gy, w, b = _arrays(backend, rng.standard_normal((8, 64, 56, 56)).astype(np.float32),
                          rng.standard_normal((8, 64, 56, 56)).astype(np.float32),
                          rng.standard_normal(64).astype(np.float32),
                          rng.standard_normal(64).astype(np.float32))
    rm, rv = _arrays(backend, np.zeros(64, np.float32), np.ones(64, np.float32))
    be = "auto" if backend == "cuda" else backend

    def call():
        y, mean, invstd = convgpu.batch_norm(x, rm, rv, w, b, True, return_stats=True,
                                             backend=be)
        convgpu.batch_norm_backward(gy, x, mean, invstd, w, True, backend=be)
        _sync(backend)
    benchmark(call)
