"""Numba Winograd convolution F(2x2, 3x3) (Lavin & Gray, 2016): the readable version of
kernels/winograd.cu, for 3x3 filters at stride 1 and dilation 1.

Each 2x2 output tile is Y = A^T [ (G g G^T) .* (B^T d B) ] A for the 4x4 input patch d and
the 3x3 filter g (matrices below). Summed over input channels, the elementwise product is,
for each of the 16 transform positions xi, a matrix product
    M[xi] (Kg x T) = U[xi] (Kg x Cg) @ V[xi] (Cg x T),    T = N * ceil(P/2) * ceil(Q/2) tiles,
batched over groups x 16 on the Numba GEMM (kernels/gemm.py): 16 multiplies per tile and
channel pair instead of the direct 36.

The weight gradient runs the same matrices backwards: the gradient with respect to one
tile's elementwise product is A dy A^T (dy the 2x2 output-gradient tile, zero outside
P x Q), so
    gw[k, c] = G^T [ sum over tiles (A dy A^T) .* (B^T d B) ] G,
16 GEMMs Mw[xi] (Kg x Cg) = Z[xi] (Kg x T) @ V[xi]^T per group, reducing over the tiles.

Kernels (one thread each, grid-stride):
  winograd_filter_k      (k, c)      U[g*16 + xi, k, c] = (G w[k, c] G^T)[xi]
  winograd_input_k       (c, tile)   V[g*16 + xi, c, t] = (B^T d B)[xi], d zero outside the input
  winograd_output_k      (k, tile)   y[n, k, 2 th + i, 2 tw + j] = (A^T M[:, k, t] A)[i, j] (+ bias)
  winograd_grad_tiles_k  (k, tile)   Z[g*16 + xi, k, t] = (A dy A^T)[xi]
  winograd_grad_filter_k (k, c)      gw[k, c] = G^T Mw[g*16 + :, k, c] G
"""
from __future__ import annotations

import functools

import numpy as np
from numba import cuda

from convgpu.kernels.numba.elementwise import NB_TYPES
from convgpu.kernels.numba.gemm import gemm
from convgpu.kernels.numba.launch import THREADS, blocks_for, launch, unravel4
from convgpu.kernels.outputs import contiguous, empty

@cuda.jit(device=True, inline=True)     # inlined in Numba IR, as unravel4
def channel_tile(i, N, TH, TW, per_group):
    """Flat index i over (channel, N, TH, TW) -> (channel, its group, its index in the group,
    n, th, tw, t): the start every transform kernel shares; t is the tile's index within
    its channel, the GEMM operands' column."""
    ch, n, th, tw = unravel4(i, N, TH, TW)
    return ch, ch // per_group, ch % per_group, n, th, tw, i - ch * (N * TH * TW)


#   B^T = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]
#   G   = [[1, 0, 0], [1/2, 1/2, 1/2], [1/2, -1/2, 1/2], [0, 0, 1]]
#   A^T = [[1, 1, 1, 0], [0, 1, -1, -1]]


def supports(a):
    if (a.R, a.S) != (3, 3) or a.stride != (1, 1) or a.dilation != (1, 1):
        return ("Winograd F(2x2, 3x3) serves 3x3 filters at stride 1 and dilation 1; got "
                f"{a.R}x{a.S}, stride {a.stride}, dilation {a.dilation}")
    return None


@cuda.jit(device=True, inline=True)      # inlined in Numba IR: compile_ptx needs no device
def filter_index(i, Cg, Kg):
    """Flat index over (K, Cg) -> (k, c, the group g, k within the group)."""
    k = i // Cg
    return k, i % Cg, k // Kg, k % Kg


