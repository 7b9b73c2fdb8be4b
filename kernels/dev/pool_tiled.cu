// The "tiled" max pooling kernels: a band of rows staged in shared memory, launched by
// pool_tiled.py. Superseded: on the H100 (e8f4431) both measured slower than the kernels they
// were to replace, on every benchmarked shape (bench/NOTES.md):
//   max_pool2d_fwd_tiled: 51% / 92% / 57% of copy bandwidth on AlexNet 3x3/2, VGG 2x2/2,
//     ResNet 3x3/2 p1, against 84% / 101% / 89% for max_pool2d_fwd (ncu: tiled 106 us, SM 49%,
//     memory 44%; direct 59 us, memory 79%): staging the band costs more than the L2
//     re-reads it saves.
//   max_pool2d_bwd_tiled: 29% / 54% / 37% of copy (38-65% unchecked), against 47% / 64% / 54%
//     (63-71% unchecked) for max_pool2d_bwd_cells.
// Kept for study and A/B timing (CONVGPU_DEV=1, algo="tiled"); bitwise the answers of the
// kernels they shadow.
#include "pool.cu"

// max_pool2d_fwd_tiled<T, I, K>: square K x K windows (K = 2, 3) at dilation 1 with a band
// of input rows staged in shared memory. Block b takes plane nc = b / bands and output rows
// [p0, p0 + TO): a warp per row copies input rows p0*sh - ph + [0, RI), RI = (TO-1)*sh + K,
// each clamped into [0, H) as max_window_clamped clamps them, whole rows with consecutive
// lanes on consecutive columns; then a warp per output row, lanes along it, takes each
// window from shared memory (columns clamped likewise) and stores values and indices in
// warp-wide runs. Same answer as max_pool2d_fwd<T, I, K>, bitwise; the input crosses L2
// (1 + (K - sh) / (TO * sh)) times instead of once per overlapping window (ncu, H200,
// 670fe90: L2 85% busy for the direct kernel). Dynamic shared memory RI * W * sizeof(T).
template <typename T, typename I, int K>
__global__ void max_pool2d_fwd_tiled(const T* __restrict__ x, T* __restrict__ y,
                                     long long* __restrict__ idx, I NC, int TO, int bands,
                                     POOL_SHAPE_PARAMS) {
    const POOL_SHAPE;
    CONVGPU_DYNAMIC_SHARED(raw);
    T* rows = reinterpret_cast<T*>(raw);
    const int RI = (TO - 1) * s.sh + K;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, nwarps = blockDim.x / 32;
    const I blocks = NC * bands;
    for (I blk = blockIdx.x; blk < blocks; blk += gridDim.x) {
        const I nc = blk / bands;
        const int p0 = (int)(blk - nc * bands) * TO, hfirst = p0 * s.sh - s.ph;
        const T* xp = x + (long long)nc * s.H * s.W;
        __syncthreads();                       // the previous band's readers are done
        for (int rr = warp; rr < RI; rr += nwarps) {
            const T* src = xp + (long long)min(max(hfirst + rr, 0), s.H - 1) * s.W;
            for (int v = lane; v < s.W; v += 32) rows[rr * s.W + v] = src[v];
        }
        __syncthreads();
        const long long obase = (long long)nc * s.P * s.Q;
        for (int p = p0 + warp; p < min(p0 + TO, s.P); p += nwarps) {
            const int h0 = p * s.sh - s.ph, rr0 = (p - p0) * s.sh;
            int rpos[K], spos[K], cpos[K];
            const AllTrue<K> all;
#pragma unroll
            for (int r = 0; r < K; ++r) {
                rpos[r] = min(max(h0 + r, 0), s.H - 1) * s.W;    // global flat row offset
                spos[r] = (rr0 + r) * s.W;                        // its row in shared memory
            }
            for (int q = lane; q < s.Q; q += 32) {
                T val[K][K];
                clamped_window<K>(rows, spos, q * s.sw - s.pw, s.W, cpos, val);
                T best;
                int bi;
                first_max<K>(val, all.v, all.v, rpos, cpos, best, bi);
                y[obase + (long long)p * s.Q + q] = best;
                idx[obase + (long long)p * s.Q + q] = bi;
            }
        }
    }
}

