"""Optimiser steps as ops: adam_step and sgd_step update the parameter and the optimiser's
state in place, one fused pass per parameter on a device (kernels/cuda/elementwise.cu: adam_step,
sgd_step) instead of about a dozen elementwise array operations, each its own launch.

Not in torch.nn.functional; the names follow torch.optim (Adam, SGD with momentum, L2
weight decay added to the gradient). The state has the parameter's dtype, half types
included, as torch.optim keeps it (no float32 copy). The step's numbers (lr, betas, the
step count, ...) are plain Python numbers, not part of the implementation choice.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from convgpu import reference
from convgpu.arrays import on_torch_stream, unwrap
from convgpu.core import args as A
from convgpu.ops._registry import DTYPE_NAMES, WITH_FLOAT16, dispatch, register


class AdamHyper(NamedTuple):
    lr: float
    beta1: float
    beta2: float
    eps: float
    weight_decay: float
    step: int

    def kernel_scalars(self, dtype):
        """The fused kernels' scalar arguments (numba and CUDA C alike), in the parameters'
        dtype: lr, b1, 1 - b1, b2, 1 - b2, eps, wd and the bias corrections 1 - b^step."""
        t = np.dtype(dtype).type
        return tuple(t(v) for v in (self.lr, self.beta1, 1 - self.beta1, self.beta2,
                                    1 - self.beta2, self.eps, self.weight_decay,
                                    1 - self.beta1 ** self.step, 1 - self.beta2 ** self.step))


class SgdHyper(NamedTuple):
    lr: float
    momentum: float
    weight_decay: float

    def kernel_scalars(self, dtype):
        """The fused kernels' scalars in the parameters' dtype: lr, momentum, wd."""
        t = np.dtype(dtype).type
        return t(self.lr), t(self.momentum), t(self.weight_decay)


def _np_adam_step(a, p, g, m, v, h):
    p[...], m[...], v[...] = reference.adam_step(p, g, m, v, h.step, h.lr, h.beta1, h.beta2,
                                                 h.eps, h.weight_decay)


def _np_sgd_step(a, p, g, buf, h):
    new_p, new_buf = reference.sgd_step(p, g, buf, h.lr, h.momentum, h.weight_decay)
    p[...] = new_p
    if buf is not None:
        buf[...] = new_buf


# one implementation per backend: dispatch autotunes (times each candidate on the call's
# own arrays) where several support a call, which would apply an in-place step again
register("adam_step", "numpy", "reference", "convgpu.ops.optim:_np_adam_step")
register("sgd_step", "numpy", "reference", "convgpu.ops.optim:_np_sgd_step")
register("adam_step", "numba", "fused", "convgpu.kernels.numba.elementwise:adam_step",
         dtypes=WITH_FLOAT16)
register("sgd_step", "numba", "fused", "convgpu.kernels.numba.elementwise:sgd_step",
         dtypes=WITH_FLOAT16)
register("adam_step", "cuda", "fused", "convgpu.kernels.cuda.elementwise:adam_step",
         dtypes=DTYPE_NAMES)
register("sgd_step", "cuda", "fused", "convgpu.kernels.cuda.elementwise:sgd_step",
         dtypes=DTYPE_NAMES)


def _check_state(op, arrays, originals):
    """Same dtype (float), same shape; what is written in place C-contiguous (checked on
    the caller's arrays) and writable."""
    named = {n: a for n, a in arrays.items() if a is not None}
    A.check_same_dtype(op, **named)
    first, p = next(iter(named.items()))
    for n, a in named.items():
        if a.shape != p.shape:
            raise ValueError(f"{op}: {n} has shape {tuple(a.shape)} but {first} has shape "
                             f"{tuple(p.shape)}")
    for n, a in named.items():
        if n != "grad":
            A.check_written_in_place(op, n, a, originals[n])


@on_torch_stream
def adam_step(param, grad, exp_avg, exp_avg_sq, step, *, lr=1e-3, beta1=0.9, beta2=0.999,
              eps=1e-8, weight_decay=0.0, backend="auto"):
    """One Adam step in place: exp_avg = beta1 * exp_avg + (1 - beta1) * g,
    exp_avg_sq = beta2 * exp_avg_sq + (1 - beta2) * g^2 (g = grad + weight_decay * param),
    param -= lr * (exp_avg / (1 - beta1^step)) / (sqrt(exp_avg_sq / (1 - beta2^step)) + eps).
    step counts from 1. Returns None."""
    op = "adam_step"
    given = dict(param=param, grad=grad, exp_avg=exp_avg, exp_avg_sq=exp_avg_sq)
    bd, a = unwrap(op, **given)
    _check_state(op, a, given)
    if isinstance(step, bool) or not isinstance(step, int) or step < 1:
        raise ValueError(f"{op}: step must be an int >= 1 (the steps taken, this one "
                         f"included), got {step!r}")
    h = AdamHyper(A.number(op, "lr", lr, 0.0), A.number(op, "beta1", beta1, 0.0, 1.0, hi_open=True),
                  A.number(op, "beta2", beta2, 0.0, 1.0, hi_open=True),
                  A.number(op, "eps", eps, 0.0, lo_open=True),
                  A.number(op, "weight_decay", weight_decay, 0.0), step)
    p = a["param"]
    dispatch(op, (tuple(p.shape), p.dtype.str), backend, "auto", bd.on_device, p, a["grad"],
             a["exp_avg"], a["exp_avg_sq"], h)


@on_torch_stream
def sgd_step(param, grad, momentum_buffer=None, *, lr, momentum=0.0, weight_decay=0.0,
             backend="auto"):
    """One SGD step in place, torch's form: g = grad + weight_decay * param; with momentum,
    momentum_buffer = momentum * momentum_buffer + g (pass it zeroed before the first step)
    and g = momentum_buffer; param -= lr * g. Returns None."""
    op = "sgd_step"
    h = SgdHyper(A.number(op, "lr", lr, 0.0), A.number(op, "momentum", momentum, 0.0),
                 A.number(op, "weight_decay", weight_decay, 0.0))
    if h.momentum and momentum_buffer is None:
        raise ValueError(f"{op}: momentum {momentum} needs a momentum_buffer (zeros before "
                         "the first step)")
    given = dict(param=param, grad=grad, momentum_buffer=momentum_buffer if h.momentum else None)
    bd, a = unwrap(op, **given)
    _check_state(op, a, given)
    p = a["param"]
    dispatch(op, (tuple(p.shape), p.dtype.str), backend, "auto", bd.on_device, p, a["grad"],
             a["momentum_buffer"], h)
