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


# ----------------------------------------------------------------------------------------
# the command line: train, eval, predict


def _usage(message):
    from convgpu.cliutil import UsageError
    return UsageError(message)


def _check_data(path: Optional[str]) -> None:
    if path is None:
        try:
            import sklearn  # noqa: F401
        except ImportError:
            raise _usage("the default data set (the 8x8 digits) needs scikit-learn: pip install "
                         "'convgpu[data]', or give --data DIR with MNIST's IDX files") from None
        return
    if not os.path.isdir(path):
        raise _usage(f"argument --data: {path} is not a directory (it should hold MNIST's "
                     "train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte "
                     "and t10k-labels-idx1-ubyte, optionally .gz)")
    for stem in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                 "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        try:
            D._find(path, stem)
        except FileNotFoundError as e:
            raise _usage(f"argument --data: {e}") from None


def _check_output(option: str, path: Optional[str], folder: bool = False) -> None:
    """Before hours of training: the folder an output goes to exists and is writable."""
    if not path:
        return
    where = os.path.dirname(os.path.abspath(path)) if not folder else \
        os.path.abspath(path) if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(where) or not os.access(where, os.W_OK):
        raise _usage(f"argument {option}: cannot write into {where} (no such folder, or not "
                     "writable)")


def _check_plotting(option: str, value) -> None:
    if value:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise _usage(f"argument {option}: needs matplotlib (pip install "
                         "'convgpu[plot]')") from None


def _backend_for(option_value: str) -> str:
    """The backend a command runs on: refuses cuda without a GPU; numba without one runs in
    the CUDA simulator (NUMBA_ENABLE_CUDASIM=1 is set before Numba loads)."""
    from convgpu.cliutil import _prepare_backends
    gpus = _prepare_backends() if option_value in ("numba", "cuda", "auto") else 0
    if option_value == "cuda" and not gpus:
        raise _usage("argument --backend: cuda needs a CUDA GPU and none is visible; use "
                     "--backend numpy (or numba, which runs in the CUDA simulator: very slow)")
    return option_value


