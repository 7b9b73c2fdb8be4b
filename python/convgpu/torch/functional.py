"""torch.nn.functional's names and signatures on our kernels, differentiable by autograd.

    import convgpu.torch.functional as CF
    y = CF.conv2d(x, w, b, stride=2, padding=1)            # x.requires_grad: backward works
    loss = CF.cross_entropy(CF.linear(h, w2), labels, label_smoothing=0.1)

Each op is a torch.autograd.Function whose forward is our forward op and whose backward
is made of our backward ops (conv2d_backward_input / _weight / _bias, max_pool2d_backward
through the forward's argmax, ...), so training runs on our kernels end to end. Extra
keywords: algo and backend (as the plain ops), allow_tf32 for conv and linear.

CPU tensors run on the NumPy reference (backend "numpy"), or, with backend="cuda" under
CONVGPU_CUDA_HOST=1 / backend="numba" under the simulator, through the emulated device
kernels; CUDA tensors run on the device kernels on torch's current stream. float16 and
bfloat16 tensors run in their dtype (FP32 accumulation; batch norm's weight, bias and
running estimates may stay float32, torch's mixed form). Under torch.autocast the casts are
torch's: conv2d, conv_transpose2d and linear in the autocast dtype, cross_entropy in
float32, the other ops in their input's dtype. Backward is once differentiable (no double
backward).
"""
from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

import convgpu.ops as O
from convgpu.core import args as A
from convgpu.ops.loss import (softmax_cross_entropy_target_backward,
                              softmax_cross_entropy_weight_backward)

__all__ = ["conv2d", "conv_transpose2d", "max_pool2d", "max_pool2d_with_indices", "avg_pool2d",
           "adaptive_avg_pool2d", "global_avg_pool2d", "batch_norm", "linear", "relu",
           "cross_entropy"]


# torch.autocast's op lists: these run in the autocast dtype, these in float32; the others
# in their input's dtype
_LOWER, _FP32 = "lower", "fp32"


def _autocast(tensors, policy):
    """The float tensors (not float64) cast as torch.autocast casts them for an op of
    `policy` (_LOWER: to the autocast dtype; _FP32: to float32; None: as they are), where
    autocast is on for their device; and whether it was on."""
    dev = next(t.device.type for t in tensors if t is not None)
    if dev not in ("cpu", "cuda") or not torch.is_autocast_enabled(dev):
        return tensors, False
    if policy is None:
        return tensors, True
    to = torch.get_autocast_dtype(dev) if policy == _LOWER else torch.float32
    cast = tuple(t.to(to) if t is not None and t.is_floating_point() and t.dtype != torch.float64
                 else t for t in tensors)
    return cast, True


def _run(fn, *tensors, rest=(), autocast=None):
    """fn.apply(*tensors, *rest), with autocast's casts for the op's policy and autocast off
    inside (the backward then sees the dtypes the forward saw)."""
    tensors, autocasting = _autocast(tensors, autocast)
    if not autocasting:
        return fn.apply(*tensors, *rest)
    with torch.autocast(tensors[0].device.type, enabled=False):
        return fn.apply(*tensors, *rest)


def _need(ctx, i):
    return ctx.needs_input_grad[i]


# ----------------------------------------------------------------------------------------
# convolution


class Conv2dFunction(torch.autograd.Function):
    @staticmethod
    def forward(x, w, b, stride, padding, dilation, groups, algo, backend, allow_tf32):
        return O.conv2d(x, w, b, stride, padding, dilation, groups, algo=algo,
                        backend=backend, allow_tf32=allow_tf32)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, w, b, stride, padding, dilation, groups, algo, backend, allow_tf32 = inputs
        ctx.save_for_backward(x if ctx.needs_input_grad[1] else None,
                              w if ctx.needs_input_grad[0] else None)
        ctx.x_shape, ctx.w_shape = tuple(x.shape), tuple(w.shape)
        ctx.geometry = (stride, padding, dilation, groups)
        ctx.backend, ctx.allow_tf32 = backend, allow_tf32

    @staticmethod
    @once_differentiable
    def backward(ctx, gy):
        x, w = ctx.saved_tensors
        kw = dict(backend=ctx.backend, allow_tf32=ctx.allow_tf32)
        gx = gw = gb = None
        if _need(ctx, 0):
            gx = O.conv2d_backward_input(gy, w, ctx.x_shape, *ctx.geometry, **kw)
        if _need(ctx, 1):
            gw = O.conv2d_backward_weight(x, gy, ctx.w_shape, *ctx.geometry, **kw)
        if _need(ctx, 2):
            gb = O.conv2d_backward_bias(gy, backend=ctx.backend)
        return gx, gw, gb, None, None, None, None, None, None, None


