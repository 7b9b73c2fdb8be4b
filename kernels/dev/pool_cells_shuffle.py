"""Launcher of pool_cells_shuffle.cu: the max pooling backward by cells with half its loads
replaced by warp shuffles, a candidate for cuda/pool.py's gather by cells (compiled and
emulated only: pool_cells_shuffle.cu's header). Registered as algo="cells_shuffle" only
under CONVGPU_DEV=1; serves what the cells kernel serves."""
from __future__ import annotations

import numpy as np

from convgpu.kernels.cuda.launch import (THREADS, elementwise_grid, fastdiv, i32, index_type,
                                         null_or)
from convgpu.kernels.cuda.module import ctype, get_function
from convgpu.kernels.cuda.pool import index_flag, max_pool2d_cells, pool_ints, raise_if_flagged
from convgpu.kernels.outputs import empty


def supports(a):
    if max_pool2d_cells(a.pool) is None:
        return ("the gather by cells needs strides <= 2 and windows reaching at most one "
                "stride back ((k - 1) * d < 2 * s)")
    return None


def max_pool2d_backward_cells_shuffle(a, gy, idx):
    """max_pool2d_bwd_cells_shuffle over the cells; indices validated on the device as by
    the cells kernel."""
    g = a.pool                       # the forward's geometry
    CH, CW = max_pool2d_cells(g)
    gx = empty(g.x_shape, gy.dtype, gy)
    bad = index_flag(a, gy)
    it, ic = index_type(max(gx.size, g.N * g.C * CH * CW))
    fn = get_function("pool_cells_shuffle.cu",
                      f"max_pool2d_bwd_cells_shuffle<{ctype(gy.dtype)}, {it}>")
    fn(elementwise_grid(g.N * g.C * CH * CW), (THREADS,),
       (gy, idx, gx, null_or(bad), ic(g.N * g.C), *i32(CH, CW),
        np.uint64(fastdiv(CH)), np.uint64(fastdiv(CW)), *pool_ints(g, g.H, g.W, g.P, g.Q)))
    raise_if_flagged(bad, g)
    return gx
