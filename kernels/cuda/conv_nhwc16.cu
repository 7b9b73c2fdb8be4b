// Channels-last (NHWC) convolutions in float16 / bfloat16 on the tensor cores (mma.sync
// m16n8k16, FP32 accumulation, ldmatrix fragments, cp.async 3-stage pipeline: pipeline16.cuh
// tc16): x (N, H, W, C), w (K, R, S, C/groups), y (N, P, Q, K). Launched by conv_nhwc16.py.
// The GEMM views are those of conv_nhwc.cu (its header comment), with depth d = (r, s, c),
// c fastest, contiguous in x and in w:
//
//   conv2d_nhwc_implicit_gemm_mma16<T, VEC>  y = X_rows[g] (N*P*Q x R*S*Cg) @ W[g]^T, both
//       operands K-major in shared memory (mainloop<true, true>): A rows are output positions
//       (blockIdx.x), B rows the group's output channels (blockIdx.y); y, row-major
//       N*P*Q x K, is the GEMM's output as it stands. Each block decomposes its 128 rows
//       (n, p, q) once into a row table in shared memory. VEC (Cg % 8 == 0, x and w 16-byte
//       aligned: the launcher checks): 8 channels of one tap (r, s) are one 16-byte cp.async
//       of x, zero-filled for padding, edges and past the depth; w's rows (R*S*Cg, then a
//       multiple of 8) move as 16-byte copies too. Else element by element (any shape:
//       Cg = 3, groups): lane l copies depth k0 + l of rows warp + 4 i.
//   conv2d_nhwc_wgrad_implicit_gemm_mma16<T, VA, VB>  gw[g] (Kg x R*S*Cg) = gy[g]^T @ X_rows[g]
//       over the N*P*Q output positions, both operands MN-major (mainloop<false, false>,
//       ldmatrix .trans): A = gy (channels contiguous), B = X_rows (taps (r, s, c), c
//       contiguous); the row-major Kg x R*S*Cg result is the NHWC weight as it stands. The
//       slice's 32 positions are decomposed once per slice into the depth table (prepare).
//       VA: Kg % 8 == 0 and gy 16-byte aligned, 8 channels per 16-byte copy; VB: Cg % 8 == 0
//       and x aligned, 8 taps (one (r, s), 8 consecutive c) per copy; else element-wise.
//       blockIdx.z = group * splits + split: split s sums positions [s*kchunk, (s+1)*kchunk).
//
// Every output is one thread's FP32 sum in depth order, rounded once to T (the bias added in
// FP32 first); with splits > 1 the FP32 partials go to partial + s * split_stride (split 0
// with the bias) and gemm.cu's sum_splits_half adds them in order: deterministic. The input
// gradient runs the forward (conv_nhwc16.py). Launch with tc16::THREADS threads and
// tc16::shared_bytes<KA, KB>() + the table's bytes (ROW_TABLE_BYTES forward, tc::TABLE_BYTES
// weight gradient) of dynamic shared memory.
#include "common.cuh"
#include "conv_shape.cuh"
#include "pipeline16.cuh"

// the forward's row table: one int4 {n*H*W, p*sh - ph, q*sw - pw, 0} per block row, written
// by one thread each
constexpr int ROW_TABLE_BYTES = 128 * 16;
static_assert(ROW_TABLE_BYTES == tc16::BM * 16 && tc16::THREADS == tc16::BM, "a row a thread");
// a row or position past the end: an origin that fails every bounds test
constexpr int NOWHERE = -(1 << 29);

