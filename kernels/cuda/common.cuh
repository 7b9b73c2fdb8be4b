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

// The register-blocked tile shared by gemm.cu and conv_implicit.cu: a 256-thread block computes a
// 128 x 128 tile of C from operand tiles staged in shared memory as As[k][m] and Bs[k][n]
// (rows padded by PAD floats so the tensor-core fragment reads hit 32 distinct banks).
// Each thread holds 64 accumulators; two ways to fill them:
//   FFMA (TF32 = false): thread (tx, ty) = (tid % 16, tid / 16) owns rows ty*4 + {0..3} and
//     64 + ty*4 + {0..3}, columns tx*4 + {0..3} and 64 + tx*4 + {0..3} (two 4-wide halves
//     64 apart: the shared reads are 16-byte vectors without bank conflicts); acc[i*8 + j].
//     A tile of RM = 64 rows (gemm_vec's short variant) has 128 threads, the row halves 32
//     apart; every helper below takes RM (default BM).
//   TF32 tensor cores (TF32 = true, float only): warp w owns the 64 x 32 sub-tile at rows
//     (w / 4) * 64, columns (w % 4) * 32, as 4 x 4 mma.sync.m16n8k8 tiles; operands rounded
//     to TF32 (cvt.rna) as they are staged (staged<T, TF32>), accumulation in FP32; acc[(mi*4 + ni)*4 + v] is fragment value v of
//     tile (mi, ni) in the PTX ISA's m16n8k8 C layout.
namespace tile {
constexpr int BM = 128, BN = 128, BK = 8, THREADS = 256, NACC = 64, PAD = 8, LDS = BM + PAD;

template <int RM = BM> __device__ __forceinline__ int row_of(int ty, int i) {
    return (i < 4 ? 0 : RM / 2) + ty * 4 + (i & 3);
}
__device__ __forceinline__ int col_of(int tx, int j) { return (j < 4 ? 0 : 64) + tx * 4 + (j & 3); }

// row within the tile of accumulator e of thread tid (TF32: RM / 16 warps of 64 x 32)
template <bool TF32, int RM = BM> __device__ __forceinline__ int acc_row(int e, int tid) {
    if constexpr (TF32) {
        const int warp = tid / 32, g = (tid % 32) / 4, mi = e / 16, v = e % 4;
        return (warp / 4) * 64 + mi * 16 + g + (v >= 2 ? 8 : 0);
    } else {
        return row_of<RM>(tid / 16, e / 8);
    }
}
// each thread's accumulators touch 8 distinct columns ("slots")
template <bool TF32> __device__ __forceinline__ int acc_slot(int e) {
    if constexpr (TF32) return ((e / 4) % 4) * 2 + (e & 1);
    else return e % 8;
}
template <bool TF32> __device__ __forceinline__ int slot_col(int slot, int tid) {
    if constexpr (TF32) {
        const int warp = tid / 32, t = tid % 4;
        return (warp % 4) * 32 + (slot / 2) * 8 + 2 * t + (slot & 1);
    } else {
        return col_of(tid % 16, slot);
    }
}

// x rounded to TF32 for mma.sync: to nearest, ties away from zero, as a .b32 whose low 13
// bits the tensor cores ignore (they read an operand's top 19 bits: nvcc lowers cvt.rna
// itself to "if finite, add 0x1000" and leaves those bits set). CONVGPU_TF32_ROUND picks
// how; bench/tf32_rounding.py times the three side by side on a device:
//   0 (default) the PTX instruction cvt.rna.tf32.f32: FSETP + predicated IADD, every one on
//     the same predicate register, a chain the tensor-core loops wait on;
//   1 the same rounding in integer arithmetic: two mins and an add, no predicate. The mins
//     cap only NaNs whose top mantissa bits are all set (0x7fffffff, the device's canonical
//     NaN, and 0xffffffff), which the add would carry into the exponent and sign (a NaN
//     read as -0 / +0); capped, they stay NaN. In gemm_pipelined's main loop (nvcc 13.0,
//     sm_90) the static stall cycles per slice fall from 2253 to 1428, in the implicit-GEMM
//     convolutions' they rise 1-8% (the compiler had already hidden the chain there);
//   2 no rounding: the FP32 bits as they are, which the tensor cores truncate toward zero
//     (biased: products ~7e-4 small on average). The measurement's floor, not a mode to use.
// The host emulation runs 1 for 0 (it has no PTX); its mma drops the low 13 bits as the
// hardware does.
#ifndef CONVGPU_TF32_ROUND
#define CONVGPU_TF32_ROUND 0
#endif
__device__ __forceinline__ unsigned to_tf32(float x) {
    const unsigned u = __float_as_uint(x);
#if CONVGPU_TF32_ROUND == 2
    return u;
#elif CONVGPU_TF32_ROUND == 0 && !defined(CONVGPU_HOST)
    unsigned r;
    asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(r) : "f"(x));
    return r;
#else
    const unsigned capped = (unsigned)min((int)min(u, 0xffffefffu), 0x7fffefff);
    return capped + 0x1000u;
#endif
}

