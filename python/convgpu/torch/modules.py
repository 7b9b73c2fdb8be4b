"""torch.nn layers on our kernels: each is a subclass of its torch.nn layer with only the
forward replaced, so it holds the same ordinary Parameters and buffers under the same names
(optimisers, state_dict, .to(), autocast and DDP see a torch layer), initialises as torch
does, and convert() can turn an existing layer into ours in place.

Every layer has `algo` and `backend` attributes ("auto"), passed to the ops.
"""
from __future__ import annotations

import torch
from torch import nn

from convgpu.torch import functional as CF


class _Ours:
    """Mixin: the options our ops take, and the in-place conversion of a torch layer."""
    algo = "auto"
    backend = "auto"

    @classmethod
    def from_torch(cls, layer, algo="auto", backend="auto"):
        """`layer` (a torch.nn layer of our base class) becomes one of ours in place: the same
        object, parameters, buffers and hooks; only the forward changes."""
        layer.__class__ = cls
        layer.algo, layer.backend = algo, backend
        return layer

    def extra_repr(self):
        extra = "" if (self.algo, self.backend) == ("auto", "auto") else \
            f", algo={self.algo!r}, backend={self.backend!r}"
        return super().extra_repr() + extra


class Conv2d(_Ours, nn.Conv2d):
    """torch.nn.Conv2d on convgpu.conv2d and its three gradients (padding_mode 'zeros')."""

    def _conv_forward(self, input, weight, bias):
        if self.padding_mode != "zeros":
            raise ValueError(f"Conv2d: padding_mode {self.padding_mode!r} is not served (only "
                             "'zeros')")
        return CF.conv2d(input, weight, bias, self.stride, self.padding, self.dilation,
                         self.groups, algo=self.algo, backend=self.backend)


class ConvTranspose2d(_Ours, nn.ConvTranspose2d):
    """torch.nn.ConvTranspose2d on convgpu.conv_transpose2d (output_size as torch)."""

    def forward(self, input, output_size=None):
        if self.padding_mode != "zeros":
            raise ValueError("ConvTranspose2d: only padding_mode 'zeros' is served")
        output_padding = self._output_padding(input, output_size, self.stride, self.padding,
                                              self.kernel_size, 2, self.dilation)
        return CF.conv_transpose2d(input, self.weight, self.bias, self.stride, self.padding,
                                   output_padding, self.groups, self.dilation, algo=self.algo,
                                   backend=self.backend)


class MaxPool2d(_Ours, nn.MaxPool2d):
    def forward(self, input):
        return CF.max_pool2d(input, self.kernel_size, self.stride, self.padding, self.dilation,
                             self.ceil_mode, self.return_indices, algo=self.algo,
                             backend=self.backend)


class AvgPool2d(_Ours, nn.AvgPool2d):
    def forward(self, input):
        return CF.avg_pool2d(input, self.kernel_size, self.stride, self.padding, self.ceil_mode,
                             self.count_include_pad, self.divisor_override,
                             backend=self.backend)


class AdaptiveAvgPool2d(_Ours, nn.AdaptiveAvgPool2d):
    def forward(self, input):
        return CF.adaptive_avg_pool2d(input, self.output_size, backend=self.backend)


class BatchNorm2d(_Ours, nn.BatchNorm2d):
    """torch.nn.BatchNorm2d on convgpu.batch_norm: the same use of num_batches_tracked,
    momentum=None (the cumulative average), track_running_stats and eval mode as torch."""

    def forward(self, input):
        self._check_input_dim(input)
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:
                factor = 1.0 / float(self.num_batches_tracked)
        training = self.training or (self.running_mean is None and self.running_var is None)
        use_running = not self.training or self.track_running_stats
        return CF.batch_norm(input, self.running_mean if use_running else None,
                             self.running_var if use_running else None, self.weight,
                             self.bias, training, factor, self.eps, backend=self.backend)


class Linear(_Ours, nn.Linear):
    def forward(self, input):
        return CF.linear(input, self.weight, self.bias, algo=self.algo, backend=self.backend)


class ReLU(_Ours, nn.ReLU):
    def forward(self, input):
        return CF.relu(input, self.inplace, backend=self.backend)


class CrossEntropyLoss(_Ours, nn.CrossEntropyLoss):
    def forward(self, input, target):
        return CF.cross_entropy(input, target, self.weight, ignore_index=self.ignore_index,
                                reduction=self.reduction, label_smoothing=self.label_smoothing,
                                backend=self.backend)


# torch layer -> ours; convert() turns exactly these types (not their subclasses, whose
# forward may be their own)
OURS = {nn.Conv2d: Conv2d, nn.ConvTranspose2d: ConvTranspose2d, nn.MaxPool2d: MaxPool2d,
        nn.AvgPool2d: AvgPool2d, nn.AdaptiveAvgPool2d: AdaptiveAvgPool2d,
        nn.BatchNorm2d: BatchNorm2d, nn.Linear: Linear, nn.ReLU: ReLU,
        nn.CrossEntropyLoss: CrossEntropyLoss}

_OUR_TYPES = frozenset(OURS.values())
SERVED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _refusal(name, layer):
    """Why `layer` can't run on our kernels, or None."""
    kind = type(layer).__name__
    pm = getattr(layer, "padding_mode", "zeros")
    if pm != "zeros":
        return f"{name} ({kind}): padding_mode {pm!r} (only 'zeros' is served)"
    for pname, p in list(layer.named_parameters(recurse=False)) + \
            [(b, t) for b, t in layer.named_buffers(recurse=False) if t.is_floating_point()]:
        if p.dtype not in SERVED_DTYPES:
            return (f"{name} ({kind}): {pname} is {p.dtype}; convgpu serves float16, "
                    "bfloat16, float32 and float64")
        if p.device.type not in ("cpu", "cuda"):
            return f"{name} ({kind}): {pname} is on {p.device}; convgpu runs on CPU and CUDA"
        if p.device.type == "cuda":
            from convgpu.arrays import cupy_module
            if cupy_module() is None:
                return (f"{name} ({kind}): {pname} is a CUDA tensor but CuPy with a GPU is "
                        "not available")
    return None


def convert(model, algo="auto", backend="auto"):
    """Turns model's torch.nn layers (Conv2d, ConvTranspose2d, MaxPool2d, AvgPool2d,
    AdaptiveAvgPool2d, BatchNorm2d, Linear, ReLU, CrossEntropyLoss; exactly these types) into
    ours in place, sharing their parameters and buffers, and returns model. Layers of other
    types are left as they are; layers already ours take the new algo and backend. Raises
    ValueError, before changing anything, listing every layer it can't serve (a
    padding_mode other than 'zeros', parameters of a dtype other than float16, bfloat16,
    float32, float64, a device other than CPU / CUDA). backend goes to every converted
    layer; algo (a convolution algorithm, convgpu.implementations("conv2d")) to the Conv2d
    and ConvTranspose2d layers' forward, the others keep "auto"."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"convert: model must be a torch.nn.Module, got {type(model).__name__}")
    todo, refused = [], []
    for name, layer in model.named_modules():
        ours = OURS.get(type(layer), type(layer) if type(layer) in _OUR_TYPES else None)
        if ours is None:
            continue
        why = _refusal(name or type(layer).__name__, layer)
        if why:
            refused.append(why)
        else:
            todo.append((layer, ours))
    if refused:
        raise ValueError("convert: these layers can't run on convgpu's kernels (nothing was "
                         "converted): " + "; ".join(refused))
    for layer, ours in todo:
        ours.from_torch(layer, algo if ours in (Conv2d, ConvTranspose2d) else "auto", backend)
    return model
