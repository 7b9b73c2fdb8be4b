// Convolution in CUDA C: implicit-GEMM forward and backward passes (launched by
// conv_implicit.py).
//
//   conv2d_implicit_gemm<T, TF32>  y[n, g*Kg + m, p, q] = b + sum_{c,r,s} w[g*Kg + m, c, r, s] *
//       x[n, g*Cg + c, p*sh - ph + r*dh, q*sw - pw + s*dw], as the GEMM
//       W[g] (Kg x Cg*R*S) @ X_cols[g] (Cg*R*S x N*P*Q) without materialising X_cols: the
//       B tile is gathered from x as it is staged. Same 128 x 128 x 8 register-blocked,
//       double-buffered tile as gemm.cu, FFMA or TF32 tensor cores. Each thread decomposes its four gather columns
//       (n, p, q) once, and each staged row (c, r, s) once per step.
//       blockIdx.z = group * splits + split: with splits > 1 (small outputs, long reductions)
//       split s sums rows [s*kchunk, (s+1)*kchunk) of C*R*S and writes its partial output to
//       y + s * split_stride (bias added by split 0 only); the launcher sums the partials in a
//       fixed order (gemm.cu's sum_splits), so the result stays deterministic.
//   conv2d_wgrad_implicit_gemm<T, TF32>, conv2d_dgrad_implicit_gemm<T, TF32>  the weight and
//       input gradients as implicit GEMMs on the same tile, FFMA or TF32 (described above each)
//   conv2d_implicit_gemm_pipelined<VA, VB, M>, conv2d_wgrad_implicit_gemm_pipelined<M>,
//   conv2d_dgrad_implicit_gemm_pipelined<UNIT, M>  the forward and both gradients in TF32 on
//       pipeline.cuh's tile: operands copied to shared memory by cp.async two slices ahead
//   conv2d_implicit_gemm_mma16<T, VA>, conv2d_dgrad_implicit_gemm_mma16<T, UNIT>,
//   conv2d_wgrad_implicit_gemm_mma16<T>  the forward and both gradients in float16 / bfloat16
//       (T = __half, __nv_bfloat16) on the tensor cores (mma.sync m16n8k16, pipeline.cuh tc16)
#include "common.cuh"
#include "pipeline.cuh"
#include "pipeline16.cuh"
#include "conv_shape.cuh"

using namespace tile;

template <typename T, bool TF32>
__global__ void __launch_bounds__(THREADS, sizeof(T) == 4 ? 2 : 1)   // float: two blocks per SM
conv2d_implicit_gemm(const T* __restrict__ x, const T* __restrict__ w,
                     const T* __restrict__ bias, T* __restrict__ y, CONV_SHAPE_PARAMS,
                     int splits, int kchunk, long long split_stride) {
    const CONV_SHAPE;
    __shared__ __align__(16) T As[2][BK][LDS];
    __shared__ __align__(16) T Bs[2][BK][LDS];
    const int tid = threadIdx.x;
    const int g = blockIdx.z / splits, split = blockIdx.z % splits;
    const int Cg = s.C / s.groups, Kg = s.K / s.groups;
    const int RS = s.R * s.S, CRS_all = Cg * RS, PQ = s.P * s.Q, NPQ = s.N * PQ;
    const int kbeg = split * kchunk, CRS = min(CRS_all, kbeg + kchunk);
    y += split * split_stride;
    if (split > 0) bias = nullptr;
    const long long HW = (long long)s.H * s.W;
    const int m0 = blockIdx.y * BM, n0 = blockIdx.x * BN;
    const T* wg = w + (long long)g * Kg * CRS_all;

    // A = W[g]: row m = tid / 2, depth k = (tid % 2) * 4 + i (contiguous along k)
    const int am = tid / 2, ak0 = (tid % 2) * 4;
    // B = gathered columns: depth k = tid / 32, column j = tid % 32 + 32 * i (coalesced in q)
    const int bk = tid / 32;
    long long xbase[4];
    int h0[4], w0[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const int col = n0 + tid % 32 + 32 * i;
        if (col < NPQ) {
            const int n = col / PQ, pq = col % PQ;
            xbase[i] = ((long long)n * s.C + (long long)g * Cg) * HW;
            h0[i] = (pq / s.Q) * s.sh - s.ph;
            w0[i] = (pq % s.Q) * s.sw - s.pw;
        } else {
            xbase[i] = -1;
            h0[i] = w0[i] = 0;
        }
    }
    T ra[4], rb[4];
    auto fetch = [&](int k0) {
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const int gm = m0 + am, gk = k0 + ak0 + i;
            ra[i] = (gm < Kg && gk < CRS) ? wg[(long long)gm * CRS_all + gk] : T(0);
        }
        const int crs = k0 + bk;
        const int c = crs / RS, rs = crs % RS;
        const int dr = (rs / s.S) * s.dh, ds = (rs % s.S) * s.dw;
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const int h = h0[i] + dr, v = w0[i] + ds;
            rb[i] = (crs < CRS && xbase[i] >= 0 && h >= 0 && h < s.H && v >= 0 && v < s.W)
                        ? x[xbase[i] + c * HW + (long long)h * s.W + v] : T(0);
        }
    };
    auto stage = [&](int buf) { stage_gathered<T, TF32>(As[buf], Bs[buf], ra, rb, tid); };

    T acc[NACC];
    mainloop<T, TF32>(As, Bs, kbeg, (CRS - kbeg + BK - 1) / BK, tid, acc, fetch, stage);
    // output column col = (n, p, q), row m = channel g*Kg + m
    store_columns<TF32>(acc, tid, m0, n0,
                        NchwColumnsBias<T, int>{{y, NPQ, PQ, s.K, g * Kg, Kg}, bias});
}

