// Pooling in CUDA C, templated on the element type T and the index type I: the launcher
// picks I = int while every flat index fits in 31 bits (cheap 32-bit division) and
// I = long long past that. Indices written for max pooling are always int64, flat over the
// unpadded input plane (h*W + w).
//
//   max_pool2d_fwd<T, I>        one thread per output; -inf start, strict '>' so the first
//                               maximum wins; the first NaN is taken and kept
//   max_pool2d_bwd_gather<T, I> one thread per input element: sums gy over the windows that
//                               can cover it and whose index points at it (deterministic)
//   avg_pool2d_fwd<T, I>, avg_pool2d_bwd_gather<T, I>   torch's divisor rule
#include "common.cuh"

struct PoolShape {
    int H, W, P, Q, kh, kw, sh, sw, ph, pw, dh, dw, include_pad, divisor_override;
};
// Kernels take the shape as plain ints (portable kernel arguments) and pack it here.
#define POOL_SHAPE_PARAMS int H, int W, int P, int Q, int kh, int kw, int sh, int sw, int ph, \
    int pw, int dh, int dw, int include_pad, int divisor_override
#define POOL_SHAPE PoolShape s{H, W, P, Q, kh, kw, sh, sw, ph, pw, dh, dw, include_pad, divisor_override}

__device__ __forceinline__ int first_cover(int i, int pad, int k, int s, int d) {
    const int num = i + pad - (k - 1) * d;
    return num <= 0 ? 0 : (num + s - 1) / s;
}

template <typename T, typename I>
__global__ void max_pool2d_fwd(const T* __restrict__ x, T* __restrict__ y,
                               long long* __restrict__ idx, I NC, POOL_SHAPE_PARAMS) {
    const POOL_SHAPE;
    const I total = NC * s.P * s.Q;
    for (I t = blockIdx.x * (I)blockDim.x + threadIdx.x; t < total; t += (I)gridDim.x * blockDim.x) {
        const int q = (int)(t % s.Q), p = (int)((t / s.Q) % s.P);
        const I nc = t / ((I)s.P * s.Q);
        const T* xp = x + (long long)nc * s.H * s.W;
        const int h0 = p * s.sh - s.ph, w0 = q * s.sw - s.pw;
        T best = neg_inf<T>();
        int bi = -1;
        for (int r = 0; r < s.kh; ++r) {
            const int h = h0 + r * s.dh;
            if (h < 0 || h >= s.H) continue;
            for (int c = 0; c < s.kw; ++c) {
                const int v = w0 + c * s.dw;
                if (v < 0 || v >= s.W) continue;
                const T val = xp[h * s.W + v];
                if (best != best) continue;                  // a NaN was taken: keep it
                if (val > best || val != val || bi < 0) { best = val; bi = h * s.W + v; }
            }
        }
        y[t] = best;
        idx[t] = bi;
    }
}

template <typename T, typename I>
__global__ void max_pool2d_bwd_gather(const T* __restrict__ gy, const long long* __restrict__ idx,
                                      T* __restrict__ gx, I NC, POOL_SHAPE_PARAMS) {
    const POOL_SHAPE;
    const I total = NC * s.H * s.W;
    for (I t = blockIdx.x * (I)blockDim.x + threadIdx.x; t < total; t += (I)gridDim.x * blockDim.x) {
        const int v = (int)(t % s.W), h = (int)((t / s.W) % s.H);
        const I nc = t / ((I)s.H * s.W);
        const long long base = (long long)nc * s.P * s.Q;
        const int me = h * s.W + v;
        const int p_hi = min((h + s.ph) / s.sh, s.P - 1), q_hi = min((v + s.pw) / s.sw, s.Q - 1);
        T acc = T(0);
        // candidate windows: every output whose (dilated) span covers (h, v); comparing the
        // stored index decides, so no divisibility test is needed for dilation
        const int p_lo = first_cover(h, s.ph, s.kh, s.sh, s.dh);
        const int q_lo = first_cover(v, s.pw, s.kw, s.sw, s.dw);
        for (int p = p_lo; p <= p_hi; ++p) {
            const long long row = base + (long long)p * s.Q;
            for (int q = q_lo; q <= q_hi; ++q) {
                if (idx[row + q] == me) acc += gy[row + q];
            }
        }
        gx[t] = acc;
    }
}

template <typename T>
__device__ __forceinline__ T avg_divisor(int p, int q, const PoolShape& s) {
    if (s.divisor_override) return T(s.divisor_override);
    const int h0 = p * s.sh - s.ph, w0 = q * s.sw - s.pw;
    const int h1 = min(h0 + s.kh, s.H + s.ph), w1 = min(w0 + s.kw, s.W + s.pw);
    if (s.include_pad) return T((h1 - h0) * (w1 - w0));
    return T((min(h1, s.H) - max(h0, 0)) * (min(w1, s.W) - max(w0, 0)));
}

template <typename T, typename I>
__global__ void avg_pool2d_fwd(const T* __restrict__ x, T* __restrict__ y, I NC, POOL_SHAPE_PARAMS) {
    const POOL_SHAPE;
    const I total = NC * s.P * s.Q;
    for (I t = blockIdx.x * (I)blockDim.x + threadIdx.x; t < total; t += (I)gridDim.x * blockDim.x) {
        const int q = (int)(t % s.Q), p = (int)((t / s.Q) % s.P);
        const I nc = t / ((I)s.P * s.Q);
        const T* xp = x + (long long)nc * s.H * s.W;
        const int h0 = p * s.sh - s.ph, w0 = q * s.sw - s.pw;
        T acc = T(0);
        for (int h = max(h0, 0); h < min(h0 + s.kh, s.H); ++h)
            for (int v = max(w0, 0); v < min(w0 + s.kw, s.W); ++v) acc += xp[h * s.W + v];
        y[t] = acc / avg_divisor<T>(p, q, s);
    }
}

template <typename T, typename I>
__global__ void avg_pool2d_bwd_gather(const T* __restrict__ gy, T* __restrict__ gx, I NC,
                                      POOL_SHAPE_PARAMS) {
    const POOL_SHAPE;
    const I total = NC * s.H * s.W;
    for (I t = blockIdx.x * (I)blockDim.x + threadIdx.x; t < total; t += (I)gridDim.x * blockDim.x) {
        const int v = (int)(t % s.W), h = (int)((t / s.W) % s.H);
        const I nc = t / ((I)s.H * s.W);
        const T* g = gy + (long long)nc * s.P * s.Q;
        T acc = T(0);
        const int p_hi = min((h + s.ph) / s.sh, s.P - 1), q_hi = min((v + s.pw) / s.sw, s.Q - 1);
        for (int p = first_cover(h, s.ph, s.kh, s.sh, 1); p <= p_hi; ++p)
            for (int q = first_cover(v, s.pw, s.kw, s.sw, 1); q <= q_hi; ++q)
                acc += g[p * s.Q + q] / avg_divisor<T>(p, q, s);
        gx[t] = acc;
    }
}
