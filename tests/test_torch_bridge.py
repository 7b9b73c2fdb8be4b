"""convgpu.torch on the CPU (the NumPy reference behind every op): each autograd.Function
under torch.autograd.gradcheck in float64 and against torch's own op (forward and every
gradient), the layers and convert(), a ResNet of torch.nn layers against its converted
copy, and the array boundary torch users meet (DLPack, channels_last, requires_grad)."""
import subprocess
import sys
import warnings
import zlib

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402
from torch.autograd import gradcheck  # noqa: E402

import convgpu  # noqa: E402
import convgpu.torch as ct  # noqa: E402
from convgpu.torch import functional as CF  # noqa: E402
from torch_resnet import rel, resnet, sgd_steps, twin  # noqa: E402

F = nn.functional
D = torch.float64
TOL = 1e-12          # float64 against torch's float64 (relative, as the design's tolerances)


def t(*shape, gen, lo=0.5, hi=1.5):
    """Random, never zero, mixed signs (as tests/helpers.rand), requiring grad."""
    mag = torch.empty(shape, dtype=D).uniform_(lo, hi, generator=gen)
    sign = torch.randint(0, 2, shape, generator=gen).to(D) * 2 - 1
    return (mag * sign).requires_grad_()


def distinct(*shape, gen):
    """Distinct values (no ties for max pooling's argmax), requiring grad."""
    n = int(np.prod(shape))
    v = torch.linspace(-1, 1, n, dtype=D)[torch.randperm(n, generator=gen)] + 0.01
    return v.reshape(shape).requires_grad_()


@pytest.fixture
def gen(request):
    # crc32, not hash(): the same stream in every run (str hashes are salted per process)
    return torch.Generator().manual_seed(zlib.crc32(request.node.nodeid.encode()))


def against_torch(ours, theirs, inputs, gen):
    """ours(*inputs) and theirs(*inputs): the same outputs, and the same gradients for every
    input that requires grad under the same random grad_output; then gradcheck of ours."""
    outs = ours(*inputs)
    refs = theirs(*inputs)
    outs = outs if isinstance(outs, tuple) else (outs,)
    refs = refs if isinstance(refs, tuple) else (refs,)
    for o, r in zip(outs, refs):
        assert o.shape == r.shape and o.dtype == r.dtype
        if o.is_floating_point():
            assert rel(o, r) <= TOL
        else:
            assert torch.equal(o, r)
    gy = torch.empty(outs[0].shape, dtype=D).uniform_(-1, 1, generator=gen)
    leaves = [x for x in inputs if isinstance(x, torch.Tensor) and x.requires_grad]
    g_ours = torch.autograd.grad(outs[0], leaves, gy)
    g_ref = torch.autograd.grad(refs[0], leaves, gy)
    for a, b in zip(g_ours, g_ref):
        assert rel(a, b) <= TOL
    assert gradcheck(lambda *a: ours(*a)[0] if isinstance(outs, tuple) and len(outs) > 1
                     else ours(*a), inputs)


# ----------------------------------------------------------------------------------------
# every Function: gradcheck and torch


@pytest.mark.parametrize("xs, ws, bias, stride, padding, dilation, groups", [
    ((1, 3, 5, 4), (4, 3, 3, 2), True, 1, 0, 1, 1),
    ((2, 4, 6, 5), (6, 2, 3, 3), True, (2, 1), (1, 2), (1, 2), 2),
    ((2, 3, 5, 5), (3, 1, 3, 3), False, 2, 1, 1, 3),
    ((3, 5, 4), (2, 3, 2, 2), True, 1, "same", 2, 1),
    ((1, 2, 4, 5), (3, 2, 2, 3), True, (1,), "valid", [1], 1),
])
def test_conv2d(gen, xs, ws, bias, stride, padding, dilation, groups):
    b = t(ws[0], gen=gen) if bias else None
    inputs = (t(*xs, gen=gen), t(*ws, gen=gen), b)
    against_torch(lambda x, w, b: CF.conv2d(x, w, b, stride, padding, dilation, groups),
                  lambda x, w, b: F.conv2d(x, w, b, stride, padding, dilation, groups),
                  inputs, gen)


