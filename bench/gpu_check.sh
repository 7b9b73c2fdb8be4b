#!/usr/bin/env bash
# The project's one device script (shared GPU.md): stages in priority order, each with its
# own time budget, the whole under BUDGET seconds (530: one 540 s device call with 10 s to
# spare, install and compiles included). A stage gets its budget or what is left before the deadline (less the
# summary's reserve), whichever is less; one that would get under 10 s is cut, one that
# reaches its limit is stopped; the summary lists both. Logs and JSON under $OUT.
#
#   bench/gpu_check.sh                      the run
#   GPU_CHECK_DRY_RUN=1 bench/gpu_check.sh  print the stage plan (name, budget, command) only
#   ONLY="resnet50_bf16 resnet50_fp16" bench/gpu_check.sh   those stages only (a second call
#                                           for what the first one's budget cut)
#
# On a machine without .git, set CONVGPU_COMMIT to the commit being measured; the source
# hash of kernels/ and ops/ is computed from the files either way.
set -uo pipefail
cd "$(dirname "$0")/.."
DRY=${GPU_CHECK_DRY_RUN:-}
OUT=${OUT:-$( [[ -n $DRY ]] && echo /tmp/gpu_check_plan || mktemp -d )}
BUDGET=${BUDGET:-530}
ONLY=${ONLY:-}
RESERVE=15                        # kept for the summary at the end
export PYTHONUNBUFFERED=1 CUPY_CACHE_DIR=/tmp/cupy_cache NUMBA_CACHE_DIR=/tmp/numba_cache
T0=$(date +%s)
DEADLINE=$(( T0 + BUDGET ))
say() { echo "[$(( $(date +%s) - T0 ))s] $*"; }
CUT=()
STAGES=()

# stage NAME BUDGET LOG COMMAND...: run COMMAND (output to $OUT/LOG) within its limit
stage() {
  local name=$1 want=$2 log=$3; shift 3
  if [[ -n $DRY ]]; then
    printf 'stage %-15s budget %4ss  log %-22s %s\n' "$name" "$want" "$log" "$*"
    return 0
  fi
  if [[ -n $ONLY && " $ONLY " != *" $name "* ]]; then
    STAGES+=("$(printf '%-15s %5s %5s  %s' "$name" "-" "-" "skipped: not in ONLY")")
    return 0
  fi
  local left=$(( DEADLINE - RESERVE - $(date +%s) ))
  if (( left < 10 )); then
    CUT+=("$name (not started: ${left}s left of the budget)")
    STAGES+=("$(printf '%-15s %5s %5s  %s' "$name" "-" "-" "cut: no time left")")
    say "stage $name: cut, ${left}s left"
    return 0
  fi
  if ! command -v "$1" >/dev/null; then
    STAGES+=("$(printf '%-15s %5s %5s  %s' "$name" "-" "-" "skipped: $1 not on this machine")")
    say "stage $name: skipped, $1 not on this machine"
    return 0
  fi
  local lim=$(( want < left ? want : left )) t=$(date +%s)
  say "stage $name (limit ${lim}s of its ${want}s)"
  timeout -k 10 "$lim" "$@" >>"$OUT/$log" 2>&1
  local rc=$? used=$(( $(date +%s) - t )) what
  if (( rc == 124 || rc == 137 )); then
    CUT+=("$name (stopped at its ${lim}s limit)"); what="stopped at its limit"
  elif (( rc == 0 )); then what="ok"
  else what="rc=$rc"
  fi
  STAGES+=("$(printf '%-15s %5s %5s  %s' "$name" "$lim" "$used" "$what")")
  tail -n "${TAIL:-25}" "$OUT/$log" | grep -v Warning
  say "stage $name: $what in ${used}s"
}

