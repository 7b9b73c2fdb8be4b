"""Launchers of the CUDA C kernels (gemm.cu, conv.cu, pool.cu, elementwise.cu): the `cuda`
backend.

Each launcher takes the registry's (args, *arrays) on CuPy arrays, allocates its outputs
(poisoned in tests), derives the grid from the shapes and launches on CuPy's current
stream. Kernel modules are compiled once per device (kernels/_module.py).
"""
from __future__ import annotations

import numpy as np

from convgpu.arrays import xp_of
from convgpu.kernels._fft_common import COMPLEX, dilation_reason, padded, stuffed, transform_size
from convgpu.kernels._launch import ceil_div, contiguous, empty
from convgpu.kernels._module import (cbool, ctype, get_function, max_shared_per_block,
                                     set_max_dynamic_shared)

TILE = 128                 # the register-blocked tile of gemm.cu / conv.cu (tile::BM = BN)
GEMM_THREADS = 256
THREADS = 256              # one-thread-per-element kernels
MAX_GRID_X = 2 ** 31 - 1
MAX_GRID_YZ = 65535        # gridDim.y and gridDim.z
INT_SAFE = 2 ** 31 - 2 ** 27   # flat indices below this (plus the grid stride) fit in int
# pipeline.cuh's TF32 tile: 128 x 128 blocks of 128 threads, slices of 32, 3 stages in
# dynamic shared memory of 4 bytes x 3 x (K-major 128 x 36 or row-major 32 x 136) per operand
PIPE_THREADS, PIPE_BK, PIPE_STAGES = 128, 32, 3
PIPE_TABLE_BYTES = PIPE_STAGES * PIPE_BK * 16   # the gathers' depth tables (tc::TABLE_BYTES)


def pipe_shared_bytes(a_kmajor: bool, b_kmajor: bool, table: bool = False, a_rows=128) -> int:
    """tc::shared_bytes<KA, KB, M>() (+ tc::TABLE_BYTES): the stages of an A tile of a_rows
    rows (K-major: rows x 36 floats; row-major: 32 x 136) and a 128-row B tile."""
    tile = lambda kmajor, rows: rows * 36 if kmajor else 32 * 136
    return (4 * PIPE_STAGES * (tile(a_kmajor, a_rows) + tile(b_kmajor, 128))
            + (PIPE_TABLE_BYTES if table else 0))


def _i32(*v):
    return tuple(np.int32(int(a)) for a in v)


# A grid-stride loop steps past its last index by blocks x THREADS; over int indices (the
# pooling kernels take I = int below INT_SAFE) that overshoot must fit in the 2**27 left
# above INT_SAFE, or the index wraps negative and the loop runs on. The cap was 65535 * 64
# blocks (a 2**30 stride): a pooling call of 2**30 to INT_SAFE elements overflowed.
# 2**19 blocks of 256 threads are still ~4000 per SM of an H100.
GRID_STRIDE_BLOCKS = (2 ** 31 - INT_SAFE) // THREADS


def _elementwise_grid(n):
    return (max(1, min(ceil_div(n, THREADS), GRID_STRIDE_BLOCKS)),)


# ----------------------------------------------------------------------------------------
# GEMM


def tf32_supports(a):
    if not getattr(a, "allow_tf32", False):
        return "TF32 is not allowed for this call (allow_tf32=True or set_allow_tf32(True))"
    if np.dtype(a.dtype) != np.float32:
        return f"TF32 kernels take float32, got {np.dtype(a.dtype).name}"
    return None


def _address(a) -> int:
    return a.ctypes.data if isinstance(a, np.ndarray) else a.data.ptr


def vec_gemm_fits(A, B, ta, tb) -> bool:
    """gemm_vec's conditions: float32, each operand's contiguous extent a multiple of 4 (so
    rows stay 16-byte aligned and a vector never straddles the edge), 16-byte aligned bases."""
    M, K = (A.shape[2], A.shape[1]) if ta else (A.shape[1], A.shape[2])
    N = B.shape[1] if tb else B.shape[2]
    return (np.dtype(A.dtype) == np.float32 and np.dtype(B.dtype) == np.float32
            and (M if ta else K) % 4 == 0 and (K if tb else N) % 4 == 0
            and _address(A) % 16 == 0 and _address(B) % 16 == 0)


GEMM_VARIANTS = ("auto", "vec", "vec64", "tiled", "pipelined")


def gemm(A, B, ta=False, tb=False, splits=1, tf32=False, variant="auto"):
    """Batched C[b] = op(A[b]) @ op(B[b]); an operand with a batch of 1 serves every batch
    (stride 0: the weights of a 1x1 convolution against each image). With splits > 1 the K
    range is cut into that many parts whose partial products are summed afterwards in a
    fixed order (deterministic).
    variant: "vec" (gemm_vec: 16-deep tiles, 16-byte loads), "vec64" (gemm_vec's 64-row
    tile: FP32, for M <= 64), "tiled" (gemm_tiled), "pipelined" (gemm_pipelined: TF32 only,
    cp.async pipeline, gemm_vec's conditions), or "auto": pipelined for TF32, vec64 for FP32
    with M <= 64, else vec where their conditions hold, else tiled."""
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
    fn(grid, (threads,), (A, B, out, *_i32(M, N, K), np.int64(stride_a), np.int64(stride_b),
                          np.int64(M * N), np.int32(splits), np.int32(kchunk),
                          np.int64(batch * M * N)), shared_mem=smem)
    if splits == 1:
        return out
    C = empty((batch, M, N), A.dtype, A)
    sum_fn = get_function("gemm.cu", f"sum_splits<{t}>")
    sum_fn(_elementwise_grid(C.size), (THREADS,), (out, C, np.int64(C.size), np.int32(splits)))
    return C


MAX_SPLITS = 128


