"""What a run's rows add up to: per network the count-weighted sum of each layer's best
time against cuDNN's, the tables, the plot, and the headline (bench/results/HEADLINE.json,
written by bench/summarize.py)."""
from __future__ import annotations

import math
from typing import Dict, List, Optional

import numpy as np

from convgpu.tools.bench.method import METHOD, OLD_METHOD, ratio


_BASELINES = ("cudnn", "cudnn_tf32", "torch_default", "torch-cpu", "torch", "cublas",
              "cublas_tf32")


def _ours(r) -> bool:
    return r["impl"] not in _BASELINES


def _of(r, dtype="float32", layout="NCHW") -> bool:
    """Whether a row is in this dtype and layout (rows of runs before either was recorded:
    float32 NCHW)."""
    return r.get("dtype", "float32") == dtype and r.get("layout", "NCHW") == layout


def best_per_layer(results, op, tf32=False, dtype="float32", layout="NCHW") -> Dict[str, dict]:
    """shape -> our fastest timed row of `op` (cold) in `dtype` and `layout`, among the
    implementations algo="auto" chooses from on a device: the cuda backend's where one serves
    the layer, else numba's; FP32 ones only, or with TF32 allowed any of them."""
    best: Dict[str, dict] = {}
    rank = lambda r: (0 if r["impl"].startswith("cuda:") else 1, r["median_ms"])
    for r in results:
        if (r["op"] == op and _ours(r) and r["status"] == "ok" and r.get("median_ms")
                and _of(r, dtype, layout) and (tf32 or not r["impl"].endswith("tf32"))):
            if r["shape"] not in best or rank(r) < rank(best[r["shape"]]):
                best[r["shape"]] = r
    return best


def network_totals(results, tf32_too=True) -> Dict[str, dict]:
    """For each suite in the results, each dtype and layout, and each pass: the
    count-weighted sum of the layer times, ours (the best per layer) and the baseline's in
    the same dtype and layout, and the speed ratio baseline / ours; None where a layer lacks
    either side (its names under `missing`). Keys: "SUITE OP[ tf32]" for float32 NCHW,
    "SUITE OP DTYPE[ NHWC]" for the others (convgpu.tools.bench.precision.suffix)."""
    from convgpu.tools.bench.precision import is_half, suffix
    suites = list(dict.fromkeys(r.get("suite") for r in results if r.get("suite")))
    out = {}
    for suite in suites:
        in_suite = [r for r in results if r.get("suite") == suite]
        pairs = list(dict.fromkeys((r.get("dtype", "float32"), r.get("layout", "NCHW"))
                                   for r in in_suite))
        for dtype, layout in pairs:
            rows = [r for r in in_suite if _of(r, dtype, layout)]
            for op in ("conv2d", "conv2d_backward_input", "conv2d_backward_weight"):
                for tf32 in ((False, True) if tf32_too and not is_half(dtype) else (False,)):
                    if not any(r["op"] == op for r in rows):
                        continue
                    on_cpu = any(r["impl"] == "torch-cpu" for r in rows)
                    if on_cpu and tf32:                 # no TF32 on the CPU
                        continue
                    base_impl = "torch-cpu" if on_cpu else ("cudnn_tf32" if tf32 else "cudnn")
                    ours = best_per_layer(rows, op, tf32, dtype, layout)
                    layers = list(dict.fromkeys(r["shape"] for r in rows if r["op"] == op))
                    counts = {r["shape"]: r.get("count", 1) for r in rows if r["op"] == op}
                    base = {r["shape"]: r["median_ms"] for r in rows if r["op"] == op
                            and r["impl"] == base_impl and r["status"] == "ok"
                            and r["median_ms"]}
                    missing = [s for s in layers if s not in ours or s not in base]
                    ours_ms = sum(counts[s] * ours[s]["median_ms"] for s in layers if s in ours)
                    base_ms = sum(counts[s] * base[s] for s in layers if s in base)
                    key = f"{suite} {op}{' tf32' if tf32 else ''}{suffix(dtype, layout)}"
                    out[key] = {
                        "suite": suite, "op": op, "tf32": tf32, "dtype": dtype,
                        "layout": layout, "baseline": base_impl,
                        "layers": len(layers), "convolutions": sum(counts.values()),
                        "ours_ms": ours_ms if not missing else None,
                        "baseline_ms": base_ms if not missing else None,
                        "ratio": ratio(base_ms, ours_ms) if not missing and ours_ms else None,
                        "layer_geomean": _geomean([base[s] / ours[s]["median_ms"]
                                                   for s in layers if s in ours and s in base]),
                        "best": {s: ours[s]["impl"] for s in layers if s in ours},
                        "missing": missing}
    return out


