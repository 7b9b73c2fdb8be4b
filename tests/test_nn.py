"""The training loop's pieces: layers (whole-network gradient check in float64), optimisers,
data loading (IDX files written here), determinism, and the accuracy of a short run."""
import gzip
import os

import numpy as np
import pytest

from convgpu import data as D
from convgpu import nn
from convgpu.train import train
from helpers import rand


def small_net(seed=0):
    rng = np.random.default_rng(seed)
    kw = dict(rng=rng, dtype=np.float64)
    return nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1, **kw), nn.ReLU(), nn.MaxPool2d(2, stride=2),
        nn.Conv2d(3, 4, (2, 3), stride=(1, 2), padding=(1, 1), **kw), nn.ReLU(),
        nn.AvgPool2d(2, ceil_mode=True), nn.Flatten(),
        nn.Linear(4 * 2 * 1, 5, **kw), nn.ReLU(), nn.Linear(5, 3, **kw))


def decoder_net(seed=0):
    """Strided conv down, transposed conv back up (output_padding, groups), a conv with
    padding="same" and an even kernel, adaptive average pooling (8 -> 3 rows: overlapping
    windows), global average pooling."""
    rng = np.random.default_rng(seed)
    kw = dict(rng=rng, dtype=np.float64)
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, stride=2, padding=1, **kw), nn.ReLU(),
        nn.ConvTranspose2d(4, 6, 3, stride=2, padding=1, output_padding=1, groups=2, **kw),
        nn.ReLU(), nn.Conv2d(6, 5, (2, 4), padding="same", dilation=(2, 1), **kw), nn.ReLU(),
        nn.AdaptiveAvgPool2d((3, 2)), nn.GlobalAvgPool2d(), nn.Linear(5, 3, **kw))


def bn_net(seed=0):
    """Batch normalisation after a conv (2d, over N, H, W) and after a linear layer (1d,
    over N), one with running estimates and one without (batch statistics either way)."""
    rng = np.random.default_rng(seed)
    kw = dict(rng=rng, dtype=np.float64)
    return nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1, bias=False, **kw), nn.BatchNorm2d(3, dtype=np.float64),
        nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(3 * 3 * 3, 5, bias=False, **kw),
        nn.BatchNorm1d(5, momentum=0.5, track_running_stats=False, dtype=np.float64), nn.ReLU(),
        nn.Linear(5, 3, **kw))


def res_net(seed=0):
    """nn.resnet_small: a stem, an identity residual block and a strided one whose shortcut
    is a 1x1 strided conv + batch norm."""
    return nn.resnet_small(2, 7, 3, width=3, seed=seed, dtype=np.float64)


@pytest.mark.parametrize("make", [small_net, decoder_net, bn_net, res_net])
def test_whole_network_gradient_check(rng, make):
    """Every parameter's gradient and the input gradient of a network against central
    differences in float64 along random directions: conv-relu-maxpool-conv-relu-avgpool-
    linear, and a decoder (strided conv, transposed conv, padding="same", global pooling)."""
    net = make()
    for p in net.parameters():                   # non-zero biases (and BN weights off 1)
        p.data = p.data + rand(rng, p.shape) * 0.1
    x = rng.standard_normal((3, 2, 7, 7))
    labels = np.array([0, 2, 1])
    loss = nn.SoftmaxCrossEntropy()

    def f():
        return float(loss.forward(net.forward(x), labels))

    f()
    gx = net.backward(loss.backward())
    grads = {k: p.grad.copy() for k, p in net.named_parameters().items()}
    eps = 1e-6
    for name, p in net.named_parameters().items():
        v = rng.standard_normal(p.shape)
        base = p.data.copy()
        p.data = base + eps * v
        fp = f()
        p.data = base - eps * v
        fm = f()
        p.data = base
        fd = (fp - fm) / (2 * eps)
        an = float(np.sum(grads[name] * v))
        assert abs(fd - an) <= 1e-6 * max(1.0, abs(fd)), (name, fd, an)
    v = rng.standard_normal(x.shape)
    x0 = x.copy()
    x = x0 + eps * v
    fp = f()
    x = x0 - eps * v
    fm = f()
    x = x0
    assert abs((fp - fm) / (2 * eps) - float(np.sum(gx * v))) <= 1e-6 * max(1.0, abs(fp))


