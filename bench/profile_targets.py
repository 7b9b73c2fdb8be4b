"""The kernels bench/gpu_check.sh hands to Nsight Compute (ncu), one launch each, so that a
missed target comes with what limits it (issue slots, tensor-pipe use, shared-memory
wavefronts and bank conflicts, warp stall reasons, occupancy, DRAM throughput), not only
with a time. Run under ncu with a kernel-name filter; every kernel is compiled (and its
module loaded) before the launch that is profiled, so each matched name is launched once:

    ncu --section SpeedOfLight ... -k regex:'pipelined|gemm_vec|...' python3 bench/profile_targets.py

Without ncu it just runs them (a smoke test of the script).
"""
import os

import cupy as cp
import numpy as np

os.environ.setdefault("CONVGPU_DEV", "1")     # the tiled pooling kernels (kernels/dev) too
import convgpu  # noqa: E402
from convgpu.kernels.cuda import gemm  # noqa: E402

rng = cp.random.default_rng(0)


def once(label, fn):
    """One launch of the kernel(s) behind fn (ncu profiles the launches whose names match
    its filter, so nothing here launches a matched kernel twice)."""
    out = fn()
    cp.cuda.Device().synchronize()
    print(f"ran {label}", flush=True)
    return out


# GEMM 4096^3: TF32 on the pipelined tile; FP32 on gemm_vec and gemm_tiled (SGEMM target)
A = rng.standard_normal((1, 4096, 4096), dtype=cp.float32)
B = rng.standard_normal((1, 4096, 4096), dtype=cp.float32)
once("gemm_pipelined TF32 4096^3", lambda: gemm.gemm(A, B, tf32=True, variant="pipelined"))
once("gemm_vec FP32 4096^3", lambda: gemm.gemm(A, B, variant="vec"))
once("gemm_tiled FP32 4096^3", lambda: gemm.gemm(A, B, variant="tiled"))
del A, B
# the 64-row gemm_vec tile on the ResNet 1x1 layer's GEMM (64 x 3136 x 256, 16 images)
A = rng.standard_normal((1, 64, 256), dtype=cp.float32)
B = rng.standard_normal((16, 256, 3136), dtype=cp.float32)
once("gemm_vec 64-row FP32 ResNet 1x1", lambda: gemm.gemm(A, B, variant="vec64"))
del A, B

# conv2d forward, ResNet 3x3 (N16 C128 H28 K128): the pipelined TF32 kernel and tile:: TF32
x = rng.standard_normal((16, 128, 28, 28), dtype=cp.float32)
w = rng.standard_normal((128, 128, 3, 3), dtype=cp.float32)
for algo in ("implicit_gemm_pipelined_tf32", "implicit_gemm_tf32"):
    once(f"conv2d {algo} ResNet 3x3",
         lambda: convgpu.conv2d(x, w, padding=1, backend="cuda", algo=algo, allow_tf32=True))

# max pooling 128x64x55x55 3x3/2 (AlexNet pool1): the copy-bandwidth target
xp = rng.standard_normal((128, 64, 55, 55), dtype=cp.float32)
y, idx = once("max_pool2d forward", lambda: convgpu.max_pool2d(xp, 3, 2, return_indices=True,
                                                               algo="direct", backend="cuda"))
once("max_pool2d forward tiled", lambda: convgpu.max_pool2d(xp, 3, 2, return_indices=True,
                                                            algo="tiled", backend="cuda"))
gy = cp.asarray(np.ones(y.shape, np.float32))
once("max_pool2d backward", lambda: convgpu.max_pool2d_backward(gy, idx, xp.shape, 3, 2,
                                                                algo="gather", backend="cuda"))
once("max_pool2d backward tiled", lambda: convgpu.max_pool2d_backward(
    gy, idx, xp.shape, 3, 2, algo="tiled", backend="cuda"))

# depthwise 3x3, MobileNet (N16 C256 H28, groups 256): forward and both gradients
xd = rng.standard_normal((16, 256, 28, 28), dtype=cp.float32)
wd = rng.standard_normal((256, 1, 3, 3), dtype=cp.float32)
yd = once("conv2d depthwise MobileNet", lambda: convgpu.conv2d(
    xd, wd, padding=1, groups=256, backend="cuda", algo="depthwise"))
once("conv2d depthwise input gradient", lambda: convgpu.conv2d_backward_input(
    yd, wd, xd.shape, padding=1, groups=256, backend="cuda", algo="depthwise"))
once("conv2d depthwise weight gradient", lambda: convgpu.conv2d_backward_weight(
    xd, yd, wd.shape, padding=1, groups=256, backend="cuda", algo="depthwise"))
del xd, wd, yd

# batch norm, ResNet-50 bn1 (32x64x112x112): training forward and backward
xb = rng.standard_normal((32, 64, 112, 112), dtype=cp.float32)
gb = rng.standard_normal(xb.shape, dtype=cp.float32)
wb, bb = cp.ones(64, cp.float32), cp.zeros(64, cp.float32)
rm, rv = cp.zeros(64, cp.float32), cp.ones(64, cp.float32)
yb, mean, invstd = once("batch_norm training forward", lambda: convgpu.batch_norm(
    xb, rm, rv, wb, bb, training=True, return_stats=True, backend="cuda"))
once("batch_norm backward", lambda: convgpu.batch_norm_backward(
    gb, xb, mean, invstd, wb, training=True, backend="cuda"))
