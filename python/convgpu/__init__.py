"""convgpu: hand-written GPU kernels for convolutional networks.

    import convgpu
    y = convgpu.conv2d(x, w, b, stride=2, padding=1)          # NumPy, CuPy or torch arrays
    convgpu.implementations("conv2d")                          # [(backend, algo), ...]
"""
from convgpu.ops import *  # noqa: F401,F403
from convgpu.ops import __all__ as _ops_all
from convgpu.ops import implementations  # noqa: F401

__version__ = "0.1.0"
__all__ = list(_ops_all)
