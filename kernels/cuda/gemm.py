"""Launchers of gemm.cu: the batched GEMM every GEMM-based algorithm runs on (FP32, FP64,
TF32; float16 and bfloat16 on the tensor cores), with split-K summed in a fixed order; and
linear (the `linear` ops) on it."""
from __future__ import annotations

import numpy as np

from convgpu.kernels.cuda.elementwise import channel_sum
from convgpu.kernels.cuda.launch import THREADS as ELEM_THREADS
from convgpu.kernels.cuda.launch import (GEMM_THREADS, MAX_GRID_YZ, PIPE_BK, PIPE_THREADS, TILE,
                                         aligned16, ceil_div, elementwise_grid, i32, null_or,
                                         pipe_shared_bytes, split_for, sum_splits)
from convgpu.kernels.cuda.module import (cbool, ctype, get_function, max_shared_per_block,
                                         set_max_dynamic_shared)
from convgpu.kernels.outputs import contiguous, empty


def vec_gemm_fits(A, B, ta, tb) -> bool:
    """gemm_vec's conditions: float32, each operand's contiguous extent a multiple of 4 (so
    rows stay 16-byte aligned and a vector never straddles the edge), 16-byte aligned bases."""
    M, K = (A.shape[2], A.shape[1]) if ta else (A.shape[1], A.shape[2])
    N = B.shape[1] if tb else B.shape[2]
    return (np.dtype(A.dtype) == np.float32 and np.dtype(B.dtype) == np.float32
            and (M if ta else K) % 4 == 0 and (K if tb else N) % 4 == 0
            and aligned16(A, B))


GEMM_VARIANTS = ("auto", "vec", "vec64", "tiled", "pipelined", "mma16")

# the 16-bit types gemm_mma16 takes, by NumPy dtype name (ml_dtypes' bfloat16 on NumPy arrays)
HALF_CTYPES = {"float16": "__half", "bfloat16": "__nv_bfloat16"}
# gemm_mma16's tile (pipeline.cuh tc16): 128 x 128 blocks of 128 threads, slices of 32,
# 3 stages of 2-byte elements, K-major tiles 128 x 40, MN-major 32 x 136
MMA16_THREADS, MMA16_BK, MMA16_STAGES = 128, 32, 3


def half_ctype(dtype):
    """The C type of a float16 / bfloat16 dtype, or None for any other."""
    return HALF_CTYPES.get(np.dtype(dtype).name)


def mma16_shared_bytes(a_kmajor: bool, b_kmajor: bool) -> int:
    """tc16::shared_bytes<KA, KB>()."""
    tile = lambda kmajor: 128 * 40 if kmajor else 32 * 136     # noqa: E731
    return 2 * MMA16_STAGES * (tile(a_kmajor) + tile(b_kmajor))


def mma16_vec_fits(A, B, ta, tb) -> bool:
    """gemm_mma16's 16-byte copies: each operand's contiguous extent a multiple of 8 elements
    and 16-byte aligned bases (else the element-wise variant)."""
    M, K = (A.shape[2], A.shape[1]) if ta else (A.shape[1], A.shape[2])
    N = B.shape[1] if tb else B.shape[2]
    return (M if ta else K) % 8 == 0 and (K if tb else N) % 8 == 0 and aligned16(A, B)


