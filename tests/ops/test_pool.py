"""Pooling on every backend (tests/ops/conftest.py): max pooling with its indices and both
backward gathers, average pooling at its divisor corners, adaptive and global average
pooling, float32 and float64, against independent oracles (tests/brute.py's loops, torch's
float64 autograd, sums written out), never against the code under test. Then the paths
only the CUDA C kernels have: the unrolled and interior paths, the tiled kernels of
kernels/dev, the gathers' index checks on the device."""
import numpy as np
import pytest

import brute
import convgpu
from convgpu.ops._registry import all_impls
from helpers import (ADAPTIVE_EDGES, ADAPTIVE_SMALL, AVGP_EDGES, AVGP_SMALL, MAXP_SMALL, TOL,
                     assert_bounded, assert_close, check_adaptive_edge, check_avg_pool_edge,
                     rand, shuffled_linspace, torch_adaptive_avg_pool2d, torch_avg_pool2d)


def algos(op, backend):
    """The implementations algo="auto" may pick for `op` on `backend` (kernels/dev's are
    tested by name below)."""
    return [i.algo for i in all_impls(op) if i.backend == backend and not i.dev]


def max_backward_oracle(gy, idx, shape):
    """The max pooling's input gradient: each gy added at the flat index its window chose."""
    N, C, H, W = shape
    gx = np.zeros((N * C, H * W))
    rows = np.repeat(np.arange(N * C), idx[0, 0].size)
    np.add.at(gx, (rows, np.asarray(idx).reshape(-1)), np.asarray(gy, np.float64).reshape(-1))
    return gx.reshape(shape)


# ----------------------------------------------------------------------------------------
# max pooling

MAXP = MAXP_SMALL + [
    # max_pool2d_fwd<.., 3> interior and border paths with the backward by cells (odd sizes)
    (2, 3, 11, 13, (3, 3), (2, 2), (0, 0), (1, 1), False),
    # 2x2/1 pad 1: one-element cells, and cells of padding only (ph == sh)
    (1, 2, 9, 10, (2, 2), (1, 1), (1, 0), (1, 1), True),
    # dilated square windows: the interior path with dilation; cells with (k-1)*d = 2 < 2*s
    (1, 2, 10, 9, (2, 2), (2, 2), (1, 1), (2, 2), False),
    (1, 2, 13, 12, (3, 3), (3, 2), (1, 1), (2, 1), True),
    # one column of cells: every cell starts a row, so the cells kernel must not take the
    # windows of the cell before it (the row above, whose window overlaps this cell's rows)
    (2, 3, 9, 1, (3, 3), (2, 2), (1, 1), (1, 1), False),
]


@pytest.mark.index_widths
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", MAXP)
def test_max_pool2d_and_backward(rng, backend, run, case, dtype):
    """Values and indices exactly the loops'; the input gradient by every backward
    implementation, given the forward's geometry (and without it where one needs none)."""
    N, C, H, W, k, s, p, d, cm = case
    x = shuffled_linspace(rng, (N, C, H, W), dtype)
    yr, ir = brute.max_pool2d(x, k, s, p, d, cm)
    y, i = run(lambda: convgpu.max_pool2d(x, k, s, p, d, cm, return_indices=True,
                                          backend=backend))
    assert y.dtype == dtype
    np.testing.assert_array_equal(y, yr)
    np.testing.assert_array_equal(i, ir)
    gy = rand(rng, y.shape, dtype)
    ref = max_backward_oracle(gy, ir, x.shape)
    for algo in algos("max_pool2d_backward", backend):
        geometries = [(k, s, p, d, cm)] + ([()] if algo in ("plane", "reference") else [])
        for geom in geometries:
            gx = run(lambda: convgpu.max_pool2d_backward(gy, i, x.shape, *geom,
                                                         backend=backend, algo=algo))
            assert gx.dtype == dtype
            assert_close(gx, ref, TOL[dtype])


