"""algo="transpose": the NHWC fallback of the device backends, by name in the registry.

Where a device backend has no NHWC kernel for an op, `register_transpose(op, backend)`
registers an implementation that serves NHWC only: it copies every 4-D input into NCHW
order, runs the backend's NCHW implementation (chosen as algo="auto" would) and copies
every 4-D result back into NHWC order. Two extra passes over the data each way: correct,
not fast, and named so that nobody mistakes it for an NHWC kernel.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from convgpu.arrays import xp_of
from convgpu.core import args as A
from convgpu.ops import _registry

_NCHW, _NHWC = (0, 3, 1, 2), (0, 2, 3, 1)       # NHWC -> NCHW, NCHW -> NHWC


def nchw_record(a):
    """The same problem as an NCHW record: layout fields set to NCHW, nested records and
    shape tuples (x_shape of MaxBackwardArgs, LayoutShape) reordered."""
    if isinstance(a, LayoutShape):
        return A.from_layout(a.shape, a.layout)
    if not dataclasses.is_dataclass(a) or getattr(a, "layout", "NCHW") == "NCHW":
        return a
    changes = {"layout": "NCHW"}
    for f in dataclasses.fields(a):
        v = getattr(a, f.name)
        if f.name == "x_shape":
            changes["x_shape"] = A.from_layout(v, a.layout)
        elif dataclasses.is_dataclass(v):
            changes[f.name] = nchw_record(v)
    return dataclasses.replace(a, **changes)


@dataclasses.dataclass(frozen=True)
class LayoutShape:
    """A plain shape record (the ops that dispatch on a shape tuple in NCHW, such as the
    global pooling) with its layout: `shape` is in that layout's axis order."""
    shape: tuple
    layout: str


def _permuted(arr, axes):
    if arr is None or getattr(arr, "ndim", 0) != 4:
        return arr
    return xp_of(arr).ascontiguousarray(arr.transpose(axes))


def via_nchw(op: str, backend: str, a, *arrays):
    """Run op's NCHW implementation on `backend` between layout copies (see the module)."""
    first = next(x for x in arrays if isinstance(getattr(x, "ndim", None), int))
    on_device = xp_of(first) is not np
    out = _registry.dispatch(op, nchw_record(a), backend, "auto", on_device,
                             *(_permuted(x, _NCHW) for x in arrays))
    if isinstance(out, tuple):
        return tuple(_permuted(o, _NHWC) for o in out)
    return _permuted(out, _NHWC)


def register_transpose(op: str, backend: str) -> None:
    """Register (op, backend, "transpose") for NHWC calls (see the module). It supports a
    call where one of the backend's NCHW implementations supports the NCHW problem, so a
    problem none serves is refused before anything is copied; so it takes every dtype and
    leaves the dtype to them (the half types on the kernels that serve them)."""
    name = f"_{op}__{backend}"

    def run(a, *arrays):
        return via_nchw(op, backend, a, *arrays)

    def supports(a):
        nchw = nchw_record(a)
        reasons = [(i, i.why_not(nchw)) for i in _registry.all_impls(op)
                   if i.backend == backend and not i.dev]
        if any(r is None for _, r in reasons):
            return None
        return "no NCHW implementation serves the transposed problem: " + "; ".join(
            f"({i.backend}, {i.algo}): {r}" for i, r in reasons)
    run.__name__ = run.__qualname__ = name
    globals()[name] = run
    _registry.register(op, backend, "transpose", f"{__name__}:{name}", supports=supports,
                       layouts=("NHWC",), dtypes=_registry.DTYPE_NAMES,
                       note="NHWC by copying into NCHW, the NCHW kernels, and back")