// The forward in TF32 on the pipelined tensor-core tile (pipeline.cuh): the same GEMM as
// conv2d_implicit_gemm, W[g] (Kg x Cg*R*S, K-major in shared memory) @ X_cols[g], with every
// operand element copied global -> shared by cp.async while the two slices before it feed
// the tensor cores. Thread tid gathers column n0 + tid of X_cols (its (n, p, q) decomposed
// once) at the 32 depths of a slice: consecutive threads read consecutive q (coalesced), and
// the slice's (c, r, s) are the same for every thread (stepped from one division per slice);
// padding is a zero-filled copy. VA: weight rows Cg*R*S long are a multiple of 4, so the
// weights move as 16-byte copies; else 4-byte ones. VB: a 1 x 1 filter at stride 1 without
// padding, with P*Q % 4 == 0: X_cols[c, (n, pq)] = x[n, c, pq], so four consecutive columns
// are one 16-byte vector of x, each thread's four columns are decomposed once, and the input
// moves as 16-byte copies too. M: block tiles of 128 output channels, or 64 for layers with
// at most 64 channels per group (the 128-row tile would spend half its mma on zero rows).
// Split-K and bias as in the FP32 kernel.
// Launch with tc::THREADS threads and tc::shared_bytes<true, false, M>() + tc::TABLE_BYTES
// bytes of dynamic shared memory (as the gradients below).
template <bool VA, bool VB, int M>
__global__ void __launch_bounds__(tc::THREADS)
conv2d_implicit_gemm_pipelined(const float* __restrict__ x, const float* __restrict__ w,
                               const float* __restrict__ bias, float* __restrict__ y,
                               CONV_SHAPE_PARAMS, int splits, int kchunk,
                               long long split_stride) {
    const CONV_SHAPE;
    CONVGPU_DYNAMIC_SHARED(smem_bytes);
    float* smem = reinterpret_cast<float*>(smem_bytes);
    const int tid = threadIdx.x;
    const int g = blockIdx.z / splits, split = blockIdx.z % splits;
    const int Cg = s.C / s.groups, Kg = s.K / s.groups;
    const int RS = s.R * s.S, CRS_all = Cg * RS, PQ = s.P * s.Q, NPQ = s.N * PQ;
    const int kbeg = split * kchunk, CRS = min(CRS_all, kbeg + kchunk);
    y += split * split_stride;
    if (split > 0) bias = nullptr;
    const long long HW = (long long)s.H * s.W;
    const int m0 = blockIdx.y * M, n0 = blockIdx.x * tc::BN;
    const float* wg = w + (long long)g * Kg * CRS_all;

    // VB: this thread's 4 columns n0 + (tid % 32) * 4 + {0..3}, at depths tid / 32 + 4 i
    const int col4 = n0 + (tid % 32) * 4;
    const float* xcol4 = col4 < NPQ
        ? x + ((long long)(col4 / PQ) * s.C + (long long)g * Cg) * HW + col4 % PQ : nullptr;
    // else: this thread's gather column n0 + tid, from xt (its image and group) at offset
    // h * W + v, (h, v) = (h0, w0) + the depth's shift; an invalid column never passes the
    // bounds test (w0 far below 0)
    const int col = n0 + tid;
    const float* xt = x;
    int h0 = 0, w0 = -(1 << 30);
    if (!VB && col < NPQ) {
        const int n = col / PQ, pq = col % PQ;
        xt = x + ((long long)n * s.C + (long long)g * Cg) * HW;
        h0 = (pq / s.Q) * s.sh - s.ph;
        w0 = (pq % s.Q) * s.sw - s.pw;
    }
    const int hw0 = h0 * s.W + w0;
    int4* table = tc::depth_table<true, false, M>(smem);
    // depth (c, r, s) of a slice: {c*H*W + r*dh*W + s*dw, r*dh, s*dw}; past the end a shift
    // that fails every bounds test (c*H*W fits an int: the launcher checks Cg*H*W < 2**31)
    auto prepare = [&](int step) {
        if (VB || tid >= tc::BK) return;
        const int crs = kbeg + step * tc::BK + tid;
        int4 d = make_int4(0, 1 << 29, 0, 0);
        if (crs < CRS) {
            const int c = crs / RS, r = (crs % RS) / s.S, sc = crs % s.S;
            d = make_int4(c * (int)HW + r * s.dh * s.W + sc * s.dw, r * s.dh, sc * s.dw, 0);
        }
        table[(step % tc::STAGES) * tc::BK + tid] = d;
    };
    const int steps = CRS > kbeg ? (CRS - kbeg + tc::BK - 1) / tc::BK : 0;
    auto load = [&](float* As, float* Bs, int step) {
        const int k0 = kbeg + step * tc::BK;
        if (VA) tc::load_matrix16<true, M>(As, wg, CRS_all, m0, Kg, k0, CRS, tid);
        else    tc::load_rows4<M>(As, wg + (long long)m0 * CRS_all + k0 + tid % 32, CRS_all,
                               k0 + tid % 32 < CRS, Kg - m0, wg, tid);
        if (VB) {
#pragma unroll
            for (int i = 0; i < tc::BK / 4; ++i) {
                const int kk = tid / 32 + 4 * i, c = k0 + kk;
                const bool ok = xcol4 != nullptr && c < CRS;
                cp_async<16>(Bs + tc::at<false>((tid % 32) * 4, kk), ok ? xcol4 + c * HW : x, ok);
            }
            return;
        }
        const int4* t = table + (step % tc::STAGES) * tc::BK;
#pragma unroll 8
        for (int kk = 0; kk < tc::BK; ++kk) {
            const int4 d = t[kk];
            const bool ok = (unsigned)(h0 + d.y) < (unsigned)s.H && (unsigned)(w0 + d.z) < (unsigned)s.W;
            cp_async<4>(Bs + tc::at<false>(tid, kk), xt + (ok ? unsigned(hw0 + d.x) : 0u), ok);
        }
    };
    float acc[tc::Warps<M>::NACC];
    tc::mainloop<true, false, M>(smem, steps, tid, acc, load, prepare);
    if (bias) tc::add_row_bias<M>(acc, tid, bias + g * Kg, m0, Kg);
    tc::store_columns<M>(acc, tid, m0, n0,
                         NchwColumns<float, int>{y, NPQ, PQ, s.K, g * Kg, Kg});
}

