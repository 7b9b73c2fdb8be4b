"""A whole run (`convgpu bench`): which layers and ops, the GPU stages or the CPU fallback
(numpy beside torch's CPU ops), the JSON and the plot; `time_op` for one problem."""
from __future__ import annotations

import json
import time
from dataclasses import asdict
from typing import List

import numpy as np

from convgpu.ops._registry import NotServed
from convgpu.tools import shapes as SH
from convgpu.tools.bench.baseline import baseline_unavailable, ceilings
from convgpu.tools.bench.method import (METHOD, Progress, Result, Timer, _ratios, conv_bytes,
                                        conv_flops, conv_label, environment, pool_label,
                                        quantiles, step)
from convgpu.tools.bench.report import format_networks, format_table, network_totals, plot
from convgpu.tools.bench.stages import (bench_conv, bench_conv_backward, bench_gemm,
                                        bench_norm, bench_pool)
from convgpu.tools.bench import precision as PR
from convgpu.tools.bench.stages_as import (PASSES, bench_conv_as, bench_gemm_as,
                                           bench_pool_norm_as)


ALL_OPS = ("gemm", "conv2d", "conv2d_backward", "pool", "norm")


def _resolve(quick, shapes, suites, shape_specs):
    """(conv layers, pool shapes, norm shapes, gemm sizes) a run times."""
    if shape_specs:
        user = [SH.parse_shape(s) if isinstance(s, str) else s for s in shape_specs]
        conv = [s for s in user if isinstance(s, SH.ConvShape)]
        pools = [s for s in user if isinstance(s, SH.PoolShape)]
        return conv, pools, [], []
    conv = SH.conv_suite(quick, shapes, suites)
    gemm = [] if shapes or suites else (SH.GEMM[:1] if quick else SH.GEMM)
    if suites:                              # a suite run is conv layers only
        return conv, [], [], []
    return conv, SH.pool_suite(quick, shapes), SH.norm_suite(quick, shapes), gemm




def precisions(dtypes=None, layouts=None):
    """The (dtype, layout) pairs a run times, float32 NCHW first where asked for; a GEMM has
    no layout, so layouts multiply the conv rows only."""
    dtypes = list(dict.fromkeys(dtypes or ("float32",)))
    layouts = list(dict.fromkeys(layouts or ("NCHW",)))
    for d in dtypes:
        PR.np_dtype(d)
    bad = [lay for lay in layouts if lay not in PR.LAYOUTS]
    if bad:
        raise ValueError(f"bench: layout must be NCHW or NHWC; got {bad[0]!r}")
    return [(d, lay) for d in dtypes for lay in layouts]


