#!/usr/bin/env bash
# Issue 22's evidence: README's test command on fresh clones of one commit, back to back.
# Each run clones the repository, checks out COMMIT, points CONVGPU_CACHE at an empty folder
# (no emulator objects from an earlier run) and runs `make test`, venv build included; one
# line per run goes to LOG (exit status, wall time, both tiers' counts), the full output to
# LOG's folder. Usage: tests/green/fresh_runs.sh COMMIT FIRST LAST [LOG]
set -u
COMMIT=$1; FIRST=$2; LAST=$3
REPO=$(cd "$(dirname "$0")/../.." && pwd)
LOG=${4:-$PWD/fresh_runs.txt}; OUT=$(dirname "$LOG")
for i in $(seq "$FIRST" "$LAST"); do
  d=$(mktemp -d)/convgpu
  git clone -q "$REPO" "$d" && git -C "$d" checkout -q "$COMMIT" || exit 2
  start=$(date +%s)
  (cd "$d" && CONVGPU_CACHE=$d/.cold-cache PYTEST_ADDOPTS="--durations=60" make test) \
    > "$OUT/run$i.log" 2>&1
  rc=$?
  end=$(date +%s)
  counts=$(grep -E "^=+ .*(passed|failed)|^[0-9]+ (passed|failed)" "$OUT/run$i.log" | tr '\n' ' ')
  echo "run $i commit $(git -C "$d" rev-parse --short HEAD) rc=$rc wall=$((end - start))s" \
       "start=$(date -u -d @"$start" +%FT%TZ) $counts" >> "$LOG"
  rm -rf "$(dirname "$d")"
done
