"""Launchers of winograd.cu: Winograd F(m x m, 3x3) convolution, transforms around a batched
GEMM (gemm.py); m = 2 ("winograd": FP32/FP64 and TF32) or 4 ("winograd_4x4": FP32/FP64, its
TF32 error is over the bound). The forward, the input gradient (a forward of the flipped
filters) and the weight gradient."""
from __future__ import annotations

import numpy as np

from convgpu.core.args import conv_geometry
from convgpu.kernels.cuda.gemm import gemm
from convgpu.kernels.cuda.launch import (INT_SAFE, ROWS_GRID_X, ROWS_GRID_Y, THREADS, ceil_div,
                                         elementwise_grid, fastdiv, i32, null_or, split_for,
                                         tf32_supports)
from convgpu.kernels.cuda.module import ctype, get_function
from convgpu.kernels.outputs import contiguous, empty


def winograd_supports(a, m=2):
    if (a.R, a.S) != (3, 3) or a.stride != (1, 1) or a.dilation != (1, 1):
        return (f"Winograd F({m}x{m}, 3x3) serves 3x3 filters at stride 1 and dilation 1; got "
                f"{a.R}x{a.S}, stride {a.stride}, dilation {a.dilation}")
    if _winograd_tiles(a, m)[1] >= INT_SAFE:
        return f"Winograd indexes a channel's tiles (N * ceil(P/{m}) * ceil(Q/{m})) in 32 bits"
    return None


def winograd_tf32_supports(a):
    return tf32_supports(a) or winograd_supports(a)


def winograd4_supports(a):
    return winograd_supports(a, 4)


def _winograd_tiles(a, m):
    """winograd.cu's TILES_PARAMS: the tiles T of a channel, the row length ld (T rounded up
    to 4: gemm_vec's 16-byte loads), TH, TW and the divider constants of TH*TW and TW."""
    TH, TW = ceil_div(a.P, m), ceil_div(a.Q, m)
    tiles = a.N * TH * TW
    ld = ceil_div(tiles, 4) * 4
    return i32(tiles, ld, TH, TW) + (np.uint64(fastdiv(TH * TW)), np.uint64(fastdiv(TW)))


def _winograd_grid(channels, ld):
    return (min(ceil_div(ld, THREADS), ROWS_GRID_X), min(channels, ROWS_GRID_Y))


def winograd_input(a, x, m=2):
    """V (groups*(m+2)^2, Cg, ld): the input tiles' transforms B^T d B (zero columns past T)."""
    tl = _winograd_tiles(a, m)
    V = empty((a.groups * (m + 2) ** 2, a.Cg, int(tl[1])), x.dtype, x)
    get_function("winograd.cu", f"winograd_input<{ctype(x.dtype)}, {m}>")(
        _winograd_grid(a.C, tl[1]), (THREADS,),
        (contiguous(x), V, *i32(a.N, a.C, a.H, a.W, a.padding[0], a.padding[1], a.groups), *tl))
    return V


def conv2d_winograd_tf32(a, x, w, b):
    return conv2d_winograd(a, x, w, b, tf32=True)


def conv2d_winograd4(a, x, w, b):
    return conv2d_winograd(a, x, w, b, m=4)


def conv2d_winograd(a, x, w, b, tf32=False, m=2):
    """tf32: the GEMMs on the tensor cores (the transforms stay FP32; relative error about
    5e-4 on random data for m = 2, within the TF32 bound 2e-3)."""
    t = ctype(x.dtype)
    G, AA = a.groups, (m + 2) ** 2
    tl = _winograd_tiles(a, m)
    U = empty((G * AA, a.Kg, a.Cg), x.dtype, x)
    get_function("winograd.cu", f"winograd_filter<{t}, {m}>")(
        elementwise_grid(a.K * a.Cg), (THREADS,), (contiguous(w), U, *i32(a.K, a.Cg, G)))
    M = gemm(U, winograd_input(a, x, m), tf32=tf32)      # (G*AA, Kg, ld)
    y = empty(a.y_shape, x.dtype, x)
    bias = contiguous(b) if b is not None else np.uint64(0)
    get_function("winograd.cu", f"winograd_output<{t}, {m}>")(
        _winograd_grid(a.K, tl[1]), (THREADS,),
        (M, bias, y, *i32(a.N, a.K, a.P, a.Q, G), *tl))
    return y


