// Shared helpers for the CUDA C kernels (compiled at run time by NVRTC through CuPy).
// NVRTC has no <cmath> INFINITY: infinities come from bit patterns.
#pragma once

template <typename T> __device__ __forceinline__ T neg_inf();
template <> __device__ __forceinline__ float neg_inf<float>() { return -__int_as_float(0x7f800000); }
template <> __device__ __forceinline__ double neg_inf<double>() {
    return -__longlong_as_double(0x7ff0000000000000LL);
}

// four consecutive elements from shared memory (16-byte aligned for float: one LDS.128)
template <typename T> __device__ __forceinline__ void lds4(const T* p, T* out) {
    out[0] = p[0]; out[1] = p[1]; out[2] = p[2]; out[3] = p[3];
}
template <> __device__ __forceinline__ void lds4<float>(const float* p, float* out) {
    const float4 v = *reinterpret_cast<const float4*>(p);
    out[0] = v.x; out[1] = v.y; out[2] = v.z; out[3] = v.w;
}
template <> __device__ __forceinline__ void lds4<double>(const double* p, double* out) {
    const double2 a = *reinterpret_cast<const double2*>(p);
    const double2 b = *reinterpret_cast<const double2*>(p + 2);
    out[0] = a.x; out[1] = a.y; out[2] = b.x; out[3] = b.y;
}

// The register-blocked tile shared by gemm.cu and conv.cu: a 256-thread block computes a
// 128 x 128 tile of C; thread (tx, ty) = (tid % 16, tid / 16) owns rows ty*4 + {0..3} and
// 64 + ty*4 + {0..3}, columns tx*4 + {0..3} and 64 + tx*4 + {0..3} (two 4-wide halves 64
// apart, so the shared-memory reads are 16-byte vectors without bank conflicts).
namespace tile {
constexpr int BM = 128, BN = 128, BK = 8, TM = 8, TN = 8, THREADS = 256;

__device__ __forceinline__ int row_of(int ty, int i) { return (i < 4 ? 0 : 64) + ty * 4 + (i & 3); }
__device__ __forceinline__ int col_of(int tx, int j) { return (j < 4 ? 0 : 64) + tx * 4 + (j & 3); }

// acc += As[kk][rows] x Bs[kk][cols] for the BK slices of one staged tile
template <typename T>
__device__ __forceinline__ void mma_tile(const T (*As)[BM], const T (*Bs)[BN], int tx, int ty,
                                         T (&acc)[TM][TN]) {
#pragma unroll
    for (int kk = 0; kk < BK; ++kk) {
        T a[TM], b[TN];
        lds4(&As[kk][ty * 4], a);
        lds4(&As[kk][64 + ty * 4], a + 4);
        lds4(&Bs[kk][tx * 4], b);
        lds4(&Bs[kk][64 + tx * 4], b + 4);
#pragma unroll
        for (int i = 0; i < TM; ++i)
#pragma unroll
            for (int j = 0; j < TN; ++j) acc[i][j] += a[i] * b[j];
    }
}
}  // namespace tile
