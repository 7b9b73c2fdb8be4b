import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))   # tests/brute.py, tests/helpers.py
# kernels/dev's candidate and superseded kernels are registered (CONVGPU_DEV=1) so that the
# tests keep checking them against the reference; algo="auto" never picks them
os.environ.setdefault("CONVGPU_DEV", "1")

# The simulator tier (tests/sim) needs NUMBA_ENABLE_CUDASIM=1 before numba is imported, so it
# runs in its own pytest process: `NUMBA_ENABLE_CUDASIM=1 pytest tests` collects tests/sim
# only; a plain `pytest tests` collects everything else (reference, compile, gpu tiers).
SIMULATING = os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0")
collect_ignore = [] if SIMULATING else ["sim"]
collect_ignore_glob = ["test_*.py"] if SIMULATING else []
# the tuning cache on disk would carry choices between test runs (and into the user's
# cache): the tests keep them in memory unless a test turns it on (tests/test_tune_cache.py)
os.environ.setdefault("CONVGPU_TUNE_CACHE", "off")


@pytest.fixture
def rng(request):
    # a fresh, reproducible stream per test
    seed = abs(hash(request.node.nodeid)) % (2 ** 32)
    return np.random.default_rng(seed)
