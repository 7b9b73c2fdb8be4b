"""Shared test helpers: random non-zero inputs, relative error, error bounds, gradient
checks."""
import os

import numpy as np
import pytest

from convgpu import bounds

# Tolerances of the design: ||out - ref|| / ||ref|| against the float64 reference.
TOL = {np.float32: 1e-5, np.float64: 1e-12}
TOL_FFT = {np.float32: 1e-4, np.float64: 1e-10}


def rand(rng, shape, dtype=np.float64):
    """Uniform in +-[0.5, 1.5]: random, never zero, mixed signs."""
    mag = rng.uniform(0.5, 1.5, size=shape)
    sign = rng.choice([-1.0, 1.0], size=shape)
    return (mag * sign).astype(dtype)


def shuffled_linspace(rng, shape, dtype=np.float64):
    """Distinct values in random order: no ties, so argmax and finite differences are stable."""
    n = int(np.prod(shape))
    v = np.linspace(-1.0, 1.0, n) + 0.01
    return rng.permutation(v).reshape(shape).astype(dtype)


def tf32_round(a):
    """float32 rounded to TF32 (10 mantissa bits) to nearest, ties away from zero, as
    cvt.rna (finite inputs): what the tensor-core GEMMs multiply."""
    u = np.asarray(a, np.float32).view(np.uint32)
    return ((u + np.uint32(0x1000)) & np.uint32(0xffffe000)).view(np.float32)


def tf32_rounding_operands(rng, n):
    """An n x n float32 matrix whose values sit on, just below and just above the halfway
    points between TF32 neighbours (low 13 mantissa bits 0x1000, 0x0fff, 0x1001), and random
    others; mixed signs and binades."""
    u = rng.uniform(0.5, 1.5, (n, n)).astype(np.float32).view(np.uint32) & np.uint32(0xffffe000)
    low = rng.choice(np.array([0x1000, 0x0fff, 0x1001, 0x1fff, 0x0001], np.uint32), (n, n))
    v = (u | low).view(np.float32) * rng.choice(np.float32([-4, -1, 0.25, 1, 64]), (n, n))
    return v.astype(np.float32)


