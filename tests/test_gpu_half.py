"""GPU tier of the float16 / bfloat16 tensor-core kernels (`pytest -m gpu`, skipped without a
CUDA GPU): gemm_mma16 and the half implicit-GEMM convolutions (NCHW and NHWC) from their
launchers on CuPy
arrays, on realistic and odd shapes, against the float64 result from the 16-bit inputs
within tests/half_helpers.py's bound, and run twice: bitwise the same (no atomics, splits
summed in a fixed order). The emulation (test_cuda_half.py) checks the same kernels on the
CPU (test_cuda_nhwc16.py the NHWC ones); only this tier validates them."""
import numpy as np
import pytest

pytestmark = pytest.mark.gpu

from gpu_gate import cupy_with_a_gpu  # noqa: E402

cupy = cupy_with_a_gpu()
pytest.importorskip("ml_dtypes")

from half_helpers import BF16, F16, assert_half_bounded  # noqa: E402

from convgpu import reference, reference_nhwc  # noqa: E402
from convgpu.core.args import conv_geometry  # noqa: E402
from convgpu.kernels.cuda import conv_implicit, conv_nhwc16, gemm  # noqa: E402


@pytest.fixture(autouse=True)
def poisoned(monkeypatch):
    monkeypatch.setenv("CONVGPU_POISON", "1")      # outputs start as NaN


def _twice(fn):
    """fn() run twice on the device: the results must be bitwise equal; returned on the host."""
    a, b = cupy.asnumpy(fn()), cupy.asnumpy(fn())
    np.testing.assert_array_equal(a.view(np.uint16), b.view(np.uint16),
                                  err_msg="not deterministic")
    return a


@pytest.mark.parametrize("dtype", [F16, BF16], ids=["f16", "bf16"])
@pytest.mark.parametrize("ta, tb", [(False, False), (True, False), (False, True), (True, True)])
@pytest.mark.parametrize("M, N, K, splits", [(1024, 1024, 1024, 1), (509, 515, 1037, 1),
                                             (128, 96, 4096, 4)])
def test_gemm_mma16_on_the_device(rng, dtype, ta, tb, M, N, K, splits):
    A = rng.standard_normal((K, M) if ta else (M, K)).astype(dtype)[None]
    B = rng.standard_normal((N, K) if tb else (K, N)).astype(dtype)[None]
    op = lambda X, t: np.swapaxes(X, 1, 2) if t else X      # noqa: E731
    A64, B64 = A.astype(np.float64), B.astype(np.float64)
    exact = np.matmul(op(A64, ta), op(B64, tb))
    mag = np.matmul(op(abs(A64), ta), op(abs(B64), tb))
    dA, dB = cupy.asarray(A), cupy.asarray(B)
    C = _twice(lambda: gemm.gemm(dA, dB, ta, tb, splits=splits))
    assert_half_bounded(C, exact, mag, K, dtype)


# (N, C, H, W, K, R, S, stride, padding): ResNet-50-like layers and odd ones
CONVS = [(4, 64, 28, 28, 64, 3, 3, (1, 1), (1, 1)), (2, 256, 14, 14, 512, 1, 1, (2, 2), (0, 0)),
         (2, 3, 57, 61, 64, 7, 7, (2, 2), (3, 3)), (3, 37, 13, 11, 45, 3, 3, (1, 2), (1, 0))]


