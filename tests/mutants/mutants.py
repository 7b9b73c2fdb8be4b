"""`make mutants`: one-line mutations of the kernels, the reference, the argument checks and the
device dispatch, each applied alone to a scratch copy of the repository's HEAD and run
against the tests that should catch it. A mutation that no test catches is a missing test.

    .venv/bin/python tests/mutants/mutants.py            # all, writes tests/mutants/RESULTS.md
    .venv/bin/python tests/mutants/mutants.py gemm_sum_splits pool_avg_include_pad_ceil
                                                         # those, their rows updated
    .venv/bin/python tests/mutants/mutants.py --check    # every old text still occurs once

Each selection first runs unmutated (it must pass, or a "caught" would mean nothing), then
once per mutation. The host emulation caches its g++ builds by source hash, so each .cu
mutation costs one build. Run it under `nice`: it takes most of two cores for ~half an hour.
"""
from __future__ import annotations

import argparse
import datetime
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Tuple

ROOT = Path(__file__).resolve().parents[2]
PY = sys.executable


@dataclass(frozen=True)
class Mutant:
    name: str
    file: str                 # path in the repository
    old: str                  # exact text, occurring once in the file
    new: str
    tests: Tuple[str, ...]    # pytest arguments (paths, -k ...)
    sim: bool = False         # the simulator tier (NUMBA_ENABLE_CUDASIM=1)
    why: str = ""             # what the mutation breaks


CH = "tests/test_cuda_host.py::"
SIM = "tests/sim/test_sim_kernels.py"
POOL = "tests/ops/test_pool.py"         # numpy and cuda in the plain run, numba in the simulator's
BN = "tests/ops/test_batch_norm.py"
EW = "tests/ops/test_elementwise.py"
CONV = "tests/ops/test_conv.py"
STAND_IN = ("tests/test_stand_in_device.py",)
NH16 = "tests/test_cuda_nhwc16.py::"

