"""Host-emulation tier of the channels-last float16 / bfloat16 convolutions on the tensor
cores (conv_nhwc16.cu, conv_nhwc16.py; registered as algo="implicit_gemm_nhwc_mma16"): the
forward, the input gradient (the forward on rotated filters at stride 1, a GEMM per stride
phase otherwise) and the weight gradient, from their launchers and through the op API, threads and
blocks in both orders, outputs poisoned, against the float64 NHWC reference from the 16-bit
inputs at the half bound of docs/tolerances.md (half_helpers.assert_half_bounded); odd
shapes, both copy paths (16-byte cp.async and element-wise) and the splits checked to run
where each case says; equal bit for bit to the NCHW mma16 kernels' results transposed where
the sums are the same.

Emulated is not validated: nothing here has run on a GPU."""
import numpy as np
import pytest

import convgpu
from convgpu.kernels.cuda.emulator import cuda_host

if not cuda_host.available():
    pytest.skip(f"no C++ compiler ({cuda_host.CXX}) for the host emulation", allow_module_level=True)

ml_dtypes = pytest.importorskip("ml_dtypes")
from half_helpers import (BF16, CTYPE, DTYPES, F16, assert_half_bounded,  # noqa: E402, F401
                          emulated, misaligned, spy)  # tests/half_helpers.py
from helpers import both_orders  # noqa: E402

from convgpu import reference_nhwc as ref  # noqa: E402
from convgpu.core.args import conv_geometry  # noqa: E402
from convgpu.kernels.cuda import conv_implicit, conv_nhwc16  # noqa: E402


pytestmark = pytest.mark.usefixtures("emulated")


def _spy(monkeypatch, *sources):
    """The kernels launched from `sources` (.cu files): every tc16 convolution launch, NCHW or
    NHWC, goes through conv_implicit.mma16_split_launch and its get_function."""
    return spy(monkeypatch, conv_implicit, sources)


def _nchw(a):
    return np.ascontiguousarray(a.transpose(0, 3, 1, 2))


def _nhwc(a):
    return np.ascontiguousarray(a.transpose(0, 2, 3, 1))


# (N, C, H, W, K, R, S, stride, padding, dilation, groups)
CASES = [
    # C = 3, K = 37 (odd: single stores), N*P*Q = 180 (2 row tiles, the second partial):
    # element-wise everywhere; input gradient on gy itself (stride 1)
    (2, 3, 9, 10, 37, 3, 3, (1, 1), (1, 1), (1, 1), 1),
    # 1 x 1, stride 2, groups, C/groups = 8 (16-byte copies of x and w), K/groups = 132 (2
    # column tiles, paired stores, element-wise gy); input gradient by phases, three of the
    # four without a tap (zeros)
    (1, 16, 7, 6, 264, 1, 1, (2, 2), (0, 0), (1, 1), 2),
    # dilation 2, stride (2, 1), padding, 144 deep: 5 slices (stage buffers reused); 16-byte
    # copies in all three; input gradient by phases (the even rows' phase has no tap)
    (1, 16, 6, 7, 24, 3, 3, (2, 1), (1, 2), (2, 1), 1),
    # 288 deep: the forward and the input gradient split in 2 (bias in split 0)
    (1, 32, 4, 5, 8, 3, 3, (1, 1), (1, 1), (1, 1), 1),
    # N*P*Q = 312: the weight gradient split in 2, 3 row tiles in the forward
    (2, 8, 13, 12, 16, 3, 3, (1, 1), (1, 1), (1, 1), 1),
    # groups, C/groups = 3, 2 x 2 filters, padding past the filter's reach (stride 1, but the
    # input gradient's forward would pad by -1: the phase kernel, one phase)
    (1, 6, 5, 5, 10, 2, 2, (1, 1), (2, 1), (1, 1), 2),
    # stride 2, 3 x 3, K = 128: the phases have 1, 2, 2 and 4 taps, 512 deep at most: the input
    # gradient split in 2, the 1-tap phase's second split empty (zeros in its partial)
    (1, 8, 6, 6, 128, 3, 3, (2, 2), (1, 1), (1, 1), 1),
    # C = 130: the input gradient's (and the weight gradient's) second column tile, element-wise
    (1, 130, 3, 5, 8, 1, 1, (2, 2), (0, 0), (1, 1), 1),
]