@pytest.mark.parametrize("dtype", [F16, BF16], ids=["f16", "bf16"])
@pytest.mark.parametrize("case", CONVS, ids=lambda c: "x".join(map(str, c[:7])))
def test_half_convolutions_on_the_device(rng, dtype, case):
    N, C, H, W, K, R, S, st, pd = case
    x = rng.standard_normal((N, C, H, W)).astype(dtype)
    w = rng.standard_normal((K, C, R, S)).astype(dtype)
    b = rng.standard_normal(K).astype(dtype)
    a = conv_geometry("conv2d", x.shape, w.shape, st, pd, (1, 1), 1, dtype)
    gy = rng.standard_normal(a.y_shape).astype(dtype)
    dx, dw, db, dgy = (cupy.asarray(v) for v in (x, w, b, gy))
    kw = dict(stride=st, padding=pd)
    f = lambda v: v.astype(np.float64)                    # noqa: E731
    y = _twice(lambda: conv_implicit.conv2d_implicit_gemm_mma16(a, dx, dw, db))
    assert_half_bounded(y, reference.conv2d(f(x), f(w), f(b), **kw),
                        reference.conv2d(abs(f(x)), abs(f(w)), abs(f(b)), **kw), C * R * S, dtype)
    gx = _twice(lambda: conv_implicit.backward_input_implicit_gemm_mma16(a, dgy, dw))
    assert_half_bounded(gx, reference.conv2d_backward_input(f(gy), f(w), x.shape, **kw),
                        reference.conv2d_backward_input(abs(f(gy)), abs(f(w)), x.shape, **kw),
                        K * R * S, dtype)
    gw = _twice(lambda: conv_implicit.backward_weight_implicit_gemm_mma16(a, dx, dgy))
    assert_half_bounded(gw, reference.conv2d_backward_weight(f(x), f(gy), w.shape, **kw),
                        reference.conv2d_backward_weight(abs(f(x)), abs(f(gy)), w.shape, **kw),
                        N * a.P * a.Q, dtype)


# NHWC: the same layers, and a grouped one with C/groups = 3 (element-wise copies)
CONVS_NHWC = [c + (1,) for c in CONVS] + [(2, 30, 13, 11, 50, 3, 2, (2, 1), (1, 2), 5)]


@pytest.mark.parametrize("dtype", [F16, BF16], ids=["f16", "bf16"])
@pytest.mark.parametrize("case", CONVS_NHWC, ids=lambda c: "x".join(map(str, c[:7])))
def test_nhwc_half_convolutions_on_the_device(rng, dtype, case):
    N, C, H, W, K, R, S, st, pd, g = case
    x = rng.standard_normal((N, H, W, C)).astype(dtype)
    w = rng.standard_normal((K, R, S, C // g)).astype(dtype)
    b = rng.standard_normal(K).astype(dtype)
    a = conv_geometry("conv2d", x.shape, w.shape, st, pd, (1, 1), g, dtype, layout="NHWC")
    gy = rng.standard_normal(a.y_shape).astype(dtype)
    dx, dw, db, dgy = (cupy.asarray(v) for v in (x, w, b, gy))
    kw = dict(stride=st, padding=pd, groups=g)
    f = lambda v: v.astype(np.float64)                    # noqa: E731
    ref = reference_nhwc
    y = _twice(lambda: conv_nhwc16.conv2d_nhwc_implicit_gemm_mma16(a, dx, dw, db))
    assert_half_bounded(y, ref.conv2d_nhwc(f(x), f(w), f(b), **kw),
                        ref.conv2d_nhwc(abs(f(x)), abs(f(w)), abs(f(b)), **kw),
                        C // g * R * S, dtype)
    gx = _twice(lambda: conv_nhwc16.backward_input_nhwc_implicit_gemm_mma16(a, dgy, dw))
    assert_half_bounded(gx, ref.conv2d_backward_input_nhwc(f(gy), f(w), x.shape, **kw),
                        ref.conv2d_backward_input_nhwc(abs(f(gy)), abs(f(w)), x.shape, **kw),
                        K // g * R * S, dtype)
    gw = _twice(lambda: conv_nhwc16.backward_weight_nhwc_implicit_gemm_mma16(a, dx, dgy))
    assert_half_bounded(gw, ref.conv2d_backward_weight_nhwc(f(x), f(gy), w.shape, **kw),
                        ref.conv2d_backward_weight_nhwc(abs(f(x)), abs(f(gy)), w.shape, **kw),
                        N * a.P * a.Q, dtype)
