"""convgpu bench's float16 / bfloat16 and NHWC rows (issue 19) without a GPU: the stages run
through the stand-in CuPy (kernels in the host emulation) on tiny shapes, each row validated
with the half bounds before it is timed (a wrong result is a FAIL row, never timed); the
network totals and the headline keep each dtype and layout apart; the command line refuses
a bad --dtype / --layout, or pooling rows in a half type, in one line before any launch."""
import json
import subprocess
import sys

import pytest

from convgpu.tools import bench
from convgpu.tools.bench import precision as PR
from test_bench_scripts import ROOT, run_script

STAGES = """
import numpy as np
import convgpu
from convgpu.tools import bench
from convgpu.tools.bench.stages_as import bench_conv_as, bench_gemm_as
from convgpu.tools.shapes import ConvShape
suite = [ConvShape('tiny', 2, 8, 6, 8, 3, 1, 1)]
t = bench.Timer(reps=2, flush_bytes=1024)
f = ['cuda:implicit_gemm']
rows = bench_conv_as(t, suite, 'bfloat16', 'NCHW', impl_filter=f)
rows += bench_conv_as(t, suite, 'bfloat16', 'NHWC', impl_filter=['cuda:'])
rows += bench_conv_as(t, suite, 'float16', 'NHWC', ('conv2d',), impl_filter=['cuda:fft'])
rows += bench_conv_as(t, suite, 'float32', 'NHWC', ('conv2d', 'conv2d_backward_weight'),
                      impl_filter=['cuda:implicit_gemm_nhwc'])
rows += bench_gemm_as(t, [(64, 32, 48)], 'float16') + bench_gemm_as(t, [(16, 24, 40)], 'bfloat16')
good = convgpu.conv2d
convgpu.conv2d = lambda *a, **k: good(*a, **k) * 1.05      # 5% off: past any half bound
rows += bench_conv_as(t, suite, 'bfloat16', 'NCHW', ('conv2d',), impl_filter=f)
for r in rows:
    print('ROW', r.op, '|', r.impl, '|', r.dtype, '|', r.layout, '|', r.status[:60], '|',
          r.median_ms is not None, r.batch_ms is not None, r.tflops is not None)
"""


@pytest.fixture(scope="module")
def stage_rows():
    out = run_script("-c", STAGES)
    rows = [tuple(c.strip() for c in line[4:].split("|")) for line in out.splitlines()
            if line.startswith("ROW ")]
    assert rows, out
    return rows


def test_half_conv_rows_validated_then_timed(stage_rows):
    ok = [r for r in stage_rows if r[4] == "ok"]
    for op in ("conv2d", "conv2d_backward_input", "conv2d_backward_weight"):
        assert (op, "cuda:implicit_gemm_mma16", "bfloat16", "NCHW", "ok", "True True True") in \
            ok, (op, stage_rows)
    for op in ("conv2d", "conv2d_backward_weight"):
        assert (op, "cuda:implicit_gemm_nhwc", "float32", "NHWC", "ok", "True True True") in ok


def test_half_nhwc_rows_time_the_native_kernels(stage_rows):
    """bfloat16 NHWC among every cuda implementation (gpu_check.sh's resnet50_bf16 stage:
    --impl cuda:): the NHWC tensor-core kernels (implicit_gemm_nhwc_mma16) are timed, each
    pass, beside algo="transpose"; the network totals take each layer's best."""
    ok = [r for r in stage_rows if r[4] == "ok"]
    for op in ("conv2d", "conv2d_backward_input", "conv2d_backward_weight"):
        for impl in ("cuda:implicit_gemm_nhwc_mma16", "cuda:transpose"):
            assert (op, impl, "bfloat16", "NHWC", "ok", "True True True") in ok, (op, impl)
    assert {r[1] for r in stage_rows if r[2:4] == ("bfloat16", "NHWC")} == {
        "cuda:implicit_gemm_nhwc_mma16", "cuda:transpose"}, stage_rows