// max_pool2d_bwd_tiled<T, I>: the gather by cells with the candidates staged in shared
// memory. Block b takes plane nc = b / bands and band of cell rows [i0, i0 + TI): it copies
// output rows i0 - 1 .. i0 + TI - 1 (indices and gradients, every column: the band's
// candidates and one halo row) into shared memory with consecutive threads on consecutive
// columns, validating each index there, then a warp per input row of the band, lanes along
// it, each element summing its 2 x 2 candidates from shared memory in the same (p, q) order
// as the cells kernel (adding 0 for the others: bitwise the same result), stores coalesced. The
// cells kernel reads each output row through L2 from two cell rows and writes 2-float runs
// (ncu, H200, 670fe90: L2 88% busy, DRAM 37%); here an output row crosses L2 (1 + 1/TI)
// times and every store is a full warp-wide run. Same conditions as the cells kernel
// (strides <= 2, (k - 1) * d < 2 * s); dynamic shared memory (TI + 1) * Q * (8 + sizeof(T)).
template <typename T, typename I>
__global__ void max_pool2d_bwd_tiled(const T* __restrict__ gy, const long long* __restrict__ idx,
                                     T* __restrict__ gx, int* __restrict__ bad, I NC, int TI,
                                     int bands, POOL_SHAPE_PARAMS) {
    const POOL_SHAPE;
    POOL_DIV(I, divW, W, mW);
    POOL_DIV(I, divSH, sh, mSH);
    POOL_DIV(I, divSW, sw, mSW);
    CONVGPU_DYNAMIC_SHARED(raw);
    const int R = TI + 1, RQ = R * s.Q;
    long long* sid = reinterpret_cast<long long*>(raw);
    T* sg = reinterpret_cast<T*>(raw + (size_t)RQ * sizeof(long long));
    // a warp per row, lanes along it: no division per element
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, nwarps = blockDim.x / 32;
    int flags = 0;
    const I blocks = NC * bands;
    for (I blk = blockIdx.x; blk < blocks; blk += gridDim.x) {
        const I nc = blk / bands;
        const int band = (int)(blk - nc * bands), i0 = band * TI, p0 = i0 - 1;
        const long long obase = (long long)nc * s.P * s.Q;
        __syncthreads();                       // the previous band's readers are done
        for (int rr = warp; rr < R; rr += nwarps) {
            const int p = p0 + rr;
            const bool prow = p >= 0 && p < s.P;
            const long long* irow = idx + obase + (long long)p * s.Q;
            const T* grow = gy + obase + (long long)p * s.Q;
            for (int q = lane; q < s.Q; q += 32) {
                long long id = -1;
                T g = T(0);
                if (prow) {
                    id = irow[q];
                    g = grow[q];
                    if (bad) flags |= index_violation(id, p, q, s, divW);
                }
                sid[rr * s.Q + q] = id;
                sg[rr * s.Q + q] = g;
            }
        }
        __syncthreads();
        const int h_lo = max(i0 * s.sh - s.ph, 0), h_hi = min((i0 + TI) * s.sh - s.ph, s.H);
        T* gp = gx + (long long)nc * s.H * s.W;
        for (int h = h_lo + warp; h < h_hi; h += nwarps) {
            // candidate rows p = i - 1, i of shared row (p - p0) = i - i0, i - i0 + 1
            const int i = (int)divSH.div(h + s.ph);
            const int r0 = (i - i0) * s.Q, r1 = r0 + s.Q;
            T* xrow = gp + (long long)h * s.W;
            for (int v = lane; v < s.W; v += 32) {
                const int j = (int)divSW.div(v + s.pw);
                // candidate columns q = j - 1, j, read from clamped (valid) places and masked
                const bool va = j >= 1 && j - 1 < s.Q, vb = j < s.Q;
                const int ca = min(max(j - 1, 0), s.Q - 1), cb = min(j, s.Q - 1);
                const long long me = (long long)h * s.W + v;
                const long long i00 = sid[r0 + ca], i01 = sid[r0 + cb];
                const long long i10 = sid[r1 + ca], i11 = sid[r1 + cb];
                const T g00 = sg[r0 + ca], g01 = sg[r0 + cb], g10 = sg[r1 + ca], g11 = sg[r1 + cb];
                T acc = T(0);
                acc += (va && i00 == me) ? g00 : T(0);               // (i-1, j-1)
                acc += (vb && i01 == me) ? g01 : T(0);               // (i-1, j)
                acc += (va && i10 == me) ? g10 : T(0);               // (i, j-1)
                acc += (vb && i11 == me) ? g11 : T(0);               // (i, j)
                xrow[v] = acc;
            }
        }
    }
    if (flags) atomicOr(bad, flags);
}
