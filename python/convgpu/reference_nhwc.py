"""The NumPy reference in NHWC (channels-last): x (N, H, W, C), w (K, R, S, C/groups), y
(N, P, Q, K). The convolutions are written over the NHWC axes themselves (a window view
and an einsum, an explicit scatter for the input gradient), not by transposing around
convgpu.reference's NCHW code, so that each layout's reference checks the other. Pooling is
layout-independent per plane: it transposes around the NCHW functions (tests compare it
with torch's channels_last results)."""
from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from convgpu.core.args import conv_out_size
from convgpu.reference import (adaptive_avg_pool2d, adaptive_avg_pool2d_backward, avg_pool2d,
                               avg_pool2d_backward, half_in_float64, max_pool2d,
                               max_pool2d_backward)


def _windows_nhwc(x, R, S, stride, padding, dilation, P, Q):
    """x (N, H, W, C) -> (N, P, Q, C, R, S) view of its zero-padded, dilated, strided
    windows: out[n, p, q, c, r, s] = x[n, p*sh - ph + r*dh, q*sw - pw + s*dw, c]."""
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    xp = np.pad(x, ((0, 0), (ph, ph), (pw, pw), (0, 0))) if ph or pw else x
    v = sliding_window_view(xp, (dh * (R - 1) + 1, dw * (S - 1) + 1), axis=(1, 2))
    return v[:, : (P - 1) * sh + 1: sh, : (Q - 1) * sw + 1: sw, :, ::dh, ::dw]


@half_in_float64
def conv2d_nhwc(x, w, b=None, stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1):
    """y[n, p, q, k] = b[k] + sum_{r, s, c} x[n, p*sh - ph + r*dh, q*sw - pw + s*dw, g*Cg + c]
    * w[k, r, s, c], g = k // (K/groups)."""
    N, H, W, C = x.shape
    K, R, S, Cg = w.shape
    G = groups
    P = conv_out_size(H, R, stride[0], padding[0], dilation[0])
    Q = conv_out_size(W, S, stride[1], padding[1], dilation[1])
    win = _windows_nhwc(x, R, S, stride, padding, dilation, P, Q).reshape(N, P, Q, G, Cg, R, S)
    y = np.einsum("npqgcrs,gkrsc->npqgk", win, w.reshape(G, K // G, R, S, Cg),
                  optimize=True).reshape(N, P, Q, K)
    if b is not None:
        y = y + b
    return np.ascontiguousarray(y, dtype=x.dtype)


@half_in_float64
def conv2d_backward_input_nhwc(gy, w, input_shape, stride=(1, 1), padding=(0, 0),
                               dilation=(1, 1), groups=1):
    """gx[n, h, w, g*Cg + c] = sum over (p, q, r, s) with h = p*sh - ph + r*dh (w alike) of
    sum_k gy[n, p, q, g*Kg + k] * w[g*Kg + k, r, s, c]: each tap (r, s) scattered onto the
    padded input's strided grid."""
    N, H, W, C = input_shape
    _, P, Q, K = gy.shape
    _, R, S, Cg = w.shape
    G, Kg = groups, K // groups
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    Hp = max(H + 2 * ph, (P - 1) * sh + dh * (R - 1) + 1)
    Wp = max(W + 2 * pw, (Q - 1) * sw + dw * (S - 1) + 1)
    out = np.zeros((N, Hp, Wp, G, Cg), np.result_type(gy, w))
    gyg = gy.reshape(N, P, Q, G, Kg)
    wg = w.reshape(G, Kg, R, S, Cg)
    for r in range(R):
        for s in range(S):
            h0, w0 = r * dh, s * dw
            out[:, h0: h0 + (P - 1) * sh + 1: sh, w0: w0 + (Q - 1) * sw + 1: sw] += \
                np.einsum("npqgk,gkc->npqgc", gyg, wg[:, :, r, s], optimize=True)
    gx = out[:, ph: ph + H, pw: pw + W].reshape(N, H, W, C)
    return np.ascontiguousarray(gx, dtype=gy.dtype)


@half_in_float64
def conv2d_backward_weight_nhwc(x, gy, weight_shape, stride=(1, 1), padding=(0, 0),
                                dilation=(1, 1), groups=1):
    """gw[k, r, s, c] = sum_{n, p, q} gy[n, p, q, k] * x[n, p*sh - ph + r*dh, q*sw - pw + s*dw,
    g*Cg + c]."""
    N, P, Q, K = gy.shape
    _, R, S, Cg = weight_shape
    G = groups
    win = _windows_nhwc(x, R, S, stride, padding, dilation, P, Q).reshape(N, P, Q, G, Cg, R, S)
    gw = np.einsum("npqgcrs,npqgk->gkrsc", win, gy.reshape(N, P, Q, G, K // G),
                   optimize=True).reshape(K, R, S, Cg)
    return np.ascontiguousarray(gw, dtype=gy.dtype)


@half_in_float64
def conv2d_backward_bias_nhwc(gy):
    return np.ascontiguousarray(gy.sum(axis=(0, 1, 2)), dtype=gy.dtype)


def _nchw(a):
    return np.ascontiguousarray(a.transpose(0, 3, 1, 2))


def _nhwc(a):
    return np.ascontiguousarray(a.transpose(0, 2, 3, 1))


def _nchw_shape(shape):
    n, h, w, c = shape
    return (n, c, h, w)


def max_pool2d_nhwc(x, kernel_size, stride, padding=(0, 0), dilation=(1, 1), ceil_mode=False):
    """(y, indices) in (N, P, Q, C); indices flat over the unpadded plane (h*W + w), as torch
    gives them for a channels_last input."""
    y, idx = max_pool2d(_nchw(x), kernel_size, stride, padding, dilation, ceil_mode)
    return _nhwc(y), _nhwc(idx)


def max_pool2d_backward_nhwc(gy, indices, input_shape):
    return _nhwc(max_pool2d_backward(_nchw(gy), _nchw(indices), _nchw_shape(input_shape)))


def avg_pool2d_nhwc(x, kernel_size, stride, padding=(0, 0), ceil_mode=False,
                    count_include_pad=True, divisor_override=None):
    return _nhwc(avg_pool2d(_nchw(x), kernel_size, stride, padding, ceil_mode,
                            count_include_pad, divisor_override))


def avg_pool2d_backward_nhwc(gy, input_shape, kernel_size, stride, padding=(0, 0),
                             ceil_mode=False, count_include_pad=True, divisor_override=None):
    return _nhwc(avg_pool2d_backward(_nchw(gy), _nchw_shape(input_shape), kernel_size, stride,
                                     padding, ceil_mode, count_include_pad, divisor_override))


def global_avg_pool2d_nhwc(x):
    return np.ascontiguousarray(x.mean(axis=(1, 2), dtype=np.float64), dtype=x.dtype)


def global_avg_pool2d_backward_nhwc(gy, input_shape):
    N, H, W, C = input_shape
    g = gy.astype(np.float64) / (H * W)
    return np.ascontiguousarray(np.broadcast_to(g[:, None, None, :], (N, H, W, C)),
                                dtype=gy.dtype)


def adaptive_avg_pool2d_nhwc(x, output_size):
    return _nhwc(adaptive_avg_pool2d(_nchw(x), output_size))


def adaptive_avg_pool2d_backward_nhwc(gy, input_shape):
    return _nhwc(adaptive_avg_pool2d_backward(_nchw(gy), _nchw_shape(input_shape)))
