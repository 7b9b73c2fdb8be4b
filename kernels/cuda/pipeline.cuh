// The pipelined TF32 tensor-core tile shared by gemm.cu (gemm_pipelined) and conv_implicit.cu
// (conv2d_implicit_gemm_pipelined): what tile:: (common.cuh) lacks on the tensor cores.
//
// tile:: stages each slice through registers (global -> registers -> shared) with one slice
// of look-ahead and BK = 8: per barrier a warp issues 16 mma.sync, far too little work to
// cover a global load, and on the tensor cores that latency is what tile:: measures
// (bench/NOTES.md). Here:
//   - operands go global -> shared by cp.async (no registers, no staging stores), 16-byte
//     copies where the operand allows it, 4-byte copies (zero-filled past the edges) for
//     gathers; STAGES = 3 slices of BK = 32 in flight: two slices of look-ahead, each 4x
//     the work of a tile:: slice;
//   - a 128 x 128 block tile on 4 warps, each warp a 64 x 64 sub-tile (4 x 8 mma.sync
//     m16n8k8 tiles, 128 FP32 accumulators per thread): per k8 step a warp reads 16 + 16
//     32-bit fragment words from shared memory for 32 mma (tile::: 24 for 16);
//   - operands are rounded to TF32 (cvt.rna) as their fragments are read from shared
//     memory: cp.async cannot convert on the way in.
//
// Shared layouts, per operand, by which axis is contiguous in global memory:
//   K-major  [128 rows][BK + 4]  (A stored M x K, B stored N x K): 16-byte copies along k;
//            fragment words at row * 36 + k: banks 4 * g + t, distinct for the 32 lanes;
//   row-major [BK][128 + 8]      (A stored K x M, B stored K x N, gathered columns):
//            fragment words at k * 136 + row: banks 8 * t + g, distinct.
// (g = lane / 4, t = lane % 4 as in the PTX ISA's m16n8k8 fragment layout.)
// The stages live in dynamic shared memory: 3 x (A + B) <= 3 x 36 KiB = 108 KiB per block,
// past the 48 KiB of static shared memory (the launcher raises the function's limit, two
// blocks fit an H100 / H200 SM).
#pragma once
#include "common.cuh"

// cp.async: bytes (4, 8 or 16) from global src to shared dst, or zeros where !full. The copy
// lands by the cp_async_wait that covers its commit group.
template <int BYTES>
__device__ __forceinline__ void cp_async(void* dst, const void* src, bool full) {
#ifdef CONVGPU_HOST
    cuda_host::cp_async(dst, src, BYTES, full ? BYTES : 0);
#else
    const unsigned s = (unsigned)__cvta_generic_to_shared(dst);
    const int src_bytes = full ? BYTES : 0;
    if constexpr (BYTES == 16)   // .cg: L2 only, the operand tiles are reused from shared memory
        asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(src),
                     "r"(src_bytes));
    else
        asm volatile("cp.async.ca.shared.global [%0], [%1], %2, %3;\n" ::"r"(s), "l"(src),
                     "n"(BYTES), "r"(src_bytes));
#endif
}
__device__ __forceinline__ void cp_async_commit() {
#ifdef CONVGPU_HOST
    cuda_host::cp_async_commit();
#else
    asm volatile("cp.async.commit_group;\n" ::);
#endif
}
// wait until at most N of this thread's committed groups are still in flight (a compiler
// memory barrier too: no shared-memory read is moved above it)
template <int N> __device__ __forceinline__ void cp_async_wait() {
#ifdef CONVGPU_HOST
    cuda_host::cp_async_wait(N);
#else
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
#endif
}

