"""The training loop: a LeNet-5-style network on real digit images through the op API.

    convgpu train                       # 8x8 scikit-learn digits; the GPU if there is one
    convgpu train --backend numpy       # NumPy on the CPU
    convgpu train --backend cuda        # on a GPU: CuPy arrays, CUDA C / Numba kernels
    convgpu train --data DIR            # MNIST IDX files the user already has
    convgpu train --save w.npz --plots out/

The same seed gives the same result on the same backend: the seed fixes the weights, the
train/test split, the batch order and the dropout masks.
"""
from __future__ import annotations

import math
import numbers
import os
import sys
import time
from dataclasses import dataclass, field
from typing import List, Optional

import numpy as np

import convgpu as F
from convgpu import data as D
from convgpu import nn


@dataclass
class History:
    loss: List[float] = field(default_factory=list)
    train_acc: List[float] = field(default_factory=list)
    test_acc: List[float] = field(default_factory=list)
    epoch_seconds: List[float] = field(default_factory=list)


@dataclass
class Result:
    model: nn.Sequential
    history: History
    test_accuracy: float
    seconds: float
    backend: str
    x_test: np.ndarray
    y_test: np.ndarray
    best_test_accuracy: float = 0.0
    best_epoch: int = 0
    architecture: dict = field(default_factory=dict)
    settings: dict = field(default_factory=dict)


class _Bar:
    """A one-line progress bar per epoch (redrawn in place on a terminal)."""

    def __init__(self, total, label, enabled):
        self.total, self.label, self.enabled = total, label, enabled
        self.tty = enabled and sys.stdout.isatty()

    def update(self, done, text=""):
        if self.tty:
            w = 24
            fill = int(w * done / self.total)
            sys.stdout.write(f"\r{self.label} [{'#' * fill}{'.' * (w - fill)}] {text}")
            sys.stdout.flush()

    def close(self, text):
        if self.enabled:
            if self.tty:
                sys.stdout.write("\r" + " " * 100 + "\r")
            print(f"{self.label} {text}", flush=True)


def _resolve(backend):
    """(backend, array module): auto is cuda on a GPU and numpy otherwise; the GPU backends
    take CuPy arrays when a GPU is present (Numba without one runs simulated on NumPy)."""
    from convgpu.arrays import cupy_module
    cp = cupy_module() if backend != "numpy" else None
    if backend == "auto":
        backend = "cuda" if cp is not None else "numpy"
    if backend == "cuda" and cp is None:
        raise RuntimeError("train: backend 'cuda' needs a CUDA GPU with CuPy; none is visible "
                           "(use backend 'numpy', or 'numba' for the CUDA simulator)")
    return backend, (cp if cp is not None and backend != "numpy" else np)


def accuracy(model, x, y, xp, batch_size=512) -> float:
    """Test accuracy, in eval mode (the model's mode is restored afterwards)."""
    correct = 0
    for i in range(0, len(x), batch_size):
        logits = nn.evaluate(model, xp.asarray(x[i:i + batch_size]))
        correct += int((xp.argmax(logits, axis=1) == xp.asarray(y[i:i + batch_size])).sum())
    return correct / len(x)


def load(data_dir: Optional[str], upsample: int, seed: int, test_fraction: float):
    if data_dir:
        (xtr, ytr), (xte, yte) = D.mnist(data_dir)
        return D.upsample(xtr, upsample), ytr, D.upsample(xte, upsample), yte
    x, y = D.digits(upsample)
    (xtr, ytr), (xte, yte) = D.split(x, y, test_fraction, seed)
    return xtr, ytr, xte, yte


MODELS = ("lenet5", "resnet")
SCHEDULES = ("cosine", "step", "none")


