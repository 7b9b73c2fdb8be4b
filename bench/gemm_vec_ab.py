"""gemm_vec (FP32, 128-row tile) built from several versions of its source, timed side by side
on one device: the SGEMM target's kernel ran at 41.8 TFLOP/s on the H100 at f49e222 and at
39.2 at e8f4431 (0.80x -> 0.74x cuBLAS), after the 64-row variant (9bb6743) rewrote its loads
and stores over lambdas. Under the local nvcc 13.0 both compile to the same instruction
counts, so the device's own NVRTC build is what this looks at:

  1. each version built by NVRTC with the runtime's options, its registers and local memory
     (spills) as the driver reports them, and its SASS (cuobjdump of the NVRTC cubin) written
     to --sass for a diff;
  2. the outputs of every version bitwise equal (same products in the same order) and within
     the FP32 bound of cuBLAS, the output poisoned with NaN before each launch;
  3. time with CUDA events, the versions interleaved round by round so drift lands on all.

Each version is a folder holding gemm.cu and the headers it includes: bench/_ab/<revision>
(taken from git, see versions()), any other folder there, and kernels/ itself.

    python3 bench/gemm_vec_ab.py [--rounds 7] [--sass PATH] [--small] [--dir bench/_ab]
"""
import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import cupy as cp
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from kernels.cuda import sources as _module  # noqa: E402

AB = ROOT / "bench" / "_ab"          # one folder per version (git-ignored)
REVISIONS = ("f49e222", "e8f4431")
FILES = ("gemm.cu", "common.cuh", "pipeline.cuh", "cuda_host.h")


def versions(AB=AB):
    """[(name, folder, name expression)]: the REVISIONS (their files taken from git where the
    folder is missing: the device machine has no .git, so run this once here and carry
    bench/_ab), any other folder under bench/_ab (a hand-made variant), the working tree."""
    for rev in REVISIONS:
        folder = AB / rev
        if not (folder / "gemm.cu").exists():
            try:
                folder.mkdir(parents=True, exist_ok=True)
                for f in FILES:
                    (folder / f).write_bytes(subprocess.run(
                        ["git", "show", f"{rev}:kernels/{f}"], cwd=ROOT, capture_output=True,
                        check=True).stdout)
            except (OSError, subprocess.CalledProcessError) as e:
                print(f"{rev}: cannot take its files from git ({e}); skipped")
                shutil.rmtree(folder, ignore_errors=True)
    folders = [AB / r for r in REVISIONS] + sorted(
        d for d in (AB.iterdir() if AB.exists() else []) if d.name not in REVISIONS)
    out = []
    for d in folders + [ROOT / "kernels" / "cuda"]:
        if (d / "gemm.cu").exists():
            rm = "int RM" in (d / "gemm.cu").read_text()
            out.append(("working tree" if d == ROOT / "kernels" / "cuda" else d.name, d,
                        "gemm_vec<false, false, false" + (", 128>" if rm else ">")))
    return out


def build(folder, expr):
    opts = tuple(o for o in _module.NVRTC_OPTIONS) + (f"-I{folder}",)
    mod = cp.RawModule(code=(folder / "gemm.cu").read_text(), options=opts,
                       name_expressions=[expr])
    return mod.get_function(expr)


