"""convgpu.torch through the cuda backend's kernels, emulated on the CPU (CONVGPU_CUDA_HOST=1:
kernels/cuda/*.cu run by the emulator on the tensors' host memory): gradcheck (float64) of
every Function on tiny shapes, and a training step of the converted ResNet against the
NumPy backend's. Emulated is not validated: tests/test_torch_gpu.py runs on a GPU."""
import pytest

torch = pytest.importorskip("torch")
from convgpu.kernels.cuda.emulator import cuda_host  # noqa: E402

if not cuda_host.available():
    pytest.skip(f"no C++ compiler ({cuda_host.CXX}) for the host emulation",
                allow_module_level=True)

from torch.autograd import gradcheck  # noqa: E402

import convgpu.torch as ct  # noqa: E402
from convgpu.torch import functional as CF  # noqa: E402
from torch_resnet import rel, resnet, sgd_steps, twin  # noqa: E402

D = torch.float64
CUDA = {"backend": "cuda"}


LAUNCHED = []


@pytest.fixture(autouse=True)
def emulated(monkeypatch):
    """The emulation on, and the kernels each test launches recorded (none: a test that
    never reached the cuda backend fails)."""
    from convgpu.kernels.cuda import launcher_modules, module
    monkeypatch.setenv("CONVGPU_CUDA_HOST", "1")
    monkeypatch.setenv("CONVGPU_POISON", "1")          # outputs start as NaN
    real = module.get_function
    LAUNCHED.clear()
    for mod in launcher_modules():
        if getattr(mod, "get_function", None) is real:
            monkeypatch.setattr(mod, "get_function",
                                lambda f, e: LAUNCHED.append(e) or real(f, e))
    yield
    assert LAUNCHED, "no emulated kernel was launched"


def t(*shape, seed=0):
    g = torch.Generator().manual_seed(seed + len(shape) * 7 + sum(shape))
    return (torch.rand(shape, dtype=D, generator=g) + 0.5) * \
        (torch.randint(0, 2, shape, generator=g) * 2 - 1)


def check(fn, *inputs):
    """gradcheck of fn through the emulated kernels, and the same outputs and gradients as
    through the NumPy reference (backend "numpy")."""
    inputs = tuple(x.requires_grad_() if isinstance(x, torch.Tensor) and x.is_floating_point()
                   else x for x in inputs)
    assert gradcheck(lambda *a: fn(*a, **CUDA), inputs)
    y, ref = fn(*inputs, **CUDA), fn(*inputs, backend="numpy")
    assert rel(y, ref) <= 1e-12
    leaves = [x for x in inputs if isinstance(x, torch.Tensor) and x.requires_grad]
    gy = t(*y.shape, seed=5)
    for a, b in zip(torch.autograd.grad(y, leaves, gy),
                    torch.autograd.grad(fn(*inputs, backend="numpy"), leaves, gy)):
        assert rel(a, b) <= 1e-12


@pytest.mark.parametrize("stride, padding, dilation, groups", [
    (1, 1, 1, 1), ((2, 1), (0, 1), (1, 2), 2)])
def test_conv2d(stride, padding, dilation, groups):
    check(lambda x, w, b, **kw: CF.conv2d(x, w, b, stride, padding, dilation, groups, **kw),
          t(1, 2, 4, 5), t(2, 2 // groups, 2, 3), t(2))


@pytest.mark.parametrize("stride, padding, output_padding, dilation", [
    ((2, 1), 1, (1, 0), (1, 2)),
    ((1, 2), (1, 0), (1, 1), (2, 1)),       # output_padding reaches the stride along H
])
def test_conv_transpose2d(stride, padding, output_padding, dilation):
    check(lambda x, w, b, **kw: CF.conv_transpose2d(x, w, b, stride, padding, output_padding, 2,
                                                    dilation, **kw),
          t(1, 2, 3, 2), t(2, 1, 2, 2), t(2))


def test_pooling():
    x = (torch.randperm(2 * 5 * 4, generator=torch.Generator().manual_seed(1)).to(D) / 10 - 3) \
        .reshape(1, 2, 5, 4)                                       # distinct: no argmax ties
    check(lambda x, **kw: CF.max_pool2d(x, 3, 2, 1, **kw), x)
    check(lambda x, **kw: CF.avg_pool2d(x, 2, 1, 1, False, False, **kw), t(1, 2, 3, 4))
    check(lambda x, **kw: CF.adaptive_avg_pool2d(x, (2, 3), **kw), t(1, 2, 3, 4))
    check(lambda x, **kw: CF.global_avg_pool2d(x, **kw), t(2, 2, 3, 2))


def test_batch_norm_linear_relu_cross_entropy():
    check(lambda x, w, b, **kw: CF.batch_norm(x, None, None, w, b, True, **kw),
          t(3, 2, 2, 1), t(2, seed=1), t(2, seed=2))
    check(lambda x, w, b, **kw: CF.linear(x, w, b, **kw), t(3, 4), t(2, 4), t(2))
    check(lambda x, **kw: CF.relu(x, **kw), t(2, 3))
    y = torch.tensor([1, 0, 2, 2])
    check(lambda z, **kw: CF.cross_entropy(z, y, **kw), t(4, 3))
    check(lambda z, **kw: CF.cross_entropy(z, y, t(3).abs(), label_smoothing=0.2,
                                           ignore_index=0, **kw), t(4, 3))
    q = t(4, 3, seed=3).abs()                 # class probabilities (soft targets)
    check(lambda z, q, w, **kw: CF.cross_entropy(z, q, w, label_smoothing=0.2, **kw),
          t(4, 3), q, t(3).abs())
    import convgpu
    with pytest.raises(ValueError, match="class-index labels, not class probabilities"):
        convgpu.softmax_cross_entropy(t(4, 3).numpy(), q.detach().numpy(), backend="cuda",
                                      algo="rowwise")


def test_converted_resnet_step():
    """One SGD step of the converted ResNet on the emulated kernels equals the NumPy
    backend's (float64)."""
    ours = ct.convert(resnet(), backend="cuda")
    ref = ct.convert(twin(ours), backend="numpy")            # our layers take the new backend
    assert ref.fc.backend == "numpy" and ours.fc.backend == "cuda"
    x, y = t(2, 1, 6, 6), torch.tensor([3, 7])
    lo = sgd_steps(ours, [(x, y)], loss_fn=lambda z, y: CF.cross_entropy(z, y, **CUDA))
    lr = sgd_steps(ref, [(x, y)], loss_fn=CF.cross_entropy)
    assert abs(lo[0] - lr[0]) <= 1e-12 * abs(lr[0])
    for (n, a), (_, b) in zip(ours.state_dict().items(), ref.state_dict().items()):
        assert (rel(a, b) <= 1e-12) if a.is_floating_point() else torch.equal(a, b), n