// d (16 x 8, FP32) += a (16 x 8, TF32) @ b (8 x 8, TF32), one warp, PTX ISA fragment layout
__device__ __forceinline__ void mma_m16n8k8_tf32(float* d, const unsigned* a, const unsigned* b) {
#ifdef CONVGPU_HOST
    cuda_host::mma_m16n8k8_tf32(d, a, b);
#else
    asm volatile(
        "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 "
        "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#endif
}

// d (16 x 8, FP32) += a (16 x 16) @ b (16 x 8) in f16 or, with BF16, bf16, one warp, PTX ISA
// m16n8k16 fragment layout: each register holds two 16-bit operands, the lower index in the
// low half (a: 4 registers, b: 2; cuda_host.h spells out the lanes)
template <bool BF16>
__device__ __forceinline__ void mma_m16n8k16(float* d, const unsigned* a, const unsigned* b) {
#ifdef CONVGPU_HOST
    cuda_host::mma_m16n8k16<BF16>(d, a, b);
#else
    if constexpr (BF16)
        asm volatile(
            "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
            "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
            : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
    else
        asm volatile(
            "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
            "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
            : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#endif
}

// four 8 x 8 matrices of 16-bit values from shared memory, one register each per lane: lane l
// passes the address of row l % 8 of matrix l / 8 (16-byte aligned); lane l gets row l / 4,
// columns 2 (l % 4) + {0, 1} of each, or with TRANS column l / 4, rows 2 (l % 4) + {0, 1}
template <bool TRANS> __device__ __forceinline__ void ldmatrix_x4(unsigned* r, const void* row) {
#ifdef CONVGPU_HOST
    cuda_host::ldmatrix_x4<TRANS>(r, row);
#else
    const unsigned s = (unsigned)__cvta_generic_to_shared(row);
    if constexpr (TRANS)
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                     : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(s));
    else
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                     : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(s));
#endif
}

// the value staged into shared memory: rounded to TF32 once there (for the tensor-core
// path), so the inner loop reads ready operands
template <typename T, bool TF32> __device__ __forceinline__ T staged(T v) {
    if constexpr (TF32) return __uint_as_float(to_tf32(v));
    else return v;
}

// acc += As x Bs over the BKT (a multiple of 8) slices of one staged tile of RM rows
template <typename T, bool TF32, int BKT = BK, int RM = BM>
__device__ __forceinline__ void mma(const T (*As)[LDS], const T (*Bs)[LDS], int tid,
                                    T (&acc)[NACC]) {
    if constexpr (TF32) {
        static_assert(sizeof(T) == 4, "TF32 tiles are float only");
        const int warp = tid / 32, g = (tid % 32) / 4, t0 = tid % 4;
        const int r0 = (warp / 4) * 64, c0 = (warp % 4) * 32;
#pragma unroll
        for (int k8 = 0; k8 < BKT; k8 += 8) {
        const int t = k8 + t0;
        unsigned a[4][4], b[4][2];
#pragma unroll
        for (int mi = 0; mi < 4; ++mi) {
            const int r = r0 + mi * 16 + g;
            a[mi][0] = __float_as_uint(As[t][r]);
            a[mi][1] = __float_as_uint(As[t][r + 8]);
            a[mi][2] = __float_as_uint(As[t + 4][r]);
            a[mi][3] = __float_as_uint(As[t + 4][r + 8]);
        }
#pragma unroll
        for (int ni = 0; ni < 4; ++ni) {
            const int c = c0 + ni * 8 + g;
            b[ni][0] = __float_as_uint(Bs[t][c]);
            b[ni][1] = __float_as_uint(Bs[t + 4][c]);
        }
#pragma unroll
        for (int mi = 0; mi < 4; ++mi)
#pragma unroll
            for (int ni = 0; ni < 4; ++ni) {
                mma_m16n8k8_tf32(reinterpret_cast<float*>(&acc[(mi * 4 + ni) * 4]), a[mi], b[ni]);
            }
        }
    } else {
        const int tx = tid % 16, ty = tid / 16;
#pragma unroll
        for (int kk = 0; kk < BKT; ++kk) {
            T av[8], bv[8];
            lds4(&As[kk][ty * 4], av);
            lds4(&As[kk][RM / 2 + ty * 4], av + 4);
            lds4(&Bs[kk][tx * 4], bv);
            lds4(&Bs[kk][64 + tx * 4], bv + 4);
#pragma unroll
            for (int i = 0; i < 8; ++i)
#pragma unroll
                for (int j = 0; j < 8; ++j) acc[i * 8 + j] += av[i] * bv[j];
        }
    }
}

// The main loop every tiled GEMM here shares: acc += A_tile x B_tile over `steps` slices of
// BKT (the depth of the shared tiles, deduced from them), starting at depth kbeg. fetch(k0) reads the operand elements this thread moves for
// the slice at depth k0 from global memory into registers; stage(buf) stores them (rounded
// for TF32) into shared buffer buf. The next slice is fetched while the current one feeds
// the FMAs / tensor cores, then staged into the other buffer: double buffering with one
// barrier per step.
template <typename T, bool TF32, int RM = BM, int BKT, typename Fetch, typename Stage>
__device__ __forceinline__ void mainloop(T (*As)[BKT][LDS], T (*Bs)[BKT][LDS], int kbeg, int steps,
                                         int tid, T (&acc)[NACC], Fetch&& fetch, Stage&& stage) {
#pragma unroll
    for (int e = 0; e < NACC; ++e) acc[e] = T(0);
    if (steps > 0) {
        fetch(kbeg);
        stage(0);
    }
    __syncthreads();
    for (int t = 0; t < steps; ++t) {
        const int cur = t & 1;
        if (t + 1 < steps) fetch(kbeg + (t + 1) * BKT);
        mma<T, TF32, BKT, RM>(As[cur], Bs[cur], tid, acc);
        if (t + 1 < steps) stage(cur ^ 1);
        __syncthreads();
    }
}

// The staging of the implicit GEMMs whose B tile is gathered column by column: thread tid
// holds A elements (row tid / 2, depth (tid % 2) * 4 + i) and B elements (depth tid / 32,
// column tid % 32 + 32 i), i = 0..3.
template <typename T, bool TF32>
__device__ __forceinline__ void stage_gathered(T (*As)[LDS], T (*Bs)[LDS], const T (&ra)[4],
                                               const T (&rb)[4], int tid) {
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        As[(tid % 2) * 4 + i][tid / 2] = staged<T, TF32>(ra[i]);
        Bs[tid / 32][tid % 32 + 32 * i] = staged<T, TF32>(rb[i]);
    }
}

