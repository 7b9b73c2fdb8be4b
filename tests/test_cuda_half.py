"""Host-emulation tier of the half-precision device code: the emulator's __half and
__nv_bfloat16 (kernels/cuda/emulator/cuda_host_half.h) against NumPy's float16 and
ml_dtypes.bfloat16 at every rounding boundary of both formats; mma.sync m16n8k16 (f16, bf16)
and ldmatrix (.x4, .x4.trans) against the PTX ISA's fragment layout, written out here
independently of the emulator; the tensor-core HGEMM (gemm.cu: gemm_mma16) from its
launcher, forward and reverse order, odd shapes, against the float64 product of the half
inputs.

Emulated is not validated: nothing here has run on a GPU."""
import numpy as np
import pytest

from convgpu.kernels.cuda.emulator import cuda_host

if not cuda_host.available():
    pytest.skip(f"no C++ compiler ({cuda_host.CXX}) for the host emulation", allow_module_level=True)

ml_dtypes = pytest.importorskip("ml_dtypes")
from half_helpers import (BF16, CTYPE, DTYPES, F16, assert_half_bounded,  # noqa: E402, F401
                          emulated, misaligned, spy)  # tests/half_helpers.py

pytestmark = pytest.mark.usefixtures("emulated")


ORDERS = ("forward", "reverse")


def both_orders(fn):
    """fn() forward and in reverse order: the results must be bitwise identical."""
    outs = []
    for which in ORDERS:
        with cuda_host.order(which):
            outs.append(fn())
    for u, v in zip(outs[0] if isinstance(outs[0], tuple) else (outs[0],),
                    outs[1] if isinstance(outs[1], tuple) else (outs[1],), strict=True):
        np.testing.assert_array_equal(np.asarray(u).view(np.uint8), np.asarray(v).view(np.uint8),
                                      err_msg="result depends on thread/block order")
    return outs[0]


# ---- conversions ------------------------------------------------------------------------

CONVERT = r"""
__global__ void to_f16(const float* x, unsigned short* y, int n) {
    for (int i = threadIdx.x; i < n; i += blockDim.x) y[i] = __half_as_ushort(__float2half_rn(x[i])); }
__global__ void to_bf16(const float* x, unsigned short* y, int n) {
    for (int i = threadIdx.x; i < n; i += blockDim.x)
        y[i] = __bfloat16_as_ushort(__float2bfloat16_rn(x[i])); }
__global__ void from_f16(const unsigned short* x, float* y, int n) {
    for (int i = threadIdx.x; i < n; i += blockDim.x) y[i] = __half2float(__ushort_as_half(x[i])); }
__global__ void from_bf16(const unsigned short* x, float* y, int n) {
    for (int i = threadIdx.x; i < n; i += blockDim.x)
        y[i] = __bfloat162float(__ushort_as_bfloat16(x[i])); }
// the pair types: (x[2i], x[2i+1]) packed, unpacked by __low2float / __high2float
__global__ void pairs(const float* x, float* y, int n) {
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        const __half2 h = __floats2half2_rn(x[2 * i], x[2 * i + 1]);
        const __nv_bfloat162 b = __floats2bfloat162_rn(x[2 * i], x[2 * i + 1]);
        const __half2 h2 = __halves2half2(__low2half(h), __high2half(h));
        const __nv_bfloat162 b2 = __halves2bfloat162(__low2bfloat16(b), __high2bfloat16(b));
        y[4 * i] = __low2float(h2); y[4 * i + 1] = __high2float(h2);
        y[4 * i + 2] = __low2float(b2); y[4 * i + 3] = __high2float(b2);
    }
}
"""


@pytest.fixture(scope="module")
def convert():
    return cuda_host.module_from_source(CONVERT, ("to_f16", "to_bf16", "from_f16", "from_bf16",
                                                  "pairs"))


def _run(k, x, out_dtype):
    y = np.zeros(x.size, out_dtype)
    k((1,), (256,), (x, y, np.int32(x.size)))
    return y


def _boundaries(fmt):
    """Every value of the 16-bit format (all 65536 patterns but NaNs) as float32, and the
    floats that decide its rounding: each midpoint between neighbours (a tie), the float
    just below and just above it, and the float just beside each value."""
    with np.errstate(over="ignore"):            # the floats past the format's range
        return _boundaries_of(fmt)


