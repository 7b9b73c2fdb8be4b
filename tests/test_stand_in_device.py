"""The device dispatch path in CI: tests/stand_in/device_path.py run in its own pytest
process on the stand-in device (tests/stand_in/cupy with CONVGPU_STAND_IN_DEVICE=1: one
device of compute capability 9.0, a CuPy array type of its own, kernels in the host
emulation, launches recorded with their stream). A process of its own, because the stand-in
must be imported as `cupy` before convgpu looks for CuPy."""
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_on_stand_in(*pytest_args):
    """pytest in a process of its own on the stand-in device; returns (passed, the rest of
    the summary line, output)."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("CONVGPU_CUDA_HOST", "NUMBA_ENABLE_CUDASIM")}
    env.update(CONVGPU_STAND_IN_DEVICE="1", CONVGPU_POISON="1",
               PYTHONPATH=os.pathsep.join([str(ROOT / "tests" / "stand_in"),
                                           os.environ.get("PYTHONPATH", "")]))
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfEs",
                        *map(str, pytest_args)],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    out = r.stdout[-6000:] + r.stderr[-3000:]
    assert r.returncode == 0, out
    summary = re.search(r"(\d+) passed(.*) in ", out)
    assert summary, out
    return int(summary.group(1)), summary.group(2), out


def test_device_path_on_the_stand_in_device():
    passed, rest, out = run_on_stand_in(ROOT / "tests" / "stand_in" / "device_path.py")
    assert passed >= 10, out
    assert not re.search(r"skipped|xfail|deselected|error", rest), out


def test_gpu_tier_logic_on_the_stand_in_device():
    """tests/test_gpu.py's own code (the planned runs, the edge cases on every algorithm,
    the stream test, empty problems) on its small tests, cuda backend only: the GPU tier
    runs rarely, so its logic is tried here."""
    passed, rest, out = run_on_stand_in(
        ROOT / "tests" / "test_gpu.py", "-k",
        "max_pool_exact or current_stream or padding_same and cuda or empty_problems")
    assert passed >= 40, out
    assert not re.search(r"skipped|xfail|error", rest), out


def test_gpu_half_ops_tier_on_the_stand_in_device():
    """tests/test_gpu_half_ops.py whole (the half kernels that are not tensor-core GEMMs, on
    device arrays; the numba ones need a GPU): its device runs, copies back and bounds."""
    passed, rest, out = run_on_stand_in(ROOT / "tests" / "test_gpu_half_ops.py")
    assert passed >= 46, out
    assert not re.search(r"skipped|xfail|deselected|error", rest), out