@pytest.mark.backends("numba", "cuda")
def test_max_pool2d_gather_needs_geometry(rng, backend):
    x = rand(rng, (1, 1, 4, 4))
    y, i = convgpu.max_pool2d(x, 2, return_indices=True)
    with pytest.raises(ValueError, match="gather"):
        convgpu.max_pool2d_backward(y, i, x.shape, backend=backend, algo="gather")


def test_max_pool2d_ties_nan_and_minus_inf(backend, run):
    """The first maximum of a tie, NaN propagated (its first position), windows of -inf.
    Windows up to 3x3 take pool.cu's unrolled path, 4x4 its loop; 3x3/1 and 4x4/1 have more
    than 2x2 candidate windows per input element, the backward's loop."""
    x = np.zeros((1, 2, 4, 4))
    x[0, 0, :2, :2] = 5.0
    x[0, 0, 2, 3] = x[0, 0, 3, 2] = 7.0
    x[0, 1] = np.arange(16).reshape(4, 4)
    x[0, 1, 1, 0] = x[0, 1, 3, 3] = x[0, 1, 3, 2] = np.nan
    xi = np.full((1, 1, 3, 3), -np.inf)
    for inp, args in [(x, (2,)), (xi, (3, 2, 1)), (x, (3, 1)), (x, (4, 1, 1)), (xi, (4, 1, 2))]:
        k = args[0]
        s = args[1] if len(args) > 1 else k
        p = args[2] if len(args) > 2 else 0
        yr, ir = brute.max_pool2d(inp, (k, k), (s, s), (p, p), (1, 1), False)
        y, i = run(lambda: convgpu.max_pool2d(inp, *args, return_indices=True,
                                              backend=backend))
        np.testing.assert_array_equal(i, ir)
        np.testing.assert_array_equal(y, yr)     # NaN == NaN in assert_array_equal
        gy = np.arange(1, y.size + 1, dtype=np.float64).reshape(y.shape)
        gx = run(lambda: convgpu.max_pool2d_backward(gy, i, inp.shape, *args, backend=backend))
        np.testing.assert_array_equal(gx, max_backward_oracle(gy, ir, inp.shape))


# ----------------------------------------------------------------------------------------
# average pooling


