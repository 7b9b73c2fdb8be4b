"""The rng fixture's seed: crc32 of the test's node id (the same in every process, unlike
hash()), salted by CONVGPU_SEED_SALT, recorded for the failure report."""
import os
import subprocess
import sys
import zlib

import importlib.util

import numpy as np

# tests/conftest.py by its path: tests/ops has a conftest.py too, and a bare `import conftest`
# gets whichever of the two pytest imported last
_spec = importlib.util.spec_from_file_location("tests_conftest", os.path.join(
    os.path.dirname(__file__), "conftest.py"))
conftest = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(conftest)


def test_the_seed_is_crc32_of_the_node_id_and_recorded(request, rng):
    nodeid = request.node.nodeid
    seed = conftest.test_seed(nodeid, conftest.SEED_SALT)
    if conftest.SEED_SALT == 0:
        assert seed == zlib.crc32(nodeid.encode())
    assert conftest.test_seed(nodeid, 1) != conftest.test_seed(nodeid, 0)
    assert ("seed", seed) in request.node.user_properties
    assert rng.integers(2 ** 62) == np.random.default_rng(seed).integers(2 ** 62)


def test_the_seed_does_not_depend_on_the_process():
    """hash() of a str changes with PYTHONHASHSEED; the seed must not."""
    code = (f"import sys; sys.path.insert(0, {os.path.dirname(__file__)!r}); import conftest; "
            "print(conftest.test_seed('tests/x.py::t[a]'))")
    seeds = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env={"PYTHONHASHSEED": h}, check=True).stdout
             for h in ("1", "2")}
    assert len(seeds) == 1, seeds
