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

The modules: module (Parameter, Module, initialisation), layers (the layers and the loss),
containers (Sequential, Residual, modes), optim (SGD, Adam), models (LeNet-5, the ResNet).
"""
from convgpu.nn.containers import Residual, Sequential, eval_mode, evaluate, modules
from convgpu.nn.layers import (AdaptiveAvgPool2d, AvgPool2d, BatchNorm1d, BatchNorm2d, Conv2d,
                               ConvTranspose2d, Dropout, Flatten, GlobalAvgPool2d, Linear,
                               MaxPool2d, ReLU, SoftmaxCrossEntropy)
from convgpu.nn.models import lenet5, resnet_small
from convgpu.nn.module import ALGO_FAMILIES, Module, Parameter, glorot_uniform, he_normal
from convgpu.nn.optim import SGD, Adam

__all__ = ["ALGO_FAMILIES", "Adam", "AdaptiveAvgPool2d", "AvgPool2d", "BatchNorm1d",
           "BatchNorm2d", "Conv2d", "ConvTranspose2d", "Dropout", "Flatten", "GlobalAvgPool2d",
           "Linear", "MaxPool2d", "Module", "Parameter", "ReLU", "Residual", "SGD", "Sequential",
           "SoftmaxCrossEntropy", "eval_mode", "evaluate", "glorot_uniform", "he_normal",
           "lenet5", "modules", "resnet_small"]
