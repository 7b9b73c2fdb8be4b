"""Launcher of conv_direct.cu: the direct convolution, KT output channels x TP x TQ output
pixels per block, a chunk of input channels' patches and filters in shared memory (for the
half types converted to float32 there: FP32 accumulation)."""
from __future__ import annotations

import numpy as np

from convgpu.kernels.cuda.launch import ceil_div, conv_ints, i32
from convgpu.kernels.cuda.module import acc_dtype, ctype, get_function
from convgpu.kernels.outputs import contiguous, empty

# conv_direct.cu's direct::KT, TP, TQ, THREADS, SMEM_BYTES (tests/test_cuda_constants.py):
# KT output channels x TP x TQ output pixels per block
DIRECT_KT, DIRECT_TP, DIRECT_TQ, DIRECT_THREADS, DIRECT_SMEM = 32, 8, 32, 256, 40960


def _direct_plan(a):
    """(channels per chunk, patch rows, padded patch row length) for conv_direct.cu, or
    None when not even one channel's patch and filters fit in its shared memory."""
    sh, sw = a.stride
    dh, dw = a.dilation
    patch_h = (DIRECT_TP - 1) * sh + (a.R - 1) * dh + 1
    patch_w = (DIRECT_TQ - 1) * sw + (a.S - 1) * dw + 1
    ldx = patch_w + (8 - patch_w % 32) % 32          # row length = 8 mod 32: 4 rows, 32 banks
    per_channel = patch_h * ldx + a.R * a.S * DIRECT_KT
    cb = min(a.Cg, DIRECT_SMEM // acc_dtype(a.dtype).itemsize // per_channel)
    return (cb, patch_h, ldx) if cb >= 1 else None


def direct_supports(a):
    if _direct_plan(a) is None:
        return (f"one input channel's patch and filters ({a.R}x{a.S}, stride {a.stride}, "
                f"dilation {a.dilation}) do not fit the direct kernel's {DIRECT_SMEM} B of "
                "shared memory")
    return None


def conv2d_direct(a, x, w, b):
    cb, patch_h, ldx = _direct_plan(a)
    y = empty(a.y_shape, x.dtype, x)
    tiles = ceil_div(a.P, DIRECT_TP) * ceil_div(a.Q, DIRECT_TQ) * a.N * a.groups
    fn = get_function("conv_direct.cu", f"conv2d_direct<{ctype(x.dtype)}>")
    bias = contiguous(b) if b is not None else np.uint64(0)
    fn((tiles, ceil_div(a.Kg, DIRECT_KT)), (DIRECT_THREADS,),
       (contiguous(x), contiguous(w), bias, y, *conv_ints(a), *i32(cb, patch_h, ldx)))
    return y

