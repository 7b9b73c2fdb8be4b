"""Bad input: a ValueError or TypeError naming the op, the argument and the numbers,
raised before any work."""
import numpy as np
import pytest

import convgpu

f32 = np.float32


def z(*shape, dtype=f32):
    return np.ones(shape, dtype=dtype)


CASES = [
    # conv2d
    ("ndim", lambda: convgpu.conv2d(z(5, 5), z(1, 1, 3, 3)), ValueError, ["conv2d", "input", "2-D"]),
    ("weight ndim", lambda: convgpu.conv2d(z(1, 1, 5, 5), z(3, 3)), ValueError, ["conv2d", "weight"]),
    ("channels", lambda: convgpu.conv2d(z(1, 3, 5, 5), z(4, 2, 3, 3), groups=2), ValueError,
     ["conv2d", "3 channels", "4 (2 per group x 2 groups)"]),
    ("more channels", lambda: convgpu.conv2d(z(1, 5, 5, 5), z(4, 2, 3, 3), groups=2), ValueError,
     ["conv2d", "5 channels", "4 (2 per group x 2 groups)"]),
    ("K % groups", lambda: convgpu.conv2d(z(1, 4, 5, 5), z(3, 2, 3, 3), groups=2), ValueError,
     ["conv2d", "3 output channels", "groups=2"]),
    ("bias", lambda: convgpu.conv2d(z(1, 3, 5, 5), z(4, 3, 3, 3), z(3)), ValueError,
     ["conv2d", "bias", "length 4", "(3,)"]),
    ("empty", lambda: convgpu.conv2d(z(1, 1, 4, 4), z(1, 1, 5, 5)), ValueError,
     ["conv2d", "5x5", "larger", "empty"]),
    ("dilated empty", lambda: convgpu.conv2d(z(1, 1, 6, 6), z(1, 1, 3, 3), dilation=3), ValueError,
     ["conv2d", "dilated 7x7"]),
    ("stride 0", lambda: convgpu.conv2d(z(1, 1, 5, 5), z(1, 1, 3, 3), stride=0), ValueError,
     ["conv2d", "stride", "positive"]),
    ("dilation -1", lambda: convgpu.conv2d(z(1, 1, 5, 5), z(1, 1, 3, 3), dilation=(1, -1)),
     ValueError, ["conv2d", "dilation"]),
    ("padding -1", lambda: convgpu.conv2d(z(1, 1, 5, 5), z(1, 1, 3, 3), padding=-1), ValueError,
     ["conv2d", "padding"]),
    ("stride float", lambda: convgpu.conv2d(z(1, 1, 5, 5), z(1, 1, 3, 3), stride=1.5), ValueError,
     ["conv2d", "stride", "1.5"]),
    ("groups 0", lambda: convgpu.conv2d(z(1, 1, 5, 5), z(1, 1, 3, 3), groups=0), ValueError,
     ["conv2d", "groups"]),
    ("int dtype", lambda: convgpu.conv2d(z(1, 1, 5, 5, dtype=np.int32), z(1, 1, 3, 3, dtype=np.int32)),
     TypeError, ["conv2d", "input", "int32"]),
    ("mixed dtype", lambda: convgpu.conv2d(z(1, 1, 5, 5), z(1, 1, 3, 3, dtype=np.float64)),
     TypeError, ["conv2d", "weight", "float64", "float32"]),
    ("half mixed with float32", lambda: convgpu.conv2d(z(1, 1, 5, 5, dtype=np.float16),
                                                      z(1, 1, 3, 3)),
     TypeError, ["conv2d", "weight", "float16", "float32"]),
    ("list", lambda: convgpu.conv2d([[1.0]], z(1, 1, 1, 1)), TypeError, ["conv2d", "input", "list"]),
    ("unknown algo", lambda: convgpu.conv2d(z(1, 1, 5, 5), z(1, 1, 3, 3), algo="winograd"),
     ValueError, ["conv2d", "winograd", "registered"]),
    ("bad backend", lambda: convgpu.conv2d(z(1, 1, 5, 5), z(1, 1, 3, 3), backend="opencl"),
     ValueError, ["conv2d", "backend", "opencl"]),
    # backward conv
    ("gy shape", lambda: convgpu.conv2d_backward_input(z(1, 2, 3, 3), z(2, 1, 3, 3), (1, 1, 6, 6)),
     ValueError, ["conv2d_backward_input", "grad_output", "(1, 2, 4, 4)"]),
    ("input_shape", lambda: convgpu.conv2d_backward_input(z(1, 2, 3, 3), z(2, 1, 3, 3), (1, 6, 6)),
     ValueError, ["conv2d_backward_input", "(1, 2, 4, 4)"]),
    ("weight_shape", lambda: convgpu.conv2d_backward_weight(z(1, 1, 5, 5), z(1, 2, 3, 3), (2, 1, 3)),
     ValueError, ["conv2d_backward_weight", "weight_shape"]),
    ("wgrad gy", lambda: convgpu.conv2d_backward_weight(z(1, 1, 5, 5), z(1, 2, 2, 3), (2, 1, 3, 3)),
     ValueError, ["conv2d_backward_weight", "grad_output", "(1, 2, 3, 3)"]),
    ("transpose channels", lambda: convgpu.conv_transpose2d(z(1, 3, 4, 4), z(2, 1, 3, 3)), ValueError,
     ["conv_transpose2d", "3 channels", "expects 2"]),
    ("output_padding", lambda: convgpu.conv_transpose2d(z(1, 2, 4, 4), z(2, 1, 3, 3), stride=2,
                                                        output_padding=2),
     ValueError, ["conv_transpose2d", "output_padding"]),
    # pooling
    ("pool pad", lambda: convgpu.max_pool2d(z(1, 1, 6, 6), 3, padding=2), ValueError,
     ["max_pool2d", "padding", "half", "at most 1"]),
    ("avg pad", lambda: convgpu.avg_pool2d(z(1, 1, 6, 6), 2, padding=2), ValueError,
     ["avg_pool2d", "padding", "half"]),
    ("pool window in padding", lambda: convgpu.max_pool2d(z(1, 1, 2, 1), (1, 2), 1, (0, 1), (1, 2)),
     ValueError, ["max_pool2d", "along W", "entirely in the padding", "size 1"]),
    ("pool empty", lambda: convgpu.max_pool2d(z(1, 1, 2, 2), 3), ValueError,
     ["max_pool2d", "larger", "empty"]),
    ("pool stride 0", lambda: convgpu.max_pool2d(z(1, 1, 6, 6), 2, stride=0), ValueError,
     ["max_pool2d", "stride"]),
    ("pool ndim", lambda: convgpu.avg_pool2d(z(6, 6), 2), ValueError, ["avg_pool2d", "input", "2-D"]),
    ("pool int", lambda: convgpu.max_pool2d(z(1, 1, 6, 6, dtype=np.int64), 2), TypeError,
     ["max_pool2d", "int64"]),
    ("divisor 0", lambda: convgpu.avg_pool2d(z(1, 1, 6, 6), 2, divisor_override=0), ValueError,
     ["avg_pool2d", "divisor_override"]),
    ("indices dtype", lambda: convgpu.max_pool2d_backward(z(1, 1, 3, 3), z(1, 1, 3, 3), (1, 1, 6, 6)),
     TypeError, ["max_pool2d_backward", "indices", "float32"]),
    ("indices shape", lambda: convgpu.max_pool2d_backward(z(1, 1, 3, 3), np.zeros((1, 1, 3, 2), np.int64),
                                                          (1, 1, 6, 6)),
     ValueError, ["max_pool2d_backward", "indices", "(1, 1, 3, 2)"]),
    ("indices range", lambda: convgpu.max_pool2d_backward(z(1, 1, 3, 3), np.full((1, 1, 3, 3), 36, np.int64),
                                                          (1, 1, 6, 6)),
     ValueError, ["max_pool2d_backward", "[0, 36)", "36"]),
    ("indices negative", lambda: convgpu.max_pool2d_backward(z(1, 1, 3, 3), np.full((1, 1, 3, 3), -1, np.int64),
                                                             (1, 1, 6, 6)),
     ValueError, ["max_pool2d_backward", "-1"]),
    ("max backward geometry", lambda: convgpu.max_pool2d_backward(z(1, 1, 3, 3), np.zeros((1, 1, 3, 3), np.int64),
                                                                  (1, 1, 6, 6), 3),
     ValueError, ["max_pool2d_backward", "(1, 1, 2, 2)"]),
    ("avg backward gy", lambda: convgpu.avg_pool2d_backward(z(1, 1, 2, 2), (1, 1, 6, 6), 2), ValueError,
     ["avg_pool2d_backward", "(1, 1, 3, 3)"]),
    ("gap backward", lambda: convgpu.global_avg_pool2d_backward(z(2, 3), (2, 4, 5, 5)), ValueError,
     ["global_avg_pool2d_backward", "(2, 4)"]),
    # small ops
    ("relu int", lambda: convgpu.relu(np.ones(3, np.int32)), TypeError, ["relu", "int32"]),
    ("relu_backward shape", lambda: convgpu.relu_backward(z(3), z(4)), ValueError, ["relu_backward", "(3,)"]),
    ("linear features", lambda: convgpu.linear(z(2, 5), z(3, 4)), ValueError,
     ["linear", "5 features", "expects 4"]),
    ("linear bias", lambda: convgpu.linear(z(2, 4), z(3, 4), z(4)), ValueError, ["linear", "bias", "length 3"]),
    ("linear_backward gy", lambda: convgpu.linear_backward(z(2, 4), z(2, 4), z(3, 4)), ValueError,
     ["linear_backward", "(2, 3)"]),
    ("labels dtype", lambda: convgpu.softmax_cross_entropy(z(3, 4), z(3)), TypeError,
     ["softmax_cross_entropy", "labels", "float32"]),
    ("labels range", lambda: convgpu.softmax_cross_entropy(z(3, 4), np.array([0, 4, 1])), ValueError,
     ["softmax_cross_entropy", "[0, 4)", "4"]),
    ("labels length", lambda: convgpu.softmax_cross_entropy_backward(z(3, 4), np.array([0, 1])), ValueError,
     ["softmax_cross_entropy_backward", "length 3"]),
    ("bias_add", lambda: convgpu.bias_add(z(2, 3, 4, 4), z(4)), ValueError, ["bias_add", "length 3"]),
    ("implementations", lambda: convgpu.implementations("conv3d"), ValueError, ["conv3d"]),
    # adaptive_avg_pool2d
    ("adaptive size", lambda: convgpu.adaptive_avg_pool2d(z(1, 1, 5, 5), (2, -1)), ValueError,
     ["adaptive_avg_pool2d", "output_size", "(2, -1)"]),
    ("adaptive size float", lambda: convgpu.adaptive_avg_pool2d(z(1, 1, 5, 5), 2.5), ValueError,
     ["adaptive_avg_pool2d", "output_size", "2.5"]),
    ("adaptive size triple", lambda: convgpu.adaptive_avg_pool2d(z(1, 1, 5, 5), (1, 2, 3)),
     ValueError, ["adaptive_avg_pool2d", "output_size", "(1, 2, 3)"]),
    ("adaptive empty plane", lambda: convgpu.adaptive_avg_pool2d(z(1, 1, 0, 5), 2), ValueError,
     ["adaptive_avg_pool2d", "empty", "(1, 1, 0, 5)"]),
    ("adaptive 2-D", lambda: convgpu.adaptive_avg_pool2d(z(5, 5), 2), ValueError,
     ["adaptive_avg_pool2d", "input"]),
    ("adaptive backward (N, C)", lambda: convgpu.adaptive_avg_pool2d_backward(z(2, 3, 2, 2),
                                                                              (2, 4, 5, 5)),
     ValueError, ["adaptive_avg_pool2d_backward", "(2, 3, 2, 2)", "(2, 4)"]),
    # batch_norm
    ("bn ndim", lambda: convgpu.batch_norm(z(5), None, None, training=True), ValueError,
     ["batch_norm", "(N, C, *)", "(5,)"]),
    ("bn running length", lambda: convgpu.batch_norm(z(2, 3, 4), z(4), z(4)), ValueError,
     ["batch_norm", "running_mean", "(3,)", "(4,)"]),
    ("bn weight length", lambda: convgpu.batch_norm(z(2, 3, 4), z(3), z(3), z(2)), ValueError,
     ["batch_norm", "weight", "(3,)", "(2,)"]),
    ("bn one running", lambda: convgpu.batch_norm(z(2, 3), z(3), None, training=True), ValueError,
     ["batch_norm", "both running_mean and running_var"]),
    ("bn eval without running", lambda: convgpu.batch_norm(z(2, 3), None, None), ValueError,
     ["batch_norm", "training=False", "None"]),
    ("bn one value", lambda: convgpu.batch_norm(z(1, 3, 1), None, None, training=True),
     ValueError, ["batch_norm", "more than one value per channel", "(1, 3, 1)"]),
    ("bn momentum", lambda: convgpu.batch_norm(z(2, 3), None, None, training=True,
                                               momentum="0.1"),
     TypeError, ["batch_norm", "momentum", "'0.1'"]),
    ("bn momentum None", lambda: convgpu.batch_norm(z(2, 3), None, None, training=True,
                                                    momentum=None),
     TypeError, ["batch_norm", "momentum", "None"]),
    ("bn eps", lambda: convgpu.batch_norm(z(2, 3), None, None, training=True, eps=0.0),
     ValueError, ["batch_norm", "eps", "(0.0"]),
    ("bn training str", lambda: convgpu.batch_norm(z(2, 3), None, None, training="yes"),
     TypeError, ["batch_norm", "training", "bool", "'yes'"]),
    ("bn dtype", lambda: convgpu.batch_norm(z(2, 3), z(3, dtype=np.float64), z(3)), TypeError,
     ["batch_norm", "running_mean", "float64", "float32"]),
    ("bn int", lambda: convgpu.batch_norm(z(2, 3, dtype=np.int32), None, None, training=True),
     TypeError, ["batch_norm", "input", "int32"]),
    ("bn backward shape", lambda: convgpu.batch_norm_backward(z(2, 3, 4), z(2, 3, 5), z(3), z(3)),
     ValueError, ["batch_norm_backward", "(2, 3, 4)", "(2, 3, 5)"]),
    ("bn backward stats", lambda: convgpu.batch_norm_backward(z(2, 3, 4), z(2, 3, 4), z(3), z(2)),
     ValueError, ["batch_norm_backward", "invstd", "(3,)", "(2,)"]),
    ("bn backward no mean", lambda: convgpu.batch_norm_backward(z(2, 3, 4), z(2, 3, 4), None, z(3)),
     ValueError, ["batch_norm_backward", "mean", "return_stats=True"]),
]