def gemm(A, B, ta=False, tb=False, splits=1, tf32=False, variant="auto", bias=None,
         fp32=False):
    """Batched C[b] = op(A[b]) @ op(B[b]); an operand with a batch of 1 serves every batch
    (stride 0: the weights of a 1x1 convolution against each image). With splits > 1 the K
    range is cut into that many parts whose partial products are summed afterwards in a
    fixed order (deterministic).
    variant: "vec" (gemm_vec: 16-deep tiles, 16-byte loads), "vec64" (gemm_vec's 64-row
    tile: FP32, for M <= 64), "tiled" (gemm_tiled), "pipelined" (gemm_pipelined: TF32 only,
    cp.async pipeline, gemm_vec's conditions), "mma16" (gemm_mma16: float16 / bfloat16 on
    the tensor cores, FP32 accumulation, the only variant for those types), or "auto":
    mma16 for the 16-bit types, pipelined for TF32, vec64 for FP32 with M <= 64, else vec
    where their conditions hold, else tiled.
    bias (16-bit types only): a row vector of N added to every row in FP32 before the one
    rounding of each output. fp32 (16-bit types only): the FP32 product, not rounded, for a
    caller that sums it further (col2im) and rounds once."""
    if half_ctype(A.dtype) or half_ctype(B.dtype) or variant == "mma16":
        return _gemm_mma16(A, B, ta, tb, splits, tf32, variant, bias, fp32)
    if bias is not None or fp32:
        raise ValueError("gemm: bias and fp32 are for the 16-bit GEMM (gemm_mma16) only")
    batch = max(A.shape[0], B.shape[0])
    if min(A.shape[0], B.shape[0]) not in (1, batch):
        raise ValueError(f"gemm: batches of {A.shape[0]} and {B.shape[0]} (equal, or one of 1)")
    stride_a = 0 if A.shape[0] == 1 else A[0].size
    stride_b = 0 if B.shape[0] == 1 else B[0].size
    M, K = (A.shape[2], A.shape[1]) if ta else (A.shape[1], A.shape[2])
    N = B.shape[1] if tb else B.shape[2]
    if variant not in GEMM_VARIANTS:
        raise ValueError(f"gemm variant is one of {', '.join(GEMM_VARIANTS)}; got {variant!r}")
    fits = vec_gemm_fits(A, B, ta, tb)
    if variant in ("vec", "vec64", "pipelined") and not fits:
        raise ValueError(f"gemm_{variant} needs float32, contiguous extents that are multiples "
                         "of 4 and 16-byte aligned operands")
    if variant == "pipelined" and not tf32:
        raise ValueError("gemm_pipelined is the TF32 kernel: it needs tf32=True")
    if variant == "vec64" and tf32:
        raise ValueError("gemm_vec's 64-row tile is FP32 only (tf32=False)")
    pipe_fits = tf32 and fits and pipe_shared_bytes(not ta, tb) <= max_shared_per_block()
    if variant == "pipelined" and not pipe_fits:
        raise ValueError(f"gemm_pipelined needs {pipe_shared_bytes(not ta, tb)} bytes of shared "
                         f"memory per block; this device allows {max_shared_per_block()}")
    if variant == "auto":
        variant = ("pipelined" if pipe_fits else "vec" if tf32 or M > 64 else "vec64") \
            if fits else "tiled"
    depth = {"vec": 16, "vec64": 16, "tiled": 8, "pipelined": PIPE_BK}[variant]   # the split unit
    splits = max(1, min(splits, ceil_div(K, depth)))
    kchunk = ceil_div(ceil_div(K, splits), depth) * depth
    splits = ceil_div(K, kchunk)
    rows = 64 if variant == "vec64" else TILE
    if batch * splits > MAX_GRID_YZ or ceil_div(M, rows) > MAX_GRID_YZ:
        return _gemm_in_parts(A, B, ta, tb, splits, tf32, variant, M, N, rows)
    t = ctype(A.dtype)
    threads, smem = GEMM_THREADS, 0
    if variant == "vec":
        name = f"gemm_vec<{cbool(ta)}, {cbool(tb)}, {cbool(tf32)}>"
    elif variant == "vec64":
        name = f"gemm_vec<{cbool(ta)}, {cbool(tb)}, false, 64>"
        threads = GEMM_THREADS // 2
    elif variant == "tiled":
        name = f"gemm_tiled<{t}, {cbool(ta)}, {cbool(tb)}, {cbool(tf32)}>"
    else:
        name = f"gemm_pipelined<{cbool(ta)}, {cbool(tb)}>"
        threads, smem = PIPE_THREADS, pipe_shared_bytes(not ta, tb)
    fn = get_function("gemm.cu", name)
    if smem:
        set_max_dynamic_shared(fn, smem)
    out = empty((splits, batch, M, N) if splits > 1 else (batch, M, N), A.dtype, A)
    grid = (ceil_div(N, TILE), ceil_div(M, rows), batch * splits)
    fn(grid, (threads,), (A, B, out, *i32(M, N, K), np.int64(stride_a), np.int64(stride_b),
                          np.int64(M * N), np.int32(splits), np.int32(kchunk),
                          np.int64(batch * M * N)), shared_mem=smem)
    if splits == 1:
        return out
    return sum_splits(out, empty((batch, M, N), A.dtype, A), splits)



