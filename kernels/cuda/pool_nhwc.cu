// Pooling in CUDA C on channels-last (NHWC) tensors: x (N, H, W, C) -> y (N, P, Q, C),
// launched by pool_nhwc.py. One thread per output element, the channel fastest: the 32
// threads of a warp read 32 consecutive channels of one input position per window tap (a
// coalesced 128-byte row in float), where the NCHW kernels' neighbours read positions a
// stride apart. Same semantics, same order of the window's taps as pool.cu's kernels, whose
// helpers this file includes (PoolShape, Divider, max_window_loop, avg_divisor): results bitwise
// equal to theirs on the transposed input. T is float, double or a half type (half.cuh):
// the half types load and store 16 bits and sum in acc_t<T> = float, one rounding per
// stored value, as pool.cu's kernels.
//
//   max_pool2d_nhwc_fwd<T, I>   -inf start, strict '>' so the first maximum in window order
//                               wins, the first NaN is taken and kept; int64 indices flat
//                               over the unpadded input plane (h*W + w), as torch gives them
//                               for channels_last input
//   avg_pool2d_nhwc_fwd<T, I>   the window's sum (rows, then columns) over torch's divisor
//   max_pool2d_nhwc_bwd_gather<T, I>  one thread per input element: the sum of gy over the
//                               windows that can cover it and whose index points at it, in
//                               window order (p, then q), as pool.cu's gathers
//   max_pool2d_nhwc_check_indices<I>  one thread per output: its index in the plane and
//                               inside its window (pool.cu index_violation), a flag set
//                               otherwise, which the launcher reads back
//   avg_pool2d_nhwc_bwd_gather<T, I>  one thread per input element: gy / divisor summed over
//                               the windows that cover it, in window order
//   ... <T, I, V>: the four kernels above with V channels a thread, V = 8 for the half types
//                               (one 16-byte load or store of 8 halves where a warp of
//                               scalar threads moves 2 bytes each; the launcher takes it
//                               where C % 8 == 0 and the bases are 16-byte aligned); C / V
//                               channel groups fastest, each lane the scalar kernel's rule
//   adaptive_avg_pool2d_nhwc_fwd<T, I>, adaptive_avg_pool2d_nhwc_bwd<T, I>  pool.cu's
//                               adaptive kernels, channel fastest (global pooling: P = Q = 1).
//                               Not tuned: plain divisions per element
#include "pool.cu"

// flat index t over (N, P, Q, C) -> n (returned), p, q, c (or over (N, H, W, C) with the
// dividers of W and H)
template <typename I>
__device__ __forceinline__ I unravel_nhwc(I t, const Divider<I>& divC, const Divider<I>& divQ,
                                          const Divider<I>& divP, int& p, int& q, int& c) {
    const I pix = divC.div(t), np = divQ.div(pix), n = divP.div(np);
    c = (int)(t - pix * divC.d);
    q = (int)(pix - np * divQ.d);
    p = (int)(np - n * divP.d);
    return n;
}

// mC: the multiply-shift constant of C / V, the channel groups
template <typename T, typename I, int V = 1>
__global__ void max_pool2d_nhwc_fwd(const T* __restrict__ x, T* __restrict__ y,
                                    long long* __restrict__ idx, I N, int C,
                                    unsigned long long mC, POOL_SHAPE_PARAMS) {
    const POOL_SHAPE;
    POOL_DIV(I, divC, C / V, mC);
    POOL_DIV(I, divQ, Q, mQ);
    POOL_DIV(I, divP, P, mP);
    const I total = N * s.P * s.Q * (C / V);
    for (I t = blockIdx.x * (I)blockDim.x + threadIdx.x; t < total; t += (I)gridDim.x * blockDim.x) {
        int p, q, c;
        const I n = unravel_nhwc(t, divC, divQ, divP, p, q, c);
        const T* xp = x + (long long)n * s.H * s.W * C + c * V;
        const int h0 = p * s.sh - s.ph, w0 = q * s.sw - s.pw;
        Pack<T, V> best;
        int bi[V];
        max_window_lanes<V>(xp, h0, w0, s, best, bi, [C](int i) { return (long long)i * C; });
        store_pack<T, V>(y + (long long)t * V, best);
#pragma unroll
        for (int j = 0; j < V; ++j) idx[(long long)t * V + j] = bi[j];
    }
}