def relerr(out, ref):
    out = np.asarray(out, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    assert out.shape == ref.shape, (out.shape, ref.shape)
    assert np.all(np.isfinite(out)), "non-finite values in output (unwritten element?)"
    den = np.linalg.norm(ref)
    return np.linalg.norm(out - ref) / (den if den > 0 else 1.0)


def assert_close(out, ref, tol):
    e = relerr(out, ref)
    assert e <= tol, f"relative error {e:.3e} > {tol:.1e}"


def assert_conv_close(out, ref, op, algo, dtype, a, b, shape=None, bias=None, **conv_kw):
    """A convolution's output against the float64 reference, by both checks of
    docs/tolerances.md: norm-wise, ||out - ref|| / ||sum |a||b| || <= the design's tolerance
    for (algo, dtype); element-wise, |out - ref| <= c u (sum over the reduction of |a||b|
    + |bias|), c derived for the algorithm's family and reduction length (convgpu.bounds).
    op: conv2d (a = x, b = w), conv2d_backward_input (a = gy, b = w, shape = x's shape) or
    conv2d_backward_weight (a = x, b = gy, shape = w's shape); a, b, bias the float64 values
    the reference was computed on."""
    out = np.asarray(out)
    assert out.shape == np.shape(ref), (out.shape, np.shape(ref))
    assert np.all(np.isfinite(out)), "non-finite values in output (unwritten element?)"
    norm, elem = bounds.conv_errors(out, ref, op, algo, dtype, a, b, shape, conv_kw, bias)
    tol = bounds.tolerance(algo, dtype)
    assert norm <= tol, f"{op} {algo}: norm-wise error {norm:.3e} > {tol:.1e}"
    assert elem <= 1, (f"{op} {algo}: an element's error is {elem:.3g} times its bound "
                       "(docs/tolerances.md)")


def assert_bounded(out, ref, mag, n, algo, dtype):
    """The same for a GEMM-shaped result: mag = the reference on absolute values (sum over
    the reduction of |a||b|, + |bias|), n the reduction length."""
    out = np.asarray(out)
    assert out.shape == np.shape(ref), (out.shape, np.shape(ref))
    assert np.all(np.isfinite(out)), "non-finite values in output (unwritten element?)"
    norm, elem = bounds.gemm_errors(out, np.asarray(ref, np.float64), mag, n, algo, dtype)
    tol = bounds.tolerance(algo, dtype)
    assert norm <= tol, f"{algo}: norm-wise error {norm:.3e} > {tol:.1e}"
    assert elem <= 1, f"{algo}: an element's error is {elem:.3g} times its bound"


def directional_fd(f, x, v, eps=1e-6):
    """Central difference of scalar f at x along v (float64)."""
    return (f(x + eps * v) - f(x - eps * v)) / (2 * eps)


def grad_check(f, grad, x, rng, tol=1e-7):
    """Checks <grad, v> against the central difference of f along a random direction v."""
    v = rng.standard_normal(x.shape)
    fd = directional_fd(f, x, v)
    an = float(np.sum(grad * v))
    assert abs(fd - an) <= tol * max(1.0, abs(fd)), f"fd {fd!r} vs analytic {an!r}"


# Small problems shared by the simulator and host-emulation tiers (a few blocks per launch).
# conv: (N, C, H, W, K, R, S, stride, padding, dilation, groups); K*Cg*R*S <= 48 (one block
# per weight element in the Numba direct weight-gradient kernel)
CONV_SMALL = [
    (1, 2, 5, 6, 3, 3, 2, (1, 1), (1, 0), (1, 1), 1),
    (2, 4, 6, 5, 4, 2, 3, (2, 1), (1, 1), (2, 1), 2),
    (1, 3, 7, 7, 3, 3, 3, (2, 2), (1, 1), (1, 1), 3),
    (1, 2, 9, 4, 2, 1, 1, (1, 2), (0, 0), (1, 1), 1),
    (2, 1, 6, 7, 2, 2, 2, (3, 2), (1, 0), (1, 3), 1),
]
# the CUDA C kernels' tile edges, beside the small cases (host emulation and numpy)
CONV_TILES = CONV_SMALL + [
    # two tile rows (K > 128), three tile columns, a reduction split in two (split-K);
    # the direct kernel takes its 40 channels in three chunks
    (2, 40, 12, 12, 130, 3, 3, (1, 1), (1, 1), (1, 1), 1),
    # several 8 x 32 pixel tiles of the direct kernel, depthwise
    (1, 3, 20, 70, 3, 3, 3, (1, 1), (1, 1), (1, 1), 3),
    # 3x3 at stride 1: Winograd, odd output sizes (partial 2x2 tiles), no padding, groups
    (2, 6, 9, 8, 4, 3, 3, (1, 1), (0, 0), (1, 1), 2),
]
# The depthwise kernels serve groups = C only: a grouped case they must decline, then
# depthwise geometries (several 8 x 32 tiles and partial ones; multipliers 2 and 3; stride
# 2; dilated, non-square; 7x7).
DEPTHWISE = [CONV_SMALL[1], CONV_TILES[-2],
             (1, 4, 10, 9, 8, 3, 3, (2, 2), (1, 1), (1, 1), 4),
             (2, 2, 19, 35, 2, 5, 3, (1, 2), (2, 0), (2, 1), 2),
             (1, 3, 6, 7, 9, 7, 7, (1, 1), (3, 3), (1, 1), 3),
             # two outputs per thread (16-row tiles, partial ones) on the three paths: 3x3
             # at stride and dilation 1, 3x3 strided and dilated, 5x5
             (2, 3, 37, 35, 6, 3, 3, (1, 1), (1, 1), (1, 1), 3),
             (1, 2, 40, 21, 2, 3, 3, (2, 1), (1, 1), (1, 2), 2),
             (1, 2, 18, 30, 2, 3, 3, (1, 2), (1, 1), (1, 1), 2),     # only the columns
             (1, 2, 17, 20, 2, 3, 3, (1, 1), (1, 2), (1, 2), 2),     # strided or dilated
             (3, 2, 5, 300, 4, 3, 3, (1, 1), (1, 1), (1, 1), 2),     # rows past 256 threads
             (1, 2, 20, 12, 4, 5, 5, (1, 1), (2, 2), (1, 1), 2)]
# max pooling: (N, C, H, W, kernel, stride, padding, dilation, ceil_mode)
MAXP_SMALL = [
    (2, 3, 7, 9, (3, 3), (2, 2), (1, 1), (1, 1), True),
    (1, 2, 10, 7, (3, 2), (2, 3), (1, 0), (2, 1), True),
    (1, 3, 6, 11, (2, 3), (1, 2), (1, 1), (1, 2), False),
    (2, 2, 8, 8, (2, 2), (2, 2), (0, 0), (1, 1), False),
]
# average pooling: (N, C, H, W, kernel, stride, padding, ceil_mode, count_include_pad,
# divisor_override)
AVGP_SMALL = [
    (2, 3, 7, 9, (3, 3), (2, 2), (1, 1), True, True, None),
    (1, 2, 7, 9, (3, 3), (2, 2), (1, 1), True, False, None),
    (1, 2, 10, 7, (3, 2), (2, 3), (1, 1), False, True, 5),
    (1, 1, 5, 6, (4, 3), (3, 1), (2, 1), True, False, None),
]


def small_net(backend, algos=("auto", "auto")):
    """conv-relu-maxpool-conv-relu-avgpool-linear-relu-linear on 8x8 digits, float64, the
    same weights for every backend: one training step compares backends."""
    import numpy as np
    from convgpu import nn
    kw = dict(rng=np.random.default_rng(3), dtype=np.float64, backend=backend)
    return nn.Sequential(
        nn.Conv2d(1, 2, 3, padding=1, algo=algos[0], **kw), nn.ReLU(backend),
        nn.MaxPool2d(2, backend=backend),
        nn.Conv2d(2, 3, 3, padding=1, algo=algos[1], **kw), nn.ReLU(backend),
        nn.AvgPool2d(2, backend=backend), nn.Flatten(),
        nn.Linear(12, 5, **kw), nn.ReLU(backend), nn.Linear(5, 10, **kw))


def decoder_net(backend, algo="auto"):
    """A strided conv down, a transposed conv back up (output_padding, groups), a conv with
    padding="same" and an even kernel, global average pooling, linear: on 8x8 digits,
    float64, the same weights for every backend."""
    import numpy as np
    from convgpu import nn
    kw = dict(rng=np.random.default_rng(4), dtype=np.float64, backend=backend, algo=algo)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, stride=2, padding=1, **kw), nn.ReLU(backend),
        nn.ConvTranspose2d(4, 4, 3, stride=2, padding=1, output_padding=1, groups=2, **kw),
        nn.ReLU(backend), nn.Conv2d(4, 3, 2, padding="same", **kw), nn.ReLU(backend),
        nn.GlobalAvgPool2d(backend),
        nn.Linear(3, 10, rng=np.random.default_rng(5), dtype=np.float64, backend=backend))


