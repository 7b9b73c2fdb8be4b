"""Launchers of conv_nhwc16.cu: the channels-last (NHWC) convolutions in float16 / bfloat16 on
the tensor cores (mma.sync m16n8k16, FP32 accumulation): the forward, the weight gradient,
and the input gradient (at stride 1 that forward on the filters rotated 180 degrees, else a
GEMM per stride phase). Reductions split where the output has too few tiles to fill the
GPU, the FP32 partials summed in order and rounded once."""
from __future__ import annotations

from dataclasses import replace

import numpy as np

from convgpu.kernels.cuda.conv_implicit import mma16_split_launch
from convgpu.kernels.cuda.conv_nhwc import _rotated_filters
from convgpu.kernels.cuda.gemm import half_ctype, mma16_shared_bytes
from convgpu.kernels.cuda.launch import (MAX_GRID_YZ, PIPE_TABLE_BYTES, TILE, aligned16,
                                         ceil_div, null_or)
from convgpu.kernels.cuda.module import cbool, max_shared_per_block
from convgpu.kernels.outputs import contiguous

ROW_TABLE_BYTES = TILE * 16       # the forward's row table (conv_nhwc16.cu: ROW_TABLE_BYTES)
FORWARD_SMEM = mma16_shared_bytes(True, True) + ROW_TABLE_BYTES
WGRAD_SMEM = mma16_shared_bytes(False, False) + PIPE_TABLE_BYTES
_LIMIT = 2 ** 31 - TILE


def _half_supports(a, smem):
    if half_ctype(a.dtype) is None:
        return (f"the NHWC tensor-core kernels take float16 or bfloat16, not "
                f"{np.dtype(a.dtype).name}")
    have = max_shared_per_block()
    if smem > have:
        return (f"the NHWC half implicit GEMM needs {smem} bytes of shared memory per block; "
                f"this device allows {have}")
    if a.groups > MAX_GRID_YZ:
        return f"one grid layer per group: {a.groups} groups is more than {MAX_GRID_YZ}"
    return None


def _indices(a):
    if max(a.N * a.P * a.Q, a.N * a.H * a.W, a.R * a.S * a.Cg) >= _LIMIT:
        return ("the NHWC half implicit GEMM indexes N*P*Q, N*H*W and R*S*C/groups in 32 bits "
                "(below 2**31)")
    return None


def mma16_nhwc_supports(a):
    """float16 / bfloat16; N*P*Q, N*H*W and R*S*C/groups below 2**31 (32-bit indices); one
    grid layer per group; the shared memory on this device."""
    return _half_supports(a, FORWARD_SMEM) or _indices(a)


def wgrad_mma16_supports(a):
    """As the forward's, with the weight gradient's shared memory."""
    return _half_supports(a, WGRAD_SMEM) or _indices(a)


def _launch(kernel, a, like, out_shape, M, N, depth, smem, grid_xy, *arrays, layers=1):
    """conv_implicit's split launch of the tc16 convolutions, on conv_nhwc16.cu's `kernel`."""
    return mma16_split_launch("conv_nhwc16.cu", kernel, a, like, out_shape, M, N, depth, smem,
                              grid_xy, *arrays, layers=layers)


def conv2d_nhwc_implicit_gemm_mma16(a, x, w, b):
    """y (N, P, Q, K) = x (N, H, W, C) * w (K, R, S, C/groups) + b in float16 / bfloat16:
    FP32 accumulation, the bias added in FP32, each output rounded once; 16-byte cp.async
    copies where C/groups % 8 == 0 and x and w are 16-byte aligned, else element-wise."""
    why = mma16_nhwc_supports(a)
    if why:
        raise ValueError(why)
    x, w = contiguous(x), contiguous(w)
    vec = a.Cg % 8 == 0 and aligned16(x, w)
    rsc, npq = a.R * a.S * a.Cg, a.N * a.P * a.Q
    return _launch(f"conv2d_nhwc_implicit_gemm_mma16<{half_ctype(x.dtype)}, {cbool(vec)}>",
                   a, x, a.y_shape, a.Kg, npq, rsc, FORWARD_SMEM,
                   (ceil_div(npq, TILE), ceil_div(a.Kg, TILE)), x, w,
                   null_or(contiguous(b) if b is not None else None))


# The input gradient: gx[n, h, v, g*Cg + c] = sum over (r, s, k) of gy[n, p, q, g*Kg + k] *
# w[g*Kg + k, r, s, c] where h + ph - r*dh = p*sh and v + pw - s*dw = q*sw.
# - Stride 1, padding within the dilated filter's reach (dh*(R-1) - ph >= 0, w alike): the
#   forward over gy with that padding by the filters rotated 180 degrees with their channel
#   axes swapped (conv_nhwc._rotated_filters: one pass over K*R*S*C/groups weights).
# - Otherwise: conv2d_nhwc_dgrad_implicit_gemm_mma16, one GEMM per stride phase (conv_nhwc16.cu)
#   whose depth holds only the taps that reach the phase's positions: no product on a zero.