template <typename T, bool VEC>
__global__ void __launch_bounds__(tc16::THREADS)
conv2d_nhwc_implicit_gemm_mma16(const T* __restrict__ x, const T* __restrict__ w,
                                const T* __restrict__ bias, T* __restrict__ y,
                                float* __restrict__ partial, CONV_SHAPE_PARAMS, int splits,
                                int kchunk, long long split_stride) {
    const CONV_SHAPE;
    CONVGPU_DYNAMIC_SHARED(smem_bytes);
    unsigned short* smem = reinterpret_cast<unsigned short*>(smem_bytes);
    const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
    const int g = blockIdx.z / splits, split = blockIdx.z % splits;
    const int Cg = s.C / s.groups, Kg = s.K / s.groups;
    const int RSC = s.R * s.S * Cg, PQ = s.P * s.Q, NPQ = s.N * PQ;
    const int kbeg = split * kchunk, kend = min(RSC, kbeg + kchunk);
    if (split > 0) bias = nullptr;
    if (partial) partial += split * split_stride;
    const int m0 = blockIdx.x * tc16::BM, n0 = blockIdx.y * tc16::BN;
    const unsigned short* xg = reinterpret_cast<const unsigned short*>(x) + (long long)g * Cg;
    const unsigned short* wg = reinterpret_cast<const unsigned short*>(w) + (long long)g * Kg * RSC;

    int4* rows = tc16::depth_table<true, true>(smem);
    {
        const int row = m0 + tid;                       // THREADS == BM: one row a thread
        int4 t = make_int4(0, NOWHERE, NOWHERE, 0);
        if (row < NPQ) {
            const int n = row / PQ, pq = row - n * PQ, p = pq / s.Q;
            t = make_int4(n * s.H * s.W, p * s.sh - s.ph, (pq - p * s.Q) * s.sw - s.pw, 0);
        }
        rows[tid] = t;
    }
    __syncthreads();

    const int steps = kend > kbeg ? (kend - kbeg + tc16::BK - 1) / tc16::BK : 0;
    // x at depth d = (r, s, c) of a row with table entry t, or a zero
    auto load = [&](unsigned short* As, unsigned short* Bs, int step) {
        const int k0 = kbeg + step * tc16::BK;
        // the thread's depth: a chunk of 8 (VEC: within one tap, as Cg % 8 == 0) or one
        const int kk = VEC ? (tid % 4) * 8 : lane;
        const int d = k0 + kk;
        const int rs = d / Cg, c = d - rs * Cg, r = rs / s.S;
        const int dr = d < kend ? r * s.dh : NOWHERE, ds = (rs - r * s.S) * s.dw;
        if constexpr (VEC) {
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                const int row = tid / 4 + 32 * i;
                const int4 t = rows[row];
                const int h = t.y + dr, v = t.z + ds;
                const bool ok = (unsigned)h < (unsigned)s.H && (unsigned)v < (unsigned)s.W;
                const unsigned short* p = ok ? xg + (long long)(t.x + h * s.W + v) * s.C + c : xg;
                cp_async<16>(As + tc16::at<true>(row, kk), p, ok);
            }
        } else {
#pragma unroll 8
            for (int i = 0; i < tc16::BM / 4; ++i) {
                const int row = warp + 4 * i;
                const int4 t = rows[row];
                const int h = t.y + dr, v = t.z + ds;
                const bool ok = (unsigned)h < (unsigned)s.H && (unsigned)v < (unsigned)s.W;
                As[tc16::at<true>(row, kk)] =
                    ok ? xg[(long long)(t.x + h * s.W + v) * s.C + c] : (unsigned short)0;
            }
        }
        tc16::load_tile<true, VEC>(Bs, wg, RSC, n0, Kg, k0, kend, tid);
    };
    float acc[tc16::NACC];
    tc16::mainloop<true, true, Half16<T>::BF16>(smem, steps, tid, acc, load);

    // accumulators e, e + 1: channels c, c + 1 (c even) of output position r, adjacent in y:
    // one 4-byte store of the pair where Kg is even (then r*K + g*Kg + c is even: aligned).
    // Column pair ni's bias read once for its 8 rows.
    const bool pairs = partial == nullptr && Kg % 2 == 0;
#pragma unroll
    for (int ni = 0; ni < tc16::NI; ++ni) {
        const int c = n0 + tc16::acc_col(ni * 4, tid);
        if (c >= Kg) continue;
        const int k = g * Kg + c;
        const bool second = c + 1 < Kg;
        const float b0 = bias ? Half16<T>::to_float(bias[k]) : 0.f;
        const float b1 = bias && second ? Half16<T>::to_float(bias[k + 1]) : 0.f;
#pragma unroll
        for (int mi = 0; mi < tc16::MI; ++mi)
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                const int e = (mi * tc16::NI + ni) * 4 + 2 * h;
                const int r = m0 + tc16::acc_row(e, tid);
                if (r >= NPQ) continue;
                const float v0 = acc[e] + b0, v1 = acc[e + 1] + b1;
                const long long at = (long long)r * s.K + k;
                if (partial) {
                    partial[at] = v0;
                    if (second) partial[at + 1] = v1;
                } else if (pairs) {
                    *reinterpret_cast<typename Half16<T>::Pair*>(y + at) = Half16<T>::pair(v0, v1);
                } else {
                    y[at] = Half16<T>::from_float(v0);
                    if (second) y[at + 1] = Half16<T>::from_float(v1);
                }
            }
    }
}

