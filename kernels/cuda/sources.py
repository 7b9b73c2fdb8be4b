"""What the CUDA C kernels are built from: the .cu files beside this module, every template
specialisation each file exports (the launchers look kernels up by these exact strings), and
the NVRTC options. The loader (module.py), the host emulation (emulator/) and the compile tier
(tests/test_compile_cuda.py) all build from these.

NVRTC_OPTIONS are the options passed to RawModule; CuPy adds RUNTIME_ADDED_OPTIONS and
`-arch=sm_XX` itself. The compile tier compiles every .cu with exactly these through the
low-level cupy.cuda.nvrtc API, which needs no GPU.
"""
from __future__ import annotations

import functools
import importlib.util
import os
import sys
from importlib import resources
from typing import Dict, Optional, Sequence, Tuple

NVRTC_OPTIONS: Tuple[str, ...] = ("-std=c++17",)
RUNTIME_ADDED_OPTIONS: Tuple[str, ...] = ("-ftz=true", "--device-as-default-execution-space")

# every specialisation each module exports, by file: the launchers look kernels up by these
# exact strings
T_NAMES = ("float", "double")
# the 16-bit types of the tensor-core kernels (half.cuh): float16, bfloat16
HALF_NAMES = ("__half", "__nv_bfloat16")
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
    + tuple(f"sum_splits<{t}>" for t in T_NAMES)
    + tuple(f"gemm_mma16<{t}, {ta}, {tb}, {v}>" for t in HALF_NAMES for ta in ("false", "true")
            for tb in ("false", "true") for v in ("false", "true"))
    + tuple(f"sum_splits_half<{t}>" for t in HALF_NAMES),
    "conv_implicit.cu": tuple(f"conv2d_implicit_gemm<{t}, false>" for t in T_NAMES)
    + ("conv2d_implicit_gemm<float, true>",)
    + tuple(f"conv2d_implicit_gemm_pipelined<{va}, {vb}, {m}>" for va in ("false", "true")
            for vb in ("false", "true") for m in (64, 128))
    + tuple(f"conv2d_wgrad_implicit_gemm_pipelined<{m}>" for m in (64, 128))
    + tuple(f"conv2d_dgrad_implicit_gemm_pipelined<{u}, {m}>" for u in ("false", "true")
            for m in (64, 128))
    + tuple(f"conv2d_{k}_implicit_gemm<{t}, false>" for k in ("wgrad", "dgrad") for t in T_NAMES)
    + tuple(f"conv2d_{k}_implicit_gemm<float, true>" for k in ("wgrad", "dgrad"))
    + tuple(f"conv2d_implicit_gemm_mma16<{t}, {va}>" for t in HALF_NAMES
            for va in ("false", "true"))
    + tuple(f"conv2d_dgrad_implicit_gemm_mma16<{t}, {u}>" for t in HALF_NAMES
            for u in ("false", "true"))
    + tuple(f"conv2d_wgrad_implicit_gemm_mma16<{t}>" for t in HALF_NAMES),
    "im2col.cu": tuple(f"{k}<{t}>" for k in ("im2col", "col2im") for t in T_NAMES)
    + tuple(f"im2col<{t}>" for t in HALF_NAMES) + tuple(f"col2im<{t}, float>" for t in HALF_NAMES),
    "ceiling.cu": tuple(f"fma_peak<{t}>" for t in T_NAMES),
    "fft.cu": tuple(f"spectra_{k}<{t}>" for k in ("stack", "unstack") for t in T_NAMES),
    "conv_direct.cu": tuple(f"conv2d_direct<{t}>" for t in T_NAMES + HALF_NAMES),
    "depthwise.cu": tuple(f"conv2d_depthwise<{t}, {ks}, {rp}>" for t in T_NAMES + HALF_NAMES
                          for ks in (0, 3) for rp in (1, 2))
    + tuple(f"conv2d_depthwise{k}<{t}>" for k in ("_dgrad", "_wgrad", "_wgrad3")
            for t in T_NAMES + HALF_NAMES)
    + tuple(f"conv2d_depthwise_wgrad3_finish<{t}>" for t in HALF_NAMES),
    "winograd.cu": tuple(f"winograd_{k}<{t}, {m}>" for k in ("filter", "input", "output",
                                                                "grad_tiles", "grad_filter")
                         for t in T_NAMES for m in (2, 4)),
    "elementwise.cu": tuple(f"{k}<{t}>" for k in ("relu_fwd", "relu_bwd", "bias_add_fwd",
                                                  "channel_sum", "plane_mean", "plane_spread",
                                                  "xent_rows", "xent_bwd", "adam_step",
                                                  "sgd_step") for t in T_NAMES + HALF_NAMES)
    + tuple(f"{k}_vec8<{t}>" for k in ("relu_fwd", "relu_bwd", "bias_add") for t in HALF_NAMES)
    + tuple(f"channel_sum<float, {t}>" for t in HALF_NAMES),
    "norm.cu": tuple(f"batch_norm_{k}<{t}>" for k in ("partials", "finish", "apply",
                                                       "bwd_partials", "bwd_finish", "bwd_apply")
                     for t in T_NAMES)
    + tuple(f"batch_norm_{k}_planes<{t}, {v}>" for k in ("apply", "bwd_apply")
            for t, vec in (("float", 4), ("double", 2)) for v in (1, vec))
    # the half types: parameters and statistics in the data's type (P = T) or in float
    + tuple(f"batch_norm_partials<{t}>" for t in HALF_NAMES)
    + tuple(f"batch_norm_{k}<{t}{p}>" for k in ("finish", "apply", "bwd_partials", "bwd_finish",
                                                 "bwd_apply")
            for t in HALF_NAMES for p in ("", ", float"))
    + tuple(f"batch_norm_{k}_planes<{t}, {v}{p}>" for k in ("apply", "bwd_apply")
            for t in HALF_NAMES for v in (1, 8) for p in ("", ", float")),
    "pool.cu": tuple(f"{k}<{t}, {i}>" for k in ("max_pool2d_bwd_gather", "max_pool2d_bwd_cells",
                                                 "avg_pool2d_fwd", "avg_pool2d_bwd_gather",
                                                 "adaptive_avg_pool2d_fwd",
                                                 "adaptive_avg_pool2d_bwd")
                     for t in T_NAMES + HALF_NAMES for i in ("int", "long long"))
    # the half types: the general max-pool kernel only (pool.cu: max_window_loop)
    + tuple(f"max_pool2d_fwd<{t}, {i}, {k}>" for t in T_NAMES + HALF_NAMES
            for i in ("int", "long long") for k in ((0, 2, 3) if t in T_NAMES else (0,)))
    + tuple(f"max_pool2d_check_indices<{i}>" for i in ("int", "long long")),
}


