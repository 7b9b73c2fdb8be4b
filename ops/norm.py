"""Batch normalisation as torch.nn.functional.batch_norm, and its backward.

Statistics are per channel c of an (N, C, *) input, over N and the trailing axes (M values
each). In training the batch's mean and biased variance normalise it, and running_mean /
running_var (when given) are updated in place with the unbiased variance:
r = (1 - momentum) r + momentum * batch statistic. In evaluation the running estimates
normalise it. `return_stats=True` also returns (mean, invstd), what batch_norm_backward
takes: the batch's mean and 1 / sqrt(var + eps) in training, the running mean and
1 / sqrt(running_var + eps) in evaluation.

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
from convgpu.arrays import on_torch_stream, unwrap, xp_of
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
register("batch_norm", "numpy", "reference", "convgpu.ops.norm:_np_batch_norm")
register("batch_norm_backward", "numpy", "reference", "convgpu.ops.norm:_np_batch_norm_backward")
register("batch_norm", "numba", "two_pass", "convgpu.kernels.numba.norm:batch_norm")
register("batch_norm_backward", "numba", "two_pass",
         "convgpu.kernels.numba.norm:batch_norm_backward")
# the half types too: FP32 arithmetic, parameters in float32 or the data's type
register("batch_norm", "cuda", "split", "convgpu.kernels.cuda.norm:batch_norm",
         dtypes=DTYPE_NAMES)
register("batch_norm_backward", "cuda", "split", "convgpu.kernels.cuda.norm:batch_norm_backward",
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


def _split(x):
    """(N, C, *) -> (N, C, L) view and L."""
    L = int(np.prod(x.shape[2:], dtype=np.int64))
    return x.reshape(x.shape[0], x.shape[1], L), L


@on_torch_stream
def batch_norm(input, running_mean, running_var, weight=None, bias=None, training=False,
               momentum=0.1, eps=1e-5, *, return_stats=False, backend="auto"):
    """y = (x - mean[c]) / sqrt(var[c] + eps) * weight[c] + bias[c] over an (N, C, *) input,
    torch's semantics (see the module's docstring). running_mean / running_var may be None
    in training only; they are written in place, so they must be C-contiguous. An empty
    batch gives an empty output and leaves the running estimates as they are (its returned
    statistics are mean 0, var 0)."""
    op = "batch_norm"
    given = dict(input=input, running_mean=running_mean, running_var=running_var,
                 weight=weight, bias=bias)
    bd, a = unwrap(op, **given)
    x = a["input"]
    if x.ndim < 2:
        raise ValueError(f"{op}: input must be (N, C, *), at least 2-D, got shape "
                         f"{tuple(x.shape)}")
    A.check_float(op, "input", x)
    sd = A.check_params_dtype(op, x.dtype, running_mean=a["running_mean"],
                              running_var=a["running_var"], weight=a["weight"], bias=a["bias"])
    C = x.shape[1]
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
    x3, L = _split(x)
    args = NormArgs(x.shape[0], C, L, x.dtype.name, training, update, sd.name)
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
                        backend="auto"):
    """The gradients of batch_norm: (grad_input, grad_weight, grad_bias). mean and invstd are
    what batch_norm returned with return_stats=True. grad_weight = sum gy * xhat and
    grad_bias = sum gy over N and the trailing axes (xhat = (x - mean) invstd); in training
    the batch statistics depend on x, so grad_input = w invstd (gy - grad_bias / M -
    xhat grad_weight / M); in evaluation grad_input = w invstd gy."""
    op = "batch_norm_backward"
    bd, a = unwrap(op, grad_output=grad_output, input=input, mean=mean, invstd=invstd,
                   weight=weight)
    gy, x = a["grad_output"], a["input"]
    A.check_same_dtype(op, grad_output=gy, input=x)
    sd = A.check_params_dtype(op, x.dtype, mean=a["mean"], invstd=a["invstd"],
                              weight=a["weight"])
    if x.ndim < 2:
        raise ValueError(f"{op}: input must be (N, C, *), at least 2-D, got shape "
                         f"{tuple(x.shape)}")
    if tuple(gy.shape) != tuple(x.shape):
        raise ValueError(f"{op}: grad_output has shape {tuple(gy.shape)} but input has "
                         f"{tuple(x.shape)}; they must match")
    C = x.shape[1]
    for n in ("mean", "invstd"):
        if a[n] is None:
            raise ValueError(f"{op}: {n} is needed (batch_norm(..., return_stats=True) gives it)")
    _check_channel_vectors(op, C, mean=a["mean"], invstd=a["invstd"], weight=a["weight"])
    training = _check_training(op, training)
    if x.size == 0:
        return bd.wrap((A.zeros(x, x.shape, x.dtype), A.zeros(x, (C,), sd),
                        A.zeros(x, (C,), sd)))
    x3, L = _split(x)
    args = NormArgs(x.shape[0], C, L, x.dtype.name, training, False, sd.name)
    gx3, gw, gb = dispatch(op, args, backend, "auto", bd.on_device, gy.reshape(x3.shape), x3,
                           a["mean"], a["invstd"], a["weight"])
    return bd.wrap((gx3.reshape(x.shape), gw, gb))
