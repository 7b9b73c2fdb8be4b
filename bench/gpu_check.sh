#!/usr/bin/env bash
# The project's one device script (shared GPU.md): install, gpu tests, sanitizer subset,
# benchmark, Nsight Compute on the target kernels; logs and JSON under $OUT; a short summary
# last. About 7 minutes on an H100; the steps share one deadline (BUDGET, 540 s by default).
set -uo pipefail
OUT=${OUT:-$(mktemp -d)}
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 CUPY_CACHE_DIR=/tmp/cupy_cache NUMBA_CACHE_DIR=/tmp/numba_cache
T0=$(date +%s)
say() { echo "[$(( $(date +%s) - T0 ))s] $*"; }
# One deadline for the whole script (BUDGET seconds, default 540, inside a 600 s device call):
# a step gets its own limit or what is left after the reserve kept for the steps after it,
# whichever is less (at least 10 s), so a slow step cannot crowd the benchmark out.
BUDGET=${BUDGET:-540}
lim() {  # lim WANT RESERVE (reserves are for BUDGET=540 and scale with it)
  local left=$(( T0 + BUDGET - $2 * BUDGET / 540 - $(date +%s) ))
  (( left < 10 )) && left=10
  echo $(( $1 < left ? $1 : left ))
}

# 1. install (offline) and describe the machine
if ! python3 -m pip install -q --no-deps --no-build-isolation --no-index -e . >/tmp/install.log 2>&1; then
  # fallback: assemble the package from its three folders (see pyproject package-dir)
  mkdir -p /tmp/cgpkg/convgpu
  for f in python/convgpu/*; do ln -sf "$PWD/$f" /tmp/cgpkg/convgpu/; done
  ln -sfn "$PWD/kernels" /tmp/cgpkg/convgpu/kernels
  ln -sfn "$PWD/ops" /tmp/cgpkg/convgpu/ops
  export PYTHONPATH=/tmp/cgpkg
  say "pip install failed; using PYTHONPATH=/tmp/cgpkg"; tail -5 /tmp/install.log
fi
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv | tee "$OUT/device.txt"
python3 -m convgpu info 2>&1 | tee -a "$OUT/device.txt"
# the NVRTC that builds the kernels here (the compile tier pins the same: Makefile RUNTIME_NVRTC)
python3 -c "from cupy.cuda import nvrtc; print('NVRTC', nvrtc.getVersion())" 2>&1 | tee -a "$OUT/device.txt"
python3 -m pip show nvidia-cuda-nvrtc 2>/dev/null | grep -i '^version' | tee -a "$OUT/device.txt"
say "installed"

# 2. gpu tier: every failure listed
timeout $(lim 150 330) python3 -m pytest tests -m gpu -q -p no:cacheprovider -rfE \
  2>&1 | tee "$OUT/gpu_tests.log" | tail -40
GPU_RC=${PIPESTATUS[0]}
say "gpu tests rc=$GPU_RC"

# 3. compute-sanitizer on a small subset (memcheck, then racecheck for the shared-memory kernels)
SAN="not run"
if command -v compute-sanitizer >/dev/null; then
  timeout $(lim 50 290) compute-sanitizer --tool memcheck --report-api-errors no --error-exitcode 9 python3 bench/sanitize_subset.py \
    >/tmp/memcheck.log 2>&1; MC=$?
  timeout $(lim 50 280) compute-sanitizer --tool racecheck --error-exitcode 9 python3 bench/sanitize_subset.py \
    >/tmp/racecheck.log 2>&1; RC=$?
  cat /tmp/memcheck.log /tmp/racecheck.log > "$OUT/sanitizer.log"
  SAN="memcheck rc=$MC ($(grep -c 'Invalid\|Error' /tmp/memcheck.log) error lines), racecheck rc=$RC ($(grep -ci 'hazard' /tmp/racecheck.log) hazard lines)"
  tail -3 /tmp/memcheck.log; tail -3 /tmp/racecheck.log
fi
say "sanitizer: $SAN"

# 4. benchmark (quick suite) with cuDNN beside
# (the Numba direct/GEMM kernels were timed in earlier runs; here the CUDA C ones and Numba FFT)
timeout $(lim 220 195) python3 -m convgpu bench --quick --json "$OUT/bench.json" --plot "$OUT/bench.png" \
  --impl cuda numba:fft \
  2>&1 | tee "$OUT/bench.log" | grep -v Warning
say "bench done"

# 4b. where the time goes inside the FFT and Winograd algorithms (each kernel, GEMM and
# cuFFT call timed with events; the rest is CuPy's array work) and in a LeNet training step
# (by phase, with its launch counts): appended to bench.log
timeout $(lim 40 155) python3 bench/stage_times.py 2>&1 | tee -a "$OUT/bench.log" | tail -90
say "stage times done"

# 4b'. the TF32 operand rounding three ways (cvt.rna, the same in integer arithmetic,
# none) on the tensor-core kernels, exactness first: appended to bench.log
timeout $(lim 75 80) python3 bench/tf32_rounding.py --rounds 5 2>&1 | tee -a "$OUT/bench.log" | tail -25
say "tf32 rounding done"

# 4c. Nsight Compute on one launch of each kernel behind a target (bench/profile_targets.py):
# what limits it, for the note (ncu is on the Firecracker machines; skipped elsewhere)
if command -v ncu >/dev/null; then
  timeout $(lim 75 35) ncu --clock-control none --target-processes all \
    -k regex:"${NCU_KERNELS:-gemm_pipelined|gemm_vec|gemm_tiled|implicit_gemm|max_pool2d_fwd|max_pool2d_bwd|conv2d_depthwise|batch_norm}" \
    --section SpeedOfLight --section ComputeWorkloadAnalysis --section MemoryWorkloadAnalysis \
    --section Occupancy --section WarpStateStats --section LaunchStats \
    python3 bench/profile_targets.py > "$OUT/ncu.txt" 2>&1
  say "ncu rc=$? ($(grep -c '^  [a-z_0-9]*.*(' "$OUT/ncu.txt") kernels profiled)"
  grep -E '^  [A-Za-z_].*\(|Duration|Compute \(SM\) Throughput|Memory Throughput|Issue Slots Busy|Achieved Occupancy|Registers Per Thread|Bank Conflicts|Stall' "$OUT/ncu.txt" | head -80
else
  say "ncu: not on this machine"
fi

# 5. the training loop on the GPU against the same LeNet-5 in torch + cuDNN
timeout $(lim 40 5) python3 bench/torch_lenet.py --backend cuda --epochs 8 2>&1 | tee "$OUT/train.log" | tail -4
say "training comparison done"

# 6. summary
echo "===== summary ====="
head -1 "$OUT/device.txt"; sed -n 2p "$OUT/device.txt"
echo "gpu tests: $(grep -E '^[0-9]+ (passed|failed)|passed|failed' "$OUT/gpu_tests.log" | tail -1) (rc=$GPU_RC)"
echo "sanitizer: $SAN"
echo "training (LeNet-5, digits): $(grep -E '^(torch|convgpu|ratio)' "$OUT/train.log" | tr '\n' ' ')"
python3 bench/summarize.py "$OUT/bench.json"
