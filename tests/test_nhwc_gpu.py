"""GPU tier for channels last (`pytest -m gpu`, skipped without a CUDA GPU): every device
implementation that serves layout="NHWC" (cuda and numba: the NHWC kernels and
algo="transpose") on CuPy arrays against the float64 reference, on ResNet-50's layer shapes
(batch 2) and odd ones; each run twice, bitwise equal (deterministic); torch CUDA
channels_last tensors through the ops. tests/test_gpu.py covers the NCHW implementations
(its registry walk lists those); this file the others.

On the stand-in device (CONVGPU_STAND_IN_DEVICE=1, tests/test_stand_in_device.py) the
cuda backend's tests run in the host emulation, a selection (-k) at a time."""
import os

import numpy as np
import pytest

pytestmark = pytest.mark.gpu

from gpu_gate import cupy_with_a_gpu  # noqa: E402

cupy = cupy_with_a_gpu()

os.environ["CONVGPU_POISON"] = "1"     # outputs start as NaN: unwritten elements fail

import convgpu  # noqa: E402
from convgpu import reference  # noqa: E402
from convgpu.ops._registry import all_impls  # noqa: E402
from helpers import TOL, assert_close, rand, shuffled_linspace  # noqa: E402

STAND_IN = getattr(cupy, "STAND_IN", False)
DEVICE_BACKENDS = ("cuda",) if STAND_IN else ("numba", "cuda")
TOL_TF32 = 2e-3


def nhwc(a):
    return np.ascontiguousarray(a.transpose(0, 2, 3, 1))


def nchw(a):
    return np.ascontiguousarray(a.transpose(0, 3, 1, 2))


def device_impls(op):
    """The device implementations serving NHWC in float32 or float64 (the half-only ones:
    tests/test_gpu_half.py)."""
    return [pytest.param(i.backend, i.algo, id=f"{i.backend}-{i.algo}")
            for i in all_impls(op, layout="NHWC") if i.backend in DEVICE_BACKENDS
            and {"float32", "float64"} & set(i.dtypes)]


def twice(fn):
    """fn() twice on the device: bitwise equal (no races, no atomics), as host arrays."""
    a, b = fn(), fn()
    a, b = (a if isinstance(a, tuple) else (a,)), (b if isinstance(b, tuple) else (b,))
    for u, v in zip(a, b):
        np.testing.assert_array_equal(cupy.asnumpy(u), cupy.asnumpy(v),
                                      err_msg="not deterministic")
    out = tuple(cupy.asnumpy(u) for u in a)
    return out if len(out) > 1 else out[0]


# (N, C, H, W, K, R, S, stride, padding, dilation, groups): ResNet-50 layers at batch 2
# (the 7x7 stem, 1x1 / 3x3 bottleneck convolutions, a strided 1x1 shortcut) and odd ones
CONV = [
    (2, 3, 224, 224, 64, 7, 7, (2, 2), (3, 3), (1, 1), 1),
    (2, 64, 56, 56, 64, 3, 3, (1, 1), (1, 1), (1, 1), 1),
    (2, 256, 56, 56, 128, 1, 1, (2, 2), (0, 0), (1, 1), 1),
    (2, 512, 7, 7, 2048, 1, 1, (1, 1), (0, 0), (1, 1), 1),
    (3, 30, 13, 11, 50, 3, 2, (2, 1), (1, 2), (2, 1), 5),
    (1, 7, 9, 10, 129, 3, 3, (1, 1), (3, 1), (2, 1), 1),
]


