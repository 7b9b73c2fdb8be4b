"""The layers (convolutions, linear, activation, pooling, batch norms, flatten, dropout) and
the softmax cross-entropy loss, each a forward and a backward over convgpu ops."""
from __future__ import annotations

import numpy as np

import convgpu as F
from convgpu.nn.module import (ALGO_FAMILIES, Module, Parameter, _Weighted, _xp,
                               glorot_uniform, he_normal)


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
