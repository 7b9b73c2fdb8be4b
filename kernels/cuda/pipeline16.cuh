// The cp.async tensor-core tile of pipeline.cuh for 16-bit operands (float16, bfloat16) on
// mma.sync m16n8k16, shared by gemm.cu (gemm_mma16) and conv_implicit.cu (the *_mma16
// convolutions): cp.async three slices of BK = 32 ahead, 128 x 128
// block tiles on 4 warps of 64 x 64 (4 x 8 m16n8k16 tiles, 128 FP32 accumulators per thread),
// fragments read from shared memory by ldmatrix: .x4 on K-major tiles, .x4.trans on MN-major
// ones (the 8 x 8 matrices then hold k along rows and the instruction transposes them).
// Shared layouts (elements of 2 bytes), per operand:
//   K-major  [128 rows][BK + 8]: 80-byte rows, so the 8 rows of an ldmatrix matrix start
//            20 words apart and hit all 32 banks once;
//   MN-major [BK][128 + 8]: 272-byte rows, 68 words apart: banks 4 r, distinct.
#pragma once
#include "common.cuh"
#include "half.cuh"
#include "pipeline.cuh"

namespace tc16 {
constexpr int BM = 128, BN = 128, BK = 32, STAGES = 3, THREADS = 128;
constexpr int WM = 64, WN = 64, MI = WM / 16, NI = WN / 8, NACC = MI * NI * 4;
constexpr int LDK = BK + 8, LDR = BM + 8;
static_assert(BM == BN, "one tile size serves both operands");

template <bool KMAJOR> __host__ __device__ constexpr int tile_elems() {
    return KMAJOR ? BM * LDK : BK * LDR;
}
template <bool KA, bool KB> __host__ __device__ constexpr int shared_bytes() {
    return STAGES * (tile_elems<KA>() + tile_elems<KB>()) * 2;
}
// a gather's depth table (tc::TABLE_BYTES: STAGES x BK int4) after the stage buffers
template <bool KA, bool KB> __device__ __forceinline__ int4* depth_table(unsigned short* smem) {
    return reinterpret_cast<int4*>(smem + STAGES * (tile_elems<KA>() + tile_elems<KB>()));
}
// The block's start shared by the tc16 kernels (gemm_mma16, the *_mma16 convolutions): its
// dynamic shared memory in 16-bit elements, and its split of the reduction. blockIdx.z =
// outer * splits + split (outer: the batch, the group, or group and phase); split s owns
// depths [kbeg, kend) = [s * kchunk, min(depth, (s + 1) * kchunk)), steps() slices of BK
// (none where it starts past the end), and writes FP32 partials at partial + s * split_stride.
__device__ __forceinline__ unsigned short* dynamic_smem() {
    CONVGPU_DYNAMIC_SHARED(bytes);
    return reinterpret_cast<unsigned short*>(bytes);
}
struct SplitK {
    int outer, split, kbeg, kend;
    __device__ __forceinline__ explicit SplitK(int splits)
        : outer(blockIdx.z / splits), split(blockIdx.z % splits), kbeg(0), kend(0) {}
    // the depth: long long where it may pass 2**31 (the launcher keeps each split's below)
    template <typename D> __device__ __forceinline__ SplitK over(int kchunk, D depth) const {
        SplitK r = *this;
        r.kbeg = split * kchunk;
        r.kend = (int)min(depth, (D)r.kbeg + kchunk);
        return r;
    }
    // at the mainloop call: computed up front it cost two builds 37 and 46 registers
    __device__ __forceinline__ int steps() const {
        return kend > kbeg ? (kend - kbeg + BK - 1) / BK : 0;
    }
};

// element (row, k) of an operand tile, row = m for A, n for B
template <bool KMAJOR> __device__ __forceinline__ int at(int row, int k) {
    return KMAJOR ? row * LDK + k : k * LDR + row;
}
// warp w's 64 x 64 sub-tile: 2 x 2 warps
__device__ __forceinline__ int row0(int tid) { return (tid / 32 / 2) * WM; }
__device__ __forceinline__ int col0(int tid) { return (tid / 32 % 2) * WN; }

// acc += A_tile x B_tile over one staged BK slice. Lane l addresses row l % 8 of ldmatrix
// matrix i = l / 8; the four matrices are the m16n8k16 registers a0..a3 of one mma row
// (A), or b0, b1 of two mma columns (B):
//   A K-major: matrix i = rows 8 (i % 2), depths 8 (i / 2); MN-major (.trans): stored rows
//   (depths) 8 (i / 2), columns 8 (i % 2). B K-major: rows 8 (i / 2), depths 8 (i % 2);
//   MN-major (.trans): depths 8 (i % 2), columns 8 (i / 2).
template <bool KA, bool KB, bool BF16>
__device__ __forceinline__ void mma_slice(const unsigned short* As, const unsigned short* Bs,
                                          int tid, float (&acc)[NACC]) {
    const int lane = tid % 32, i = lane / 8, r8 = lane % 8;
    const int r0 = row0(tid), c0 = col0(tid);
#pragma unroll
    for (int kk = 0; kk < BK; kk += 16) {
        unsigned b[NI][2];
#pragma unroll
        for (int nj = 0; nj < NI / 2; ++nj) {
            unsigned r[4];
            const int n = c0 + nj * 16;
            if (KB) tile::ldmatrix_x4<false>(r, Bs + at<true>(n + r8 + 8 * (i / 2), kk + 8 * (i % 2)));
            else    tile::ldmatrix_x4<true>(r, Bs + at<false>(n + 8 * (i / 2), kk + r8 + 8 * (i % 2)));
            b[2 * nj][0] = r[0];
            b[2 * nj][1] = r[1];
            b[2 * nj + 1][0] = r[2];
            b[2 * nj + 1][1] = r[3];
        }
#pragma unroll
        for (int mi = 0; mi < MI; ++mi) {
            unsigned a[4];
            const int m = r0 + mi * 16;
            if (KA) tile::ldmatrix_x4<false>(a, As + at<true>(m + r8 + 8 * (i % 2), kk + 8 * (i / 2)));
            else    tile::ldmatrix_x4<true>(a, As + at<false>(m + 8 * (i % 2), kk + r8 + 8 * (i / 2)));
#pragma unroll
            for (int ni = 0; ni < NI; ++ni)
                tile::mma_m16n8k16<BF16>(&acc[(mi * NI + ni) * 4], a, b[ni]);
        }
    }
}

// The main loop, as tc::mainloop: load(As, Bs, step) fills the stage buffers of slice `step`
// (cp.async copies, committed here, or plain stores: either way complete for every thread
// after the barrier of iteration `step`); slices step + 1 and step + 2 are in flight while
// slice `step` feeds the tensor cores; one barrier per slice.
template <typename P> struct IsNoPrepare { static constexpr bool value = false; };
template <> struct IsNoPrepare<tc::NoPrepare> { static constexpr bool value = true; };

// prepare(step), if given, writes what load(.., step) reads of a depth table (slot
// step % STAGES), as tc::mainloop's: the first STAGES before a barrier, then slot `step`
// again after the barrier of iteration `step` (its last reader ran two iterations before).
template <bool KA, bool KB, bool BF16, typename Load, typename Prepare = tc::NoPrepare>
__device__ __forceinline__ void mainloop(unsigned short* smem, int steps, int tid,
                                         float (&acc)[NACC], Load&& load,
                                         Prepare&& prepare = Prepare{}) {
    constexpr int SA = tile_elems<KA>(), SB = tile_elems<KB>();
    unsigned short* As = smem;
    unsigned short* Bs = smem + STAGES * SA;
#pragma unroll
    for (int e = 0; e < NACC; ++e) acc[e] = 0.f;
    if constexpr (!IsNoPrepare<Prepare>::value) {
#pragma unroll
        for (int s = 0; s < STAGES; ++s)
            if (s < steps) prepare(s);
        __syncthreads();               // the first tables are written
    }
#pragma unroll
    for (int s = 0; s < STAGES - 1; ++s) {
        if (s < steps) load(As + s * SA, Bs + s * SB, s);
        cp_async_commit();
    }
    for (int step = 0; step < steps; ++step) {
        cp_async_wait<STAGES - 2>();   // this thread's copies of slice `step` have landed
        __syncthreads();               // everyone's have; and slice step - 1 is consumed
        const int next = step + STAGES - 1, nb = next % STAGES;   // = buffer of step - 1
        if (next < steps) load(As + nb * SA, Bs + nb * SB, next);
        cp_async_commit();
        if (step + STAGES < steps) prepare(step + STAGES);
        const int cur = step % STAGES;
        mma_slice<KA, KB, BF16>(As + cur * SA, Bs + cur * SB, tid, acc);
    }
    cp_async_wait<0>();
}

// One slice of a plain matrix operand into a stage buffer: element (row, k) at
// src[row * ld + k] (KMAJOR) or src[k * ld + row]; rows valid below `rows` (from r0),
// depths below kend; zeros elsewhere. VEC: 16-byte cp.async copies of 8 elements (the
// caller guarantees ld and the contiguous extent multiples of 8 and a 16-byte aligned base,
// so a copy is wholly inside or outside); else element by element, plain loads and stores
// (any shape and alignment: K = 37 included).
template <bool KMAJOR, bool VEC>
__device__ __forceinline__ void load_tile(unsigned short* S, const unsigned short* __restrict__ src,
                                          long long ld, int r0, int rows, int k0, int kend,
                                          int tid) {
    if constexpr (VEC) {
        constexpr int CHUNKS = BM * BK / 8 / THREADS;     // 4 per thread
#pragma unroll
        for (int c = 0; c < CHUNKS; ++c) {
            const int id = tid + THREADS * c;
            int r, k;
            if (KMAJOR) { r = id / (BK / 8); k = (id % (BK / 8)) * 8; }
            else        { k = id / (BM / 8); r = (id % (BM / 8)) * 8; }
            const int gr = r0 + r, gk = k0 + k;
            const bool ok = gr < rows && gk < kend;
            const unsigned short* p = ok ? (KMAJOR ? src + gr * ld + gk : src + gk * ld + gr) : src;
            cp_async<16>(S + at<KMAJOR>(r, k), p, ok);
        }
    } else {
        constexpr int ELEMS = BM * BK / THREADS;           // 32 per thread
#pragma unroll 8
        for (int e = 0; e < ELEMS; ++e) {
            const int id = tid + THREADS * e;              // a warp along the contiguous axis
            int r, k;
            if (KMAJOR) { r = id / BK; k = id % BK; }
            else        { k = id / BM; r = id % BM; }
            const int gr = r0 + r, gk = k0 + k;
            S[at<KMAJOR>(r, k)] = (gr < rows && gk < kend)
                                      ? (KMAJOR ? src[gr * ld + gk] : src[gk * ld + gr])
                                      : (unsigned short)0;
        }
    }
}

// Accumulator e = (mi * NI + ni) * 4 + v of a thread: row and column within the block tile
__device__ __forceinline__ int acc_row(int e, int tid) {
    return row0(tid) + (e / (NI * 4)) * 16 + (tid % 32) / 4 + (e % 4 >= 2 ? 8 : 0);
}
__device__ __forceinline__ int acc_col(int e, int tid) {
    return col0(tid) + ((e / 4) % NI) * 8 + 2 * (tid % 4) + (e & 1);
}

// Element-wise copies of a K-major tile whose rows lie `stride` elements apart in global
// memory: lane l copies depth l (src: row r0's element at that depth; valid: the depth is)
// for rows warp + 4 i, valid below `rows` (counted from r0); zeros elsewhere.
__device__ __forceinline__ void load_rows(unsigned short* S, const unsigned short* __restrict__ src,
                                          long long stride, bool valid, int rows, int tid) {
    const int lane = tid % 32, warp = tid / 32;
#pragma unroll 8
    for (int i = 0; i < BM / 4; ++i) {
        const int r = warp + 4 * i;
        S[at<true>(r, lane)] = valid && r < rows ? src[r * stride] : (unsigned short)0;
    }
}

// The epilogue of the half kernels without bias: the accumulator of tile row m (< rows) and
// column c (< cols) goes to offset column(c) + m * row_stride: rounded once into out, or as
// FP32 into partial where that is not null (a split). Each of the thread's 16 columns is
// decomposed once.
template <typename T, typename Index, typename Column>
__device__ __forceinline__ void store_half(const float (&acc)[NACC], int tid, int m0, Index n0,
                                           int rows, Index cols, long long row_stride,
                                           Column&& column, T* out, float* partial) {
#pragma unroll
    for (int sl = 0; sl < 2 * NI; ++sl) {
        const Index c = n0 + acc_col((sl / 2) * 4 + (sl & 1), tid);
        if (c >= cols) continue;
        const long long base = column(c);
#pragma unroll
        for (int mi = 0; mi < MI; ++mi)
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                const int e = (mi * NI + sl / 2) * 4 + (sl & 1) + 2 * h;
                const int m = m0 + acc_row(e, tid);
                if (m >= rows) continue;
                const long long at = base + (long long)m * row_stride;
                if (partial) partial[at] = acc[e];
                else out[at] = Half16<T>::from_float(acc[e]);
            }
    }
}

