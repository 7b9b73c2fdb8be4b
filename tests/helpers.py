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