@pytest.mark.parametrize("xs, ws, stride, padding, output_padding, groups, dilation", [
    ((1, 2, 3, 4), (2, 3, 3, 3), 2, 1, 1, 1, 1),
    ((2, 4, 3, 3), (4, 1, 2, 3), (3, 2), 1, (2, 3), 2, (4, 4)),     # output_padding >= stride
    ((2, 4, 3, 4), (4, 2, 2, 2), (1, 2), (0, 1), (2, 0), 2, (3, 1)),
    ((2, 3, 4), (2, 2, 3, 2), 2, 0, 0, 1, 1),                         # unbatched
])
def test_conv_transpose2d(gen, xs, ws, stride, padding, output_padding, groups, dilation):
    cout = ws[1] * groups
    inputs = (t(*xs, gen=gen), t(*ws, gen=gen), t(cout, gen=gen))
    against_torch(
        lambda x, w, b: CF.conv_transpose2d(x, w, b, stride, padding, output_padding, groups,
                                            dilation),
        lambda x, w, b: F.conv_transpose2d(x, w, b, stride, padding, output_padding, groups,
                                           dilation), inputs, gen)


@pytest.mark.parametrize("shape, k, s, p, d, ceil", [
    ((2, 3, 7, 6), 3, 2, 1, 1, False),
    ((1, 2, 7, 9), (2, 3), (1, 2), (1, 0), 2, True),
    ((2, 5, 5), 2, None, 0, 1, True),
])
def test_max_pool2d(gen, shape, k, s, p, d, ceil):
    x = distinct(*shape, gen=gen)
    against_torch(lambda x: CF.max_pool2d(x, k, s, p, d, ceil, return_indices=True),
                  lambda x: F.max_pool2d(x, k, s, p, d, ceil, return_indices=True), (x,), gen)
    against_torch(lambda x: CF.max_pool2d(x, k, s, p, d, ceil),
                  lambda x: F.max_pool2d(x, k, s, p, d, ceil), (x,), gen)


@pytest.mark.parametrize("shape, k, s, p, ceil, cip, dov", [
    ((2, 3, 7, 6), 3, 2, 1, True, False, None),
    ((1, 2, 6, 5), (2, 3), None, (1,), False, True, None),
    ((3, 5, 5), 2, 1, 1, False, True, 3),
])
def test_avg_pool2d(gen, shape, k, s, p, ceil, cip, dov):
    against_torch(lambda x: CF.avg_pool2d(x, k, s, p, ceil, cip, dov),
                  lambda x: F.avg_pool2d(x, k, s, p, ceil, cip, dov), (t(*shape, gen=gen),), gen)


@pytest.mark.parametrize("shape, out", [
    ((2, 3, 5, 7), (3, 2)), ((2, 3, 5, 7), 1), ((2, 3, 5, 7), (None, 2)), ((3, 4, 6), 4)])
def test_adaptive_avg_pool2d(gen, shape, out):
    against_torch(lambda x: CF.adaptive_avg_pool2d(x, out),
                  lambda x: F.adaptive_avg_pool2d(x, out), (t(*shape, gen=gen),), gen)


def test_global_avg_pool2d(gen):
    against_torch(lambda x: CF.global_avg_pool2d(x), lambda x: x.mean((2, 3)),
                  (t(2, 3, 5, 4, gen=gen),), gen)


