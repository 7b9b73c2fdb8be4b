"""Launchers of the CUDA C kernels (gemm.cu, conv.cu, pool.cu): the `cuda` backend.

Each launcher takes the registry's (args, *arrays) on CuPy arrays, allocates its outputs
(poisoned in tests), derives the grid from the shapes and launches on CuPy's current
stream. Kernel modules are compiled once per device (kernels/_module.py).
"""
from __future__ import annotations

import numpy as np

from convgpu.kernels._launch import ceil_div, contiguous, empty
from convgpu.kernels._module import ctype, get_function

TILE = 128                 # the register-blocked tile of gemm.cu / conv.cu (tile::BM = BN)
GEMM_THREADS = 256
THREADS = 256              # one-thread-per-element kernels
MAX_GRID_X = 2 ** 31 - 1
INT_SAFE = 2 ** 31 - 2 ** 27   # flat indices below this (plus the grid stride) fit in int


def _i32(*v):
    return tuple(np.int32(int(a)) for a in v)


def _elementwise_grid(n):
    return (max(1, min(ceil_div(n, THREADS), 65535 * 64)),)


# ----------------------------------------------------------------------------------------
# GEMM


def tf32_supports(a):
    if not getattr(a, "allow_tf32", False):
        return "TF32 is not allowed for this call (allow_tf32=True or set_allow_tf32(True))"
    if np.dtype(a.dtype) != np.float32:
        return f"TF32 kernels take float32, got {np.dtype(a.dtype).name}"
    return None


def gemm(A, B, ta=False, tb=False, splits=1, tf32=False):
    """Batched C[b] = op(A[b]) @ op(B[b]); with splits > 1 the K range is cut into that many
    parts whose partial products are summed afterwards in a fixed order (deterministic)."""
    batch = A.shape[0]
    M, K = (A.shape[2], A.shape[1]) if ta else (A.shape[1], A.shape[2])
    N = B.shape[1] if tb else B.shape[2]
    splits = max(1, min(splits, ceil_div(K, 8)))
    kchunk = ceil_div(ceil_div(K, splits), 8) * 8
    splits = ceil_div(K, kchunk)
    t = ctype(A.dtype)
    fn = get_function("gemm.cu", f"gemm_tiled<{t}, {'true' if ta else 'false'}, "
                                 f"{'true' if tb else 'false'}, {'true' if tf32 else 'false'}>")
    out = empty((splits, batch, M, N) if splits > 1 else (batch, M, N), A.dtype, A)
    grid = (ceil_div(N, TILE), ceil_div(M, TILE), batch * splits)
    fn(grid, (GEMM_THREADS,), (A, B, out, *_i32(M, N, K), np.int64(A[0].size), np.int64(B[0].size),
                               np.int64(M * N), np.int32(splits), np.int32(kchunk),
                               np.int64(batch * M * N)))
    if splits == 1:
        return out
    C = empty((batch, M, N), A.dtype, A)
    sum_fn = get_function("gemm.cu", f"sum_splits<{t}>")
    sum_fn(_elementwise_grid(C.size), (THREADS,), (out, C, np.int64(C.size), np.int32(splits)))
    return C


def _split_for(M, N, batch, K):
    """Enough K-splits that the grid has about two blocks per SM's worth of work (132 SMs)."""
    blocks = ceil_div(M, TILE) * ceil_div(N, TILE) * batch
    return max(1, min(32, ceil_div(264, blocks), ceil_div(K, 256)))


# ----------------------------------------------------------------------------------------
# convolution


def _conv_ints(a):
    return _i32(a.N, a.C, a.H, a.W, a.K, a.R, a.S, a.P, a.Q, a.stride[0], a.stride[1],
                a.padding[0], a.padding[1], a.dilation[0], a.dilation[1], a.groups)


def conv2d_implicit_gemm_tf32(a, x, w, b):
    return conv2d_implicit_gemm(a, x, w, b, tf32=True)