// Epilogues: where each of a thread's accumulators goes.
// store_rows: C row-major (leading dimension ldc) from tile origin (m0, n0), inside M x N.
template <bool TF32, int RM = BM, typename T>
__device__ __forceinline__ void store_rows(const T (&acc)[NACC], int tid, T* C, long long ldc,
                                           int m0, int n0, int M, int N) {
#pragma unroll
    for (int e = 0; e < NACC; ++e) {
        const int r = m0 + acc_row<TF32, RM>(e, tid), c = n0 + slot_col<TF32>(acc_slot<TF32>(e), tid);
        if (r < M && c < N) C[(long long)r * ldc + c] = acc[e];
    }
}

// The output of the implicit GEMMs whose tile column is an (n, spatial) position of an NCHW
// tensor: column col = (n, position in a plane of `plane` elements) of `total`, row r =
// channel chan0 + r of `channels`, written only below `rows` (the group's channels).
// column(col) is the address of row 0 of column col (nullptr: outside); put(address, r,
// value) writes row r there. NchwColumnsBias adds bias[channel] (bias may be null).
template <typename T, typename Index> struct NchwColumns {
    T* out;
    Index total;
    int plane, channels, chan0, rows;
    __device__ __forceinline__ T* column(Index col) const {
        return col < total ? out + (long long)(col / plane) * channels * plane + col % plane
                           : nullptr;
    }
    __device__ __forceinline__ void put(T* c, int r, T v) const {
        if (r < rows) c[(long long)(chan0 + r) * plane] = v;
    }
};
template <typename T, typename Index> struct NchwColumnsBias : NchwColumns<T, Index> {
    const T* bias;
    __device__ __forceinline__ void put(T* c, int r, T v) const {
        const int k = this->chan0 + r;
        if (r < this->rows) c[(long long)k * this->plane] = v + (bias ? bias[k] : T(0));
    }
};