def test_a_dtype_and_layout_nothing_serves_is_said(stage_rows):
    """float16 NHWC among the fft kernels: none serves it (they are NCHW float32 / float64;
    algo="transpose", which does, is filtered out): one row says so, untimed."""
    row = [r for r in stage_rows if r[2:4] == ("float16", "NHWC")]
    assert len(row) == 1 and row[0][4].startswith("not served: no device implementation")
    assert row[0][5] == "False False False"


def test_half_gemm_rows(stage_rows):
    for dt in ("float16", "bfloat16"):
        assert ("gemm", "cuda:gemm_mma16", dt, "NCHW", "ok", "True True True") in stage_rows


def test_a_wrong_half_result_fails_and_is_not_timed(stage_rows):
    bad = stage_rows[-1]
    assert bad[:3] == ("conv2d", "cuda:implicit_gemm_mma16", "bfloat16")
    assert bad[4].startswith("FAIL norm-wise") and bad[5] == "False False False", bad


TORCH_PATH = """
import torch
from convgpu.tools import bench
from convgpu.tools.bench import stages_as
from convgpu.tools.shapes import ConvShape
stages_as._torch = lambda: torch            # the device path's torch operands, on the CPU
stages_as.DEVICE = 'cpu'
suite = [ConvShape('tiny', 2, 8, 6, 8, 3, 1, 1)]
t = bench.Timer(reps=2, flush_bytes=1024)
rows = stages_as.bench_conv_as(t, suite, 'bfloat16', 'NCHW', ('conv2d', 'conv2d_backward_input'),
                               impl_filter=['cuda:implicit_gemm'])
rows += stages_as.bench_conv_as(t, suite, 'float32', 'NHWC', ('conv2d_backward_weight',),
                                impl_filter=['cuda:implicit_gemm_nhwc'])
rows += stages_as.bench_gemm_as(t, [(64, 32, 48)], 'bfloat16')
from convgpu.tools.shapes import PoolShape
rows += stages_as.bench_pool_norm_as(t, [PoolShape('tinypool', 2, 16, 9, 3, 2, 1, True)], [],
                                     'bfloat16', 'NHWC', impl_filter=['cuda:direct_nhwc',
                                                                      'cuda:gather_nhwc'])
for r in rows:
    print('ROW', r.op, '|', r.impl, '|', r.dtype, '|', r.layout, '|', r.status[:60], '|',
          r.median_ms is not None, r.vs_cudnn is not None, (r.extra or {}).get('baseline'))
"""


POOL_NORM = """
import convgpu
from convgpu.tools import bench
from convgpu.tools.bench.stages_as import bench_pool_norm_as
from convgpu.tools.shapes import PoolShape
t = bench.Timer(reps=2, flush_bytes=1024)
pools = [PoolShape('tinypool', 2, 16, 9, 3, 2, 1, True)]
norms = [('tinybn', (2, 16, 5, 6)), ('bn1d', (6, 16))]
rows = bench_pool_norm_as(t, pools, norms, 'bfloat16', 'NHWC', impl_filter=['cuda:'])
rows += bench_pool_norm_as(t, pools, norms, 'float16', 'NCHW', impl_filter=['cuda:'])
rows += bench_pool_norm_as(t, pools, norms[:1], 'float32', 'NHWC', impl_filter=['cuda:'])
good = convgpu.batch_norm
convgpu.batch_norm = lambda *a, **k: (lambda r: (r[0] * 1.05,) + r[1:])(good(*a, **k))
rows += bench_pool_norm_as(t, [], norms[:1], 'bfloat16', 'NHWC', impl_filter=['cuda:'])
for r in rows:
    print('ROW', r.op, '|', r.impl, '|', r.dtype, '|', r.layout, '|', r.status[:40], '|',
          r.median_ms is not None and r.gbps is not None)
"""


