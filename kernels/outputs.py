"""What every launcher, Numba or CUDA C, allocates its outputs with: on the inputs' array
module (CuPy on a GPU; NumPy under the simulator and the host emulation), poisoned under
CONVGPU_POISON=1 (tests) so that an element a kernel forgot to write fails the comparison."""
from __future__ import annotations

import numpy as np

from convgpu.arrays import xp_of
from convgpu.core import env


def empty(shape, dtype, like):
    """An output array: NaN (or -1 for indices) under CONVGPU_POISON=1, else uninitialised."""
    xp = xp_of(like)
    if env.poison():
        fill = np.nan if np.dtype(dtype).kind in "fc" else -1
        return xp.full(shape, fill, dtype=dtype)
    return xp.empty(shape, dtype=dtype)


def zeros(shape, dtype, like):
    return xp_of(like).zeros(shape, dtype=dtype)


def contiguous(a):
    return xp_of(a).ascontiguousarray(a)
