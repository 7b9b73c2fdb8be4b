"""What the GPU tier (tests/test_gpu.py) and the stand-in device tests
(tests/stand_in/device_path.py) share: deciding up front which implementations serve a
call, requiring those to succeed and the others to decline with their own supports()
reason, recording which implementations ran, and judging `convgpu check`'s table rows.

A decline is justified only when it is the registry's refusal with the reason supports()
gives for that call. A backend that is unavailable, a launcher's own ValueError, a reshape
error or a crash is a failure, never a decline."""
from __future__ import annotations

import contextlib
from typing import Callable, Dict, Iterable, List, Optional, Set, Tuple
from unittest import mock

from convgpu.ops import _registry
from convgpu.ops._registry import NotServed, all_impls, backend_unavailable

DEVICE_BACKENDS = ("numba", "cuda")


class _Stop(Exception):
    pass


def argument_record(call: Callable[[], object]):
    """The validated argument record (ConvArgs, PoolArgs, ...) that `call` (an op call) builds,
    taken where dispatch asks the registry to select, before anything launches."""
    captured = []

    def grab(op, args, *rest, **kw):
        captured.append(args)
        raise _Stop

    # the choice cache would skip select(): cleared for the capture, restored after
    with mock.patch.object(_registry, "select", grab), \
            mock.patch.dict(_registry._CHOICE, clear=True):
        try:
            call()
        except _Stop:
            pass
    if not captured:
        raise AssertionError("the call never reached the registry (validated away, or "
                             "answered without a launch)")
    return captured[0]


def decline_message(op: str, backend: str, algo: str, reason: str) -> str:
    """The registry's refusal of an implementation asked for by name (ops/_registry.select)."""
    return f"{op}: ({backend}, {algo}) cannot serve this call: {reason}"


def plan(op: str, args, backends: Iterable[str] = DEVICE_BACKENDS, only=None
         ) -> Tuple[List[Tuple[str, str]], Dict[Tuple[str, str], str]]:
    """([(backend, algo) that must serve], {(backend, algo): reason it must decline with}) for
    the registered implementations of `op` on `backends` (and with only(algo) true, if
    given), from supports(). An unavailable backend is an error here, not a decline."""
    serve, decline = [], {}
    for impl in all_impls(op):
        if impl.backend not in backends or (only is not None and not only(impl.algo)):
            continue
        unavailable = backend_unavailable(impl.backend)
        if unavailable:
            raise AssertionError(f"backend {impl.backend} unavailable: {unavailable}")
        why = impl.why_not(args)
        if why is None:
            serve.append((impl.backend, impl.algo))
        else:
            decline[(impl.backend, impl.algo)] = decline_message(op, impl.backend, impl.algo, why)
    return serve, decline


def run_planned(op: str, call: Callable[[str, str], object], check: Callable[[object, str, str],
                Optional[str]], backends: Iterable[str] = DEVICE_BACKENDS,
                expect_served: Iterable[Tuple[str, str]] = (), only=None
                ) -> Tuple[List[Tuple[str, str]], List[str]]:
    """Runs call(backend, algo) for every registered implementation of `op` on `backends`:
    those supports() accepts must return an output that check(out, backend, algo) passes
    (it returns None or a failure line); the others must raise NotServed with exactly the
    registry's refusal and their supports() reason. `expect_served` must be among the
    serving ones (so a supports() that wrongly declines cannot empty the test). Returns
    (the implementations that served, failure lines). only(algo), if given, restricts the
    implementations run."""
    args = argument_record(lambda: call("auto", "auto"))
    serve, decline = plan(op, args, backends, only)
    failures = [f"{op} ({b}, {a}): declined ({decline.get((b, a))}) but expected to serve"
                for b, a in expect_served if (b, a) not in serve]
    for (b, a), message in decline.items():
        try:
            call(b, a)
        except NotServed as e:
            if str(e) != message:
                failures.append(f"{op} ({b}, {a}): declined with {str(e)!r}, expected {message!r}")
        except Exception as e:              # noqa: BLE001 - a crash is a failure, reported
            failures.append(f"{op} ({b}, {a}): expected to decline, raised "
                            f"{type(e).__name__}: {e}")
        else:
            failures.append(f"{op} ({b}, {a}): supports() declines but the call ran")
    for b, a in serve:
        try:
            out = call(b, a)
        except Exception as e:              # noqa: BLE001
            failures.append(f"{op} ({b}, {a}): supports() accepts but it raised "
                            f"{type(e).__name__}: {e}")
            continue
        bad = check(out, b, a)
        if bad:
            failures.append(f"{op} ({b}, {a}): {bad}")
    return serve, failures


# ----------------------------------------------------------------------------------------
# which implementations ran


@contextlib.contextmanager
def recording_runs(ran: Set[Tuple[str, str, str]]):
    """Adds (op, backend, algo) to `ran` each time an implementation returns (dispatch and the
    autotuner call implementations through Impl.fn)."""
    original = _registry.Impl.fn

    def fn(impl):
        f = original.fget(impl)

        def run(*args, **kwargs):
            out = f(*args, **kwargs)
            ran.add((impl.op, impl.backend, impl.algo))
            return out
        return run

    with mock.patch.object(_registry.Impl, "fn", property(fn)):
        yield ran


def never_ran(ran: Set[Tuple[str, str, str]], backends: Iterable[str] = DEVICE_BACKENDS
              ) -> List[str]:
    """The registered (op, backend, algo) on `backends` that serve float32 or float64 (this
    tier's problems; the half-only kernels are tests/test_gpu_half.py's) and are not in
    `ran`."""
    return [f"({op}, {i.backend}, {i.algo})" for op in _registry._REGISTRY
            for i in all_impls(op) if i.backend in backends
            and {"float32", "float64"} & set(i.dtypes) and (op, i.backend, i.algo) not in ran]


# ----------------------------------------------------------------------------------------
# convgpu check's table


@contextlib.contextmanager
def recording_declines(declines: Set[str]):
    """Adds to `declines` the refusal message of every implementation that supports()
    turns down while inside (the messages a justified "not served" row may carry)."""
    original = _registry._why_not       # supports(), and the call's dtype where the record
                                        # does not carry it (select() asks this)

    def why_not(impl, args, dtype):
        why = original(impl, args, dtype)
        if why is not None and backend_unavailable(impl.backend) is None:
            declines.add(decline_message(impl.op, impl.backend, impl.algo, why))
        return why

    with mock.patch.object(_registry, "_why_not", why_not):
        yield declines


def unjustified_rows(rows, declines: Set[str]) -> List[str]:
    """Rows of run_checks that are neither "ok" nor a decline by supports() (a "FAIL", a
    backend "not run", a "not served" that is a launcher's or a reshape's ValueError)."""
    bad = []
    for r in rows:
        if r.status == "ok":
            continue
        if r.status.startswith("not served: ") and r.status[len("not served: "):] in declines:
            continue
        bad.append(f"{r.op} ({r.backend}, {r.algo}) {r.dtype} {r.shape}: {r.status} "
                   f"err={r.error}")
    return bad
