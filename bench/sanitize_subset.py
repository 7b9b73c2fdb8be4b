"""A small run of every device kernel family for compute-sanitizer (memcheck, racecheck).
Small shapes with odd tails so boundary guards are exercised; exits non-zero on a wrong
answer so a sanitizer run is also a correctness run."""
import os
import sys

os.environ.setdefault("CONVGPU_DEV", "1")     # kernels/dev's kernels (algo="tiled") too

import cupy as cp
import numpy as np

import convgpu
from convgpu import reference as ref

rng = np.random.default_rng(0)
bad = 0


def check(name, got, want, tol=1e-4):
    global bad
    got = cp.asnumpy(got).astype(np.float64)
    e = np.linalg.norm(got - want) / np.linalg.norm(want)
    ok = np.isfinite(got).all() and e <= tol
    bad += not ok
    print(f"{name:40s} rel err {e:.2e} {'ok' if ok else 'FAIL'}")


x = rng.uniform(-1, 1, (2, 6, 11, 9))
w = rng.uniform(-1, 1, (4, 3, 3, 2))
b = rng.uniform(-1, 1, 4)
kw = dict(stride=(2, 1), padding=(1, 1), groups=2)
xd, wd, bd = (cp.asarray(a.astype(np.float32)) for a in (x, w, b))
yref = ref.conv2d(x, w, b, (2, 1), (1, 1), (1, 1), 2)
gy = rng.uniform(-1, 1, yref.shape)
gyd = cp.asarray(gy.astype(np.float32))
for algo in ["direct", "direct_tiled", "im2col", "fft"]:
    check(f"conv2d {algo}", convgpu.conv2d(xd, wd, bd, **kw, backend="numba", algo=algo), yref)
for algo in ["implicit_gemm", "im2col", "fft", "direct"]:
    check(f"conv2d cuda {algo}", convgpu.conv2d(xd, wd, bd, **kw, backend="cuda", algo=algo), yref)
x3 = rng.uniform(-1, 1, (2, 6, 9, 7))
w3 = rng.uniform(-1, 1, (4, 3, 3, 3))
check("conv2d cuda winograd (odd tiles, groups)",
      convgpu.conv2d(cp.asarray(x3.astype(np.float32)), cp.asarray(w3.astype(np.float32)),
                     bd, padding=1, groups=2, backend="cuda", algo="winograd"),
      ref.conv2d(x3, w3, b, (1, 1), (1, 1), (1, 1), 2))
y3 = ref.conv2d(x3, w3, None, (1, 1), (1, 1), (1, 1), 2)
g3 = rng.uniform(-1, 1, y3.shape)
check("conv2d_backward_input cuda winograd",
      convgpu.conv2d_backward_input(cp.asarray(g3.astype(np.float32)),
                                    cp.asarray(w3.astype(np.float32)), x3.shape, padding=1,
                                    groups=2, backend="cuda", algo="winograd"),
      ref.conv2d_backward_input(g3, w3, x3.shape, (1, 1), (1, 1), (1, 1), 2))
check("conv2d cuda winograd_4x4 (odd tiles, groups)",
      convgpu.conv2d(cp.asarray(x3.astype(np.float32)), cp.asarray(w3.astype(np.float32)),
                     bd, padding=1, groups=2, backend="cuda", algo="winograd_4x4"),
      ref.conv2d(x3, w3, b, (1, 1), (1, 1), (1, 1), 2))
check("conv2d_backward_weight cuda winograd_4x4",
      convgpu.conv2d_backward_weight(cp.asarray(x3.astype(np.float32)),
                                     cp.asarray(g3.astype(np.float32)), w3.shape, padding=1,
                                     groups=2, backend="cuda", algo="winograd_4x4"),
      ref.conv2d_backward_weight(x3, g3, w3.shape, (1, 1), (1, 1), (1, 1), 2))
check("conv2d_backward_weight cuda winograd (zero columns past the tiles)",
      convgpu.conv2d_backward_weight(cp.asarray(x3.astype(np.float32)),
                                     cp.asarray(g3.astype(np.float32)), w3.shape, padding=1,
                                     groups=2, backend="cuda", algo="winograd"),
      ref.conv2d_backward_weight(x3, g3, w3.shape, (1, 1), (1, 1), (1, 1), 2))
