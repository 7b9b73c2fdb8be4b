"""The GPU tier's module-level gate (tests/test_gpu*.py, test_nhwc_gpu.py): CuPy with a
visible CUDA device (the stand-in device counts), else the whole module is skipped. Imports
nothing of convgpu, so a module can set its environment before convgpu loads."""
import pytest


def cupy_with_a_gpu():
    cupy = pytest.importorskip("cupy")
    try:
        n = cupy.cuda.runtime.getDeviceCount()
    except Exception:                  # no driver / no device
        n = 0
    if n == 0:
        pytest.skip("no CUDA GPU", allow_module_level=True)
    return cupy
