"""`convgpu bench`: kernel timings against cuDNN / cuBLAS (through torch) on the layers of
real networks, and `time_op` for one problem of one's own.

The method (ARCHITECTURE, Benchmarks), the same for both sides:

- the baseline at its best: `torch.backends.cudnn.benchmark = True` with
  `benchmark_limit = 0` (every cuDNN algorithm tried, not the first 10 heuristics), TF32 off
  for the FP32 rows; cuDNN with TF32 allowed is the baseline of our TF32 rows; torch's
  out-of-the-box setting (TF32 on for convolutions, no benchmark) is its own column
  (`torch_default`). The kernels cuDNN ran are recorded (torch.profiler) in the row.
- two timings of each call, after warm-up: `cold` (the L2 flushed by rewriting a 256 MiB
  buffer, the device synchronised, then CUDA events around the one call, so the host's
  dispatch is inside the span) and `batch` (K calls back to back between two events, time
  per call: host work shows where it exceeds the GPU's). The ratios and the headline use
  `cold`; `median_ms`, `q20_ms`, `q80_ms` are cold, `batch_ms` the batch per-call time.
- every implementation is validated against the float64 reference before it is timed (a
  failing one is reported, never timed).
- a speed ratio is always the baseline's time / ours (above 1: we are faster): `vs_cudnn`
  (cold), `vs_cudnn_batch`; per network, the count-weighted sum of each layer's time, ours
  the best implementation per layer (what algo="auto" keeps), against cuDNN's.
- TFLOP/s counts 2*N*K*(C/g)*R*S*P*Q for conv; GB/s each input read once, each output
  written once; the machine's ceilings (copy bandwidth, our FP32 FMA rate, cuBLAS SGEMM and
  TF32 GEMM) are measured in the same run.
- each run records the commit and `source_hash` (convgpu.core.provenance).

    convgpu bench [--quick] [--suite NAME ...] [--shape SPEC ...] [--json PATH] [--plot PATH]
                  [--shapes S ...] [--ops OP ...] [--impl I ...]
                  [--dtype float32|float16|bfloat16 ...] [--layout NCHW|NHWC ...]

Other dtypes and layouts than float32 NCHW (precision, stages_as): the GEMM and conv rows
against cuBLAS / cuDNN in the same precision and layout, validated with the half bounds.

Python: `convgpu.tools.bench.time_op("conv:N=32,C=64,H=56,K=64,R=3,pad=1")` returns the rows of
one problem (the same records as the JSON's `results`). Without a GPU the numpy backend is
timed with torch's CPU ops beside it (when torch is importable), and the run says so.

The modules: method (the timer, the rows, counts and labels), baseline (cuDNN/cuBLAS
through torch and the machine's ceilings), stages (one GPU stage per op family), runner (a
run, the CPU fallback, time_op), report (network totals, tables, plot, the headline), tune;
precision and stages_as (the float16 / bfloat16 and NHWC rows).
"""
from convgpu.tools.bench.baseline import (CUDNN_MODES, baseline_unavailable, ceilings,
                                          cudnn_mode, fma_rate, kernel_names)
from convgpu.tools.bench.method import (BATCH_CALLS, METHOD, OLD_METHOD, Progress, Result,
                                        Timer, conv_bytes, conv_flops, conv_label,
                                        environment, norm_bytes, pool_bytes, pool_label,
                                        quantiles, ratio, shape_label, step)
from convgpu.tools.bench.report import (HEADLINE_KEYS, HEADLINE_MEANING, best_per_layer,
                                        format_networks, format_table, headline, lenet_ratio,
                                        network_totals, plot)
from convgpu.tools.bench.runner import ALL_OPS, run, run_cpu, time_op
from convgpu.tools.bench.stages import (bench_conv, bench_conv_backward, bench_gemm,
                                        bench_norm, bench_pool)
from convgpu.tools.bench.tune import TUNE_PASSES, tune

__all__ = ["ALL_OPS", "BATCH_CALLS", "CUDNN_MODES", "HEADLINE_KEYS", "HEADLINE_MEANING",
           "METHOD", "OLD_METHOD", "Progress", "Result", "TUNE_PASSES", "Timer",
           "baseline_unavailable", "bench_conv", "bench_conv_backward", "bench_gemm",
           "bench_norm", "bench_pool", "best_per_layer", "ceilings", "conv_bytes",
           "conv_flops", "conv_label", "cudnn_mode", "environment", "fma_rate",
           "format_networks", "format_table", "headline", "kernel_names", "lenet_ratio",
           "network_totals", "norm_bytes", "plot", "pool_bytes", "pool_label", "quantiles",
           "ratio", "run", "run_cpu", "shape_label", "step", "time_op", "tune"]