def _boundaries_of(fmt):
    v = np.arange(65536, dtype=np.uint16).view(fmt).astype(np.float32)
    v = np.unique(v[~np.isnan(v)])                       # sorted, -inf .. inf, one zero
    finite = v[np.isfinite(v)]
    mid = (finite[:-1].astype(np.float64) + finite[1:]) / 2
    assert np.all(mid.astype(np.float32) == mid)         # ties are exact in float32
    mid = mid.astype(np.float32)
    # beyond the largest finite value: the overflow tie and its neighbours
    top = finite[-1].astype(np.float64)
    ulp = top - finite[-2]
    over = np.array([top + ulp / 2, -(top + ulp / 2), top + ulp, np.finfo(np.float32).max,
                     -np.finfo(np.float32).max], np.float32)
    pts = [v, mid, over]
    for p in (mid, v, over):
        pts += [np.nextafter(p, np.float32(np.inf)), np.nextafter(p, np.float32(-np.inf))]
    tiny = np.array([0x1, 0x7fffff, 0x800000, 0x80000001], np.uint32).view(np.float32)
    return np.concatenate(pts + [tiny, -0.0 * np.ones(1, np.float32)])


@pytest.mark.parametrize("fmt, kernel", [(F16, "to_f16"), (BF16, "to_bf16")])
def test_float_to_half_rounds_to_nearest_even_at_every_boundary(convert, fmt, kernel):
    """__float2half_rn / __float2bfloat16_rn bit for bit as NumPy / ml_dtypes round (nearest,
    ties to even, subnormals, overflow to infinity), at each of the ~400k floats that decide a
    rounding; every NaN gives a NaN (the canonical 0x7fff, as the CUDA headers' host path)."""
    x = _boundaries(fmt)
    got = _run(convert[kernel], x, np.uint16)
    with np.errstate(over="ignore"):
        want = x.astype(fmt).view(np.uint16)
    bad = np.flatnonzero(got != want)
    assert bad.size == 0, [(float(x[i]), hex(x[i:i + 1].view(np.uint32)[0]), hex(got[i]),
                            hex(want[i])) for i in bad[:8]]
    nans = np.array([0x7f800001, 0x7fc00000, 0xffffffff, 0x7fffffff, 0xff800001, 0x7f801fff],
                    np.uint32).view(np.float32)
    assert np.all(_run(convert[kernel], nans, np.uint16) == 0x7fff)


@pytest.mark.parametrize("fmt, kernel", [(F16, "from_f16"), (BF16, "from_bf16")])
def test_half_to_float_is_exact_for_all_65536_patterns(convert, fmt, kernel):
    h = np.arange(65536, dtype=np.uint16)
    got = _run(convert[kernel], h, np.float32)
    want = h.view(fmt).astype(np.float32)
    nan = np.isnan(want)
    assert np.array_equal(np.isnan(got), nan)
    np.testing.assert_array_equal(got[~nan].view(np.uint32), want[~nan].view(np.uint32))


def test_pair_types_pack_low_then_high(convert, rng):
    x = rng.standard_normal(2 * 1000).astype(np.float32) * 1000
    y = np.zeros(4 * 1000, np.float32)
    convert["pairs"]((1,), (64,), (x, y, np.int32(1000)))
    y = y.reshape(-1, 4)
    np.testing.assert_array_equal(y[:, 0:2].reshape(-1), x.astype(F16).astype(np.float32))
    np.testing.assert_array_equal(y[:, 2:4].reshape(-1), x.astype(BF16).astype(np.float32))


# ---- mma.sync m16n8k16 and ldmatrix -------------------------------------------------------

