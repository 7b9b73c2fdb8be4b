"""(op, backend, algo) -> implementation, with a supports() predicate.

An implementation is a function of the validated argument record (ConvArgs, PoolArgs,
...) and the native arrays. Its `supports(args)` returns None when it can serve the call
or a sentence saying why not; dispatch never picks one that says no, and asking for it
by name raises NotServed (a ValueError) with that sentence. Each also names the data dtypes it serves
(`dtypes=`; float32 and float64 unless it says otherwise, every float dtype on the numpy
backend): a call in another dtype is refused the same way, with a sentence naming both.
`layouts` names the memory layouts it serves
(NCHW unless registered otherwise): a record whose `layout` is another is refused with a
sentence before supports() is asked.

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
import os
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

from convgpu.arrays import cupy_module
from convgpu.core import env
from convgpu.core.cachedir import UnsafeCacheDir, user_dir
from convgpu.core.provenance import source_hash

BACKENDS = ("numpy", "numba", "cuda")
DTYPE_NAMES = ("float16", "bfloat16", "float32", "float64")
# what an implementation serves unless it registers dtypes=...: a device kernel the half
# types (float16, bfloat16) only where it was written, run and compiled for them; the numpy
# backend (the reference, in float64 from any input) every float dtype
DEFAULT_DTYPES = ("float32", "float64")
BACKEND_DTYPES = {"numpy": DTYPE_NAMES, "numba": DEFAULT_DTYPES, "cuda": DEFAULT_DTYPES}
# the numba kernels written for float16 (FP32 sums); Numba CUDA has no bfloat16
WITH_FLOAT16 = ("float16", "float32", "float64")


class NotServed(ValueError):
    """The registry's refusal: no registered implementation serves this call (supports()
    declines it, or none is registered under that name). A ValueError so callers that catch
    bad input still catch it; `convgpu check` counts only this as a decline, so a launcher's
    own ValueError shows as the failure it is."""


@dataclass
class Impl:
    op: str
    backend: str
    algo: str
    target: str                                   # "module:function"
    supports: Optional[Callable] = None
    note: str = ""
    dev: bool = False                             # kernels/dev: by name only, never "auto"
    dtypes: Tuple[str, ...] = DEFAULT_DTYPES      # the data dtypes it serves, by name
    layouts: Tuple[str, ...] = ("NCHW",)          # the args.layout values it serves
    _fn: Optional[Callable] = field(default=None, repr=False)

    @property
    def fn(self) -> Callable:
        if self._fn is None:
            mod, name = self.target.split(":")
            self._fn = getattr(importlib.import_module(mod), name)
        return self._fn

    def dtype_refusal(self, dtype) -> Optional[str]:
        """None if this implementation serves the data dtype `dtype` (None: not known from
        the record alone, then the caller checked it), else the sentence saying it doesn't."""
        if dtype is None:
            return None
        name = np.dtype(dtype).name
        if name in self.dtypes:
            return None
        return f"{self.op} {self.backend}:{self.algo} serves {', '.join(self.dtypes)}; not {name}"

    def why_not(self, args) -> Optional[str]:
        """None if this implementation can serve the call described by the argument record,
        else why not: the backend missing here, the record's dtype, or supports()."""
        reason = backend_unavailable(self.backend) or self.dtype_refusal(record_dtype(args))
        if reason:
            return reason
        layout = getattr(args, "layout", "NCHW")
        if layout not in self.layouts:
            return (f"serves layout {' and '.join(self.layouts)} only, not {layout}"
                    + ("; algo='transpose' runs the NCHW kernels between transposes"
                       if self.backend != "numpy" and layout == "NHWC" else ""))
        if isinstance(self.supports, str):        # "module:function", imported lazily
            mod, name = self.supports.split(":")
            self.supports = getattr(importlib.import_module(mod), name)
        return self.supports(args) if self.supports else None


_REGISTRY: Dict[str, List[Impl]] = {}
# ops that run on another op's implementations
ALIASES = {"conv_transpose2d": "conv2d_backward_input"}