def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *,
           algo="auto", backend="auto", allow_tf32=None):
    """torch.nn.functional.conv2d on our kernels (see convgpu.conv2d)."""
    return _run(Conv2dFunction, input, weight, bias,
                rest=(stride, padding, dilation, groups, algo, backend, allow_tf32),
                autocast=_LOWER)


class ConvTranspose2dFunction(torch.autograd.Function):
    """y = conv2d_backward_input(x, w); so gx is conv2d(gy, w) and gw is
    conv2d_backward_weight(gy, x). Where output_padding reaches the stride, gy's conv gives
    more rows than x has (the extra ones are dropped) and the weight gradient is taken in
    the uncropped frame (gy placed at the padding, padding 0), as the forward computes."""

    @staticmethod
    def forward(x, w, b, stride, padding, output_padding, groups, dilation, algo, backend,
                allow_tf32):
        return O.conv_transpose2d(x, w, b, stride, padding, output_padding, groups, dilation,
                                  algo=algo, backend=backend, allow_tf32=allow_tf32)

    @staticmethod
    def setup_context(ctx, inputs, output):
        (x, w, b, stride, padding, output_padding, groups, dilation, algo, backend,
         allow_tf32) = inputs
        ctx.save_for_backward(x if ctx.needs_input_grad[1] else None,
                              w if ctx.needs_input_grad[0] else None)
        ctx.x_shape, ctx.w_shape = tuple(x.shape), tuple(w.shape)
        op = "conv_transpose2d"
        ctx.stride = A.pair(op, "stride", stride, minimum=1)
        ctx.padding = A.pair(op, "padding", padding, minimum=0)
        ctx.dilation = A.pair(op, "dilation", dilation, minimum=1)
        opad = A.pair(op, "output_padding", output_padding, minimum=0)
        ctx.uncropped = any(o >= s for o, s in zip(opad, ctx.stride))
        ctx.groups, ctx.backend, ctx.allow_tf32 = groups, backend, allow_tf32

    @staticmethod
    @once_differentiable
    def backward(ctx, gy):
        x, w = ctx.saved_tensors
        kw = dict(backend=ctx.backend, allow_tf32=ctx.allow_tf32)
        gx = gw = gb = None
        H, W = ctx.x_shape[-2:]
        if _need(ctx, 0):
            gx = O.conv2d(gy, w, None, ctx.stride, ctx.padding, ctx.dilation, ctx.groups, **kw)
            if tuple(gx.shape[-2:]) != (H, W):
                gx = gx[..., :H, :W].contiguous()
        if _need(ctx, 1):
            if ctx.uncropped:
                R, S = ctx.w_shape[2:]
                full = tuple(A.conv_transpose_out_size(n, k, s, 0, d, 0) for n, k, s, d in
                             zip((H, W), (R, S), ctx.stride, ctx.dilation))
                (ph, pw), (Ho, Wo) = ctx.padding, gy.shape[-2:]
                g = gy.new_zeros(tuple(gy.shape[:-2]) + full)
                h, w_ = max(0, min(Ho, full[0] - ph)), max(0, min(Wo, full[1] - pw))
                g[..., ph:ph + h, pw:pw + w_] = gy[..., :h, :w_]
                gw = O.conv2d_backward_weight(g, x, ctx.w_shape, ctx.stride, 0, ctx.dilation,
                                              ctx.groups, **kw)
            else:
                gw = O.conv2d_backward_weight(gy, x, ctx.w_shape, ctx.stride, ctx.padding,
                                              ctx.dilation, ctx.groups, **kw)
        if _need(ctx, 2):
            gb = O.conv2d_backward_bias(gy, backend=ctx.backend)
        return gx, gw, gb, None, None, None, None, None, None, None, None


