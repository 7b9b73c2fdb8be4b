"""Compile tier: every Numba kernel compiled for real (not simulated) to PTX for compute
capability 9.0, with exactly the argument types its launcher passes.

The launchers run with launch() replaced by a recorder: they allocate and reshape as they
would on a GPU, but on NumPy arrays, and each (kernel, arguments) they would launch is
compiled with numba.cuda.compile_ptx from the arguments' numba types (C-contiguous arrays
of the launch's dtype and rank). The simulator accepts code that real Numba rejects (a
shared array shaped by a run-time value, say): this tier catches that without a GPU."""
import importlib
import re

import numpy as np
import pytest

numba = pytest.importorskip("numba")
from numba import cuda  # noqa: E402

import convgpu  # noqa: E402
from convgpu.ops import _registry  # noqa: E402

KERNEL_MODULES = ["elementwise", "pool", "conv_direct", "im2col", "gemm", "fft", "winograd",
                  "norm"]


@pytest.fixture(scope="module")
def recorded():
    """{(kernel name, dtype of first array arg): (py_func, argtypes)} over every launcher."""
    if _registry.simulator_enabled():
        pytest.fail("the compile tier must run without NUMBA_ENABLE_CUDASIM")
    seen = {}

    def record(kernel, grid, block, like, *args):
        types = tuple(numba.typeof(a) for a in args)
        key = (kernel.py_func.__name__, types)
        seen.setdefault(key, (kernel.py_func, types))

    mp = pytest.MonkeyPatch()
    for m in KERNEL_MODULES:
        mod = importlib.import_module(f"convgpu.kernels.numba.{m}")
        if hasattr(mod, "launch"):
            mp.setattr(mod, "launch", record)
    mp.setattr(_registry, "backend_unavailable", lambda b: None)
    mp.setattr(_registry, "device_backend_runs_on_host", lambda b: True)
    try:
        with np.errstate(all="ignore"):     # recorded launches never write their outputs
            _drive_every_numba_launcher()
    finally:
        mp.undo()
    return seen


def _drive_every_numba_launcher():
    rng = np.random.default_rng(0)
    for dt in (np.float32, np.float64):
        x = rng.standard_normal((2, 4, 9, 8)).astype(dt)
        w = rng.standard_normal((6, 2, 3, 3)).astype(dt)
        b = rng.standard_normal(6).astype(dt)
        kw = dict(stride=2, padding=1, groups=2)
        gy = rng.standard_normal((2, 6, 5, 4)).astype(dt)
        for algo in [a for bk, a in convgpu.implementations("conv2d", layout="NCHW") if bk == "numba"]:
            if algo != "winograd":                      # 3x3 stride 1 only: below
                convgpu.conv2d(x, w, b, **kw, backend="numba", algo=algo)
        for bias in (b, None):
            convgpu.conv2d(x, w, bias, padding=1, groups=2, backend="numba", algo="winograd")
        for algo in [a for bk, a in convgpu.implementations("conv2d_backward_input", layout="NCHW") if bk == "numba"]:
            convgpu.conv2d_backward_input(gy, w, x.shape, **kw, backend="numba", algo=algo)
        for algo in [a for bk, a in convgpu.implementations("conv2d_backward_weight", layout="NCHW") if bk == "numba"]:
            if algo != "winograd":
                convgpu.conv2d_backward_weight(x, gy, w.shape, **kw, backend="numba", algo=algo)
        convgpu.conv2d_backward_weight(x, rng.standard_normal((2, 6, 9, 8)).astype(dt), w.shape,
                                       padding=1, groups=2, backend="numba", algo="winograd")
        convgpu.conv2d_backward_bias(gy, backend="numba")
        y, idx = convgpu.max_pool2d(x, 3, 2, 1, return_indices=True, backend="numba")
        idx = np.zeros(y.shape, np.int64)
        # recorded launches write nothing: idx holds no real indices, so no validation
        convgpu.max_pool2d_backward(y, idx, x.shape, 3, 2, 1, backend="numba", algo="gather",
                                    check_indices=False)
        convgpu.max_pool2d_backward(y, idx, x.shape, backend="numba", algo="plane",
                                    check_indices=False)
        convgpu.avg_pool2d(x, 3, 2, 1, backend="numba")
        convgpu.avg_pool2d_backward(y, x.shape, 3, 2, 1, backend="numba")
        convgpu.global_avg_pool2d(x, backend="numba")
        convgpu.global_avg_pool2d_backward(x[:, :, 0, 0].copy(), x.shape, backend="numba")
        convgpu.adaptive_avg_pool2d(x, (4, 3), backend="numba")
        convgpu.adaptive_avg_pool2d_backward(x[:, :, :4, :3].copy(), x.shape, backend="numba")
        convgpu.relu(x, backend="numba")
        convgpu.relu_backward(x, x, backend="numba")
        convgpu.bias_add(x, b[:4].copy(), backend="numba")
        z = rng.standard_normal((5, 10)).astype(dt)
        t = np.arange(5) % 10
        convgpu.softmax_cross_entropy(z, t, backend="numba")
        convgpu.softmax_cross_entropy_backward(z, t, backend="numba")
        lw = rng.standard_normal((7, 10)).astype(dt)
        convgpu.linear(z, lw, lw[:, 0].copy(), backend="numba")
        convgpu.linear_backward(rng.standard_normal((5, 7)).astype(dt), z, lw, backend="numba")
        st = [rng.standard_normal((4, 5)).astype(dt) for _ in range(4)]
        convgpu.adam_step(*st, 1, lr=0.1, weight_decay=0.01, backend="numba")
        convgpu.sgd_step(*st[:3], lr=0.1, momentum=0.9, backend="numba")
        convgpu.sgd_step(*st[:2], lr=0.1, backend="numba")
        rs = [rng.standard_normal(4).astype(dt) for _ in range(3)]
        for training in (True, False):
            _, mean, invstd = convgpu.batch_norm(x, rs[0], np.abs(rs[1]), rs[2], rs[2], training,
                                                 return_stats=True, backend="numba")
            convgpu.batch_norm_backward(x, x, mean, invstd, rs[2], training, backend="numba")
    _drive_float16_launchers(rng)


