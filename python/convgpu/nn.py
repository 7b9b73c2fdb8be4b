"""Layers, losses and optimisers over the op API.

Every layer's forward and backward call only convgpu ops (conv2d and its backward passes,
max_pool2d with return_indices and max_pool2d_backward through the tracked argmax, ...),
so a network runs on whichever backend its arrays and the `backend` keyword select: NumPy
on any CPU, the Numba or CUDA C kernels on a GPU.

    net = Sequential(Conv2d(1, 6, 5, padding=2), ReLU(), MaxPool2d(2), Flatten(), Linear(6*4*4, 10))
    logits = net(x)                               # net.forward(x): caches what backward needs
    loss = softmax_cross_entropy(logits, labels)
    net.backward(softmax_cross_entropy_backward(logits, labels))
    opt.step()                                    # SGD or Adam over net.parameters()

A Parameter holds `.data` and `.grad` (same array type). Backward *overwrites* grads.
Modules start in training mode; `evaluate(net, x)` (or `with eval_mode(net):`) runs them in
eval mode (dropout off, batch norms on their running estimates) and restores the mode
after, so a test pass can't leave a network in the wrong mode or forget to switch.
"""
from __future__ import annotations

import contextlib
import math
from typing import Dict, Iterable, Iterator, List, Optional

import numpy as np

import convgpu as F


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


# ----------------------------------------------------------------------------------------
# layers


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