# 0. install (offline) and describe the machine and the source
if [[ -z $DRY ]]; then
  if ! python3 -m pip install -q --no-deps --no-build-isolation --no-index -e . >/tmp/install.log 2>&1; then
    # fallback: assemble the package from its three folders (see pyproject package-dir)
    mkdir -p /tmp/cgpkg/convgpu
    for f in python/convgpu/*; do ln -sf "$PWD/$f" /tmp/cgpkg/convgpu/; done
    ln -sfn "$PWD/kernels" /tmp/cgpkg/convgpu/kernels
    ln -sfn "$PWD/ops" /tmp/cgpkg/convgpu/ops
    export PYTHONPATH=/tmp/cgpkg
    say "pip install failed; using PYTHONPATH=/tmp/cgpkg"; tail -5 /tmp/install.log
  fi
  say "installed"
fi
stage describe 20 device.txt bash bench/describe_device.sh

# 1. the gpu tier: every registered GPU implementation against the reference (202 tests: 94 s
# at e8f4431, 144 s on a fresh machine at 9bcca5b; test_gpu_half.py's 32 and
# test_nhwc_gpu.py's about 75 joined since: about 220 s fresh at 9bcca5b's 0.71 s a test,
# which was mostly compiling; test_gpu_half_ops.py's 68 small ones add their runs and the
# numba float16 compiles, not NVRTC's: one RawModule per .cu holds the half kernels already.
# Untimed: the first run with them says whether 230 s holds)
stage gpu_tests 230 gpu_tests.log python3 -m pytest tests -m gpu -q -p no:cacheprovider -rfE

# 2. the sanitizer subset: memcheck, then racecheck for the shared-memory kernels
stage memcheck 35 sanitizer.log compute-sanitizer --tool memcheck --report-api-errors no \
  --error-exitcode 9 python3 bench/sanitize_subset.py
stage racecheck 35 sanitizer.log compute-sanitizer --tool racecheck --error-exitcode 9 \
  python3 bench/sanitize_subset.py

# 3. the headline network: ResNet-50's layers, forward and both gradients, cuDNN beside
stage resnet50 110 bench.log python3 -m convgpu bench --suite resnet50 \
  --ops conv2d conv2d_backward --impl cuda: --json "$OUT/bench_resnet50.json"

# 4. GEMM (FP32, TF32 and the float16 HGEMM against cuBLAS in float16), pooling and batch
# norm (the quick sizes; their float16 NCHW rows come last, after every float32 row is saved),
# then the LeNet epoch against torch
stage gemm_pool_norm 55 bench.log python3 -m convgpu bench --quick --ops gemm pool norm \
  --dtype float32 float16 --json "$OUT/bench_gemm_pool_norm.json"
stage train 30 train.log python3 bench/torch_lenet.py --backend cuda --epochs 8

# 5. ResNet-50 in half precision, channels-last on both sides (cuDNN: channels_last torch
# tensors in the same dtype): bfloat16 forward and both gradients, then float16 forward
stage resnet50_bf16 70 bench.log python3 -m convgpu bench --suite resnet50 \
  --ops conv2d conv2d_backward --dtype bfloat16 --layout NHWC --impl cuda: \
  --json "$OUT/bench_resnet50_bf16.json"
stage resnet50_fp16 30 bench.log python3 -m convgpu bench --suite resnet50 --ops conv2d \
  --dtype float16 --layout NHWC --impl cuda: --json "$OUT/bench_resnet50_fp16.json"
# bfloat16 NHWC max pooling and batch norm (ResNet-50's stem pool and norms) against torch's
# and cuDNN's in the same: the vector NHWC kernels' first timing
stage pool_norm_bf16 30 bench.log python3 -m convgpu bench --quick --ops pool norm \
  --dtype bfloat16 --layout NHWC --impl cuda: --json "$OUT/bench_pool_norm_bf16.json"

# 6. the rest, as time allows: the other networks' forward, then the diagnostics
stage networks 90 bench.log python3 -m convgpu bench --suite vgg16 mobilenetv2 alexnet \
  --ops conv2d --impl cuda: --json "$OUT/bench_networks.json"
stage stage_times 40 bench.log python3 bench/stage_times.py
stage tf32_rounding 60 bench.log python3 bench/tf32_rounding.py --rounds 5
stage ncu 75 ncu.txt ncu --clock-control none --target-processes all \
  -k "regex:${NCU_KERNELS:-gemm_pipelined|gemm_vec|implicit_gemm|max_pool2d_fwd|max_pool2d_bwd|conv2d_depthwise|batch_norm}" \
  --section SpeedOfLight --section ComputeWorkloadAnalysis --section MemoryWorkloadAnalysis \
  --section Occupancy --section WarpStateStats --section LaunchStats \
  python3 bench/profile_targets.py

# 7. summary: the stages, what was cut, the headline of this run
if [[ -n $DRY ]]; then
  echo "budget ${BUDGET}s, ${RESERVE}s of it kept for the summary; stages run in this order"
  exit 0
fi
echo "===== summary ====="
head -3 "$OUT/device.txt" 2>/dev/null
printf '%-15s %5s %5s  %s\n' stage limit used result
printf '%s\n' "${STAGES[@]}"
if (( ${#CUT[@]} )); then printf 'cut: %s\n' "${CUT[@]}"; else echo "cut: nothing"; fi
echo "gpu tests: $(grep -E '(passed|failed)' "$OUT/gpu_tests.log" 2>/dev/null | tail -1)"
echo "sanitizer: $(grep -c 'Invalid\|Error' "$OUT/sanitizer.log" 2>/dev/null) error lines, $(grep -ci 'hazard' "$OUT/sanitizer.log" 2>/dev/null) hazard lines"
echo "training (LeNet-5, digits): $(grep -E '^(torch|convgpu|speed)' "$OUT/train.log" 2>/dev/null | tr '\n' ' ')"
shopt -s nullglob
RUNS=("$OUT"/bench_*.json)
if (( ${#RUNS[@]} )); then
  timeout 60 python3 bench/summarize.py "${RUNS[@]}" --merged "$OUT/bench.json" \
    --train "$OUT/train.log" --headline "$OUT/HEADLINE.json"
else
  echo "bench: no JSON (every benchmark stage was cut or failed)"
fi
say "done"
