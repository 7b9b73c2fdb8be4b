"""Array types at the op boundary: NumPy, CuPy, torch tensors (CPU or CUDA), and any other
object with __dlpack__ (JAX, ...).

An op unwraps its array arguments to NumPy (host) or CuPy (device) arrays, computes,
and wraps its results back in the caller's type: NumPy in, NumPy out; CuPy in, CuPy
out; a torch tensor in, a torch tensor out (zero-copy through DLPack / the buffer
protocol), in the input's memory format (channels_last in, channels_last out); another
DLPack producer in, NumPy (CPU) or CuPy (CUDA) out. Non-contiguous input is made
C-contiguous, never rejected. Mixing array types or devices in one call is a TypeError.

Torch CUDA tensors run on torch's current stream of their device (on_torch_stream), so
nothing waits on the host. A torch tensor that requires grad is cut from torch's graph by
a plain op: it warns once per op and points to convgpu.torch, which is differentiable.
"""
from __future__ import annotations

import functools
import sys
import warnings

import numpy as np

NUMPY, CUPY, TORCH_CPU, TORCH_CUDA = "numpy", "cupy", "torch-cpu", "torch-cuda"
DLPACK_CPU, DLPACK_CUDA = "dlpack-cpu", "dlpack-cuda"
HOST_KINDS = (NUMPY, TORCH_CPU, DLPACK_CPU)
_CUDA_KINDS = (CUPY, TORCH_CUDA, DLPACK_CUDA)
_DLPACK_CPU_DEVICE, _DLPACK_CUDA_DEVICES = 1, (2, 3)       # kDLCPU; kDLCUDA, kDLCUDAHost


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
    if hasattr(a, "__dlpack__") and hasattr(a, "__dlpack_device__"):
        try:
            dev = int(a.__dlpack_device__()[0])
        except Exception:
            return None
        if dev == _DLPACK_CPU_DEVICE:
            return DLPACK_CPU
        if dev in _DLPACK_CUDA_DEVICES:
            return DLPACK_CUDA
    return None


def _device_index(a, kind):
    if kind == CUPY:
        return a.device.id
    if kind == TORCH_CUDA:
        return a.device.index
    return int(a.__dlpack_device__()[1])


def _contiguous(xp, a):
    # np.ascontiguousarray returns a 0-d array as 1-d; a 0-d array is contiguous as it is
    return a if a.ndim == 0 else xp.ascontiguousarray(a)


def _to_native(a, kind):
    if kind == NUMPY:
        return _contiguous(np, a)
    if kind == DLPACK_CPU:
        return _contiguous(np, np.from_dlpack(a))
    if kind == TORCH_CPU:
        if _is_torch_bfloat16(a):
            import ml_dtypes
            import torch
            return _contiguous(np, a.detach().view(torch.int16).numpy().view(ml_dtypes.bfloat16))
        return _contiguous(np, a.detach().numpy())
    import cupy
    if kind == CUPY:
        return _contiguous(cupy, a)
    return _contiguous(cupy, cupy.from_dlpack(a.detach() if kind == TORCH_CUDA else a))


def _is_torch_bfloat16(t) -> bool:
    import torch
    return t.dtype == torch.bfloat16