// Weight gradient as an implicit GEMM over the reduction axis n*P*Q:
//   gw[g] (Kg x Cg*R*S) = gy[g] (Kg x N*P*Q) @ X_cols[g]^T (N*P*Q x Cg*R*S)
// Both operand tiles are gathered as they are staged: A from gy, B from x. Thread tid moves
// row m0 + tid/2 of A and column n0 + tid/2 of B at depths (tid%2)*4 + {0..3}, so its
// column's (c, r, s) is decomposed once and the four depths' (n, p, q) once per step for both
// operands. The reduction is long and the output small, so it is split: split s sums depths
// [s*kchunk, (s+1)*kchunk) into gw + s * split_stride; the launcher adds the partials in a
// fixed order (sum_splits): deterministic, no atomics.
template <typename T, bool TF32>
__global__ void __launch_bounds__(THREADS, sizeof(T) == 4 ? 2 : 1)   // float: two blocks per SM
conv2d_wgrad_implicit_gemm(const T* __restrict__ x, const T* __restrict__ gy, T* __restrict__ gw,
                           CONV_SHAPE_PARAMS, int splits, int kchunk, long long split_stride) {
    const CONV_SHAPE;
    __shared__ __align__(16) T As[2][BK][LDS];
    __shared__ __align__(16) T Bs[2][BK][LDS];
    const int tid = threadIdx.x;
    const int g = blockIdx.z / splits, split = blockIdx.z % splits;
    const int Cg = s.C / s.groups, Kg = s.K / s.groups;
    const int RS = s.R * s.S, CRS = Cg * RS, PQ = s.P * s.Q;
    const long long NPQ = (long long)s.N * PQ, HW = (long long)s.H * s.W;
    const int kbeg = split * kchunk, kend = (int)min(NPQ, (long long)kbeg + kchunk);  // NPQ < 2**31
    gw += split * split_stride;
    const int m0 = blockIdx.y * BM, n0 = blockIdx.x * BN;

    const int row = tid / 2, k_in = (tid % 2) * 4;
    const int m = m0 + row;                                     // output channel in group g
    const long long gy_row = ((long long)g * Kg + m) * PQ;
    const int crs = n0 + row;
    const int c = crs / RS, r = (crs % RS) / s.S, sc = crs % s.S;
    const long long x_chan = ((long long)g * Cg + c) * HW;
    const int dr = r * s.dh - s.ph, ds = sc * s.dw - s.pw;
    // (n, p, q) of a fetch's first depth k0 + k_in, then stepped by one per depth: two integer
    // divisions per fetch instead of eight. TF32 (123 registers) also keeps that depth's
    // (n, p, q) across fetches, stepped by BK (mainloop fetches in order): none at all. FP32
    // cannot hold those three more registers under its 128-register cap (it spilled 44 bytes);
    // nor the multiply-shift Dividers of the input gradient (999 -> 1088 instructions a step).
    constexpr bool STEPPED = TF32;
    int sn = 0, sp = 0, sq = 0;
    auto locate = [&](int d, int& n, int& p, int& q) {
        n = d / PQ;
        const int pq = d - n * PQ;
        p = pq / s.Q;
        q = pq - p * s.Q;
    };
    if (STEPPED) locate(kbeg + k_in, sn, sp, sq);
    T ra[4], rb[4];
    auto fetch = [&](int k0) {
        int n = sn, p = sp, q = sq;
        if (!STEPPED) locate(k0 + k_in, n, p, q);
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const int npq = k0 + k_in + i;
            ra[i] = rb[i] = T(0);
            if (npq < kend) {
                if (m < Kg) ra[i] = gy[(long long)n * s.K * PQ + gy_row + p * s.Q + q];
                const int h = p * s.sh + dr, v = q * s.sw + ds;
                if (crs < CRS && h >= 0 && h < s.H && v >= 0 && v < s.W)
                    rb[i] = x[(long long)n * s.C * HW + x_chan + (long long)h * s.W + v];
            }
            if (++q == s.Q) {                                   // the next depth
                q = 0;
                if (++p == s.P) { p = 0; ++n; }
            }
        }
        if (STEPPED)                                            // the next fetch's first depth
            for (sq += BK; sq >= s.Q; sq -= s.Q)
                if (++sp == s.P) { sp = 0; ++sn; }
    };
    auto stage = [&](int buf) {
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            As[buf][k_in + i][row] = staged<T, TF32>(ra[i]);
            Bs[buf][k_in + i][row] = staged<T, TF32>(rb[i]);
        }
    };
    T acc[NACC];
    mainloop<T, TF32>(As, Bs, kbeg, (kend - kbeg + BK - 1) / BK, tid, acc, fetch, stage);
    store_rows<TF32>(acc, tid, gw + (long long)g * Kg * CRS, CRS, m0, n0, Kg, CRS);
}