def _off_init(net, seed):
    """Every parameter moved off its initial value (deterministically, the same for every
    backend): a batch norm's bias starts at 0, and with it the loss does not depend on the
    scale of a batch norm whose output reaches the next batch norm through ReLU, pooling and
    bias-free layers, so that scale's gradient is 0 up to rounding, a cancellation (sums
    ~1e6 times their result) that no relative bound can compare."""
    rng = np.random.default_rng(seed)
    for p in net.parameters():
        p.data = p.data + 0.1 * rand(rng, p.shape)
    return net


def bn_net(backend):
    """conv-batchnorm2d-relu-maxpool-linear-batchnorm1d-relu-linear on 8x8 digits, float64,
    the same weights for every backend (batch statistics: a training step). The layers
    before a batch norm have no bias: its gradient would be 0 up to rounding (the
    normalisation removes any per-channel shift), which no relative bound can compare."""
    import numpy as np
    from convgpu import nn
    kw = dict(rng=np.random.default_rng(6), dtype=np.float64, backend=backend)
    return _off_init(nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1, bias=False, **kw),
        nn.BatchNorm2d(3, dtype=np.float64, backend=backend),
        nn.ReLU(backend), nn.MaxPool2d(2, backend=backend), nn.Flatten(),
        nn.Linear(48, 5, bias=False, **kw), nn.BatchNorm1d(5, dtype=np.float64, backend=backend),
        nn.ReLU(backend), nn.Linear(5, 10, **kw)), 16)


def res_net(backend, algo="auto", width=4):
    """nn.resnet_small on 8x8 digits, float64, the same weights for every backend."""
    from convgpu import nn
    return _off_init(nn.resnet_small(1, 8, 10, width=width, algo=algo, backend=backend, seed=7,
                                     dtype=np.float64), 17)


def mobile_net(backend, dw_algo="auto"):
    """A MobileNet-style stack on 8x8 digits: two depthwise 3x3 convs (dw_algo; the image's
    one channel to 4, then 4 to 8 at stride 2: channel multipliers 4 and 2), a pointwise 1x1
    conv, each followed by a batch norm and a ReLU; global pooling, linear. float64, the
    same weights for every backend."""
    from convgpu import nn
    kw = dict(rng=np.random.default_rng(8), dtype=np.float64, backend=backend, bias=False)
    bn = lambda c: nn.BatchNorm2d(c, dtype=np.float64, backend=backend)   # noqa: E731
    return _off_init(nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1, algo=dw_algo, **kw), bn(4), nn.ReLU(backend),
        nn.Conv2d(4, 8, 3, stride=2, padding=1, groups=4, algo=dw_algo, **kw), bn(8),
        nn.ReLU(backend), nn.Conv2d(8, 6, 1, **kw), bn(6), nn.ReLU(backend),
        nn.GlobalAvgPool2d(backend),
        nn.Linear(6, 10, rng=np.random.default_rng(9), dtype=np.float64, backend=backend)), 18)