def test_dropout_is_inverted_and_seeded(rng):
    x = np.ones((200, 50))
    d = nn.Dropout(0.3, seed=5)
    y = d.forward(x)
    assert set(np.unique(y)) <= {0.0, 1 / 0.7}
    assert abs(y.mean() - 1.0) < 0.05
    np.testing.assert_array_equal(d.backward(np.ones_like(x)), d.mask)
    np.testing.assert_array_equal(nn.Dropout(0.3, seed=5).forward(x), y)
    d.eval()
    assert d.forward(x) is x
    with pytest.raises(ValueError, match="Dropout"):
        nn.Dropout(1.0)


def test_initialisers_have_the_stated_scale():
    rng = np.random.default_rng(0)
    w = nn.he_normal(rng, (400, 100), 100, np.float64)
    assert abs(w.std() - np.sqrt(2 / 100)) < 0.01 * np.sqrt(2 / 100) * 5
    g = nn.glorot_uniform(rng, (300, 200), 200, 300, np.float64)
    a = np.sqrt(6 / 500)
    assert g.max() <= a and g.min() >= -a and abs(g.std() - a / np.sqrt(3)) < 0.05 * a


def test_sgd_momentum_and_weight_decay_match_hand_computation():
    p = nn.Parameter(np.array([1.0, -2.0]))
    opt = nn.SGD([p], lr=0.1, momentum=0.9, weight_decay=0.01)
    grads = [np.array([0.5, 0.25]), np.array([-1.0, 2.0])]
    w, v = np.array([1.0, -2.0]), np.zeros(2)
    for g in grads:
        p.grad = g
        opt.step()
        g2 = g + 0.01 * w
        v = 0.9 * v + g2 if v.any() else g2
        w = w - 0.1 * v
    np.testing.assert_allclose(p.data, w, rtol=1e-15)


def test_adam_matches_hand_computation():
    p = nn.Parameter(np.array([0.5, -1.5, 2.0]))
    opt = nn.Adam([p], lr=0.01)
    w, m, v = p.data.copy(), np.zeros(3), np.zeros(3)
    for t, g in enumerate([np.array([0.1, -0.2, 0.3]), np.array([0.05, 0.4, -0.1])], start=1):
        p.grad = g
        opt.step()
        m = 0.9 * m + 0.1 * g
        v = 0.999 * v + 0.001 * g * g
        w = w - 0.01 * (m / (1 - 0.9 ** t)) / (np.sqrt(v / (1 - 0.999 ** t)) + 1e-8)
    np.testing.assert_allclose(p.data, w, rtol=1e-14)