check("conv2d cuda implicit_gemm_tf32", convgpu.conv2d(xd, wd, bd, **kw, backend="cuda",
                                                       algo="implicit_gemm_tf32", allow_tf32=True),
      yref, tol=2e-3)
check("conv2d cuda implicit_gemm_pipelined_tf32",
      convgpu.conv2d(xd, wd, bd, **kw, backend="cuda", algo="implicit_gemm_pipelined_tf32",
                     allow_tf32=True), yref, tol=2e-3)
x4 = rng.uniform(-1, 1, (2, 8, 10, 9))          # Cg*R*S = 36: the 16-byte weight copies
w4 = rng.uniform(-1, 1, (6, 4, 3, 3))
b4 = rng.uniform(-1, 1, 6)
check("conv2d cuda implicit_gemm_pipelined_tf32 (vector weights)",
      convgpu.conv2d(*(cp.asarray(a.astype(np.float32)) for a in (x4, w4, b4)), padding=1,
                     groups=2, backend="cuda", algo="implicit_gemm_pipelined_tf32",
                     allow_tf32=True),
      ref.conv2d(x4, w4, b4, (1, 1), (1, 1), (1, 1), 2), tol=2e-3)
from convgpu.kernels.cuda import gemm, pool  # noqa: E402
ga, gb = rng.uniform(-1, 1, (2, 132, 100)), rng.uniform(-1, 1, (2, 100, 68))
check("gemm_pipelined (TF32, split-K)",
      gemm.gemm(cp.asarray(ga.astype(np.float32)), cp.asarray(gb.astype(np.float32)),
                    splits=2, tf32=True, variant="pipelined"), ga @ gb, tol=2e-3)
for variant in ("vec", "vec64"):
    check(f"gemm_{variant} (split-K, transposed B)",
          gemm.gemm(cp.asarray(ga.astype(np.float32)),
                        cp.asarray(gb.transpose(0, 2, 1).astype(np.float32, order="C")), tb=True,
                        splits=2, variant=variant), ga @ gb)
check("conv2d_backward_input cuda fft",
      convgpu.conv2d_backward_input(gyd, wd, x.shape, **kw, backend="cuda", algo="fft"),
      ref.conv2d_backward_input(gy, w, x.shape, (2, 1), (1, 1), (1, 1), 2))
check("conv2d_backward_weight cuda fft",
      convgpu.conv2d_backward_weight(xd, gyd, w.shape, **kw, backend="cuda", algo="fft"),
      ref.conv2d_backward_weight(x, gy, w.shape, (2, 1), (1, 1), (1, 1), 2))
check("conv2d_backward_input cuda implicit_gemm (split-K)",
      convgpu.conv2d_backward_input(gyd, wd, x.shape, **kw, backend="cuda", algo="implicit_gemm"),
      ref.conv2d_backward_input(gy, w, x.shape, (2, 1), (1, 1), (1, 1), 2))
check("conv2d_backward_weight cuda implicit_gemm (split-K)",
      convgpu.conv2d_backward_weight(xd, gyd, w.shape, **kw, backend="cuda", algo="implicit_gemm"),
      ref.conv2d_backward_weight(x, gy, w.shape, (2, 1), (1, 1), (1, 1), 2))
check("conv2d_backward_input cuda col2im",
      convgpu.conv2d_backward_input(gyd, wd, x.shape, **kw, backend="cuda", algo="col2im"),
      ref.conv2d_backward_input(gy, w, x.shape, (2, 1), (1, 1), (1, 1), 2))
check("conv2d_backward_weight cuda im2col (split-K)",
      convgpu.conv2d_backward_weight(xd, gyd, w.shape, **kw, backend="cuda", algo="im2col"),
      ref.conv2d_backward_weight(x, gy, w.shape, (2, 1), (1, 1), (1, 1), 2))