class Conv2d(_Weighted):
    """2-D convolution layer. `algo` names a family (ALGO_FAMILIES): the forward, input-
    gradient and weight-gradient implementations it uses, e.g. "im2col" = im2col + GEMM
    forward, GEMM + col2im input gradient, im2col + GEMM weight gradient."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
                 groups=1, bias=True, *, init="he", algo="auto", backend="auto", rng=None,
                 dtype=np.float32):
        rng = rng if rng is not None else np.random.default_rng(0)
        k = (kernel_size, kernel_size) if isinstance(kernel_size, int) else tuple(kernel_size)
        shape = (out_channels, in_channels // groups) + k
        fan_in = shape[1] * k[0] * k[1]
        fan_out = out_channels * k[0] * k[1] // groups
        w = he_normal(rng, shape, fan_in, dtype) if init == "he" else \
            glorot_uniform(rng, shape, fan_in, fan_out, dtype)
        self._init_params(w, out_channels if bias else 0)
        self.kw = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
        if algo not in ALGO_FAMILIES:
            raise ValueError(f"Conv2d: algo must be one of {', '.join(ALGO_FAMILIES)}, got {algo!r}")
        self.algo, self.backend = algo, backend
        self.algo_fwd, self.algo_input, self.algo_weight = ALGO_FAMILIES[algo]

    def forward(self, x):
        self.x = x
        return F.conv2d(x, self.weight.data, self.bias.data if self.bias else None, **self.kw,
                        algo=self.algo_fwd, backend=self.backend)

    def backward(self, gy, need_input_grad=True):
        self.weight.grad = F.conv2d_backward_weight(self.x, gy, self.weight.shape, **self.kw,
                                                    algo=self.algo_weight, backend=self.backend)
        if self.bias:
            self.bias.grad = F.conv2d_backward_bias(gy, backend=self.backend)
        if not need_input_grad:
            return None
        return F.conv2d_backward_input(gy, self.weight.data, self.x.shape, **self.kw,
                                       algo=self.algo_input, backend=self.backend)


class ConvTranspose2d(_Weighted):
    """2-D transposed convolution layer (torch.nn.ConvTranspose2d): weight (in, out/groups,
    R, S). It is the adjoint of a convolution by the same weight, so its backward is that
    convolution's forward (input gradient) and weight gradient with input and output
    gradient exchanged. `algo` names a family as for Conv2d: its input-gradient
    implementation runs the forward here, its forward the input gradient."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0,
                 output_padding=0, groups=1, bias=True, dilation=1, *, init="he",
                 algo="auto", backend="auto", rng=None, dtype=np.float32):
        rng = rng if rng is not None else np.random.default_rng(0)
        k = (kernel_size, kernel_size) if isinstance(kernel_size, int) else tuple(kernel_size)
        shape = (in_channels, out_channels // groups) + k
        fan_in = in_channels * k[0] * k[1] // groups
        fan_out = out_channels * k[0] * k[1] // groups
        w = he_normal(rng, shape, fan_in, dtype) if init == "he" else \
            glorot_uniform(rng, shape, fan_in, fan_out, dtype)
        self._init_params(w, out_channels if bias else 0)
        self.kw = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
        self.output_padding = output_padding
        if algo not in ALGO_FAMILIES:
            raise ValueError(f"ConvTranspose2d: algo must be one of {', '.join(ALGO_FAMILIES)}, "
                             f"got {algo!r}")
        self.algo, self.backend = algo, backend
        self.algo_conv, self.algo_transpose, self.algo_weight = ALGO_FAMILIES[algo]

    def forward(self, x):
        self.x = x
        return F.conv_transpose2d(x, self.weight.data, self.bias.data if self.bias else None,
                                  output_padding=self.output_padding, **self.kw,
                                  algo=self.algo_transpose, backend=self.backend)

    def backward(self, gy):
        # y = A^T x for the convolution A by this weight: dL/dx = A gy, and dL/dw is the
        # convolution's weight gradient with gy as its input and x as its output gradient
        self.weight.grad = F.conv2d_backward_weight(gy, self.x, self.weight.shape, **self.kw,
                                                    algo=self.algo_weight, backend=self.backend)
        if self.bias:
            self.bias.grad = F.conv2d_backward_bias(gy, backend=self.backend)
        return F.conv2d(gy, self.weight.data, **self.kw, algo=self.algo_conv,
                        backend=self.backend)


class Linear(_Weighted):
    def __init__(self, in_features, out_features, bias=True, *, init="glorot", backend="auto",
                 rng=None, dtype=np.float32):
        rng = rng if rng is not None else np.random.default_rng(0)
        shape = (out_features, in_features)
        w = he_normal(rng, shape, in_features, dtype) if init == "he" else \
            glorot_uniform(rng, shape, in_features, out_features, dtype)
        self._init_params(w, out_features if bias else 0)
        self.backend = backend

    def forward(self, x):
        self.x = x
        return F.linear(x, self.weight.data, self.bias.data if self.bias else None,
                        backend=self.backend)

    def backward(self, gy):
        gx, gw, gb = F.linear_backward(gy, self.x, self.weight.data, backend=self.backend)
        self.weight.grad = gw
        if self.bias:
            self.bias.grad = gb
        return gx


class ReLU(Module):
    def __init__(self, backend="auto"):
        self.backend = backend

    def forward(self, x):
        self.x = x
        return F.relu(x, backend=self.backend)

    def backward(self, gy):
        return F.relu_backward(gy, self.x, backend=self.backend)


class MaxPool2d(Module):
    """Max pooling whose backward routes gradients through the argmax tracked in forward."""

    def __init__(self, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
                 backend="auto"):
        self.kw = dict(kernel_size=kernel_size, stride=stride, padding=padding,
                       dilation=dilation, ceil_mode=ceil_mode)
        self.backend = backend

    def forward(self, x):
        self.shape = x.shape
        y, self.indices = F.max_pool2d(x, **self.kw, return_indices=True, backend=self.backend)
        return y

    def backward(self, gy):
        # the indices are this layer's own forward's: no validation pass (nor its wait)
        return F.max_pool2d_backward(gy, self.indices, self.shape, **self.kw, backend=self.backend,
                                     check_indices=False)


class AvgPool2d(Module):
    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode=False,
                 count_include_pad=True, backend="auto"):
        self.kw = dict(kernel_size=kernel_size, stride=stride, padding=padding,
                       ceil_mode=ceil_mode, count_include_pad=count_include_pad)
        self.backend = backend

    def forward(self, x):
        self.shape = x.shape
        return F.avg_pool2d(x, **self.kw, backend=self.backend)

    def backward(self, gy):
        return F.avg_pool2d_backward(gy, self.shape, **self.kw, backend=self.backend)


class GlobalAvgPool2d(Module):
    """Mean over each plane: (N, C, H, W) -> (N, C), the head of ResNet-style networks."""

    def __init__(self, backend="auto"):
        self.backend = backend

    def forward(self, x):
        self.shape = x.shape
        return F.global_avg_pool2d(x, backend=self.backend)

    def backward(self, gy):
        return F.global_avg_pool2d_backward(gy, self.shape, backend=self.backend)