MMA = r"""
#include "common.cuh"
// each lane's registers in, its accumulators out: a (32 x 4), b (32 x 2), d (32 x 4)
template <bool BF16>
__global__ void mma16(const unsigned* a, const unsigned* b, const float* c, float* d) {
    const int l = threadIdx.x;
    float acc[4] = {c[4 * l], c[4 * l + 1], c[4 * l + 2], c[4 * l + 3]};
    const unsigned ra[4] = {a[4 * l], a[4 * l + 1], a[4 * l + 2], a[4 * l + 3]};
    const unsigned rb[2] = {b[2 * l], b[2 * l + 1]};
    tile::mma_m16n8k16<BF16>(acc, ra, rb);
    for (int v = 0; v < 4; ++v) d[4 * l + v] = acc[v];
}
// four 8 x 8 matrices m (4 x 8 x 8 16-bit values) staged in shared memory with a row pitch
// of 24 values (rows 16-byte aligned, not contiguous); lane l passes row l % 8 of matrix l / 8
template <bool TRANS>
__global__ void ldm(const unsigned short* m, unsigned* r) {
    __shared__ __align__(16) unsigned short s[4][8][24];
    const int l = threadIdx.x;
    for (int i = l; i < 4 * 8 * 8; i += 32) s[i / 64][(i / 8) % 8][i % 8] = m[i];
    __syncwarp();
    unsigned out[4];
    tile::ldmatrix_x4<TRANS>(out, &s[l / 8][l % 8][0]);
    for (int i = 0; i < 4; ++i) r[4 * l + i] = out[i];
}
"""
MMA_EXPRS = ("mma16<false>", "mma16<true>", "ldm<false>", "ldm<true>")


@pytest.fixture(scope="module")
def mma():
    return cuda_host.module_from_source(MMA, MMA_EXPRS)


def _pack(lo, hi):
    return lo.astype(np.uint32) | hi.astype(np.uint32) << 16


def _fragments(A, B, fmt):
    """Registers of each lane for A (16 x 16) and B (16 x 8) per the PTX ISA's m16n8k16
    .f16/.bf16 layout: groupID g = lane >> 2, threadID_in_group t = lane % 4; element i of
    A (a0..a7) at row g (i < 2 or 4 <= i < 6) else g + 8, column 2t + (i & 1) (+ 8 for
    i >= 4); element i of B (b0..b3) at row 2t + (i & 1) (+ 8 for i >= 2), column g; two
    elements to a register, the first in the low half."""
    a_bits, b_bits = A.astype(fmt).view(np.uint16), B.astype(fmt).view(np.uint16)
    ra = np.zeros((32, 4), np.uint32)
    rb = np.zeros((32, 2), np.uint32)
    for lane in range(32):
        g, t = lane >> 2, lane % 4
        ea = [a_bits[g if (i < 2 or 4 <= i < 6) else g + 8, 2 * t + (i & 1) + (8 if i >= 4 else 0)]
              for i in range(8)]
        eb = [b_bits[2 * t + (i & 1) + (8 if i >= 2 else 0), g] for i in range(4)]
        ra[lane] = [_pack(np.uint16(ea[2 * r]), np.uint16(ea[2 * r + 1])) for r in range(4)]
        rb[lane] = [_pack(np.uint16(eb[2 * r]), np.uint16(eb[2 * r + 1])) for r in range(2)]
    return ra, rb


def _accumulators(D):
    """D (16 x 8) as each lane's c0..c3: row g (c0, c1) or g + 8, column 2t + (i & 1)."""
    d = np.zeros((32, 4), np.float32)
    for lane in range(32):
        g, t = lane >> 2, lane % 4
        d[lane] = [D[g + (8 if i >= 2 else 0), 2 * t + (i & 1)] for i in range(4)]
    return d


@pytest.mark.parametrize("fmt, bf16", [(F16, False), (BF16, True)])
def test_mma_m16n8k16_lane_layout_is_the_ptx_isas(mma, rng, fmt, bf16):
    """D = A B + C with small integers (every product and sum exact in float32, so the
    result is the integer product bit for bit): a fragment placed at the wrong lane, row or
    half of a register changes it. Then a second call on values with rounding, against the
    float64 product of the 16-bit inputs within FP32 accumulation's bound."""
    A = rng.integers(-8, 9, (16, 16)).astype(np.float32)
    B = rng.integers(-8, 9, (16, 8)).astype(np.float32)
    C = rng.integers(-100, 101, (16, 8)).astype(np.float32)
    ra, rb = _fragments(A, B, fmt)
    d = np.zeros((32, 4), np.float32)
    mma[f"mma16<{'true' if bf16 else 'false'}>"]((1,), (32,), (ra, rb, _accumulators(C), d))
    np.testing.assert_array_equal(d, _accumulators(A.astype(np.float64) @ B + C))

    A = rng.standard_normal((16, 16)).astype(np.float32)
    B = rng.standard_normal((16, 8)).astype(np.float32)
    ra, rb = _fragments(A, B, fmt)
    mma[f"mma16<{'true' if bf16 else 'false'}>"]((1,), (32,), (ra, rb, np.zeros((32, 4),
                                                 np.float32), d))
    Ah, Bh = A.astype(fmt).astype(np.float64), B.astype(fmt).astype(np.float64)
    want, mag = _accumulators(Ah @ Bh), _accumulators(abs(Ah) @ abs(Bh))
    # 16 exact products summed in float32: at most 16 roundings of u32 = 2**-24 each
    assert np.all(abs(d - want) <= 16 * 2.0 ** -24 * mag)


