"""Where the time goes inside the multi-kernel algorithms, for the next change to aim at:
every CUDA C kernel launch, every GEMM (with its split-K sum) and every cuFFT call of one
op call timed with CUDA events around it, after a warm-up call; what is left of the call's
time ("other") is CuPy's own array work (copies, transposes, concatenations, casts) and
launch gaps. Then a LeNet-5 training step by phase (forward, loss, backward, optimiser):
host wall time and CUDA C launches. bench/gpu_check.sh appends the output to bench.log.

    python3 bench/stage_times.py [--quick] [--small]
"""
import argparse
import collections

import cupy as cp

import convgpu
from convgpu.kernels.cuda import launcher_modules
from convgpu.kernels.cuda.gemm import gemm as real_gemm
from convgpu.kernels.cuda.module import get_function as real_get


class Stages:
    """Wraps the launch points of the CUDA C launchers: get_function (each kernel), gemm (a
    whole GEMM, its kernels not counted again) and cupy.fft's 2-D transforms."""

    def __init__(self):
        self.active, self.depth, self.events = False, 0, []

    def timed(self, label, fn, *a, **k):
        if not self.active or self.depth:
            return fn(*a, **k)
        start, stop = cp.cuda.Event(), cp.cuda.Event()
        self.depth += 1
        start.record()
        try:
            return fn(*a, **k)
        finally:
            stop.record()
            self.depth -= 1
            self.events.append((label, start, stop))

    def install(self):
        stages = self
        real_rfft2, real_irfft2 = cp.fft.rfft2, cp.fft.irfft2

        class Kernel:                         # forwards attributes (max_dynamic_shared_size_bytes)
            def __init__(self, fn, label):
                object.__setattr__(self, "_fn", fn)
                object.__setattr__(self, "_label", label)

            def __call__(self, *a, **k):
                return stages.timed(self._label, self._fn, *a, **k)

            def __getattr__(self, name):
                return getattr(self._fn, name)

            def __setattr__(self, name, value):
                setattr(self._fn, name, value)

        def get_function(file, expr):
            return Kernel(real_get(file, expr), expr.split("<")[0])

        def gemm(A, B, *a, **k):
            M = A.shape[2] if (a[0] if a else k.get("ta", False)) else A.shape[1]
            label = f"gemm (batch {max(A.shape[0], B.shape[0])}, M {M}{', TF32' if k.get('tf32') else ''})"
            return stages.timed(label, real_gemm, A, B, *a, **k)

        for mod in launcher_modules():       # wherever a launcher imported them
            if getattr(mod, "get_function", None) is real_get:
                mod.get_function = get_function
            if getattr(mod, "gemm", None) is real_gemm:
                mod.gemm = gemm
        cp.fft.rfft2 = lambda *a, **k: stages.timed("cuFFT rfft2", real_rfft2, *a, **k)
        cp.fft.irfft2 = lambda *a, **k: stages.timed("cuFFT irfft2", real_irfft2, *a, **k)

    def profile(self, title, call):
        call()                                # compile, plan, autotune caches: not timed
        cp.cuda.Device().synchronize()
        self.events, self.active = [], True
        start, stop = cp.cuda.Event(), cp.cuda.Event()
        start.record()
        call()
        stop.record()
        stop.synchronize()
        self.active = False
        total = cp.cuda.get_elapsed_time(start, stop)
        by = collections.OrderedDict()
        for label, s, e in self.events:
            n, t = by.get(label, (0, 0.0))
            by[label] = (n + 1, t + cp.cuda.get_elapsed_time(s, e))
        print(f"\n{title}: {total:.3f} ms")
        for label, (n, t) in by.items():
            print(f"  {label:44s} x{n:<3d} {t:8.3f} ms  {100 * t / total:5.1f}%")
        other = total - sum(t for _, t in by.values())
        print(f"  {'other (CuPy array work, gaps)':44s}      {other:8.3f} ms  {100 * other / total:5.1f}%")


# (N, C, H, K, R, padding) of the FFT layers; (N, C, H, K) of the 3x3 Winograd layers
FFT_LAYERS = {"AlexNet conv2 5x5": (128, 64, 27, 192, 5, 2), "L4 7x7": (128, 128, 16, 128, 7, 0)}
WINOGRAD_LAYERS = {"VGG 3x3": (16, 64, 112, 128), "ResNet 3x3": (16, 128, 28, 128),
                   "ResNet 3x3 late": (16, 512, 7, 512)}
