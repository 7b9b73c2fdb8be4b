"""The Numba backend: one module per op family (conv_direct, im2col, gemm, fft, winograd,
pool, norm, elementwise), each its kernels simplest first, then their launchers; launch.py
what they share. The readable, simulator-tested version of each algorithm."""