template <typename T, bool VA, bool VB>
__global__ void __launch_bounds__(tc16::THREADS)
conv2d_nhwc_wgrad_implicit_gemm_mma16(const T* __restrict__ x, const T* __restrict__ gy,
                                      T* __restrict__ gw, float* __restrict__ partial,
                                      CONV_SHAPE_PARAMS, int splits, int kchunk,
                                      long long split_stride) {
    const CONV_SHAPE;
    CONVGPU_DYNAMIC_SHARED(smem_bytes);
    unsigned short* smem = reinterpret_cast<unsigned short*>(smem_bytes);
    const int tid = threadIdx.x;
    const int g = blockIdx.z / splits, split = blockIdx.z % splits;
    const int Cg = s.C / s.groups, Kg = s.K / s.groups;
    const int RSC = s.R * s.S * Cg, PQ = s.P * s.Q, NPQ = s.N * PQ;
    const int kbeg = split * kchunk, kend = min(NPQ, kbeg + kchunk);
    if (partial) partial += split * split_stride;
    const int m0 = blockIdx.y * tc16::BM, n0 = blockIdx.x * tc16::BN;
    const unsigned short* xg = reinterpret_cast<const unsigned short*>(x) + (long long)g * Cg;
    const unsigned short* gyg = reinterpret_cast<const unsigned short*>(gy) + (long long)g * Kg;

    // the thread's tap column(s) of B: 8 from n0 + (tid % 16) * 8 (VB), or n0 + tid, as
    // (r*dh, s*dw, c); past the end an offset that fails every bounds test
    const int col = n0 + (VB ? (tid % 16) * 8 : tid);
    int dr = NOWHERE, ds = 0, c = 0;
    if (col < RSC) {
        const int rs = col / Cg, r = rs / s.S;
        c = col - rs * Cg;
        dr = r * s.dh;
        ds = (rs - r * s.S) * s.dw;
    }
    int4* table = tc16::depth_table<false, false>(smem);
    // position m = (n, p, q): {n*H*W, p*sh - ph, q*sw - pw, 0}
    auto prepare = [&](int step) {
        if (tid >= tc16::BK) return;
        const int m = kbeg + step * tc16::BK + tid;
        int4 t = make_int4(0, NOWHERE, NOWHERE, 0);
        if (m < kend) {
            const int n = m / PQ, pq = m - n * PQ, p = pq / s.Q;
            t = make_int4(n * s.H * s.W, p * s.sh - s.ph, (pq - p * s.Q) * s.sw - s.pw, 0);
        }
        table[(step % tc16::STAGES) * tc16::BK + tid] = t;
    };
    const int steps = kend > kbeg ? (kend - kbeg + tc16::BK - 1) / tc16::BK : 0;
    auto load = [&](unsigned short* As, unsigned short* Bs, int step) {
        const int k0 = kbeg + step * tc16::BK;
        tc16::load_tile<false, VA>(As, gyg, s.K, m0, Kg, k0, kend, tid);
        const int4* t = table + (step % tc16::STAGES) * tc16::BK;
        if constexpr (VB) {
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                const int kk = tid / 16 + 8 * i;
                const int4 d = t[kk];
                const int h = d.y + dr, v = d.z + ds;
                const bool ok = (unsigned)h < (unsigned)s.H && (unsigned)v < (unsigned)s.W;
                const unsigned short* p = ok ? xg + (long long)(d.x + h * s.W + v) * s.C + c : xg;
                cp_async<16>(Bs + tc16::at<false>((tid % 16) * 8, kk), p, ok);
            }
        } else {
#pragma unroll 8
            for (int kk = 0; kk < tc16::BK; ++kk) {
                const int4 d = t[kk];
                const int h = d.y + dr, v = d.z + ds;
                const bool ok = (unsigned)h < (unsigned)s.H && (unsigned)v < (unsigned)s.W;
                Bs[tc16::at<false>(tid, kk)] =
                    ok ? xg[(long long)(d.x + h * s.W + v) * s.C + c] : (unsigned short)0;
            }
        }
    };
    float acc[tc16::NACC];
    tc16::mainloop<false, false, Half16<T>::BF16>(smem, steps, tid, acc, load, prepare);
    tc16::store_half<T, int>(acc, tid, m0, n0, Kg, RSC, RSC,
        [&](int j) { return (long long)g * Kg * RSC + j; }, gw, partial);
}