def register(op: str, backend: str, algo: str, target: str, supports=None, note: str = "",
             dev: bool = False, dtypes=None, layouts: Tuple[str, ...] = ("NCHW",)):
    """dev=True: a candidate or superseded kernel (kernels/dev), registered only under
    CONVGPU_DEV=1 and then run only when named (algo="..."), never by algo="auto".
    dtypes: the data dtypes the implementation serves, by name (float16, bfloat16, float32,
    float64; None: the backend's default, BACKEND_DTYPES); a call in another dtype passes
    it over under algo="auto" and gets ValueError naming it when asked for by name.
    layouts: the memory layouts ("NCHW", "NHWC") the implementation serves."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}")
    if dtypes is None:
        dtypes = BACKEND_DTYPES[backend]
    if isinstance(dtypes, str):
        dtypes = (dtypes,)
    dtypes = tuple(np.dtype(d).name if not isinstance(d, str) else d for d in dtypes)
    if not dtypes or any(d not in DTYPE_NAMES for d in dtypes):
        raise ValueError(f"{op}: dtypes must name some of {', '.join(DTYPE_NAMES)}; "
                         f"got {dtypes!r}")
    if not layouts or any(lay not in ("NCHW", "NHWC") for lay in layouts):
        raise ValueError(f"{op}: ({backend}, {algo}) layouts must name NCHW and/or NHWC, "
                         f"got {layouts!r}")
    if dev and not env.dev():
        return
    impls = _REGISTRY.setdefault(op, [])
    if any(i.backend == backend and i.algo == algo for i in impls):
        raise ValueError(f"{op}: ({backend}, {algo}) registered twice")
    impls.append(Impl(op, backend, algo, target, supports, note, dev, dtypes,
                      tuple(layouts)))


def served_dtypes(op: str) -> Dict[Tuple[str, str], Tuple[str, ...]]:
    """{(backend, algo): the dtypes it serves} for `op`."""
    implementations(op)                     # unknown op -> ValueError
    return {(i.backend, i.algo): i.dtypes for i in _REGISTRY[ALIASES.get(op, op)]}


def record_dtype(args) -> Optional[np.dtype]:
    """The data dtype an argument record carries (ConvArgs.dtype, PoolArgs.dtype, ...), or
    None for a record without one (a shape tuple): dispatch then takes it from the arrays."""
    d = getattr(args, "dtype", None)
    if d is None:
        return None
    try:
        return np.dtype(d)
    except TypeError:
        return None


def data_dtype(arrays) -> Optional[np.dtype]:
    """The dtype of the first floating-point array of a call (the data: input, grad_output,
    logits, param), the one the implementation's dtypes are checked against."""
    for a in arrays:
        d = getattr(a, "dtype", None)
        if d is not None and np.dtype(d).name in DTYPE_NAMES:
            return np.dtype(d)
    return None


def implementations(op: Optional[str] = None, layout: Optional[str] = None):
    """[(backend, algo), ...] registered for `op`, or {op: [...]} for all ops; with layout
    ("NCHW" or "NHWC"), only those that serve it."""
    if op is None:
        return {o: implementations(o, layout) for o in ops()}
    op = ALIASES.get(op, op)
    if op not in _REGISTRY:
        raise ValueError(f"unknown op {op!r}; ops: {', '.join(sorted(_REGISTRY))}")
    return [(i.backend, i.algo) for i in _REGISTRY[op] if layout is None or layout in i.layouts]


def all_impls(op: str, layout: Optional[str] = "NCHW") -> List[Impl]:
    """The implementations of `op` that serve `layout` (None: every one). NCHW by default:
    the tiers and tools that run every implementation on NCHW problems iterate these."""
    return [i for i in _REGISTRY.get(ALIASES.get(op, op), [])
            if layout is None or layout in i.layouts]


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


def _why_not(impl: Impl, args, dtype) -> Optional[str]:
    """impl.why_not(args), the call's data dtype checked first where the record lacks it."""
    reason = None if dtype is None else (backend_unavailable(impl.backend)
                                         or impl.dtype_refusal(dtype))
    return reason or impl.why_not(args)


