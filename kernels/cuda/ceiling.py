"""Launcher of ceiling.cu: the FMA ceiling kernel the benchmark measures the device's FP32 /
FP64 FMA rate with."""
from __future__ import annotations

import numpy as np

from convgpu.kernels.cuda.launch import THREADS
from convgpu.kernels.cuda.module import ctype, get_function
from convgpu.kernels.outputs import empty

FMA_CHAINS, FMA_UNROLL = 8, 16


def fma_peak(blocks, iters, dtype=np.float32, like=None):
    """Launch fma_peak<T> on `blocks` x 256 threads for `iters` rounds; returns (out, flops).
    a = 1 - 2**-10 and b = 2**-6 keep every chain bounded (it converges to b / (1 - a)) and
    away from denormals."""
    out = empty((blocks * THREADS,), dtype, like if like is not None else np.zeros(1))
    t = np.dtype(dtype).type
    get_function("ceiling.cu", f"fma_peak<{ctype(dtype)}>")(
        (blocks,), (THREADS,), (out, np.int32(iters), t(1 - 2 ** -10), t(2 ** -6)))
    return out, 2 * FMA_CHAINS * FMA_UNROLL * iters * blocks * THREADS

