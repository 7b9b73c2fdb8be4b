"""A stand-in for CuPy on machines without a GPU, in two modes.

Script mode (the default; tests/test_bench_scripts.py): arrays are NumPy arrays, kernels run
in the host emulation (CONVGPU_CUDA_HOST=1), events read the host clock, no device is
reported. It checks that a GPU-only bench script runs and prints what it should, not any
timing.

Device mode (CONVGPU_STAND_IN_DEVICE=1; tests/test_stand_in_device.py): one device (compute
capability 9.0), so convgpu takes its device path: `ndarray` is a distinct array type over
NumPy memory (the CuPy branch of convgpu.arrays, backend "cuda", `_autotune` and its cache),
refusing implicit conversion to NumPy as CuPy does; RawModule kernels are served by the host
emulation (kernels/cuda/emulator) on that memory; streams are objects with distinct pointers and
a current-stream stack, and every kernel launch is recorded in `launches` with the stream
current at the launch, so a test can tell a launch on the wrong stream; events read
time.perf_counter() and get_elapsed_time returns their difference in ms. Only what convgpu
and its scripts use is here."""
import functools
import itertools
import os
import re
import time
import types

import numpy as np

STAND_IN = True
DEVICE_MODE = os.environ.get("CONVGPU_STAND_IN_DEVICE", "0") not in ("", "0")

float16, float32, float64, int32, int64, uint8 = (np.float16, np.float32, np.float64, np.int32,
                                                  np.int64, np.uint8)
complex64, complex128, bool_ = np.complex64, np.complex128, np.bool_
nan, inf, newaxis = np.nan, np.inf, np.newaxis
dtype = np.dtype


class _Event:
    def __init__(self, block=False, disable_timing=False, interprocess=False):
        self.t = None
        self.stream = None

    def record(self, stream=None):
        self.stream = stream if stream is not None else cuda.get_current_stream()
        self.t = time.perf_counter()

    def synchronize(self):
        pass

    @property
    def done(self):
        return True


def _elapsed_ms(start, stop):
    if start.t is None or stop.t is None:
        raise RuntimeError("get_elapsed_time: an event was never recorded")
    return (stop.t - start.t) * 1e3


# ----------------------------------------------------------------------------------------
# streams: a stack of current streams, as CuPy's `with stream:` keeps one per thread

_ptrs = itertools.count(0x5000)


class Stream:
    """A stream; `ptr` is 0 for the null stream and distinct for every other one."""
    null = None                                   # set below

    def __init__(self, null=False, non_blocking=False, ptds=False):
        self.ptr = 0 if null else next(_ptrs)
        self.non_blocking = non_blocking

    def __enter__(self):
        _current.append(self)
        return self

    def __exit__(self, *exc):
        _current.pop()

    def use(self):
        _current[:] = [self]
        return self

    def synchronize(self):
        pass

    def record(self, event=None):
        event = event or _Event()
        event.record(self)
        return event

    def __repr__(self):
        return f"<stand-in Stream {self.ptr:#x}>"


Stream.null = Stream(null=True)
_current = []


def _get_current_stream():
    return _current[-1] if _current else Stream.null


class _Device:
    def __init__(self, device=None):
        self.id = 0 if device is None else int(device)
        if DEVICE_MODE and self.id != 0:
            raise ValueError(f"stand-in: invalid device {self.id} (one device)")

    compute_capability = "90"

    def synchronize(self):
        pass

    def use(self):
        return self

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass

    def __eq__(self, other):
        return isinstance(other, _Device) and other.id == self.id

    def __hash__(self):
        return self.id


_NAME = b"convgpu stand-in (host emulation)" if DEVICE_MODE else b"host emulation"
_runtime = types.SimpleNamespace(
    getDeviceCount=lambda: 1 if DEVICE_MODE else 0,
    getDevice=lambda: 0,
    getDeviceProperties=lambda i: {"name": _NAME, "major": 9, "minor": 0,
                                   "multiProcessorCount": 1, "totalGlobalMem": 2 ** 34},
    driverGetVersion=lambda: 0, runtimeGetVersion=lambda: 0,
    memGetInfo=lambda: (2 ** 33, 2 ** 34),
    cudaDevAttrMaxSharedMemoryPerBlockOptin=97,
    deviceGetAttribute=lambda attr, dev: {97: 227 * 1024}[attr],
)

cuda = types.SimpleNamespace(
    Event=_Event, Device=_Device, Stream=Stream, get_current_stream=_get_current_stream,
    get_elapsed_time=_elapsed_ms, runtime=_runtime)


