"""GPU tier (`pytest -m gpu`, skipped without a CUDA GPU): every registered device
implementation against the float64 reference on realistic and odd shapes, determinism of
the backward passes, 64-bit indexing past 2**31 elements, array-type round trips (CuPy,
torch through DLPack) and launches on the current (non-default) CuPy stream.

Which implementations serve a problem is decided up front from supports() (through
tests/device_checks.py): those must succeed within the tolerance, the others must decline
with the registry's refusal and their own reason; any other ValueError is a failure. Every
registered (op, backend, algo) on a device backend must have run by the end of the module.
The tuning cache is reset between tests. Edge cases run on every algorithm by name.

On the stand-in device (tests/stand_in/cupy with CONVGPU_STAND_IN_DEVICE=1: the host
emulation behind a CuPy-like device) the cuda backend's tests run too, at emulation speed:
a way to try this module's logic without a GPU on a selection (-k) of its small tests."""
import dataclasses
import os

import numpy as np
import pytest

pytestmark = pytest.mark.gpu

from gpu_gate import cupy_with_a_gpu  # noqa: E402

cupy = cupy_with_a_gpu()

os.environ["CONVGPU_POISON"] = "1"     # outputs start as NaN: unwritten elements fail

import convgpu  # noqa: E402
from convgpu import reference as ref  # noqa: E402
from convgpu.tools.check import _relerr as check_relerr  # noqa: E402
from convgpu.tools.check import problems, run_checks, tolerance  # noqa: E402
from convgpu.ops import _registry  # noqa: E402
from convgpu.ops._registry import all_impls  # noqa: E402

from device_checks import (argument_record, never_ran, plan, recording_declines,  # noqa: E402
                           recording_runs, run_planned, unjustified_rows)

STAND_IN = getattr(cupy, "STAND_IN", False)
# the stand-in device has no Numba (the simulator takes NumPy arrays only)
DEVICE_BACKENDS = ("cuda",) if STAND_IN else ("numba", "cuda")

# (op, backend, algo) of every implementation that returned during this module
RAN = set()


@pytest.fixture(scope="module", autouse=True)
def record_runs():
    with recording_runs(RAN):
        yield


@pytest.fixture(autouse=True)
def fresh_tuning_cache():
    """algo="auto"'s choices are per process: a test must not inherit another's."""
    _registry._CHOICE.clear()
    yield
    _registry._CHOICE.clear()


def device_algos(op):
    return [(i.backend, i.algo) for i in all_impls(op) if i.backend in DEVICE_BACKENDS]


def _rand(rng, shape):
    return rng.uniform(0.5, 1.5, size=shape) * rng.choice([-1.0, 1.0], size=shape)


def relerr(out, r):
    out = cupy.asnumpy(out).astype(np.float64)
    assert out.shape == r.shape
    assert np.isfinite(out).all(), "non-finite output (unwritten element?)"
    return np.linalg.norm(out - r) / np.linalg.norm(r)


def within(r, dtype):
    """check(out, backend, algo) for run_planned: the design's bound for the algorithm."""
    def check(out, backend, algo):
        e = relerr(out, r)
        return None if e <= tolerance(algo, dtype) else \
            f"{np.dtype(dtype).name} rel err {e:.2e} > {tolerance(algo, dtype):.0e}"
    return check


@pytest.mark.parametrize("size", ["small", "large"])
def test_check_table_all_ok(size):
    """Every device implementation in `convgpu check`'s problem set, both sizes: each row
    ok, or declined by the registry with its supports() reason (a backend not run, a
    launcher's ValueError or a crash fails)."""
    declines = set()
    with recording_declines(declines):
        rows = run_checks(size, backends=list(DEVICE_BACKENDS))
    assert rows
    bad = unjustified_rows(rows, declines)
    assert not bad, "\n".join(bad)


# real-layer and odd conv problems: (N, C, H, W, K, R, S, stride, padding, dilation, groups)
CONV = [
    (16, 64, 56, 56, 64, 3, 3, (1, 1), (1, 1), (1, 1), 1),       # ResNet 3x3
    (8, 3, 224, 224, 64, 7, 7, (2, 2), (3, 3), (1, 1), 1),       # ResNet conv1
    (4, 128, 28, 28, 128, 3, 3, (2, 2), (1, 1), (1, 1), 1),      # strided
    (3, 33, 17, 23, 35, 5, 3, (1, 2), (2, 1), (2, 1), 1),        # odd, dilated, non-square
    (5, 32, 19, 21, 32, 3, 3, (1, 1), (1, 1), (1, 1), 32),       # depthwise
    (2, 48, 15, 13, 24, 3, 5, (2, 1), (1, 2), (1, 1), 4),        # grouped, odd
    (16, 256, 14, 14, 64, 1, 1, (1, 1), (0, 0), (1, 1), 1),      # 1x1
]


