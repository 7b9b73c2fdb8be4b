"""Launchers of conv_implicit.cu: the implicit-GEMM convolutions (forward, input and weight
gradients) on gemm.cu's register-blocked tile (FP32, FP64, TF32) and on pipeline.cuh's
cp.async TF32 tile, the forward in float16 / bfloat16 on its 16-bit tensor-core tile, the
reduction split where the output has too few tiles to fill the GPU."""
from __future__ import annotations

import numpy as np

from convgpu.kernels.cuda.gemm import (MMA16_BK, MMA16_THREADS, half_ctype,
                                       mma16_shared_bytes)
from convgpu.kernels.cuda.launch import THREADS as ELEM_THREADS
from convgpu.kernels.cuda.launch import (GEMM_THREADS, MAX_GRID_YZ, PIPE_BK, PIPE_TABLE_BYTES,
                                         PIPE_THREADS, TILE, aligned16, ceil_div, conv_ints,
                                         elementwise_grid, null_or, pipe_shared_bytes,
                                         split_for, sum_splits, tf32_supports)
from convgpu.kernels.cuda.module import (cbool, ctype, get_function, max_shared_per_block,
                                         set_max_dynamic_shared)
from convgpu.kernels.outputs import contiguous, empty


def conv2d_implicit_gemm_tf32(a, x, w, b):
    return conv2d_implicit_gemm(a, x, w, b, tf32=True)


def conv2d_implicit_gemm(a, x, w, b, tf32=False):
    """Implicit GEMM; when the output has too few tiles to fill the GPU and the reduction
    (C/g*R*S) is long, the reduction is split and the partials summed in a fixed order
    (bias added by split 0 only)."""
    grid = (ceil_div(a.N * a.P * a.Q, TILE), ceil_div(a.Kg, TILE))
    bias = contiguous(b) if b is not None else np.uint64(0)          # a null pointer
    kernel = f"conv2d_implicit_gemm<{ctype(x.dtype)}, {cbool(tf32)}>"
    return _split_launch(kernel, a, x.dtype, x, a.y_shape, grid, a.Kg, a.N * a.P * a.Q,
                         a.Cg * a.R * a.S, contiguous(x), contiguous(w), bias)


def pipelined_supports(a, op="forward"):
    """The pipelined TF32 kernels' conditions: TF32 allowed, and the offsets their depth
    tables hold fit an int (forward: Cg*H*W; input gradient: K*P*Q; weight gradient:
    N*C*H*W and N*P*Q)."""
    why = tf32_supports(a)
    if why:
        return why
    need, have = pipe_shared_bytes(True, False, table=True), max_shared_per_block()
    if need > have:
        return (f"the pipelined kernels need {need} bytes of shared memory per block; this "
                f"device allows {have}")
    limit = 2 ** 31 - 2 ** 20
    size = {"forward": a.Cg * a.H * a.W, "input": a.K * a.P * a.Q,
            "weight": max(a.N * a.C * a.H * a.W, a.N * a.P * a.Q)}[op]
    if size >= limit:
        return (f"the pipelined kernel's depth table holds offsets below 2**31; this {op} "
                f"pass needs {size}")
    return None


def pipelined_input_supports(a):
    return pipelined_supports(a, "input")


def pipelined_weight_supports(a):
    return pipelined_supports(a, "weight")


def pipelined_vectors(a, x, w):
    """(VA, VB) of conv2d_implicit_gemm_pipelined: weights as 16-byte copies when the rows
    Cg*R*S are a multiple of 4; the input too for 1x1 filters at stride 1 without padding
    with P*Q a multiple of 4 (then X_cols is x itself, four columns one vector)."""
    va = (a.Cg * a.R * a.S) % 4 == 0 and aligned16(w)
    vb = ((a.R, a.S) == (1, 1) and tuple(a.stride) == (1, 1) and tuple(a.padding) == (0, 0)
          and (a.P * a.Q) % 4 == 0 and aligned16(x))
    return va, vb


