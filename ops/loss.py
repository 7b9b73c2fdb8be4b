"""Softmax cross-entropy as torch.nn.functional.cross_entropy over (N, classes) logits and
class-index labels or class probabilities: per-class weight, ignore_index (index labels
only), reduction and label_smoothing.

The device's row kernels (numba and cuda "rowwise") serve the plain mean loss; they decline
the options through supports(), and the cuda backend's "array_ops" (the reference's
formulas on CuPy arrays) serves those.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from convgpu import reference
from convgpu.arrays import on_torch_stream, unwrap, xp_of
from convgpu.core import args as A
from convgpu.ops._registry import DTYPE_NAMES, dispatch, register

REDUCTIONS = ("mean", "sum", "none")


@dataclass(frozen=True)
class XentArgs:
    N: int
    C: int
    reduction: str
    weighted: bool
    ignore_index: Optional[int]     # None: no row is ignored in this call
    label_smoothing: float
    soft: bool = False              # the labels are (N, C) class probabilities

    @property
    def plain(self) -> bool:
        return (self.reduction == "mean" and not self.weighted and self.ignore_index is None
                and self.label_smoothing == 0.0 and not self.soft)


def _ref_options(a):
    return dict(ignore_index=-100 if a.ignore_index is None else a.ignore_index,
                reduction=a.reduction, label_smoothing=a.label_smoothing)


def _np_xent(a, z, t, w):
    return reference.softmax_cross_entropy(z, t, w, **_ref_options(a))


def _np_xent_backward(a, z, t, w, g):
    return reference.softmax_cross_entropy_backward(z, t, w, grad_output=g, **_ref_options(a))


def rowwise_supports(a):
    if a.plain:
        return None
    if a.soft:
        return "the row kernels take class-index labels, not class probabilities"
    return ("the row kernels compute the unweighted mean loss only (no weight, no ignored "
            "rows, label_smoothing 0, reduction 'mean')")


def array_ops_supports(a):
    return "the row kernels serve the plain mean loss" if a.plain else None


register("softmax_cross_entropy", "numpy", "reference", "convgpu.ops.loss:_np_xent")
register("softmax_cross_entropy_backward", "numpy", "reference",
         "convgpu.ops.loss:_np_xent_backward")
_ROW = "convgpu.ops.loss:rowwise_supports"
_ARR = "convgpu.ops.loss:array_ops_supports"
register("softmax_cross_entropy", "numba", "rowwise", "convgpu.ops.loss:_numba_xent",
         supports=_ROW)
register("softmax_cross_entropy_backward", "numba", "rowwise",
         "convgpu.ops.loss:_numba_xent_backward", supports=_ROW)
register("softmax_cross_entropy", "cuda", "rowwise", "convgpu.ops.loss:_cuda_xent",
         supports=_ROW, dtypes=DTYPE_NAMES)
register("softmax_cross_entropy_backward", "cuda", "rowwise",
         "convgpu.ops.loss:_cuda_xent_backward", supports=_ROW, dtypes=DTYPE_NAMES)
register("softmax_cross_entropy", "cuda", "array_ops", "convgpu.ops.loss:_array_xent",
         supports=_ARR, dtypes=DTYPE_NAMES, note="the reference's formulas on CuPy arrays")
register("softmax_cross_entropy_backward", "cuda", "array_ops",
         "convgpu.ops.loss:_array_xent_backward", supports=_ARR, dtypes=DTYPE_NAMES,
         note="the reference's formulas on CuPy arrays")


def _in_float32(fn, a, z, *rest):
    """fn on the half types' values widened to float32 (the row kernels' arithmetic; the
    reference's own widening to float64 sees NumPy arrays only), its result rounded once to
    z's type. Integer labels and absent arrays pass as they are."""
    if z.dtype not in A.HALF_DTYPES:
        return fn(a, z, *rest)
    wide = lambda v: v.astype(np.float32) if v is not None and v.dtype == z.dtype else v  # noqa: E731
    return fn(a, *map(wide, (z, *rest))).astype(z.dtype)


def _array_xent(a, z, t, w):
    return _in_float32(_np_xent, a, z, t, w)


def _array_xent_backward(a, z, t, w, g):
    return _in_float32(_np_xent_backward, a, z, t, w, g)


def _numba_xent(a, z, t, w):
    from convgpu.kernels.numba import elementwise  # deferred: Numba is optional
    return elementwise.softmax_cross_entropy((a.N, a.C), z, t)


