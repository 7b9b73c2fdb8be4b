"""Memoised loader for the CUDA C kernels: one cupy.RawModule per .cu file per device,
built once with every template specialisation the launchers use (name_expressions),
so no host work repeats on the hot path.

NVRTC_OPTIONS are the options passed to RawModule; CuPy adds RUNTIME_ADDED_OPTIONS and
`-arch=sm_XX` itself. The compile tier (tests/test_compile_cuda.py) compiles every .cu with
exactly these through the low-level cupy.cuda.nvrtc API, which needs no GPU.
"""
from __future__ import annotations

import functools
import os
from importlib import resources
from typing import Dict, Sequence, Tuple

NVRTC_OPTIONS: Tuple[str, ...] = ("-std=c++17",)
RUNTIME_ADDED_OPTIONS: Tuple[str, ...] = ("-ftz=true", "--device-as-default-execution-space")

# every specialisation each module exports, by file: the launchers look kernels up by these
# exact strings
T_NAMES = ("float", "double")
NAME_EXPRESSIONS: Dict[str, Tuple[str, ...]] = {
    "gemm.cu": tuple(f"gemm_tiled<{t}, {ta}, {tb}, false>" for t in T_NAMES
                     for ta in ("false", "true") for tb in ("false", "true"))
    + tuple(f"gemm_tiled<float, {ta}, {tb}, true>" for ta in ("false", "true")
            for tb in ("false", "true"))
    + tuple(f"gemm_vec<{ta}, {tb}, {tf}>" for ta in ("false", "true")
            for tb in ("false", "true") for tf in ("false", "true"))
    + tuple(f"gemm_vec<{ta}, {tb}, false, 64>" for ta in ("false", "true")
            for tb in ("false", "true"))
    + tuple(f"gemm_pipelined<{ta}, {tb}>" for ta in ("false", "true")
            for tb in ("false", "true"))
    + tuple(f"sum_splits<{t}>" for t in T_NAMES),
    "conv.cu": tuple(f"conv2d_implicit_gemm<{t}, false>" for t in T_NAMES)
    + ("conv2d_implicit_gemm<float, true>",)
    + tuple(f"conv2d_implicit_gemm_pipelined<{va}, {vb}, {m}>" for va in ("false", "true")
            for vb in ("false", "true") for m in (64, 128))
    + tuple(f"conv2d_wgrad_implicit_gemm_pipelined<{m}>" for m in (64, 128))
    + tuple(f"conv2d_dgrad_implicit_gemm_pipelined<{u}, {m}>" for u in ("false", "true")
            for m in (64, 128))
    + tuple(f"conv2d_{k}_implicit_gemm<{t}, false>" for k in ("wgrad", "dgrad") for t in T_NAMES)
    + tuple(f"conv2d_{k}_implicit_gemm<float, true>" for k in ("wgrad", "dgrad"))
    + tuple(f"{k}<{t}>" for k in ("im2col", "col2im") for t in T_NAMES),
    "ceiling.cu": tuple(f"fma_peak<{t}>" for t in T_NAMES),
    "spectra.cu": tuple(f"spectra_{k}<{t}>" for k in ("stack", "unstack") for t in T_NAMES),
    "conv_direct.cu": tuple(f"conv2d_direct<{t}>" for t in T_NAMES),
    "depthwise.cu": tuple(f"conv2d_depthwise<{t}, {ks}, {rp}>" for t in T_NAMES
                          for ks in (0, 3) for rp in (1, 2))
    + tuple(f"conv2d_depthwise{k}<{t}>" for k in ("_dgrad", "_wgrad", "_wgrad3")
            for t in T_NAMES),
    "winograd.cu": tuple(f"winograd_{k}<{t}, {m}>" for k in ("filter", "input", "output",
                                                                "grad_tiles", "grad_filter")
                         for t in T_NAMES for m in (2, 4)),
    "elementwise.cu": tuple(f"{k}<{t}>" for k in ("relu_fwd", "relu_bwd", "bias_add_fwd",
                                                  "channel_sum", "plane_mean", "plane_spread",
                                                  "xent_rows", "xent_bwd", "adam_step",
                                                  "sgd_step") for t in T_NAMES),
    "norm.cu": tuple(f"batch_norm_{k}<{t}>" for k in ("partials", "finish", "apply",
                                                       "bwd_partials", "bwd_finish", "bwd_apply")
                     for t in T_NAMES)
    + tuple(f"batch_norm_{k}_planes<{t}, {v}>" for k in ("apply", "bwd_apply")
            for t, vec in (("float", 4), ("double", 2)) for v in (1, vec)),
    "pool.cu": tuple(f"{k}<{t}, {i}>" for k in ("max_pool2d_bwd_gather", "max_pool2d_bwd_cells",
                                                 "max_pool2d_bwd_tiled",
                                                 "avg_pool2d_fwd", "avg_pool2d_bwd_gather",
                                                 "adaptive_avg_pool2d_fwd",
                                                 "adaptive_avg_pool2d_bwd")
                     for t in T_NAMES for i in ("int", "long long"))
    + tuple(f"max_pool2d_fwd<{t}, {i}, {k}>" for t in T_NAMES for i in ("int", "long long")
            for k in (0, 2, 3))
    + tuple(f"max_pool2d_fwd_tiled<{t}, {i}, {k}>" for t in T_NAMES
            for i in ("int", "long long") for k in (2, 3))
    + tuple(f"max_pool2d_check_indices<{i}>" for i in ("int", "long long")),
}


def kernels_dir() -> str:
    return str(resources.files("convgpu.kernels"))


def source(name: str) -> str:
    return resources.files("convgpu.kernels").joinpath(name).read_text()


def options() -> Tuple[str, ...]:
    return NVRTC_OPTIONS + (f"-I{kernels_dir()}",)


@functools.lru_cache(maxsize=None)
def _module(name: str, device_id: int):
    import cupy
    mod = cupy.RawModule(code=source(name), options=options(),
                         name_expressions=NAME_EXPRESSIONS[name])
    mod.compile()
    return mod


def host_emulation() -> bool:
    """CONVGPU_CUDA_HOST=1: kernels run on the CPU through convgpu.cuda_host (tests)."""
    return os.environ.get("CONVGPU_CUDA_HOST", "0") not in ("", "0")


def get_function(file: str, expr: str):
    """The kernel `expr` (one of NAME_EXPRESSIONS[file]) of `file` on the current device, or
    its host emulation under CONVGPU_CUDA_HOST=1."""
    if host_emulation():
        from convgpu import cuda_host
        return cuda_host.get_function(file, expr)
    import cupy
    return _module(file, cupy.cuda.Device().id).get_function(expr)


def max_shared_per_block() -> int:
    """The most shared memory one block may have on the current device once a kernel opts
    in (cudaDevAttrMaxSharedMemoryPerBlockOptin: 227 KiB on sm_90, 163 KiB on sm_80, 99 KiB
    on sm_86 / sm_89); under host emulation the emulator's limit (sm_90's)."""
    if host_emulation():
        from convgpu import cuda_host
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
    import numpy as np
    return {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}[np.dtype(dtype)]


def cbool(v) -> str:
    """A Python truth value as a C++ template argument."""
    return "true" if v else "false"


def all_name_expressions() -> Sequence[Tuple[str, str]]:
    return [(f, e) for f, exprs in NAME_EXPRESSIONS.items() for e in exprs]
