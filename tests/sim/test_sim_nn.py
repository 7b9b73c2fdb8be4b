"""The layers on the numba backend (simulated): one training step of a small conv net
(conv-relu-maxpool-conv-relu-avgpool-linear-relu-linear), and of a decoder (strided conv,
transposed conv, padding="same", global average pooling), of a net with batch
normalisation and of nn.resnet_small, on two digits gives the same loss, input gradient and parameter gradients
as the numpy backend."""
from helpers import assert_steps_agree, bn_net, decoder_net, res_net, small_net, training_step


def test_small_net_step_numba_matches_numpy():
    out = {"numpy": training_step(small_net("numpy"), "numpy"),
           "numba": training_step(small_net("numba", ("im2col", "direct")), "numba")}
    assert_steps_agree(out["numba"], out["numpy"])


def test_decoder_step_numba_matches_numpy():
    out = {"numpy": training_step(decoder_net("numpy"), "numpy"),
           "numba": training_step(decoder_net("numba", "im2col"), "numba")}
    assert_steps_agree(out["numba"], out["numpy"])


def test_batch_norm_step_numba_matches_numpy():
    out = {"numpy": training_step(bn_net("numpy"), "numpy", images=8),
           "numba": training_step(bn_net("numba"), "numba", images=8)}
    assert_steps_agree(out["numba"], out["numpy"])


def test_resnet_step_numba_matches_numpy():
    """Width 2: the simulator runs every thread of ~80 launches in Python."""
    out = {"numpy": training_step(res_net("numpy", width=2), "numpy"),
           "numba": training_step(res_net("numba", "im2col", width=2), "numba")}
    assert_steps_agree(out["numba"], out["numpy"])