class AdaptiveAvgPool2d(Module):
    """Average pooling to a fixed output size (torch's AdaptiveAvgPool2d): an int or a pair,
    None keeping the input's size."""

    def __init__(self, output_size, backend="auto"):
        self.output_size, self.backend = output_size, backend

    def forward(self, x):
        self.shape = x.shape
        return F.adaptive_avg_pool2d(x, self.output_size, backend=self.backend)

    def backward(self, gy):
        return F.adaptive_avg_pool2d_backward(gy, self.shape, backend=self.backend)


class _BatchNorm(Module):
    """Batch normalisation over the channels of an (N, C, *) input (torch's BatchNorm1d /
    BatchNorm2d): in training the batch's statistics normalise it and the running
    estimates move towards them (momentum); in eval mode the running estimates normalise
    it. weight (ones) and bias (zeros) are Parameters when affine; running_mean (zeros)
    and running_var (ones) are buffers when track_running_stats, else the batch's
    statistics are used in both modes."""

    DIMS: tuple = ()

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True,
                 track_running_stats=True, *, backend="auto", dtype=np.float32):
        C = num_features
        self.eps, self.momentum, self.backend = eps, momentum, backend
        self.weight = Parameter(np.ones(C, dtype)) if affine else None
        self.bias = Parameter(np.zeros(C, dtype)) if affine else None
        self.running_mean = np.zeros(C, dtype) if track_running_stats else None
        self.running_var = np.ones(C, dtype) if track_running_stats else None

    def parameters(self):
        return [self.weight, self.bias] if self.weight is not None else []

    def named_parameters(self, prefix=""):
        return ({prefix + "weight": self.weight, prefix + "bias": self.bias}
                if self.weight is not None else {})

    def named_buffers(self, prefix=""):
        if self.running_mean is None:
            return {}
        return {prefix + "running_mean": (self, "running_mean"),
                prefix + "running_var": (self, "running_var")}

    def forward(self, x):
        if x.ndim not in self.DIMS:
            raise ValueError(f"{type(self).__name__}: input must be "
                             f"{' or '.join(f'{d}-D' for d in self.DIMS)}, got shape "
                             f"{tuple(x.shape)}")
        w = self.weight.data if self.weight is not None else None
        b = self.bias.data if self.bias is not None else None
        self.x, self.batch_stats = x, self.training or self.running_mean is None
        y, self.mean, self.invstd = F.batch_norm(
            x, self.running_mean, self.running_var, w, b, self.batch_stats, self.momentum,
            self.eps, return_stats=True, backend=self.backend)
        return y

    def backward(self, gy):
        w = self.weight.data if self.weight is not None else None
        gx, gw, gb = F.batch_norm_backward(gy, self.x, self.mean, self.invstd, w,
                                           self.batch_stats, backend=self.backend)
        if self.weight is not None:
            self.weight.grad, self.bias.grad = gw, gb
        return gx


class BatchNorm1d(_BatchNorm):
    """Over (N, C) features or (N, C, L) sequences."""
    DIMS = (2, 3)


class BatchNorm2d(_BatchNorm):
    """Over (N, C, H, W) feature maps."""
    DIMS = (4,)


class Flatten(Module):
    def forward(self, x):
        self.shape = x.shape
        return x.reshape(x.shape[0], -1)

    def backward(self, gy):
        return gy.reshape(self.shape)


class Dropout(Module):
    """Inverted dropout: in training, zero each element with probability p and scale the
    rest by 1/(1-p); identity in eval mode. The mask comes from a seeded generator."""

    def __init__(self, p=0.5, seed=0):
        if not 0 <= p < 1:
            raise ValueError(f"Dropout: p must be in [0, 1), got {p}")
        self.p = p
        self.rng = np.random.default_rng(seed)

    def forward(self, x):
        if not self.training or self.p == 0:
            self.mask = None
            return x
        keep = (self.rng.random(x.shape) >= self.p).astype(np.dtype(x.dtype)) / (1 - self.p)
        self.mask = _xp(x).asarray(keep)
        return x * self.mask

    def backward(self, gy):
        return gy if self.mask is None else gy * self.mask


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