@pytest.mark.parametrize("shape, training, affine, running, momentum", [
    ((3, 4, 5, 3), True, True, True, 0.1),
    ((3, 4, 5, 3), False, True, True, 0.1),
    ((4, 3, 5), True, False, False, 0.1),
    ((2, 3, 2, 2), True, True, True, 1.7),             # torch extrapolates past 1
])
def test_batch_norm(gen, shape, training, affine, running, momentum):
    C = shape[1]
    w, b = (t(C, gen=gen), t(C, gen=gen)) if affine else (None, None)
    rm = torch.empty(C, dtype=D).uniform_(-1, 1, generator=gen) if running else None
    rv = torch.empty(C, dtype=D).uniform_(0.5, 2, generator=gen) if running else None
    state = {}

    def ours(x, w, b):
        state["ours"] = (rm.clone(), rv.clone()) if running else (None, None)
        return CF.batch_norm(x, *state["ours"], w, b, training, momentum, 1e-3)

    def theirs(x, w, b):
        state["theirs"] = (rm.clone(), rv.clone()) if running else (None, None)
        return F.batch_norm(x, *state["theirs"], w, b, training, momentum, 1e-3)

    against_torch(ours, theirs, (t(*shape, gen=gen), w, b), gen)
    if running:                                       # the running estimates, in place
        for a, r in zip(state["ours"], state["theirs"]):
            assert rel(a, r) <= TOL


@pytest.mark.parametrize("xs, bias", [((3, 5), True), ((2, 3, 5), False), ((5,), True)])
def test_linear(gen, xs, bias):
    b = t(4, gen=gen) if bias else None
    against_torch(CF.linear, F.linear, (t(*xs, gen=gen), t(4, 5, gen=gen), b), gen)


def test_relu(gen):
    against_torch(CF.relu, F.relu, (t(2, 3, 4, gen=gen),), gen)
    against_torch(lambda x: CF.relu(x * 1, inplace=True), lambda x: F.relu(x * 1, inplace=True),
                  (t(2, 5, gen=gen),), gen)
    x = torch.tensor(-2.0, dtype=D, requires_grad=True)          # 0-d stays 0-d
    y = CF.relu(x)
    assert y.shape == () and y.item() == 0
    y = x.detach().clone()
    assert CF.relu(y, inplace=True) is y and y.item() == 0


@pytest.mark.parametrize("kw", [
    {}, {"reduction": "sum"}, {"reduction": "none"}, {"weight": True},
    {"label_smoothing": 0.3}, {"ignore_index": 2, "reduction": "mean"},
    {"weight": True, "ignore_index": -100, "label_smoothing": 0.2, "reduction": "sum"},
    {"weight": True, "label_smoothing": 0.1, "reduction": "none"},
])
@pytest.mark.parametrize("shape", [(6, 4), (2, 4, 3), (4,)])
def test_cross_entropy(gen, kw, shape):
    kw = dict(kw)
    C = shape[1] if len(shape) > 1 else shape[0]
    if kw.get("weight"):
        kw["weight"] = torch.empty(C, dtype=D).uniform_(0.5, 2, generator=gen)
    tshape = (shape[0],) + shape[2:] if len(shape) > 1 else ()
    y = torch.randint(0, C, tshape, generator=gen)
    ignore = kw.get("ignore_index", -100)
    if len(shape) > 1:
        y.view(-1)[1] = ignore                             # one ignored row
    elif y.item() == ignore:                               # the only row stays counted
        y = (y + 1) % C
    against_torch(lambda z: CF.cross_entropy(z, y, **kw), lambda z: F.cross_entropy(z, y, **kw),
                  (t(*shape, gen=gen),), gen)


