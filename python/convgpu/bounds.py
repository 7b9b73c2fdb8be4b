"""Error bounds of the kernels against the float64 reference (docs/tolerances.md derives
every constant here).

Two checks, both against the float64 reference on the same values:

- element-wise, a bound:  |out - ref| <= factor * mag,  element by element. `mag` is the
  magnitude the error scales with: for the direct and GEMM paths the reference op applied
  to |a| and |b| (sum over the reduction of |a||b|, plus |bias|); for the transforms
  (FFT, Winograd) a per-output-plane magnitude, since their rounding errors spread over a
  whole plane (FFT) or tile (Winograd). `factor` = c * u, u the format's unit roundoff and
  c derived per algorithm from the reduction length n.
- norm-wise, a typical-error check:  ||out - ref|| / ||mag_gemm|| <= the design's tolerance
  (1e-5 FP32, 1e-4 FFT/Winograd, 2e-3 TF32), normalised by the absolute-value product
  rather than by ||ref||, which cancellation can make arbitrarily small.

Half precision (float16, bfloat16: inputs exact in the half type, every sum in FP32, the
result rounded once to the half type, the reference rounded once too): the element-wise
bound adds the two final roundings, 2 u_h (1 + 2 u_h) |ref| + 2 eta_h (eta_h: half the
smallest subnormal), to the FP32 computation's (1 + u_h) c u_acc mag; the norm-wise
tolerance is 2 u_h plus the FP32 algorithm's. See half_bound.
"""
from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Optional

import numpy as np

from convgpu.core.args import conv_out_size
from convgpu.kernels.fft_common import transform_size

# unit roundoff of each format (round to nearest): 2^-p for p significand bits
U = {"fp64": 2.0 ** -53, "fp32": 2.0 ** -24, "tf32": 2.0 ** -11,
     "fp16": 2.0 ** -11, "bf16": 2.0 ** -8}
# half the smallest subnormal of the half types: the absolute error of rounding into the
# subnormal range, where the relative bound u_h |x| does not hold
ETA = {"fp16": 2.0 ** -25, "bf16": 2.0 ** -134}
# the tensor cores' FP32 accumulation truncates (no round to nearest): twice the FP32 u
U_MMA_ACC = 2.0 ** -23

# the design's norm-wise tolerances
TF32 = {np.float32: 2e-3, np.float64: 2e-3}
TRANSFORM = {np.float32: 1e-4, np.float64: 1e-10}     # FFT and Winograd
TOLERANCE = {"fft": TRANSFORM, "winograd": TRANSFORM}
DEFAULT_TOL = {np.float32: 1e-5, np.float64: 1e-12}

# Winograd F(m x m, 3 x 3) matrices (kernels/winograd.cu, kernels/winograd.py)
_WINOGRAD = {
    2: (np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], float),
        np.array([[1, 0, 0], [.5, .5, .5], [.5, -.5, .5], [0, 0, 1]]),
        np.array([[1, 1, 1, 0], [0, 1, -1, -1]], float)),
    4: (np.array([[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
                  [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]], float),
        np.array([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
                  [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]]),
        np.array([[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0],
                  [0, 1, -1, 8, -8, 1]], float)),
}


def half_format(dtype) -> Optional[str]:
    """'fp16' or 'bf16' for the half types, else None."""
    name = np.dtype(dtype).name
    return {"float16": "fp16", "bfloat16": "bf16"}.get(name)


def tolerance(algo: str, dtype) -> float:
    """The design's norm-wise bound: every TF32 algorithm (its name ends in tf32) gets the
    TF32 bound, the transform algorithms (fft..., winograd...) theirs, the rest FP32/FP64.
    A half type: the two final roundings (ours and the reference's), 2 u_h, plus the FP32
    algorithm's bound for the computation in FP32 from the exact half inputs."""
    h = half_format(dtype)
    if h is not None:
        return 2 * U[h] + TOLERANCE.get(algo.split("_")[0], DEFAULT_TOL)[np.float32]
    if algo.endswith("tf32"):
        return TF32[np.dtype(dtype).type]
    return TOLERANCE.get(algo.split("_")[0], DEFAULT_TOL)[np.dtype(dtype).type]


