"""The convgpu command line: info, check (and bench, train as they land).

    convgpu info                 devices, versions, backends, registered implementations
    convgpu check [--size S]     every implementation that can run here against the reference
    convgpu bench [--json PATH]  device kernels against cuDNN on the layers of real networks
    convgpu tune --suite NAME    algo="auto" over a suite's layers, to fill the tuning cache
    convgpu train [options]      LeNet-5 on the digits (numpy backend on a CPU, --backend cuda on a GPU)

Without a GPU, `check` runs the Numba kernels in the CUDA simulator (it sets
NUMBA_ENABLE_CUDASIM=1 before Numba is imported) and the CUDA C kernels in the host
emulation (CONVGPU_CUDA_HOST=1, kernels/cuda/emulator: g++ builds each .cu for the CPU), so
every device row is exercised on any machine, slowly and on small shapes. Emulated is not
validated: only a GPU run validates a kernel.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys

from convgpu.core.env import gpu_count


def _prepare_backends(emulate_cuda: bool = False) -> int:
    """Without a GPU: the Numba simulator, and (for info and check) the CUDA C host emulation."""
    n = gpu_count()
    if n == 0 and "NUMBA_ENABLE_CUDASIM" not in os.environ:
        os.environ["NUMBA_ENABLE_CUDASIM"] = "1"
    if n == 0 and emulate_cuda and "CONVGPU_CUDA_HOST" not in os.environ:
        os.environ["CONVGPU_CUDA_HOST"] = "1"
    return n


def _version(mod: str) -> str:
    try:
        m = __import__(mod)
        return getattr(m, "__version__", "?")
    except Exception as e:                      # missing or broken: say which
        return f"not importable ({type(e).__name__})"


def cmd_info(args) -> int:
    n = _prepare_backends(emulate_cuda=True)
    import convgpu
    from convgpu.ops._registry import (backend_unavailable, cuda_host_enabled, implementations,
                                       simulator_enabled)
    print(f"convgpu {convgpu.__version__}  python {platform.python_version()}  "
          f"{platform.machine()}")
    print(f"numpy {_version('numpy')}  scipy {_version('scipy')}  numba {_version('numba')}  "
          f"cupy {_version('cupy')}")
    if n:
        import cupy
        for d in range(n):
            p = cupy.cuda.runtime.getDeviceProperties(d)
            print(f"GPU {d}: {p['name'].decode()}  cc {p['major']}.{p['minor']}  "
                  f"{p['multiProcessorCount']} SMs  {p['totalGlobalMem'] / 2**30:.0f} GiB")
        print(f"driver {cupy.cuda.runtime.driverGetVersion()}  "
              f"runtime {cupy.cuda.runtime.runtimeGetVersion()}")
    else:
        print("GPU: none visible (the numba backend runs in the CUDA simulator, the cuda "
              "backend in the host emulation)")
    print("\nbackends:")
    how = {"numba": " (CUDA simulator: slow, for testing)" if not n and simulator_enabled() else "",
           "cuda": " (host emulation: slow, for testing)" if not n and cuda_host_enabled() else ""}
    for b in ("numpy", "numba", "cuda"):
        why = backend_unavailable(b)
        print(f"  {b:6s} {'available' + how.get(b, '') if why is None else 'unavailable: ' + why}")
    print("\nregistered implementations (backend: algos):")
    for op, impls in implementations().items():
        by = {}
        for b, a in impls:
            by.setdefault(b, []).append(a)
        print(f"  {op:32s} " + "; ".join(f"{b}: {', '.join(a)}" for b, a in by.items()))
    return 0


def cmd_check(args) -> int:
    n = _prepare_backends(emulate_cuda=True)
    from convgpu.check import format_table, run_checks
    size = args.size or ("large" if n else "small")
    where = "GPU" if n else "CPU (no GPU: numba in the CUDA simulator, cuda in host emulation)"
    print(f"convgpu check: {size} problems, device backends on the {where}; "
          "tolerance is ||out - ref|| / ||ref|| against the float64 reference\n", flush=True)
    rows = run_checks(size, ops=args.ops, backends=args.backends, seed=args.seed)
    print(format_table(rows))
    return 1 if any(r.status.startswith("FAIL") for r in rows) else 0


def cmd_bench(args) -> int:
    _prepare_backends()
    from convgpu.bench import run
    doc = run(json_path=args.json, plot_path=args.plot, quick=args.quick, shapes=args.shapes,
              ops=args.ops, impl=args.impl, suites=args.suite, shape_specs=args.shape)
    failed = [r for r in doc["results"] if r["status"].startswith("FAIL")]
    for r in failed:
        print(f"FAILED validation: {r['op']} {r['impl']} {r['shape']}: {r['status']}")
    return 1 if failed or not doc["results"] else 0


def cmd_tune(args) -> int:
    """algo="auto" over every layer of the suites, forward and both gradients, on the GPU."""
    n = _prepare_backends()
    if n == 0:
        print("convgpu tune: no GPU visible; the tuning cache holds device timings (without a "
              "GPU, algo=\"auto\" takes the first implementation that serves a call, untimed)",
              file=sys.stderr)
        return 1
    from convgpu.bench import Progress, tune
    from convgpu.shapes import parse_suite
    layers = [sh for spec in args.suite for sh in parse_suite(spec)]
    rows = tune(layers, allow_tf32=args.allow_tf32, progress=Progress())
    bad = [r for r in rows if r["status"] != "ok"]
    print(f"tuned {len(rows) - len(bad)} of {len(rows)} layer passes"
          + (f"; {len(bad)} not tuned (listed above)" if bad else ""))
    return 1 if bad else 0


def _suite_arg(text: str) -> str:
    """argparse type for --suite: a known suite, optionally NAME@BATCH."""
    from convgpu.shapes import parse_suite
    try:
        parse_suite(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def _shape_arg(text: str):
    """argparse type for --shape: conv:KEY=V,... or pool:KEY=V,..."""
    from convgpu.shapes import parse_shape
    try:
        return parse_shape(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e).removeprefix("--shape ")) from None


def cmd_train(args) -> int:
    if args.backend in ("numba", "cuda", "auto"):
        _prepare_backends()
    from convgpu.train import main_train
    return main_train(args)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="convgpu", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("info", help="devices, versions, backends, implementations")
    c = sub.add_parser("check", help="validate every runnable implementation against the reference")
    c.add_argument("--size", choices=["small", "large"], help="problem sizes (default: small "
                   "without a GPU, large with one)")
    c.add_argument("--ops", nargs="*", help="only these ops")
    c.add_argument("--backends", nargs="*", help="only these backends")
    c.add_argument("--seed", type=int, default=0)
    tr = sub.add_parser("train", help="train LeNet-5 on real digit images through the op API")
    from convgpu.train import add_arguments
    add_arguments(tr)
    bn = sub.add_parser("bench", help="time the kernels against cuDNN/cuBLAS on real layer shapes")
    bn.add_argument("--quick", action="store_true", help="ResNet-50's layers, one GEMM, three "
                    "pools, two batch norms")
    what = bn.add_mutually_exclusive_group()
    what.add_argument("--suite", nargs="+", type=_suite_arg, metavar="NAME",
                    help="conv layers of these suites only: resnet50, vgg16, mobilenetv2, "
                    "alexnet, classic; NAME@BATCH for another batch (default batch 32)")
    what.add_argument("--shape", nargs="+", type=_shape_arg, metavar="SPEC",
                    help="one's own problem(s) instead of the suites, e.g. "
                    "conv:N=32,C=64,H=56,W=56,K=64,R=3,S=3,stride=1,pad=1 or "
                    "pool:N=32,C=64,H=112,k=3,stride=2,pad=1")
    bn.add_argument("--json", help="write the results to this JSON file")
    bn.add_argument("--plot", help="write a PNG: speed vs cuDNN per shape, and a roofline")
    bn.add_argument("--shapes", nargs="*", help="only shapes whose name contains one of these")
    bn.add_argument("--ops", nargs="*", help="gemm, conv2d, conv2d_backward, pool, norm")
    bn.add_argument("--impl", nargs="*", help="only implementations whose label contains these")
    tu = sub.add_parser("tune", help='run algo="auto" over a suite\'s layers to fill the '
                        "tuning cache before training (GPU only)")
    tu.add_argument("--suite", nargs="+", required=True, type=_suite_arg, metavar="NAME",
                    help="resnet50, vgg16, mobilenetv2, alexnet, classic (NAME@BATCH for "
                    "another batch; default 32)")
    tu.add_argument("--allow-tf32", action="store_true",
                    help="tune with TF32 allowed (as a model run with allow_tf32 calls)")
    args = ap.parse_args(argv)
    return {"info": cmd_info, "check": cmd_check, "bench": cmd_bench, "train": cmd_train,
            "tune": cmd_tune}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
