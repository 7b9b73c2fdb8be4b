"""Sequential and Residual, the walk over a network's modules, and evaluation mode."""
from __future__ import annotations

import contextlib
from typing import Dict, Iterator

import numpy as np

from convgpu.nn.layers import Conv2d
from convgpu.nn.module import Module, _xp


class Sequential(Module):
    def __init__(self, *layers):
        self.layers = list(layers)

    def parameters(self):
        return [p for layer in self.layers for p in layer.parameters()]

    def named_parameters(self, prefix=""):
        d = {}
        for i, layer in enumerate(self.layers):
            d.update(layer.named_parameters(f"{prefix}{i}."))
        return d

    def named_buffers(self, prefix=""):
        d = {}
        for i, layer in enumerate(self.layers):
            d.update(layer.named_buffers(f"{prefix}{i}."))
        return d

    def train(self, mode=True):
        self.training = mode
        for layer in self.layers:
            layer.train(mode)
        return self

    def forward(self, x):
        for layer in self.layers:
            x = layer.forward(x)
        return x

    def backward(self, gy, need_input_grad=True):
        """Backpropagate gy; returns the input gradient, or None with need_input_grad=False
        (training needs no gradient for the images: the first conv skips that pass)."""
        for i in range(len(self.layers) - 1, -1, -1):
            layer = self.layers[i]
            if i == 0 and not need_input_grad and isinstance(layer, Conv2d):
                return layer.backward(gy, need_input_grad=False)
            gy = layer.backward(gy)
        return gy

    def state_dict(self) -> Dict[str, np.ndarray]:
        """Parameters and buffers (running estimates) as host arrays, by torch-style name."""
        from convgpu.arrays import to_host
        d = {k: to_host(p.data) for k, p in self.named_parameters().items()}
        d.update({k: to_host(getattr(o, a)).copy() for k, (o, a) in self.named_buffers().items()})
        return d

    def load_state_dict(self, state: Dict[str, np.ndarray]):
        params, buffers = self.named_parameters(), self.named_buffers()
        names = set(params) | set(buffers)
        if names != set(state):
            raise ValueError(f"load_state_dict: keys differ: {sorted(names ^ set(state))}")
        current = {k: p.data for k, p in params.items()}
        current.update({k: getattr(o, a) for k, (o, a) in buffers.items()})
        for k, now in current.items():
            if tuple(state[k].shape) != tuple(now.shape):
                raise ValueError(f"load_state_dict: {k} has shape {state[k].shape}, "
                                 f"expected {now.shape}")
        for k, p in params.items():
            p.data = _xp(p.data).asarray(state[k], dtype=p.data.dtype)
        for k, (o, a) in buffers.items():       # a copy: the running estimates change in place
            now = getattr(o, a)
            setattr(o, a, _xp(now).array(state[k], dtype=now.dtype))


class Residual(Module):
    """y = body(x) + shortcut(x), a ResNet block (He et al. 2016) without its final ReLU:
    shortcut None is the identity, else a layer that matches the body's output shape (a
    strided 1x1 Conv2d and a BatchNorm2d, say). The backward sends gy through both branches
    and adds their input gradients."""

    def __init__(self, body, shortcut=None):
        self.body, self.shortcut = body, shortcut

    def _branches(self):
        return [("body.", self.body)] + ([("shortcut.", self.shortcut)] if self.shortcut else [])

    def parameters(self):
        return [p for _, m in self._branches() for p in m.parameters()]

    def named_parameters(self, prefix=""):
        d = {}
        for name, m in self._branches():
            d.update(m.named_parameters(prefix + name))
        return d

    def named_buffers(self, prefix=""):
        d = {}
        for name, m in self._branches():
            d.update(m.named_buffers(prefix + name))
        return d

    def train(self, mode=True):
        self.training = mode
        for _, m in self._branches():
            m.train(mode)
        return self

    def forward(self, x):
        return self.body.forward(x) + (self.shortcut.forward(x) if self.shortcut else x)

    def backward(self, gy):
        gx = self.body.backward(gy)
        return gx + (self.shortcut.backward(gy) if self.shortcut else gy)


def modules(root: Module, kind=Module) -> Iterator[Module]:
    """root and every module inside it (Sequential layers, Residual branches), depth first,
    that is an instance of `kind`."""
    if isinstance(root, kind):
        yield root
    children = root.layers if isinstance(root, Sequential) else \
        [m for _, m in root._branches()] if isinstance(root, Residual) else []
    for child in children:
        yield from modules(child, kind)


@contextlib.contextmanager
def eval_mode(model: Module):
    """Inside: every module of `model` in eval mode; after: each back in its own mode."""
    before = [(m, m.training) for m in modules(model)]
    model.eval()
    try:
        yield model
    finally:
        for m, mode in before:
            m.training = mode


def evaluate(model: Module, x):
    """model.forward(x) in eval mode (eval_mode): the forward for testing and predicting."""
    with eval_mode(model):
        return model.forward(x)