// Input gradient as an implicit GEMM (the transpose of the forward's):
//   gx[g] (Cg x N*H*W) = W[g]^T (Cg x Kg*R*S) @ GY_cols[g] (Kg*R*S x N*H*W)
// where GY_cols[(k, r, s), (n, h, v)] = gy[n, g*Kg + k, p, q] when h + ph - r*dh = p*sh and
// v + pw - s*dw = q*sw for an output (p, q) inside the output, else 0: the strided
// gather, without the column matrix the GEMM + col2im path writes. A (rows c, depth krs) is
// read from w as stored; B is gathered with the columns (n, h, v) coalesced along v, each
// decomposed once per thread. Split-K over k*R*S as in the forward.
template <typename T, bool TF32>
__global__ void __launch_bounds__(THREADS)      // FP32 needs ~150 registers: one block per SM
conv2d_dgrad_implicit_gemm(const T* __restrict__ gy, const T* __restrict__ w, T* __restrict__ gx,
                           CONV_SHAPE_PARAMS, int splits, int kchunk, long long split_stride) {
    const CONV_SHAPE;
    __shared__ __align__(16) T As[2][BK][LDS];
    __shared__ __align__(16) T Bs[2][BK][LDS];
    const int tid = threadIdx.x;
    const int g = blockIdx.z / splits, split = blockIdx.z % splits;
    const int Cg = s.C / s.groups, Kg = s.K / s.groups;
    const int RS = s.R * s.S, CRS = Cg * RS, KRS_all = Kg * RS, PQ = s.P * s.Q;
    const int HW = s.H * s.W;
    const long long NHW = (long long)s.N * HW;
    const int kbeg = split * kchunk, KRS = min(KRS_all, kbeg + kchunk);
    gx += split * split_stride;
    const int m0 = blockIdx.y * BM;
    const long long n0 = (long long)blockIdx.x * BN;

    // A = W[g]^T: row c = m0 + tid/2, depths (tid%2)*4 + i, element w[g*Kg + k, c, r, s]
    const int am = tid / 2, ak0 = (tid % 2) * 4;
    const int c_a = m0 + am;
    const T* wg = w + (long long)g * Kg * CRS + (long long)c_a * RS;
    // B = gathered gy: depth tid/32, columns tid%32 + 32*i
    const int bk = tid / 32;
    long long gybase[4];
    int hh[4], vv[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const long long col = n0 + tid % 32 + 32 * i;
        if (col < NHW) {
            const int n = (int)(col / HW), hw = (int)(col % HW);
            gybase[i] = ((long long)n * s.K + (long long)g * Kg) * PQ;
            hh[i] = hw / s.W + s.ph;
            vv[i] = hw % s.W + s.pw;
        } else {
            gybase[i] = -1;
            hh[i] = vv[i] = 0;
        }
    }
    // (k, r, s) of a depth and the strided output position by multiply-shift (14 integer
    // divisions per step otherwise)
    const Divider<int> divRS = divider_for(RS), divS = divider_for(s.S);
    const Divider<int> divSH = divider_for(s.sh), divSW = divider_for(s.sw);
    T ra[4], rb[4];
    auto fetch = [&](int k0) {
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const int krs = k0 + ak0 + i, ka = divRS.div(krs);
            ra[i] = (c_a < Cg && krs < KRS) ? wg[(long long)ka * CRS + (krs - ka * RS)] : T(0);
        }
        const int krs = k0 + bk;
        const int k = divRS.div(krs), rs = krs - k * RS;
        const int rr = divS.div(rs);
        const int dr = rr * s.dh, ds = (rs - rr * s.S) * s.dw;
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const int hp = hh[i] - dr, vq = vv[i] - ds;
            // hp, vq >= 0 is tested first: the quotients of negative ones are never used
            const int p = divSH.div(hp), q = divSW.div(vq);
            const bool hit = krs < KRS && gybase[i] >= 0 && hp >= 0 && vq >= 0 &&
                             hp == p * s.sh && vq == q * s.sw && p < s.P && q < s.Q;
            rb[i] = hit ? gy[gybase[i] + (long long)k * PQ + p * s.Q + q] : T(0);
        }
    };
    auto stage = [&](int buf) { stage_gathered<T, TF32>(As[buf], Bs[buf], ra, rb, tid); };
    T acc[NACC];
    mainloop<T, TF32>(As, Bs, kbeg, (KRS - kbeg + BK - 1) / BK, tid, acc, fetch, stage);
    // output column col = (n, h, w), row c = channel g*Cg + c
    store_columns<TF32>(acc, tid, m0, n0,
                        NchwColumns<T, long long>{gx, NHW, HW, s.C, g * Cg, Cg});
}

