import os
import sys
import zlib

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

# Seeds. Every test's `rng` is seeded from crc32 of its node id (stable across processes and
# machines, unlike hash(), which PYTHONHASHSEED randomises), so a run is the same every time
# and a failing test replays with its inputs by running it alone. CONVGPU_SEED_SALT=<int>
# mixes a salt into every seed to draw other inputs on purpose (a sweep); a failure report
# names the seed and the salt. README.md, "Tests", says how to replay.
SEED_SALT = int(os.environ.get("CONVGPU_SEED_SALT", "0"))


def test_seed(nodeid: str, salt: int = SEED_SALT) -> int:
    return (zlib.crc32(nodeid.encode()) ^ (salt * 0x9E3779B1)) % (2 ** 32)


test_seed.__test__ = False                      # a helper, not a test


@pytest.fixture
def rng(request):
    # a fresh, reproducible stream per test
    seed = test_seed(request.node.nodeid)
    request.node.user_properties.append(("seed", seed))
    return np.random.default_rng(seed)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    seeds = [v for k, v in item.user_properties if k == "seed"]
    if report.failed and seeds:
        report.sections.append((
            "seed", f"rng seeded with {seeds[0]} (crc32 of the node id, salt "
            f"CONVGPU_SEED_SALT={SEED_SALT}); replay: CONVGPU_SEED_SALT={SEED_SALT} "
            f"python -m pytest '{item.nodeid}'"))


# hypothesis: derandomized by default (the examples follow from each test's source, so CI
# sees the same ones on every run, and no example database carries state between runs);
# HYPOTHESIS_PROFILE=explore draws fresh examples, to look for new failures on purpose.
try:
    from hypothesis import settings as _hsettings
except ImportError:         # only tests/test_reference_properties.py needs it
    pass
else:
    _hsettings.register_profile("ci", derandomize=True, database=None)
    _hsettings.register_profile("explore", derandomize=False, database=None)
    _hsettings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


# The backend switches are read when Numba is imported and on every dispatch: a test that
# leaves one changed (an in-process CLI call sets them without a GPU) changes what every later
# test in the process runs. Fail that test, naming the switch, instead of a later one.
_SWITCHES = ("NUMBA_ENABLE_CUDASIM", "CONVGPU_CUDA_HOST")


@pytest.fixture(autouse=True)
def _switches_unchanged():
    before = {k: os.environ.get(k) for k in _SWITCHES}
    yield
    after = {k: os.environ.get(k) for k in _SWITCHES}
    for k in _SWITCHES:
        if after[k] != before[k]:
            if before[k] is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = before[k]
    changed = {k: (before[k], after[k]) for k in _SWITCHES if after[k] != before[k]}
    assert not changed, f"the test left backend switches changed (before, after): {changed}"
