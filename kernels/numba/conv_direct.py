"""Numba direct convolution: forward, input gradient (gather) and weight gradient.

Kernels, simplest first:
  conv_direct_k        one thread per output element (n, k, p, q); loops c, r, s; bias fused
  conv_tiled_k         one block per (n, k, tile of TILE output pixels): the block stages the
                       filter slice w[k, c0:c0+CCHUNK] in shared memory once per channel chunk
                       and every thread reuses it for its pixel (filters in shared memory)
  bwd_input_gather_k   one thread per input element (n, c, h, w): the sum of gy * w over the
                       outputs whose window reads it (the inverted filter); no atomics
  bwd_weight_k         one block per weight element (k, c, r, s): strided partial sums over
                       (n, p, q), then a shared-memory tree in a fixed order (deterministic)
Then the launchers, with the registry's signature (ConvArgs, *arrays).
"""
from __future__ import annotations

import functools

import numpy as np
from numba import cuda

from convgpu.kernels.numba.elementwise import ACC_TYPES, NB_TYPES
from convgpu.kernels.numba.launch import THREADS, block_sum, blocks_for, launch, unravel4
from convgpu.kernels.outputs import empty

TILE = 128          # output pixels per block in the tiled kernel (= threads per block)
CCHUNK = 8          # input channels per shared-memory stage
MAX_RS = 128        # largest R*S the tiled kernel's shared filter buffer holds


