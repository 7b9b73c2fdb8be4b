// Batch normalisation's reductions in CUDA C on channels-last (NHWC) input, seen as the
// (M, C) array of M = N*H*W rows of C contiguous channels (launched by norm_nhwc.py; the
// elementwise passes are norm.cu's flat kernels on the same memory, which walk it in order).
// A block owns 32 consecutive channels and one split of the rows: its 32 lanes read 32
// consecutive channels of a row (one 128-byte line in float) where norm.cu's per-channel
// blocks would read one value per row, C values apart. The eight warps take every eighth
// row of the split; the block merges them in a fixed tree, a second kernel the splits in
// order: deterministic, as norm.cu.
//
//   batch_norm_nhwc_partials<T>      per (channel, split): Welford over the split's rows,
//                                    merged by Chan's formula into norm.cu's (mean, m2)
//                                    layout, which batch_norm_finish merges (N = M rows,
//                                    L = 1: the split's count is its row count)
//   batch_norm_nhwc_bwd_partials<T, P>  per (channel, split): sums of gy and gy * (x - mean),
//                                    in norm.cu's layout, which batch_norm_bwd_finish merges
//
// As norm.cu: T the data's type, P the statistics' (P = T by default), every sum in
// A = acc_t<T> (FP32 for the half types, one rounding per stored element) and the partials
// in A.
#include "norm.cu"

constexpr int NHWC_LANES = 32, NHWC_ROWS = NORM_THREADS / NHWC_LANES;

template <typename T>
__global__ void __launch_bounds__(NORM_THREADS)
batch_norm_nhwc_partials(const T* __restrict__ x, acc_t<T>* __restrict__ part, long long M, int C,
                         int S) {
    using A = acc_t<T>;
    __shared__ A cnt[NORM_THREADS], mu[NORM_THREADS], m2[NORM_THREADS];
    const int t = threadIdx.x, lane = t % NHWC_LANES, row = t / NHWC_LANES;
    const int c = blockIdx.x * NHWC_LANES + lane, s = blockIdx.y;
    const long long end = split_start(M, S, s + 1);
    A n = A(0), mean = A(0), sq = A(0);
    if (c < C) {
        for (long long m = split_start(M, S, s) + row; m < end; m += NHWC_ROWS) {
            const A v = to_acc(x[m * C + c]);
            n += A(1);
            const A d = v - mean;
            mean += d * recip(n);
            sq += d * (v - mean);
        }
    }
    cnt[t] = n; mu[t] = mean; m2[t] = sq;
    __syncthreads();
    for (int half = NORM_THREADS / 2; half >= NHWC_LANES; half /= 2) {   // rows, lane by lane
        if (t < half) merge(cnt[t], mu[t], m2[t], cnt[t + half], mu[t + half], m2[t + half]);
        __syncthreads();
    }
    if (row == 0 && c < C) {                        // part[c, s] = (mean, m2)
        part[((long long)c * S + s) * 2] = mu[t];
        part[((long long)c * S + s) * 2 + 1] = m2[t];
    }
}

template <typename T, typename P = T>
__global__ void __launch_bounds__(NORM_THREADS)
batch_norm_nhwc_bwd_partials(const T* __restrict__ gy, const T* __restrict__ x,
                             const P* __restrict__ mean, acc_t<T>* __restrict__ part,
                             long long M, int C, int S) {
    using A = acc_t<T>;
    __shared__ A sg[NORM_THREADS], sgx[NORM_THREADS];
    const int t = threadIdx.x, lane = t % NHWC_LANES, row = t / NHWC_LANES;
    const int c = blockIdx.x * NHWC_LANES + lane, s = blockIdx.y;
    const long long end = split_start(M, S, s + 1);
    A acc_g = A(0), acc_gx = A(0);
    if (c < C) {
        const A mc = A(to_acc(mean[c]));
        for (long long m = split_start(M, S, s) + row; m < end; m += NHWC_ROWS) {
            const long long o = m * C + c;
            const A g = to_acc(gy[o]);
            acc_g += g;
            acc_gx += g * (to_acc(x[o]) - mc);
        }
    }
    sg[t] = acc_g; sgx[t] = acc_gx;
    __syncthreads();
    for (int half = NORM_THREADS / 2; half >= NHWC_LANES; half /= 2) {
        if (t < half) { sg[t] += sg[t + half]; sgx[t] += sgx[t + half]; }
        __syncthreads();
    }
    if (row == 0 && c < C) {                        // part[c, s] = (sum gy, sum gy (x - mean))
        part[((long long)c * S + s) * 2] = sg[t];
        part[((long long)c * S + s) * 2 + 1] = sgx[t];
    }
}