def _numba_xent_backward(a, z, t, w, g):
    from convgpu.kernels.numba import elementwise  # deferred: Numba is optional
    # grad_output scales inside the kernel, as the cuda one: one rounding
    return elementwise.softmax_cross_entropy_backward((a.N, a.C), z, t, g)


def _cuda_xent(a, z, t, w):
    from convgpu.kernels.cuda import elementwise  # deferred: CuPy is optional
    return elementwise.softmax_cross_entropy((a.N, a.C), z, t)


def _cuda_xent_backward(a, z, t, w, g):
    from convgpu.kernels.cuda import elementwise  # deferred: CuPy is optional
    # grad_output scales inside the kernel: one rounding (a half gradient scaled after its
    # store would round twice)
    return elementwise.softmax_cross_entropy_backward((a.N, a.C), z, t, g)


def _validate(op, logits, labels, weight, grad_output, ignore_index, reduction,
              label_smoothing, check_labels):
    bd, a = unwrap(op, logits=logits, labels=labels, weight=weight, grad_output=grad_output)
    z, t, w, g = a["logits"], a["labels"], a["weight"], a["grad_output"]
    A.check_float(op, "logits", z)
    A.check_ndim(op, "logits", z, (2,), "2-D (N, classes)")
    n, c = z.shape
    if c == 0:
        raise ValueError(f"{op}: logits need at least one class, got shape {tuple(z.shape)}")
    soft = t.dtype.kind == "f"
    if soft and t.ndim == 1:         # as torch: not the logits' shape, so meant as indices
        raise TypeError(f"{op}: labels of shape {tuple(t.shape)} are class indices and must be "
                        f"integers, got {t.dtype} (class probabilities take the logits' shape "
                        f"{(n, c)})")
    if soft:                         # class probabilities, one row per logits row
        A.check_same_dtype(op, logits=z, labels=t)
        if tuple(t.shape) != (n, c):
            raise ValueError(f"{op}: class-probability labels must have the logits' shape "
                             f"{(n, c)}, got {tuple(t.shape)}")
    else:
        A.check_labels(op, t, n, c)
    if w is not None:
        A.check_same_dtype(op, logits=z, weight=w)
        if tuple(w.shape) != (c,):
            raise ValueError(f"{op}: weight must be 1-D of length {c} (one per class), got "
                             f"shape {tuple(w.shape)}")
    if not A._is_int(ignore_index):
        raise TypeError(f"{op}: ignore_index must be an int, got {ignore_index!r}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"{op}: reduction must be one of {', '.join(map(repr, REDUCTIONS))}, "
                         f"got {reduction!r}")
    eps = A.number(op, "label_smoothing", label_smoothing, 0.0, 1.0)
    if g is not None:
        A.check_same_dtype(op, logits=z, grad_output=g)
        want = (n,) if reduction == "none" else ()
        if tuple(g.shape) != want and not (want == () and g.size == 1):
            raise ValueError(f"{op}: grad_output must have shape {want} (the loss's, "
                             f"reduction={reduction!r}), got {tuple(g.shape)}")
    if soft:                         # torch refuses ignore_index with probabilities
        if ignore_index != -100:
            raise ValueError(f"{op}: ignore_index is not supported for class-probability "
                             f"labels (got {ignore_index}; leave it -100)")
        return bd, XentArgs(n, c, reduction, w is not None, None, eps, True), z, t, w, g
    ignore = int(ignore_index)
    in_range = 0 <= ignore < c
    if check_labels and t.size:
        # on the device: reductions and reads, each waiting for the queued work
        xp = xp_of(t)
        lo, hi = int(xp.min(t)), int(xp.max(t))
        if lo < 0 or hi >= c:              # ignored rows, or labels out of range
            kept = t[t != ignore]
            lo, hi = (int(xp.min(kept)), int(xp.max(kept))) if kept.size else (0, 0)
            ignored = True
        else:
            ignored = in_range and bool((t == ignore).any())
        A.check_labels_range(op, lo, hi, c)
    else:
        ignored = in_range
    args = XentArgs(n, c, reduction, w is not None, ignore if ignored else None, eps)
    return bd, args, z, t.astype("int64", copy=False), w, g


