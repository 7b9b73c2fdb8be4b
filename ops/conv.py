"""Convolution ops: conv2d, its three backward passes, conv_transpose2d.

Each op: unwrap arrays -> validate (convgpu.core.args) -> pick an implementation
(ops._registry) -> run -> wrap the result in the caller's array type.
"""
from __future__ import annotations

from convgpu import reference, reference_nhwc
from convgpu.arrays import on_torch_stream, unwrap_layout, xp_of
from convgpu.core import args as A
from convgpu.ops._layout import register_transpose
from convgpu.ops._registry import DTYPE_NAMES, WITH_FLOAT16, dispatch, register
from convgpu.ops.activation import bias_add_native


# ----------------------------------------------------------------------------------------
# numpy backend adapters: registry signature (args, *arrays) -> reference signature


def _np_conv2d(a, x, w, b):
    if a.layout == "NHWC":
        return reference_nhwc.conv2d_nhwc(x, w, b, a.stride, a.padding, a.dilation, a.groups)
    return reference.conv2d(x, w, b, a.stride, a.padding, a.dilation, a.groups)


def _np_conv2d_fft(a, x, w, b):
    return reference.conv2d_fft(x, w, b, a.stride, a.padding, a.dilation, a.groups)


def _np_backward_input(a, gy, w):
    if a.layout == "NHWC":
        return reference_nhwc.conv2d_backward_input_nhwc(gy, w, a.x_shape, a.stride, a.padding,
                                                    a.dilation, a.groups)
    return reference.conv2d_backward_input(gy, w, a.x_shape, a.stride, a.padding, a.dilation,
                                           a.groups)


def _np_backward_weight(a, x, gy):
    if a.layout == "NHWC":
        return reference_nhwc.conv2d_backward_weight_nhwc(x, gy, a.w_shape, a.stride, a.padding,
                                                     a.dilation, a.groups)
    return reference.conv2d_backward_weight(x, gy, a.w_shape, a.stride, a.padding, a.dilation,
                                            a.groups)


def _np_backward_bias(a, gy):
    return reference.conv2d_backward_bias(gy)


_BOTH = ("NCHW", "NHWC")
register("conv2d", "numpy", "im2col", "convgpu.ops.conv:_np_conv2d", layouts=_BOTH)
register("conv2d", "numpy", "fft", "convgpu.ops.conv:_np_conv2d_fft")
register("conv2d_backward_input", "numpy", "col2im", "convgpu.ops.conv:_np_backward_input",
         layouts=_BOTH)
register("conv2d_backward_weight", "numpy", "im2col", "convgpu.ops.conv:_np_backward_weight",
         layouts=_BOTH)
register("conv2d_backward_bias", "numpy", "sum", "convgpu.ops.conv:_np_backward_bias")

_K = "convgpu.kernels.numba."
_FFT_OK = _K + "fft:supports"
register("conv2d", "numba", "direct", _K + "conv_direct:conv2d_direct", dtypes=WITH_FLOAT16)
register("conv2d", "numba", "direct_tiled", _K + "conv_direct:conv2d_direct_tiled",
         supports=_K + "conv_direct:tiled_supports", dtypes=WITH_FLOAT16)
register("conv2d", "numba", "im2col", _K + "im2col:conv2d_im2col")
register("conv2d", "numba", "fft", _K + "fft:conv2d_fft", supports=_FFT_OK)
register("conv2d", "numba", "winograd", _K + "winograd:conv2d_winograd",
         supports=_K + "winograd:supports")
register("conv2d_backward_input", "numba", "direct", _K + "conv_direct:backward_input_direct",
         dtypes=WITH_FLOAT16)
register("conv2d_backward_input", "numba", "col2im", _K + "im2col:backward_input_col2im")
register("conv2d_backward_input", "numba", "fft", _K + "fft:backward_input_fft",
         supports=_FFT_OK)
register("conv2d_backward_weight", "numba", "direct", _K + "conv_direct:backward_weight_direct",
         dtypes=WITH_FLOAT16)
