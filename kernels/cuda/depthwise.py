"""Launchers of depthwise.cu: the depthwise convolution (groups = C), its input gradient (the
forward on the rotated filters where it serves, else a gather) and weight gradient (3x3: a
block per output channel and image split, summed in order; else a block per tap). The half
types (float16, bfloat16) compute in FP32: the forward's patch in shared memory as float32,
the 3x3 weight gradient's split partials in float32, summed and rounded once."""
from __future__ import annotations

import numpy as np

from convgpu.core.args import conv_geometry
from convgpu.kernels.cuda.launch import (INT_SAFE, MAX_GRID_YZ, THREADS, ceil_div,
                                         elementwise_grid, i32, sum_splits)
from convgpu.kernels.cuda.module import acc_dtype, ctype, get_function
from convgpu.kernels.outputs import contiguous, empty

DW_TP, DW_TQ, DW_THREADS = 8, 32, 256       # depthwise.cu's dw::TP, TQ, THREADS
DW_SMEM = 48 * 1024                         # the patch and filter, without an opt-in


def _dw_patch(a, rp=1):
    """Rows and columns of the input patch a TP * rp x TQ output tile reads."""
    (sh, sw), (dh, dw) = a.stride, a.dilation
    return (DW_TP * rp - 1) * sh + (a.R - 1) * dh + 1, (DW_TQ - 1) * sw + (a.S - 1) * dw + 1


def _dw_smem(a, rp=1):
    ph, pw = _dw_patch(a, rp)
    return (ph * pw + a.R * a.S) * acc_dtype(a.dtype).itemsize      # staged in acc_t<T>


def depthwise_kernel(a):
    """(KS, RP) of conv2d_depthwise<T, KS, RP>: KS = 3 (the unrolled path) for 3 x 3
    filters, else 0; RP = 2 outputs per thread down a column (tiles of 16 x 32) where the
    plane has 16 rows or more and the larger patch fits, else 1 (8 x 32): a 16-row tile on a
    7- or 14-row plane would leave more threads idle than the 8-row one."""
    ks = 3 if (a.R, a.S) == (3, 3) else 0
    return ks, 2 if a.P >= 2 * DW_TP and _dw_smem(a, 2) <= DW_SMEM else 1


def depthwise_supports(a):
    if a.Cg != 1 or a.groups != a.C:
        return (f"the depthwise kernels serve groups = C (one input channel per group); got "
                f"C={a.C}, groups={a.groups}")
    if _dw_smem(a) > DW_SMEM:
        return (f"the input patch of an {DW_TP}x{DW_TQ} output tile ({a.R}x{a.S}, stride "
                f"{a.stride}, dilation {a.dilation}) needs {_dw_smem(a)} B of shared memory, "
                f"over {DW_SMEM}")
    if a.P * a.Q >= INT_SAFE or a.H * a.W >= INT_SAFE:
        return "the depthwise kernels index within a plane in 32 bits"
    if ceil_div(a.P, DW_TP) * ceil_div(a.Q, DW_TQ) > MAX_GRID_YZ:
        return f"a plane of {a.P}x{a.Q} outputs has more than {MAX_GRID_YZ} tiles"
    return None


def _dw_ints(a):
    return i32(a.C, a.H, a.W, a.K, a.R, a.S, a.P, a.Q, *a.stride, *a.padding, *a.dilation)


def conv2d_depthwise(a, x, w, b):
    y = empty(a.y_shape, x.dtype, x)
    ks, rp = depthwise_kernel(a)
    fn = get_function("depthwise.cu", f"conv2d_depthwise<{ctype(x.dtype)}, {ks}, {rp}>")
    bias = contiguous(b) if b is not None else np.uint64(0)
    fn((a.N * a.K, ceil_div(a.P, DW_TP * rp) * ceil_div(a.Q, DW_TQ)), (DW_THREADS,),
       (contiguous(x), contiguous(w), bias, y, *_dw_ints(a), *i32(*_dw_patch(a, rp))),
       shared_mem=_dw_smem(a, rp))
    return y


def backward_input_depthwise(a, gy, w):
    """One filter per channel (K = C) at stride 1: gx is the depthwise convolution of gy with
    the filters rotated 180 degrees, padding (R - 1) d - p, run on the forward kernel (its 3x3
    unrolled path, two outputs a thread). Otherwise a gather per input element."""
    (sh, sw), (ph, pw), (dh, dw) = a.stride, a.padding, a.dilation
    if (a.K == a.C and (sh, sw) == (1, 1) and ph <= (a.R - 1) * dh
            and pw <= (a.S - 1) * dw):
        t = conv_geometry("conv2d_backward_input", (a.N, a.K, a.P, a.Q), a.w_shape, 1,
                          ((a.R - 1) * dh - ph, (a.S - 1) * dw - pw), a.dilation, a.C, a.dtype)
        if depthwise_supports(t) is None:
            return conv2d_depthwise(t, contiguous(gy), contiguous(w[:, :, ::-1, ::-1]), None)
    gx = empty(a.x_shape, gy.dtype, gy)
    fn = get_function("depthwise.cu", f"conv2d_depthwise_dgrad<{ctype(gy.dtype)}>")
    fn(elementwise_grid(gx.size), (THREADS,),
       (contiguous(gy), contiguous(w), gx, np.int64(gx.size), *_dw_ints(a)))
    return gx


DW_WGRAD_BLOCKS = 2048      # blocks conv2d_depthwise_wgrad3's image splits aim for


def depthwise_wgrad_splits(a) -> int:
    """Image splits of conv2d_depthwise_wgrad3: about DW_WGRAD_BLOCKS blocks over the K
    output channels, at most N and the grid's y limit. A function of the shape only, so the
    summation order (and the result) is too."""
    return max(1, min(a.N, ceil_div(DW_WGRAD_BLOCKS, a.K), MAX_GRID_YZ))


def backward_weight_depthwise(a, x, gy):
    gw = empty(a.w_shape, x.dtype, x)
    t = ctype(x.dtype)
    if (a.R, a.S) != (3, 3):
        fn = get_function("depthwise.cu", f"conv2d_depthwise_wgrad<{t}>")
        fn((a.K * a.R * a.S,), (DW_THREADS,),
           (contiguous(x), contiguous(gy), gw, np.int32(a.N), *_dw_ints(a)))
        return gw
    splits = depthwise_wgrad_splits(a)
    ad = acc_dtype(x.dtype)
    # float32 partials for the half types, always summed (and rounded) by the finish kernel
    direct = splits == 1 and ad == x.dtype
    part = gw if direct else empty((splits,) + a.w_shape, ad, x)
    (sh, sw), (ph, pw), (dh, dw) = a.stride, a.padding, a.dilation
    get_function("depthwise.cu", f"conv2d_depthwise_wgrad3<{t}>")(
        (a.K, splits), (DW_THREADS,),
        (contiguous(x), contiguous(gy), part,
         *i32(a.N, a.C, a.H, a.W, a.K, a.P, a.Q, sh, sw, ph, pw, dh, dw, splits)))
    if ad != x.dtype:
        get_function("depthwise.cu", f"conv2d_depthwise_wgrad3_finish<{t}>")(
            elementwise_grid(gw.size), (THREADS,),
            (part, gw, np.int64(gw.size), np.int32(splits)))
    elif splits > 1:
        sum_splits(part, gw, splits)
    return gw