@functools.lru_cache(maxsize=None)
def _kernels(dtype_name: str):
    T = NB_TYPES[np.dtype(dtype_name)]
    A = ACC_TYPES[np.dtype(dtype_name)]             # products and sums in float32 for float16

    @cuda.jit
    def conv_direct_k(x, w, b, y, has_bias, sh, sw, ph, pw, dh, dw, groups):
        N, C, H, W = x.shape
        K, Cg, R, S = w.shape
        P, Q = y.shape[2], y.shape[3]
        Kg = K // groups
        total = N * K * P * Q
        for t in range(cuda.grid(1), total, cuda.gridsize(1)):
            n, k, p, q = unravel4(t, K, P, Q)
            c0 = (k // Kg) * Cg
            acc = A(b[k]) if has_bias else A(0)
            for c in range(Cg):
                for r in range(R):
                    h = p * sh - ph + r * dh
                    if h < 0 or h >= H:
                        continue
                    for s in range(S):
                        v = q * sw - pw + s * dw
                        if v >= 0 and v < W:
                            acc += A(x[n, c0 + c, h, v]) * A(w[k, c, r, s])
            y[n, k, p, q] = T(acc)

    @cuda.jit
    def conv_tiled_k(x, w, b, y, has_bias, sh, sw, ph, pw, dh, dw, groups):
        N, C, H, W = x.shape
        K, Cg, R, S = w.shape
        P, Q = y.shape[2], y.shape[3]
        Kg = K // groups
        wbuf = cuda.shared.array((CCHUNK, MAX_RS), dtype=T)
        k = cuda.blockIdx.y
        n = cuda.blockIdx.z
        tid = cuda.threadIdx.x
        pix = cuda.blockIdx.x * TILE + tid
        p = pix // Q
        q = pix % Q
        live = pix < P * Q
        c0 = (k // Kg) * Cg
        acc = A(b[k]) if has_bias else A(0)
        RS = R * S
        for cc in range(0, Cg, CCHUNK):
            nc = min(CCHUNK, Cg - cc)
            # stage w[k, cc:cc+nc, :, :] cooperatively
            for e in range(tid, nc * RS, TILE):
                wbuf[e // RS, e % RS] = w[k, cc + e // RS, (e % RS) // S, e % S]
            cuda.syncthreads()
            if live:
                for c in range(nc):
                    for r in range(R):
                        h = p * sh - ph + r * dh
                        if h < 0 or h >= H:
                            continue
                        for s in range(S):
                            v = q * sw - pw + s * dw
                            if v >= 0 and v < W:
                                acc += A(x[n, c0 + cc + c, h, v]) * A(wbuf[c, r * S + s])
            cuda.syncthreads()
        if live:
            y[n, k, p, q] = T(acc)

    @cuda.jit
    def bwd_input_gather_k(gy, w, gx, sh, sw, ph, pw, dh, dw, groups):
        N, C, H, W = gx.shape
        K, Cg, R, S = w.shape
        P, Q = gy.shape[2], gy.shape[3]
        Kg = K // groups
        total = N * C * H * W
        for t in range(cuda.grid(1), total, cuda.gridsize(1)):
            n, c, h, v = unravel4(t, C, H, W)
            g = c // Cg
            cw = c % Cg
            acc = A(0)
            for r in range(R):
                hp = h + ph - r * dh          # = p * sh for the output row that reads h
                if hp < 0 or hp % sh != 0:
                    continue
                p = hp // sh
                if p >= P:
                    continue
                for s in range(S):
                    vq = v + pw - s * dw
                    if vq < 0 or vq % sw != 0:
                        continue
                    q = vq // sw
                    if q >= Q:
                        continue
                    for k in range(g * Kg, (g + 1) * Kg):
                        acc += A(gy[n, k, p, q]) * A(w[k, cw, r, s])
            gx[n, c, h, v] = T(acc)

    @cuda.jit
    def bwd_weight_k(x, gy, gw, sh, sw, ph, pw, dh, dw, groups):
        N, C, H, W = x.shape
        K, Cg, R, S = gw.shape
        P, Q = gy.shape[2], gy.shape[3]
        Kg = K // groups
        buf = cuda.shared.array(THREADS, dtype=A)
        e = cuda.blockIdx.x                    # flat weight element (k, c, r, s)
        s = e % S
        r = (e // S) % R
        c = (e // (R * S)) % Cg
        k = e // (Cg * R * S)
        cx = (k // Kg) * Cg + c
        tid = cuda.threadIdx.x
        acc = A(0)
        for j in range(tid, N * P * Q, THREADS):
            q = j % Q
            p = (j // Q) % P
            n = j // (P * Q)
            h = p * sh - ph + r * dh
            v = q * sw - pw + s * dw
            if h >= 0 and h < H and v >= 0 and v < W:
                acc += A(gy[n, k, p, q]) * A(x[n, cx, h, v])
        total = block_sum(buf, tid, acc)
        if tid == 0:
            gw[k, c, r, s] = T(total)

    return dict(direct=conv_direct_k, tiled=conv_tiled_k, bwd_input=bwd_input_gather_k,
                bwd_weight=bwd_weight_k)


def kernels_for(dtype):
    return _kernels(np.dtype(dtype).name)


# ----------------------------------------------------------------------------------------
# launchers


def _geom(a):
    return (a.stride[0], a.stride[1], a.padding[0], a.padding[1], a.dilation[0], a.dilation[1],
            a.groups)


def _bias_arg(b, like):
    return (b, True) if b is not None else (empty((1,), like.dtype, like), False)


def conv2d_direct(a, x, w, b):
    y = empty(a.y_shape, x.dtype, x)
    bb, has = _bias_arg(b, x)
    launch(kernels_for(x.dtype)["direct"], blocks_for(y.size), THREADS, x,
           x, w, bb, y, has, *_geom(a))
    return y


def tiled_supports(a):
    if a.R * a.S > MAX_RS:
        return f"the tiled kernel's shared filter buffer holds R*S <= {MAX_RS}, got {a.R * a.S}"
    return None


def conv2d_direct_tiled(a, x, w, b):
    y = empty(a.y_shape, x.dtype, x)
    bb, has = _bias_arg(b, x)
    grid = (blocks_for(a.P * a.Q, TILE), a.K, a.N)
    launch(kernels_for(x.dtype)["tiled"], grid, TILE, x, x, w, bb, y, has, *_geom(a))
    return y


def backward_input_direct(a, gy, w):
    gx = empty(a.x_shape, gy.dtype, gy)
    launch(kernels_for(gy.dtype)["bwd_input"], blocks_for(gx.size), THREADS, gy,
           gy, w, gx, *_geom(a))
    return gx


def backward_weight_direct(a, x, gy):
    gw = empty(a.w_shape, gy.dtype, gy)
    launch(kernels_for(gy.dtype)["bwd_weight"], gw.size, THREADS, gy, x, gy, gw, *_geom(a))
    return gw
