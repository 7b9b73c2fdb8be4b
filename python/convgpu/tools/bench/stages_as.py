"""The conv and GEMM stages in a dtype or layout other than float32 NCHW (float16,
bfloat16; NHWC): every device implementation that serves the row's dtype and layout,
validated against the reference with the half bounds (convgpu.tools.bench.precision), then
timed beside cuDNN / cuBLAS in the same precision and layout."""
from __future__ import annotations

from typing import List

import numpy as np

from convgpu import reference
from convgpu.ops._registry import NotServed
from convgpu.tools.bench import precision as PR
from convgpu.tools.bench.baseline import _conv_baselines, _oom, _torch
from convgpu.tools.bench.method import (Result, _ratios, _wanted, conv_bytes, conv_flops,
                                        conv_label, ratio, step)

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