@pytest.mark.parametrize("name, call, exc, words", CASES, ids=[c[0] for c in CASES])
def test_bad_input_raises_clear_error(name, call, exc, words):
    with pytest.raises(exc) as info:
        call()
    msg = str(info.value)
    for w in words:
        assert w in msg, f"{w!r} not in message: {msg}"


def test_numba_backend_on_host_arrays_is_a_type_error(monkeypatch):
    monkeypatch.delenv("NUMBA_ENABLE_CUDASIM", raising=False)
    with pytest.raises(TypeError, match="conv2d: backend 'numba' needs device arrays"):
        convgpu.conv2d(z(1, 1, 5, 5), z(1, 1, 3, 3), backend="numba")


def test_implementations_listing():
    impls = convgpu.implementations("conv2d")
    assert ("numpy", "im2col") in impls and ("numpy", "fft") in impls
    everything = convgpu.implementations()
    for op in ["conv2d", "conv2d_backward_input", "conv2d_backward_weight", "conv2d_backward_bias",
               "conv_transpose2d", "max_pool2d", "max_pool2d_backward", "avg_pool2d",
               "avg_pool2d_backward", "global_avg_pool2d", "global_avg_pool2d_backward", "relu",
               "relu_backward", "bias_add", "linear", "linear_backward", "softmax_cross_entropy",
               "softmax_cross_entropy_backward", "batch_norm", "batch_norm_backward",
               "adaptive_avg_pool2d", "adaptive_avg_pool2d_backward"]:
        assert op in everything and ("numpy" in {b for b, _ in everything[op]}), op