register("conv2d_backward_weight", "numba", "im2col", _K + "im2col:backward_weight_im2col")
register("conv2d_backward_weight", "numba", "fft", _K + "fft:backward_weight_fft",
         supports=_FFT_OK)
register("conv2d_backward_weight", "numba", "winograd", _K + "winograd:backward_weight_winograd",
         supports=_K + "winograd:supports")
register("conv2d_backward_bias", "numba", "sum", _K + "elementwise:backward_bias",
         dtypes=WITH_FLOAT16)

_C = "convgpu.kernels.cuda."
_IG = _C + "conv_implicit:"
_I2C = _C + "im2col:"
_DIR = _C + "conv_direct:"
_DW = _C + "depthwise:"
_WG = _C + "winograd:"
_FFT = _C + "fft:"
_L = _C + "launch:"
_EW = _C + "elementwise:"
register("conv2d", "cuda", "implicit_gemm", _IG + "conv2d_implicit_gemm")
register("conv2d", "cuda", "implicit_gemm_tf32", _IG + "conv2d_implicit_gemm_tf32",
         supports=_L + "tf32_supports")
register("conv2d", "cuda", "implicit_gemm_pipelined_tf32",
         _IG + "conv2d_implicit_gemm_pipelined_tf32", supports=_IG + "pipelined_supports")
register("conv2d", "cuda", "im2col", _I2C + "conv2d_im2col", dtypes=DTYPE_NAMES)
register("conv2d", "cuda", "im2col_tf32", _I2C + "conv2d_im2col_tf32",
         supports=_L + "tf32_supports")
register("conv2d", "cuda", "direct", _DIR + "conv2d_direct", supports=_DIR + "direct_supports",
         dtypes=DTYPE_NAMES)
register("conv2d", "cuda", "depthwise", _DW + "conv2d_depthwise",
         supports=_DW + "depthwise_supports", dtypes=DTYPE_NAMES)
register("conv2d_backward_input", "cuda", "depthwise", _DW + "backward_input_depthwise",
         supports=_DW + "depthwise_supports", dtypes=DTYPE_NAMES)
register("conv2d_backward_weight", "cuda", "depthwise", _DW + "backward_weight_depthwise",
         supports=_DW + "depthwise_supports", dtypes=DTYPE_NAMES)
register("conv2d", "cuda", "winograd", _WG + "conv2d_winograd", supports=_WG + "winograd_supports")
register("conv2d", "cuda", "winograd_tf32", _WG + "conv2d_winograd_tf32",
         supports=_WG + "winograd_tf32_supports")
register("conv2d", "cuda", "winograd_4x4", _WG + "conv2d_winograd4",
         supports=_WG + "winograd4_supports")
register("conv2d", "cuda", "fft", _FFT + "conv2d_fft", supports=_FFT + "fft_supports")
register("conv2d", "cuda", "fft_tf32", _FFT + "conv2d_fft_tf32",
         supports=_FFT + "fft_tf32_supports")
register("conv2d_backward_input", "cuda", "implicit_gemm", _IG + "backward_input_implicit_gemm")
register("conv2d_backward_input", "cuda", "implicit_gemm_tf32",
         _IG + "backward_input_implicit_gemm_tf32", supports=_L + "tf32_supports")
register("conv2d_backward_input", "cuda", "implicit_gemm_pipelined_tf32",
         _IG + "backward_input_implicit_gemm_pipelined_tf32",
         supports=_IG + "pipelined_input_supports")
register("conv2d_backward_input", "cuda", "col2im", _I2C + "backward_input_col2im",
         dtypes=DTYPE_NAMES)
register("conv2d_backward_input", "cuda", "col2im_tf32", _I2C + "backward_input_col2im_tf32",
         supports=_L + "tf32_supports")
register("conv2d_backward_input", "cuda", "winograd", _WG + "backward_input_winograd",
         supports=_WG + "winograd_backward_input_supports")
register("conv2d_backward_input", "cuda", "winograd_tf32", _WG + "backward_input_winograd_tf32",
         supports=_WG + "winograd_backward_input_tf32_supports")
register("conv2d_backward_input", "cuda", "winograd_4x4", _WG + "backward_input_winograd4",
         supports=_WG + "winograd4_backward_input_supports")
