"""Launchers of im2col.cu and the im2col algorithms on gemm.py: the forward as W @ im2col(x),
the input gradient as col2im(W^T @ gy), the weight gradient as gy @ im2col(x)^T (split-K);
a 1x1 stride-1 unpadded convolution skips the column matrix (pointwise).

float16 / bfloat16 run on gemm_mma16 (FP32 sums) and round each output once: the forward as
im2col(x)^T @ W^T with the bias fused into the GEMM's epilogue (a bias after the GEMM would
round twice), then into NCHW; the input gradient's columns stay FP32 into col2im, which
rounds its sums; the weight gradient through the column matrix (the pointwise shortcut sums
per-image products, rounded each)."""
from __future__ import annotations

import numpy as np

from convgpu.kernels.cuda.gemm import gemm, half_ctype
from convgpu.kernels.cuda.launch import (INT_SAFE, ROWS_GRID_X, ROWS_GRID_Y, THREADS, ceil_div,
                                         conv_ints, split_for, sum_splits)
from convgpu.kernels.cuda.module import ctype, get_function
from convgpu.kernels.outputs import contiguous, empty


def rows_grid(rows, per_row):
    """(x, y) grid of the row-wise kernels (im2col, col2im): y over the rows, x over one
    row's per_row elements, 256 threads a block; both loop where the grid is smaller."""
    if per_row >= INT_SAFE:
        raise ValueError(f"im2col/col2im index a row of the column matrix or a plane in 32 "
                         f"bits: {per_row} elements is too many")
    return (min(ceil_div(per_row, THREADS), ROWS_GRID_X), min(rows, ROWS_GRID_Y))


def im2col(a, x):
    cols = empty((a.groups, a.Cg * a.R * a.S, a.N * a.P * a.Q), x.dtype, x)
    fn = get_function("im2col.cu", f"im2col<{ctype(x.dtype)}>")
    fn(rows_grid(a.groups * a.Cg * a.R * a.S, a.N * a.P * a.Q), (THREADS,),
       (contiguous(x), cols, *conv_ints(a)))
    return cols


def col2im(a, cols, dtype=None):
    """gx in dtype (cols' by default; a half type from FP32 columns)."""
    dtype = np.dtype(dtype or cols.dtype)
    gx = empty(a.x_shape, dtype, cols)
    t = f"{ctype(dtype)}, float" if half_ctype(dtype) else ctype(dtype)
    fn = get_function("im2col.cu", f"col2im<{t}>")
    fn(rows_grid(a.N * a.C, a.H * a.W), (THREADS,), (cols, gx, *conv_ints(a)))
    return gx


def _gy_by_group(a, gy):
    return contiguous(gy.reshape(a.N, a.groups, a.Kg, a.P * a.Q).transpose(1, 2, 0, 3)) \
        .reshape(a.groups, a.Kg, a.N * a.P * a.Q)


def pointwise(a) -> bool:
    """1x1, stride 1, no padding, one group: the column matrix of image n is x[n] itself
    (C x H*W, contiguous), so the im2col algorithms skip im2col/col2im and run one batched
    GEMM over the images with the weights shared (batch stride 0), straight in NCHW."""
    return (a.R, a.S, a.groups) == (1, 1, 1) and tuple(a.stride) == (1, 1) \
        and tuple(a.padding) == (0, 0)


def conv2d_im2col_tf32(a, x, w, b):
    return conv2d_im2col(a, x, w, b, tf32=True)


def _conv2d_im2col_half(a, x, w, b):
    """(groups, N*P*Q, Kg) = im2col(x)^T @ W^T per group, the bias fused, then NCHW."""
    cols, wg = im2col(a, x), w.reshape(a.groups, a.Kg, a.Cg * a.R * a.S)
    if b is None or a.groups == 1:
        yt = gemm(cols, wg, ta=True, tb=True, bias=b)
    else:                                   # the fused bias is one row vector per launch
        yt = empty((a.groups, a.N * a.P * a.Q, a.Kg), x.dtype, x)
        for g in range(a.groups):
            yt[g] = gemm(cols[g:g + 1], wg[g:g + 1], ta=True, tb=True,
                         bias=b[g * a.Kg:(g + 1) * a.Kg])[0]
    return contiguous(yt.reshape(a.groups, a.N, a.P * a.Q, a.Kg).transpose(1, 0, 3, 2)) \
        .reshape(a.y_shape)


def conv2d_im2col(a, x, w, b, tf32=False):
    if half_ctype(x.dtype):
        return _conv2d_im2col_half(a, x, w, b)
    if pointwise(a):
        y = gemm(w.reshape(1, a.K, a.C), contiguous(x).reshape(a.N, a.C, a.H * a.W), tf32=tf32)
        y = y.reshape(a.y_shape)
        if b is not None:
            y += b.reshape(1, -1, 1, 1)
        return y
    yg = gemm(w.reshape(a.groups, a.Kg, a.Cg * a.R * a.S), im2col(a, x), tf32=tf32)
    y = contiguous(yg.reshape(a.K, a.N, a.P * a.Q).transpose(1, 0, 2)).reshape(a.y_shape)
    if b is not None:
        y += b.reshape(1, -1, 1, 1)
    return y


def backward_input_col2im_tf32(a, gy, w):
    return backward_input_col2im(a, gy, w, tf32=True)


def backward_input_col2im(a, gy, w, tf32=False):
    if pointwise(a):
        return gemm(w.reshape(1, a.K, a.C), contiguous(gy).reshape(a.N, a.K, a.P * a.Q),
                    ta=True, tf32=tf32).reshape(a.x_shape)
    half = half_ctype(gy.dtype) is not None
    dcols = gemm(w.reshape(a.groups, a.Kg, a.Cg * a.R * a.S), _gy_by_group(a, gy), ta=True,
                 tf32=tf32, fp32=half)
    return col2im(a, dcols, gy.dtype)


def backward_weight_im2col_tf32(a, x, gy):
    return backward_weight_im2col(a, x, gy, tf32=True)


def backward_weight_im2col(a, x, gy, tf32=False):
    if pointwise(a) and not half_ctype(x.dtype):
        # one K x C product per image (gy[n] x[n]^T), summed over the images in order by
        # sum_splits, as a split-K would be: deterministic
        per = gemm(contiguous(gy).reshape(a.N, a.K, a.P * a.Q),
                   contiguous(x).reshape(a.N, a.C, a.H * a.W), tb=True,
                   splits=split_for(a.K, a.C, a.N, a.P * a.Q), tf32=tf32)
        gw = empty((1, a.K, a.C), gy.dtype, gy)
        return sum_splits(per, gw, a.N).reshape(a.w_shape)
    M, N, K = a.Kg, a.Cg * a.R * a.S, a.N * a.P * a.Q
    gw = gemm(_gy_by_group(a, gy), im2col(a, x), tb=True, splits=split_for(M, N, a.groups, K),
              tf32=tf32)
    return gw.reshape(a.w_shape)

