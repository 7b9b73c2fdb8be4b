"""The network suites (convgpu.tools.shapes) against independent counts: ResNet-50's 53
convolutions, each network's multiply-adds against torchvision's published totals, and the
distinct layers against a network built in torch as torchvision builds it (shapes recorded
by hooks on the meta device, so nothing is computed); `--shape` parsing."""
from collections import Counter

import pytest

from convgpu.tools import shapes

# torchvision's model cards (GFLOPS there are multiply-adds of one 224 x 224 image, the
# classifier included): resnet50 4.09, vgg16 15.47, mobilenet_v2 0.30, alexnet 0.71
PUBLISHED_GMACS = {"resnet50": (4.09, 0.005), "vgg16": (15.47, 0.005),
                   "mobilenetv2": (0.30, 0.005), "alexnet": (0.71, 0.005)}
# the fully connected layers those totals include: in_features x out_features
CLASSIFIER_MACS = {"resnet50": 2048 * 1000, "vgg16": 25088 * 4096 + 4096 * 4096 + 4096 * 1000,
                   "mobilenetv2": 1280 * 1000,
                   "alexnet": 9216 * 4096 + 4096 * 4096 + 4096 * 1000}


def test_resnet50_counts_sum_to_53():
    layers = shapes.network("resnet50")
    assert sum(s.count for s in layers) == 53
    assert len(layers) == len({s.name for s in layers}) == 23          # distinct layers
    assert all(s.N == 32 for s in layers)
    # the 14x14 stage and the strided 1x1 projections are in it
    assert any(s.H == 14 and s.R == 3 and s.stride == 1 for s in layers)
    assert sum(s.count for s in layers if s.R == 1 and s.stride == 2) == 3


@pytest.mark.parametrize("net", sorted(PUBLISHED_GMACS))
def test_multiply_adds_match_published_totals(net):
    layers = shapes.network(net, batch=1)
    total = sum(s.count * s.macs() for s in layers) + CLASSIFIER_MACS[net]
    want, tol = PUBLISHED_GMACS[net]
    assert abs(total / 1e9 - want) <= tol, total


def test_convolution_counts_per_network():
    assert sum(s.count for s in shapes.network("vgg16")) == 13
    mb = shapes.network("mobilenetv2")
    assert sum(s.count for s in mb) == 52
    dw = [s for s in mb if s.groups > 1]
    assert all(s.groups == s.C == s.K and s.R == 3 for s in dw) and sum(s.count for s in dw) == 17
    assert sum(s.count for s in shapes.network("alexnet")) == 5
    classic = shapes.network("classic")
    assert [s.N for s in classic] == [128] * 5 and len(classic) == 5


def test_batch_variants_and_suite_names():
    assert {s.N for s in shapes.parse_suite("resnet50@128")} == {128}
    assert {s.suite for s in shapes.parse_suite("resnet50@128")} == {"resnet50@128"}
    assert {s.suite for s in shapes.network("vgg16")} == {"vgg16"}
    for bad in ("resnet", "resnet50@0", "resnet50@x", "resnet50@-1"):
        with pytest.raises(ValueError):
            shapes.parse_suite(bad)
    # the default conv suite holds the four networks, quick ResNet-50 alone; no classic
    assert {s.suite for s in shapes.conv_suite()} == {"resnet50", "vgg16", "mobilenetv2",
                                                      "alexnet"}
    assert {s.suite for s in shapes.conv_suite(quick=True)} == {"resnet50"}


def _torch_resnet50_layers():
    """ResNet-50 built the way torchvision's resnet.py builds it (Bottleneck, expansion 4,
    stride on conv2, a downsample where the stride or width changes); every Conv2d's call
    recorded by a forward hook on the meta device."""
    torch = pytest.importorskip("torch")
    nn = torch.nn

    class Bottleneck(nn.Module):
        expansion = 4

        def __init__(self, inplanes, planes, stride=1, downsample=None):
            super().__init__()
            self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
            self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
            self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
            self.downsample = downsample

        def forward(self, x):
            idt = self.downsample(x) if self.downsample is not None else x
            return self.conv3(self.conv2(self.conv1(x))) + idt

    def make_layer(inplanes, planes, blocks, stride):
        ds = None
        if stride != 1 or inplanes != planes * 4:
            ds = nn.Conv2d(inplanes, planes * 4, 1, stride, bias=False)
        layers = [Bottleneck(inplanes, planes, stride, ds)]
        layers += [Bottleneck(planes * 4, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    net = nn.Sequential(nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.MaxPool2d(3, 2, 1),
                        make_layer(64, 64, 3, 1), make_layer(256, 128, 4, 2),
                        make_layer(512, 256, 6, 2), make_layer(1024, 512, 3, 2)).to("meta")
    seen = Counter()

    def hook(mod, inp, out):
        x = inp[0]
        seen[(x.shape[1], x.shape[2], mod.out_channels, mod.kernel_size[0], mod.stride[0],
              mod.padding[0], mod.groups)] += 1

    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            m.register_forward_hook(hook)
    with torch.no_grad():
        net(torch.empty(1, 3, 224, 224, device="meta"))
    return seen


def test_resnet50_layers_match_a_torch_build():
    seen = _torch_resnet50_layers()
    ours = Counter({(s.C, s.H, s.K, s.R, s.stride, s.pad, s.groups): s.count
                    for s in shapes.network("resnet50")})
    assert ours == seen


def test_parse_user_shape():
    sh = shapes.parse_shape("conv:N=32,C=64,H=56,W=56,K=64,R=3,S=3,stride=1,pad=1")
    assert (sh.N, sh.C, sh.H, sh.width, sh.K, sh.R, sh.filter_width, sh.stride, sh.pad) == \
        (32, 64, 56, 56, 64, 3, 3, 1, 1)
    assert sh.out_size() == (56, 56)
    rect = shapes.parse_shape("conv:N=2,C=4,H=9,W=13,K=8,R=3,S=5,stride=2,groups=4")
    assert rect.out_size() == (4, 5) and rect.groups == 4
    pool = shapes.parse_shape("pool:N=8,C=64,H=112,k=3,stride=2,pad=1")
    assert (pool.kernel, pool.stride, pool.pad, pool.ceil_mode) == (3, 2, 1, False)
    assert shapes.parse_shape("pool:N=1,C=1,H=8,k=2").stride == 2      # torch: stride = kernel
    for bad, words in [("conv:N=32,C=64,H=56,K=64", "missing R"),
                       ("conv:N=32,C=64,H=56,K=64,R=3,Z=1", "unknown key 'Z'"),
                       ("conv:N=32,C=64,H=5,K=64,R=7", "output would be"),
                       ("conv:N=0,C=64,H=56,K=64,R=3", "N must be positive"),
                       ("conv:N=1,C=6,H=5,K=4,R=3,groups=4", "must divide"),
                       ("conv:N=1,C=6,H=5,K=4,R=3,R=5", "given twice"),
                       ("conv:N=1,C=a", "not KEY=INTEGER"),
                       ("conv2d:N=1", "start with"), ("N=1", "start with"),
                       ("pool:N=1,C=1,H=8,k=2,pad=2", "at most half")]:
        with pytest.raises(ValueError, match=words):
            shapes.parse_shape(bad)