register("conv2d_backward_input", "cuda", "fft", _FFT + "backward_input_fft",
         supports=_FFT + "fft_supports")
register("conv2d_backward_input", "cuda", "fft_tf32", _FFT + "backward_input_fft_tf32",
         supports=_FFT + "fft_tf32_supports")
register("conv2d_backward_weight", "cuda", "implicit_gemm", _IG + "backward_weight_implicit_gemm",
         supports=_IG + "wgrad_implicit_supports")
register("conv2d_backward_weight", "cuda", "implicit_gemm_tf32",
         _IG + "backward_weight_implicit_gemm_tf32", supports=_IG + "wgrad_implicit_tf32_supports")
register("conv2d_backward_weight", "cuda", "implicit_gemm_pipelined_tf32",
         _IG + "backward_weight_implicit_gemm_pipelined_tf32",
         supports=_IG + "pipelined_weight_supports")
register("conv2d_backward_weight", "cuda", "im2col", _I2C + "backward_weight_im2col",
         dtypes=DTYPE_NAMES)
register("conv2d_backward_weight", "cuda", "im2col_tf32", _I2C + "backward_weight_im2col_tf32",
         supports=_L + "tf32_supports")
register("conv2d_backward_weight", "cuda", "winograd", _WG + "backward_weight_winograd",
         supports=_WG + "winograd_supports")
register("conv2d_backward_weight", "cuda", "winograd_tf32", _WG + "backward_weight_winograd_tf32",
         supports=_WG + "winograd_tf32_supports")
register("conv2d_backward_weight", "cuda", "winograd_4x4", _WG + "backward_weight_winograd4",
         supports=_WG + "winograd4_supports")
register("conv2d_backward_bias", "cuda", "sum", _EW + "backward_bias", dtypes=DTYPE_NAMES)
register("conv2d_backward_weight", "cuda", "fft", _FFT + "backward_weight_fft",
         supports=_FFT + "fft_supports")
register("conv2d_backward_weight", "cuda", "fft_tf32", _FFT + "backward_weight_fft_tf32",
         supports=_FFT + "fft_tf32_supports")

# float16 / bfloat16 on the tensor cores: mma.sync m16n8k16, FP32 accumulation
_HALF = ("float16", "bfloat16")
register("conv2d", "cuda", "implicit_gemm_mma16", _IG + "conv2d_implicit_gemm_mma16",
         supports=_IG + "mma16_supports", dtypes=_HALF)
register("conv2d_backward_input", "cuda", "implicit_gemm_mma16",
         _IG + "backward_input_implicit_gemm_mma16", supports=_IG + "mma16_input_supports",
         dtypes=_HALF)
register("conv2d_backward_weight", "cuda", "implicit_gemm_mma16",
         _IG + "backward_weight_implicit_gemm_mma16", supports=_IG + "mma16_weight_supports",
         dtypes=_HALF)

_NHWC = _C + "conv_nhwc:"
register("conv2d", "cuda", "implicit_gemm_nhwc", _NHWC + "conv2d_nhwc_implicit_gemm",
         supports=_NHWC + "nhwc_supports", layouts=("NHWC",))
register("conv2d", "cuda", "implicit_gemm_nhwc_tf32", _NHWC + "conv2d_nhwc_implicit_gemm_tf32",
         supports=_NHWC + "nhwc_tf32_supports", layouts=("NHWC",))
register("conv2d_backward_input", "cuda", "implicit_gemm_nhwc",
         _NHWC + "backward_input_nhwc_implicit_gemm", supports=_NHWC + "dgrad_supports",
         layouts=("NHWC",))
register("conv2d_backward_input", "cuda", "implicit_gemm_nhwc_tf32",
         _NHWC + "backward_input_nhwc_implicit_gemm_tf32", supports=_NHWC + "dgrad_tf32_supports",
         layouts=("NHWC",))
register("conv2d_backward_weight", "cuda", "implicit_gemm_nhwc",
         _NHWC + "backward_weight_nhwc_implicit_gemm", supports=_NHWC + "wgrad_supports",
         layouts=("NHWC",))