def family(algo: str) -> str:
    """'fft', 'winograd2', 'winograd4' or 'gemm' (direct, im2col, implicit GEMM, depthwise,
    the GEMMs themselves, the reference: one product per term, summed in some order)."""
    if algo.startswith("fft"):
        return "fft"
    if algo.startswith("winograd"):
        return "winograd4" if "4x4" in algo else "winograd2"
    return "gemm"


def fmt(algo: str, dtype) -> str:
    """The format the arithmetic runs in: fp64, fp32, tf32, or 'half' (products of half
    inputs, exact in FP32, accumulated in FP32)."""
    if np.dtype(dtype) == np.float64:
        return "fp64"
    if half_format(dtype) is not None:
        return "half"
    return "tf32" if algo.endswith("tf32") else "fp32"


def winograd_growth(m: int, op: str = "conv2d") -> float:
    """beta with |Y_ij| <= beta * max|d| * sum|g| for one tile of F(m x m, 3 x 3) computed
    with the absolute values of the matrices (conv2d, conv2d_backward_input), or
    |gw_ab| <= beta * max|d| * sum|dy| for the weight gradient."""
    BT, G, AT = (abs(M) for M in _WINOGRAD[m])
    bsum = BT.sum(axis=1)                           # row sums: (|B^T| 1 |B|)_xy = bsum_x bsum_y
    gmax = G.max(axis=1)
    if op == "conv2d_backward_weight":
        # sum_xy |G|_xa |G|_yb |A|_xi |A|_yj bsum_x bsum_y, maximised over a, b, i, j
        return float(max((G[:, a] * AT[i] * bsum).sum() for a in range(3)
                         for i in range(m)) ** 2)
    one = [(AT[i] * gmax * bsum).sum() for i in range(m)]
    return float(max(one) ** 2)


def factor(algo: str, dtype, n: int, transform_len: Optional[int] = None) -> float:
    """c * u of the element-wise bound |out - ref| <= factor * magnitude, for a reduction
    of n terms (docs/tolerances.md). transform_len: the FFT's transform size (samples of
    one 2-D transform), for family 'fft'."""
    f, fam = fmt(algo, dtype), family(algo)
    u = U["fp64" if f == "fp64" else "fp32"]
    tf32 = 2 * U["tf32"] + U["tf32"] ** 2 + (n + 2) * U_MMA_ACC if f == "tf32" else 0.0
    if f == "half" and fam == "gemm":
        # inputs exact in FP32, products of two half significands exact (22 or 16 bits),
        # n adds and the bias's add (2) at the tensor cores' truncating FP32 accumulation;
        # the final rounding to the half type is half_bound's
        return (n + 2) * U_MMA_ACC
    if fam == "gemm":
        # operands rounded from float64 (2), n products and adds (n), bias rounded and added (2)
        return (n + 4) * u if f != "tf32" else tf32 + 4 * U["fp32"]
    if fam == "fft":
        if transform_len is None:
            raise ValueError("the FFT bound needs the transform size")
        # three transforms of ~8 u log2 L each, the complex multiply-accumulate over n
        # pairs (2 (n + 2)), operands and bias rounded (4)
        c = 3 * 8 * math.log2(max(transform_len, 2)) + 2 * (n + 2) + 4
        return c * u + tf32
    t = int(fam[-1]) + 2                            # the tile's side: m + 2
    # input and output transforms (2t terms each), filter transform (8, with the inexact
    # 1/6 coefficients), n products summed, operands and bias rounded (4)
    return (4 * t + 8 + n + 4) * u + tf32


def half_bound(dtype, ref, fp32_bound):
    """The element-wise bound of a half-precision result against the reference rounded once
    to the half type: with s the FP32 result (|s - exact| <= d = fp32_bound), out = fl_h(s)
    and ref = fl_h(exact), |out - ref| <= u_h |s| + d + u_h |exact| + 2 eta_h
    <= 2 u_h (1 + 2 u_h) |ref| + (1 + u_h) d + 2 eta_h. For float32/float64: fp32_bound."""
    h = half_format(dtype)
    if h is None:
        return fp32_bound
    u = U[h]
    return 2 * u * (1 + 2 * u) * np.abs(np.asarray(ref, np.float64)) \
        + (1 + u) * np.asarray(fp32_bound, np.float64) + 2 * ETA[h]


