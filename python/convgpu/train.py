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
        raise RuntimeError("train: --backend cuda needs a CUDA GPU with CuPy")
    return backend, (cp if cp is not None and backend != "numpy" else np)


def accuracy(model, x, y, xp, batch_size=512) -> float:
    model.eval()
    correct = 0
    for i in range(0, len(x), batch_size):
        logits = model.forward(xp.asarray(x[i:i + batch_size]))
        correct += int((xp.argmax(logits, axis=1) == xp.asarray(y[i:i + batch_size])).sum())
    model.train()
    return correct / len(x)


def load(data_dir: Optional[str], upsample: int, seed: int, test_fraction: float):
    if data_dir:
        (xtr, ytr), (xte, yte) = D.mnist(data_dir)
        return D.upsample(xtr, upsample), ytr, D.upsample(xte, upsample), yte
    x, y = D.digits(upsample)
    (xtr, ytr), (xte, yte) = D.split(x, y, test_fraction, seed)
    return xtr, ytr, xte, yte


def train(epochs=30, batch_size=32, lr=2e-3, optimizer="adam", momentum=0.9, weight_decay=0.0,
          backend="numpy", algo="auto", seed=0, data_dir=None, upsample=1, dropout=0.0,
          batch_norm=False, model="lenet5", test_fraction=0.2, progress=True) -> Result:
    t_start = time.perf_counter()
    if model not in ("lenet5", "resnet"):
        raise ValueError(f"train: model must be 'lenet5' or 'resnet', got {model!r}")
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
        net = nn.resnet_small(xtr.shape[1], xtr.shape[2], classes, algo=algo,
                              backend=op_backend, seed=seed)
        batch_norm = True                    # its batch norms need two images per batch
    else:
        net = nn.lenet5(xtr.shape[1], xtr.shape[2], classes, algo=algo, backend=op_backend,
                        dropout=dropout, batch_norm=batch_norm, seed=seed)
    model = net.to(xp)
    params = model.parameters()
    opt = nn.Adam(params, lr=lr, weight_decay=weight_decay) if optimizer == "adam" else \
        nn.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    loss_fn = nn.SoftmaxCrossEntropy(op_backend, check_labels=False)
    rng = np.random.default_rng(seed + 2)
    hist = History()
    steps = -(-len(xtr) // batch_size)
    if batch_norm and len(xtr) % batch_size == 1:
        steps -= 1          # a last batch of one image has no batch statistics: dropped
    # the training set goes to the device once; batches are gathered there (a copy from
    # pageable host memory per step would block the host, as would reading the loss back
    # every step: without a progress bar the running sums stay on the device until the
    # epoch ends)
    xtr_d, ytr_d = xp.asarray(xtr), xp.asarray(ytr)
    for epoch in range(epochs):
        t0 = time.perf_counter()
        bar = _Bar(steps, f"epoch {epoch + 1:3d}/{epochs}", progress)
        total, correct, seen = xp.zeros((), xp.float64), xp.zeros((), xp.int64), 0
        order = xp.asarray(rng.permutation(len(xtr)))        # D.batches' order
        for step in range(steps):
            j = order[step * batch_size:(step + 1) * batch_size]
            xb, yb = xtr_d[j], ytr_d[j]
            logits = model.forward(xb)
            loss = loss_fn.forward(logits, yb)
            model.backward(loss_fn.backward(), need_input_grad=False)
            opt.step()
            total = total + xp.asarray(loss, dtype=xp.float64) * len(yb)
            correct = correct + (xp.argmax(logits, axis=1) == yb).sum()
            seen += len(yb)
            if progress:
                bar.update(step + 1, f"loss {float(total) / seen:.4f} "
                                     f"acc {int(correct) / seen:.4f}")
        total, correct = float(total), int(correct)          # waits for the epoch's work
        hist.epoch_seconds.append(time.perf_counter() - t0)
        hist.loss.append(total / seen)
        hist.train_acc.append(correct / seen)
        hist.test_acc.append(accuracy(model, xte, yte, xp))
        bar.close(f"loss {hist.loss[-1]:.4f}  train acc {hist.train_acc[-1]:.4f}  "
                  f"test acc {hist.test_acc[-1]:.4f}  ({hist.epoch_seconds[-1]:.2f} s)")
    return Result(model, hist, hist.test_acc[-1], time.perf_counter() - t_start, backend, xte, yte)


# ----------------------------------------------------------------------------------------
# what the run leaves behind


def saliency(model, x, y, backend="auto"):
    """|d loss / d input| per image: the input gradient of the lecture notes' visualisation."""
    model.eval()
    logits = model.forward(x)
    g = model.backward(F.softmax_cross_entropy_backward(logits, y, backend=backend))
    model.train()
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


def main_train(args) -> int:
    res = train(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                optimizer=args.optimizer, momentum=args.momentum,
                weight_decay=args.weight_decay, backend=args.backend, algo=args.algo,
                seed=args.seed, data_dir=args.data, upsample=args.upsample, dropout=args.dropout,
                batch_norm=args.batch_norm, model=args.model, progress=not args.quiet)
    per_epoch = np.median(res.history.epoch_seconds)
    print(f"final test accuracy {res.test_accuracy:.4f} on {len(res.y_test)} images; "
          f"{res.seconds:.1f} s in all, median epoch {per_epoch:.3f} s ({res.backend} backend)")
    if args.save:
        np.savez(args.save, **res.model.state_dict())
        print(f"weights saved to {args.save}")
    if args.plots:
        for p in save_plots(res, args.plots):
            print(f"wrote {p}")
    return 0


def add_arguments(p):
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--optimizer", choices=["adam", "sgd"], default="adam")
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--dropout", type=float, default=0.0)
    p.add_argument("--model", choices=["lenet5", "resnet"], default="lenet5",
                   help="resnet: a 3x3 stem and two residual blocks with batch norms")
    p.add_argument("--batch-norm", action="store_true",
                   help="BatchNorm2d after each conv, BatchNorm1d after the first linear layer")
    p.add_argument("--backend", choices=["numpy", "numba", "cuda", "auto"], default="auto",
                   help="auto: cuda on a GPU, numpy otherwise")
    p.add_argument("--algo", default="auto", help="conv algorithm for the device backends")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data", help="directory with MNIST IDX files (default: sklearn digits)")
    p.add_argument("--upsample", type=int, default=1, help="integer upsampling of the images")
    p.add_argument("--save", help="write the weights to this .npz")
    p.add_argument("--plots", help="write curves, filters and saliency PNGs to this directory")
    p.add_argument("--quiet", action="store_true")