@pytest.mark.parametrize("kw", [
    {}, {"reduction": "sum"}, {"reduction": "none"}, {"weight": True},
    {"label_smoothing": 0.3}, {"weight": True, "label_smoothing": 0.2, "reduction": "sum"},
    {"weight": True, "label_smoothing": 0.1, "reduction": "none"},
    {"weight": True, "reduction": "mean"},
])
@pytest.mark.parametrize("shape", [(5, 4), (2, 4, 3), (4,)])
def test_cross_entropy_probability_targets(gen, kw, shape):
    """Soft targets: torch's values and gradients for the input, the target and the weights
    (torch's mean divides by the rows, not the weights), then gradcheck of all three. The
    targets are not normalised, so a wrong weighting of their sum shows."""
    kw = dict(kw)
    C = shape[1] if len(shape) > 1 else shape[0]
    w = None
    if kw.pop("weight", None):                  # torch differentiates it: so do we
        w = torch.empty(C, dtype=D).uniform_(0.5, 2, generator=gen).requires_grad_()
    q = torch.empty(shape, dtype=D).uniform_(0.1, 1, generator=gen).requires_grad_()
    against_torch(lambda z, q, w: CF.cross_entropy(z, q, w, **kw),
                  lambda z, q, w: F.cross_entropy(z, q, w, **kw), (t(*shape, gen=gen), q, w),
                  gen)


def test_cross_entropy_probability_targets_edges(gen):
    z = t(4, 3, gen=gen)
    q = torch.empty(4, 3, dtype=D).uniform_(0, 1, generator=gen)
    # torch promotes mixed float dtypes; the gradients come back in each input's dtype
    z32, q64 = z.detach().float().requires_grad_(), q.clone().requires_grad_()
    out = CF.cross_entropy(z32, q64)
    ref = F.cross_entropy(z32, q64)
    assert out.dtype == ref.dtype == D and rel(out, ref) <= 1e-6        # torch: float32 log
    gz, gq = torch.autograd.grad(out, (z32, q64))
    rz, rq = torch.autograd.grad(ref, (z32, q64))
    assert gz.dtype == torch.float32 and gq.dtype == D
    assert rel(gz, rz) <= 1e-5 and rel(gq, rq) <= 1e-6
    for reduction in ("mean", "sum", "none"):              # no rows: NaN mean, as torch
        out = CF.cross_entropy(z[:0], q[:0], reduction=reduction)
        ref = F.cross_entropy(z[:0], q[:0], reduction=reduction)
        assert out.shape == ref.shape and torch.equal(out.isnan(), ref.isnan())
        assert torch.allclose(out, ref, equal_nan=True)
    with pytest.raises(ValueError, match="ignore_index is not supported"):   # torch refuses
        CF.cross_entropy(z, q, ignore_index=1)
    with pytest.raises(ValueError, match=r"input's shape \(4, 3\)"):
        CF.cross_entropy(z, q[:, :2])
    assert CF.cross_entropy(z.detach().half(), q.half()).dtype == torch.float16  # served
    m = ct.CrossEntropyLoss(weight=torch.ones(3, dtype=D), label_smoothing=0.1)
    ref = nn.CrossEntropyLoss(weight=torch.ones(3, dtype=D), label_smoothing=0.1)
    assert rel(m(z, q), ref(z, q)) <= TOL


def test_cross_entropy_legacy_and_refusals(gen):
    z, y = t(4, 3, gen=gen), torch.tensor([0, 2, 1, 1])
    with pytest.warns(UserWarning, match="size_average and reduce args will be deprecated"):
        legacy = CF.cross_entropy(z, y, size_average=False)            # torch's own warning
    assert rel(legacy, F.cross_entropy(z, y, reduction="sum")) <= TOL
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        CF.cross_entropy(z, torch.tensor([0, 3, 1, 1]))
    with pytest.raises(ValueError, match="reduction"):
        CF.cross_entropy(z, y, reduction="avg")
    w = torch.ones(3, dtype=D, requires_grad=True)     # torch refuses it too (RuntimeError)
    with pytest.raises(ValueError, match="weight requiring grad is served with class-prob"):
        CF.cross_entropy(z, y, w)
    with torch.no_grad():
        assert rel(CF.cross_entropy(z, y, w), F.cross_entropy(z, y, w)) <= TOL


# ----------------------------------------------------------------------------------------
# layers and convert


