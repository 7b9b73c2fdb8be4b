"""`convgpu train`, `convgpu eval` and `convgpu predict`: their options, the checks made
before any work starts (one line each, argparse's exit status 2), and the commands over the
training loop of convgpu.train.

    convgpu train                       # 8x8 scikit-learn digits; the GPU if there is one
    convgpu train --backend numpy       # NumPy on the CPU
    convgpu train --backend cuda        # on a GPU: CuPy arrays, CUDA C / Numba kernels
    convgpu train --data DIR            # MNIST IDX files the user already has
    convgpu train --save w.npz --plots out/
"""
from __future__ import annotations

import os
import sys
from typing import Optional

import numpy as np

from convgpu import data as D
from convgpu import nn
from convgpu.tools import cliutil
from convgpu.tools.cliutil import _float_in, _int_at_least
from convgpu.train import (MODELS, SCHEDULES, _duration, _resolve, algo_problems, load,
                           load_model, save, save_plots, train)


def _usage(message):
    return cliutil.UsageError(message)


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
    gpus = cliutil._prepare_backends() if option_value in ("numba", "cuda", "auto") else 0
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
