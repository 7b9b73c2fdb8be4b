"""Host-emulation tier: every `cuda` implementation (kernels/cuda/*.cu through their launcher
modules) run on the CPU by the host emulation (kernels/cuda/emulator), against the float64 reference,
float32 and float64, outputs poisoned; each call is made twice, threads and blocks in
forward and in reverse order (or, with CONVGPU_HOST_ORDERS, others such as seeded shuffles),
and the results must be bitwise equal (a kernel whose result depends on the order has a
race). The emulator's own tests are in tests/test_emulator.py; the op families moved to
tests/ops (one body per backend) are there: the convolutions' every implementation,
pooling, batch normalisation, linear, the small ops, the optimiser steps, empty problems.
What stays here is the CUDA C paths: depthwise variants, grid limits, split-K, the
pipelined kernels, training steps.

Emulated is not validated: tests/test_gpu.py on a GPU is what validates these kernels."""
import numpy as np
import pytest

from convgpu.kernels.cuda.emulator import cuda_host

if not cuda_host.available():
    pytest.skip(f"no C++ compiler ({cuda_host.CXX}) for the host emulation", allow_module_level=True)

import convgpu  # noqa: E402
from convgpu.ops._registry import all_impls  # noqa: E402
from helpers import (CONV_TILES, DEPTHWISE, TOL, assert_bounded,  # noqa: E402
                     assert_close, assert_conv_close, assert_steps_agree, bn_net, both_orders,
                     decoder_net, mobile_net, rand, res_net, small_net, spy_get_function,
                     tf32_round, tf32_rounding_operands, training_step)


@pytest.fixture(autouse=True)
def emulated(monkeypatch):
    monkeypatch.setenv("CONVGPU_CUDA_HOST", "1")
    monkeypatch.setenv("CONVGPU_POISON", "1")


@pytest.fixture
def launched(monkeypatch):
    """The name expressions the CUDA C launchers look up (the kernels a call launches), in
    order: get_function spied on in every launcher module that imported it."""
    return spy_get_function(monkeypatch)


def cuda_algos(op):
    return [i.algo for i in all_impls(op) if i.backend == "cuda"]


# ---------------------------------------------------------------------------------------
# the convolutions' CUDA C paths (every implementation against the reference on every
# backend: tests/ops/test_conv.py)

CONV = CONV_TILES       # (N, C, H, W, K, R, S, stride, padding, dilation, groups)