@pytest.mark.parametrize("trans", [False, True])
def test_ldmatrix_x4_lane_layout(mma, rng, trans):
    """Register i of lane l: matrix i's row l / 4, columns 2 (l % 4) and + 1 (low, high
    half), or with .trans its column l / 4, rows 2 (l % 4) and + 1."""
    m = rng.integers(0, 65536, (4, 8, 8)).astype(np.uint16)
    r = np.zeros((32, 4), np.uint32)
    mma[f"ldm<{'true' if trans else 'false'}>"]((1,), (32,), (m, r))
    want = np.zeros((32, 4), np.uint32)
    for lane in range(32):
        q, p = lane // 4, 2 * (lane % 4)
        for i in range(4):
            lo, hi = (m[i, p, q], m[i, p + 1, q]) if trans else (m[i, q, p], m[i, q, p + 1])
            want[lane, i] = _pack(np.uint16(lo), np.uint16(hi))
    np.testing.assert_array_equal(r, want)


# ---- the HGEMM: gemm_mma16 ---------------------------------------------------------------

def _operands(rng, dtype, batch, M, N, K, ta, tb):
    A = rng.standard_normal((batch, K, M) if ta else (batch, M, K)).astype(dtype)
    B = rng.standard_normal((batch, N, K) if tb else (batch, K, N)).astype(dtype)
    return A, B


def _exact(A, B, ta, tb, bias=None):
    """The float64 product of the 16-bit operands (+ bias) and its magnitude |A| |B| + |bias|."""
    op = lambda X, t: np.swapaxes(X, 1, 2) if t else X      # noqa: E731
    A, B = A.astype(np.float64), B.astype(np.float64)
    want, mag = np.matmul(op(A, ta), op(B, tb)), np.matmul(op(abs(A), ta), op(abs(B), tb))
    if bias is not None:
        want, mag = want + bias.astype(np.float64), mag + abs(bias.astype(np.float64))
    return want, mag


@pytest.fixture
def launched(monkeypatch):
    """The name expressions gemm.py looks up, in order."""
    from convgpu.kernels.cuda import gemm
    return spy(monkeypatch, gemm)


@DTYPES
@pytest.mark.parametrize("ta, tb", [(False, False), (True, False), (False, True), (True, True)])
def test_gemm_mma16_odd_shapes_both_copies_and_split_k(rng, launched, dtype, ta, tb):
    """Two batches, edges in M, N and K on both copy paths: K = 101 (not a multiple of 8:
    element-wise loads) and K = 136 with M, N multiples of 8 (16-byte cp.async, a last slice
    of 8), each more slices (4, 5) than the pipeline has stages, so a stage buffer is reused
    (a missing barrier shows in reverse order); split-K into 3 (FP32 partials summed in order, one rounding); the 16-byte shape
    again from misaligned operands, on the element-wise path, equal bit for bit (same
    products, same order)."""
    from convgpu.kernels.cuda import gemm
    for M, N, K, vec in ((133, 70, 101, False), (136, 64, 136, True)):
        A, B = _operands(rng, dtype, 2, M, N, K, ta, tb)
        want, mag = _exact(A, B, ta, tb)
        for splits in (1, 3):
            del launched[:]
            C = both_orders(lambda: gemm.gemm(A, B, ta, tb, splits=splits))
            assert_half_bounded(C, want, mag, K, dtype)
            t = gemm.half_ctype(dtype)
            assert launched[0] == f"gemm_mma16<{t}, {str(ta).lower()}, {str(tb).lower()}, " \
                                  f"{str(vec).lower()}>", launched
            assert (f"sum_splits_half<{t}>" in launched) == (splits > 1), launched
        if vec:
            C2 = both_orders(lambda: gemm.gemm(misaligned(A), B, ta, tb, splits=3))
            assert launched[-2].endswith("false>"), launched
            np.testing.assert_array_equal(C2.view(np.uint16), C.view(np.uint16))