def test_idx_reader_round_trip_and_mnist_layout(tmp_path):
    rng = np.random.default_rng(1)
    imgs = rng.integers(0, 256, size=(7, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=7).astype(np.uint8)
    for prefix, n in (("train", 7), ("t10k", 3)):
        D.write_idx(str(tmp_path / f"{prefix}-images-idx3-ubyte"), imgs[:n])
        D.write_idx(str(tmp_path / f"{prefix}-labels-idx1-ubyte.gz"), labels[:n])
    np.testing.assert_array_equal(D.read_idx(str(tmp_path / "train-images-idx3-ubyte")), imgs)
    (xtr, ytr), (xte, yte) = D.mnist(str(tmp_path))
    assert xtr.shape == (7, 1, 28, 28) and xte.shape == (3, 1, 28, 28)
    np.testing.assert_allclose(xtr[:, 0] * 255, imgs, atol=1e-4)
    np.testing.assert_array_equal(ytr, labels)
    # int32 payload
    D.write_idx(str(tmp_path / "ints"), np.arange(6, dtype=np.int32).reshape(2, 3))
    np.testing.assert_array_equal(D.read_idx(str(tmp_path / "ints")), np.arange(6).reshape(2, 3))


def test_idx_reader_rejects_bad_files(tmp_path):
    bad = tmp_path / "bad"
    bad.write_bytes(b"\x01\x02\x08\x01\x00\x00\x00\x05abcde")
    with pytest.raises(ValueError, match="not an IDX file"):
        D.read_idx(str(bad))
    short = tmp_path / "short.gz"
    with gzip.open(short, "wb") as f:
        f.write(b"\x00\x00\x08\x01\x00\x00\x00\x09abc")
    with pytest.raises(ValueError, match="truncated"):
        D.read_idx(str(short))
    with pytest.raises(FileNotFoundError, match="train-images"):
        D.mnist(str(tmp_path))


def test_digits_split_batches_upsample():
    x, y = D.digits()
    assert x.shape == (1797, 1, 8, 8) and y.shape == (1797,) and x.max() <= 1.0
    (xtr, ytr), (xte, yte) = D.split(x, y, 0.2, seed=3)
    assert len(xte) == 359 and len(xtr) == 1438
    (xtr2, _), _ = D.split(x, y, 0.2, seed=3)
    np.testing.assert_array_equal(xtr, xtr2)
    seen = np.concatenate([yb for _, yb in D.batches(xtr, ytr, 100, rng=np.random.default_rng(0))])
    assert sorted(seen.tolist()) == sorted(ytr.tolist())
    up = D.upsample(x[:2], 2)
    assert up.shape == (2, 1, 16, 16)
    np.testing.assert_allclose(up.mean(), x[:2].mean(), atol=0.02)
    np.testing.assert_array_equal(D.upsample(x[:1], 3, "nearest")[0, 0, :3, :3], x[0, 0, 0, 0])


def test_state_dict_round_trip(tmp_path):
    a, b = nn.lenet5(seed=1), nn.lenet5(seed=2)
    path = str(tmp_path / "w.npz")
    np.savez(path, **a.state_dict())
    b.load_state_dict(dict(np.load(path)))
    for k, p in a.named_parameters().items():
        np.testing.assert_array_equal(p.data, b.named_parameters()[k].data)
    with pytest.raises(ValueError, match="shape"):
        b.load_state_dict({**a.state_dict(), "0.weight": np.zeros((1, 1, 1, 1))})


def test_same_seed_same_result():
    r1 = train(epochs=2, seed=7, progress=False)
    r2 = train(epochs=2, seed=7, progress=False)
    assert r1.history.loss == r2.history.loss
    for k, p in r1.model.named_parameters().items():
        np.testing.assert_array_equal(p.data, r2.model.named_parameters()[k].data)
    r3 = train(epochs=2, seed=8, progress=False)
    assert r3.history.loss != r1.history.loss


def test_short_run_reaches_90_percent():
    res = train(epochs=6, seed=0, progress=False)
    assert res.test_accuracy >= 0.90, res.history.test_acc


def test_cli_train_writes_weights_and_plots(tmp_path, capsys, monkeypatch):
    pytest.importorskip("matplotlib")
    from convgpu.tools import cliutil
    from convgpu.tools.cli import main
    # in this process: no backend switch set (without a GPU they would stay set for the
    # tests after this one); the numpy backend runs either way
    monkeypatch.setattr(cliutil, "_prepare_backends", lambda *a, **k: 0)
    out = tmp_path / "plots"
    rc = main(["train", "--epochs", "2", "--quiet", "--save", str(tmp_path / "w.npz"),
               "--plots", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "final test accuracy" in text
    assert sorted(os.listdir(out)) == ["curves.png", "filters.png", "saliency.png"]
    assert set(np.load(tmp_path / "w.npz").files) == set(nn.lenet5().named_parameters()) | {
        "__convgpu__"}                                   # the architecture and settings


def test_label_check_can_be_skipped_and_the_loss_layer_checks_once(monkeypatch):
    """softmax_cross_entropy validates labels by default (ValueError) and skips it with
    check_labels=False; SoftmaxCrossEntropy checks in forward only (on a GPU each check waits
    for the device), and not at all with check_labels=False (train.py checks once)."""
    import convgpu
    from convgpu import nn
    from convgpu.core import args as A
    z = np.random.default_rng(0).standard_normal((4, 3))
    bad = np.array([0, 3, 1, 2])
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        convgpu.softmax_cross_entropy(z, bad)
    convgpu.softmax_cross_entropy_backward(z, bad % 3, check_labels=False)
    calls = []
    real = A.check_labels_range
    monkeypatch.setattr(A, "check_labels_range", lambda *a: (calls.append(a), real(*a)))
    good = np.array([0, 2, 1, 2])
    layer = nn.SoftmaxCrossEntropy()
    layer.forward(z, good)
    layer.backward()
    assert len(calls) == 1
    layer = nn.SoftmaxCrossEntropy(check_labels=False)
    layer.forward(z, good)
    layer.backward()
    assert len(calls) == 1


def test_batch_norm_layers_train_and_eval(rng):
    """Training moves the running estimates towards the batch's statistics; eval normalises
    with them (and leaves them); state_dict carries them; a wrong rank is refused."""
    bn = nn.BatchNorm2d(3, momentum=0.25, dtype=np.float64)
    x = rand(rng, (4, 3, 5, 5)) * 2 + 1
    y = bn.forward(x)
    np.testing.assert_allclose(y.mean(axis=(0, 2, 3)), 0, atol=1e-12)
    np.testing.assert_allclose(bn.running_mean, 0.25 * x.mean(axis=(0, 2, 3)), rtol=1e-12)
    np.testing.assert_allclose(bn.running_var, 0.75 + 0.25 * x.var(axis=(0, 2, 3), ddof=1),
                               rtol=1e-12)
    net = nn.Sequential(bn).eval()
    rm = bn.running_mean.copy()
    ye = net.forward(x)
    np.testing.assert_array_equal(bn.running_mean, rm)
    want = (x - rm[None, :, None, None]) / np.sqrt(bn.running_var[None, :, None, None] + 1e-5)
    np.testing.assert_allclose(ye, want, rtol=1e-12)
    gy = rand(rng, x.shape)                       # eval backward: w invstd gy
    np.testing.assert_allclose(net.backward(gy),
                               gy / np.sqrt(bn.running_var[None, :, None, None] + 1e-5),
                               rtol=1e-12)
    state = net.state_dict()
    assert set(state) == {"0.weight", "0.bias", "0.running_mean", "0.running_var"}
    other = nn.Sequential(nn.BatchNorm2d(3, dtype=np.float64))
    other.load_state_dict(state)
    np.testing.assert_array_equal(other.layers[0].running_var, bn.running_var)
    with pytest.raises(ValueError, match="BatchNorm2d: input must be 4-D"):
        nn.BatchNorm2d(3).forward(rand(rng, (4, 3)))
    with pytest.raises(ValueError, match="BatchNorm1d: input must be 2-D or 3-D"):
        nn.BatchNorm1d(3).forward(x)


def test_short_run_with_batch_norm_reaches_90_percent():
    res = train(epochs=4, seed=0, batch_norm=True, progress=False)
    kinds = [type(layer).__name__ for layer in res.model.layers]
    assert kinds.count("BatchNorm2d") == 2 and kinds.count("BatchNorm1d") == 1
    assert res.model.layers[0].bias is None                 # the norm cancels a conv bias
    assert res.test_accuracy >= 0.90, res.history.test_acc
    bn = res.model.layers[1]           # the running estimates moved (accuracy() evaluates
    assert np.all(bn.running_var != 1) and np.all(bn.running_mean != 0)    # with them)


def test_batch_norm_training_drops_a_last_batch_of_one_image():
    x, y = D.digits()
    (xtr, _), _ = D.split(x, y, 0.2, 0)
    batch = max(b for b in range(2, len(xtr)) if len(xtr) % b == 1)     # 479 of 1438
    res = train(epochs=1, batch_size=batch, seed=0, batch_norm=True, progress=False)
    assert len(res.history.loss) == 1 and np.isfinite(res.history.loss[0])


def test_short_resnet_run_reaches_90_percent():
    # a constant rate: two epochs of the cosine schedule spend half their steps below lr/2
    res = train(epochs=2, seed=0, model="resnet", progress=False, schedule="none")
    kinds = [type(layer).__name__ for layer in res.model.layers]
    assert kinds.count("Residual") == 2 and kinds[-2:] == ["GlobalAvgPool2d", "Linear"]
    assert res.test_accuracy >= 0.90, res.history.test_acc


def test_residual_state_dict_names_and_round_trip(rng):
    a, b = res_net(seed=1), res_net(seed=2)
    a.forward(rand(rng, (4, 2, 7, 7)))                      # move the running estimates
    state = a.state_dict()
    for name in ("3.body.0.weight", "3.body.1.running_var", "5.shortcut.0.weight",
                 "5.shortcut.1.running_mean", "8.bias"):
        assert name in state, sorted(state)
    assert "3.shortcut.0.weight" not in state                # the identity block has none
    b.load_state_dict(state)
    x = rand(rng, (3, 2, 7, 7))
    np.testing.assert_array_equal(a.eval().forward(x), b.eval().forward(x))


def test_unknown_model_is_refused_before_any_work():
    with pytest.raises(ValueError, match="model must be 'lenet5' or 'resnet'"):
        train(epochs=1, model="vgg", progress=False)