template <typename T, typename I, int V = 1>
__global__ void avg_pool2d_nhwc_fwd(const T* __restrict__ x, T* __restrict__ y, I N, int C,
                                    unsigned long long mC, POOL_SHAPE_PARAMS) {
    const POOL_SHAPE;
    POOL_DIV(I, divC, C / V, mC);
    POOL_DIV(I, divQ, Q, mQ);
    POOL_DIV(I, divP, P, mP);
    const I total = N * s.P * s.Q * (C / V);
    for (I t = blockIdx.x * (I)blockDim.x + threadIdx.x; t < total; t += (I)gridDim.x * blockDim.x) {
        int p, q, c;
        const I n = unravel_nhwc(t, divC, divQ, divP, p, q, c);
        const T* xp = x + (long long)n * s.H * s.W * C + c * V;
        const int h0 = p * s.sh - s.ph, w0 = q * s.sw - s.pw;
        acc_t<T> acc[V] = {};
        for (int h = max(h0, 0); h < min(h0 + s.kh, s.H); ++h)
            for (int v = max(w0, 0); v < min(w0 + s.kw, s.W); ++v) {
                const Pack<T, V> val = load_pack<T, V>(xp + ((long long)h * s.W + v) * C);
#pragma unroll
                for (int j = 0; j < V; ++j) acc[j] += to_acc(val.v[j]);
            }
        const acc_t<T> d = avg_divisor<acc_t<T>>(p, q, s);
        Pack<T, V> out;
#pragma unroll
        for (int j = 0; j < V; ++j) out.v[j] = from_acc<T>(acc[j] / d);
        store_pack<T, V>(y + (long long)t * V, out);
    }
}

template <typename I>
__global__ void max_pool2d_nhwc_check_indices(const long long* __restrict__ idx,
                                              int* __restrict__ bad, I N, int C,
                                              unsigned long long mC, POOL_SHAPE_PARAMS) {
    const POOL_SHAPE;
    POOL_DIV(I, divC, C, mC);
    POOL_DIV(I, divQ, Q, mQ);
    POOL_DIV(I, divP, P, mP);
    POOL_DIV(I, divW, W, mW);
    const I total = N * s.P * s.Q * C;
    int flags = 0;
    for (I t = blockIdx.x * (I)blockDim.x + threadIdx.x; t < total; t += (I)gridDim.x * blockDim.x) {
        int p, q, c;
        unravel_nhwc(t, divC, divQ, divP, p, q, c);
        flags |= index_violation(idx[t], p, q, s, divW);
    }
    if (flags) atomicOr(bad, flags);
}

template <typename T, typename I, int V = 1>
__global__ void max_pool2d_nhwc_bwd_gather(const T* __restrict__ gy,
                                           const long long* __restrict__ idx,
                                           T* __restrict__ gx, I N, int C, unsigned long long mC,
                                           POOL_SHAPE_PARAMS) {
    const POOL_SHAPE;
    POOL_DIV(I, divC, C / V, mC);
    POOL_DIV(I, divW, W, mW);
    POOL_DIV(I, divH, H, mH);
    POOL_DIV(I, divSH, sh, mSH);
    POOL_DIV(I, divSW, sw, mSW);
    const I total = N * s.H * s.W * (C / V);
    for (I t = blockIdx.x * (I)blockDim.x + threadIdx.x; t < total; t += (I)gridDim.x * blockDim.x) {
        int h, v, c;
        const I n = unravel_nhwc(t, divC, divW, divH, h, v, c);
        const long long base = (long long)n * s.P * s.Q * C + c * V;
        const int me = h * s.W + v;
        const int p_hi = min((int)divSH.div(h + s.ph), s.P - 1);
        const int q_hi = min((int)divSW.div(v + s.pw), s.Q - 1);
        const int q_lo = first_cover(v, s.pw, s.kw, divSW, s.dw);
        acc_t<T> acc[V] = {};
        for (int p = first_cover(h, s.ph, s.kh, divSH, s.dh); p <= p_hi; ++p)
            for (int q = q_lo; q <= q_hi; ++q) {
                const long long at = base + ((long long)p * s.Q + q) * C;
                bool hit[V], any = false;
#pragma unroll
                for (int j = 0; j < V; ++j) any |= hit[j] = idx[at + j] == me;
                if (!any) continue;                     // gy is read only where it counts
                const Pack<T, V> g = load_pack<T, V>(gy + at);
#pragma unroll
                for (int j = 0; j < V; ++j)
                    if (hit[j]) acc[j] += to_acc(g.v[j]);
            }
        Pack<T, V> out;
#pragma unroll
        for (int j = 0; j < V; ++j) out.v[j] = from_acc<T>(acc[j]);
        store_pack<T, V>(gx + (long long)t * V, out);
    }
}

