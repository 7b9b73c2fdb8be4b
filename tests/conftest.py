import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))   # tests/brute.py, tests/helpers.py


@pytest.fixture
def rng(request):
    # a fresh, reproducible stream per test
    seed = abs(hash(request.node.nodeid)) % (2 ** 32)
    return np.random.default_rng(seed)
