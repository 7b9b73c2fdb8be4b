"""The convolutions on every backend (tests/ops/conftest.py): conv2d and its input and
weight gradients by every registered algorithm, the transposed convolution and
padding="same", float32 and float64 (TF32 algorithms in float32), against torch's float64
convolution and autograd by both checks of docs/tolerances.md; an algorithm must decline,
with the registry's refusal, exactly the geometries it does not serve. The paths only the
CUDA C kernels have (depthwise variants, grid limits, split-K, the pipelined kernels) stay
in tests/test_cuda_host.py.

Cases: numpy and cuda run the small geometries and the CUDA C tile edges (CONV); numba,
in the simulator, the small ones it serves and one it must decline."""
import numpy as np
import pytest

import convgpu
from convgpu.ops._registry import NotServed, all_impls
from helpers import (CONV_SMALL, CONV_TILES, DEPTHWISE, RUNNABLE, SAME_EDGES, TOL, assert_close,
                     assert_conv_close, check_same_edge, rand)

CONV = CONV_TILES
# The TF32 FFT paths run the FFT code of "fft" (every case) with the per-frequency GEMM on
# gemm_pipelined (its own tests in test_cuda_host.py): the large cases' hundreds of batched
# tensor-core GEMMs would cost minutes of emulation for nothing new, so they get the small
# cases only. The depthwise kernels get their own geometries (helpers.DEPTHWISE).
EMULATION_HEAVY = {"fft_tf32": CONV_SMALL, "depthwise": DEPTHWISE}
# what the Numba kernels' refusals say (the CUDA C ones are checked for the registry's words)
NUMBA_DECLINE = {"fft": "serves dilation 1 only", "winograd": "serves 3x3 filters at stride 1"}


def serves(backend, op, algo, case):
    """Which geometries each algorithm takes; the others it must decline. (The NumPy FFT
    convolution dilates the filter instead: it serves every geometry.)"""
    N, C, H, W, K, R, S, st, pd, dl, g = case
    if algo.startswith("fft"):
        return backend == "numpy" or dl == (1, 1)
    if algo.startswith("winograd"):
        ok = (R, S) == (3, 3) and st == (1, 1) and dl == (1, 1)
        return ok and (op != "conv2d_backward_input" or max(pd) <= 2)
    if algo == "depthwise":
        return C == g
    return True


def dtypes(algo):
    return [np.float32] if "tf32" in algo else [np.float32, np.float64]


def conv_params(op):
    """(backend, algo, case, dtype) for every registered implementation of `op` on the
    backends this process runs (kernels/dev's included: the tests set CONVGPU_DEV=1)."""
    out = []
    for b in RUNNABLE:
        for impl in [i for i in all_impls(op) if i.backend == b]:
            algo = impl.algo
            # float32 / float64 here; the half-only kernels are tests/test_half.py's
            dts = [dt for dt in dtypes(algo) if np.dtype(dt).name in impl.dtypes]
            if b == "numba":
                declined = [c for c in CONV_SMALL if not serves(b, op, algo, c)]
                cases = [c for c in CONV_SMALL if serves(b, op, algo, c)] + declined[:1]
            else:
                cases = EMULATION_HEAVY.get(algo, CONV)
            out += [pytest.param(b, algo, c, dt, id=f"{b}-{algo}-{c[:7]}-{np.dtype(dt).name}")
                    for c in cases for dt in dts]
    return out


def torch_conv(x, w, b, gy, kw):
    """torch's float64 conv2d of x, w (and bias b), and with gy the input and weight
    gradients (autograd): the oracle no backend's code computes."""
    import torch
    xt = torch.from_numpy(np.asarray(x, np.float64)).requires_grad_()
    wt = torch.from_numpy(np.asarray(w, np.float64)).requires_grad_()
    bt = None if b is None else torch.from_numpy(np.asarray(b, np.float64))
    yt = torch.nn.functional.conv2d(xt, wt, bt, **kw)
    if gy is None:
        return yt.detach().numpy()
    yt.backward(torch.from_numpy(np.asarray(gy, np.float64)))
    return yt.detach().numpy(), xt.grad.numpy(), wt.grad.numpy()