def _conv(rng, case, dtype):
    N, C, H, W, K, R, S, st, pd, dl, g = case
    x, w, b = rand(rng, (N, C, H, W)), rand(rng, (K, C // g, R, S)), rand(rng, (K,))
    return x, w, b, dict(stride=st, padding=pd, dilation=dl, groups=g)


def _serves(algo, case):
    """Which geometries each forward algorithm takes (the others must be declined)."""
    N, C, H, W, K, R, S, st, pd, dl, g = case
    if algo.startswith("fft"):
        return dl == (1, 1)
    if algo.startswith("winograd"):
        return (R, S) == (3, 3) and st == (1, 1) and dl == (1, 1)
    if algo == "depthwise":
        return C == g
    return True


@pytest.mark.parametrize("case", DEPTHWISE[2:])
def test_depthwise_forward_paths_agree_bitwise(rng, monkeypatch, case):
    """conv2d_depthwise's variants (3x3 unrolled or general; one or two outputs per thread)
    sum each output's products in the same order: all give bitwise the same result."""
    from convgpu.kernels.cuda import depthwise
    x, w, b, kw = _conv(rng, case, np.float32)
    R, S = w.shape[2:]
    results = {}
    for ks in ((0, 3) if (R, S) == (3, 3) else (0,)):
        for rp in (1, 2):
            monkeypatch.setattr(depthwise, "depthwise_kernel", lambda a, v=(ks, rp): v)
            results[(ks, rp)] = both_orders(lambda: convgpu.conv2d(
                x.astype(np.float32), w.astype(np.float32), b.astype(np.float32), **kw,
                backend="cuda", algo="depthwise"))
    first = next(iter(results.values()))
    for v, y in results.items():
        np.testing.assert_array_equal(y, first, err_msg=str(v))
    assert_conv_close(first, convgpu.conv2d(x, w, b, **kw), "conv2d", "depthwise", np.float32,
                      x, w, bias=b, **kw)


@pytest.mark.parametrize("case", [(5, 2, 9, 11, 4, 3, 3, (1, 1), (1, 1), (1, 1), 2),
                                  (3, 3, 12, 7, 3, 3, 3, (2, 1), (0, 1), (1, 2), 3)])
def test_depthwise_wgrad3_splits(rng, monkeypatch, case, launched):
    """The 3x3 weight gradient's image splits, uneven (5 images in 2 splits, 3 in 2), summed
    in order by sum_splits; the kernel taken is wgrad3."""
    from convgpu.kernels.cuda import depthwise
    monkeypatch.setattr(depthwise, "DW_WGRAD_BLOCKS", 6)
    used = launched
    x, w, _, kw = _conv(rng, case, np.float32)
    y = convgpu.conv2d(x, w, **kw)
    gy = rand(rng, y.shape)
    gw = both_orders(lambda: convgpu.conv2d_backward_weight(
        x.astype(np.float32), gy.astype(np.float32), w.shape, **kw, backend="cuda",
        algo="depthwise"))
    assert_conv_close(gw, convgpu.conv2d_backward_weight(x, gy, w.shape, **kw),
                      "conv2d_backward_weight", "depthwise", np.float32, x, gy, w.shape, **kw)
    assert "conv2d_depthwise_wgrad3<float>" in used and "sum_splits<float>" in used, used


@pytest.mark.parametrize("case, forward", [
    ((2, 3, 19, 21, 3, 3, 3, (1, 1), (1, 1), (1, 1), 3), True),     # MobileNet's: 3x3/1 p1
    ((1, 2, 17, 20, 2, 3, 3, (1, 1), (1, 2), (1, 2), 2), True),     # dilated columns
    ((1, 2, 9, 8, 2, 5, 3, (1, 1), (0, 1), (1, 1), 2), True),       # 5x3, the general path
    ((1, 2, 6, 6, 2, 3, 3, (1, 1), (3, 3), (1, 1), 2), False),      # padding past R - 1
    ((1, 2, 9, 8, 4, 3, 3, (1, 1), (1, 1), (1, 1), 2), False),      # two filters a channel
    ((1, 2, 9, 8, 2, 3, 3, (2, 2), (1, 1), (1, 1), 2), False),      # stride 2
])
def test_depthwise_input_gradient_on_the_forward_kernel(rng, case, forward, launched):
    """With one filter per channel at stride 1 the input gradient runs as the forward of the
    rotated filters; elsewhere the gather. Both against the reference, in both orders."""
    used = launched
    x, w, _, kw = _conv(rng, case, np.float32)
    gy = rand(rng, convgpu.conv2d(x, w, **kw).shape)
    gx = both_orders(lambda: convgpu.conv2d_backward_input(
        gy.astype(np.float32), w.astype(np.float32), x.shape, **kw, backend="cuda",
        algo="depthwise"))
    assert_conv_close(gx, convgpu.conv2d_backward_input(gy, w, x.shape, **kw),
                      "conv2d_backward_input", "depthwise", np.float32, gy, w, x.shape, **kw)
    assert any(e.startswith("conv2d_depthwise<") for e in used) == forward, used
    assert any(e.startswith("conv2d_depthwise_dgrad<") for e in used) == (not forward), used


def test_depthwise_kernel_choice():
    from convgpu.core import args as _args
    from convgpu.kernels.cuda import depthwise
    geom = lambda shape, k, s, p: _args.conv_geometry("conv2d", shape, (shape[1], 1, k, k), s,
                                                      p, 1, shape[1], np.float32)
    assert depthwise.depthwise_kernel(geom((16, 256, 28, 28), 3, 1, 1)) == (3, 2)   # MobileNet
    assert depthwise.depthwise_kernel(geom((16, 512, 14, 14), 3, 1, 1)) == (3, 1)
    assert depthwise.depthwise_kernel(geom((16, 64, 56, 56), 5, 1, 2)) == (0, 2)
    assert depthwise.depthwise_wgrad_splits(geom((16, 256, 28, 28), 3, 1, 1)) == 8
    assert depthwise.depthwise_wgrad_splits(geom((4, 32, 28, 28), 3, 1, 1)) == 4      # <= N


def test_depthwise_declines_a_patch_past_shared_memory():
    from convgpu.core import args as _args
    from convgpu.kernels.cuda import depthwise
    a = _args.conv_geometry("conv2d", (1, 4, 400, 400), (4, 1, 3, 3), 1, 100, 100, 4,
                            np.float32)
    assert "shared memory" in depthwise.depthwise_supports(a)
    a = _args.conv_geometry("conv2d", (1, 4, 40, 40), (4, 1, 3, 3), 1, 1, 1, 4, np.float32)
    assert depthwise.depthwise_supports(a) is None


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_pointwise_im2col_is_one_batched_gemm(rng, monkeypatch, dtype):
    """1x1/s1/p0 convolutions: the im2col algorithms run one GEMM over the images with the
    weights shared (batch stride 0), no column matrix (im2col/col2im must not run); forward
    with bias, both gradients, against the reference."""
    from convgpu.kernels.cuda import im2col
    monkeypatch.setattr(im2col, "im2col", lambda *a: pytest.fail("im2col ran"))
    monkeypatch.setattr(im2col, "col2im", lambda *a: pytest.fail("col2im ran"))
    x, w, b = rand(rng, (3, 8, 5, 7)), rand(rng, (12, 8, 1, 1)), rand(rng, (12,))
    gy = rand(rng, (3, 12, 5, 7))
    c = lambda a: a.astype(dtype)
    kw = dict(backend="cuda", algo="im2col")
    assert_conv_close(both_orders(lambda: convgpu.conv2d(c(x), c(w), c(b), **kw)),
                      convgpu.conv2d(x, w, b), "conv2d", "im2col", dtype, x, w, bias=b)
    assert_conv_close(both_orders(lambda: convgpu.conv2d_backward_input(
        c(gy), c(w), x.shape, backend="cuda", algo="col2im")),
        convgpu.conv2d_backward_input(gy, w, x.shape), "conv2d_backward_input", "col2im", dtype,
        gy, w, x.shape)
    assert_conv_close(both_orders(lambda: convgpu.conv2d_backward_weight(c(x), c(gy), w.shape,
                                                                         **kw)),
                      convgpu.conv2d_backward_weight(x, gy, w.shape), "conv2d_backward_weight",
                      "im2col", dtype, x, gy, w.shape)


@pytest.mark.parametrize("grid", [(1 << 16, 65535), (1, 2)])
def test_im2col_col2im_rows_grid(rng, monkeypatch, grid):
    """im2col/col2im walk rows (blockIdx.y) and a row's elements (blockIdx.x, threads), also
    where the grid is smaller than either and they loop: the column matrix equals the
    reference's, col2im of it the reference's scatter-add (strides, dilation, groups)."""
    from convgpu.kernels.cuda import im2col
    from convgpu.core.args import conv_geometry
    from convgpu import reference as R
    monkeypatch.setattr(im2col, "ROWS_GRID_X", grid[0])
    monkeypatch.setattr(im2col, "ROWS_GRID_Y", grid[1])
    x = rand(rng, (2, 6, 9, 8))
    w = rand(rng, (4, 3, 3, 2))
    kw = dict(stride=(2, 1), padding=(1, 1), dilation=(1, 2), groups=2)
    a = conv_geometry("conv2d", x.shape, w.shape, kw["stride"], kw["padding"], kw["dilation"],
                      kw["groups"], x.dtype)
    cols = both_orders(lambda: im2col.im2col(a, x))
    y = np.einsum("gkr,grm->gkm", w.reshape(2, 2, -1), cols)
    y = y.reshape(4, 2, a.P * a.Q).transpose(1, 0, 2).reshape(2, 4, a.P, a.Q)
    assert_close(y, R.conv2d(x, w, None, **kw), TOL[np.float64])
    gy = rand(rng, y.shape)
    gx = both_orders(lambda: im2col.col2im(a, np.einsum(
        "gkr,gkm->grm", w.reshape(2, 2, -1),
        gy.reshape(2, 2, 2, a.P * a.Q).transpose(1, 2, 0, 3).reshape(2, 2, -1)).copy()))
    assert_close(gx, R.conv2d_backward_input(gy, w, x.shape, **kw), TOL[np.float64])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("algo", ["winograd", "winograd_4x4"])
def test_winograd_grid_loops_and_split_tiles(rng, monkeypatch, algo, dtype):
    """The Winograd transforms walk channels (blockIdx.y) and tiles (x), also where the grid
    is smaller than either and they loop; the weight gradient's GEMM over the tiles split in
    3 (partials summed in order); T = 2 * 5 * 3 = 30 tiles of 2x2 (rows of 32 with two zero
    columns), 2 * 3 * 2 = 12 of 4x4. Forward, input and weight gradients against the
    reference."""
    from convgpu.kernels.cuda import winograd
    monkeypatch.setattr(winograd, "ROWS_GRID_X", 1)
    monkeypatch.setattr(winograd, "ROWS_GRID_Y", 2)
    monkeypatch.setattr(winograd, "split_for", lambda *a, **k: 3)
    x, w, b = rand(rng, (2, 6, 9, 7)), rand(rng, (8, 3, 3, 3)), rand(rng, (8,))
    kw = dict(padding=(1, 0), groups=2)
    gy = rand(rng, (2, 8, 9, 5))
    c = lambda a: a.astype(dtype)
    run = dict(backend="cuda", algo=algo)
    assert_conv_close(both_orders(lambda: convgpu.conv2d(c(x), c(w), c(b), **kw, **run)),
                      convgpu.conv2d(x, w, b, **kw), "conv2d", algo, dtype, x, w, bias=b, **kw)
    assert_conv_close(both_orders(lambda: convgpu.conv2d_backward_input(c(gy), c(w), x.shape,
                                                                        **kw, **run)),
                      convgpu.conv2d_backward_input(gy, w, x.shape, **kw),
                      "conv2d_backward_input", algo, dtype, gy, w, x.shape, **kw)
    assert_conv_close(both_orders(lambda: convgpu.conv2d_backward_weight(c(x), c(gy), w.shape,
                                                                         **kw, **run)),
                      convgpu.conv2d_backward_weight(x, gy, w.shape, **kw),
                      "conv2d_backward_weight", algo, dtype, x, gy, w.shape, **kw)


@pytest.mark.parametrize("variant", ["vec", "vec64", "tiled"])
def test_gemm_past_the_grid_limits_runs_in_parts(rng, monkeypatch, variant):
    """Batches x splits or row tiles past gridDim's 65535 (here 2): gemm launches on slices
    of batches and of A's rows, with a broadcast operand and split-K; a K x M A that tall
    is refused before any launch."""
    from convgpu.kernels.cuda import gemm
    monkeypatch.setattr(gemm, "MAX_GRID_YZ", 2)
    A, B = rand(rng, (5, 300, 20), np.float32), rand(rng, (1, 20, 12), np.float32)
    for splits in (1, 2):
        C = gemm.gemm(A, B, splits=splits, variant=variant)
        assert C.shape == (5, 300, 12)
        assert_bounded(C, *_gemm_want(A, B, False, False), 20, "gemm", np.float32)
    Bt, At = B.transpose(0, 2, 1).copy(), A.transpose(0, 2, 1).copy()
    C = gemm.gemm(Bt, At, variant=variant)
    assert_bounded(C, *_gemm_want(Bt, At, False, False), 20, "gemm", np.float32)
    with pytest.raises(ValueError, match="transposed A"):
        gemm.gemm(A[:1].transpose(0, 2, 1).copy(), B, ta=True, variant=variant)


@pytest.mark.parametrize("algo", ["fft", "winograd", "winograd_4x4"])
def test_batched_gemm_algorithms_past_gridDim_z(rng, monkeypatch, algo):
    """The FFT (groups x frequencies) and Winograd (groups x (m+2)^2) GEMM batches past
    gridDim.z (here 8) run in parts, and the FFT's layout kernels walk their rows (groups x
    5 images) in a grid-stride loop: forward and both gradients against the reference."""
    from convgpu.kernels.cuda import fft, gemm
    monkeypatch.setattr(gemm, "MAX_GRID_YZ", 8)      # the GEMM's batches
    monkeypatch.setattr(fft, "MAX_GRID_YZ", 8)       # the layout kernels' rows
    x, w, gy = rand(rng, (5, 4, 6, 5)), rand(rng, (4, 2, 3, 3)), rand(rng, (5, 4, 6, 5))
    kw = dict(padding=1, groups=2, backend="cuda", algo=algo)
    ref = dict(padding=1, groups=2)
    f64 = np.float64
    assert_conv_close(convgpu.conv2d(x, w, **kw), convgpu.conv2d(x, w, **ref), "conv2d", algo,
                      f64, x, w, **ref)
    assert_conv_close(convgpu.conv2d_backward_input(gy, w, x.shape, **kw),
                      convgpu.conv2d_backward_input(gy, w, x.shape, **ref),
                      "conv2d_backward_input", algo, f64, gy, w, x.shape, **ref)
    assert_conv_close(convgpu.conv2d_backward_weight(x, gy, w.shape, **kw),
                      convgpu.conv2d_backward_weight(x, gy, w.shape, **ref),
                      "conv2d_backward_weight", algo, f64, x, gy, w.shape, **ref)


def test_implicit_gemm_groups_past_the_grid_are_refused_and_splits_clamped(rng, monkeypatch):
    """blockIdx.z = group * splits + split: more groups than gridDim.z allows is a ValueError
    before any launch; otherwise the splits shrink to fit (here 2 groups under a limit of 3:
    one split each, the result still right)."""
    from convgpu.kernels.cuda import conv_implicit
    x, w = rand(rng, (1, 4, 6, 6)), rand(rng, (4, 2, 3, 3))
    gy = rand(rng, (1, 4, 4, 4))
    monkeypatch.setattr(conv_implicit, "split_for", lambda *a, **k: 8)
    monkeypatch.setattr(conv_implicit, "MAX_GRID_YZ", 3)
    assert_close(convgpu.conv2d_backward_weight(x, gy, w.shape, groups=2, backend="cuda",
                                                algo="implicit_gemm"),
                 convgpu.conv2d_backward_weight(x, gy, w.shape, groups=2), TOL[np.float64])
    monkeypatch.setattr(conv_implicit, "MAX_GRID_YZ", 1)
    with pytest.raises(ValueError, match="2 groups is more than 1"):
        convgpu.conv2d(x, w, groups=2, backend="cuda", algo="implicit_gemm")


def test_gemm_broadcasts_a_batch_of_one(rng):
    from convgpu.kernels.cuda import gemm
    A, B = rand(rng, (1, 12, 20), np.float32), rand(rng, (5, 20, 16), np.float32)
    for variant in ("vec", "tiled"):
        C = gemm.gemm(A, B, variant=variant)
        assert_bounded(C, *_gemm_want(A, B, False, False), 20, "gemm", np.float32)
        Bt, At = B.transpose(0, 2, 1).copy(), A.transpose(0, 2, 1).copy()
        C = gemm.gemm(Bt, At, variant=variant)        # the other operand broadcast
        assert_bounded(C, *_gemm_want(Bt, At, False, False), 20, "gemm", np.float32)
    with pytest.raises(ValueError, match="batches of 2 and 5"):
        gemm.gemm(rand(rng, (2, 12, 20), np.float32), B)


@pytest.mark.parametrize("tf32", [False, True])
@pytest.mark.parametrize("ta, tb", [(False, False), (True, False), (False, True), (True, True)])
def test_gemm_tails_and_split_k(rng, ta, tb, tf32):
    from convgpu.kernels.cuda import gemm
    batch, M, N, K = 2, 133, 70, 37
    A = rand(rng, (batch, K, M) if ta else (batch, M, K))
    B = rand(rng, (batch, N, K) if tb else (batch, K, N))
    want, mag = _gemm_want(A, B, ta, tb)
    for dt in ([np.float32] if tf32 else [np.float32, np.float64]):
        for splits in (1, 3):
            C = both_orders(lambda: gemm.gemm(A.astype(dt), B.astype(dt), ta, tb,
                                                  splits=splits, tf32=tf32))
            assert_bounded(C, want, mag, K, "gemm_tf32" if tf32 else "gemm", dt)


def _gemm_want(A, B, ta, tb):
    """The float64 product of A and B (transposed as the GEMM is told) and the element-wise
    bound's magnitude, |A| |B|."""
    op = lambda M, t: np.swapaxes(M, 1, 2) if t else M                 # noqa: E731
    A, B = np.asarray(A, np.float64), np.asarray(B, np.float64)
    return np.matmul(op(A, ta), op(B, tb)), np.matmul(op(abs(A), ta), op(abs(B), tb))


@pytest.mark.parametrize("B, K, L", [(1000, 3, 1), (7, 5, 300), (3, 4, 255)])
def test_channel_sum_long_and_short_rows(rng, B, K, L):
    """channel_sum (the bias gradients' reduction): rows longer than the block are summed
    along, shorter ones (a linear layer's L = 1) over the (b, l) pairs by every thread."""
    from convgpu.kernels.cuda import elementwise
    a = rand(rng, (B, K, L))
    assert_close(both_orders(lambda: elementwise.channel_sum(a)), a.sum(axis=(0, 2)), TOL[np.float64])


@pytest.mark.parametrize("families", [("implicit_gemm", "im2col"), ("winograd", "winograd")])
def test_a_training_step_on_the_cuda_backend_matches_numpy(families):
    """One step of a small conv net (conv-relu-maxpool-conv-relu-avgpool-linear-relu-linear),
    every op on the emulated cuda backend, the two 3x3 convolutions on the given algorithm
    families (Conv2d's forward, input and weight gradient): loss, input and parameter
    gradients as numpy's. (Not winograd_4x4: an output whose 3x3 patch is all zeros, exactly
    0 for numpy, comes out of its 4x4 tile's transforms as a ~1e-17 residue of the tile's
    other outputs, which flips ReLU's mask there: the bias gradients then differ by 10-30%
    while the weight gradients agree, since those outputs multiply zero inputs. A property
    of the algorithm, as of any tiled transform.)"""
    out = {"numpy": training_step(small_net("numpy"), "numpy"),
           "cuda": training_step(small_net("cuda", families), "cuda")}
    assert_steps_agree(out["cuda"], out["numpy"])


def test_a_decoder_step_on_the_cuda_backend_matches_numpy():
    """One step of a network with a strided conv, a transposed conv (output_padding,
    groups), a conv with padding="same" and global average pooling, every op on the
    emulated cuda backend (implicit GEMM): loss and gradients as numpy's."""
    out = {"numpy": training_step(decoder_net("numpy"), "numpy"),
           "cuda": training_step(decoder_net("cuda", "implicit_gemm"), "cuda")}
    assert_steps_agree(out["cuda"], out["numpy"])


def test_a_batch_norm_step_on_the_cuda_backend_matches_numpy():
    """One step through BatchNorm2d (after a conv) and BatchNorm1d (after a linear layer),
    batch statistics, every op on the emulated cuda backend: loss and gradients as numpy's."""
    out = {"numpy": training_step(bn_net("numpy"), "numpy", images=8),
           "cuda": training_step(bn_net("cuda"), "cuda", images=8)}
    assert_steps_agree(out["cuda"], out["numpy"])


def test_a_resnet_step_on_the_cuda_backend_matches_numpy():
    """One step of nn.resnet_small (batch norms, an identity and a strided residual block
    with a 1x1 conv shortcut, global pooling), every op on the emulated cuda backend."""
    out = {"numpy": training_step(res_net("numpy"), "numpy"),
           "cuda": training_step(res_net("cuda", "implicit_gemm"), "cuda")}
    assert_steps_agree(out["cuda"], out["numpy"])


def test_a_mobilenet_step_with_the_depthwise_kernels_matches_numpy():
    """One step of a 3x3 conv / depthwise 3x3 (stride 2, multiplier 2) / pointwise 1x1 stack
    with batch norms, the depthwise layer's three passes on the depthwise kernels."""
    out = {"numpy": training_step(mobile_net("numpy"), "numpy"),
           "cuda": training_step(mobile_net("cuda", "depthwise"), "cuda")}
    assert_steps_agree(out["cuda"], out["numpy"])


def _random_geometry(rng):
    g = int(rng.choice([1, 1, 2, 3]))
    C, K = g * int(rng.integers(1, 5)), g * int(rng.integers(1, 6))
    R, S = (int(v) for v in rng.integers(1, 5, size=2))
    st = tuple(int(v) for v in rng.integers(1, 4, size=2))
    dl = tuple(int(v) for v in rng.integers(1, 3, size=2))
    pd = tuple(int(rng.integers(0, k)) if k > 1 else 0 for k in (R, S))
    H = int(rng.integers((R - 1) * dl[0] + 1, 14)) + max(0, -pd[0])
    W = int(rng.integers((S - 1) * dl[1] + 1, 40))
    return (int(rng.integers(1, 3)), C, H, W, K, R, S, st, pd, dl, g)


@pytest.mark.parametrize("seed", range(12))
def test_implicit_gemm_and_direct_on_random_geometries(seed):
    """Forward (direct, implicit GEMM), input and weight gradients (implicit GEMM) on random
    stride / padding / dilation / groups / non-square filters, float64."""
    rng = np.random.default_rng(1000 + seed)
    case = _random_geometry(rng)
    x, w, b, kw = _conv(rng, case, np.float64)
    y = convgpu.conv2d(x, w, b, **kw)
    gy = rand(rng, y.shape)
    for algo in ("direct", "implicit_gemm", "winograd"):
        if _serves(algo, case):
            assert_conv_close(convgpu.conv2d(x, w, b, **kw, backend="cuda", algo=algo), y,
                              "conv2d", algo, np.float64, x, w, bias=b, **kw)
    for algo in ("implicit_gemm", "winograd"):
        if _serves(algo, case):
            assert_conv_close(convgpu.conv2d_backward_input(gy, w, x.shape, **kw,
                                                            backend="cuda", algo=algo),
                              convgpu.conv2d_backward_input(gy, w, x.shape, **kw),
                              "conv2d_backward_input", algo, np.float64, gy, w, x.shape, **kw)
    assert_conv_close(convgpu.conv2d_backward_weight(x, gy, w.shape, **kw, backend="cuda",
                                                     algo="implicit_gemm"),
                      convgpu.conv2d_backward_weight(x, gy, w.shape, **kw),
                      "conv2d_backward_weight", "implicit_gemm", np.float64, x, gy, w.shape, **kw)


def test_fma_peak_kernel_computes_its_chains():
    """The FP32 ceiling kernel of convgpu bench: each thread's output is the sum of its 8
    chains acc = acc * a + b after 16 * iters steps (float64 recurrence as the oracle)."""
    from convgpu.kernels.cuda import ceiling
    blocks, iters = 2, 3
    for dt, tol in ((np.float32, 1e-5), (np.float64, 1e-13)):
        out, flops = both_orders(lambda: ceiling.fma_peak(blocks, iters, dt))
        assert flops == 2 * 8 * 16 * iters * blocks * 256
        a, b = 1 - 2 ** -10, 2 ** -6
        lane = np.arange(blocks * 256) % 256 % 32
        acc = (lane[:, None] + np.arange(8)[None, :]) * 0.0625
        for _ in range(16 * iters):
            acc = acc * a + b
        np.testing.assert_allclose(out, acc.sum(axis=1), rtol=tol)


@pytest.mark.parametrize("variant, tf32", [("vec", False), ("vec", True), ("vec64", False)])
@pytest.mark.parametrize("ta, tb", [(False, False), (True, False), (False, True), (True, True)])
def test_gemm_vec_tails_and_split_k(rng, ta, tb, variant, tf32):
    """gemm_vec (16-deep tiles, float4 loads), 128-row tiles and the 64-row tile of 128
    threads: tails in every dimension that are still multiples of 4 (132 = 128 + 4 rows,
    2 x 64 + 4 for the short tile; 68 columns, depth 36 = 2 tiles + 4), split-K."""
    from convgpu.kernels.cuda import gemm
    batch, M, N, K = 2, 132, 68, 36
    A = rand(rng, (batch, K, M) if ta else (batch, M, K)).astype(np.float32)
    B = rand(rng, (batch, N, K) if tb else (batch, K, N)).astype(np.float32)
    want, mag = _gemm_want(A, B, ta, tb)
    assert gemm.vec_gemm_fits(A, B, ta, tb)
    for splits in (1, 2):
        C = both_orders(lambda: gemm.gemm(A, B, ta, tb, splits=splits, tf32=tf32,
                                              variant=variant))
        assert_bounded(C, want, mag, K, "gemm_tf32" if tf32 else "gemm", np.float32)
        if tf32:
            assert np.linalg.norm(C - want) / np.linalg.norm(want) > 1e-6


@pytest.mark.parametrize("ta, tb", [(False, False), (True, False), (False, True), (True, True)])
def test_gemm_pipelined_tails_and_split_k(rng, ta, tb):
    """gemm_pipelined (TF32, cp.async 3-stage pipeline, 64 x 64 warp tiles): tails in every
    dimension that are multiples of 4 (132 rows, 68 columns, depth 164 = 5 slices of 32 + 4,
    more slices than stages), split-K into chunks of 64, 64 and 36 (fewer slices than
    stages), batched."""
    from convgpu.kernels.cuda import gemm
    batch, M, N, K = 2, 132, 68, 164
    A = rand(rng, (batch, K, M) if ta else (batch, M, K)).astype(np.float32)
    B = rand(rng, (batch, N, K) if tb else (batch, K, N)).astype(np.float32)
    want = np.matmul(np.swapaxes(A, 1, 2) if ta else A, np.swapaxes(B, 1, 2) if tb else B)
    for splits in (1, 3):
        C = both_orders(lambda: gemm.gemm(A, B, ta, tb, splits=splits, tf32=True,
                                              variant="pipelined"))
        assert_bounded(C, *_gemm_want(A, B, ta, tb), K, "gemm_tf32", np.float32)
        assert np.linalg.norm(C - want) / np.linalg.norm(want) > 1e-6     # really TF32


@pytest.mark.parametrize("variant", ["tiled", "vec", "pipelined"])
@pytest.mark.parametrize("side", ["A", "B"])
def test_tf32_gemms_round_operands_to_nearest(rng, variant, side):
    """Every TF32 GEMM multiplies its operands rounded to nearest, ties away (cvt.rna): with
    the other operand the identity, C is exactly the rounded operand. Values on, below and
    above the halfway points; truncation (the tensor cores' own reading of FP32 bits) or
    a rounding to even would show here where an error norm would not."""
    from convgpu.kernels.cuda import gemm
    n = 32
    X = tf32_rounding_operands(rng, n)
    eye = np.eye(n, dtype=np.float32)
    A, B = (X, eye) if side == "A" else (eye, X)
    C = gemm.gemm(A[None], B[None], tf32=True, variant=variant)[0]
    np.testing.assert_array_equal(C, tf32_round(X))
    assert not np.array_equal(tf32_round(X), X)


def test_gemm_auto_picks_pipelined_for_tf32_and_it_refuses_fp32(rng, monkeypatch):
    from convgpu.kernels.cuda import gemm
    A = rand(rng, (1, 8, 12)).astype(np.float32)
    B = rand(rng, (1, 12, 8)).astype(np.float32)
    names = spy_get_function(monkeypatch)
    gemm.gemm(A, B, tf32=True)
    gemm.gemm(A, B)                                           # M = 8: the 64-row tile
    gemm.gemm(rand(rng, (1, 68, 12)).astype(np.float32), B)   # M = 68: 128 rows
    assert names == ["gemm_pipelined<false, false>", "gemm_vec<false, false, false, 64>",
                     "gemm_vec<false, false, false>"]
    with pytest.raises(ValueError, match="FP32 only"):
        gemm.gemm(A, B, tf32=True, variant="vec64")
    with pytest.raises(ValueError, match="needs tf32=True"):
        gemm.gemm(A, B, variant="pipelined")
    with pytest.raises(ValueError, match="gemm_pipelined needs"):
        gemm.gemm(A[:, :, :6].copy(), B[:, :6].copy(), tf32=True, variant="pipelined")


@pytest.mark.parametrize("case, vectors", [
    ((2, 40, 6, 6, 130, 1, 1, (1, 1), (0, 0), (1, 1), 1), (True, True)),    # 1x1: both
    ((2, 6, 4, 5, 8, 1, 1, (1, 1), (0, 0), (1, 1), 2), (False, True)),      # Cg = 3 rows
    ((1, 8, 5, 7, 6, 3, 3, (1, 1), (1, 1), (1, 1), 2), (True, False)),      # 36 = 4 * 9
    ((2, 40, 6, 6, 20, 1, 1, (1, 1), (1, 1), (1, 1), 1), (True, False)),    # 1x1 padded
    ((1, 4, 5, 6, 64, 1, 1, (1, 1), (0, 0), (1, 1), 1), (True, False)),     # 64 rows: M = 64
    ((1, 4, 6, 6, 65, 1, 1, (1, 1), (0, 0), (1, 1), 1), (True, True)),      # 65: M = 128
])
def test_conv2d_pipelined_vector_paths(rng, case, vectors, launched):
    """conv2d_implicit_gemm_pipelined's 16-byte copy paths (weights: VA; 1x1 input: VB) are
    taken exactly where pipelined_vectors allows them, and the 64-row tile exactly where the
    output has at most 64 channels per group; all agree with the reference."""
    x, w, b, kw = _conv(rng, case, np.float64)
    ref = convgpu.conv2d(x, w, b, **kw)
    names = launched
    y = both_orders(lambda: convgpu.conv2d(
        *(a.astype(np.float32) for a in (x, w, b)), **kw, backend="cuda",
        algo="implicit_gemm_pipelined_tf32", allow_tf32=True))
    assert_conv_close(y, ref, "conv2d", "implicit_gemm_pipelined_tf32", np.float32, x, w,
                      bias=b, **kw)
    va, vb = vectors
    rows = 64 if case[4] // case[10] <= 64 else 128
    assert f"conv2d_implicit_gemm_pipelined<{str(va).lower()}, {str(vb).lower()}, {rows}>" in names


@pytest.mark.parametrize("case", [
    (1, 64, 5, 5, 66, 3, 3, (1, 1), (1, 1), (1, 1), 1),     # 64 input / 66 output channels
    (1, 72, 5, 6, 8, 3, 3, (1, 1), (1, 1), (1, 1), 1),      # 72 input channels: 128 rows
    (2, 66, 6, 5, 6, 3, 2, (2, 1), (1, 0), (1, 1), 1),      # strided gather, 128 rows
], ids=lambda c: str(c[:7]))
def test_pipelined_gradients_tile_rows(rng, case, launched):
    """The gradients' 64-row tile where a group has at most 64 channels on the output side of
    the GEMM (input channels for the input gradient, output channels for the weight
    gradient), the 128-row tile above; both agree with the reference."""
    x, w, b, kw = _conv(rng, case, np.float64)
    gy = rand(rng, convgpu.conv2d(x, w, None, **kw).shape)
    names = launched
    x32, w32, gy32 = (a.astype(np.float32) for a in (x, w, gy))
    gx = both_orders(lambda: convgpu.conv2d_backward_input(
        gy32, w32, x.shape, **kw, backend="cuda", algo="implicit_gemm_pipelined_tf32",
        allow_tf32=True))
    assert_conv_close(gx, convgpu.conv2d_backward_input(gy, w, x.shape, **kw),
                      "conv2d_backward_input", "implicit_gemm_pipelined_tf32", np.float32, gy, w,
                      x.shape, **kw)
    gw = both_orders(lambda: convgpu.conv2d_backward_weight(
        x32, gy32, w.shape, **kw, backend="cuda", algo="implicit_gemm_pipelined_tf32",
        allow_tf32=True))
    assert_conv_close(gw, convgpu.conv2d_backward_weight(x, gy, w.shape, **kw),
                      "conv2d_backward_weight", "implicit_gemm_pipelined_tf32", np.float32, x,
                      gy, w.shape, **kw)
    C, K, g = case[1], case[4], case[10]
    unit = "true" if case[7] == (1, 1) else "false"
    assert f"conv2d_dgrad_implicit_gemm_pipelined<{unit}, {64 if C // g <= 64 else 128}>" in names
    assert f"conv2d_wgrad_implicit_gemm_pipelined<{64 if K // g <= 64 else 128}>" in names


def test_pipelined_kernels_step_aside_on_devices_with_less_shared_memory(rng, monkeypatch,
                                                                          launched):
    """sm_86 / sm_89 let a block opt in to 99 KiB of shared memory, less than the pipelined
    tile's ~107 KiB: the conv passes are declined with the reason (never a failed launch) and
    gemm(tf32=True) falls back to gemm_vec."""
    from convgpu.kernels.cuda import conv_implicit, gemm
    monkeypatch.setattr(gemm, "max_shared_per_block", lambda: 99 * 1024)
    monkeypatch.setattr(conv_implicit, "max_shared_per_block", lambda: 99 * 1024)
    x, w, b, kw = (a.astype(np.float32) if isinstance(a, np.ndarray) else a
                   for a in _conv(rng, CONV[0], np.float64))
    with pytest.raises(ValueError, match="this device allows 101376"):
        convgpu.conv2d(x, w, b, **kw, backend="cuda", algo="implicit_gemm_pipelined_tf32",
                       allow_tf32=True)
    A = rand(rng, (1, 8, 12)).astype(np.float32)
    B = rand(rng, (1, 12, 8)).astype(np.float32)
    names = launched
    C = gemm.gemm(A, B, tf32=True)
    assert names == ["gemm_vec<false, false, true>"]
    assert_bounded(C, *_gemm_want(A, B, False, False), 12, "gemm_tf32", np.float32)
    with pytest.raises(ValueError, match="this device allows"):
        gemm.gemm(A, B, tf32=True, variant="pipelined")


def test_gemm_vec_refuses_what_it_cannot_serve(rng):
    from convgpu.kernels.cuda import gemm
    A = rand(rng, (1, 8, 6)).astype(np.float32)           # K = 6: rows not 16-byte aligned
    B = rand(rng, (1, 6, 8)).astype(np.float32)
    assert not gemm.vec_gemm_fits(A, B, False, False)
    with pytest.raises(ValueError, match="gemm_vec needs"):
        gemm.gemm(A, B, variant="vec")
    assert_close(gemm.gemm(A, B), A.astype(np.float64) @ B, TOL[np.float32])   # auto: tiled
    assert not gemm.vec_gemm_fits(A.astype(np.float64), B.astype(np.float64), False, False)


def test_fastdiv_constants_divide_exactly():
    """Divider<int>'s multiply-shift equals integer division for every 31-bit numerator
    (checked on edges and random numerators, divisors 1..3000 and random large ones)."""
    from convgpu.kernels.cuda.launch import fastdiv
    rng = np.random.default_rng(0)
    divisors = list(range(1, 3001)) + [int(v) for v in rng.integers(3001, 2 ** 31 - 1, 500)] + \
        [2 ** 31 - 1, 2 ** 30, 2 ** 30 + 1]
    for d in divisors:
        packed = fastdiv(d)
        mul, shr = np.uint64(packed & 0xFFFFFFFF), np.uint64(packed >> 32)
        assert mul < 2 ** 32 and shr < 32
        n = np.concatenate([rng.integers(0, 2 ** 31, 300, dtype=np.uint64),
                            np.array([0, 1, d - 1, d, d + 1, 2 ** 31 - 1,
                                      (2 ** 31 - 1) // d * d, (2 ** 31 - 1) // d * d - 1],
                                     dtype=np.uint64)])
        n = n[n < 2 ** 31]
        q = n if mul == 0 else ((n * mul) >> np.uint64(32)) >> shr
        np.testing.assert_array_equal(q, n // np.uint64(d), err_msg=f"d = {d}")
    with pytest.raises(ValueError):
        fastdiv(0)


def test_device_divider_constants_equal_the_hosts():
    """common.cuh divider_for (worked out in the kernel) gives fastdiv's constants."""
    from convgpu.kernels.cuda.launch import fastdiv
    k = cuda_host.module_from_source(r"""
        #include "common.cuh"
        __global__ void constants(const int* d, unsigned long long* out, int n) {
            const int i = blockIdx.x * blockDim.x + threadIdx.x;
            if (i >= n) return;
            const Divider<int> v = divider_for(d[i]);
            out[i] = v.mul | ((unsigned long long)v.shr << 32); }
    """, ("constants",))["constants"]
    rng = np.random.default_rng(1)
    d = np.concatenate([np.arange(1, 2049), rng.integers(2049, 2 ** 31 - 1, 300),
                        [2 ** 30, 2 ** 30 + 1, 2 ** 31 - 1]]).astype(np.int32)
    out = np.zeros(d.size, np.uint64)
    k(((d.size + 127) // 128,), (128,), (d, out, np.int32(d.size)))
    np.testing.assert_array_equal(out, [fastdiv(int(v)) for v in d])


# ---------------------------------------------------------------------------------------
# launch limits (batch normalisation: tests/ops/test_batch_norm.py)


def test_grid_stride_loops_cannot_overflow_int_indices():
    """The pooling kernels index with int below INT_SAFE; their grid-stride loops step the
    last index by the grid's stride, which must keep it below 2**31 (with the old cap of
    65535 * 64 blocks, a call of 2**30 to INT_SAFE elements wrapped negative)."""
    from convgpu.kernels.cuda import launch
    for n in (1, 1000, 2 ** 27, 2 ** 30, launch.INT_SAFE - 1, 2 ** 31, 2 ** 40):
        for grid in (launch.elementwise_grid(n), launch.warp_grid(n)):
            (blocks,) = grid
            assert 1 <= blocks and (launch.INT_SAFE - 1) + blocks * launch.THREADS < 2 ** 31
    assert launch.elementwise_grid(2 ** 30) == (launch.GRID_STRIDE_BLOCKS,)
    assert launch.elementwise_grid(1000) == (4,)


