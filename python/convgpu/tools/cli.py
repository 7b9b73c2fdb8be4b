"""The convgpu command line.

    convgpu info                       devices, versions, backends, registered implementations
    convgpu check [--ops OP ...]       every implementation that can run here against the reference
    convgpu train [options]            LeNet-5 or a small ResNet on real digit images
    convgpu eval --load w.npz          test accuracy and confusion matrix of saved weights
    convgpu predict --load w.npz IMG   the class of each image
    convgpu bench [options]            the kernels against cuDNN/cuBLAS on the layers of real networks
    convgpu tune --suite NAME          algo="auto" over a suite's layers, to fill the tuning cache

Without a GPU, `check` runs the Numba kernels in the CUDA simulator (it sets
NUMBA_ENABLE_CUDASIM=1 before Numba is imported) and the CUDA C kernels in the host
emulation (CONVGPU_CUDA_HOST=1, kernels/cuda/emulator: g++ builds each .cu for the CPU), so
every device row is exercised on any machine, slowly and on small shapes. Emulated is not
validated: only a GPU run validates a kernel.

A mistake on the command line is answered by one line naming the option and what it
allows, with exit status 2.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys

from convgpu.tools.cliutil import (UsageError, _float_in, _Formatter, _int_at_least,
                                   _Parser, _prepare_backends)
from convgpu.core.env import gpu_count


def _version(mod: str) -> str:
    try:
        m = __import__(mod)
        return getattr(m, "__version__", "?")
    except Exception as e:                      # missing or broken: say which
        return f"not importable ({type(e).__name__})"


# ----------------------------------------------------------------------------------------
# info, check


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
    from convgpu.core.cachedir import cache_root
    from convgpu.ops._registry import tune_cache_enabled
    print("\ntuning cache (algo=\"auto\"): " + (
        f"{os.path.join(cache_root(), 'tune')}, one JSON per device" if tune_cache_enabled()
        else "in memory only (CONVGPU_TUNE_CACHE=off)"))
    print("\nregistered implementations (backend: algos):")
    for op, impls in implementations().items():
        by = {}
        for b, a in impls:
            by.setdefault(b, []).append(a)
        print(f"  {op:32s} " + "; ".join(f"{b}: {', '.join(a)}" for b, a in by.items()))
    return 0


def _checked_names(given, allowed, option) -> None:
    unknown = [g for g in given or () if g not in allowed]
    if unknown:
        raise UsageError(f"argument {option}: unknown {', '.join(map(repr, unknown))}; choose "
                         f"from {', '.join(allowed)}")


def cmd_check(args) -> int:
    n = _prepare_backends(emulate_cuda=True)
    from convgpu.tools.check import format_table, problems, run_checks
    size = args.size or ("large" if n else "small")
    _checked_names(args.ops, list(dict.fromkeys(p.op for p in problems(size))), "--ops")
    if args.ops == [] or args.backends == []:
        raise UsageError(f"argument {'--ops' if args.ops == [] else '--backends'}: give at "
                         "least one name (or leave the option out for all)")
    import textwrap
    where = "GPU" if n else "CPU (no GPU: numba in the CUDA simulator, cuda in the host " \
        "emulation, which are not validation)"
    print(textwrap.fill(f"convgpu check: {size} problems, device backends on the {where}; the "
                        "error against the float64 reference is ||out - ref|| / ||ref||, for "
                        "convolutions and GEMMs ||out - ref|| / || |a| |b| || with every element "
                        "also within its derived bound (docs/tolerances.md)", 100)
          + "\n", flush=True)
    quiet = args.quiet

    def progress(line):
        if not quiet:
            print(line, file=sys.stderr, flush=True)
    rows = run_checks(size, ops=args.ops, backends=args.backends, seed=args.seed,
                      progress=progress)
    print(format_table(rows, verbose=args.verbose))
    return 1 if any(r.status.startswith("FAIL") for r in rows) else 0


# ----------------------------------------------------------------------------------------
# train, eval, predict


def cmd_train(args) -> int:
    from convgpu.tools.train_cli import main_train
    return main_train(args)


def cmd_eval(args) -> int:
    from convgpu.tools.train_cli import main_eval
    return main_eval(args)


def cmd_predict(args) -> int:
    from convgpu.tools.train_cli import main_predict
    return main_predict(args)


# ----------------------------------------------------------------------------------------
# bench


BENCH_OPS = ("gemm", "conv2d", "conv2d_backward", "pool", "norm")
BENCH_DTYPES = ("float32", "float16", "bfloat16")
BENCH_LAYOUTS = ("NCHW", "NHWC")


def cmd_bench(args) -> int:
    from convgpu.tools.bench import run
    _prepare_backends()
    doc = run(json_path=args.json, plot_path=args.plot, quick=args.quick, shapes=args.shapes,
              ops=args.ops, impl=args.impl, suites=args.suite, shape_specs=args.shape,
              dtypes=args.dtype, layouts=args.layout)
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
    from convgpu.tools.bench import Progress, tune
    from convgpu.tools.shapes import parse_suite
    layers = [sh for spec in args.suite for sh in parse_suite(spec)]
    rows = tune(layers, allow_tf32=args.allow_tf32, progress=Progress())
    bad = [r for r in rows if r["status"] != "ok"]
    print(f"tuned {len(rows) - len(bad)} of {len(rows)} layer passes"
          + (f"; {len(bad)} not tuned (listed above)" if bad else ""))
    return 1 if bad else 0


def _suite_arg(text: str) -> str:
    """argparse type for --suite: a known suite, optionally NAME@BATCH."""
    from convgpu.tools.shapes import parse_suite
    try:
        parse_suite(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def _shape_arg(text: str):
    """argparse type for --shape: conv:KEY=V,... or pool:KEY=V,..."""
    from convgpu.tools.shapes import parse_shape
    try:
        return parse_shape(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e).removeprefix("--shape ")) from None


# ----------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    doc = __doc__.split("\n\n")
    ap = _Parser(prog="convgpu", description="\n\n".join(doc[:3]), formatter_class=_Formatter)
    sub = ap.add_subparsers(dest="cmd", required=True, metavar="COMMAND",
                            title="commands (convgpu COMMAND --help for each one's options)")
    kw = dict(formatter_class=_Formatter)
    p = sub.add_parser("info", help="devices, versions, backends, implementations", **kw)
    p.set_defaults(func=cmd_info)

    c = sub.add_parser("check", help="validate every runnable implementation against the "
                       "float64 reference (emulated without a GPU)", **kw,
                       description="Run every implementation that can run here against the "
                       "float64 NumPy reference. Statuses: ok; ok (emulated): the Numba "
                       "simulator or the CUDA C host emulation ran it, which is not a GPU; "
                       "FAIL; not served: the implementation declines the problem; not run: "
                       "its backend is unavailable here. Exit status 1 on any FAIL.")
    c.add_argument("--size", choices=["small", "large"], help="problem sizes (default: small "
                   "without a GPU, large with one)")
    c.add_argument("--ops", nargs="*", metavar="OP", help="only these ops (default: all)")
    c.add_argument("--backends", nargs="*", choices=["numpy", "numba", "cuda"],
                   metavar="BACKEND", help="only these backends: numpy, numba, cuda "
                   "(default: all)")
    c.add_argument("--seed", type=int, default=0, help="seed of the random inputs")
    c.add_argument("--verbose", "-v", action="store_true",
                   help="list every row's reason (why not served, not run, or failed)")
    c.add_argument("--quiet", "-q", action="store_true", help="no progress lines on stderr")
    c.set_defaults(func=cmd_check)

    from convgpu.tools.train_cli import add_arguments, add_eval_arguments, add_predict_arguments
    tr = sub.add_parser("train", help="train LeNet-5 or a small ResNet on real digit images "
                        "through the op API", **kw)
    add_arguments(tr)
    tr.set_defaults(func=cmd_train)
    ev = sub.add_parser("eval", help="test accuracy and confusion matrix of weights saved by "
                        "train --save", **kw)
    add_eval_arguments(ev)
    ev.set_defaults(func=cmd_eval)
    pr = sub.add_parser("predict", help="classify image files with weights saved by train "
                        "--save", **kw)
    add_predict_arguments(pr)
    pr.set_defaults(func=cmd_predict)

    bn = sub.add_parser("bench", help="time the kernels against cuDNN/cuBLAS on real layer "
                        "shapes (numpy against torch's CPU ops without a GPU)", **kw)
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
    bn.add_argument("--ops", nargs="*", choices=BENCH_OPS, metavar="OP",
                    help=f"only these stages: {', '.join(BENCH_OPS)}")
    bn.add_argument("--impl", nargs="*", help="only implementations whose label contains these")
    bn.add_argument("--dtype", nargs="+", choices=BENCH_DTYPES, default=["float32"],
                    metavar="DTYPE", help="the data type(s) of both sides: "
                    f"{', '.join(BENCH_DTYPES)} (default float32); the half types time the "
                    "GEMM and conv stages against cuBLAS / cuDNN in the same type, FP32 "
                    "accumulation on both")
    bn.add_argument("--layout", nargs="+", choices=BENCH_LAYOUTS, default=["NCHW"],
                    metavar="LAYOUT", help="the conv operands' layout(s) on both sides: NCHW, "
                    "NHWC (torch channels_last for cuDNN) (default NCHW)")
    bn.set_defaults(func=cmd_bench)
    tu = sub.add_parser("tune", help='run algo="auto" over a suite\'s layers to fill the '
                        "tuning cache before training (GPU only)", **kw)
    tu.add_argument("--suite", nargs="+", required=True, type=_suite_arg, metavar="NAME",
                    help="resnet50, vgg16, mobilenetv2, alexnet, classic (NAME@BATCH for "
                    "another batch; default 32)")
    tu.add_argument("--allow-tf32", action="store_true",
                    help="tune with TF32 allowed (as a model run with allow_tf32 calls)")
    tu.set_defaults(func=cmd_tune)
    return ap


def main(argv=None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    try:
        return args.func(args)
    except UsageError as e:
        print(f"convgpu {args.cmd}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"convgpu {args.cmd}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
