"""Batch normalisation as torch.nn.functional.batch_norm, and its backward.

Statistics are per channel c of an (N, C, *) input, over N and the trailing axes (M values
each). In training the batch's mean and biased variance normalise it, and running_mean /
running_var (when given) are updated in place with the unbiased variance:
r = (1 - momentum) r + momentum * batch statistic. In evaluation the running estimates
normalise it. `return_stats=True` also returns (mean, invstd), what batch_norm_backward
takes: the batch's mean and 1 / sqrt(var + eps) in training, the running mean and
1 / sqrt(running_var + eps) in evaluation.

layout="NHWC" (4-D input (N, H, W, C), channels last): the input is the (N*H*W, C, 1)
array of the same memory, a view, so every implementation serves it without a copy (the
cuda backend reduces it with NHWC kernels, 32 channels a block, norm_nhwc.cu); a torch
channels_last input runs this way by its strides.

Not in torch.nn.functional: batch_norm_backward(grad_output, input, mean, invstd, weight,
training) -> (grad_input, grad_weight, grad_bias), the three gradients of torch's
native_batch_norm_backward.

Half-precision input (float16, bfloat16) takes weight, bias and the running estimates all
in its dtype or all in float32 (torch's mixed form, as AMP keeps them); the returned
statistics and the weight and bias gradients come in that dtype of the parameters (the
input's where none are given), as torch's native_batch_norm.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from convgpu import reference
from convgpu.arrays import on_torch_stream, unwrap_layout, xp_of
from convgpu.core import args as A
from convgpu.ops._registry import DTYPE_NAMES, dispatch, register


@dataclass(frozen=True)
class NormArgs:
    N: int
    C: int
    L: int                  # the product of the trailing sizes (1 for an (N, C) input)
    dtype: str
    training: bool
    update_running: bool    # training with running estimates to update
    stats_dtype: str = ""   # weight, bias, running and batch statistics ("": the input's)
    layout: str = "NCHW"    # NHWC: N is M = N*H*W rows of C channels, L = 1 (the view)

    @property
    def M(self) -> int:
        return self.N * self.L


class NormHyper(NamedTuple):
    momentum: float
    eps: float


# ----------------------------------------------------------------------------------------
# numpy backend: the reference in float64, the running estimates written in place


def _np_batch_norm(a, x3, running_mean, running_var, w, b, h):
    sd = np.dtype(a.stats_dtype or a.dtype)
    if a.training:
        # the statistics in float64 normalise x and update the running estimates; they are
        # rounded once, to the parameters' dtype, only where they are returned
        mean, invstd, var = reference.batch_norm_stats(x3, h.eps, np.float64)
        if a.update_running:
            m = h.momentum
            running_mean[...] = (1 - m) * running_mean.astype(np.float64) + m * mean
            running_var[...] = (1 - m) * running_var.astype(np.float64) + m * var
    else:
        mean = running_mean.astype(np.float64)
        invstd = 1.0 / np.sqrt(running_var.astype(np.float64) + h.eps)
    return reference.batch_norm(x3, mean, invstd, w, b), mean.astype(sd), invstd.astype(sd)


def _np_batch_norm_backward(a, g3, x3, mean, invstd, w):
    return reference.batch_norm_backward(g3, x3, mean, invstd, w, a.training)


# one implementation per backend: dispatch autotunes where several support a call, which
# would update the running estimates once per candidate
# every one serves NHWC as the (N*H*W, C, 1) view; the cuda one with NHWC reductions
_BOTH = ("NCHW", "NHWC")
register("batch_norm", "numpy", "reference", "convgpu.ops.norm:_np_batch_norm", layouts=_BOTH)
register("batch_norm_backward", "numpy", "reference",
         "convgpu.ops.norm:_np_batch_norm_backward", layouts=_BOTH)
register("batch_norm", "numba", "two_pass", "convgpu.kernels.numba.norm:batch_norm",
         layouts=_BOTH)
register("batch_norm_backward", "numba", "two_pass",
         "convgpu.kernels.numba.norm:batch_norm_backward", layouts=_BOTH)
# the half types too (FP32 arithmetic, parameters in float32 or the data's type), either layout
_NN = "convgpu.kernels.cuda.norm_nhwc:"
register("batch_norm", "cuda", "split", _NN + "batch_norm", layouts=_BOTH, dtypes=DTYPE_NAMES)
register("batch_norm_backward", "cuda", "split", _NN + "batch_norm_backward", layouts=_BOTH,
         dtypes=DTYPE_NAMES)


# ----------------------------------------------------------------------------------------
# the ops


def _check_channel_vectors(op, C, **vectors):
    for n, v in vectors.items():
        if v is not None and tuple(v.shape) != (C,):
            raise ValueError(f"{op}: {n} must have shape ({C},) (one value per channel of "
                             f"the input), got {tuple(v.shape)}")


def _check_training(op, training):
    if not isinstance(training, (bool, np.bool_)):
        raise TypeError(f"{op}: training must be a bool, got {training!r}")
    return bool(training)


def _momentum(op, momentum):
    """Any real number, as torch: it extrapolates outside [0, 1] (the running estimates are
    the caller's to keep sensible). momentum=None is nn.BatchNorm2d's cumulative average,
    which needs the module's batch count: F.batch_norm refuses it, so does this op."""
    if isinstance(momentum, (bool, np.bool_)) or not isinstance(momentum, (int, float, np.number)):
        raise TypeError(f"{op}: momentum must be a Python number, got {momentum!r}"
                        + (" (None, the cumulative average, is convgpu.torch.BatchNorm2d's)"
                           if momentum is None else ""))
    return float(momentum)


def _split(x, layout="NCHW"):
    """(N, C, *) -> (N, C, L) view and L; NHWC (N, H, W, C) -> the (N*H*W, C, 1) view, 1."""
    if layout == "NHWC":
        return x.reshape(-1, x.shape[3], 1), 1
    L = int(np.prod(x.shape[2:], dtype=np.int64))
    return x.reshape(x.shape[0], x.shape[1], L), L


def _input(op, x, layout):
    """The input's channel count, after the layout's shape check."""
    if layout == "NHWC":
        A.check_ndim(op, "input", x, (4,), "4-D (N, H, W, C) with layout='NHWC'")
        return x.shape[3]
    if x.ndim < 2:
        raise ValueError(f"{op}: input must be (N, C, *), at least 2-D, got shape "
                         f"{tuple(x.shape)}")
    return x.shape[1]


@on_torch_stream
def batch_norm(input, running_mean, running_var, weight=None, bias=None, training=False,
               momentum=0.1, eps=1e-5, *, return_stats=False, backend="auto", layout="NCHW"):
    """y = (x - mean[c]) / sqrt(var[c] + eps) * weight[c] + bias[c] over an (N, C, *) input,
    torch's semantics (see the module's docstring). running_mean / running_var may be None
    in training only; they are written in place, so they must be C-contiguous. An empty
    batch gives an empty output and leaves the running estimates as they are (its returned
    statistics are mean 0, var 0). layout="NHWC": a 4-D (N, H, W, C) input (see the
    module)."""
    op = "batch_norm"
    layout = A.check_layout(op, layout)
    given = dict(input=input, running_mean=running_mean, running_var=running_var,
                 weight=weight, bias=bias)
    bd, a, layout = unwrap_layout(op, layout, **given)
    x = a["input"]
    C = _input(op, x, layout)
    A.check_float(op, "input", x)
    sd = A.check_params_dtype(op, x.dtype, running_mean=a["running_mean"],
                              running_var=a["running_var"], weight=a["weight"], bias=a["bias"])
    rm, rv = a["running_mean"], a["running_var"]
    _check_channel_vectors(op, C, running_mean=rm, running_var=rv, weight=a["weight"],
                           bias=a["bias"])
    training = _check_training(op, training)
    if (rm is None) != (rv is None):
        raise ValueError(f"{op}: give both running_mean and running_var, or neither")
    if rm is None and not training:
        raise ValueError(f"{op}: evaluation (training=False) normalises with running_mean and "
                         "running_var; they are None")
    h = NormHyper(_momentum(op, momentum),
                  A.number(op, "eps", eps, 0.0, lo_open=True))
    update = training and rm is not None
    if update:
        for n in ("running_mean", "running_var"):
            A.check_written_in_place(op, n, a[n], given[n])
    x3, L = _split(x, layout)
    args = NormArgs(x3.shape[0], C, L, x.dtype.name, training, update, sd.name, layout)
    if training and args.M == 1:
        raise ValueError(f"{op}: training needs more than one value per channel (input shape "
                         f"{tuple(x.shape)}): the batch variance of one value is undefined")
    if x.size == 0:                                   # no images or no channels
        y = A.zeros(x, x.shape, x.dtype)
        if training:
            mean = A.zeros(x, (C,), sd)
            invstd = xp_of(x).full((C,), 1.0 / np.sqrt(h.eps), sd)
        else:
            mean = rm.copy()
            invstd = (1.0 / xp_of(x).sqrt(rv.astype(np.float64) + h.eps)).astype(sd)
    else:
        y3, mean, invstd = dispatch(op, args, backend, "auto", bd.on_device, x3, rm, rv,
                                    a["weight"], a["bias"], h)
        y = y3.reshape(x.shape)
    return bd.wrap((y, mean, invstd) if return_stats else y)


@on_torch_stream
def batch_norm_backward(grad_output, input, mean, invstd, weight=None, training=True, *,
                        backend="auto", layout="NCHW"):
    """The gradients of batch_norm: (grad_input, grad_weight, grad_bias). mean and invstd are
    what batch_norm returned with return_stats=True. grad_weight = sum gy * xhat and
    grad_bias = sum gy over N and the trailing axes (xhat = (x - mean) invstd); in training
    the batch statistics depend on x, so grad_input = w invstd (gy - grad_bias / M -
    xhat grad_weight / M); in evaluation grad_input = w invstd gy. layout as in
    batch_norm."""
    op = "batch_norm_backward"
    layout = A.check_layout(op, layout)
    bd, a, layout = unwrap_layout(op, layout, grad_output=grad_output, input=input, mean=mean,
                                  invstd=invstd, weight=weight)
    gy, x = a["grad_output"], a["input"]
    A.check_same_dtype(op, grad_output=gy, input=x)
    sd = A.check_params_dtype(op, x.dtype, mean=a["mean"], invstd=a["invstd"],
                              weight=a["weight"])
    C = _input(op, x, layout)
    if tuple(gy.shape) != tuple(x.shape):
        raise ValueError(f"{op}: grad_output has shape {tuple(gy.shape)} but input has "
                         f"{tuple(x.shape)}; they must match")
    for n in ("mean", "invstd"):
        if a[n] is None:
            raise ValueError(f"{op}: {n} is needed (batch_norm(..., return_stats=True) gives it)")
    _check_channel_vectors(op, C, mean=a["mean"], invstd=a["invstd"], weight=a["weight"])
    training = _check_training(op, training)
    if x.size == 0:
        return bd.wrap((A.zeros(x, x.shape, x.dtype), A.zeros(x, (C,), sd),
                        A.zeros(x, (C,), sd)))
    x3, L = _split(x, layout)
    args = NormArgs(x3.shape[0], C, L, x.dtype.name, training, False, sd.name, layout)
    gx3, gw, gb = dispatch(op, args, backend, "auto", bd.on_device, gy.reshape(x3.shape), x3,
                           a["mean"], a["invstd"], a["weight"])
    return bd.wrap((gx3.reshape(x.shape), gw, gb))