def _drive_float16_launchers(rng):
    """Every numba implementation registered for float16, launched on float16 arrays."""
    dt = np.float16
    x = rng.standard_normal((2, 4, 9, 8)).astype(dt)
    w = rng.standard_normal((6, 2, 3, 3)).astype(dt)
    gy = rng.standard_normal((2, 6, 5, 4)).astype(dt)
    kw = dict(stride=2, padding=1, groups=2)
    for bias in (rng.standard_normal(6).astype(dt), None):
        convgpu.conv2d(x, w, bias, **kw, backend="numba", algo="direct")
        convgpu.conv2d(x, w, bias, **kw, backend="numba", algo="direct_tiled")
    convgpu.conv2d_backward_input(gy, w, x.shape, **kw, backend="numba", algo="direct")
    convgpu.conv2d_backward_weight(x, gy, w.shape, **kw, backend="numba", algo="direct")
    convgpu.conv2d_backward_bias(gy, backend="numba")
    y, _ = convgpu.max_pool2d(x, 3, 2, 1, return_indices=True, backend="numba")
    convgpu.max_pool2d_backward(y, np.zeros(y.shape, np.int64), x.shape, 3, 2, 1,
                                backend="numba", algo="gather", check_indices=False)
    convgpu.avg_pool2d(x, 3, 2, 1, backend="numba")
    convgpu.avg_pool2d_backward(y, x.shape, 3, 2, 1, backend="numba")
    convgpu.global_avg_pool2d(x, backend="numba")
    convgpu.global_avg_pool2d_backward(x[:, :, 0, 0].copy(), x.shape, backend="numba")
    convgpu.adaptive_avg_pool2d(x, (4, 3), backend="numba")
    convgpu.adaptive_avg_pool2d_backward(x[:, :, :4, :3].copy(), x.shape, backend="numba")
    convgpu.relu(x, backend="numba")
    convgpu.relu_backward(x, x, backend="numba")
    convgpu.bias_add(x, x[0, :, 0, 0].copy(), backend="numba")
    st = [rng.standard_normal((4, 5)).astype(dt) for _ in range(4)]
    convgpu.adam_step(*st, 1, lr=0.1, weight_decay=0.01, backend="numba")
    convgpu.sgd_step(*st[:3], lr=0.1, momentum=0.9, backend="numba")
    convgpu.sgd_step(*st[:2], lr=0.1, backend="numba")