def _geomean(vals):
    vals = [v for v in vals if v]
    return math.exp(sum(map(math.log, vals)) / len(vals)) if vals else None


def format_networks(nets) -> str:
    if not nets:
        return ""
    lines = ["per network (count-weighted sums of each layer's cold time; ours: the best "
             "implementation per layer; speed ratio = baseline / ours):"]
    for key, n in nets.items():
        tot = (f"ours {n['ours_ms']:9.3f} ms  {n['baseline']} {n['baseline_ms']:9.3f} ms  "
               f"{n['ratio']:.3f}x" if n["ratio"] else
               f"incomplete: {len(n['missing'])} of {n['layers']} layers lack a timing")
        lines.append(f"  {key:45s} {n['convolutions']:3d} convs  {tot}")
    return "\n".join(lines)


def format_table(results) -> str:
    head = ("op", "shape", "impl", "cold ms", "q20-q80", "batch ms", "TFLOP/s", "GB/s",
            "speed", "status")
    rows = []
    for r in results:
        ms = r.get("median_ms")
        rows.append((r["op"], r["shape"][:44], r["impl"], f"{ms:.3f}" if ms else "-",
                     f"{r['q20_ms']:.3f}-{r['q80_ms']:.3f}" if ms else "-",
                     f"{r['batch_ms']:.3f}" if r.get("batch_ms") else "-",
                     f"{r['tflops']:.2f}" if r.get("tflops") else "-",
                     f"{r['gbps']:.0f}" if r.get("gbps") else "-",
                     f"{r['vs_cudnn']:.3f}x" if r.get("vs_cudnn") else "-", r["status"][:40]))
    widths = [max(len(str(x[i])) for x in [head] + rows) for i in range(len(head))]
    fmt = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()
    return "\n".join(["speed = the baseline's time / ours (above 1: faster than the baseline)",
                      fmt(head), fmt(["-" * w for w in widths])] + [fmt(r) for r in rows])


def plot(doc, path) -> List[str]:
    """The panels that have data, side by side: per conv shape, the speed of each
    implementation relative to its baseline (cuDNN, or torch on the CPU); a roofline
    (achieved TFLOP/s against FLOP per byte) with the ceilings where they were measured.
    Returns the names of the panels drawn; nothing is written when there are none."""
    res = [r for r in doc["results"] if r["op"] == "conv2d" and r.get("vs_cudnn")
           and r["status"] == "ok" and _ours(r) and _of(r)]     # the panel is float32 NCHW
    pts = [r for r in doc["results"] if r.get("tflops") and r.get("gbps") and r["status"] == "ok"]
    panels = (["speed vs baseline"] if res else []) + (["roofline"] if pts else [])
    if not panels:
        return []
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(panels), figsize=(7.5 * len(panels), 5.5), squeeze=False)
    axes = list(axes[0])
    base_name = (doc.get("baseline") or {}).get("name") or "baseline"
    if res:
        ax = axes.pop(0)
        shapes_ = list(dict.fromkeys(r["shape"] for r in res))
        impls = list(dict.fromkeys(r["impl"] for r in res))
        width = 0.8 / max(1, len(impls))
        for j, im in enumerate(impls):
            xs, vals = [], []
            for i, s in enumerate(shapes_):       # only the bars that were measured
                v = next((r["vs_cudnn"] for r in res if r["shape"] == s and r["impl"] == im),
                         None)
                if v:
                    xs.append(i + j * width)
                    vals.append(v)
            ax.bar(xs, vals, width, label=im)
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set_xticks(np.arange(len(shapes_)) + 0.4 - width / 2)
        ax.set_xticklabels([s.split(":")[0] for s in shapes_], rotation=40, ha="right",
                           fontsize=7)
        ax.set_ylabel(f"speed = {base_name} time / ours (TF32 rows: cuDNN TF32)")
        ax.set_yscale("log")
        ax.set_title(f"conv2d forward, float32 ({doc['environment'].get('device') or 'CPU'})")
        ax.legend(fontsize=7)
    if pts:
        ax = axes.pop(0)
        for im in dict.fromkeys(r["impl"] for r in pts):
            sel = [r for r in pts if r["impl"] == im]
            ax.scatter([r["tflops"] * 1e3 / r["gbps"] for r in sel], [r["tflops"] for r in sel],
                       s=14, label=im)
        ceil = doc.get("ceilings") or {}
        if ceil.get("copy_GBps"):
            ai = np.logspace(-1, 3.5, 100)
            fp32 = ceil.get("fma_TFLOPs", ceil.get("sgemm_TFLOPs"))
            if fp32:
                ax.plot(ai, np.minimum(ceil["copy_GBps"] * ai / 1e3, fp32), "k--", lw=1,
                        label="measured ceilings (copy, FP32 FMA)")
            if "tf32_TFLOPs" in ceil:
                ax.plot(ai, np.minimum(ceil["copy_GBps"] * ai / 1e3, ceil["tf32_TFLOPs"]),
                        "k:", lw=1, label="TF32 (cuBLAS GEMM)")
        ax.set(xscale="log", yscale="log", xlabel="arithmetic intensity (FLOP / byte)",
               ylabel="achieved TFLOP/s",
               title="roofline" + ("" if ceil else " (no ceilings measured: no GPU)"))
        ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return panels