template <typename T, typename I, int V = 1>
__global__ void avg_pool2d_nhwc_bwd_gather(const T* __restrict__ gy, T* __restrict__ gx, I N,
                                           int C, unsigned long long mC, POOL_SHAPE_PARAMS) {
    const POOL_SHAPE;
    POOL_DIV(I, divC, C / V, mC);
    POOL_DIV(I, divW, W, mW);
    POOL_DIV(I, divH, H, mH);
    POOL_DIV(I, divSH, sh, mSH);
    POOL_DIV(I, divSW, sw, mSW);
    const I total = N * s.H * s.W * (C / V);
    for (I t = blockIdx.x * (I)blockDim.x + threadIdx.x; t < total; t += (I)gridDim.x * blockDim.x) {
        int h, v, c;
        const I n = unravel_nhwc(t, divC, divW, divH, h, v, c);
        const T* g = gy + (long long)n * s.P * s.Q * C + c * V;
        acc_t<T> acc[V] = {};
        const int p_hi = min((int)divSH.div(h + s.ph), s.P - 1);
        const int q_hi = min((int)divSW.div(v + s.pw), s.Q - 1);
        const int q_lo = first_cover(v, s.pw, s.kw, divSW, 1);
        for (int p = first_cover(h, s.ph, s.kh, divSH, 1); p <= p_hi; ++p)
            for (int q = q_lo; q <= q_hi; ++q) {
                const Pack<T, V> gv = load_pack<T, V>(g + ((long long)p * s.Q + q) * C);
                const acc_t<T> d = avg_divisor<acc_t<T>>(p, q, s);
#pragma unroll
                for (int j = 0; j < V; ++j) acc[j] += to_acc(gv.v[j]) / d;
            }
        Pack<T, V> out;
#pragma unroll
        for (int j = 0; j < V; ++j) out.v[j] = from_acc<T>(acc[j]);
        store_pack<T, V>(gx + (long long)t * V, out);
    }
}

template <typename T, typename I>
__global__ void adaptive_avg_pool2d_nhwc_fwd(const T* __restrict__ x, T* __restrict__ y, I N,
                                             int C, int H, int W, int P, int Q) {
    const I total = N * P * Q * C;
    for (I t = blockIdx.x * (I)blockDim.x + threadIdx.x; t < total; t += (I)gridDim.x * blockDim.x) {
        const I pix = t / C, np = pix / Q;
        const int c = (int)(t - pix * C), q = (int)(pix - np * Q), p = (int)(np % P);
        const T* xp = x + (long long)(np / P) * H * W * C + c;
        const int h0 = adaptive_start(p, H, P), h1 = adaptive_end(p, H, P);
        const int w0 = adaptive_start(q, W, Q), w1 = adaptive_end(q, W, Q);
        acc_t<T> acc = 0;
        for (int h = h0; h < h1; ++h)
            for (int v = w0; v < w1; ++v) acc += to_acc(xp[((long long)h * W + v) * C]);
        y[t] = from_acc<T>(acc / acc_t<T>((h1 - h0) * (w1 - w0)));
    }
}

template <typename T, typename I>
__global__ void adaptive_avg_pool2d_nhwc_bwd(const T* __restrict__ gy, T* __restrict__ gx, I N,
                                             int C, int H, int W, int P, int Q) {
    const I total = N * H * W * C;
    for (I t = blockIdx.x * (I)blockDim.x + threadIdx.x; t < total; t += (I)gridDim.x * blockDim.x) {
        const I pix = t / C, nh = pix / W;
        const int c = (int)(t - pix * C), v = (int)(pix - nh * W), h = (int)(nh % H);
        const T* g = gy + (long long)(nh / H) * P * Q * C + c;
        const int p0 = adaptive_start(h, P, H), p1 = adaptive_end(h, P, H);
        const int q0 = adaptive_start(v, Q, W), q1 = adaptive_end(v, Q, W);
        acc_t<T> acc = 0;
        for (int p = p0; p < p1; ++p) {
            const int rows = adaptive_end(p, H, P) - adaptive_start(p, H, P);
            for (int q = q0; q < q1; ++q)
                acc += to_acc(g[((long long)p * Q + q) * C]) /
                       acc_t<T>(rows * (adaptive_end(q, W, Q) - adaptive_start(q, W, Q)));
        }
        gx[t] = from_acc<T>(acc);
    }
}