def _listing(op: str) -> str:
    return ", ".join(f"({i.backend}, {i.algo})" for i in _REGISTRY[op])


def select(op: str, args, backend: str, algo: str, on_device: bool, dtype=None) -> List[Impl]:
    """The implementations that may serve this call, best first (one unless autotuning).
    dtype: the call's data dtype where the record does not carry one."""
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
                            "got host arrays (on a CPU, NUMBA_ENABLE_CUDASIM=1 runs the numba "
                            "kernels in the CUDA simulator and CONVGPU_CUDA_HOST=1 the cuda "
                            "kernels in the host emulation, on NumPy arrays: both slow, for "
                            "testing; set them in the environment before Python starts)")
        order = (backend,)
    if algo != "auto":
        named = sorted((i for i in impls if i.algo == algo and i.backend in order),
                       key=lambda i: order.index(i.backend))
        if not named:
            raise NotServed(f"{op}: no implementation ({'/'.join(order)}, {algo}); "
                             f"registered: {_listing(op)}")
        reasons = [(i, _why_not(i, args, dtype)) for i in named]
        ok = [i for i, r in reasons if r is None]
        if not ok:
            i, r = reasons[0]
            raise NotServed(f"{op}: ({i.backend}, {i.algo}) cannot serve this call: {r}")
        return ok[:1]
    for b in order:
        ok = [i for i in impls
              if i.backend == b and not i.dev and _why_not(i, args, dtype) is None]
        if ok:
            return ok
    tried = "; ".join(f"({i.backend}, {i.algo}): {_why_not(i, args, dtype)}"
                      for i in impls if i.backend in order)
    raise NotServed(f"{op}: no implementation supports this call. {tried or _listing(op)}")


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
    dtype = data_dtype(arrays)
    if not on_device:
        return select(op, args, backend, algo, on_device, dtype)[0].fn(args, *arrays)
    akey = _args_key(args)
    if dtype is not None and record_dtype(args) is None:      # a shape tuple: add the dtype
        akey = (akey, dtype.name)
    key = (op, backend, algo, akey)
    impl = _CHOICE.get(key)
    if impl is None:
        cands = select(op, args, backend, algo, on_device, dtype)
        impl = cands[0] if len(cands) == 1 else _tuned(key, cands, args, arrays)
        _CHOICE[key] = impl
    return impl.fn(args, *arrays)


def _time_once(impl, args, arrays) -> float:
    """Milliseconds of one call (after a warm-up call), by CUDA events."""
    import cupy
    impl.fn(args, *arrays)
    start, stop = cupy.cuda.Event(), cupy.cuda.Event()
    start.record()
    impl.fn(args, *arrays)
    stop.record()
    stop.synchronize()
    return cupy.cuda.get_elapsed_time(start, stop)


def _autotune(cands, args, arrays) -> str:
    """Time each candidate once (after a warm-up call) with CUDA events; return the fastest."""
    times = []
    for impl in cands:
        try:
            times.append((_time_once(impl, args, arrays), impl.algo))
        except Exception:                   # an implementation that fails is never picked
            continue
    if not times:
        return cands[0].algo
    return min(times)[1]


def _tuned(key, cands, args, arrays) -> Impl:
    """The persisted choice for this problem on this device if it names a candidate, else
    the autotuner's, which is then persisted."""
    store = _tune_store()
    skey = repr(key)
    if store is not None:
        algo = store.get(skey)
        for i in cands:
            if i.algo == algo:
                return i
    best = _autotune(cands, args, arrays)
    if store is not None:
        store.put(skey, best)
    return next(i for i in cands if i.algo == best)


def autotune_cache() -> Dict[tuple, str]:
    """What dispatch chose on the device so far: {(op, backend, algo, args key): algo}."""
    return {k: i.algo for k, i in _CHOICE.items()}


# ----------------------------------------------------------------------------------------
# the tuning cache on disk: one JSON per device under the user cache directory
# (convgpu.core.cachedir: created 0700, refused unless ours alone), valid only for the device,
# driver, library versions and kernel sources it was measured with


