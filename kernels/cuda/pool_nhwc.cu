// Pooling in CUDA C on channels-last (NHWC) tensors: x (N, H, W, C) -> y (N, P, Q, C),
// launched by pool_nhwc.py. One thread per output element, the channel fastest: the 32
// threads of a warp read 32 consecutive channels of one input position per window tap (a
// coalesced 128-byte row in float), where the NCHW kernels' neighbours read positions a
// stride apart. Same semantics, same order of the window's taps as pool.cu's kernels, whose
// helpers this file includes (PoolShape, Divider, greater, avg_divisor): results bitwise
// equal to theirs on the transposed input.
//
//   max_pool2d_nhwc_fwd<T, I>   -inf start, strict '>' so the first maximum in window order
//                               wins, the first NaN is taken and kept; int64 indices flat
//                               over the unpadded input plane (h*W + w), as torch gives them
//                               for channels_last input
//   avg_pool2d_nhwc_fwd<T, I>   the window's sum (rows, then columns) over torch's divisor
#include "pool.cu"

// flat index t over (N, P, Q, C) -> n (returned), p, q, c
template <typename I>
__device__ __forceinline__ I unravel_nhwc(I t, const Divider<I>& divC, const Divider<I>& divQ,
                                          const Divider<I>& divP, int& p, int& q, int& c) {
    const I pix = divC.div(t), np = divQ.div(pix), n = divP.div(np);
    c = (int)(t - pix * divC.d);
    q = (int)(pix - np * divQ.d);
    p = (int)(np - n * divP.d);
    return n;
}

template <typename T, typename I>
__global__ void max_pool2d_nhwc_fwd(const T* __restrict__ x, T* __restrict__ y,
                                    long long* __restrict__ idx, I N, int C,
                                    unsigned long long mC, POOL_SHAPE_PARAMS) {
    const POOL_SHAPE;
    POOL_DIV(I, divC, C, mC);
    POOL_DIV(I, divQ, Q, mQ);
    POOL_DIV(I, divP, P, mP);
    const I total = N * s.P * s.Q * C;
    for (I t = blockIdx.x * (I)blockDim.x + threadIdx.x; t < total; t += (I)gridDim.x * blockDim.x) {
        int p, q, c;
        const I n = unravel_nhwc(t, divC, divQ, divP, p, q, c);
        const T* xp = x + (long long)n * s.H * s.W * C + c;
        const int h0 = p * s.sh - s.ph, w0 = q * s.sw - s.pw;
        T best = neg_inf<T>();
        int bi = -1;
        for (int r = 0; r < s.kh; ++r) {
            const int h = h0 + r * s.dh;
            if (h < 0 || h >= s.H) continue;
            for (int k = 0; k < s.kw; ++k) {
                const int v = w0 + k * s.dw;
                if (v < 0 || v >= s.W) continue;
                const T val = xp[((long long)h * s.W + v) * C];
                if (best != best) continue;              // a NaN was taken: keep it
                if (greater(val, best) || val != val || bi < 0) { best = val; bi = h * s.W + v; }
            }
        }
        y[t] = best;
        idx[t] = bi;
    }
}

template <typename T, typename I>
__global__ void avg_pool2d_nhwc_fwd(const T* __restrict__ x, T* __restrict__ y, I N, int C,
                                    unsigned long long mC, POOL_SHAPE_PARAMS) {
    const POOL_SHAPE;
    POOL_DIV(I, divC, C, mC);
    POOL_DIV(I, divQ, Q, mQ);
    POOL_DIV(I, divP, P, mP);
    const I total = N * s.P * s.Q * C;
    for (I t = blockIdx.x * (I)blockDim.x + threadIdx.x; t < total; t += (I)gridDim.x * blockDim.x) {
        int p, q, c;
        const I n = unravel_nhwc(t, divC, divQ, divP, p, q, c);
        const T* xp = x + (long long)n * s.H * s.W * C + c;
        const int h0 = p * s.sh - s.ph, w0 = q * s.sw - s.pw;
        T acc = T(0);
        for (int h = max(h0, 0); h < min(h0 + s.kh, s.H); ++h)
            for (int v = max(w0, 0); v < min(w0 + s.kw, s.W); ++v) acc += xp[((long long)h * s.W + v) * C];
        y[t] = acc / avg_divisor<T>(p, q, s);
    }
}