def _problem(rng, case, dtype):
    N, C, H, W, K, R, S, st, pd, dl, g = case
    x, w, b = rand(rng, (N, H, W, C)), rand(rng, (K, R, S, C // g)), rand(rng, (K,))
    kw = dict(stride=st, padding=pd, dilation=dl, groups=g)
    return (x, w, b), tuple(cupy.asarray(a.astype(dtype)) for a in (x, w, b)), kw


def _served(op, backend, algo, call):
    """call(), or None where the implementation declines the problem (the registry's
    sentence names it)."""
    try:
        return call()
    except ValueError as e:
        if f"({backend}, {algo}) cannot serve this call" in str(e):
            return None
        raise


def _tol(algo, dtype):
    return TOL_TF32 if "tf32" in algo else TOL[dtype]


@pytest.mark.parametrize("backend,algo", device_impls("conv2d"))
@pytest.mark.parametrize("case", CONV, ids=[f"conv{i}" for i in range(len(CONV))])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_conv_nhwc_on_the_device(rng, backend, algo, case, dtype):
    (x, w, b), (xd, wd, bd), kw = _problem(rng, case, dtype)
    tf32 = "tf32" in algo
    y = _served("conv2d", backend, algo, lambda: twice(lambda: convgpu.conv2d(
        xd, wd, bd, **kw, layout="NHWC", backend=backend, algo=algo, allow_tf32=tf32)))
    ref = convgpu.conv2d(x, w, b, **kw, layout="NHWC")
    if y is not None:
        assert_close(y, ref, _tol(algo, dtype))
    gy = rand(rng, ref.shape)
    gyd = cupy.asarray(gy.astype(dtype))
    gx = _served("conv2d_backward_input", backend, algo, lambda: twice(
        lambda: convgpu.conv2d_backward_input(gyd, wd, x.shape, **kw, layout="NHWC",
                                              backend=backend, algo=algo, allow_tf32=tf32)))
    if gx is not None:
        assert_close(gx, convgpu.conv2d_backward_input(gy, w, x.shape, **kw, layout="NHWC"),
                     _tol(algo, dtype))
    gw = _served("conv2d_backward_weight", backend, algo, lambda: twice(
        lambda: convgpu.conv2d_backward_weight(xd, gyd, w.shape, **kw, layout="NHWC",
                                               backend=backend, algo=algo, allow_tf32=tf32)))
    if gw is not None:
        assert_close(gw, convgpu.conv2d_backward_weight(x, gy, w.shape, **kw, layout="NHWC"),
                     _tol(algo, dtype))
    if "nhwc" in algo and dtype == np.float64:       # the NHWC kernels are float32
        assert (y, gx, gw) == (None, None, None)
    else:
        assert y is not None and gx is not None and gw is not None


POOL = [((2, 112, 112, 64), dict(kernel_size=3, stride=2, padding=1)),
        ((3, 13, 11, 37), dict(kernel_size=(3, 2), stride=(2, 1), padding=(1, 1),
                               ceil_mode=True))]


@pytest.mark.parametrize("backend,algo", device_impls("max_pool2d"))
@pytest.mark.parametrize("shape,kw", POOL, ids=["resnet", "odd"])
def test_max_pool_nhwc_on_the_device(rng, backend, algo, shape, kw):
    x = shuffled_linspace(rng, shape, np.float32)
    y, idx = twice(lambda: convgpu.max_pool2d(cupy.asarray(x), **kw, return_indices=True,
                                              layout="NHWC", backend=backend, algo=algo))
    y_ref, idx_ref = convgpu.max_pool2d(x, **kw, return_indices=True, layout="NHWC")
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(idx, idx_ref)


@pytest.mark.parametrize("backend,algo", device_impls("max_pool2d_backward"))
@pytest.mark.parametrize("shape,kw", POOL, ids=["resnet", "odd"])
def test_max_pool_backward_nhwc_on_the_device(rng, backend, algo, shape, kw):
    x = shuffled_linspace(rng, shape, np.float32)
    y, idx = convgpu.max_pool2d(x, **kw, return_indices=True, layout="NHWC")
    gy = rand(rng, y.shape, np.float32)
    gx = twice(lambda: convgpu.max_pool2d_backward(
        cupy.asarray(gy), cupy.asarray(idx), shape, **kw, layout="NHWC", backend=backend,
        algo=algo))
    assert_close(gx, convgpu.max_pool2d_backward(gy.astype(np.float64), idx, shape, **kw,
                                                 layout="NHWC"), TOL[np.float32])


@pytest.mark.parametrize("op", ["avg_pool2d", "avg_pool2d_backward"])
@pytest.mark.parametrize("shape,kw", POOL, ids=["resnet", "odd"])
def test_avg_pool_nhwc_on_the_device(rng, op, shape, kw):
    for backend, algo in [p.values for p in device_impls(op)]:
        if op == "avg_pool2d":
            x = rand(rng, shape, np.float32)
            got = twice(lambda: convgpu.avg_pool2d(cupy.asarray(x), **kw, layout="NHWC",
                                                   backend=backend, algo=algo))
            want = convgpu.avg_pool2d(x.astype(np.float64), **kw, layout="NHWC")
        else:
            gy = rand(rng, convgpu.avg_pool2d(np.zeros(shape), **kw, layout="NHWC").shape,
                      np.float32)
            got = twice(lambda: convgpu.avg_pool2d_backward(
                cupy.asarray(gy), shape, **kw, layout="NHWC", backend=backend, algo=algo))
            want = convgpu.avg_pool2d_backward(gy.astype(np.float64), shape, **kw,
                                               layout="NHWC")
        assert_close(got, want, TOL[np.float32])


@pytest.mark.parametrize("shape,out", [((2, 7, 7, 2048), (1, 1)), ((3, 13, 11, 37), (4, 5))],
                         ids=["resnet", "odd"])
def test_adaptive_and_global_nhwc_on_the_device(rng, shape, out):
    x = rand(rng, shape, np.float32)
    gy = rand(rng, (shape[0],) + out + (shape[3],), np.float32)
    g2 = rand(rng, (shape[0], shape[3]), np.float32)
    x64, gy64, g264 = (a.astype(np.float64) for a in (x, gy, g2))
    for op, call, want in (
            ("adaptive_avg_pool2d",
             lambda b, a: convgpu.adaptive_avg_pool2d(cupy.asarray(x), out, layout="NHWC",
                                                      backend=b, algo=a),
             convgpu.adaptive_avg_pool2d(x64, out, layout="NHWC")),
            ("adaptive_avg_pool2d_backward",
             lambda b, a: convgpu.adaptive_avg_pool2d_backward(cupy.asarray(gy), shape,
                                                               layout="NHWC", backend=b,
                                                               algo=a),
             convgpu.adaptive_avg_pool2d_backward(gy64, shape, layout="NHWC")),
            ("global_avg_pool2d",
             lambda b, a: convgpu.global_avg_pool2d(cupy.asarray(x), layout="NHWC", backend=b,
                                                    algo=a),
             convgpu.global_avg_pool2d(x64, layout="NHWC")),
            ("global_avg_pool2d_backward",
             lambda b, a: convgpu.global_avg_pool2d_backward(cupy.asarray(g2), shape,
                                                             layout="NHWC", backend=b, algo=a),
             convgpu.global_avg_pool2d_backward(g264, shape, layout="NHWC"))):
        for backend, algo in [p.values for p in device_impls(op)]:
            assert_close(twice(lambda: call(backend, algo)), want, TOL[np.float32])


@pytest.mark.parametrize("backend", DEVICE_BACKENDS)
@pytest.mark.parametrize("shape", [(2, 56, 56, 256), (3, 5, 7, 33)], ids=["resnet", "odd"])
@pytest.mark.parametrize("training", [True, False])
def test_batch_norm_nhwc_on_the_device(rng, backend, shape, training):
    C = shape[3]
    x = rand(rng, shape, np.float32) + np.float32(2)
    w, b = rand(rng, (C,), np.float32), rand(rng, (C,), np.float32)
    rm, rv = rand(rng, (C,), np.float32), np.abs(rand(rng, (C,), np.float32))

    def run():
        rmd, rvd = cupy.asarray(rm), cupy.asarray(rv)
        out = convgpu.batch_norm(cupy.asarray(x), rmd, rvd, cupy.asarray(w), cupy.asarray(b),
                                 training, return_stats=True, layout="NHWC", backend=backend)
        return out + (rmd, rvd)
    y, mean, invstd, rmd, rvd = twice(run)
    rm64, rv64 = rm.astype(np.float64), rv.astype(np.float64)
    want = convgpu.batch_norm(x.astype(np.float64), rm64, rv64, w.astype(np.float64),
                              b.astype(np.float64), training, return_stats=True, layout="NHWC")
    for got, ref in zip((y, mean, invstd, rmd, rvd), want + (rm64, rv64)):
        assert_close(got, ref, TOL[np.float32])
    gy = rand(rng, shape, np.float32)
    got = twice(lambda: convgpu.batch_norm_backward(
        cupy.asarray(gy), cupy.asarray(x), cupy.asarray(mean), cupy.asarray(invstd),
        cupy.asarray(w), training, layout="NHWC", backend=backend))
    ref = reference.batch_norm_backward(nchw(gy).astype(np.float64), nchw(x).astype(np.float64),
                                        mean.astype(np.float64), invstd.astype(np.float64),
                                        w.astype(np.float64), training)
    assert_close(nchw(got[0]), ref[0], TOL[np.float32])
    assert_close(got[1], ref[1], TOL[np.float32])
    assert_close(got[2], ref[2], TOL[np.float32])


def test_torch_cuda_channels_last(rng):
    torch = pytest.importorskip("torch")
    if STAND_IN or not torch.cuda.is_available():
        pytest.skip("torch sees no CUDA GPU")
    F = torch.nn.functional
    x = torch.from_numpy(rand(rng, (2, 16, 14, 12))).cuda().contiguous(
        memory_format=torch.channels_last)
    w = torch.from_numpy(rand(rng, (32, 16, 3, 3))).cuda().contiguous(
        memory_format=torch.channels_last)
    y = convgpu.conv2d(x, w, padding=1)
    assert y.is_cuda and y.is_contiguous(memory_format=torch.channels_last)
    assert_close(y.cpu().numpy(), F.conv2d(x, w, padding=1).cpu().numpy(), TOL[np.float64])
    p, i = convgpu.max_pool2d(y, 2, return_indices=True)
    pt, it = F.max_pool2d(y, 2, return_indices=True)
    assert torch.equal(p, pt) and torch.equal(i, it)
