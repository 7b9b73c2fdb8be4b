"""Softmax cross-entropy (mean over the batch, as torch.nn.functional.cross_entropy)."""
from __future__ import annotations

from convgpu import reference
from convgpu.arrays import unwrap, xp_of
from convgpu.core import args as A
from convgpu.ops._registry import dispatch, register


def _np_xent(a, z, t):
    return reference.softmax_cross_entropy(z, t)


def _np_xent_backward(a, z, t):
    return reference.softmax_cross_entropy_backward(z, t)


register("softmax_cross_entropy", "numpy", "reference", "convgpu.ops.loss:_np_xent")
register("softmax_cross_entropy_backward", "numpy", "reference",
         "convgpu.ops.loss:_np_xent_backward")
_K = "convgpu.kernels.numba.elementwise:"
register("softmax_cross_entropy", "numba", "rowwise", _K + "softmax_cross_entropy")
register("softmax_cross_entropy_backward", "numba", "rowwise",
         _K + "softmax_cross_entropy_backward")
_EW = "convgpu.kernels.cuda.elementwise:"
register("softmax_cross_entropy", "cuda", "rowwise", _EW + "softmax_cross_entropy")
register("softmax_cross_entropy_backward", "cuda", "rowwise",
         _EW + "softmax_cross_entropy_backward")


def _validate(op, logits, labels, check_labels):
    bd, a = unwrap(op, logits=logits, labels=labels)
    z, t = a["logits"], a["labels"]
    A.check_float(op, "logits", z)
    A.check_ndim(op, "logits", z, (2,), "2-D (N, classes)")
    if z.shape[1] == 0:
        raise ValueError(f"{op}: logits need at least one class, got shape {tuple(z.shape)}")
    A.check_labels(op, t, z.shape[0], z.shape[1])
    if check_labels and t.size:
        # on the device: two reductions and two reads, each waiting for the queued work
        xp = xp_of(t)
        A.check_labels_range(op, int(xp.min(t)), int(xp.max(t)), z.shape[1])
    return bd, z, t.astype("int64", copy=False)


def softmax_cross_entropy(logits, labels, *, backend="auto", check_labels=True):
    """Mean over rows of -log softmax(logits)[label]; a 0-d array of logits' dtype.
    Labels outside [0, classes) raise ValueError; check_labels=False skips that test (and
    its wait for the device) for labels already known to be in range."""
    op = "softmax_cross_entropy"
    bd, z, t = _validate(op, logits, labels, check_labels)
    if z.shape[0] == 0:                  # the mean of no rows: NaN, as torch
        return bd.wrap(A.zeros(z, (), z.dtype) + float("nan"))
    return bd.wrap(dispatch(op, tuple(z.shape), backend, "auto", bd.on_device, z, t))


def softmax_cross_entropy_backward(logits, labels, *, backend="auto", check_labels=True):
    """Gradient of the mean loss with respect to logits: (softmax - onehot) / N.
    check_labels as for softmax_cross_entropy."""
    op = "softmax_cross_entropy_backward"
    bd, z, t = _validate(op, logits, labels, check_labels)
    if z.shape[0] == 0:
        return bd.wrap(A.zeros(z, tuple(z.shape), z.dtype))
    return bd.wrap(dispatch(op, tuple(z.shape), backend, "auto", bd.on_device, z, t))
