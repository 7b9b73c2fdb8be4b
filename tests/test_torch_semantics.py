"""torch's semantics to the edge: calls torch.nn.functional accepts, swept over its
signatures for the ops we have (int / 1-tuple / pair / list arguments, stride None or (),
padding strings, groups, unbatched input, ceil_mode, count_include_pad, divisor_override,
output_padding against stride and dilation, momentum outside [0, 1], 0-d and empty input,
cross-entropy's options), must give torch's result through the plain ops (torch tensors in,
torch tensors out) and through convgpu.torch.functional. The first tests are the calls the
ops used to refuse or answer differently."""
import itertools
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

import convgpu  # noqa: E402
from convgpu.torch import functional as CF  # noqa: E402

D = torch.float64


@pytest.fixture
def r():
    g = torch.Generator().manual_seed(0)
    return lambda *shape: torch.randn(shape, dtype=D, generator=g)


def same(out, ref):
    """torch's result: shape, dtype, values to float64 rounding (NaN where torch has NaN)."""
    out = out[0] if isinstance(out, tuple) else out
    ref = ref[0] if isinstance(ref, tuple) else ref
    assert isinstance(out, torch.Tensor), type(out)
    assert out.shape == ref.shape and out.dtype == ref.dtype, (out.shape, ref.shape)
    assert torch.allclose(out, ref, rtol=1e-10, atol=1e-12, equal_nan=True)