register("conv2d_backward_weight", "cuda", "implicit_gemm_nhwc_tf32",
         _NHWC + "backward_weight_nhwc_implicit_gemm_tf32", supports=_NHWC + "wgrad_tf32_supports",
         layouts=("NHWC",))

# NHWC float16 / bfloat16 on the tensor cores (mma.sync m16n8k16), before "transpose" so
# that algo="auto" without a GPU (the host emulation: first candidate) takes them
_NHWC16 = _C + "conv_nhwc16:"
register("conv2d", "cuda", "implicit_gemm_nhwc_mma16", _NHWC16 + "conv2d_nhwc_implicit_gemm_mma16",
         supports=_NHWC16 + "mma16_nhwc_supports", dtypes=_HALF, layouts=("NHWC",))
register("conv2d_backward_input", "cuda", "implicit_gemm_nhwc_mma16",
         _NHWC16 + "backward_input_nhwc_implicit_gemm_mma16",
         supports=_NHWC16 + "dgrad_mma16_supports", dtypes=_HALF, layouts=("NHWC",))
register("conv2d_backward_weight", "cuda", "implicit_gemm_nhwc_mma16",
         _NHWC16 + "backward_weight_nhwc_implicit_gemm_mma16",
         supports=_NHWC16 + "wgrad_mma16_supports", dtypes=_HALF, layouts=("NHWC",))

# NHWC on the device backends: the NCHW kernels between layout copies, by name (ops/_layout)
for _op in ("conv2d", "conv2d_backward_input", "conv2d_backward_weight"):
    for _backend in ("numba", "cuda"):
        register_transpose(_op, _backend)


# ----------------------------------------------------------------------------------------
# the ops


def _bias_add(bd, y, b, backend):
    if b is None:
        return y
    return bias_add_native(y, b, backend, bd.on_device)


def _bias_zeros(like, shape, dtype, b, layout="NCHW"):
    """The answer of an empty problem: zeros of shape (an empty array where N or K is 0;
    where the reduction is empty, C / groups = 0, an empty sum) plus the bias."""
    y = A.zeros(like, shape, dtype)
    if b is not None and y.size:
        y += b if layout == "NHWC" else b.reshape(1, -1, 1, 1)
    return y


def _planes(a, layout):
    """a (4-D) as an NCHW view: the spatial edits below are written once."""
    return a.transpose(0, 3, 1, 2) if layout == "NHWC" else a


def _drop_front(y, trim, layout="NCHW"):
    """y without its first trim = (rows, columns) (padding="same" with an odd total)."""
    th, tw = trim
    if not (th or tw):
        return y
    return y[:, th:, tw:, :].copy() if layout == "NHWC" else y[:, :, th:, tw:].copy()


def _zeros_front(gy, trim, layout="NCHW"):
    """gy after trim = (rows, columns) of zeros at the start: the gradient of _drop_front."""
    th, tw = trim
    if not (th or tw):
        return gy
    n, c, h, w = A.from_layout(gy.shape, layout)
    out = A.zeros(gy, A.to_layout((n, c, h + th, w + tw), layout), gy.dtype)
    _planes(out, layout)[:, :, th:, tw:] = _planes(gy, layout)
    return out


def _check_same_size(op, padding, gy_shape, x_shape, layout="NCHW"):
    gy_hw = A.from_layout(gy_shape, layout)[2:]
    x_hw = A.from_layout(x_shape, layout)[2:]
    if padding == "same" and tuple(gy_hw) != tuple(x_hw):
        raise ValueError(f"{op}: with padding='same' grad_output's size is the input's, "
                         f"{tuple(x_hw)}; got grad_output {tuple(gy_shape)}")


def _shape_in(shape, layout, given):
    """A shape argument (input_shape, weight_shape) given in the caller's layout `given`,
    in the layout the call runs in (a channels_last torch call runs in NHWC while the
    caller speaks NCHW). Anything but 4 entries passes through for the checks to refuse."""
    if layout == given or not isinstance(shape, (tuple, list)) or len(shape) != 4:
        return shape
    return A.to_layout(A.from_layout(tuple(shape), given), layout)


