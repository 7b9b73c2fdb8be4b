"""`convgpu check`: run every implementation that can run here against the float64 NumPy
reference and print a table.

Each registered (op, backend, algo) is called on fresh random inputs (non-zero, mixed
signs) in float32 and float64; its output is compared with the reference computed in
float64 on the same values, as ||out - ref|| / ||ref|| against the design's tolerance; for
the convolutions and GEMMs instead norm-wise against the absolute-value product and element
by element against the derived bound (convgpu.bounds, docs/tolerances.md).
Device backends get CuPy arrays on a GPU; without one, NumPy arrays under the Numba
simulator and the CUDA C host emulation (kernels/cuda/emulator), both slow: their shapes are
tiny. The table (format_table) gives each row a status: ok, ok (emulated) where the
simulator or the host emulation ran a device kernel, FAIL, not served, not run; the exit
status is non-zero if anything fails.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, List, Optional

import numpy as np

# the bounds (norm-wise and element-wise) live in convgpu.bounds; docs/tolerances.md
from convgpu.bounds import TF32, TRANSFORM, TOLERANCE, DEFAULT_TOL, tolerance  # noqa: E402,F401
from convgpu import bounds as _bounds  # noqa: E402


@dataclass
class Problem:
    op: str
    label: str
    make: Callable          # rng -> dict of float64 NumPy inputs
    call: Callable          # (inputs, backend, algo) -> output(s)
    reference: Callable     # inputs (float64) -> output(s)
    # (inputs, outputs, algo, dtype) -> (norm-wise error, worst element-wise error / bound)
    # where the op has a derived element-wise bound (docs/tolerances.md)
    errors: Optional[Callable] = None


def _rand(rng, shape):
    return rng.uniform(0.5, 1.5, size=shape) * rng.choice([-1.0, 1.0], size=shape)


def _distinct(rng, shape):
    n = int(np.prod(shape))
    return rng.permutation(np.linspace(-1.0, 1.0, n) + 0.01).reshape(shape)


def _conv_problems(xs, ws, ys, conv_kw) -> List[Problem]:
    """conv2d and its input and weight gradients on one geometry (TF32 allowed for the
    TF32 implementations)."""
    import convgpu as cg
    from convgpu import reference as ref
    s, p, d, g = (conv_kw[k] for k in ("stride", "padding", "dilation", "groups"))
    shape = f"x{xs} w{ws} s{s} p{p} g{g}"
    tf = lambda al: al.endswith("tf32")
    return [
        Problem("conv2d", shape,
                lambda r: dict(x=_rand(r, xs), w=_rand(r, ws), b=_rand(r, (ws[0],))),
                lambda i, be, al: cg.conv2d(i["x"], i["w"], i["b"], **conv_kw, backend=be, algo=al,
                                            allow_tf32=tf(al)),
                lambda i: ref.conv2d(i["x"], i["w"], i["b"], s, p, d, g),
                lambda i, o, al, dt: _bounds.conv_errors(
                    o, ref.conv2d(i["x"], i["w"], i["b"], s, p, d, g), "conv2d", al, dt,
                    i["x"], i["w"], None, conv_kw, i["b"])),
        Problem("conv2d_backward_input", shape, lambda r: dict(gy=_rand(r, ys), w=_rand(r, ws)),
                lambda i, be, al: cg.conv2d_backward_input(i["gy"], i["w"], xs, **conv_kw,
                                                           backend=be, algo=al, allow_tf32=tf(al)),
                lambda i: ref.conv2d_backward_input(i["gy"], i["w"], xs, s, p, d, g),
                lambda i, o, al, dt: _bounds.conv_errors(
                    o, ref.conv2d_backward_input(i["gy"], i["w"], xs, s, p, d, g),
                    "conv2d_backward_input", al, dt, i["gy"], i["w"], xs, conv_kw)),
        Problem("conv2d_backward_weight", shape, lambda r: dict(x=_rand(r, xs), gy=_rand(r, ys)),
                lambda i, be, al: cg.conv2d_backward_weight(i["x"], i["gy"], ws, **conv_kw,
                                                            backend=be, algo=al, allow_tf32=tf(al)),
                lambda i: ref.conv2d_backward_weight(i["x"], i["gy"], ws, s, p, d, g),
                lambda i, o, al, dt: _bounds.conv_errors(
                    o, ref.conv2d_backward_weight(i["x"], i["gy"], ws, s, p, d, g),
                    "conv2d_backward_weight", al, dt, i["x"], i["gy"], ws, conv_kw)),
    ]


def _xent_labels(r):
    t = r.integers(0, 10, 33)
    t[5] = -100                                       # F.cross_entropy's ignore_index
    return t


def problems(size: str = "small") -> List[Problem]:
    """The problem set. 'small' fits the simulator (a few blocks per launch); 'large' is
    real-layer-sized and odd (for a GPU)."""
    import convgpu as cg
    from convgpu import reference as ref
    from convgpu.core.args import conv_out_size, pool_out_size
    if size == "small":
        # strided, grouped, non-square; a 3x3 stride-1 layer (the Winograd geometry);
        # depthwise
        convs = [((2, 4, 7, 6), (4, 2, 3, 2), dict(stride=(2, 1), padding=(1, 1),
                                                    dilation=(1, 1), groups=2)),
                 ((2, 4, 7, 5), (6, 2, 3, 3), dict(stride=(1, 1), padding=(1, 1),
                                                    dilation=(1, 1), groups=2)),
                 # depthwise (groups = C), channel multiplier 2
                 ((2, 3, 9, 8), (6, 1, 3, 3), dict(stride=(2, 1), padding=(1, 1),
                                                    dilation=(1, 1), groups=3))]
        pool = (2, 3, 9, 7)
    else:
        convs = [((8, 64, 31, 29), (96, 64, 3, 3), dict(stride=(1, 1), padding=(1, 1),
                                                         dilation=(1, 1), groups=1)),
                 ((8, 96, 31, 29), (96, 1, 3, 3), dict(stride=(2, 2), padding=(1, 1),
                                                        dilation=(1, 1), groups=96))]
        pool = (16, 64, 55, 55)
    kp = dict(kernel_size=3, stride=2, padding=1, ceil_mode=True)
    pP = pool_out_size(pool[2], 3, 2, 1, 1, True)
    pQ = pool_out_size(pool[3], 3, 2, 1, 1, True)
    pys = pool[:2] + (pP, pQ)
    out, ys = [], None
    for xs, ws, conv_kw in convs:
        s, p, d = conv_kw["stride"], conv_kw["padding"], conv_kw["dilation"]
        shape_y = (xs[0], ws[0], conv_out_size(xs[2], ws[2], s[0], p[0], d[0]),
                   conv_out_size(xs[3], ws[3], s[1], p[1], d[1]))
        ys = ys or shape_y                          # the bias gradient's problem: the first
        out += _conv_problems(xs, ws, shape_y, conv_kw)
    return out + [
        Problem("conv2d_backward_bias", f"gy{ys}", lambda r: dict(gy=_rand(r, ys)),
                lambda i, be, al: cg.conv2d_backward_bias(i["gy"], backend=be),
                lambda i: ref.conv2d_backward_bias(i["gy"])),
        Problem("max_pool2d", f"x{pool} k3 s2 p1 ceil", lambda r: dict(x=_distinct(r, pool)),
                lambda i, be, al: cg.max_pool2d(i["x"], **kp, return_indices=True, backend=be,
                                                algo=al),
                lambda i: ref.max_pool2d(i["x"], (3, 3), (2, 2), (1, 1), (1, 1), True)),
        Problem("max_pool2d_backward", f"x{pool} k3 s2 p1 ceil",
                lambda r: dict(gy=_rand(r, pys), idx=ref.max_pool2d(_distinct(r, pool), (3, 3), (2, 2),
                                                                   (1, 1), (1, 1), True)[1]),
                lambda i, be, al: cg.max_pool2d_backward(
                    i["gy"], i["idx"], pool, *(() if al == "plane" else (3, 2, 1, 1, True)),
                    backend=be, algo=al),
                lambda i: ref.max_pool2d_backward(i["gy"], i["idx"], pool)),
        Problem("avg_pool2d", f"x{pool} k3 s2 p1 ceil", lambda r: dict(x=_rand(r, pool)),
                lambda i, be, al: cg.avg_pool2d(i["x"], **kp, count_include_pad=False, backend=be),
                lambda i: ref.avg_pool2d(i["x"], (3, 3), (2, 2), (1, 1), True, False)),
        Problem("avg_pool2d_backward", f"x{pool} k3 s2 p1 ceil", lambda r: dict(gy=_rand(r, pys)),
                lambda i, be, al: cg.avg_pool2d_backward(i["gy"], pool, **kp, backend=be),
                lambda i: ref.avg_pool2d_backward(i["gy"], pool, (3, 3), (2, 2), (1, 1), True)),
        Problem("global_avg_pool2d", f"x{pool}", lambda r: dict(x=_rand(r, pool)),
                lambda i, be, al: cg.global_avg_pool2d(i["x"], backend=be),
                lambda i: ref.global_avg_pool2d(i["x"])),
        Problem("global_avg_pool2d_backward", f"x{pool}", lambda r: dict(gy=_rand(r, pool[:2])),
                lambda i, be, al: cg.global_avg_pool2d_backward(i["gy"], pool, backend=be),
                lambda i: ref.global_avg_pool2d_backward(i["gy"], pool)),
        Problem("relu", f"x{pool}", lambda r: dict(x=_rand(r, pool)),
                lambda i, be, al: cg.relu(i["x"], backend=be), lambda i: ref.relu(i["x"])),
        Problem("relu_backward", f"x{pool}", lambda r: dict(gy=_rand(r, pool), x=_rand(r, pool)),
                lambda i, be, al: cg.relu_backward(i["gy"], i["x"], backend=be),
                lambda i: ref.relu_backward(i["gy"], i["x"])),
        Problem("bias_add", f"x{pool}", lambda r: dict(x=_rand(r, pool), b=_rand(r, pool[1:2])),
                lambda i, be, al: cg.bias_add(i["x"], i["b"], backend=be),
                lambda i: ref.bias_add(i["x"], i["b"])),
        Problem("linear", "x(37, 45) w(19, 45)",
                lambda r: dict(x=_rand(r, (37, 45)), w=_rand(r, (19, 45)), b=_rand(r, (19,))),
                lambda i, be, al: cg.linear(i["x"], i["w"], i["b"], backend=be, algo=al,
                                            allow_tf32=al.endswith("tf32")),
                lambda i: ref.linear(i["x"], i["w"], i["b"]),
                lambda i, o, al, dt: _bounds.gemm_errors(
                    o, ref.linear(i["x"], i["w"], i["b"]),
                    ref.linear(abs(i["x"]), abs(i["w"]), abs(i["b"])), 45, al, dt)),
        Problem("linear_backward", "x(37, 45) w(19, 45)",
                lambda r: dict(gy=_rand(r, (37, 19)), x=_rand(r, (37, 45)), w=_rand(r, (19, 45))),
                lambda i, be, al: cg.linear_backward(i["gy"], i["x"], i["w"], backend=be),
                lambda i: ref.linear_backward(i["gy"], i["x"], i["w"]),
                lambda i, o, al, dt: _bounds.gemm_errors(
                    o, ref.linear_backward(i["gy"], i["x"], i["w"]),
                    ref.linear_backward(abs(i["gy"]), abs(i["x"]), abs(i["w"])), (19, 37, 37),
                    al, dt)),
        Problem("softmax_cross_entropy", "logits(33, 10)",
                lambda r: dict(z=_rand(r, (33, 10)) * 3, t=r.integers(0, 10, 33)),
                lambda i, be, al: cg.softmax_cross_entropy(i["z"], i["t"], backend=be, algo=al),
                lambda i: ref.softmax_cross_entropy(i["z"], i["t"])),
        Problem("softmax_cross_entropy_backward", "logits(33, 10)",
                lambda r: dict(z=_rand(r, (33, 10)) * 3, t=r.integers(0, 10, 33)),
                lambda i, be, al: cg.softmax_cross_entropy_backward(i["z"], i["t"], backend=be,
                                                                    algo=al),
                lambda i: ref.softmax_cross_entropy_backward(i["z"], i["t"])),
        # weight, an ignored row, label smoothing: what the row kernels decline
        Problem("softmax_cross_entropy", "logits(33, 10) weight ignore smoothing",
                lambda r: dict(z=_rand(r, (33, 10)) * 3, t=_xent_labels(r),
                               w=r.uniform(0.5, 2.0, 10)),
                lambda i, be, al: cg.softmax_cross_entropy(i["z"], i["t"], i["w"],
                                                           label_smoothing=0.1, backend=be,
                                                           algo=al),
                lambda i: ref.softmax_cross_entropy(i["z"], i["t"], i["w"], label_smoothing=0.1)),
        Problem("softmax_cross_entropy_backward", "logits(33, 10) weight ignore smoothing",
                lambda r: dict(z=_rand(r, (33, 10)) * 3, t=_xent_labels(r),
                               w=r.uniform(0.5, 2.0, 10)),
                lambda i, be, al: cg.softmax_cross_entropy_backward(
                    i["z"], i["t"], i["w"], label_smoothing=0.1, backend=be, algo=al),
                lambda i: ref.softmax_cross_entropy_backward(i["z"], i["t"], i["w"],
                                                             label_smoothing=0.1)),
        # the optimiser steps update in place: the call returns the updated arrays. lr 0.1 so
        # the update itself, not only the parameter, is far above the tolerance
        Problem("adam_step", "p(33, 45) step 3 wd 0.01",
                lambda r: dict(p=_rand(r, (33, 45)), g=_rand(r, (33, 45)),
                               m=0.1 * _rand(r, (33, 45)), v=0.01 * np.abs(_rand(r, (33, 45)))),
                lambda i, be, al: (cg.adam_step(i["p"], i["g"], i["m"], i["v"], 3, **ADAM,
                                                backend=be), (i["p"], i["m"], i["v"]))[1],
                lambda i: ref.adam_step(i["p"], i["g"], i["m"], i["v"], 3, ADAM["lr"],
                                        ADAM["beta1"], ADAM["beta2"], ADAM["eps"],
                                        ADAM["weight_decay"])),
        Problem("sgd_step", "p(33, 45) momentum 0.9 wd 0.01",
                lambda r: dict(p=_rand(r, (33, 45)), g=_rand(r, (33, 45)), b=_rand(r, (33, 45))),
                lambda i, be, al: (cg.sgd_step(i["p"], i["g"], i["b"], **SGD, backend=be),
                                   (i["p"], i["b"]))[1],
                lambda i: ref.sgd_step(i["p"], i["g"], i["b"], SGD["lr"], SGD["momentum"],
                                       SGD["weight_decay"])),
        Problem("adaptive_avg_pool2d", f"x{pool} -> (4, 3)", lambda r: dict(x=_rand(r, pool)),
                lambda i, be, al: cg.adaptive_avg_pool2d(i["x"], (4, 3), backend=be),
                lambda i: ref.adaptive_avg_pool2d(i["x"], (4, 3))),
        Problem("adaptive_avg_pool2d_backward", f"x{pool} -> (4, 3)",
                lambda r: dict(gy=_rand(r, pool[:2] + (4, 3))),
                lambda i, be, al: cg.adaptive_avg_pool2d_backward(i["gy"], pool, backend=be),
                lambda i: ref.adaptive_avg_pool2d_backward(i["gy"], pool)),
    ] + _batch_norm_problems(pool) + _batch_norm_problems((2, 3, 32, 36))   # long planes:
    # the CUDA C plane kernels (float4 / double2) serve planes of 1024 values or more


def _batch_norm_problems(shape) -> List[Problem]:
    """batch_norm in training (the call returns y, the batch statistics and the running
    estimates it updated in place) and in evaluation; the backward in both modes. x is
    off-centre (mean ~3) so a kernel that skipped the mean would show."""
    import convgpu as cg
    from convgpu import reference as ref
    C, m, eps = shape[1], 0.1, 1e-5

    def make(r):
        x = _rand(r, shape) * 2 + 3
        mean, invstd, _ = ref.batch_norm_stats(x, eps)
        return dict(x=x, gy=_rand(r, shape), w=_rand(r, (C,)), b=_rand(r, (C,)),
                    rm=_rand(r, (C,)), rv=r.uniform(0.5, 2.0, C), mean=mean, invstd=invstd)

    def forward(i, be, training):
        y, mean, invstd = cg.batch_norm(i["x"], i["rm"], i["rv"], i["w"], i["b"], training, m,
                                        eps, return_stats=True, backend=be)
        return (y, mean, invstd, i["rm"], i["rv"]) if training else (y, mean, invstd)

    def forward_ref(i, training):
        if training:
            mean, invstd, var = ref.batch_norm_stats(i["x"], eps)
            running = ((1 - m) * i["rm"] + m * mean, (1 - m) * i["rv"] + m * var)
        else:
            mean, invstd, running = i["rm"], 1 / np.sqrt(i["rv"] + eps), ()
        return (ref.batch_norm(i["x"], mean, invstd, i["w"], i["b"]), mean, invstd) + running

    label = f"x{shape}"
    return [p for training in (True, False) for p in (
        Problem("batch_norm", f"{label} {'training, momentum 0.1' if training else 'eval'}", make,
                lambda i, be, al, t=training: forward(i, be, t),
                lambda i, t=training: forward_ref(i, t)),
        Problem("batch_norm_backward", f"x{shape} {'training' if training else 'eval'}", make,
                lambda i, be, al, t=training: cg.batch_norm_backward(
                    i["gy"], i["x"], i["mean"], i["invstd"], i["w"], t, backend=be),
                lambda i, t=training: ref.batch_norm_backward(i["gy"], i["x"], i["mean"],
                                                              i["invstd"], i["w"], t)))]


ADAM = dict(lr=0.1, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.01)
SGD = dict(lr=0.1, momentum=0.9, weight_decay=0.01)


@dataclass
class Row:
    op: str
    backend: str
    algo: str
    dtype: str
    shape: str
    error: Optional[float]
    tol: float
    status: str
    seconds: float


def _relerr(out, ref) -> float:
    outs = out if isinstance(out, tuple) else (out,)
    refs = ref if isinstance(ref, tuple) else (ref,)
    worst = 0.0
    if len(outs) != len(refs):              # a missing output fails, never drops out
        return float("inf")
    for o, r in zip(outs, refs, strict=True):
        o = np.asarray(o)
        if o.dtype.kind in "iu":            # indices: exact
            if o.shape != r.shape or not np.array_equal(o, r):
                return float("inf")
            continue
        o = o.astype(np.float64)
        r = np.asarray(r, np.float64)
        if o.shape != r.shape or not np.all(np.isfinite(o)):
            return float("inf")
        den = np.linalg.norm(r)
        worst = max(worst, float(np.linalg.norm(o - r) / (den if den else 1.0)))
    return worst


def run_checks(size: str = "small", ops=None, backends=None, seed: int = 0,
               progress: Optional[Callable[[str], None]] = None) -> List[Row]:
    """Every (problem, implementation, dtype) as a Row; `progress` gets a line as each
    problem finishes."""
    from convgpu.ops._registry import (NotServed, all_impls, backend_unavailable,
                                       device_backend_runs_on_host)
    rng = np.random.default_rng(seed)
    rows = []
    todo = [p for p in problems(size) if not ops or p.op in ops]
    for k, prob in enumerate(todo):
        first, t_prob = len(rows), time.perf_counter()
        for impl in all_impls(prob.op):
            if backends and impl.backend not in backends:
                continue
            why = backend_unavailable(impl.backend)
            for dt in (np.float32, np.float64):
                tol = tolerance(impl.algo, dt)
                if why:
                    rows.append(Row(prob.op, impl.backend, impl.algo, np.dtype(dt).name, prob.label,
                                    None, tol, f"not run: {why}", 0.0))
                    continue
                inputs = prob.make(rng)
                ref = prob.reference(inputs)
                on_device = not device_backend_runs_on_host(impl.backend)
                cast = {k: (v.astype(dt) if v.dtype.kind == "f" else v) for k, v in inputs.items()}
                if on_device:
                    import cupy
                    cast = {k: cupy.asarray(v) for k, v in cast.items()}
                t0 = time.perf_counter()
                try:
                    out = prob.call(cast, impl.backend, impl.algo)
                    if on_device:
                        out = tuple(o.get() for o in out) if isinstance(out, tuple) else out.get()
                    ratio = 0.0
                    if prob.errors is not None:
                        err, ratio = prob.errors(inputs, out, impl.algo, dt)
                    else:
                        err = _relerr(out, ref)
                    status = "ok" if err <= tol and ratio <= 1 else "FAIL"
                    if ratio > 1:
                        status = f"FAIL: an element's error is {ratio:.3g}x its bound"
                except NotServed as e:             # the registry's refusal: supports() says no
                    err, status = None, f"not served: {e}"
                except Exception as e:             # a crash, or a launcher's own ValueError:
                    # a failure, reported not raised
                    err, status = None, f"FAIL: {type(e).__name__}: {e}"
                rows.append(Row(prob.op, impl.backend, impl.algo, np.dtype(dt).name, prob.label,
                                err, tol, status, time.perf_counter() - t0))
        if progress:
            counts = summary(rows[first:])
            progress(f"check [{k + 1}/{len(todo)}] {prob.op} {prob.label}: "
                     f"{counts or 'nothing to run'} ({time.perf_counter() - t_prob:.1f} s)")
    return rows


STATUSES = ("ok", "ok (emulated)", "FAIL", "not served", "not run")


def status_of(row: Row) -> str:
    """The row's status word (STATUSES): 'ok (emulated)' where the Numba simulator or the
    CUDA C host emulation ran a device kernel, which validates nothing about the device."""
    from convgpu.ops._registry import device_backend_runs_on_host
    word = next(s for s in ("FAIL", "not served", "not run", "ok") if row.status.startswith(s))
    if word == "ok" and row.backend != "numpy" and device_backend_runs_on_host(row.backend):
        return "ok (emulated)"
    return word


def reason_of(row: Row) -> str:
    """What the status says beyond its word (why not served, not run, or failed)."""
    word = next(s for s in ("FAIL", "not served", "not run", "ok") if row.status.startswith(s))
    return row.status[len(word):].lstrip(": ").strip()


def summary(rows: List[Row]) -> str:
    """'12 ok, 30 ok (emulated), 2 not served': the statuses counted apart, zeros left out."""
    counts = {s: 0 for s in STATUSES}
    for r in rows:
        counts[status_of(r)] += 1
    return ", ".join(f"{n} {s}" for s, n in counts.items() if n)


def format_table(rows: List[Row], verbose: bool = False, width: int = 100) -> str:
    """A block per problem (its op and shape), a line per implementation with both dtypes'
    relative errors and statuses, within `width` columns; then the reasons (FAIL's always,
    the others with verbose) and the summary."""
    import textwrap
    dts = list(dict.fromkeys(r.dtype for r in rows)) or ["float32", "float64"]
    algo_w = max([len(r.algo) for r in rows] + [4])
    cell = 8 + 2 + len("ok (emulated)")
    head = f"  {'backend':7s}  {'algo':{algo_w}s}" + "".join(f"  {d:{cell}s}" for d in dts)
    out = [head.rstrip(), "  " + "-" * (len(head.rstrip()) - 2)]
    groups = {}
    for r in rows:
        groups.setdefault((r.op, r.shape), {}).setdefault((r.backend, r.algo), {})[r.dtype] = r
    for (op, shape), impls in groups.items():
        out.append(textwrap.shorten(f"{op}  {shape}", width, placeholder=" ..."))
        for (backend, algo), by_dt in impls.items():
            cells = []
            for d in dts:
                r = by_dt.get(d)
                err = "" if r is None else ("-" if r.error is None else f"{r.error:.2e}")
                cells.append(f"{err:8s}  {status_of(r) if r else '':{len('ok (emulated)')}s}")
            out.append((f"  {backend:7s}  {algo:{algo_w}s}" + "".join(f"  {c}" for c in cells))
                       .rstrip())
    listed = [r for r in rows if status_of(r) == "FAIL" or (verbose and reason_of(r))]
    if listed:
        out.append("\nreasons:" if verbose else "\nfailures:")
        for r in listed:
            why = reason_of(r) or f"relative error {r.error:.2e} over the tolerance {r.tol:.0e}"
            out.append(textwrap.fill(f"{r.op} ({r.backend}, {r.algo}) {r.dtype}: {status_of(r)}: "
                                     f"{why}", width, subsequent_indent="    "))
    hidden = sum(1 for r in rows if reason_of(r) and status_of(r) != "FAIL")
    if hidden and not verbose:
        out.append(f"\n{hidden} row{'s' if hidden > 1 else ''} not served or not run: "
                   "--verbose lists why")
    out.append(f"\n{summary(rows) or 'nothing ran'} (of {len(rows)} rows)")
    return "\n".join(out)
