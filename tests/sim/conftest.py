import os

import pytest

if os.environ.get("NUMBA_ENABLE_CUDASIM", "0") in ("", "0"):
    raise pytest.UsageError("tests/sim needs NUMBA_ENABLE_CUDASIM=1 set before numba is imported")
# every kernel output starts as NaN (indices as -1): an unwritten element fails
os.environ["CONVGPU_POISON"] = "1"
