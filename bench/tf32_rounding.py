"""How the TF32 kernels round their operands, side by side on one device: gemm.cu and
conv_implicit.cu built with each CONVGPU_TF32_ROUND (kernels/cuda/common.cuh), then

  1. exactness: every TF32 GEMM variant (tiled, vec, pipelined) times the identity gives the
     operand rounded to nearest, ties away (modes 0 and 1), or truncated (mode 2), bit for
     bit: the device check that the tensor cores drop the low 13 bits to_tf32 leaves;
  2. error: gemm_pipelined on a random 1024^3 against float64 (relative Frobenius norm);
  3. time: the TF32 calls the default mode serves (gemm 4096^3, the pipelined implicit-GEMM
     convolutions forward and both gradients, Winograd and im2col through the GEMM), with
     CUDA events, the modes interleaved round by round so drift lands on all of them.

Mode 0 is the default; a mode that is faster on every kernel and exact replaces it there.
bench/gpu_check.sh runs this after the benchmark and appends it to bench.log.

    python3 bench/tf32_rounding.py [--rounds 5] [--small]
"""
import argparse
import statistics
import sys
from pathlib import Path

import cupy as cp
import numpy as np

import convgpu
from convgpu.kernels.cuda import gemm, launcher_modules
from convgpu.kernels.cuda import module as loader
from convgpu.kernels.cuda import sources as _module

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from helpers import tf32_round, tf32_rounding_operands  # noqa: E402

MODES = {0: "cvt.rna (PTX)", 1: "integer rna", 2: "none (truncated)"}
FILES = ("gemm.cu", "conv_implicit.cu")


def used(expr):
    """The kernels these calls reach in gemm.cu / conv_implicit.cu (about half of them: NVRTC takes
    ~15 s per mode for these on two cores, ~25 s for all)."""
    return ("pipelined" in expr or expr in ("im2col<float>", "col2im<float>", "sum_splits<float>")
            or (expr.startswith("gemm_") and expr.endswith("true>")))


class Modes:
    """The launchers' get_function answering from a module of the current mode's gemm.cu /
    conv_implicit.cu (compiled once per mode, the name expressions `used`; mode 0 is the
    default, the library's own module); other files as usual."""

    def __init__(self):
        self.mode, self.modules = 0, {}
        self.real_get = loader.get_function
        for mod in launcher_modules():      # wherever a launcher imported it
            if getattr(mod, "get_function", None) is self.real_get:
                mod.get_function = self.get_function

    def module(self, mode, file):
        key = (mode, file)
        if key not in self.modules:
            if mode == 0:            # the default: the library's own module, already built
                self.modules[key] = None
                return None
            m = cp.RawModule(code=_module.source(file),
                             options=_module.options() + (f"-DCONVGPU_TF32_ROUND={mode}",),
                             name_expressions=[e for e in _module.NAME_EXPRESSIONS[file]
                                               if used(e)])
            m.compile()
            self.modules[key] = m
        return self.modules[key]

    def get_function(self, file, expr):
        module = self.module(self.mode, file) if file in FILES else None
        return module.get_function(expr) if module else self.real_get(file, expr)


def exactness(mode, rng):
    """[] if every TF32 GEMM variant multiplies operands rounded as `mode` says, else what
    differs."""
    n = 32
    X = tf32_rounding_operands(rng, n)
    eye = np.eye(n, dtype=np.float32)
    want = {0: tf32_round(X), 1: tf32_round(X),
            2: (X.view(np.uint32) & np.uint32(0xffffe000)).view(np.float32)}
    bad = []
    for variant in ("tiled", "vec", "pipelined"):
        for side in "AB":
            A, B = (X, eye) if side == "A" else (eye, X)
            C = gemm.gemm(cp.asarray(A[None]), cp.asarray(B[None]), tf32=True,
                              variant=variant)
            got = cp.asnumpy(C)[0]
            if not np.array_equal(got, want[mode]):
                bad.append(f"{variant}/{side}: {int((got != want[mode]).sum())} differ")
    return bad


def gemm_error(rng, n=1024):
    A = rng.uniform(-1, 1, (1, n, n))
    B = rng.uniform(-1, 1, (1, n, n))
    C = gemm.gemm(cp.asarray(A, np.float32), cp.asarray(B, np.float32), tf32=True,
                      variant="pipelined")
    ref = A[0] @ B[0]
    return float(np.linalg.norm(cp.asnumpy(C)[0] - ref) / np.linalg.norm(ref))