def run(json_path=None, plot_path=None, quick=True, shapes=None, ops=None, impl=None,
        progress=None, suites=None, shape_specs=None, dtypes=None, layouts=None) -> dict:
    """The benchmark; returns the JSON document (and writes it to json_path). suites: names
    of convgpu.tools.shapes suites ("resnet50", "vgg16@128", ...; default the four networks, or
    ResNet-50 alone when quick); shape_specs: a user's problems ("conv:N=..,C=..", ...).
    dtypes ("float32", "float16", "bfloat16") and layouts ("NCHW", "NHWC"): every pair is
    timed against cuDNN / cuBLAS in the same precision and layout (default float32 NCHW);
    other pairs than float32 NCHW time max pooling and batch norm (bench_pool_norm_as), not
    the float32 stages' average and global pooling rows."""
    from convgpu.core.env import gpu_count
    progress = progress if progress is not None else Progress()
    pairs = precisions(dtypes, layouts)
    other = [p for p in pairs if not PR.plain(*p)]
    ops = set(ops or ALL_OPS)
    unknown = ops - set(ALL_OPS)
    if unknown:
        raise ValueError(f"bench: unknown --ops {sorted(unknown)}; choose from {ALL_OPS}")
    conv, pools, norms, gemms = _resolve(quick, shapes, suites, shape_specs)
    if gpu_count() == 0:
        if other:
            progress("convgpu bench: no GPU visible; the " + ", ".join(
                " ".join(p) for p in other) + " rows are device timings against cuDNN and "
                "are not timed on the CPU")
        # the CPU rows are float32 NCHW: timed only where that pair was asked for
        doc = run_cpu(conv, pools, ops if len(other) < len(pairs) else set(),
                      progress=progress, norms=norms, batch=None if shape_specs else 1,
                      gemm=bool(gemms))
        if other:
            doc["skipped"].append("dtype/layout " + ", ".join(" ".join(p) for p in other)
                                  + ": device rows only, and no GPU is visible")
    else:
        doc = _run_gpu(conv, pools, norms, gemms, ops, impl, json_path, progress, pairs)
    if hasattr(progress, "close"):
        progress.close()
    if doc["results"]:
        progress("\n" + format_table(doc["results"]))
        nets = format_networks(network_totals(doc["results"]))
        if nets:
            progress("\n" + nets)
    else:
        progress("bench: nothing was timed (" + "; ".join(doc.get("skipped") or
                                                         ["no shape matched"]) + ")")
    if json_path:
        with open(json_path, "w") as f:
            json.dump(doc, f, indent=1)
        progress(f"wrote {json_path}")
    if plot_path:
        drawn = plot(doc, plot_path)
        progress(f"wrote {plot_path} ({', '.join(drawn)})" if drawn else
                 f"plot: nothing measured to draw, {plot_path} not written")
    return doc


def _run_gpu(conv, pools, norms, gemms, ops, impl, json_path, progress,
             pairs=(("float32", "NCHW"),)) -> dict:
    timer = Timer()
    env = environment()
    why = baseline_unavailable()
    progress(f"device {env.get('device')}  commit {env.get('commit')}  "
             f"source {str(env.get('source_hash'))[:12]}")
    progress("baseline: cuDNN/cuBLAS through torch (benchmark_limit 0, TF32 off for FP32)"
             if why is None else f"baseline: none ({why}); ours are timed alone")
    ceil = ceilings(timer)
    progress(f"ceilings: copy {ceil['copy_GBps']:.0f} GB/s, FP32 FMA (ours) "
             f"{ceil['fma_TFLOPs']:.1f} TFLOP/s, SGEMM (cuBLAS, TF32 off) "
             f"{ceil['sgemm_TFLOPs']:.1f} TFLOP/s"
             + (f", TF32 GEMM (cuBLAS) {ceil['tf32_TFLOPs']:.1f} TFLOP/s"
                if "tf32_TFLOPs" in ceil else ""))
    results: List[Result] = []
    errors: List[str] = []

    def document():
        for r in results:
            if r.tflops is not None and "tf32" in r.impl and "tf32_TFLOPs" in ceil:
                r.extra["frac_tf32_rate"] = r.tflops / ceil["tf32_TFLOPs"]
            elif r.tflops is not None:
                r.extra["frac_fp32_rate"] = r.tflops / ceil["fma_TFLOPs"]
                r.extra["frac_sgemm"] = r.tflops / ceil["sgemm_TFLOPs"]
            if r.gbps is not None:
                r.extra["frac_copy_bw"] = r.gbps / ceil["copy_GBps"]
        return {"environment": env, "method": METHOD, "ceilings": ceil, "device": "gpu",
                "baseline": {"name": "cudnn" if why is None else None, "why_not": why},
                "results": [asdict(r) for r in results], "stage_errors": errors}

    def save():                             # after every shape: a run stopped by a time
        if json_path:                       # limit keeps what it measured
            with open(json_path, "w") as f:
                json.dump(document(), f, indent=1)

    kw = dict(progress=progress, out=results, saved=save)
    plain = ("float32", "NCHW") in pairs
    stages = [("gemm", lambda: bench_gemm(timer, gemms, **kw) if gemms else []),
              ("conv2d", lambda: bench_conv(timer, conv, impl_filter=impl, **kw)),
              # pooling before the backward passes, the longest stage
              ("pool", lambda: bench_pool(timer, pools, impl_filter=impl, **kw)),
              ("norm", lambda: bench_norm(timer, norms, impl_filter=impl, **kw)),
              ("conv2d_backward", lambda: bench_conv_backward(timer, conv, impl_filter=impl,
                                                              **kw))] if plain else []
    # the other precisions and layouts after float32 NCHW; a GEMM once per dtype
    halves = list(dict.fromkeys(d for d, _ in pairs if d != "float32"))
    for d in halves:
        stages.append(("gemm", lambda d=d: bench_gemm_as(timer, gemms, d, **kw)
                       if gemms else []))
    for d, lay in pairs:
        if PR.plain(d, lay):
            continue
        stages.append(("conv2d", lambda d=d, lay=lay: bench_conv_as(
            timer, conv, d, lay, ("conv2d",), impl_filter=impl, **kw)))
        stages.append(("conv2d_backward", lambda d=d, lay=lay: bench_conv_as(
            timer, conv, d, lay, PASSES[1:], impl_filter=impl, **kw)))
        stages.append(("pool", lambda d=d, lay=lay: bench_pool_norm_as(
            timer, pools, [], d, lay, impl_filter=impl, **kw)))
        stages.append(("norm", lambda d=d, lay=lay: bench_pool_norm_as(
            timer, [], norms, d, lay, impl_filter=impl, **kw)))
    for name, stage in stages:
        if name not in ops:
            continue
        try:                                # a stage that raises is reported (its rows so
            stage()                         # far kept) and the next stages still run
        except Exception as e:
            import traceback
            traceback.print_exc()
            errors.append(f"{name}: {type(e).__name__}: {e}")
            progress(f"stage {name} FAILED: {errors[-1]}")
        save()
    doc = document()
    doc["networks"] = network_totals(doc["results"])
    return doc