def _gemm_in_parts(A, B, ta, tb, splits, tf32, variant, M, N, rows):
    """gemm past the grid's y and z limits (65535 row tiles, batch x splits): launches on
    slices of at most that many batches and row tiles (A's rows are sliced where it is
    stored M x K; a K x M operand that tall is refused)."""
    batch = max(A.shape[0], B.shape[0])
    per_batch = max(1, MAX_GRID_YZ // splits)
    per_rows = MAX_GRID_YZ * rows
    if ta and M > per_rows:
        raise ValueError(f"gemm: a transposed A (K x M) with M = {M} rows needs more than "
                         f"{MAX_GRID_YZ} row tiles; pass it as M x K")
    C = empty((batch, M, N), A.dtype, A)
    for b0 in range(0, batch, per_batch):
        Ab = A if A.shape[0] == 1 else A[b0:b0 + per_batch]
        Bb = B if B.shape[0] == 1 else B[b0:b0 + per_batch]
        for m0 in range(0, M, per_rows):
            Am = Ab if ta or M <= per_rows else contiguous(Ab[:, m0:m0 + per_rows])
            C[b0:b0 + per_batch, m0:m0 + per_rows] = gemm(Am, Bb, ta, tb, splits, tf32, variant)
    return C


def _split_for(M, N, batch, K, tile_rows=TILE):
    """Enough K-splits that the grid has about two blocks per SM's worth of work (132 SMs),
    each split at least 256 deep, at most MAX_SPLITS (a small output over a long reduction,
    as ResNet conv1's 64 x 147 weight gradient over 200704 positions, takes ~128: at the
    former cap of 32 it ran 64 blocks). The partials are at most about (264 + blocks) tiles."""
    blocks = ceil_div(M, tile_rows) * ceil_div(N, TILE) * batch
    return max(1, min(MAX_SPLITS, ceil_div(264, blocks), ceil_div(K, 256)))


# ----------------------------------------------------------------------------------------
# convolution


def _conv_ints(a):
    return _i32(a.N, a.C, a.H, a.W, a.K, a.R, a.S, a.P, a.Q, a.stride[0], a.stride[1],
                a.padding[0], a.padding[1], a.dilation[0], a.dilation[1], a.groups)


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
    va = (a.Cg * a.R * a.S) % 4 == 0 and _address(w) % 16 == 0
    vb = ((a.R, a.S) == (1, 1) and tuple(a.stride) == (1, 1) and tuple(a.padding) == (0, 0)
          and (a.P * a.Q) % 4 == 0 and _address(x) % 16 == 0)
    return va, vb


def conv2d_implicit_gemm_pipelined_tf32(a, x, w, b):
    """The TF32 forward on pipeline.cuh's cp.async tile (conv.cu:
    conv2d_implicit_gemm_pipelined), 16-byte copies where pipelined_vectors allows."""
    x, w = contiguous(x), contiguous(w)
    va, vb = pipelined_vectors(a, x, w)
    bias = contiguous(b) if b is not None else np.uint64(0)
    return _pipelined_launch(f"conv2d_implicit_gemm_pipelined<{cbool(va)}, {cbool(vb)}, ", a,
                             x, a.y_shape, a.Kg, a.N * a.P * a.Q, a.Cg * a.R * a.S, x, w, bias)


def _pipelined_launch(kernel, a, like, out_shape, M, N, depth, *arrays):
    """Launch a conv.cu kernel on pipeline.cuh's tile: `kernel` is its name expression up to
    the last template argument, the tile's rows (64 where the GEMM has at most 64 rows, where
    128 would spend half the mma on zero rows; else 128); M x N per group, reduction depth."""
    rows = 64 if M <= 64 else 128
    return _split_launch(f"{kernel}{rows}>", a, like.dtype, like, out_shape,
                         (ceil_div(N, TILE), ceil_div(M, rows)), M, N, depth, *arrays,
                         threads=PIPE_THREADS, depth_unit=PIPE_BK,
                         shared_mem=pipe_shared_bytes(True, False, table=True, a_rows=rows),
                         tile_rows=rows)


# direct convolution (conv_direct.cu): KT output channels x TP x TQ output pixels per block
DIRECT_KT, DIRECT_TP, DIRECT_TQ, DIRECT_SMEM = 32, 8, 32, 40960


def _direct_plan(a):
    """(channels per chunk, patch rows, padded patch row length) for conv_direct.cu, or
    None when not even one channel's patch and filters fit in its shared memory."""
    sh, sw = a.stride
    dh, dw = a.dilation
    patch_h = (DIRECT_TP - 1) * sh + (a.R - 1) * dh + 1
    patch_w = (DIRECT_TQ - 1) * sw + (a.S - 1) * dw + 1
    ldx = patch_w + (8 - patch_w % 32) % 32          # row length = 8 mod 32: 4 rows, 32 banks
    per_channel = patch_h * ldx + a.R * a.S * DIRECT_KT
    cb = min(a.Cg, DIRECT_SMEM // np.dtype(a.dtype).itemsize // per_channel)
    return (cb, patch_h, ldx) if cb >= 1 else None


def direct_supports(a):
    if _direct_plan(a) is None:
        return (f"one input channel's patch and filters ({a.R}x{a.S}, stride {a.stride}, "
                f"dilation {a.dilation}) do not fit the direct kernel's {DIRECT_SMEM} B of "
                "shared memory")
    return None


def conv2d_direct(a, x, w, b):
    cb, patch_h, ldx = _direct_plan(a)
    y = empty(a.y_shape, x.dtype, x)
    tiles = ceil_div(a.P, DIRECT_TP) * ceil_div(a.Q, DIRECT_TQ) * a.N * a.groups
    fn = get_function("conv_direct.cu", f"conv2d_direct<{ctype(x.dtype)}>")
    bias = contiguous(b) if b is not None else np.uint64(0)
    fn((tiles, ceil_div(a.Kg, DIRECT_KT)), (256,),
       (contiguous(x), contiguous(w), bias, y, *_conv_ints(a), *_i32(cb, patch_h, ldx)))
    return y


# Winograd F(m x m, 3x3) (winograd.cu): transforms around a batched GEMM; m = 2 ("winograd",
# FP32/FP64 and TF32) or 4 ("winograd_4x4", FP32/FP64: its TF32 error is over the bound)


def winograd_supports(a, m=2):
    if (a.R, a.S) != (3, 3) or a.stride != (1, 1) or a.dilation != (1, 1):
        return (f"Winograd F({m}x{m}, 3x3) serves 3x3 filters at stride 1 and dilation 1; got "
                f"{a.R}x{a.S}, stride {a.stride}, dilation {a.dilation}")
    if _winograd_tiles(a, m)[1] >= INT_SAFE:
        return f"Winograd indexes a channel's tiles (N * ceil(P/{m}) * ceil(Q/{m})) in 32 bits"
    return None


def winograd_tf32_supports(a):
    return tf32_supports(a) or winograd_supports(a)


def winograd4_supports(a):
    return winograd_supports(a, 4)


def _winograd_tiles(a, m):
    """winograd.cu's TILES_PARAMS: the tiles T of a channel, the row length ld (T rounded up
    to 4: gemm_vec's 16-byte loads), TH, TW and the divider constants of TH*TW and TW."""
    TH, TW = ceil_div(a.P, m), ceil_div(a.Q, m)
    tiles = a.N * TH * TW
    ld = ceil_div(tiles, 4) * 4
    return _i32(tiles, ld, TH, TW) + (np.uint64(fastdiv(TH * TW)), np.uint64(fastdiv(TW)))


def _winograd_grid(channels, ld):
    return (min(ceil_div(ld, THREADS), ROWS_GRID_X), min(channels, ROWS_GRID_Y))


def winograd_input(a, x, m=2):
    """V (groups*(m+2)^2, Cg, ld): the input tiles' transforms B^T d B (zero columns past T)."""
    tl = _winograd_tiles(a, m)
    V = empty((a.groups * (m + 2) ** 2, a.Cg, int(tl[1])), x.dtype, x)
    get_function("winograd.cu", f"winograd_input<{ctype(x.dtype)}, {m}>")(
        _winograd_grid(a.C, tl[1]), (THREADS,),
        (contiguous(x), V, *_i32(a.N, a.C, a.H, a.W, a.padding[0], a.padding[1], a.groups), *tl))
    return V


def conv2d_winograd_tf32(a, x, w, b):
    return conv2d_winograd(a, x, w, b, tf32=True)


def conv2d_winograd4(a, x, w, b):
    return conv2d_winograd(a, x, w, b, m=4)


def conv2d_winograd(a, x, w, b, tf32=False, m=2):
    """tf32: the GEMMs on the tensor cores (the transforms stay FP32; relative error about
    5e-4 on random data for m = 2, within the TF32 bound 2e-3)."""
    t = ctype(x.dtype)
    G, AA = a.groups, (m + 2) ** 2
    tl = _winograd_tiles(a, m)
    U = empty((G * AA, a.Kg, a.Cg), x.dtype, x)
    get_function("winograd.cu", f"winograd_filter<{t}, {m}>")(
        _elementwise_grid(a.K * a.Cg), (THREADS,), (contiguous(w), U, *_i32(a.K, a.Cg, G)))
    M = gemm(U, winograd_input(a, x, m), tf32=tf32)      # (G*AA, Kg, ld)
    y = empty(a.y_shape, x.dtype, x)
    bias = contiguous(b) if b is not None else np.uint64(0)
    get_function("winograd.cu", f"winograd_output<{t}, {m}>")(
        _winograd_grid(a.K, tl[1]), (THREADS,),
        (M, bias, y, *_i32(a.N, a.K, a.P, a.Q, G), *tl))
    return y


def backward_weight_winograd_tf32(a, x, gy):
    return backward_weight_winograd(a, x, gy, tf32=True)


def backward_weight_winograd4(a, x, gy):
    return backward_weight_winograd(a, x, gy, m=4)


def backward_weight_winograd(a, x, gy, tf32=False, m=2):
    """gw[k, c] = G^T [ sum over tiles (A dy A^T) .* (B^T d B) ] G (winograd.cu): the input
    tiles' transforms as in the forward, the output gradient's m x m tiles transformed by A,
    (m+2)^2 GEMMs per group over the tiles (split, summed in a fixed order), then G^T . G."""
    t = ctype(x.dtype)
    G, AA = a.groups, (m + 2) ** 2
    tl = _winograd_tiles(a, m)
    ld = int(tl[1])
    V = winograd_input(a, x, m)                          # (G*AA, Cg, ld)
    Z = empty((G * AA, a.Kg, ld), x.dtype, x)
    get_function("winograd.cu", f"winograd_grad_tiles<{t}, {m}>")(
        _winograd_grid(a.K, ld), (THREADS,), (contiguous(gy), Z, *_i32(a.N, a.K, a.P, a.Q, G), *tl))
    if a.Cg <= 64 < a.Kg and not tf32:   # Mw^T = V Z^T: Cg rows on gemm_vec's 64-row tile
        Mw = gemm(V, Z, tb=True, splits=_split_for(a.Cg, a.Kg, G * AA, ld, 64))
        strides = (1, a.Kg)                              # (G*AA, Cg, Kg)
    else:
        Mw = gemm(Z, V, tb=True, splits=_split_for(a.Kg, a.Cg, G * AA, ld), tf32=tf32)
        strides = (a.Cg, 1)                              # (G*AA, Kg, Cg)
    gw = empty(a.w_shape, x.dtype, x)
    get_function("winograd.cu", f"winograd_grad_filter<{t}, {m}>")(
        _elementwise_grid(a.K * a.Cg), (THREADS,), (Mw, gw, *_i32(a.K, a.Cg, G, *strides)))
    return gw


def winograd_backward_input_tf32_supports(a):
    return tf32_supports(a) or winograd_backward_input_supports(a)


def winograd4_backward_input_supports(a):
    return winograd_backward_input_supports(a, 4)


def winograd_backward_input_supports(a, m=2):
    reason = winograd_supports(a, m)
    if reason:
        return reason
    if max(a.padding) > 2:
        return f"Winograd input gradient: padding {a.padding} above 2 (the full-conv padding 2 - p < 0)"
    return None


def backward_input_winograd_tf32(a, gy, w):
    return backward_input_winograd(a, gy, w, tf32=True)


def backward_input_winograd4(a, gy, w):
    return backward_input_winograd(a, gy, w, m=4)


def backward_input_winograd(a, gy, w, tf32=False, m=2):
    """gx = the full convolution of gy with the flipped filters: a stride-1 3x3 conv of gy
    (K channels in) by w' [g*Cg + c, k] = w[g*Kg + k, c] rotated 180 degrees, padding 2 - p,
    run on the Winograd forward."""
    from convgpu.ops._args import conv_geometry
    G = a.groups
    wt = contiguous(w.reshape(G, a.Kg, a.Cg, 3, 3).transpose(0, 2, 1, 3, 4)[..., ::-1, ::-1]
                    .reshape(a.C, a.Kg, 3, 3))
    t = conv_geometry("conv2d_backward_input", (a.N, a.K, a.P, a.Q), wt.shape, 1,
                      (2 - a.padding[0], 2 - a.padding[1]), 1, G, a.dtype)
    return conv2d_winograd(t, contiguous(gy), wt, None, tf32=tf32, m=m)


def _split_launch(kernel, a, dtype, like, out_shape, grid_xy, M, N, depth, *arrays,
                  threads=GEMM_THREADS, depth_unit=8, shared_mem=0, tile_rows=TILE):
    """Launch the implicit-GEMM conv kernel `kernel` (a name expression of conv.cu) with the
    reduction `depth` split (in multiples of the kernel's slice, depth_unit) when the output
    (M x N per group) has too few tiles to fill the GPU; partials summed in a fixed order
    (gemm.cu's sum_splits)."""
    if a.groups > MAX_GRID_YZ:             # blockIdx.z = group * splits + split
        raise ValueError(f"the implicit-GEMM convolutions launch one grid layer per group: "
                         f"{a.groups} groups is more than {MAX_GRID_YZ}")
    splits = min(_split_for(M, N, a.groups, depth, tile_rows), MAX_GRID_YZ // a.groups)
    kchunk = ceil_div(ceil_div(depth, splits), depth_unit) * depth_unit
    splits = ceil_div(depth, kchunk)
    size = int(np.prod(out_shape))
    out = empty((splits,) + tuple(out_shape) if splits > 1 else out_shape, dtype, like)
    fn = get_function("conv.cu", kernel)
    if shared_mem:
        set_max_dynamic_shared(fn, shared_mem)
    fn(grid_xy + (a.groups * splits,), (threads,),
       (*arrays, out, *_conv_ints(a), np.int32(splits), np.int32(kchunk), np.int64(size)),
       shared_mem=shared_mem)
    if splits == 1:
        return out
    total = empty(out_shape, dtype, like)
    get_function("gemm.cu", f"sum_splits<{ctype(dtype)}>")(
        _elementwise_grid(size), (THREADS,), (out, total, np.int64(size), np.int32(splits)))
    return total


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
    """gw = gy @ X_cols^T in TF32 on pipeline.cuh's tile (conv.cu:
    conv2d_wgrad_implicit_gemm_pipelined), split-K over N*P*Q."""
    return _pipelined_launch("conv2d_wgrad_implicit_gemm_pipelined<", a, x, a.w_shape, a.Kg,
                             a.Cg * a.R * a.S, a.N * a.P * a.Q, contiguous(x), contiguous(gy))


def backward_input_implicit_gemm_pipelined_tf32(a, gy, w):
    """gx = W^T @ GY_cols in TF32 on pipeline.cuh's tile (conv.cu:
    conv2d_dgrad_implicit_gemm_pipelined; no divisibility tests at stride 1)."""
    unit = tuple(a.stride) == (1, 1)
    return _pipelined_launch(f"conv2d_dgrad_implicit_gemm_pipelined<{cbool(unit)}, ", a, gy,
                             a.x_shape, a.Cg, a.N * a.H * a.W, a.Kg * a.R * a.S,
                             contiguous(gy), contiguous(w))


ROWS_GRID_X, ROWS_GRID_Y = 1 << 16, 65535   # the kernels loop past these


def _rows_grid(rows, per_row):
    """(x, y) grid of the row-wise kernels (im2col, col2im): y over the rows, x over one
    row's per_row elements, 256 threads a block; both loop where the grid is smaller."""
    if per_row >= INT_SAFE:
        raise ValueError(f"im2col/col2im index a row of the column matrix or a plane in 32 "
                         f"bits: {per_row} elements is too many")
    return (min(ceil_div(per_row, THREADS), ROWS_GRID_X), min(rows, ROWS_GRID_Y))


def im2col(a, x):
    cols = empty((a.groups, a.Cg * a.R * a.S, a.N * a.P * a.Q), x.dtype, x)
    fn = get_function("conv.cu", f"im2col<{ctype(x.dtype)}>")
    fn(_rows_grid(a.groups * a.Cg * a.R * a.S, a.N * a.P * a.Q), (THREADS,),
       (contiguous(x), cols, *_conv_ints(a)))
    return cols


def col2im(a, cols):
    gx = empty(a.x_shape, cols.dtype, cols)
    fn = get_function("conv.cu", f"col2im<{ctype(cols.dtype)}>")
    fn(_rows_grid(a.N * a.C, a.H * a.W), (THREADS,), (cols, gx, *_conv_ints(a)))
    return gx


def _gy_by_group(a, gy):
    return contiguous(gy.reshape(a.N, a.groups, a.Kg, a.P * a.Q).transpose(1, 2, 0, 3)) \
        .reshape(a.groups, a.Kg, a.N * a.P * a.Q)


def pointwise(a) -> bool:
    """1x1, stride 1, no padding, one group: the column matrix of image n is x[n] itself
    (C x H*W, contiguous), so the im2col algorithms skip im2col/col2im and run one batched
    GEMM over the images with the weights shared (batch stride 0), straight in NCHW."""
    return (a.R, a.S, a.groups) == (1, 1, 1) and tuple(a.stride) == (1, 1) \
        and tuple(a.padding) == (0, 0)


def conv2d_im2col_tf32(a, x, w, b):
    return conv2d_im2col(a, x, w, b, tf32=True)


def conv2d_im2col(a, x, w, b, tf32=False):
    if pointwise(a):
        y = gemm(w.reshape(1, a.K, a.C), contiguous(x).reshape(a.N, a.C, a.H * a.W), tf32=tf32)
        y = y.reshape(a.y_shape)
        if b is not None:
            y += b.reshape(1, -1, 1, 1)
        return y
    yg = gemm(w.reshape(a.groups, a.Kg, a.Cg * a.R * a.S), im2col(a, x), tf32=tf32)
    y = contiguous(yg.reshape(a.K, a.N, a.P * a.Q).transpose(1, 0, 2)).reshape(a.y_shape)
    if b is not None:
        y += b.reshape(1, -1, 1, 1)
    return y


def backward_input_col2im_tf32(a, gy, w):
    return backward_input_col2im(a, gy, w, tf32=True)


def backward_input_col2im(a, gy, w, tf32=False):
    if pointwise(a):
        return gemm(w.reshape(1, a.K, a.C), contiguous(gy).reshape(a.N, a.K, a.P * a.Q),
                    ta=True, tf32=tf32).reshape(a.x_shape)
    dcols = gemm(w.reshape(a.groups, a.Kg, a.Cg * a.R * a.S), _gy_by_group(a, gy), ta=True,
                 tf32=tf32)
    return col2im(a, dcols)


def backward_weight_im2col_tf32(a, x, gy):
    return backward_weight_im2col(a, x, gy, tf32=True)


def backward_weight_im2col(a, x, gy, tf32=False):
    if pointwise(a):
        # one K x C product per image (gy[n] x[n]^T), summed over the images in order by
        # sum_splits, as a split-K would be: deterministic
        per = gemm(contiguous(gy).reshape(a.N, a.K, a.P * a.Q),
                   contiguous(x).reshape(a.N, a.C, a.H * a.W), tb=True,
                   splits=_split_for(a.K, a.C, a.N, a.P * a.Q), tf32=tf32)
        gw = empty((1, a.K, a.C), gy.dtype, gy)
        get_function("gemm.cu", f"sum_splits<{ctype(gy.dtype)}>")(
            _elementwise_grid(gw.size), (THREADS,),
            (per, gw, np.int64(gw.size), np.int32(a.N)))
        return gw.reshape(a.w_shape)
    M, N, K = a.Kg, a.Cg * a.R * a.S, a.N * a.P * a.Q
    gw = gemm(_gy_by_group(a, gy), im2col(a, x), tb=True, splits=_split_for(M, N, a.groups, K),
              tf32=tf32)
    return gw.reshape(a.w_shape)


# ----------------------------------------------------------------------------------------
# linear


def linear_tf32(args, x, w, b):
    return linear(args, x, w, b, tf32=True)


def linear(args, x, w, b, tf32=False):
    y = gemm(x.reshape(1, -1, x.shape[-1]), w.reshape((1,) + w.shape), tb=True, tf32=tf32)[0]
    if b is not None:
        y += b
    return y.reshape(x.shape[:-1] + (w.shape[0],))


def linear_backward(shapes, gy, x, w):
    g2 = gy.reshape(1, -1, gy.shape[-1])
    x2 = x.reshape(1, -1, x.shape[-1])
    gx = gemm(g2, w.reshape((1,) + w.shape))[0].reshape(x.shape)
    gw = gemm(g2, x2, ta=True, splits=_split_for(w.shape[0], w.shape[1], 1, g2.shape[1]))[0]
    # the bias gradient (column sums of gy): channel_sum's fixed-order reduction, one launch
    gb = channel_sum(g2.reshape(g2.shape[1], g2.shape[2], 1))
    return gx, gw, gb


# ----------------------------------------------------------------------------------------
# pooling


def fastdiv(d: int) -> int:
    """The constants of Divider<int> (common.cuh) for divisor d, packed as mul | shr << 32:
    n // d == (n * mul >> 32) >> shr for 0 <= n < 2**31 (mul = 0 stands for d = 1)."""
    if not 1 <= d < 2 ** 31:
        raise ValueError(f"fastdiv: divisor {d} out of range")
    if d == 1:
        return 0
    p = 31 + (d - 1).bit_length()
    return ((1 << p) + d - 1) // d | (p - 32) << 32


def _pool_ints(a, H, W, P, Q, dil=True):
    d = a.dilation if dil else (1, 1)
    return _i32(H, W, P, Q, a.kernel[0], a.kernel[1], a.stride[0], a.stride[1], a.padding[0],
                a.padding[1], d[0], d[1], a.count_include_pad, a.divisor_override or 0) + \
        tuple(np.uint64(fastdiv(v)) for v in (Q, P, W, H, a.stride[0], a.stride[1]))


def _index_type(total):
    return ("int", np.int32) if total < INT_SAFE else ("long long", np.int64)


def max_pool2d_window(a) -> int:
    """The K of max_pool2d_fwd<T, I, K>: 2 or 3 for square windows of that size (unrolled
    exactly, clamped without masks at dilation 1), else 0 (the general kernel)."""
    kh, kw = a.kernel
    return kh if kh == kw and kh in (2, 3) else 0


def max_pool2d(a, x):
    y = empty(a.y_shape, x.dtype, x)
    idx = empty(a.y_shape, np.int64, x)
    it, ic = _index_type(max(y.size, x.size))
    fn = get_function("pool.cu", f"max_pool2d_fwd<{ctype(x.dtype)}, {it}, {max_pool2d_window(a)}>")
    fn(_elementwise_grid(y.size), (THREADS,),
       (x, y, idx, ic(a.N * a.C), *_pool_ints(a, a.H, a.W, a.P, a.Q)))
    return y, idx


# the tiled pooling kernels (max_pool2d_fwd_tiled, max_pool2d_bwd_tiled): shared memory per
# block for the staged rows, the fewest blocks a launch should have, the most it launches
TILED_SHARED_BUDGET = 24 * 1024
TILED_MIN_BLOCKS = 1024             # about 8 blocks per SM of a 132-SM GPU
TILED_MAX_GRID = 1 << 20            # blocks launched; each loops over its share of the bands


def max_pool2d_fwd_tiled_plan(a, itemsize):
    """(TO, bands, shared bytes) of max_pool2d_fwd_tiled: bands of TO output rows whose input
    rows ((TO - 1) * sh + K of them) fit TILED_SHARED_BUDGET, finer where planes are few; None
    where it does not serve (windows other than square 2x2 / 3x3, dilation, a row too long)."""
    K = max_pool2d_window(a)
    if K == 0 or tuple(a.dilation) != (1, 1):
        return None
    sh = a.stride[0]
    to = min(a.P, (TILED_SHARED_BUDGET // (a.W * itemsize) - K) // sh + 1)
    if to < 1:
        return None
    planes = a.N * a.C
    if planes * ceil_div(a.P, to) < TILED_MIN_BLOCKS:
        to = max(1, min(to, ceil_div(a.P, ceil_div(TILED_MIN_BLOCKS, planes))))
    return to, ceil_div(a.P, to), ((to - 1) * sh + K) * a.W * itemsize


def max_pool2d_tiled(a, x):
    """max_pool2d_fwd_tiled: the direct kernel's windows (bitwise its answer) from a band of
    input rows in shared memory, loads and stores in warp-wide runs."""
    plan = max_pool2d_fwd_tiled_plan(a, x.dtype.itemsize)
    if plan is None:
        raise ValueError("max_pool2d (cuda, tiled): square 2x2 or 3x3 windows at dilation 1")
    to, bands, smem = plan
    y = empty(a.y_shape, x.dtype, x)
    idx = empty(a.y_shape, np.int64, x)
    blocks = a.N * a.C * bands
    it, ic = _index_type(max(y.size, x.size, blocks))
    fn = get_function("pool.cu", f"max_pool2d_fwd_tiled<{ctype(x.dtype)}, {it}, "
                                 f"{max_pool2d_window(a)}>")
    fn((min(blocks, TILED_MAX_GRID),), (THREADS,),
       (contiguous(x), y, idx, ic(a.N * a.C), *_i32(to, bands),
        *_pool_ints(a, a.H, a.W, a.P, a.Q)), shared_mem=smem)
    return y, idx


def max_pool2d_cells(a):
    """(CH, CW), the grid of stride-sized input cells of max_pool2d_bwd_cells, or None where
    that kernel does not serve: strides up to 2 and windows reaching at most one stride back
    ((k - 1) * d < 2 * s per axis), so that 2 x 2 candidate windows cover a cell."""
    if not all(s <= 2 and (k - 1) * d < 2 * s
               for k, s, d in zip(a.kernel, a.stride, a.dilation)):
        return None
    return tuple((n - 1 + p) // s + 1 for n, p, s in zip((a.H, a.W), a.padding, a.stride))


POOL_BAD_RANGE, POOL_BAD_WINDOW = 1, 2      # pool.cu's validation flag bits


def _index_flag(m, like):
    """The device flag the gathers set for a bad index (pool.cu index_violation), or None
    where the caller asked for no validation."""
    return xp_of(like).zeros(1, np.int32) if m.check_indices else None


def _flag_arg(bad):
    return np.uint64(0) if bad is None else bad             # a null pointer: no validation


def _raise_if_flagged(bad, a) -> None:
    """After the launch: one 4-byte read (it waits for the kernel), ValueError if set."""
    flags = 0 if bad is None else int(bad[0])
    if flags & POOL_BAD_RANGE:
        raise ValueError(f"max_pool2d_backward: indices must lie in [0, {a.H * a.W}) (H*W of "
                         "the input); found one outside")
    if flags:
        raise ValueError("max_pool2d_backward: an index lies outside its window: indices must "
                         f"be those max_pool2d returned for kernel_size={a.kernel}, "
                         f"stride={a.stride}, padding={a.padding}, dilation={a.dilation}")


def max_pool2d_backward_gather(m, gy, idx):
    """The gather by cells where it serves (max_pool2d_cells), else by element. Both only
    compare indices, so each index is validated on the device (in its plane, inside its
    window: the by-cells kernel inline, the by-element path with max_pool2d_check_indices)
    and a bad one raises ValueError after the launch: one 4-byte read, which waits for the
    kernel. m.check_indices=False skips it (indices known to come from max_pool2d)."""
    a = m.pool
    gx = empty(a.x_shape, gy.dtype, gy)
    bad = _index_flag(m, gy)
    cells = max_pool2d_cells(a)
    if cells:
        CH, CW = cells
        it, ic = _index_type(max(gx.size, a.N * a.C * CH * CW))
        fn = get_function("pool.cu", f"max_pool2d_bwd_cells<{ctype(gy.dtype)}, {it}>")
        fn(_elementwise_grid(a.N * a.C * CH * CW), (THREADS,),
           (gy, idx, gx, _flag_arg(bad), ic(a.N * a.C), *_i32(CH, CW),
            np.uint64(fastdiv(CH)), np.uint64(fastdiv(CW)), *_pool_ints(a, a.H, a.W, a.P, a.Q)))
    else:
        it, ic = _index_type(max(gx.size, idx.size))
        if bad is not None:
            get_function("pool.cu", f"max_pool2d_check_indices<{it}>")(
                _elementwise_grid(idx.size), (THREADS,),
                (idx, bad, ic(a.N * a.C), *_pool_ints(a, a.H, a.W, a.P, a.Q)))
        fn = get_function("pool.cu", f"max_pool2d_bwd_gather<{ctype(gy.dtype)}, {it}>")
        fn(_elementwise_grid(gx.size), (THREADS,),
           (gy, idx, gx, ic(a.N * a.C), *_pool_ints(a, a.H, a.W, a.P, a.Q)))
    _raise_if_flagged(bad, a)
    return gx


def max_pool2d_tiled_plan(a, itemsize):
    """(TI, bands, shared bytes) of max_pool2d_bwd_tiled: bands of TI cell rows whose TI + 1
    output rows (indices and gradients) fit TILED_SHARED_BUDGET, cut finer where the planes
    are too few to give TILED_MIN_BLOCKS blocks; None where it does not serve (the cells
    kernel's conditions, or a row too long for one band of one cell row)."""
    cells = max_pool2d_cells(a)
    if not cells:
        return None
    CH, entry = cells[0], 8 + itemsize
    ti = min(CH, TILED_SHARED_BUDGET // (a.Q * entry) - 1)
    if ti < 1:
        return None
    planes = a.N * a.C
    if planes * ceil_div(CH, ti) < TILED_MIN_BLOCKS:
        ti = max(1, min(ti, ceil_div(CH, ceil_div(TILED_MIN_BLOCKS, planes))))
    return ti, ceil_div(CH, ti), (ti + 1) * a.Q * entry


def max_pool2d_backward_tiled(m, gy, idx):
    """The gather with a band of output rows staged in shared memory (max_pool2d_bwd_tiled):
    the same sums in the same order as the cells kernel, coalesced loads and stores; indices
    validated on the device as there."""
    a = m.pool
    plan = max_pool2d_tiled_plan(a, gy.dtype.itemsize)
    if plan is None:
        raise ValueError("max_pool2d_backward (cuda, tiled): the geometry needs strides <= 2 "
                         "and windows reaching at most one stride back")
    ti, bands, smem = plan
    gx = empty(a.x_shape, gy.dtype, gy)
    bad = _index_flag(m, gy)
    blocks = a.N * a.C * bands
    it, ic = _index_type(max(gx.size, idx.size, blocks))
    fn = get_function("pool.cu", f"max_pool2d_bwd_tiled<{ctype(gy.dtype)}, {it}>")
    fn((min(blocks, TILED_MAX_GRID),), (THREADS,),
       (gy, idx, gx, _flag_arg(bad), ic(a.N * a.C), *_i32(ti, bands),
        *_pool_ints(a, a.H, a.W, a.P, a.Q)), shared_mem=smem)
    _raise_if_flagged(bad, a)
    return gx


def avg_pool2d(a, x):
    y = empty(a.y_shape, x.dtype, x)
    it, ic = _index_type(max(y.size, x.size))
    fn = get_function("pool.cu", f"avg_pool2d_fwd<{ctype(x.dtype)}, {it}>")
    fn(_elementwise_grid(y.size), (THREADS,),
       (x, y, ic(a.N * a.C), *_pool_ints(a, a.H, a.W, a.P, a.Q, dil=False)))
    return y


def avg_pool2d_backward(a, gy):
    gx = empty(a.x_shape, gy.dtype, gy)
    it, ic = _index_type(gx.size)
    fn = get_function("pool.cu", f"avg_pool2d_bwd_gather<{ctype(gy.dtype)}, {it}>")
    fn(_elementwise_grid(gx.size), (THREADS,),
       (gy, gx, ic(a.N * a.C), *_pool_ints(a, a.H, a.W, a.P, a.Q, dil=False)))
    return gx


def adaptive_avg_pool2d(a, x):
    y = empty(a.y_shape, x.dtype, x)
    it, ic = _index_type(max(y.size, x.size))
    fn = get_function("pool.cu", f"adaptive_avg_pool2d_fwd<{ctype(x.dtype)}, {it}>")
    fn(_elementwise_grid(y.size), (THREADS,), (x, y, ic(a.N * a.C), *_i32(a.H, a.W, a.P, a.Q)))
    return y


def adaptive_avg_pool2d_backward(a, gy):
    gx = empty(a.x_shape, gy.dtype, gy)
    it, ic = _index_type(max(gx.size, gy.size))
    fn = get_function("pool.cu", f"adaptive_avg_pool2d_bwd<{ctype(gy.dtype)}, {it}>")
    fn(_elementwise_grid(gx.size), (THREADS,),
       (contiguous(gy), gx, ic(a.N * a.C), *_i32(a.H, a.W, a.P, a.Q)))
    return gx


# ----------------------------------------------------------------------------------------
# FFT convolution: cuFFT transforms (cupy.fft), the multiply-accumulate over channels as a
# batched GEMM on the hand-written GEMMs. A complex product per frequency f,
# Y[f] = X[f] @ conj(W[f])^T, is one real GEMM on stacked parts:
#     [Xr | Xi] (N x 2C)  @  [[Wr, -Wi], [Wi, Wr]] (2C x 2K)  =  [Yr | Yi] (N x 2K)
# batched over (group, frequency). One transform size L >= the padded input for all three
# passes, so no wanted sample wraps around (kernels/fft.py derives the three products).
# The stacked operands are written straight from cuFFT's spectra (complex, contiguous along
# f) and the GEMM's result straight back, by spectra.cu's two layout kernels: one coalesced
# pass each. The array module follows the inputs, so the tests can check this algebra on
# NumPy arrays under the host emulation (tests/test_fft_algebra.py); on a GPU it is CuPy.

# which part and sign each quadrant of a stacked operand takes (spectra_stack's code):
# bit 2q imaginary, bit 2q + 1 negated, quadrant q = 2 * (row block) + (column block)
RE, IM, NEG = 0, 1, 2
def _code(*quadrants):
    return sum(v << (2 * q) for q, v in enumerate(quadrants))


STACK_RE_IM = _code(RE, IM)                              # [re | im], side by side
STACK_RE_OVER_IM = _code(RE, RE, IM)                     # [re; im], one above the other
STACK_FORWARD_W = _code(RE, IM | NEG, IM, RE)            # [[re, -im], [im, re]]
STACK_INPUT_GRAD_W = _code(RE, IM, IM | NEG, RE)         # [[re, im], [-im, re]]
STACK_WEIGHT_GRAD_X = _code(RE, IM, IM, RE | NEG)        # [[re, im], [im, -re]]
SPECTRA_TILE = 32


def _spectra_grid(F, Rj, rows):
    return (ceil_div(F, SPECTRA_TILE), ceil_div(Rj, SPECTRA_TILE), max(1, min(rows, MAX_GRID_YZ)))


def _spectra_stack(S, dtype, G, Ri, Rj, QR, QC, sg, si, sj, code):
    """Spectra S (complex, contiguous, frequencies F innermost; element (g, i, j, f) at
    g sg + i si + j sj + f) -> the real (G * F, QR * Ri, QC * Rj) operand whose quadrants
    `code` names (spectra_stack)."""
    S = contiguous(S.astype(COMPLEX[np.dtype(dtype)], copy=False))    # NumPy's FFT: complex128
    F = S.shape[-2] * S.shape[-1]
    out = empty((G * F, QR * Ri, QC * Rj), dtype, S)
    fn = get_function("spectra.cu", f"spectra_stack<{ctype(dtype)}>")
    fn(_spectra_grid(F, Rj, G * Ri), (SPECTRA_TILE, 8),
       (S.view(dtype), out, *_i32(G, F, Ri, Rj, QR, QC), np.int64(sg), np.int64(si),
        np.int64(sj), np.int32(code)))
    return out


def _spectra_unstack(Y, shape, G, Ri, Rj, sg, si, sj):
    """A GEMM result Y (G * F, Ri, 2 Rj), [real | imaginary] columns -> complex spectra of
    `shape` (..., L0, L1 // 2 + 1) with element (g, i, j, f) at g sg + i si + j sj + f."""
    F = shape[-2] * shape[-1]
    S = empty(shape, COMPLEX[np.dtype(Y.dtype)], Y)
    fn = get_function("spectra.cu", f"spectra_unstack<{ctype(Y.dtype)}>")
    fn(_spectra_grid(F, Rj, G * Ri), (SPECTRA_TILE, 8),
       (contiguous(Y), S.view(Y.dtype), *_i32(G, F, Ri, Rj), np.int64(sg), np.int64(si),
        np.int64(sj)))
    return S


def fft_supports(a):
    return dilation_reason(a)


def fft_tf32_supports(a):
    return tf32_supports(a) or fft_supports(a)


def conv2d_fft_tf32(a, x, w, b):
    return conv2d_fft(a, x, w, b, tf32=True)


def conv2d_fft(a, x, w, b, tf32=False):
    """cuFFT transforms around the per-frequency GEMM (stacked real form); with tf32 that
    GEMM runs on the tensor cores (gemm_pipelined where it fits)."""
    cp = xp_of(x)
    L, F = transform_size(a)
    G, N, Cg, Kg = a.groups, a.N, a.Cg, a.Kg
    X = cp.fft.rfft2(padded(a, x), s=L)                               # N, C, F
    Wt = cp.fft.rfft2(w, s=L)                                         # K, Cg, F
    A = _spectra_stack(X, x.dtype, G, N, Cg, 1, 2, Cg * F, a.C * F, F, STACK_RE_IM)
    Bm = _spectra_stack(Wt, x.dtype, G, Cg, Kg, 2, 2, Kg * Cg * F, F, Cg * F, STACK_FORWARD_W)
    Y = gemm(A, Bm, tf32=tf32)                                        # G F, N, 2 Kg
    Ys = _spectra_unstack(Y, (N, a.K, L[0], L[1] // 2 + 1), G, N, Kg, Kg * F, a.K * F, F)
    full = cp.fft.irfft2(Ys, s=L)
    sh, sw = a.stride
    y = full[:, :, :(a.P - 1) * sh + 1:sh, :(a.Q - 1) * sw + 1:sw]
    if b is not None:                  # the crop and the bias in one pass
        y = y + b.reshape(1, -1, 1, 1)
    return contiguous(y.astype(x.dtype, copy=False))


def backward_input_fft_tf32(a, gy, w):
    return backward_input_fft(a, gy, w, tf32=True)


def backward_input_fft(a, gy, w, tf32=False):
    """GX[f] = GYu[f] @ W[f] (full convolution of the stride-stuffed gy with w)."""
    cp = xp_of(gy)
    L, F = transform_size(a)
    G, N, Cg, Kg = a.groups, a.N, a.Cg, a.Kg
    Gs = cp.fft.rfft2(stuffed(a, gy), s=L)                            # N, K, F
    Wt = cp.fft.rfft2(w, s=L)                                         # K, Cg, F
    A = _spectra_stack(Gs, gy.dtype, G, N, Kg, 1, 2, Kg * F, a.K * F, F, STACK_RE_IM)
    Bm = _spectra_stack(Wt, gy.dtype, G, Kg, Cg, 2, 2, Kg * Cg * F, Cg * F, F,
                        STACK_INPUT_GRAD_W)
    GX = gemm(A, Bm, tf32=tf32)                                       # G F, N, 2 Cg
    S = _spectra_unstack(GX, (N, a.C, L[0], L[1] // 2 + 1), G, N, Cg, Cg * F, a.C * F, F)
    full = cp.fft.irfft2(S, s=L)
    ph, pw = a.padding
    return contiguous(full[:, :, ph:ph + a.H, pw:pw + a.W].astype(gy.dtype))


def backward_weight_fft_tf32(a, x, gy):
    return backward_weight_fft(a, x, gy, tf32=True)


def backward_weight_fft(a, x, gy, tf32=False):
    """GW[f] = GYu[f]^H @ X[f], summed over the batch inside the GEMM (fixed order)."""
    cp = xp_of(x)
    L, F = transform_size(a)
    G, N, Cg, Kg = a.groups, a.N, a.Cg, a.Kg
    X = cp.fft.rfft2(padded(a, x), s=L)                               # N, C, F
    Gs = cp.fft.rfft2(stuffed(a, gy), s=L)                            # N, K, F
    A = _spectra_stack(Gs, x.dtype, G, N, Kg, 2, 1, Kg * F, a.K * F, F, STACK_RE_OVER_IM)
    Bm = _spectra_stack(X, x.dtype, G, N, Cg, 2, 2, Cg * F, a.C * F, F, STACK_WEIGHT_GRAD_X)
    GW = gemm(A, Bm, ta=True, tf32=tf32)                              # G F, Kg, 2 Cg
    S = _spectra_unstack(GW, (a.K, Cg, L[0], L[1] // 2 + 1), G, Kg, Cg, Kg * Cg * F, Cg * F, F)
    full = cp.fft.irfft2(S, s=L)
    return contiguous(full[:, :, :a.R, :a.S].astype(x.dtype))


# ----------------------------------------------------------------------------------------
# small ops (elementwise.cu)

WARP = 32


def _ew(name, dtype):
    return get_function("elementwise.cu", f"{name}<{ctype(dtype)}>")


def _warp_grid(rows):
    return (max(1, min(ceil_div(rows, THREADS // WARP), GRID_STRIDE_BLOCKS)),)


def relu(shape, x):
    y = empty(x.shape, x.dtype, x)
    _ew("relu_fwd", x.dtype)(_elementwise_grid(x.size), (THREADS,), (x, y, np.int64(x.size)))
    return y


def relu_backward(shape, gy, x):
    gx = empty(x.shape, x.dtype, x)
    _ew("relu_bwd", x.dtype)(_elementwise_grid(x.size), (THREADS,),
                             (contiguous(gy), x, gx, np.int64(x.size)))
    return gx


def bias_add(shape, x, b):
    y = empty(x.shape, x.dtype, x)
    inner = int(np.prod(x.shape[2:], dtype=np.int64))
    _ew("bias_add_fwd", x.dtype)(_elementwise_grid(x.size), (THREADS,),
                                 (x, contiguous(b), y, np.int64(x.size), np.int32(x.shape[1]),
                                  np.int64(inner)))
    return y


def channel_sum(a3, scale=1.0):
    """(B, K, L) -> (K,): scale * the sum over B and L, in a fixed order."""
    B, K, L = a3.shape
    out = empty((K,), a3.dtype, a3)
    _ew("channel_sum", a3.dtype)((K,), (THREADS,), (contiguous(a3), out, np.int32(B),
                                                     np.int32(K), np.int64(L),
                                                     a3.dtype.type(scale)))
    return out


def backward_bias(shape, gy):
    N, K = gy.shape[:2]
    return channel_sum(contiguous(gy).reshape(N, K, -1))


def global_avg_pool2d(shape, x):
    N, C, H, W = shape
    y = empty((N, C), x.dtype, x)
    _ew("plane_mean", x.dtype)(_warp_grid(N * C), (THREADS,),
                               (x, y, np.int64(N * C), np.int32(H * W)))
    return y


def global_avg_pool2d_backward(shape, gy):
    N, C, H, W = shape
    gx = empty(shape, gy.dtype, gy)
    _ew("plane_spread", gy.dtype)(_elementwise_grid(gx.size), (THREADS,),
                                  (contiguous(gy), gx, np.int64(gx.size), np.int32(H * W)))
    return gx


def softmax_cross_entropy(shape, z, labels):
    n, c = z.shape
    rows = empty((1, 1, n), z.dtype, z)
    _ew("xent_rows", z.dtype)(_warp_grid(n), (THREADS,),
                              (contiguous(z), contiguous(labels), rows, np.int32(n), np.int32(c)))
    return channel_sum(rows, 1.0 / n).reshape(())


def softmax_cross_entropy_backward(shape, z, labels):
    n, c = z.shape
    g = empty(z.shape, z.dtype, z)
    _ew("xent_bwd", z.dtype)(_warp_grid(n), (THREADS,),
                             (contiguous(z), contiguous(labels), g, np.int32(n), np.int32(c)))
    return g


# ----------------------------------------------------------------------------------------
# the FMA ceiling (ceiling.cu)

FMA_CHAINS, FMA_UNROLL = 8, 16


def fma_peak(blocks, iters, dtype=np.float32, like=None):
    """Launch fma_peak<T> on `blocks` x 256 threads for `iters` rounds; returns (out, flops).
    a = 1 - 2**-10 and b = 2**-6 keep every chain bounded (it converges to b / (1 - a)) and
    away from denormals."""
    out = empty((blocks * THREADS,), dtype, like if like is not None else np.zeros(1))
    t = np.dtype(dtype).type
    get_function("ceiling.cu", f"fma_peak<{ctype(dtype)}>")(
        (blocks,), (THREADS,), (out, np.int32(iters), t(1 - 2 ** -10), t(2 ** -6)))
    return out, 2 * FMA_CHAINS * FMA_UNROLL * iters * blocks * THREADS


# ----------------------------------------------------------------------------------------
# optimiser steps (in place): the registry's (key, *arrays, hyperparameters)


def adam_step(key, p, g, m, v, h):
    _ew("adam_step", p.dtype)(
        _elementwise_grid(p.size), (THREADS,),
        (p, contiguous(g), m, v, np.int64(p.size), *h.kernel_scalars(p.dtype)))


def sgd_step(key, p, g, buf, h):
    _ew("sgd_step", p.dtype)(
        _elementwise_grid(p.size), (THREADS,),
        (p, contiguous(g), buf if buf is not None else np.uint64(0), np.int64(p.size),
         *h.kernel_scalars(p.dtype)))


# ----------------------------------------------------------------------------------------
# batch normalisation (norm.cu)

NORM_THREADS = 256          # norm.cu: NORM_THREADS
NORM_BLOCKS = 1024          # blocks the splits aim for: several per SM on any current GPU
NORM_MIN_PER_THREAD = 4     # values each thread of a split reduces, at least


def norm_splits(C: int, N: int, L: int) -> int:
    """S, the blocks per channel of the reductions, each a run of whole rows: enough for
    about NORM_BLOCKS blocks in all, but no more than the N rows and no split with fewer
    than NORM_MIN_PER_THREAD values per thread. A function of the shape only, so the
    summation order (and the result) is too."""
    return max(1, min(ceil_div(NORM_BLOCKS, C), N, N * L // (NORM_THREADS * NORM_MIN_PER_THREAD),
                      MAX_GRID_YZ))


NORM_PLANE_MIN = 1024                    # planes this long take the plane kernels
NORM_SLICE_MIN = 4 * NORM_THREADS        # a plane block's slice: 4 values per thread at least
NORM_FLAT_PER_THREAD = 4                 # the flat kernels' values per thread (grid-stride)


def norm_plane_grid(N: int, C: int, L: int):
    """(slices, plane blocks, slice length) of the plane kernels, or None where the N * C
    planes are shorter than NORM_PLANE_MIN (the flat kernels then): a plane is cut into
    slices only where there are too few planes for about 2 * NORM_BLOCKS blocks, each slice
    at least NORM_SLICE_MIN values and a multiple of 4 (a whole number of vectors)."""
    if L < NORM_PLANE_MIN:
        return None
    planes = N * C
    slices = max(1, min(ceil_div(2 * NORM_BLOCKS, planes), L // NORM_SLICE_MIN))
    length = ceil_div(ceil_div(L, slices), 4) * 4
    return ceil_div(L, length), min(planes, MAX_GRID_YZ), length


def _norm(name, dtype):
    return get_function("norm.cu", f"batch_norm_{name}<{ctype(dtype)}>")


def _norm_planes(name, L, arrays):
    """The plane kernel: 16-byte vectors where the planes' length and every array's base
    allow them, single values otherwise."""
    dtype = arrays[0].dtype
    v = 16 // dtype.itemsize
    if L % v or any(_address(a) % 16 for a in arrays):
        v = 1
    return get_function("norm.cu", f"batch_norm_{name}_planes<{ctype(dtype)}, {v}>")


def _norm_apply(name, x3, vectored, head, tail):
    """An elementwise pass of batch norm (apply, bwd_apply) over x3's (N, C, L): the plane
    kernel where norm_plane_grid gives a grid (vectors if every array in `vectored` allows
    them), else the flat one; its arguments head + the shape's + tail."""
    N, C, L = x3.shape
    plan = norm_plane_grid(N, C, L)
    if plan is not None:
        slices, rows, length = plan
        _norm_planes(name, L, vectored)(
            (slices, rows), (NORM_THREADS,),
            (*head, np.int64(N * C), np.int32(C), np.int64(L), np.int64(length), *tail))
    else:
        _norm(name, x3.dtype)(
            _elementwise_grid(ceil_div(x3.size, NORM_FLAT_PER_THREAD)), (THREADS,),
            (*head, np.int64(x3.size), np.int32(C), np.int64(L), *tail))


def _or_null(a):
    return a if a is not None else np.uint64(0)


def batch_norm(a, x3, running_mean, running_var, w, b, h):
    N, C, L = x3.shape
    M, t = N * L, x3.dtype.type
    mean, invstd = empty((C,), x3.dtype, x3), empty((C,), x3.dtype, x3)
    S = norm_splits(C, N, L) if a.training else 0
    part = empty((C, S, 2), x3.dtype, x3) if a.training else None   # evaluation reads none
    if a.training:
        _norm("partials", x3.dtype)((C, S), (NORM_THREADS,),
                                    (x3, part, np.int32(N), np.int32(C), np.int64(L), np.int32(S)))
    _norm("finish", x3.dtype)((ceil_div(C, THREADS),), (THREADS,),
                              (_or_null(part), mean, invstd, _or_null(running_mean),
                               _or_null(running_var), np.int32(N), np.int32(C), np.int64(L),
                               np.int32(S), np.int32(a.training),
                               np.int32(a.update_running), t(h.momentum), t(h.eps),
                               t(M / max(M - 1, 1))))
    y = empty(x3.shape, x3.dtype, x3)
    _norm_apply("apply", x3, (x3, y), (x3, mean, invstd, _or_null(w), _or_null(b), y), ())
    return y, mean, invstd


def batch_norm_backward(a, g3, x3, mean, invstd, w):
    N, C, L = x3.shape
    M, S = N * L, norm_splits(C, N, L)
    g3 = contiguous(g3)
    part = empty((C, S, 2), x3.dtype, x3)
    _norm("bwd_partials", x3.dtype)((C, S), (NORM_THREADS,),
                                    (g3, x3, mean, part, np.int32(N), np.int32(C), np.int64(L),
                                     np.int32(S)))
    gw, gb = empty((C,), x3.dtype, x3), empty((C,), x3.dtype, x3)
    _norm("bwd_finish", x3.dtype)((ceil_div(C, THREADS),), (THREADS,),
                                  (part, invstd, gw, gb, np.int32(C), np.int32(S)))
    gx = empty(x3.shape, x3.dtype, x3)
    _norm_apply("bwd_apply", x3, (g3, x3, gx), (g3, x3, mean, invstd, _or_null(w), gw, gb, gx),
                (np.int64(M), np.int32(a.training)))
    return gx, gw, gb


# ----------------------------------------------------------------------------------------
# depthwise convolution (depthwise.cu): groups = C, one input channel per group

DW_TP, DW_TQ, DW_THREADS = 8, 32, 256       # depthwise.cu: dw::TP, dw::TQ, dw::THREADS
DW_SMEM = 48 * 1024                         # the patch and filter, without an opt-in


def _dw_patch(a, rp=1):
    """Rows and columns of the input patch a TP * rp x TQ output tile reads."""
    (sh, sw), (dh, dw) = a.stride, a.dilation
    return (DW_TP * rp - 1) * sh + (a.R - 1) * dh + 1, (DW_TQ - 1) * sw + (a.S - 1) * dw + 1


def _dw_smem(a, rp=1):
    ph, pw = _dw_patch(a, rp)
    return (ph * pw + a.R * a.S) * np.dtype(a.dtype).itemsize


def depthwise_kernel(a):
    """(KS, RP) of conv2d_depthwise<T, KS, RP>: KS = 3 (the unrolled path) for 3 x 3
    filters, else 0; RP = 2 outputs per thread down a column (tiles of 16 x 32) where the
    plane has 16 rows or more and the larger patch fits, else 1 (8 x 32): a 16-row tile on a
    7- or 14-row plane would leave more threads idle than the 8-row one."""
    ks = 3 if (a.R, a.S) == (3, 3) else 0
    return ks, 2 if a.P >= 2 * DW_TP and _dw_smem(a, 2) <= DW_SMEM else 1


def depthwise_supports(a):
    if a.Cg != 1 or a.groups != a.C:
        return (f"the depthwise kernels serve groups = C (one input channel per group); got "
                f"C={a.C}, groups={a.groups}")
    if _dw_smem(a) > DW_SMEM:
        return (f"the input patch of an {DW_TP}x{DW_TQ} output tile ({a.R}x{a.S}, stride "
                f"{a.stride}, dilation {a.dilation}) needs {_dw_smem(a)} B of shared memory, "
                f"over {DW_SMEM}")
    if a.P * a.Q >= INT_SAFE or a.H * a.W >= INT_SAFE:
        return "the depthwise kernels index within a plane in 32 bits"
    if ceil_div(a.P, DW_TP) * ceil_div(a.Q, DW_TQ) > MAX_GRID_YZ:
        return f"a plane of {a.P}x{a.Q} outputs has more than {MAX_GRID_YZ} tiles"
    return None


def _dw_ints(a):
    return _i32(a.C, a.H, a.W, a.K, a.R, a.S, a.P, a.Q, *a.stride, *a.padding, *a.dilation)


def conv2d_depthwise(a, x, w, b):
    y = empty(a.y_shape, x.dtype, x)
    ks, rp = depthwise_kernel(a)
    fn = get_function("depthwise.cu", f"conv2d_depthwise<{ctype(x.dtype)}, {ks}, {rp}>")
    bias = contiguous(b) if b is not None else np.uint64(0)
    fn((a.N * a.K, ceil_div(a.P, DW_TP * rp) * ceil_div(a.Q, DW_TQ)), (DW_THREADS,),
       (contiguous(x), contiguous(w), bias, y, *_dw_ints(a), *_i32(*_dw_patch(a, rp))),
       shared_mem=_dw_smem(a, rp))
    return y


def backward_input_depthwise(a, gy, w):
    """One filter per channel (K = C) at stride 1: gx is the depthwise convolution of gy with
    the filters rotated 180 degrees, padding (R - 1) d - p, run on the forward kernel (its 3x3
    unrolled path, two outputs a thread). Otherwise a gather per input element."""
    (sh, sw), (ph, pw), (dh, dw) = a.stride, a.padding, a.dilation
    if (a.K == a.C and (sh, sw) == (1, 1) and ph <= (a.R - 1) * dh
            and pw <= (a.S - 1) * dw):
        from convgpu.ops._args import conv_geometry
        t = conv_geometry("conv2d_backward_input", (a.N, a.K, a.P, a.Q), a.w_shape, 1,
                          ((a.R - 1) * dh - ph, (a.S - 1) * dw - pw), a.dilation, a.C, a.dtype)
        if depthwise_supports(t) is None:
            return conv2d_depthwise(t, contiguous(gy), contiguous(w[:, :, ::-1, ::-1]), None)
    gx = empty(a.x_shape, gy.dtype, gy)
    fn = get_function("depthwise.cu", f"conv2d_depthwise_dgrad<{ctype(gy.dtype)}>")
    fn(_elementwise_grid(gx.size), (THREADS,),
       (contiguous(gy), contiguous(w), gx, np.int64(gx.size), *_dw_ints(a)))
    return gx


DW_WGRAD_BLOCKS = 2048      # blocks conv2d_depthwise_wgrad3's image splits aim for


def depthwise_wgrad_splits(a) -> int:
    """Image splits of conv2d_depthwise_wgrad3: about DW_WGRAD_BLOCKS blocks over the K
    output channels, at most N and the grid's y limit. A function of the shape only, so the
    summation order (and the result) is too."""
    return max(1, min(a.N, ceil_div(DW_WGRAD_BLOCKS, a.K), MAX_GRID_YZ))


def backward_weight_depthwise(a, x, gy):
    gw = empty(a.w_shape, x.dtype, x)
    t = ctype(x.dtype)
    if (a.R, a.S) != (3, 3):
        fn = get_function("depthwise.cu", f"conv2d_depthwise_wgrad<{t}>")
        fn((a.K * a.R * a.S,), (DW_THREADS,),
           (contiguous(x), contiguous(gy), gw, np.int32(a.N), *_dw_ints(a)))
        return gw
    splits = depthwise_wgrad_splits(a)
    part = gw if splits == 1 else empty((splits,) + a.w_shape, x.dtype, x)
    (sh, sw), (ph, pw), (dh, dw) = a.stride, a.padding, a.dilation
    get_function("depthwise.cu", f"conv2d_depthwise_wgrad3<{t}>")(
        (a.K, splits), (DW_THREADS,),
        (contiguous(x), contiguous(gy), part,
         *_i32(a.N, a.C, a.H, a.W, a.K, a.P, a.Q, sh, sw, ph, pw, dh, dw, splits)))
    if splits > 1:
        get_function("gemm.cu", f"sum_splits<{t}>")(
            _elementwise_grid(gw.size), (THREADS,), (part, gw, np.int64(gw.size), np.int32(splits)))
    return gw