def _gemm_mma16(A, B, ta, tb, splits, tf32, variant, bias, fp32=False):
    """gemm on gemm_mma16 (float16, bfloat16): operands in the same 16-bit type, FP32
    accumulation, each output rounded once; split-K partials kept in FP32 and summed in a
    fixed order before that rounding (sum_splits_half). fp32: the FP32 sums returned
    unrounded (float32; no bias)."""
    t = half_ctype(A.dtype)
    if t is None or np.dtype(A.dtype) != np.dtype(B.dtype):
        raise ValueError(f"gemm_mma16 takes float16 or bfloat16 operands of one type; got "
                         f"{np.dtype(A.dtype).name} and {np.dtype(B.dtype).name}")
    if variant not in ("auto", "mma16"):
        raise ValueError(f"gemm: {np.dtype(A.dtype).name} runs on the tensor cores only "
                         f"(variant 'mma16' or 'auto'), not {variant!r}")
    if tf32:
        raise ValueError("gemm: tf32=True is for float32 operands, not "
                         f"{np.dtype(A.dtype).name}")
    batch = max(A.shape[0], B.shape[0])
    if min(A.shape[0], B.shape[0]) not in (1, batch):
        raise ValueError(f"gemm: batches of {A.shape[0]} and {B.shape[0]} (equal, or one of 1)")
    M, K = (A.shape[2], A.shape[1]) if ta else (A.shape[1], A.shape[2])
    N = B.shape[1] if tb else B.shape[2]
    if bias is not None and (np.dtype(bias.dtype) != np.dtype(A.dtype) or bias.shape != (N,)):
        raise ValueError(f"gemm: bias must be ({N},) {np.dtype(A.dtype).name}; got "
                         f"{tuple(bias.shape)} {np.dtype(bias.dtype).name}")
    if fp32 and bias is not None:
        raise ValueError("gemm: fp32=True returns the product without the bias")
    out_dtype = np.float32 if fp32 else A.dtype
    if batch * M * N == 0:                  # nothing to launch (a grid of 0 blocks fails)
        return empty((batch, M, N), out_dtype, A)
    splits = max(1, min(splits, ceil_div(K, MMA16_BK)))
    kchunk = ceil_div(ceil_div(K, splits), MMA16_BK) * MMA16_BK
    splits = ceil_div(K, kchunk) if K else 1
    if batch * splits > MAX_GRID_YZ or ceil_div(M, TILE) > MAX_GRID_YZ:
        return _gemm_in_parts(A, B, ta, tb, splits, False, "mma16", M, N, TILE, bias, fp32)
    smem = mma16_shared_bytes(not ta, tb)
    if smem > max_shared_per_block():
        raise ValueError(f"gemm_mma16 needs {smem} bytes of shared memory per block; this "
                         f"device allows {max_shared_per_block()}")
    vec = mma16_vec_fits(A, B, ta, tb)
    fn = get_function("gemm.cu", f"gemm_mma16<{t}, {cbool(ta)}, {cbool(tb)}, {cbool(vec)}>")
    set_max_dynamic_shared(fn, smem)
    stride_a = 0 if A.shape[0] == 1 else A[0].size
    stride_b = 0 if B.shape[0] == 1 else B[0].size
    parts = empty((splits, batch, M, N), np.float32, A) if splits > 1 or fp32 else None
    out = None if fp32 else empty((batch, M, N), A.dtype, A)
    grid = (ceil_div(N, TILE), ceil_div(M, TILE), batch * splits)
    fn(grid, (MMA16_THREADS,),
       (A, B, null_or(out), null_or(parts), null_or(bias),
        *i32(M, N, K), np.int64(stride_a), np.int64(stride_b), np.int64(M * N),
        np.int32(splits), np.int32(kchunk), np.int64(batch * M * N)), shared_mem=smem)
    if fp32:
        return parts[0] if splits == 1 else sum_splits(parts, empty((batch, M, N), np.float32,
                                                                    A), splits)
    if parts is not None:
        get_function("gemm.cu", f"sum_splits_half<{t}>")(
            elementwise_grid(out.size), (ELEM_THREADS,),
            (parts, null_or(bias), out, np.int64(out.size), np.int32(N), np.int32(splits)))
    return out