# kernels/dev's .cu files (candidate and superseded kernels, registered only under
# CONVGPU_DEV=1), built and compile-tested like the others; each includes the .cu it shadows
DEV_NAME_EXPRESSIONS: Dict[str, Tuple[str, ...]] = {
    "pool_tiled.cu": tuple(f"max_pool2d_fwd_tiled<{t}, {i}, {k}>" for t in T_NAMES
                           for i in ("int", "long long") for k in (2, 3))
    + tuple(f"max_pool2d_bwd_tiled<{t}, {i}>" for t in T_NAMES for i in ("int", "long long")),
    "pool_cells_shuffle.cu": tuple(f"max_pool2d_bwd_cells_shuffle<{t}, {i}>" for t in T_NAMES
                                   for i in ("int", "long long")),
}
NAME_EXPRESSIONS.update(DEV_NAME_EXPRESSIONS)


def kernels_dir() -> str:
    return str(resources.files("convgpu.kernels.cuda"))


def dev_dir() -> str:
    return str(resources.files("convgpu.kernels.dev"))


def source_dirs() -> Tuple[str, ...]:
    """Where .cu files are: kernels/cuda, then kernels/dev."""
    return kernels_dir(), dev_dir()


def source(name: str) -> str:
    package = "convgpu.kernels.dev" if name in DEV_NAME_EXPRESSIONS else "convgpu.kernels.cuda"
    return resources.files(package).joinpath(name).read_text()


def options() -> Tuple[str, ...]:
    """NVRTC's options: ours, kernels/cuda on the include path (the dev files include the .cu
    they shadow from there), and the CUDA toolkit's headers (half.cuh includes
    <cuda_fp16.h> and <cuda_bf16.h>) where they are found."""
    inc = cuda_include_dir()
    return NVRTC_OPTIONS + (f"-I{kernels_dir()}",) + ((f"-I{inc}",) if inc else ())


HALF_HEADERS = ("cuda_fp16.h", "cuda_bf16.h")