namespace tc {
constexpr int BM = 128, BN = 128, BK = 32, STAGES = 3, THREADS = 128;
constexpr int WM = 64, MI = WM / 16;
constexpr int LDK = BK + 4;         // K-major row length (floats): 144 bytes, 16-byte aligned
constexpr int LDR = BN + 8;         // row-major row length: 544 bytes

// The block tile is M x BN, M = BM (128: 2 x 2 warps of 64 x 64) or 64 (1 x 4 warps of
// 64 x 32, for outputs of at most 64 rows, e.g. 64 output channels, where the 128-row tile
// would spend half its mma on zero rows). Every warp covers WM = 64 rows (MI = 4 mma rows).
template <int M> struct Warps {
    static_assert(M == 128 || M == 64, "block tiles of 128 or 64 rows");
    static constexpr int COLS = THREADS / 32 / (M / WM);   // warps along N: 2 or 4
    static constexpr int WN = BN / COLS;                    // 64 or 32 columns per warp
    static constexpr int NI = WN / 8;                       // mma columns per warp: 8 or 4
    static constexpr int NACC = MI * NI * 4;                // accumulators per thread
    __device__ static __forceinline__ int row0(int tid) { return (tid / 32 / COLS) * WM; }
    __device__ static __forceinline__ int col0(int tid) { return (tid / 32 % COLS) * WN; }
};

// floats one operand tile of `rows` rows takes in one stage (row-major only for the BN-row
// tiles: one row length serves them)
template <bool KMAJOR, int ROWS = BM> __host__ __device__ constexpr int tile_floats() {
    static_assert(KMAJOR || ROWS == BN, "row-major tiles have BN rows");
    return KMAJOR ? ROWS * LDK : BK * LDR;
}
// dynamic shared memory bytes of a kernel whose A / B tiles are K-major or not, A of M rows
template <bool KA, bool KB, int M = BM> __host__ __device__ constexpr int shared_bytes() {
    return STAGES * (tile_floats<KA, M>() + tile_floats<KB>()) * 4;
}

// address (in floats) of element (row, k) of an operand tile, row = m for A, n for B
template <bool KMAJOR> __device__ __forceinline__ int at(int row, int k) {
    return KMAJOR ? row * LDK + k : k * LDR + row;
}

// Accumulator e = (mi * NI + ni) * 4 + v of a thread: fragment value v of mma tile (mi, ni)
// of its warp's sub-tile (Warps<M>: origin row0, col0).
template <int M = BM> __device__ __forceinline__ int acc_row(int e, int tid) {
    constexpr int NI = Warps<M>::NI;
    const int g = (tid % 32) / 4, mi = e / (NI * 4), v = e % 4;
    return Warps<M>::row0(tid) + mi * 16 + g + (v >= 2 ? 8 : 0);
}
// a thread's accumulators touch 2 * NI columns ("slots"): slot = ni * 2 + (v & 1)
template <int M = BM> __device__ __forceinline__ int acc_slot(int e) {
    return ((e / 4) % Warps<M>::NI) * 2 + (e & 1);
}
template <int M = BM> __device__ __forceinline__ int slot_col(int slot, int tid) {
    const int t = tid % 4;
    return Warps<M>::col0(tid) + (slot / 2) * 8 + 2 * t + (slot & 1);
}

// acc += A_tile x B_tile over one staged BK slice, on the tensor cores. Operands are rounded
// to TF32 as fragments are read: rounding each landed stage once in shared memory instead
// costs a pass and a barrier per slice and measured slower (bench/NOTES.md, kernel history).
template <bool KA, bool KB, int M = BM>
__device__ __forceinline__ void mma_slice(const float* As, const float* Bs, int tid,
                                          float (&acc)[Warps<M>::NACC]) {
    constexpr int NI = Warps<M>::NI;
    const int g = (tid % 32) / 4, t0 = tid % 4;
    const int r0 = Warps<M>::row0(tid), c0 = Warps<M>::col0(tid);
#pragma unroll
    for (int k8 = 0; k8 < BK; k8 += 8) {
        const int t = k8 + t0;
        unsigned b[NI][2];
#pragma unroll
        for (int ni = 0; ni < NI; ++ni) {
            const int c = c0 + ni * 8 + g;
            b[ni][0] = tile::to_tf32(Bs[at<KB>(c, t)]);
            b[ni][1] = tile::to_tf32(Bs[at<KB>(c, t + 4)]);
        }
#pragma unroll
        for (int mi = 0; mi < MI; ++mi) {
            const int r = r0 + mi * 16 + g;
            unsigned a[4];
            a[0] = tile::to_tf32(As[at<KA>(r, t)]);
            a[1] = tile::to_tf32(As[at<KA>(r + 8, t)]);
            a[2] = tile::to_tf32(As[at<KA>(r, t + 4)]);
            a[3] = tile::to_tf32(As[at<KA>(r + 8, t + 4)]);
#pragma unroll
            for (int ni = 0; ni < NI; ++ni)
                tile::mma_m16n8k8_tf32(&acc[(mi * NI + ni) * 4], a, b[ni]);
        }
    }
}

// The gathers' depth tables: for each of the STAGES slices in flight, one int4 per depth of
// the slice (what a gather needs of that depth: an offset and two coordinate shifts, the
// same for every thread), in dynamic shared memory after the stage buffers. Built by the
// first BK threads (prepare) a slice ahead of the copies that read them, so each gathered
// element costs a broadcast shared read, two adds and two compares instead of stepping and
// re-deriving the depth's coordinates in every thread.
constexpr int TABLE_BYTES = STAGES * BK * 16;
template <bool KA, bool KB, int M = BM> __device__ __forceinline__ int4* depth_table(float* smem) {
    return reinterpret_cast<int4*>(smem + STAGES * (tile_floats<KA, M>() + tile_floats<KB>()));
}
struct NoPrepare {
    __device__ __forceinline__ void operator()(int) const {}
};

// The main loop: acc = sum over `steps` slices of A_tile x B_tile. load(As, Bs, step) issues
// the cp.async copies of slice `step` into the given stage buffers (this thread's share);
// prepare(step) writes what load(.., step) will read of the depth table (slot step % STAGES).
// Slices step + 1 and step + 2 are in flight while slice `step` feeds the tensor cores; one
// barrier per slice. Every iteration commits one group (empty past the end), so
// cp_async_wait<STAGES - 2> always means "slice `step` has landed". Table slot
// (step + STAGES) % STAGES = step % STAGES is rewritten after the barrier of iteration
// `step` (its last reader, load of slice `step`, ran two iterations before) and read after
// the next barrier.
template <bool KA, bool KB, int M = BM, typename Load, typename Prepare = NoPrepare>
__device__ __forceinline__ void mainloop(float* smem, int steps, int tid,
                                         float (&acc)[Warps<M>::NACC], Load&& load,
                                         Prepare&& prepare = Prepare{}) {
    constexpr int SA = tile_floats<KA, M>(), SB = tile_floats<KB>();
    float* As = smem;
    float* Bs = smem + STAGES * SA;
#pragma unroll
    for (int e = 0; e < Warps<M>::NACC; ++e) acc[e] = 0.f;
#pragma unroll
    for (int s = 0; s < STAGES; ++s)
        if (s < steps) prepare(s);
    __syncthreads();                   // the first tables are written
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
        mma_slice<KA, KB, M>(As + cur * SA, Bs + cur * SB, tid, acc);
    }
    cp_async_wait<0>();                // only empty groups remain; leave none behind
}