def test_half_pool_and_norm_rows_validated_then_timed():
    """Max pooling and batch norm in the other pairs: each device implementation validated on
    the whole problem (the maximum and its index exactly, the rest within the bound), then
    timed; a batch norm 5% off is a FAIL row, not timed; a BatchNorm1d has no NHWC row."""
    out = run_script("-c", POOL_NORM)
    rows = [tuple(c.strip() for c in line[4:].split("|")) for line in out.splitlines()
            if line.startswith("ROW ")]
    ok = [r[:4] for r in rows if r[4:] == ("ok", "True")]
    for op, algo in (("max_pool2d", "direct_nhwc"), ("max_pool2d_backward", "gather_nhwc"),
                     ("batch_norm", "split"), ("batch_norm_backward", "split")):
        assert (op, f"cuda:{algo}", "bfloat16", "NHWC") in ok, rows
        assert (op, f"cuda:{algo}", "float32", "NHWC") in ok, rows
    for op, algo in (("max_pool2d", "direct"), ("max_pool2d_backward", "gather")):
        assert (op, f"cuda:{algo}", "float16", "NCHW") in ok, rows
    assert ok.count(("batch_norm", "cuda:split", "float16", "NCHW")) == 2      # both norms
    assert ok.count(("batch_norm", "cuda:split", "bfloat16", "NHWC")) == 1     # not bn1d
    assert rows[-2][:4] == ("batch_norm", "cuda:split", "bfloat16", "NHWC")
    assert rows[-2][4].startswith("FAIL element-wise") and rows[-2][5] == "False", rows
    assert len(ok) == len(rows) - 1, rows


def test_the_torch_path_both_sides_on_the_same_tensors():
    """With a torch (here the CPU build standing in for CUDA), both sides get the same torch
    tensors: bfloat16 ones (CuPy 13 has none), channels_last ones for NHWC, which convgpu
    runs in its NHWC kernels; the cuDNN columns (no TF32 one for half) and ours' ratio."""
    out = run_script("-c", TORCH_PATH)
    rows = {tuple(c.strip() for c in line[4:].split("|")) for line in out.splitlines()
            if line.startswith("ROW ")}
    for op in ("conv2d", "conv2d_backward_input"):
        assert (op, "cuda:implicit_gemm_mma16", "bfloat16", "NCHW", "ok", "True True cudnn") \
            in rows, (op, out)
        assert (op, "cudnn", "bfloat16", "NCHW", "ok", "True False None") in rows
        assert not any(r[:3] == (op, "cudnn_tf32", "bfloat16") for r in rows)
    op = "conv2d_backward_weight"
    assert (op, "cuda:implicit_gemm_nhwc", "float32", "NHWC", "ok", "True True cudnn") in rows
    assert (op, "cuda:implicit_gemm_nhwc_tf32", "float32", "NHWC", "ok",
            "True True cudnn_tf32") in rows
    assert ("gemm", "cuda:gemm_mma16", "bfloat16", "NCHW", "ok", "True True cublas") in rows
    assert ("gemm", "cublas", "bfloat16", "NCHW", "ok", "True False None") in rows
    for op, algo in (("max_pool2d", "direct_nhwc"), ("max_pool2d_backward", "gather_nhwc")):
        assert (op, f"cuda:{algo}", "bfloat16", "NHWC", "ok", "True True torch") in rows, out
        assert (op, "torch", "bfloat16", "NHWC", "ok", "True False None") in rows


RUN = """
import sys
import convgpu.core.env as E
from convgpu.tools.bench import method, runner
E.gpu_count = lambda: 1                     # the device run's stages and JSON, emulated
runner.ceilings = lambda timer: {"copy_GBps": 1.0, "sgemm_TFLOPs": 1.0, "fma_TFLOPs": 1.0}
runner.Timer = lambda: method.Timer(reps=2, flush_bytes=1024)
runner.run(json_path=sys.argv[1], shape_specs=["conv:N=2,C=8,H=6,K=8,R=3,pad=1"],
           dtypes=["float32", "bfloat16"], layouts=["NHWC", "NCHW"],
           ops=["conv2d", "conv2d_backward"], impl=["cuda:implicit_gemm"], progress=print)
"""