def _torch_from_host(out):
    """A NumPy result as a CPU tensor sharing its memory; bfloat16 through its int16 bits."""
    import torch
    out = np.asarray(out)
    if out.dtype.name == "bfloat16":
        return torch.from_numpy(out.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(out)


def channels_last(a) -> bool:
    """A 4-D torch tensor laid out NHWC (torch.channels_last) and not also NCHW-contiguous
    (a tensor with C = 1 or 1x1 planes is both: it stays plain)."""
    if a.dim() != 4 or a.is_contiguous():
        return False
    import torch
    return a.is_contiguous(memory_format=torch.channels_last)


# ops warned already that a plain call cut a tensor requiring grad from torch's graph; the
# optimiser steps update parameters in place and are no part of a graph
_WARNED_GRAD = {"sgd_step", "adam_step"}


def _warn_requires_grad(op: str, name: str) -> None:
    import torch
    if op in _WARNED_GRAD or not torch.is_grad_enabled():
        return
    _WARNED_GRAD.add(op)
    warnings.warn(f"{op}: {name} requires grad, but convgpu.{op} returns a tensor outside "
                  "torch's autograd graph (backward will not reach it); use "
                  "convgpu.torch.functional or convgpu.torch.convert(model) to train "
                  "through our kernels", UserWarning, stacklevel=5)   # the op's caller


class Boundary:
    """Unwraps an op's array arguments and wraps its results back."""

    def __init__(self, op: str, kind: str, torch_device=None, channels_last=False):
        self.op = op
        self.kind = kind
        self.torch_device = torch_device
        self.channels_last = channels_last
        self.nhwc = False           # 4-D results are NHWC arrays of channels_last tensors

    @property
    def on_device(self) -> bool:
        return self.kind not in HOST_KINDS

    def wrap(self, out):
        if isinstance(out, tuple):
            return tuple(self.wrap(o) for o in out)
        if out is None or np.isscalar(out) or self.kind not in (TORCH_CPU, TORCH_CUDA):
            return out
        import torch
        if self.kind == TORCH_CPU:
            t = _torch_from_host(out)
        else:
            t = torch.from_dlpack(out)
        if self.nhwc and t.dim() == 4:
            t = t.permute(0, 3, 1, 2)              # (N, C, H, W) with channels_last strides
        elif self.channels_last and t.dim() == 4:
            t = t.contiguous(memory_format=torch.channels_last)
        return t


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
            raise TypeError(f"{op}: {name} must be a NumPy array, CuPy array, torch tensor or "
                            f"an array with __dlpack__, got {type(a).__name__}")
        torch_kind = kind in (TORCH_CPU, TORCH_CUDA)
        if boundary is None:
            boundary = Boundary(op, kind, getattr(a, "device", None),
                                torch_kind and channels_last(a))
            first = name
            if kind in _CUDA_KINDS:
                _check_current_device(op, name, _device_index(a, kind))
        elif kind != boundary.kind:
            raise TypeError(f"{op}: {name} is a {kind} array but {first} is a {boundary.kind} "
                            "array; pass arrays of one type on one device")
        elif kind in _CUDA_KINDS:
            dev_a, dev_0 = _device_index(a, kind), _device_index(named[first], kind)
            if dev_a != dev_0:
                raise TypeError(f"{op}: {name} is on GPU {dev_a} but {first} is on GPU {dev_0}")
        if torch_kind and a.requires_grad:
            _warn_requires_grad(op, name)
        try:
            out[name] = _to_native(a, kind)
        except (TypeError, ValueError, BufferError, RuntimeError) as e:
            # NumPy reads no bfloat16 through DLPack; CuPy only with ml_dtypes (CuPy >= 14)
            if kind in (DLPACK_CPU, DLPACK_CUDA) or (
                    kind in _CUDA_KINDS and "bfloat16" in str(getattr(a, "dtype", ""))):
                raise TypeError(f"{op}: {name} ({type(a).__name__}) could not be read through "
                                f"DLPack ({type(e).__name__}: {e}); bfloat16 crosses as a "
                                "torch tensor, an ml_dtypes.bfloat16 NumPy array, or on CUDA "
                                "with CuPy 14 and ml_dtypes installed") from None
            raise
    if boundary is None:
        raise TypeError(f"{op}: no array argument given")
    return boundary, out


def unwrap_layout(op: str, layout: str, **named):
    """unwrap for the ops with a layout= keyword (conv, pooling, batch norm). Where layout is
    "NCHW" and the first array is a torch tensor in channels_last memory format, the call
    runs in NHWC: every 4-D torch tensor is taken as its (N, H, W, C) permutation (no copy
    for a channels_last one; others are copied into that order) and every 4-D result comes
    back as an (N, C, H, W) tensor with channels_last strides. Returns (Boundary, {name:
    native array or None}, the layout the native arrays are in)."""
    first = next((a for a in named.values() if a is not None), None)
    if layout == "NCHW" and kind_of(first) in (TORCH_CPU, TORCH_CUDA) and channels_last(first):
        views = {n: a.permute(0, 2, 3, 1) if kind_of(a) in (TORCH_CPU, TORCH_CUDA)
                 and a.dim() == 4 else a for n, a in named.items()}
        boundary, out = unwrap(op, **views)
        boundary.nhwc, boundary.channels_last = True, False
        return boundary, out, "NHWC"
    boundary, out = unwrap(op, **named)
    return boundary, out, layout


def _first_torch_cuda(args, kwargs):
    import torch
    for a in args:
        if isinstance(a, torch.Tensor) and a.is_cuda:
            return a
    for a in kwargs.values():
        if isinstance(a, torch.Tensor) and a.is_cuda:
            return a
    return None


def on_torch_stream(fn):
    """Runs an op given torch CUDA tensors on torch's current stream of the first one's
    device, with that device current: no hidden synchronisation between torch's work and
    ours (cupy's ExternalStream of torch.cuda.current_stream())."""
    @functools.wraps(fn)
    def op(*args, **kwargs):
        if sys.modules.get("torch") is not None:     # None: an import of torch was refused
            t = _first_torch_cuda(args, kwargs)
            if t is not None:
                import cupy
                import torch
                dev = t.device.index
                stream = torch.cuda.current_stream(dev)
                with cupy.cuda.Device(dev), cupy.cuda.ExternalStream(stream.cuda_stream, dev):
                    return fn(*args, **kwargs)
        return fn(*args, **kwargs)
    return op


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