def main_train(args) -> int:
    backend = _backend_for(args.backend)
    if args.batch_size < 2 and (args.batch_norm or args.model == "resnet"):
        raise _usage(f"argument --batch-size: must be >= 2 with batch norms (--batch-norm, "
                     f"--model resnet), got {args.batch_size}")
    _check_data(args.data)
    _check_output("--save", args.save)
    _check_output("--plots", args.plots, folder=True)
    _check_plotting("--plots", args.plots)
    from convgpu.ops._registry import simulator_enabled
    from convgpu.core.env import gpu_count
    gpus = gpu_count() if backend != "numpy" else 0
    simulated = backend == "numba" and not gpus and simulator_enabled()
    image = (28 if args.data else 8) * args.upsample
    on_device = bool(gpus) and backend != "numpy"
    op_backend = "auto" if backend in ("cuda", "auto") else backend
    if args.algo != "auto":
        why = algo_problems(args.model, 1, image, 10, args.algo, op_backend, on_device,
                            args.batch_norm)
        if why:
            ok = [a for a in nn.ALGO_FAMILIES
                  if not algo_problems(args.model, 1, image, 10, a, op_backend, on_device,
                                       args.batch_norm)]
            raise _usage(f"argument --algo: {args.algo} cannot train this {args.model} on the "
                         f"{'numpy' if backend == 'auto' and not gpus else backend} backend: "
                         f"{why[0]}; choose from {', '.join(ok)}")
    if simulated and not args.slow_ok:
        steps = args.epochs * -(-(1438 if not args.data else 60000) // args.batch_size)
        raise _usage(f"argument --backend: numba runs in the CUDA simulator here (no GPU): "
                     f"one training step takes minutes on a CPU (a batch-2 LeNet step took "
                     f"over 150 s on two cores), so {steps} steps would take at least "
                     f"{_duration(150 * steps)}; use "
                     "--backend numpy, or add --slow-ok to run it anyway (it prints each step "
                     "and the first step's estimate for the run)")
    try:
        res = train(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                    optimizer=args.optimizer, momentum=args.momentum,
                    weight_decay=args.weight_decay, backend=backend, algo=args.algo,
                    seed=args.seed, data_dir=args.data, upsample=args.upsample,
                    dropout=args.dropout, batch_norm=args.batch_norm, model=args.model,
                    progress=not args.quiet, schedule=args.schedule, step_progress=simulated)
    except (RuntimeError, ValueError) as e:    # no CuPy where a GPU is, a malformed IDX
        print(f"convgpu train: error: {e}", file=sys.stderr)     # file: one line
        return 1
    per_epoch = np.median(res.history.epoch_seconds)
    print(f"final test accuracy {res.test_accuracy:.4f} on {len(res.y_test)} images (best "
          f"{res.best_test_accuracy:.4f} at epoch {res.best_epoch}); {res.seconds:.1f} s in "
          f"all, median epoch {per_epoch:.3f} s ({res.backend} backend)")
    if args.save:
        save(res, args.save)
        print(f"weights and architecture saved to {args.save} (convgpu eval --load "
              f"{args.save})")
    if args.plots:
        for p in save_plots(res, args.plots):
            print(f"wrote {p}")
    return 0


def _loaded(args):
    backend = _backend_for(args.backend)
    if backend == "numba":
        raise _usage("argument --backend: eval and predict run on numpy, or cuda on a GPU")
    if not os.path.isfile(args.load):
        raise _usage(f"argument --load: no such file: {args.load}")
    try:
        model, meta = load_model(args.load, backend="numpy")
    except ValueError as e:
        raise _usage(f"argument --load: {e}") from None
    b, xp = _resolve(backend)
    if b != "numpy":
        model = model.to(xp)
        for m in nn.modules(model):
            if hasattr(m, "backend"):
                m.backend = "auto"
    return model, meta, xp


def confusion_matrix(y_true, y_pred, classes: int) -> np.ndarray:
    """counts[true, predicted]."""
    m = np.zeros((classes, classes), np.int64)
    np.add.at(m, (np.asarray(y_true), np.asarray(y_pred)), 1)
    return m


def main_eval(args) -> int:
    _check_plotting("--plot", args.plot)
    _check_output("--plot", args.plot)
    model, meta, xp = _loaded(args)
    st, arch = meta["settings"], meta["architecture"]
    data = args.data if args.data is not None else st.get("data")
    _check_data(data)
    _, _, xte, yte = load(data, st["upsample"], st["seed"], st["test_fraction"])
    if xte.shape[1:] != (arch["in_channels"], arch["image_size"], arch["image_size"]):
        raise _usage(f"argument --data: images {xte.shape[1:]} do not fit the network, "
                     f"trained on {(arch['in_channels'], arch['image_size'], arch['image_size'])}")
    from convgpu.arrays import to_host
    pred = np.concatenate([to_host(xp.argmax(nn.evaluate(model, xp.asarray(xte[i:i + 512])),
                                             axis=1)) for i in range(0, len(xte), 512)])
    acc = float((pred == yte).mean())
    cm = confusion_matrix(yte, pred, arch["classes"])
    where = "the digits' test split" if not data else f"{data} (t10k)"
    print(f"test accuracy {acc:.4f} on {len(yte)} images of {where} ({args.load}: "
          f"{arch['model']}, trained {st['epochs']} epochs)")
    print("confusion matrix (rows: true class, columns: predicted):")
    w = max(3, len(str(cm.max())))
    print("     " + "".join(f"{c:>{w + 1}d}" for c in range(arch["classes"])))
    for c, row in enumerate(cm):
        print(f"  {c:2d} " + "".join(f"{v:>{w + 1}d}" for v in row))
    if args.plot:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(5, 4.4))
        im = ax.imshow(cm, cmap="Blues")
        for (i, j), v in np.ndenumerate(cm):
            if v:
                ax.text(j, i, str(v), ha="center", va="center", fontsize=7,
                        color="white" if v > cm.max() / 2 else "black")
        ax.set(xlabel="predicted", ylabel="true", title=f"test accuracy {acc:.4f}",
               xticks=range(arch["classes"]), yticks=range(arch["classes"]))
        fig.colorbar(im)
        fig.tight_layout()
        fig.savefig(args.plot, dpi=100)
        plt.close(fig)
        print(f"wrote {args.plot}")
    return 0


def main_predict(args) -> int:
    model, meta, xp = _loaded(args)
    arch, st = meta["architecture"], meta["settings"]
    base = arch["image_size"] // st["upsample"]
    images = []
    for path in args.images:                       # every file read before any prediction
        try:
            images.append(D.load_image(path, base, invert=args.invert))
        except (OSError, ValueError) as e:
            raise _usage(f"image {path}: {e}") from None
    x = D.upsample(np.stack(images)[:, None].astype(np.float32), st["upsample"])
    from convgpu.arrays import to_host
    logits = to_host(nn.evaluate(model, xp.asarray(x))).astype(np.float64)
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    for path, row in zip(args.images, p):
        k = int(row.argmax())
        print(f"{path}: {k} (probability {row[k]:.3f})")
    return 0