// The weight gradient in TF32 on the pipelined tile: gw[g] (Kg x Cg*R*S) = gy[g] (Kg x N*P*Q)
// @ X_cols[g]^T. A = gy, K-major: lane l of every warp copies depth k0 + l (its (n, p*q)
// decomposed once per slice) for rows warp + 4 i, each row PQ further on. B = X_cols^T,
// row-major: thread tid copies row (c, r, s) = n0 + tid (decomposed once) at the slice's 32
// depths, whose (n, p, q) are the same for every thread and stepped from one division per
// slice. Split-K over N*P*Q as in the FP32 kernel (N*P*Q < 2**31, see the launcher). M: 128
// output channels per block, or 64 where a group has at most 64.
template <int M>
__global__ void __launch_bounds__(tc::THREADS)
conv2d_wgrad_implicit_gemm_pipelined(const float* __restrict__ x, const float* __restrict__ gy,
                                     float* __restrict__ gw, CONV_SHAPE_PARAMS, int splits,
                                     int kchunk, long long split_stride) {
    const CONV_SHAPE;
    CONVGPU_DYNAMIC_SHARED(smem_bytes);
    float* smem = reinterpret_cast<float*>(smem_bytes);
    const int tid = threadIdx.x, lane = tid % 32;
    const int g = blockIdx.z / splits, split = blockIdx.z % splits;
    const int Cg = s.C / s.groups, Kg = s.K / s.groups;
    const int RS = s.R * s.S, CRS = Cg * RS, PQ = s.P * s.Q;
    const long long NPQ = (long long)s.N * PQ, HW = (long long)s.H * s.W;
    const int kbeg = split * kchunk, kend = (int)min(NPQ, (long long)kbeg + kchunk);
    gw += split * split_stride;
    const int m0 = blockIdx.y * M, n0 = blockIdx.x * tc::BN;

    // this thread's row (c, r, s) = n0 + tid of X_cols^T: from xt (channel g*Cg + c) at offset
    // h * W + v, (h, v) = the depth's (p*sh, q*sw) + (dr, ds); an invalid row never passes
    const int crs = n0 + tid;
    const float* xt = x;
    int dr = 0, ds = -(1 << 30);
    if (crs < CRS) {
        xt = x + ((long long)g * Cg + crs / RS) * HW;
        dr = ((crs % RS) / s.S) * s.dh - s.ph;
        ds = (crs % s.S) * s.dw - s.pw;
    }
    const int rs0 = dr * s.W + ds;
    int4* table = tc::depth_table<true, false, M>(smem);
    // depth (n, p, q) of a slice: {n*C*H*W + p*sh*W + q*sw, p*sh, q*sw} (N*C*H*W < 2**31,
    // checked by the launcher); past the end a shift that fails every bounds test
    auto prepare = [&](int step) {
        if (tid >= tc::BK) return;
        const int npq = kbeg + step * tc::BK + tid;
        int4 d = make_int4(0, 1 << 29, 0, 0);
        if (npq < kend) {
            const int n = npq / PQ, p = (npq % PQ) / s.Q, q = npq % s.Q;
            d = make_int4(n * s.C * (int)HW + p * s.sh * s.W + q * s.sw, p * s.sh, q * s.sw, 0);
        }
        table[(step % tc::STAGES) * tc::BK + tid] = d;
    };
    const int steps = kend > kbeg ? (kend - kbeg + tc::BK - 1) / tc::BK : 0;
    auto load = [&](float* As, float* Bs, int step) {
        const int k0 = kbeg + step * tc::BK;
        const int npq = k0 + lane;                  // A = gy: lane's depth, rows m0 + warp + 4 i
        tc::load_rows4<M>(As, gy + ((long long)(npq / PQ) * s.K + (long long)g * Kg + m0) * PQ + npq % PQ,
                       PQ, npq < kend, Kg - m0, gy, tid);
        const int4* t = table + (step % tc::STAGES) * tc::BK;
#pragma unroll 8
        for (int kk = 0; kk < tc::BK; ++kk) {
            const int4 d = t[kk];
            const bool ok = (unsigned)(d.y + dr) < (unsigned)s.H && (unsigned)(d.z + ds) < (unsigned)s.W;
            cp_async<4>(Bs + tc::at<false>(tid, kk), xt + (ok ? unsigned(d.x + rs0) : 0u), ok);
        }
    };
    float acc[tc::Warps<M>::NACC];
    tc::mainloop<true, false, M>(smem, steps, tid, acc, load, prepare);
    tc::store_rows<M>(acc, tid, gw + (long long)g * Kg * CRS, CRS, m0, n0, Kg, CRS);
}

// The input gradient in TF32 on the pipelined tile: gx[g] (Cg x N*H*W) = W[g]^T (Cg x Kg*R*S)
// @ GY_cols[g]. A = W^T, K-major: lane l copies depth (k, r, s) = k0 + l (decomposed once per
// slice) for rows c = warp + 4 i, each R*S further on. B = GY_cols, row-major: thread tid
// gathers column (n, h, v) = n0 + tid (decomposed once) at the slice's depths, stepped as in
// the forward; the strided gather's divisibility tests are skipped for UNIT (stride 1). M:
// 128 input channels per block, or 64 where a group has at most 64.
// Two blocks per SM, as their shared memory allows; the hint also keeps the 64-row tile from
// spilling (bench/NOTES.md, kernel history).
template <bool UNIT, int M>
__global__ void __launch_bounds__(tc::THREADS, 2)
conv2d_dgrad_implicit_gemm_pipelined(const float* __restrict__ gy, const float* __restrict__ w,
                                     float* __restrict__ gx, CONV_SHAPE_PARAMS, int splits,
                                     int kchunk, long long split_stride) {
    const CONV_SHAPE;
    CONVGPU_DYNAMIC_SHARED(smem_bytes);
    float* smem = reinterpret_cast<float*>(smem_bytes);
    const int tid = threadIdx.x, lane = tid % 32;
    const int g = blockIdx.z / splits, split = blockIdx.z % splits;
    const int Cg = s.C / s.groups, Kg = s.K / s.groups;
    const int RS = s.R * s.S, CRS = Cg * RS, KRS_all = Kg * RS, PQ = s.P * s.Q;
    const int HW = s.H * s.W;
    const long long NHW = (long long)s.N * HW;
    const int kbeg = split * kchunk, KRS = min(KRS_all, kbeg + kchunk);
    gx += split * split_stride;
    const int m0 = blockIdx.y * M;
    const long long n0 = (long long)blockIdx.x * tc::BN;
    const float* wg = w + (long long)g * Kg * CRS;

    // this thread's column (n, h, v) = n0 + tid of GY_cols: from gyt (image n, group g); the
    // depth (k, r, s) reads output (p, q) = ((h + ph - r*dh) / sh, (v + pw - s*dw) / sw) when
    // both divide and lie inside; an invalid column never passes (vv far below 0)
    const long long col = n0 + tid;
    const float* gyt = gy;
    int hh = 0, vv = -(1 << 30);
    if (col < NHW) {
        const int n = (int)(col / HW), hw = (int)(col % HW);
        gyt = gy + ((long long)n * s.K + (long long)g * Kg) * PQ;
        hh = hw / s.W + s.ph;
        vv = hw % s.W + s.pw;
    }
    const int hv0 = hh * s.Q + vv;                  // UNIT: p*Q + q = hv0 + the depth's shift
    int4* table = tc::depth_table<true, false, M>(smem);
    // depth (k, r, s) of a slice: {k*P*Q - r*dh*Q - s*dw, r*dh, s*dw, k*P*Q}; past the end a
    // shift that fails every bounds test (K*P*Q < 2**31: gy's per-image size, checked by the
    // launcher)
    auto prepare = [&](int step) {
        if (tid >= tc::BK) return;
        const int krs = kbeg + step * tc::BK + tid;
        int4 d = make_int4(0, -(1 << 29), 0, 0);
        if (krs < KRS) {
            const int k = krs / RS, r = (krs % RS) / s.S, sc = krs % s.S;
            d = make_int4(k * PQ - r * s.dh * s.Q - sc * s.dw, r * s.dh, sc * s.dw, k * PQ);
        }
        table[(step % tc::STAGES) * tc::BK + tid] = d;
    };
    const int steps = KRS > kbeg ? (KRS - kbeg + tc::BK - 1) / tc::BK : 0;
    auto load = [&](float* As, float* Bs, int step) {
        const int k0 = kbeg + step * tc::BK;
        const int krs = k0 + lane;                  // A = W^T: lane's depth, rows c = m0 + warp + 4 i
        tc::load_rows4<M>(As, wg + (long long)(krs / RS) * CRS + (long long)m0 * RS + krs % RS, RS,
                       krs < KRS, Cg - m0, w, tid);
        const int4* t = table + (step % tc::STAGES) * tc::BK;
#pragma unroll 8
        for (int kk = 0; kk < tc::BK; ++kk) {
            const int4 d = t[kk];
            const int hp = hh - d.y, vq = vv - d.z;
            bool ok;
            int off;
            if (UNIT) {
                ok = (unsigned)hp < (unsigned)s.P && (unsigned)vq < (unsigned)s.Q;
                off = hv0 + d.x;
            } else {
                ok = hp >= 0 && vq >= 0 && hp % s.sh == 0 && vq % s.sw == 0 && hp / s.sh < s.P &&
                     vq / s.sw < s.Q;
                off = d.w + (hp / s.sh) * s.Q + vq / s.sw;
            }
            cp_async<4>(Bs + tc::at<false>(tid, kk), gyt + (ok ? unsigned(off) : 0u), ok);
        }
    };
    float acc[tc::Warps<M>::NACC];
    tc::mainloop<true, false, M>(smem, steps, tid, acc, load, prepare);
    tc::store_columns<M>(acc, tid, m0, n0,
                         NchwColumns<float, long long>{gx, NHW, HW, s.C, g * Cg, Cg});
}

