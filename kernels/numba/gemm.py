"""Numba shared-memory tiled GEMM, batched: C[b] = op(A[b]) @ op(B[b]), op = transpose or not.

Kernel:
  gemm_k   a 16x16 thread block computes a 32x32 tile of C, each thread a 2x2 sub-block
           (rows ty, ty+16; columns tx, tx+16) in four scalar accumulators; A and B tiles of
           depth BK go through shared memory, loaded along each operand's contiguous
           dimension (coalesced), zero-filled past the edges, syncthreads after loading and
           after computing. Batch index = blockIdx.z. The reduction runs in a fixed order, so
           results are deterministic.
Launchers: gemm (the batched product), linear and linear_backward (the registry's ops).
"""
from __future__ import annotations

import functools

import numpy as np
from numba import cuda

from convgpu.core.args import ceil_div
from convgpu.kernels.numba.elementwise import NB_TYPES, bias_add, channel_sum
from convgpu.kernels.numba.launch import launch
from convgpu.kernels.outputs import empty

BM = 32      # tile rows of C
BN = 32      # tile columns of C
BK = 16      # depth of the shared tiles
TX = 16      # threads per block along columns
TY = 16      # threads per block along rows


@functools.lru_cache(maxsize=None)
def gemm_kernel(dtype_name: str, ta: bool, tb: bool):
    T = NB_TYPES[np.dtype(dtype_name)]
    NTHREADS = TX * TY

    @cuda.jit
    def gemm_k(A, B, C, M, N, K):
        bz = cuda.blockIdx.z
        As = cuda.shared.array((BK, BM), dtype=T)
        Bs = cuda.shared.array((BK, BN), dtype=T)
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        tid = ty * TX + tx
        row0 = cuda.blockIdx.y * BM
        col0 = cuda.blockIdx.x * BN
        c00 = T(0)
        c01 = T(0)
        c10 = T(0)
        c11 = T(0)
        for k0 in range(0, K, BK):
            for e in range(tid, BK * BM, NTHREADS):
                if ta:                        # A stored (K, M): contiguous along m
                    kk = e // BM
                    mm = e % BM
                else:                         # A stored (M, K): contiguous along k
                    mm = e // BK
                    kk = e % BK
                i = row0 + mm
                j = k0 + kk
                val = T(0)
                if i < M and j < K:
                    val = A[bz, j, i] if ta else A[bz, i, j]
                As[kk, mm] = val
            for e in range(tid, BK * BN, NTHREADS):
                if tb:                        # B stored (N, K): contiguous along k
                    nn = e // BK
                    kk = e % BK
                else:                         # B stored (K, N): contiguous along n
                    kk = e // BN
                    nn = e % BN
                i = k0 + kk
                j = col0 + nn
                val = T(0)
                if i < K and j < N:
                    val = B[bz, j, i] if tb else B[bz, i, j]
                Bs[kk, nn] = val
            cuda.syncthreads()
            for kk in range(BK):
                a0 = As[kk, ty]
                a1 = As[kk, ty + TY]
                b0 = Bs[kk, tx]
                b1 = Bs[kk, tx + TX]
                c00 += a0 * b0
                c01 += a0 * b1
                c10 += a1 * b0
                c11 += a1 * b1
            cuda.syncthreads()
        r0 = row0 + ty
        r1 = row0 + ty + TY
        q0 = col0 + tx
        q1 = col0 + tx + TX
        if r0 < M and q0 < N:
            C[bz, r0, q0] = c00
        if r0 < M and q1 < N:
            C[bz, r0, q1] = c01
        if r1 < M and q0 < N:
            C[bz, r1, q0] = c10
        if r1 < M and q1 < N:
            C[bz, r1, q1] = c11

    return gemm_k


def gemm(A, B, ta=False, tb=False):
    """Batched C[b] = op(A[b]) @ op(B[b]) for 3-D C-contiguous A, B of one float dtype."""
    batch = A.shape[0]
    M, K = (A.shape[2], A.shape[1]) if ta else (A.shape[1], A.shape[2])
    N = B.shape[1] if tb else B.shape[2]
    C = empty((batch, M, N), A.dtype, A)
    grid = (ceil_div(N, BN), ceil_div(M, BM), batch)
    launch(gemm_kernel(np.dtype(A.dtype).name, bool(ta), bool(tb)), grid, (TX, TY), A,
           A, B, C, M, N, K)
    return C


# ----------------------------------------------------------------------------------------
# linear through the GEMM


def linear(a, x, w, b):
    x2 = x.reshape(1, -1, x.shape[-1])
    y = gemm(x2, w.reshape((1,) + w.shape), tb=True)[0]
    if b is not None:
        y = bias_add(None, y, b)
    return y.reshape(x.shape[:-1] + (w.shape[0],))


def linear_backward(a, gy, x, w):
    g2 = gy.reshape(1, -1, gy.shape[-1])
    x2 = x.reshape(1, -1, x.shape[-1])
    gx = gemm(g2, w.reshape((1,) + w.shape))[0].reshape(x.shape)
    gw = gemm(g2, x2, ta=True)[0]
    gb = channel_sum(g2.reshape(g2.shape[1], g2.shape[2], 1))
    return gx, gw, gb
