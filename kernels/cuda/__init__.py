"""The CUDA C backend: per op family a .cu and its launcher module side by side, named alike
(gemm, conv_implicit, im2col, conv_direct, winograd, fft, depthwise, pool, norm, elementwise,
ceiling); sources.py what each .cu is built from, module.py the memoised loader, launch.py
what the launchers share, common.cuh / pipeline.cuh / conv_shape.cuh the shared device code,
emulator/ the host emulation that runs every .cu on the CPU."""

FAMILIES = ("gemm", "conv_implicit", "im2col", "conv_direct", "winograd", "fft", "depthwise",
            "pool", "norm", "elementwise", "ceiling")
FAMILIES += ("conv_nhwc", "pool_nhwc", "norm_nhwc")          # channels-last kernels (NHWC)


def launcher_modules():
    """Every launcher module and launch.py, imported: for the tools and tests that wrap a
    name (get_function, gemm) wherever a launcher imported it."""
    import importlib
    return [importlib.import_module(f"{__name__}.{m}") for m in FAMILIES + ("launch",)]