def both(name, *args, **kw):
    """The plain op and the bridge against torch.nn.functional.<name>."""
    ref = getattr(F, name)(*args, **kw)
    plain = {"cross_entropy": "softmax_cross_entropy"}.get(name, name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")               # the deprecation warnings torch gives
        same(getattr(convgpu, plain)(*args, **kw), ref)
        same(getattr(CF, name)(*args, **kw), ref)


# ----------------------------------------------------------------------------------------
# the calls the ops refused or answered differently


def test_conv_transpose2d_output_padding_below_dilation(r):
    """torch's rule is "smaller than stride or dilation": (2, 3) at stride (3, 2) and
    dilation (4, 4) is allowed, and reaches past the stride along W."""
    x, w, b = r(2, 3, 4, 5), r(3, 2, 2, 3), r(2)
    both("conv_transpose2d", x, w, b, (3, 2), 1, (2, 3), 1, (4, 4))
    both("conv_transpose2d", x, w, b, (3, 2), (0, 2), (2, 3), 1, (4, 4))
    with pytest.raises(ValueError, match="output_padding"):       # at both: refused, as torch
        convgpu.conv_transpose2d(x, w, b, (3, 2), 1, (2, 4), 1, (4, 4))


def test_one_element_tuples(r):
    x = r(2, 3, 6, 5)
    both("avg_pool2d", x, 3, 1, (1,))
    both("max_pool2d", x, (3,), (2,), (1,), (1,))
    both("conv2d", x, r(4, 3, 3, 3), None, (2,), [1], (1,))


def test_batch_norm_momentum_outside_unit_interval(r):
    for m in (1.5, -0.5):
        rm, rv = r(4), r(4).abs() + 0.5
        rm2, rv2 = rm.clone(), rv.clone()
        x = r(3, 4, 2, 2)
        same(convgpu.batch_norm(x, rm, rv, training=True, momentum=m),
             F.batch_norm(x, rm2, rv2, training=True, momentum=m))
        same(rm, rm2), same(rv, rv2)
    with pytest.raises(TypeError, match="momentum"):              # None: F refuses it too
        convgpu.batch_norm(r(3, 4), None, None, training=True, momentum=None)


def test_relu_of_a_0d_array(r):
    both("relu", r())
    out = convgpu.relu(np.array(-2.0))
    assert out.shape == () and out == 0


def test_cross_entropy_options_and_empty_batch(r):
    z, t = r(5, 4), torch.tensor([0, 3, -100, 2, 1])
    w = r(4).abs() + 0.5
    for kw in ({}, {"weight": w}, {"reduction": "sum"}, {"reduction": "none", "weight": w},
               {"label_smoothing": 0.25}, {"label_smoothing": 0.25, "weight": w},
               {"ignore_index": 3, "label_smoothing": 0.1}):
        tt = t.clamp(min=0) if "ignore_index" in kw else t
        both("cross_entropy", z, tt, **kw)
    for reduction in ("mean", "sum", "none"):
        both("cross_entropy", r(0, 4), torch.zeros(0, dtype=torch.long), reduction=reduction)
    both("cross_entropy", z, torch.full((5,), -100))                 # every row ignored: NaN


def test_cross_entropy_probability_targets(r):
    """Soft targets (float, the logits' shape): torch's values through the plain op and the
    bridge, for every reduction, weight and label smoothing, and empty batches; the spatial
    and unbatched forms through the bridge (the plain op takes (N, classes))."""
    g = torch.Generator().manual_seed(2)
    q = torch.rand((5, 4), dtype=D, generator=g)
    z, w = r(5, 4), r(4).abs() + 0.5
    for kw in ({}, {"weight": w}, {"reduction": "sum"}, {"reduction": "none", "weight": w},
               {"label_smoothing": 0.25}, {"label_smoothing": 0.25, "weight": w},
               {"label_smoothing": 1.0, "reduction": "none"}):
        both("cross_entropy", z, q, **kw)
        both("cross_entropy", z, q.softmax(1), **kw)
    for reduction in ("mean", "sum", "none"):
        both("cross_entropy", r(0, 4), q[:0], reduction=reduction)
    for shape in [(4,), (2, 4, 3), (2, 4, 2, 3)]:
        zz, qq = r(*shape), torch.rand(shape, dtype=D, generator=g)
        for kw in ({}, {"reduction": "none", "weight": w}, {"label_smoothing": 0.1}):
            same(CF.cross_entropy(zz, qq, **kw), F.cross_entropy(zz, qq, **kw))
    with pytest.raises(ValueError, match="ignore_index is not supported"):   # torch refuses
        convgpu.softmax_cross_entropy(z, q, ignore_index=0)
    with pytest.raises(ValueError, match=r"logits' shape \(5, 4\), got \(5, 3\)"):
        convgpu.softmax_cross_entropy(z, q[:, :3])
    with pytest.raises(TypeError, match="labels is float32 but logits is float64"):
        convgpu.softmax_cross_entropy(z.numpy(), q.float().numpy())


# ----------------------------------------------------------------------------------------
# sweeps over the signatures


PAIRS = [1, (2,), [2, 3]]


def _accepted(fn, *args, **kw):
    try:
        fn(*args, **kw)
        return True
    except (RuntimeError, ValueError, TypeError, IndexError):
        return False


@pytest.mark.parametrize("groups, wshape", [(1, (6, 4, 3, 2)), (2, (6, 2, 3, 3)),
                                            (4, (4, 1, 2, 2))])
def test_conv2d_sweep(r, groups, wshape):
    x, w, b = r(2, 4, 7, 6), r(*wshape), r(wshape[0])
    n = 0
    for stride, padding, dilation, (inp, bias) in itertools.product(
            PAIRS, [0, (1,), [0, 2], "same", "valid"], [1, (2,), [1, 2]],
            ((x, None), (x[0], b))):
        if _accepted(F.conv2d, inp, w, bias, stride, padding, dilation, groups):
            both("conv2d", inp, w, bias, stride, padding, dilation, groups)
            n += 1
    assert n > 50


def test_conv_transpose2d_sweep(r):
    x = r(2, 4, 4, 3)
    n = 0
    for (groups, w), stride, padding, opad, dilation in itertools.product(
            [(1, r(4, 3, 3, 2)), (2, r(4, 2, 2, 2))], [1, (3, 2), (1,)], [0, (1, 0)],
            [0, 1, (2, 3)], [1, (4, 4)]):
        b = r(w.shape[1] * groups)
        if _accepted(F.conv_transpose2d, x, w, b, stride, padding, opad, groups, dilation):
            both("conv_transpose2d", x, w, b, stride, padding, opad, groups, dilation)
            n += 1
    assert n > 30


@pytest.mark.parametrize("ceil_mode", [False, True])
def test_max_pool2d_sweep(r, ceil_mode):
    x = r(2, 3, 7, 6)
    n = 0
    for k, s, p, d, inp in itertools.product([2, (3,), [2, 3]], [None, (), (2,), [1, 2]],
                                             [0, (1,), [1, 0]], [1, (2,)], (x, x[0])):
        if _accepted(F.max_pool2d, inp, k, s, p, d, ceil_mode):
            both("max_pool2d", inp, k, s, p, d, ceil_mode)
            both("max_pool2d", inp, k, s, p, d, ceil_mode, return_indices=True)
            n += 1
    assert n > 50


@pytest.mark.parametrize("ceil_mode", [False, True])
def test_avg_pool2d_sweep(r, ceil_mode):
    x = r(2, 3, 7, 6)
    n = 0
    for k, s, p, cip, dov, inp in itertools.product(
            [2, (3,), [2, 3]], [None, (), (2,)], [0, (1,), [1, 0]], [True, False],
            [None, -3], (x, x[0])):
        if _accepted(F.avg_pool2d, inp, k, s, p, ceil_mode, cip, dov):
            both("avg_pool2d", inp, k, s, p, ceil_mode, cip, dov)
            n += 1
    assert n > 100


def test_adaptive_avg_pool2d_sweep(r):
    x = r(2, 3, 7, 6)
    for out, inp in itertools.product([1, 2, (2,), [3, 2], (None, 2), (2, None), 7, 9, (1, 1)],
                                      (x, x[0])):
        if _accepted(F.adaptive_avg_pool2d, inp, out):
            both("adaptive_avg_pool2d", inp, out)


def test_linear_sweep(r):
    for xs, bias in itertools.product([(4, 3), (3,), (2, 2, 3), (0, 3)], [None, r(5)]):
        both("linear", r(*xs), r(5, 3), bias)


def test_batch_norm_sweep(r):
    for shape, training, momentum, eps, affine in itertools.product(
            [(3, 4, 2, 2), (3, 4, 5)], [True, False], [0.1, 0.0, 1.0, 1.5, -0.5],
            [1e-5, 1], [True, False]):
        w, b = (r(4), r(4)) if affine else (None, None)
        rm, rv = r(4), r(4).abs() + 0.5
        x = r(*shape)
        same(convgpu.batch_norm(x, rm.clone(), rv.clone(), w, b, training, momentum, eps),
             F.batch_norm(x, rm.clone(), rv.clone(), w, b, training, momentum, eps))
        same(CF.batch_norm(x, rm.clone(), rv.clone(), w, b, training, momentum, eps),
             F.batch_norm(x, rm.clone(), rv.clone(), w, b, training, momentum, eps))
    both("batch_norm", r(3, 4, 5), None, None, None, None, True)


def test_relu_sweep(r):
    for shape in [(), (3,), (0, 3), (2, 3, 4, 5)]:
        both("relu", r(*shape))


def test_cross_entropy_sweep(r):
    g = torch.Generator().manual_seed(1)
    for (z, t), kw in itertools.product(
            [(r(5, 4), torch.tensor([0, 1, 2, 3, 0])), (r(4), torch.tensor(2)),
             (r(2, 4, 3), torch.randint(0, 4, (2, 3), generator=g))],
            [{}, {"reduction": "sum"}, {"reduction": "none"}, {"label_smoothing": 0.2},
             {"ignore_index": 1}, {"weight": r(4).abs()}, {"size_average": False},
             {"reduce": False}]):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref = F.cross_entropy(z, t, **kw)
            same(CF.cross_entropy(z, t, **kw), ref)
            if z.dim() == 2 and "size_average" not in kw and "reduce" not in kw:
                same(convgpu.softmax_cross_entropy(z, t, **kw), ref)
