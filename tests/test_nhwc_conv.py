"""Channels-last (NHWC) convolution: conv2d, its three gradients and conv_transpose2d with
layout="NHWC" (input (N, H, W, C), weight (K, R, S, C/groups), output (N, P, Q, K)).

- the NHWC reference (its own window view and einsum over NHWC axes) against the NCHW
  reference and a loop-by-loop brute force, and against torch on channels_last tensors;
- every registered implementation that serves NHWC, one body per op: the numpy backend,
  and the cuda backend's (the NHWC implicit GEMM, FP32 and TF32, and algo="transpose")
  in the host emulation, threads and blocks in both orders, outputs poisoned, against the
  float64 reference at the design's tolerance (emulated, not validated: a GPU validates);
- the NHWC results equal the NCHW results transposed: bitwise where the summation is the
  same (algo="transpose" runs the NCHW kernel), to the tolerance where it is not;
- torch channels_last tensors select the NHWC path by their strides, without a copy of
  the input, and come back channels_last;
- bad layouts and shapes that do not match the layout: one ValueError before any launch.
"""
import numpy as np
import pytest

import brute
import convgpu
from convgpu import reference, reference_nhwc
from convgpu.core import args as A
from convgpu.ops._registry import all_impls
from helpers import CONV_SMALL, TOL, assert_close, rand
from helpers import both_orders_on as both_orders, host_backend  # noqa: F401 (a fixture)

TOL_TF32 = 2e-3          # docs/architecture.md: TF32 paths against the float64 reference


def nhwc(a):
    return np.ascontiguousarray(a.transpose(0, 2, 3, 1))


def nchw(a):
    return np.ascontiguousarray(a.transpose(0, 3, 1, 2))