def test_a_run_times_every_dtype_and_layout_pair(tmp_path):
    """run(dtypes=, layouts=) on the device path: each pair's stages once, float32 NCHW by
    the original stages (no half-only kernel among its rows), the JSON with every row."""
    path = tmp_path / "run.json"
    run_script("-c", RUN, str(path))
    doc = json.loads(path.read_text())
    assert doc["stage_errors"] == []
    got = {(r["op"], r["impl"], r["dtype"], r["layout"]): r["status"] for r in doc["results"]}
    for op in ("conv2d", "conv2d_backward_input", "conv2d_backward_weight"):
        assert got[(op, "cuda:implicit_gemm", "float32", "NCHW")] == "ok"
        assert got[(op, "cuda:implicit_gemm_nhwc", "float32", "NHWC")] == "ok"
        assert got[(op, "cuda:implicit_gemm_mma16", "bfloat16", "NCHW")] == "ok"
        assert got[(op, "cuda:implicit_gemm_nhwc_mma16", "bfloat16", "NHWC")] == "ok"
        assert (op, "cuda:implicit_gemm_mma16", "float32", "NCHW") not in got
    assert len(got) == len(doc["results"])                  # no pair timed twice


def test_time_op_in_a_half_type_and_layout():
    code = ("from convgpu.tools import bench; "
            "rows = bench.time_op('conv:N=2,C=8,H=6,K=8,R=3,pad=1', dtype='bfloat16', "
            "ops=['conv2d'], impl=['cuda:implicit_gemm'], "
            "timer=bench.Timer(reps=2, flush_bytes=1024)); "
            "[print('ROW', r['op'], r['impl'], r['dtype'], r['layout'], r['status']) "
            "for r in rows]")
    out = run_script("-c", code)
    assert "ROW conv2d cuda:implicit_gemm_mma16 bfloat16 NCHW ok" in out, out
    assert "conv2d_backward" not in out
    with pytest.raises(ValueError, match="device timings against cuDNN, and no GPU"):
        bench.time_op("conv:N=2,C=8,H=6,K=8,R=3,pad=1", dtype="float16", layout="NHWC")
    with pytest.raises(ValueError, match="device timings against cuDNN, and no GPU"):
        bench.time_op("pool:N=1,C=2,H=8,k=2", dtype="float16")
    with pytest.raises(ValueError, match="dtype must be one of"):
        bench.time_op("conv:N=2,C=8,H=6,K=8,R=3,pad=1", dtype="half")


def test_the_half_check_uses_the_half_bounds():
    """bounds.tolerance / half_bound, not the float32 tolerance: a bfloat16 result within the
    bound passes, the same result 2 u_h further off fails."""
    import numpy as np
    from convgpu import reference
    rng = np.random.default_rng(0)
    dt = PR.np_dtype("bfloat16")
    x = rng.uniform(-1, 1, (1, 4, 5, 5)).astype(dt).astype(np.float64)
    w = rng.uniform(-1, 1, (3, 4, 3, 3)).astype(dt).astype(np.float64)
    kw = dict(stride=1, padding=1, dilation=1, groups=1)
    ref = reference.conv2d(x, w, None, (1, 1), (1, 1), (1, 1), 1)
    got = ref.astype(dt).astype(np.float64)                 # rounded once: what ours gives
    assert PR.conv_check(got, ref, "conv2d", "implicit_gemm_mma16", dt, x, w, None, kw) is None
    off = got * (1 + 8 * 2.0 ** -8)
    assert PR.conv_check(off, ref, "conv2d", "implicit_gemm_mma16", dt, x, w, None,
                         kw).startswith("FAIL")
    assert PR.conv_check(got, ref, "conv2d", "implicit_gemm", np.float32, x, w, None,
                         kw).startswith("FAIL rel err")     # float32's 1e-5 is no half bound


