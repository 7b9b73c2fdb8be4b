"""The benchmark harness's own logic: FLOP and byte counts, quantiles, ratios, the suite,
and the JSON it writes (run here in its CPU mode on one small shape)."""
import io
import json

import numpy as np
import pytest

from convgpu.tools import bench, shapes


def test_conv_flop_and_byte_counts():
    # 2 * N * K * (C/g) * R * S * P * Q, counted by hand: 2*2*6*2*3*3*5*5 = 10800
    assert bench.conv_flops(2, 4, 6, 3, 3, 5, 5, groups=2) == 10800
    # x 2*4*7*7 = 392, w 6*2*3*3 = 108, y 2*6*5*5 = 300 elements, 4 bytes each
    assert bench.conv_bytes(2, 4, 7, 7, 6, 3, 3, 5, 5, 2, 4) == 4 * (392 + 108 + 300)
    assert bench.pool_bytes(100, 25) == {"forward": 400 + 25 * 12, "backward": 25 * 12 + 400}


def test_quantiles_and_ratio():
    q = bench.quantiles([float(v) for v in range(10, 0, -1)])
    assert q == {"median_ms": 5.5, "q20_ms": pytest.approx(2.8), "q80_ms": pytest.approx(8.2)}
    assert bench.ratio(3.0, 1.5) == 2.0          # twice as fast as the baseline


def test_suite_quick_subset_and_filters():
    full = shapes.conv_suite()
    quick = shapes.conv_suite(quick=True)
    names = {s.name for s in full}
    assert {s.name for s in quick} <= names and len(quick) < len(full)
    assert [s.name for s in shapes.conv_suite(filters=["layer4 3x3"])] == [
        "resnet50 layer4 3x3/2 C512 K512 H14", "resnet50 layer4 3x3 C512 K512 H7"]
    assert all(s.ceil_mode for s in shapes.pool_suite(filters=["ceil"]))


def test_cpu_run_writes_json_and_plot(tmp_path):
    out = tmp_path / "b.json"
    png = tmp_path / "b.png"
    pytest.importorskip("matplotlib")
    doc = bench.run(json_path=str(out), plot_path=str(png), quick=True,
                    shapes=["layer4 3x3 C512 K512 H7"], ops=["conv2d"], progress=lambda *a: None)
    saved = json.loads(out.read_text())
    assert saved["device"] == "cpu" and saved == json.loads(json.dumps(doc))
    for key in ("commit", "source_hash", "python", "numpy", "time"):
        assert key in saved["environment"]
    rows = saved["results"]
    assert {r["impl"] for r in rows} >= {"numpy:im2col", "numpy:fft"}
    for r in rows:
        assert set(r) >= {"op", "shape", "impl", "dtype", "status", "median_ms", "q20_ms",
                          "q80_ms", "batch_ms", "tflops", "gbps", "vs_cudnn", "suite", "count"}
        assert r["q20_ms"] <= r["median_ms"] <= r["q80_ms"]
    assert png.stat().st_size > 10_000


def test_unknown_op_is_rejected():
    with pytest.raises(ValueError, match="unknown --ops"):
        bench.run(ops=["conv3d"], progress=lambda *a: None)


class _Stream(io.StringIO):
    def __init__(self, tty):
        super().__init__()
        self._tty = tty

    def isatty(self):
        return self._tty


def test_progress_redraws_one_bar_on_a_terminal_and_writes_lines_elsewhere():
    from convgpu.tools.bench import Progress, step
    tty = _Stream(True)
    p = Progress(tty, width=10)
    step(p, "conv2d", 1, 4, "first shape")
    p("  a timing line")
    step(p, "conv2d", 3, 4, "third shape")
    p.close()
    out = tty.getvalue()
    assert out.count("\n") == 1                          # only the timing line ends a line
    assert "[.....-----]" not in out and "[..........] 1/4" in out and "[#####.....] 3/4" in out
    assert "\r\x1b[2K  a timing line\n" in out           # printed above the bar, bar redrawn
    assert out.endswith("\r\x1b[2K")                     # closing clears the bar
    log = _Stream(False)
    p = Progress(log)
    step(p, "pooling", 2, 5, "x")
    p("  t")
    assert log.getvalue() == "[pooling 2/5] x\n  t\n"
    lines = []
    step(lines.append, "gemm", 1, 1, "y")                # any callable gets a plain line
    assert lines == ["[gemm 1/1] y"]


def test_cpu_run_times_batch_norm():
    doc = bench.run(quick=False, shapes=["layer4 bn3"], ops=["norm"], progress=lambda *a: None)
    rows = [r for r in doc["results"] if r["op"] == "batch_norm"]
    assert rows and rows[0]["impl"] == "numpy:reference" and rows[0]["status"] == "ok"
    assert rows[0]["shape"] == "ResNet-50 layer4 bn3: 2x2048x7x7"
    assert [s[0] for s in shapes.norm_suite(quick=True)] == ["ResNet-50 bn1",
                                                             "ResNet-50 layer4 bn3"]
