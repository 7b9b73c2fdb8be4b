"""The networks `convgpu train` builds: LeNet-5 and a small ResNet."""
from __future__ import annotations

import numpy as np

from convgpu.nn.containers import Residual, Sequential
from convgpu.nn.layers import (BatchNorm1d, BatchNorm2d, Conv2d, Dropout, Flatten,
                               GlobalAvgPool2d, Linear, MaxPool2d, ReLU)


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