def _row(op, shape, impl, ms, dtype="float32", layout="NCHW", suite="resnet50", count=1):
    return {"op": op, "shape": shape, "impl": impl, "dtype": dtype, "layout": layout,
            "status": "ok", "median_ms": ms, "suite": suite, "count": count,
            "vs_cudnn": None, "tflops": None, "gbps": None}


def _doc(rows):
    return {"device": "gpu", "environment": {"commit": "c", "source_hash": "s", "device": "d",
                                             "time": "t"},
            "method": bench.METHOD, "ceilings": {}, "results": rows}


def test_network_totals_and_headline_keep_dtypes_and_layouts_apart():
    rows = [_row("conv2d", "a", "cudnn", 2.0), _row("conv2d", "a", "cuda:implicit_gemm", 4.0),
            # half NHWC: cuDNN 1.0 + 3 * 0.5 against ours 2.0 + 3 * 1.0
            _row("conv2d", "a", "cudnn", 1.0, "bfloat16", "NHWC"),
            _row("conv2d", "b", "cudnn", 0.5, "bfloat16", "NHWC", count=3),
            _row("conv2d", "a", "cuda:x", 2.0, "bfloat16", "NHWC"),
            _row("conv2d", "b", "cuda:x", 1.0, "bfloat16", "NHWC", count=3),
            # the same dtype in NCHW is not the headline's
            _row("conv2d", "a", "cudnn", 9.0, "bfloat16", "NCHW"),
            _row("conv2d", "a", "cuda:y", 1.0, "bfloat16", "NCHW"),
            _row("conv2d_backward_input", "a", "cudnn", 3.0, "bfloat16", "NHWC"),
            _row("conv2d_backward_input", "a", "cuda:x", 2.0, "bfloat16", "NHWC"),
            _row("gemm", "4096x4096x4096", "cublas", 1.0, "float16"),
            _row("gemm", "4096x4096x4096", "cuda:gemm_mma16", 1.25, "float16"),
            _row("gemm", "4096x4096x4096", "cublas", 4.0),
            _row("gemm", "4096x4096x4096", "cuda:gemm_vec", 5.0)]
    nets = bench.network_totals(rows)
    assert nets["resnet50 conv2d"]["ratio"] == pytest.approx(0.5)
    assert nets["resnet50 conv2d bfloat16 NHWC"]["ratio"] == pytest.approx(2.5 / 5.0)
    assert nets["resnet50 conv2d bfloat16"]["ratio"] == pytest.approx(9.0)
    assert "resnet50 conv2d tf32 bfloat16 NHWC" not in nets      # no TF32 for half types
    r = bench.headline(_doc(rows))["ratios"]
    assert r["resnet50_fwd_bf16"] == pytest.approx(0.5)
    assert r["resnet50_bwd_input_bf16"] == pytest.approx(1.5)
    assert r["hgemm_4096"] == pytest.approx(0.8) and r["sgemm_4096"] == pytest.approx(0.8)
    assert r["resnet50_fwd_fp32"] == pytest.approx(0.5)
    for k in ("resnet50_fwd_fp16", "resnet50_bwd_weight_bf16"):
        assert k in r and r[k] is None                           # absent: None, not missing
    assert set(r) == set(bench.HEADLINE_KEYS) and set(bench.HEADLINE_MEANING) == set(r)


def test_headline_of_a_run_without_half_rows_has_the_keys_as_none():
    r = bench.headline(_doc([_row("conv2d", "a", "cudnn", 2.0),
                             _row("conv2d", "a", "cuda:implicit_gemm", 4.0)]))["ratios"]
    for k in ("resnet50_fwd_fp16", "resnet50_fwd_bf16", "resnet50_bwd_input_bf16",
              "resnet50_bwd_weight_bf16", "hgemm_4096"):
        assert r[k] is None


