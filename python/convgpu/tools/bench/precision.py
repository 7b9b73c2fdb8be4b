"""The rows in a dtype or layout other than float32 NCHW: float16 / bfloat16 and NHWC
(channels-last), against cuDNN in the same precision and layout.

- operands: generated as float32 on the host, rounded once to the row's dtype; the float64
  reference is computed from those rounded values (exact in float64) in NCHW order. With a
  CUDA torch, both sides are given the same torch tensors (`memory_format=channels_last`
  for NHWC, which convgpu takes as its NHWC layout; bfloat16 crosses into convgpu as a torch
  tensor, since CuPy 13 has no bfloat16); without one (the stand-in CuPy of the tests), ours
  gets native arrays in the layout's axis order and `layout=`.
- validation of a half row: the reference rounded once to the half type, the norm-wise
  tolerance and the element-wise half bound of convgpu.bounds (conv_errors / gemm_errors:
  inputs exact in FP32, FP32 accumulation, one rounding each side); float32 rows keep the
  design's norm-wise tolerance.
- TF32 has no meaning for half inputs: a half row has the `cudnn` (benchmark, every
  algorithm) and `torch_default` baseline columns only.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

DTYPES = ("float32", "float16", "bfloat16")
LAYOUTS = ("NCHW", "NHWC")
_NHWC, _NCHW = (0, 2, 3, 1), (0, 3, 1, 2)


def np_dtype(name) -> np.dtype:
    """The NumPy dtype of a row's dtype name (bfloat16 through ml_dtypes)."""
    name = np.dtype(name).name if not isinstance(name, str) else name
    if name == "bfloat16":
        import ml_dtypes
        return np.dtype(ml_dtypes.bfloat16)
    if name not in DTYPES:
        raise ValueError(f"bench: dtype must be one of {', '.join(DTYPES)}; got {name!r}")
    return np.dtype(name)


def is_half(dtype) -> bool:
    return np_dtype(dtype).name in ("float16", "bfloat16")


def plain(dtype, layout) -> bool:
    """float32 NCHW: the original rows, whose labels and keys carry no suffix."""
    return np_dtype(dtype).name == "float32" and layout == "NCHW"


def suffix(dtype, layout) -> str:
    """What a network total's key adds for this dtype and layout ('' for float32 NCHW)."""
    if plain(dtype, layout):
        return ""
    return f" {np_dtype(dtype).name}" + (" NHWC" if layout == "NHWC" else "")


def torch_dtype(torch, dtype):
    return getattr(torch, np_dtype(dtype).name)


def rounded(a: np.ndarray, dtype) -> np.ndarray:
    """a (float32) rounded once to dtype."""
    return a.astype(np_dtype(dtype))


def operand(host: np.ndarray, layout: str, torch=None, device: str = "cuda"):
    """(ours, the baseline's) for one array `host` (NCHW order, already in the row's dtype, or
    integer: max-pool indices): the same torch tensor twice with a CUDA torch (channels_last
    for a 4-D NHWC operand), else (a native array in the layout's axis order, None)."""
    if torch is not None:
        if host.dtype.kind in "iu":
            t = torch.from_numpy(np.ascontiguousarray(host)).to(device=device)
        else:                           # through float32: torch reads no ml_dtypes bfloat16
            t = torch.from_numpy(np.ascontiguousarray(host.astype(np.float32))).to(
                device=device, dtype=torch_dtype(torch, host.dtype))
        if layout == "NHWC" and t.dim() == 4:
            t = t.contiguous(memory_format=torch.channels_last)
        return t, t
    import cupy as cp
    a = host.transpose(_NHWC) if layout == "NHWC" and host.ndim == 4 else host
    return cp.asarray(np.ascontiguousarray(a)), None


def layout_kw(layout: str, torch) -> dict:
    """The keyword ours is called with: torch tensors carry their layout in their strides."""
    return {} if torch is not None or layout == "NCHW" else {"layout": layout}


