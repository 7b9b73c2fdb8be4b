"""The environment flags convgpu reads, parsed here and nowhere else: a flag is on when the
variable is set to anything but "" or "0". Read on every call (tests and the CLI set them at
run time), not cached."""
from __future__ import annotations

import ctypes
import os

SIMULATOR = "NUMBA_ENABLE_CUDASIM"   # Numba kernels run in Numba's CUDA simulator
HOST_EMULATION = "CONVGPU_CUDA_HOST"  # CUDA C kernels run in the host emulation
POISON = "CONVGPU_POISON"            # kernel outputs start as NaN (-1 for indices): tests
DEV = "CONVGPU_DEV"                  # kernels/dev's candidate kernels may be named
TUNE_CACHE = "CONVGPU_TUNE_CACHE"    # "off" (0, no, false): algo="auto" choices kept in memory


def flag(name: str) -> bool:
    return os.environ.get(name, "0") not in ("", "0")


def simulator() -> bool:
    return flag(SIMULATOR)


def host_emulation() -> bool:
    return flag(HOST_EMULATION)


def poison() -> bool:
    return flag(POISON)


def dev() -> bool:
    return flag(DEV)


def tune_cache() -> bool:
    """On unless set to off, 0, no or false (the tuning cache on disk is the default)."""
    return os.environ.get(TUNE_CACHE, "on").strip().lower() not in ("off", "0", "no", "false")


def gpu_count() -> int:
    """CUDA devices the driver sees (0 without a driver), asked of libcuda directly: no
    CuPy or Numba import, which the CLI must decide about before importing them."""
    for name in ("libcuda.so.1", "libcuda.so", "nvcuda.dll"):
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        n = ctypes.c_int(0)
        if lib.cuInit(0) == 0 and lib.cuDeviceGetCount(ctypes.byref(n)) == 0:
            return n.value
        return 0
    return 0
