"""Problems with nothing to compute (an empty batch, no channels, no features, no rows) on
every backend (tests/ops/conftest.py): answered without a launch, as torch answers them
(an empty array; zeros where a sum is empty, plus the bias: tests/helpers.py empty_cases,
whose expectations are written out). A grid of 0 blocks, or a division by the empty
extent, would fail here as on a device. torch's own answers: tests/test_empty.py."""
import numpy as np
import pytest

from helpers import check_empty_case, empty_cases

CASES = empty_cases(np.random.default_rng(0))


@pytest.mark.parametrize("label, call, want", CASES, ids=[c[0] for c in CASES])
def test_empty_problems_launch_nothing(backend, label, call, want):
    check_empty_case(call(backend, np.asarray), want)