// 16-byte copies of a 128 x BK operand tile of a plain matrix, one slice per load() call in
// slice order: element (row, k) at src[row * ld + k] (KMAJOR, contiguous along k) or
// src[k * ld + row]; rows [r0, r0 + 128) valid below `rows`, depths valid below kend. The
// caller guarantees 16-byte alignment (ld % 4 == 0, an aligned base, rows or kend a multiple
// of 4 along the contiguous axis), so a vector is wholly inside or outside. The thread's
// pointer, shared offset and row validity are worked out once; a slice then costs, per
// chunk, a 64-bit add, a test and the copy.
template <bool KMAJOR>
struct Copier16 {
    static constexpr int CHUNKS = BM * BK / 4 / THREADS;       // 8 float4 per thread
    static constexpr int STRIDE = KMAJOR ? THREADS / (BK / 4)  // 16 rows between chunks
                                         : THREADS / (BN / 4); // 4 depths between chunks
    const float* p;           // chunk 0 of the next slice
    long long di;             // pointer step from chunk to chunk
    int ld;                   // the matrix's leading dimension (non-KMAJOR: slice step / BK)
    unsigned valid;           // bit i: chunk i's row (KMAJOR) / this thread's columns inside
    int left;                 // depths left below kend from chunk 0 of the next slice
    int soff;                 // shared offset (floats) of chunk 0

    __device__ __forceinline__ Copier16(const float* src, int ld_, int r0, int rows, int kbeg,
                                        int kend, int tid) : ld(ld_) {
        if (KMAJOR) {
            const int r = tid / (BK / 4), kq = (tid % (BK / 4)) * 4;
            p = src + (long long)(r0 + r) * ld + kbeg + kq;
            valid = 0;
#pragma unroll
            for (int i = 0; i < CHUNKS; ++i) valid |= unsigned(r0 + r + STRIDE * i < rows) << i;
            left = kend - kbeg - kq;
            soff = at<true>(r, kq);
        } else {
            const int kr = tid / (BN / 4), c = (tid % (BN / 4)) * 4;
            p = src + (long long)(kbeg + kr) * ld + r0 + c;
            valid = r0 + c < rows ? ~0u : 0u;
            left = kend - kbeg - kr;
            soff = at<false>(c, kr);
        }
        di = (long long)STRIDE * ld;
    }
    // copies the next slice into S; safe: any valid address (zero-filled copies read none)
    __device__ __forceinline__ void load(float* S, const float* safe) {
        const float* q = p;
#pragma unroll
        for (int i = 0; i < CHUNKS; ++i) {
            const bool ok = ((valid >> i) & 1u) && (KMAJOR ? 0 : STRIDE * i) < left;
            cp_async<16>(S + soff + i * STRIDE * (KMAJOR ? LDK : LDR), ok ? q : safe, ok);
            q += di;
        }
        p += KMAJOR ? (long long)BK : (long long)BK * ld;
        left -= BK;
    }
};