// The forward in float16 / bfloat16 on the tensor cores (pipeline.cuh tc16: mma.sync
// m16n8k16, FP32 accumulation, ldmatrix fragments, a 3-stage pipeline): the GEMM
// W[g] (Kg x Cg*R*S, K-major in shared memory) @ X_cols[g] (MN-major) of
// conv2d_implicit_gemm_pipelined. VA: weight rows Cg*R*S long are a multiple of 8 and w is
// 16-byte aligned, so the weights move as 16-byte cp.async copies; else element by element.
// The input is gathered element by element (cp.async copies 4 bytes at least; an element is
// 2): thread tid gathers column n0 + tid (its (n, p, q) decomposed once) at the slice's 32
// depths, whose (c, r, s) offsets come from the depth table as in the TF32 kernel; padding
// and edges are zeros. Each output is rounded once to T, after the bias is added in FP32.
// With splits > 1, split s writes FP32 partials to partial + s * split_stride (split 0 with
// the bias), which sum_splits_half (gemm.cu) adds in order and rounds. Launch with
// tc16::THREADS threads and tc16::shared_bytes<true, false>() + tc::TABLE_BYTES bytes of
// dynamic shared memory.
template <typename T, bool VA>
__global__ void __launch_bounds__(tc16::THREADS)
conv2d_implicit_gemm_mma16(const T* __restrict__ x, const T* __restrict__ w,
                           const T* __restrict__ bias, T* __restrict__ y,
                           float* __restrict__ partial, CONV_SHAPE_PARAMS, int splits,
                           int kchunk, long long split_stride) {
    const CONV_SHAPE;
    unsigned short* smem = tc16::dynamic_smem();
    const int tid = threadIdx.x;
    const int Cg = s.C / s.groups, Kg = s.K / s.groups;
    const int RS = s.R * s.S, CRS_all = Cg * RS, PQ = s.P * s.Q, NPQ = s.N * PQ;
    const tc16::SplitK z = tc16::SplitK(splits).over(kchunk, CRS_all);
    const int g = z.outer, split = z.split, kbeg = z.kbeg, CRS = z.kend;
    if (split > 0) bias = nullptr;
    const long long HW = (long long)s.H * s.W;
    const int m0 = blockIdx.y * tc16::BM, n0 = blockIdx.x * tc16::BN;
    const unsigned short* wg = reinterpret_cast<const unsigned short*>(w) + (long long)g * Kg * CRS_all;
    const unsigned short* xs = reinterpret_cast<const unsigned short*>(x);

    // this thread's gather column n0 + tid, from xt (its image and group) at offset h * W + v,
    // (h, v) = (h0, w0) + the depth's shift; an invalid column never passes the bounds test
    const int col = n0 + tid;
    const unsigned short* xt = xs;
    int h0 = 0, w0 = -(1 << 30);
    if (col < NPQ) {
        const int n = col / PQ, pq = col % PQ;
        xt = xs + ((long long)n * s.C + (long long)g * Cg) * HW;
        h0 = (pq / s.Q) * s.sh - s.ph;
        w0 = (pq % s.Q) * s.sw - s.pw;
    }
    const int hw0 = h0 * s.W + w0;
    int4* table = tc16::depth_table<true, false>(smem);
    // depth (c, r, s): {c*H*W + r*dh*W + s*dw, r*dh, s*dw}; past the end a shift that fails
    // every bounds test (c*H*W fits an int: the launcher checks Cg*H*W < 2**31)
    auto prepare = [&](int step) {
        if (tid >= tc16::BK) return;
        const int crs = kbeg + step * tc16::BK + tid;
        int4 d = make_int4(0, 1 << 29, 0, 0);
        if (crs < CRS) {
            const int c = crs / RS, r = (crs % RS) / s.S, sc = crs % s.S;
            d = make_int4(c * (int)HW + r * s.dh * s.W + sc * s.dw, r * s.dh, sc * s.dw, 0);
        }
        table[(step % tc16::STAGES) * tc16::BK + tid] = d;
    };
    auto load = [&](unsigned short* As, unsigned short* Bs, int step) {
        const int k0 = kbeg + step * tc16::BK;
        tc16::load_tile<true, VA>(As, wg, CRS_all, m0, Kg, k0, CRS, tid);
        const int4* t = table + (step % tc16::STAGES) * tc16::BK;
#pragma unroll 8
        for (int kk = 0; kk < tc16::BK; ++kk) {
            const int4 d = t[kk];
            const bool ok = (unsigned)(h0 + d.y) < (unsigned)s.H && (unsigned)(w0 + d.z) < (unsigned)s.W;
            Bs[tc16::at<false>(tid, kk)] = ok ? xt[hw0 + d.x] : (unsigned short)0;
        }
    };
    float acc[tc16::NACC];
    tc16::mainloop<true, false, Half16<T>::BF16>(smem, z.steps(), tid, acc, load, prepare);

    // output column (n, pq) -> y[n, g*Kg + m, pq]; each of the thread's 16 columns decomposed
    // once, its 8 rows written there
    const long long plane_stride = PQ;
#pragma unroll
    for (int sl = 0; sl < 2 * tc16::NI; ++sl) {
        const int e0 = (sl / 2) * 4 + (sl & 1);                    // mi = 0, v = sl & 1
        const int c = n0 + tc16::acc_col(e0, tid);
        if (c >= NPQ) continue;
        const long long base = (long long)(c / PQ) * s.K * plane_stride + c % PQ;
#pragma unroll
        for (int mi = 0; mi < tc16::MI; ++mi)
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                const int e = (mi * tc16::NI + sl / 2) * 4 + (sl & 1) + 2 * h;
                const int m = m0 + tc16::acc_row(e, tid);
                if (m >= Kg) continue;
                const int k = g * Kg + m;
                const float v = acc[e] + (bias ? Half16<T>::to_float(bias[k]) : 0.f);
                const long long at = base + (long long)k * plane_stride;
                if (splits > 1) partial[split * split_stride + at] = v;
                else y[at] = Half16<T>::from_float(v);
            }
    }
}

