"""Problems with nothing to compute (an empty batch, no channels, no features) are answered
without a launch: an empty array, or zeros where a sum is empty (plus the bias), as torch
answers an empty batch. Every backend runs the cases in tests/ops/test_empty_problems.py
(cuda emulated, numba in the simulator), and test_gpu.py on the device."""
import numpy as np
import pytest
import torch

import convgpu
from helpers import rand


def test_empty_problems_match_torch_shapes():
    """torch answers an empty batch the same way (it refuses most channel counts of 0, which
    are answered here as the empty sums they are), and a linear layer of no inputs with the
    bias."""
    F = torch.nn.functional
    rng = np.random.default_rng(1)
    t = lambda *s: torch.from_numpy(rand(rng, s))                 # noqa: E731
    pairs = [
        (F.conv2d(t(0, 4, 8, 8), t(4, 4, 3, 3), padding=1), convgpu.conv2d(
            np.zeros((0, 4, 8, 8)), np.zeros((4, 4, 3, 3)), padding=1)),
        (F.conv_transpose2d(t(0, 4, 8, 8), t(4, 2, 3, 3)), convgpu.conv_transpose2d(
            np.zeros((0, 4, 8, 8)), np.zeros((4, 2, 3, 3)))),
        (F.max_pool2d(t(0, 3, 8, 8), 2), convgpu.max_pool2d(np.zeros((0, 3, 8, 8)), 2)),
        (F.avg_pool2d(t(0, 3, 8, 8), 2), convgpu.avg_pool2d(np.zeros((0, 3, 8, 8)), 2)),
        (F.linear(t(0, 5), t(3, 5)), convgpu.linear(np.zeros((0, 5)), np.zeros((3, 5)))),
        (F.linear(t(2, 0), t(3, 0), t(3)), None),
    ]
    for want, got in pairs[:-1]:
        assert tuple(want.shape) == got.shape
    b = rand(rng, (3,))
    np.testing.assert_array_equal(
        F.linear(t(2, 0), t(3, 0), torch.from_numpy(b)).numpy(),
        convgpu.linear(np.zeros((2, 0)), np.zeros((3, 0)), b))
    assert np.isnan(F.cross_entropy(t(0, 5), torch.zeros(0, dtype=torch.int64)).item())


def test_empty_spatial_sizes_and_kernels_still_refused():
    with pytest.raises(ValueError, match="at least 1x1"):
        convgpu.conv2d(np.ones((1, 2, 5, 5)), np.ones((3, 2, 0, 3)))
    with pytest.raises(ValueError, match="positive ints"):
        convgpu.conv2d_backward_input(np.ones((1, 3, 3, 3)), np.ones((3, 2, 3, 3)), (1, 2, 0, 5))
    with pytest.raises(ValueError, match="planes must not be empty"):
        convgpu.global_avg_pool2d(np.ones((1, 2, 0, 3)))
    with pytest.raises(ValueError, match="at least one class"):
        convgpu.softmax_cross_entropy(np.ones((2, 0)), np.zeros(2, np.int64),
                                      check_labels=False)
