"""Pooling ops: max (with argmax indices) and average, forward and backward; global and
adaptive average.

max_pool2d_backward takes torch's (grad_output, indices, input_shape) and, optionally, the
forward's window geometry (kernel_size, stride, padding, dilation, ceil_mode), as torch's
max_pool2d_with_indices_backward does. With the geometry the device kernels gather: one
thread per input element sums the outputs whose windows cover it and whose index points
at it. Without it they walk each plane's outputs in order. Both are deterministic.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

from convgpu import reference, reference_nhwc
from convgpu.arrays import on_torch_stream, unwrap_layout, xp_of
from convgpu.core import args as A
from convgpu.ops._layout import LayoutShape, register_transpose
from convgpu.ops._registry import DTYPE_NAMES, WITH_FLOAT16, dispatch, register


@dataclass
class MaxBackwardArgs:
    x_shape: Tuple[int, int, int, int]
    pool: Optional[A.PoolArgs]          # the forward's geometry, if the caller gave it
    check_indices: bool = True          # validate the indices (each implementation does)
    layout: str = "NCHW"                # of x_shape, grad_output and indices


@dataclass(frozen=True)
class AdaptiveArgs(A.PlaneShapes):
    N: int
    C: int
    H: int
    W: int
    P: int
    Q: int
    dtype: str
    layout: str = "NCHW"


OP_BWD = "max_pool2d_backward"


def _check_range(a, idx):
    """Every index in [0, H*W): what the scatters (reference, numba plane) need to be safe."""
    if a.check_indices and idx.size:
        xp = xp_of(idx)
        _, _, H, W = A.from_layout(a.x_shape, a.layout)
        A.check_indices_range(OP_BWD, int(xp.min(idx)), int(xp.max(idx)), H * W)


def _check_window(a, idx):
    """Every index inside its own window, on the dilation grid: what a gather needs, since it
    only looks for an index among the windows that can cover an element (array operations;
    the CUDA C gathers do the same test on the device, pool.cu index_violation)."""
    if not a.check_indices or not idx.size:
        return
    if a.layout == "NHWC":
        idx = idx.transpose(0, 3, 1, 2)             # the per-window test below is per plane
    xp, p = xp_of(idx), a.pool
    rows = (xp.arange(p.P) * p.stride[0] - p.padding[0])[:, None]
    cols = (xp.arange(p.Q) * p.stride[1] - p.padding[1])[None, :]
    dr, dc = idx // p.W - rows, idx % p.W - cols
    ok = ((dr >= 0) & (dr <= (p.kernel[0] - 1) * p.dilation[0]) & (dr % p.dilation[0] == 0)
          & (dc >= 0) & (dc <= (p.kernel[1] - 1) * p.dilation[1]) & (dc % p.dilation[1] == 0))
    if not bool(ok.all()):
        raise ValueError(f"{OP_BWD}: an index lies outside its window: indices must be those "
                         f"max_pool2d returned for kernel_size={p.kernel}, stride={p.stride}, "
                         f"padding={p.padding}, dilation={p.dilation}")


# ----------------------------------------------------------------------------------------
# numpy backend adapters


def _np_max_pool(a, x):
    f = reference_nhwc.max_pool2d_nhwc if a.layout == "NHWC" else reference.max_pool2d
    return f(x, a.kernel, a.stride, a.padding, a.dilation, a.ceil_mode)


def _np_max_backward(a, gy, idx):
    _check_range(a, idx)
    f = reference_nhwc.max_pool2d_backward_nhwc if a.layout == "NHWC" else \
        reference.max_pool2d_backward
    return f(gy, idx, a.x_shape)


def _numba_max_backward_gather(a, gy, idx):
    from convgpu.kernels.numba import pool    # deferred: imports Numba, an optional dependency
    _check_range(a, idx)
    _check_window(a, idx)
    return pool.max_pool2d_backward_gather(a, gy, idx)


def _numba_max_backward_plane(a, gy, idx):
    from convgpu.kernels.numba import pool    # deferred: imports Numba, an optional dependency
    _check_range(a, idx)
    return pool.max_pool2d_backward_plane(a, gy, idx)


def _np_avg_pool(a, x):
    f = reference_nhwc.avg_pool2d_nhwc if a.layout == "NHWC" else reference.avg_pool2d
    return f(x, a.kernel, a.stride, a.padding, a.ceil_mode, a.count_include_pad,
             a.divisor_override)


def _np_avg_backward(a, gy):
    f = reference_nhwc.avg_pool2d_backward_nhwc if a.layout == "NHWC" else \
        reference.avg_pool2d_backward
    return f(gy, a.x_shape, a.kernel, a.stride, a.padding, a.ceil_mode, a.count_include_pad,
             a.divisor_override)


def _np_gap(a, x):
    if isinstance(a, LayoutShape):                  # NHWC (NCHW calls pass the shape tuple)
        return reference_nhwc.global_avg_pool2d_nhwc(x)
    return reference.global_avg_pool2d(x)


def _np_gap_backward(a, gy):
    if isinstance(a, LayoutShape):
        return reference_nhwc.global_avg_pool2d_backward_nhwc(gy, a.shape)
    return reference.global_avg_pool2d_backward(gy, a)


def _np_adaptive(a, x):
    f = reference_nhwc.adaptive_avg_pool2d_nhwc if a.layout == "NHWC" else \
        reference.adaptive_avg_pool2d
    return f(x, (a.P, a.Q))


def _np_adaptive_backward(a, gy):
    f = reference_nhwc.adaptive_avg_pool2d_backward_nhwc if a.layout == "NHWC" else \
        reference.adaptive_avg_pool2d_backward
    return f(gy, a.x_shape)


def _needs_geometry(a):
    return None if a.pool is not None else \
        "needs the forward's kernel_size/stride/padding/dilation to gather"


_BOTH = ("NCHW", "NHWC")
register("max_pool2d", "numpy", "reference", "convgpu.ops.pool:_np_max_pool", layouts=_BOTH)
register("max_pool2d_backward", "numpy", "reference", "convgpu.ops.pool:_np_max_backward",
         layouts=_BOTH)
register("avg_pool2d", "numpy", "reference", "convgpu.ops.pool:_np_avg_pool", layouts=_BOTH)
register("avg_pool2d_backward", "numpy", "reference", "convgpu.ops.pool:_np_avg_backward",
         layouts=_BOTH)
register("global_avg_pool2d", "numpy", "reference", "convgpu.ops.pool:_np_gap", layouts=_BOTH)
register("global_avg_pool2d_backward", "numpy", "reference", "convgpu.ops.pool:_np_gap_backward",
         layouts=_BOTH)
register("adaptive_avg_pool2d", "numpy", "reference", "convgpu.ops.pool:_np_adaptive",
         layouts=_BOTH)
register("adaptive_avg_pool2d_backward", "numpy", "reference",
         "convgpu.ops.pool:_np_adaptive_backward", layouts=_BOTH)

_K = "convgpu.kernels.numba.pool:"
_F16 = dict(dtypes=WITH_FLOAT16)       # float16 data, float32 sums
register("max_pool2d", "numba", "direct", _K + "max_pool2d", **_F16)
register("max_pool2d_backward", "numba", "gather", "convgpu.ops.pool:_numba_max_backward_gather",
         supports=_needs_geometry, **_F16)
# adds into the output in place: in float16 every add would round, so float32 and float64
register("max_pool2d_backward", "numba", "plane", "convgpu.ops.pool:_numba_max_backward_plane")
register("avg_pool2d", "numba", "direct", _K + "avg_pool2d", **_F16)
register("avg_pool2d_backward", "numba", "gather", _K + "avg_pool2d_backward", **_F16)
register("global_avg_pool2d", "numba", "reduce", _K + "global_avg_pool2d", **_F16)
register("global_avg_pool2d_backward", "numba", "direct", _K + "global_avg_pool2d_backward",
         **_F16)
register("adaptive_avg_pool2d", "numba", "direct", _K + "adaptive_avg_pool2d", **_F16)
register("adaptive_avg_pool2d_backward", "numba", "gather", _K + "adaptive_avg_pool2d_backward",
         **_F16)


def _cuda_plane_fits(a):
    if isinstance(a, MaxBackwardArgs):
        if a.pool is None:
            return "needs the forward's kernel_size/stride/padding/dilation to gather"
        a = a.pool
    if a.H * a.W >= 2 ** 31:
        return "the CUDA C kernels index within a plane in 32 bits (H*W < 2**31)"
    return None


_C = "convgpu.kernels.cuda."


_D = "convgpu.kernels.dev."


def _cuda_tiled_fits(plan: str, why: str):
    """supports() of a tiled pooling kernel: the plane test, then its launcher's plan (None
    where it does not serve)."""
    def supports(a):
        reason = _cuda_plane_fits(a)
        if reason:
            return reason
        from convgpu.kernels.dev import pool_tiled   # deferred, as the registry's targets are
        geometry = a.pool if isinstance(a, MaxBackwardArgs) else a
        return why if getattr(pool_tiled, plan)(geometry, geometry.dtype.itemsize) is None \
            else None
    return supports


def _cuda_shuffle_fits(a):
    reason = _cuda_plane_fits(a)
    if reason:
        return reason
    from convgpu.kernels.dev import pool_cells_shuffle   # deferred, as the registry's targets are
    return pool_cells_shuffle.supports(a)


_H = dict(dtypes=DTYPE_NAMES)         # and the half types (pool.cu, FP32 sums)
register("max_pool2d", "cuda", "direct", _C + "pool:max_pool2d", supports=_cuda_plane_fits, **_H)
register("max_pool2d", "cuda", "tiled", _D + "pool_tiled:max_pool2d_tiled", dev=True,
         supports=_cuda_tiled_fits("max_pool2d_fwd_tiled_plan",
                                   "the tiled max pooling needs square 2x2 or 3x3 windows at "
                                   "dilation 1 and an input row that fits shared memory"))
register("max_pool2d_backward", "cuda", "gather", _C + "pool:max_pool2d_backward_gather",
         supports=_cuda_plane_fits, **_H)
register("max_pool2d_backward", "cuda", "tiled", _D + "pool_tiled:max_pool2d_backward_tiled",
         dev=True,
         supports=_cuda_tiled_fits("max_pool2d_tiled_plan",
                                   "the tiled gather needs strides <= 2, windows reaching at "
                                   "most one stride back ((k - 1) * d < 2 * s) and a row of "
                                   "outputs that fits shared memory"))
register("max_pool2d_backward", "cuda", "cells_shuffle",
         _D + "pool_cells_shuffle:max_pool2d_backward_cells_shuffle", dev=True,
         supports=_cuda_shuffle_fits)
register("avg_pool2d", "cuda", "direct", _C + "pool:avg_pool2d", supports=_cuda_plane_fits, **_H)
register("global_avg_pool2d", "cuda", "reduce", _C + "elementwise:global_avg_pool2d",
         dtypes=DTYPE_NAMES)
register("global_avg_pool2d_backward", "cuda", "direct",
         _C + "elementwise:global_avg_pool2d_backward", dtypes=DTYPE_NAMES)
register("avg_pool2d_backward", "cuda", "gather", _C + "pool:avg_pool2d_backward",
         supports=_cuda_plane_fits, **_H)
register("adaptive_avg_pool2d", "cuda", "direct", _C + "pool:adaptive_avg_pool2d", **_H)
register("adaptive_avg_pool2d_backward", "cuda", "gather", _C + "pool:adaptive_avg_pool2d_backward",
         **_H)

_PN = _C + "pool_nhwc:"          # pool.cu's kernels channel fastest, the half types too
register("max_pool2d", "cuda", "direct_nhwc", _PN + "max_pool2d", supports=_PN + "nhwc_supports",
         layouts=("NHWC",), **_H)
register("avg_pool2d", "cuda", "direct_nhwc", _PN + "avg_pool2d", supports=_PN + "nhwc_supports",
         layouts=("NHWC",), **_H)
register("max_pool2d_backward", "cuda", "gather_nhwc", _PN + "max_pool2d_backward_gather",
         supports=_PN + "nhwc_supports", layouts=("NHWC",), **_H)
register("avg_pool2d_backward", "cuda", "gather_nhwc", _PN + "avg_pool2d_backward",
         supports=_PN + "nhwc_supports", layouts=("NHWC",), **_H)
register("adaptive_avg_pool2d", "cuda", "direct_nhwc", _PN + "adaptive_avg_pool2d",
         layouts=("NHWC",), **_H)
register("adaptive_avg_pool2d_backward", "cuda", "gather_nhwc",
         _PN + "adaptive_avg_pool2d_backward", layouts=("NHWC",), **_H)
register("global_avg_pool2d", "cuda", "reduce_nhwc", _PN + "global_avg_pool2d",
         layouts=("NHWC",), **_H)
register("global_avg_pool2d_backward", "cuda", "direct_nhwc", _PN + "global_avg_pool2d_backward",
         layouts=("NHWC",), **_H)

# NHWC where a backend has no NHWC kernel: its NCHW kernels between layout copies, by name
for _op in ("max_pool2d", "max_pool2d_backward", "avg_pool2d", "avg_pool2d_backward",
            "global_avg_pool2d", "global_avg_pool2d_backward", "adaptive_avg_pool2d",
            "adaptive_avg_pool2d_backward"):
    for _backend in ("numba", "cuda"):
        register_transpose(_op, _backend)


# ----------------------------------------------------------------------------------------
# the ops


@on_torch_stream
def max_pool2d(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
               return_indices=False, *, algo="auto", backend="auto", layout="NCHW"):
    """Max pooling as torch: -inf padding; with return_indices, int64 indices flat over each
    unpadded input plane (h*W + w); the first maximum wins a tie; NaN propagates. algo picks
    an implementation (convgpu.implementations("max_pool2d")); all give the same answer.
    layout="NHWC": input (N, H, W, C) -> y and indices (N, P, Q, C), the indices still flat
    over the plane (h*W + w), as torch gives them for a channels_last input."""
    op = "max_pool2d"
    layout = A.check_layout(op, layout)
    bd, a, layout = unwrap_layout(op, layout, input=input)
    x, unbatched = A.batched(op, "input", a["input"], layout)
    A.check_float(op, "input", x)
    args = A.pool_geometry(op, x.shape, kernel_size, stride, padding, dilation, ceil_mode,
                           x.dtype, kind="max", layout=layout)
    if x.size == 0:                                   # no images or no channels
        y, idx = A.zeros(x, args.y_shape, x.dtype), A.zeros(x, args.y_shape, "int64")
    else:
        y, idx = dispatch(op, args, backend, algo, bd.on_device, x)
    if unbatched:
        y, idx = y[0], idx[0]
    return bd.wrap((y, idx)) if return_indices else bd.wrap(y)


@on_torch_stream
def max_pool2d_backward(grad_output, indices, input_shape, kernel_size=None, stride=None,
                        padding=0, dilation=1, ceil_mode=False, *, algo="auto", backend="auto",
                        check_indices=True, layout="NCHW"):
    """Gradient of max pooling: each input element receives the sum of the grad_output entries
    whose index points at it. Pass the forward's geometry to let device kernels gather.
    Indices are validated (in [0, H*W); for the gathers, inside their own window, since a
    gather cannot honour any other), raising ValueError; on the device that waits for the
    kernel (one 4-byte read). check_indices=False skips it, for indices straight from
    max_pool2d with the same geometry (what nn.MaxPool2d passes). layout="NHWC":
    grad_output and indices (N, P, Q, C), input_shape (N, H, W, C)."""
    op = "max_pool2d_backward"
    given = A.check_layout(op, layout)
    bd, a, layout = unwrap_layout(op, given, grad_output=grad_output, indices=indices)
    gy, unbatched = A.batched(op, "grad_output", a["grad_output"], layout)
    idx = a["indices"]
    if unbatched:
        idx = idx[None] if idx.ndim == 3 else idx
    A.check_float(op, "grad_output", gy)
    shape = A.check_input_shape(op, _shape_in(input_shape, layout, given), layout)
    nc, gy_nc = A.from_layout(shape, layout)[:2], A.from_layout(gy.shape, layout)[:2]
    if nc != gy_nc:
        raise ValueError(f"{op}: grad_output has shape {tuple(gy.shape)} but input_shape "
                         f"{shape} has (N, C) = {nc}"
                         + (f" (layout={layout!r})" if layout != "NCHW" else ""))
    A.check_indices(op, idx, gy.shape)
    pool = None
    if kernel_size is not None:
        pool = A.pool_geometry(op, shape, kernel_size, stride, padding, dilation, ceil_mode,
                               gy.dtype, kind="max", layout=layout)
        A.check_pooled_grad(op, gy.shape, pool)
    idx = idx.astype("int64", copy=False)
    # each implementation validates the indices it is given (the host scatter: in the plane;
    # the gathers: inside their windows, the CUDA C ones on the device without a pass of
    # their own); check_indices=False skips it for indices known to come from max_pool2d
    if gy.size == 0:
        gx = A.zeros(gy, shape, gy.dtype)
    else:
        gx = dispatch(op, MaxBackwardArgs(shape, pool, bool(check_indices), layout), backend,
                      algo, bd.on_device, gy, idx)
    return bd.wrap(gx[0] if unbatched else gx)


@on_torch_stream
def avg_pool2d(input, kernel_size, stride=None, padding=0, ceil_mode=False,
               count_include_pad=True, divisor_override=None, *, backend="auto", algo="auto",
               layout="NCHW"):
    """Average pooling as torch.nn.functional.avg_pool2d. layout="NHWC": (N, H, W, C) ->
    (N, P, Q, C)."""
    op = "avg_pool2d"
    layout = A.check_layout(op, layout)
    bd, a, layout = unwrap_layout(op, layout, input=input)
    x, unbatched = A.batched(op, "input", a["input"], layout)
    A.check_float(op, "input", x)
    args = A.pool_geometry(op, x.shape, kernel_size, stride, padding, 1, ceil_mode, x.dtype,
                           kind="avg", count_include_pad=count_include_pad,
                           divisor_override=divisor_override, layout=layout)
    y = A.zeros(x, args.y_shape, x.dtype) if x.size == 0 else \
        dispatch(op, args, backend, algo, bd.on_device, x)
    return bd.wrap(y[0] if unbatched else y)


def _shape_in(shape, layout, given):
    """input_shape given in the caller's layout, in the layout the call runs in (a
    channels_last torch call runs in NHWC while the caller speaks NCHW); a 3-D shape is
    one image, anything else passes through for the checks to refuse."""
    if layout == given or not isinstance(shape, (tuple, list)) or len(shape) not in (3, 4):
        return shape
    if len(shape) == 3:
        return tuple(_shape_in((1,) + tuple(shape), layout, given)[1:])
    return A.to_layout(A.from_layout(tuple(shape), given), layout)


@on_torch_stream
def avg_pool2d_backward(grad_output, input_shape, kernel_size, stride=None, padding=0,
                        ceil_mode=False, count_include_pad=True, divisor_override=None, *,
                        backend="auto", algo="auto", layout="NCHW"):
    """Gradient of avg_pool2d: each input element gathers grad_output / divisor over the
    windows that cover it. layout="NHWC": grad_output (N, P, Q, C), input_shape (N, H, W,
    C)."""
    op = "avg_pool2d_backward"
    given = A.check_layout(op, layout)
    bd, a, layout = unwrap_layout(op, given, grad_output=grad_output)
    gy, unbatched = A.batched(op, "grad_output", a["grad_output"], layout)
    A.check_float(op, "grad_output", gy)
    shape = A.check_input_shape(op, _shape_in(input_shape, layout, given), layout)
    args = A.pool_geometry(op, shape, kernel_size, stride, padding, 1, ceil_mode, gy.dtype,
                           kind="avg", count_include_pad=count_include_pad,
                           divisor_override=divisor_override, layout=layout)
    A.check_pooled_grad(op, gy.shape, args)
    gx = A.zeros(gy, shape, gy.dtype) if gy.size == 0 else \
        dispatch(op, args, backend, algo, bd.on_device, gy)
    return bd.wrap(gx[0] if unbatched else gx)


@on_torch_stream
def global_avg_pool2d(input, *, backend="auto", algo="auto", layout="NCHW"):
    """Mean over H and W: (N, C, H, W) -> (N, C); layout="NHWC": (N, H, W, C) -> (N, C)."""
    op = "global_avg_pool2d"
    layout = A.check_layout(op, layout)
    bd, a, layout = unwrap_layout(op, layout, input=input)
    x = a["input"]
    A.check_ndim(op, "input", x, (4,), "4-D (N, H, W, C)" if layout == "NHWC"
                 else "4-D (N, C, H, W)")
    A.check_float(op, "input", x)
    N, C, H, W = A.from_layout(x.shape, layout)
    if min(H, W) < 1:
        raise ValueError(f"{op}: input planes must not be empty, got shape {tuple(x.shape)}")
    if x.size == 0:
        return bd.wrap(A.zeros(x, (N, C), x.dtype))
    rec = LayoutShape(tuple(x.shape), layout) if layout == "NHWC" else tuple(x.shape)
    return bd.wrap(dispatch(op, rec, backend, algo, bd.on_device, x))


@on_torch_stream
def global_avg_pool2d_backward(grad_output, input_shape, *, backend="auto", algo="auto",
                               layout="NCHW"):
    """Gradient of global_avg_pool2d: grad_output (N, C) spread evenly over input_shape
    (N, C, H, W), or (N, H, W, C) with layout="NHWC"."""
    op = "global_avg_pool2d_backward"
    layout = A.check_layout(op, layout)
    bd, a, layout = unwrap_layout(op, layout, grad_output=grad_output)
    gy = a["grad_output"]
    A.check_float(op, "grad_output", gy)
    shape = A.check_shape_tuple(op, "input_shape", input_shape, 4,
                                (0, 3 if layout == "NHWC" else 1))
    nc = A.from_layout(shape, layout)[:2]
    if tuple(gy.shape) != nc:
        raise ValueError(f"{op}: grad_output has shape {tuple(gy.shape)} but input_shape "
                         f"{shape} needs {nc}")
    if gy.size == 0:
        return bd.wrap(A.zeros(gy, shape, gy.dtype))
    rec = LayoutShape(shape, layout) if layout == "NHWC" else shape
    return bd.wrap(dispatch(op, rec, backend, algo, bd.on_device, gy))


def _adaptive_size(op, output_size, H, W):
    """torch's output_size: an int, or a pair whose None entries keep the input's size."""
    pair = output_size if isinstance(output_size, (tuple, list)) else (output_size, output_size)
    if len(pair) != 2 or not all(v is None or (A._is_int(v) and v >= 0) for v in pair):
        raise ValueError(f"{op}: output_size must be an int >= 0 or a pair of them (None keeps "
                         f"the input's size), got {output_size!r}")
    return tuple(int(size if v is None else v) for v, size in zip(pair, (H, W)))


@on_torch_stream
def adaptive_avg_pool2d(input, output_size, *, backend="auto", algo="auto", layout="NCHW"):
    """Average pooling to a given output size, as torch: output p of P averages rows
    [floor(p H / P), ceil((p + 1) H / P)), the same along W (neighbouring windows overlap
    where P does not divide H; P > H repeats rows). layout="NHWC": (N, H, W, C) -> (N, P,
    Q, C)."""
    op = "adaptive_avg_pool2d"
    layout = A.check_layout(op, layout)
    bd, a, layout = unwrap_layout(op, layout, input=input)
    x, unbatched = A.batched(op, "input", a["input"], layout)
    A.check_float(op, "input", x)
    N, C, H, W = A.from_layout(x.shape, layout)
    if H == 0 or W == 0:
        raise ValueError(f"{op}: input planes must not be empty, got shape {tuple(x.shape)}")
    P, Q = _adaptive_size(op, output_size, H, W)
    args = AdaptiveArgs(N, C, H, W, P, Q, x.dtype.name, layout)
    y = A.zeros(x, args.y_shape, x.dtype) if x.size == 0 or P * Q == 0 else \
        dispatch(op, args, backend, algo, bd.on_device, x)
    return bd.wrap(y[0] if unbatched else y)


@on_torch_stream
def adaptive_avg_pool2d_backward(grad_output, input_shape, *, backend="auto", algo="auto",
                                 layout="NCHW"):
    """Gradient of adaptive_avg_pool2d: each input element gathers gy / (window area) over
    the outputs whose windows hold it. The output size is grad_output's. layout="NHWC":
    grad_output (N, P, Q, C), input_shape (N, H, W, C)."""
    op = "adaptive_avg_pool2d_backward"
    given = A.check_layout(op, layout)
    bd, a, layout = unwrap_layout(op, given, grad_output=grad_output)
    gy, unbatched = A.batched(op, "grad_output", a["grad_output"], layout)
    A.check_float(op, "grad_output", gy)
    shape = A.check_input_shape(op, _shape_in(input_shape, layout, given), layout)
    g = A.from_layout(gy.shape, layout)
    if g[:2] != A.from_layout(shape, layout)[:2]:
        raise ValueError(f"{op}: grad_output has shape {tuple(gy.shape)} but input_shape "
                         f"{shape} has (N, C) = {A.from_layout(shape, layout)[:2]}")
    args = AdaptiveArgs(*A.from_layout(shape, layout), *g[2:], gy.dtype.name, layout)
    gx = A.zeros(gy, shape, gy.dtype) if gy.size == 0 else \
        dispatch(op, args, backend, algo, bd.on_device, gy)
    return bd.wrap(gx[0] if unbatched else gx)