def test_layers_are_torch_layers_with_ordinary_parameters():
    torch.manual_seed(0)
    ours = ct.Conv2d(3, 4, 3, padding=1).double()
    torch.manual_seed(0)
    theirs = nn.Conv2d(3, 4, 3, padding=1).double()            # the same initialisation
    assert isinstance(ours, nn.Conv2d) and type(ours.weight) is nn.Parameter
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    for k in ours.state_dict():
        assert torch.equal(ours.state_dict()[k], theirs.state_dict()[k])
    bn = ct.BatchNorm2d(4)
    assert {n for n, _ in bn.named_buffers()} == {"running_mean", "running_var",
                                                  "num_batches_tracked"}
    assert bn.to(D).weight.dtype == D and bn.running_mean.dtype == D


@pytest.mark.parametrize("momentum, track, train", [
    (0.1, True, True), (None, True, True), (0.3, False, True), (0.1, True, False)])
def test_batch_norm_layer_as_torch(gen, momentum, track, train):
    """num_batches_tracked, momentum=None (the cumulative average), track_running_stats and
    eval mode as torch.nn.BatchNorm2d, over three batches."""
    ours = ct.BatchNorm2d(3, momentum=momentum, track_running_stats=track).double()
    theirs = nn.BatchNorm2d(3, momentum=momentum, track_running_stats=track).double()
    ours.train(train), theirs.train(train)
    for _ in range(3):
        x = t(4, 3, 3, 2, gen=gen)
        assert rel(ours(x), theirs(x)) <= TOL
    for (k, a), (_, b) in zip(ours.state_dict().items(), theirs.state_dict().items()):
        assert rel(a, b) <= TOL if a.is_floating_point() else torch.equal(a, b), k


def test_conv_transpose_layer_output_size(gen):
    ours, theirs = ct.ConvTranspose2d(2, 3, 3, stride=2).double(), \
        nn.ConvTranspose2d(2, 3, 3, stride=2).double()
    theirs.load_state_dict(ours.state_dict())
    x = t(1, 2, 4, 4, gen=gen)
    y = ours(x, output_size=(10, 10))
    assert y.shape == (1, 3, 10, 10) and rel(y, theirs(x, output_size=(10, 10))) <= TOL


def test_convert_in_place_sharing_parameters():
    model = resnet()
    params = {n: p for n, p in model.named_parameters()}
    buffers = {n: b for n, b in model.named_buffers()}
    layers = dict(model.named_modules())
    assert ct.convert(model) is model
    assert {n: p for n, p in model.named_parameters()} == params            # the same objects
    assert all(b is buffers[n] for n, b in model.named_buffers())
    for name, layer in model.named_modules():
        assert layer is layers[name]
        if type(layer).__module__.startswith("torch.nn"):
            assert type(layer) not in ct.modules.OURS, f"{name} was not converted"
    assert type(model.layer2.down[0]) is ct.Conv2d and type(model.stem[3]) is ct.MaxPool2d
    assert type(model.fc) is ct.Linear and type(model.pool) is ct.AdaptiveAvgPool2d


def test_convert_refuses_clearly_and_changes_nothing():
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding_mode="reflect", padding=1),
                          nn.Conv2d(2, 2, 3), nn.Linear(2, 2).to(torch.complex64))
    with pytest.raises(ValueError) as e:
        ct.convert(model)
    msg = str(e.value)
    assert "0 (Conv2d): padding_mode 'reflect'" in msg and "2 (Linear): weight is torch.complex64" \
        in msg and "nothing was converted" in msg
    assert [type(m) for m in model] == [nn.Conv2d, nn.Conv2d, nn.Linear]
    with pytest.raises(TypeError, match="torch.nn.Module"):
        ct.convert(lambda x: x)


