"""Launchers of conv_nhwc.cu: the channels-last (NHWC) implicit-GEMM convolution forward and
weight gradient (split over the output positions where the weight has too few tiles to fill
the GPU), float32 on FFMA or on TF32 tensor cores (float64 NHWC runs algo="transpose"), and
the input gradient at stride 1 as that forward on the rotated filters."""
from __future__ import annotations

from dataclasses import replace

import numpy as np

from convgpu.arrays import xp_of
from convgpu.kernels.cuda.launch import (GEMM_THREADS, MAX_GRID_YZ, TILE, ceil_div, conv_ints,
                                         split_for, sum_splits, tf32_supports)
from convgpu.kernels.cuda.module import cbool, ctype, get_function
from convgpu.kernels.outputs import contiguous, empty


def nhwc_supports(a):
    """float32; the kernel's index ranges and grid: N*P*Q rows, N*H*W input positions and
    R*S*C/groups depths below 2**31, window origins in 16 bits, one grid layer per group."""
    if np.dtype(a.dtype) != np.float32:
        return (f"the NHWC implicit GEMM takes float32, got {np.dtype(a.dtype).name} "
                "(algo='transpose' serves it)")
    if a.N * a.P * a.Q >= 2 ** 31 - TILE:
        return "the NHWC implicit GEMM indexes N*P*Q output positions in 32 bits (below 2**31)"
    if a.N * a.H * a.W >= 2 ** 31:
        return "the NHWC implicit GEMM indexes N*H*W input positions in 32 bits (below 2**31)"
    if a.R * a.S * a.Cg >= 2 ** 31 - TILE:
        return "the NHWC implicit GEMM indexes R*S*C/groups in 32 bits (below 2**31)"
    if max(a.H + a.padding[0], a.W + a.padding[1]) >= 2 ** 15:
        return ("the NHWC implicit GEMM packs a window's origin in 16 bits: H + padding and "
                "W + padding below 2**15")
    if a.groups > MAX_GRID_YZ:
        return f"one grid layer per group: {a.groups} groups is more than {MAX_GRID_YZ}"
    return None


def nhwc_tf32_supports(a):
    return tf32_supports(a) or nhwc_supports(a)


def conv2d_nhwc_implicit_gemm(a, x, w, b, tf32=False):
    """y (N, P, Q, K) = x (N, H, W, C) * w (K, R, S, C/groups) + b."""
    y = empty(a.y_shape, x.dtype, x)
    bias = contiguous(b) if b is not None else np.uint64(0)          # a null pointer
    fn = get_function("conv_nhwc.cu",
                      f"conv2d_nhwc_implicit_gemm<{ctype(x.dtype)}, {cbool(tf32)}>")
    fn((ceil_div(a.N * a.P * a.Q, TILE), ceil_div(a.Kg, TILE), a.groups), (GEMM_THREADS,),
       (contiguous(x), contiguous(w), bias, y, *conv_ints(a)))
    return y


def conv2d_nhwc_implicit_gemm_tf32(a, x, w, b):
    return conv2d_nhwc_implicit_gemm(a, x, w, b, tf32=True)


# The input gradient: at stride 1 a forward convolution, gx[n, h, w, g*Cg + c] = sum over
# (r, s, k) of gy[n, h + ph - r*dh, w + pw - s*dw, g*Kg + k] * w[g*Kg + k, r, s, c], i.e. gy
# convolved, with padding d*(R - 1) - p, by the filters rotated 180 degrees with their
# channel axes swapped: w'[g*Cg + c, R-1-r, S-1-s, k] = w[g*Kg + k, r, s, c] (a copy of
# the weights, the one extra pass).


def _dgrad_forward(a):
    """The forward problem (record) that computes a's input gradient, or None where it has
    none (a stride, or padding past the dilated kernel's reach: negative padding)."""
    pad = tuple(d * (k - 1) - p for d, k, p in zip(a.dilation, (a.R, a.S), a.padding))
    if a.stride != (1, 1) or min(pad) < 0:
        return None
    fwd = replace(a, C=a.K, H=a.P, W=a.Q, K=a.C, P=a.H, Q=a.W, padding=pad)
    return None if nhwc_supports(fwd) else fwd


def dgrad_supports(a):
    """The forward on rotated filters (stride 1) or the gather kernel (any stride: float32,
    N*H*W and R*S*K/groups below 2**31, H + padding and W + padding in 16 bits)."""
    if _dgrad_forward(a) is not None:
        return None
    if np.dtype(a.dtype) != np.float32:
        return (f"the NHWC implicit GEMM takes float32, got {np.dtype(a.dtype).name} "
                "(algo='transpose' serves it)")
    if max(a.N * a.H * a.W, a.N * a.P * a.Q, a.R * a.S * a.K) >= 2 ** 31 - TILE:
        return ("the NHWC input gradient indexes N*H*W, N*P*Q and R*S*K in 32 bits "
                "(below 2**31)")
    if max(a.H + a.padding[0], a.W + a.padding[1]) >= 2 ** 15:
        return ("the NHWC input gradient packs a position in 16 bits: H + padding and "
                "W + padding below 2**15")
    if a.groups > MAX_GRID_YZ:
        return f"one grid layer per group: {a.groups} groups is more than {MAX_GRID_YZ}"
    return None


