"""Tests by op family: one test body per behaviour, run on every backend.

A test that takes the `backend` fixture runs once per backend this process can run, as
CuPy's numpy_cupy_allclose runs one body with two array modules:

- "numpy" and "cuda" in the plain process (`pytest tests`); "cuda" is the CUDA C kernels
  through their launchers under the host emulation (CONVGPU_CUDA_HOST=1, g++), outputs
  poisoned, each call in both thread orders (`run`). "cuda-int64" is "cuda" with the
  kernels' 64-bit index instantiation forced on small arrays (tests marked index_widths).
- "numba" in the simulator process (`NUMBA_ENABLE_CUDASIM=1 pytest tests`, which collects
  these files and tests/sim only): the simulator must be on before Numba is imported, so
  it cannot share a process with the others.

@pytest.mark.backends("cuda") keeps a test to the backends named (paths only one backend
has); in a process that runs none of them the test is deselected, not skipped.
Emulated and simulated runs validate nothing about a device: tests/test_gpu.py does.
"""
import pytest

from helpers import RUNNABLE, both_orders

_NONE = "none-here"


def pytest_configure(config):
    config.addinivalue_line("markers", "backends(*names): only these backends run the test")
    config.addinivalue_line("markers", "index_widths: cuda also with 64-bit kernel indices")


def pytest_generate_tests(metafunc):
    if "backend" not in metafunc.fixturenames:
        return
    if any("backend" in m.args[0] for m in metafunc.definition.iter_markers("parametrize")):
        return                                  # the test pairs backends with its own cases
    only = metafunc.definition.get_closest_marker("backends")
    names = [b for b in RUNNABLE if only is None or b in only.args]
    if "cuda" in names and metafunc.definition.get_closest_marker("index_widths"):
        names.insert(names.index("cuda") + 1, "cuda-int64")
    metafunc.parametrize("backend", names or [_NONE], indirect=True)


def pytest_collection_modifyitems(config, items):
    gone = [i for i in items if getattr(i, "callspec", None)
            and i.callspec.params.get("backend") == _NONE]
    if gone:
        config.hook.pytest_deselected(items=gone)
        items[:] = [i for i in items if i not in gone]


@pytest.fixture
def backend(request, monkeypatch):
    name = request.param
    if name.startswith("cuda"):
        from convgpu.kernels.cuda.emulator import cuda_host
        if not cuda_host.available():
            pytest.skip(f"no C++ compiler ({cuda_host.CXX}) for the host emulation")
        monkeypatch.setenv("CONVGPU_CUDA_HOST", "1")
        if name == "cuda-int64":
            from convgpu.kernels.cuda import launch
            monkeypatch.setattr(launch, "INT_SAFE", 0)     # read by launch.index_type
        name = "cuda"
    if name != "numpy":
        # every kernel output starts as NaN (indices as -1): an unwritten element fails
        monkeypatch.setenv("CONVGPU_POISON", "1")
    return name


@pytest.fixture
def run(backend):
    """run(fn): fn() once, or under the host emulation in every thread/block order."""
    return both_orders if backend == "cuda" else (lambda fn: fn())
