"""What every launcher, Numba or CUDA C, allocates its outputs with: on the inputs' array
module (CuPy on a GPU; NumPy under the simulator and the host emulation), poisoned under
CONVGPU_POISON=1 (tests) so that an element a kernel forgot to write fails the comparison."""
from __future__ import annotations

import numpy as np

from convgpu.arrays import xp_of
from convgpu.core import env
from convgpu.core.args import HALF_DTYPES


def empty(shape, dtype, like):
    """An output array: NaN (or -1 for indices) under CONVGPU_POISON=1, else uninitialised."""
    xp = xp_of(like)
    if env.poison():
        # bfloat16 (ml_dtypes) is of kind "V", not "f": NaN by its dtype instead
        floating = np.dtype(dtype).kind in "fc" or np.dtype(dtype) in HALF_DTYPES
        fill = np.nan if floating else -1
        return xp.full(shape, fill, dtype=dtype)
    return xp.empty(shape, dtype=dtype)


def zeros(shape, dtype, like):
    return xp_of(like).zeros(shape, dtype=dtype)


def contiguous(a):
    return xp_of(a).ascontiguousarray(a)
