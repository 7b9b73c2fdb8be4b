"""The host emulation of the CUDA C kernels (cuda_host.py, cuda_host.h): every .cu built by
g++ and run thread by thread on the CPU, for the tests and for machines without a GPU."""
