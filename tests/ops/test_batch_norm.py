"""Batch normalisation on every backend (tests/ops/conftest.py): training with the running
estimates' update and evaluation, weight and bias optional, then the three gradients,
against the float64 reference functions with the running estimates updated by hand
(tests/helpers.py batch_norm_expected). The reference itself is checked by what does not
come from it in tests/test_norm.py. Then the paths only the CUDA C kernels have (norm.cu):
split statistics, the plane kernels, their grids."""
import itertools

import numpy as np
import pytest

from helpers import (BN_SHAPES, ORDERS, RUNNABLE, assert_batch_norm_close, batch_norm_expected,
                     batch_norm_inputs, batch_norm_run, spy_get_function)

# every mode on every shape (the running estimates are needed in evaluation)
MODES = [c for c in itertools.product(BN_SHAPES, [np.float32, np.float64], [True, False],
                                      [True, False], [True, False]) if c[2] or c[4]]
# the simulator's share: slow, so one case per kind of row
SIMULATED = [
    ((4, 3, 5, 6), dt, True, True, True) for dt in (np.float32, np.float64)] + [   # rows of 30
    ((6, 5), dt, True, False, False) for dt in (np.float32, np.float64)] + [       # (N, C)
    ((3, 2, 9), dt, False, True, True) for dt in (np.float32, np.float64)]         # evaluation


def _cases():
    per = {"numpy": MODES, "cuda": MODES, "numba": SIMULATED}
    return [pytest.param(b, *c, id=f"{b}-{c[0]}-{np.dtype(c[1]).name}-"
                         f"{'train' if c[2] else 'eval'}-{'affine' if c[3] else 'plain'}-"
                         f"{'running' if c[4] else 'none'}")
            for b in RUNNABLE for c in per[b]]


def bn_run(backend, inp, training):
    """batch_norm_run; under the host emulation in each of ORDERS from the same inputs (it
    updates copies of the running estimates, so both_orders would update them twice),
    bitwise equal."""
    if backend != "cuda":
        return batch_norm_run(backend, inp, training)
    from convgpu.kernels.cuda.emulator import cuda_host
    runs = []
    for order in ORDERS:
        with cuda_host.order(order):
            runs.append(batch_norm_run("cuda", inp, training))
    for k, v in runs[0].items():
        for other in runs[1:]:
            if v is not None:
                np.testing.assert_array_equal(v, other[k], err_msg=f"{k} depends on the order")
    return runs[0]


@pytest.mark.parametrize("backend, shape, dtype, training, affine, running", _cases(),
                         indirect=["backend"])
def test_batch_norm(rng, backend, shape, dtype, training, affine, running):
    inp = batch_norm_inputs(rng, shape, dtype, affine, running)
    assert_batch_norm_close(bn_run(backend, inp, training), batch_norm_expected(inp, training),
                            dtype)


@pytest.mark.backends("cuda")
@pytest.mark.parametrize("shape, min_per_thread", [
    ((3, 2, 701), 4),        # 2 splits of 2 and 1 rows; rows longer than the block
    ((37, 2, 61), 4),        # 19 and 18 rows shorter than the block: a step crosses rows
    ((9, 2, 233), 1),        # 8 splits of 1-2 rows
    ((5, 3, 2, 130), 1),     # 5 splits of one row of 260: 4 threads get a second value
])
def test_batch_norm_splits(rng, monkeypatch, backend, shape, min_per_thread):
    """The statistics and gradient sums split over several blocks per channel (Welford per
    thread, Chan's merge in the block and across splits), and the apply kernels' grid-stride
    loops run with a grid of 3 blocks, so the channel walk advances past the grid."""
    from convgpu.kernels.cuda import norm
    monkeypatch.setattr(norm, "NORM_MIN_PER_THREAD", min_per_thread)
    monkeypatch.setattr(norm, "elementwise_grid", lambda n: (3,))
    N, C = shape[:2]
    L = int(np.prod(shape[2:]))
    S = norm.norm_splits(C, N, L)
    assert S == max(1, min(-(-1024 // C), N, N * L // (256 * min_per_thread))) and S > 1
    for training in (True, False):
        inp = batch_norm_inputs(rng, shape, np.float32)
        assert_batch_norm_close(bn_run(backend, inp, training),
                                batch_norm_expected(inp, training), np.float32)


@pytest.mark.backends("cuda")
@pytest.mark.parametrize("shape, dtype, vector", [
    ((3, 2, 5, 6), np.float32, 1),      # planes of 30: no vectors; slices of 8, the last of 6
    ((4, 3, 16), np.float32, 4),        # float4
    ((4, 3, 2, 8), np.float64, 2),      # double2
    ((2, 5, 12), np.float64, 2),        # three slices of 4
])
def test_batch_norm_plane_kernels(rng, monkeypatch, backend, shape, dtype, vector):
    """The apply kernels over planes (a block per plane slice, the channel's constants once,
    vectors where the plane length allows), forced onto small shapes: several slices per
    plane, and 3 plane rows in the grid so blocks step over the planes."""
    from convgpu.kernels.cuda import norm
    monkeypatch.setattr(norm, "NORM_PLANE_MIN", 1)
    monkeypatch.setattr(norm, "NORM_SLICE_MIN", 4)
    monkeypatch.setattr(norm, "MAX_GRID_YZ", 3)
    used = spy_get_function(monkeypatch)
    N, C = shape[:2]
    L = int(np.prod(shape[2:]))
    slices, rows, length = norm.norm_plane_grid(N, C, L)
    assert slices > 1 and rows == 3 < N * C and length % 4 == 0
    for training in (True, False):
        inp = batch_norm_inputs(rng, shape, dtype)
        assert_batch_norm_close(bn_run(backend, inp, training),
                                batch_norm_expected(inp, training), dtype)
    t = "float" if dtype == np.float32 else "double"
    assert {e for e in used if "apply" in e} == {f"batch_norm_apply_planes<{t}, {vector}>",
                                                 f"batch_norm_bwd_apply_planes<{t}, {vector}>"}


@pytest.mark.backends("cuda")
def test_batch_norm_plane_grid(backend):
    from convgpu.kernels.cuda import norm
    assert norm.norm_plane_grid(32, 64, 112 * 112) == (1, 2048, 12544)   # ResNet-50 stem
    assert norm.norm_plane_grid(32, 2048, 7 * 7) is None                # flat kernels
    assert norm.norm_plane_grid(1, 64, 50176) == (32, 64, 1568)         # 2048 blocks
    assert norm.norm_plane_grid(1, 1, 1030) == (1, 1, 1032)             # one slice
    s, r, n = norm.norm_plane_grid(2, 3, 100003)
    assert (s - 1) * n < 100003 <= s * n and n % 4 == 0 and n >= norm.NORM_SLICE_MIN


@pytest.mark.backends("cuda")
def test_batch_norm_splits_depend_on_the_shape_only(backend):
    from convgpu.kernels.cuda import norm
    assert norm.norm_splits(64, 32, 112 * 112) == 16           # 1024 blocks
    assert norm.norm_splits(64, 8, 112 * 112) == 8              # at most the N rows
    assert norm.norm_splits(2048, 32, 7 * 7) == 1
    assert norm.norm_splits(3, 1000, 1) == 1                    # < 4 values per thread
    assert norm.norm_splits(1, 10 ** 6, 1000) == 1024
