"""convgpu: hand-written GPU kernels for convolutional networks.

    import convgpu
    y = convgpu.conv2d(x, w, b, stride=2, padding=1)          # NumPy, CuPy or torch arrays
    convgpu.implementations("conv2d")                          # [(backend, algo), ...]
"""
import os as _os

# Numba kernels launch on the stream CuPy exported with the arrays (kernels/numba/launch.py), so
# Numba need not synchronise that stream on every launch. Set before Numba is imported.
_os.environ.setdefault("NUMBA_CUDA_ARRAY_INTERFACE_SYNC", "0")

# Compatibility: numba-cuda releases that register an overload for np.row_stack fail at the
# first kernel compile under NumPy >= 2.5, which removed that alias of np.vstack (seen on
# the lent H200 image: numba 0.68.0 with numpy 2.5.2). Restore the alias before Numba loads.
import numpy as _np  # noqa: E402

if not hasattr(_np, "row_stack"):
    _np.row_stack = _np.vstack

from convgpu.ops import *  # noqa: F401,F403,E402
from convgpu.ops import __all__ as _ops_all
from convgpu.ops import implementations  # noqa: F401

__version__ = "0.1.0"
__all__ = list(_ops_all)
