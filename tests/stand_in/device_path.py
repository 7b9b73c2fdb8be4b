"""The device dispatch path on the stand-in device (tests/stand_in/cupy in device mode: one
device, a CuPy array type of its own over NumPy memory, kernels in the host emulation).

Run by tests/test_stand_in_device.py in its own pytest process with
PYTHONPATH=tests/stand_in and CONVGPU_STAND_IN_DEVICE=1 (and no CONVGPU_CUDA_HOST: kernels
reach the emulation through cupy.RawModule, as they reach the GPU): `algo="auto"`'s
autotuner and its cache, array round trips, launches on the current stream, and the GPU
tier's own checks (tests/device_checks.py) on every cuda implementation. Not collected by a
plain `pytest tests` (its name has no test_ prefix)."""
import os

import numpy as np
import pytest

import cupy

if not getattr(cupy, "STAND_IN", False) or not cupy.DEVICE_MODE:
    raise RuntimeError("device_path.py runs on the stand-in device only "
                       "(tests/test_stand_in_device.py starts it)")

import convgpu  # noqa: E402
from convgpu import reference as ref  # noqa: E402
from convgpu.arrays import CUPY, kind_of  # noqa: E402
from convgpu.tools.check import run_checks, tolerance  # noqa: E402
from convgpu.ops import _registry  # noqa: E402
from convgpu.ops._registry import all_impls  # noqa: E402

from device_checks import (argument_record, never_ran, recording_declines,  # noqa: E402
                           recording_runs, run_planned, unjustified_rows)

assert os.environ.get("CONVGPU_POISON") == "1"


@pytest.fixture(autouse=True)
def fresh_tuning_cache():
    _registry._CHOICE.clear()
    yield
    _registry._CHOICE.clear()


def _rand(rng, shape, dtype=np.float64):
    return (rng.uniform(0.5, 1.5, size=shape) * rng.choice([-1.0, 1.0], size=shape)).astype(dtype)


def _relerr(out, r):
    out = cupy.asnumpy(out).astype(np.float64)
    assert out.shape == r.shape and np.isfinite(out).all()
    return np.linalg.norm(out - r) / np.linalg.norm(r)


def test_the_stand_in_is_a_device():
    """convgpu sees one device and a CuPy array that is no NumPy array."""
    x = cupy.asarray(np.ones((2, 3), np.float32))
    assert not isinstance(x, np.ndarray) and kind_of(x) == CUPY
    assert cupy.cuda.runtime.getDeviceCount() == 1
    assert _registry.backend_unavailable("cuda") is None
    with pytest.raises(TypeError, match="Implicit conversion"):
        np.asarray(x)


# a 3x3, stride-1 problem: direct, implicit GEMM, im2col, Winograd (both tile sizes) and FFT
# all serve it in FP32
CONV = dict(x=(2, 3, 7, 6), w=(4, 3, 3, 3), padding=1)


def _conv_inputs(rng, xs=CONV["x"], ws=CONV["w"]):
    return _rand(rng, xs), _rand(rng, ws), _rand(rng, ws[:1])