for algo in ["direct", "col2im", "fft"]:
    check(f"conv2d_backward_input {algo}",
          convgpu.conv2d_backward_input(gyd, wd, x.shape, **kw, backend="numba", algo=algo),
          ref.conv2d_backward_input(gy, w, x.shape, (2, 1), (1, 1), (1, 1), 2))
for algo in ["direct", "im2col", "fft"]:
    check(f"conv2d_backward_weight {algo}",
          convgpu.conv2d_backward_weight(xd, gyd, w.shape, **kw, backend="numba", algo=algo),
          ref.conv2d_backward_weight(x, gy, w.shape, (2, 1), (1, 1), (1, 1), 2))
for be in ("numba", "cuda"):
    check(f"conv2d_backward_bias {be}", convgpu.conv2d_backward_bias(gyd, backend=be),
          gy.sum(axis=(0, 2, 3)))
xp = rng.permutation(np.linspace(-1, 1, 2 * 3 * 13 * 11)).reshape(2, 3, 13, 11)
yp, ip = ref.max_pool2d(xp, (3, 3), (2, 2), (1, 1), (1, 1), True)
y, i = convgpu.max_pool2d(cp.asarray(xp.astype(np.float32)), 3, 2, 1, ceil_mode=True,
                          return_indices=True)
check("max_pool2d", y, yp)
bad += not np.array_equal(cp.asnumpy(i), ip)
g = rng.uniform(-1, 1, yp.shape)
gd = cp.asarray(g.astype(np.float32))
check("max_pool2d_backward gather",
      convgpu.max_pool2d_backward(gd, i, xp.shape, 3, 2, 1, 1, True, algo="gather"),
      ref.max_pool2d_backward(g, ip, xp.shape))
for be in ("numba", "cuda"):
    yb_, ib_ = convgpu.max_pool2d(cp.asarray(xp.astype(np.float32)), 3, 2, 1, ceil_mode=True,
                                  return_indices=True, backend=be)
    check(f"max_pool2d {be}", yb_, yp)
    check(f"max_pool2d_backward gather {be}",
          convgpu.max_pool2d_backward(gd, ib_, xp.shape, 3, 2, 1, 1, True, algo="gather", backend=be),
          ref.max_pool2d_backward(g, ip, xp.shape))
    check(f"avg_pool2d_backward {be}", convgpu.avg_pool2d_backward(gd, xp.shape, 3, 2, 1, True, False,
                                                                   backend=be),
          ref.avg_pool2d_backward(g, xp.shape, (3, 3), (2, 2), (1, 1), True, False))
# pool.cu's other kernels: 3x3/1 (interior path, backward gather per element: 3 candidates
# per axis) and 4x4/3 (the general forward)
for k, st in ((3, 1), (4, 3)):
    yq, iq = ref.max_pool2d(xp, (k, k), (st, st), (1, 1), (1, 1), False)
    yc, ic = convgpu.max_pool2d(cp.asarray(xp.astype(np.float32)), k, st, 1, return_indices=True,
                                backend="cuda")
    check(f"max_pool2d cuda {k}x{k}/{st}", yc, yq)
    bad += not np.array_equal(cp.asnumpy(ic), iq)
    gq = rng.uniform(-1, 1, yq.shape)
    check(f"max_pool2d_backward gather cuda {k}x{k}/{st}",
          convgpu.max_pool2d_backward(cp.asarray(gq.astype(np.float32)), ic, xp.shape, k, st, 1,
                                      algo="gather", backend="cuda"),
          ref.max_pool2d_backward(gq, iq, xp.shape))
# the tiled gather (shared memory, barriers): bands of one cell row, 3 blocks looping
from convgpu.kernels.dev import pool_tiled  # noqa: E402
pool_tiled.TILED_MIN_BLOCKS, pool_tiled.TILED_MAX_GRID = 10 ** 6, 3
yt_, it_ = convgpu.max_pool2d(cp.asarray(xp.astype(np.float32)), 3, 2, 1, ceil_mode=True,
                              return_indices=True, algo="tiled", backend="cuda")
check("max_pool2d tiled cuda", yt_, yp)
bad += not np.array_equal(cp.asnumpy(it_), ip)
check("max_pool2d_backward tiled cuda",
      convgpu.max_pool2d_backward(gd, i, xp.shape, 3, 2, 1, 1, True, algo="tiled", backend="cuda"),
      ref.max_pool2d_backward(g, ip, xp.shape))