def magnitude(op: str, algo: str, a, b, shape, conv_kw, bias=None):
    """The element-wise bound's magnitude, float64, shaped like the op's output. op is
    conv2d (a = x, b = w), conv2d_backward_input (a = gy, b = w; shape = x's) or
    conv2d_backward_weight (a = x, b = gy; shape = w's); conv_kw: stride, padding, dilation,
    groups."""
    from convgpu import reference as R
    a, b = np.abs(np.asarray(a, np.float64)), np.abs(np.asarray(b, np.float64))
    fam = family(algo)
    s, p, d = (_pair(conv_kw.get(k, 1 if k != "padding" else 0))
               for k in ("stride", "padding", "dilation"))
    g = conv_kw.get("groups", 1)
    if fam == "gemm":
        if op == "conv2d":
            mag = R.conv2d(a, b, None, s, p, d, g)
        elif op == "conv2d_backward_input":
            mag = R.conv2d_backward_input(a, b, shape, s, p, d, g)
        else:
            mag = R.conv2d_backward_weight(a, b, shape, s, p, d, g)
    else:
        # per output plane: a sum over the reduction's plane pairs of the planes' norms
        # (FFT: 2-norms, the error of a transform spreads over the plane; Winograd: the
        # image's max and the other's 1-norm, times the tile's growth)
        wino = fam.startswith("winograd")
        na = a.max(axis=(2, 3)) if wino else np.sqrt((a * a).sum(axis=(2, 3)))
        nb = b.sum(axis=(2, 3)) if wino else np.sqrt((b * b).sum(axis=(2, 3)))
        if op == "conv2d":                          # a (N, C), b (K, Cg) -> (N, K)
            mag = _grouped(na, nb, g, "nc,kc->nk")
        elif op == "conv2d_backward_input":         # a (N, K) gy, b (K, Cg) w -> (N, C)
            mag = _grouped(na, nb, g, "nk,kc->nc", transpose=True)
        else:                                       # a (N, C) x, b (N, K) gy -> (K, Cg)
            mag = _grouped(na, nb, g, "nc,nk->kc", wgrad=True)
        if wino:
            mag = mag * winograd_growth(int(fam[-1]), op)
        mag = np.broadcast_to(mag[:, :, None, None], shape if op != "conv2d" else
                              mag.shape + _out_hw(a.shape, b.shape, s, p, d)).copy()
    if bias is not None:
        mag = mag + np.abs(np.asarray(bias, np.float64))[None, :, None, None]
    return mag


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def _out_hw(xs, ws, s, p, d):
    s, p, d = _pair(s), _pair(p), _pair(d)
    return tuple(conv_out_size(xs[2 + i], ws[2 + i], s[i], p[i], d[i]) for i in range(2))