def test_autotune_times_each_candidate_once_picks_the_fastest_and_caches(monkeypatch):
    """algo="auto" on the device: every supporting cuda implementation is called twice
    (warm-up, timed between two events), the fastest by the events' time is cached and
    serves the call; the same problem again times nothing; another shape is timed anew."""
    rng = np.random.default_rng(1)
    x, w, b = _conv_inputs(rng)
    xd, wd, bd = (cupy.asarray(a.astype(np.float32)) for a in (x, w, b))
    call = lambda xd_=xd: convgpu.conv2d(xd_, wd, bd, padding=CONV["padding"])
    args = argument_record(call)
    candidates = [i.algo for i in all_impls("conv2d") if i.backend == "cuda"
                  and i.why_not(args) is None]
    assert len(candidates) >= 4, candidates
    # the events time each candidate by what it is: the last candidate is made fastest, so
    # a tuner that kept the first or the registration order would show
    fake_ms = {algo: 10.0 - k for k, algo in enumerate(candidates)}
    calls, timed, last = [], [], [None]
    original = _registry.Impl.fn

    def fn(impl):
        f = original.fget(impl)

        def run(*a):
            calls.append(impl.algo)
            last[0] = impl.algo
            return f(*a)
        return run

    monkeypatch.setattr(_registry.Impl, "fn", property(fn))

    def elapsed(start, stop):
        assert start.t is not None and stop.t is not None and stop.t >= start.t
        timed.append(last[0])
        return fake_ms[last[0]]

    monkeypatch.setattr(cupy.cuda, "get_elapsed_time", elapsed)
    y = call()
    r = ref.conv2d(x, w, b, (1, 1), (1, 1), (1, 1), 1)
    best = candidates[-1]
    assert timed == candidates, "every candidate timed once, none failed"
    assert calls == [a for a in candidates for _ in (0, 1)] + [best]
    assert _relerr(y, r) <= tolerance(best, np.float32)
    assert list(_registry.autotune_cache().values()) == [best]
    calls.clear(), timed.clear()
    y2 = call()                                         # cached: no timing, the winner runs
    assert calls == [best] and timed == []
    np.testing.assert_array_equal(cupy.asnumpy(y2), cupy.asnumpy(y))
    calls.clear()
    x2 = cupy.asarray(_rand(rng, (1, 3, 5, 6)).astype(np.float32))
    call(x2)                                            # another shape: timed anew
    assert timed and len(calls) == 2 * len(timed) + 1
    assert len(_registry.autotune_cache()) == 2


def test_autotune_never_picks_a_failing_candidate(monkeypatch):
    rng = np.random.default_rng(2)
    x, w, b = _conv_inputs(rng)
    xd, wd = cupy.asarray(x.astype(np.float32)), cupy.asarray(w.astype(np.float32))
    original = _registry.Impl.fn

    def fn(impl):
        if impl.algo == "direct":
            def broken(*a):
                raise RuntimeError("planted failure")
            return broken
        return original.fget(impl)

    monkeypatch.setattr(_registry.Impl, "fn", property(fn))
    monkeypatch.setattr(cupy.cuda, "get_elapsed_time", lambda a, b_: 1.0)
    y = convgpu.conv2d(xd, wd, padding=1)
    assert "direct" not in _registry.autotune_cache().values()
    assert _relerr(y, ref.conv2d(x, w, None, (1, 1), (1, 1), (1, 1), 1)) <= 1e-4


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_array_round_trips(dtype):
    """CuPy in, CuPy out, the input's dtype kept; int64 indices; non-contiguous input made
    contiguous (same answer); a NumPy array beside a CuPy one is a TypeError."""
    rng = np.random.default_rng(3)
    x, w, b = _conv_inputs(rng)
    xd, wd, bd = (cupy.asarray(a.astype(dtype)) for a in (x, w, b))
    y = convgpu.conv2d(xd, wd, bd, padding=1)
    assert isinstance(y, cupy.ndarray) and y.dtype == dtype
    assert _relerr(y, ref.conv2d(x, w, b, (1, 1), (1, 1), (1, 1), 1)) <= tolerance("fft", dtype)
    # non-contiguous: the same values through a transposed view
    xt = cupy.swapaxes(cupy.asarray(np.ascontiguousarray(np.swapaxes(x, 2, 3)).astype(dtype)),
                       2, 3)
    assert isinstance(xt, cupy.ndarray) and not xt.flags.c_contiguous
    yt = convgpu.conv2d(xt, wd, bd, padding=1, algo="implicit_gemm")
    np.testing.assert_array_equal(cupy.asnumpy(yt),
                                  cupy.asnumpy(convgpu.conv2d(xd, wd, bd, padding=1,
                                                              algo="implicit_gemm")))
    p, idx = convgpu.max_pool2d(xt, 3, 2, 1, return_indices=True)
    pr, ir = ref.max_pool2d(x, (3, 3), (2, 2), (1, 1), (1, 1), False)
    assert isinstance(idx, cupy.ndarray) and idx.dtype == np.int64 and p.dtype == dtype
    np.testing.assert_array_equal(cupy.asnumpy(idx), ir)
    r = convgpu.relu(xt)
    assert isinstance(r, cupy.ndarray) and r.dtype == dtype
    np.testing.assert_array_equal(cupy.asnumpy(r), np.maximum(x, 0).astype(dtype))
    with pytest.raises(TypeError):
        convgpu.conv2d(xd, w.astype(dtype))


