"""Numba im2col + GEMM convolution: forward, input gradient (GEMM + col2im) and weight
gradient (im2col + GEMM). The GEMM is the hand-written one in gemm.py; no cuBLAS.

Column layout, per group g: cols[g, (c*R + r)*S + s, (n*P + p)*Q + q]
    = x[n, g*Cg + c, p*sh - ph + r*dh, q*sw - pw + s*dw]   (0 outside the input)
so that y[g] (Kg, N*P*Q) = w[g] (Kg, Cg*R*S) @ cols[g].

Kernels:
  im2col_k   one thread per column entry, writes along the contiguous (n, p, q) axis
  col2im_k   one thread per input element: gathers the column entries that read it
             (deterministic; the adjoint of im2col_k)
Then the launchers.
"""
from __future__ import annotations

import functools

import numpy as np
from numba import cuda

from convgpu.kernels.numba.elementwise import NB_TYPES, bias_add
from convgpu.kernels.numba.gemm import gemm
from convgpu.kernels.numba.launch import THREADS, blocks_for, launch, unravel4
from convgpu.kernels.outputs import contiguous, empty


@functools.lru_cache(maxsize=None)
def _kernels(dtype_name: str):
    T = NB_TYPES[np.dtype(dtype_name)]

    @cuda.jit
    def im2col_k(x, cols, R, S, P, Q, sh, sw, ph, pw, dh, dw):
        N, C, H, W = x.shape
        G, CRS, NPQ = cols.shape
        Cg = CRS // (R * S)
        total = G * CRS * NPQ
        for t in range(cuda.grid(1), total, cuda.gridsize(1)):
            col = t % NPQ
            row = (t // NPQ) % CRS
            g = t // (NPQ * CRS)
            q = col % Q
            p = (col // Q) % P
            n = col // (P * Q)
            s = row % S
            r = (row // S) % R
            c = row // (R * S)
            h = p * sh - ph + r * dh
            v = q * sw - pw + s * dw
            val = T(0)
            if h >= 0 and h < H and v >= 0 and v < W:
                val = x[n, g * Cg + c, h, v]
            cols[g, row, col] = val

    @cuda.jit
    def col2im_k(cols, gx, R, S, P, Q, sh, sw, ph, pw, dh, dw):
        N, C, H, W = gx.shape
        G = cols.shape[0]
        Cg = C // G
        total = N * C * H * W
        for t in range(cuda.grid(1), total, cuda.gridsize(1)):
            n, c, h, v = unravel4(t, C, H, W)
            g = c // Cg
            cw = c % Cg
            acc = T(0)
            for r in range(R):
                hp = h + ph - r * dh
                if hp < 0 or hp % sh != 0 or hp // sh >= P:
                    continue
                p = hp // sh
                for s in range(S):
                    vq = v + pw - s * dw
                    if vq < 0 or vq % sw != 0 or vq // sw >= Q:
                        continue
                    q = vq // sw
                    acc += cols[g, (cw * R + r) * S + s, (n * P + p) * Q + q]
            gx[n, c, h, v] = acc

    return dict(im2col=im2col_k, col2im=col2im_k)


def kernels_for(dtype):
    return _kernels(np.dtype(dtype).name)


def _geom(a):
    return (a.R, a.S, a.P, a.Q, a.stride[0], a.stride[1], a.padding[0], a.padding[1],
            a.dilation[0], a.dilation[1])


def im2col(a, x):
    cols = empty((a.groups, a.Cg * a.R * a.S, a.N * a.P * a.Q), x.dtype, x)
    launch(kernels_for(x.dtype)["im2col"], blocks_for(cols.size), THREADS, x, x, cols, *_geom(a))
    return cols


def col2im(a, cols):
    gx = empty(a.x_shape, cols.dtype, cols)
    launch(kernels_for(cols.dtype)["col2im"], blocks_for(gx.size), THREADS, cols,
           cols, gx, *_geom(a))
    return gx


def _gy_by_group(a, gy):
    """(N, K, P, Q) -> (G, Kg, N*P*Q), the GEMM's layout."""
    return contiguous(gy.reshape(a.N, a.groups, a.Kg, a.P * a.Q).transpose(1, 2, 0, 3)) \
        .reshape(a.groups, a.Kg, a.N * a.P * a.Q)


# ----------------------------------------------------------------------------------------
# launchers


def conv2d_im2col(a, x, w, b):
    cols = im2col(a, x)
    yg = gemm(w.reshape(a.groups, a.Kg, a.Cg * a.R * a.S), cols)       # G, Kg, NPQ
    y = contiguous(yg.reshape(a.K, a.N, a.P * a.Q).transpose(1, 0, 2)).reshape(a.y_shape)
    return bias_add(None, y, b) if b is not None else y


def backward_input_col2im(a, gy, w):
    dcols = gemm(w.reshape(a.groups, a.Kg, a.Cg * a.R * a.S), _gy_by_group(a, gy), ta=True)
    return col2im(a, dcols)


def backward_weight_im2col(a, x, gy):
    gw = gemm(_gy_by_group(a, gy), im2col(a, x), tb=True)               # G, Kg, CgRS
    return gw.reshape(a.w_shape)
