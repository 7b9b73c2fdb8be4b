"""The layers on the numba backend (simulated): one training step of a small conv net
(conv-relu-maxpool-conv-relu-avgpool-linear-relu-linear), and of a decoder (strided conv,
transposed conv, padding="same", global average pooling), on two digits gives the same
loss, input gradient and parameter gradients as the numpy backend."""
import numpy as np

from helpers import TOL, assert_close, decoder_net, small_net, training_step


def test_small_net_step_numba_matches_numpy():
    out = {"numpy": training_step(small_net("numpy"), "numpy"),
           "numba": training_step(small_net("numba", ("im2col", "direct")), "numba")}
    assert abs(out["numpy"][0] - out["numba"][0]) <= 1e-12 * abs(out["numpy"][0])
    assert_close(out["numba"][1], out["numpy"][1], TOL[np.float64])
    for k, g in out["numpy"][2].items():
        assert_close(out["numba"][2][k], g, TOL[np.float64])


def test_decoder_step_numba_matches_numpy():
    out = {"numpy": training_step(decoder_net("numpy"), "numpy"),
           "numba": training_step(decoder_net("numba", "im2col"), "numba")}
    assert abs(out["numpy"][0] - out["numba"][0]) <= 1e-12 * abs(out["numpy"][0])
    assert_close(out["numba"][1], out["numpy"][1], TOL[np.float64])
    for k, g in out["numpy"][2].items():
        assert_close(out["numba"][2][k], g, TOL[np.float64])
