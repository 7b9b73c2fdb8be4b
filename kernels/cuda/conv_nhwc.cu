// Convolution in CUDA C on channels-last (NHWC) tensors: x (N, H, W, C), w (K, R, S, C/groups),
// y (N, P, Q, K). Launched by conv_nhwc.py.
//
//   conv2d_nhwc_implicit_gemm<float, TF32>  y[(n, p, q), g*Kg + k] = b[g*Kg + k] + sum_{r, s, c}
//       x[n, p*sh - ph + r*dh, q*sw - pw + s*dw, g*Cg + c] * w[g*Kg + k, r, s, c], as the GEMM
//       X_rows[g] (N*P*Q x R*S*Cg) @ W[g]^T (R*S*Cg x Kg) without materialising X_rows. The
//       depth d = (r, s, c) runs with c fastest, contiguous in x and in w alike, so the eight
//       threads that move one row's slice of a step read 8 consecutive elements (a 32-byte
//       sector in float) of both operands; and y, row-major N*P*Q x K, is the GEMM's output
//       as it stands. gemm.cu's 128 x 128 x 8 register-blocked, double-buffered tile
//       (common.cuh, namespace tile), FP32 FFMA or TF32 tensor cores (mma.sync m16n8k8, operands
//       rounded to TF32 as they are staged, FP32 accumulation). Rows are output positions
//       (blockIdx.x), columns the group's output channels (blockIdx.y), blockIdx.z the group.
//       Each thread decomposes its four rows (n, p, q) once and the step's depth (r, s, c)
//       once per step; each output is one thread's sum in depth order (deterministic).
//   conv2d_nhwc_wgrad_implicit_gemm<float, TF32>  gw[g*Kg + k, (r, s, c)] = sum over output
//       positions m = (n, p, q) of gy[m, g*Kg + k] * x[n, p*sh - ph + r*dh, q*sw - pw + s*dw,
//       g*Cg + c], as the GEMM gy[g]^T (Kg x N*P*Q) @ X_rows[g] (N*P*Q x R*S*Cg) on the same
//       tile: rows the output channels, columns the taps (r, s, c), whose row-major
//       Kg x R*S*Cg output is the NHWC weight as it stands. A step's eight depths are eight
//       output positions: 32 threads read 32 consecutive channels of gy, and 32 consecutive
//       taps of x (consecutive c). Each thread decomposes its four taps once and the step's
//       position once per step. blockIdx.z = group * splits + split: split s sums positions
//       [s*kchunk, (s+1)*kchunk) into its own partial, which the launcher sums in order
//       (gemm.cu's sum_splits): deterministic.
//   conv2d_nhwc_dgrad_implicit_gemm<float, TF32>  gx[(n, h, w), g*Cg + c] = sum over (r, s, k)
//       of gy[n, p, q, g*Kg + k] * w[g*Kg + k, r, s, c], where h + ph - r*dh = p*sh and
//       w + pw - s*dw = q*sw (a tap whose offset the stride does not divide contributes 0),
//       as the GEMM Gy_rows[g] (N*H*W x R*S*Kg) @ W'[g] (R*S*Kg x Cg): rows input positions,
//       columns the group's input channels, depth (r, s, k) with k fastest (contiguous in
//       gy). Any stride: at stride s, about 1/(sh*sw) of the depth is nonzero (the launcher
//       takes stride 1 to the forward kernel on rotated filters instead, which wastes none).
#include "common.cuh"
#include "conv_shape.cuh"

using namespace tile;