def conv_transpose2d(input, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1,
                     dilation=1, *, algo="auto", backend="auto", allow_tf32=None):
    """torch.nn.functional.conv_transpose2d on our kernels (see convgpu.conv_transpose2d)."""
    return _run(ConvTranspose2dFunction, input, weight, bias,
                rest=(stride, padding, output_padding, groups, dilation, algo, backend,
                      allow_tf32), autocast=_LOWER)


# ----------------------------------------------------------------------------------------
# pooling


class MaxPool2dFunction(torch.autograd.Function):
    """Returns (y, indices); the backward scatters gy through the indices the forward
    tracked (one pass, no recomputation of the argmax)."""

    @staticmethod
    def forward(x, kernel_size, stride, padding, dilation, ceil_mode, algo, backend):
        return O.max_pool2d(x, kernel_size, stride, padding, dilation, ceil_mode,
                            return_indices=True, algo=algo, backend=backend)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, kernel_size, stride, padding, dilation, ceil_mode, algo, backend = inputs
        ctx.mark_non_differentiable(output[1])
        ctx.save_for_backward(output[1])
        ctx.x_shape = tuple(x.shape)
        ctx.geometry = (kernel_size, stride, padding, dilation, ceil_mode)
        ctx.backend = backend

    @staticmethod
    @once_differentiable
    def backward(ctx, gy, _gidx):
        idx, = ctx.saved_tensors
        gx = O.max_pool2d_backward(gy, idx, ctx.x_shape, *ctx.geometry, backend=ctx.backend,
                                   check_indices=False)
        return gx, None, None, None, None, None, None, None


def max_pool2d_with_indices(input, kernel_size, stride=None, padding=0, dilation=1,
                            ceil_mode=False, return_indices=True, *, algo="auto",
                            backend="auto"):
    y, idx = _run(MaxPool2dFunction, input,
                  rest=(kernel_size, stride, padding, dilation, ceil_mode, algo, backend))
    return (y, idx) if return_indices else y


def max_pool2d(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
               return_indices=False, *, algo="auto", backend="auto"):
    """torch.nn.functional.max_pool2d on our kernels (see convgpu.max_pool2d)."""
    return max_pool2d_with_indices(input, kernel_size, stride, padding, dilation, ceil_mode,
                                   return_indices, algo=algo, backend=backend)


class AvgPool2dFunction(torch.autograd.Function):
    @staticmethod
    def forward(x, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override,
                backend):
        return O.avg_pool2d(x, kernel_size, stride, padding, ceil_mode, count_include_pad,
                            divisor_override, backend=backend)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, *geometry, backend = inputs
        ctx.x_shape, ctx.geometry, ctx.backend = tuple(x.shape), geometry, backend

    @staticmethod
    @once_differentiable
    def backward(ctx, gy):
        gx = O.avg_pool2d_backward(gy, ctx.x_shape, *ctx.geometry, backend=ctx.backend)
        return (gx,) + (None,) * 7


def avg_pool2d(input, kernel_size, stride=None, padding=0, ceil_mode=False,
               count_include_pad=True, divisor_override=None, *, backend="auto"):
    """torch.nn.functional.avg_pool2d on our kernels (see convgpu.avg_pool2d)."""
    return _run(AvgPool2dFunction, input, rest=(kernel_size, stride, padding, ceil_mode,
                                                count_include_pad, divisor_override, backend))


class AdaptiveAvgPool2dFunction(torch.autograd.Function):
    @staticmethod
    def forward(x, output_size, backend):
        return O.adaptive_avg_pool2d(x, output_size, backend=backend)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.x_shape, ctx.backend = tuple(inputs[0].shape), inputs[2]

    @staticmethod
    @once_differentiable
    def backward(ctx, gy):
        return O.adaptive_avg_pool2d_backward(gy, ctx.x_shape, backend=ctx.backend), None, None


class GlobalAvgPool2dFunction(torch.autograd.Function):
    """Mean over H and W: (N, C, H, W) -> (N, C)."""

    @staticmethod
    def forward(x, backend):
        return O.global_avg_pool2d(x, backend=backend)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.x_shape, ctx.backend = tuple(inputs[0].shape), inputs[1]

    @staticmethod
    @once_differentiable
    def backward(ctx, gy):
        return O.global_avg_pool2d_backward(gy, ctx.x_shape, backend=ctx.backend), None