# ----------------------------------------------------------------------------------------
# the headline: bench/results/HEADLINE.json (bench/summarize.py writes it from a run)

HEADLINE_KEYS = ("resnet50_fwd_fp32", "resnet50_bwd_input_fp32", "resnet50_bwd_weight_fp32",
                 "resnet50_fwd_tf32", "vgg16_fwd_fp32", "mobilenetv2_fwd_fp32",
                 "resnet50_layers_geomean_fwd_fp32", "sgemm_4096", "tf32_gemm_4096",
                 "maxpool_fwd_copy_fraction", "maxpool_bwd_copy_fraction", "batchnorm_fwd",
                 "batchnorm_bwd", "lenet_train_epoch", "resnet50_fwd_fp16",
                 "resnet50_fwd_bf16", "resnet50_bwd_input_bf16", "resnet50_bwd_weight_bf16",
                 "hgemm_4096")
# what each key is: baseline time / ours. For the pooling keys the baseline is a
# device-to-device copy of the fewest bytes the pass must move (so the ratio is our
# fraction of the copy bandwidth measured in the same run)
HEADLINE_MEANING = {
    "resnet50_fwd_fp32": "ResNet-50 (batch 32) forward convolutions, summed, FP32: cuDNN / ours",
    "resnet50_bwd_input_fp32": "ResNet-50 input gradients, summed, FP32: cuDNN / ours",
    "resnet50_bwd_weight_fp32": "ResNet-50 weight gradients, summed, FP32: cuDNN / ours",
    "resnet50_fwd_tf32": "ResNet-50 forward, summed, TF32 allowed on both sides",
    "vgg16_fwd_fp32": "VGG-16 forward convolutions, summed, FP32",
    "mobilenetv2_fwd_fp32": "MobileNetV2 forward convolutions, summed, FP32",
    "resnet50_layers_geomean_fwd_fp32": "ResNet-50's distinct layers, geometric mean of the "
                                        "per-layer forward ratios, FP32",
    "sgemm_4096": "GEMM 4096^3 FP32: cuBLAS / our best",
    "tf32_gemm_4096": "GEMM 4096^3 TF32: cuBLAS TF32 / our best",
    "maxpool_fwd_copy_fraction": "max pooling forward: our best's fraction of the copy "
                                 "bandwidth, geometric mean over the pooling shapes",
    "maxpool_bwd_copy_fraction": "max pooling backward, the same",
    "batchnorm_fwd": "batch norm training forward: cuDNN / ours, geometric mean over shapes",
    "batchnorm_bwd": "batch norm backward: cuDNN / ours, geometric mean over shapes",
    "lenet_train_epoch": "LeNet-5 training epoch on the digits: torch + cuDNN / ours",
    "resnet50_fwd_fp16": "ResNet-50 forward convolutions, summed, float16 NHWC (channels_last) "
                         "on both sides: cuDNN / ours",
    "resnet50_fwd_bf16": "ResNet-50 forward convolutions, summed, bfloat16 NHWC: cuDNN / ours",
    "resnet50_bwd_input_bf16": "ResNet-50 input gradients, summed, bfloat16 NHWC: cuDNN / ours",
    "resnet50_bwd_weight_bf16": "ResNet-50 weight gradients, summed, bfloat16 NHWC: cuDNN / ours",
    "hgemm_4096": "GEMM 4096^3 float16 (FP32 accumulation): cuBLAS (torch.matmul) / ours",
}


def _gemm_ratio(results, tf32, dtype="float32"):
    shape = "4096x4096x4096"
    base = next((r["median_ms"] for r in results if r["op"] == "gemm" and r["shape"] == shape
                 and r["impl"] == ("cublas_tf32" if tf32 else "cublas") and r["median_ms"]
                 and _of(r, dtype)), None)
    ours = [r["median_ms"] for r in results if r["op"] == "gemm" and r["shape"] == shape
            and _ours(r) and r["status"] == "ok" and r["median_ms"] and _of(r, dtype)
            and r["impl"].endswith("tf32") == tf32]
    return ratio(base, min(ours)) if base and ours else None


def _copy_fraction(results, op, copy_gbps):
    if not copy_gbps:
        return None
    best: Dict[str, float] = {}
    for r in results:
        if r["op"] == op and _ours(r) and r["status"] == "ok" and r.get("gbps"):
            best[r["shape"]] = max(best.get(r["shape"], 0.0), r["gbps"] / copy_gbps)
    return _geomean(list(best.values()))