// One block per SM in the register budget: under two (128 registers) the float kernel
// spilled, gathering both operands (its NCHW sibling gathers one). Float only: the double
// instance spilled on sm_80 even at 255 registers (float64 NHWC runs algo="transpose").
template <typename T, bool TF32>
__global__ void __launch_bounds__(THREADS, 1)
conv2d_nhwc_implicit_gemm(const T* __restrict__ x, const T* __restrict__ w,
                          const T* __restrict__ bias, T* __restrict__ y, CONV_SHAPE_PARAMS) {
    const CONV_SHAPE;
    __shared__ __align__(16) T As[2][BK][LDS];
    __shared__ __align__(16) T Bs[2][BK][LDS];
    const int tid = threadIdx.x;
    const int g = blockIdx.z;
    const int Cg = s.C / s.groups, Kg = s.K / s.groups;
    const int RSC = s.R * s.S * Cg, PQ = s.P * s.Q, NPQ = s.N * PQ;
    const int m0 = blockIdx.x * BM, n0 = blockIdx.y * BN;

    // thread tid moves depth kk = tid % BK of tile rows (A: output positions) and tile
    // columns (B: output channels) j = tid / BK + 32 i, i = 0..3
    // Two registers per row, as this kernel gathers both operands: the image's first
    // position n*H*W (-1 past the end) and the window's origin (h0, w0) packed as 16-bit
    // halves (the launcher keeps H + ph and W + pw below 2**15).
    const int kk = tid % BK, j0 = tid / BK;
    int pix0[4], hw0[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const int row = m0 + j0 + 32 * i;
        if (row < NPQ) {
            const int n = row / PQ, pq = row % PQ;
            pix0[i] = n * s.H * s.W;
            hw0[i] = (int)((unsigned)((pq / s.Q) * s.sh - s.ph) << 16) |
                     (((pq % s.Q) * s.sw - s.pw) & 0xffff);
        } else {
            pix0[i] = -1;
            hw0[i] = 0;
        }
    }
    // weight rows g*Kg + n0 + j0 + 32 i, i = 0..3: RSC * 32 elements apart
    const T* wg = w + ((long long)g * Kg + n0 + j0) * RSC;
    const int wrows = Kg - (n0 + j0);                       // rows i with 32 i < wrows exist
    const T* xg = x + (long long)g * Cg;
    T ra[4], rb[4];
    auto fetch = [&](int k0) {
        const int d = k0 + kk;
        const bool inside = d < RSC;
        const int rs = d / Cg, c = d - rs * Cg;
        const int r = rs / s.S, sc = rs - r * s.S;
        const int dr = r * s.dh, ds = sc * s.dw;
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const int h = (hw0[i] >> 16) + dr, v = (int)(short)(hw0[i] & 0xffff) + ds;
            ra[i] = (inside && pix0[i] >= 0 && h >= 0 && h < s.H && v >= 0 && v < s.W)
                        ? xg[(long long)(pix0[i] + h * s.W + v) * s.C + c] : T(0);
            rb[i] = (inside && 32 * i < wrows) ? wg[(long long)(32 * i) * RSC + d] : T(0);
        }
    };
    auto stage = [&](int buf) {
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            As[buf][kk][j0 + 32 * i] = staged<T, TF32>(ra[i]);
            Bs[buf][kk][j0 + 32 * i] = staged<T, TF32>(rb[i]);
        }
    };

    T acc[NACC];
    mainloop<T, TF32>(As, Bs, 0, (RSC + BK - 1) / BK, tid, acc, fetch, stage);
    // row r = output position (n, p, q): y's row; column = output channel g*Kg + c
#pragma unroll
    for (int e = 0; e < NACC; ++e) {
        const int r = m0 + acc_row<TF32>(e, tid), c = n0 + slot_col<TF32>(acc_slot<TF32>(e), tid);
        if (r < NPQ && c < Kg) {
            const int k = g * Kg + c;
            y[(long long)r * s.K + k] = bias != nullptr ? acc[e] + bias[k] : acc[e];
        }
    }
}

template <typename T, bool TF32>
__global__ void __launch_bounds__(THREADS, 1)
conv2d_nhwc_wgrad_implicit_gemm(const T* __restrict__ x, const T* __restrict__ gy,
                                T* __restrict__ gw, CONV_SHAPE_PARAMS, int splits, int kchunk,
                                long long split_stride) {
    const CONV_SHAPE;
    __shared__ __align__(16) T As[2][BK][LDS];
    __shared__ __align__(16) T Bs[2][BK][LDS];
    const int tid = threadIdx.x;
    const int g = blockIdx.z / splits, split = blockIdx.z % splits;
    const int Cg = s.C / s.groups, Kg = s.K / s.groups;
    const int RSC = s.R * s.S * Cg, PQ = s.P * s.Q, NPQ = s.N * PQ;
    const int kbeg = split * kchunk, kend = min(NPQ, kbeg + kchunk);
    gw += split * split_stride;
    const int m0 = blockIdx.y * BM, n0 = blockIdx.x * BN;

    // thread tid moves depth (output position) kk = tid / 32 of rows / columns
    // j = tid % 32 + 32 i, i = 0..3
    const int kk = tid / 32, j0 = tid % 32;
    // its four taps (r, s, c): c (-1 past the end) and the offsets (r*dh, s*dw) packed as
    // 16-bit halves (the launcher keeps them below 2**15)
    int tc[4], tdd[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const int col = n0 + j0 + 32 * i;
        if (col < RSC) {
            const int rs = col / Cg, r = rs / s.S;
            tc[i] = col - rs * Cg;
            tdd[i] = (int)((unsigned)(r * s.dh) << 16) | ((rs - r * s.S) * s.dw);
        } else {
            tc[i] = -1;
            tdd[i] = 0;
        }
    }
    const int arows = Kg - (m0 + j0);                  // rows i with 32 i < arows exist
    const T* gyg = gy + (long long)g * Kg + m0 + j0;
    const T* xg = x + (long long)g * Cg;
    T ra[4], rb[4];
    auto fetch = [&](int k0) {
        const int m = k0 + kk;
        const bool inside = m < kend;
        const int n = m / PQ, pq = m - n * PQ, p = pq / s.Q;
        const int h0 = p * s.sh - s.ph, w0 = (pq - p * s.Q) * s.sw - s.pw;
        const long long pix0 = (long long)n * s.H * s.W;
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            ra[i] = (inside && 32 * i < arows) ? gyg[(long long)m * s.K + 32 * i] : T(0);
            const int h = h0 + (tdd[i] >> 16), v = w0 + (tdd[i] & 0xffff);
            rb[i] = (inside && tc[i] >= 0 && h >= 0 && h < s.H && v >= 0 && v < s.W)
                        ? xg[(pix0 + (long long)h * s.W + v) * s.C + tc[i]] : T(0);
        }
    };
    auto stage = [&](int buf) {
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            As[buf][kk][j0 + 32 * i] = staged<T, TF32>(ra[i]);
            Bs[buf][kk][j0 + 32 * i] = staged<T, TF32>(rb[i]);
        }
    };

    T acc[NACC];
    mainloop<T, TF32>(As, Bs, kbeg, (kend - kbeg + BK - 1) / BK, tid, acc, fetch, stage);
    store_rows<TF32>(acc, tid, gw + (long long)g * Kg * RSC, RSC, m0, n0, Kg, RSC);
}