def tune_cache_enabled() -> bool:
    """CONVGPU_TUNE_CACHE=off (or 0, no, false) keeps the tuning choices in memory only."""
    return env.tune_cache()


def _library_version(name: str) -> Optional[str]:
    from importlib import metadata
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _device_identity() -> Optional[dict]:
    """What a tuning choice is valid for: the current device's name, the driver and
    runtime, the libraries' versions and the kernels' source hash. None where no device
    can be asked (then nothing is persisted)."""
    try:
        import cupy
        dev = cupy.cuda.Device().id
        props = cupy.cuda.runtime.getDeviceProperties(dev)
        name = props["name"]
        name = name.decode() if isinstance(name, bytes) else str(name)
        driver = int(cupy.cuda.runtime.driverGetVersion())
        runtime = int(cupy.cuda.runtime.runtimeGetVersion())
    except Exception:                       # no CuPy, no device, a partial stand-in
        return None
    return {"device_id": dev, "device": name, "driver": driver, "runtime": runtime,
            "convgpu": _library_version("convgpu"), "cupy": _library_version("cupy") or
            _library_version("cupy-cuda13x") or getattr(cupy, "__version__", None),
            "numba": _library_version("numba"), "numba-cuda": _library_version("numba-cuda"),
            "numpy": _library_version("numpy"), "source_hash": _source_hash()}


_SOURCE_HASH: List[str] = []


def _source_hash() -> str:
    if not _SOURCE_HASH:
        _SOURCE_HASH.append(source_hash())
    return _SOURCE_HASH[0]


class TuneStore:
    """{problem key: algo} for one device, read from and written to `path`. A file that
    fails to parse, or whose identity differs from this device's, is not trusted: it
    starts empty and is overwritten by the next choice."""

    def __init__(self, path: str, identity: dict):
        self.path, self.identity = path, {k: v for k, v in identity.items() if k != "device_id"}
        self.choices = self._read()

    def _read(self) -> Dict[str, str]:
        import json
        try:
            with open(self.path) as f:
                doc = json.load(f)
        except (OSError, ValueError):
            return {}
        if not isinstance(doc, dict) or doc.get("identity") != self.identity:
            return {}
        choices = doc.get("choices")
        if not isinstance(choices, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in choices.items()):
            return {}
        return choices

    def get(self, key: str) -> Optional[str]:
        return self.choices.get(key)

    def put(self, key: str, algo: str) -> None:
        """Record a choice: merged with what other processes wrote meanwhile, written to a
        private temporary file and renamed over the cache (a reader never sees half)."""
        import json
        import tempfile
        self.choices = {**self._read(), **self.choices, key: algo}
        doc = {"identity": self.identity, "choices": self.choices}
        try:
            fd, tmp = tempfile.mkstemp(dir=os.path.dirname(self.path), suffix=".tmp")
            with os.fdopen(fd, "w") as f:
                json.dump(doc, f, indent=1, sort_keys=True)
            os.replace(tmp, self.path)
        except OSError as e:                # a full disk costs the persistence, not the call
            import warnings
            warnings.warn(f"tuning cache: could not write {self.path}: {e}", stacklevel=3)


_STORES: Dict[int, Optional[TuneStore]] = {}


def tune_cache_path(identity: dict) -> str:
    """The device's JSON: tune/<device name>.json in the user cache directory."""
    import re
    name = re.sub(r"[^A-Za-z0-9.-]+", "_", identity["device"]).strip("_") or "device"
    return os.path.join(user_dir("tune"), f"{name}.json")


def _tune_store() -> Optional[TuneStore]:
    """The current device's store (None when disabled, with no device to ask, or where the
    folder is refused: then a one-line warning names it and choices stay in memory)."""
    if not tune_cache_enabled():
        return None
    ident = _device_identity()
    if ident is None:
        return None
    dev = ident["device_id"]
    if dev not in _STORES:
        try:
            _STORES[dev] = TuneStore(tune_cache_path(ident), ident)
        except (UnsafeCacheDir, OSError) as e:
            import warnings
            warnings.warn(f"tuning cache not persisted: {e}", stacklevel=3)
            _STORES[dev] = None
    return _STORES[dev]