// The input gradient in float16 / bfloat16 on the tensor cores: gx[g] (Cg x N*H*W) =
// W[g]^T (Cg x Kg*R*S) @ GY_cols[g], the GEMM of conv2d_dgrad_implicit_gemm_pipelined with
// element-wise copies (2-byte elements): A = W^T, K-major, lane l loading depth (k, r, s) =
// k0 + l (decomposed once per slice) for rows c = warp + 4 i, each R*S further on; B = GY_cols
// gathered column by column through the depth table, the divisibility tests skipped for UNIT
// (stride 1). FP32 accumulation, one rounding per output; split-K partials in FP32
// (sum_splits_half). Launch as the forward.
template <typename T, bool UNIT>
__global__ void __launch_bounds__(tc16::THREADS)
conv2d_dgrad_implicit_gemm_mma16(const T* __restrict__ gy, const T* __restrict__ w,
                                 T* __restrict__ gx, float* __restrict__ partial,
                                 CONV_SHAPE_PARAMS, int splits, int kchunk,
                                 long long split_stride) {
    const CONV_SHAPE;
    unsigned short* smem = tc16::dynamic_smem();
    const int tid = threadIdx.x, lane = tid % 32;
    const int Cg = s.C / s.groups, Kg = s.K / s.groups;
    const int RS = s.R * s.S, CRS = Cg * RS, KRS_all = Kg * RS, PQ = s.P * s.Q;
    const int HW = s.H * s.W;
    const long long NHW = (long long)s.N * HW;
    const tc16::SplitK z = tc16::SplitK(splits).over(kchunk, KRS_all);
    const int g = z.outer, kbeg = z.kbeg, KRS = z.kend;
    if (partial) partial += z.split * split_stride;
    const int m0 = blockIdx.y * tc16::BM;
    const long long n0 = (long long)blockIdx.x * tc16::BN;
    const unsigned short* wg = reinterpret_cast<const unsigned short*>(w) + (long long)g * Kg * CRS;
    const unsigned short* gys = reinterpret_cast<const unsigned short*>(gy);

    // this thread's column (n, h, v) = n0 + tid of GY_cols, as in the TF32 kernel
    const long long col = n0 + tid;
    const unsigned short* gyt = gys;
    int hh = 0, vv = -(1 << 30);
    if (col < NHW) {
        const int n = (int)(col / HW), hw = (int)(col % HW);
        gyt = gys + ((long long)n * s.K + (long long)g * Kg) * PQ;
        hh = hw / s.W + s.ph;
        vv = hw % s.W + s.pw;
    }
    const int hv0 = hh * s.Q + vv;
    int4* table = tc16::depth_table<true, false>(smem);
    auto prepare = [&](int step) {
        if (tid >= tc16::BK) return;
        const int krs = kbeg + step * tc16::BK + tid;
        int4 d = make_int4(0, -(1 << 29), 0, 0);
        if (krs < KRS) {
            const int k = krs / RS, r = (krs % RS) / s.S, sc = krs % s.S;
            d = make_int4(k * PQ - r * s.dh * s.Q - sc * s.dw, r * s.dh, sc * s.dw, k * PQ);
        }
        table[(step % tc16::STAGES) * tc16::BK + tid] = d;
    };
    auto load = [&](unsigned short* As, unsigned short* Bs, int step) {
        const int k0 = kbeg + step * tc16::BK;
        const int krs = k0 + lane;
        tc16::load_rows(As, wg + (long long)(krs / RS) * CRS + (long long)m0 * RS + krs % RS, RS,
                        krs < KRS, Cg - m0, tid);
        const int4* t = table + (step % tc16::STAGES) * tc16::BK;
#pragma unroll 8
        for (int kk = 0; kk < tc16::BK; ++kk) {
            const int4 d = t[kk];
            const int hp = hh - d.y, vq = vv - d.z;
            bool ok;
            int off;
            if (UNIT) {
                ok = (unsigned)hp < (unsigned)s.P && (unsigned)vq < (unsigned)s.Q;
                off = hv0 + d.x;
            } else {
                ok = hp >= 0 && vq >= 0 && hp % s.sh == 0 && vq % s.sw == 0 && hp / s.sh < s.P &&
                     vq / s.sw < s.Q;
                off = d.w + (hp / s.sh) * s.Q + vq / s.sw;
            }
            Bs[tc16::at<false>(tid, kk)] = ok ? gyt[off] : (unsigned short)0;
        }
    };
    float acc[tc16::NACC];
    tc16::mainloop<true, false, Half16<T>::BF16>(smem, z.steps(), tid, acc, load, prepare);
    // column (n, hw) -> gx[n, g*Cg + c, hw], rows c HW apart
    tc16::store_half<T, long long>(acc, tid, m0, n0, Cg, NHW, HW,
        [&](long long c) { return (c / HW * s.C + (long long)g * Cg) * HW + c % HW; }, gx, partial);
}

