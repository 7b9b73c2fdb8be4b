"""Device code, by backend, then by op family: numba/ (the Numba kernels), cuda/ (the CUDA C
kernels, their launchers and the host emulation), dev/ (candidate and superseded kernels,
never picked by algo="auto"); outputs.py and fft_common.py are shared by both backends."""