def global_avg_pool2d(input, *, backend="auto"):
    """Not in torch.nn.functional: the mean over H and W, (N, C, H, W) -> (N, C)."""
    return _run(GlobalAvgPool2dFunction, input, rest=(backend,))


def adaptive_avg_pool2d(input, output_size, *, backend="auto"):
    """torch.nn.functional.adaptive_avg_pool2d on our kernels. Output size 1x1 of a batch runs
    on the global average pooling kernels (the same numbers, one window per plane)."""
    if input.dim() == 4 and output_size in (1, (1, 1), [1, 1]) and input.numel():
        return global_avg_pool2d(input, backend=backend)[:, :, None, None]
    return _run(AdaptiveAvgPool2dFunction, input, rest=(output_size, backend))


# ----------------------------------------------------------------------------------------
# normalisation, linear, activation


class BatchNormFunction(torch.autograd.Function):
    """The forward updates running_mean / running_var in place (training, when given)."""

    @staticmethod
    def forward(x, weight, bias, running_mean, running_var, training, momentum, eps, backend):
        return O.batch_norm(x, running_mean, running_var, weight, bias, training, momentum, eps,
                            return_stats=True, backend=backend)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, weight, bias, _rm, _rv, training, _m, _e, backend = inputs
        _y, mean, invstd = output
        ctx.mark_non_differentiable(mean, invstd)
        ctx.save_for_backward(x, mean, invstd, weight)
        ctx.training, ctx.backend = training, backend

    @staticmethod
    @once_differentiable
    def backward(ctx, gy, _gmean, _ginvstd):
        x, mean, invstd, weight = ctx.saved_tensors
        gx, gw, gb = O.batch_norm_backward(gy, x, mean, invstd, weight, ctx.training,
                                           backend=ctx.backend)
        return (gx, gw if _need(ctx, 1) else None, gb if _need(ctx, 2) else None,
                None, None, None, None, None, None)


def batch_norm(input, running_mean, running_var, weight=None, bias=None, training=False,
               momentum=0.1, eps=1e-5, *, backend="auto"):
    """torch.nn.functional.batch_norm on our kernels (see convgpu.batch_norm)."""
    # the running estimates are updated in place: never cast, so they stay out of _autocast
    return _run(BatchNormFunction, input, weight, bias,
                rest=(running_mean, running_var, training, momentum, eps, backend))[0]


class LinearFunction(torch.autograd.Function):
    @staticmethod
    def forward(x, w, b, algo, backend, allow_tf32):
        return O.linear(x, w, b, algo=algo, backend=backend, allow_tf32=allow_tf32)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, w, b, _algo, backend, _tf32 = inputs
        ctx.save_for_backward(x, w)
        ctx.backend = backend

    @staticmethod
    @once_differentiable
    def backward(ctx, gy):
        x, w = ctx.saved_tensors
        gx, gw, gb = O.linear_backward(gy, x, w, backend=ctx.backend)
        return (gx if _need(ctx, 0) else None, gw if _need(ctx, 1) else None,
                gb if _need(ctx, 2) else None, None, None, None)


def linear(input, weight, bias=None, *, algo="auto", backend="auto", allow_tf32=None):
    """torch.nn.functional.linear on our kernels (see convgpu.linear)."""
    return _run(LinearFunction, input, weight, bias, rest=(algo, backend, allow_tf32),
                autocast=_LOWER)


class ReLUFunction(torch.autograd.Function):
    """In place (inplace=True) the input takes the result and is marked dirty, as torch's
    relu_; the backward masks with the output (positive exactly where the input is)."""

    @staticmethod
    def forward(x, inplace, backend):
        y = O.relu(x, backend=backend)
        return x.copy_(y) if inplace else y

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, inplace, backend = inputs
        if inplace:
            ctx.mark_dirty(x)
        ctx.save_for_backward(output)
        ctx.backend = backend

    @staticmethod
    @once_differentiable
    def backward(ctx, gy):
        y, = ctx.saved_tensors
        return O.relu_backward(gy, y, backend=ctx.backend), None, None


def relu(input, inplace=False, *, backend="auto"):
    """torch.nn.functional.relu on our kernels (see convgpu.relu)."""
    return _run(ReLUFunction, input, rest=(bool(inplace), backend))