def learning_rate(lr: float, schedule: str, step: int, total: int) -> float:
    """The rate at step `step` of `total`: cosine anneals from lr to 0 over the run (the
    last epochs, at small rates, settle rather than jump); step divides by 10 at half and
    at three quarters of the run; none keeps lr."""
    if schedule == "cosine":
        return 0.5 * lr * (1 + math.cos(math.pi * step / total))
    if schedule == "step":
        return lr * 0.1 ** ((step >= total // 2) + (step >= 3 * total // 4))
    return lr


def check_settings(epochs, batch_size, lr, optimizer, momentum, weight_decay, dropout, model,
                   schedule, upsample, test_fraction, batch_norm) -> None:
    """ValueError naming the first setting out of range, before any data or work."""
    def bad(name, want, got):
        raise ValueError(f"train: {name} must be {want}, got {got!r}")
    if model not in MODELS:
        bad("model", "'lenet5' or 'resnet'", model)
    if not isinstance(epochs, numbers.Integral) or epochs < 1:
        bad("epochs", "an int >= 1", epochs)
    need = 2 if batch_norm or model == "resnet" else 1
    if not isinstance(batch_size, numbers.Integral) or batch_size < need:
        bad("batch_size", f"an int >= {need}" + (" (batch norms need two images)"
                                                  if need == 2 else ""), batch_size)
    if not lr > 0:
        bad("lr", "> 0", lr)
    if optimizer not in ("adam", "sgd"):
        bad("optimizer", "'adam' or 'sgd'", optimizer)
    if not 0 <= momentum < 1:
        bad("momentum", "in [0, 1)", momentum)
    if not weight_decay >= 0:
        bad("weight_decay", ">= 0", weight_decay)
    if not 0 <= dropout < 1:
        bad("dropout", "in [0, 1)", dropout)
    if schedule not in SCHEDULES:
        bad("schedule", " or ".join(map(repr, SCHEDULES)), schedule)
    if not isinstance(upsample, numbers.Integral) or upsample < 1:
        bad("upsample", "an int >= 1", upsample)
    if not 0 < test_fraction < 1:
        bad("test_fraction", "in (0, 1)", test_fraction)


def build_model(model, in_channels, image_size, classes, *, algo="auto", backend="auto",
                dropout=0.0, batch_norm=False, seed=0) -> nn.Sequential:
    """The network `train` builds for these settings (and `load_model` rebuilds)."""
    if model == "resnet":
        return nn.resnet_small(in_channels, image_size, classes, algo=algo, backend=backend,
                               seed=seed)
    return nn.lenet5(in_channels, image_size, classes, algo=algo, backend=backend,
                     dropout=dropout, batch_norm=batch_norm, seed=seed)


def algo_problems(model, in_channels, image_size, classes, algo, backend, on_device,
                  batch_norm=False) -> List[str]:
    """Why the conv algorithm family `algo` cannot serve every convolution of this network on
    this backend: one sentence per pass it cannot serve (empty: it can). The layers' input
    shapes come from a forward of two images through a NumPy copy of the network."""
    from convgpu.core import args as A
    from convgpu.ops._registry import all_impls
    if algo == "auto":
        return []
    twin = build_model(model, in_channels, image_size, classes, backend="numpy",
                       batch_norm=batch_norm)
    twin.forward(np.zeros((2, in_channels, image_size, image_size), np.float32))
    order = ("cuda", "numba") if backend == "auto" and on_device else \
        ("numpy",) if backend == "auto" else (backend,)
    passes = ("conv2d", "conv2d_backward_input", "conv2d_backward_weight")
    out = []
    for n, layer in enumerate(nn.modules(twin, nn.Conv2d)):
        kw = layer.kw
        for op, name in zip(passes, nn.ALGO_FAMILIES[algo]):
            if op == "conv2d_backward_input" and n == 0:
                continue                    # the first layer's input gradient is never taken
            impls = [i for i in all_impls(op) if i.algo == name and i.backend in order]
            where = f"conv layer {n} (input {tuple(layer.x.shape[1:])}, weight " \
                    f"{tuple(layer.weight.shape)}, stride {kw['stride']}, groups {kw['groups']})"
            if not impls:
                out.append(f"{op} has no ({'/'.join(order)}, {name}) implementation")
                continue
            args = A.conv_geometry(op, layer.x.shape, layer.weight.shape, kw["stride"],
                                   kw["padding"], kw["dilation"], kw["groups"],
                                   np.dtype(np.float32))
            reasons = [i.why_not(args) for i in impls]
            if all(reasons):
                out.append(f"{op} ({impls[0].backend}, {name}) cannot serve {where}: "
                           f"{reasons[0]}")
    return list(dict.fromkeys(out))


def train(epochs=30, batch_size=32, lr=2e-3, optimizer="adam", momentum=0.9, weight_decay=0.0,
          backend="numpy", algo="auto", seed=0, data_dir=None, upsample=1, dropout=0.0,
          batch_norm=False, model="lenet5", test_fraction=0.2, progress=True,
          schedule="cosine", step_progress=False) -> Result:
    """Train and test; the learning rate follows `schedule` (learning_rate) per step.
    progress: a line per epoch (a bar redrawn per step on a terminal); step_progress: a
    line per step on stderr as well, with the first step's time and the run's estimate
    (for the CUDA simulator, where a step takes minutes)."""
    t_start = time.perf_counter()
    check_settings(epochs, batch_size, lr, optimizer, momentum, weight_decay, dropout, model,
                   schedule, upsample, test_fraction, batch_norm)
    backend, xp = _resolve(backend)
    xtr, ytr, xte, yte = load(data_dir, upsample, seed, test_fraction)
    # "cuda" runs the CUDA C kernels where an op has them and the Numba kernels elsewhere
    # (the ops' own "auto" on device arrays); "numba" and "numpy" are taken as given
    op_backend = "auto" if backend == "cuda" else backend
    # the labels are checked once here, on the host, not in every step (on a GPU each check
    # is two reductions and two reads that wait for the device); the classes are 0..max
    lowest = min(ytr.min(), yte.min())
    if lowest < 0:
        raise ValueError(f"train: labels must be class indices >= 0, found {lowest}")
    classes = int(max(ytr.max(), yte.max())) + 1
    if model == "resnet":
        batch_norm = True                    # its batch norms need two images per batch
    net = build_model(model, xtr.shape[1], xtr.shape[2], classes, algo=algo,
                      backend=op_backend, dropout=dropout, batch_norm=batch_norm, seed=seed)
    arch = dict(model=model, in_channels=int(xtr.shape[1]), image_size=int(xtr.shape[2]),
                classes=classes, dropout=dropout, batch_norm=batch_norm)
    net = net.to(xp)
    params = net.parameters()
    opt = nn.Adam(params, lr=lr, weight_decay=weight_decay) if optimizer == "adam" else \
        nn.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    loss_fn = nn.SoftmaxCrossEntropy(op_backend, check_labels=False)
    rng = np.random.default_rng(seed + 2)
    hist = History()
    steps = -(-len(xtr) // batch_size)
    if batch_norm and len(xtr) % batch_size == 1:
        steps -= 1          # a last batch of one image has no batch statistics: dropped
    total_steps = steps * epochs
    # the training set goes to the device once; batches are gathered there (a copy from
    # pageable host memory per step would block the host, as would reading the loss back
    # every step: without a progress bar the running sums stay on the device until the
    # epoch ends)
    xtr_d, ytr_d = xp.asarray(xtr), xp.asarray(ytr)
    best_acc, best_epoch = -1.0, 0
    for epoch in range(epochs):
        t0 = time.perf_counter()
        bar = _Bar(steps, f"epoch {epoch + 1:3d}/{epochs}", progress)
        total, correct, seen = xp.zeros((), xp.float64), xp.zeros((), xp.int64), 0
        order = xp.asarray(rng.permutation(len(xtr)))        # D.batches' order
        for step in range(steps):
            t_step = time.perf_counter()
            opt.lr = learning_rate(lr, schedule, epoch * steps + step, total_steps)
            j = order[step * batch_size:(step + 1) * batch_size]
            xb, yb = xtr_d[j], ytr_d[j]
            logits = net.forward(xb)
            loss = loss_fn.forward(logits, yb)
            net.backward(loss_fn.backward(), need_input_grad=False)
            opt.step()
            total = total + xp.asarray(loss, dtype=xp.float64) * len(yb)
            correct = correct + (xp.argmax(logits, axis=1) == yb).sum()
            seen += len(yb)
            if progress:
                bar.update(step + 1, f"loss {float(total) / seen:.4f} "
                                     f"acc {int(correct) / seen:.4f}")
            if step_progress:
                dt = time.perf_counter() - t_step
                done = epoch * steps + step + 1
                eta = "" if done > 1 else (f"; at this rate the run's {total_steps} steps "
                                           f"take about {_duration(dt * total_steps)}")
                print(f"step {done}/{total_steps}: {dt:.1f} s, loss {float(loss):.4f}{eta}",
                      file=sys.stderr, flush=True)
        total, correct = float(total), int(correct)          # waits for the epoch's work
        hist.epoch_seconds.append(time.perf_counter() - t0)
        hist.loss.append(total / seen)
        hist.train_acc.append(correct / seen)
        hist.test_acc.append(accuracy(net, xte, yte, xp))
        if hist.test_acc[-1] > best_acc:
            best_acc, best_epoch = hist.test_acc[-1], epoch + 1
        bar.close(f"loss {hist.loss[-1]:.4f}  train acc {hist.train_acc[-1]:.4f}  "
                  f"test acc {hist.test_acc[-1]:.4f}  lr {opt.lr:.2e}  "
                  f"({hist.epoch_seconds[-1]:.2f} s)")
    settings = dict(epochs=epochs, batch_size=batch_size, lr=lr, optimizer=optimizer,
                    momentum=momentum, weight_decay=weight_decay, schedule=schedule,
                    algo=algo, backend=backend, seed=seed, upsample=upsample,
                    test_fraction=test_fraction, data=os.path.abspath(data_dir) if data_dir
                    else None)
    return Result(net, hist, hist.test_acc[-1], time.perf_counter() - t_start, backend, xte, yte,
                  best_acc, best_epoch, arch, settings)


def _duration(seconds: float) -> str:
    for unit, n in (("days", 86400), ("hours", 3600), ("minutes", 60)):
        if seconds >= 2 * n:
            return f"{seconds / n:.0f} {unit}"
    return f"{seconds:.0f} s"


# ----------------------------------------------------------------------------------------
# saved weights: the architecture and settings beside them


META = "__convgpu__"
FORMAT = 1


def save(result: "Result", path: str) -> None:
    """The weights (state_dict names) and, under META, a JSON of the architecture, the
    training settings and the results: what load_model needs to rebuild the network."""
    import json
    meta = dict(format=FORMAT, architecture=result.architecture, settings=result.settings,
                test_accuracy=result.test_accuracy, best_epoch=result.best_epoch,
                best_test_accuracy=result.best_test_accuracy)
    np.savez(path, **result.model.state_dict(), **{META: np.array(json.dumps(meta))})


def load_model(path: str, backend: str = "numpy"):
    """(model, meta) from a file written by save (train --save). ValueError naming the file
    where it is not one: missing metadata, another format, or weights that don't fit."""
    import json
    import zipfile
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise ValueError(f"{path}: not a weights file written by convgpu train --save "
                         f"({type(e).__name__}: {e})") from None
    if META not in arrays:
        raise ValueError(f"{path}: no architecture record ({META}): weights saved by an older "
                         "convgpu, or not by convgpu train --save")
    try:
        meta = json.loads(str(arrays.pop(META)))
        arch = meta["architecture"]
        if meta.get("format") != FORMAT:
            raise ValueError(f"format {meta.get('format')!r}, this convgpu reads {FORMAT}")
        model = build_model(arch["model"], arch["in_channels"], arch["image_size"],
                            arch["classes"], backend=backend, dropout=arch["dropout"],
                            batch_norm=arch["batch_norm"])
        model.load_state_dict(arrays)
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: cannot rebuild the network: {e}") from None
    return model.eval(), meta


# ----------------------------------------------------------------------------------------
# what the run leaves behind


def saliency(model, x, y, backend="auto"):
    """|d loss / d input| per image: the input gradient of the lecture notes' visualisation."""
    with nn.eval_mode(model):
        logits = model.forward(x)
        g = model.backward(F.softmax_cross_entropy_backward(logits, y, backend=backend))
    from convgpu.arrays import to_host
    return np.abs(to_host(g))


def save_plots(result: Result, directory: str) -> List[str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from convgpu.arrays import to_host
    os.makedirs(directory, exist_ok=True)
    h = result.history
    paths = []

    fig, ax = plt.subplots(1, 2, figsize=(10, 3.6))
    ep = np.arange(1, len(h.loss) + 1)
    ax[0].plot(ep, h.loss)
    ax[0].set(xlabel="epoch", ylabel="training loss", title="loss", yscale="log")
    ax[1].plot(ep, h.train_acc, label="train")
    ax[1].plot(ep, h.test_acc, label="test")
    ax[1].set(xlabel="epoch", ylabel="accuracy", title="accuracy", ylim=(0.5, 1.0))
    ax[1].legend()
    fig.tight_layout()
    paths.append(os.path.join(directory, "curves.png"))
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)

    w = to_host(result.model.layers[0].weight.data)
    fig, ax = plt.subplots(1, w.shape[0], figsize=(1.6 * w.shape[0], 1.9))
    for i in range(w.shape[0]):
        ax[i].imshow(w[i, 0], cmap="gray")
        ax[i].set_title(f"filter {i}", fontsize=8)
        ax[i].axis("off")
    fig.suptitle("first-layer filters")
    fig.tight_layout()
    paths.append(os.path.join(directory, "filters.png"))
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)

    n = 6
    xb = result.x_test[:n]
    yb = result.y_test[:n]
    from convgpu.arrays import xp_of
    xp = xp_of(result.model.layers[0].weight.data)
    sal = saliency(result.model, xp.asarray(xb), xp.asarray(yb),
                   backend="numpy" if xp is np else "auto")
    fig, ax = plt.subplots(2, n, figsize=(1.7 * n, 3.6))
    for i in range(n):
        ax[0, i].imshow(xb[i, 0], cmap="gray")
        ax[0, i].set_title(f"label {yb[i]}", fontsize=8)
        ax[1, i].imshow(sal[i, 0], cmap="hot")
        ax[0, i].axis("off")
        ax[1, i].axis("off")
    ax[1, 0].set_title("|d loss / d input|", fontsize=8)
    fig.tight_layout()
    paths.append(os.path.join(directory, "saliency.png"))
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)
    return paths