def training_step(model, backend, images=2):
    """(loss, input gradient, {name: parameter gradient}) of one step on the first digits
    (two by default; a BatchNorm1d needs more: over two values its output is +-1 whatever
    the input, so its input gradient is 0 up to eps and rounding)."""
    import numpy as np
    from convgpu import data as D
    from convgpu import nn
    x, y = D.digits()
    loss = nn.SoftmaxCrossEntropy(backend)
    value = float(loss.forward(model.forward(x[:images].astype(np.float64)), y[:images]))
    gx = model.backward(loss.backward())
    return value, gx, {k: p.grad for k, p in model.named_parameters().items()}


def assert_steps_agree(step, ref):
    """Two training_step results: the loss to 1e-12, the input and parameter gradients
    within the float64 tolerance."""
    assert abs(step[0] - ref[0]) <= 1e-12 * abs(ref[0]), (step[0], ref[0])
    assert_close(step[1], ref[1], TOL[np.float64])
    for k, g in ref[2].items():
        assert_close(step[2][k], g, TOL[np.float64])


def empty_cases(rng):
    """Problems with nothing to compute, as torch answers them: an empty batch, no channels,
    no features, no rows. Each: (label, call(backend, to_array), expected) with expected the
    result written out (empty arrays; zeros where a sum is empty, plus the bias)."""
    import convgpu as cg
    f = lambda *s: rand(rng, s, np.float32)                       # noqa: E731
    i64 = lambda *s: np.zeros(s, np.int64)                        # noqa: E731
    z = lambda *s: np.zeros(s, np.float32)                        # noqa: E731
    b4, b2, b3 = f(4), f(2), f(3)
    gy2, w35 = f(2, 3), f(3, 5)
    conv = dict(padding=1)
    return [
        ("conv2d N=0", lambda be, a: cg.conv2d(a(f(0, 4, 8, 8)), a(f(4, 4, 3, 3)), a(b4), **conv,
                                               backend=be), z(0, 4, 8, 8)),
        ("conv2d K=0", lambda be, a: cg.conv2d(a(f(1, 4, 8, 8)), a(f(0, 4, 3, 3)), backend=be),
         z(1, 0, 6, 6)),
        ("conv2d C=0: the bias", lambda be, a: cg.conv2d(a(f(1, 0, 8, 8)), a(f(4, 0, 3, 3)),
                                                         a(b4), backend=be),
         np.broadcast_to(b4[None, :, None, None], (1, 4, 6, 6))),
        ("conv2d same, N=0", lambda be, a: cg.conv2d(a(f(0, 4, 8, 8)), a(f(4, 4, 2, 2)),
                                                     padding="same", backend=be), z(0, 4, 8, 8)),
        ("backward_input N=0", lambda be, a: cg.conv2d_backward_input(
            a(f(0, 4, 8, 8)), a(f(4, 4, 3, 3)), (0, 4, 8, 8), **conv, backend=be), z(0, 4, 8, 8)),
        ("backward_input K=0", lambda be, a: cg.conv2d_backward_input(
            a(f(1, 0, 6, 6)), a(f(0, 4, 3, 3)), (1, 4, 8, 8), backend=be), z(1, 4, 8, 8)),
        ("backward_weight N=0", lambda be, a: cg.conv2d_backward_weight(
            a(f(0, 4, 8, 8)), a(f(0, 4, 8, 8)), (4, 4, 3, 3), **conv, backend=be), z(4, 4, 3, 3)),
        ("backward_weight K=0", lambda be, a: cg.conv2d_backward_weight(
            a(f(1, 4, 8, 8)), a(f(1, 0, 6, 6)), (0, 4, 3, 3), backend=be), z(0, 4, 3, 3)),
        ("backward_bias N=0", lambda be, a: cg.conv2d_backward_bias(a(f(0, 4, 8, 8)), backend=be),
         z(4)),
        ("conv_transpose2d N=0", lambda be, a: cg.conv_transpose2d(
            a(f(0, 4, 8, 8)), a(f(4, 2, 3, 3)), a(b2), backend=be), z(0, 2, 10, 10)),
        ("conv_transpose2d Cin=0: the bias", lambda be, a: cg.conv_transpose2d(
            a(f(1, 0, 8, 8)), a(f(0, 2, 3, 3)), a(b2), backend=be),
         np.broadcast_to(b2[None, :, None, None], (1, 2, 10, 10))),
        ("max_pool2d N=0", lambda be, a: cg.max_pool2d(a(f(0, 3, 8, 8)), 2, return_indices=True,
                                                       backend=be), (z(0, 3, 4, 4), i64(0, 3, 4, 4))),
        ("max_pool2d C=0", lambda be, a: cg.max_pool2d(a(f(2, 0, 8, 8)), 3, 2, 1, backend=be),
         z(2, 0, 4, 4)),
        ("max_pool2d_backward N=0", lambda be, a: cg.max_pool2d_backward(
            a(f(0, 3, 4, 4)), a(i64(0, 3, 4, 4)), (0, 3, 8, 8), 2, backend=be), z(0, 3, 8, 8)),
        ("max_pool2d_backward N=0, no geometry", lambda be, a: cg.max_pool2d_backward(
            a(f(0, 3, 4, 4)), a(i64(0, 3, 4, 4)), (0, 3, 8, 8), backend=be), z(0, 3, 8, 8)),
        ("avg_pool2d N=0", lambda be, a: cg.avg_pool2d(a(f(0, 3, 8, 8)), 2, backend=be),
         z(0, 3, 4, 4)),
        ("avg_pool2d_backward C=0", lambda be, a: cg.avg_pool2d_backward(
            a(f(2, 0, 4, 4)), (2, 0, 8, 8), 2, backend=be), z(2, 0, 8, 8)),
        ("global_avg_pool2d N=0", lambda be, a: cg.global_avg_pool2d(a(f(0, 3, 5, 5)),
                                                                     backend=be), z(0, 3)),
        ("global_avg_pool2d_backward N=0", lambda be, a: cg.global_avg_pool2d_backward(
            a(f(0, 3)), (0, 3, 5, 5), backend=be), z(0, 3, 5, 5)),
        ("relu empty", lambda be, a: cg.relu(a(f(0, 3)), backend=be), z(0, 3)),
        ("relu_backward empty", lambda be, a: cg.relu_backward(a(f(0, 3)), a(f(0, 3)),
                                                               backend=be), z(0, 3)),
        ("bias_add N=0", lambda be, a: cg.bias_add(a(f(0, 3, 2, 2)), a(b3), backend=be),
         z(0, 3, 2, 2)),
        ("linear N=0", lambda be, a: cg.linear(a(f(0, 5)), a(w35), a(b3), backend=be), z(0, 3)),
        ("linear in=0: the bias", lambda be, a: cg.linear(a(f(2, 0)), a(f(3, 0)), a(b3),
                                                          backend=be),
         np.broadcast_to(b3, (2, 3))),
        ("linear out=0", lambda be, a: cg.linear(a(f(2, 5)), a(f(0, 5)), backend=be), z(2, 0)),
        ("linear_backward N=0", lambda be, a: cg.linear_backward(a(f(0, 3)), a(f(0, 5)), a(w35),
                                                                 backend=be),
         (z(0, 5), z(3, 5), z(3))),
        ("linear_backward in=0", lambda be, a: cg.linear_backward(a(gy2), a(f(2, 0)), a(f(3, 0)),
                                                                  backend=be),
         (z(2, 0), z(3, 0), gy2.sum(axis=0))),
        ("softmax_cross_entropy N=0: NaN", lambda be, a: cg.softmax_cross_entropy(
            a(f(0, 5)), a(i64(0)), backend=be), np.float32(np.nan)),
        ("softmax_cross_entropy_backward N=0", lambda be, a: cg.softmax_cross_entropy_backward(
            a(f(0, 5)), a(i64(0)), backend=be), z(0, 5)),
        ("adaptive_avg_pool2d N=0", lambda be, a: cg.adaptive_avg_pool2d(
            a(f(0, 3, 7, 5)), (3, 2), backend=be), z(0, 3, 3, 2)),
        ("adaptive_avg_pool2d to 0 rows", lambda be, a: cg.adaptive_avg_pool2d(
            a(f(2, 3, 7, 5)), (0, 2), backend=be), z(2, 3, 0, 2)),
        ("adaptive_avg_pool2d_backward N=0", lambda be, a: cg.adaptive_avg_pool2d_backward(
            a(f(0, 3, 3, 2)), (0, 3, 7, 5), backend=be), z(0, 3, 7, 5)),
        ("adaptive_avg_pool2d_backward from 0 rows", lambda be, a: cg.adaptive_avg_pool2d_backward(
            a(f(2, 3, 0, 2)), (2, 3, 7, 5), backend=be), z(2, 3, 7, 5)),
        ("batch_norm N=0", lambda be, a: cg.batch_norm(a(f(0, 3, 4, 4)), a(z(3)), a(z(3) + 1),
                                                       a(b3), a(b3), True, backend=be),
         z(0, 3, 4, 4)),
        ("batch_norm C=0", lambda be, a: cg.batch_norm(a(f(2, 0, 4)), None, None, training=True,
                                                       backend=be), z(2, 0, 4)),
        ("batch_norm_backward N=0", lambda be, a: cg.batch_norm_backward(
            a(f(0, 3, 4, 4)), a(f(0, 3, 4, 4)), a(b3), a(b3), a(b3), backend=be),
         (z(0, 3, 4, 4), z(3), z(3))),
    ]