def test_readme_says_the_half_keys_are_not_yet_measured():
    import importlib.util
    spec = importlib.util.spec_from_file_location("hr", ROOT / "bench" / "headline_readme.py")
    hr = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hr)
    assert list(hr.PHRASES) == list(bench.HEADLINE_KEYS)
    para = (ROOT / "README.md").read_text().split(hr.BEGIN)[1].split(hr.END)[0]
    tail = para.split("Not yet measured")[1]
    for k in ("resnet50_fwd_fp16", "resnet50_fwd_bf16", "resnet50_bwd_input_bf16",
              "resnet50_bwd_weight_bf16", "hgemm_4096"):
        assert hr.PHRASES[k] in tail, k
    h = {"device": "d", "commit": "c", "date": "2026-12-06", "method": bench.METHOD,
         "ratios": {"sgemm_4096": 0.9, "hgemm_4096": 0.75}}       # a run with some keys
    text = hr.paragraph(h)
    assert "- HGEMM 4096^3 (float16) against cuBLAS: 0.75x" in text
    assert hr.PHRASES["resnet50_fwd_bf16"] in text.split("Not yet measured")[1]


def test_summarize_prints_the_half_rows(tmp_path):
    rows = [_row("conv2d", "a", "cudnn", 1.0, "bfloat16", "NHWC"),
            _row("conv2d", "a", "cuda:x", 2.0, "bfloat16", "NHWC"),
            dict(_row("gemm", "4096x4096x4096", "cuda:gemm_mma16", 1.25, "float16"),
                 vs_cudnn=0.8)]
    p = tmp_path / "run.json"
    p.write_text(json.dumps(_doc(rows)))
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "summarize.py"), str(p),
                        "--headline", str(tmp_path / "H.json")], capture_output=True, text=True,
                       cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "resnet50 conv2d bfloat16 NHWC" in r.stdout and "0.500x" in r.stdout
    assert "cuda:gemm_mma16" in r.stdout and "float16" in r.stdout and "0.800x cuBLAS" in r.stdout
    h = json.loads((tmp_path / "H.json").read_text())["ratios"]
    assert h["resnet50_fwd_bf16"] == pytest.approx(0.5) and h["hgemm_4096"] is None


@pytest.mark.parametrize("argv, words", [
    (["--dtype", "float8"], "argument --dtype: invalid choice: 'float8'"),
    (["--dtype"], "argument --dtype: expected at least one argument"),
    (["--layout", "nhwc"], "argument --layout: invalid choice: 'nhwc'"),
    (["--dtype", "float16", "--ops", "pooling"], "argument --ops: invalid choice: 'pooling'"),
])
def test_bad_dtype_or_layout_is_one_line_exit_2(argv, words):
    r = subprocess.run([sys.executable, "-m", "convgpu", "bench", *argv], capture_output=True,
                       text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 2, r.stdout + r.stderr
    err = [line for line in r.stderr.splitlines() if "error" in line]
    assert len(err) == 1 and words in err[0], r.stderr
    assert "Traceback" not in r.stderr and r.stdout == ""


def test_cpu_run_of_half_rows_times_nothing_and_says_why():
    lines = []
    doc = bench.run(dtypes=["bfloat16"], layouts=["NHWC"], quick=True, shapes=["conv1"],
                    progress=lines.append)
    assert doc["results"] == []
    assert any("bfloat16 NHWC: device rows only" in s for s in doc["skipped"])
    assert any("nothing was timed" in s for s in lines)
    with pytest.raises(ValueError, match="dtype must be one of"):
        bench.run(dtypes=["int8"], progress=lines.append)
    with pytest.raises(ValueError, match="layout must be NCHW or NHWC"):
        bench.run(layouts=["NWHC"], progress=lines.append)


def test_keys_of_the_other_precisions():
    assert PR.suffix("float32", "NCHW") == ""
    assert PR.suffix("bfloat16", "NHWC") == " bfloat16 NHWC"
    assert PR.suffix("float32", "NHWC") == " float32 NHWC"
    assert PR.is_half("float16") and not PR.is_half("float32")
