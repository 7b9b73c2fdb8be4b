"""SGD (momentum, weight decay) and Adam over a network's parameters, one fused op per
parameter."""
from __future__ import annotations

from typing import Iterable

import convgpu as F
from convgpu.nn.module import Parameter, _xp


class SGD:
    """SGD with momentum (torch's form: v = mu*v + g; p -= lr*v) and L2 weight decay: one
    fused in-place sgd_step per parameter."""

    def __init__(self, params: Iterable[Parameter], lr=0.01, momentum=0.0, weight_decay=0.0):
        self.params = list(params)
        self.lr, self.momentum, self.weight_decay = lr, momentum, weight_decay
        self.velocity = [None] * len(self.params)

    def step(self):
        for i, p in enumerate(self.params):
            if self.momentum and self.velocity[i] is None:
                self.velocity[i] = _xp(p.data).zeros_like(p.data)    # buf = g on step 1
            F.sgd_step(p.data, p.grad, self.velocity[i], lr=self.lr, momentum=self.momentum,
                       weight_decay=self.weight_decay)


class Adam:
    """Adam (Kingma and Ba), bias-corrected, with L2 weight decay added to the gradient: one
    fused in-place adam_step per parameter."""

    def __init__(self, params: Iterable[Parameter], lr=1e-3, betas=(0.9, 0.999), eps=1e-8,
                 weight_decay=0.0):
        self.params = list(params)
        self.lr, self.betas, self.eps, self.weight_decay = lr, betas, eps, weight_decay
        self.m = [None] * len(self.params)
        self.v = [None] * len(self.params)
        self.t = 0

    def step(self):
        self.t += 1
        b1, b2 = self.betas
        for i, p in enumerate(self.params):
            if self.m[i] is None:
                xp = _xp(p.data)
                self.m[i], self.v[i] = xp.zeros_like(p.data), xp.zeros_like(p.data)
            F.adam_step(p.data, p.grad, self.m[i], self.v[i], self.t, lr=self.lr, beta1=b1,
                        beta2=b2, eps=self.eps, weight_decay=self.weight_decay)
