"""The benchmark suites: the convolution layers of real networks, each distinct layer once
with how many times the network runs it, so a network's time is the count-weighted sum.

Networks (ImageNet, 224 x 224 input), at batch 32 by default, `network(name, batch)` for
another batch (128 where the device's memory allows):

- ``resnet50``: torchvision's ResNet-50 (v1.5: the stride in the bottleneck's 3x3), 20
  distinct layers, 53 convolutions;
- ``vgg16``: VGG-16 (configuration D), 9 distinct layers, 13 convolutions;
- ``mobilenetv2``: torchvision's MobileNetV2 (width 1.0): the stem, the depthwise 3x3
  (groups = C) and pointwise 1x1 layers of the 17 inverted residual blocks, the last 1x1;
  52 convolutions;
- ``alexnet``: torchvision's AlexNet, 5 convolutions;
- ``classic``: the five layers of soumith/convnet-benchmarks (2014, batch 128), kept for
  comparison with older numbers; no headline uses them.

Each layer is derived from the network's definition table below (stages, blocks, widths),
as torchvision builds it; tests/test_bench_suites.py checks the counts against a module
built the same way in torch and the multiply-adds against the published totals.
"""
from __future__ import annotations

import re
from typing import Dict, List, NamedTuple, Optional


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
    count: int = 1                  # how many times the network runs this layer
    W: Optional[int] = None         # None: W = H
    S: Optional[int] = None         # None: S = R
    dilation: int = 1
    suite: str = ""

    @property
    def width(self) -> int:
        return self.W if self.W is not None else self.H

    @property
    def filter_width(self) -> int:
        return self.S if self.S is not None else self.R

    def out_size(self):
        """(P, Q): torch's output size."""
        d = self.dilation
        P = (self.H + 2 * self.pad - d * (self.R - 1) - 1) // self.stride + 1
        Q = (self.width + 2 * self.pad - d * (self.filter_width - 1) - 1) // self.stride + 1
        return P, Q

    def macs(self) -> int:
        """Multiply-adds of one run of the layer (the whole batch)."""
        P, Q = self.out_size()
        return self.N * self.K * (self.C // self.groups) * self.R * self.filter_width * P * Q


class PoolShape(NamedTuple):
    name: str
    N: int
    C: int
    H: int
    kernel: int
    stride: int
    pad: int
    ceil_mode: bool
    W: Optional[int] = None

    @property
    def width(self) -> int:
        return self.W if self.W is not None else self.H


def _layers(rows, batch, suite) -> List[ConvShape]:
    """Distinct layers with their counts, in order of first appearance. rows: (stage label,
    C, H, K, R, stride, pad, groups)."""
    seen: Dict[tuple, int] = {}
    label: Dict[tuple, str] = {}
    for where, C, H, K, R, s, p, g in rows:
        key = (C, H, K, R, s, p, g)
        seen[key] = seen.get(key, 0) + 1
        label.setdefault(key, where)
    out = []
    for (C, H, K, R, s, p, g), n in seen.items():
        kind = "dw " if g == C and g > 1 else ""
        name = (f"{suite} {label[(C, H, K, R, s, p, g)]} {kind}{R}x{R}"
                + (f"/{s}" if s > 1 else "") + f" C{C} K{K} H{H}")
        out.append(ConvShape(name, batch, C, H, K, R, s, p, g, n, suite=suite))
    return out


def _resnet50_rows():
    """torchvision resnet50: a 7x7/2 stem, a 3x3/2 max pool, then 4 stages of bottlenecks
    (1x1 reduce, 3x3 with the stage's stride in its first block, 1x1 expand x4; the first
    block of each stage has a 1x1 projection shortcut with the same stride)."""
    rows = [("conv1", 3, 224, 64, 7, 2, 3, 1)]
    H, cin = 56, 64
    for stage, (blocks, width, stride) in enumerate(((3, 64, 1), (4, 128, 2), (6, 256, 2),
                                                     (3, 512, 2)), 1):
        for b in range(blocks):
            s = stride if b == 0 else 1
            Ho = (H - 1) // s + 1
            where = f"layer{stage}"
            rows.append((where, cin, H, width, 1, 1, 0, 1))
            rows.append((where, width, H, width, 3, s, 1, 1))
            rows.append((where, width, Ho, 4 * width, 1, 1, 0, 1))
            if b == 0:
                rows.append((where, cin, H, 4 * width, 1, s, 0, 1))
            cin, H = 4 * width, Ho
    return rows


def _vgg16_rows():
    """VGG-16 (configuration D): 3x3/1 p1 convolutions, a 2x2/2 max pool after each block."""
    rows, cin, H = [], 3, 224
    for block, (n, k) in enumerate(((2, 64), (2, 128), (3, 256), (3, 512), (3, 512)), 1):
        for _ in range(n):
            rows.append((f"block{block}", cin, H, k, 3, 1, 1, 1))
            cin = k
        H //= 2
    return rows


def _mobilenetv2_rows():
    """torchvision mobilenet_v2 (width 1.0): a 3x3/2 stem to 32 channels, inverted residual
    blocks (t, c, n, s): a 1x1 expansion to t*C (absent for t = 1), a depthwise 3x3 with the
    block's stride, a 1x1 projection to c; then a 1x1 to 1280."""
    rows, cin, H = [("stem", 3, 224, 32, 3, 2, 1, 1)], 32, 112
    for t, c, n, s in ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                       (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)):
        for i in range(n):
            stride = s if i == 0 else 1
            hidden = cin * t
            where = f"t{t} c{c}"
            if t != 1:
                rows.append((where, cin, H, hidden, 1, 1, 0, 1))
            rows.append((where, hidden, H, hidden, 3, stride, 1, hidden))
            H = (H - 1) // stride + 1
            rows.append((where, hidden, H, c, 1, 1, 0, 1))
            cin = c
    rows.append(("last", 320, 7, 1280, 1, 1, 0, 1))
    return rows