pool_tiled.TILED_MIN_BLOCKS, pool_tiled.TILED_MAX_GRID = 1024, 1 << 20
check("max_pool2d_backward plane", convgpu.max_pool2d_backward(gd, i, xp.shape, algo="plane"),
      ref.max_pool2d_backward(g, ip, xp.shape))
check("avg_pool2d", convgpu.avg_pool2d(cp.asarray(xp.astype(np.float32)), 3, 2, 1, True, False),
      ref.avg_pool2d(xp, (3, 3), (2, 2), (1, 1), True, False))
check("avg_pool2d_backward", convgpu.avg_pool2d_backward(gd, xp.shape, 3, 2, 1, True, False),
      ref.avg_pool2d_backward(g, xp.shape, (3, 3), (2, 2), (1, 1), True, False))
z = rng.uniform(-3, 3, (37, 10))
t = rng.integers(0, 10, 37)
zd, td = cp.asarray(z.astype(np.float32)), cp.asarray(t)
xs = cp.asarray(x.astype(np.float32))
for be in ("numba", "cuda"):
    check(f"global_avg_pool2d {be}", convgpu.global_avg_pool2d(cp.asarray(xp.astype(np.float32)),
                                                               backend=be),
          ref.global_avg_pool2d(xp))
    gg = rng.uniform(-1, 1, xp.shape[:2])
    check(f"global_avg_pool2d_backward {be}",
          convgpu.global_avg_pool2d_backward(cp.asarray(gg.astype(np.float32)), xp.shape,
                                             backend=be),
          ref.global_avg_pool2d_backward(gg, xp.shape))
    check(f"softmax_cross_entropy {be}", convgpu.softmax_cross_entropy(zd, td, backend=be),
          ref.softmax_cross_entropy(z, t))
    check(f"softmax_cross_entropy_backward {be}",
          convgpu.softmax_cross_entropy_backward(zd, td, backend=be),
          ref.softmax_cross_entropy_backward(z, t))
    check(f"relu {be}", convgpu.relu(xs, backend=be), ref.relu(x))
    check(f"relu_backward {be}", convgpu.relu_backward(xs, xs, backend=be), ref.relu_backward(x, x))
    check(f"bias_add {be}", convgpu.bias_add(xs, cp.asarray(x[0, :, 0, 0].astype(np.float32)),
                                             backend=be), ref.bias_add(x, x[0, :, 0, 0]))
lx, lw, lb = rng.uniform(-1, 1, (37, 45)), rng.uniform(-1, 1, (19, 45)), rng.uniform(-1, 1, 19)
for be in ("numba", "cuda"):
    check(f"linear {be}", convgpu.linear(*(cp.asarray(a.astype(np.float32)) for a in (lx, lw, lb)),
                                         backend=be), ref.linear(lx, lw, lb))
lg = rng.uniform(-1, 1, (37, 19))
for name, gg, rr in zip(["gx", "gw", "gb"],
                        convgpu.linear_backward(*(cp.asarray(a.astype(np.float32)) for a in (lg, lx, lw))),
                        ref.linear_backward(lg, lx, lw)):
    check(f"linear_backward {name}", gg, rr)
def bn_checks(label, x, gy, w, b, backends):
    """batch_norm and its backward, training and evaluation, against the reference."""
    C = x.shape[1]
    f32 = lambda a: cp.asarray(a.astype(np.float32))  # noqa: E731
    for be in backends:
        for training in (True, False):
            rm, rv = cp.zeros(C, cp.float32), cp.ones(C, cp.float32)
            y, mean, invstd = convgpu.batch_norm(f32(x), rm, rv, f32(w), f32(b), training,
                                                 return_stats=True, backend=be)
            if training:
                m64, i64, _ = ref.batch_norm_stats(x, 1e-5)
            else:
                m64, i64 = np.zeros(C), np.full(C, 1 / np.sqrt(1 + 1e-5))
            check(f"batch_norm {label}{be} training={training}", y,
                  ref.batch_norm(x, m64, i64, w, b))
            for name, got, want in zip(["gx", "gw", "gb"], convgpu.batch_norm_backward(
                    f32(gy), f32(x), mean, invstd, f32(w), training, backend=be),
                    ref.batch_norm_backward(gy, x, m64, i64, w, training)):
                check(f"batch_norm_backward {name} {label}{be} training={training}", got, want)


