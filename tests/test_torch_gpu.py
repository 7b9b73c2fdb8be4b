"""convgpu.torch on a GPU (`pytest -m gpu`; skipped without one): the Functions on CUDA
tensors against torch's (cuDNN) in float64 and gradcheck, the converted ResNet against
torch's, our kernels on torch's current stream (no hidden synchronisation) and on the
tensor's device, DDP with NCCL in one process, channels_last and DLPack on the device."""
import os
import socket

import pytest

pytestmark = pytest.mark.gpu

torch = pytest.importorskip("torch")
cupy = pytest.importorskip("cupy")
if not torch.cuda.is_available():
    pytest.skip("torch sees no CUDA GPU", allow_module_level=True)
try:
    if cupy.cuda.runtime.getDeviceCount() == 0:
        raise RuntimeError
except Exception:
    pytest.skip("CuPy sees no CUDA GPU", allow_module_level=True)

os.environ["CONVGPU_POISON"] = "1"     # outputs start as NaN: unwritten elements fail

from torch.autograd import gradcheck  # noqa: E402

import convgpu  # noqa: E402
import convgpu.torch as ct  # noqa: E402
from convgpu.torch import functional as CF  # noqa: E402
from torch_resnet import rel, resnet, sgd_steps, twin  # noqa: E402

F = torch.nn.functional
D = torch.float64
CUDA = torch.device("cuda", 0)


@pytest.fixture(autouse=True)
def exact_torch():
    """torch's float64 convolutions without TF32 or nondeterministic shortcuts."""
    old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old


@pytest.fixture(autouse=True)
def gemm_paths(monkeypatch):
    """algo="auto" among the direct and GEMM implementations only: the transform algorithms
    (FFT, Winograd) have their own float64 bound, 1e-10 per op (test_gpu.py holds them to
    it), and the comparisons here are at the GEMM paths' 1e-12 (1e-10 over a network)."""
    from convgpu.ops import _registry as R
    monkeypatch.setattr(R, "_REGISTRY", {
        op: [i for i in impls if not i.algo.startswith(("fft", "winograd"))]
        for op, impls in R._REGISTRY.items()})
    monkeypatch.setattr(R, "_CHOICE", {})


def r(*shape, seed=0, dtype=D):
    g = torch.Generator(device=CUDA).manual_seed(seed + sum(shape))
    return torch.randn(shape, dtype=dtype, device=CUDA, generator=g)


@pytest.mark.parametrize("backend", ["cuda", "numba"])
def test_functions_on_cuda_tensors_match_torch(backend):
    kw = {"backend": backend}
    x, w, b = (r(2, 4, 9, 7).requires_grad_(), r(6, 2, 3, 3, seed=1).requires_grad_(),
               r(6, seed=2).requires_grad_())
    wt = r(4, 3, 2, 3, seed=3).requires_grad_()
    cases = [
        (lambda: CF.conv2d(x, w, b, (2, 1), 1, (1, 2), 2, **kw),
         lambda: F.conv2d(x, w, b, (2, 1), 1, (1, 2), 2), (x, w, b)),
        (lambda: CF.conv_transpose2d(x, wt, b[:3], (3, 2), 1, (2, 3), 1, (4, 4), **kw),
         lambda: F.conv_transpose2d(x, wt, b[:3], (3, 2), 1, (2, 3), 1, (4, 4)), (x, wt, b)),
        (lambda: CF.max_pool2d(x, 3, 2, 1, **kw), lambda: F.max_pool2d(x, 3, 2, 1), (x,)),
        (lambda: CF.avg_pool2d(x, 3, 2, 1, **kw), lambda: F.avg_pool2d(x, 3, 2, 1), (x,)),
        (lambda: CF.adaptive_avg_pool2d(x, (2, 3), **kw),
         lambda: F.adaptive_avg_pool2d(x, (2, 3)), (x,)),
        (lambda: CF.batch_norm(x, None, None, None, None, True, **kw),
         lambda: F.batch_norm(x, None, None, None, None, True), (x,)),
        (lambda: CF.relu(x, **kw), lambda: F.relu(x), (x,)),
        (lambda: CF.linear(x.flatten(1), r(5, 4 * 9 * 7, seed=3), None, **kw),
         lambda: F.linear(x.flatten(1), r(5, 4 * 9 * 7, seed=3)), (x,)),
    ]
    for ours, theirs, leaves in cases:
        y, ref = ours(), theirs()
        assert y.device == ref.device and rel(y, ref) <= 1e-12
        gy = r(*y.shape, seed=9)
        for a, c in zip(torch.autograd.grad(y, leaves, gy), torch.autograd.grad(ref, leaves, gy)):
            assert rel(a, c) <= 1e-12
    z = r(6, 5).requires_grad_()
    y = torch.tensor([0, 4, 1, -100, 2, 2], device=CUDA)
    # the options run on the cuda backend's array_ops; the numba backend's row kernels
    # serve the plain loss only (and say so)
    options = [{}, {"weight": r(5).abs(), "label_smoothing": 0.1}]
    for opts in options if backend == "cuda" else options[:1]:
        assert rel(CF.cross_entropy(z, y.clamp(min=0), **opts, **kw),
                   F.cross_entropy(z, y.clamp(min=0), **opts)) <= 1e-12
        assert rel(CF.cross_entropy(z, y, **opts, backend="cuda"),
                   F.cross_entropy(z, y, **opts)) <= 1e-12
    if backend == "numba":
        with pytest.raises(ValueError, match="row kernels compute the unweighted mean"):
            CF.cross_entropy(z, y, **kw)