def test_tf32_permission():
    from convgpu.core import args as _args
    from convgpu.kernels.cuda.launch import tf32_supports
    a = _args.conv_geometry("conv2d", (1, 1, 5, 5), (1, 1, 3, 3), 1, 0, 1, 1, np.float32)
    assert "not allowed" in tf32_supports(a)
    a.allow_tf32 = True
    assert tf32_supports(a) is None
    a.dtype = np.dtype(np.float64)
    assert "float32" in tf32_supports(a)
    with pytest.raises(ValueError, match="allow_tf32"):
        convgpu.conv2d(z(1, 1, 5, 5), z(1, 1, 3, 3), allow_tf32="yes")
    with pytest.raises(ValueError, match="allow_tf32"):
        convgpu.conv2d_backward_input(z(1, 1, 3, 3), z(1, 1, 3, 3), (1, 1, 5, 5), allow_tf32=1)
    with pytest.raises(ValueError, match="allow_tf32"):
        convgpu.conv2d_backward_weight(z(1, 1, 5, 5), z(1, 1, 3, 3), (1, 1, 3, 3),
                                       allow_tf32="on")
    with pytest.raises(ValueError, match="allow_tf32"):
        convgpu.conv_transpose2d(z(1, 1, 3, 3), z(1, 1, 3, 3), allow_tf32=2.0)
    with pytest.raises(TypeError, match="set_allow_tf32"):
        convgpu.set_allow_tf32(1)
    assert convgpu.allow_tf32() is False
    convgpu.set_allow_tf32(True)
    try:
        assert convgpu.allow_tf32() is True and convgpu.allow_tf32(False) is False
    finally:
        convgpu.set_allow_tf32(False)