@DTYPES
def test_gemm_mma16_bias_broadcast_and_tiny(rng, dtype):
    """The fused bias (added in FP32 before the one rounding, unsplit and split), an operand
    with a batch of 1 serving two, the 1 x 1 x 1 product, K = 0 and M = 0."""
    from convgpu.kernels.cuda import gemm
    A, _ = _operands(rng, dtype, 1, 45, 30, 51, False, True)
    _, B = _operands(rng, dtype, 2, 45, 30, 51, False, True)
    bias = rng.standard_normal(30).astype(dtype)
    want, mag = _exact(np.broadcast_to(A, (2,) + A.shape[1:]), B, False, True, bias)
    for splits in (1, 2):
        C = both_orders(lambda: gemm.gemm(A, B, tb=True, splits=splits, bias=bias))
        assert_half_bounded(C, want, mag, 51, dtype)
    A, B = _operands(rng, dtype, 1, 1, 1, 1, False, False)
    want, mag = _exact(A, B, False, False)
    assert_half_bounded(both_orders(lambda: gemm.gemm(A, B)), want, mag, 1, dtype)
    # an empty sum is the bias alone; an empty output launches nothing
    A, B = _operands(rng, dtype, 1, 3, 30, 0, False, False)
    C = both_orders(lambda: gemm.gemm(A, B, bias=bias))
    np.testing.assert_array_equal(C[0], np.broadcast_to(bias, (3, 30)))
    A, B = _operands(rng, dtype, 2, 0, 5, 4, False, False)
    assert gemm.gemm(A, B).shape == (2, 0, 5)


def test_gemm_mma16_past_the_grid_limits_runs_in_parts(rng, monkeypatch):
    """Batches x splits or row tiles past gridDim's 65535 (here 2): the half GEMM launches on
    slices of batches and of A's rows, the bias fused into each, with split-K."""
    from convgpu.kernels.cuda import gemm
    monkeypatch.setattr(gemm, "MAX_GRID_YZ", 2)
    A, B = _operands(rng, F16, 5, 300, 12, 70, False, False)
    bias = rng.standard_normal(12).astype(F16)
    want, mag = _exact(A, B, False, False, bias)
    for splits in (1, 2):
        C = gemm.gemm(A, B, splits=splits, bias=bias)
        assert C.shape == (5, 300, 12)
        assert_half_bounded(C, want, mag, 70, F16)


@DTYPES
def test_linear_and_backward_on_the_tensor_cores(rng, launched, dtype):
    """kernels/cuda/gemm.py's linear and linear_backward in the 16-bit type: y = x w^T + b
    (bias fused), grad_input, grad_weight (split-K) and grad_bias (ones @ grad_output), each
    against the float64 result from the 16-bit inputs."""
    from convgpu.kernels.cuda import gemm
    M, K, O = 37, 19, 45
    x, w, b, gy = (rng.standard_normal(s).astype(dtype) for s in ((M, K), (O, K), (O,), (M, O)))
    f = lambda a: a.astype(np.float64)                  # noqa: E731
    y = both_orders(lambda: gemm.linear(None, x, w, b))
    assert_half_bounded(y, f(x) @ f(w).T + f(b), abs(f(x)) @ abs(f(w)).T + abs(f(b)), K, dtype)
    gx, gw, gb = both_orders(lambda: gemm.linear_backward(None, gy, x, w))
    assert_half_bounded(gx, f(gy) @ f(w), abs(f(gy)) @ abs(f(w)), O, dtype)
    assert_half_bounded(gw, f(gy).T @ f(x), abs(f(gy)).T @ abs(f(x)), M, dtype)
    assert_half_bounded(gb, f(gy).sum(0), abs(f(gy)).sum(0), M, dtype)
    assert all(n.startswith(("gemm_mma16<", "sum_splits_half<")) for n in launched), launched