// The weight gradient in float16 / bfloat16 on the tensor cores: gw[g] (Kg x Cg*R*S) =
// gy[g] (Kg x N*P*Q) @ X_cols[g]^T, the GEMM of conv2d_wgrad_implicit_gemm_pipelined with
// element-wise copies: A = gy, K-major, lane l loading depth (n, p, q) = k0 + l (decomposed
// once per slice) for rows m = warp + 4 i, each P*Q further on; B = X_cols^T gathered row
// (c, r, s) = n0 + tid through the depth table. Split-K over N*P*Q (< 2**31: the launcher),
// FP32 partials summed by sum_splits_half; one rounding per output.
template <typename T>
__global__ void __launch_bounds__(tc16::THREADS)
conv2d_wgrad_implicit_gemm_mma16(const T* __restrict__ x, const T* __restrict__ gy,
                                 T* __restrict__ gw, float* __restrict__ partial,
                                 CONV_SHAPE_PARAMS, int splits, int kchunk,
                                 long long split_stride) {
    const CONV_SHAPE;
    unsigned short* smem = tc16::dynamic_smem();
    const int tid = threadIdx.x, lane = tid % 32;
    const int Cg = s.C / s.groups, Kg = s.K / s.groups;
    const int RS = s.R * s.S, CRS = Cg * RS, PQ = s.P * s.Q;
    const long long NPQ = (long long)s.N * PQ, HW = (long long)s.H * s.W;
    const tc16::SplitK z = tc16::SplitK(splits).over(kchunk, NPQ);
    const int g = z.outer, kbeg = z.kbeg, kend = z.kend;
    if (partial) partial += z.split * split_stride;
    const int m0 = blockIdx.y * tc16::BM, n0 = blockIdx.x * tc16::BN;
    const unsigned short* xs = reinterpret_cast<const unsigned short*>(x);
    const unsigned short* gys = reinterpret_cast<const unsigned short*>(gy);

    // this thread's row (c, r, s) = n0 + tid of X_cols^T, as in the TF32 kernel
    const int crs = n0 + tid;
    const unsigned short* xt = xs;
    int dr = 0, ds = -(1 << 30);
    if (crs < CRS) {
        xt = xs + ((long long)g * Cg + crs / RS) * HW;
        dr = ((crs % RS) / s.S) * s.dh - s.ph;
        ds = (crs % s.S) * s.dw - s.pw;
    }
    const int rs0 = dr * s.W + ds;
    int4* table = tc16::depth_table<true, false>(smem);
    auto prepare = [&](int step) {
        if (tid >= tc16::BK) return;
        const int npq = kbeg + step * tc16::BK + tid;
        int4 d = make_int4(0, 1 << 29, 0, 0);
        if (npq < kend) {
            const int n = npq / PQ, p = (npq % PQ) / s.Q, q = npq % s.Q;
            d = make_int4(n * s.C * (int)HW + p * s.sh * s.W + q * s.sw, p * s.sh, q * s.sw, 0);
        }
        table[(step % tc16::STAGES) * tc16::BK + tid] = d;
    };
    auto load = [&](unsigned short* As, unsigned short* Bs, int step) {
        const int npq = kbeg + step * tc16::BK + lane;
        tc16::load_rows(As, gys + ((long long)(npq / PQ) * s.K + (long long)g * Kg + m0) * PQ + npq % PQ,
                        PQ, npq < kend, Kg - m0, tid);
        const int4* t = table + (step % tc16::STAGES) * tc16::BK;
#pragma unroll 8
        for (int kk = 0; kk < tc16::BK; ++kk) {
            const int4 d = t[kk];
            const bool ok = (unsigned)(d.y + dr) < (unsigned)s.H && (unsigned)(d.z + ds) < (unsigned)s.W;
            Bs[tc16::at<false>(tid, kk)] = ok ? xt[d.x + rs0] : (unsigned short)0;
        }
    };
    float acc[tc16::NACC];
    tc16::mainloop<true, false, Half16<T>::BF16>(smem, z.steps(), tid, acc, load, prepare);
    tc16::store_half<T, int>(acc, tid, m0, n0, Kg, CRS, CRS,
        [&](int c) { return (long long)g * Kg * CRS + c; }, gw, partial);
}