@on_torch_stream
def softmax_cross_entropy(logits, labels, weight=None, *, ignore_index=-100, reduction="mean",
                          label_smoothing=0.0, algo="auto", backend="auto", check_labels=True):
    """torch.nn.functional.cross_entropy of (N, classes) logits and int labels: the mean (or
    sum, or per row with reduction="none") of -log softmax(logits)[label], with torch's
    per-class weight, ignore_index and label_smoothing. Float labels of the logits' shape
    and dtype are class probabilities q (torch's soft targets): the row loss is
    -sum_c weight[c] q'[c] log softmax(logits)[c] (q' = q mixed with the uniform
    distribution by label_smoothing), "mean" divides by N, ignore_index must be left -100
    (as torch). Labels outside [0, classes) other than ignore_index raise ValueError;
    check_labels=False skips that test (and its wait for the device) for labels known to
    lie in [0, classes). algo: "rowwise" (the plain mean loss) or "array_ops" (the cuda
    backend, for the options and class probabilities); "auto" picks the one that serves
    the call."""
    op = "softmax_cross_entropy"
    bd, args, z, t, w, _ = _validate(op, logits, labels, weight, None, ignore_index, reduction,
                                     label_smoothing, check_labels)
    if args.N == 0:                  # torch: the mean of no rows is NaN, their sum 0
        if reduction == "none":
            return bd.wrap(A.zeros(z, (0,), z.dtype))
        return bd.wrap(xp_of(z).full((), float("nan") if reduction == "mean" else 0.0, z.dtype))
    return bd.wrap(dispatch(op, args, backend, algo, bd.on_device, z, t, w))


@on_torch_stream
def softmax_cross_entropy_backward(logits, labels, weight=None, *, grad_output=None,
                                   ignore_index=-100, reduction="mean", label_smoothing=0.0,
                                   algo="auto", backend="auto", check_labels=True):
    """Gradient of softmax_cross_entropy with respect to logits, times grad_output (the
    loss's gradient: a scalar, or (N,) for reduction="none"; None is 1). The plain mean loss
    gives (softmax - onehot) / N. Options and check_labels as for softmax_cross_entropy."""
    op = "softmax_cross_entropy_backward"
    bd, args, z, t, w, g = _validate(op, logits, labels, weight, grad_output, ignore_index,
                                     reduction, label_smoothing, check_labels)
    if args.N == 0:
        return bd.wrap(A.zeros(z, tuple(z.shape), z.dtype))
    return bd.wrap(dispatch(op, args, backend, algo, bd.on_device, z, t, w, g))


def _soft_backward(op, fn, logits, target, weight, grad_output, reduction, label_smoothing):
    """The reference's formulas on the arrays' own module (NumPy, or CuPy on the device) for
    the gradients no kernel of ours computes: those with respect to soft targets and
    weights."""
    bd, args, z, t, w, g = _validate(op, logits, target, weight, grad_output, -100,
                                     reduction, label_smoothing, False)
    if not args.soft:
        raise TypeError(f"{op}: target must be float class probabilities, got {t.dtype}")
    if args.N == 0:                  # no rows: zero gradients (torch's, and no 1 / 0)
        like = t if fn is reference.softmax_cross_entropy_target_backward else w
        return bd.wrap(A.zeros(z, tuple(like.shape), like.dtype))
    out = fn(z, t, w, reduction=reduction, label_smoothing=args.label_smoothing,
             grad_output=g)
    return bd.wrap(out)


@on_torch_stream
def softmax_cross_entropy_target_backward(logits, target, weight=None, *, grad_output=None,
                                          reduction="mean", label_smoothing=0.0):
    """Gradient of softmax_cross_entropy with respect to class-probability labels (target),
    times grad_output: -(1 - label_smoothing) weight log softmax(logits) over the mean's N."""
    return _soft_backward("softmax_cross_entropy_target_backward",
                          reference.softmax_cross_entropy_target_backward, logits, target,
                          weight, grad_output, reduction, label_smoothing)


@on_torch_stream
def softmax_cross_entropy_weight_backward(logits, target, weight, *, grad_output=None,
                                          reduction="mean", label_smoothing=0.0):
    """Gradient of softmax_cross_entropy with respect to weight for class-probability
    labels (target), times grad_output: -sum_i q'[i, c] log softmax(logits)[i, c] over the
    mean's N (torch differentiates the weights only for probability targets)."""
    if weight is None:
        raise TypeError("softmax_cross_entropy_weight_backward: weight is required")
    return _soft_backward("softmax_cross_entropy_weight_backward",
                          reference.softmax_cross_entropy_weight_backward, logits, target,
                          weight, grad_output, reduction, label_smoothing)