def dgrad_tf32_supports(a):
    return tf32_supports(a) or dgrad_supports(a)


def _rotated_filters(a, w):
    """w (K, R, S, Cg) -> w' (C, R, S, Kg), rotated 180 degrees, channel axes swapped per
    group."""
    G, Kg, Cg = a.groups, a.Kg, a.Cg
    wg = w.reshape(G, Kg, a.R, a.S, Cg)[:, :, ::-1, ::-1, :]
    return xp_of(w).ascontiguousarray(wg.transpose(0, 4, 2, 3, 1)).reshape(
        G * Cg, a.R, a.S, Kg)


def backward_input_nhwc_implicit_gemm(a, gy, w, tf32=False):
    """gx (N, H, W, C) from gy (N, P, Q, K) and w (K, R, S, C/groups): at stride 1 the
    forward kernel on the rotated filters, else the gather kernel (conv_nhwc.cu)."""
    fwd = _dgrad_forward(a)
    if fwd is not None:
        return conv2d_nhwc_implicit_gemm(fwd, gy, _rotated_filters(a, w), None, tf32)
    gx = empty(a.x_shape, gy.dtype, gy)
    fn = get_function("conv_nhwc.cu",
                      f"conv2d_nhwc_dgrad_implicit_gemm<{ctype(gy.dtype)}, {cbool(tf32)}>")
    fn((ceil_div(a.N * a.H * a.W, TILE), ceil_div(a.Cg, TILE), a.groups), (GEMM_THREADS,),
       (contiguous(gy), contiguous(w), gx, *conv_ints(a)))
    return gx


def backward_input_nhwc_implicit_gemm_tf32(a, gy, w):
    return backward_input_nhwc_implicit_gemm(a, gy, w, tf32=True)



def wgrad_supports(a):
    """float32; N*P*Q, N*H*W and R*S*C/groups below 2**31, the taps' offsets (R-1)*dh and
    (S-1)*dw in 16 bits, the group's grid layers within the grid's z limit."""
    if np.dtype(a.dtype) != np.float32:
        return (f"the NHWC implicit GEMM takes float32, got {np.dtype(a.dtype).name} "
                "(algo='transpose' serves it)")
    if max(a.N * a.P * a.Q, a.N * a.H * a.W, a.R * a.S * a.Cg) >= 2 ** 31 - TILE:
        return ("the NHWC weight gradient indexes N*P*Q, N*H*W and R*S*C/groups in 32 bits "
                "(below 2**31)")
    if max((a.R - 1) * a.dilation[0], (a.S - 1) * a.dilation[1]) >= 2 ** 15:
        return "the NHWC weight gradient packs a tap's offsets in 16 bits: below 2**15"
    if a.groups > MAX_GRID_YZ:
        return f"one grid layer per group: {a.groups} groups is more than {MAX_GRID_YZ}"
    return None


def wgrad_tf32_supports(a):
    return tf32_supports(a) or wgrad_supports(a)


def backward_weight_nhwc_implicit_gemm(a, x, gy, tf32=False):
    """gw (K, R, S, C/groups) from x (N, H, W, C) and gy (N, P, Q, K); the N*P*Q reduction
    split where the grid would be small (launch.split_for), partials summed in order."""
    depth, rsc = a.N * a.P * a.Q, a.R * a.S * a.Cg
    splits = min(split_for(a.Kg, rsc, a.groups, depth), MAX_GRID_YZ // a.groups)
    kchunk = ceil_div(ceil_div(depth, splits), 8) * 8
    splits = ceil_div(depth, kchunk)
    size = a.K * rsc
    out = empty((splits,) + a.w_shape if splits > 1 else a.w_shape, gy.dtype, gy)
    fn = get_function("conv_nhwc.cu",
                      f"conv2d_nhwc_wgrad_implicit_gemm<{ctype(gy.dtype)}, {cbool(tf32)}>")
    fn((ceil_div(rsc, TILE), ceil_div(a.Kg, TILE), a.groups * splits), (GEMM_THREADS,),
       (contiguous(x), contiguous(gy), out, *conv_ints(a), np.int32(splits), np.int32(kchunk),
        np.int64(size)))
    if splits == 1:
        return out
    return sum_splits(out, empty(a.w_shape, gy.dtype, gy), splits)


def backward_weight_nhwc_implicit_gemm_tf32(a, x, gy):
    return backward_weight_nhwc_implicit_gemm(a, x, gy, tf32=True)
