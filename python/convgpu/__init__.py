"""convgpu: hand-written GPU kernels for convolutional networks.

    import convgpu
    y = convgpu.conv2d(x, w, b, stride=2, padding=1)          # NumPy, CuPy or torch arrays
    convgpu.implementations("conv2d")                          # [(backend, algo), ...]
"""
import os as _os

# Numba kernels launch on the stream CuPy exported with the arrays (kernels/_launch.py), so
# Numba need not synchronise that stream on every launch. Set before Numba is imported.
_os.environ.setdefault("NUMBA_CUDA_ARRAY_INTERFACE_SYNC", "0")

from convgpu.ops import *  # noqa: F401,F403,E402
from convgpu.ops import __all__ as _ops_all
from convgpu.ops import implementations  # noqa: F401

__version__ = "0.1.0"
__all__ = list(_ops_all)
