// Direct convolution in CUDA C: input patches and filters staged in shared memory, every
// output accumulated in registers over (c, r, s) in a fixed order.
//
//   conv2d_direct<T>  y[n, g*Kg + k, p, q] = b[k] + sum_{c,r,s} w[g*Kg + k, c, r, s] *
//                         x[n, g*Cg + c, p*sh - ph + r*dh, q*sw - pw + s*dw]
//
// A 256-thread block computes KT = 32 output channels of one (n, group) over a TP x TQ =
// 8 x 32 tile of output pixels. Thread tid owns channels (tid / 64) * 8 + {0..7} and the
// four pixels (row (tid % 64) / 8, columns tid % 8 + {0, 8, 16, 24}): 32 accumulators.
// The reduction runs over chunks of CB input channels (the launcher picks CB so one
// chunk fits in SMEM_BYTES):
//   1. the block stages the filters of the chunk as fs[(c*R + r)*S + s][KT] (its 8 channels
//      are two 16-byte vectors per thread, the same for a whole warp: a broadcast) and the
//      input patch each output tile needs as xs[c][row][col] (rows padded so that four rows
//      of eight columns fall in distinct banks); zero where the window is in the padding;
//   2. every thread walks (c, r, s): 4 input values + 8 weights from shared memory, 32 FMAs.
// Each output is summed in the same order on every launch (deterministic). The half types
// (half.cuh) are staged into shared memory converted to float and accumulate in FP32
// (A = acc_t<T>: every product of two halves is exact there), one rounding per output.
#include "common.cuh"
#include "half.cuh"

namespace direct {
constexpr int KT = 32, TP = 8, TQ = 32, THREADS = 256, SMEM_BYTES = 40960;
}

template <typename T, typename A = acc_t<T>>
__global__ void __launch_bounds__(direct::THREADS, sizeof(A) == 4 ? 3 : 1)
conv2d_direct(const T* __restrict__ x, const T* __restrict__ w, const T* __restrict__ bias,
              T* __restrict__ y, int N, int C, int H, int W, int K, int R, int S, int P, int Q,
              int sh, int sw, int ph, int pw, int dh, int dw, int groups, int CB, int patch_h,
              int ldx) {
    using namespace direct;
    __shared__ __align__(16) A smem[SMEM_BYTES / sizeof(A)];
    const int tid = threadIdx.x;
    const int Cg = C / groups, Kg = K / groups, RS = R * S;
    const int tiles_q = (Q + TQ - 1) / TQ, tiles_p = (P + TP - 1) / TP;
    long long b = blockIdx.x;
    const int tq = (int)(b % tiles_q); b /= tiles_q;
    const int tp = (int)(b % tiles_p); b /= tiles_p;
    const int g = (int)(b % groups);
    const int n = (int)(b / groups);
    const int p0 = tp * TP, q0 = tq * TQ, k0 = blockIdx.y * KT;

    A* fs = smem;                                   // CB * RS * KT filters
    A* xs = smem + CB * RS * KT;                    // CB * patch_h * ldx inputs
    const int cg = tid / 64, prow = (tid % 64) / 8, qg = tid % 8;
    const long long HW = (long long)H * W;
    const T* xn = x + ((long long)n * C + (long long)g * Cg) * HW;
    const T* wg = w + (long long)g * Kg * Cg * RS;

    A acc[32];
#pragma unroll
    for (int e = 0; e < 32; ++e) acc[e] = A(0);

    for (int c0 = 0; c0 < Cg; c0 += CB) {
        const int cb = min(CB, Cg - c0);
        __syncthreads();                            // the previous chunk is consumed
        // filters: global order (k, c, r, s) read along (c, r, s); stored [c][r][s][k]
        for (int i = tid; i < cb * RS * KT; i += THREADS) {
            const int crs = i % (cb * RS), kk = i / (cb * RS);
            const int k = k0 + kk;
            fs[crs * KT + kk] =
                k < Kg ? A(to_acc(wg[((long long)k * Cg + c0) * RS + crs])) : A(0);
        }
        // input patch rows p0*sh - ph + [0, patch_h), columns q0*sw - pw + [0, ldx)
        const int h0 = p0 * sh - ph, v0 = q0 * sw - pw;
        for (int i = tid; i < cb * patch_h * ldx; i += THREADS) {
            const int col = i % ldx, t = i / ldx;
            const int row = t % patch_h, c = t / patch_h;
            const int h = h0 + row, v = v0 + col;
            xs[i] = (h >= 0 && h < H && v >= 0 && v < W)
                        ? A(to_acc(xn[(long long)(c0 + c) * HW + (long long)h * W + v])) : A(0);
        }
        __syncthreads();
        for (int c = 0; c < cb; ++c) {
            for (int r = 0; r < R; ++r) {
                const A* xrow = xs + (c * patch_h + prow * sh + r * dh) * ldx + qg * sw;
                const A* frow = fs + (c * RS + r * S) * KT + cg * 8;
                for (int sc = 0; sc < S; ++sc) {
                    A xv[4], wv[8];
#pragma unroll
                    for (int j = 0; j < 4; ++j) xv[j] = xrow[j * 8 * sw + sc * dw];
                    lds4(frow + sc * KT, wv);
                    lds4(frow + sc * KT + 4, wv + 4);
#pragma unroll
                    for (int i = 0; i < 8; ++i)
#pragma unroll
                        for (int j = 0; j < 4; ++j) acc[i * 4 + j] += wv[i] * xv[j];
                }
            }
        }
    }
    const int p = p0 + prow;
    if (p >= P) return;
#pragma unroll
    for (int i = 0; i < 8; ++i) {
        const int k = k0 + cg * 8 + i;
        if (k >= Kg) continue;
        const long long kk = (long long)g * Kg + k;
        T* yr = y + (((long long)n * K + kk) * P + p) * Q;
        const A bk = bias ? A(to_acc(bias[kk])) : A(0);
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const int q = q0 + qg + 8 * j;
            if (q < Q) yr[q] = from_acc<T>(acc[i * 4 + j] + bk);
        }
    }
}
