"""The layer below both the op API (convgpu.ops) and the kernels (convgpu.kernels): what a
call is (the argument records ConvArgs, PoolArgs, ... and the size formulas that build them,
core.args) and what the environment asks for (core.env: the flags read from the environment,
the GPU count). It imports nothing of convgpu but convgpu.arrays, so a launcher and the NumPy
reference may import it without reaching up into the op layer."""
