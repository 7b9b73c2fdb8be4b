"""(op, backend, algo) -> implementation, with a supports() predicate.

An implementation is a function of the validated argument record (ConvArgs, PoolArgs,
...) and the native arrays. Its `supports(args)` returns None when it can serve the call
or a sentence saying why not; dispatch never picks one that says no, and asking for it
by name raises ValueError with that sentence.

Implementations are named by "module:function" strings and imported on first use, so
`import convgpu` stays cheap and works without Numba or CuPy installed.

backend="auto" follows the arrays: host arrays -> "numpy"; device arrays -> "cuda"
when it has a supporting implementation, else "numba". algo="auto" picks the first
supporting implementation in registration order on the host; on a device, where
several support the call, each is timed once per problem and the fastest is cached
(as cudnn.benchmark does).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

from convgpu.arrays import cupy_module
from convgpu.core import env

BACKENDS = ("numpy", "numba", "cuda")


@dataclass
class Impl:
    op: str
    backend: str
    algo: str
    target: str                                   # "module:function"
    supports: Optional[Callable] = None
    note: str = ""
    dev: bool = False                             # kernels/dev: by name only, never "auto"
    _fn: Optional[Callable] = field(default=None, repr=False)

    @property
    def fn(self) -> Callable:
        if self._fn is None:
            mod, name = self.target.split(":")
            self._fn = getattr(importlib.import_module(mod), name)
        return self._fn

    def why_not(self, args) -> Optional[str]:
        reason = backend_unavailable(self.backend)
        if reason:
            return reason
        if isinstance(self.supports, str):        # "module:function", imported lazily
            mod, name = self.supports.split(":")
            self.supports = getattr(importlib.import_module(mod), name)
        return self.supports(args) if self.supports else None


_REGISTRY: Dict[str, List[Impl]] = {}
# ops that run on another op's implementations
ALIASES = {"conv_transpose2d": "conv2d_backward_input"}


def register(op: str, backend: str, algo: str, target: str, supports=None, note: str = "",
             dev: bool = False):
    """dev=True: a candidate or superseded kernel (kernels/dev), registered only under
    CONVGPU_DEV=1 and then run only when named (algo="..."), never by algo="auto"."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}")
    if dev and not env.dev():
        return
    impls = _REGISTRY.setdefault(op, [])
    if any(i.backend == backend and i.algo == algo for i in impls):
        raise ValueError(f"{op}: ({backend}, {algo}) registered twice")
    impls.append(Impl(op, backend, algo, target, supports, note, dev))


def implementations(op: Optional[str] = None):
    """[(backend, algo), ...] registered for `op`, or {op: [...]} for all ops."""
    if op is None:
        return {o: implementations(o) for o in ops()}
    op = ALIASES.get(op, op)
    if op not in _REGISTRY:
        raise ValueError(f"unknown op {op!r}; ops: {', '.join(sorted(_REGISTRY))}")
    return [(i.backend, i.algo) for i in _REGISTRY[op]]


def all_impls(op: str) -> List[Impl]:
    return list(_REGISTRY.get(ALIASES.get(op, op), []))


def ops() -> List[str]:
    return list(_REGISTRY) + list(ALIASES)


# ----------------------------------------------------------------------------------------
# backend availability


def simulator_enabled() -> bool:
    return env.simulator()


def cuda_host_enabled() -> bool:
    """CONVGPU_CUDA_HOST=1: the cuda backend's kernels run on the CPU, emulated thread by
    thread (kernels/cuda/emulator), on NumPy arrays: the host-emulation test tier."""
    return env.host_emulation()


_AVAIL: Dict[str, Optional[str]] = {}


def backend_unavailable(backend: str) -> Optional[str]:
    """None if the backend can run here, else why not (cached)."""
    if backend == "cuda" and cuda_host_enabled():
        from convgpu.kernels.cuda.emulator import cuda_host   # deferred: import convgpu stays light
        return None if cuda_host.available() else f"no C++ compiler ({cuda_host.CXX}) to emulate"
    if backend in _AVAIL:
        return _AVAIL[backend]
    reason = None
    if backend == "numba":
        try:
            from numba import cuda
            if not simulator_enabled() and not cuda.is_available():
                reason = "no CUDA GPU visible to Numba (set NUMBA_ENABLE_CUDASIM=1 to simulate)"
        except Exception as e:              # numba not installed or broken
            reason = f"numba is not importable ({e.__class__.__name__}: {e})"
    elif backend == "cuda":
        if cupy_module() is None:
            reason = "CuPy with a CUDA GPU is not available"
    _AVAIL[backend] = reason
    return reason