def sass(folder, expr):
    """The SASS of NVRTC's cubin for this device (cuobjdump), or why there is none."""
    from cupy.cuda import nvrtc
    cc = cp.cuda.Device().compute_capability             # "90" on an H100
    prog = nvrtc.createProgram((folder / "gemm.cu").read_text(), "gemm.cu", [], [])
    nvrtc.addNameExpression(prog, expr)
    inc = _module.cuda_include_dir()      # <cuda_fp16.h>: RawModule adds it, bare NVRTC not
    nvrtc.compileProgram(prog, list(_module.NVRTC_OPTIONS) + [f"-I{folder}"]
                         + ([f"-I{inc}"] if inc else [])
                         + list(_module.RUNTIME_ADDED_OPTIONS) + [f"-arch=sm_{cc}"])
    tool = shutil.which("cuobjdump") or "/usr/local/cuda/bin/cuobjdump"
    ptxas = shutil.which("ptxas") or "/usr/local/cuda/bin/ptxas"
    with tempfile.TemporaryDirectory() as tmp:
        cubin = Path(tmp) / "k.cubin"
        cubin.write_bytes(nvrtc.getCUBIN(prog))
        try:
            r = subprocess.run([tool, "-sass", str(cubin)], capture_output=True, text=True,
                               timeout=60)
            if "SASS" in r.stdout or "/*0000*/" in r.stdout:
                return f"(NVRTC {nvrtc.getVersion()} cubin)\n{r.stdout}"
            # a cuobjdump older than NVRTC cannot read its cubin: NVRTC's PTX through this
            # machine's ptxas instead (its register allocation may differ from NVRTC's)
            ptx = nvrtc.getPTX(prog)
            (Path(tmp) / "k.ptx").write_bytes(ptx if isinstance(ptx, bytes) else ptx.encode())
            cmd = [ptxas, f"-arch=sm_{cc}", "-v", "-o", str(cubin), str(Path(tmp) / "k.ptx")]
            r2 = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
            m = re.search(r"current version is '([\d.]+)'", r2.stderr)
            if r2.returncode and m:            # a PTX ISA newer than ptxas: relabel it
                text = (Path(tmp) / "k.ptx").read_text()
                (Path(tmp) / "k.ptx").write_text(
                    re.sub(r"^\.version [\d.]+", f".version {m.group(1)}", text, flags=re.M))
                r2 = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
            r3 = subprocess.run([tool, "-sass", str(cubin)], capture_output=True, text=True,
                                timeout=60)
            return (f"(NVRTC {nvrtc.getVersion()} PTX through ptxas; cuobjdump on NVRTC's "
                    f"cubin: {r.stdout.strip() or r.stderr.strip()})\n{r2.stdout}{r2.stderr}"
                    f"{r3.stdout or r3.stderr}")
        except (OSError, subprocess.SubprocessError) as e:
            return f"no SASS: {e}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--sass", default=None)
    ap.add_argument("--small", action="store_true")
    ap.add_argument("--dir", default=str(AB), help="the versions' folders (default bench/_ab)")
    args = ap.parse_args()
    # (M, N, K, tile rows): the SGEMM target's shapes on the 128-row tile, and the ResNet 1x1
    # layer's GEMM (64 x 3136 x 256 over 16 images, here as one 64 x 50176 x 256) on the 64-row
    shapes = ([(256, 256, 128, 128), (64, 256, 128, 64)] if args.small else
              [(4096, 4096, 4096, 128), (8192, 1024, 2048, 128), (64, 50176, 256, 64)])
    kernels, dumps = {128: [], 64: []}, []
    for name, folder, expr in versions(Path(args.dir)):
        for rows in (128, 64):
            if rows == 64:
                if not expr.endswith(", 128>"):
                    continue                   # a version without the 64-row tile
                expr = expr.replace(", 128>", ", 64>")
            fn = build(folder, expr)
            regs = getattr(fn, "num_regs", None)
            local = getattr(fn, "local_size_bytes", None)
            print(f"{name:26s} {expr:38s} registers {regs}  local memory {local} B")
            kernels[rows].append((name, fn))
            if args.sass:
                dumps.append(f"===== {name}: {expr}\n{sass(folder, expr)}")
    if args.sass:
        Path(args.sass).write_text("\n".join(dumps))
    rng = np.random.default_rng(0)
    for M, N, K, rows in shapes:
        A = cp.asarray(rng.standard_normal((M, K), dtype=np.float32))
        B = cp.asarray(rng.standard_normal((K, N), dtype=np.float32))
        ref = cp.matmul(A, B)                  # cuBLAS (CuPy: FP32 compute unless CUPY_TF32)
        C = cp.empty((M, N), cp.float32)
        grid = ((N + 127) // 128, (M + rows - 1) // rows, 1)
        kchunk = (K + 15) // 16 * 16
        argv = (A, B, C, np.int32(M), np.int32(N), np.int32(K), np.int64(0), np.int64(0),
                np.int64(0), np.int32(1), np.int32(kchunk), np.int64(0))
        outs = {}
        for name, fn in kernels[rows]:
            C.fill(cp.nan)
            fn(grid, (2 * rows,), argv)
            outs[name] = C.copy()
        first = kernels[rows][0][0]
        err = float(cp.linalg.norm(outs[first] - ref) / cp.linalg.norm(ref))
        same = all(bool(cp.array_equal(outs[first], o)) for o in outs.values())
        print(f"{M}x{N}x{K}, {rows}-row tile: outputs bitwise equal across versions: {same}; "
              f"rel. error vs cuBLAS {err:.2e} ({'ok' if err < 1e-5 else 'FAILED'})")
        times = {name: [] for name, _ in kernels[rows] + [("cuBLAS", None)]}
        start, stop = cp.cuda.Event(), cp.cuda.Event()
        for _ in range(args.rounds):
            for name, fn in kernels[rows] + [("cuBLAS", None)]:
                start.record()
                for _ in range(args.reps):
                    if fn is None:
                        cp.matmul(A, B, out=C)
                    else:
                        fn(grid, (2 * rows,), argv)
                stop.record()
                stop.synchronize()
                times[name].append(cp.cuda.get_elapsed_time(start, stop) / args.reps)
        blas = statistics.median(times["cuBLAS"])
        for name, t in times.items():
            ms = statistics.median(t)
            print(f"  {name:26s} {ms:8.4f} ms  {2 * M * N * K / ms / 1e9:7.2f} TFLOP/s  "
                  f"{blas / ms:5.3f}x cuBLAS  (rounds {min(t):.4f}-{max(t):.4f})")


if __name__ == "__main__":
    main()
