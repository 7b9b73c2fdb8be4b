"""bench/results/HEADLINE.json against the run it names, recomputed here from the run's raw
times (every ratio baseline / ours), and README's performance paragraph against it."""
import importlib.util
import json
import math
import re
from pathlib import Path

import pytest

from convgpu.tools import bench

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
HEADLINE = json.loads((RESULTS / "HEADLINE.json").read_text())


def _geomean(v):
    return math.exp(sum(map(math.log, v)) / len(v))


def test_headline_names_a_run_and_its_method():
    assert set(HEADLINE["ratios"]) == set(bench.HEADLINE_KEYS)
    run = json.loads((RESULTS / HEADLINE["run"]).read_text())
    env = run["environment"]
    assert HEADLINE["commit"] == env["commit"] and HEADLINE["device"] == env["device"]
    assert HEADLINE["date"] == env["time"] and len(HEADLINE["source_hash"]) == 64
    method = run.get("method") or {"cudnn_benchmark_limit": 10, "timing": "flush-overlapped"}
    assert HEADLINE["method"] == {k: method[k] for k in ("cudnn_benchmark_limit", "timing")}
    if HEADLINE["method"]["timing"] != "cold":
        assert "not comparable" in HEADLINE["note"]


def test_every_headline_ratio_is_baseline_over_ours():
    run = json.loads((RESULTS / HEADLINE["run"]).read_text())
    res = run["results"]
    got = HEADLINE["ratios"]
    base = {"cublas", "cublas_tf32", "cudnn", "cudnn_tf32", "torch", "torch_default"}

    def ms(op, shape, impl):
        return next(r["median_ms"] for r in res if (r["op"], r["shape"], r["impl"]) == (op, shape, impl))

    checked = 0
    for key, tf32 in (("sgemm_4096", False), ("tf32_gemm_4096", True)):
        shape = "4096x4096x4096"
        ours = min(r["median_ms"] for r in res if r["op"] == "gemm" and r["shape"] == shape
                   and r["impl"] not in base and r["impl"].endswith("tf32") == tf32
                   and r["status"] == "ok")
        want = ms("gemm", shape, "cublas_tf32" if tf32 else "cublas") / ours
        assert got[key] == pytest.approx(want, rel=1e-3)
        checked += 1
    copy = run["ceilings"]["copy_GBps"]
    for key, op in (("maxpool_fwd_copy_fraction", "max_pool2d"),
                    ("maxpool_bwd_copy_fraction", "max_pool2d_backward")):
        shapes = {r["shape"] for r in res if r["op"] == op}
        best = [max(r["gbps"] for r in res if r["op"] == op and r["shape"] == s
                    and r["impl"] not in base and r["status"] == "ok") / copy for s in shapes]
        assert got[key] == pytest.approx(_geomean(best), rel=1e-3)
        checked += 1
    for key, op in (("batchnorm_fwd", "batch_norm"), ("batchnorm_bwd", "batch_norm_backward")):
        shapes = {r["shape"] for r in res if r["op"] == op}
        want = _geomean([ms(op, s, "cudnn") / min(r["median_ms"] for r in res if r["op"] == op
                                                  and r["shape"] == s and r["impl"] not in base)
                         for s in shapes])
        assert got[key] == pytest.approx(want, rel=1e-3)
        checked += 1
    log = RESULTS / (HEADLINE["run"][:-len(".json")] + "_train.log")
    if got["lenet_train_epoch"] is not None:
        epochs = dict(re.findall(r"^(torch|convgpu) .*median epoch ([0-9.]+) s", log.read_text(),
                                 re.M))
        assert got["lenet_train_epoch"] == pytest.approx(
            float(epochs["torch"]) / float(epochs["convgpu"]), rel=1e-3)
        checked += 1
    networks = [k for k in bench.HEADLINE_KEYS if k.split("_")[0] in
                ("resnet50", "vgg16", "mobilenetv2")]
    if not any(r.get("suite") for r in res):          # a run before the network suites
        assert all(got[k] is None for k in networks)
    else:
        for k in networks:
            assert got[k] == pytest.approx(bench.headline(run)["ratios"][k], rel=1e-3)
    assert checked >= 6


def _readme_script():
    spec = importlib.util.spec_from_file_location("headline_readme",
                                                  ROOT / "bench" / "headline_readme.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_readme_performance_paragraph_is_generated_from_headline():
    hr = _readme_script()
    text = (ROOT / "README.md").read_text()
    assert hr.update(text, hr.paragraph(HEADLINE)) == text, \
        "README differs from HEADLINE.json: run python3 bench/headline_readme.py"
    para = text.split(hr.BEGIN)[1].split(hr.END)[0]
    for key, v in HEADLINE["ratios"].items():
        if v is not None:
            assert hr.value(key, v) in para
    if HEADLINE.get("note"):
        assert "**Measured by an earlier method" in para and "not comparable" in para


def test_readme_speaks_speed_ratios_one_way():
    """README, NOTES and the results README never call a time ratio (ours / theirs) a
    speed: no 'Nx slower' and no 'convgpu / torch' ratio."""
    for path in (ROOT / "README.md", ROOT / "bench" / "NOTES.md", RESULTS / "README.md"):
        text = path.read_text()
        assert not re.search(r"\d(\.\d+)?x slower", text), path
        assert "convgpu / torch" not in text, path


def test_summarize_merges_a_run_split_over_stage_files(tmp_path):
    """gpu_check.sh writes one JSON per benchmark stage; summarize.py merges them into the
    file to commit, and the headline of the parts equals that of the whole."""
    spec = importlib.util.spec_from_file_location("summarize", ROOT / "bench" / "summarize.py")
    summarize = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(summarize)
    run = json.loads((RESULTS / HEADLINE["run"]).read_text())
    parts = []
    for i, keep in enumerate((lambda r: r["op"] == "gemm", lambda r: r["op"] != "gemm")):
        p = tmp_path / f"bench_{i}.json"
        p.write_text(json.dumps(dict(run, results=[r for r in run["results"] if keep(r)])))
        parts.append(str(p))
    train = RESULTS / (HEADLINE["run"][:-len(".json")] + "_train.log")
    merged, head = tmp_path / "bench.json", tmp_path / "HEADLINE.json"
    assert summarize.main(parts + ["--merged", str(merged), "--train", str(train),
                                   "--headline", str(head)]) == 0
    assert len(json.loads(merged.read_text())["results"]) == len(run["results"])
    assert json.loads(head.read_text())["ratios"] == HEADLINE["ratios"]