# ----------------------------------------------------------------------------------------
# kernels


class _Kernel:
    """A host-emulated kernel with RawKernel's call convention; in device mode it takes the
    stand-in arrays (their NumPy memory, written in place) and records each launch."""

    def __init__(self, host_kernel, name):
        self.host, self.name = host_kernel, name

    @property
    def max_dynamic_shared_size_bytes(self):
        return self.host.max_dynamic_shared_size_bytes

    @max_dynamic_shared_size_bytes.setter
    def max_dynamic_shared_size_bytes(self, n):
        self.host.max_dynamic_shared_size_bytes = n

    def __call__(self, grid, block, args, shared_mem=0):
        if DEVICE_MODE:
            for a in args:
                if isinstance(a, np.ndarray):
                    raise TypeError(f"{self.name}: a NumPy array passed to a device kernel")
            args = tuple(a._a if isinstance(a, ndarray) else a for a in args)
        launches.append((self.name, _get_current_stream()))
        return self.host(grid, block, args, shared_mem=shared_mem)


launches = []                 # (kernel name expression, stream current at the launch)


class RawModule:
    """The named kernels of a source, built by the host emulation: a file of convgpu's kernels
    (recognised by its text) through cuda_host's own cache; any other source with the
    -DNAME=VALUE options as #defines in front."""

    def __init__(self, code, options=(), name_expressions=()):
        from convgpu.kernels.cuda import sources as _module
        from convgpu.kernels.cuda.emulator import cuda_host
        file = next((f for f in _module.NAME_EXPRESSIONS if _module.source(f) == code), None)
        if (file is not None and not any(o.startswith("-D") for o in options)
                and set(name_expressions) <= set(_module.NAME_EXPRESSIONS[file])):
            self.kernels = {e: cuda_host.get_function(file, e) for e in name_expressions}
        else:
            defines = "".join(f"#define {m.group(1)} {m.group(2)}\n" for o in options
                              for m in [re.match(r"-D(\w+)=(\S+)$", o)] if m)
            self.kernels = cuda_host.module_from_source(defines + code, tuple(name_expressions))

    def compile(self):
        pass

    def get_function(self, expr):
        return _Kernel(self.kernels[expr], expr) if DEVICE_MODE else self.kernels[expr]


def RawKernel(code, name, options=()):
    return RawModule(code, options, (name,)).get_function(name)


# ----------------------------------------------------------------------------------------
# arrays


if not DEVICE_MODE:
    asarray = np.asarray
    asnumpy = np.asarray
    zeros, ones, empty, full = np.zeros, np.ones, np.empty, np.full
    zeros_like, ones_like = np.zeros_like, np.ones_like
    fft = types.SimpleNamespace(rfft2=np.fft.rfft2, irfft2=np.fft.irfft2)
    matmul, array_equal, linalg = np.matmul, np.array_equal, np.linalg

    class _Generator:
        def __init__(self, seed):
            self.g = np.random.default_rng(seed)

        def standard_normal(self, shape, dtype=np.float64):
            return self.g.standard_normal(shape).astype(dtype)

    random = types.SimpleNamespace(default_rng=_Generator)

