"""The NumPy reference of every op: the oracle every kernel is validated against.

Readable first, vectorised second: convolution is im2col through
``sliding_window_view`` and a matrix product per group; a second path computes the
forward convolution by FFT (``numpy.fft``) so the two can check each other. Every
function takes C-contiguous float NumPy arrays in NCHW (NHWC: convgpu.reference_nhwc), with
stride, padding and dilation as (h, w) pairs already validated by ``convgpu.core.args``, and
returns arrays of the input's dtype. Semantics are torch's throughout.

Half-precision inputs (float16, bfloat16) are computed in float64 from their exact values
and rounded once to the half type: the result the half kernels' tolerances are measured
from (docs/tolerances.md). Batch norm's statistics and parameter gradients come back in
the parameters' dtype (float32 in torch's mixed form).
"""
from __future__ import annotations

import functools

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

# the size formulas live in one place, the argument layer
from convgpu.core.args import HALF_DTYPES, conv_out_size, conv_transpose_out_size, pool_out_size


def _is_half_array(a) -> bool:
    return isinstance(a, np.ndarray) and a.dtype in HALF_DTYPES


def _rounded(out, dtype):
    """Float results rounded once to the half type; indices and None as they are."""
    if isinstance(out, tuple):
        return tuple(_rounded(o, dtype) for o in out)
    if isinstance(out, np.ndarray) and out.dtype.kind == "f":      # a 0-d loss stays 0-d
        return out.astype(dtype) if out.ndim == 0 else np.ascontiguousarray(out, dtype=dtype)
    return out


def half_in_float64(fn):
    """Runs `fn` in float64 on half-precision arguments and rounds its float results once
    to that half type (the first half argument's); other calls go straight through."""
    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        half = next((a.dtype for a in (*args, *kwargs.values()) if _is_half_array(a)), None)
        if half is None:
            return fn(*args, **kwargs)
        wide = lambda a: a.astype(np.float64) if _is_half_array(a) else a  # noqa: E731
        out = fn(*map(wide, args), **{k: wide(v) for k, v in kwargs.items()})
        return _rounded(out, half)
    return wrapped


# ----------------------------------------------------------------------------------------
# helpers


def _windows(xp, kh, kw, stride, dilation, P, Q):
    """(N, C, Hp, Wp) padded input -> (N, C, P, Q, kh, kw) view of the dilated, strided
    windows: out[n, c, p, q, r, s] = xp[n, c, p*sh + r*dh, q*sw + s*dw]."""
    (sh, sw), (dh, dw) = stride, dilation
    span_h, span_w = dh * (kh - 1) + 1, dw * (kw - 1) + 1
    v = sliding_window_view(xp, (span_h, span_w), axis=(2, 3))
    return v[:, :, : (P - 1) * sh + 1: sh, : (Q - 1) * sw + 1: sw, ::dh, ::dw]


def _pad(x, padding, value=0.0, extra=(0, 0)):
    (ph, pw), (eh, ew) = padding, extra
    if ph == pw == eh == ew == 0:
        return x
    return np.pad(x, ((0, 0), (0, 0), (ph, ph + eh), (pw, pw + ew)), constant_values=value)


