"""Brute-force loop versions of the ops, written from the definitions for the tests.

Deliberately independent of convgpu: plain Python loops over every index, float64
accumulation, no windows views, no padding arrays. Slow: use tiny shapes.
"""
import math

import numpy as np


def out_size(n, k, s, p, d, ceil_mode=False):
    span = n + 2 * p - d * (k - 1) - 1
    if ceil_mode:
        o = math.ceil(span / s) + 1
        if (o - 1) * s >= n + p:
            o -= 1
        return o
    return span // s + 1


def conv2d(x, w, b, stride, padding, dilation, groups):
    N, C, H, W = x.shape
    K, Cg, R, S = w.shape
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    P, Q = out_size(H, R, sh, ph, dh), out_size(W, S, sw, pw, dw)
    Kg = K // groups
    y = np.zeros((N, K, P, Q))
    for n in range(N):
        for k in range(K):
            g = k // Kg
            for p in range(P):
                for q in range(Q):
                    acc = 0.0 if b is None else float(b[k])
                    for c in range(Cg):
                        for r in range(R):
                            for s in range(S):
                                h = p * sh - ph + r * dh
                                v = q * sw - pw + s * dw
                                if 0 <= h < H and 0 <= v < W:
                                    acc += float(x[n, g * Cg + c, h, v]) * float(w[k, c, r, s])
                    y[n, k, p, q] = acc
    return y


def conv2d_backward(x_shape, w, x, gy, stride, padding, dilation, groups):
    """(gx, gw) by scattering each output's gradient along the forward's index map."""
    N, C, H, W = x_shape
    K, Cg, R, S = w.shape
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    _, _, P, Q = gy.shape
    Kg = K // groups
    gx = np.zeros(x_shape)
    gw = np.zeros(w.shape)
    for n in range(N):
        for k in range(K):
            g = k // Kg
            for p in range(P):
                for q in range(Q):
                    for c in range(Cg):
                        for r in range(R):
                            for s in range(S):
                                h = p * sh - ph + r * dh
                                v = q * sw - pw + s * dw
                                if 0 <= h < H and 0 <= v < W:
                                    gx[n, g * Cg + c, h, v] += float(gy[n, k, p, q]) * float(w[k, c, r, s])
                                    if x is not None:
                                        gw[k, c, r, s] += float(gy[n, k, p, q]) * float(x[n, g * Cg + c, h, v])
    return gx, gw


def max_pool2d(x, k, s, p, d, ceil_mode):
    N, C, H, W = x.shape
    P = out_size(H, k[0], s[0], p[0], d[0], ceil_mode)
    Q = out_size(W, k[1], s[1], p[1], d[1], ceil_mode)
    y = np.full((N, C, P, Q), np.nan)
    idx = np.full((N, C, P, Q), -1, dtype=np.int64)
    for n in range(N):
        for c in range(C):
            for i in range(P):
                for j in range(Q):
                    best, bi = -math.inf, -1
                    for r in range(k[0]):
                        for t in range(k[1]):
                            h = i * s[0] - p[0] + r * d[0]
                            v = j * s[1] - p[1] + t * d[1]
                            if 0 <= h < H and 0 <= v < W:
                                val = float(x[n, c, h, v])
                                if math.isnan(best):
                                    continue
                                if math.isnan(val) or val > best or bi < 0:
                                    best, bi = val, h * W + v
                    y[n, c, i, j], idx[n, c, i, j] = best, bi
    return y, idx


def avg_pool2d(x, k, s, p, ceil_mode, count_include_pad, divisor_override):
    N, C, H, W = x.shape
    P = out_size(H, k[0], s[0], p[0], 1, ceil_mode)
    Q = out_size(W, k[1], s[1], p[1], 1, ceil_mode)
    y = np.zeros((N, C, P, Q))
    for n in range(N):
        for c in range(C):
            for i in range(P):
                for j in range(Q):
                    h0, v0 = i * s[0] - p[0], j * s[1] - p[1]
                    h1, v1 = min(h0 + k[0], H + p[0]), min(v0 + k[1], W + p[1])
                    pool = (h1 - h0) * (v1 - v0)
                    acc, cnt = 0.0, 0
                    for h in range(max(h0, 0), min(h1, H)):
                        for v in range(max(v0, 0), min(v1, W)):
                            acc += float(x[n, c, h, v])
                            cnt += 1
                    div = divisor_override or (pool if count_include_pad else cnt)
                    y[n, c, i, j] = acc / div
    return y
