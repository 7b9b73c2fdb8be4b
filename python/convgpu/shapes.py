"""The benchmark suite: real layer shapes with their sources.

Conv layers as (name, N, C, H=W, K, R=S, stride, pad, groups=1). The layers run at batch 16 in their
source are also run at N=64 (suffix "@N64"). `quick=True` keeps a subset that finishes in
about two minutes on an H100 with every implementation and cuDNN beside it.
"""
from __future__ import annotations

from typing import List, NamedTuple


class ConvShape(NamedTuple):
    name: str
    N: int
    C: int
    H: int
    K: int
    R: int
    stride: int
    pad: int
    groups: int = 1


class PoolShape(NamedTuple):
    name: str
    N: int
    C: int
    H: int
    kernel: int
    stride: int
    pad: int
    ceil_mode: bool


CONV = [
    # AlexNet (Krizhevsky et al. 2012), first layer
    ConvShape("AlexNet conv1 11x11/4", 128, 3, 224, 64, 11, 4, 2),
    # soumith/convnet-benchmarks layers L1, L2, L4, L5
    ConvShape("convnet-bench L1 11x11", 128, 3, 128, 96, 11, 1, 0),
    ConvShape("convnet-bench L2 9x9", 128, 64, 64, 128, 9, 1, 0),
    ConvShape("convnet-bench L4 7x7", 128, 128, 16, 128, 7, 1, 0),
    ConvShape("convnet-bench L5 3x3", 128, 384, 13, 384, 3, 1, 0),
    # ResNet (He et al. 2016): stem, 3x3 blocks (stride 1 and 2, late), 1x1 bottlenecks
    ConvShape("ResNet conv1 7x7/2", 16, 3, 224, 64, 7, 2, 3),
    ConvShape("ResNet 3x3", 16, 128, 28, 128, 3, 1, 1),
    ConvShape("ResNet 3x3/2", 16, 128, 56, 128, 3, 2, 1),
    ConvShape("ResNet 3x3 late", 16, 512, 7, 512, 3, 1, 1),
    ConvShape("ResNet 1x1", 16, 256, 56, 64, 1, 1, 0),
    ConvShape("ResNet 1x1/2", 16, 256, 56, 128, 1, 2, 0),
    ConvShape("ResNet 1x1 late", 16, 2048, 7, 512, 1, 1, 0),
    # AlexNet conv2, GoogLeNet inception 5x5 branch, VGG and a mid-network 3x3
    ConvShape("AlexNet conv2 5x5", 128, 64, 27, 192, 5, 1, 2),
    ConvShape("GoogLeNet 5x5", 16, 192, 28, 32, 5, 1, 2),
    ConvShape("VGG 3x3", 16, 64, 112, 128, 3, 1, 1),
    ConvShape("3x3 mid", 16, 256, 28, 512, 3, 1, 1),
    # MobileNet (Howard et al. 2017) depthwise 3x3 layers: groups = C
    ConvShape("MobileNet dw 3x3", 16, 256, 28, 256, 3, 1, 1, 256),
    ConvShape("MobileNet dw 3x3/2", 16, 128, 56, 128, 3, 2, 1, 128),
]

QUICK_CONV = {"ResNet conv1 7x7/2", "ResNet 3x3", "VGG 3x3", "AlexNet conv2 5x5",
              "convnet-bench L4 7x7", "convnet-bench L2 9x9", "ResNet 1x1", "ResNet 3x3 late",
              "MobileNet dw 3x3"}

POOL = [
    PoolShape("AlexNet pool 3x3/2", 128, 64, 55, 3, 2, 0, False),
    PoolShape("AlexNet pool5 3x3/2", 128, 256, 13, 3, 2, 0, False),
    PoolShape("VGG pool 2x2/2", 64, 64, 224, 2, 2, 0, False),
    PoolShape("ResNet pool 3x3/2 p1", 64, 64, 112, 3, 2, 1, False),
    PoolShape("ResNet pool 3x3/2 p1 ceil", 64, 64, 112, 3, 2, 1, True),
]
QUICK_POOL = {"AlexNet pool 3x3/2", "ResNet pool 3x3/2 p1", "VGG pool 2x2/2"}

# batch normalisation: (name, input shape). ResNet-50's stem BN (few channels, many values
# each), a bottleneck's, the last block's (many channels, few values), and a BatchNorm1d
# after a wide linear layer
NORM = [
    ("ResNet-50 bn1", (32, 64, 112, 112)),
    ("ResNet-50 layer1 bn3", (32, 256, 56, 56)),
    ("ResNet-50 layer4 bn3", (32, 2048, 7, 7)),
    ("BatchNorm1d 4096", (256, 4096)),
]
QUICK_NORM = {"ResNet-50 bn1", "ResNet-50 layer4 bn3"}

# global average pooling: (name, N, C, H)
GLOBAL_POOL = [("ResNet-50 head", 64, 2048, 7)]


def conv_suite(quick: bool = False, filters=None) -> List[ConvShape]:
    out = []
    for s in CONV:
        if quick and s.name not in QUICK_CONV:
            continue
        out.append(s)
        if s.N == 16 and not quick:
            out.append(s._replace(name=s.name + " @N64", N=64))
    return [s for s in out if _keep(s.name, filters)]


def pool_suite(quick: bool = False, filters=None) -> List[PoolShape]:
    return [s for s in POOL if (not quick or s.name in QUICK_POOL) and _keep(s.name, filters)]


def norm_suite(quick: bool = False, filters=None):
    return [s for s in NORM if (not quick or s[0] in QUICK_NORM) and _keep(s[0], filters)]


def _keep(name, filters):
    return not filters or any(f.lower() in name.lower() for f in filters)