def _norm_ratio(results, op):
    base = {r["shape"]: r["median_ms"] for r in results if r["op"] == op
            and r["impl"] == "cudnn" and r["status"] == "ok" and r["median_ms"]}
    best: Dict[str, float] = {}
    for r in results:
        if r["op"] == op and _ours(r) and r["status"] == "ok" and r["median_ms"] \
                and r["shape"] in base:
            best[r["shape"]] = min(best.get(r["shape"], math.inf), r["median_ms"])
    return _geomean([base[s] / t for s, t in best.items()])


def lenet_ratio(train_log: Optional[str]) -> Optional[float]:
    """torch's median epoch / ours from bench/torch_lenet.py's output."""
    import re
    if not train_log:
        return None
    t = re.search(r"^torch .*median epoch ([0-9.]+) s", train_log, re.M)
    o = re.search(r"^convgpu .*median epoch ([0-9.]+) s", train_log, re.M)
    return ratio(float(t.group(1)), float(o.group(1))) if t and o and float(o.group(1)) else None


def headline(doc, train_log: Optional[str] = None) -> dict:
    """The headline ratios of one run (HEADLINE_KEYS; None where the run has no such
    measurement), with the run's provenance and method."""
    if doc.get("device") == "cpu":
        raise ValueError("headline: this is a CPU run (numpy against torch's CPU ops); the "
                         "headline holds device runs against cuDNN / cuBLAS only")
    env = doc.get("environment", {})
    res = doc["results"]
    nets = network_totals(res)

    def net(suite, op, tf32=False, dtype="float32", layout="NCHW"):
        from convgpu.tools.bench.precision import suffix
        n = nets.get(f"{suite} {op}{' tf32' if tf32 else ''}{suffix(dtype, layout)}")
        return n["ratio"] if n else None

    rn = nets.get("resnet50 conv2d")
    copy = (doc.get("ceilings") or {}).get("copy_GBps")
    ratios = {
        "resnet50_fwd_fp32": net("resnet50", "conv2d"),
        "resnet50_bwd_input_fp32": net("resnet50", "conv2d_backward_input"),
        "resnet50_bwd_weight_fp32": net("resnet50", "conv2d_backward_weight"),
        "resnet50_fwd_tf32": net("resnet50", "conv2d", True),
        "vgg16_fwd_fp32": net("vgg16", "conv2d"),
        "mobilenetv2_fwd_fp32": net("mobilenetv2", "conv2d"),
        "resnet50_layers_geomean_fwd_fp32": rn["layer_geomean"] if rn and not rn["missing"]
        else None,
        "sgemm_4096": _gemm_ratio(res, False),
        "tf32_gemm_4096": _gemm_ratio(res, True),
        "maxpool_fwd_copy_fraction": _copy_fraction(res, "max_pool2d", copy),
        "maxpool_bwd_copy_fraction": _copy_fraction(res, "max_pool2d_backward", copy),
        "batchnorm_fwd": _norm_ratio(res, "batch_norm"),
        "batchnorm_bwd": _norm_ratio(res, "batch_norm_backward"),
        "lenet_train_epoch": lenet_ratio(train_log),
        "resnet50_fwd_fp16": net("resnet50", "conv2d", dtype="float16", layout="NHWC"),
        "resnet50_fwd_bf16": net("resnet50", "conv2d", dtype="bfloat16", layout="NHWC"),
        "resnet50_bwd_input_bf16": net("resnet50", "conv2d_backward_input",
                                       dtype="bfloat16", layout="NHWC"),
        "resnet50_bwd_weight_bf16": net("resnet50", "conv2d_backward_weight",
                                        dtype="bfloat16", layout="NHWC"),
        "hgemm_4096": _gemm_ratio(res, False, "float16"),
    }
    method = doc.get("method") or OLD_METHOD
    out = {"commit": env.get("commit"), "source_hash": env.get("source_hash"),
           "device": env.get("device"), "date": env.get("time"),
           "method": {k: method[k] for k in ("cudnn_benchmark_limit", "timing")},
           "ratios": {k: (round(v, 4) if v is not None else None) for k, v in ratios.items()},
           "meaning": "speed ratio = baseline time / ours (above 1: ours is faster); "
                      "null: the run has no such measurement"}
    if method["timing"] != METHOD["timing"]:
        out["note"] = ("an earlier method: cuDNN tried only its first "
                       f"{method['cudnn_benchmark_limit']} algorithms and the L2 flush was "
                       "queued before the events without a synchronise, so host dispatch "
                       "overlapped it; not comparable with runs under the current method")
    return out
