"""The conv, GEMM, max-pooling and batch-norm stages in a dtype or layout other than float32
NCHW (float16, bfloat16; NHWC): every device implementation that serves the row's dtype and
layout, validated against the reference with the half bounds (convgpu.tools.bench.precision),
then timed beside cuDNN / cuBLAS / torch in the same precision and layout."""
from __future__ import annotations

from typing import List

import numpy as np

from convgpu import reference
from convgpu.ops._registry import NotServed
from convgpu.tools.bench import precision as PR
from convgpu.tools.bench.baseline import _conv_baselines, _oom, _torch
from convgpu.tools.bench.method import (Result, _ratios, _wanted, conv_bytes, conv_flops,
                                        conv_label, norm_bytes, pool_bytes, pool_label, ratio,
                                        step)

PASSES = ("conv2d", "conv2d_backward_input", "conv2d_backward_weight")
# where the torch operands live (tests/test_bench_half.py runs the torch path on the CPU)
DEVICE = "cuda"


def _impls(op, dtype, layout, impl_filter):
    from convgpu.ops._registry import all_impls
    name = PR.np_dtype(dtype).name
    return [i for i in all_impls(op, layout) if i.backend != "numpy" and name in i.dtypes
            and _wanted(f"{i.backend}:{i.algo}", impl_filter)]


def _row(timer, op, sh, label, algo, dtype, layout, run, check, ref, host, fl, by, base):
    """Validate check() against ref (float64 NCHW), then time run(); one Result."""
    common = dict(suite=sh.suite, count=sh.count, layout=layout)
    name = PR.np_dtype(dtype).name
    a, b, shape, kw = host
    try:
        got = PR.to_nchw_host(check(), layout, base.get("_torch_io", False))
        bad = PR.conv_check(got, ref, op, algo, dtype, a, b, shape, kw)
        if bad:
            return Result(op, conv_label(sh), label, name, bad, **common)
        t = timer.time(run)
    except NotServed as e:
        return Result(op, conv_label(sh), label, name, f"not served: {e}", **common)
    except Exception as e:
        if not _oom(e):
            raise
        return Result(op, conv_label(sh), label, name, "not run: out of device memory",
                      **common)
    key = "cudnn_tf32" if algo.endswith("tf32") else "cudnn"
    r = Result(op, conv_label(sh), label, name, "ok", **t,
               tflops=fl / (t["median_ms"] * 1e-3) / 1e12,
               gbps=by / (t["median_ms"] * 1e-3) / 1e9 if by else None,
               extra={"rel_err_checked": "half bounds" if PR.is_half(dtype) else "norm-wise",
                      "baseline": key}, **common)
    _ratios(r, base.get(key))
    if base.get("torch_default"):
        r.extra["vs_torch_default"] = ratio(base["torch_default"]["median_ms"], r.median_ms)
    return r