EXPECTED_KERNELS = {
    "relu_k", "relu_backward_k", "bias_add_k", "channel_sum_k", "xent_rows_k", "xent_backward_k",
    "max_pool_k", "max_backward_gather_k", "max_backward_plane_k", "avg_pool_k",
    "avg_backward_k", "gap_k", "gap_backward_k", "conv_direct_k", "conv_tiled_k",
    "bwd_input_gather_k", "bwd_weight_k", "im2col_k", "col2im_k", "gemm_k", "mac_fwd_k",
    "mac_bwd_input_k", "mac_bwd_weight_k", "winograd_filter_k", "winograd_input_k",
    "winograd_output_k", "winograd_grad_tiles_k", "winograd_grad_filter_k", "adam_step_k",
    "sgd_step_k", "adaptive_k", "adaptive_backward_k", "stats_k", "apply_k", "bwd_sums_k", "bwd_apply_k",
}


# the kernels of the numba implementations registered for float16 (float32 sums)
EXPECTED_FLOAT16_KERNELS = {
    "relu_k", "relu_backward_k", "bias_add_k", "channel_sum_k", "max_pool_k",
    "max_backward_gather_k", "avg_pool_k", "avg_backward_k", "gap_k", "gap_backward_k",
    "adaptive_k", "adaptive_backward_k", "conv_direct_k", "conv_tiled_k", "bwd_input_gather_k",
    "bwd_weight_k", "adam_step_k", "sgd_step_k",
}


def _float16_launches(recorded):
    return {k: v for k, v in recorded.items()
            if any(str(getattr(t, "dtype", "")) == "float16" for t in k[1])}


def test_every_float16_implementation_is_compiled(recorded):
    """Each numba implementation registered for float16 had its kernel compiled below on
    float16 arrays (the simulator alone would accept code real Numba rejects)."""
    served = {(op, i.algo) for op in _registry.ops() if op not in _registry.ALIASES
              for i in _registry.all_impls(op) if i.backend == "numba" and "float16" in i.dtypes}
    assert len(served) == 18, sorted(served)
    assert {k[0] for k in _float16_launches(recorded)} == EXPECTED_FLOAT16_KERNELS


# float64 arithmetic, or data widened to float64 (a constant's mov / cvt is neither)
F64_WORK = re.compile(r"\b(add|sub|mul|fma|div|setp|min|max|sqrt|neg|abs)\.[a-z.]*f64\b"
                      r"|\bcvt\.[a-z.]*f64\.f(16|32)\b")


def test_float16_kernels_sum_in_float32(recorded):
    """float16 data is converted to float32 (cvt.f32.f16) and summed there, never in float64,
    and results are rounded back once (cvt.rn.f16.f32)."""
    failures = []
    for (name, types), (fn, argtypes) in sorted(_float16_launches(recorded).items(),
                                                key=lambda kv: str(kv[0])):
        ptx, _ = cuda.compile_ptx(fn, argtypes, cc=(9, 0))
        if F64_WORK.search(ptx):
            failures.append(f"{name}: float64 arithmetic in a float16 kernel: "
                            f"{F64_WORK.search(ptx).group(0)}")
        arith = name not in ("relu_k", "relu_backward_k", "max_pool_k")   # selections
        if arith and not ("cvt.f32.f16" in ptx and "cvt.rn.f16.f32" in ptx):
            failures.append(f"{name}: no float16 -> float32 -> float16 conversions")
    assert not failures, "\n".join(failures)


def test_every_kernel_is_launched_by_some_launcher(recorded):
    names = {k[0] for k in recorded}
    assert names == EXPECTED_KERNELS, (names ^ EXPECTED_KERNELS)


def test_every_launch_compiles_for_sm90(recorded):
    failures = []
    for (name, types), (fn, argtypes) in sorted(recorded.items(), key=lambda kv: str(kv[0])):
        try:
            ptx, _ = cuda.compile_ptx(fn, argtypes, cc=(9, 0))
        except Exception as e:              # collect every failure, then report them all
            failures.append(f"{name}{argtypes}: {type(e).__name__}: {str(e)[:300]}")
            continue
        if ".target sm_90" not in ptx:
            failures.append(f"{name}: PTX not for sm_90")
        # float32 kernels must not silently compute in double precision
        floats = [str(t.dtype) for t in argtypes if "float" in str(getattr(t, "dtype", ""))]
        if floats and set(floats) == {"float32"}:
            if ".f64" in ptx:
                failures.append(f"{name}{argtypes}: float64 arithmetic in a float32 kernel")
    assert not failures, "\n".join(failures)