@functools.lru_cache(maxsize=None)
def _kernels(dtype_name: str):
    T = NB_TYPES[np.dtype(dtype_name)]
    half = T(0.5)

    @cuda.jit
    def winograd_filter_k(w, U, groups):
        K, Cg = w.shape[0], w.shape[1]
        Kg = K // groups
        for i in range(cuda.grid(1), K * Cg, cuda.gridsize(1)):
            k, c, g, kk = filter_index(i, Cg, Kg)
            t = cuda.local.array((4, 3), dtype=T)          # G g
            for s in range(3):
                a, b, d = w[k, c, 0, s], w[k, c, 1, s], w[k, c, 2, s]
                t[0, s] = a
                t[1, s] = half * (a + b + d)
                t[2, s] = half * (a - b + d)
                t[3, s] = d
            for r in range(4):                             # (G g) G^T
                a, b, d = t[r, 0], t[r, 1], t[r, 2]
                U[g * 16 + r * 4 + 0, kk, c] = a
                U[g * 16 + r * 4 + 1, kk, c] = half * (a + b + d)
                U[g * 16 + r * 4 + 2, kk, c] = half * (a - b + d)
                U[g * 16 + r * 4 + 3, kk, c] = d

    @cuda.jit
    def winograd_input_k(x, V, ph, pw, groups, TH, TW):
        N, C, H, W = x.shape
        Cg = C // groups
        tiles = N * TH * TW
        for i in range(cuda.grid(1), C * tiles, cuda.gridsize(1)):
            c_all, g, c, n, th, tw, t = channel_tile(i, N, TH, TW, Cg)   # i over (C, N, TH, TW)
            d = cuda.local.array((4, 4), dtype=T)
            for r in range(4):
                for s in range(4):
                    h = 2 * th - ph + r
                    v = 2 * tw - pw + s
                    d[r, s] = x[n, c_all, h, v] if 0 <= h < H and 0 <= v < W else T(0)
            bt = cuda.local.array((4, 4), dtype=T)         # B^T d
            for s in range(4):
                bt[0, s] = d[0, s] - d[2, s]
                bt[1, s] = d[1, s] + d[2, s]
                bt[2, s] = d[2, s] - d[1, s]
                bt[3, s] = d[1, s] - d[3, s]
            for r in range(4):                             # (B^T d) B
                V[g * 16 + r * 4 + 0, c, t] = bt[r, 0] - bt[r, 2]
                V[g * 16 + r * 4 + 1, c, t] = bt[r, 1] + bt[r, 2]
                V[g * 16 + r * 4 + 2, c, t] = bt[r, 2] - bt[r, 1]
                V[g * 16 + r * 4 + 3, c, t] = bt[r, 1] - bt[r, 3]

    @cuda.jit
    def winograd_output_k(M, b, y, has_bias, groups, TH, TW):
        N, K, P, Q = y.shape
        Kg = K // groups
        tiles = N * TH * TW
        for i in range(cuda.grid(1), K * tiles, cuda.gridsize(1)):
            k_all, g, k, n, th, tw, t = channel_tile(i, N, TH, TW, Kg)   # i over (K, N, TH, TW)
            at = cuda.local.array((2, 4), dtype=T)         # A^T m
            for s in range(4):
                m0 = M[g * 16 + s, k, t]
                m1 = M[g * 16 + 4 + s, k, t]
                m2 = M[g * 16 + 8 + s, k, t]
                m3 = M[g * 16 + 12 + s, k, t]
                at[0, s] = m0 + m1 + m2
                at[1, s] = m1 - m2 - m3
            bias = b[k_all] if has_bias else T(0)
            for r in range(2):                             # (A^T m) A
                p = 2 * th + r
                if p < P:
                    q = 2 * tw
                    y[n, k_all, p, q] = at[r, 0] + at[r, 1] + at[r, 2] + bias
                    if q + 1 < Q:
                        y[n, k_all, p, q + 1] = at[r, 1] - at[r, 2] - at[r, 3] + bias

    @cuda.jit
    def winograd_grad_tiles_k(gy, Z, groups, TH, TW):
        N, K, P, Q = gy.shape
        Kg = K // groups
        tiles = N * TH * TW
        for i in range(cuda.grid(1), K * tiles, cuda.gridsize(1)):
            k_all, g, k, n, th, tw, t = channel_tile(i, N, TH, TW, Kg)   # i over (K, N, TH, TW)
            d = cuda.local.array((2, 2), dtype=T)          # the 2x2 tile, zero outside P x Q
            for r in range(2):
                for s in range(2):
                    p = 2 * th + r
                    q = 2 * tw + s
                    d[r, s] = gy[n, k_all, p, q] if p < P and q < Q else T(0)
            u = cuda.local.array((4, 2), dtype=T)          # A dy
            for s in range(2):
                u[0, s] = d[0, s]
                u[1, s] = d[0, s] + d[1, s]
                u[2, s] = d[0, s] - d[1, s]
                u[3, s] = -d[1, s]
            for r in range(4):                             # (A dy) A^T
                Z[g * 16 + r * 4 + 0, k, t] = u[r, 0]
                Z[g * 16 + r * 4 + 1, k, t] = u[r, 0] + u[r, 1]
                Z[g * 16 + r * 4 + 2, k, t] = u[r, 0] - u[r, 1]
                Z[g * 16 + r * 4 + 3, k, t] = -u[r, 1]

    @cuda.jit
    def winograd_grad_filter_k(Mw, gw, groups):
        K, Cg = gw.shape[0], gw.shape[1]
        Kg = K // groups
        for i in range(cuda.grid(1), K * Cg, cuda.gridsize(1)):
            k, c, g, kk = filter_index(i, Cg, Kg)
            a = cuda.local.array((3, 4), dtype=T)          # G^T m
            for s in range(4):
                m0 = Mw[g * 16 + s, kk, c]
                m1 = Mw[g * 16 + 4 + s, kk, c]
                m2 = Mw[g * 16 + 8 + s, kk, c]
                m3 = Mw[g * 16 + 12 + s, kk, c]
                a[0, s] = m0 + half * (m1 + m2)
                a[1, s] = half * (m1 - m2)
                a[2, s] = half * (m1 + m2) + m3
            for r in range(3):                             # (G^T m) G
                gw[k, c, r, 0] = a[r, 0] + half * (a[r, 1] + a[r, 2])
                gw[k, c, r, 1] = half * (a[r, 1] - a[r, 2])
                gw[k, c, r, 2] = half * (a[r, 1] + a[r, 2]) + a[r, 3]

    return dict(filter=winograd_filter_k, input=winograd_input_k, output=winograd_output_k,
                grad_tiles=winograd_grad_tiles_k, grad_filter=winograd_grad_filter_k)


