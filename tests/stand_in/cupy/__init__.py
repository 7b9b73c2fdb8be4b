"""A stand-in for CuPy, for running the GPU-only bench scripts through on a machine without
a GPU (tests/test_bench_scripts.py): arrays are NumPy arrays, kernels run in the host
emulation (CONVGPU_CUDA_HOST=1), events read the host clock. It checks that a script runs
and prints what it should, not any timing. Only what those scripts use is here."""
import re
import time
import types

import numpy as np

float32, float64, int64 = np.float32, np.float64, np.int64
asarray = np.asarray
asnumpy = np.asarray
zeros, ones, empty = np.zeros, np.ones, np.empty
zeros_like = np.zeros_like
ones_like = np.ones_like
fft = types.SimpleNamespace(rfft2=np.fft.rfft2, irfft2=np.fft.irfft2)
matmul, array_equal, linalg, nan = np.matmul, np.array_equal, np.linalg, np.nan


class _Event:
    def record(self):
        self.t = time.perf_counter()

    def synchronize(self):
        pass


class _Device:
    id = 0

    def synchronize(self):
        pass


cuda = types.SimpleNamespace(
    Event=_Event, Device=lambda *a: _Device(),
    get_elapsed_time=lambda a, b: (b.t - a.t) * 1e3,
    runtime=types.SimpleNamespace(getDeviceCount=lambda: 0,
                                  getDeviceProperties=lambda i: {"name": b"host emulation"}))


class _Generator:
    def __init__(self, seed):
        self.g = np.random.default_rng(seed)

    def standard_normal(self, shape, dtype=np.float64):
        return self.g.standard_normal(shape).astype(dtype)


random = types.SimpleNamespace(default_rng=_Generator)


class RawModule:
    """The named kernels of a source, built by the host emulation; -DNAME=VALUE options
    become #defines in front of the source."""

    def __init__(self, code, options=(), name_expressions=()):
        from convgpu.kernels.cuda.emulator import cuda_host
        defines = "".join(f"#define {m.group(1)} {m.group(2)}\n" for o in options
                          for m in [re.match(r"-D(\w+)=(\S+)$", o)] if m)
        self.kernels = cuda_host.module_from_source(defines + code, tuple(name_expressions))

    def compile(self):
        pass

    def get_function(self, expr):
        return self.kernels[expr]