@pytest.mark.index_widths
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", AVGP_SMALL)
def test_avg_pool2d_and_backward(rng, backend, run, case, dtype):
    """Sums of at most kh * kw terms (backward: of the windows covering an element), divided:
    each element within that sum's bound of the loops' (forward) and torch's (backward)
    float64 results."""
    pytest.importorskip("torch")
    N, C, H, W, k, s, p, cm, cip, dov = case
    x = rand(rng, (N, C, H, W))
    y = run(lambda: convgpu.avg_pool2d(x.astype(dtype), k, s, p, cm, cip, dov, backend=backend))
    assert y.dtype == dtype
    assert_bounded(y, brute.avg_pool2d(x, k, s, p, cm, cip, dov),
                   brute.avg_pool2d(abs(x), k, s, p, cm, cip, dov), k[0] * k[1], "direct", dtype)
    gy = rand(rng, y.shape)
    torch_args = (k, s, p, cm, cip, dov)
    gx = run(lambda: convgpu.avg_pool2d_backward(gy.astype(dtype), x.shape, k, s, p, cm, cip,
                                                 dov, backend=backend))
    assert gx.dtype == dtype
    assert_bounded(gx, torch_avg_pool2d(x, gy, *torch_args)[1],
                   torch_avg_pool2d(x, abs(gy), *torch_args)[1],
                   -(-k[0] // s[0]) * -(-k[1] // s[1]), "direct", dtype)


# torch's answers at the corners of its semantics (helpers.AVGP_EDGES and the others)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", AVGP_EDGES)
def test_avg_pool_divisor_edges_match_torch(rng, backend, case, dtype):
    check_avg_pool_edge(rng, backend, case, dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", ADAPTIVE_EDGES)
def test_adaptive_avg_pool_uneven_matches_torch(rng, backend, case, dtype):
    check_adaptive_edge(rng, backend, case, dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape, out", ADAPTIVE_SMALL)
def test_adaptive_avg_pool(rng, backend, run, dtype, shape, out):
    """Overlapping windows, more outputs than inputs, the global case, None keeping a size,
    an unbatched input: against torch's float64 forward and backward."""
    pytest.importorskip("torch")
    x = rand(rng, shape)
    y = run(lambda: convgpu.adaptive_avg_pool2d(x.astype(dtype), out, backend=backend))
    gy = rand(rng, y.shape)
    y_t, gx_t = torch_adaptive_avg_pool2d(x, gy, out)
    assert y.dtype == dtype
    assert_close(y, y_t, TOL[dtype])
    gx = run(lambda: convgpu.adaptive_avg_pool2d_backward(gy.astype(dtype), shape,
                                                          backend=backend))
    assert_close(gx, gx_t, TOL[dtype])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_global_avg_pool(rng, backend, run, dtype):
    for shape in [(3, 5, 4, 3), (2, 3, 9, 7)]:        # planes shorter and longer than a warp
        x = rand(rng, shape)
        y = run(lambda: convgpu.global_avg_pool2d(x.astype(dtype), backend=backend))
        assert y.dtype == dtype
        assert_close(y, x.mean(axis=(2, 3)), TOL[dtype])
        gy = rand(rng, shape[:2])
        gx = run(lambda: convgpu.global_avg_pool2d_backward(gy.astype(dtype), x.shape,
                                                            backend=backend))
        assert_close(gx, np.broadcast_to(gy[:, :, None, None] / (shape[2] * shape[3]), shape),
                     TOL[dtype])


# ----------------------------------------------------------------------------------------
# the CUDA C kernels' own paths (pool.cu; kernels/dev/pool_tiled.cu, pool_cells_shuffle.cu)


@pytest.mark.backends("cuda")
@pytest.mark.parametrize("args", [(3, 2), (2, 2), (3, 2, 1), (3, 2, 1, 1, True)])
def test_max_pool2d_interior_and_cells_with_ties_nan_and_inf(rng, backend, run, args):
    """The unmasked interior path of max_pool2d_fwd<.., K> and the backward by cells on a
    plane full of ties (five values), NaNs and -infs: the indices of the sequential rule
    (first maximum, first NaN), exactly."""
    x = rng.integers(0, 5, (2, 3, 13, 11)).astype(np.float32)
    x[rng.random(x.shape) < 0.03] = np.nan
    x[rng.random(x.shape) < 0.1] = -np.inf
    x[0, 0, :4, :4] = -np.inf                                # whole windows of -inf
    yr, ir = convgpu.max_pool2d(x, *args, return_indices=True)
    for algo in ("direct", "tiled"):
        y, i = run(lambda: convgpu.max_pool2d(x, *args, return_indices=True, backend=backend,
                                              algo=algo))
        np.testing.assert_array_equal(i, ir)
        np.testing.assert_array_equal(y, yr)
    gy = np.arange(1, y.size + 1, dtype=np.float32).reshape(y.shape)
    for algo in ("gather", "tiled", "cells_shuffle"):
        gx = run(lambda: convgpu.max_pool2d_backward(gy, i, x.shape, *args, backend=backend,
                                                     algo=algo))
        np.testing.assert_array_equal(gx, convgpu.max_pool2d_backward(gy, ir, x.shape))


@pytest.mark.backends("cuda")
@pytest.mark.parametrize("args, algo", [((3, 2, 1), "gather"), ((3, 2, 1), "tiled"),  # cells
                                        ((3, 2, 1), "cells_shuffle"),
                                        ((3, 1, 1), "gather"), ((4, 3, 1), "gather")])  # element
def test_max_pool2d_backward_rejects_bad_indices(rng, backend, args, algo):
    """The CUDA C gathers validate indices on the device: outside the plane, or inside it but
    outside their window (which a gather would silently drop), is a ValueError; the same
    good indices pass, and check_indices=False skips the test."""
    x = rand(rng, (2, 3, 11, 10), np.float32)
    y, i = convgpu.max_pool2d(x, *args, return_indices=True, backend=backend)
    gy = rand(rng, y.shape, np.float32)
    call = lambda idx, **kw: convgpu.max_pool2d_backward(gy, idx, x.shape, *args,
                                                         backend=backend, algo=algo, **kw)
    good = call(i)
    far = i.copy()
    far[1, 2, -1, -1] = x.shape[2] * x.shape[3]
    with pytest.raises(ValueError, match=r"must lie in \[0, 110\)"):
        call(far)
    moved = i.copy()
    moved[0, 1, 0, 0] = i[0, 1, -1, -1]                   # in the plane, not in window (0, 0)
    with pytest.raises(ValueError, match="outside its window"):
        call(moved)
    np.testing.assert_array_equal(call(i, check_indices=False), good)
    # the array form of the same test (ops/pool.py, before the numba gather) agrees
    _check_window(i, x.shape, args)
    with pytest.raises(ValueError, match="outside its window"):
        _check_window(moved, x.shape, args)


def _check_window(idx, shape, args):
    from convgpu.ops import pool
    from convgpu.core.args import pool_geometry
    geometry = pool_geometry("max_pool2d_backward", shape, *args, 1, False, np.float32, kind="max")
    pool._check_window(pool.MaxBackwardArgs(shape, geometry), idx)


def _tiled_setup(rng, monkeypatch, case, dtype, min_blocks, grid, which):
    """A tiled-pooling case: the band and grid limits set, the input, the pooling arguments,
    and whether the tiled kernel ("fwd" or "bwd") serves the geometry."""
    from convgpu.core.args import pool_geometry
    from convgpu.kernels.dev import pool_tiled as pool
    monkeypatch.setattr(pool, "TILED_MIN_BLOCKS", min_blocks)
    monkeypatch.setattr(pool, "TILED_MAX_GRID", grid)
    N, C, H, W, *args = case
    x = shuffled_linspace(rng, (N, C, H, W), dtype)
    geom = pool_geometry("max_pool2d", x.shape, *args, np.dtype(dtype), kind="max")
    plan = pool.max_pool2d_fwd_tiled_plan if which == "fwd" else pool.max_pool2d_tiled_plan
    return x, args, plan(geom, np.dtype(dtype).itemsize) is not None


@pytest.mark.backends("cuda")
@pytest.mark.index_widths
@pytest.mark.parametrize("min_blocks, grid", [(1, 1 << 20), (10 ** 6, 1 << 20), (10 ** 6, 3)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", MAXP)
def test_max_pool2d_tiled_equals_direct(rng, monkeypatch, backend, run, case, dtype, min_blocks,
                                        grid):
    """The tiled forward (band of input rows in shared memory) gives bitwise the direct
    kernel's values and indices wherever it serves (bands of whole planes, of one output
    row, 3 blocks looping over all bands); elsewhere it declines."""
    x, args, serves = _tiled_setup(rng, monkeypatch, case, dtype, min_blocks, grid, "fwd")
    call = lambda algo: convgpu.max_pool2d(x, *args, return_indices=True, backend=backend,
                                           algo=algo)
    if not serves:
        with pytest.raises(ValueError, match="cannot serve"):
            call("tiled")
        return
    y, i = run(lambda: call("tiled"))
    yd, idd = call("direct")
    np.testing.assert_array_equal(i, idd)
    np.testing.assert_array_equal(y.view(np.uint8), yd.view(np.uint8))
    yr, ir = convgpu.max_pool2d(x, *args, return_indices=True)
    np.testing.assert_array_equal(i, ir)


@pytest.mark.backends("cuda")
@pytest.mark.index_widths
@pytest.mark.parametrize("min_blocks, grid", [(1, 1 << 20), (10 ** 6, 1 << 20), (10 ** 6, 3)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", MAXP)
def test_max_pool2d_backward_tiled_equals_cells(rng, monkeypatch, backend, run, case, dtype,
                                                min_blocks, grid):
    """The tiled gather (band of output rows in shared memory) gives bitwise the cells
    kernel's result (same candidates, same order) wherever it serves: with bands of whole
    planes, bands of one cell row (halo on every band), and 3 blocks looping over all the
    bands (shared memory reused); elsewhere it declines."""
    x, args, serves = _tiled_setup(rng, monkeypatch, case, dtype, min_blocks, grid, "bwd")
    y, i = convgpu.max_pool2d(x, *args, return_indices=True)
    gy = rand(rng, y.shape, dtype)
    call = lambda algo: convgpu.max_pool2d_backward(gy, i, x.shape, *args, backend=backend,
                                                    algo=algo)
    if not serves:
        with pytest.raises(ValueError, match="cannot serve"):
            call("tiled")
        return
    gx = run(lambda: call("tiled"))
    np.testing.assert_array_equal(gx, call("gather"))
    assert_close(gx, convgpu.max_pool2d_backward(gy.astype(np.float64), i, x.shape), TOL[dtype])


@pytest.mark.backends("cuda")
def test_max_pool2d_kernel_choice(backend):
    """Which pool.cu kernels serve which windows (the fast paths above must be the ones run)."""
    from convgpu.kernels.cuda import pool
    from convgpu.core.args import pool_geometry
    def geometry(H, k, s, p, d=1):
        return pool_geometry("max_pool2d", (2, 3, H, H), k, s, p, d, False, np.float32,
                             kind="max")
    assert pool.max_pool2d_window(geometry(55, 3, 2, 0)) == 3
    assert pool.max_pool2d_window(geometry(224, 2, 2, 0)) == 2
    assert pool.max_pool2d_window(geometry(20, 4, 2, 1)) == 0
    assert pool.max_pool2d_window(geometry(20, (3, 2), 2, 1)) == 0
    assert pool.max_pool2d_cells(geometry(55, 3, 2, 0)) == (28, 28)
    assert pool.max_pool2d_cells(geometry(112, 3, 2, 1)) == (57, 57)
    assert pool.max_pool2d_cells(geometry(224, 2, 2, 0)) == (112, 112)
    assert pool.max_pool2d_cells(geometry(20, 3, 1, 1)) is None    # 3 candidates per axis
    assert pool.max_pool2d_cells(geometry(20, 3, 3, 1)) is None    # cells of 3
    # the tiled gather's bands: AlexNet pool1 (N128 C64, Q = 27) in one band per plane,
    # VGG's (N64 C64, Q = 112) in bands of 17 cell rows under 24 KiB
    alex = pool_geometry("max_pool2d", (128, 64, 55, 55), 3, 2, 0, 1, False, np.float32, kind="max")
    from convgpu.kernels.dev import pool_tiled
    assert pool_tiled.max_pool2d_tiled_plan(alex, 4) == (28, 1, 29 * 27 * 12)
    vgg = pool_geometry("max_pool2d", (64, 64, 224, 224), 2, 2, 0, 1, False, np.float32, kind="max")
    assert pool_tiled.max_pool2d_tiled_plan(vgg, 4) == (17, 7, 18 * 112 * 12)
    one = pool_geometry("max_pool2d", (1, 2, 224, 224), 2, 2, 0, 1, False, np.float32, kind="max")
    assert pool_tiled.max_pool2d_tiled_plan(one, 4)[1] == 112        # few planes: finer bands
    assert pool_tiled.max_pool2d_tiled_plan(geometry(20, 3, 1, 1), 4) is None
    # the tiled forward's bands: AlexNet in one band per plane (27 output rows from all 55
    # input rows), VGG (W = 224) in bands of 13 output rows (26 input rows, under 24 KiB)
    assert pool_tiled.max_pool2d_fwd_tiled_plan(alex, 4) == (27, 1, 55 * 55 * 4)
    assert pool_tiled.max_pool2d_fwd_tiled_plan(vgg, 4) == (13, 9, 26 * 224 * 4)
    assert pool_tiled.max_pool2d_fwd_tiled_plan(geometry(20, 4, 2, 1), 4) is None
    assert pool_tiled.max_pool2d_fwd_tiled_plan(geometry(20, 3, 2, 1, 2), 4) is None  # dilated