# ----------------------------------------------------------------------------------------
# loss


class CrossEntropyFunction(torch.autograd.Function):
    @staticmethod
    def forward(z, labels, weight, ignore_index, reduction, label_smoothing, backend):
        return O.softmax_cross_entropy(z, labels, weight, ignore_index=ignore_index,
                                       reduction=reduction, label_smoothing=label_smoothing,
                                       backend=backend)

    @staticmethod
    def setup_context(ctx, inputs, output):
        z, labels, weight, *options, backend = inputs
        ctx.save_for_backward(z, labels, weight)
        ctx.options, ctx.backend = options, backend

    @staticmethod
    @once_differentiable
    def backward(ctx, gy):
        z, labels, weight = ctx.saved_tensors
        ignore_index, reduction, label_smoothing = ctx.options
        gz = gt = None
        if _need(ctx, 0):
            gz = O.softmax_cross_entropy_backward(
                z, labels, weight, grad_output=gy.contiguous(), ignore_index=ignore_index,
                reduction=reduction, label_smoothing=label_smoothing, backend=ctx.backend,
                check_labels=False)
        # the target's and the weights' gradients: class-probability targets only (index
        # labels are ints; cross_entropy refuses a weight requiring grad with them)
        soft = dict(grad_output=gy.contiguous(), reduction=reduction,
                    label_smoothing=label_smoothing)
        gt = (softmax_cross_entropy_target_backward(z, labels, weight, **soft)
              if _need(ctx, 1) else None)
        gw = (softmax_cross_entropy_weight_backward(z, labels, weight, **soft)
              if _need(ctx, 2) else None)
        return gz, gt, gw, None, None, None, None


def cross_entropy(input, target, weight=None, size_average=None, ignore_index=-100, reduce=None,
                  reduction="mean", label_smoothing=0.0, *, backend="auto"):
    """torch.nn.functional.cross_entropy on our kernels: input (N, C), (C,) or
    (N, C, d1, ...) with class-index targets (N,), () or (N, d1, ...), or class-probability
    targets (floating point, the input's shape, mixed float dtypes promoted as torch;
    ignore_index must stay -100, the mean divides by the number of rows, and the target
    and the weights get gradients when they require them)."""
    op = "cross_entropy"
    if size_average is not None or reduce is not None:
        reduction = torch.nn._reduction.legacy_get_string(size_average, reduce)
    soft = target.is_floating_point()
    if not soft and weight is not None and weight.requires_grad and torch.is_grad_enabled():
        # as torch (RuntimeError there): weights are differentiated for probabilities only
        raise ValueError(f"{op}: weight requiring grad is served with class-probability "
                         "targets only; pass weight.detach() with class indices")
    if soft and tuple(target.shape) != tuple(input.shape):
        raise ValueError(f"{op}: class-probability target has shape {tuple(target.shape)} "
                         f"but must have the input's shape {tuple(input.shape)}")
    if soft and target.dtype != input.dtype:      # torch promotes: float32 with float64 -> 64
        dtype = torch.promote_types(input.dtype, target.dtype)
        input, target = input.to(dtype), target.to(dtype)
    if input.dim() == 1:                          # one unbatched row
        out = cross_entropy(input[None], target[None] if soft else target.reshape(1), weight,
                            None, ignore_index, None, reduction, label_smoothing,
                            backend=backend)
        return out.reshape(()) if reduction == "none" else out
    if input.dim() > 2:                           # (N, C, d1, ...): one row per position
        want = (input.shape[0],) + tuple(input.shape[2:])
        if not soft and tuple(target.shape) != want:
            raise ValueError(f"{op}: target has shape {tuple(target.shape)} but input "
                             f"{tuple(input.shape)} needs {want}")
        C = input.shape[1]
        rows = input.movedim(1, -1).reshape(-1, C)
        t = target.movedim(1, -1).reshape(-1, C) if soft else target.reshape(-1)
        out = cross_entropy(rows, t, weight, None, ignore_index, None,
                            reduction, label_smoothing, backend=backend)
        return out.reshape(want) if reduction == "none" else out
    return _run(CrossEntropyFunction, input, target, weight,
                rest=(ignore_index, reduction, label_smoothing, backend), autocast=_FP32)