@on_torch_stream
def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *,
           algo="auto", backend="auto", allow_tf32=None, layout="NCHW"):
    """2-D cross-correlation as torch.nn.functional.conv2d: input (N, C, H, W) or (C, H, W),
    weight (K, C/groups, R, S), bias (K,) -> (N, K, P, Q). padding: an int, a pair, "valid"
    (0) or "same" (stride 1: the output is the input's size; an odd total padding puts the
    extra row / column after, as torch). allow_tf32 (None: the module setting, see
    set_allow_tf32) lets float32 calls use the TF32 tensor-core kernels. layout="NHWC":
    input (N, H, W, C) or (H, W, C), weight (K, R, S, C/groups) -> (N, P, Q, K); a torch
    channels_last input runs in NHWC by its strides and comes back channels_last."""
    op = "conv2d"
    layout = A.check_layout(op, layout)
    bd, a, layout = unwrap_layout(op, layout, input=input, weight=weight, bias=bias)
    x, unbatched = A.batched(op, "input", a["input"], layout)
    w, b = a["weight"], a["bias"]
    A.check_conv_weight(op, w, layout)
    dtype = A.check_same_dtype(op, input=x, weight=w, bias=b)
    padding, trim = A.string_padding(op, padding, w.shape, stride, dilation, layout)
    args = A.conv_geometry(op, x.shape, w.shape, stride, padding, dilation, groups, dtype,
                           layout=layout)
    args.allow_tf32 = A.allow_tf32(allow_tf32)
    A.check_bias(op, b, args.K)
    if args.empty:
        y = _bias_zeros(x, args.y_shape, dtype, b, layout)
    else:
        y = dispatch(op, args, backend, algo, bd.on_device, x, w, b)
    y = _drop_front(y, trim, layout)
    return bd.wrap(y[0] if unbatched else y)


@on_torch_stream
def conv2d_backward_input(grad_output, weight, input_shape, stride=1, padding=0, dilation=1,
                          groups=1, *, algo="auto", backend="auto", allow_tf32=None,
                          layout="NCHW"):
    """Gradient of conv2d with respect to its input: (N, K, P, Q) -> input_shape. padding,
    allow_tf32 and layout as in conv2d (NHWC: grad_output (N, P, Q, K), weight (K, R, S,
    C/groups), input_shape (N, H, W, C))."""
    op = "conv2d_backward_input"
    given = A.check_layout(op, layout)
    bd, a, layout = unwrap_layout(op, given, grad_output=grad_output, weight=weight)
    gy, unbatched = A.batched(op, "grad_output", a["grad_output"], layout)
    w = a["weight"]
    A.check_conv_weight(op, w, layout)
    dtype = A.check_same_dtype(op, grad_output=gy, weight=w)
    shape = A.check_input_shape(op, _shape_in(input_shape, layout, given), layout)
    _check_same_size(op, padding, gy.shape, shape, layout)
    padding, trim = A.string_padding(op, padding, w.shape, stride, dilation, layout)
    gy = _zeros_front(gy, trim, layout)
    args = A.conv_geometry(op, shape, w.shape, stride, padding, dilation, groups, dtype,
                           out_shape=gy.shape, layout=layout)
    args.allow_tf32 = A.allow_tf32(allow_tf32)
    if args.empty:
        gx = A.zeros(gy, shape, dtype)
    else:
        gx = dispatch(op, args, backend, algo, bd.on_device, gy, w)
    return bd.wrap(gx[0] if unbatched else gx)