@pytest.mark.parametrize("dtype", [F16, BF16], ids=["f16", "bf16"])
def test_gemm_mma16_fp32_output(rng, dtype):
    """fp32=True (col2im's columns): the FP32 sums before the rounding, split-K partials
    summed in order, in float32; rounded, bitwise the 16-bit output of the same call."""
    from convgpu.kernels.cuda import gemm
    A, B = _operands(rng, dtype, 2, 40, 24, 70, False, True)
    for splits in (1, 3):
        c32 = gemm.gemm(A, B, tb=True, splits=splits, fp32=True)
        c16 = gemm.gemm(A, B, tb=True, splits=splits)
        assert c32.dtype == np.float32 and c32.shape == c16.shape == (2, 40, 24)
        np.testing.assert_array_equal(c32.astype(dtype).view(np.uint16), c16.view(np.uint16))
        want, mag = _exact(A, B, False, True)
        assert np.all(abs(c32 - want) <= 72 * 2.0 ** -23 * mag)       # (K + 2) FP32 adds


def test_gemm_mma16_refuses_bad_input(rng):
    from convgpu.kernels.cuda import gemm
    A, B = _operands(rng, F16, 1, 8, 8, 8, False, False)
    with pytest.raises(ValueError, match="one type"):
        gemm.gemm(A, B.astype(BF16))
    with pytest.raises(ValueError, match="one type"):
        gemm.gemm(A, B.astype(np.float32))
    with pytest.raises(ValueError, match="tensor cores only"):
        gemm.gemm(A, B, variant="tiled")
    with pytest.raises(ValueError, match="tf32"):
        gemm.gemm(A, B, tf32=True)
    with pytest.raises(ValueError, match="bias must be"):
        gemm.gemm(A, B, bias=np.zeros(7, F16))
    with pytest.raises(ValueError, match="one type"):
        gemm.gemm(A.astype(np.float32), B.astype(np.float32), variant="mma16")
    with pytest.raises(ValueError, match="bias and fp32 are for the 16-bit GEMM"):
        gemm.gemm(A.astype(np.float32), B.astype(np.float32), bias=np.zeros(8, np.float32))
    with pytest.raises(ValueError, match="bias and fp32 are for the 16-bit GEMM"):
        gemm.gemm(A.astype(np.float32), B.astype(np.float32), fp32=True)
    with pytest.raises(ValueError, match="fp32=True returns the product without the bias"):
        gemm.gemm(A, B, bias=np.zeros(8, F16), fp32=True)


# ---- the implicit-GEMM convolutions: conv2d_{,dgrad_,wgrad_}implicit_gemm_mma16 ------------

# (N, C, H, W, K, R, S, stride, padding, dilation, groups, weights as 16-byte copies)
CONV_HALF = [
    (2, 3, 9, 10, 5, 3, 3, (1, 1), (1, 1), (1, 1), 1, False),    # C*R*S = 27, 2 column tiles
    (1, 16, 7, 6, 130, 1, 1, (2, 2), (0, 0), (1, 1), 2, True),   # 2 row tiles, groups, 1 x 1
    (1, 16, 6, 7, 20, 3, 3, (2, 1), (1, 2), (2, 1), 1, True),    # 5 slices: stages reused
    (1, 12, 5, 5, 7, 3, 3, (1, 1), (1, 1), (1, 1), 1, False),    # 4 slices, element-wise
    (1, 32, 4, 5, 6, 3, 3, (1, 1), (1, 1), (1, 1), 1, True),     # 288 deep: split in 2
]


