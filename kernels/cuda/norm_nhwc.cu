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
//                                    (count, mean, m2) merged by Chan's formula (norm.cu)
//   batch_norm_nhwc_finish<T>        training: merges the splits -> mean, invstd (biased
//                                    var), running estimates updated in place (unbiased);
//                                    evaluation: from the running estimates
//   batch_norm_nhwc_bwd_partials<T>  per (channel, split): sums of gy and gy * (x - mean),
//                                    in norm.cu's layout, which batch_norm_bwd_finish merges
#include "norm.cu"

constexpr int NHWC_LANES = 32, NHWC_ROWS = NORM_THREADS / NHWC_LANES;

// first row of split s of M rows cut into S runs (64-bit: M = N*H*W may pass 2**31)
__device__ __forceinline__ long long split_start_rows(long long M, int S, int s) {
    return M / S * s + min((long long)s, M % S);
}

template <typename T>
__global__ void __launch_bounds__(NORM_THREADS)
batch_norm_nhwc_partials(const T* __restrict__ x, T* __restrict__ part, long long M, int C,
                         int S) {
    __shared__ T cnt[NORM_THREADS], mu[NORM_THREADS], m2[NORM_THREADS];
    const int t = threadIdx.x, lane = t % NHWC_LANES, row = t / NHWC_LANES;
    const int c = blockIdx.x * NHWC_LANES + lane, s = blockIdx.y;
    const long long end = split_start_rows(M, S, s + 1);
    T n = T(0), mean = T(0), sq = T(0);
    if (c < C) {
        for (long long m = split_start_rows(M, S, s) + row; m < end; m += NHWC_ROWS) {
            const T v = x[m * C + c];
            n += T(1);
            const T d = v - mean;
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
    if (row == 0 && c < C) {                        // part[c, s] = (count, mean, m2)
        T* p = part + ((long long)c * S + s) * 3;
        p[0] = cnt[t]; p[1] = mu[t]; p[2] = m2[t];
    }
}

template <typename T>
__global__ void batch_norm_nhwc_finish(const T* __restrict__ part, T* __restrict__ mean,
                                       T* __restrict__ invstd, T* __restrict__ running_mean,
                                       T* __restrict__ running_var, int C, int S, int training,
                                       int update_running, T momentum, T eps, T unbias) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;
    if (!training) {
        mean[c] = running_mean[c];
        invstd[c] = T(1) / sqrt(running_var[c] + eps);
        return;
    }
    T n = T(0), mu = T(0), m2 = T(0);
    for (int s = 0; s < S; ++s) {
        const T* p = part + ((long long)c * S + s) * 3;
        merge(n, mu, m2, p[0], p[1], p[2]);
    }
    const T var = m2 / n;
    mean[c] = mu;
    invstd[c] = T(1) / sqrt(var + eps);
    if (update_running) {
        running_mean[c] = (T(1) - momentum) * running_mean[c] + momentum * mu;
        running_var[c] = (T(1) - momentum) * running_var[c] + momentum * var * unbias;
    }
}

template <typename T>
__global__ void __launch_bounds__(NORM_THREADS)
batch_norm_nhwc_bwd_partials(const T* __restrict__ gy, const T* __restrict__ x,
                             const T* __restrict__ mean, T* __restrict__ part, long long M,
                             int C, int S) {
    __shared__ T sg[NORM_THREADS], sgx[NORM_THREADS];
    const int t = threadIdx.x, lane = t % NHWC_LANES, row = t / NHWC_LANES;
    const int c = blockIdx.x * NHWC_LANES + lane, s = blockIdx.y;
    const long long end = split_start_rows(M, S, s + 1);
    T acc_g = T(0), acc_gx = T(0);
    if (c < C) {
        const T mc = mean[c];
        for (long long m = split_start_rows(M, S, s) + row; m < end; m += NHWC_ROWS) {
            const long long o = m * C + c;
            const T g = gy[o];
            acc_g += g;
            acc_gx += g * (x[o] - mc);
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