def check_empty_case(got, want, to_numpy=np.asarray):
    """Shapes, dtypes and values of an empty problem's answer."""
    gots = got if isinstance(got, tuple) else (got,)
    wants = want if isinstance(want, tuple) else (want,)
    assert len(gots) == len(wants)
    for g, w in zip(gots, wants, strict=True):
        g = to_numpy(g)
        assert g.shape == np.shape(w) and g.dtype == np.asarray(w).dtype, (g.shape, g.dtype)
        np.testing.assert_array_equal(g, w)


# adaptive average pooling: (input shape, output_size): windows overlapping (7 -> 3), more
# outputs than inputs (5 -> 9: rows repeat), the global case, None keeping a size, unbatched
ADAPTIVE_SMALL = [((2, 3, 7, 5), (3, 2)), ((1, 2, 5, 6), (9, 11)), ((2, 2, 6, 6), 1),
                  ((1, 2, 7, 7), (None, 3)), ((2, 9, 4), (2, 3))]


# ----------------------------------------------------------------------------------------
# batch normalisation: every backend against the reference

# (N, C, H, W); (N, C) as after a linear layer; (N, C, L) with rows shorter than a warp
BN_SHAPES = [(4, 3, 5, 6), (6, 5), (3, 2, 9)]
BN_MOMENTUM, BN_EPS = 0.1, 1e-5


