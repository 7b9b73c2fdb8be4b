"""The GPU stages, one per op family: each implementation validated against the float64
reference, then timed beside its baseline; a row per (layer, implementation, dtype)."""
from __future__ import annotations

from typing import List

import numpy as np

from convgpu import reference
from convgpu.ops._registry import NotServed
from convgpu.tools import shapes as SH
from convgpu.tools.bench.baseline import _conv_baselines, _oom, _torch
from convgpu.tools.bench.method import (Result, _host, _ratios, _wanted, conv_bytes,
                                        conv_flops, conv_label, norm_bytes, pool_bytes,
                                        pool_label, ratio, step)
from convgpu.tools.check import tolerance


def _our_conv_row(timer, op, sh, label, algo, dtype, run, check, ref, fl, by, base):
    """Validate (check() against ref), then time run(); one Result."""
    tf32 = algo.endswith("tf32")
    common = dict(suite=sh.suite, count=sh.count)
    name = np.dtype(dtype).name
    try:
        got = np.asarray(_host(check())).astype(np.float64)
        err = float(np.linalg.norm(got - ref) / np.linalg.norm(ref))
        tol = tolerance(algo, dtype)
        if not err <= tol:
            return Result(op, conv_label(sh), label, name, f"FAIL rel err {err:.2e}", **common)
        t = timer.time(run)
    except NotServed as e:
        return Result(op, conv_label(sh), label, name, f"not served: {e}", **common)
    except Exception as e:
        if not _oom(e):
            raise
        return Result(op, conv_label(sh), label, name, "not run: out of device memory", **common)
    key = "cudnn_tf32" if tf32 else "cudnn"
    r = Result(op, conv_label(sh), label, name, "ok", **t,
               tflops=fl / (t["median_ms"] * 1e-3) / 1e12,
               gbps=by / (t["median_ms"] * 1e-3) / 1e9 if by else None,
               extra={"rel_err": err, "baseline": key}, **common)
    _ratios(r, base.get(key))
    if base.get("torch_default"):
        r.extra["vs_torch_default"] = ratio(base["torch_default"]["median_ms"], r.median_ms)
    return r