@on_torch_stream
def conv2d_backward_weight(input, grad_output, weight_shape, stride=1, padding=0, dilation=1,
                           groups=1, *, algo="auto", backend="auto", allow_tf32=None,
                           layout="NCHW"):
    """Gradient of conv2d with respect to its weight -> weight_shape (K, C/groups, R, S).
    padding, allow_tf32 and layout as in conv2d (NHWC: input (N, H, W, C), grad_output
    (N, P, Q, K), weight_shape (K, R, S, C/groups))."""
    op = "conv2d_backward_weight"
    given = A.check_layout(op, layout)
    bd, a, layout = unwrap_layout(op, given, input=input, grad_output=grad_output)
    x, unbatched = A.batched(op, "input", a["input"], layout)
    gy = a["grad_output"]
    A.check_nchw_input(op, "grad_output", gy, layout)
    if unbatched:
        gy = gy[None]
    dtype = A.check_same_dtype(op, input=x, grad_output=gy)
    wshape = A.check_shape_tuple(op, "weight_shape", weight_shape, 4,
                                 (0, 3 if given == "NHWC" else 1))
    wshape = _shape_in(wshape, layout, given)
    _check_same_size(op, padding, gy.shape, x.shape, layout)
    padding, trim = A.string_padding(op, padding, wshape, stride, dilation, layout)
    gy = _zeros_front(gy, trim, layout)
    args = A.conv_geometry(op, x.shape, wshape, stride, padding, dilation, groups, dtype,
                           out_shape=gy.shape, layout=layout)
    args.allow_tf32 = A.allow_tf32(allow_tf32)
    if args.empty:
        return bd.wrap(A.zeros(x, wshape, dtype))
    return bd.wrap(dispatch(op, args, backend, algo, bd.on_device, x, gy))


@on_torch_stream
def conv2d_backward_bias(grad_output, *, backend="auto", layout="NCHW"):
    """Gradient of conv2d with respect to its bias: the sum of grad_output over N, P, Q.
    In NHWC grad_output (N, P, Q, K) is the NCHW array (N*P*Q, K, 1, 1), a view: every
    implementation serves it."""
    op = "conv2d_backward_bias"
    layout = A.check_layout(op, layout)
    bd, a, layout = unwrap_layout(op, layout, grad_output=grad_output)
    gy, _ = A.batched(op, "grad_output", a["grad_output"], layout)
    A.check_float(op, "grad_output", gy)
    if layout == "NHWC":
        gy = gy.reshape(-1, gy.shape[3], 1, 1)
    if gy.size == 0:
        return bd.wrap(A.zeros(gy, (gy.shape[1],), gy.dtype))
    return bd.wrap(dispatch(op, tuple(gy.shape), backend, "auto", bd.on_device, gy))


@on_torch_stream
def conv_transpose2d(input, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1,
                     dilation=1, *, algo="auto", backend="auto", allow_tf32=None,
                     layout="NCHW"):
    """Transposed convolution as torch.nn.functional.conv_transpose2d: input (N, Cin, H, W),
    weight (Cin, Cout/groups, R, S). It is conv2d_backward_input with Cin as K, so it runs
    on the input-gradient implementations. output_padding must be smaller than the stride or
    the dilation (torch's rule); where it reaches the stride, the result is cut from the
    uncropped one (padding 0), since no forward conv of that size gives the input's.
    layout="NHWC": input (N, H, W, Cin), weight (Cin, R, S, Cout/groups) -> (N, Ho, Wo,
    Cout); a torch channels_last input selects it by its strides."""
    op = "conv_transpose2d"
    layout = A.check_layout(op, layout)
    bd, a, layout = unwrap_layout(op, layout, input=input, weight=weight, bias=bias)
    x, unbatched = A.batched(op, "input", a["input"], layout)
    w, b = a["weight"], a["bias"]
    A.check_conv_weight(op, w, layout)
    dtype = A.check_same_dtype(op, input=x, weight=w, bias=b)
    args, out_shape, frame = A.transpose_geometry(op, x.shape, w.shape, stride, padding,
                                                  output_padding, groups, dilation, dtype,
                                                  layout)
    A.check_bias(op, b, A.from_layout(out_shape, layout)[1])
    args.allow_tf32 = A.allow_tf32(allow_tf32)
    if args.empty:
        y = _bias_zeros(x, out_shape, dtype, b, layout)
    else:
        y = dispatch("conv2d_backward_input", args, backend, algo, bd.on_device, x, w)
        if frame is not None:
            y = A.full_frame(y, out_shape, frame, xp_of(y), layout)
        if b is not None and layout == "NHWC":
            y = y + b                       # channels last: the bias broadcasts as it is
        else:
            y = _bias_add(bd, y, b, backend)
    return bd.wrap(y[0] if unbatched else y)