def backward_weight_winograd_tf32(a, x, gy):
    return backward_weight_winograd(a, x, gy, tf32=True)


def backward_weight_winograd4(a, x, gy):
    return backward_weight_winograd(a, x, gy, m=4)


def backward_weight_winograd(a, x, gy, tf32=False, m=2):
    """gw[k, c] = G^T [ sum over tiles (A dy A^T) .* (B^T d B) ] G (winograd.cu): the input
    tiles' transforms as in the forward, the output gradient's m x m tiles transformed by A,
    (m+2)^2 GEMMs per group over the tiles (split, summed in a fixed order), then G^T . G."""
    t = ctype(x.dtype)
    G, AA = a.groups, (m + 2) ** 2
    tl = _winograd_tiles(a, m)
    ld = int(tl[1])
    V = winograd_input(a, x, m)                          # (G*AA, Cg, ld)
    Z = empty((G * AA, a.Kg, ld), x.dtype, x)
    get_function("winograd.cu", f"winograd_grad_tiles<{t}, {m}>")(
        _winograd_grid(a.K, ld), (THREADS,), (contiguous(gy), Z, *i32(a.N, a.K, a.P, a.Q, G), *tl))
    if a.Cg <= 64 < a.Kg and not tf32:   # Mw^T = V Z^T: Cg rows on gemm_vec's 64-row tile
        Mw = gemm(V, Z, tb=True, splits=split_for(a.Cg, a.Kg, G * AA, ld, 64))
        strides = (1, a.Kg)                              # (G*AA, Cg, Kg)
    else:
        Mw = gemm(Z, V, tb=True, splits=split_for(a.Kg, a.Cg, G * AA, ld), tf32=tf32)
        strides = (a.Cg, 1)                              # (G*AA, Kg, Cg)
    gw = empty(a.w_shape, x.dtype, x)
    get_function("winograd.cu", f"winograd_grad_filter<{t}, {m}>")(
        elementwise_grid(a.K * a.Cg), (THREADS,), (Mw, gw, *i32(a.K, a.Cg, G, *strides)))
    return gw


def winograd_backward_input_tf32_supports(a):
    return tf32_supports(a) or winograd_backward_input_supports(a)


def winograd4_backward_input_supports(a):
    return winograd_backward_input_supports(a, 4)


def winograd_backward_input_supports(a, m=2):
    reason = winograd_supports(a, m)
    if reason:
        return reason
    if max(a.padding) > 2:
        return (f"Winograd input gradient: padding {a.padding} above 2 (the full-conv padding "
                "2 - p < 0)")
    return None


def backward_input_winograd_tf32(a, gy, w):
    return backward_input_winograd(a, gy, w, tf32=True)


def backward_input_winograd4(a, gy, w):
    return backward_input_winograd(a, gy, w, m=4)


def backward_input_winograd(a, gy, w, tf32=False, m=2):
    """gx = the full convolution of gy with the flipped filters: a stride-1 3x3 conv of gy
    (K channels in) by w' [g*Cg + c, k] = w[g*Kg + k, c] rotated 180 degrees, padding 2 - p,
    run on the Winograd forward."""
    G = a.groups
    wt = contiguous(w.reshape(G, a.Kg, a.Cg, 3, 3).transpose(0, 2, 1, 3, 4)[..., ::-1, ::-1]
                    .reshape(a.C, a.Kg, 3, 3))
    t = conv_geometry("conv2d_backward_input", (a.N, a.K, a.P, a.Q), wt.shape, 1,
                      (2 - a.padding[0], 2 - a.padding[1]), 1, G, a.dtype)
    return conv2d_winograd(t, contiguous(gy), wt, None, tf32=tf32, m=m)