def test_device_dispatch_decides_once_per_problem(monkeypatch):
    """On the device, supports() and autotuning run on the first call of a problem only;
    later calls of the same problem go straight to the chosen implementation."""
    from convgpu.ops import _registry as R
    monkeypatch.setenv("CONVGPU_CUDA_HOST", "1")            # makes the cuda backend available
    monkeypatch.setattr(R, "_REGISTRY", {})
    monkeypatch.setattr(R, "_CHOICE", {})
    calls = {"supports": 0, "tune": 0}

    def supports(a):
        calls["supports"] += 1
        return None

    R.register("toy", "cuda", "slow", "numpy:subtract", supports=supports)   # fn(args, array)
    R.register("toy", "cuda", "fast", "numpy:add", supports=supports)

    def tune(cands, args, arrays):
        calls["tune"] += 1
        return "fast"

    monkeypatch.setattr(R, "_autotune", tune)
    for _ in range(3):
        assert list(R.dispatch("toy", (2, 3), "auto", "auto", True, [1, 2])) == [3, 5]
    assert calls == {"supports": 2, "tune": 1}
    assert R.autotune_cache() == {("toy", "auto", "auto", (2, 3)): "fast"}
    R.dispatch("toy", (4, 5), "auto", "auto", True, [1])        # a new problem decides again
    assert calls == {"supports": 4, "tune": 2}


class _ArrayOnGpu:
    """Looks like a CuPy array on GPU `dev` to convgpu.arrays (its module and .device): enough
    for the device check, which comes before anything reads the data."""
    __module__ = "cupy._core.core"

    def __init__(self, dev):
        import types
        self.device = types.SimpleNamespace(id=dev)
        self.shape, self.dtype = (1, 2, 4, 4), np.dtype(np.float32)


@pytest.mark.parametrize("call", [
    lambda x: convgpu.relu(x),
    lambda x: convgpu.conv2d(x, x),
    lambda x: convgpu.max_pool2d(x, 2),
    lambda x: convgpu.adam_step(x, x, x, x, 1),
])
def test_arrays_on_another_gpu_than_the_current_are_refused(monkeypatch, call):
    """Kernels launch on the current device: arrays on another GPU are a ValueError before
    any launch (else an illegal address, which ends the CUDA context)."""
    from convgpu import arrays
    monkeypatch.setattr(arrays, "current_device", lambda: 0)
    with pytest.raises(ValueError, match="is on GPU 1 but the current device is GPU 0"):
        call(_ArrayOnGpu(1))