def batch_norm_inputs(rng, shape, dtype, affine=True, running=True):
    """x off-centre (mean ~3, spread ~2, so a kernel that skips the mean shows), gy, weight,
    bias, running mean and variance; the optional ones None where not asked for."""
    C = shape[1]
    x = rand(rng, shape) * 2 + 3
    return dict(x=x.astype(dtype), gy=rand(rng, shape, dtype),
                w=rand(rng, (C,), dtype) if affine else None,
                b=rand(rng, (C,), dtype) if affine else None,
                rm=rand(rng, (C,), dtype) if running else None,
                rv=rng.uniform(0.5, 2.0, C).astype(dtype) if running else None)


def batch_norm_run(backend, inp, training, to=np.asarray, back=np.asarray):
    """batch_norm (return_stats) then batch_norm_backward on `backend`, on copies of the
    running estimates: {y, mean, invstd, gx, gw, gb, rm, rv} as NumPy arrays."""
    import convgpu as cg
    opt = lambda k: None if inp[k] is None else to(inp[k].copy())    # noqa: E731
    rm, rv = opt("rm"), opt("rv")
    y, mean, invstd = cg.batch_norm(to(inp["x"]), rm, rv, opt("w"), opt("b"), training,
                                    BN_MOMENTUM, BN_EPS, return_stats=True, backend=backend)
    gx, gw, gb = cg.batch_norm_backward(to(inp["gy"]), to(inp["x"]), mean, invstd, opt("w"),
                                        training, backend=backend)
    out = dict(y=y, mean=mean, invstd=invstd, gx=gx, gw=gw, gb=gb, rm=rm, rv=rv)
    return {k: None if v is None else back(v) for k, v in out.items()}


def batch_norm_expected(inp, training):
    """The same from the reference functions in float64 (running estimates updated by
    hand: r = (1 - momentum) r + momentum * batch statistic, the variance unbiased)."""
    from convgpu import reference as R
    f = lambda k: None if inp[k] is None else inp[k].astype(np.float64)   # noqa: E731
    x, rm, rv = f("x"), f("rm"), f("rv")
    if training:
        mean, invstd, var_unbiased = R.batch_norm_stats(x, BN_EPS)
        if rm is not None:
            rm = (1 - BN_MOMENTUM) * rm + BN_MOMENTUM * mean
            rv = (1 - BN_MOMENTUM) * rv + BN_MOMENTUM * var_unbiased
    else:
        mean, invstd = rm, 1 / np.sqrt(rv + BN_EPS)
    gx, gw, gb = R.batch_norm_backward(f("gy"), x, mean, invstd, f("w"), training)
    return dict(y=R.batch_norm(x, mean, invstd, f("w"), f("b")), mean=mean, invstd=invstd,
                gx=gx, gw=gw, gb=gb, rm=rm, rv=rv)


def assert_batch_norm_close(got, want, dtype):
    for k, w in want.items():
        if w is None:
            assert got[k] is None, k
            continue
        assert got[k].dtype == dtype and got[k].shape == w.shape, (k, got[k].dtype, got[k].shape)
        e = relerr(got[k], w)
        assert e <= TOL[np.dtype(dtype).type], f"{k}: relative error {e:.3e}"


# ----------------------------------------------------------------------------------------
# torch as the oracle at the edges of its semantics, on every backend (the reference in
# tests/test_torch_oracle.py, every backend in tests/ops/test_pool.py and test_conv.py)