def _im2col(x, R, S, stride, padding, dilation, groups):
    """x (N, C, H, W) -> columns (G, N*P*Q, C/G*R*S) and (P, Q)."""
    N, C, H, W = x.shape
    P = conv_out_size(H, R, stride[0], padding[0], dilation[0])
    Q = conv_out_size(W, S, stride[1], padding[1], dilation[1])
    win = _windows(_pad(x, padding), R, S, stride, dilation, P, Q)     # N C P Q R S
    win = win.reshape(N, groups, C // groups, P, Q, R, S)
    cols = win.transpose(1, 0, 3, 4, 2, 5, 6).reshape(groups, N * P * Q, (C // groups) * R * S)
    return cols, P, Q


def _col2im(cols, x_shape, R, S, P, Q, stride, padding, dilation):
    """The adjoint of the window view: cols (N, C, R, S, P, Q) -> (N, C, H, W), each input
    element receiving the sum of the column entries that read it."""
    N, C, H, W = x_shape
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    Hp = max(H + 2 * ph, (P - 1) * sh + dh * (R - 1) + 1)
    Wp = max(W + 2 * pw, (Q - 1) * sw + dw * (S - 1) + 1)
    out = np.zeros((N, C, Hp, Wp), dtype=cols.dtype)
    for r in range(R):
        for s in range(S):
            h0, w0 = r * dh, s * dw
            out[:, :, h0: h0 + (P - 1) * sh + 1: sh, w0: w0 + (Q - 1) * sw + 1: sw] += cols[:, :, r, s]
    return out[:, :, ph: ph + H, pw: pw + W]


# ----------------------------------------------------------------------------------------
# convolution


@half_in_float64
def conv2d(x, w, b=None, stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1):
    """y[n, k, p, q] = b[k] + sum_{c, r, s} x[n, g*Cg + c, p*sh - ph + r*dh, q*sw - pw + s*dw]
    * w[k, c, r, s], g = k // (K/groups): cross-correlation, as torch."""
    N = x.shape[0]
    K, Cg, R, S = w.shape
    cols, P, Q = _im2col(x, R, S, stride, padding, dilation, groups)     # G, NPQ, CgRS
    wg = w.reshape(groups, K // groups, Cg * R * S)
    y = np.matmul(cols, wg.transpose(0, 2, 1))                           # G, NPQ, Kg
    y = y.reshape(groups, N, P, Q, K // groups).transpose(1, 0, 4, 2, 3).reshape(N, K, P, Q)
    if b is not None:
        y = y + b.reshape(1, K, 1, 1)
    return np.ascontiguousarray(y, dtype=x.dtype)


@half_in_float64
def conv2d_fft(x, w, b=None, stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1):
    """The same convolution through numpy.fft: a second, independent reference path.
    The dilated kernel is zero-stuffed, the full correlation is taken at stride 1 by
    multiplying transforms over channels, then cropped and subsampled."""
    N, C, H, W = x.shape
    K, Cg, R, S = w.shape
    (sh, sw), (dh, dw) = stride, dilation
    P = conv_out_size(H, R, sh, padding[0], dh)
    Q = conv_out_size(W, S, sw, padding[1], dw)
    Re, Se = dh * (R - 1) + 1, dw * (S - 1) + 1
    wd = np.zeros((K, Cg, Re, Se), dtype=np.float64)
    wd[:, :, ::dh, ::dw] = w
    xp = _pad(x, padding).astype(np.float64)
    Hp, Wp = xp.shape[2:]
    fh, fw = Hp + Re - 1, Wp + Se - 1
    X = np.fft.rfft2(xp, s=(fh, fw))                                     # N C fh fw'
    # correlation = convolution with the flipped kernel
    Wf = np.fft.rfft2(wd[:, :, ::-1, ::-1], s=(fh, fw))                  # K Cg fh fw'
    Kg = K // groups
    Y = np.empty((N, K) + X.shape[2:], dtype=np.complex128)
    for g in range(groups):
        Xg = X[:, g * Cg:(g + 1) * Cg]
        Wg = Wf[g * Kg:(g + 1) * Kg]
        Y[:, g * Kg:(g + 1) * Kg] = np.einsum("ncij,kcij->nkij", Xg, Wg)
    full = np.fft.irfft2(Y, s=(fh, fw))
    # valid part starts at (Re-1, Se-1)
    y = full[:, :, Re - 1: Re - 1 + (P - 1) * sh + 1: sh, Se - 1: Se - 1 + (Q - 1) * sw + 1: sw]
    if b is not None:
        y = y + b.reshape(1, K, 1, 1)
    return np.ascontiguousarray(y, dtype=x.dtype)


@half_in_float64
def conv2d_backward_input(gy, w, input_shape, stride=(1, 1), padding=(0, 0), dilation=(1, 1),
                          groups=1):
    """gx = col2im(w^T gy): each input element sums w * gy over the outputs whose windows
    touch it. (The same thing as the lecture notes' inverted filter: a full correlation with
    the 180-degree-rotated filter; the tests check both.)"""
    N, K, P, Q = gy.shape
    _, Cg, R, S = w.shape
    G, Kg = groups, K // groups
    wT = w.reshape(G, Kg, Cg * R * S).transpose(0, 2, 1)                 # G, CgRS, Kg
    cols = np.matmul(wT[None], gy.reshape(N, G, Kg, P * Q))             # N, G, CgRS, PQ
    cols = cols.reshape(N, G * Cg, R, S, P, Q)
    gx = _col2im(cols, input_shape, R, S, P, Q, stride, padding, dilation)
    return np.ascontiguousarray(gx, dtype=gy.dtype)


@half_in_float64
def conv2d_backward_weight(x, gy, weight_shape, stride=(1, 1), padding=(0, 0), dilation=(1, 1),
                           groups=1):
    """gw[k, c, r, s] = sum_{n, p, q} gy[n, k, p, q] * x[n, g*Cg + c, p*sh - ph + r*dh, ...]."""
    N, K, P, Q = gy.shape
    _, Cg, R, S = weight_shape
    cols, P2, Q2 = _im2col(x, R, S, stride, padding, dilation, groups)  # G, NPQ, CgRS
    Kg = K // groups
    gyg = gy.reshape(N, groups, Kg, P * Q).transpose(1, 2, 0, 3).reshape(groups, Kg, N * P * Q)
    gw = np.matmul(gyg, cols).reshape(K, Cg, R, S)
    return np.ascontiguousarray(gw, dtype=gy.dtype)


@half_in_float64
def conv2d_backward_bias(gy):
    return np.ascontiguousarray(gy.sum(axis=(0, 2, 3)), dtype=gy.dtype)


@half_in_float64
def conv_transpose2d(x, w, b=None, stride=(1, 1), padding=(0, 0), output_padding=(0, 0),
                     groups=1, dilation=(1, 1)):
    """The adjoint of conv2d: x (N, Cin, H, W), w (Cin, Cout/groups, R, S)."""
    N, Cin, H, W = x.shape
    _, Coutg, R, S = w.shape
    Ho = conv_transpose_out_size(H, R, stride[0], padding[0], dilation[0], output_padding[0])
    Wo = conv_transpose_out_size(W, S, stride[1], padding[1], dilation[1], output_padding[1])
    y = conv2d_backward_input(x, w, (N, Coutg * groups, Ho, Wo), stride, padding, dilation, groups)
    if b is not None:
        y = y + b.reshape(1, -1, 1, 1)
    return np.ascontiguousarray(y, dtype=x.dtype)


# ----------------------------------------------------------------------------------------
# pooling


def _pool_extra(H, P, k, s, p, d):
    """Right/bottom padding beyond `p` that ceil_mode windows reach."""
    return max(0, (P - 1) * s + d * (k - 1) + 1 - (H + 2 * p))


@half_in_float64
def max_pool2d(x, kernel_size, stride, padding=(0, 0), dilation=(1, 1), ceil_mode=False):
    """Returns (y, indices): -inf padding, int64 indices flat over the unpadded input plane
    (h*W + w), the first maximum in window order wins a tie, NaN propagates with its index."""
    N, C, H, W = x.shape
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel_size, stride, padding, dilation
    P = pool_out_size(H, kh, sh, ph, dh, ceil_mode)
    Q = pool_out_size(W, kw, sw, pw, dw, ceil_mode)
    extra = (_pool_extra(H, P, kh, sh, ph, dh), _pool_extra(W, Q, kw, sw, pw, dw))
    win = _windows(_pad(x, padding, -np.inf, extra), kh, kw, stride, dilation, P, Q)
    flat = win.reshape(N, C, P, Q, kh * kw)
    arg = np.argmax(flat, axis=-1)          # first maximum; NaN counts as the maximum
    y = np.take_along_axis(flat, arg[..., None], axis=-1)[..., 0]
    # a window whose maximum is -inf must point at its first element inside the input,
    # not at the -inf padding
    if np.isneginf(y).any():
        valid = _windows(_pad(np.ones((1, 1, H, W), bool), padding, False, extra), kh, kw,
                         stride, dilation, P, Q).reshape(1, 1, P, Q, kh * kw)
        arg = np.where(y == -np.inf, np.argmax(valid, axis=-1), arg)
    r, s = np.divmod(arg, kw)
    h = np.arange(P).reshape(P, 1) * sh - ph + r * dh
    w = np.arange(Q).reshape(1, Q) * sw - pw + s * dw
    idx = (h * W + w).astype(np.int64)
    return np.ascontiguousarray(y, dtype=x.dtype), idx


@half_in_float64
def max_pool2d_backward(gy, indices, input_shape):
    """gx[n, c].flat[indices[n, c, p, q]] += gy[n, c, p, q], summed in a fixed order."""
    N, C, H, W = input_shape
    plane = H * W
    base = (np.arange(N * C, dtype=np.int64) * plane).reshape(N, C, 1, 1)
    gx = np.bincount((indices + base).ravel(), weights=gy.ravel().astype(np.float64),
                     minlength=N * C * plane)
    return gx.reshape(N, C, H, W).astype(gy.dtype)


def _avg_divisors(H, P, k, s, p):
    """Per-axis window sizes for avg pooling: (counted with padding, counted without)."""
    start = np.arange(P) * s - p
    end = np.minimum(start + k, H + p)
    incl = end - start
    excl = np.minimum(end, H) - np.maximum(start, 0)
    return incl, excl


def _avg_divisor(H, W, P, Q, kernel_size, stride, padding, count_include_pad, divisor_override):
    if divisor_override is not None:
        return np.full((P, Q), float(divisor_override))
    ih, eh = _avg_divisors(H, P, kernel_size[0], stride[0], padding[0])
    iw, ew = _avg_divisors(W, Q, kernel_size[1], stride[1], padding[1])
    if count_include_pad:
        return np.outer(ih, iw).astype(np.float64)
    return np.outer(eh, ew).astype(np.float64)


@half_in_float64
def avg_pool2d(x, kernel_size, stride, padding=(0, 0), ceil_mode=False, count_include_pad=True,
               divisor_override=None):
    N, C, H, W = x.shape
    (kh, kw), (sh, sw), (ph, pw) = kernel_size, stride, padding
    P = pool_out_size(H, kh, sh, ph, 1, ceil_mode)
    Q = pool_out_size(W, kw, sw, pw, 1, ceil_mode)
    extra = (_pool_extra(H, P, kh, sh, ph, 1), _pool_extra(W, Q, kw, sw, pw, 1))
    win = _windows(_pad(x, padding, 0.0, extra), kh, kw, stride, (1, 1), P, Q)
    div = _avg_divisor(H, W, P, Q, kernel_size, stride, padding, count_include_pad,
                       divisor_override)
    y = win.sum(axis=(-2, -1), dtype=np.float64) / div
    return np.ascontiguousarray(y, dtype=x.dtype)


@half_in_float64
def avg_pool2d_backward(gy, input_shape, kernel_size, stride, padding=(0, 0), ceil_mode=False,
                        count_include_pad=True, divisor_override=None):
    N, C, H, W = input_shape
    (kh, kw) = kernel_size
    P, Q = gy.shape[2:]
    div = _avg_divisor(H, W, P, Q, kernel_size, stride, padding, count_include_pad,
                       divisor_override)
    g = gy.astype(np.float64) / div
    cols = np.broadcast_to(g[:, :, None, None], (N, C, kh, kw, P, Q))
    gx = _col2im(cols, input_shape, kh, kw, P, Q, stride, padding, (1, 1))
    return np.ascontiguousarray(gx, dtype=gy.dtype)


@half_in_float64
def global_avg_pool2d(x):
    N, C, H, W = x.shape
    return np.ascontiguousarray(x.mean(axis=(2, 3), dtype=np.float64), dtype=x.dtype)


@half_in_float64
def global_avg_pool2d_backward(gy, input_shape):
    N, C, H, W = input_shape
    g = gy.astype(np.float64) / (H * W)
    return np.ascontiguousarray(np.broadcast_to(g[:, :, None, None], (N, C, H, W)), dtype=gy.dtype)


def adaptive_windows(size, out):
    """torch's adaptive pooling windows along one axis: output i averages
    [floor(i * size / out), ceil((i + 1) * size / out)), so the windows cover the axis,
    neighbours overlapping where out does not divide size."""
    i = np.arange(out)
    return (i * size) // out, -((-(i + 1) * size) // out)


@half_in_float64
def adaptive_avg_pool2d(x, output_size):
    N, C, H, W = x.shape
    P, Q = output_size
    (h0, h1), (w0, w1) = adaptive_windows(H, P), adaptive_windows(W, Q)
    y = np.empty((N, C, P, Q))
    for p in range(P):
        for q in range(Q):
            y[:, :, p, q] = x[:, :, h0[p]:h1[p], w0[q]:w1[q]].mean(axis=(2, 3), dtype=np.float64)
    return np.ascontiguousarray(y, dtype=x.dtype)


@half_in_float64
def adaptive_avg_pool2d_backward(gy, input_shape):
    """Each output's gradient spread evenly over its window (windows may overlap: sums)."""
    N, C, H, W = input_shape
    P, Q = gy.shape[2:]
    (h0, h1), (w0, w1) = adaptive_windows(H, P), adaptive_windows(W, Q)
    gx = np.zeros((N, C, H, W))
    for p in range(P):
        for q in range(Q):
            area = (h1[p] - h0[p]) * (w1[q] - w0[q])
            gx[:, :, h0[p]:h1[p], w0[q]:w1[q]] += gy[:, :, p, q, None, None] / area
    return np.ascontiguousarray(gx, dtype=gy.dtype)


# ----------------------------------------------------------------------------------------
# small ops


@half_in_float64
def relu(x):
    return np.where(x > 0, x, np.where(np.isnan(x), x, 0)).astype(x.dtype)


@half_in_float64
def relu_backward(gy, x):
    return np.where(x > 0, gy, 0).astype(gy.dtype)


@half_in_float64
def bias_add(x, b):
    shape = (1, -1) + (1,) * (x.ndim - 2)
    return np.ascontiguousarray(x + b.reshape(shape), dtype=x.dtype)


@half_in_float64
def linear(x, w, b=None):
    y = x @ w.T
    if b is not None:
        y = y + b
    return np.ascontiguousarray(y, dtype=x.dtype)


@half_in_float64
def linear_backward(gy, x, w):
    """Returns (gx, gw, gb) for y = x w^T + b with x (*, in)."""
    g2 = gy.reshape(-1, gy.shape[-1])
    x2 = x.reshape(-1, x.shape[-1])
    gx = (g2 @ w).reshape(x.shape)
    gw = g2.T @ x2
    gb = g2.sum(axis=0)
    return (np.ascontiguousarray(gx, dtype=gy.dtype), np.ascontiguousarray(gw, dtype=gy.dtype),
            np.ascontiguousarray(gb, dtype=gy.dtype))


def _log_softmax(z):
    xp = _array_module(z)
    m = z.max(axis=1, keepdims=True)
    s = z - m
    return s - xp.log(xp.exp(s).sum(axis=1, keepdims=True))


def _array_module(a):
    """numpy, or cupy for a CuPy array: the cross-entropy below also serves, unchanged, the
    options the device's row kernels decline (ops/loss.py)."""
    if isinstance(a, np.ndarray):
        return np
    import cupy
    return cupy


def _xent_terms(logits, labels, weight, ignore_index, reduction):
    """log softmax in float64, the labels with ignored rows set to class 0, the per-class
    weights, each row's nll weight (0 where ignored) and keep mask, and the normaliser of
    the mean (torch: the sum of the kept rows' weights, for both terms)."""
    xp = _array_module(logits)
    n, c = logits.shape
    lp = _log_softmax(logits.astype(np.float64))
    keep = labels != ignore_index
    t = xp.where(keep, labels, 0)
    wc = xp.ones(c) if weight is None else weight.astype(np.float64)
    wt = wc[t] * keep
    norm = wt.sum() if reduction == "mean" else 1.0
    return xp, lp, t, wc, wt, keep, norm


def _soft_terms(logits, target, weight, reduction, label_smoothing):
    """For class-probability targets: log softmax in float64, the smoothed target
    (1 - eps) q + eps / C, the per-class weights and the mean's normaliser (torch: the row
    count, whatever the weights)."""
    xp = _array_module(logits)
    n, c = logits.shape
    lp = _log_softmax(logits.astype(np.float64))
    q = target.astype(np.float64)
    if label_smoothing:
        q = (1 - label_smoothing) * q + label_smoothing / c
    wc = xp.ones(c) if weight is None else weight.astype(np.float64)
    norm = n if reduction == "mean" else 1.0
    return xp, lp, q, wc, norm


def _is_soft(labels):
    return labels.dtype.kind == "f"


@half_in_float64
def softmax_cross_entropy(logits, labels, weight=None, ignore_index=-100, reduction="mean",
                          label_smoothing=0.0):
    """F.cross_entropy of (N, C) logits and class-index labels: row i's loss is
    (1 - eps) w[y_i] (-log p[i, y_i]) + eps / C sum_c w[c] (-log p[i, c]), zero where
    y_i == ignore_index; "mean" divides by the kept rows' summed w[y_i] (their count when
    unweighted; NaN when every row is ignored, as torch), "sum" adds, "none" returns the
    rows. Float labels of the logits' shape are class probabilities q: row i's loss is
    -sum_c w[c] q'[i, c] log p[i, c] with q' = (1 - eps) q + eps / C, ignore_index does not
    apply and "mean" divides by N."""
    n, c = logits.shape
    if _is_soft(labels):
        xp, lp, q, wc, norm = _soft_terms(logits, labels, weight, reduction, label_smoothing)
        rows = -(lp * q * wc[None, :]).sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            if reduction != "none":
                rows = rows.sum() / norm
        return xp.asarray(rows, dtype=logits.dtype)
    xp, lp, t, wc, wt, keep, norm = _xent_terms(logits, labels, weight, ignore_index,
                                                reduction)
    rows = -lp[xp.arange(n), t] * wt
    with np.errstate(invalid="ignore", divide="ignore"):        # every row ignored: NaN
        if reduction != "none":
            rows = rows.sum() / norm
        if label_smoothing:
            smooth = -(lp * wc).sum(axis=1) * keep
            if reduction != "none":
                smooth = smooth.sum() / norm
            rows = (1 - label_smoothing) * rows + label_smoothing / c * smooth
    return xp.asarray(rows, dtype=logits.dtype)


@half_in_float64
def softmax_cross_entropy_backward(logits, labels, weight=None, ignore_index=-100,
                                   reduction="mean", label_smoothing=0.0, grad_output=None):
    """d loss / d logits, times grad_output (a scalar, or per row for reduction="none"):
    row i gets (1 - eps) a_i (p_i - onehot(y_i)) + eps / C b_i (sum(w) p_i - w), with
    a_i = w[y_i] and b_i = 1 on kept rows (0 on ignored ones) over the normalisers. For
    class probabilities q: row i gets (sum_c w[c] q'[i, c]) p_i - w q'_i over the
    normaliser."""
    n, c = logits.shape
    if _is_soft(labels):
        xp, lp, q, wc, norm = _soft_terms(logits, labels, weight, reduction, label_smoothing)
        wq = q * wc[None, :]
        scale = xp.full(n, 1.0 / norm)
        if grad_output is not None:
            scale = scale * grad_output.astype(np.float64)
        grad = scale[:, None] * (wq.sum(axis=1)[:, None] * xp.exp(lp) - wq)
        return xp.ascontiguousarray(grad, dtype=logits.dtype)
    xp, lp, t, wc, wt, keep, norm = _xent_terms(logits, labels, weight, ignore_index,
                                                reduction)
    p = xp.exp(lp)
    with np.errstate(invalid="ignore", divide="ignore"):
        a = (1 - label_smoothing) * wt / norm
        b = label_smoothing / c * keep / norm
    if grad_output is not None:
        g = grad_output.astype(np.float64)
        a, b = a * g, b * g
    grad = a[:, None] * p
    grad[xp.arange(n), t] -= a
    if label_smoothing:
        grad += b[:, None] * (wc.sum() * p - wc[None, :])
    return xp.ascontiguousarray(grad, dtype=logits.dtype)


@half_in_float64
def softmax_cross_entropy_target_backward(logits, target, weight=None, reduction="mean",
                                          label_smoothing=0.0, grad_output=None):
    """d loss / d target for class-probability targets, times grad_output: row i gets
    -(1 - eps) w log p_i over the normaliser."""
    n, c = logits.shape
    xp, lp, _, wc, norm = _soft_terms(logits, target, weight, reduction, label_smoothing)
    scale = xp.full(n, -(1 - label_smoothing) / norm)
    if grad_output is not None:
        scale = scale * grad_output.astype(np.float64)
    grad = scale[:, None] * wc[None, :] * lp
    return xp.ascontiguousarray(grad, dtype=target.dtype)


@half_in_float64
def softmax_cross_entropy_weight_backward(logits, target, weight, reduction="mean",
                                          label_smoothing=0.0, grad_output=None):
    """d loss / d weight for class-probability targets, times grad_output: class c gets
    -sum_i q'[i, c] log p[i, c] over the normaliser."""
    n, c = logits.shape
    xp, lp, q, _, norm = _soft_terms(logits, target, weight, reduction, label_smoothing)
    scale = xp.full(n, -1.0 / norm)
    if grad_output is not None:
        scale = scale * grad_output.astype(np.float64)
    return xp.ascontiguousarray((scale[:, None] * q * lp).sum(axis=0), dtype=weight.dtype)


# ----------------------------------------------------------------------------------------
# optimiser steps (the new values; the ops write them in place)


@half_in_float64
def adam_step(param, grad, exp_avg, exp_avg_sq, step, lr, beta1, beta2, eps, weight_decay):
    """One Adam step (Kingma & Ba, bias-corrected; L2 weight decay added to the gradient, as
    torch.optim.Adam): returns the new (param, exp_avg, exp_avg_sq)."""
    g = grad + weight_decay * param if weight_decay else grad
    m = beta1 * exp_avg + (1 - beta1) * g
    v = beta2 * exp_avg_sq + (1 - beta2) * g * g
    mhat = m / (1 - beta1 ** step)
    vhat = v / (1 - beta2 ** step)
    return param - lr * mhat / (np.sqrt(vhat) + eps), m, v


@half_in_float64
def sgd_step(param, grad, momentum_buffer, lr, momentum, weight_decay):
    """One SGD step in torch's form (g += wd * p; buf = momentum * buf + g; p -= lr * buf,
    the buffer zero before the first step, so it starts as g): returns the new (param,
    momentum_buffer); without momentum the buffer is None."""
    g = grad + weight_decay * param if weight_decay else grad
    if momentum:
        momentum_buffer = momentum * momentum_buffer + g
        g = momentum_buffer
    return param - lr * g, momentum_buffer


# ----------------------------------------------------------------------------------------
# batch normalisation (input (N, C, *): statistics per channel over N and the trailing axes)


def _channels(x):
    return x.reshape(x.shape[0], x.shape[1], -1).astype(np.float64)


def batch_norm_stats(x, eps, dtype=None):
    """The batch's per-channel mean and 1 / sqrt(var + eps), var the biased variance (as
    torch's training forward); also the unbiased variance, for the running estimate. In
    `dtype` (the parameters'; None: the input's)."""
    dtype = x.dtype if dtype is None else dtype
    x3 = _channels(x)
    m = x3.shape[0] * x3.shape[2]
    mean = x3.mean(axis=(0, 2))
    var = ((x3 - mean[None, :, None]) ** 2).sum(axis=(0, 2)) / m
    invstd = 1.0 / np.sqrt(var + eps)
    return mean.astype(dtype), invstd.astype(dtype), (var * m / max(m - 1, 1)).astype(dtype)


def batch_norm(x, mean, invstd, weight=None, bias=None):
    """y = (x - mean[c]) * invstd[c] * weight[c] + bias[c] (weight 1 and bias 0 if None)."""
    C = x.shape[1]
    w = np.ones(C) if weight is None else weight.astype(np.float64)
    b = np.zeros(C) if bias is None else bias.astype(np.float64)
    col = lambda v: v.astype(np.float64)[None, :, None]  # noqa: E731
    y = (_channels(x) - col(mean)) * col(invstd) * col(w) + col(b)
    return np.ascontiguousarray(y.reshape(x.shape), dtype=x.dtype)


def batch_norm_backward(gy, x, mean, invstd, weight=None, training=True):
    """(gx, gw, gb) of y = (x - mean) * invstd * w + b. In training mean and invstd are the
    batch's own, so they depend on x: gx = w invstd (gy - gb / M - xhat gw / M), with
    xhat = (x - mean) invstd, M = N * (the trailing sizes); in evaluation they are constants
    (the running estimates): gx = w invstd gy. gw = sum gy xhat, gb = sum gy over N and the
    trailing axes. gx in gy's dtype, gw and gb in the statistics' (mean's)."""
    g3, x3 = _channels(gy), _channels(x)
    m = x3.shape[0] * x3.shape[2]
    inv = invstd.astype(np.float64)[None, :, None]
    xhat = (x3 - mean.astype(np.float64)[None, :, None]) * inv
    gb = g3.sum(axis=(0, 2))
    gw = (g3 * xhat).sum(axis=(0, 2))
    w = (np.ones(x3.shape[1]) if weight is None else weight.astype(np.float64))[None, :, None]
    if training:
        gx = w * inv * (g3 - gb[None, :, None] / m - xhat * gw[None, :, None] / m)
    else:
        gx = w * inv * g3
    cast = lambda a, shape, t: np.ascontiguousarray(a.reshape(shape), dtype=t)  # noqa: E731
    return (cast(gx, x.shape, gy.dtype), cast(gw, gw.shape, mean.dtype),
            cast(gb, gb.shape, mean.dtype))