def _conv_problem(rng, case):
    N, C, H, W, K, R, S, st, pd, dl, g = case
    x, w, b = _rand(rng, (N, C, H, W)), _rand(rng, (K, C // g, R, S)), _rand(rng, (K,))
    return x, w, b, dict(stride=st, padding=pd, dilation=dl, groups=g)


_CONV_REFS = {}


def _conv_with_references(case):
    """Inputs and float64 references of a CONV case, computed once for the module (both
    dtypes, the TF32 tests): the references run on the host, the larger part of these
    tests' time; all seven cases hold a few hundred MB."""
    if case not in _CONV_REFS:
        rng = np.random.default_rng(1)
        x, w, b, kw = _conv_problem(rng, case)
        y_ref = ref.conv2d(x, w, b, **kw)
        gy = _rand(rng, y_ref.shape)
        _CONV_REFS[case] = (x, w, b, gy, kw, y_ref,
                            ref.conv2d_backward_input(gy, w, x.shape, **kw),
                            ref.conv2d_backward_weight(x, gy, w.shape, **kw))
    return _CONV_REFS[case]


# the implementations that must serve a case (so a supports() that wrongly declines shows):
# the general ones always, Winograd on 3x3 stride 1, depthwise where groups = C
def _must_serve(op, case):
    N, C, H, W, K, R, S, st, pd, dl, g = case
    want = [("cuda", "implicit_gemm"), ("cuda", "col2im" if op.endswith("input") else "im2col"),
            ("numba", "direct")]
    if (R, S) == (3, 3) and st == (1, 1) and dl == (1, 1) and op != "conv2d_backward_input":
        want += [("cuda", "winograd"), ("numba", "winograd")]
    if g == C and g > 1:
        want.append(("cuda", "depthwise"))
    return [(b, a) for b, a in want if b in DEVICE_BACKENDS and (b, a) in device_algos(op)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", CONV, ids=[str(c[:7]) for c in CONV])
def test_conv2d_forward_and_backward(case, dtype):
    """Every device implementation of the forward and both gradients: those supports()
    accepts within their bound, the others declined with their reason."""
    x, w, b, gy, kw, y_ref, gx_ref, gw_ref = _conv_with_references(case)
    xd, wd, bd, gyd = (cupy.asarray(a.astype(dtype)) for a in (x, w, b, gy))
    failures = []
    for op, call, r in [
        ("conv2d", lambda be, al: convgpu.conv2d(xd, wd, bd, **kw, backend=be, algo=al), y_ref),
        ("conv2d_backward_input",
         lambda be, al: convgpu.conv2d_backward_input(gyd, wd, x.shape, **kw, backend=be, algo=al),
         gx_ref),
        ("conv2d_backward_weight",
         lambda be, al: convgpu.conv2d_backward_weight(xd, gyd, w.shape, **kw, backend=be, algo=al),
         gw_ref),
    ]:
        served, bad = run_planned(op, call, within(r, dtype), DEVICE_BACKENDS,
                                  expect_served=_must_serve(op, case))
        failures += bad
    assert not failures, "\n".join(failures)


def test_backward_passes_are_bitwise_deterministic():
    rng = np.random.default_rng(2)
    x, w, b, kw = _conv_problem(rng, CONV[3])
    xd, wd = cupy.asarray(x.astype(np.float32)), cupy.asarray(w.astype(np.float32))
    y = convgpu.conv2d(xd, wd, **kw)
    gy = cupy.asarray(_rand(rng, y.shape).astype(np.float32))
    calls = {
        "conv2d_backward_input":
            lambda be, al: convgpu.conv2d_backward_input(gy, wd, x.shape, **kw, backend=be, algo=al),
        "conv2d_backward_weight":
            lambda be, al: convgpu.conv2d_backward_weight(xd, gy, w.shape, **kw, backend=be, algo=al),
    }
    # decided up front: what serves runs, nothing is skipped on a ValueError
    serving = {op: _served(op, c) for op, c in calls.items()}
    assert all(len(v) >= 2 for v in serving.values()), serving
    xp = cupy.asarray(_rand(np.random.default_rng(3), (8, 16, 33, 35)).astype(np.float32))
    yp, idx = convgpu.max_pool2d(xp, 3, 2, 1, return_indices=True)
    gp = cupy.ones_like(yp)
    pool_bwd = _max_pool_backward_call(gp, idx, xp.shape, (3, 2, 1))
    pool_serving = _served("max_pool2d_backward", pool_bwd)
    runs = []
    for _ in range(3):
        outs = [calls[op](be, al) for op in calls for be, al in serving[op]]
        outs += [convgpu.conv2d_backward_bias(gy, backend=be) for be in DEVICE_BACKENDS]
        outs += [pool_bwd(be, al) for be, al in pool_serving]
        outs += [convgpu.avg_pool2d_backward(gp, xp.shape, 3, 2, 1, backend=be)
                 for be in DEVICE_BACKENDS]
        runs.append([cupy.asnumpy(o) for o in outs])
    for later in runs[1:]:
        assert len(later) == len(runs[0])
        for a, b_ in zip(runs[0], later, strict=True):
            assert np.array_equal(a.view(np.uint32), b_.view(np.uint32))


def _max_pool_backward_call(gy, idx, shape, geometry):
    """call(backend, algo) of max_pool2d_backward: the gathers take the forward's geometry,
    the plane scatter none."""
    return lambda be, al: convgpu.max_pool2d_backward(
        gy, idx, shape, *(() if al == "plane" else geometry), backend=be, algo=al)


def _served(op, call):
    """The device implementations supports() accepts for call(backend, algo)'s problem."""
    return plan(op, argument_record(lambda: call("auto", "auto")), DEVICE_BACKENDS)[0]


@pytest.mark.parametrize("impl", [f"{b}:{a}" for b, a in device_algos("max_pool2d")])
@pytest.mark.parametrize("args", [(3, 2), (2, 2), (3, 2, 1), (3, 1, 1), (4, 2, 1)])
def test_max_pool_exact_with_ties_nan_inf_and_subnormals(args, impl):
    """Every max-pooling kernel by name (not only the one algo="auto" times fastest):
    indices exactly as the sequential rule picks them (first maximum, first NaN, first
    element of an all -inf window) on the device, where the kernels are compiled with
    -ftz=true: windows of distinct subnormals must not compare equal. Every backward
    (gathers and plane scatter) exactly, with integer gradients."""
    backend, algo = impl.split(":")
    rng = np.random.default_rng(11)
    x = rng.integers(0, 5, (4, 3, 29, 27)).astype(np.float32)
    x[rng.random(x.shape) < 0.02] = np.nan
    x[rng.random(x.shape) < 0.1] = -np.inf
    x[0, 0, :5, :5] = -np.inf
    x[1, 1] = rng.integers(1, 2 ** 20, x.shape[2:]) * np.float32(2.0 ** -149)   # subnormals
    k, st, pad = (args + (0,))[:3]
    yr, ir = ref.max_pool2d(x.astype(np.float64), (k, k), (st, st), (pad, pad), (1, 1), False)
    fwd = lambda be, al: convgpu.max_pool2d(cupy.asarray(x), *args, return_indices=True,
                                            backend=be, algo=al)
    served, declined = plan("max_pool2d", argument_record(lambda: fwd("auto", "auto")),
                            DEVICE_BACKENDS)
    if (backend, algo) in served:
        y, idx = fwd(backend, algo)
        np.testing.assert_array_equal(cupy.asnumpy(idx), ir)
        np.testing.assert_array_equal(cupy.asnumpy(y), yr.astype(np.float32))
    else:                               # e.g. the tiled kernel takes 2x2 and 3x3 windows only
        assert ("cuda", "direct") in served, served
        with pytest.raises(ValueError) as declined_with:
            fwd(backend, algo)
        assert str(declined_with.value) == declined[(backend, algo)]
        idx = cupy.asarray(ir)
    gy = np.arange(1, yr.size + 1, dtype=np.float32).reshape(yr.shape) % 64
    gx_ref = ref.max_pool2d_backward(gy, ir, x.shape)
    bwd = _max_pool_backward_call(cupy.asarray(gy), idx, x.shape, (k, st, pad))
    served = _served("max_pool2d_backward", bwd)
    assert ("cuda", "gather") in served, served
    for be, al in served:
        np.testing.assert_array_equal(cupy.asnumpy(bwd(be, al)), gx_ref, err_msg=f"{be}:{al}")


def test_max_pool_past_2_31_elements():
    """A tensor of more than 2**31 elements: flat indices and addresses need 64 bits."""
    N, C, H, W = 2, 1, 32768, 32800                       # 2,149,580,800 elements
    assert N * C * H * W > 2 ** 31
    free, _ = cupy.cuda.runtime.memGetInfo()
    if free < 24 * 2 ** 30:
        pytest.skip(f"needs ~24 GiB free on the GPU, {free / 2**30:.0f} GiB free")
    x = cupy.random.default_rng(4).standard_normal((N, C, H, W), dtype=cupy.float32)
    y, idx = convgpu.max_pool2d(x, 2, return_indices=True)
    # compare the last rows of the last plane (the far end of the address range)
    tail = cupy.asnumpy(x[-1:, :, -8:, :]).astype(np.float64)
    yr, ir = ref.max_pool2d(tail, (2, 2), (2, 2), (0, 0), (1, 1), False)
    assert np.array_equal(cupy.asnumpy(y[-1:, :, -4:, :]), yr.astype(np.float32))
    assert np.array_equal(cupy.asnumpy(idx[-1:, :, -4:, :]), ir + (H - 8) * W)
    gx = convgpu.max_pool2d_backward(y, idx, x.shape, 2, algo="gather")
    del x
    assert float(cupy.sum(gx[-1, :, -8:, :], dtype=cupy.float64)) == pytest.approx(
        float(yr.sum()), rel=1e-6)
    del gx, y, idx


def test_array_types_round_trip_and_streams():
    rng = np.random.default_rng(5)
    x, w = _rand(rng, (2, 4, 9, 9)).astype(np.float32), _rand(rng, (3, 4, 3, 3)).astype(np.float32)
    r = ref.conv2d(x.astype(np.float64), w.astype(np.float64))
    y = convgpu.conv2d(cupy.asarray(x), cupy.asarray(w))
    assert isinstance(y, cupy.ndarray) and relerr(y, r) < 1e-5
    with cupy.cuda.Stream(non_blocking=True) as s:
        y2 = convgpu.conv2d(cupy.asarray(x), cupy.asarray(w), backend="numba", algo="direct")
        s.synchronize()
    assert relerr(y2, r) < 1e-5
    # non-contiguous device input is made contiguous
    xt = cupy.asarray(np.ascontiguousarray(np.swapaxes(x, 2, 3)))
    xt = cupy.swapaxes(xt, 2, 3)
    assert not xt.flags.c_contiguous
    assert relerr(convgpu.conv2d(xt, cupy.asarray(w)), r) < 1e-5
    torch = pytest.importorskip("torch")
    xt = torch.from_numpy(x).cuda()
    wt = torch.from_numpy(w).cuda()
    yt = convgpu.conv2d(xt, wt)
    assert isinstance(yt, torch.Tensor) and yt.is_cuda
    assert relerr(cupy.from_dlpack(yt), r) < 1e-5
    # torch's own conv (cuDNN, TF32 off) agrees: an independent oracle on the device
    torch.backends.cudnn.allow_tf32 = False
    ycu = torch.nn.functional.conv2d(xt, wt)
    assert relerr(cupy.from_dlpack(ycu), r) < 1e-5
    with pytest.raises(TypeError, match="torch-cuda"):
        convgpu.conv2d(xt, cupy.asarray(w))


# keeps one SM busy for `cycles` clocks (~10 ms at 2 GHz): the stream it runs on is still
# busy when the host has queued the work behind it
_SPIN = r"""extern "C" __global__ void spin(long long cycles) {
    const long long t0 = clock64();
    while (clock64() - t0 < cycles) { }
}"""
SPIN_CYCLES = 20_000_000


def test_every_kernel_launches_on_the_current_stream():
    """Each device implementation of `convgpu check`'s small problem set, by name, on a
    non-blocking stream made busy first (a spinning kernel), its inputs written on that
    stream behind the spin: a kernel launched on any other stream (the null stream, one of
    its own) runs before its inputs are there and returns a wrong answer. On the stand-in
    device, whose launches record their stream, every launch is checked directly."""
    rng = np.random.default_rng(12)
    s = cupy.cuda.Stream(non_blocking=True)
    spin = None if STAND_IN else cupy.RawKernel(_SPIN, "spin")
    failures, checked = [], 0
    for prob in problems("small"):
        inputs = prob.make(rng)
        r = prob.reference(inputs)
        host = {k: (v.astype(np.float32) if v.dtype.kind == "f" else v) for k, v in inputs.items()}
        fresh = lambda: {k: cupy.asarray(v) for k, v in host.items()}
        args = argument_record(lambda: prob.call(fresh(), "auto", "auto"))
        if dataclasses.is_dataclass(args) and hasattr(args, "allow_tf32"):
            args = dataclasses.replace(args, allow_tf32=True)    # prob.call allows TF32 to
            # the TF32 implementations
        served, _ = plan(prob.op, args, DEVICE_BACKENDS)
        for be, al in served:
            prob.call(fresh(), be, al)            # compiled, planned, loaded: only launches left
            clean, dev = fresh(), {k: cupy.zeros(v.shape, v.dtype) for k, v in host.items()}
            cupy.cuda.Device().synchronize()
            start = len(cupy.launches) if STAND_IN else 0
            with s:
                if spin is not None:
                    spin((1,), (1,), (np.int64(SPIN_CYCLES),))
                for k in dev:
                    dev[k][...] = clean[k]
                out = prob.call(dev, be, al)
            s.synchronize()
            cupy.cuda.Device().synchronize()
            got = tuple(o.get() for o in out) if isinstance(out, tuple) else out.get()
            e = check_relerr(got, r)
            if not e <= tolerance(al, np.float32):      # TF32 algorithms: the TF32 bound
                failures.append(f"{prob.op} ({be}, {al}): rel err {e:.2e} (another stream?)")
            if STAND_IN:
                wrong = {n for n, st in cupy.launches[start:] if st is not s}
                # array_ops is CuPy's own array operations (no kernel of ours to record),
                # which run on the current stream by CuPy's design
                if wrong or (len(cupy.launches) == start and al != "array_ops"):
                    failures.append(f"{prob.op} ({be}, {al}): launched {sorted(wrong)} on "
                                    "another stream" if wrong else "no launch recorded")
            checked += 1
    assert checked >= 40, checked
    assert not failures, "\n".join(failures)


def test_mixed_host_and_device_is_a_type_error():
    with pytest.raises(TypeError):
        convgpu.conv2d(cupy.ones((1, 1, 4, 4), cupy.float32), np.ones((1, 1, 3, 3), np.float32))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("ta, tb", [(False, False), (True, False), (False, True), (True, True)])
@pytest.mark.parametrize("splits", [1, 3])
def test_cuda_gemm_odd_sizes(dtype, ta, tb, splits):
    """The CUDA C GEMM at sizes that are not tile multiples, every transpose, batched, with
    and without split-K."""
    from convgpu.kernels.cuda import gemm
    rng = np.random.default_rng(6)
    batch, M, N, K = 3, 133, 257, 97
    A = _rand(rng, (batch, K, M) if ta else (batch, M, K))
    B = _rand(rng, (batch, N, K) if tb else (batch, K, N))
    want = np.matmul(np.swapaxes(A, 1, 2) if ta else A, np.swapaxes(B, 1, 2) if tb else B)
    got = gemm.gemm(cupy.asarray(A.astype(dtype)), cupy.asarray(B.astype(dtype)), ta, tb,
                        splits=splits)
    assert relerr(got, want) <= tolerance("gemm", dtype)


def _is_tf32(algo):
    return algo.endswith("tf32")


def really_tf32(r):
    """check(out, backend, algo) for the TF32 kernels: within the TF32 bound and above what
    FP32 gives (~1e-7), so the operands really were rounded to TF32."""
    def check(out, backend, algo):
        e = relerr(out, r)
        return None if 1e-6 < e <= 2e-3 else f"rel err {e:.2e} outside (1e-6, 2e-3]"
    return check


@pytest.mark.parametrize("case", [CONV[0], CONV[2], CONV[3], CONV[5], CONV[6]],
                         ids=lambda c: str(c[:7]))
def test_tf32_conv_and_linear(case):
    """TF32 tensor-core kernels: declined unless allowed; allowed, those supports() accepts
    within the design's TF32 bound and really TF32, the others declined with their reason."""
    x, w, b, gy, kw, r, _, _ = _conv_with_references(case)
    xd, wd, bd = (cupy.asarray(a.astype(np.float32)) for a in (x, w, b))
    algos = [a for be, a in device_algos("conv2d") if be == "cuda" and _is_tf32(a)]
    assert {"implicit_gemm_tf32", "implicit_gemm_pipelined_tf32", "fft_tf32"} <= set(algos)
    for algo in algos:
        with pytest.raises(ValueError, match="TF32 is not allowed"):
            convgpu.conv2d(xd, wd, bd, **kw, backend="cuda", algo=algo)
    served, failures = run_planned(
        "conv2d", lambda be, al: convgpu.conv2d(xd, wd, bd, **kw, backend=be, algo=al,
                                                allow_tf32=True),
        really_tf32(r), ("cuda",), expect_served=[("cuda", "implicit_gemm_tf32")], only=_is_tf32)
    assert not failures, "\n".join(failures)
    rng = np.random.default_rng(7)
    lx, lw, lb = _rand(rng, (300, 257)), _rand(rng, (130, 257)), _rand(rng, (130,))
    ld = [cupy.asarray(a.astype(np.float32)) for a in (lx, lw, lb)]
    _, failures = run_planned(
        "linear", lambda be, al: convgpu.linear(*ld, backend=be, algo=al, allow_tf32=True),
        really_tf32(ref.linear(lx, lw, lb)), ("cuda",), expect_served=[("cuda", "gemm_tf32")],
        only=_is_tf32)
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("case", CONV, ids=[str(c[:7]) for c in CONV])
def test_tf32_backward_passes(case):
    """Every TF32 input- and weight-gradient implementation (registry names ending in tf32):
    declined without allow_tf32; allowed, those supports() accepts within the design's TF32
    bound and really TF32, the others declined with their reason."""
    x, w, b, gy, kw, _, gx_ref, gw_ref = _conv_with_references(case)
    xd, wd, gyd = (cupy.asarray(a.astype(np.float32)) for a in (x, w, gy))
    calls = {
        "conv2d_backward_input": (
            lambda al, t: convgpu.conv2d_backward_input(gyd, wd, x.shape, **kw, backend="cuda",
                                                        algo=al, allow_tf32=t), gx_ref),
        "conv2d_backward_weight": (
            lambda al, t: convgpu.conv2d_backward_weight(xd, gyd, w.shape, **kw, backend="cuda",
                                                         algo=al, allow_tf32=t), gw_ref),
    }
    failures = []
    for op, (call, r) in calls.items():
        algos = [a for be, a in device_algos(op) if be == "cuda" and _is_tf32(a)]
        assert len(algos) >= 2, op
        for al in algos:
            with pytest.raises(ValueError, match="TF32 is not allowed"):
                call(al, False)
        served, bad = run_planned(op, lambda be, al, c=call: c(al, True), really_tf32(r),
                                  ("cuda",), expect_served=[("cuda", "implicit_gemm_tf32")],
                                  only=_is_tf32)
        failures += bad
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("ta, tb", [(False, False), (True, False), (False, True), (True, True)])
def test_cuda_gemm_tf32_odd_sizes(ta, tb):
    from convgpu.kernels.cuda import gemm
    rng = np.random.default_rng(8)
    batch, M, N, K = 2, 133, 257, 97
    A = _rand(rng, (batch, K, M) if ta else (batch, M, K))
    B = _rand(rng, (batch, N, K) if tb else (batch, K, N))
    want = np.matmul(np.swapaxes(A, 1, 2) if ta else A, np.swapaxes(B, 1, 2) if tb else B)
    got = gemm.gemm(cupy.asarray(A.astype(np.float32)), cupy.asarray(B.astype(np.float32)),
                        ta, tb, splits=2, tf32=True)
    e = relerr(got, want)
    assert 1e-6 < e <= 2e-3, e


@pytest.mark.parametrize("backend, algo", [("numba", "direct"), ("cuda", "implicit_gemm")])
def test_padding_same_on_device(backend, algo):
    """padding="same" with an odd total (a 4x2 kernel): the dropped first row / column of the
    forward and the zeros before grad_output of the gradients, on device arrays, against the
    float64 reference run on the input padded by hand."""
    rng = np.random.default_rng(13)
    x, w = _rand(rng, (2, 3, 9, 7)), _rand(rng, (5, 3, 4, 2))
    gy = _rand(rng, (2, 5, 9, 7))
    xp = np.pad(x, ((0, 0), (0, 0), (1, 2), (0, 1)))
    y_ref = ref.conv2d(xp, w, None, (1, 1), (0, 0), (1, 1), 1)
    gx_ref = ref.conv2d_backward_input(gy, w, xp.shape, (1, 1), (0, 0), (1, 1), 1)[:, :, 1:10, 0:7]
    gw_ref = ref.conv2d_backward_weight(xp, gy, w.shape, (1, 1), (0, 0), (1, 1), 1)
    xd, wd, gyd = (cupy.asarray(a.astype(np.float32)) for a in (x, w, gy))
    kw = dict(padding="same", backend=backend, algo=algo)
    tol = tolerance(algo, np.float32)
    assert relerr(convgpu.conv2d(xd, wd, **kw), y_ref) <= tol
    assert relerr(convgpu.conv2d_backward_input(gyd, wd, x.shape, **kw), gx_ref) <= tol
    assert relerr(convgpu.conv2d_backward_weight(xd, gyd, w.shape, **kw), gw_ref) <= tol


@pytest.mark.parametrize("variant", ["tiled", "vec", "pipelined"])
@pytest.mark.parametrize("side", ["A", "B"])
def test_cuda_tf32_gemms_round_operands_to_nearest(variant, side):
    """On the tensor cores: each TF32 GEMM multiplies operands rounded to nearest, ties
    away (cvt.rna). tile::to_tf32 rounds in integer arithmetic and leaves the low 13 bits
    for the hardware to drop; with the identity as the other operand C is exactly the
    rounded operand, so a rounding to even, a truncation or low bits that reach the product
    fail here."""
    from helpers import tf32_round, tf32_rounding_operands
    from convgpu.kernels.cuda import gemm
    n = 32
    X = tf32_rounding_operands(np.random.default_rng(12), n)
    eye = np.eye(n, dtype=np.float32)
    A, B = (X, eye) if side == "A" else (eye, X)
    C = gemm.gemm(cupy.asarray(A[None]), cupy.asarray(B[None]), tf32=True, variant=variant)
    np.testing.assert_array_equal(cupy.asnumpy(C)[0], tf32_round(X))


@pytest.mark.parametrize("variant, tf32", [("vec", False), ("vec", True), ("vec64", False)])
@pytest.mark.parametrize("ta, tb", [(False, False), (True, False), (False, True), (True, True)])
@pytest.mark.parametrize("splits", [1, 3])
def test_cuda_gemm_vec(variant, tf32, ta, tb, splits):
    """gemm_vec (16-deep tiles, float4 loads; 128-row tiles and the 64-row tile) at sizes
    that are multiples of 4 but not of the tile, every transpose, batched, with and without
    split-K, FP32 and TF32."""
    from convgpu.kernels.cuda import gemm
    rng = np.random.default_rng(9)
    batch, M, N, K = 3, 132, 260, 100
    A = _rand(rng, (batch, K, M) if ta else (batch, M, K))
    B = _rand(rng, (batch, N, K) if tb else (batch, K, N))
    want = np.matmul(np.swapaxes(A, 1, 2) if ta else A, np.swapaxes(B, 1, 2) if tb else B)
    got = gemm.gemm(cupy.asarray(A.astype(np.float32)), cupy.asarray(B.astype(np.float32)),
                        ta, tb, splits=splits, tf32=tf32, variant=variant)
    e = relerr(got, want)
    assert (1e-6 < e <= 2e-3) if tf32 else e <= tolerance("gemm", np.float32), e


@pytest.mark.parametrize("ta, tb", [(False, False), (True, False), (False, True), (True, True)])
@pytest.mark.parametrize("splits", [1, 3])
def test_cuda_gemm_pipelined(ta, tb, splits):
    """gemm_pipelined (TF32, cp.async 3-stage pipeline, dynamic shared memory past 48 KiB)
    at sizes that are multiples of 4 but not of the tile or slice, every transpose, batched,
    with and without split-K; and at 1024^3, many slices per block."""
    from convgpu.kernels.cuda import gemm
    rng = np.random.default_rng(10)
    for batch, M, N, K in ((3, 132, 260, 100), (1, 1024, 1024, 1024)):
        A = _rand(rng, (batch, K, M) if ta else (batch, M, K))
        B = _rand(rng, (batch, N, K) if tb else (batch, K, N))
        want = np.matmul(np.swapaxes(A, 1, 2) if ta else A, np.swapaxes(B, 1, 2) if tb else B)
        got = gemm.gemm(cupy.asarray(A.astype(np.float32)),
                            cupy.asarray(B.astype(np.float32)), ta, tb, splits=splits,
                            tf32=True, variant="pipelined")
        e = relerr(got, want)
        assert 1e-6 < e <= 2e-3, (M, e)


def test_fma_ceiling_kernel_runs_and_is_fast():
    """The FP32 ceiling of convgpu bench: correct chains, and a rate no GEMM can beat by
    much (a broken ceiling would make every fraction meaningless)."""
    from convgpu.tools.bench import Timer, fma_rate
    from convgpu.kernels.cuda import ceiling
    out, _ = ceiling.fma_peak(4, 2, np.float32, cupy.zeros(1, cupy.float32))
    a, b = 1 - 2 ** -10, 2 ** -6
    acc = (np.arange(4 * 256)[:, None] % 32 + np.arange(8)[None, :]) * 0.0625
    for _ in range(32):
        acc = acc * a + b
    np.testing.assert_allclose(cupy.asnumpy(out), acc.sum(axis=1), rtol=1e-5)
    rate = fma_rate(Timer(reps=5))
    sgemm = 2 * 4096 ** 3 / 1e12
    A = cupy.ones((4096, 4096), cupy.float32)
    t = Timer(reps=5)(lambda: A @ A)
    assert rate > 0.9 * sgemm / (sorted(t)[len(t) // 2] * 1e-3), (rate, t)


def _empty_cases():
    from helpers import empty_cases
    return empty_cases(np.random.default_rng(0))


@pytest.mark.parametrize("backend", DEVICE_BACKENDS)
@pytest.mark.parametrize("case", range(len(_empty_cases())))
def test_empty_problems_on_device(backend, case):
    """An empty batch, no channels, no features, with CuPy arrays: answered without a
    launch (a grid of 0 blocks is a launch error on the device)."""
    from helpers import check_empty_case
    label, call, want = _empty_cases()[case]
    check_empty_case(call(backend, cupy.asarray), want, cupy.asnumpy)


# batch normalisation on real-layer shapes: ResNet's first BN (few channels, many values:
# several splits per channel), a late one (many channels), a BatchNorm1d after a linear
# layer, and an odd shape
BN_GPU = [(16, 64, 56, 56), (32, 512, 7, 7), (256, 1000), (3, 37, 17, 23)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", BN_GPU)
@pytest.mark.parametrize("backend", DEVICE_BACKENDS)
def test_batch_norm_on_device(backend, shape, dtype):
    """Training (running estimates updated on the device) and evaluation, forward and the
    three gradients, against the reference; the cuda statistics and gradient sums bitwise
    equal across two runs (the splits merge in a fixed order)."""
    from helpers import (assert_batch_norm_close, batch_norm_expected, batch_norm_inputs,
                         batch_norm_run)
    rng = np.random.default_rng(7)
    for training in (True, False):
        inp = batch_norm_inputs(rng, shape, dtype)
        first = batch_norm_run(backend, inp, training, cupy.asarray, cupy.asnumpy)
        assert_batch_norm_close(first, batch_norm_expected(inp, training), dtype)
        again = batch_norm_run(backend, inp, training, cupy.asarray, cupy.asnumpy)
        for k, v in first.items():
            assert v is None or np.array_equal(v, again[k]), k


# adaptive average pooling on real shapes: AlexNet's 13 -> 6 (overlapping windows), a
# ResNet head's 7 -> 1, 7 -> 7 (torchvision's VGG head on 224 inputs: the identity), and
# an odd upsampling 5 -> 9
ADAPTIVE_GPU = [((64, 256, 13, 13), 6), ((64, 2048, 7, 7), 1), ((16, 512, 7, 7), 7),
                ((3, 17, 5, 6), (9, 11))]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape, out", ADAPTIVE_GPU)
@pytest.mark.parametrize("backend", DEVICE_BACKENDS)
def test_adaptive_avg_pool_on_device(backend, shape, out, dtype):
    rng = np.random.default_rng(8)
    x = _rand(rng, shape)
    want = ref.adaptive_avg_pool2d(x, (out, out) if isinstance(out, int) else out)
    y = convgpu.adaptive_avg_pool2d(cupy.asarray(x.astype(dtype)), out, backend=backend)
    assert relerr(y, want) <= tolerance("direct", dtype)
    gy = _rand(rng, want.shape)
    gx = convgpu.adaptive_avg_pool2d_backward(cupy.asarray(gy.astype(dtype)), shape,
                                              backend=backend)
    assert relerr(gx, ref.adaptive_avg_pool2d_backward(gy, shape)) <= tolerance("direct", dtype)


def test_every_device_implementation_ran(request):
    """Last in the module: every registered (op, backend, algo) on a device backend returned
    at least once in this module (the check table, the conv cases, the edge cases, ...): an
    implementation no test reached is unvalidated however green the rest is."""
    mine = lambda item: item.path == request.path
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    deselected = [i for i in (reporter.stats.get("deselected", []) if reporter else [])
                  if mine(i)]
    selected = [i for i in request.session.items if mine(i)]
    if deselected or request.config.option.keyword or STAND_IN or \
            selected[-1].nodeid != request.node.nodeid:
        pytest.skip("a partial run of the GPU tier: the coverage of implementations is "
                    "judged on a full run")
    missing = never_ran(RAN, DEVICE_BACKENDS)
    assert not missing, "never ran on the device: " + ", ".join(missing)