def _alexnet_rows():
    """torchvision alexnet: 11x11/4 p2 (224 -> 55), 3x3/2 pool, 5x5 p2 at 27, pool, three
    3x3 p1 at 13."""
    return [("conv1", 3, 224, 64, 11, 4, 2, 1), ("conv2", 64, 27, 192, 5, 1, 2, 1),
            ("conv3", 192, 13, 384, 3, 1, 1, 1), ("conv4", 384, 13, 256, 3, 1, 1, 1),
            ("conv5", 256, 13, 256, 3, 1, 1, 1)]


def _classic_rows():
    """soumith/convnet-benchmarks' layer table (batch 128, no padding, stride 1)."""
    return [("L1", 3, 128, 96, 11, 1, 0, 1), ("L2", 64, 64, 128, 9, 1, 0, 1),
            ("L3", 128, 32, 128, 9, 1, 0, 1), ("L4", 128, 16, 128, 7, 1, 0, 1),
            ("L5", 384, 13, 384, 3, 1, 0, 1)]


NETWORKS = {"resnet50": _resnet50_rows, "vgg16": _vgg16_rows,
            "mobilenetv2": _mobilenetv2_rows, "alexnet": _alexnet_rows}
CLASSIC = "classic"
SUITE_NAMES = tuple(NETWORKS) + (CLASSIC,)
DEFAULT_BATCH = 32


def network(name: str, batch: Optional[int] = None) -> List[ConvShape]:
    """The distinct conv layers of a network (or the classic suite) with their counts, at
    `batch` (default 32; the classic suite's own 128)."""
    if name not in SUITE_NAMES:
        raise ValueError(f"unknown suite {name!r}; choose from {', '.join(SUITE_NAMES)} "
                         "(NAME@BATCH for another batch, e.g. resnet50@128)")
    default = 128 if name == CLASSIC else DEFAULT_BATCH
    batch = default if batch is None else batch
    if batch < 1:
        raise ValueError(f"suite {name}: batch must be positive; got {batch}")
    suite = name if batch == default else f"{name}@{batch}"
    rows = _classic_rows() if name == CLASSIC else NETWORKS[name]()
    return _layers(rows, batch, suite)


def parse_suite(spec: str) -> List[ConvShape]:
    """'resnet50' or 'resnet50@128' -> the suite's layers."""
    name, _, batch = spec.partition("@")
    if batch:
        if not batch.isdigit() or int(batch) < 1:
            raise ValueError(f"suite {spec!r}: the batch after @ must be a positive integer")
        return network(name, int(batch))
    return network(name)


# pooling layers of the same networks (batch 32; VGG's first pool, the largest)
POOL = [
    PoolShape("ResNet-50 maxpool 3x3/2 p1", 32, 64, 112, 3, 2, 1, False),
    PoolShape("VGG-16 pool1 2x2/2", 32, 64, 224, 2, 2, 0, False),
    PoolShape("AlexNet pool1 3x3/2", 32, 64, 55, 3, 2, 0, False),
    PoolShape("AlexNet pool5 3x3/2", 32, 256, 13, 3, 2, 0, False),
    PoolShape("ResNet-50 maxpool 3x3/2 p1 ceil", 32, 64, 112, 3, 2, 1, True),
]
QUICK_POOL = {"ResNet-50 maxpool 3x3/2 p1", "VGG-16 pool1 2x2/2", "AlexNet pool1 3x3/2"}

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
GLOBAL_POOL = [("ResNet-50 head", 32, 2048, 7)]

# GEMM sizes (M, N, K): the square headline size and a ResNet-like skinny one
GEMM = [(4096, 4096, 4096), (8192, 1024, 2048)]


def conv_suite(quick: bool = False, filters=None, suites=None) -> List[ConvShape]:
    """The conv layers to time: the named suites (default: ResNet-50 alone when quick, else
    the four networks), only layers whose name contains one of `filters` if given."""
    if suites is None:
        suites = ["resnet50"] if quick else list(NETWORKS)
    out = []
    for spec in suites:
        out += parse_suite(spec)
    return [s for s in out if _keep(s.name, filters)]


