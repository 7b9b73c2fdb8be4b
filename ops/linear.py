"""Fully connected layer: linear and its backward, through the GEMM kernels on a device."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from convgpu import reference
from convgpu.arrays import on_torch_stream, unwrap
from convgpu.core import args as A
from convgpu.ops._registry import DTYPE_NAMES, dispatch, register


def _np_linear(a, x, w, b):
    return reference.linear(x, w, b)


def _np_linear_backward(a, gy, x, w):
    return reference.linear_backward(gy, x, w)


register("linear", "numpy", "reference", "convgpu.ops.linear:_np_linear")
register("linear_backward", "numpy", "reference", "convgpu.ops.linear:_np_linear_backward")
register("linear", "numba", "gemm", "convgpu.kernels.numba.gemm:linear")
register("linear_backward", "numba", "gemm", "convgpu.kernels.numba.gemm:linear_backward")
# float16 / bfloat16 inputs run gemm.cu's tensor-core kernel (gemm_mma16)
register("linear", "cuda", "gemm", "convgpu.kernels.cuda.gemm:linear", dtypes=DTYPE_NAMES)
register("linear", "cuda", "gemm_tf32", "convgpu.kernels.cuda.gemm:linear_tf32",
         supports="convgpu.kernels.cuda.launch:tf32_supports")
register("linear_backward", "cuda", "gemm", "convgpu.kernels.cuda.gemm:linear_backward",
         dtypes=DTYPE_NAMES)


@dataclass
class LinearArgs:
    x_shape: tuple
    w_shape: tuple
    dtype: np.dtype
    allow_tf32: bool = False


@on_torch_stream
def linear(input, weight, bias=None, *, algo="auto", backend="auto", allow_tf32=None):
    """y = x w^T + b as torch.nn.functional.linear: x (*, in), w (out, in), b (out,).
    allow_tf32 as in conv2d."""
    op = "linear"
    bd, a = unwrap(op, input=input, weight=weight, bias=bias)
    x, w, b = a["input"], a["weight"], a["bias"]
    A.check_same_dtype(op, input=x, weight=w, bias=b)
    A.check_linear(op, x, w, b)
    args = LinearArgs(tuple(x.shape), tuple(w.shape), x.dtype, A.allow_tf32(allow_tf32))
    if x.size == 0 or w.size == 0:         # no rows, no outputs, or an empty sum (in = 0)
        y = A.zeros(x, tuple(x.shape[:-1]) + (w.shape[0],), x.dtype)
        if b is not None and y.size:
            y += b
        return bd.wrap(y)
    return bd.wrap(dispatch(op, args, backend, algo, bd.on_device, x, w, b))


@on_torch_stream
def linear_backward(grad_output, input, weight, *, backend="auto"):
    """Returns (grad_input, grad_weight, grad_bias) of linear."""
    op = "linear_backward"
    bd, a = unwrap(op, grad_output=grad_output, input=input, weight=weight)
    gy, x, w = a["grad_output"], a["input"], a["weight"]
    A.check_same_dtype(op, grad_output=gy, input=x, weight=w)
    A.check_linear(op, x, w)
    want = tuple(x.shape[:-1]) + (w.shape[0],)
    if tuple(gy.shape) != want:
        raise ValueError(f"{op}: grad_output has shape {tuple(gy.shape)} but linear of input "
                         f"{tuple(x.shape)} by weight {tuple(w.shape)} gives {want}")
    if x.size == 0 or w.size == 0:
        gb = gy.reshape(-1, w.shape[0]).sum(axis=0) if gy.size else A.zeros(gy, (w.shape[0],),
                                                                            gy.dtype)
        return bd.wrap((A.zeros(x, tuple(x.shape), x.dtype),
                        A.zeros(w, tuple(w.shape), w.dtype), gb))
    return bd.wrap(tuple(dispatch(op, (tuple(x.shape), tuple(w.shape)), backend, "auto",
                                  bd.on_device, gy, x, w)))
