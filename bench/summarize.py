"""The headline ratios of one `convgpu bench --json` file, as bench/gpu_check.sh prints them
last: conv2d best per shape against cuDNN (fp32, TF32, and TF32 allowed with any of our
algorithms), both gradients, the GEMM, max-pooling and batch-norm rows, validation failures. Runs
anywhere (no GPU): `python3 bench/summarize.py bench/results/<run>.json`."""
import json, sys, collections
try:
    d = json.load(open(sys.argv[1]))
except Exception as e:
    print("bench: no JSON", e); sys.exit()
print("ceilings:", {k: round(v, 1) for k, v in d.get("ceilings", {}).items()})
import math
for tf in (False, True):
    best = collections.defaultdict(lambda: (0, ""))
    for r in d["results"]:
        if (r["op"] == "conv2d" and r["vs_cudnn"] and not r["impl"].startswith("cudnn")
                and r["impl"].endswith("tf32") == tf):
            best[r["shape"]] = max(best[r["shape"]], (r["vs_cudnn"], r["impl"]))
            if tf:
                print(f"  conv2d TF32 {r['shape'][:50]:50s} {r['impl']:34s} {r['vs_cudnn']:6.3f}x cuDNN TF32")
    for s, (v, i) in best.items():
        print(f"  conv2d {s[:50]:50s} best {i:34s} {v:6.3f}x cuDNN{' TF32' if tf else ''}")
    if best:
        print(f"  conv2d {'TF32' if tf else 'fp32'} geometric mean of best per shape: "
              f"{math.exp(sum(math.log(v) for v, _ in best.values()) / len(best)):.3f}x cuDNN{' TF32' if tf else ''}")
        # the dense shapes alone (no " g<groups>" in the label), as the runs before grouped
        # shapes joined the suite measured it; no TF32 kernel serves a depthwise layer
        dense = [v for s, (v, _) in best.items() if " g" not in s]
        if 0 < len(dense) < len(best):
            print(f"  conv2d {'TF32' if tf else 'fp32'} geometric mean over the {len(dense)} "
                  f"dense shapes: {math.exp(sum(map(math.log, dense)) / len(dense)):.3f}x")
# the target's reading of "TF32 allowed on both sides": any of our algorithms (TF32 or not)
# against cuDNN with TF32 on, per shape
tf32_ms = {r["shape"]: r["median_ms"] for r in d["results"]
           if r["op"] == "conv2d" and r["impl"] == "cudnn_tf32" and r["median_ms"]}
allowed = collections.defaultdict(lambda: (0, ""))
for r in d["results"]:
    if (r["op"] == "conv2d" and r["median_ms"] and r["shape"] in tf32_ms
            and not r["impl"].startswith(("cudnn", "torch"))):
        allowed[r["shape"]] = max(allowed[r["shape"]], (tf32_ms[r["shape"]] / r["median_ms"], r["impl"]))
for s, (v, i) in allowed.items():
    print(f"  conv2d TF32 allowed {s[:42]:42s} best {i:34s} {v:6.3f}x cuDNN TF32")
if allowed:
    print(f"  conv2d TF32 allowed, any algorithm: geometric mean of best per shape: "
          f"{math.exp(sum(math.log(v) for v, _ in allowed.values()) / len(allowed)):.3f}x cuDNN TF32")
for op in ("conv2d_backward_input", "conv2d_backward_weight"):
    for tf in (False, True):
        b = collections.defaultdict(lambda: (0, ""))
        for r in d["results"]:
            if (r["op"] == op and r["vs_cudnn"] and not r["impl"].startswith("cudnn")
                    and r["impl"].endswith("tf32") == tf):
                b[r["shape"]] = max(b[r["shape"]], (r["vs_cudnn"], r["impl"]))
        for s, (v, i) in b.items():
            print(f"  {op[16:]:6s} {s[:50]:50s} best {i:22s} {v:6.3f}x cuDNN{' TF32' if tf else ''}")
        if b:
            g = math.exp(sum(math.log(v) for v, _ in b.values()) / len(b))
            print(f"  {op[16:]} {'TF32' if tf else 'fp32'} geometric mean of best per shape: {g:.3f}x")
copy = d.get("ceilings", {}).get("copy_GBps")
torch_ms = {(r["op"], r["shape"]): r["median_ms"] for r in d["results"]
            if r["impl"] == "torch" and r["median_ms"]}
for r in d["results"]:
    bandwidth_bound = r["op"].startswith(("max_pool", "batch_norm"))
    if r["op"] == "gemm" or (bandwidth_bound and r["gbps"]):
        extra = ""
        if bandwidth_bound and copy:
            extra = f" = {r['gbps'] / copy:4.0%} of copy"
            t = torch_ms.get((r["op"], r["shape"]))
            if t and r["impl"] != "torch" and r["median_ms"]:
                extra += f", {t / r['median_ms']:.2f}x torch"
            if r.get("vs_cudnn") and r["impl"] not in ("cudnn", "torch"):
                extra += f", {r['vs_cudnn']:.2f}x cuDNN"
        print(f"  {r['op']:20s} {r['shape'][:40]:40s} {r['impl']:26s} {r['median_ms'] or 0:8.3f} ms "
              f"{(r['tflops'] or 0):6.2f} TFLOP/s {(r['gbps'] or 0):7.0f} GB/s{extra}")
bad = [r for r in d["results"] if r["status"].startswith("FAIL")]
print(f"bench validation failures: {len(bad)}", [(r['op'], r['impl'], r['shape'][:30]) for r in bad])
for err in d.get("stage_errors", []):
    print("bench stage FAILED:", err)