def geometry(case):
    N, C, H, W, K, R, S, st, pd, dl, g = case
    return (N, H, W, C), (K, R, S, C // g), dict(stride=st, padding=pd, dilation=dl, groups=g)


def problem(rng, case, dtype=np.float64):
    xs, ws, kw = geometry(case)
    return rand(rng, xs, dtype), rand(rng, ws, dtype), rand(rng, (ws[0],), dtype), kw


def pairs(kw):
    return (A.pair("", "", kw["stride"], minimum=1), A.pair("", "", kw["padding"], minimum=0),
            A.pair("", "", kw["dilation"], minimum=1), kw["groups"])


# more shapes than CONV_SMALL: odd channel counts, 1x1, a kernel wider than tall
CASES = CONV_SMALL + [
    (2, 3, 5, 4, 5, 1, 1, (1, 1), (0, 0), (1, 1), 1),
    (1, 6, 6, 7, 4, 2, 3, (1, 2), (2, 1), (1, 1), 2),
    (3, 5, 4, 6, 7, 3, 1, (2, 1), (1, 0), (1, 2), 1),
]


# ----------------------------------------------------------------------------------------
# the reference


@pytest.mark.parametrize("case", CASES)
def test_reference_nhwc_against_nchw_and_brute(rng, case):
    x, w, b, kw = problem(rng, case)
    st, pd, dl, g = pairs(kw)
    y = reference_nhwc.conv2d_nhwc(x, w, b, st, pd, dl, g)
    y_nchw = reference.conv2d(nchw(x), nchw(w), b, st, pd, dl, g)
    assert_close(nchw(y), y_nchw, TOL[np.float64])
    assert_close(nchw(y), brute.conv2d(nchw(x), nchw(w), b, st, pd, dl, g), TOL[np.float64])
    gy = rand(rng, y.shape)
    gx = reference_nhwc.conv2d_backward_input_nhwc(gy, w, x.shape, st, pd, dl, g)
    gw = reference_nhwc.conv2d_backward_weight_nhwc(x, gy, w.shape, st, pd, dl, g)
    gx_ref, gw_ref = brute.conv2d_backward(nchw(x).shape, nchw(w), nchw(x), nchw(gy), st, pd,
                                           dl, g)[:2]
    assert_close(nchw(gx), gx_ref, TOL[np.float64])
    assert_close(nchw(gw), gw_ref, TOL[np.float64])
    assert_close(reference_nhwc.conv2d_backward_bias_nhwc(gy), gy.sum(axis=(0, 1, 2)),
                 TOL[np.float64])


def test_reference_nhwc_gradients_are_adjoints(rng):
    """<conv(x), gy> = <x, backward_input(gy)> = <w, backward_weight(x, gy)>: the scatter of
    the input gradient and the einsum of the weight gradient are the forward's adjoints."""
    x, w, _, kw = problem(rng, CASES[1])
    st, pd, dl, g = pairs(kw)
    y = reference_nhwc.conv2d_nhwc(x, w, None, st, pd, dl, g)
    gy = rand(rng, y.shape)
    lhs = np.vdot(y, gy)
    assert abs(lhs - np.vdot(x, reference_nhwc.conv2d_backward_input_nhwc(
        gy, w, x.shape, st, pd, dl, g))) <= 1e-12 * abs(lhs)
    assert abs(lhs - np.vdot(w, reference_nhwc.conv2d_backward_weight_nhwc(
        x, gy, w.shape, st, pd, dl, g))) <= 1e-12 * abs(lhs)


# ----------------------------------------------------------------------------------------
# every implementation that serves NHWC


def nhwc_impls(op):
    """The numpy and cuda implementations serving NHWC in float32 (the half-only ones,
    implicit_gemm_nhwc_mma16: tests/test_cuda_nhwc16.py, at the half bound)."""
    return [(i.backend, i.algo) for i in all_impls(op, layout="NHWC")
            if i.backend in ("numpy", "cuda") and "float32" in i.dtypes]


def _params(op):
    return [pytest.param(b, a, id=f"{b}-{a}") for b, a in nhwc_impls(op)]


def test_every_conv_op_has_nhwc_implementations():
    for op in ("conv2d", "conv2d_backward_input", "conv2d_backward_weight"):
        served = convgpu.implementations(op, layout="NHWC")
        assert {"numpy", "numba", "cuda"} <= {b for b, _ in served}, (op, served)
        assert ("cuda", "transpose") in served and ("numba", "transpose") in served
    assert ("cuda", "implicit_gemm_nhwc") in convgpu.implementations("conv2d", layout="NHWC")
    assert ("cuda", "implicit_gemm_nhwc") not in convgpu.implementations("conv2d",
                                                                          layout="NCHW")


def _tol(algo, dtype):
    return TOL_TF32 if "tf32" in algo else TOL[dtype]


def _dtypes(algo):
    return (np.float32,) if "nhwc" in algo else (np.float32, np.float64)


@pytest.mark.parametrize("host_backend,algo", _params("conv2d"), indirect=["host_backend"])
@pytest.mark.parametrize("case", CASES[:4] + CASES[-2:])
def test_conv2d_nhwc(rng, host_backend, algo, case):
    for dtype in _dtypes(algo):
        x, w, b, kw = problem(rng, case, dtype)
        x64, w64, b64 = (a.astype(np.float64) for a in (x, w, b))
        ref = reference.conv2d(nchw(x64), nchw(w64), b64, *pairs(kw))
        y = both_orders(host_backend, lambda: convgpu.conv2d(
            x, w, b, **kw, layout="NHWC", backend=host_backend, algo=algo,
            allow_tf32="tf32" in algo))
        assert y.dtype == dtype and y.shape == nhwc(ref).shape
        assert_close(nchw(y), ref, _tol(algo, dtype))
        if algo == "transpose":
            # the NCHW kernel on the transposed input: the same sums, the same bits
            y_nchw = convgpu.conv2d(nchw(x), nchw(w), b, **kw, backend=host_backend)
            np.testing.assert_array_equal(nchw(y), y_nchw)


# stride 1, dilated, grouped, padding below and at the dilated kernel's reach: the cuda NHWC
# input gradient's forward on rotated filters (the other cases: its gather kernel)
STRIDE1 = [(2, 4, 7, 6, 6, 3, 2, (1, 1), (2, 1), (2, 1), 2),
           (1, 3, 5, 8, 5, 2, 3, (1, 1), (0, 2), (1, 1), 1)]


@pytest.mark.parametrize("host_backend,algo", _params("conv2d_backward_input"),
                         indirect=["host_backend"])
@pytest.mark.parametrize("case", CASES[:3] + CASES[-3:-2] + CASES[-1:] + STRIDE1)
def test_conv2d_backward_input_nhwc(rng, host_backend, algo, case):
    for dtype in _dtypes(algo):
        x, w, _, kw = problem(rng, case, dtype)
        gy = rand(rng, convgpu.conv2d(x, w, **kw, layout="NHWC").shape, dtype)
        ref = reference.conv2d_backward_input(nchw(gy).astype(np.float64),
                                              nchw(w).astype(np.float64), nchw(x).shape,
                                              *pairs(kw))
        gx = both_orders(host_backend, lambda: convgpu.conv2d_backward_input(
            gy, w, x.shape, **kw, layout="NHWC", backend=host_backend, algo=algo,
            allow_tf32="tf32" in algo))
        assert gx.dtype == dtype and gx.shape == x.shape
        assert_close(nchw(gx), ref, _tol(algo, dtype))
        if algo == "transpose":
            np.testing.assert_array_equal(nchw(gx), convgpu.conv2d_backward_input(
                nchw(gy), nchw(w), nchw(x).shape, **kw, backend=host_backend))


# N*P*Q = 578 output positions: the cuda NHWC weight gradient splits them (two partials
# summed in order)
SPLIT = [(2, 3, 17, 17, 4, 3, 3, (1, 1), (1, 1), (1, 1), 1)]


@pytest.mark.parametrize("host_backend,algo", _params("conv2d_backward_weight"),
                         indirect=["host_backend"])
@pytest.mark.parametrize("case", CASES[:3] + CASES[-1:] + SPLIT)
def test_conv2d_backward_weight_nhwc(rng, host_backend, algo, case):
    for dtype in _dtypes(algo):
        x, w, _, kw = problem(rng, case, dtype)
        gy = rand(rng, convgpu.conv2d(x, w, **kw, layout="NHWC").shape, dtype)
        ref = reference.conv2d_backward_weight(nchw(x).astype(np.float64),
                                               nchw(gy).astype(np.float64), nchw(w).shape,
                                               *pairs(kw))
        gw = both_orders(host_backend, lambda: convgpu.conv2d_backward_weight(
            x, gy, w.shape, **kw, layout="NHWC", backend=host_backend, algo=algo,
            allow_tf32="tf32" in algo))
        assert gw.dtype == dtype and gw.shape == w.shape
        assert_close(nchw(gw), ref, _tol(algo, dtype))


@pytest.mark.parametrize("host_backend", ["numpy", "cuda"], indirect=True)
def test_conv2d_backward_bias_nhwc(rng, host_backend):
    """NHWC grad_output (N, P, Q, K) is the NCHW (N*P*Q, K, 1, 1) view: every
    implementation serves it."""
    for dtype in (np.float32, np.float64):
        gy = rand(rng, (2, 3, 5, 4), dtype)
        gb = both_orders(host_backend, lambda: convgpu.conv2d_backward_bias(
            gy, layout="NHWC", backend=host_backend))
        assert gb.dtype == dtype
        assert_close(gb, gy.astype(np.float64).sum(axis=(0, 1, 2)), TOL[dtype])


@pytest.mark.parametrize("host_backend", ["numpy", "cuda"], indirect=True)
@pytest.mark.parametrize("opad,stride,dil", [((0, 0), (2, 1), (1, 1)), ((1, 0), (2, 2), (1, 2)),
                                             ((0, 1), (1, 1), (1, 2))])
def test_conv_transpose2d_nhwc(rng, host_backend, opad, stride, dil):
    """conv_transpose2d NHWC: input (N, H, W, Cin), weight (Cin, R, S, Cout/groups); with
    output_padding reaching the stride (the uncropped frame) too."""
    x = rand(rng, (2, 4, 5, 4))
    w = rand(rng, (4, 3, 2, 3))                      # Cin 4, 3 x 2 kernel, Cout/groups 3
    b = rand(rng, (6,))
    kw = dict(stride=stride, padding=1, output_padding=opad, groups=2, dilation=dil)
    y = both_orders(host_backend, lambda: convgpu.conv_transpose2d(
        x, w, b, **kw, layout="NHWC", backend=host_backend))
    ref = convgpu.conv_transpose2d(nchw(x), nchw(w), b, **kw)
    assert y.shape == nhwc(ref).shape
    assert_close(nchw(y), ref, TOL[np.float64])


@pytest.mark.parametrize("padding", ["same", "valid", (2, 1)])
def test_nhwc_padding_strings_and_unbatched(rng, padding):
    """padding='same' with an even kernel (the extra row after), 'valid', and an unbatched
    (H, W, C) input, each against the NCHW op transposed."""
    x, w = rand(rng, (2, 7, 6, 3)), rand(rng, (4, 2, 3, 3))
    kw = dict(padding=padding, dilation=(1, 2))
    y = convgpu.conv2d(x, w, **kw, layout="NHWC")
    assert_close(nchw(y), convgpu.conv2d(nchw(x), nchw(w), **kw), TOL[np.float64])
    gy = rand(rng, y.shape)
    assert_close(nchw(convgpu.conv2d_backward_input(gy, w, x.shape, **kw, layout="NHWC")),
                 convgpu.conv2d_backward_input(nchw(gy), nchw(w), nchw(x).shape, **kw),
                 TOL[np.float64])
    assert_close(nchw(convgpu.conv2d_backward_weight(x, gy, w.shape, **kw, layout="NHWC")),
                 convgpu.conv2d_backward_weight(nchw(x), nchw(gy), nchw(w).shape, **kw),
                 TOL[np.float64])
    one = convgpu.conv2d(x[0], w, **kw, layout="NHWC")
    assert one.shape == y.shape[1:]
    assert_close(one, y[0], TOL[np.float64])


# ----------------------------------------------------------------------------------------
# torch channels_last


try:
    import torch
    F = torch.nn.functional
except ImportError:                      # the torch checks skip; the rest runs
    torch = None

needs_torch = pytest.mark.skipif(torch is None, reason="torch is not installed")


def _cl(a):
    return torch.from_numpy(a).contiguous(memory_format=torch.channels_last)


@needs_torch
def test_channels_last_selects_nhwc_without_copying(rng, monkeypatch):
    """A channels_last input runs the NHWC path on its own memory (no copy), comes back
    channels_last and equals torch's channels_last result."""
    import convgpu.ops.conv as conv_ops
    seen = []
    real = conv_ops.dispatch

    def spy(op, args, *rest):
        seen.append((args.layout, rest[3]))
        return real(op, args, *rest)
    monkeypatch.setattr(conv_ops, "dispatch", spy)
    x, w, b = _cl(rand(rng, (2, 3, 7, 6))), _cl(rand(rng, (4, 3, 3, 2))), torch.from_numpy(
        rand(rng, (4,)))
    y = convgpu.conv2d(x, w, b, stride=(2, 1), padding=1)
    layout, native_x = seen[-1]
    assert layout == "NHWC"
    assert native_x.__array_interface__["data"][0] == x.data_ptr()     # the same memory
    assert y.shape == (2, 4, 4, 7) and y.is_contiguous(memory_format=torch.channels_last)
    assert_close(y.numpy(), F.conv2d(x, w, b, stride=(2, 1), padding=1).numpy(),
                 TOL[np.float64])
    # NCHW-contiguous tensors stay on the NCHW path
    convgpu.conv2d(x.contiguous(), w.contiguous(), b, padding=1)
    assert seen[-1][0] == "NCHW"


@needs_torch
def test_channels_last_gradients_and_transpose(rng):
    """The three gradients and conv_transpose2d on channels_last tensors: channels_last
    out, torch's values (autograd through F.conv2d)."""
    x = _cl(rand(rng, (2, 4, 6, 5))).requires_grad_()
    w = _cl(rand(rng, (6, 2, 3, 3))).requires_grad_()
    kw = dict(stride=1, padding=(1, 0), dilation=(1, 2), groups=2)
    y = F.conv2d(x, w, **kw)
    gy = _cl(rand(rng, tuple(y.shape)))
    y.backward(gy)
    gx = convgpu.conv2d_backward_input(gy, w.detach(), tuple(x.shape), **kw)
    gw = convgpu.conv2d_backward_weight(x.detach(), gy, tuple(w.shape), **kw)
    gb = convgpu.conv2d_backward_bias(gy)
    for ours, theirs in ((gx, x.grad), (gw, w.grad), (gb, gy.sum((0, 2, 3)))):
        assert_close(ours.numpy(), theirs.numpy(), TOL[np.float64])
    assert gx.is_contiguous(memory_format=torch.channels_last) and not gx.is_contiguous()
    assert gw.is_contiguous(memory_format=torch.channels_last) and not gw.is_contiguous()
    wt = _cl(rand(rng, (4, 3, 3, 2)))
    yt = convgpu.conv_transpose2d(x.detach(), wt, stride=2, padding=1, output_padding=1,
                                  groups=2)
    assert yt.is_contiguous(memory_format=torch.channels_last)
    assert_close(yt.numpy(), F.conv_transpose2d(x.detach(), wt, stride=2, padding=1,
                                                output_padding=1, groups=2).numpy(),
                 TOL[np.float64])


@needs_torch
def test_channels_last_bridge_trains_like_nchw(rng):
    """convgpu.torch's conv on a channels_last model and input: the gradients equal the
    NCHW model's (the NHWC path end to end through autograd)."""
    import convgpu.torch as ct
    conv = torch.nn.Conv2d(3, 4, 3, padding=1, dtype=torch.float64)
    ours = ct.convert(torch.nn.Sequential(conv))
    xs = torch.from_numpy(rand(rng, (2, 3, 6, 5)))
    grads = []
    for fmt in (torch.contiguous_format, torch.channels_last):
        ours.zero_grad()
        m = ours.to(memory_format=fmt)
        x = xs.contiguous(memory_format=fmt).detach().requires_grad_()
        m(x).square().sum().backward()
        grads.append((x.grad.clone(), m[0].weight.grad.clone(), m[0].bias.grad.clone()))
        if fmt == torch.channels_last:
            assert x.grad.is_contiguous(memory_format=torch.channels_last)
    for a, b in zip(*grads):
        assert_close(a.numpy(), b.numpy(), TOL[np.float64])


# ----------------------------------------------------------------------------------------
# bad input: one ValueError before any launch


@pytest.mark.parametrize("layout", ["nhwc", "NCWH", "", None, 1])
def test_bad_layout(rng, layout):
    x, w = rand(rng, (1, 3, 5, 5)), rand(rng, (2, 3, 3, 3))
    with pytest.raises(ValueError, match=r"^conv2d: layout must be 'NCHW' or 'NHWC', got "):
        convgpu.conv2d(x, w, layout=layout)
    with pytest.raises(ValueError, match="conv2d_backward_bias: layout must be"):
        convgpu.conv2d_backward_bias(x, layout=layout)


def test_shapes_that_do_not_match_the_layout(rng):
    x = rand(rng, (1, 5, 6, 3))                          # NHWC, 3 channels
    with pytest.raises(ValueError, match=r"input has 3 channels but weight expects 2 .*"
                                         r"layout='NHWC': input \(N, H, W, C\), weight "
                                         r"\(K, R, S, C/groups\)"):
        convgpu.conv2d(x, rand(rng, (2, 3, 3, 2)), layout="NHWC")   # an NCHW weight
    with pytest.raises(ValueError, match=r"weight must be 4-D \(K, R, S, C/groups\)"):
        convgpu.conv2d(x, rand(rng, (2, 3, 3)), layout="NHWC")
    with pytest.raises(ValueError, match=r"input must be 3-D \(H, W, C\) or 4-D \(N, H, W, C\)"):
        convgpu.conv2d(rand(rng, (5, 6)), rand(rng, (2, 3, 3, 3)), layout="NHWC")
    w = rand(rng, (2, 3, 3, 3))
    with pytest.raises(ValueError, match=r"grad_output has shape \(1, 2, 3, 4\) but .* gives "
                                         r"\(1, 3, 4, 2\)"):
        convgpu.conv2d_backward_input(rand(rng, (1, 2, 3, 4)), w, x.shape, layout="NHWC")
    with pytest.raises(ValueError, match="weight expects"):
        convgpu.conv_transpose2d(x, rand(rng, (2, 3, 3, 3)), layout="NHWC")


def test_nchw_only_kernels_refuse_nhwc_with_a_sentence(rng, monkeypatch):
    monkeypatch.setenv("CONVGPU_CUDA_HOST", "1")
    x, w = rand(rng, (1, 5, 6, 3), np.float32), rand(rng, (2, 3, 3, 3), np.float32)
    with pytest.raises(ValueError, match=r"\(cuda, implicit_gemm\) cannot serve this call: "
                                         r"serves layout NCHW only, not NHWC; "
                                         r"algo='transpose' runs the NCHW kernels"):
        convgpu.conv2d(x, w, layout="NHWC", backend="cuda", algo="implicit_gemm")
    with pytest.raises(ValueError, match=r"serves layout NHWC only, not NCHW"):
        convgpu.conv2d(nchw(x), nchw(w), backend="cuda", algo="implicit_gemm_nhwc")
    with pytest.raises(ValueError, match=r"takes float32, got float64"):
        convgpu.conv2d(x.astype(np.float64), w.astype(np.float64), layout="NHWC",
                       backend="cuda", algo="implicit_gemm_nhwc")
    with pytest.raises(ValueError, match="TF32 is not allowed"):
        convgpu.conv2d(x, w, layout="NHWC", backend="cuda", algo="implicit_gemm_nhwc_tf32")
    # 1 x 1, padding 1: past its reach, the gather kernel at stride 1
    w1 = rand(rng, (2, 1, 1, 3), np.float32)
    gy = rand(rng, (1, 7, 8, 2), np.float32)
    gx = convgpu.conv2d_backward_input(gy, w1, x.shape, padding=1, layout="NHWC",
                                       backend="cuda", algo="implicit_gemm_nhwc")
    assert_close(nchw(gx), reference.conv2d_backward_input(
        nchw(gy).astype(np.float64), nchw(w1).astype(np.float64), nchw(x).shape, (1, 1),
        (1, 1), (1, 1), 1), TOL[np.float32])
    with pytest.raises(ValueError, match=r"\(numpy, fft\) cannot serve this call: serves "
                                         r"layout NCHW only, not NHWC$"):
        convgpu.conv2d(x, w, layout="NHWC", algo="fft")


def test_registering_an_unknown_layout_is_refused():
    from convgpu.ops._registry import register
    with pytest.raises(ValueError, match="layouts must name NCHW and/or NHWC"):
        register("conv2d", "numpy", "nowhere", "nowhere:fn", layouts=("NCWH",))


# ----------------------------------------------------------------------------------------
# compile tier: the TF32 NHWC kernel runs on the tensor cores, the FP32 one does not


def test_nhwc_kernels_use_the_instructions_they_claim():
    pytest.importorskip("cupy")
    from cupy.cuda import nvrtc
    from convgpu.kernels.cuda import sources
    exprs = sources.NAME_EXPRESSIONS["conv_nhwc.cu"]
    prog = nvrtc.createProgram(sources.source("conv_nhwc.cu"), "conv_nhwc.cu", [], [])
    for e in exprs:
        nvrtc.addNameExpression(prog, e)
    nvrtc.compileProgram(prog, list(sources.options()) + list(sources.RUNTIME_ADDED_OPTIONS)
                         + ["-arch=compute_90"])
    ptx = nvrtc.getPTX(prog)
    ptx = ptx.decode() if isinstance(ptx, bytes) else ptx
    entries = {}
    for e in exprs:
        low = nvrtc.getLoweredName(prog, e)
        low = low.decode() if isinstance(low, bytes) else low
        start = ptx.index(f".entry {low}(")
        nxt = ptx.find(".entry ", start + 1)
        entries[e] = ptx[start:nxt if nxt > 0 else len(ptx)]
    mma = "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32"
    for k in ("", "wgrad_", "dgrad_"):
        assert mma in entries[f"conv2d_nhwc_{k}implicit_gemm<float, true>"]
        assert mma not in entries[f"conv2d_nhwc_{k}implicit_gemm<float, false>"]
        assert "fma.rn.ftz.f32" in entries[f"conv2d_nhwc_{k}implicit_gemm<float, false>"]


# ----------------------------------------------------------------------------------------
# the channels-last GPU tier's own code, on the stand-in device (the host emulation behind
# a CuPy-like device), on a selection of its odd shapes: what a GPU run will execute, tried
# without one


def test_nhwc_gpu_tier_on_the_stand_in_device():
    from convgpu.kernels.cuda.emulator import cuda_host
    if not cuda_host.available():
        pytest.skip(f"no C++ compiler ({cuda_host.CXX}) for the host emulation")
    from test_stand_in_device import ROOT, run_on_stand_in
    passed, rest, out = run_on_stand_in(ROOT / "tests" / "test_nhwc_gpu.py", "-k",
                                        "conv4 or (odd and (max_pool or batch_norm))")
    assert passed >= 12, out


@pytest.mark.parametrize("host_backend", ["numpy", "cuda"], indirect=True)
def test_empty_nhwc_problems_launch_nothing(rng, host_backend, monkeypatch):
    """An empty batch, no output channels, no input channels per group: answered as in NCHW
    (empty arrays; zeros plus the bias for an empty sum) without dispatching."""
    import convgpu.ops.conv as conv_ops
    monkeypatch.setattr(conv_ops, "dispatch", lambda *a, **k: pytest.fail("dispatched"))
    b = rand(rng, (4,))
    y = convgpu.conv2d(np.zeros((0, 5, 6, 3)), rand(rng, (4, 3, 3, 3)), b, layout="NHWC",
                       backend=host_backend)
    assert y.shape == (0, 3, 4, 4)
    y = convgpu.conv2d(np.zeros((2, 5, 6, 0)), np.zeros((4, 3, 3, 0)), b, layout="NHWC",
                       backend=host_backend)
    assert y.shape == (2, 3, 4, 4)
    np.testing.assert_array_equal(y, np.broadcast_to(b, y.shape))
    gx = convgpu.conv2d_backward_input(np.zeros((2, 3, 4, 0)), np.zeros((0, 3, 3, 3)),
                                       (2, 5, 6, 3), layout="NHWC", backend=host_backend)
    assert gx.shape == (2, 5, 6, 3) and not gx.any()
    assert convgpu.conv2d_backward_bias(np.zeros((0, 3, 4, 4)), layout="NHWC").shape == (4,)
    y, idx = convgpu.max_pool2d(np.zeros((0, 6, 6, 3)), 2, return_indices=True, layout="NHWC",
                                backend=host_backend)
    assert y.shape == idx.shape == (0, 3, 3, 3)
    bn = convgpu.batch_norm(np.zeros((0, 4, 4, 3)), np.zeros(3), np.ones(3), training=True,
                            layout="NHWC", backend=host_backend)
    assert bn.shape == (0, 4, 4, 3)
    assert convgpu.global_avg_pool2d(np.zeros((2, 4, 4, 0)), layout="NHWC").shape == (2, 0)
