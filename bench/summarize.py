"""The headline ratios of one `convgpu bench --json` file, as bench/gpu_check.sh prints them
last: per network the count-weighted sums against cuDNN, conv2d best per shape against
cuDNN (fp32, TF32, and TF32 allowed with any of our algorithms), both gradients, the GEMM,
max-pooling and batch-norm rows, validation failures. Every ratio is a speed ratio: the
baseline's time / ours (above 1: ours is faster). Runs anywhere (no GPU):

    python3 bench/summarize.py RUN.json [--train TRAIN.log] [--headline HEADLINE.json]

--headline writes the run's headline (convgpu.tools.bench.headline: HEADLINE_KEYS, null where the
run has no such measurement) with its commit, source hash, device, date and method; a run
that predates `method` is labelled with the old one (benchmark_limit 10, flush-overlapped
timing). The LeNet epoch ratio comes from bench/torch_lenet.py's log (--train, default the
run's `<name>_train.log` or `train.log` beside it). bench/headline_readme.py then writes
README's performance paragraph from HEADLINE.json."""
import argparse
import collections
import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def git_source_hash(commit):
    """source_hash of a commit's tree, for runs that predate it (their kernels/ and ops/
    taken from git into a temporary folder: every file there is tracked)."""
    from convgpu.core.provenance import source_hash
    if not commit:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        arch = subprocess.run(["git", "-C", str(ROOT), "archive", commit, "kernels", "ops"],
                              capture_output=True, check=False)
        if arch.returncode != 0:
            return None
        subprocess.run(["tar", "-x", "-C", tmp], input=arch.stdout, check=True)
        return source_hash(tmp)


def train_log_for(json_path, given=None):
    cands = [given] if given else [json_path[:-len(".json")] + "_train.log",
                                   os.path.join(os.path.dirname(json_path), "train.log")]
    for c in cands:
        if c and os.path.exists(c):
            return Path(c).read_text()
    return None


def write_headline(d, json_path, out_path, train=None):
    from convgpu.tools.bench import headline
    h = headline(d, train_log_for(json_path, train))
    h["run"] = os.path.basename(json_path)
    if h["source_hash"] is None:
        h["source_hash"] = git_source_hash(h["commit"])
        if h["source_hash"]:
            h["source_hash_from"] = "the commit's tree in git (the run predates source_hash)"
    with open(out_path, "w") as f:
        json.dump(h, f, indent=1)
        f.write("\n")
    print(f"wrote {out_path}: " + ", ".join(f"{k} {v}" for k, v in h["ratios"].items()
                                            if v is not None))
    return h


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", nargs="+", metavar="RUN.json",
                    help="convgpu bench --json files of one run (gpu_check.sh writes one per "
                    "stage); several are merged")
    ap.add_argument("--merged", help="write the merged run here (the file to commit)")
    ap.add_argument("--train", help="bench/torch_lenet.py's output (the LeNet epoch ratio)")
    ap.add_argument("--headline", help="write the headline JSON here")
    a = ap.parse_args(argv)
    docs = []
    for path in a.runs:
        try:
            docs.append(json.load(open(path)))
        except (OSError, ValueError) as e:
            print(f"bench: no JSON in {path} ({e})")
    if not docs:
        return 1
    d = merge(docs)
    json_path = a.runs[0]
    if a.merged:
        with open(a.merged, "w") as f:
            json.dump(d, f, indent=1)
        json_path = a.merged
    summarize(d)
    if a.headline:
        try:
            write_headline(d, json_path, a.headline, a.train)
        except ValueError as e:
            print(e)
            return 1
    return 0


def merge(docs):
    """One run from several JSONs of the same run: the first's environment, method and
    ceilings, every result, every stage error."""
    if len(docs) == 1:
        return docs[0]
    out = dict(docs[0])
    out["results"] = [r for d in docs for r in d.get("results", [])]
    out["stage_errors"] = [e for d in docs for e in d.get("stage_errors", [])]
    out.pop("networks", None)
    sources = {(d.get("environment") or {}).get("source_hash") for d in docs}
    if len(sources) > 1:
        raise SystemExit(f"summarize: the JSONs measured different sources: {sources}")
    return out


def summarize(d):
    from convgpu.tools.bench import OLD_METHOD, format_networks, network_totals
    every = d["results"]
    # the per-shape sections below are float32 NCHW (the half and NHWC rows appear in the
    # per-network sums above them, keyed by dtype and layout, and with the GEMMs)
    d = dict(d, results=[r for r in every if r.get("dtype", "float32") == "float32"
                         and r.get("layout", "NCHW") == "NCHW"])
    method = d.get("method") or OLD_METHOD
    print("method:", {k: method.get(k) for k in ("cudnn_benchmark_limit", "timing")},
          "" if d.get("method") else "(the run predates the current method)")
    print("ceilings:", {k: round(v, 1) for k, v in d.get("ceilings", {}).items()})
    nets = format_networks(network_totals(every))
    if nets:
        print(nets)
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
    for r in d["results"] + [r for r in every if r["op"] == "gemm"
                             and r.get("dtype", "float32") != "float32"]:
        bandwidth_bound = r["op"].startswith(("max_pool", "batch_norm"))
        if r["op"] == "gemm" or (bandwidth_bound and r["gbps"]):
            extra = ""
            if bandwidth_bound and copy:
                extra = f" = {r['gbps'] / copy:4.0%} of copy"
                t = torch_ms.get((r["op"], r["shape"]))
                if t and r["impl"] != "torch" and r["median_ms"]:
                    extra += f", {t / r['median_ms']:.2f}x torch"
                if (r.get("vs_cudnn") and r["impl"] not in ("cudnn", "torch")
                        and (r.get("extra") or {}).get("baseline", "cudnn") == "cudnn"):
                    extra += f", {r['vs_cudnn']:.2f}x cuDNN"
            if r["op"] == "gemm" and r.get("vs_cudnn"):
                extra = f" = {r['vs_cudnn']:.3f}x cuBLAS"
            print(f"  {r['op']:20s} {r['shape'][:40]:40s} {r['impl']:26s} "
                  f"{r.get('dtype', 'float32'):8s} {r['median_ms'] or 0:8.3f} ms "
                  f"{(r['tflops'] or 0):6.2f} TFLOP/s {(r['gbps'] or 0):7.0f} GB/s{extra}")
    bad = [r for r in every if r["status"].startswith("FAIL")]
    print(f"bench validation failures: {len(bad)}",
          [(r['op'], r['impl'], r.get('dtype', 'float32'), r['shape'][:30]) for r in bad])
    for err in d.get("stage_errors", []):
        print("bench stage FAILED:", err)


if __name__ == "__main__":
    sys.exit(main())
