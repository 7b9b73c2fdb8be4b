// The machine's arithmetic ceiling as a kernel of ours (convgpu bench's FP32 FMA rate):
//
//   fma_peak<T>  every thread runs CHAINS independent multiply-add chains,
//                acc[j] = acc[j] * a + b, for `iters` rounds of UNROLL steps (NVRTC contracts
//                each into one FFMA/DFMA; the compile tier checks the PTX), then writes the
//                sum of its chains so nothing is dead code. FLOPs = 2 * CHAINS * UNROLL *
//                iters per thread. Eight independent chains cover the FMA latency (4 cycles)
//                twice over, so the issue rate, not the dependency, limits it.
#include "common.cuh"

namespace ceiling {
constexpr int CHAINS = 8, UNROLL = 16;
}

template <typename T>
__global__ void fma_peak(T* __restrict__ out, int iters, T a, T b) {
    using namespace ceiling;
    const long long tid = blockIdx.x * (long long)blockDim.x + threadIdx.x;
    T acc[CHAINS];
#pragma unroll
    for (int j = 0; j < CHAINS; ++j) acc[j] = T(threadIdx.x % 32 + j) * T(0.0625);
    for (int it = 0; it < iters; ++it) {
#pragma unroll
        for (int u = 0; u < UNROLL; ++u)
#pragma unroll
            for (int j = 0; j < CHAINS; ++j) acc[j] = acc[j] * a + b;
    }
    T s = T(0);
#pragma unroll
    for (int j = 0; j < CHAINS; ++j) s += acc[j];
    out[tid] = s;
}