def conv2d_implicit_gemm_pipelined_tf32(a, x, w, b):
    """The TF32 forward on pipeline.cuh's cp.async tile (conv_implicit.cu:
    conv2d_implicit_gemm_pipelined), 16-byte copies where pipelined_vectors allows."""
    x, w = contiguous(x), contiguous(w)
    va, vb = pipelined_vectors(a, x, w)
    bias = contiguous(b) if b is not None else np.uint64(0)
    return _pipelined_launch(f"conv2d_implicit_gemm_pipelined<{cbool(va)}, {cbool(vb)}, ", a,
                             x, a.y_shape, a.Kg, a.N * a.P * a.Q, a.Cg * a.R * a.S, x, w, bias)


def _pipelined_launch(kernel, a, like, out_shape, M, N, depth, *arrays):
    """Launch a conv_implicit.cu kernel on pipeline.cuh's tile: `kernel` is its name expression
    up to the last template argument, the tile's rows (64 where the GEMM has at most 64 rows,
    where 128 would spend half the mma on zero rows; else 128); M x N per group, reduction
    depth."""
    rows = 64 if M <= 64 else 128
    return _split_launch(f"{kernel}{rows}>", a, like.dtype, like, out_shape,
                         (ceil_div(N, TILE), ceil_div(M, rows)), M, N, depth, *arrays,
                         threads=PIPE_THREADS, depth_unit=PIPE_BK,
                         shared_mem=pipe_shared_bytes(True, False, table=True, a_rows=rows),
                         tile_rows=rows)