else:
    def _unwrap(v):
        if isinstance(v, ndarray):
            return v._a
        if isinstance(v, np.ndarray):
            raise TypeError("stand-in cupy: a NumPy array where a device array is needed "
                            "(use cupy.asarray)")
        if isinstance(v, (list, tuple)):
            return type(v)(_unwrap(u) for u in v)
        if isinstance(v, dict):
            return {k: _unwrap(u) for k, u in v.items()}
        return v

    def _wrap(v):
        if isinstance(v, np.ndarray):
            return ndarray(v)
        if isinstance(v, tuple):
            return tuple(_wrap(u) for u in v)
        if isinstance(v, list):
            return [_wrap(u) for u in v]
        return v

    def _device_fn(f, name=None):
        """f over device arrays: unwrap the arguments, wrap array results."""
        @functools.wraps(f)
        def g(*args, **kwargs):
            return _wrap(f(*_unwrap(args), **_unwrap(kwargs)))
        return g

    class ndarray:
        """A device array: NumPy memory behind a type of its own (CuPy's methods and
        operators, no implicit conversion to NumPy)."""
        __slots__ = ("_a",)

        def __init__(self, a):
            if not isinstance(a, np.ndarray):
                raise TypeError("stand-in ndarray wraps a NumPy array")
            object.__setattr__(self, "_a", a)

        shape = property(lambda s: s._a.shape)
        dtype = property(lambda s: s._a.dtype)
        ndim = property(lambda s: s._a.ndim)
        size = property(lambda s: s._a.size)
        strides = property(lambda s: s._a.strides)
        nbytes = property(lambda s: s._a.nbytes)
        itemsize = property(lambda s: s._a.itemsize)
        flags = property(lambda s: s._a.flags)
        T = property(lambda s: ndarray(s._a.T))
        real = property(lambda s: ndarray(s._a.real))
        imag = property(lambda s: ndarray(s._a.imag))
        device = property(lambda s: _Device(0))
        data = property(lambda s: types.SimpleNamespace(ptr=s._a.ctypes.data))

        def get(self, stream=None, order="C", out=None):
            return np.array(self._a, order=order)

        def set(self, arr, stream=None):
            self._a[...] = arr

        def __array__(self, dtype=None, copy=None):
            raise TypeError("Implicit conversion to a NumPy array is not allowed. Please use "
                            "`.get()` to construct a NumPy array explicitly.")

        def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
            return _wrap(getattr(ufunc, method)(*_unwrap(inputs), **_unwrap(kwargs)))

        def __array_function__(self, func, types_, args, kwargs):
            return _wrap(func(*_unwrap(args), **_unwrap(kwargs)))

        def __getattr__(self, name):
            if name.startswith("__"):          # __array_interface__ and kin: no way to NumPy
                raise AttributeError(name)
            v = getattr(self._a, name)
            return _device_fn(v) if callable(v) else _wrap(v)

        def __getitem__(self, key):
            return _wrap(self._a[_unwrap(key)])

        def __setitem__(self, key, value):
            self._a[_unwrap(key)] = _unwrap(value)

        def __len__(self):
            return len(self._a)

        def __iter__(self):
            return (_wrap(v) for v in self._a)

        def __bool__(self):
            return bool(self._a)

        def __float__(self):
            return float(self._a)

        def __int__(self):
            return int(self._a)

        def __index__(self):
            return self._a.__index__()

        def __repr__(self):
            return "stand-in device " + repr(self._a)

        __hash__ = None

    def _operator(name):
        def op(self, *args):
            r = getattr(self._a, name)(*_unwrap(args))
            if r is NotImplemented:
                return r
            return self if r is self._a else _wrap(r)
        op.__name__ = name
        return op

    for _n in ("add sub mul truediv floordiv mod pow matmul and or xor lshift rshift "
               "radd rsub rmul rtruediv rfloordiv rmod rpow rmatmul rand ror rxor "
               "iadd isub imul itruediv ifloordiv imod ipow iand ior ixor "
               "lt le gt ge eq ne neg pos abs invert").split():
        setattr(ndarray, f"__{_n}__", _operator(f"__{_n}__"))

    def asarray(a, dtype=None, order=None):
        if isinstance(a, ndarray):
            return a if dtype is None or np.dtype(dtype) == a.dtype else a.astype(dtype)
        return ndarray(np.array(a, dtype=dtype, order=order or "K"))    # a copy, as to a device

    array = asarray

    def asnumpy(a, stream=None, order="C", out=None):
        return a.get() if isinstance(a, ndarray) else np.asarray(a, order=order)

    def from_dlpack(t):
        raise TypeError("stand-in cupy: no DLPack exchange (no torch CUDA tensors here)")

    fft = types.SimpleNamespace(**{n: _device_fn(getattr(np.fft, n)) for n in
                                   ("fft", "ifft", "fft2", "ifft2", "rfft", "irfft", "rfft2",
                                    "irfft2", "rfftn", "irfftn", "fftn", "ifftn")})
    linalg = types.SimpleNamespace(norm=_device_fn(np.linalg.norm))

    class _Generator:
        def __init__(self, seed):
            self.g = np.random.default_rng(seed)

        def standard_normal(self, shape, dtype=np.float64):
            return ndarray(self.g.standard_normal(shape).astype(dtype))

        def random(self, shape, dtype=np.float64):
            return ndarray(self.g.random(shape).astype(dtype))

    random = types.SimpleNamespace(default_rng=_Generator)

    def __getattr__(name):
        """Any other NumPy function, over device arrays (cupy.zeros, cupy.sum, ...)."""
        v = getattr(np, name)
        if callable(v) and not isinstance(v, type):
            return _device_fn(v)
        raise AttributeError(f"stand-in cupy has no {name!r}")