def test_convert_leaves_subclasses_and_other_layers():
    class MyConv(nn.Conv2d):
        def forward(self, x):
            return super().forward(x) * 2

    model = nn.Sequential(MyConv(1, 2, 3), nn.GELU(), nn.Conv2d(2, 2, 1), nn.MaxPool2d(2))
    ct.convert(model, algo="fft")
    assert type(model[0]) is MyConv and type(model[1]) is nn.GELU
    assert type(model[2]) is ct.Conv2d and model[2].algo == "fft"
    assert "algo='fft'" in repr(model[2])
    assert model[3].algo == "auto"                     # a conv algorithm, for the convs only
    x = torch.rand(1, 1, 6, 6, dtype=D)
    model.double()
    want = F.max_pool2d(F.conv2d(F.gelu(model[0](x)), model[2].weight, model[2].bias), 2)
    assert rel(model(x), want) <= 1e-10                 # the FFT bound in float64


def test_resnet_and_its_converted_copy_agree():
    """Forward, every parameter's gradient, and the weights and running estimates after 3
    SGD steps (momentum, weight decay), float64, to 1e-10."""
    theirs = resnet()
    ours = ct.convert(twin(theirs))
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 1, 12, 12, dtype=D, generator=g)
    y = torch.randint(0, 10, (4,), generator=g)
    assert rel(ours(x), theirs(x)) <= 1e-10
    for m in (ours, theirs):
        m.zero_grad()
        F.cross_entropy(m(x), y).backward()
    for (n, p), (_, q) in zip(ours.named_parameters(), theirs.named_parameters()):
        assert rel(p.grad, q.grad) <= 1e-10, n
    batches = [(torch.randn(4, 1, 12, 12, dtype=D, generator=g),
                torch.randint(0, 10, (4,), generator=g)) for _ in range(3)]
    lo = sgd_steps(ours, batches, loss_fn=CF.cross_entropy)
    lt = sgd_steps(theirs, batches)
    assert np.allclose(lo, lt, rtol=1e-10, atol=0)
    for (n, a), (_, b) in zip(ours.state_dict().items(), theirs.state_dict().items()):
        assert (rel(a, b) <= 1e-10) if a.is_floating_point() else torch.equal(a, b), n
    ours.eval(), theirs.eval()
    assert rel(ours(x), theirs(x)) <= 1e-10


def test_autocast_runs_our_layers_as_torch():
    """Under CPU autocast (bfloat16) our layers cast as torch's (conv and linear in bfloat16,
    the others in their input's dtype, the loss in float32): the output has torch's dtype and
    the float32 parameters get float32 gradients (tests/test_half.py checks each layer)."""
    model = resnet(dtype=torch.float32)
    ours = ct.convert(twin(model))
    x = torch.randn(2, 1, 10, 10)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = ours(x)
        y_t = model(x)
        loss = F.cross_entropy(y, torch.tensor([1, 2]))
    loss.backward()
    assert y.dtype == y_t.dtype == torch.bfloat16 and loss.dtype == torch.float32
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in ours.parameters())


# ----------------------------------------------------------------------------------------
# the array boundary