def setup(rng, case):
    N, C, H, W, K, R, S, st, pd, dl, g = case
    x, w, b = rand(rng, (N, C, H, W)), rand(rng, (K, C // g, R, S)), rand(rng, (K,))
    return x, w, b, dict(stride=st, padding=pd, dilation=dl, groups=g)


def declines(backend, algo, call):
    words = NUMBA_DECLINE[algo] if backend == "numba" else "cannot serve"
    with pytest.raises(NotServed, match=words):
        call()


@pytest.mark.parametrize("backend, algo, case, dtype", conv_params("conv2d"),
                         indirect=["backend"])
def test_conv2d(rng, backend, run, algo, case, dtype):
    pytest.importorskip("torch")
    x, w, b, kw = setup(rng, case)
    tf32 = "tf32" in algo
    for bias in (b, None):
        call = lambda: convgpu.conv2d(x.astype(dtype), w.astype(dtype),      # noqa: E731
                                      None if bias is None else bias.astype(dtype), **kw,
                                      backend=backend, algo=algo, allow_tf32=tf32)
        if not serves(backend, "conv2d", algo, case):
            return declines(backend, algo, call)
        ref = torch_conv(x, w, bias, None, kw)
        y = run(call)
        assert y.dtype == dtype
        assert_conv_close(y, ref, "conv2d", algo, dtype, x, w, bias=bias, **kw)
        if tf32:
            assert np.linalg.norm(y - ref) / np.linalg.norm(ref) > 1e-6   # really TF32


@pytest.mark.parametrize("backend, algo, case, dtype", conv_params("conv2d_backward_input"),
                         indirect=["backend"])
def test_conv2d_backward_input(rng, backend, run, algo, case, dtype):
    pytest.importorskip("torch")
    x, w, b, kw = setup(rng, case)
    gy = rand(rng, torch_conv(x, w, None, None, kw).shape)
    call = lambda: convgpu.conv2d_backward_input(  # noqa: E731
        gy.astype(dtype), w.astype(dtype), x.shape, **kw, backend=backend, algo=algo,
        allow_tf32="tf32" in algo)
    if not serves(backend, "conv2d_backward_input", algo, case):
        return declines(backend, algo, call)
    gx = run(call)
    assert gx.dtype == dtype
    assert_conv_close(gx, torch_conv(x, w, None, gy, kw)[1], "conv2d_backward_input", algo,
                      dtype, gy, w, x.shape, **kw)


@pytest.mark.parametrize("backend, algo, case, dtype", conv_params("conv2d_backward_weight"),
                         indirect=["backend"])
def test_conv2d_backward_weight(rng, backend, run, algo, case, dtype):
    pytest.importorskip("torch")
    x, w, b, kw = setup(rng, case)
    gy = rand(rng, torch_conv(x, w, None, None, kw).shape)
    call = lambda: convgpu.conv2d_backward_weight(  # noqa: E731
        x.astype(dtype), gy.astype(dtype), w.shape, **kw, backend=backend, algo=algo,
        allow_tf32="tf32" in algo)
    if not serves(backend, "conv2d_backward_weight", algo, case):
        return declines(backend, algo, call)
    gw = run(call)
    assert gw.dtype == dtype
    ref = torch_conv(x, w, None, gy, kw)[2]
    assert_conv_close(gw, ref, "conv2d_backward_weight", algo, dtype, x, gy, w.shape, **kw)
    if "tf32" in algo:
        assert np.linalg.norm(gw - ref) / np.linalg.norm(ref) > 1e-6     # really TF32


@pytest.mark.parametrize("backend, algo", [
    pytest.param(b, i.algo, id=f"{b}-{i.algo}") for b in RUNNABLE
    for i in all_impls("conv2d_backward_input") if i.backend == b and "float32" in i.dtypes],
    indirect=["backend"])
def test_conv_transpose2d(rng, backend, run, algo):
    """The transposed conv is the conv's input gradient (x in gy's place) plus the bias:
    against torch's conv_transpose2d in float64."""
    torch = pytest.importorskip("torch")
    x, w, b = rand(rng, (1, 4, 3, 4)), rand(rng, (4, 3, 3, 2)), rand(rng, (6,))
    kw = dict(stride=(2, 1), padding=(1, 0), output_padding=(1, 0), groups=2)
    if algo.startswith("winograd"):         # 3x3 stride 1 only
        w = rand(rng, (4, 3, 3, 3))
        kw = dict(stride=1, padding=1, groups=2)
    if algo == "depthwise":                 # one output channel per group (the forward's
        w, b = rand(rng, (4, 1, 3, 2)), rand(rng, (2,))     # one input channel per group)
    ref = torch.nn.functional.conv_transpose2d(*(torch.from_numpy(a) for a in (x, w, b)),
                                               **kw).numpy()
    y = run(lambda: convgpu.conv_transpose2d(x.astype(np.float32), w.astype(np.float32),
                                             b.astype(np.float32), **kw, backend=backend,
                                             algo=algo, allow_tf32="tf32" in algo))
    assert y.dtype == np.float32
    conv_kw = {k: v for k, v in kw.items() if k != "output_padding"}
    assert_conv_close(y, ref, "conv2d_backward_input", algo, np.float32, x, w, ref.shape,
                      bias=b, **conv_kw)


@pytest.mark.parametrize("case", SAME_EDGES)
def test_padding_same_odd_total_matches_torch(rng, backend, case):
    check_same_edge(rng, backend, case)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_conv2d_backward_bias(rng, backend, run, dtype):
    gy = rand(rng, (2, 5, 3, 7))
    gb = run(lambda: convgpu.conv2d_backward_bias(gy.astype(dtype), backend=backend))
    assert gb.dtype == dtype
    assert_close(gb, gy.sum(axis=(0, 2, 3)), TOL[dtype])


@pytest.mark.backends("numba")
def test_conv2d_auto_picks_an_algorithm(rng, backend):
    x, w = rand(rng, (1, 2, 5, 5)), rand(rng, (2, 2, 3, 3))
    assert_close(convgpu.conv2d(x, w, backend=backend), torch_conv(x, w, None, None, {}),
                 TOL[np.float64])