// store_columns: writes the accumulators through dst (an NchwColumns); each of the 8 columns
// a thread touches is decomposed once.
template <bool TF32, typename T, typename Index, typename Dst>
__device__ __forceinline__ void store_columns(const T (&acc)[NACC], int tid, int m0, Index n0,
                                              Dst dst) {
#pragma unroll
    for (int sl = 0; sl < 8; ++sl) {
        T* base = dst.column(n0 + (Index)slot_col<TF32>(sl, tid));   // Index: int or long long
        if (!base) continue;
#pragma unroll
        for (int e = 0; e < NACC; ++e) {
            if (acc_slot<TF32>(e) != sl) continue;           // resolved at compile time
            dst.put(base, m0 + acc_row<TF32>(e, tid), acc[e]);
        }
    }
}
}  // namespace tile

// exp / log in the element type (float math for float, double for double)
template <typename T> __device__ __forceinline__ T exp_t(T v);
template <> __device__ __forceinline__ float exp_t<float>(float v) { return expf(v); }
template <> __device__ __forceinline__ double exp_t<double>(double v) { return exp(v); }
template <typename T> __device__ __forceinline__ T log_t(T v);
template <> __device__ __forceinline__ float log_t<float>(float v) { return logf(v); }
template <> __device__ __forceinline__ double log_t<double>(double v) { return log(v); }

// sum of v over the 32 lanes of a warp, every lane gets it; a fixed butterfly order, so the
// result does not depend on scheduling (deterministic)
template <typename T> __device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
    for (int m = 16; m > 0; m /= 2) v += __shfl_xor_sync(0xffffffffu, v, m);
    return v;
}

// Division by a divisor fixed for the whole launch. Divider<int> multiplies instead
// (Granlund & Montgomery): n / d = umulhi(n, mul) >> shr, exact for 0 <= n < 2**31, with mul
// and shr computed on the host (launch.py: fastdiv; mul = 0 means d = 1); an
// integer division costs ~20 instructions, this two. Divider<long long> divides.
template <typename I> struct Divider;
template <> struct Divider<int> {
    int d;
    unsigned mul, shr;
    __device__ __forceinline__ int div(int n) const {
        return mul ? (int)(__umulhi((unsigned)n, mul) >> shr) : n;
    }
};
template <> struct Divider<long long> {
    long long d;
    __device__ __forceinline__ long long div(long long n) const { return n / d; }
};
template <typename I> __device__ __forceinline__ Divider<I> divider(int d, unsigned mul, unsigned shr);
template <> __device__ __forceinline__ Divider<int> divider<int>(int d, unsigned mul, unsigned shr) {
    return Divider<int>{d, mul, shr};
}
template <> __device__ __forceinline__ Divider<long long> divider<long long>(int d, unsigned, unsigned) {
    return Divider<long long>{d};
}
// The same constants worked out on the device (d >= 1), once per thread before a main loop:
// one 64-bit division there instead of integer divisions in every step of it. Identical to
// the host's fastdiv: p = 31 + ceil(log2 d), mul = ceil(2**p / d), shr = p - 32.
__device__ __forceinline__ Divider<int> divider_for(int d) {
    if (d <= 1) return Divider<int>{1, 0u, 0u};
    const int p = 31 + (32 - __clz(d - 1));
    const unsigned long long mul = ((1ull << p) + (unsigned long long)d - 1) / (unsigned long long)d;
    return Divider<int>{d, (unsigned)mul, (unsigned)(p - 32)};
}

// The first of split s's items when N items are cut into S splits in order: splits differ
// by at most one item (batch norm's rows, 64-bit for the N*H*W rows of an NHWC input; the
// depthwise weight gradient's images).
template <typename I> __device__ __forceinline__ I split_start(I N, int S, int s) {
    return N / S * s + min((I)s, N % S);
}

// dynamic shared memory of the launch (the launcher's shared_mem bytes), 16-byte aligned
#ifdef CONVGPU_HOST
#define CONVGPU_DYNAMIC_SHARED(name) char* name = cuda_host::dynamic_shared()
#else
#define CONVGPU_DYNAMIC_SHARED(name) extern __shared__ __align__(16) char name[]
#endif