def test_gradcheck_on_cuda():
    x, w = r(1, 2, 5, 4).requires_grad_(), r(3, 2, 2, 3, seed=1).requires_grad_()
    assert gradcheck(lambda x, w: CF.conv2d(x, w, None, 1, 1), (x, w))
    assert gradcheck(lambda x: CF.max_pool2d(x, 2, 1), (r(1, 2, 4, 4, seed=4).requires_grad_(),))


def test_converted_resnet_on_cuda_matches_torch():
    theirs = resnet().to(CUDA)
    ours = ct.convert(twin(theirs))
    batches = [(r(4, 1, 12, 12, seed=s), torch.randint(0, 10, (4,), device=CUDA))
               for s in range(3)]
    x = batches[0][0]
    assert rel(ours(x), theirs(x)) <= 1e-10
    sgd_steps(ours, batches, loss_fn=CF.cross_entropy)
    sgd_steps(theirs, batches)
    for (n, a), (_, b) in zip(ours.state_dict().items(), theirs.state_dict().items()):
        assert (rel(a, b) <= 1e-10) if a.is_floating_point() else torch.equal(a, b), n


def test_kernels_run_on_torchs_current_stream_without_waiting():
    """On a side stream: the launch happens on that stream (CuPy's current stream inside the
    op is torch's), the host returns while the stream is still busy with torch's earlier
    work (no synchronisation), and the result is ordered after that work."""
    from convgpu.ops import conv as conv_ops
    x, w = r(2, 3, 16, 16, dtype=torch.float32), r(8, 3, 3, 3, seed=1, dtype=torch.float32)
    CF.conv2d(x, w, padding=1)                       # autotuning (it synchronises) done here
    seen = []
    real = conv_ops.dispatch

    def spy(*a, **k):
        seen.append((cupy.cuda.get_current_stream().ptr, cupy.cuda.Device().id))
        return real(*a, **k)

    side = torch.cuda.Stream()
    conv_ops.dispatch = spy
    try:
        with torch.cuda.stream(side):
            x2 = x * 2                                # torch's work on the side stream
            torch.cuda._sleep(200_000_000)            # keep the stream busy for a while
            y = CF.conv2d(x2, w, padding=1)
            busy = not side.query()
    finally:
        conv_ops.dispatch = real
    assert seen == [(side.cuda_stream, 0)]
    assert busy, "the op waited for the stream"
    side.synchronize()
    assert rel(y, F.conv2d(x * 2, w, padding=1)) <= 1e-5


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_kernels_run_on_the_tensors_device():
    x, w = r(1, 2, 6, 6).to("cuda:1"), r(3, 2, 3, 3, seed=1).to("cuda:1")
    with torch.cuda.device(0), cupy.cuda.Device(0):
        y = CF.conv2d(x, w)
    assert y.device == torch.device("cuda", 1)
    assert rel(y, F.conv2d(x, w)) <= 1e-12


def test_channels_last_and_dlpack_on_the_device():
    x = r(2, 3, 6, 5).contiguous(memory_format=torch.channels_last)
    y = convgpu.max_pool2d(x, 2)
    assert y.is_cuda and y.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(y, F.max_pool2d(x, 2))

    class DLPackOnly:
        def __init__(self, a):
            self.a = a

        def __dlpack__(self, **kw):
            return self.a.__dlpack__(**kw)

        def __dlpack_device__(self):
            return self.a.__dlpack_device__()

    out = convgpu.relu(DLPackOnly(x.contiguous()))
    assert isinstance(out, cupy.ndarray)
    assert torch.equal(torch.from_dlpack(out), F.relu(x))


def test_ddp_nccl_one_process(tmp_path):
    """DDP with NCCL over the converted model in one process (world size 1): the step runs
    and equals the unwrapped model's."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{port}", rank=0,
                            world_size=1)
    try:
        model = ct.convert(resnet().to(CUDA))
        plain = twin(model)
        batches = [(r(4, 1, 10, 10, seed=7), torch.randint(0, 10, (4,), device=CUDA))]
        sgd_steps(DDP(model, device_ids=[0]), batches, loss_fn=CF.cross_entropy)
        sgd_steps(plain, batches, loss_fn=CF.cross_entropy)
        for (n, a), (_, b) in zip(model.named_parameters(), plain.named_parameters()):
            assert rel(a, b) <= 1e-12, n
    finally:
        dist.destroy_process_group()


def test_resnet18_step_bench(tmp_path):
    """bench/torch_convert_step.py: a ResNet-18 step, torch vs converted, cold and batch,
    float32 at batch 32 (the JSON goes to $OUT when the GPU script sets it)."""
    import json
    import subprocess
    import sys
    out = os.path.join(os.environ.get("OUT", str(tmp_path)), "torch_convert_step.json")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    subprocess.run([sys.executable, os.path.join(root, "bench", "torch_convert_step.py"),
                    "--reps", "5", "--batch-k", "5", "--out", out], check=True, timeout=600)
    result = json.load(open(out))
    assert set(result["speed_ratio"]) == {"cold", "batch"}
    assert all(v > 0 for v in result["speed_ratio"].values())
