"""Parameter, Module (training and eval modes, parameters, the backward contract) and the
weight initialisations; ALGO_FAMILIES, the conv algorithm families a layer may name."""
from __future__ import annotations

import math
from typing import Dict, List

import numpy as np


class Parameter:
    def __init__(self, data):
        self.data = data
        self.grad = None

    @property
    def shape(self):
        return self.data.shape


def _xp(a):
    from convgpu.arrays import xp_of
    return xp_of(a)


# ----------------------------------------------------------------------------------------
# initialisation


def he_normal(rng, shape, fan_in, dtype):
    """He (Kaiming) normal for ReLU layers: std = sqrt(2 / fan_in)."""
    return (rng.standard_normal(shape) * math.sqrt(2.0 / fan_in)).astype(dtype)


def glorot_uniform(rng, shape, fan_in, fan_out, dtype):
    """Glorot (Xavier) uniform: U(-a, a), a = sqrt(6 / (fan_in + fan_out))."""
    a = math.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-a, a, size=shape).astype(dtype)


class Module:
    training = True
    backend = "auto"

    def parameters(self) -> List[Parameter]:
        return []

    def named_parameters(self, prefix="") -> Dict[str, Parameter]:
        return {}

    def named_buffers(self, prefix=""):
        """State that is not trained but saved and moved with the parameters (a batch
        norm's running estimates): {name: (owner, attribute)}."""
        return {}

    def train(self, mode=True):
        self.training = mode
        return self

    def eval(self):
        return self.train(False)

    def __call__(self, x):
        """module(x) is module.forward(x), as in torch (it caches what backward needs)."""
        return self.forward(x)

    def to(self, xp):
        """Move parameters and buffers to an array module (numpy or cupy)."""
        for p in self.parameters():
            p.data = xp.asarray(p.data)
            p.grad = None
        for owner, attr in self.named_buffers().values():
            setattr(owner, attr, xp.asarray(getattr(owner, attr)))
        return self


class _Weighted(Module):
    """A layer with a weight and an optional bias Parameter."""

    def _init_params(self, w, bias_len):
        self.weight = Parameter(w)
        self.bias = Parameter(np.zeros(bias_len, w.dtype)) if bias_len else None

    def parameters(self):
        return [self.weight] + ([self.bias] if self.bias else [])

    def named_parameters(self, prefix=""):
        d = {prefix + "weight": self.weight}
        if self.bias:
            d[prefix + "bias"] = self.bias
        return d


# a conv algorithm family names one implementation per pass: (forward, input grad, weight grad)
ALGO_FAMILIES = {
    "auto": ("auto", "auto", "auto"),
    "direct": ("direct", "direct", "direct"),
    "direct_tiled": ("direct_tiled", "direct", "direct"),
    "im2col": ("im2col", "col2im", "im2col"),
    "fft": ("fft", "fft", "fft"),
    "implicit_gemm": ("implicit_gemm", "implicit_gemm", "implicit_gemm"),     # cuda only
    # 3x3, stride 1, dilation 1 (padding <= 2 for the input gradient); cuda only
    "winograd": ("winograd", "winograd", "winograd"),
    "winograd_4x4": ("winograd_4x4", "winograd_4x4", "winograd_4x4"),
    # groups = in_channels, one input channel per group; cuda only
    "depthwise": ("depthwise", "depthwise", "depthwise"),
}