# avg pooling: (input shape, kernel, stride, padding, ceil_mode, count_include_pad,
# divisor_override) where the divisor rule has corners: a ceil-mode window running past
# the input with no padding (torch divides by the part inside: 1 here, not k = 2), a ceil-
# mode window running past the right padding (the include-pad divisor clipped to the
# padded input), the same without counting the padding, non-square, and an override
AVGP_EDGES = [
    ((1, 2, 7, 10), 2, 3, 0, True, True, None),
    ((1, 2, 6, 9), 3, 2, 1, True, True, None),
    ((1, 2, 6, 9), 3, 2, 1, True, False, None),
    ((2, 1, 8, 7), (3, 2), (2, 3), (1, 1), True, True, None),
    ((1, 1, 5, 5), 4, 3, 2, True, True, None),
    ((1, 2, 7, 10), 2, 3, 0, True, True, 3),
]
# adaptive average pooling where the sizes don't divide (overlapping, uneven windows), in
# both directions, and more outputs than inputs
ADAPTIVE_EDGES = [((1, 2, 7, 5), (3, 4)), ((2, 1, 10, 9), (4, 7)), ((1, 2, 5, 3), (7, 2))]
# padding="same" with an odd total padding d (k - 1): torch pads the extra row/column at
# the bottom/right. (x shape, w shape, dilation)
SAME_EDGES = [((1, 2, 7, 6), (3, 2, 4, 2), (1, 1)),
              ((2, 2, 6, 7), (2, 2, 2, 3), (1, 2))]


def torch_avg_pool2d(x, gy, *args):
    """F.avg_pool2d's output and input gradient (float64 autograd) for x, gy."""
    import torch
    xt = torch.from_numpy(np.asarray(x, np.float64)).requires_grad_()
    yt = torch.nn.functional.avg_pool2d(xt, *args)
    if gy is not None:
        yt.backward(torch.from_numpy(np.asarray(gy, np.float64)))
    return yt.detach().numpy(), None if gy is None else xt.grad.numpy()


def torch_adaptive_avg_pool2d(x, gy, out):
    import torch
    xt = torch.from_numpy(np.asarray(x, np.float64)).requires_grad_()
    yt = torch.nn.functional.adaptive_avg_pool2d(xt, out)
    if gy is not None:
        yt.backward(torch.from_numpy(np.asarray(gy, np.float64)))
    return yt.detach().numpy(), None if gy is None else xt.grad.numpy()


def torch_conv2d_same(x, w, b, dilation, gy=None):
    """F.conv2d(padding="same")'s output and, given gy, its input and weight gradients."""
    import warnings

    import torch
    xt, wt = (torch.from_numpy(np.asarray(a, np.float64)).requires_grad_() for a in (x, w))
    bt = None if b is None else torch.from_numpy(np.asarray(b, np.float64))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")     # "padding='same' ... may require a zero-padded copy"
        yt = torch.nn.functional.conv2d(xt, wt, bt, padding="same", dilation=dilation)
    if gy is None:
        return yt.detach().numpy()
    yt.backward(torch.from_numpy(np.asarray(gy, np.float64)))
    return yt.detach().numpy(), xt.grad.numpy(), wt.grad.numpy()


# every non-TF32 conv algorithm of each backend, for the padding="same" edges (one list per
# op: forward, input gradient, weight gradient); FFT serves dilation 1 only
SAME_ALGOS = {
    "numpy": (("im2col", "fft"), ("col2im",), ("im2col",)),
    "numba": (("direct", "direct_tiled", "im2col", "fft"), ("direct", "col2im", "fft"),
              ("direct", "im2col", "fft")),
    "cuda": (("implicit_gemm", "im2col", "direct", "fft"), ("implicit_gemm", "col2im", "fft"),
             ("implicit_gemm", "im2col", "fft")),
}