def test_the_gpu_tier_checks_on_every_cuda_implementation():
    """Inside a non-default stream: `convgpu check`'s problem set on the cuda backend, every
    row ok or a decline by supports(); every kernel launch on that stream; every registered
    cuda implementation ran (what tests/test_gpu.py asserts on the GPU, there for numba too)."""
    ran, declines = set(), set()
    start = len(cupy.launches)
    with cupy.cuda.Stream(non_blocking=True) as s, recording_runs(ran), \
            recording_declines(declines):
        rows = run_checks("small", backends=["cuda"])
    launches = cupy.launches[start:]
    assert launches
    wrong = sorted({name for name, st in launches if st is not s})
    assert not wrong, f"launched on another stream than the current one: {wrong}"
    bad = unjustified_rows(rows, declines)
    assert not bad, "\n".join(bad)
    missing = never_ran(ran, ("cuda",))
    assert not missing, "never ran: " + ", ".join(missing)


def test_null_stream_launches_are_on_the_null_stream():
    start = len(cupy.launches)
    x = cupy.asarray(np.ones((2, 3, 4, 5), np.float32))
    convgpu.relu(x)
    assert cupy.launches[start:] and all(st is cupy.cuda.Stream.null
                                         for _, st in cupy.launches[start:])


def test_numba_launchers_use_the_current_stream(monkeypatch):
    """The Numba launchers' stream: CuPy's current stream, as an external stream of its
    pointer (the null stream: Numba's default stream)."""
    from convgpu.kernels.numba import launch as _launch
    seen = []
    monkeypatch.setattr(_launch.cuda, "external_stream", lambda ptr: seen.append(ptr) or ptr)
    monkeypatch.setattr(_launch.cuda, "default_stream", lambda: "default")
    x = cupy.asarray(np.ones(3, np.float32))
    with cupy.cuda.Stream() as s:
        assert _launch.stream_for(x) == s.ptr and seen == [s.ptr]
    assert _launch.stream_for(x) == "default"
    assert _launch.stream_for(np.ones(3)) == 0          # the simulator's arrays


def test_planned_run_on_the_cuda_implementations_of_conv():
    """run_planned (the GPU tier's conv test) on the stand-in: it decides from supports()
    which implementations serve, runs them against the reference, and requires the others'
    exact refusal."""
    rng = np.random.default_rng(4)
    x, w, b = _conv_inputs(rng)
    r = ref.conv2d(x, w, b, (1, 1), (1, 1), (1, 1), 1)
    xd, wd, bd = (cupy.asarray(a.astype(np.float32)) for a in (x, w, b))
    served, failures = run_planned(
        "conv2d", lambda be, al: convgpu.conv2d(xd, wd, bd, padding=1, backend=be, algo=al),
        lambda out, be, al: None if _relerr(out, r) <= tolerance(al, np.float32) else
        f"rel err {_relerr(out, r):.2e}", backends=("cuda",),
        expect_served=[("cuda", "winograd"), ("cuda", "implicit_gemm"), ("cuda", "fft")])
    assert not failures, "\n".join(failures)
    assert len(served) >= 5, served


def test_planned_run_reports_a_launcher_value_error_as_a_failure(monkeypatch):
    """A ValueError raised past the registry (a launcher's own, a reshape's) is no decline."""
    from convgpu.kernels.cuda import conv_direct
    rng = np.random.default_rng(5)
    x, w, b = _conv_inputs(rng)
    xd, wd = cupy.asarray(x.astype(np.float32)), cupy.asarray(w.astype(np.float32))

    def broken(*a):
        raise ValueError("cannot reshape array of size 7 into shape (2, 3)")

    monkeypatch.setattr(conv_direct, "conv2d_direct", broken)
    for impl in all_impls("conv2d"):
        if impl.backend == "cuda" and impl.algo == "direct":
            monkeypatch.setattr(impl, "_fn", None)
    _, failures = run_planned(
        "conv2d", lambda be, al: convgpu.conv2d(xd, wd, padding=1, backend=be, algo=al),
        lambda out, be, al: None, backends=("cuda",))
    assert failures == ["conv2d (cuda, direct): supports() accepts but it raised "
                        "ValueError: cannot reshape array of size 7 into shape (2, 3)"]
