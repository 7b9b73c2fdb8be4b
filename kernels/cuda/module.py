"""Memoised loader for the CUDA C kernels: one cupy.RawModule per .cu file per device,
built once with every template specialisation the launchers use (sources.NAME_EXPRESSIONS),
so no host work repeats on the hot path; under CONVGPU_CUDA_HOST=1 the host emulation's
build of the same file instead. CuPy is imported inside the functions that need a device, so
the launchers import (and run emulated) without it.
"""
from __future__ import annotations

import functools
from typing import Dict, Tuple

import numpy as np

from convgpu.core.args import HALF_DTYPES
from convgpu.core.env import host_emulation
from convgpu.kernels.cuda.emulator import cuda_host
from convgpu.kernels.cuda.sources import NAME_EXPRESSIONS, options, source


_CTYPES = {np.dtype(np.float32): "float", np.dtype(np.float64): "double",
           np.dtype(np.float16): "__half", HALF_DTYPES[1]: "__nv_bfloat16"}


@functools.lru_cache(maxsize=None)
def _module(name: str, device_id: int):
    import cupy
    mod = cupy.RawModule(code=source(name), options=options(),
                         name_expressions=NAME_EXPRESSIONS[name])
    mod.compile()
    return mod


def get_function(file: str, expr: str):
    """The kernel `expr` (one of NAME_EXPRESSIONS[file]) of `file` on the current device, or
    its host emulation under CONVGPU_CUDA_HOST=1."""
    if host_emulation():
        return cuda_host.get_function(file, expr)
    import cupy
    return _module(file, cupy.cuda.Device().id).get_function(expr)


def max_shared_per_block() -> int:
    """The most shared memory one block may have on the current device once a kernel opts
    in (cudaDevAttrMaxSharedMemoryPerBlockOptin: 227 KiB on sm_90, 163 KiB on sm_80, 99 KiB
    on sm_86 / sm_89); under host emulation the emulator's limit (sm_90's)."""
    if host_emulation():
        return cuda_host.MAX_SHARED_PER_BLOCK
    import cupy
    return _optin_shared(cupy.cuda.Device().id)


@functools.lru_cache(maxsize=None)
def _optin_shared(device_id: int) -> int:
    import cupy
    rt = cupy.cuda.runtime
    return int(rt.deviceGetAttribute(rt.cudaDevAttrMaxSharedMemoryPerBlockOptin, device_id))


_DYNAMIC_SHARED_SET: Dict[Tuple[int, int], Tuple[object, int]] = {}


def set_max_dynamic_shared(fn, nbytes: int) -> None:
    """Let kernel `fn` (from get_function) launch with up to nbytes of dynamic shared memory
    (CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES; past 48 KiB a launch fails without it).
    Through RawKernel's settable max_dynamic_shared_size_bytes (cuFuncSetAttribute on the
    current device's function; a RawKernel has no .ptr), which the host emulation's kernel
    object has too. Once per function, device and size: the attribute stays with the loaded
    function (the entry keeps fn alive so its id cannot be reused)."""
    if host_emulation():
        fn.max_dynamic_shared_size_bytes = max(fn.max_dynamic_shared_size_bytes, nbytes)
        return
    import cupy
    key = (id(fn), cupy.cuda.Device().id)
    if _DYNAMIC_SHARED_SET.get(key, (None, 0))[1] >= nbytes:
        return
    fn.max_dynamic_shared_size_bytes = nbytes
    _DYNAMIC_SHARED_SET[key] = (fn, nbytes)


def ctype(dtype) -> str:
    """The C type of a data dtype in the kernels' template arguments (half.cuh's half types
    for float16 and bfloat16)."""
    return _CTYPES[np.dtype(dtype)]


def acc_dtype(dtype) -> np.dtype:
    """The dtype a kernel on `dtype` data computes in and takes its scalars in (half.cuh's
    acc_t): float32 for the half types, the dtype itself otherwise."""
    d = np.dtype(dtype)
    return np.dtype(np.float32) if d in HALF_DTYPES else d


def cbool(v) -> str:
    """A Python truth value as a C++ template argument."""
    return "true" if v else "false"