def _dgrad_forward(a):
    """The forward problem whose output is a's input gradient (stride 1, padding not
    negative), or None."""
    pad = tuple(d * (k - 1) - p for d, k, p in zip(a.dilation, (a.R, a.S), a.padding))
    if a.stride != (1, 1) or min(pad) < 0:
        return None
    return replace(a, C=a.K, K=a.C, H=a.P, W=a.Q, P=a.H, Q=a.W, padding=pad)


def _phase_taps(off, st, dil, n):
    """The taps t < n with (off - t*dil) % st == 0 (a phase's, conv_nhwc16.cu's taps())."""
    return [t for t in range(n) if (off - t * dil) % st == 0]


def phase_depth(a):
    """The longest phase's depth: taps (r, s) reaching it times K/groups."""
    (sh, sw), (ph, pw), (dh, dw) = a.stride, a.padding, a.dilation
    rs = max(len(_phase_taps(i + ph, sh, dh, a.R)) for i in range(sh))
    ss = max(len(_phase_taps(j + pw, sw, dw, a.S)) for j in range(sw))
    return rs * ss * a.Kg


DGRAD_SMEM = mma16_shared_bytes(True, False) + PIPE_TABLE_BYTES + ROW_TABLE_BYTES


def dgrad_mma16_supports(a):
    """The forward's conditions on the problem it runs (stride 1), else the phase kernel's:
    N*H*W, N*P*Q and K*R*S*C/groups below 2**31, a grid layer per group and phase."""
    fwd = _dgrad_forward(a)
    if fwd is not None:
        return mma16_nhwc_supports(fwd)
    why = _half_supports(a, DGRAD_SMEM)
    if why:
        return why
    if max(a.N * a.H * a.W, a.N * a.P * a.Q, a.K * a.R * a.S * a.Cg) >= _LIMIT:
        return ("the NHWC half input gradient indexes N*H*W, N*P*Q and K*R*S*C/groups in 32 "
                "bits (below 2**31)")
    phases = a.stride[0] * a.stride[1]
    if a.groups * phases > MAX_GRID_YZ:
        return (f"one grid layer per group and stride phase: {a.groups} x {phases} is more "
                f"than {MAX_GRID_YZ}")
    return None


def backward_input_nhwc_implicit_gemm_mma16(a, gy, w):
    """gx (N, H, W, C) from gy (N, P, Q, K) and w (K, R, S, C/groups) in float16 / bfloat16
    (see the comment above): FP32 accumulation, each output rounded once."""
    why = dgrad_mma16_supports(a)
    if why:
        raise ValueError(why)
    gy, w = contiguous(gy), contiguous(w)
    fwd = _dgrad_forward(a)
    if fwd is not None:
        return conv2d_nhwc_implicit_gemm_mma16(fwd, gy, _rotated_filters(a, w), None)
    (sh, sw), phases = a.stride, a.stride[0] * a.stride[1]
    rows = a.N * ceil_div(a.H, sh) * ceil_div(a.W, sw)           # the largest phase's
    va, vb = a.Kg % 8 == 0 and aligned16(gy), a.Cg % 8 == 0 and aligned16(w)
    t = half_ctype(gy.dtype)
    return _launch(f"conv2d_nhwc_dgrad_implicit_gemm_mma16<{t}, {cbool(va)}, {cbool(vb)}>",
                   a, gy, a.x_shape, a.Cg, rows, phase_depth(a), DGRAD_SMEM,
                   (ceil_div(rows, TILE), ceil_div(a.Cg, TILE)), gy, w, layers=phases)


def backward_weight_nhwc_implicit_gemm_mma16(a, x, gy):
    """gw (K, R, S, C/groups) from x (N, H, W, C) and gy (N, P, Q, K) in float16 / bfloat16:
    FP32 accumulation over the N*P*Q positions, split where the weight has too few tiles,
    each output rounded once; 16-byte copies of gy where K/groups % 8 == 0 and of x where
    C/groups % 8 == 0 (16-byte aligned arrays), else element-wise."""
    why = wgrad_mma16_supports(a)
    if why:
        raise ValueError(why)
    x, gy = contiguous(x), contiguous(gy)
    va, vb = a.Kg % 8 == 0 and aligned16(gy), a.Cg % 8 == 0 and aligned16(x)
    rsc, npq = a.R * a.S * a.Cg, a.N * a.P * a.Q
    t = half_ctype(x.dtype)
    return _launch(f"conv2d_nhwc_wgrad_implicit_gemm_mma16<{t}, {cbool(va)}, {cbool(vb)}>",
                   a, x, a.w_shape, a.Kg, rsc, npq, WGRAD_SMEM,
                   (ceil_div(rsc, TILE), ceil_div(a.Kg, TILE)), x, gy)
