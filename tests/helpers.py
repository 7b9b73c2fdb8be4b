"""Shared test helpers: random non-zero inputs, relative error, gradient checks."""
import numpy as np

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


def training_step(model, backend):
    """(loss, input gradient, {name: parameter gradient}) of one step on two digits."""
    import numpy as np
    from convgpu import data as D
    from convgpu import nn
    x, y = D.digits()
    loss = nn.SoftmaxCrossEntropy(backend)
    value = float(loss.forward(model.forward(x[:2].astype(np.float64)), y[:2]))
    gx = model.backward(loss.backward())
    return value, gx, {k: p.grad for k, p in model.named_parameters().items()}
