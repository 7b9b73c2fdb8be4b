"""kernels/dev: candidate and superseded kernels are registered only under CONVGPU_DEV=1
(tests/conftest.py sets it, so the other tests keep checking them), run only when named,
and never picked by algo="auto"."""
import os
import subprocess
import sys

import numpy as np

import convgpu
from convgpu.core.args import pool_geometry
from convgpu.ops._registry import all_impls, select

DEV = {("max_pool2d", "tiled"), ("max_pool2d_backward", "tiled"),
       ("max_pool2d_backward", "cells_shuffle")}


def _listing(dev: str) -> str:
    env = dict(os.environ, CONVGPU_DEV=dev)
    code = ("import convgpu\n"
            "for op in ('max_pool2d', 'max_pool2d_backward'):\n"
            "    print(op, sorted(a for b, a in convgpu.implementations(op, layout='NCHW') "
            "if b == 'cuda'))\n"
            "import numpy as np\n"
            "try:\n"
            "    convgpu.max_pool2d(np.zeros((1, 1, 4, 4), np.float32), 2, algo='tiled')\n"
            "except ValueError as e:\n"
            "    print('refused:', e)\n")
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          check=True, timeout=120).stdout


def test_dev_kernels_are_registered_only_under_the_flag():
    off, on = _listing("0"), _listing("1")
    assert "max_pool2d ['direct']" in off and "max_pool2d_backward ['gather']" in off, off
    assert "refused: max_pool2d: no implementation (numpy, tiled)" in off, off
    assert "max_pool2d ['direct', 'tiled']" in on, on
    assert "max_pool2d_backward ['cells_shuffle', 'gather', 'tiled']" in on, on


def test_auto_never_picks_a_dev_kernel(monkeypatch):
    """With every dev kernel registered and serving the call (the emulated cuda backend, a
    2x2/2 pooling both tiled kernels and the shuffle gather serve), auto's candidates are
    the others only; named, a dev kernel runs."""
    monkeypatch.setenv("CONVGPU_CUDA_HOST", "1")
    registered = {(i.op, i.algo) for op in ("max_pool2d", "max_pool2d_backward")
                  for i in all_impls(op) if i.dev}
    assert registered == DEV
    a = pool_geometry("max_pool2d", (2, 3, 8, 8), 2, 2, 0, 1, False, np.float32, kind="max")
    picked = select("max_pool2d", a, "cuda", "auto", on_device=True)
    assert [i.algo for i in picked] == ["direct"]
    named = select("max_pool2d", a, "cuda", "tiled", on_device=True)
    assert [i.algo for i in named] == ["tiled"] and named[0].dev
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)
    y, i = convgpu.max_pool2d(x, 2, return_indices=True, algo="tiled", backend="cuda")
    yr, ir = convgpu.max_pool2d(x, 2, return_indices=True)
    np.testing.assert_array_equal(y, yr)
    np.testing.assert_array_equal(i, ir)