def shape_of(shape_nchw, layout: str, torch) -> tuple:
    """A shape argument (x_shape, w_shape) as ours is given it."""
    if torch is not None or layout == "NCHW":
        return tuple(shape_nchw)
    return tuple(shape_nchw[i] for i in _NHWC)


def to_nchw_host(a, layout: str, torch_io: bool) -> np.ndarray:
    """A result of ours as float64 in NCHW order: a torch tensor (NCHW logical shape
    whatever its strides), or a native array in the layout's axis order."""
    if hasattr(a, "detach"):
        return a.detach().float().cpu().numpy().astype(np.float64)
    get = getattr(a, "get", None)
    h = get() if callable(get) and not isinstance(a, np.ndarray) else np.asarray(a)
    h = np.asarray(h).astype(np.float64)
    if not torch_io and layout == "NHWC" and h.ndim == 4:
        h = h.transpose(_NCHW)
    return h


def conv_check(got, ref, op, algo, dtype, a, b, shape, conv_kw) -> Optional[str]:
    """None when a conv result passes its check, else the reason (the row's status). got,
    ref, a, b float64 NCHW; ref exact (float64 from the rounded inputs)."""
    from convgpu import bounds
    if not is_half(dtype):
        err = float(np.linalg.norm(got - ref) / np.linalg.norm(ref))
        tol = bounds.tolerance(algo, np.float32)
        return None if err <= tol else f"FAIL rel err {err:.2e}"
    ref_h = ref.astype(np_dtype(dtype)).astype(np.float64)      # rounded once, as ours is
    norm, elem = bounds.conv_errors(got, ref_h, op, algo, np_dtype(dtype), a, b, shape,
                                    conv_kw)
    tol = bounds.tolerance(algo, np_dtype(dtype))
    if norm <= tol and elem <= 1:
        return None
    return f"FAIL norm-wise {norm:.2e} (tol {tol:.1e}), element-wise {elem:.2f} of the bound"


def gemm_check(got, A64, B64, algo, dtype) -> Optional[str]:
    """The same for a GEMM's first rows: got (m, N) against A64 @ B64, all float64."""
    from convgpu import bounds
    ref = A64 @ B64
    if not is_half(dtype):
        err = float(np.linalg.norm(got - ref) / np.linalg.norm(ref))
        return None if err <= 1e-5 else f"FAIL rel err {err:.2e}"
    ref_h = ref.astype(np_dtype(dtype)).astype(np.float64)
    mag = np.abs(A64) @ np.abs(B64)
    norm, elem = bounds.gemm_errors(got, ref_h, mag, A64.shape[1], algo, np_dtype(dtype))
    tol = bounds.tolerance(algo, np_dtype(dtype))
    if norm <= tol and elem <= 1:
        return None
    return f"FAIL norm-wise {norm:.2e} (tol {tol:.1e}), element-wise {elem:.2f} of the bound"


def elementwise_check(got, ref, mag, n, dtype) -> Optional[str]:
    """The same for a result of n FP32 operations on magnitudes mag (pooling's gathers, batch
    norm): every element within bounds.half_bound of ref rounded once to dtype (for float32,
    the FP32 bound itself)."""
    from convgpu import bounds
    if got.shape != ref.shape:
        return f"FAIL shape {got.shape}, not {ref.shape}"
    ref_h = ref.astype(np_dtype(dtype)).astype(np.float64)
    elem = bounds.elementwise(got, ref_h, bounds.half_bound(np_dtype(dtype), ref_h,
                                                             (n + 2) * 2.0 ** -23 * mag))
    return None if elem <= 1 else f"FAIL element-wise {elem:.2f} of the bound"


def normwise_check(got, ref, dtype) -> Optional[str]:
    """||got - ref|| / ||ref|| within the design's norm-wise bound for dtype (bounds.tolerance
    of a direct computation: 2 u_h + the FP32 bound for the half types)."""
    from convgpu import bounds
    err = float(np.linalg.norm(got - ref) / np.linalg.norm(ref))
    tol = bounds.tolerance("direct", np_dtype(dtype))
    return None if err <= tol else f"FAIL norm-wise {err:.2e} (tol {tol:.1e})"