def cases(rng, small=False):
    """(label, call) of the timed TF32 calls; small: tiny shapes, to run the script itself
    through (on the host emulation)."""
    f32 = lambda *s: cp.asarray(rng.uniform(-1, 1, s), np.float32)   # noqa: E731
    n = 64 if small else 4096
    A4, B4 = f32(1, n, n), f32(1, n, n)
    layers = {"ResNet 3x3": (16, 128, 28, 128), "VGG 3x3": (16, 64, 112, 128),
              "3x3 late": (16, 512, 7, 512)}
    if small:
        layers = {"tiny 3x3": (1, 8, 6, 8)}
    out = [(f"gemm_pipelined {n}^3", lambda: gemm.gemm(A4, B4, tf32=True,
                                                           variant="pipelined"))]
    for name, (N, C, H, K) in layers.items():
        x, w = f32(N, C, H, H), f32(K, C, 3, 3)
        gy = f32(N, K, H, H)
        kw = dict(padding=1, backend="cuda", allow_tf32=True)
        out += [
            (f"conv fwd pipelined {name}", lambda x=x, w=w, kw=kw: convgpu.conv2d(
                x, w, algo="implicit_gemm_pipelined_tf32", **kw)),
            (f"conv dgrad pipelined {name}", lambda gy=gy, w=w, x=x, kw=kw:
                convgpu.conv2d_backward_input(gy, w, x.shape,
                                              algo="implicit_gemm_pipelined_tf32", **kw)),
            (f"conv wgrad pipelined {name}", lambda x=x, gy=gy, w=w, kw=kw:
                convgpu.conv2d_backward_weight(x, gy, w.shape,
                                               algo="implicit_gemm_pipelined_tf32", **kw)),
            (f"conv fwd winograd_tf32 {name}", lambda x=x, w=w, kw=kw: convgpu.conv2d(
                x, w, algo="winograd_tf32", **kw)),
        ]
    x, w = (f32(2, 8, 6, 6), f32(4, 8, 1, 1)) if small else (f32(16, 256, 56, 56),
                                                            f32(64, 256, 1, 1))
    out.append(("conv fwd im2col_tf32 ResNet 1x1", lambda: convgpu.conv2d(
        x, w, algo="im2col_tf32", backend="cuda", allow_tf32=True)))
    return out


def time_ms(fn, reps=10):
    fn()
    start, stop = cp.cuda.Event(), cp.cuda.Event()
    start.record()
    for _ in range(reps):
        fn()
    stop.record()
    stop.synchronize()
    return cp.cuda.get_elapsed_time(start, stop) / reps


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--small", action="store_true", help="tiny shapes (a smoke run)")
    args = p.parse_args()
    rng = np.random.default_rng(0)
    modes = Modes()
    print("== TF32 operand rounding (CONVGPU_TF32_ROUND), "
          f"{cp.cuda.runtime.getDeviceProperties(0)['name'].decode()}")
    for mode, label in MODES.items():
        modes.mode = mode
        bad = exactness(mode, np.random.default_rng(1))
        n = 64 if args.small else 1024
        print(f"mode {mode} {label:18s} exact: {'yes' if not bad else 'NO ' + '; '.join(bad)}"
              f"   gemm {n}^3 rel. error {gemm_error(np.random.default_rng(2), n):.2e}")
    work = cases(rng, args.small)
    times = {(name, m): [] for name, _ in work for m in MODES}
    for r in range(args.rounds):
        for name, fn in work:
            for mode in MODES:
                modes.mode = mode
                times[(name, mode)].append(time_ms(fn))
    print(f"{'call':42s}" + "".join(f"{'mode ' + str(m) + ' ms':>12s}" for m in MODES)
          + "   1 vs 0   2 vs 0")
    for name, _ in work:
        med = {m: statistics.median(times[(name, m)]) for m in MODES}
        print(f"{name:42s}" + "".join(f"{med[m]:12.4f}" for m in MODES)
              + f"   {med[0] / med[1]:5.2f}x   {med[0] / med[2]:5.2f}x")
