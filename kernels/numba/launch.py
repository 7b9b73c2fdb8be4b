"""What every Numba launcher shares: the block size, the device functions every
one-thread-per-element kernel starts with, the stream, and the launch-size arithmetic (outputs
are allocated by kernels/outputs.py).

On a GPU the launchers take CuPy arrays and launch on CuPy's current stream (through
__cuda_array_interface__, no copies). Under NUMBA_ENABLE_CUDASIM=1 the same launchers take
NumPy arrays and the simulator runs the kernels on the host.
"""
from __future__ import annotations

import os

# We launch on the stream CuPy exported; numba need not synchronise it again.
os.environ.setdefault("NUMBA_CUDA_ARRAY_INTERFACE_SYNC", "0")

import numpy as np  # noqa: E402
from numba import cuda  # noqa: E402

from convgpu.core.args import ceil_div  # noqa: E402

THREADS = 128            # threads per block for one-thread-per-element kernels
MAX_BLOCKS = 65535 * 32  # grid-stride loops cover anything larger (and > 2**31 elements)


@cuda.jit(device=True, inline=True)      # inlined in Numba IR: compile_ptx needs no device
def unravel4(t, B, H, W):
    """Flat index t over a C-contiguous (A, B, H, W) array -> (a, b, h, w): the
    decomposition every one-thread-per-element kernel starts with."""
    w = t % W
    h = (t // W) % H
    b = (t // (H * W)) % B
    a = t // (B * H * W)
    return a, b, h, w


@cuda.jit(device=True, inline=True)
def block_sum(buf, t, v):
    """The sum of every thread's v over a block of THREADS threads, through the shared array
    buf (THREADS long), in a fixed tree order: deterministic. Every thread gets the sum."""
    cuda.syncthreads()                    # buf may still be read from a previous call
    buf[t] = v
    cuda.syncthreads()
    step = THREADS // 2
    while step > 0:
        if t < step:
            buf[t] += buf[t + step]
        cuda.syncthreads()
        step //= 2
    return buf[0]


def blocks_for(n: int, threads: int = THREADS) -> int:
    return max(1, min(ceil_div(n, threads), MAX_BLOCKS))


def stream_for(a):
    """Numba's handle on CuPy's current stream (the default stream under the simulator)."""
    if isinstance(a, np.ndarray):
        return 0
    import cupy
    ptr = cupy.cuda.get_current_stream().ptr
    return cuda.external_stream(ptr) if ptr else cuda.default_stream()


def launch(kernel, grid, block, like, *args):
    kernel[grid, block, stream_for(like)](*args)