def _gemm_in_parts(A, B, ta, tb, splits, tf32, variant, M, N, rows, bias=None, fp32=False):
    """gemm past the grid's y and z limits (65535 row tiles, batch x splits): launches on
    slices of at most that many batches and row tiles (A's rows are sliced where it is
    stored M x K; a K x M operand that tall is refused)."""
    batch = max(A.shape[0], B.shape[0])
    per_batch = max(1, MAX_GRID_YZ // splits)
    per_rows = MAX_GRID_YZ * rows
    if ta and M > per_rows:
        raise ValueError(f"gemm: a transposed A (K x M) with M = {M} rows needs more than "
                         f"{MAX_GRID_YZ} row tiles; pass it as M x K")
    C = empty((batch, M, N), np.float32 if fp32 else A.dtype, A)
    for b0 in range(0, batch, per_batch):
        Ab = A if A.shape[0] == 1 else A[b0:b0 + per_batch]
        Bb = B if B.shape[0] == 1 else B[b0:b0 + per_batch]
        for m0 in range(0, M, per_rows):
            Am = Ab if ta or M <= per_rows else contiguous(Ab[:, m0:m0 + per_rows])
            C[b0:b0 + per_batch, m0:m0 + per_rows] = gemm(Am, Bb, ta, tb, splits, tf32, variant,
                                                          bias=bias, fp32=fp32)
    return C



def linear_tf32(a, x, w, b):
    return linear(a, x, w, b, tf32=True)


def linear(a, x, w, b, tf32=False):
    x2, w2 = x.reshape(1, -1, x.shape[-1]), w.reshape((1,) + w.shape)
    if half_ctype(x.dtype):     # the bias fused: added in FP32, each output rounded once
        y = gemm(x2, w2, tb=True, bias=b)[0]
    else:
        y = gemm(x2, w2, tb=True, tf32=tf32)[0]
        if b is not None:
            y += b
    return y.reshape(x.shape[:-1] + (w.shape[0],))


def linear_backward(a, gy, x, w):
    g2 = gy.reshape(1, -1, gy.shape[-1])
    x2 = x.reshape(1, -1, x.shape[-1])
    gx = gemm(g2, w.reshape((1,) + w.shape))[0].reshape(x.shape)
    gw = gemm(g2, x2, ta=True, splits=split_for(w.shape[0], w.shape[1], 1, g2.shape[1]))[0]
    # the bias gradient (column sums of gy): channel_sum's fixed-order reduction, one launch
    # (FP32 sums rounded once for the half types)
    gb = channel_sum(g2.reshape(g2.shape[1], g2.shape[2], 1))
    return gx, gw, gb

