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
//   gemm_vec<TA, TB, TF32, RM>  float32 with 16-deep tiles and 16-byte global reads, tiles
//       of 128 or (for M <= 64) 64 rows (below)
//   gemm_pipelined<TA, TB>  TF32 tensor cores, cp.async 3-stage pipeline, 64 x 64 warp
//       tiles (pipeline.cuh)
//   gemm_mma16<T, TA, TB, VEC>  T = __half or __nv_bfloat16 on the tensor cores (mma.sync
//       m16n8k16, FP32 accumulation, ldmatrix, cp.async 3-stage pipeline: pipeline.cuh tc16)
//   sum_splits<T>           out[i] = sum over s of parts[s * n + i], in order s = 0, 1, ...
//   sum_splits_half<T>      the same over FP32 partials, rounded once to T
//
// TF32 operands are rounded in integer arithmetic here (CONVGPU_TF32_ROUND 1, common.cuh),
// not by cvt.rna as in conv_implicit.cu: bit-exact either way, and faster for the GEMMs of
// this file only (bench/tf32_rounding.py; the timings in bench/NOTES.md).
#ifndef CONVGPU_TF32_ROUND
#define CONVGPU_TF32_ROUND 1
#endif
#include "common.cuh"
#include "pipeline.cuh"
#include "pipeline16.cuh"

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
    store_rows<TF32>(acc, tid, C, N, m0, n0, M, N);
}

// gemm_vec<TA, TB, TF32, RM>: the same tile and main loop for float32 with 16-deep shared
// tiles (half the barriers per FMA of gemm_tiled) and every global read a 16-byte vector.
// Operands contiguous along k (A as M x K, B as N x K) are stored transposed into shared
// memory, those contiguous along m / n as vectors. Needs each operand's contiguous extent a
// multiple of 4 and 16-byte aligned bases (the launcher checks, else uses gemm_tiled); a
// vector is then wholly inside or wholly outside the matrix, so one bounds test covers four
// elements. RM = 128: 256 threads, each moving two float4 of A and two of B per step;
// RM = 64 (for M <= 64, where a 128-row tile would compute half zeros): a 64 x 128 tile of
// 128 threads, each moving two float4 of A and four of B, same 8 x 8 outputs per thread.
constexpr int BKV = 16;
// RM = 128: two blocks per SM (<= 128 registers) on sm_90, where ptxas fits every variant
// without spilling; sm_80's ptxas spills one variant (TA, !TB) at that cap, so it gets one.
// RM = 64: three blocks (<= 168 registers; at four, 128, the B staging of (!TA, TB) spills)
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 900
#define GEMM_VEC_MIN_BLOCKS(RM) ((RM) == 64 ? 2 : 1)
#else
#define GEMM_VEC_MIN_BLOCKS(RM) ((RM) == 64 ? 3 : 2)
#endif