def _grouped(na, nb, g, spec, transpose=False, wgrad=False):
    """einsum within each group (the pairs a group reduces over), groups concatenated."""
    if wgrad:                                       # x (N, C), gy (N, K) -> (K, Cg)
        C, K = na.shape[1], nb.shape[1]
        return np.concatenate([np.einsum(spec, na[:, i * C // g:(i + 1) * C // g],
                                         nb[:, i * K // g:(i + 1) * K // g])
                               for i in range(g)], axis=0)
    K = nb.shape[0]
    if transpose:                                   # gy (N, K), w (K, Cg) -> (N, C)
        return np.concatenate([np.einsum(spec, na[:, i * K // g:(i + 1) * K // g],
                                         nb[i * K // g:(i + 1) * K // g]) for i in range(g)],
                              axis=1)
    Cg = nb.shape[1]                                # x (N, C), w (K, Cg) -> (N, K)
    return np.concatenate([np.einsum(spec, na[:, i * Cg:(i + 1) * Cg],
                                     nb[i * K // g:(i + 1) * K // g]) for i in range(g)], axis=1)


def reduction_length(op: str, algo: str, a_shape, b_shape, shape, groups=1) -> int:
    """n, the number of terms each output sums (an upper bound): products per output for
    the direct and GEMM paths; plane pairs for the transforms."""
    fam = family(algo)
    if op == "conv2d":                              # x, w
        K, Cg, R, S = b_shape
        return Cg if fam != "gemm" else Cg * R * S
    if op == "conv2d_backward_input":               # gy, w
        K, Cg, R, S = b_shape
        return K // groups if fam != "gemm" else K // groups * R * S
    N, K, P, Q = b_shape                            # x, gy
    if fam == "gemm":
        return N * P * Q
    if fam.startswith("winograd"):                  # tiles summed, then the batch
        return N * P * Q
    return N


def fft_transform_len(x_shape, padding) -> int:
    """The FFT paths' transform size (kernels/fft_common.transform_size) for input x."""
    (h, w), _ = transform_size(SimpleNamespace(H=x_shape[2], W=x_shape[3],
                                               padding=_pair(padding)))
    return h * w


def conv_errors(out, ref, op, algo, dtype, a, b, shape, conv_kw, bias=None):
    """(norm-wise error, worst element-wise ratio |out - ref| / bound) of one conv output;
    the check passes when the first is <= tolerance(algo, dtype) and the second <= 1."""
    out = np.asarray(out, np.float64)
    ref = np.asarray(ref, np.float64)
    if out.shape != ref.shape or not np.all(np.isfinite(out)):
        return math.inf, math.inf
    g = conv_kw.get("groups", 1)
    n = reduction_length(op, algo, np.shape(a), np.shape(b), shape, g)
    L = fft_transform_len(np.shape(a) if op != "conv2d_backward_input" else shape,
                          conv_kw.get("padding", 0)) if family(algo) == "fft" else None
    mag = magnitude(op, algo, a, b, shape, conv_kw, bias)
    gemm_mag = mag if family(algo) == "gemm" else magnitude(op, "direct", a, b, shape,
                                                            conv_kw, bias)
    return normwise(out, ref, gemm_mag), elementwise(
        out, ref, half_bound(dtype, ref, factor(algo, dtype, n, L) * mag))


def gemm_errors(outs, refs, mags, n, algo, dtype):
    """conv_errors for GEMM-shaped ops (linear, its backward): outs, refs and mags tuples
    (or single arrays), n the reduction length of each (or one for all); the worst of each."""
    single = not isinstance(refs, tuple)
    outs, refs, mags = ((o,) for o in (outs, refs, mags)) if single else (outs, refs, mags)
    if not isinstance(outs, tuple) or len(outs) != len(refs):
        return math.inf, math.inf
    ns = (n,) * len(refs) if isinstance(n, int) else n
    norm = elem = 0.0
    for o, r, m, k in zip(outs, refs, mags, ns, strict=True):
        o = np.asarray(o, np.float64)
        if o.shape != np.shape(r) or not np.all(np.isfinite(o)):
            return math.inf, math.inf
        norm = max(norm, normwise(o, r, m))
        elem = max(elem, elementwise(o, r, half_bound(dtype, r, factor(algo, dtype, k)
                                                      * np.asarray(m))))
    return norm, elem


def normwise(out, ref, mag) -> float:
    den = float(np.linalg.norm(mag))
    return float(np.linalg.norm(np.asarray(out, np.float64) - ref)) / (den if den > 0 else 1.0)


def elementwise(out, ref, bound) -> float:
    """max |out - ref| / bound; an element whose bound is 0 must be exact."""
    err = np.abs(np.asarray(out, np.float64) - np.asarray(ref, np.float64))
    if err.size == 0:
        return 0.0
    bound = np.broadcast_to(bound, err.shape)
    if np.any(err[bound == 0] > 0):
        return math.inf
    nz = bound > 0
    return float((err[nz] / bound[nz]).max()) if nz.any() else 0.0