def test_import_convgpu_does_not_import_torch():
    code = ("import sys, numpy, convgpu; convgpu.relu(numpy.ones(3)); "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_plain_op_warns_once_per_op_when_grad_is_cut():
    from convgpu import arrays
    arrays._WARNED_GRAD.discard("relu"), arrays._WARNED_GRAD.discard("avg_pool2d")
    x = torch.rand(1, 1, 4, 4, dtype=D, requires_grad=True)
    with warnings.catch_warnings(record=True) as got:
        warnings.simplefilter("always")
        convgpu.relu(x), convgpu.relu(x), convgpu.avg_pool2d(x, 2)
        with torch.no_grad():
            convgpu.max_pool2d(x, 2)                           # no graph to cut: silent
        convgpu.relu(x.detach())
        CF.relu(x)                                             # the bridge: silent
    msgs = [str(w.message) for w in got]
    assert len(msgs) == 2, msgs
    assert msgs[0].startswith("relu: input requires grad") and "convgpu.torch" in msgs[0]
    assert msgs[1].startswith("avg_pool2d: input requires grad")


class DLPackOnly:
    """An array known only through the DLPack protocol (as a JAX array is to us)."""

    def __init__(self, a):
        self._a = a

    def __dlpack__(self, **kw):
        return self._a.__dlpack__(**kw)

    def __dlpack_device__(self):
        return self._a.__dlpack_device__()


def test_any_dlpack_array_is_accepted(gen):
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal((2, 3, 5, 5)), rng.standard_normal((4, 3, 3, 3))
    y = convgpu.conv2d(DLPackOnly(x), DLPackOnly(w), stride=2)
    assert type(y) is np.ndarray
    np.testing.assert_array_equal(y, convgpu.conv2d(x, w, stride=2))
    xt = torch.from_numpy(x)
    np.testing.assert_array_equal(convgpu.max_pool2d(DLPackOnly(xt), 2), convgpu.max_pool2d(x, 2))
    with pytest.raises(TypeError, match="conv2d: weight is a numpy array but input is a "
                                        "dlpack-cpu array"):
        convgpu.conv2d(DLPackOnly(x), w)
    with pytest.raises(TypeError, match="__dlpack__"):
        convgpu.relu([1.0, 2.0])
    p, g = np.ones(5), np.full(5, 0.5)                       # written in place through DLPack
    convgpu.sgd_step(DLPackOnly(p), DLPackOnly(g), lr=0.1)
    np.testing.assert_array_equal(p, np.full(5, 0.95))
    with pytest.raises(ValueError, match="param is updated in place and must be C-contiguous"):
        convgpu.sgd_step(DLPackOnly(np.ones((3, 4)).T), DLPackOnly(np.ones((4, 3))), lr=0.1)


def test_channels_last_in_channels_last_out(gen):
    x = t(2, 3, 6, 5, gen=gen).detach().contiguous(memory_format=torch.channels_last)
    w = t(4, 3, 3, 3, gen=gen).detach()
    for ours, theirs in [(convgpu.conv2d(x, w, padding=1), F.conv2d(x, w, padding=1)),
                         (convgpu.max_pool2d(x, 2), F.max_pool2d(x, 2)),
                         (convgpu.relu(x), F.relu(x)),
                         (CF.conv2d(x, w, padding=1), F.conv2d(x, w, padding=1))]:
        assert ours.is_contiguous(memory_format=torch.channels_last) and not ours.is_contiguous()
        assert rel(ours, theirs) <= TOL
    assert convgpu.relu(x.contiguous()).is_contiguous()
    model = ct.convert(resnet())
    xc = torch.randn(2, 1, 8, 8, dtype=D).contiguous(memory_format=torch.channels_last)
    assert rel(model(xc), model(xc.contiguous())) <= TOL


def test_step_bench_smoke(tmp_path):
    """bench/torch_convert_step.py runs (CPU, tiny): the JSON it writes holds both sides'
    timings and their ratio, torch's time over ours."""
    import json
    import os
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = tmp_path / "step.json"
    subprocess.run([sys.executable, os.path.join(root, "bench", "torch_convert_step.py"),
                    "--device", "cpu", "--batch", "2", "--size", "32", "--width", "2",
                    "--warmup", "1", "--reps", "1", "--batch-k", "1", "--out", str(out)],
                   check=True, timeout=300, capture_output=True)
    r = json.loads(out.read_text())
    t = r["timings"]
    assert r["speed_ratio"]["cold"] == t["torch"]["cold_ms"] / t["convgpu"]["cold_ms"]
    run = subprocess.run([sys.executable, os.path.join(root, "bench", "torch_convert_step.py"),
                          "--device", "cpu", "--size", "8"], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 2 and "--size must be at least 32" in run.stderr