def _problem(rng, case, dtype):
    N, C, H, W, K, R, S, st, pd, dl, g = case
    x = rng.standard_normal((N, H, W, C)).astype(dtype)
    w = rng.standard_normal((K, R, S, C // g)).astype(dtype)
    b = rng.standard_normal(K).astype(dtype)
    a = conv_geometry("conv2d", x.shape, w.shape, st, pd, dl, g, dtype, layout="NHWC")
    gy = rng.standard_normal(a.y_shape).astype(dtype)
    return a, x, w, b, gy, dict(stride=st, padding=pd, dilation=dl, groups=g)


f64 = lambda v: v.astype(np.float64)          # noqa: E731


@DTYPES
@pytest.mark.parametrize("case", CASES, ids=lambda c: "x".join(map(str, c[:7])))
def test_nhwc_mma16_against_the_reference(rng, monkeypatch, dtype, case):
    """The three passes from their launchers against the float64 NHWC reference of the
    16-bit inputs (+ bias) at the half bound, forward and reverse order; which copy path ran
    and which reductions were split (deeper than 256: split_for) are checked, so each case
    covers what its comment says."""
    a, x, w, b, gy, kw = _problem(rng, case, dtype)
    N, C, H, W, K, R, S, st, pd, dl, g = case
    Cg, Kg = C // g, K // g
    t = CTYPE[dtype]
    split = f"sum_splits_half<{t}>"
    names = _spy(monkeypatch, "conv_nhwc16.cu", "gemm.cu")

    y = both_orders(lambda: conv_nhwc16.conv2d_nhwc_implicit_gemm_mma16(a, x, w, b))
    assert_half_bounded(y, ref.conv2d_nhwc(f64(x), f64(w), f64(b), **kw),
                        ref.conv2d_nhwc(abs(f64(x)), abs(f64(w)), abs(f64(b)), **kw),
                        Cg * R * S, dtype)
    assert names[0] == f"conv2d_nhwc_implicit_gemm_mma16<{t}, {str(Cg % 8 == 0).lower()}>"
    assert (split in names) == (Cg * R * S > 256), names

    del names[:]
    gx = both_orders(lambda: conv_nhwc16.backward_input_nhwc_implicit_gemm_mma16(a, gy, w))
    assert_half_bounded(gx, ref.conv2d_backward_input_nhwc(f64(gy), f64(w), x.shape, **kw),
                        ref.conv2d_backward_input_nhwc(abs(f64(gy)), abs(f64(w)), x.shape, **kw),
                        Kg * R * S, dtype)
    va, vb = str(Kg % 8 == 0).lower(), str(Cg % 8 == 0).lower()
    if conv_nhwc16._dgrad_forward(a) is not None:
        assert names[0] == f"conv2d_nhwc_implicit_gemm_mma16<{t}, {va}>", names
        assert (split in names) == (Kg * R * S > 256), names
    else:
        assert names[0] == f"conv2d_nhwc_dgrad_implicit_gemm_mma16<{t}, {va}, {vb}>", names
        assert (split in names) == (conv_nhwc16.phase_depth(a) > 256), names

    del names[:]
    gw = both_orders(lambda: conv_nhwc16.backward_weight_nhwc_implicit_gemm_mma16(a, x, gy))
    assert_half_bounded(gw, ref.conv2d_backward_weight_nhwc(f64(x), f64(gy), w.shape, **kw),
                        ref.conv2d_backward_weight_nhwc(abs(f64(x)), abs(f64(gy)), w.shape, **kw),
                        N * a.P * a.Q, dtype)
    va, vb = str(Kg % 8 == 0).lower(), str(Cg % 8 == 0).lower()
    assert names[0] == f"conv2d_nhwc_wgrad_implicit_gemm_mma16<{t}, {va}, {vb}>", names
    assert (split in names) == (N * a.P * a.Q > 256), names


def test_the_cases_cover_what_they_claim():
    """Both copy paths of each kernel, the splits, both input-gradient routes (and the phase
    kernel split), K = 37 and N*P*Q off the tile occur among CASES."""
    vec = [c[1] // c[10] % 8 == 0 for c in CASES]
    assert any(vec) and not all(vec)
    wg_a = [c[4] // c[10] % 8 == 0 for c in CASES]
    assert any(wg_a) and not all(wg_a)
    a = [conv_geometry("conv2d", (c[0], c[2], c[3], c[1]), (c[4], c[5], c[6], c[1] // c[10]),
                       *c[7:], F16, layout="NHWC") for c in CASES]
    phased = [conv_nhwc16._dgrad_forward(r) is None for r in a]
    assert any(phased) and not all(phased)
    assert any(r.stride == (1, 1) and z for r, z in zip(a, phased))   # negative padding
    assert any(z and conv_nhwc16.phase_depth(r) > 256 for r, z in zip(a, phased))
    assert any(r.N * r.P * r.Q > 256 for r in a) and any(r.Cg * r.R * r.S > 256 for r in a)
    assert any(r.N * r.P * r.Q % 128 and r.N * r.P * r.Q > 128 for r in a)
    assert any(r.K == 37 for r in a) and any(r.groups > 1 and r.Cg % 8 for r in a)


@DTYPES
def test_misaligned_arrays_take_the_element_path_with_the_same_bits(rng, monkeypatch, dtype):
    """A 16-byte case (C/groups and K/groups multiples of 8) from arrays 2 bytes off a
    16-byte boundary runs element by element, and gives the vector path's bits (the same
    products summed in the same order): the forward, the weight gradient and the input
    gradient's phase kernel (stride (2, 1))."""
    a, x, w, b, gy, _ = _problem(rng, CASES[2], dtype)
    names = _spy(monkeypatch, "conv_nhwc16.cu", "gemm.cu")
    y = both_orders(lambda: conv_nhwc16.conv2d_nhwc_implicit_gemm_mma16(a, x, w, b))
    y2 = both_orders(lambda: conv_nhwc16.conv2d_nhwc_implicit_gemm_mma16(a, misaligned(x), w, b))
    assert names[0].endswith("true>") and names[-1].endswith("false>"), names
    np.testing.assert_array_equal(y2.view(np.uint16), y.view(np.uint16))
    del names[:]
    gw = both_orders(lambda: conv_nhwc16.backward_weight_nhwc_implicit_gemm_mma16(a, x, gy))
    gw2 = both_orders(lambda: conv_nhwc16.backward_weight_nhwc_implicit_gemm_mma16(
        a, misaligned(x), misaligned(gy)))
    assert names[0].endswith("true, true>") and names[-1].endswith("false, false>"), names
    np.testing.assert_array_equal(gw2.view(np.uint16), gw.view(np.uint16))
    del names[:]
    gx = both_orders(lambda: conv_nhwc16.backward_input_nhwc_implicit_gemm_mma16(a, gy, w))
    gx2 = both_orders(lambda: conv_nhwc16.backward_input_nhwc_implicit_gemm_mma16(
        a, misaligned(gy), misaligned(w)))
    assert names[0] == names[0].split(",")[0] + ", true, true>", names     # the phase kernel
    assert names[-1].endswith("false, false>"), names
    np.testing.assert_array_equal(gx2.view(np.uint16), gx.view(np.uint16))


# Where the NHWC and NCHW kernels sum the same products in the same order, their results
# are equal bit for bit: the weight gradient always (both sum over the output positions
# (n, p, q) in order, split alike); the forward and the input gradient where the filter is
# 1 x 1 (depth k or c alone; with R*S > 1 the NHWC depth runs (r, s, c), the NCHW one
# (c, r, s): different sums, compared above against the reference instead). The strided
# input gradient's phase kernel splits by its own grid (groups x phases), so it matches only
# where neither splits, as here (132 deep).
@DTYPES
@pytest.mark.parametrize("case", [CASES[1], CASES[4]], ids=["1x1", "3x3"])
def test_nhwc_equals_nchw_mma16_transposed_where_the_sums_are_the_same(rng, dtype, case):
    a, x, w, b, gy, kw = _problem(rng, case, dtype)
    an = conv_geometry("conv2d", _nchw(x).shape, _nchw(w).shape, kw["stride"], kw["padding"],
                       kw["dilation"], kw["groups"], dtype)
    same = lambda u, v: np.testing.assert_array_equal(u.view(np.uint16), v.view(np.uint16))  # noqa
    gw = conv_nhwc16.backward_weight_nhwc_implicit_gemm_mma16(a, x, gy)
    same(gw, _nhwc(conv_implicit.backward_weight_implicit_gemm_mma16(an, _nchw(x), _nchw(gy))))
    if a.R * a.S == 1:
        y = conv_nhwc16.conv2d_nhwc_implicit_gemm_mma16(a, x, w, b)
        same(y, _nhwc(conv_implicit.conv2d_implicit_gemm_mma16(an, _nchw(x), _nchw(w), b)))
        gx = conv_nhwc16.backward_input_nhwc_implicit_gemm_mma16(a, gy, w)
        same(gx, _nhwc(conv_implicit.backward_input_implicit_gemm_mma16(an, _nchw(gy), _nchw(w))))


@DTYPES
def test_the_op_api_picks_the_native_kernel_for_half_nhwc(rng, monkeypatch, dtype):
    """conv2d and its two gradients with layout="NHWC" on the cuda backend, algo="auto":
    the NHWC tensor-core kernels run (not "transpose": no NCHW kernel is looked up), and
    give what the launchers give."""
    a, x, w, b, gy, kw = _problem(rng, CASES[2], dtype)
    names = _spy(monkeypatch, "conv_nhwc16.cu", "gemm.cu")
    nchw_names = _spy(monkeypatch, "conv_implicit.cu")
    y = convgpu.conv2d(x, w, b, **kw, layout="NHWC", backend="cuda")
    gx = convgpu.conv2d_backward_input(gy, w, x.shape, **kw, layout="NHWC", backend="cuda")
    gw = convgpu.conv2d_backward_weight(x, gy, w.shape, **kw, layout="NHWC", backend="cuda")
    assert not nchw_names, nchw_names
    assert [n.split("<")[0] for n in names] == [
        "conv2d_nhwc_implicit_gemm_mma16", "conv2d_nhwc_dgrad_implicit_gemm_mma16",
        "conv2d_nhwc_wgrad_implicit_gemm_mma16"], names
    same = lambda u, v: np.testing.assert_array_equal(u.view(np.uint16), v.view(np.uint16))  # noqa
    same(y, conv_nhwc16.conv2d_nhwc_implicit_gemm_mma16(a, x, w, b))
    same(gx, conv_nhwc16.backward_input_nhwc_implicit_gemm_mma16(a, gy, w))
    same(gw, conv_nhwc16.backward_weight_nhwc_implicit_gemm_mma16(a, x, gy))
    assert ("cuda", "implicit_gemm_nhwc_mma16") in convgpu.implementations("conv2d",
                                                                            layout="NHWC")
    assert ("cuda", "implicit_gemm_nhwc_mma16") not in convgpu.implementations("conv2d",
                                                                                layout="NCHW")


@DTYPES
def test_conv_transpose2d_nhwc_half_runs_the_input_gradient(rng, monkeypatch, dtype):
    """conv_transpose2d with layout="NHWC" in a half type runs the NHWC input gradient
    (stride 2, output_padding, groups: the phase kernel), bounded against the float64
    result of the numpy backend (reduction: at most Cin/groups*R*S products)."""
    names = _spy(monkeypatch, "conv_nhwc16.cu", "gemm.cu")
    x = rng.standard_normal((2, 5, 4, 16)).astype(dtype)
    w = rng.standard_normal((16, 3, 3, 6)).astype(dtype)
    kw = dict(stride=2, padding=1, output_padding=1, groups=2, layout="NHWC")
    y = both_orders(lambda: convgpu.conv_transpose2d(x, w, **kw, backend="cuda"))
    want = convgpu.conv_transpose2d(f64(x), f64(w), **kw, backend="numpy")
    mag = convgpu.conv_transpose2d(abs(f64(x)), abs(f64(w)), **kw, backend="numpy")
    assert_half_bounded(y, want, mag, 8 * 3 * 3, dtype)
    assert names and all(n.startswith("conv2d_nhwc_dgrad_implicit_gemm_mma16<") for n in names), names


@pytest.mark.parametrize("tdtype", ["float16", "bfloat16"])
def test_torch_channels_last_half_tensors_run_the_native_kernel(rng, monkeypatch, tdtype):
    """A torch channels_last float16 / bfloat16 tensor selects the NHWC path by its strides:
    the NHWC tensor-core forward runs, the result comes back channels_last in the same
    dtype, with the launcher's bits on the same values."""
    torch = pytest.importorskip("torch")
    dtype = F16 if tdtype == "float16" else BF16
    a, x, w, b, _, kw = _problem(rng, CASES[2], dtype)
    names = _spy(monkeypatch, "conv_nhwc16.cu", "gemm.cu")
    tx, tw, tb = (torch.from_numpy(v.astype(np.float32)).to(getattr(torch, tdtype))
                  for v in (_nchw(x), _nchw(w), b))
    cl = torch.channels_last
    y = convgpu.conv2d(tx.contiguous(memory_format=cl), tw.contiguous(memory_format=cl), tb,
                       **kw, backend="cuda")
    assert y.dtype == getattr(torch, tdtype) and y.is_contiguous(memory_format=cl)
    assert [n.split("<")[0] for n in names] == ["conv2d_nhwc_implicit_gemm_mma16"], names
    want = conv_nhwc16.conv2d_nhwc_implicit_gemm_mma16(a, x, w, b)
    got = y.permute(0, 2, 3, 1).float().numpy().astype(dtype)        # exact: a 16-bit value
    np.testing.assert_array_equal(got.view(np.uint16), want.view(np.uint16))


def test_refusals_are_one_sentence_before_any_launch(rng, monkeypatch):
    """float32 (and float64) to the half kernels by name: ValueError naming the types, from
    the launchers and from the op API; NCHW arrays to the NHWC kernel: refused by layout."""
    names = _spy(monkeypatch, "conv_nhwc16.cu", "gemm.cu")
    x, w = np.zeros((1, 5, 5, 8), np.float32), np.zeros((4, 3, 3, 8), np.float32)
    a = conv_geometry("conv2d", x.shape, w.shape, 1, 1, 1, 1, np.float32, layout="NHWC")
    gy = np.zeros(a.y_shape, np.float32)
    for call in (lambda: conv_nhwc16.conv2d_nhwc_implicit_gemm_mma16(a, x, w, None),
                 lambda: conv_nhwc16.backward_input_nhwc_implicit_gemm_mma16(a, gy, w),
                 lambda: conv_nhwc16.backward_weight_nhwc_implicit_gemm_mma16(a, x, gy)):
        with pytest.raises(ValueError, match="float16 or bfloat16"):
            call()
    with pytest.raises(ValueError, match="float16, bfloat16"):
        convgpu.conv2d(x, w, padding=1, layout="NHWC", backend="cuda",
                       algo="implicit_gemm_nhwc_mma16")
    h = x.astype(F16)
    with pytest.raises(ValueError, match="NHWC"):
        convgpu.conv2d(_nchw(h), np.zeros((4, 8, 3, 3), F16), backend="cuda",
                       algo="implicit_gemm_nhwc_mma16")
    assert not names, names


def test_supports_refuses_what_the_kernels_cannot_index():
    """A sentence, from the records alone (nothing allocated): 32-bit indices past 2**31,
    more grid layers (groups x stride phases) than gridDim.z allows."""
    big = conv_geometry("conv2d", (2 ** 16, 256, 256, 8), (8, 3, 3, 8), 1, 1, 1, 1, F16,
                        layout="NHWC")
    for supports in (conv_nhwc16.mma16_nhwc_supports, conv_nhwc16.wgrad_mma16_supports,
                     conv_nhwc16.dgrad_mma16_supports):
        assert "32 bits" in supports(big), supports
    many = conv_geometry("conv2d", (1, 8, 8, 20000), (20000, 1, 1, 1), 2, 0, 1, 20000, F16,
                         layout="NHWC")
    assert conv_nhwc16.mma16_nhwc_supports(many) is None
    assert "grid layer per group and stride phase" in conv_nhwc16.dgrad_mma16_supports(many)
    ok = conv_geometry("conv2d", (1, 8, 8, 8), (8, 3, 3, 8), 2, 1, 1, 1, BF16, layout="NHWC")
    assert conv_nhwc16.dgrad_mma16_supports(ok) is None