// The epilogue of gemm_mma16 and the channels-last kernels, whose tile columns are adjacent
// in memory: accumulators e, e + 1 are columns c, c + 1 (c even) of tile row i, at offset
// row(i) + c and + 1 (row(i) < 0: a row past the end); columns valid below `cols`. BIAS: bias[c] added
// in FP32 (0 where bias is null), read once per column pair for its 8 rows. Each
// value rounded once into out, as one 4-byte store of the pair where `pairs` (the caller
// checks alignment), or as FP32 into partial where that is not null (a split).
template <typename T, bool BIAS, typename Row>
__device__ __forceinline__ void store_half_pairs(const float (&acc)[NACC], int tid, int n0,
                                                 int cols, const T* bias, Row&& row, bool pairs,
                                                 T* out, float* partial) {
#pragma unroll
    for (int ni = 0; ni < NI; ++ni) {
        const int c = n0 + acc_col(ni * 4, tid);
        if (c >= cols) continue;
        const bool second = c + 1 < cols;
        float b0 = 0.f, b1 = 0.f;
        if constexpr (BIAS) {
            b0 = bias ? Half16<T>::to_float(bias[c]) : 0.f;
            b1 = bias && second ? Half16<T>::to_float(bias[c + 1]) : 0.f;
        }
#pragma unroll
        for (int mi = 0; mi < MI; ++mi)
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                const int e = (mi * NI + ni) * 4 + 2 * h;
                const long long base = row(acc_row(e, tid));
                if (base < 0) continue;
                float v0 = acc[e], v1 = acc[e + 1];
                if constexpr (BIAS) { v0 += b0; v1 += b1; }
                const long long at = base + c;
                if (partial) {
                    partial[at] = v0;
                    if (second) partial[at + 1] = v1;
                } else if (pairs) {
                    *reinterpret_cast<typename Half16<T>::Pair*>(out + at) = Half16<T>::pair(v0, v1);
                } else {
                    out[at] = Half16<T>::from_float(v0);
                    if (second) out[at + 1] = Half16<T>::from_float(v1);
                }
            }
    }
}
}  // namespace tc16