def pool_suite(quick: bool = False, filters=None) -> List[PoolShape]:
    return [s for s in POOL if (not quick or s.name in QUICK_POOL) and _keep(s.name, filters)]


def norm_suite(quick: bool = False, filters=None):
    return [s for s in NORM if (not quick or s[0] in QUICK_NORM) and _keep(s[0], filters)]


def _keep(name, filters):
    return not filters or any(f.lower() in name.lower() for f in filters)


# --------------------------------------------------------------------------------------
# a user's own problem: "conv:N=32,C=64,H=56,W=56,K=64,R=3,S=3,stride=1,pad=1"
# or "pool:N=32,C=64,H=112,k=3,stride=2,pad=1"

_CONV_KEYS = {"N", "C", "H", "W", "K", "R", "S", "stride", "pad", "groups", "dilation"}
_CONV_NEEDED = ("N", "C", "H", "K", "R")
_POOL_KEYS = {"N", "C", "H", "W", "k", "stride", "pad", "ceil_mode"}
_POOL_NEEDED = ("N", "C", "H", "k")


def parse_shape(spec: str):
    """A ConvShape or PoolShape from 'conv:KEY=V,...' / 'pool:KEY=V,...'; ValueError naming
    the key and what is allowed otherwise."""
    kind, sep, body = spec.partition(":")
    if not sep or kind not in ("conv", "pool"):
        raise ValueError(f"--shape {spec!r}: start with 'conv:' or 'pool:', e.g. "
                         "conv:N=32,C=64,H=56,W=56,K=64,R=3,S=3,stride=1,pad=1")
    allowed = _CONV_KEYS if kind == "conv" else _POOL_KEYS
    needed = _CONV_NEEDED if kind == "conv" else _POOL_NEEDED
    vals: Dict[str, int] = {}
    for item in filter(None, body.split(",")):
        m = re.fullmatch(r"\s*(\w+)\s*=\s*(\d+)\s*", item)
        if not m:
            raise ValueError(f"--shape {spec!r}: {item!r} is not KEY=INTEGER")
        key, v = m.group(1), int(m.group(2))
        if key not in allowed:
            raise ValueError(f"--shape {spec!r}: unknown key {key!r} for {kind}; allowed: "
                             f"{', '.join(sorted(allowed))}")
        if key in vals:
            raise ValueError(f"--shape {spec!r}: {key} given twice")
        vals[key] = v
    missing = [k for k in needed if k not in vals]
    if missing:
        raise ValueError(f"--shape {spec!r}: missing {', '.join(missing)} (needed: "
                         f"{', '.join(needed)})")
    for k, v in vals.items():
        if v < (0 if k in ("pad", "ceil_mode") else 1):
            raise ValueError(f"--shape {spec!r}: {k} must be "
                             f"{'>= 0' if k in ('pad', 'ceil_mode') else 'positive'}; got {v}")
    W = vals.get("W", vals["H"])
    if kind == "conv":
        g = vals.get("groups", 1)
        if vals["C"] % g or vals["K"] % g:
            raise ValueError(f"--shape {spec!r}: groups={g} must divide C={vals['C']} and "
                             f"K={vals['K']}")
        sh = ConvShape("user conv", vals["N"], vals["C"], vals["H"], vals["K"], vals["R"],
                       vals.get("stride", 1), vals.get("pad", 0), g, 1,
                       W, vals.get("S", vals["R"]), vals.get("dilation", 1), "")
        P, Q = sh.out_size()
        if P < 1 or Q < 1:
            raise ValueError(f"--shape {spec!r}: the output would be {P} x {Q}: the filter "
                             f"(dilated) is larger than the padded input")
        return sh._replace(name=shape_name(sh))
    k, s, p = vals["k"], vals.get("stride", vals["k"]), vals.get("pad", 0)
    if p * 2 > k:
        raise ValueError(f"--shape {spec!r}: pad={p} must be at most half of k={k} (torch's rule)")
    if k > vals["H"] + 2 * p or k > W + 2 * p:
        raise ValueError(f"--shape {spec!r}: the window k={k} is larger than the padded input")
    cm = bool(vals.get("ceil_mode", 0))
    return PoolShape(f"user pool {k}x{k}/{s} p{p}{' ceil' if cm else ''}", vals["N"], vals["C"],
                     vals["H"], k, s, p, cm, W)


def shape_name(sh: ConvShape) -> str:
    """A user shape's name: its whole geometry, as the JSON rows label it."""
    return (f"user {sh.R}x{sh.filter_width}" + (f"/{sh.stride}" if sh.stride > 1 else "")
            + f" C{sh.C} K{sh.K} H{sh.H}" + (f" W{sh.W}" if sh.width != sh.H else "")
            + (f" d{sh.dilation}" if sh.dilation > 1 else ""))