def _split_launch(kernel, a, dtype, like, out_shape, grid_xy, M, N, depth, *arrays,
                  threads=GEMM_THREADS, depth_unit=8, shared_mem=0, tile_rows=TILE):
    """Launch the implicit-GEMM conv kernel `kernel` (a name expression of conv_implicit.cu)
    with the reduction `depth` split (in multiples of the kernel's slice, depth_unit) when the
    output (M x N per group) has too few tiles to fill the GPU; partials summed in a fixed
    order (gemm.cu's sum_splits)."""
    if a.groups > MAX_GRID_YZ:             # blockIdx.z = group * splits + split
        raise ValueError(f"the implicit-GEMM convolutions launch one grid layer per group: "
                         f"{a.groups} groups is more than {MAX_GRID_YZ}")
    splits = min(split_for(M, N, a.groups, depth, tile_rows), MAX_GRID_YZ // a.groups)
    kchunk = ceil_div(ceil_div(depth, splits), depth_unit) * depth_unit
    splits = ceil_div(depth, kchunk)
    size = int(np.prod(out_shape))
    out = empty((splits,) + tuple(out_shape) if splits > 1 else out_shape, dtype, like)
    fn = get_function("conv_implicit.cu", kernel)
    if shared_mem:
        set_max_dynamic_shared(fn, shared_mem)
    fn(grid_xy + (a.groups * splits,), (threads,),
       (*arrays, out, *conv_ints(a), np.int32(splits), np.int32(kchunk), np.int64(size)),
       shared_mem=shared_mem)
    if splits == 1:
        return out
    return sum_splits(out, empty(out_shape, dtype, like), splits)


def wgrad_implicit_supports(a):
    if a.N * a.P * a.Q >= 2 ** 31 - 2 ** 20:
        return "the implicit-GEMM weight gradient indexes N*P*Q in 32 bits (below 2**31)"
    return None


def wgrad_implicit_tf32_supports(a):
    return tf32_supports(a) or wgrad_implicit_supports(a)


def backward_weight_implicit_gemm_tf32(a, x, gy):
    return backward_weight_implicit_gemm(a, x, gy, tf32=True)


def backward_weight_implicit_gemm(a, x, gy, tf32=False):
    """gw = gy @ X_cols^T with both operands gathered in the kernel (no column matrix)."""
    crs, npq = a.Cg * a.R * a.S, a.N * a.P * a.Q
    grid = (ceil_div(crs, TILE), ceil_div(a.Kg, TILE))
    return _split_launch(f"conv2d_wgrad_implicit_gemm<{ctype(x.dtype)}, {cbool(tf32)}>", a,
                         x.dtype, x,
                         a.w_shape, grid, a.Kg, crs,
                         npq, contiguous(x), contiguous(gy))


def backward_input_implicit_gemm_tf32(a, gy, w):
    return backward_input_implicit_gemm(a, gy, w, tf32=True)


def backward_input_implicit_gemm(a, gy, w, tf32=False):
    """gx = W^T @ GY_cols with the strided gather of gy done in the kernel (no col2im)."""
    nhw = a.N * a.H * a.W
    grid = (ceil_div(nhw, TILE), ceil_div(a.Cg, TILE))
    return _split_launch(f"conv2d_dgrad_implicit_gemm<{ctype(gy.dtype)}, {cbool(tf32)}>", a,
                         gy.dtype, gy,
                         a.x_shape, grid, a.Cg,
                         nhw, a.Kg * a.R * a.S, contiguous(gy), contiguous(w))


def backward_weight_implicit_gemm_pipelined_tf32(a, x, gy):
    """gw = gy @ X_cols^T in TF32 on pipeline.cuh's tile (conv_implicit.cu:
    conv2d_wgrad_implicit_gemm_pipelined), split-K over N*P*Q."""
    return _pipelined_launch("conv2d_wgrad_implicit_gemm_pipelined<", a, x, a.w_shape, a.Kg,
                             a.Cg * a.R * a.S, a.N * a.P * a.Q, contiguous(x), contiguous(gy))


def backward_input_implicit_gemm_pipelined_tf32(a, gy, w):
    """gx = W^T @ GY_cols in TF32 on pipeline.cuh's tile (conv_implicit.cu:
    conv2d_dgrad_implicit_gemm_pipelined; no divisibility tests at stride 1)."""
    unit = tuple(a.stride) == (1, 1)
    return _pipelined_launch(f"conv2d_dgrad_implicit_gemm_pipelined<{cbool(unit)}, ", a, gy,
                             a.x_shape, a.Cg, a.N * a.H * a.W, a.Kg * a.R * a.S,
                             contiguous(gy), contiguous(w))


def mma16_supports(a, op="forward"):
    """The half implicit GEMMs' conditions: a 16-bit type (float16, bfloat16), their shared
    memory on this device, and the 32-bit offsets they index with (forward: C/groups*H*W
    and N*P*Q; input gradient: K*P*Q and H*W; weight gradient: N*C*H*W and N*P*Q)."""
    if half_ctype(a.dtype) is None:
        return f"the tensor-core half kernels take float16 or bfloat16, not {np.dtype(a.dtype).name}"
    need, have = mma16_shared_bytes(True, False) + PIPE_TABLE_BYTES, max_shared_per_block()
    if need > have:
        return (f"the half implicit GEMM needs {need} bytes of shared memory per block; this "
                f"device allows {have}")
    limit = 2 ** 31 - 2 ** 20
    size = {"forward": max(a.Cg * a.H * a.W, a.N * a.P * a.Q),
            "input": max(a.K * a.P * a.Q, a.H * a.W),
            "weight": max(a.N * a.C * a.H * a.W, a.N * a.P * a.Q)}[op]
    if size >= limit:
        return (f"the half implicit GEMM's {op} pass indexes in 32 bits (below 2**31); it "
                f"needs {size}")
    return None


def mma16_input_supports(a):
    return mma16_supports(a, "input")


def mma16_weight_supports(a):
    return mma16_supports(a, "weight")


def _mma16_launch(kernel, targs, a, op, like, out_shape, M, N, depth, *arrays, bias=None):
    """Launch the half implicit GEMM `kernel` of conv_implicit.cu (pipeline.cuh tc16) with
    template arguments (the 16-bit type, *targs) through mma16_split_launch; bias (forward
    only) added in FP32 before the rounding, by split 0."""
    why = mma16_supports(a, op)
    if why:
        raise ValueError(why)
    if a.groups > MAX_GRID_YZ:             # blockIdx.z = group * splits + split
        raise ValueError(f"the implicit-GEMM convolutions launch one grid layer per group: "
                         f"{a.groups} groups is more than {MAX_GRID_YZ}")
    head = arrays + ((null_or(bias),) if op == "forward" else ())
    name = f"{kernel}<{', '.join((half_ctype(like.dtype),) + targs)}>"
    return mma16_split_launch("conv_implicit.cu", name, a, like, out_shape, M, N, depth,
                              mma16_shared_bytes(True, False) + PIPE_TABLE_BYTES,
                              (ceil_div(N, TILE), ceil_div(M, TILE)), *head)


def mma16_split_launch(source, kernel, a, like, out_shape, M, N, depth, smem, grid_xy, *arrays,
                       layers=1):
    """Launch the tc16 convolution `kernel` (a name expression of `source`) on `arrays` (its
    inputs, bias included) for M x N per group, and per one of `layers` grid layers of a
    group: blockIdx.z = (group * layers + layer) * splits + split. The reduction `depth` is
    split where the output has too few tiles; the FP32 partials are summed in a fixed order
    and rounded once (gemm.cu's sum_splits_half)."""
    t = half_ctype(like.dtype)
    batch = a.groups * layers
    splits = min(split_for(M, N, batch, depth), MAX_GRID_YZ // batch)
    kchunk = ceil_div(ceil_div(depth, splits), MMA16_BK) * MMA16_BK
    splits = ceil_div(depth, kchunk) if depth else 1
    size = int(np.prod(out_shape))
    out = empty(out_shape, like.dtype, like)
    if size == 0:                           # nothing to launch (a grid of 0 blocks fails)
        return out
    parts = empty((splits,) + tuple(out_shape), np.float32, like) if splits > 1 else None
    fn = get_function(source, kernel)
    set_max_dynamic_shared(fn, smem)
    fn(grid_xy + (batch * splits,), (MMA16_THREADS,),
       (*arrays, out if parts is None else np.uint64(0), null_or(parts), *conv_ints(a),
        np.int32(splits), np.int32(kchunk), np.int64(size)), shared_mem=smem)
    if parts is not None:
        get_function("gemm.cu", f"sum_splits_half<{t}>")(
            elementwise_grid(size), (ELEM_THREADS,),
            (parts, np.uint64(0), out, np.int64(size), np.int32(1), np.int32(splits)))
    return out


def conv2d_implicit_gemm_mma16(a, x, w, b):
    """The forward in float16 / bfloat16 on the tensor cores (conv_implicit.cu:
    conv2d_implicit_gemm_mma16): FP32 accumulation, the bias added in FP32, each output
    rounded once; weights as 16-byte copies where C/groups*R*S is a multiple of 8."""
    why = mma16_supports(a)
    if why:
        raise ValueError(why)
    x, w = contiguous(x), contiguous(w)
    va = (a.Cg * a.R * a.S) % 8 == 0 and aligned16(w)
    return _mma16_launch("conv2d_implicit_gemm_mma16", (cbool(va),), a, "forward", x,
                         a.y_shape, a.Kg, a.N * a.P * a.Q, a.Cg * a.R * a.S, x, w,
                         bias=contiguous(b) if b is not None else None)


def backward_input_implicit_gemm_mma16(a, gy, w):
    """gx = W^T @ GY_cols in float16 / bfloat16 on the tensor cores (conv_implicit.cu:
    conv2d_dgrad_implicit_gemm_mma16; no divisibility tests at stride 1)."""
    unit = tuple(a.stride) == (1, 1)
    return _mma16_launch("conv2d_dgrad_implicit_gemm_mma16", (cbool(unit),), a, "input", gy,
                         a.x_shape, a.Cg, a.N * a.H * a.W, a.Kg * a.R * a.S,
                         contiguous(gy), contiguous(w))


def backward_weight_implicit_gemm_mma16(a, x, gy):
    """gw = gy @ X_cols^T in float16 / bfloat16 on the tensor cores (conv_implicit.cu:
    conv2d_wgrad_implicit_gemm_mma16), split-K over N*P*Q."""
    return _mma16_launch("conv2d_wgrad_implicit_gemm_mma16", (), a, "weight", x, a.w_shape, a.Kg,
                         a.Cg * a.R * a.S, a.N * a.P * a.Q, contiguous(x), contiguous(gy))