class SoftmaxCrossEntropy:
    """Mean softmax cross-entropy over the batch; backward gives d loss / d logits.
    forward validates the labels unless check_labels=False (labels known to be in range:
    on a GPU the test waits for the device); backward reuses forward's labels unchecked."""

    def __init__(self, backend="auto", check_labels=True):
        self.backend, self.check_labels = backend, check_labels

    def forward(self, logits, labels):
        self.logits, self.labels = logits, labels
        return F.softmax_cross_entropy(logits, labels, backend=self.backend,
                                       check_labels=self.check_labels)

    def backward(self):
        return F.softmax_cross_entropy_backward(self.logits, self.labels, backend=self.backend,
                                                check_labels=False)


# ----------------------------------------------------------------------------------------
# optimisers


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


def lenet5(in_channels=1, image_size=8, classes=10, *, algo="auto", backend="auto", dropout=0.0,
           batch_norm=False, seed=0, dtype=np.float32) -> Sequential:
    """LeNet-5 style: conv(5x5, 6) -> relu -> maxpool 2 -> conv(5x5, 16) -> relu -> maxpool 2
    -> linear 120 -> relu -> linear 84 -> relu -> linear classes. Convolutions pad by 2 so the
    network fits small images (8x8 digits: 8 -> 4 -> 2). batch_norm=True puts a BatchNorm2d
    after each convolution and a BatchNorm1d after the first linear layer (before the ReLU;
    those three layers then have no bias, which the normalisation would cancel)."""
    rng = np.random.default_rng(seed)
    s = image_size // 4
    if s < 1:
        raise ValueError(f"lenet5: image_size must be at least 4, got {image_size}")
    bias = not batch_norm

    def norm(layer, features):
        return [layer(features, backend=backend, dtype=dtype)] if batch_norm else []

    layers = [
        Conv2d(in_channels, 6, 5, padding=2, bias=bias, algo=algo, backend=backend, rng=rng,
               dtype=dtype), *norm(BatchNorm2d, 6),
        ReLU(backend), MaxPool2d(2, backend=backend),
        Conv2d(6, 16, 5, padding=2, bias=bias, algo=algo, backend=backend, rng=rng, dtype=dtype),
        *norm(BatchNorm2d, 16), ReLU(backend), MaxPool2d(2, backend=backend),
        Flatten(),
        Linear(16 * s * s, 120, bias=bias, init="he", backend=backend, rng=rng, dtype=dtype),
        *norm(BatchNorm1d, 120), ReLU(backend),
    ]
    if dropout:
        layers.append(Dropout(dropout, seed=seed + 1))
    layers += [Linear(120, 84, init="he", backend=backend, rng=rng, dtype=dtype), ReLU(backend),
               Linear(84, classes, backend=backend, rng=rng, dtype=dtype)]
    return Sequential(*layers)


def resnet_small(in_channels=1, image_size=8, classes=10, *, width=16, algo="auto",
                 backend="auto", seed=0, dtype=np.float32) -> Sequential:
    """A small ResNet for small images: a 3x3 stem conv + BatchNorm2d + ReLU, two basic
    blocks (3x3 conv, BN, ReLU, 3x3 conv, BN, plus the shortcut, then ReLU), the second
    strided by 2 with a 1x1 strided conv + BN on its shortcut and twice the channels, global
    average pooling and a linear classifier. Convolutions before a BN have no bias."""
    if image_size < 2:
        raise ValueError(f"resnet_small: image_size must be at least 2, got {image_size}")
    rng = np.random.default_rng(seed)
    kw = dict(bias=False, algo=algo, backend=backend, rng=rng, dtype=dtype)

    def bn(c):
        return BatchNorm2d(c, backend=backend, dtype=dtype)

    def block(cin, cout, stride):
        body = Sequential(Conv2d(cin, cout, 3, stride=stride, padding=1, **kw), bn(cout),
                          ReLU(backend), Conv2d(cout, cout, 3, padding=1, **kw), bn(cout))
        shortcut = None if stride == 1 and cin == cout else \
            Sequential(Conv2d(cin, cout, 1, stride=stride, **kw), bn(cout))
        return [Residual(body, shortcut), ReLU(backend)]

    return Sequential(
        Conv2d(in_channels, width, 3, padding=1, **kw), bn(width), ReLU(backend),
        *block(width, width, 1), *block(width, 2 * width, 2),
        GlobalAvgPool2d(backend), Linear(2 * width, classes, backend=backend, rng=rng,
                                         dtype=dtype))