def check_avg_pool_edge(rng, backend, case, dtype):
    """avg_pool2d and its backward on `backend` against torch at a divisor corner, by the
    element-wise bound of a sum of at most kh*kw terms (docs/tolerances.md)."""
    import convgpu as cg
    shape, *args = case
    x = rand(rng, shape)
    y_t, _ = torch_avg_pool2d(x, None, *args)
    gy = rand(rng, y_t.shape)
    y_t, gx_t = torch_avg_pool2d(x, gy, *args)
    k = (args[0],) * 2 if isinstance(args[0], int) else args[0]
    s = (args[1],) * 2 if isinstance(args[1], int) else args[1]
    y = cg.avg_pool2d(x.astype(dtype), *args, backend=backend)
    assert y.dtype == dtype
    assert_bounded(y, y_t, torch_avg_pool2d(abs(x), None, *args)[0], k[0] * k[1], "direct",
                   dtype)
    gx = cg.avg_pool2d_backward(gy.astype(dtype), x.shape, *args, backend=backend)
    covering = -(-k[0] // s[0]) * -(-k[1] // s[1])
    assert_bounded(gx, gx_t, torch_avg_pool2d(abs(x), abs(gy), *args)[1], covering, "direct",
                   dtype)


def check_adaptive_edge(rng, backend, case, dtype):
    import convgpu as cg
    shape, out = case
    x = rand(rng, shape)
    y_t, _ = torch_adaptive_avg_pool2d(x, None, out)
    gy = rand(rng, y_t.shape)
    y_t, gx_t = torch_adaptive_avg_pool2d(x, gy, out)
    # an adaptive window spans at most ceil(H / P) + 1 rows (and columns)
    n = (-(-shape[-2] // y_t.shape[-2]) + 1) * (-(-shape[-1] // y_t.shape[-1]) + 1)
    y = cg.adaptive_avg_pool2d(x.astype(dtype), out, backend=backend)
    assert_bounded(y, y_t, torch_adaptive_avg_pool2d(abs(x), None, out)[0], n, "direct", dtype)
    gx = cg.adaptive_avg_pool2d_backward(gy.astype(dtype), shape, backend=backend)
    covering = (-(-y_t.shape[-2] // shape[-2]) + 1) * (-(-y_t.shape[-1] // shape[-1]) + 1)
    assert_bounded(gx, gx_t, torch_adaptive_avg_pool2d(abs(x), abs(gy), out)[1], covering,
                   "direct", dtype)


def check_same_edge(rng, backend, case):
    """padding="same" with an odd total: forward and both gradients, every algorithm of
    SAME_ALGOS[backend] that serves the dilation, float64, against torch."""
    import convgpu as cg
    xs, ws, d = case
    x, w, b = rand(rng, xs), rand(rng, ws), rand(rng, ws[:1])
    gy = rand(rng, xs[:1] + ws[:1] + xs[2:])
    y_t, gx_t, gw_t = torch_conv2d_same(x, w, b, d, gy)
    fwd, bwd_in, bwd_w = (tuple(a for a in algos if d == (1, 1) or not a.startswith("fft"))
                          for algos in SAME_ALGOS[backend])
    kw = dict(padding="same", dilation=d, backend=backend)
    for algo in fwd:
        y = cg.conv2d(x, w, b, **kw, algo=algo)
        assert y.shape == y_t.shape, (algo, y.shape)
        assert_close(y, y_t, bounds.tolerance(algo, np.float64))
    for algo in bwd_in:
        assert_close(cg.conv2d_backward_input(gy, w, x.shape, **kw, algo=algo), gx_t,
                     bounds.tolerance(algo, np.float64))
    for algo in bwd_w:
        assert_close(cg.conv2d_backward_weight(x, gy, w.shape, **kw, algo=algo), gw_t,
                     bounds.tolerance(algo, np.float64))


# ----------------------------------------------------------------------------------------
# the host emulation's thread orders

# the thread/block orders every emulated call is run in (CONVGPU_HOST_ORDERS=forward,shuffle
# for a sweep with seeded random orders; cuda_host.ORDERS)
ORDERS = os.environ.get("CONVGPU_HOST_ORDERS", "forward,reverse").split(",")


def both_orders(fn):
    """fn() in each of ORDERS under the host emulation (forward, then reversed): the results
    must be identical (a kernel whose result depends on the order has a race)."""
    from convgpu.kernels.cuda.emulator import cuda_host
    outs = []
    for which in ORDERS:
        with cuda_host.order(which):
            outs.append(fn())
    a = outs[0]
    for b in outs[1:]:
        for u, v in zip(a if isinstance(a, tuple) else (a,), b if isinstance(b, tuple) else (b,),
                        strict=True):
            np.testing.assert_array_equal(u, v, err_msg="result depends on thread/block order")
    return a


@pytest.fixture
def host_backend(monkeypatch, request):
    """A backend by indirect parametrisation: cuda in the host emulation with outputs
    poisoned (skipped without a C++ compiler), numpy as it is."""
    backend = request.param
    if backend == "cuda":
        from convgpu.kernels.cuda.emulator import cuda_host
        if not cuda_host.available():
            pytest.skip(f"no C++ compiler ({cuda_host.CXX}) for the host emulation")
        monkeypatch.setenv("CONVGPU_CUDA_HOST", "1")
        monkeypatch.setenv("CONVGPU_POISON", "1")
    return backend


def both_orders_on(backend, fn):
    """fn() on numpy; on the emulated cuda backend both_orders(fn)."""
    return both_orders(fn) if backend == "cuda" else fn()


def spy_get_function(monkeypatch):
    """The name expressions the CUDA C launchers look up (the kernels a call launches), in
    order: get_function spied on in every launcher module that imported it."""
    from convgpu.kernels.cuda import launcher_modules, module
    names = []
    real = module.get_function
    for mod in launcher_modules():
        if getattr(mod, "get_function", None) is real:
            monkeypatch.setattr(mod, "get_function", lambda f, e: names.append(e) or real(f, e))
    return names


# the backends a pytest process runs (tests/ops/conftest.py): the simulator must be on
# before Numba is imported, so numba runs in a process of its own
SIMULATING = os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0")
RUNNABLE = ("numba",) if SIMULATING else ("numpy", "cuda")
