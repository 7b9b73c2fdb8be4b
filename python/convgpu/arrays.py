"""Array types at the op boundary: NumPy, CuPy, and torch tensors (CPU or CUDA).

An op unwraps its array arguments to NumPy (host) or CuPy (device) arrays, computes,
and wraps its results back in the caller's type: NumPy in, NumPy out; CuPy in, CuPy
out; a torch tensor in, a torch tensor out (zero-copy through DLPack / the buffer
protocol). Non-contiguous input is made C-contiguous, never rejected. Mixing array
types or devices in one call is a TypeError.
"""
from __future__ import annotations

import sys

import numpy as np

NUMPY, CUPY, TORCH_CPU, TORCH_CUDA = "numpy", "cupy", "torch-cpu", "torch-cuda"
HOST_KINDS = (NUMPY, TORCH_CPU)


def cupy_module():
    """CuPy if it is importable and sees a GPU, else None (never raises)."""
    try:
        import cupy
        if cupy.cuda.runtime.getDeviceCount() > 0:
            return cupy
    except Exception:
        pass
    return None


def kind_of(a):
    """The array kind of `a`, or None if it is no array this library accepts."""
    if isinstance(a, np.ndarray):
        return NUMPY
    mod = type(a).__module__
    if mod.startswith("cupy"):
        return CUPY
    if mod.startswith("torch") and "torch" in sys.modules:
        return TORCH_CUDA if a.is_cuda else TORCH_CPU
    return None


def _to_native(a, kind):
    if kind == NUMPY:
        return np.ascontiguousarray(a)
    if kind == CUPY:
        import cupy
        return cupy.ascontiguousarray(a)
    if kind == TORCH_CPU:
        return np.ascontiguousarray(a.detach().numpy())
    import cupy
    return cupy.ascontiguousarray(cupy.from_dlpack(a.detach()))


class Boundary:
    """Unwraps an op's array arguments and wraps its results back."""

    def __init__(self, op: str, kind: str, torch_device=None):
        self.op = op
        self.kind = kind
        self.torch_device = torch_device

    @property
    def on_device(self) -> bool:
        return self.kind not in HOST_KINDS

    def wrap(self, out):
        if isinstance(out, tuple):
            return tuple(self.wrap(o) for o in out)
        if out is None or np.isscalar(out) or self.kind in (NUMPY, CUPY):
            return out
        import torch
        if self.kind == TORCH_CPU:
            return torch.from_numpy(np.asarray(out))
        return torch.from_dlpack(out)


def unwrap(op: str, **named):
    """Returns (Boundary, {name: native array or None}). Every non-None argument must be an
    array of one kind; the first sets the kind. Raises TypeError otherwise."""
    boundary = None
    first = None
    out = {}
    for name, a in named.items():
        if a is None:
            out[name] = None
            continue
        kind = kind_of(a)
        if kind is None:
            raise TypeError(f"{op}: {name} must be a NumPy array, CuPy array or torch tensor, "
                            f"got {type(a).__name__}")
        if boundary is None:
            boundary = Boundary(op, kind, getattr(a, "device", None))
            first = name
            if kind in (CUPY, TORCH_CUDA):
                _check_current_device(op, name, a.device.id if kind == CUPY else a.device.index)
        elif kind != boundary.kind:
            raise TypeError(f"{op}: {name} is a {kind} array but {first} is a {boundary.kind} "
                            "array; pass arrays of one type on one device")
        elif kind in (CUPY, TORCH_CUDA):
            dev_a = a.device.id if kind == CUPY else a.device.index
            dev_0 = (named[first].device.id if kind == CUPY else named[first].device.index)
            if dev_a != dev_0:
                raise TypeError(f"{op}: {name} is on GPU {dev_a} but {first} is on GPU {dev_0}")
        out[name] = _to_native(a, kind)
    if boundary is None:
        raise TypeError(f"{op}: no array argument given")
    return boundary, out


def current_device() -> int:
    """The CUDA device CuPy launches on and allocates from (its current device)."""
    import cupy
    return cupy.cuda.runtime.getDevice()


def _check_current_device(op: str, name: str, device: int) -> None:
    """The kernels launch on the current device and allocate there: arrays on another GPU
    would be read through pointers that device cannot use (an illegal-address error, which
    ends the CUDA context). So they are refused before any launch."""
    current = current_device()
    if device != current:
        raise ValueError(f"{op}: {name} is on GPU {device} but the current device is GPU "
                         f"{current}; make it current for the call (with "
                         f"cupy.cuda.Device({device}): ...)")


def xp_of(a):
    """numpy or cupy, whichever module `a` (a native array) belongs to."""
    if isinstance(a, np.ndarray):
        return np
    import cupy
    return cupy


def to_host(a):
    if a is None or isinstance(a, np.ndarray):
        return a
    return a.get()
