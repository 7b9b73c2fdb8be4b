"""The layers on the numba backend (simulated): one training step of a small conv net
(conv-relu-maxpool-conv-relu-avgpool-linear-relu-linear) on two digits gives the same loss,
input gradient and parameter gradients as the numpy backend."""
import numpy as np

from convgpu import data as D
from convgpu import nn
from helpers import TOL, assert_close


def _net(backend):
    rng = np.random.default_rng(3)
    kw = dict(rng=rng, dtype=np.float64, backend=backend)
    a1, a2 = ("im2col", "direct") if backend == "numba" else ("auto", "auto")
    return nn.Sequential(
        nn.Conv2d(1, 2, 3, padding=1, algo=a1, **kw), nn.ReLU(backend),
        nn.MaxPool2d(2, backend=backend),
        nn.Conv2d(2, 3, 3, padding=1, algo=a2, **kw), nn.ReLU(backend),
        nn.AvgPool2d(2, backend=backend), nn.Flatten(),
        nn.Linear(12, 5, **kw), nn.ReLU(backend), nn.Linear(5, 10, **kw))


def test_small_net_step_numba_matches_numpy():
    x, y = D.digits()
    xb, yb = x[:2].astype(np.float64), y[:2]
    out = {}
    for backend in ("numpy", "numba"):
        net = _net(backend)
        loss = nn.SoftmaxCrossEntropy(backend)
        value = float(loss.forward(net.forward(xb), yb))
        gx = net.backward(loss.backward())
        out[backend] = (value, gx, {k: p.grad for k, p in net.named_parameters().items()})
    assert abs(out["numpy"][0] - out["numba"][0]) <= 1e-12 * abs(out["numpy"][0])
    assert_close(out["numba"][1], out["numpy"][1], TOL[np.float64])
    for k, g in out["numpy"][2].items():
        assert_close(out["numba"][2][k], g, TOL[np.float64])