template <typename T, bool TF32>
__global__ void __launch_bounds__(THREADS, 1)
conv2d_nhwc_dgrad_implicit_gemm(const T* __restrict__ gy, const T* __restrict__ w,
                                T* __restrict__ gx, CONV_SHAPE_PARAMS) {
    const CONV_SHAPE;
    __shared__ __align__(16) T As[2][BK][LDS];
    __shared__ __align__(16) T Bs[2][BK][LDS];
    const int tid = threadIdx.x;
    const int g = blockIdx.z;
    const int Cg = s.C / s.groups, Kg = s.K / s.groups;
    const int RSK = s.R * s.S * Kg, RSC = s.R * s.S * Cg, HW = s.H * s.W, NHW = s.N * HW;
    const int m0 = blockIdx.x * BM, n0 = blockIdx.y * BN;

    // thread tid moves depth kk = tid % BK of rows (input positions) and columns (input
    // channels) j = tid / BK + 32 i; per row the image's first output position n*P*Q (-1
    // past the end) and (h + ph, w + pw) packed as 16-bit halves
    const int kk = tid % BK, j0 = tid / BK;
    int pq0[4], hw[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const int row = m0 + j0 + 32 * i;
        if (row < NHW) {
            const int n = row / HW, hv = row - n * HW, h = hv / s.W;
            pq0[i] = n * s.P * s.Q;
            hw[i] = (int)((unsigned)(h + s.ph) << 16) | (hv - h * s.W + s.pw);
        } else {
            pq0[i] = -1;
            hw[i] = 0;
        }
    }
    const int ccols = Cg - (n0 + j0);                  // columns i with 32 i < ccols exist
    const T* gyg = gy + (long long)g * Kg;
    const T* wg = w + (long long)g * Kg * RSC + n0 + j0;
    T ra[4], rb[4];
    auto fetch = [&](int k0) {
        const int d = k0 + kk;
        const bool inside = d < RSK;
        const int rs = d / Kg, k = d - rs * Kg;
        const int r = rs / s.S, sc = rs - r * s.S;
        const int dr = r * s.dh, ds = sc * s.dw;
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const int hh = (hw[i] >> 16) - dr, vv = (hw[i] & 0xffff) - ds;
            const int p = hh / s.sh, q = vv / s.sw;
            ra[i] = (inside && pq0[i] >= 0 && hh >= 0 && vv >= 0 && p * s.sh == hh &&
                     q * s.sw == vv && p < s.P && q < s.Q)
                        ? gyg[(long long)(pq0[i] + p * s.Q + q) * s.K + k] : T(0);
            rb[i] = (inside && 32 * i < ccols)
                        ? wg[(long long)k * RSC + rs * Cg + 32 * i] : T(0);
        }
    };
    auto stage = [&](int buf) {
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            As[buf][kk][j0 + 32 * i] = staged<T, TF32>(ra[i]);
            Bs[buf][kk][j0 + 32 * i] = staged<T, TF32>(rb[i]);
        }
    };

    T acc[NACC];
    mainloop<T, TF32>(As, Bs, 0, (RSK + BK - 1) / BK, tid, acc, fetch, stage);
    store_rows<TF32>(acc, tid, gx + (long long)g * Cg, s.C, m0, n0, NHW, Cg);
}