@DTYPES
@pytest.mark.parametrize("case", CONV_HALF, ids=lambda c: "x".join(map(str, c[:7])))
def test_conv2d_implicit_gemm_mma16(rng, monkeypatch, dtype, case):
    """The half forward, input gradient and weight gradient from their launchers against the
    float64 results from the 16-bit inputs (+ bias), forward and reverse order; which
    weight copy ran, the stride-1 input gradient, and which reductions were split (deeper
    than 256: split_for) are checked, so each case covers what it says."""
    from convgpu import reference
    from convgpu.core.args import conv_geometry
    from convgpu.kernels.cuda import conv_implicit
    N, C, H, W, K, R, S, st, pd, dl, g, va = case
    x = rng.standard_normal((N, C, H, W)).astype(dtype)
    w = rng.standard_normal((K, C // g, R, S)).astype(dtype)
    b = rng.standard_normal(K).astype(dtype)
    a = conv_geometry("conv2d", x.shape, w.shape, st, pd, dl, g, dtype)
    gy = rng.standard_normal(a.y_shape).astype(dtype)
    names = spy(monkeypatch, conv_implicit)
    kw = dict(stride=st, padding=pd, dilation=dl, groups=g)
    f = lambda v: v.astype(np.float64)                    # noqa: E731
    t = CTYPE[dtype]
    split = f"sum_splits_half<{t}>"

    y = both_orders(lambda: conv_implicit.conv2d_implicit_gemm_mma16(a, x, w, b))
    assert_half_bounded(y, reference.conv2d(f(x), f(w), f(b), **kw),
                        reference.conv2d(abs(f(x)), abs(f(w)), abs(f(b)), **kw),
                        (C // g) * R * S, dtype)
    assert names[0] == f"conv2d_implicit_gemm_mma16<{t}, {str(va).lower()}>", names
    assert (split in names) == ((C // g) * R * S > 256), names

    del names[:]
    gx = both_orders(lambda: conv_implicit.backward_input_implicit_gemm_mma16(a, gy, w))
    assert_half_bounded(gx, reference.conv2d_backward_input(f(gy), f(w), x.shape, **kw),
                        reference.conv2d_backward_input(abs(f(gy)), abs(f(w)), x.shape, **kw),
                        (K // g) * R * S, dtype)
    assert names[0] == f"conv2d_dgrad_implicit_gemm_mma16<{t}, {str(st == (1, 1)).lower()}>"
    assert (split in names) == ((K // g) * R * S > 256), names

    del names[:]
    gw = both_orders(lambda: conv_implicit.backward_weight_implicit_gemm_mma16(a, x, gy))
    assert_half_bounded(gw, reference.conv2d_backward_weight(f(x), f(gy), w.shape, **kw),
                        reference.conv2d_backward_weight(abs(f(x)), abs(f(gy)), w.shape, **kw),
                        N * a.P * a.Q, dtype)
    assert names[0] == f"conv2d_wgrad_implicit_gemm_mma16<{t}>", names
    assert (split in names) == (N * a.P * a.Q > 256), names


def test_conv2d_implicit_gemm_mma16_refuses_other_types():
    from convgpu.core.args import conv_geometry
    from convgpu.kernels.cuda import conv_implicit
    a = conv_geometry("conv2d", (1, 2, 5, 5), (3, 2, 3, 3), (1, 1), (0, 0), (1, 1), 1,
                      np.float32)
    x, w = np.zeros((1, 2, 5, 5), np.float32), np.zeros((3, 2, 3, 3), np.float32)
    gy = np.zeros(a.y_shape, np.float32)
    for call in (lambda: conv_implicit.conv2d_implicit_gemm_mma16(a, x, w, None),
                 lambda: conv_implicit.backward_input_implicit_gemm_mma16(a, gy, w),
                 lambda: conv_implicit.backward_weight_implicit_gemm_mma16(a, x, gy)):
        with pytest.raises(ValueError, match="float16 or bfloat16"):
            call()


def test_launcher_constants_match_pipeline16():
    """gemm.py's copy of the 16-bit tile (threads, slice depth, stages, shared bytes) against
    pipeline16.cuh's constexprs: the launcher sizes grids and shared memory by its copy."""
    from test_cuda_constants import constexprs
    from convgpu.kernels.cuda import gemm
    v = constexprs("pipeline16.cuh")
    assert (v["THREADS"], v["BK"], v["STAGES"]) == (gemm.MMA16_THREADS, gemm.MMA16_BK,
                                                    gemm.MMA16_STAGES)
    assert v["BM"] == v["BN"] == gemm.TILE
    for ka in (False, True):
        for kb in (False, True):
            tile = lambda kmajor: v["BM"] * v["LDK"] if kmajor else v["BK"] * v["LDR"]  # noqa
            assert gemm.mma16_shared_bytes(ka, kb) == 2 * v["STAGES"] * (tile(ka) + tile(kb))