def add_arguments(p):
    from convgpu.cliutil import _float_in, _int_at_least
    inf = float("inf")
    p.add_argument("--epochs", type=_int_at_least(1), default=30, help="passes over the "
                   "training images")
    p.add_argument("--batch-size", type=_int_at_least(1), default=32,
                   help="images per step (at least 2 with batch norms)")
    p.add_argument("--lr", type=_float_in(0, inf, lo_open=True), default=2e-3,
                   help="peak learning rate")
    p.add_argument("--schedule", choices=SCHEDULES, default="cosine",
                   help="learning rate over the run: cosine from --lr to 0; step: /10 at 1/2 "
                   "and 3/4 of the run; none: constant")
    p.add_argument("--optimizer", choices=["adam", "sgd"], default="adam",
                   help="Adam, or SGD with --momentum")
    p.add_argument("--momentum", type=_float_in(0, 1, hi_open=True), default=0.9,
                   help="SGD's momentum")
    p.add_argument("--weight-decay", type=_float_in(0, inf), default=0.0,
                   help="L2 weight decay added to the gradient")
    p.add_argument("--dropout", type=_float_in(0, 1, hi_open=True), default=0.0,
                   help="dropout after LeNet's first linear layer")
    p.add_argument("--model", choices=MODELS, default="lenet5",
                   help="resnet: a 3x3 stem and two residual blocks with batch norms")
    p.add_argument("--batch-norm", action="store_true",
                   help="LeNet: BatchNorm2d after each conv, BatchNorm1d after the first "
                   "linear layer")
    p.add_argument("--backend", choices=["numpy", "numba", "cuda", "auto"], default="auto",
                   help="auto: cuda on a GPU, numpy otherwise; numba without a GPU runs in "
                   "the CUDA simulator (needs --slow-ok)")
    p.add_argument("--algo", choices=list(nn.ALGO_FAMILIES), default="auto", metavar="ALGO",
                   help="conv algorithm family (forward, input and weight gradients) for "
                   f"every conv layer: {', '.join(nn.ALGO_FAMILIES)}; refused where it cannot "
                   "serve the network's layers on the backend")
    p.add_argument("--seed", type=int, default=0,
                   help="fixes the weights, the split, the batch order and dropout")
    p.add_argument("--data", help="directory with MNIST IDX files (default: the 8x8 digits "
                   "of scikit-learn)")
    p.add_argument("--upsample", type=_int_at_least(1), default=1,
                   help="integer (bilinear) upsampling of the images")
    p.add_argument("--save", metavar="W.npz", help="write the weights, with the architecture "
                   "and settings, to this .npz (for convgpu eval / predict --load)")
    p.add_argument("--plots", metavar="DIR",
                   help="write curves, filters and saliency PNGs to this directory")
    p.add_argument("--slow-ok", action="store_true",
                   help="run in the CUDA simulator although it takes days (prints each step)")
    p.add_argument("--quiet", action="store_true", help="no per-epoch lines")


def _add_load(p):
    p.add_argument("--load", required=True, metavar="W.npz",
                   help="weights written by convgpu train --save")
    p.add_argument("--backend", choices=["numpy", "cuda", "auto"], default="numpy",
                   help="where to run the network (cuda: a GPU)")


def add_eval_arguments(p):
    _add_load(p)
    p.add_argument("--data", help="directory with MNIST IDX files (default: the data the "
                   "weights were trained on, and its test split)")
    p.add_argument("--plot", metavar="PNG", help="write the confusion matrix as a PNG "
                   "(needs matplotlib)")


def add_predict_arguments(p):
    _add_load(p)
    p.add_argument("images", nargs="+", metavar="IMAGE",
                   help="image files: .npy (a 2-D array, floats in [0, 1] or uint8) or .png "
                   "(read by matplotlib; colour is averaged to grey), bright ink on a dark "
                   "background as the training images (else --invert), of the network's "
                   "input size before --upsample (8x8 for the digits) or an integer multiple "
                   "of it (averaged down)")
    p.add_argument("--invert", action="store_true",
                   help="the images have dark ink on a light background")
