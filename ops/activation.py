"""Elementwise ops: relu and its backward, bias_add."""
from __future__ import annotations

from convgpu import reference
from convgpu.arrays import on_torch_stream, unwrap
from convgpu.core import args as A
from convgpu.ops._registry import DTYPE_NAMES, WITH_FLOAT16, dispatch, register


def _np_relu(a, x):
    return reference.relu(x)


def _np_relu_backward(a, gy, x):
    return reference.relu_backward(gy, x)


def _np_bias_add(a, x, b):
    return reference.bias_add(x, b)


register("relu", "numpy", "reference", "convgpu.ops.activation:_np_relu")
register("relu_backward", "numpy", "reference", "convgpu.ops.activation:_np_relu_backward")
register("bias_add", "numpy", "reference", "convgpu.ops.activation:_np_bias_add")
_K = "convgpu.kernels.numba.elementwise:"
register("relu", "numba", "direct", _K + "relu", dtypes=WITH_FLOAT16)
register("relu_backward", "numba", "direct", _K + "relu_backward", dtypes=WITH_FLOAT16)
register("bias_add", "numba", "direct", _K + "bias_add", dtypes=WITH_FLOAT16)
_EW = "convgpu.kernels.cuda.elementwise:"
# the CUDA C kernels serve the half types too (half.cuh: FP32 arithmetic, one rounding)
register("relu", "cuda", "direct", _EW + "relu", dtypes=DTYPE_NAMES)
register("relu_backward", "cuda", "direct", _EW + "relu_backward", dtypes=DTYPE_NAMES)
register("bias_add", "cuda", "direct", _EW + "bias_add", dtypes=DTYPE_NAMES)


@on_torch_stream
def relu(input, *, backend="auto"):
    """max(x, 0); NaN stays NaN (as torch)."""
    op = "relu"
    bd, a = unwrap(op, input=input)
    x = a["input"]
    A.check_float(op, "input", x)
    return bd.wrap(dispatch(op, tuple(x.shape), backend, "auto", bd.on_device, x))


@on_torch_stream
def relu_backward(grad_output, input, *, backend="auto"):
    """grad_output where input > 0, else 0."""
    op = "relu_backward"
    bd, a = unwrap(op, grad_output=grad_output, input=input)
    gy, x = a["grad_output"], a["input"]
    A.check_same_dtype(op, grad_output=gy, input=x)
    if gy.shape != x.shape:
        raise ValueError(f"{op}: grad_output has shape {tuple(gy.shape)} but input has "
                         f"shape {tuple(x.shape)}")
    return bd.wrap(dispatch(op, tuple(x.shape), backend, "auto", bd.on_device, gy, x))


def _check_bias_add(op, x, b):
    A.check_same_dtype(op, input=x, bias=b)
    if x.ndim < 2:
        raise ValueError(f"{op}: input must be at least 2-D (N, C, ...), got shape {tuple(x.shape)}")
    if b.ndim != 1 or b.shape[0] != x.shape[1]:
        raise ValueError(f"{op}: bias must be 1-D of length {x.shape[1]} (the channels of input "
                         f"{tuple(x.shape)}), got shape {tuple(b.shape)}")


@on_torch_stream
def bias_add(input, bias, *, backend="auto"):
    """x + b broadcast over channel axis 1: (N, C, ...) + (C,)."""
    op = "bias_add"
    bd, a = unwrap(op, input=input, bias=bias)
    x, b = a["input"], a["bias"]
    _check_bias_add(op, x, b)
    return bd.wrap(dispatch(op, tuple(x.shape), backend, "auto", bd.on_device, x, b))


def bias_add_native(x, b, backend, on_device):
    """bias_add on already unwrapped, validated arrays (for ops that end with a bias)."""
    _check_bias_add("bias_add", x, b)
    return dispatch("bias_add", tuple(x.shape), backend, "auto", on_device, x, b)