def bench_conv_as(timer, suite, dtype, layout, passes=PASSES, progress=print,
                  impl_filter=None, out=None, saved=None) -> List[Result]:
    """conv2d and/or its gradients (passes) in `dtype` and `layout` against cuDNN in the
    same: the operands as torch tensors on both sides where a CUDA torch is available."""
    import convgpu
    torch = _torch()
    out = [] if out is None else out
    dt = PR.np_dtype(dtype)
    rng = np.random.default_rng(0)
    for at, sh in enumerate(suite, 1):
        W, S, s, p, d, g = sh.width, sh.filter_width, sh.stride, sh.pad, sh.dilation, sh.groups
        P, Q = sh.out_size()
        step(progress, f"conv2d {dt.name} {layout}", at, len(suite), conv_label(sh))
        fl = conv_flops(sh.N, sh.C, sh.K, sh.R, S, P, Q, g)
        by = conv_bytes(sh.N, sh.C, sh.H, W, sh.K, sh.R, S, P, Q, g, dt.itemsize)
        xh = PR.rounded(rng.uniform(-1, 1, (sh.N, sh.C, sh.H, W)).astype(np.float32), dt)
        wh = PR.rounded(rng.uniform(-1, 1, (sh.K, sh.C // g, sh.R, S)).astype(np.float32), dt)
        gh = PR.rounded(rng.uniform(-1, 1, (sh.N, sh.K, P, Q)).astype(np.float32), dt)
        (x, xt), (w, wt), (gy, gt) = (PR.operand(a, layout, torch, DEVICE) for a in (xh, wh, gh))
        nv = min(sh.N, 2)           # validated on the first images (the weight gradient on
        x2, g2 = (PR.operand(a[:nv], layout, torch, DEVICE)[0] for a in (xh, gh))   # a 2-image problem)
        x64, w64, g64 = (a.astype(np.float64) for a in (xh[:nv], wh, gh[:nv]))
        lk = PR.layout_kw(layout, torch)
        xs, ws, x2s = (PR.shape_of(v, layout, torch) for v in (xh.shape, wh.shape, x64.shape))
        ckw = dict(stride=s, padding=p, dilation=d, groups=g)
        for op in passes:
            base = {"_torch_io": torch is not None}
            if torch is not None:
                if op == "conv2d":
                    fn = lambda: torch.nn.functional.conv2d(xt, wt, None, s, p, d, g)
                else:
                    mask = [op.endswith("input"), op.endswith("weight"), False]
                    fn = lambda m=mask: torch.ops.aten.convolution_backward(
                        gt, xt, wt, None, [s, s], [p, p], [d, d], False, [0, 0], g, m)
                base.update(_conv_baselines(torch, timer, op, sh, fn, fl,
                                            by if op == "conv2d" else None, dt, out,
                                            layout=layout))
            if op == "conv2d":
                ref = reference.conv2d(x64, w64, None, (s, s), (p, p), (d, d), g)
                host = (x64, w64, None, ckw)
            elif op == "conv2d_backward_input":
                ref = reference.conv2d_backward_input(g64, w64, x64.shape, (s, s), (p, p),
                                                      (d, d), g)
                host = (g64, w64, x64.shape, ckw)
            else:
                ref = reference.conv2d_backward_weight(x64, g64, w64.shape, (s, s), (p, p),
                                                       (d, d), g)
                host = (x64, g64, w64.shape, ckw)
            impls = _impls(op, dt, layout, impl_filter)
            if not impls:               # said in the run, not left as a missing row
                out.append(Result(op, conv_label(sh), "cuda:*", dt.name,
                                  f"not served: no device implementation of {op} serves "
                                  f"{dt.name} {layout}"
                                  + (f" among {' '.join(impl_filter)}" if impl_filter else ""),
                                  suite=sh.suite, count=sh.count, layout=layout))
            for impl in impls:
                label = f"{impl.backend}:{impl.algo}"
                kw = dict(ckw, backend=impl.backend, algo=impl.algo,
                          allow_tf32=impl.algo.endswith("tf32"), **lk)
                if op == "conv2d":
                    run = lambda kw=kw: convgpu.conv2d(x, w, None, **kw)
                    check = lambda kw=kw: convgpu.conv2d(x2, w, None, **kw)
                elif op == "conv2d_backward_input":
                    run = lambda kw=kw: convgpu.conv2d_backward_input(gy, w, xs, **kw)
                    check = lambda kw=kw: convgpu.conv2d_backward_input(g2, w, x2s, **kw)
                else:
                    run = lambda kw=kw: convgpu.conv2d_backward_weight(x, gy, ws, **kw)
                    check = lambda kw=kw: convgpu.conv2d_backward_weight(x2, g2, ws, **kw)
                r = _row(timer, op, sh, label, impl.algo, dt, layout, run, check, ref, host,
                         fl, by if op == "conv2d" else None, base)
                out.append(r)
                if r.median_ms:
                    progress(f"  {op:22s} {conv_label(sh)[:44]:44s} {dt.name} {layout} "
                             f"{label:24s} {r.median_ms:9.3f} ms {r.tflops:7.2f} TFLOP/s"
                             + (f"  x{r.vs_cudnn:.3f} cuDNN" if r.vs_cudnn else ""))
        if saved:
            saved()
        del x, w, gy, xt, wt, gt
    return out


def bench_gemm_as(timer, sizes, dtype, progress=print, out=None, saved=None) -> List[Result]:
    """The GEMM in float16 / bfloat16: ours (linear's cuda gemm: gemm_mma16 on the tensor
    cores) against cuBLAS through torch.matmul in the same dtype, on the same torch tensors
    (C = A B^T with B stored (N, K), as linear stores its weight; cuBLAS reads the transposed
    view in place). Validated on the first 64 rows with the half bounds."""
    import convgpu
    torch = _torch()
    out = [] if out is None else out
    dt = PR.np_dtype(dtype)
    for at, (M, N, K) in enumerate(sizes, 1):
        shape = f"{M}x{N}x{K}"
        step(progress, f"gemm {dt.name}", at, len(sizes), shape)
        rng = np.random.default_rng(0)
        Ah = PR.rounded(rng.uniform(-1, 1, (M, K)).astype(np.float32), dt)
        Bh = PR.rounded(rng.uniform(-1, 1, (N, K)).astype(np.float32), dt)
        (A, At), (B, Bt) = (PR.operand(a, "NCHW", torch, DEVICE) for a in (Ah, Bh))
        m = min(M, 64)
        A64, B64 = Ah[:m].astype(np.float64), Bh.astype(np.float64).T
        fl = 2 * M * N * K
        base = None
        if torch is not None:
            base = timer.time(lambda: torch.matmul(At, Bt.t()))
            out.append(Result("gemm", shape, "cublas", dt.name, "ok", **base,
                              tflops=fl / (base["median_ms"] * 1e-3) / 1e12))
        label = "cuda:gemm_mma16"
        try:
            got = PR.to_nchw_host(convgpu.linear(A[:m], B, backend="cuda"), "NCHW", True)
            bad = PR.gemm_check(got, A64, B64, "gemm_mma16", dt)
            if bad:
                out.append(Result("gemm", shape, label, dt.name, bad))
                continue
            t = timer.time(lambda: convgpu.linear(A, B, backend="cuda"))
        except NotServed as e:
            out.append(Result("gemm", shape, label, dt.name, f"not served: {e}"))
            continue
        r = Result("gemm", shape, label, dt.name, "ok", **t,
                   tflops=fl / (t["median_ms"] * 1e-3) / 1e12,
                   extra={"baseline": "cublas", "via": "convgpu.linear"})
        _ratios(r, base)
        out.append(r)
        progress(f"  gemm {shape:20s} {dt.name:9s} {label:18s} {t['median_ms']:8.3f} ms "
                 f"{r.tflops:6.2f} TFLOP/s" + (f" = x{r.vs_cudnn:.3f} cuBLAS" if r.vs_cudnn
                                                 else ""))
        if saved:
            saved()
    return out


def _baseline_row(timer, op, label, name, dt, layout, base, nb, out):
    """The baseline's row where base holds its call for op; base[op] becomes its timing."""
    if op in base:
        t = timer.time(base[op])
        base[op] = t
        out.append(Result(op, label, name, dt.name, "ok", **t, layout=layout,
                          gbps=nb / (t["median_ms"] * 1e-3) / 1e9))


def _timed_row(timer, op, label, impl, dt, layout, fn, bad, nb, base, out, progress):
    """One of ours: its FAIL row where validation said `bad`, else timed, its ratio to
    base[op] (the baseline's timing: torch's max pooling, cuDNN's batch norm) named in extra."""
    if bad:
        out.append(Result(op, label, impl, dt.name, bad, layout=layout))
        return
    t = timer.time(fn)
    r = Result(op, label, impl, dt.name, "ok", **t, gbps=nb / (t["median_ms"] * 1e-3) / 1e9,
               layout=layout,
               extra={"baseline": "torch" if op.startswith("max_pool") else "cudnn"})
    _ratios(r, base.get(op))
    out.append(r)
    progress(f"  {op:20s} {label:40s} {dt.name} {layout} {impl:18s} {t['median_ms']:8.3f} ms "
             f"{r.gbps:8.1f} GB/s" + (f"  x{r.vs_cudnn:.3f}" if r.vs_cudnn else ""))


def bench_pool_norm_as(timer, pools, norms, dtype, layout, progress=print, impl_filter=None,
                       out=None, saved=None) -> List[Result]:
    """Max pooling (forward with indices, the gather) and training batch norm (forward,
    backward; weight, bias and running estimates in float32, AMP's form) in a half type
    and/or NHWC against torch in the same dtype and layout (channels_last tensors): cuDNN's
    batch norm (aten.cudnn_batch_norm), torch's own max-pool kernels (cuDNN has none with
    indices). Every device implementation that serves the row is validated on the whole
    problem first: the maximum and its index exactly, the gather and batch norm within the
    half bound (docs/tolerances.md) of the float64 reference."""
    import convgpu
    torch = _torch()
    out = [] if out is None else out
    dt = PR.np_dtype(dtype)
    lk = PR.layout_kw(layout, torch)
    host = lambda a: PR.to_nchw_host(a, layout, torch is not None)    # noqa: E731
    for at, sh in enumerate(pools, 1):
        _, N, C, H, k, s, p, cm = sh[:8]
        label = pool_label(sh)
        step(progress, f"pooling {dt.name} {layout}", at, len(pools), label)
        rng = np.random.default_rng(0)
        xh = PR.rounded(rng.standard_normal((N, C, H, sh.width)).astype(np.float32), dt)
        x64 = xh.astype(np.float64)
        y64, i64 = reference.max_pool2d(x64, (k, k), (s, s), (p, p), (1, 1), cm)
        gh = PR.rounded(rng.standard_normal(y64.shape).astype(np.float32), dt)
        g64 = gh.astype(np.float64)
        gx64 = reference.max_pool2d_backward(g64, i64, x64.shape)
        gmag = reference.max_pool2d_backward(np.abs(g64), i64, x64.shape)
        (x, xt), (gy, gt) = PR.operand(xh, layout, torch, DEVICE), PR.operand(gh, layout, torch,
                                                                             DEVICE)
        xs = PR.shape_of(xh.shape, layout, torch)
        nb = pool_bytes(xh.size, y64.size, dt.itemsize)
        # both sides' gathers take the reference's indices (the first maximum of a window)
        idx = PR.operand(i64, layout, torch, DEVICE)[0]
        base = {}
        if torch is not None:
            F = torch.nn.functional
            base["max_pool2d"] = lambda: F.max_pool2d(xt, k, s, p, ceil_mode=cm,
                                                      return_indices=True)
            base["max_pool2d_backward"] = lambda: torch.ops.aten.max_pool2d_with_indices_backward(
                gt, xt, [k, k], [s, s], [p, p], [1, 1], cm, idx)
        for op in ("max_pool2d", "max_pool2d_backward"):
            _baseline_row(timer, op, label, "torch", dt, layout, base,
                          nb["forward" if op == "max_pool2d" else "backward"], out)
            for impl in _impls(op, dt, layout, impl_filter):
                kw = dict(backend=impl.backend, algo=impl.algo, **lk)
                if op == "max_pool2d":
                    fn = lambda kw=kw: convgpu.max_pool2d(x, k, s, p, ceil_mode=cm,
                                                          return_indices=True, **kw)
                    y, yi = fn()
                    ok = np.array_equal(host(y), y64) and np.array_equal(host(yi), i64)
                    bad = None if ok else "FAIL: not the maximum or not its index"
                else:
                    fn = lambda kw=kw: convgpu.max_pool2d_backward(gy, idx, xs, k, s, p, 1, cm,
                                                                   **kw)
                    bad = PR.elementwise_check(host(fn()), gx64, gmag, k * k, dt)
                _timed_row(timer, op, label, f"{impl.backend}:{impl.algo}", dt, layout, fn,
                           bad, nb["forward" if op == "max_pool2d" else "backward"], base, out,
                           progress)
        if saved:
            saved()
    for at, (name, shape) in enumerate(norms, 1):
        label = f"{name}: {'x'.join(map(str, shape))}"
        step(progress, f"batch norm {dt.name} {layout}", at, len(norms), label)
        if len(shape) != 4 and layout == "NHWC":
            continue                        # a BatchNorm1d has no channels-last form
        rng = np.random.default_rng(0)
        C = shape[1]
        xh = PR.rounded((rng.standard_normal(shape) * 2 + 1).astype(np.float32), dt)
        gh = PR.rounded(rng.standard_normal(shape).astype(np.float32), dt)
        wh, bh = (rng.standard_normal(C).astype(np.float32) for _ in range(2))
        x64, g64, w64, b64 = (a.astype(np.float64) for a in (xh, gh, wh, bh))
        m64, i64, _ = reference.batch_norm_stats(x64, 1e-5)
        y64 = reference.batch_norm(x64, m64, i64, w64, b64)
        (x, xt), (gy, gt) = PR.operand(xh, layout, torch, DEVICE), PR.operand(gh, layout, torch,
                                                                             DEVICE)
        (w, wt), (b, bt) = (PR.operand(a, "NCHW", torch, DEVICE) for a in (wh, bh))
        M = x64.size // C
        # the FP32 statistics' magnitude (tests/half_checks.py bn_bounds): 2M + 8 operations
        ax = np.moveaxis(np.abs(x64 - m64.reshape((1, C) + (1,) * (x64.ndim - 2))), 1, -1)
        absmean = np.abs(x64).mean(axis=tuple(i for i in range(x64.ndim) if i != 1))
        ymag = np.moveaxis((ax + absmean) * (i64 * np.abs(w64)) + np.abs(b64), -1, 1)
        nb = norm_bytes(xh.size, dt.itemsize)
        base = {}
        if torch is not None:
            A = torch.ops.aten
            rmt, rvt = (torch.zeros(C, device=DEVICE), torch.ones(C, device=DEVICE))
            try:
                _, sm, sv, rs = A.cudnn_batch_norm(xt, wt, bt, rmt, rvt, True, 0.1, 1e-5)
                base["batch_norm"] = lambda: A.cudnn_batch_norm(xt, wt, bt, rmt, rvt, True,
                                                                0.1, 1e-5)
                base["batch_norm_backward"] = lambda: A.cudnn_batch_norm_backward(
                    xt, gt, wt, rmt, rvt, sm, sv, 1e-5, rs)
            except Exception as err:        # a baseline that cannot run is said
                progress(f"  batch_norm baseline cudnn: {type(err).__name__}: "
                         f"{str(err).splitlines()[0]}")
        for op in ("batch_norm", "batch_norm_backward"):
            _baseline_row(timer, op, label, "cudnn", dt, layout, base,
                          nb["forward" if op == "batch_norm" else "backward"], out)
            for impl in _impls(op, dt, layout, impl_filter):
                kw = dict(backend=impl.backend, **lk)
                rm, rv = (PR.operand(a, "NCHW", torch, DEVICE)[0]
                          for a in (np.zeros(C, np.float32), np.ones(C, np.float32)))
                fwd = lambda kw=kw, rm=rm, rv=rv: convgpu.batch_norm(
                    x, rm, rv, w, b, True, return_stats=True, **kw)
                yb, mean, invstd = fwd()
                if op == "batch_norm":
                    fn, bad = fwd, PR.elementwise_check(host(yb), y64, ymag, 2 * M + 8, dt)
                else:
                    fn = lambda kw=kw, mean=mean, invstd=invstd: convgpu.batch_norm_backward(
                        gy, x, mean, invstd, w, True, **kw)
                    mh, ih = (PR.to_nchw_host(a, "NCHW", True) for a in (mean, invstd))
                    ref = reference.batch_norm_backward(g64, x64, mh, ih, w64, True)[0]
                    bad = PR.normwise_check(host(fn()[0]), ref, dt)
                _timed_row(timer, op, label, f"{impl.backend}:{impl.algo}", dt, layout, fn,
                           bad, nb["forward" if op == "batch_norm" else "backward"], base, out,
                           progress)
        if saved:
            saved()
    return out