def bench_conv(timer, suite, dtype=np.float32, progress=print, impl_filter=None, out=None,
               saved=None) -> List[Result]:
    """conv2d forward of every device implementation against cuDNN's three columns."""
    import cupy as cp
    import convgpu
    from convgpu.ops._registry import all_impls
    torch = _torch()
    out = [] if out is None else out      # rows appended as they are measured
    rng = np.random.default_rng(0)
    for at, sh in enumerate(suite, 1):
        W, S, s, p, d, g = sh.width, sh.filter_width, sh.stride, sh.pad, sh.dilation, sh.groups
        P, Q = sh.out_size()
        step(progress, "conv2d", at, len(suite), conv_label(sh))
        fl = conv_flops(sh.N, sh.C, sh.K, sh.R, S, P, Q, g)
        by = conv_bytes(sh.N, sh.C, sh.H, W, sh.K, sh.R, S, P, Q, g, np.dtype(dtype).itemsize)
        x = cp.asarray(rng.uniform(-1, 1, (sh.N, sh.C, sh.H, W)).astype(dtype))
        w = cp.asarray(rng.uniform(-1, 1, (sh.K, sh.C // g, sh.R, S)).astype(dtype))
        nv = min(sh.N, 2)              # validation on a slice of the batch, float64 reference
        yref = reference.conv2d(cp.asnumpy(x[:nv]).astype(np.float64),
                                cp.asnumpy(w).astype(np.float64), None, (s, s), (p, p),
                                (d, d), g)
        base = {}
        if torch is not None:
            xt, wt = torch.from_dlpack(x), torch.from_dlpack(w)
            base = _conv_baselines(torch, timer, "conv2d", sh,
                                   lambda: torch.nn.functional.conv2d(xt, wt, None, s, p, d, g),
                                   fl, by, dtype, out)
        for impl in all_impls("conv2d"):
            label = f"{impl.backend}:{impl.algo}"
            if (impl.backend == "numpy" or not _wanted(label, impl_filter)
                    or np.dtype(dtype).name not in impl.dtypes):    # the half-only kernels
                continue
            tf32 = impl.algo.endswith("tf32")
            kw = dict(stride=s, padding=p, dilation=d, groups=g, backend=impl.backend,
                      algo=impl.algo, allow_tf32=tf32)
            r = _our_conv_row(timer, "conv2d", sh, label, impl.algo, dtype,
                              lambda kw=kw: convgpu.conv2d(x, w, None, **kw),
                              lambda kw=kw: convgpu.conv2d(x[:nv], w, None, **kw),
                              yref, fl, by, base)
            out.append(r)
            if r.median_ms:
                progress(f"  {conv_label(sh)[:55]:55s} {label:20s} {r.median_ms:9.3f} ms "
                         f"{r.tflops:7.2f} TFLOP/s"
                         + (f"  x{r.vs_cudnn:.3f} cuDNN" if r.vs_cudnn else ""))
        if saved:                   # a run stopped mid-stage keeps these
            saved()
        del x, w
    return out


def bench_conv_backward(timer, suite, dtype=np.float32, progress=print,
                        impl_filter=None, out=None, saved=None) -> List[Result]:
    """Input and weight gradients of every device implementation against cuDNN's
    (aten.convolution_backward), each validated on the first images first."""
    import cupy as cp
    import convgpu
    from convgpu.ops._registry import all_impls
    torch = _torch()
    out = [] if out is None else out      # rows appended as they are measured
    rng = np.random.default_rng(1)
    for at, sh in enumerate(suite, 1):
        W, S, s, p, d, g = sh.width, sh.filter_width, sh.stride, sh.pad, sh.dilation, sh.groups
        P, Q = sh.out_size()
        step(progress, "conv2d backward", at, len(suite), conv_label(sh))
        fl = conv_flops(sh.N, sh.C, sh.K, sh.R, S, P, Q, g)
        x = cp.asarray(rng.uniform(-1, 1, (sh.N, sh.C, sh.H, W)).astype(dtype))
        w = cp.asarray(rng.uniform(-1, 1, (sh.K, sh.C // g, sh.R, S)).astype(dtype))
        gy = cp.asarray(rng.uniform(-1, 1, (sh.N, sh.K, P, Q)).astype(dtype))
        base = {}
        if torch is not None:
            xt, wt, gt = (torch.from_dlpack(a) for a in (x, w, gy))
            for op, mask in (("conv2d_backward_input", [True, False, False]),
                             ("conv2d_backward_weight", [False, True, False])):
                fn = lambda m=mask: torch.ops.aten.convolution_backward(
                    gt, xt, wt, None, [s, s], [p, p], [d, d], False, [0, 0], g, m)
                base[op] = _conv_baselines(torch, timer, op, sh, fn, fl, None, dtype, out)
        # the input gradient of the first images is exact on a slice; the weight gradient
        # sums over the batch, so it is validated on a 2-image problem
        nv = min(sh.N, 2)
        x2, gy2 = cp.asnumpy(x[:nv]).astype(np.float64), cp.asnumpy(gy[:nv]).astype(np.float64)
        w64 = cp.asnumpy(w).astype(np.float64)
        refs = {"conv2d_backward_input": reference.conv2d_backward_input(
                    gy2, w64, x2.shape, (s, s), (p, p), (d, d), g),
                "conv2d_backward_weight": reference.conv2d_backward_weight(
                    x2, gy2, w64.shape, (s, s), (p, p), (d, d), g)}
        for op in ("conv2d_backward_input", "conv2d_backward_weight"):
            for impl in all_impls(op):
                label = f"{impl.backend}:{impl.algo}"
                if (impl.backend == "numpy" or not _wanted(label, impl_filter)
                        or np.dtype(dtype).name not in impl.dtypes):
                    continue
                tf32 = impl.algo.endswith("tf32")
                kw = dict(stride=s, padding=p, dilation=d, groups=g, backend=impl.backend,
                          algo=impl.algo, allow_tf32=tf32)
                if op == "conv2d_backward_input":
                    run = lambda kw=kw: convgpu.conv2d_backward_input(gy, w, x.shape, **kw)
                    check = lambda kw=kw: convgpu.conv2d_backward_input(gy[:nv], w, x2.shape,
                                                                        **kw)
                else:
                    run = lambda kw=kw: convgpu.conv2d_backward_weight(x, gy, w.shape, **kw)
                    check = lambda kw=kw: convgpu.conv2d_backward_weight(x[:nv], gy[:nv],
                                                                         w.shape, **kw)
                r = _our_conv_row(timer, op, sh, label, impl.algo, dtype, run, check,
                                  refs[op], fl, None, base.get(op, {}))
                out.append(r)
                if r.median_ms:
                    progress(f"  {op[16:]:16s} {conv_label(sh)[:50]:50s} {label:18s} "
                             f"{r.median_ms:9.3f} ms {r.tflops:6.2f} TFLOP/s"
                             + (f" x{r.vs_cudnn:.3f} cuDNN" if r.vs_cudnn else ""))
        if saved:                   # a run stopped mid-stage keeps these
            saved()
        del x, w, gy
    return out


def bench_gemm(timer, sizes=None, progress=print, out=None, saved=None):
    """The hand-written GEMMs (gemm_tiled, gemm_vec; FP32 and TF32; gemm_pipelined, TF32)
    against cuBLAS through cupy.matmul (TF32 off) and torch.matmul (TF32 on), each validated
    first."""
    import cupy as cp
    from convgpu.kernels.cuda import gemm
    out = [] if out is None else out      # rows appended as they are measured
    torch = _torch()
    sizes = sizes or SH.GEMM
    for at, (M, N, K) in enumerate(sizes, 1):
        shape = f"{M}x{N}x{K}"
        step(progress, "gemm", at, len(sizes), shape)
        A = cp.random.default_rng(0).standard_normal((1, M, K), dtype=cp.float32)
        B = cp.random.default_rng(1).standard_normal((1, K, N), dtype=cp.float32)
        ref = (A[0, :64].astype(cp.float64) @ B[0].astype(cp.float64))
        fl = 2 * M * N * K
        base = {}
        t = timer.time(lambda: cp.matmul(A[0], B[0]))
        base[False] = t
        out.append(Result("gemm", shape, "cublas", "float32", "ok", **t,
                          tflops=fl / (t["median_ms"] * 1e-3) / 1e12))
        if torch is not None:                       # TF32 on both sides
            At, Bt = torch.from_dlpack(A[0]), torch.from_dlpack(B[0])
            torch.backends.cuda.matmul.allow_tf32 = True
            t = timer.time(lambda: torch.matmul(At, Bt))
            torch.backends.cuda.matmul.allow_tf32 = False
            base[True] = t
            out.append(Result("gemm", shape, "cublas_tf32", "float32", "ok", **t,
                              tflops=fl / (t["median_ms"] * 1e-3) / 1e12))
        for tf32 in (False, True):
            if tf32 not in base:
                continue
            for variant in ("tiled", "vec") + (("pipelined",) if tf32 else ("vec64",)):
                label = f"cuda:gemm_{variant}" + ("_tf32" if tf32 else "")
                run = lambda: gemm.gemm(A, B, tf32=tf32, variant=variant)
                got = run()[0, :64].astype(cp.float64)
                err = float(cp.linalg.norm(got - ref) / cp.linalg.norm(ref))
                if not err <= (2e-3 if tf32 else 1e-5):
                    out.append(Result("gemm", shape, label, "float32", f"FAIL rel err {err:.2e}"))
                    continue
                t = timer.time(run)
                r = Result("gemm", shape, label, "float32", "ok", **t,
                           tflops=fl / (t["median_ms"] * 1e-3) / 1e12,
                           extra={"rel_err": err, "baseline": "cublas_tf32" if tf32 else "cublas"})
                _ratios(r, base[tf32])
                out.append(r)
                progress(f"  gemm {shape:20s} {label:22s} {t['median_ms']:8.3f} ms "
                         f"{r.tflops:6.2f} TFLOP/s = x{r.vs_cudnn:.3f} cuBLAS"
                         f"{' TF32' if tf32 else ''} ({base[tf32]['median_ms']:.3f} ms)")
        if saved:
            saved()
    return out


def bench_pool(timer, suite, dtype=np.float32, progress=print, impl_filter=None, out=None,
               saved=None) -> List[Result]:
    import cupy as cp
    import convgpu
    torch = _torch()
    out = [] if out is None else out      # rows appended as they are measured
    for at, sh in enumerate(suite, 1):
        name, N, C, H, k, s, p, cm = sh[:8]
        shape = pool_label(sh)
        step(progress, "pooling", at, len(suite), shape)
        x = cp.random.default_rng(0).standard_normal((N, C, H, sh.width), dtype=cp.float32)
        y, idx = convgpu.max_pool2d(x, k, s, p, ceil_mode=cm, return_indices=True)
        nbytes = pool_bytes(x.size, y.size)
        fwd_bytes, bwd_bytes = nbytes["forward"], nbytes["backward"]
        gy = cp.ones_like(y)
        runs = {}
        for be in ("numba", "cuda"):
            runs[("max_pool2d", f"{be}:direct", fwd_bytes)] = \
                lambda be=be: convgpu.max_pool2d(x, k, s, p, ceil_mode=cm, return_indices=True,
                                                 backend=be)
            runs[("max_pool2d_backward", f"{be}:gather", bwd_bytes)] = \
                lambda be=be: convgpu.max_pool2d_backward(gy, idx, x.shape, k, s, p, 1, cm,
                                                          algo="gather", backend=be)
        if ("cuda", "tiled") in convgpu.implementations("max_pool2d"):
            runs[("max_pool2d", "cuda:tiled", fwd_bytes)] = \
                lambda: convgpu.max_pool2d(x, k, s, p, ceil_mode=cm, return_indices=True,
                                           algo="tiled", backend="cuda")
        if ("cuda", "tiled") in convgpu.implementations("max_pool2d_backward"):
            runs[("max_pool2d_backward", "cuda:tiled", bwd_bytes)] = \
                lambda: convgpu.max_pool2d_backward(gy, idx, x.shape, k, s, p, 1, cm,
                                                    algo="tiled", backend="cuda")
        # the CUDA C gathers also without the index validation (check_indices=False, as
        # nn.MaxPool2d calls them; torch validates nothing): the validation's 4-byte read
        # waits for the kernel inside the timed span
        for algo in ("gather", "tiled"):
            if ("max_pool2d_backward", f"cuda:{algo}", bwd_bytes) in runs:
                runs[("max_pool2d_backward", f"cuda:{algo} unchecked", bwd_bytes)] = \
                    lambda algo=algo: convgpu.max_pool2d_backward(
                        gy, idx, x.shape, k, s, p, 1, cm, algo=algo, backend="cuda",
                        check_indices=False)
        if torch is not None:
            xt = torch.from_dlpack(x)
            yt, it = torch.nn.functional.max_pool2d(xt, k, s, p, ceil_mode=cm, return_indices=True)
            gyt = torch.ones_like(yt)
            runs[("max_pool2d", "torch", fwd_bytes)] = lambda: torch.nn.functional.max_pool2d(
                xt, k, s, p, ceil_mode=cm, return_indices=True)
            runs[("max_pool2d_backward", "torch", bwd_bytes)] = \
                lambda: torch.ops.aten.max_pool2d_with_indices_backward(
                    gyt, xt, [k, k], [s, s], [p, p], [1, 1], cm, it)
        # validate each implementation on the first image before timing it
        x0 = cp.asnumpy(x[:1]).astype(np.float64)
        y0, i0 = reference.max_pool2d(x0, (k, k), (s, s), (p, p), (1, 1), cm)
        g0 = reference.max_pool2d_backward(np.ones(y0.shape), i0, x0.shape)
        bad = set()
        for be in ("numba", "cuda"):
            yb, ib = convgpu.max_pool2d(x[:1], k, s, p, ceil_mode=cm, return_indices=True, backend=be)
            gb = convgpu.max_pool2d_backward(cp.ones_like(yb), ib, x0.shape, k, s, p, 1, cm,
                                             algo="gather", backend=be)
            if not (np.array_equal(cp.asnumpy(ib), i0) and np.array_equal(cp.asnumpy(yb), y0.astype(np.float32))):
                bad.add(("max_pool2d", f"{be}:direct"))
            if not np.array_equal(cp.asnumpy(gb), g0.astype(np.float32)):
                bad.add(("max_pool2d_backward", f"{be}:gather"))
                bad.add(("max_pool2d_backward", f"{be}:gather unchecked"))
            if be == "cuda" and ("max_pool2d", "cuda:tiled", fwd_bytes) in runs:
                try:
                    yt, it_ = convgpu.max_pool2d(x[:1], k, s, p, ceil_mode=cm,
                                                 return_indices=True, algo="tiled",
                                                 backend="cuda")
                except NotServed:           # a geometry it does not serve: not timed
                    del runs[("max_pool2d", "cuda:tiled", fwd_bytes)]
                else:
                    if not (np.array_equal(cp.asnumpy(it_), i0)
                            and np.array_equal(cp.asnumpy(yt), y0.astype(np.float32))):
                        bad.add(("max_pool2d", "cuda:tiled"))
            if be == "cuda" and ("max_pool2d_backward", "cuda:tiled", bwd_bytes) in runs:
                try:
                    gt = convgpu.max_pool2d_backward(cp.ones_like(yb), ib, x0.shape, k, s, p, 1,
                                                     cm, algo="tiled", backend="cuda")
                except NotServed:           # a geometry it does not serve: not timed
                    del runs[("max_pool2d_backward", "cuda:tiled", bwd_bytes)]
                    runs.pop(("max_pool2d_backward", "cuda:tiled unchecked", bwd_bytes), None)
                else:
                    if not np.array_equal(cp.asnumpy(gt), g0.astype(np.float32)):
                        bad.add(("max_pool2d_backward", "cuda:tiled"))
                        bad.add(("max_pool2d_backward", "cuda:tiled unchecked"))
        base = {}
        for (op, label, nbytes), fn in runs.items():
            if label != "torch" and not _wanted(label, impl_filter):
                continue
            if (op, label) in bad:
                out.append(Result(op, shape, label, "float32", "FAIL validation"))
                continue
            t = timer.time(fn)
            r = Result(op, shape, label, "float32", "ok", **t,
                       gbps=nbytes / (t["median_ms"] * 1e-3) / 1e9,
                       extra={"baseline": "torch"} if label != "torch" else {})
            if label == "torch":
                base[op] = t
            out.append(r)
            progress(f"  {op:20s} {shape:40s} {label:14s} {t['median_ms']:8.3f} ms "
                     f"{r.gbps:8.1f} GB/s")
        for r in out:
            if r.shape == shape and r.op in base and r.median_ms and r.impl != "torch":
                _ratios(r, base[r.op])
        if saved:                   # a run stopped mid-stage keeps these
            saved()
        del x, y, idx, gy
    return out


def bench_norm(timer, suite, progress=print, impl_filter=None, out=None,
               saved=None) -> List[Result]:
    """batch_norm in training (running estimates updated) and its backward, float32: ours
    beside cuDNN's (aten.cudnn_batch_norm, the kernel torch's BatchNorm2d calls on a GPU) and
    torch's own CUDA kernels (aten.native_batch_norm), validated against the reference on
    the same data before timing."""
    import cupy as cp
    import convgpu
    from convgpu import reference
    torch = _torch()
    out = [] if out is None else out      # rows appended as they are measured
    for at, (name, shape) in enumerate(suite, 1):
        label = f"{name}: {'x'.join(map(str, shape))}"
        step(progress, "batch norm", at, len(suite), label)
        C = shape[1]
        rng = cp.random.default_rng(0)
        x = rng.standard_normal(shape, dtype=cp.float32) * 2 + 1
        gy = rng.standard_normal(shape, dtype=cp.float32)
        w = rng.standard_normal(C, dtype=cp.float32)
        b = rng.standard_normal(C, dtype=cp.float32)
        rm, rv = cp.zeros(C, cp.float32), cp.ones(C, cp.float32)
        nbytes = norm_bytes(x.size)
        runs, bad = {}, set()
        x64, g64, w64, b64 = (cp.asnumpy(a).astype(np.float64) for a in (x, gy, w, b))
        mean64, invstd64, _ = reference.batch_norm_stats(x64, 1e-5)
        want = (reference.batch_norm(x64, mean64, invstd64, w64, b64),) + \
            reference.batch_norm_backward(g64, x64, mean64, invstd64, w64, True)
        for be in ("cuda", "numba"):
            y, mean, invstd = convgpu.batch_norm(x, rm, rv, w, b, True, return_stats=True,
                                                 backend=be)
            got = (y,) + convgpu.batch_norm_backward(gy, x, mean, invstd, w, True, backend=be)
            for g_, w_ in zip(got, want):
                e = np.linalg.norm(cp.asnumpy(g_) - w_) / np.linalg.norm(w_)
                if not e <= 1e-5:
                    bad.add(be)
            runs[("batch_norm", f"{be}:split" if be == "cuda" else f"{be}:two_pass",
                  nbytes["forward"])] = lambda be=be: convgpu.batch_norm(
                x, rm, rv, w, b, True, return_stats=True, backend=be)
            runs[("batch_norm_backward", f"{be}:split" if be == "cuda" else f"{be}:two_pass",
                  nbytes["backward"])] = lambda be=be, mean=mean, invstd=invstd: \
                convgpu.batch_norm_backward(gy, x, mean, invstd, w, True, backend=be)
        if torch is not None:
            xt, gt, wt, bt = (torch.from_dlpack(a) for a in (x, gy, w, b))
            rmt, rvt = torch.zeros(C, device="cuda"), torch.ones(C, device="cuda")
            A = torch.ops.aten
            for lib in ("cudnn", "torch"):
                try:
                    if lib == "cudnn":
                        xt4 = xt if xt.dim() == 4 else xt.reshape(*xt.shape, 1, 1)
                        gt4 = gt.reshape(xt4.shape)
                        yt, sm, sv, rs = A.cudnn_batch_norm(xt4, wt, bt, rmt, rvt, True, 0.1, 1e-5)
                        fwd = lambda: A.cudnn_batch_norm(xt4, wt, bt, rmt, rvt, True, 0.1, 1e-5)
                        bwd = lambda: A.cudnn_batch_norm_backward(xt4, gt4, wt, rmt, rvt, sm, sv,
                                                                  1e-5, rs)
                    else:
                        yt, sm, sv = A.native_batch_norm(xt, wt, bt, rmt, rvt, True, 0.1, 1e-5)
                        fwd = lambda: A.native_batch_norm(xt, wt, bt, rmt, rvt, True, 0.1, 1e-5)
                        bwd = lambda: A.native_batch_norm_backward(gt, xt, wt, rmt, rvt, sm, sv,
                                                                   True, 1e-5, [True] * 3)
                    e = np.linalg.norm(yt.reshape(shape).cpu().double().numpy() - want[0]) \
                        / np.linalg.norm(want[0])
                    if not e <= 1e-4:
                        raise ValueError(f"relative error {e:.1e}")
                    runs[("batch_norm", lib, nbytes["forward"])] = fwd
                    runs[("batch_norm_backward", lib, nbytes["backward"])] = bwd
                except Exception as err:            # a baseline that cannot run is reported
                    progress(f"  batch_norm baseline {lib}: {type(err).__name__}: {err}")
        base = {}
        for (op, impl, nb), fn in runs.items():
            if impl not in ("cudnn", "torch") and not _wanted(impl, impl_filter):
                continue
            if impl.split(":")[0] in bad:
                out.append(Result(op, label, impl, "float32", "FAIL validation"))
                continue
            t = timer.time(fn)
            r = Result(op, label, impl, "float32", "ok", **t,
                       gbps=nb / (t["median_ms"] * 1e-3) / 1e9,
                       extra={"baseline": "cudnn"} if impl not in ("cudnn", "torch") else {})
            if impl == "cudnn":
                base[op] = t
            out.append(r)
            progress(f"  {op:20s} {label:40s} {impl:14s} {t['median_ms']:8.3f} ms "
                     f"{r.gbps:8.1f} GB/s")
        for r in out:
            if r.shape == label and r.op in base and r.median_ms and r.impl != "cudnn":
                _ratios(r, base[r.op])
        if saved:                   # a run stopped mid-stage keeps these
            saved()
        del x, gy
    return out