def conv2d_implicit_gemm(a, x, w, b, tf32=False):
    """Implicit GEMM; when the output has too few tiles to fill the GPU and the reduction
    (C/g*R*S) is long, the reduction is split and the partials summed in a fixed order."""
    crs = a.Cg * a.R * a.S
    splits = _split_for(a.Kg, a.N * a.P * a.Q, a.groups, crs)
    kchunk = ceil_div(ceil_div(crs, splits), 8) * 8
    splits = ceil_div(crs, kchunk)
    out = empty((splits,) + a.y_shape if splits > 1 else a.y_shape, x.dtype, x)
    fn = get_function("conv.cu", f"conv2d_implicit_gemm<{ctype(x.dtype)}, "
                                 f"{'true' if tf32 else 'false'}>")
    grid = (ceil_div(a.N * a.P * a.Q, TILE), ceil_div(a.Kg, TILE), a.groups * splits)
    bias = b if b is not None else np.uint64(0)          # a null pointer
    fn(grid, (GEMM_THREADS,), (x, w, bias, out, *_conv_ints(a), np.int32(splits),
                               np.int32(kchunk), np.int64(a.N * a.K * a.P * a.Q)))
    if splits == 1:
        return out
    y = empty(a.y_shape, x.dtype, x)
    sum_fn = get_function("gemm.cu", f"sum_splits<{ctype(x.dtype)}>")
    sum_fn(_elementwise_grid(y.size), (THREADS,), (out, y, np.int64(y.size), np.int32(splits)))
    return y


def im2col(a, x):
    cols = empty((a.groups, a.Cg * a.R * a.S, a.N * a.P * a.Q), x.dtype, x)
    fn = get_function("conv.cu", f"im2col<{ctype(x.dtype)}>")
    fn(_elementwise_grid(cols.size), (THREADS,), (x, cols, *_conv_ints(a)))
    return cols


def col2im(a, cols):
    gx = empty(a.x_shape, cols.dtype, cols)
    fn = get_function("conv.cu", f"col2im<{ctype(cols.dtype)}>")
    fn(_elementwise_grid(gx.size), (THREADS,), (cols, gx, *_conv_ints(a)))
    return gx


def _gy_by_group(a, gy):
    return contiguous(gy.reshape(a.N, a.groups, a.Kg, a.P * a.Q).transpose(1, 2, 0, 3)) \
        .reshape(a.groups, a.Kg, a.N * a.P * a.Q)


def conv2d_im2col(a, x, w, b):
    yg = gemm(w.reshape(a.groups, a.Kg, a.Cg * a.R * a.S), im2col(a, x))
    y = contiguous(yg.reshape(a.K, a.N, a.P * a.Q).transpose(1, 0, 2)).reshape(a.y_shape)
    if b is not None:
        y += b.reshape(1, -1, 1, 1)
    return y


def backward_input_col2im(a, gy, w):
    dcols = gemm(w.reshape(a.groups, a.Kg, a.Cg * a.R * a.S), _gy_by_group(a, gy), ta=True)
    return col2im(a, dcols)


def backward_weight_im2col(a, x, gy):
    M, N, K = a.Kg, a.Cg * a.R * a.S, a.N * a.P * a.Q
    gw = gemm(_gy_by_group(a, gy), im2col(a, x), tb=True, splits=_split_for(M, N, a.groups, K))
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
    from convgpu.kernels.elementwise import channel_sum
    gb = channel_sum(g2.reshape(g2.shape[1], g2.shape[2], 1))
    return gx, gw, gb


# ----------------------------------------------------------------------------------------
# pooling


def _pool_ints(a, H, W, P, Q, dil=True):
    d = a.dilation if dil else (1, 1)
    return _i32(H, W, P, Q, a.kernel[0], a.kernel[1], a.stride[0], a.stride[1], a.padding[0],
                a.padding[1], d[0], d[1], a.count_include_pad, a.divisor_override or 0)


def _index_type(total):
    return ("int", np.int32) if total < INT_SAFE else ("long long", np.int64)


def max_pool2d(a, x):
    y = empty(a.y_shape, x.dtype, x)
    idx = empty(a.y_shape, np.int64, x)
    it, ic = _index_type(max(y.size, x.size))
    fn = get_function("pool.cu", f"max_pool2d_fwd<{ctype(x.dtype)}, {it}>")
    fn(_elementwise_grid(y.size), (THREADS,),
       (x, y, idx, ic(a.N * a.C), *_pool_ints(a, a.H, a.W, a.P, a.Q)))
    return y, idx


def max_pool2d_backward_gather(m, gy, idx):
    a = m.pool
    gx = empty(a.x_shape, gy.dtype, gy)
    it, ic = _index_type(gx.size)
    fn = get_function("pool.cu", f"max_pool2d_bwd_gather<{ctype(gy.dtype)}, {it}>")
    fn(_elementwise_grid(gx.size), (THREADS,),
       (gy, idx, gx, ic(a.N * a.C), *_pool_ints(a, a.H, a.W, a.P, a.Q)))
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
