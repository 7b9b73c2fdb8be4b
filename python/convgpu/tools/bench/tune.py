"""`convgpu tune`: algo="auto" run over a suite's layers so the tuning cache holds the
choices before training rather than during its first steps."""
from __future__ import annotations

from typing import List

import numpy as np

from convgpu.tools.bench.baseline import _oom
from convgpu.tools.bench.method import step


TUNE_PASSES = ("conv2d", "conv2d_backward_input", "conv2d_backward_weight")


def tune(layers, passes=TUNE_PASSES, dtype=np.float32, allow_tf32=False, progress=print,
         xp=None, ops=None) -> List[dict]:
    """Call each pass of each layer once with algo="auto" on device arrays, so dispatch
    times the implementations that serve it and keeps the fastest (ops/_registry.py's tuning
    cache). Returns one record per (layer, pass): the choice where dispatch recorded one.
    xp, ops: the array module and the op namespace (CuPy and convgpu by default)."""
    if xp is None:
        import cupy as xp
    if ops is None:
        import convgpu as ops
    unknown = set(passes) - set(TUNE_PASSES)
    if unknown:
        raise ValueError(f"tune: unknown passes {sorted(unknown)}; choose from {TUNE_PASSES}")
    try:
        from convgpu.ops._registry import autotune_cache
    except ImportError:                     # pragma: no cover
        autotune_cache = dict
    rng = np.random.default_rng(0)
    out = []
    for at, sh in enumerate(layers, 1):
        step(progress, "tune", at, len(layers), sh.name)
        W, S, P_Q = sh.width, sh.filter_width, sh.out_size()
        x = xp.asarray(rng.uniform(-1, 1, (sh.N, sh.C, sh.H, W)).astype(dtype))
        w = xp.asarray(rng.uniform(-1, 1, (sh.K, sh.C // sh.groups, sh.R, S)).astype(dtype))
        gy = xp.asarray(rng.uniform(-1, 1, (sh.N, sh.K) + tuple(P_Q)).astype(dtype))
        kw = dict(stride=sh.stride, padding=sh.pad, dilation=sh.dilation, groups=sh.groups,
                  algo="auto", allow_tf32=allow_tf32)
        calls = {"conv2d": lambda: ops.conv2d(x, w, None, **kw),
                 "conv2d_backward_input": lambda: ops.conv2d_backward_input(gy, w, x.shape,
                                                                            **kw),
                 "conv2d_backward_weight": lambda: ops.conv2d_backward_weight(x, gy, w.shape,
                                                                              **kw)}
        for p in passes:
            before = dict(autotune_cache())
            try:
                calls[p]()
                status = "ok"
            except Exception as e:          # one layer that cannot run does not stop the rest
                if not (_oom(e) or isinstance(e, ValueError)):
                    raise
                status = f"not tuned: {type(e).__name__}: {e}"
            new = {k: v for k, v in autotune_cache().items() if k not in before and k[0] == p}
            choice = next(iter(new.values()), None)
            out.append({"layer": sh.name, "suite": sh.suite, "op": p, "choice": choice,
                        "status": status})
            progress(f"  {sh.name[:50]:50s} {p:24s} "
                     f"{choice or ('(cached or one candidate)' if status == 'ok' else status)}")
        del x, w, gy
    return out