template <bool TA, bool TB, bool TF32, int RM = BM>
__global__ void __launch_bounds__(2 * RM, GEMM_VEC_MIN_BLOCKS(RM))
gemm_vec(const float* __restrict__ A, const float* __restrict__ B, float* __restrict__ C, int M,
         int N, int K, long long batch_stride_a, long long batch_stride_b,
         long long batch_stride_c, int splits, int kchunk, long long split_stride) {
    static_assert(RM == 64 || RM == 128, "gemm_vec tiles have 64 or 128 rows");
    constexpr int NT = 2 * RM;                 // threads
    constexpr int VB = BN * BKV / 4 / NT;      // float4 of B per thread per step: 2 or 4
    __shared__ __align__(16) float As[2][BKV][LDS];
    __shared__ __align__(16) float Bs[2][BKV][LDS];
    const int tid = threadIdx.x;
    const int batch = blockIdx.z / splits, split = blockIdx.z % splits;
    A += batch * batch_stride_a;
    B += batch * batch_stride_b;
    C += batch * batch_stride_c + split * split_stride;
    const int m0 = blockIdx.y * RM, n0 = blockIdx.x * BN;
    const int kbeg = split * kchunk, kend = min(K, kbeg + kchunk);
    // vector i of an operand contiguous along k: row tid / 2 + (i / 2) * NT / 2, depths
    //   ((tid % 2) + 2 (i % 2)) * 4 + {0..3};
    // contiguous along m / n: depth tid / (W / 4) + (i * NT) / (W / 4), columns
    //   (tid % (W / 4)) * 4 + {0..3}, W the tile's width (RM for A, BN for B).
    // The thread's parts are worked out once, here: computed from tid inside the lambdas,
    // NVRTC 13.0 re-reads threadIdx in the main loop (bench/NOTES.md, kernel history).
    const int kr = tid / 2, kd = (tid % 2) * 4;                  // along k
    const int ad = tid / (RM / 4), ac = (tid % (RM / 4)) * 4;    // A along m
    const int bd = tid / (BN / 4), bc = (tid % (BN / 4)) * 4;    // B along n
    auto krow = [&](int i) { return kr + (i / 2) * (NT / 2); };
    auto kdep = [&](int i) { return kd + 8 * (i % 2); };
    auto adep = [&](int i) { return ad + i * (NT / (RM / 4)); };
    auto bdep = [&](int i) { return bd + i * (NT / (BN / 4)); };
    const float4 zero = make_float4(0.f, 0.f, 0.f, 0.f);
    float4 ra[2], rb[VB];
    auto fetch = [&](int k0) {
#pragma unroll
        for (int i = 0; i < 2; ++i) {
            if (!TA) {
                const int gm = m0 + krow(i), gk = k0 + kdep(i);
                ra[i] = (gm < M && gk < kend)
                            ? *reinterpret_cast<const float4*>(A + (long long)gm * K + gk) : zero;
            } else {
                const int gk = k0 + adep(i), gm = m0 + ac;
                ra[i] = (gk < kend && gm < M)
                            ? *reinterpret_cast<const float4*>(A + (long long)gk * M + gm) : zero;
            }
        }
#pragma unroll
        for (int i = 0; i < VB; ++i) {
            if (TB) {
                const int gn = n0 + krow(i), gk = k0 + kdep(i);
                rb[i] = (gn < N && gk < kend)
                            ? *reinterpret_cast<const float4*>(B + (long long)gn * K + gk) : zero;
            } else {
                const int gk = k0 + bdep(i), gn = n0 + bc;
                rb[i] = (gk < kend && gn < N)
                            ? *reinterpret_cast<const float4*>(B + (long long)gk * N + gn) : zero;
            }
        }
    };
    auto put = [&](float (*S)[LDS], const float4& v, bool along_k, int i, bool a) {
        const float4 t = make_float4(staged<float, TF32>(v.x), staged<float, TF32>(v.y),
                                     staged<float, TF32>(v.z), staged<float, TF32>(v.w));
        if (along_k) {
            const int k = kdep(i), r = krow(i);
            S[k][r] = t.x; S[k + 1][r] = t.y; S[k + 2][r] = t.z; S[k + 3][r] = t.w;
        } else {
            *reinterpret_cast<float4*>(&S[a ? adep(i) : bdep(i)][a ? ac : bc]) = t;
        }
    };
    auto stage = [&](int buf) {
#pragma unroll
        for (int i = 0; i < 2; ++i) put(As[buf], ra[i], !TA, i, true);
#pragma unroll
        for (int i = 0; i < VB; ++i) put(Bs[buf], rb[i], TB, i, false);
    };
    float acc[NACC];
    mainloop<float, TF32, RM>(As, Bs, kbeg, (kend - kbeg + BKV - 1) / BKV, tid, acc, fetch, stage);
    store_rows<TF32, RM>(acc, tid, C, N, m0, n0, M, N);
}

