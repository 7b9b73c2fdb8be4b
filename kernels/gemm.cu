// Register-blocked shared-memory GEMM, batched, with an optional deterministic split-K.
//
//   gemm_tiled<T, TA, TB, TF32>   C[b] (M x N) = op(A[b]) (M x K) @ op(B[b]) (K x N)
//       A is stored M x K (row-major) or, with TA, K x M; B is K x N or, with TB, N x K.
//       128 x 128 x 8 tiles, 256 threads, 64 outputs per thread in registers, computed by
//       FFMA (8 x 8 per thread) or, with TF32, by tensor-core mma.sync (common.cuh); the next
//       tile is read from global memory into registers while the current one is used, then
//       stored to the other shared buffer (double buffering, one barrier per step). Global
//       loads run along each operand's contiguous axis; shared reads are 16-byte vectors.
//       blockIdx.z = batch * splits + split: split s sums k in [s*kchunk, (s+1)*kchunk) and
//       writes its partial product to C + s * split_stride.
//   sum_splits<T>           out[i] = sum over s of parts[s * n + i], in order s = 0, 1, ...
#include "common.cuh"

using namespace tile;

template <typename T, bool TA, bool TB, bool TF32>
__global__ void __launch_bounds__(THREADS)
gemm_tiled(const T* __restrict__ A, const T* __restrict__ B, T* __restrict__ C, int M, int N,
           int K, long long batch_stride_a, long long batch_stride_b, long long batch_stride_c,
           int splits, int kchunk, long long split_stride) {
    __shared__ __align__(16) T As[2][BK][LDS];
    __shared__ __align__(16) T Bs[2][BK][LDS];
    const int tid = threadIdx.x;
    const int batch = blockIdx.z / splits, split = blockIdx.z % splits;
    A += batch * batch_stride_a;
    B += batch * batch_stride_b;
    C += batch * batch_stride_c + split * split_stride;
    const int m0 = blockIdx.y * BM, n0 = blockIdx.x * BN;
    const int kbeg = split * kchunk, kend = min(K, kbeg + kchunk);

    // which tile elements this thread moves: A as (row m, depth k), B as (depth k, column n)
    int am[4], ak[4], bk[4], bn[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        if (TA) { ak[i] = tid / 32; am[i] = tid % 32 + 32 * i; }      // contiguous along m
        else    { am[i] = tid / 2;  ak[i] = (tid % 2) * 4 + i; }     // contiguous along k
        if (TB) { bn[i] = tid / 2;  bk[i] = (tid % 2) * 4 + i; }     // contiguous along k
        else    { bk[i] = tid / 32; bn[i] = tid % 32 + 32 * i; }     // contiguous along n
    }
    T ra[4], rb[4];
    auto fetch = [&](int k0) {
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const int gm = m0 + am[i], gk = k0 + ak[i];
            ra[i] = (gm < M && gk < kend)
                        ? (TA ? A[(long long)gk * M + gm] : A[(long long)gm * K + gk]) : T(0);
            const int gk2 = k0 + bk[i], gn = n0 + bn[i];
            rb[i] = (gk2 < kend && gn < N)
                        ? (TB ? B[(long long)gn * K + gk2] : B[(long long)gk2 * N + gn]) : T(0);
        }
    };
    auto stage = [&](int buf) {
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            As[buf][ak[i]][am[i]] = staged<T, TF32>(ra[i]);
            Bs[buf][bk[i]][bn[i]] = staged<T, TF32>(rb[i]);
        }
    };

    T acc[NACC];
    mainloop<T, TF32>(As, Bs, kbeg, (kend - kbeg + BK - 1) / BK, tid, acc, fetch, stage);
#pragma unroll
    for (int e = 0; e < NACC; ++e) {
        const int r = m0 + acc_row<TF32>(e, tid), c = n0 + slot_col<TF32>(acc_slot<TF32>(e), tid);
        if (r < M && c < N) C[(long long)r * N + c] = acc[e];
    }
}

template <typename T>
__global__ void sum_splits(const T* __restrict__ parts, T* __restrict__ out, long long n,
                           int splits) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        T s = parts[i];
        for (int k = 1; k < splits; ++k) s += parts[k * n + i];
        out[i] = s;
    }
}