CONV1 = (16, 3, 224, 64)      # ResNet conv1 7x7/2: N, C, H, K


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="the FFT and Winograd layers only")
    ap.add_argument("--small", action="store_true",
                    help="tiny layers and steps: to run the script itself through")
    args = ap.parse_args()
    global FFT_LAYERS, WINOGRAD_LAYERS, CONV1
    if args.small:
        FFT_LAYERS = {"tiny 5x5": (2, 3, 9, 4, 5, 2)}
        WINOGRAD_LAYERS = {"tiny 3x3": (2, 4, 9, 6)}
        CONV1 = (2, 3, 16, 4)
    st = Stages()
    st.install()
    rng = cp.random.default_rng(0)
    r = lambda *s: rng.standard_normal(s, dtype=cp.float32)
    cuda = dict(backend="cuda")

    # AlexNet conv2 5x5 (the weakest forward layer) and convnet-bench L4 7x7 on the FFT path
    for name, (N, C, H, K, R, p) in FFT_LAYERS.items():
        x, w = r(N, C, H, H), r(K, C, R, R)
        gy = cp.zeros_like(convgpu.conv2d(x, w, padding=p, **cuda, algo="fft")) + 1
        st.profile(f"conv2d fft, {name}", lambda: convgpu.conv2d(x, w, padding=p, **cuda, algo="fft"))
        st.profile(f"conv2d_backward_input fft, {name}", lambda: convgpu.conv2d_backward_input(
            gy, w, x.shape, padding=p, **cuda, algo="fft"))
        st.profile(f"conv2d_backward_weight fft, {name}", lambda: convgpu.conv2d_backward_weight(
            x, gy, w.shape, padding=p, **cuda, algo="fft"))

    # the Winograd layers: F(2x2) and F(4x4), forward and weight gradient
    for name, (N, C, H, K) in WINOGRAD_LAYERS.items():
        x, w, gy = r(N, C, H, H), r(K, C, 3, 3), r(N, K, H, H)
        for algo in ("winograd", "winograd_4x4"):
            st.profile(f"conv2d {algo}, {name}",
                       lambda: convgpu.conv2d(x, w, padding=1, **cuda, algo=algo))
            st.profile(f"conv2d_backward_weight {algo}, {name}",
                       lambda: convgpu.conv2d_backward_weight(x, gy, w.shape, padding=1, **cuda,
                                                              algo=algo))
    if args.quick:
        return
    # ResNet conv1 7x7/2 weight gradient (im2col + the GEMM over 200704 positions, split)
    N, C, H, K = CONV1
    x, gy = r(N, C, H, H), r(N, K, (H - 1) // 2 + 1, (H - 1) // 2 + 1)
    st.profile("conv2d_backward_weight im2col, ResNet conv1 7x7/2",
               lambda: convgpu.conv2d_backward_weight(x, gy, (K, C, 7, 7), stride=2, padding=3,
                                                      **cuda, algo="im2col"))

    train_step_phases(st, *((2, 1) if args.small else ()))


def train_step_phases(st, batch=32, steps=20):
    """The LeNet-5 step of `convgpu train --backend cuda` (digits, batch 32) by phase:
    host wall time with the device synchronised after each phase (so a phase's time is its
    launches and its kernels), the CUDA C kernel launches counted per phase. The step is
    ~3x torch's (bench/results: train.log); this says whether the host or the kernels
    hold it."""
    import time

    import numpy as np

    from convgpu import data as D
    from convgpu import nn
    x, y = D.digits()
    xd, yd = cp.asarray(x[:batch * 2]), cp.asarray(y[:batch * 2].astype(np.int64))
    model = nn.lenet5(1, x.shape[2], 10).to(cp)
    opt = nn.Adam(model.parameters(), lr=2e-3)
    loss_fn = nn.SoftmaxCrossEntropy("auto", check_labels=False)
    sync = cp.cuda.Device().synchronize
    phases = collections.OrderedDict((k, [0.0, 0]) for k in ("forward", "loss", "backward",
                                                              "optimiser"))
    launches = [0]
    real_timed = st.timed

    def counted(label, fn, *a, **k):   # CUDA C kernels and cuFFT calls (not CuPy's own
        if not label.startswith("gemm"):   # kernels; a GEMM counts its kernels)
            launches[0] += 1
        return fn(*a, **k)

    st.timed = counted
    try:
        for it in range(steps + 3):                    # 3 warm-up steps (autotuning, caches)
            xb, yb = xd[(it % 2) * batch:(it % 2 + 1) * batch], yd[(it % 2) * batch:(it % 2 + 1) * batch]
            marks = []
            sync()
            t0 = time.perf_counter()
            for name, fn in (("forward", lambda: model.forward(xb)),
                             ("loss", lambda: loss_fn.forward(logits, yb)),
                             ("backward", lambda: model.backward(loss_fn.backward(),
                                                                 need_input_grad=False)),
                             ("optimiser", opt.step)):
                n0 = launches[0]
                out = fn()
                if name == "forward":
                    logits = out
                sync()
                t1 = time.perf_counter()
                marks.append((name, t1 - t0, launches[0] - n0))
                t0 = t1
            if it >= 3:
                for name, dt, n in marks:
                    phases[name][0] += dt
                    phases[name][1] += n
    finally:
        st.timed = real_timed
    total = sum(v[0] for v in phases.values()) / steps * 1e3
    print(f"\nLeNet-5 training step (digits, batch {batch}, cuda backend): {total:.3f} ms "
          f"(host wall time, synchronised per phase; mean of {steps} steps)")
    for name, (dt, n) in phases.items():
        print(f"  {name:12s} {dt / steps * 1e3:8.3f} ms  {n / steps:5.1f} CUDA C launches")


if __name__ == "__main__":
    main()