def run_cpu(conv, pools, ops, progress=print, reps=5, norms=(), batch=1, gemm=False) -> dict:
    """No GPU: time the numpy backend and torch's CPU ops beside it (at batch `batch`;
    None keeps each shape's own batch): conv2d by im2col and, for filters larger than 1x1,
    by FFT; max pooling; batch norm in training."""
    import convgpu
    progress("convgpu bench: no GPU visible, so no device kernel is timed here. Timing the "
             "numpy backend on the CPU"
             + (f" at batch {batch}" if batch else "") + ".")
    why = None
    try:
        import torch
    except Exception as e:
        torch = None
        why = f"torch is not importable ({type(e).__name__}: {e})"
    progress("baseline: torch's CPU ops" if torch is not None else
             f"baseline: none ({why}); the numpy backend is timed alone")
    skipped = []
    if "gemm" in ops and gemm:
        skipped.append("gemm: the hand-written GEMMs are device kernels and no GPU is "
                       "visible")
        progress("gemm: not timed: " + skipped[-1].split(": ", 1)[1])

    def clock(fn):
        t0 = time.perf_counter()
        fn()
        first = time.perf_counter() - t0
        ts = []                             # fewer repetitions (at least 2) for slow calls
        for _ in range(reps if first < 0.2 else max(2, min(reps, int(1.0 / first)))):
            t0 = time.perf_counter()
            fn()
            ts.append((time.perf_counter() - t0) * 1e3)
        return quantiles(ts)

    rng = np.random.default_rng(0)
    results = []
    for at, sh in enumerate(conv if "conv2d" in ops else [], 1):
        step(progress, "conv2d (CPU)", at, len(conv), sh.name)
        sh = sh._replace(N=batch or sh.N)
        W, S, g, d = sh.width, sh.filter_width, sh.groups, sh.dilation
        P, Q = sh.out_size()
        label = conv_label(sh)
        fl = conv_flops(sh.N, sh.C, sh.K, sh.R, S, P, Q, g)
        by = conv_bytes(sh.N, sh.C, sh.H, W, sh.K, sh.R, S, P, Q, g, 4)
        x = rng.uniform(-1, 1, (sh.N, sh.C, sh.H, W)).astype(np.float32)
        w = rng.uniform(-1, 1, (sh.K, sh.C // g, sh.R, S)).astype(np.float32)
        common = dict(suite=sh.suite, count=sh.count)
        base = None
        if torch is not None:
            xt, wt = torch.from_numpy(x), torch.from_numpy(w)
            base = clock(lambda: torch.nn.functional.conv2d(xt, wt, None, sh.stride, sh.pad,
                                                            d, g))
            results.append(Result("conv2d", label, "torch-cpu", "float32", "ok", **base,
                                  tflops=fl / (base["median_ms"] * 1e-3) / 1e12,
                                  gbps=by / (base["median_ms"] * 1e-3) / 1e9, **common))
        # the FFT's transforms cost the same for any filter size: not timed on 1x1 filters,
        # where a CPU run would spend seconds a call on a method no one would pick there
        for algo in ("im2col", "fft") if sh.R * S > 1 else ("im2col",):
            try:
                t = clock(lambda: convgpu.conv2d(x, w, None, sh.stride, sh.pad, d, g,
                                                 algo=algo))
            except NotServed as e:
                results.append(Result("conv2d", label, f"numpy:{algo}", "float32",
                                      f"not served: {e}", **common))
                continue
            r = Result("conv2d", label, f"numpy:{algo}", "float32", "ok", **t,
                       tflops=fl / (t["median_ms"] * 1e-3) / 1e12,
                       gbps=by / (t["median_ms"] * 1e-3) / 1e9,
                       extra={"baseline": "torch-cpu"} if base else {}, **common)
            _ratios(r, base)
            results.append(r)
            progress(f"  {label[:55]:55s} numpy:{algo:8s} {t['median_ms']:9.2f} ms")
    for sh in pools if "pool" in ops else []:
        sh = sh._replace(N=batch or sh.N)
        x = rng.standard_normal((sh.N, sh.C, sh.H, sh.width)).astype(np.float32)
        label = pool_label(sh)
        t = clock(lambda: convgpu.max_pool2d(x, sh.kernel, sh.stride, sh.pad,
                                             ceil_mode=sh.ceil_mode, return_indices=True))
        r = Result("max_pool2d", label, "numpy:reference", "float32", "ok", **t)
        results.append(r)
        if torch is not None:
            xt = torch.from_numpy(x)
            tt = clock(lambda: torch.nn.functional.max_pool2d(xt, sh.kernel, sh.stride, sh.pad,
                                                              ceil_mode=sh.ceil_mode,
                                                              return_indices=True))
            results.append(Result("max_pool2d", label, "torch-cpu", "float32", "ok", **tt))
            r.extra["baseline"] = "torch-cpu"
            _ratios(r, tt)
    for name, shape in norms if "norm" in ops else []:
        shape = (2,) + tuple(shape[1:])              # batch 2: training needs two values
        x = rng.standard_normal(shape).astype(np.float32)
        C = shape[1]
        label = f"{name}: {'x'.join(map(str, shape))}"
        rm, rv = np.zeros(C, np.float32), np.ones(C, np.float32)
        t = clock(lambda: convgpu.batch_norm(x, rm, rv, training=True))
        r = Result("batch_norm", label, "numpy:reference", "float32", "ok", **t)
        results.append(r)
        if torch is not None:
            xt, rmt, rvt = torch.from_numpy(x), torch.from_numpy(rm), torch.from_numpy(rv)
            tt = clock(lambda: torch.nn.functional.batch_norm(xt, rmt, rvt, training=True))
            results.append(Result("batch_norm", label, "torch-cpu", "float32", "ok", **tt))
            r.extra["baseline"] = "torch-cpu"
            _ratios(r, tt)
    rows = [asdict(r) for r in results]
    return {"environment": environment(), "method": {"timing": "host clock (CPU)"},
            "device": "cpu", "ceilings": {},
            "baseline": {"name": "torch-cpu" if torch is not None else None, "why_not": why},
            "results": rows, "networks": network_totals(rows), "skipped": skipped}


def time_op(spec, *, ops=None, impl=None, timer=None, progress=None, dtype="float32",
            layout="NCHW") -> List[dict]:
    """Time one problem of one's own: every implementation that serves it, the baseline
    beside, each validated first; the rows as the JSON's `results` hold them.

    spec: "conv:N=32,C=64,H=56,W=56,K=64,R=3,S=3,stride=1,pad=1[,groups=G,dilation=D]",
    "pool:N=32,C=64,H=112,k=3,stride=2,pad=1[,ceil_mode=1]", or a convgpu.tools.shapes
    ConvShape / PoolShape. ops: which passes ("conv2d", "conv2d_backward", "pool"; default
    all that apply). impl: only implementations whose label contains one of these strings.
    On a GPU the device kernels are timed against cuDNN; without one, the numpy backend's
    forward passes against torch's CPU ops at the problem's own batch. dtype ("float32",
    "float16", "bfloat16") and layout ("NCHW", "NHWC"): a conv problem in that precision and
    layout on both sides (a device timing only)."""
    from convgpu.core.env import gpu_count
    sh = SH.parse_shape(spec) if isinstance(spec, str) else spec
    if not isinstance(sh, (SH.ConvShape, SH.PoolShape)):
        raise TypeError(f"time_op: spec must be a 'conv:...'/'pool:...' string, a ConvShape "
                        f"or a PoolShape; got {type(spec).__name__}")
    ops = set(ops or ("conv2d", "conv2d_backward", "pool"))
    unknown = ops - {"conv2d", "conv2d_backward", "pool"}
    if unknown:
        raise ValueError(f"time_op: unknown ops {sorted(unknown)}; choose from conv2d, "
                         "conv2d_backward, pool")
    impl = [impl] if isinstance(impl, str) else impl
    progress = progress if progress is not None else (lambda *a: None)
    conv = [sh] if isinstance(sh, SH.ConvShape) else []
    pools = [sh] if isinstance(sh, SH.PoolShape) else []
    (dtype, layout), = precisions([dtype], [layout])
    if not PR.plain(dtype, layout):
        if gpu_count() == 0 and timer is None:
            raise ValueError(f"time_op: {dtype} {layout} rows are device timings against "
                             "cuDNN, and no GPU is visible")
        if pools:
            return [asdict(r) for r in bench_pool_norm_as(
                timer or Timer(), pools if "pool" in ops else [], [], dtype, layout,
                progress=progress, impl_filter=impl)]
        passes = ((("conv2d",) if "conv2d" in ops else ())
                  + (PASSES[1:] if "conv2d_backward" in ops else ()))
        return [asdict(r) for r in bench_conv_as(timer or Timer(), conv, dtype, layout, passes,
                                                 progress=progress, impl_filter=impl)]
    if gpu_count() == 0 and timer is None:
        return run_cpu(conv, pools, ops, progress=progress, batch=None)["results"]
    timer = timer or Timer()
    rows = []
    if "conv2d" in ops and conv:
        rows += bench_conv(timer, conv, progress=progress, impl_filter=impl)
    if "conv2d_backward" in ops and conv:
        rows += bench_conv_backward(timer, conv, progress=progress, impl_filter=impl)
    if "pool" in ops and pools:
        rows += bench_pool(timer, pools, progress=progress, impl_filter=impl)
    return [asdict(r) for r in rows]
