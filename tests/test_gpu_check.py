"""bench/gpu_check.sh without a GPU: its stage plan (priority order, budgets that fit the
window, commands that the command line accepts) and its time keeping (a stage stopped at its
limit, the stages after it cut, both listed in the summary), the latter with stand-in
programs on PATH."""
import os
import re
import shlex
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "bench" / "gpu_check.sh"
ORDER = ["describe", "gpu_tests", "memcheck", "racecheck", "resnet50", "gemm_pool_norm",
         "train", "resnet50_bf16", "resnet50_fp16", "pool_norm_bf16", "networks",
         "stage_times", "tf32_rounding", "ncu"]
# the stages every run must have time for; the rest run as time allows
MUST = ORDER[:ORDER.index("train") + 1]


def plan():
    r = subprocess.run(["bash", str(SCRIPT)], env=dict(os.environ, GPU_CHECK_DRY_RUN="1"),
                       capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    stages = []
    for line in r.stdout.splitlines():
        m = re.match(r"stage (\S+)\s+budget\s+(\d+)s\s+log (\S+)\s+(.*)$", line)
        if m:
            stages.append((m.group(1), int(m.group(2)), m.group(3), m.group(4)))
    total = re.search(r"budget (\d+)s, (\d+)s of it kept", r.stdout)
    return stages, int(total.group(1)), int(total.group(2))


def test_stage_plan_in_priority_order_within_one_device_call():
    stages, budget, reserve = plan()
    assert [s[0] for s in stages] == ORDER
    assert budget <= 530                          # one 540 s device call, 10 s to spare
    assert sum(b for name, b, _, _ in stages if name in MUST) + reserve <= budget
    gpu = dict((s[0], s) for s in stages)["gpu_tests"]
    assert gpu[1] >= 1.2 * 144                    # the tier took 144 s at 9bcca5b
    # 202 tests then; test_gpu_half.py (42, 10 of them the NHWC half convolutions) and
    # test_nhwc_gpu.py (about 75) joined since: the budget covers them at that run's rate
    # per test
    assert gpu[1] >= 144 / 202 * (202 + 42 + 75)
    assert "-m gpu" in gpu[3]


def test_half_rows_in_the_plan():
    """The issue-19 rows: HGEMM beside the FP32 GEMM, ResNet-50 bfloat16 (forward and both
    gradients) and float16 (forward), NHWC on both sides, each with its JSON."""
    cmds = {s[0]: s[3] for s in plan()[0]}
    assert "--dtype float32 float16" in cmds["gemm_pool_norm"]
    bf16, fp16 = cmds["resnet50_bf16"], cmds["resnet50_fp16"]
    assert "--dtype bfloat16 --layout NHWC" in bf16 and "conv2d conv2d_backward" in bf16
    assert "--dtype float16 --layout NHWC" in fp16 and "--ops conv2d " in fp16
    assert "bench_resnet50_bf16.json" in bf16 and "bench_resnet50_fp16.json" in fp16


def test_stage_commands_exist_and_parse(monkeypatch):
    from convgpu.tools import cli
    seen = []
    monkeypatch.setattr(cli, "cmd_bench", lambda args: seen.append(args) or 0)
    stages, _, _ = plan()
    for name, _, _, cmd in stages:
        argv = shlex.split(cmd)
        for a in argv:
            if a.startswith("bench/"):
                assert (ROOT / a).is_file(), (name, a)
        if argv[:3] == ["python3", "-m", "convgpu"]:
            assert cli.main(argv[3:]) == 0, name
    suites = [s for a in seen for s in (a.suite or [])]
    assert suites == ["resnet50", "resnet50", "resnet50", "vgg16", "mobilenetv2", "alexnet"]
    assert [(a.dtype, a.layout) for a in seen][:5] == [
        (["float32"], ["NCHW"]), (["float32", "float16"], ["NCHW"]),
        (["bfloat16"], ["NHWC"]), (["float16"], ["NHWC"]), (["bfloat16"], ["NHWC"])]
    assert seen[4].ops == ["pool", "norm"]
    assert all(a.json for a in seen)


def test_a_stage_past_its_limit_is_stopped_and_the_rest_cut(tmp_path):
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "python3").write_text('#!/bin/sh\ncase "$*" in *pytest*) exec sleep 100;; '
                                  '*) echo "fake python3 $*";; esac\n')
    (fake / "nvidia-smi").write_text("#!/bin/sh\necho 'name, driver'\necho 'Stand-in GPU, 0'\n")
    for f in fake.iterdir():
        f.chmod(0o755)
    out = tmp_path / "out"
    out.mkdir()
    env = dict(os.environ, PATH=f"{fake}:/usr/bin:/bin", OUT=str(out), BUDGET="28")
    r = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True,
                       timeout=120, cwd=ROOT)
    text = r.stdout
    assert "===== summary =====" in text, text + r.stderr
    assert re.search(r"^gpu_tests\s+\d+\s+\d+\s+stopped at its limit", text, re.M), text
    assert "cut: gpu_tests (stopped at its" in text
    for name in ORDER[ORDER.index("gpu_tests") + 1:]:
        assert f"cut: {name} (not started" in text, (name, text)
    assert "bench: no JSON" in text


def test_only_runs_the_named_stages(tmp_path):
    """ONLY="a b": a second call for what the first one's budget cut runs those stages alone,
    the others listed as skipped."""
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "python3").write_text('#!/bin/sh\necho "fake python3 $*"\n')
    (fake / "python3").chmod(0o755)
    out = tmp_path / "out"
    out.mkdir()
    env = dict(os.environ, PATH=f"{fake}:/usr/bin:/bin", OUT=str(out),
               ONLY="resnet50_bf16 resnet50_fp16")
    r = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True,
                       timeout=120, cwd=ROOT)
    text = r.stdout
    assert "===== summary =====" in text, text + r.stderr
    for name in ORDER:
        ran = name in ("resnet50_bf16", "resnet50_fp16")
        assert bool(re.search(rf"^{name}\s+\d+\s+\d+\s+ok", text, re.M)) == ran, (name, text)
        assert bool(re.search(rf"^{name}\s+-\s+-\s+skipped: not in ONLY", text, re.M)) != ran
    assert "--dtype bfloat16 --layout NHWC" in (out / "bench.log").read_text()
