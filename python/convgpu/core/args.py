"""Argument normalisation, output-size math and every error message of the op API.

Every op validates here, in Python, before any work or launch: shapes, sizes and
arguments raise ValueError; dtypes, array types and mixed devices raise TypeError.
Each message names the op, the argument and the numbers. Nothing here uses assert.

The array-type side (NumPy / CuPy / torch) lives in convgpu.arrays; this module sees
the arrays after they were unwrapped to NumPy or CuPy. It sits below both the op layer and
the kernels (convgpu.core): the launchers and the reference build and read these records
too, so it imports nothing of convgpu but convgpu.arrays.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Optional, Tuple

import ml_dtypes
import numpy as np

from convgpu.arrays import DLPACK_CPU, kind_of, xp_of

# the half types: inputs, weights and outputs in 16 bits, every sum accumulated in FP32;
# bfloat16 is ml_dtypes' NumPy dtype (CuPy's too where ml_dtypes is installed)
BFLOAT16 = np.dtype(ml_dtypes.bfloat16)
HALF_DTYPES = (np.dtype(np.float16), BFLOAT16)
FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64)) + HALF_DTYPES
_FLOAT_NAMES = "float16, bfloat16, float32 or float64"


def is_half(dtype) -> bool:
    return np.dtype(dtype) in HALF_DTYPES

# Module-level TF32 permission (as torch.backends.cuda.matmul.allow_tf32): off by default.
# A per-call allow_tf32=True/False overrides it; None follows it.
_ALLOW_TF32 = [False]


def set_allow_tf32(flag: bool) -> None:
    """Let float32 convolutions and linear layers use TF32 tensor cores (10-bit mantissa
    products, FP32 accumulation) where a call does not say otherwise."""
    if not isinstance(flag, (bool, np.bool_)):
        raise TypeError(f"set_allow_tf32: flag must be a bool, got {flag!r}")
    _ALLOW_TF32[0] = bool(flag)


def allow_tf32(per_call=None) -> bool:
    if per_call is None:
        return _ALLOW_TF32[0]
    if not isinstance(per_call, (bool, np.bool_)):
        raise ValueError(f"allow_tf32 must be True, False or None, got {per_call!r}")
    return bool(per_call)

Pair = Tuple[int, int]

# memory layouts of the 4-D arrays of conv, pooling and batch norm: NCHW (torch's default)
# and NHWC (torch.channels_last: channels contiguous, the GEMM's reduction axis of a conv)
LAYOUTS = ("NCHW", "NHWC")


def check_layout(op: str, layout) -> str:
    if not isinstance(layout, str) or layout not in LAYOUTS:
        raise ValueError(f"{op}: layout must be 'NCHW' or 'NHWC', got {layout!r}")
    return layout


def to_layout(shape, layout: str):
    """An NCHW-ordered 4-tuple (N, C, H, W) in `layout`'s axis order."""
    n, c, h, w = shape
    return (n, h, w, c) if layout == "NHWC" else (n, c, h, w)


def from_layout(shape, layout: str):
    """A 4-tuple in `layout`'s axis order as (N, C, H, W)."""
    if layout == "NHWC":
        n, h, w, c = shape
        return (n, c, h, w)
    return tuple(shape)


# ----------------------------------------------------------------------------------------
# scalars and pairs


def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def pair(op: str, name: str, v, *, minimum: int) -> Pair:
    """An int or a pair of ints (torch's int-or-tuple), each at least `minimum`. A 1-element
    tuple or list stands for both, as torch expands it."""
    if _is_int(v):
        t = (int(v), int(v))
    elif isinstance(v, (tuple, list)) and len(v) in (1, 2) and all(_is_int(e) for e in v):
        t = (int(v[0]), int(v[-1]))
    else:
        raise ValueError(f"{op}: {name} must be an int or a pair of ints, got {v!r}")
    if t[0] < minimum or t[1] < minimum:
        what = "positive" if minimum == 1 else f"at least {minimum}"
        raise ValueError(f"{op}: {name} must be {what}, got {v!r}")
    return t