def _input_tiles(k, a, x):
    """V (groups*16, Cg, T): the input tiles' transforms B^T d B, and (TH, TW, T)."""
    TH, TW = -(-a.P // 2), -(-a.Q // 2)
    tiles = a.N * TH * TW
    V = empty((a.groups * 16, a.Cg, tiles), x.dtype, x)
    launch(k["input"], blocks_for(a.C * tiles), THREADS, x, contiguous(x), V, a.padding[0],
           a.padding[1], a.groups, TH, TW)
    return V, TH, TW, tiles


def conv2d_winograd(a, x, w, b):
    k = _kernels(np.dtype(x.dtype).name)
    G = a.groups
    U = empty((G * 16, a.Kg, a.Cg), x.dtype, x)
    launch(k["filter"], blocks_for(a.K * a.Cg), THREADS, x, contiguous(w), U, G)
    V, TH, TW, tiles = _input_tiles(k, a, x)
    M = gemm(U, V)
    y = empty(a.y_shape, x.dtype, x)
    bias = b if b is not None else empty((1,), x.dtype, x)
    launch(k["output"], blocks_for(a.K * tiles), THREADS, x, M, bias, y, b is not None, G, TH, TW)
    return y


def backward_weight_winograd(a, x, gy):
    k = _kernels(np.dtype(x.dtype).name)
    G = a.groups
    V, TH, TW, tiles = _input_tiles(k, a, x)
    Z = empty((G * 16, a.Kg, tiles), x.dtype, x)
    launch(k["grad_tiles"], blocks_for(a.K * tiles), THREADS, x, contiguous(gy), Z, G, TH, TW)
    Mw = gemm(Z, V, tb=True)                             # (G*16, Kg, Cg)
    gw = empty(a.w_shape, x.dtype, x)
    launch(k["grad_filter"], blocks_for(a.K * a.Cg), THREADS, x, Mw, gw, G)
    return gw