@functools.lru_cache(maxsize=None)
def cuda_include_dir() -> Optional[str]:
    """The include folder of the CUDA toolkit CuPy compiles against, which holds
    <cuda_fp16.h> and <cuda_bf16.h>. CuPy's RawModule adds it itself; NVRTC called directly
    (the compile tier) has no search path. Where CuPy is already imported, its own choice
    (cupy.cuda.get_cuda_path); else, as CuPy looks: $CUDA_PATH, $CUDA_HOME, the pip wheels'
    nvidia/cu13 and cu12, /usr/local/cuda. Without CuPy imported nothing is loaded here (the
    runtime-NVRTC subprocess of the compile tier loads its own libnvrtc first)."""
    candidates = []
    if "cupy" in sys.modules:
        try:
            from cupy.cuda import get_cuda_path
            if get_cuda_path():
                candidates.append(os.path.join(get_cuda_path(), "include"))
        except Exception:   # no CUDA found by CuPy: fall back to the search below
            pass
    candidates += [os.path.join(os.environ[v], "include") for v in ("CUDA_PATH", "CUDA_HOME")
                   if os.environ.get(v)]
    spec = importlib.util.find_spec("nvidia") if "nvidia" not in sys.modules else \
        sys.modules["nvidia"].__spec__
    for loc in (spec.submodule_search_locations or []) if spec else []:
        candidates += [os.path.join(loc, cu, "include") for cu in ("cu13", "cu12")]
        candidates.append(os.path.join(loc, "cuda_runtime", "include"))
    candidates.append("/usr/local/cuda/include")
    for c in candidates:
        if all(os.path.isfile(os.path.join(c, h)) for h in HALF_HEADERS):
            return c
    return None


def all_name_expressions() -> Sequence[Tuple[str, str]]:
    return [(f, e) for f, exprs in NAME_EXPRESSIONS.items() for e in exprs]

# channels-last (NHWC) kernels (issue 19)
NAME_EXPRESSIONS["conv_nhwc.cu"] = tuple(f"conv2d_nhwc_{k}implicit_gemm<float, {tf}>"
                                         for k in ("", "wgrad_", "dgrad_")
                                         for tf in ("false", "true"))
NAME_EXPRESSIONS["pool_nhwc.cu"] = (
    tuple(f"{k}<{t}, {i}>" for k in ("max_pool2d_nhwc_fwd", "avg_pool2d_nhwc_fwd",
                                      "max_pool2d_nhwc_bwd_gather", "avg_pool2d_nhwc_bwd_gather",
                                      "adaptive_avg_pool2d_nhwc_fwd",
                                      "adaptive_avg_pool2d_nhwc_bwd")
          for t in T_NAMES + HALF_NAMES for i in ("int", "long long"))
    # the half types 8 channels a thread (16-byte loads and stores)
    + tuple(f"{k}<{t}, {i}, 8>" for k in ("max_pool2d_nhwc_fwd", "avg_pool2d_nhwc_fwd",
                                          "max_pool2d_nhwc_bwd_gather",
                                          "avg_pool2d_nhwc_bwd_gather")
            for t in HALF_NAMES for i in ("int", "long long"))
    + tuple(f"max_pool2d_nhwc_check_indices<{i}>" for i in ("int", "long long")))
NAME_EXPRESSIONS["norm_nhwc.cu"] = (
    tuple(f"batch_norm_nhwc_{k}<{t}>" for k in ("partials", "bwd_partials") for t in T_NAMES)
    # the half types: statistics in the data's type or in float, as norm.cu's
    + tuple(f"batch_norm_nhwc_partials<{t}>" for t in HALF_NAMES)
    + tuple(f"batch_norm_nhwc_bwd_partials<{t}{p}>" for t in HALF_NAMES for p in ("", ", float")))
# the NHWC convolutions in float16 / bfloat16 on the tensor cores (conv_nhwc16.cu)
NAME_EXPRESSIONS["conv_nhwc16.cu"] = (
    tuple(f"conv2d_nhwc_implicit_gemm_mma16<{t}, {v}>" for t in HALF_NAMES
          for v in ("false", "true"))
    + tuple(f"conv2d_nhwc_{k}_implicit_gemm_mma16<{t}, {va}, {vb}>" for k in ("wgrad", "dgrad")
            for t in HALF_NAMES for va in ("false", "true") for vb in ("false", "true")))