def positive_int(op: str, name: str, v) -> int:
    if not _is_int(v) or v < 1:
        raise ValueError(f"{op}: {name} must be a positive int, got {v!r}")
    return int(v)


# ----------------------------------------------------------------------------------------
# output sizes (the one place these formulas live)


def conv_out_size(size: int, k: int, stride: int, pad: int, dil: int) -> int:
    """floor((H + 2p - d(R-1) - 1) / s) + 1; may be <= 0 for an empty output."""
    return (size + 2 * pad - dil * (k - 1) - 1) // stride + 1


def pool_out_size(size: int, k: int, stride: int, pad: int, dil: int, ceil_mode: bool) -> int:
    """torch's pooling output size: as conv, ceil'd with ceil_mode, where the last
    window must start inside the input or the left padding."""
    span = size + 2 * pad - dil * (k - 1) - 1
    if span < 0:
        return 0
    if ceil_mode:
        out = -(-span // stride) + 1
        if (out - 1) * stride >= size + pad:
            out -= 1
    else:
        out = span // stride + 1
    return out


def conv_transpose_out_size(size: int, k: int, stride: int, pad: int, dil: int,
                            output_padding: int) -> int:
    return (size - 1) * stride - 2 * pad + dil * (k - 1) + output_padding + 1


# ----------------------------------------------------------------------------------------
# arrays


def check_float(op: str, name: str, a) -> None:
    if a.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{op}: {name} must be {_FLOAT_NAMES}, got {a.dtype}")


def check_same_dtype(op: str, **arrays) -> np.dtype:
    items = [(n, a) for n, a in arrays.items() if a is not None]
    for n, a in items:
        check_float(op, n, a)
    first_name, first = items[0]
    for n, a in items[1:]:
        if a.dtype != first.dtype:
            raise TypeError(f"{op}: {n} is {a.dtype} but {first_name} is {first.dtype}; "
                            "convert one so both have the same dtype")
    return first.dtype


def check_params_dtype(op: str, dtype, **params) -> np.dtype:
    """The per-channel parameters of batch norm beside data of `dtype`: all of one dtype,
    the data's or, for half data, float32 (torch's mixed form, as AMP keeps batch norm's
    weight, bias and statistics in FP32). Returns that dtype (the data's if none given)."""
    items = [(n, a) for n, a in params.items() if a is not None]
    if not items:
        return np.dtype(dtype)
    for n, a in items:
        check_float(op, n, a)
    first_name, first = items[0]
    for n, a in items[1:]:
        if a.dtype != first.dtype:
            raise TypeError(f"{op}: {n} is {a.dtype} but {first_name} is {first.dtype}; "
                            "the per-channel parameters and statistics take one dtype")
    allowed = (np.dtype(dtype), np.dtype(np.float32)) if is_half(dtype) else (np.dtype(dtype),)
    if first.dtype not in allowed:
        also = " or float32" if is_half(dtype) else ""
        raise TypeError(f"{op}: {first_name} is {first.dtype} but the input is "
                        f"{np.dtype(dtype)}; the per-channel parameters and statistics must be "
                        f"{np.dtype(dtype)}{also}")
    return first.dtype


def check_ndim(op: str, name: str, a, allowed: Tuple[int, ...], what: str) -> None:
    if a.ndim not in allowed:
        raise ValueError(f"{op}: {name} must be {what}, got {a.ndim}-D with shape {tuple(a.shape)}")


def check_shape_tuple(op: str, name: str, shape, n: int, may_be_empty=()) -> Tuple[int, ...]:
    """n ints, positive except at the positions may_be_empty (a batch or channel count of 0:
    an empty problem, which the ops answer without a launch)."""
    if (not isinstance(shape, (tuple, list)) or len(shape) != n
            or not all(_is_int(s) and (s > 0 or (s == 0 and i in may_be_empty))
                       for i, s in enumerate(shape))):
        zero = f" (entries {', '.join(map(str, may_be_empty))} may be 0)" if may_be_empty else ""
        raise ValueError(f"{op}: {name} must be a tuple of {n} positive ints{zero}, "
                         f"got {shape!r}")
    return tuple(int(s) for s in shape)


def number(op, name, v, lo=-math.inf, hi=math.inf, lo_open=False, hi_open=False):
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise TypeError(f"{op}: {name} must be a finite Python number, got {v!r}")
    if v < lo or v > hi or (lo_open and v == lo) or (hi_open and v == hi):
        span = f"{'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
        raise ValueError(f"{op}: {name} must lie in {span}, got {v}")
    return float(v)


def caller_contiguous(a) -> bool:
    """Whether the caller's array (NumPy, CuPy or torch) is C-contiguous: unwrapping would
    copy any other, and an op that writes it in place would update the copy."""
    if hasattr(a, "is_contiguous"):
        return a.is_contiguous()
    flags = getattr(a, "flags", None)
    if flags is None and hasattr(a, "__dlpack__"):         # another DLPack producer: its view
        if kind_of(a) == DLPACK_CPU:
            flags = np.from_dlpack(a).flags
        else:
            import cupy
            flags = cupy.from_dlpack(a).flags
    return bool(flags is not None and flags.c_contiguous)


def check_written_in_place(op: str, name: str, native, original) -> None:
    """An array an op updates in place: C-contiguous as the caller passed it (unwrapping
    would copy any other, and the copy would be updated) and writable."""
    if not caller_contiguous(original):
        raise ValueError(f"{op}: {name} is updated in place and must be C-contiguous; pass a "
                         "contiguous array")
    if not getattr(native.flags, "writeable", True):
        raise ValueError(f"{op}: {name} is updated in place and must be writable")


def zeros(like, shape, dtype):
    """Zeros in like's array module (numpy / cupy): the answer of an empty problem (an
    empty array, or an empty sum), made without a launch."""
    return xp_of(like).zeros(shape, dtype)


# ----------------------------------------------------------------------------------------
# convolution


@dataclass
class ConvArgs:
    """A validated 2-D convolution problem in the forward's terms:
    x (N, C, H, W) * w (K, C/groups, R, S) -> y (N, K, P, Q)."""
    op: str
    N: int
    C: int
    H: int
    W: int
    K: int
    R: int
    S: int
    P: int
    Q: int
    stride: Pair
    padding: Pair
    dilation: Pair
    groups: int
    dtype: np.dtype
    allow_tf32: bool = False
    layout: str = "NCHW"        # the axis order of x, w and y (NHWC: w is (K, R, S, C/groups))

    @property
    def Cg(self) -> int:
        return self.C // self.groups

    @property
    def Kg(self) -> int:
        return self.K // self.groups

    @property
    def flops(self) -> int:
        return 2 * self.N * self.K * self.Cg * self.R * self.S * self.P * self.Q

    @property
    def x_shape(self):
        return to_layout((self.N, self.C, self.H, self.W), self.layout)

    @property
    def w_shape(self):
        return to_layout((self.K, self.Cg, self.R, self.S), self.layout)

    @property
    def y_shape(self):
        return to_layout((self.N, self.K, self.P, self.Q), self.layout)

    @property
    def empty(self) -> bool:
        """Nothing to compute: no images, no output channels, or an empty sum (no input
        channels per group). The ops answer with zeros (plus a bias) and launch nothing."""
        return self.N == 0 or self.K == 0 or self.Cg == 0


PADDING_STRINGS = ("valid", "same")


def string_padding(op: str, padding, w_shape, stride, dilation, layout="NCHW"):
    """torch's padding="valid" / "same" for conv2d and its gradients -> (the padding to
    run with, (rows, columns) to drop from the start of its output). "valid" is 0. "same"
    keeps the input's size at stride 1 (torch refuses it at any other stride): dilation *
    (kernel - 1) padding in all, half before and the rest after, so an odd total puts the
    extra row (column) after. Run with the larger half on both sides, the output has one
    row too many at the start. Anything else passes through for conv_geometry to check."""
    if not isinstance(padding, str):
        return padding, (0, 0)
    if padding not in PADDING_STRINGS:
        raise ValueError(f"{op}: padding must be an int, a pair of ints or one of "
                         f"{', '.join(map(repr, PADDING_STRINGS))}; got {padding!r}")
    if padding == "valid":
        return 0, (0, 0)
    stride = pair(op, "stride", stride, minimum=1)
    dilation = pair(op, "dilation", dilation, minimum=1)
    if stride != (1, 1):
        raise ValueError(f"{op}: padding='same' needs stride 1 (as torch), got stride {stride}")
    total = [d * (k - 1) for d, k in zip(dilation, from_layout(w_shape, layout)[2:])]
    return tuple(t - t // 2 for t in total), tuple(t % 2 for t in total)


def conv_geometry(op: str, x_shape, w_shape, stride, padding, dilation, groups,
                  dtype, *, out_shape=None, layout="NCHW") -> ConvArgs:
    """Validate a conv problem given the shapes of x and w (in `layout`'s axis order). With
    out_shape (the shape of gy in a backward op) the output size must agree with it."""
    stride = pair(op, "stride", stride, minimum=1)
    padding = pair(op, "padding", padding, minimum=0)
    dilation = pair(op, "dilation", dilation, minimum=1)
    groups = positive_int(op, "groups", groups)
    N, C, H, W = from_layout(x_shape, layout)
    K, Cg, R, S = from_layout(w_shape, layout)
    if R < 1 or S < 1:
        raise ValueError(f"{op}: the kernel must be at least 1x1, got {R}x{S}")
    if C != Cg * groups:
        raise ValueError(f"{op}: input has {C} channels but weight expects {Cg * groups} "
                         f"({Cg} per group x {groups} groups)" + _layout_hint(layout))
    if K % groups:
        raise ValueError(f"{op}: weight has {K} output channels, not divisible by groups={groups}")
    P = conv_out_size(H, R, stride[0], padding[0], dilation[0])
    Q = conv_out_size(W, S, stride[1], padding[1], dilation[1])
    if P < 1 or Q < 1:
        eff = (dilation[0] * (R - 1) + 1, dilation[1] * (S - 1) + 1)
        raise ValueError(f"{op}: kernel {R}x{S} (dilated {eff[0]}x{eff[1]}) is larger than the "
                         f"padded input {H + 2 * padding[0]}x{W + 2 * padding[1]} "
                         f"(input {H}x{W}, padding {padding}): the output would be empty")
    if out_shape is not None and tuple(out_shape) != to_layout((N, K, P, Q), layout):
        raise ValueError(f"{op}: grad_output has shape {tuple(out_shape)} but the convolution of "
                         f"input {tuple(x_shape)} by weight {tuple(w_shape)} with stride {stride}, "
                         f"padding {padding}, dilation {dilation} gives "
                         f"{to_layout((N, K, P, Q), layout)}" + _layout_hint(layout))
    return ConvArgs(op, N, C, H, W, K, R, S, P, Q, stride, padding, dilation, groups,
                    np.dtype(dtype), layout=layout)


def _layout_hint(layout: str) -> str:
    """What the shapes mean in this layout, for the messages of shapes that disagree."""
    if layout == "NHWC":
        return " (layout='NHWC': input (N, H, W, C), weight (K, R, S, C/groups))"
    return ""


def check_conv_weight(op: str, w, layout="NCHW") -> None:
    check_ndim(op, "weight", w, (4,), "4-D (K, R, S, C/groups)" if layout == "NHWC"
               else "4-D (K, C/groups, R, S)")


def check_nchw_input(op: str, name: str, x, layout="NCHW") -> None:
    check_ndim(op, name, x, (3, 4), "3-D (H, W, C) or 4-D (N, H, W, C)" if layout == "NHWC"
               else "3-D (C, H, W) or 4-D (N, C, H, W)")


def batched(op: str, name: str, x, layout="NCHW"):
    """(x as 4-D, whether it came unbatched): torch accepts (C, H, W) for one image ((H, W,
    C) in NHWC)."""
    check_nchw_input(op, name, x, layout)
    return (x[None], True) if x.ndim == 3 else (x, False)


def check_bias(op: str, b, K: int) -> None:
    if b is None:
        return
    if b.ndim != 1 or b.shape[0] != K:
        raise ValueError(f"{op}: bias must be 1-D of length {K} (one per output channel), "
                         f"got shape {tuple(b.shape)}")


def transpose_geometry(op: str, x_shape, w_shape, stride, padding, output_padding, groups,
                       dilation, dtype, layout="NCHW"):
    """conv_transpose2d(x, w) is conv2d_backward_input(x, w, out_shape): w (Cin, Cout/g, R, S)
    is a forward conv weight with K=Cin. Returns (the ConvArgs of that forward conv,
    out_shape, frame). frame is None, or, where output_padding reaches the stride (torch
    allows it below the dilation), the padding: no forward conv of out_shape then gives
    x's size, so the args describe the uncropped result ((H - 1) s + d (R - 1) + 1 rows,
    padding 0) and out_shape is its window starting at the padding (see full_frame). In
    NHWC, x is (N, H, W, Cin) and w (Cin, R, S, Cout/g)."""
    stride_ = pair(op, "stride", stride, minimum=1)
    padding_ = pair(op, "padding", padding, minimum=0)
    dilation_ = pair(op, "dilation", dilation, minimum=1)
    op_pad = pair(op, "output_padding", output_padding, minimum=0)
    groups_ = positive_int(op, "groups", groups)
    N, Cin, H, W = from_layout(x_shape, layout)
    Cin_w, Coutg, R, S = from_layout(w_shape, layout)
    if Cin != Cin_w:
        raise ValueError(f"{op}: input has {Cin} channels but weight expects {Cin_w} "
                         "(weight is (in_channels, "
                         + ("R, S, out_channels/groups))" if layout == "NHWC"
                            else "out_channels/groups, R, S))"))
    if Cin % groups_:
        raise ValueError(f"{op}: input channels {Cin} not divisible by groups={groups_}")
    for i, ax in enumerate("HW"):
        if op_pad[i] >= max(stride_[i], dilation_[i]):
            raise ValueError(f"{op}: output_padding {op_pad} must be smaller than stride "
                             f"{stride_} or dilation {dilation_} along {ax}")
    Ho = conv_transpose_out_size(H, R, stride_[0], padding_[0], dilation_[0], op_pad[0])
    Wo = conv_transpose_out_size(W, S, stride_[1], padding_[1], dilation_[1], op_pad[1])
    if Ho < 1 or Wo < 1:
        raise ValueError(f"{op}: output would be empty ({Ho}x{Wo}) for input {H}x{W}, kernel "
                         f"{R}x{S}, stride {stride_}, padding {padding_}")
    out_shape = to_layout((N, Coutg * groups_, Ho, Wo), layout)
    if op_pad[0] < stride_[0] and op_pad[1] < stride_[1]:
        args = conv_geometry(op, out_shape, w_shape, stride_, padding_, dilation_, groups_,
                             dtype, out_shape=x_shape, layout=layout)
        return args, out_shape, None
    full = to_layout((N, Coutg * groups_,
                      conv_transpose_out_size(H, R, stride_[0], 0, dilation_[0], 0),
                      conv_transpose_out_size(W, S, stride_[1], 0, dilation_[1], 0)), layout)
    args = conv_geometry(op, full, w_shape, stride_, 0, dilation_, groups_, dtype,
                         out_shape=x_shape, layout=layout)
    return args, out_shape, padding_


def full_frame(a, shape, offset, xp, layout="NCHW"):
    """The window of `a` (N, C, H, W) of size shape[2:] starting at offset = (rows, columns),
    zero where it passes a's end; with a negative offset, `a` placed at -offset in zeros of
    `shape` (the adjoint). conv_transpose2d's output is the window at its padding of the
    uncropped result; its gradient goes back the other way. In NHWC `a` and shape are
    (N, H, W, C): the same on the NCHW views of both."""
    if layout == "NHWC":
        out = xp.zeros(shape, a.dtype)
        out.transpose(0, 3, 1, 2)[...] = full_frame(a.transpose(0, 3, 1, 2),
                                                    from_layout(shape, layout), offset, xp)
        return out
    out = xp.zeros(tuple(a.shape[:2]) + tuple(shape[2:]), a.dtype)
    (oh, ow), (H, W), (Ho, Wo) = offset, a.shape[2:], shape[2:]
    src_h, dst_h = (slice(max(oh, 0), min(H, oh + Ho)), slice(max(-oh, 0), None))
    src_w, dst_w = (slice(max(ow, 0), min(W, ow + Wo)), slice(max(-ow, 0), None))
    block = a[:, :, src_h, src_w]
    out[:, :, dst_h.start:dst_h.start + block.shape[2],
        dst_w.start:dst_w.start + block.shape[3]] = block
    return out


# ----------------------------------------------------------------------------------------
# pooling


class PlaneShapes:
    """The input (N, C, H, W) and output (N, C, P, Q) shapes of a pooling record, in its
    layout's axis order ((N, H, W, C) and (N, P, Q, C) in NHWC)."""

    @property
    def x_shape(self):
        return to_layout((self.N, self.C, self.H, self.W), getattr(self, "layout", "NCHW"))

    @property
    def y_shape(self):
        return to_layout((self.N, self.C, self.P, self.Q), getattr(self, "layout", "NCHW"))


@dataclass
class PoolArgs(PlaneShapes):
    op: str
    N: int
    C: int
    H: int
    W: int
    P: int
    Q: int
    kernel: Pair
    stride: Pair
    padding: Pair
    dilation: Pair
    ceil_mode: bool
    count_include_pad: bool = True
    divisor_override: Optional[int] = None
    dtype: np.dtype = np.dtype(np.float32)
    layout: str = "NCHW"


def pool_geometry(op: str, x_shape, kernel_size, stride, padding, dilation, ceil_mode,
                  dtype, *, kind: str, count_include_pad=True, divisor_override=None,
                  layout="NCHW") -> PoolArgs:
    k = pair(op, "kernel_size", kernel_size, minimum=1)
    s = k if stride is None or (isinstance(stride, (tuple, list)) and len(stride) == 0) \
        else pair(op, "stride", stride, minimum=1)
    p = pair(op, "padding", padding, minimum=0)
    d = pair(op, "dilation", dilation, minimum=1)
    if not isinstance(ceil_mode, (bool, np.bool_)):
        raise ValueError(f"{op}: ceil_mode must be a bool, got {ceil_mode!r}")
    for i in range(2):
        half = ((k[i] - 1) * d[i] + 1) // 2 if kind == "max" else k[i] // 2
        if p[i] > half:
            raise ValueError(f"{op}: padding {p} must be at most half of the "
                             f"{'effective ' if kind == 'max' else ''}kernel size "
                             f"{k} (dilation {d}): at most {half}")
    if divisor_override is not None:
        if not _is_int(divisor_override) or divisor_override == 0:
            raise ValueError(f"{op}: divisor_override must be a non-zero int, got {divisor_override!r}")
    N, C, H, W = from_layout(x_shape, layout)
    P = pool_out_size(H, k[0], s[0], p[0], d[0], bool(ceil_mode))
    Q = pool_out_size(W, k[1], s[1], p[1], d[1], bool(ceil_mode))
    if P < 1 or Q < 1:
        raise ValueError(f"{op}: window {k} (dilation {d}) is larger than the padded input "
                         f"{H + 2 * p[0]}x{W + 2 * p[1]} (input {H}x{W}, padding {p}): "
                         "the output would be empty")
    # with dilation a window can fall entirely on padding: it has no maximum in the input
    # and no index to give (torch returns -inf with an index past the row); refuse it
    for axis, (n, out) in enumerate(((H, P), (W, Q))):
        if d[axis] > 1:
            pos = (np.arange(out)[:, None] * s[axis] - p[axis]
                   + np.arange(k[axis])[None, :] * d[axis])
            empty = ~((pos >= 0) & (pos < n)).any(axis=1)
            if empty.any():
                o = int(np.argmax(empty))
                raise ValueError(f"{op}: window {o} along {'HW'[axis]} (kernel {k[axis]}, "
                                 f"dilation {d[axis]}, padding {p[axis]}, stride {s[axis]}) "
                                 f"lies entirely in the padding of an input of size {n}")
    return PoolArgs(op, N, C, H, W, P, Q, k, s, p, d, bool(ceil_mode), bool(count_include_pad),
                    None if divisor_override is None else int(divisor_override), np.dtype(dtype),
                    layout)


def check_input_shape(op: str, shape, layout="NCHW") -> Tuple[int, int, int, int]:
    """(N, C, H, W) or (C, H, W); N and C may be 0 (an empty batch, no channels). In NHWC
    (N, H, W, C) or (H, W, C)."""
    c = 3 if layout == "NHWC" else 1
    if isinstance(shape, (tuple, list)) and len(shape) == 3:
        return check_shape_tuple(op, "input_shape", (1,) + tuple(shape), 4, (c,))
    return check_shape_tuple(op, "input_shape", shape, 4, (0, c))


def check_indices(op: str, indices, gy_shape) -> None:
    if indices.dtype.kind not in "iu":
        raise TypeError(f"{op}: indices must be an integer array (int64 from max_pool2d), "
                        f"got {indices.dtype}")
    if tuple(indices.shape) != tuple(gy_shape):
        raise ValueError(f"{op}: indices have shape {tuple(indices.shape)} but grad_output has "
                         f"shape {tuple(gy_shape)}")


def check_indices_range(op: str, lo: int, hi: int, plane: int) -> None:
    if lo < 0 or hi >= plane:
        raise ValueError(f"{op}: indices must lie in [0, {plane}) (H*W of the input), "
                         f"found values in [{lo}, {hi}]")


def check_pooled_grad(op: str, gy_shape, args: PoolArgs) -> None:
    if tuple(gy_shape) != args.y_shape:
        raise ValueError(f"{op}: grad_output has shape {tuple(gy_shape)} but pooling input "
                         f"{args.x_shape} gives {args.y_shape}"
                         + (f" (layout={args.layout!r})" if args.layout != "NCHW" else ""))


# ----------------------------------------------------------------------------------------
# small ops


def check_labels(op: str, labels, n: int, classes: int) -> None:
    if labels.dtype.kind not in "iu":
        raise TypeError(f"{op}: labels must be integer class indices, got {labels.dtype}")
    if labels.ndim != 1 or labels.shape[0] != n:
        raise ValueError(f"{op}: labels must be 1-D of length {n} (one per row of logits), "
                         f"got shape {tuple(labels.shape)}")


def check_labels_range(op: str, lo: int, hi: int, classes: int) -> None:
    if lo < 0 or hi >= classes:
        raise ValueError(f"{op}: labels must lie in [0, {classes}), found values in [{lo}, {hi}]")


def check_linear(op: str, x, w, b=None) -> None:
    check_ndim(op, "weight", w, (2,), "2-D (out_features, in_features)")
    if x.ndim < 1:
        raise ValueError(f"{op}: input must have at least 1 dimension")
    if x.shape[-1] != w.shape[1]:
        raise ValueError(f"{op}: input has {x.shape[-1]} features but weight expects "
                         f"{w.shape[1]} (weight shape {tuple(w.shape)})")
    check_bias(op, b, w.shape[0])


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def numel(shape) -> int:
    return int(math.prod(shape))