# batch normalisation: 8 splits per channel (shared-memory merges, the split merge) and
# the apply kernels' channel walk past a grid of 3 blocks
from convgpu.kernels.cuda import norm  # noqa: E402
norm.NORM_MIN_PER_THREAD = 1
real_grid = norm.elementwise_grid
norm.elementwise_grid = lambda n: (3,)
bn_checks("", rng.uniform(1, 5, (9, 2, 233)), rng.uniform(-1, 1, (9, 2, 233)),
          rng.uniform(-1, 1, 2), rng.uniform(-1, 1, 2), ("numba", "cuda"))
norm.elementwise_grid = real_grid
# the plane kernels of batch norm's apply passes, forced onto a small shape: float4 loads,
# two slices per plane and 3 rows of plane blocks stepping over 12 planes
saved = norm.NORM_PLANE_MIN, norm.NORM_SLICE_MIN, norm.MAX_GRID_YZ
norm.NORM_PLANE_MIN, norm.NORM_SLICE_MIN, norm.MAX_GRID_YZ = 1, 64, 3
bn_checks("planes ", rng.uniform(1, 5, (4, 3, 16, 8)), rng.uniform(-1, 1, (4, 3, 16, 8)),
          rng.uniform(-1, 1, 3), rng.uniform(-1, 1, 3), ("cuda",))
norm.NORM_PLANE_MIN, norm.NORM_SLICE_MIN, norm.MAX_GRID_YZ = saved
# depthwise convolution (shared-memory patch and filter, the weight gradient's tree):
# multiplier 2, stride 2, a plane of several partial 8 x 32 tiles
dx, dwt = rng.uniform(-1, 1, (2, 3, 19, 37)), rng.uniform(-1, 1, (6, 1, 3, 3))
dkw = dict(stride=2, padding=1, groups=3)
dy = ref.conv2d(dx, dwt, None, (2, 2), (1, 1), (1, 1), 3)
dg = rng.uniform(-1, 1, dy.shape)
dxd, dwd, dgd = (cp.asarray(a.astype(np.float32)) for a in (dx, dwt, dg))
check("conv2d cuda depthwise", convgpu.conv2d(dxd, dwd, **dkw, backend="cuda", algo="depthwise"),
      dy)
check("conv2d_backward_input cuda depthwise",
      convgpu.conv2d_backward_input(dgd, dwd, dx.shape, **dkw, backend="cuda", algo="depthwise"),
      ref.conv2d_backward_input(dg, dwt, dx.shape, (2, 2), (1, 1), (1, 1), 3))
check("conv2d_backward_weight cuda depthwise",
      convgpu.conv2d_backward_weight(dxd, dgd, dwt.shape, **dkw, backend="cuda",
                                     algo="depthwise"),
      ref.conv2d_backward_weight(dx, dg, dwt.shape, (2, 2), (1, 1), (1, 1), 3))
# the depthwise forward's unrolled 3x3 path at stride 1: two outputs per thread sharing
# input rows, 16 x 32 tiles (partial: 37 x 35 outputs)
ux, uw = rng.uniform(-1, 1, (1, 2, 37, 35)), rng.uniform(-1, 1, (2, 1, 3, 3))
check("conv2d cuda depthwise 3x3/1 (two rows a thread)",
      convgpu.conv2d(cp.asarray(ux.astype(np.float32)), cp.asarray(uw.astype(np.float32)),
                     padding=1, groups=2, backend="cuda", algo="depthwise"),
      ref.conv2d(ux, uw, None, (1, 1), (1, 1), (1, 1), 2))
cp.cuda.Device().synchronize()
print("sanitize subset:", "FAILED" if bad else "all ok")
sys.exit(1 if bad else 0)