MUTANTS = [
    # gemm.cu
    Mutant("gemm_sum_splits", "kernels/cuda/gemm.cu",
           "T s = parts[i];\n        for (int k = 1; k < splits; ++k) s += parts[k * n + i];",
           "T s = parts[i];\n        for (int k = 1; k < splits - 1; ++k) s += parts[k * n + i];",
           (CH + "test_gemm_tails_and_split_k",), why="the last split-K part dropped"),
    Mutant("gemm_tiled_stages_b_as_a", "kernels/cuda/gemm.cu",
           "As[buf][ak[i]][am[i]] = staged<T, TF32>(ra[i]);",
           "As[buf][ak[i]][am[i]] = staged<T, TF32>(rb[i]);",
           (CH + "test_gemm_tails_and_split_k",), why="A's tile loaded from B's registers"),
    # conv.cu
    Mutant("conv_wgrad_walk", "kernels/cuda/conv_implicit.cu",
           "for (sq += BK; sq >= s.Q; sq -= s.Q)", "for (sq += BK; sq > s.Q; sq -= s.Q)",
           (CONV + "::test_conv2d_backward_weight", "-k", "cuda and implicit_gemm_tf32"),
           why="the TF32 weight gradient's stepped (n, p, q) walk misses a row end"),
    Mutant("conv_pipelined_bias", "kernels/cuda/conv_implicit.cu",
           "if (bias) tc::add_row_bias<M>(acc, tid, bias + g * Kg, m0, Kg);",
           "if (false) tc::add_row_bias<M>(acc, tid, bias + g * Kg, m0, Kg);",
           (CONV + "::test_conv2d", "-k", "cuda and pipelined"), why="the pipelined kernel's bias dropped"),
    # conv_direct.cu
    Mutant("conv_direct_right_padding", "kernels/cuda/conv_direct.cu",
           "xs[i] = (h >= 0 && h < H && v >= 0 && v < W)",
           "xs[i] = (h >= 0 && h < H && v >= 0 && v <= W)",
           (CONV + "::test_conv2d", "-k", "cuda and direct"), why="a column past the input read as data"),
    # winograd.cu
    Mutant("winograd2_filter_matrix", "kernels/cuda/winograd.cu",
           "{.5, -.5, .5}, {0, 0, 1}}", "{.5, .5, .5}, {0, 0, 1}}",
           (CONV + "::test_conv2d", "-k", "cuda and winograd and not 4x4 and not tf32"), why="F(2x2, 3x3)'s G has a wrong sign"),
    Mutant("winograd4_filter_matrix", "kernels/cuda/winograd.cu",
           "{1. / 24, 1. / 12, 1. / 6},", "{1. / 24, 1. / 12, 1. / 8},",
           (CONV + "::test_conv2d", "-k", "cuda and winograd_4x4"),
           why="F(4x4, 3x3)'s G has a wrong coefficient"),
    # spectra.cu
    Mutant("spectra_negation_bit", "kernels/cuda/fft.cu",
           "if ((code >> (2 * q + 1)) & 1) v = -v;", "if ((code >> (2 * q)) & 1) v = -v;",
           (CONV + "::test_conv2d", "-k", "cuda and fft and not tf32"), why="the stacked spectra negate the wrong quadrant"),
    # depthwise.cu
    Mutant("depthwise_3x3_tap", "kernels/cuda/depthwise.cu",
           "acc[o] += f[r * 3 + 1] * v1;", "acc[o] += f[r * 3] * v1;",
           (CONV + "::test_conv2d", "-k", "cuda and depthwise"), why="the 3x3 path's middle tap uses the first"),
    # pool.cu
    Mutant("pool_max_nan", "kernels/cuda/pool.cu",
           "return (a > b || a != a) ? a : b;", "return (a > b) ? a : b;",
           (POOL + "::test_max_pool2d_ties_nan_and_minus_inf",
            POOL + "::test_max_pool2d_interior_and_cells_with_ties_nan_and_inf", "-k", "cuda"),
           why="max pooling stops propagating NaN"),
    Mutant("pool_avg_include_pad_ceil", "kernels/cuda/pool.cu",
           "const int h1 = min(h0 + s.kh, s.H + s.ph), w1 = min(w0 + s.kw, s.W + s.pw);",
           "const int h1 = h0 + s.kh, w1 = w0 + s.kw;",
           (POOL, "-k", "avg_pool and cuda"),
           why="the include-pad divisor of a ceil-mode window past the right padding unclipped "
               "(the issue's mutation: x (1, 2, 7, 10), k 2, s 3, p 0, ceil_mode); caught "
               "once the emulation tier has such a case (issue 22's avg-pool divisor cases)"),
    # norm.cu
    Mutant("norm_running_var_unbiased", "kernels/cuda/norm.cu",
           "momentum * var * unbias);", "momentum * var);",
           (BN + "::test_batch_norm", "-k", "cuda"),
           why="running_var updated with the biased variance"),
    # elementwise.cu
    Mutant("elementwise_relu_nan", "kernels/cuda/elementwise.cu",
           "return (v > acc_t<T>(0) || v != v) ? xi : from_acc<T>(acc_t<T>(0));",
           "return (v > acc_t<T>(0)) ? xi : from_acc<T>(acc_t<T>(0));",
           (EW + "::test_relu_keeps_nan", "-k", "cuda"), why="relu turns NaN into 0"),
    Mutant("elementwise_xent_mean", "kernels/cuda/elementwise.cu",
           "from_acc<T>((j == t ? p - A(1) : p) / A(N) * sc);",
           "from_acc<T>((j == t ? p - A(1) : p) * sc);",
           (EW + "::test_small_ops", "-k", "cuda"), why="cross-entropy's gradient not divided by N"),
    # common.cuh, pipeline.cuh
    Mutant("common_split_start", "kernels/cuda/common.cuh",
           "return N / S * s + min((I)s, N % S);", "return N / S * s;",
           (BN + "::test_batch_norm_splits", CH + "test_depthwise_wgrad3_splits"), why="split ranges drop the remainder"),
    Mutant("common_tf32_round", "kernels/cuda/common.cuh",
           "return capped + 0x1000u;", "return capped + 0x0fffu;",
           ("tests/test_emulator.py::test_tf32_rounding_is_to_nearest_ties_away",
            CH + "test_tf32_gemms_round_operands_to_nearest"), why="TF32 ties rounded down"),
    Mutant("pipeline_wait_one_stage_early", "kernels/cuda/pipeline.cuh",
           "cp_async_wait<STAGES - 2>();   // this thread's copies",
           "cp_async_wait<STAGES - 1>();   // this thread's copies",
           (CH + "test_gemm_pipelined_tails_and_split_k",), why="a slice consumed before it lands"),
    # Numba kernels (the simulator)
    Mutant("numba_direct_filter_transposed", "kernels/numba/conv_direct.py",
           "acc += A(x[n, c0 + c, h, v]) * A(w[k, c, r, s])",
           "acc += A(x[n, c0 + c, h, v]) * A(w[k, c, s % R, r % S])",
           (CONV + "::test_conv2d", "-k", "numba and direct and not tiled"), sim=True,
           why="the direct kernel reads the filter transposed"),
    Mutant("numba_norm_variance", "kernels/numba/norm.py", "acc += d * d", "acc += d",
           (BN + "::test_batch_norm",), sim=True, why="batch norm's variance is the mean deviation"),
    Mutant("numba_pool_bottom_edge", "kernels/numba/pool.py", "if h < 0 or h >= H:", "if h < 0 or h > H:",
           (POOL + "::test_max_pool2d_and_backward",), sim=True,
           why="max pooling reads a row past the input (a window in the bottom padding)"),
    # the NumPy reference
    Mutant("reference_pad_axes", "python/convgpu/reference.py",
           "np.pad(x, ((0, 0), (0, 0), (ph, ph + eh), (pw, pw + ew)), constant_values=value)",
           "np.pad(x, ((0, 0), (0, 0), (pw, pw + ew), (ph, ph + eh)), constant_values=value)",
           ("tests/test_reference_conv.py",), why="the reference pads H by W's padding"),
    Mutant("reference_avg_include_pad_ceil", "python/convgpu/reference.py",
           "end = np.minimum(start + k, H + p)", "end = start + k",
           ("tests/test_reference_pool.py", "tests/test_torch_oracle.py", "-k", "avg"),
           why="the issue's mutation in the reference: include-pad divisor unclipped"),
    # conv_nhwc16.cu: the NHWC half convolutions
    Mutant("nhwc16_bias_every_split", "kernels/cuda/conv_nhwc16.cu",
           "    if (z.split > 0) bias = nullptr;\n", "",
           (NH16 + "test_nhwc_mma16_against_the_reference", "-k", "1x32x4x5 and f16"),
           why="every split of the half NHWC forward adds the bias"),
    Mutant("nhwc16_gather_vec_rows", "kernels/cuda/conv_nhwc16.cu",
           "const int row = tid / 4 + 32 * i;", "const int row = tid / 4 + 32 * (i & 2);",
           (NH16 + "test_nhwc_mma16_against_the_reference", "-k", "2x8x13 and bf16"),
           why="the 16-byte gather fills two of its four row groups twice"),
    Mutant("nhwc16_dgrad_tap_step", "kernels/cuda/conv_nhwc16.cu",
           "step = st / x;", "step = st;",
           (NH16 + "test_nhwc_mma16_against_the_reference", "-k", "1x16x6x7 and f16"),
           why="the input gradient's phases skip taps where the dilation shares a factor "
               "with the stride"),
    Mutant("nhwc16_wgrad_split_overlap", "kernels/cuda/conv_nhwc16.cu",
           "const tc16::SplitK z = tc16::SplitK(splits).over(kchunk, NPQ);\n",
           "tc16::SplitK z = tc16::SplitK(splits).over(kchunk, NPQ);\n    z.kend = min(NPQ, z.kend + 8);\n",
           (NH16 + "test_nhwc_mma16_against_the_reference", "-k", "2x8x13 and f16"),
           why="the weight gradient's splits overlap by 8 positions"),
    # this session's half kernels: NHWC pooling 8 channels a thread, NHWC batch norm, im2col
    Mutant("pool_nhwc_vec_lane_hit", "kernels/cuda/pool_nhwc.cu",
           "if (hit[j]) acc[j] += to_acc(g.v[j]);", "if (hit[0]) acc[j] += to_acc(g.v[j]);",
           ("tests/test_nhwc_pool.py", "-k", "eight_channels"),
           why="the vector max-pool gather adds every lane where the first lane's index hits"),
    Mutant("norm_nhwc_half_partials_rounded", "kernels/cuda/norm_nhwc.cu",
           "const A v = to_acc(x[m * C + c]);", "const A v = to_acc(x[m * C + c]) * A(1.001);",
           ("tests/test_half.py", "-k", "batch_norm_channels_last and cuda"),
           why="the NHWC statistics off by a tenth of a percent (a bound that tight catches it)"),
    Mutant("im2col_half_col2im_rounds_columns", "kernels/cuda/im2col.py",
           "tf32=tf32, fp32=half)", "tf32=tf32, fp32=False)\n    dcols = dcols.astype(np.float32) if half else dcols",
           ("tests/test_cuda_half_ops.py", "-k", "im2col_rounds_once"),
           why="the input gradient's columns rounded to the half type before col2im sums them"),
    # the argument checks
    Mutant("args_channel_check", "python/convgpu/core/args.py",
           "if C != Cg * groups:", "if C < Cg * groups:",
           ("tests/test_errors.py",), why="more input channels than the weight's accepted"),
    Mutant("args_ceil_mode_last_window", "python/convgpu/core/args.py",
           "if (out - 1) * stride >= size + pad:", "if (out - 1) * stride > size + pad:",
           ("tests/test_reference_pool.py", "tests/test_torch_oracle.py", "-k", "pool"),
           why="a ceil-mode window that starts in the right padding kept"),
    # the device path (the stand-in device)
    Mutant("autotune_slowest", "ops/_registry.py",
           "return min(times)[1]", "return max(times)[1]", STAND_IN,
           why="algo='auto' keeps the slowest implementation"),
    Mutant("numba_stream_default", "kernels/numba/launch.py",
           "return cuda.external_stream(ptr) if ptr else cuda.default_stream()",
           "return cuda.default_stream()", STAND_IN,
           why="Numba kernels launch on the default stream, not CuPy's current one"),
    Mutant("cuda_relu_wrong_stream", "kernels/cuda/elementwise.py",
           '        _ew("relu_fwd", x.dtype)(elementwise_grid(x.size), (THREADS,), (x, y, n))',
           '        with __import__("cupy").cuda.Stream(): _ew("relu_fwd", x.dtype)(elementwise_grid(x.size), (THREADS,), (x, y, n))',
           STAND_IN, why="relu's kernel launched on a stream of its own"),
    Mutant("cupy_input_not_made_contiguous", "python/convgpu/arrays.py",
           "    if kind == CUPY:\n        return _contiguous(cupy, a)",
           "    if kind == CUPY:\n        return a", STAND_IN,
           why="non-contiguous CuPy input reaches the kernels"),
]


