"""The op API: validate -> pick an implementation -> launch.

Names, argument order, defaults and results follow torch.nn.functional; backward ops
are named <op>_backward_<what>. docs/architecture.md: the layers and a call's path.
"""
from convgpu.core.args import allow_tf32, set_allow_tf32  # noqa: F401
from convgpu.ops._registry import implementations, ops as registered_ops  # noqa: F401
from convgpu.ops.conv import (conv2d, conv2d_backward_bias, conv2d_backward_input,  # noqa: F401
                              conv2d_backward_weight, conv_transpose2d)
from convgpu.ops.pool import (adaptive_avg_pool2d, adaptive_avg_pool2d_backward,  # noqa: F401
                              avg_pool2d, avg_pool2d_backward, global_avg_pool2d,
                              global_avg_pool2d_backward, max_pool2d, max_pool2d_backward)
from convgpu.ops.activation import bias_add, relu, relu_backward  # noqa: F401
from convgpu.ops.linear import linear, linear_backward  # noqa: F401
from convgpu.ops.loss import softmax_cross_entropy, softmax_cross_entropy_backward  # noqa: F401
from convgpu.ops.optim import adam_step, sgd_step  # noqa: F401
from convgpu.ops.norm import batch_norm, batch_norm_backward  # noqa: F401

__all__ = [
    "conv2d", "conv2d_backward_input", "conv2d_backward_weight", "conv2d_backward_bias",
    "conv_transpose2d", "max_pool2d", "max_pool2d_backward", "avg_pool2d",
    "avg_pool2d_backward", "global_avg_pool2d", "global_avg_pool2d_backward",
    "adaptive_avg_pool2d", "adaptive_avg_pool2d_backward", "relu",
    "relu_backward", "bias_add", "linear", "linear_backward", "softmax_cross_entropy",
    "softmax_cross_entropy_backward", "batch_norm", "batch_norm_backward", "adam_step",
    "sgd_step", "implementations",
    "set_allow_tf32", "allow_tf32",
]