def device_backend_runs_on_host(backend: str) -> bool:
    """The numba backend under the simulator, and the cuda backend under host emulation,
    take NumPy arrays."""
    return backend == "numpy" or (backend == "numba" and simulator_enabled()) or \
        (backend == "cuda" and cuda_host_enabled())


# ----------------------------------------------------------------------------------------
# selection


def _listing(op: str) -> str:
    return ", ".join(f"({i.backend}, {i.algo})" for i in _REGISTRY[op])


def select(op: str, args, backend: str, algo: str, on_device: bool) -> List[Impl]:
    """The implementations that may serve this call, best first (one unless autotuning)."""
    if backend not in ("auto",) + BACKENDS:
        raise ValueError(f"{op}: backend must be one of auto, {', '.join(BACKENDS)}; got {backend!r}")
    impls = _REGISTRY[op]
    if backend == "auto":
        if on_device:
            order = ("cuda", "numba")
        else:
            order = ("numpy",)
    else:
        if backend == "numpy" and on_device:
            raise TypeError(f"{op}: backend 'numpy' needs host arrays (NumPy or CPU torch); "
                            "got device arrays")
        if backend != "numpy" and not on_device and not device_backend_runs_on_host(backend):
            raise TypeError(f"{op}: backend {backend!r} needs device arrays (CuPy or CUDA torch); "
                            "got host arrays")
        order = (backend,)
    if algo != "auto":
        named = sorted((i for i in impls if i.algo == algo and i.backend in order),
                       key=lambda i: order.index(i.backend))
        if not named:
            raise ValueError(f"{op}: no implementation ({'/'.join(order)}, {algo}); "
                             f"registered: {_listing(op)}")
        reasons = [(i, i.why_not(args)) for i in named]
        ok = [i for i, r in reasons if r is None]
        if not ok:
            i, r = reasons[0]
            raise ValueError(f"{op}: ({i.backend}, {i.algo}) cannot serve this call: {r}")
        return ok[:1]
    for b in order:
        ok = [i for i in impls if i.backend == b and not i.dev and i.why_not(args) is None]
        if ok:
            return ok
    tried = "; ".join(f"({i.backend}, {i.algo}): {i.why_not(args)}"
                      for i in impls if i.backend in order)
    raise ValueError(f"{op}: no implementation supports this call. {tried or _listing(op)}")


def _args_key(args):
    """A cheap hashable key for an argument record (repr of a ConvArgs costs ~10 us)."""
    if isinstance(args, tuple):
        return args
    key = tuple(vars(args).values())
    try:
        hash(key)
        return (type(args).__name__,) + key
    except TypeError:                       # a record holding another record
        return repr(args)


# (op, backend, algo, args key) -> the implementation that serves it on the device: the
# supports() checks and the autotuning run once per problem, not on every call
_CHOICE: Dict[tuple, Impl] = {}


def dispatch(op: str, args, backend: str, algo: str, on_device: bool, *arrays):
    if not on_device:
        return select(op, args, backend, algo, on_device)[0].fn(args, *arrays)
    key = (op, backend, algo, _args_key(args))
    impl = _CHOICE.get(key)
    if impl is None:
        cands = select(op, args, backend, algo, on_device)
        if len(cands) == 1:
            impl = cands[0]
        else:
            best = _autotune(cands, args, arrays)
            impl = next(i for i in cands if i.algo == best)
        _CHOICE[key] = impl
    return impl.fn(args, *arrays)


def _autotune(cands, args, arrays) -> str:
    """Time each candidate once (after a warm-up call) with CUDA events; return the fastest."""
    import cupy
    times = []
    for impl in cands:
        try:
            impl.fn(args, *arrays)
            start, stop = cupy.cuda.Event(), cupy.cuda.Event()
            start.record()
            impl.fn(args, *arrays)
            stop.record()
            stop.synchronize()
            times.append((cupy.cuda.get_elapsed_time(start, stop), impl.algo))
        except Exception:                   # an implementation that fails is never picked
            continue
    if not times:
        return cands[0].algo
    return min(times)[1]


def autotune_cache() -> Dict[tuple, str]:
    """What dispatch chose on the device so far: {(op, backend, algo, args key): algo}."""
    return {k: i.algo for k, i in _CHOICE.items()}