def _scratch(base: Path) -> Path:
    """HEAD's tracked files under base/repo, and base/pkg/convgpu laid out as the installed
    package (python/convgpu with kernels/ and ops/ inside), which PYTHONPATH puts first."""
    repo = base / "repo"
    repo.mkdir()
    archive = subprocess.run(["git", "archive", "HEAD"], cwd=ROOT, capture_output=True,
                             check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(repo)], input=archive, check=True)
    pkg = base / "pkg" / "convgpu"
    pkg.mkdir(parents=True)
    for f in (repo / "python" / "convgpu").iterdir():
        (pkg / f.name).symlink_to(f)
    (pkg / "kernels").symlink_to(repo / "kernels")
    (pkg / "ops").symlink_to(repo / "ops")
    return repo


def _run(repo: Path, m: Mutant, timeout: int) -> Tuple[str, float, str]:
    env = dict(os.environ, PYTHONPATH=str(repo.parent / "pkg"))
    env.pop("CONVGPU_CUDA_HOST", None)
    if m.sim:
        env["NUMBA_ENABLE_CUDASIM"] = "1"
    else:
        env.pop("NUMBA_ENABLE_CUDASIM", None)
    t0 = time.time()
    try:
        r = subprocess.run([PY, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *m.tests],
                           cwd=repo, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return "timeout", time.time() - t0, ""
    tail = (r.stdout + r.stderr).strip().splitlines()
    last = tail[-1] if tail else ""
    if r.returncode == 0:
        return "passed", time.time() - t0, last
    if r.returncode == 5 or "no tests ran" in last:
        return "no tests", time.time() - t0, last
    return "failed", time.time() - t0, last


def check_texts() -> list:
    bad = []
    for m in MUTANTS:
        n = (ROOT / m.file).read_text().count(m.old)
        if n != 1:
            bad.append(f"{m.name}: the old text occurs {n} times in {m.file}")
    return bad


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="*", help="mutations to run (default: all)")
    ap.add_argument("--check", action="store_true", help="only check the old texts")
    ap.add_argument("--timeout", type=int, default=900, help="seconds per test run")
    ap.add_argument("--results", default=str(ROOT / "tests" / "mutants" / "RESULTS.md"))
    a = ap.parse_args(argv)
    names = {m.name for m in MUTANTS}
    unknown = sorted(set(a.names) - names)
    if unknown:
        ap.error(f"unknown mutation(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}")
    bad = check_texts()
    if bad or a.check:
        print("\n".join(bad) or f"{len(MUTANTS)} mutations, every old text found once")
        return 1 if bad else 0
    chosen = [m for m in MUTANTS if not a.names or m.name in a.names]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                            capture_output=True, text=True).stdout.strip()
    rows, survivors = [], 0
    with tempfile.TemporaryDirectory(prefix="convgpu-mutants-") as tmp:
        repo = _scratch(Path(tmp))
        baseline = {}
        for m in chosen:                          # each selection passes unmutated
            key = (m.tests, m.sim)
            if key not in baseline:
                baseline[key] = _run(repo, Mutant("baseline", "", "", "", m.tests, m.sim), a.timeout)
                print(f"baseline {' '.join(m.tests)}: {baseline[key][0]} "
                      f"({baseline[key][1]:.0f} s)", flush=True)
        for m in chosen:
            path = repo / m.file
            original = path.read_text()
            status, secs, last = baseline[(m.tests, m.sim)]
            if status != "passed":
                verdict = f"not judged: the selection fails unmutated ({last})"
            else:
                path.write_text(original.replace(m.old, m.new, 1))
                try:
                    status, secs, last = _run(repo, m, a.timeout)
                finally:
                    path.write_text(original)
                verdict = {"failed": "caught", "timeout": "caught (timeout)"}.get(status,
                                                                                  "SURVIVED")
                if verdict == "SURVIVED" and status == "no tests":
                    verdict = "SURVIVED (the selection ran no tests)"
            survivors += not verdict.startswith("caught")
            print(f"{m.name:34s} {verdict} ({secs:.0f} s)", flush=True)
            rows.append((m, verdict, secs))
        shutil.rmtree(Path(tmp) / "pkg", ignore_errors=True)
    _write_results(Path(a.results), commit, rows)
    print(f"{len(rows) - survivors} of {len(rows)} caught")
    return 1 if survivors else 0


def _write_results(path: Path, commit: str, rows) -> None:
    """The table of every mutation, in list order: the rows of this run, and the earlier
    rows of those not run (each row names its commit and date)."""
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M")
    old = {}
    if path.exists():
        for line in path.read_text().splitlines():
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if line.startswith("| ") and len(cells) == 8 and cells[0] in {m.name for m in MUTANTS}:
                old[cells[0]] = line
    for m, verdict, secs in rows:
        sel = " ".join(m.tests) + (" (simulator)" if m.sim else "")
        old[m.name] = (f"| {m.name} | {m.file} | {m.why} | `{sel}` | {verdict} | {secs:.0f} | "
                       f"{commit} | {now} |")
    table = [old[m.name] for m in MUTANTS if m.name in old]
    caught = sum("| caught" in line for line in table)
    lines = [f"# make mutants: {caught} of {len(table)} caught", "",
             "tests/mutants/mutants.py: each mutation applied alone to a scratch copy of the "
             "commit named in its row, its selection run with pytest -x after the same selection "
             "passed unmutated. A full `make mutants` rewrites every row; a run naming "
             "mutations rewrites theirs.", "",
             "| mutation | file | breaks | tests | result | s | commit | UTC |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"] + table
    path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