// gemm_pipelined<TA, TB>: C = op(A) @ op(B) in TF32 on the tensor cores, the operands copied
// to shared memory by cp.async three slices of 32 ahead (pipeline.cuh): A stored M x K and B
// stored N x K are kept K-major, the others row-major. Same arguments, batching and split-K
// as gemm_tiled (kchunk a multiple of tc::BK); the same conditions as gemm_vec (contiguous
// extents multiples of 4, 16-byte aligned bases), since every copy is 16 bytes. Launch with
// tc::THREADS threads and tc::shared_bytes<!TA, TB>() bytes of dynamic shared memory.
template <bool TA, bool TB>
__global__ void __launch_bounds__(tc::THREADS)
gemm_pipelined(const float* __restrict__ A, const float* __restrict__ B, float* __restrict__ C,
               int M, int N, int K, long long batch_stride_a, long long batch_stride_b,
               long long batch_stride_c, int splits, int kchunk, long long split_stride) {
    CONVGPU_DYNAMIC_SHARED(smem_bytes);
    float* smem = reinterpret_cast<float*>(smem_bytes);
    constexpr bool KA = !TA, KB = TB;   // which operands are contiguous along k
    const int tid = threadIdx.x;
    const int batch = blockIdx.z / splits, split = blockIdx.z % splits;
    A += batch * batch_stride_a;
    B += batch * batch_stride_b;
    C += batch * batch_stride_c + split * split_stride;
    const int m0 = blockIdx.y * tc::BM, n0 = blockIdx.x * tc::BN;
    const int kbeg = split * kchunk, kend = min(K, kbeg + kchunk);
    const int steps = kend > kbeg ? (kend - kbeg + tc::BK - 1) / tc::BK : 0;
    tc::Copier16<KA> copy_a(A, KA ? K : M, m0, M, kbeg, kend, tid);
    tc::Copier16<KB> copy_b(B, KB ? K : N, n0, N, kbeg, kend, tid);
    auto load = [&](float* As, float* Bs, int) {     // called for slices 0, 1, 2, ... in order
        copy_a.load(As, A);
        copy_b.load(Bs, B);
    };
    float acc[tc::Warps<tc::BM>::NACC];
    tc::mainloop<KA, KB>(smem, steps, tid, acc, load);
    tc::store_rows(acc, tid, C, N, m0, n0, M, N);
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

// gemm_mma16<T, TA, TB, VEC>: C = op(A) @ op(B) (+ bias[n], a row vector, if not null) for
// T = __half or __nv_bfloat16 on the tensor cores: mma.sync m16n8k16 with FP32 accumulation,
// each output rounded once to T (after the bias is added in FP32); operands copied by tc16's
// pipeline (pipeline.cuh), A stored M x K and B stored N x K kept K-major, the others MN-major.
// Same batching and split-K as gemm_tiled (kchunk a multiple of tc16::BK): where partial is
// not null, split s writes its FP32 partial product to partial + s * split_stride (C and
// bias unused: sum_splits_half adds the bias and rounds the sum, or a caller that sums
// further takes the FP32 values: col2im), else the result goes to C. VEC: 16-byte copies (each
// operand's contiguous extent a multiple of 8, 16-byte aligned bases: the launcher checks);
// without, element by element (any shape: K = 37, N = 1). Launch with tc16::THREADS threads
// and tc16::shared_bytes<!TA, TB>() bytes of dynamic shared memory.
template <typename T, bool TA, bool TB, bool VEC>
__global__ void __launch_bounds__(tc16::THREADS)
gemm_mma16(const T* __restrict__ A, const T* __restrict__ B, T* __restrict__ C,
           float* __restrict__ partial, const T* __restrict__ bias, int M, int N, int K,
           long long batch_stride_a, long long batch_stride_b, long long batch_stride_c,
           int splits, int kchunk, long long split_stride) {
    unsigned short* smem = tc16::dynamic_smem();
    constexpr bool KA = !TA, KB = TB;   // which operands are contiguous along k
    const int tid = threadIdx.x;
    const tc16::SplitK z = tc16::SplitK(splits).over(kchunk, K);
    const int batch = z.outer, split = z.split, kbeg = z.kbeg, kend = z.kend;
    const unsigned short* a = reinterpret_cast<const unsigned short*>(A) + batch * batch_stride_a;
    const unsigned short* b = reinterpret_cast<const unsigned short*>(B) + batch * batch_stride_b;
    const int m0 = blockIdx.y * tc16::BM, n0 = blockIdx.x * tc16::BN;
    auto load = [&](unsigned short* As, unsigned short* Bs, int step) {
        const int k0 = kbeg + step * tc16::BK;
        tc16::load_tile<KA, VEC>(As, a, KA ? K : M, m0, M, k0, kend, tid);
        tc16::load_tile<KB, VEC>(Bs, b, KB ? K : N, n0, N, k0, kend, tid);
    };
    float acc[tc16::NACC];
    tc16::mainloop<KA, KB, Half16<T>::BF16>(smem, z.steps(), tid, acc, load);

    // C row-major (M x N): columns c, c + 1 adjacent, one 4-byte store of the pair where N
    // is even (then r * N + c is even: aligned); split s's FP32 partials at the same offsets
    const long long cbase = batch * batch_stride_c;
    tc16::store_half_pairs<T, true>(acc, tid, n0, N, partial ? nullptr : bias,
        [&](int i) { const int r = m0 + i; return r < M ? (long long)r * N : -1LL; },
        partial == nullptr && N % 2 == 0, partial ? nullptr : C + cbase,
        partial ? partial + split * split_stride + cbase : nullptr);
}

// out[i] = the FP32 partials of gemm_mma16 summed in split order, plus bias[i % cols] (if not
// null), rounded once to T
template <typename T>
__global__ void sum_splits_half(const float* __restrict__ parts, const T* __restrict__ bias,
                                T* __restrict__ out, long long n, int cols, int splits) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        float s = parts[i];
        for (int k = 1; k < splits; ++k) s += parts[k * n + i];
        if (bias) s += Half16<T>::to_float(bias[i % cols]);
        out[i] = Half16<T>::from_float(s);
    }
}
