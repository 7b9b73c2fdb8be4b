"""What the float16 / bfloat16 tensor-core tests share: the error bound of the kernels
against the float64 result computed from their 16-bit inputs (the host-emulation tier,
test_cuda_half.py and test_cuda_nhwc16.py, and the GPU tier, test_gpu_half.py), and the
emulation tier's fixture, dtype parameters, launch spy and misaligned copies."""
import numpy as np
import ml_dtypes
import pytest

BF16 = np.dtype(ml_dtypes.bfloat16)
F16 = np.dtype(np.float16)
CTYPE = {F16: "__half", BF16: "__nv_bfloat16"}          # the kernels' template argument
DTYPES = pytest.mark.parametrize("dtype", [F16, BF16], ids=["f16", "bf16"])


@pytest.fixture
def emulated(monkeypatch):
    """The cuda backend on the host emulation, outputs poisoned (NaN) before each launch.
    A module uses it with pytestmark = pytest.mark.usefixtures("emulated") after importing it."""
    monkeypatch.setenv("CONVGPU_CUDA_HOST", "1")
    monkeypatch.setenv("CONVGPU_POISON", "1")


def spy(monkeypatch, module, sources=None):
    """The name expressions `module` looks up through its get_function, in order (only those
    of the .cu files in `sources`, if given)."""
    names = []
    real = module.get_function
    monkeypatch.setattr(module, "get_function",
                        lambda f, e: (sources is None or f in sources) and names.append(e)
                        or real(f, e))
    return names


def misaligned(X):
    """X's values in a C-contiguous array at an address 2 bytes past a 16-byte boundary."""
    buf = np.empty(X.size + 8, X.dtype)
    off = (-buf.ctypes.data % 16) // X.itemsize + 1
    Y = buf[off:off + X.size].reshape(X.shape)
    Y[...] = X
    assert Y.ctypes.data % 16 == 2 and Y.flags.c_contiguous
    return Y

U_HALF = {F16: 2.0 ** -11, BF16: 2.0 ** -8}
ETA_HALF = {F16: 2.0 ** -25, BF16: 2.0 ** -134}   # half the smallest subnormal
U_MMA_ACC = 2.0 ** -23   # an FP32 add on the tensor cores (truncating: twice FP32's u)


def assert_half_bounded(out, exact, mag, n, dtype):
    """|out - exact| <= u_h (|exact| + d) + eta_h + d, d = (n + 2) 2**-23 mag, element by
    element: `exact` the float64 result from the 16-bit inputs, `mag` the same on their
    absolute values. The products of 16-bit operands are exact in FP32; the n FP32 sums
    (and the bias, the split partials' sum) cost d; the one rounding of the FP32 value s,
    |s| <= |exact| + d, to the 16-bit type costs u_h |s| relative or eta_h absolute in the
    subnormal range. docs/tolerances.md (issue 19) derives the same terms."""
    dtype = np.dtype(dtype)
    out = np.asarray(out)
    assert out.dtype == dtype and out.shape == exact.shape, (out.dtype, out.shape, exact.shape)
    o = out.astype(np.float64)
    assert np.all(np.isfinite(o)), "non-finite output (an element never written?)"
    d = (n + 2) * U_MMA_ACC * mag
    bound = U_HALF[dtype] * (abs(exact) + d) + ETA_HALF[dtype] + d
    worst = np.max(abs(o - exact) / bound) if o.size else 0.0
    assert worst <= 1, f"an element's error is {worst:.3g} times its bound"