// The same copies (of a tile of M rows, M = BN for row-major ones) recomputing each address
// from (r0, k0) on every call: no state kept across slices (fewer live registers than
// Copier16; the conv forward, which also keeps a gather's state, needs that under nvcc
// 13.0's register allocation)
template <bool KMAJOR, int M = BM>
__device__ __forceinline__ void load_matrix16(float* S, const float* __restrict__ src,
                                              long long ld, int r0, int rows, int k0, int kend,
                                              int tid) {
    constexpr int CHUNKS = M * BK / 4 / THREADS;    // 8 (or 4) float4 per thread
#pragma unroll
    for (int i = 0; i < CHUNKS; ++i) {
        const int id = tid + THREADS * i;
        int r, k;
        if (KMAJOR) { r = id / (BK / 4); k = (id % (BK / 4)) * 4; }   // 8 threads per row
        else        { k = id / (BN / 4); r = (id % (BN / 4)) * 4; }   // a warp per k
        const int gr = r0 + r, gk = k0 + k;
        const bool ok = gr < rows && gk < kend;
        const float* p = ok ? (KMAJOR ? src + gr * ld + gk : src + (long long)gk * ld + gr) : src;
        cp_async<16>(S + at<KMAJOR>(r, k), p, ok);
    }
}


// acc[e] += bias[row of e] for rows m0 + row < rows: a thread's accumulators lie in 2 * MI
// rows, so 8 loads
template <int M = BM>
__device__ __forceinline__ void add_row_bias(float (&acc)[Warps<M>::NACC], int tid,
                                             const float* __restrict__ bias, int m0, int rows) {
    constexpr int NI = Warps<M>::NI;
    float b[2 * MI];
#pragma unroll
    for (int i = 0; i < 2 * MI; ++i) {
        const int m = m0 + acc_row<M>((i / 2) * (NI * 4) + (i % 2) * 2, tid);   // mi = i / 2
        b[i] = m < rows ? bias[m] : 0.f;
    }
#pragma unroll
    for (int e = 0; e < Warps<M>::NACC; ++e) acc[e] += b[(e / (NI * 4)) * 2 + (e % 4) / 2];
}

// 4-byte copies of a K-major M x BK tile whose rows lie `stride` elements apart in global
// memory: lane l copies depth l (src: row r0's element at that depth; valid: the depth is),
// rows warp + 4 i of the tile, which stay valid below `rows` (counted from r0).
template <int M = BM>
__device__ __forceinline__ void load_rows4(float* S, const float* __restrict__ src,
                                           long long stride, bool valid, int rows,
                                           const float* __restrict__ safe, int tid) {
    const int lane = tid % 32, warp = tid / 32;
    const float* p = src + warp * stride;
#pragma unroll 8
    for (int i = 0; i < M / 4; ++i) {
        const int r = warp + 4 * i;
        const bool ok = valid && r < rows;
        cp_async<4>(S + at<true>(r, lane), ok ? p : safe, ok);
        p += 4 * stride;
    }
}

// Epilogues, as tile::store_rows / store_columns (through a tile::NchwColumns) for this
// accumulator layout
template <int M = BM>
__device__ __forceinline__ void store_rows(const float (&acc)[Warps<M>::NACC], int tid,
                                           float* C, long long ldc, int m0, int n0, int rows,
                                           int cols) {
#pragma unroll
    for (int e = 0; e < Warps<M>::NACC; ++e) {
        const int r = m0 + acc_row<M>(e, tid), c = n0 + slot_col<M>(acc_slot<M>(e), tid);
        if (r < rows && c < cols) C[(long long)r * ldc + c] = acc[e];
    }
}

template <int M = BM, typename Index, typename Dst>
__device__ __forceinline__ void store_columns(const float (&acc)[Warps<M>::NACC], int tid,
                                              int m0, Index n0, Dst dst) {
#pragma unroll
    for (int sl = 0; sl < 2 * Warps<M>::NI; ++sl) {
        float* base = dst.column(n0 + (Index)slot_col<M>(sl, tid));
        if (!base) continue;
#pragma unroll
        for (int e = 0; e < Warps<M>::NACC; ++e) {
            if (acc_slot<M>(e) != sl) continue;         // resolved at compile time
            dst.put(base, m0 + acc_row<M>(e, tid), acc[e]);
        }
    }
}
}  // namespace tc
