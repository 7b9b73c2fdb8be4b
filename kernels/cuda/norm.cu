// Batch normalisation in CUDA C: statistics per channel c of an (N, C, L) array (L the
// product of the trailing sizes), M = N * L values each. Every reduction has a fixed order
// (each thread's share, then a fixed tree, then the splits in order): the same input gives
// the same bits on every run.
//
// A channel's N rows (of L values) are cut into S contiguous splits (the launcher picks S
// from C, N and M so the grid fills the device even with few channels); block (c, s)
// reduces split s of channel c, and a one-thread-per-channel kernel merges the S partial
// results in order.
//
//   batch_norm_partials<T>      forward statistics of split s: each thread runs Welford's
//                               update over its values (no cancellation, one read of x),
//                               the block merges them pairwise (Chan et al.) into (mean, m2)
//   batch_norm_finish<T>        training: merges the splits -> mean[c], invstd[c] =
//                               1 / sqrt(var + eps) with the biased var, and updates the
//                               running estimates in place (unbiased var); evaluation:
//                               mean = running_mean, invstd from running_var. Also
//                               norm_nhwc.cu's: N = M rows of an NHWC input, L = 1
//   batch_norm_apply<T>         y = (x - mean[c]) * (invstd[c] * w[c]) + b[c] (w, b null:
//                               1 and 0, as for the running estimates outside training),
//                               element by element (short planes)
//   batch_norm_apply_planes<T, V>  the same a plane (n, c) slice per block (long planes)
//   batch_norm_bwd_partials<T>  split s's sums of gy and gy * (x - mean[c])
//   batch_norm_bwd_finish<T>    gb[c] = sum gy, gw[c] = invstd[c] * sum gy (x - mean[c])
//   batch_norm_bwd_apply<T>     training: gx = w invstd (gy - gb / M - xhat gw / M), with
//                               xhat = (x - mean) invstd; evaluation: gx = w invstd gy
//   batch_norm_bwd_apply_planes<T, V>  the same a plane slice per block
//
// T is the data's type (x, y, gy, gx), P the parameters' and statistics' (w, b, the running
// estimates; P = T by default). Every kernel computes in A = acc_t<T> (half.cuh): for the
// half types T = __half, __nv_bfloat16, FP32 (Welford and every sum in float, one rounding
// per stored element), with P = float (torch's mixed batch norm) or P = T. The batch
// statistics and the backward's sums are A arrays (what the elementwise passes read,
// unrounded); where P is narrower than A the finish kernels also store them rounded to P
// (mean_p, invstd_p, gw, gb: what the op returns). For float and double A = P = T.
#include "common.cuh"
#include "half.cuh"

constexpr int NORM_THREADS = 256;

// Walks thread t's values of rows [n, ...) of channel c of an (N, C, L) array, NORM_THREADS
// values apart: the offset (n * C + c) * L + l, kept up to date with adds and compares (a
// 64-bit division per value would cost more than the value's load; the only division is
// the 32-bit one by a row shorter than the block).
struct ChannelRows {
    long long L, l, dl;
    int n, dn, C, c;
    __device__ ChannelRows(int n0, int t, long long L_, int C_, int c_) : L(L_), C(C_), c(c_) {
        if (L_ >= NORM_THREADS) {
            n = n0; l = t; dn = 0; dl = NORM_THREADS;
        } else {
            const int rows = (int)L_;
            n = n0 + t / rows; l = t % rows; dn = NORM_THREADS / rows; dl = NORM_THREADS % rows;
        }
    }
    __device__ long long offset() const { return ((long long)n * C + c) * L + l; }
    __device__ void next() {
        l += dl;
        n += dn;
        if (l >= L) { l -= L; ++n; }
    }
};

// The channel of flat element i of an (N, C, L) array along a grid-stride loop, kept up to
// date the same way.
struct FlatChannel {
    long long l, dl, L;
    int c, dc, C;
    __device__ FlatChannel(long long i, long long step, long long L_, int C_)
        : l(i % L_), dl(step % L_), L(L_), c((int)((i / L_) % C_)), dc((int)((step / L_) % C_)),
          C(C_) {}
    __device__ void next() {
        l += dl;
        c += dc;
        if (l >= L) { l -= L; ++c; }
        if (c >= C) c -= C;
    }
};

// 1 / n rounded to nearest: for double one reciprocal sequence inline, where a division is
// a call (whose saved registers spilled in batch_norm_partials<double>)
__device__ __forceinline__ float recip(float n) { return __frcp_rn(n); }
__device__ __forceinline__ double recip(double n) { return __drcp_rn(n); }

// Chan et al.'s merge of (count, mean, m2) b into a.
template <typename T> __device__ __forceinline__ void merge(T& na, T& ma, T& m2a, T nb, T mb, T m2b) {
    const T n = na + nb;
    if (nb == T(0)) return;
    const T d = mb - ma, f = nb * recip(n);
    ma += d * f;
    m2a += m2b + d * d * na * f;
    na = n;
}

template <typename T>
__global__ void __launch_bounds__(NORM_THREADS)
batch_norm_partials(const T* __restrict__ x, acc_t<T>* __restrict__ part, int N, int C,
                    long long L, int S) {
    using A = acc_t<T>;
    __shared__ A cnt[NORM_THREADS], mu[NORM_THREADS], m2[NORM_THREADS];
    const int c = blockIdx.x, s = blockIdx.y, t = threadIdx.x;
    const int end = split_start(N, S, s + 1);
    A n = A(0), mean = A(0), sq = A(0);
    for (ChannelRows it(split_start(N, S, s), t, L, C, c); it.n < end; it.next()) {
        const A v = to_acc(x[it.offset()]);
        n += A(1);
        const A d = v - mean;
        mean += d * recip(n);
        sq += d * (v - mean);
    }
    cnt[t] = n; mu[t] = mean; m2[t] = sq;
    __syncthreads();
    for (int half = NORM_THREADS / 2; half > 0; half /= 2) {
        if (t < half) merge(cnt[t], mu[t], m2[t], cnt[t + half], mu[t + half], m2[t + half]);
        __syncthreads();
    }
    if (t == 0) {                                   // part[c, s] = (mean, m2)
        part[((long long)c * S + s) * 2] = mu[0];
        part[((long long)c * S + s) * 2 + 1] = m2[0];
    }
}

// mean_p, invstd_p: null, or the statistics rounded to P as well (P narrower than A)
template <typename T, typename P = T>
__global__ void batch_norm_finish(const acc_t<T>* __restrict__ part, acc_t<T>* __restrict__ mean,
                                  acc_t<T>* __restrict__ invstd, P* __restrict__ running_mean,
                                  P* __restrict__ running_var, long long N, int C, long long L,
                                  int S,
                                  int training, int update_running, acc_t<T> momentum,
                                  acc_t<T> eps, acc_t<T> unbias, P* __restrict__ mean_p,
                                  P* __restrict__ invstd_p) {
    using A = acc_t<T>;
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;
    A mu, is;
    if (!training) {
        mu = A(to_acc(running_mean[c]));
        is = A(1) / sqrt(A(to_acc(running_var[c])) + eps);
    } else {
        A n = A(0), m2 = A(0);
        mu = A(0);
        for (int s = 0; s < S; ++s)
            merge(n, mu, m2, A((split_start(N, S, s + 1) - split_start(N, S, s)) * L),
                  part[((long long)c * S + s) * 2], part[((long long)c * S + s) * 2 + 1]);
        const A var = m2 / n;
        is = A(1) / sqrt(var + eps);
        if (update_running) {
            running_mean[c] = from_acc<P>((A(1) - momentum) * A(to_acc(running_mean[c])) +
                                          momentum * mu);
            running_var[c] = from_acc<P>((A(1) - momentum) * A(to_acc(running_var[c])) +
                                         momentum * var * unbias);
        }
    }
    mean[c] = mu;
    invstd[c] = is;
    if (mean_p) {
        mean_p[c] = from_acc<P>(mu);
        invstd_p[c] = from_acc<P>(is);
    }
}

// w[c] and b[c] of a parameter array of P, or 1 and 0 where it is null
template <typename A, typename P> __device__ __forceinline__ A scale_of(const P* w, int c) {
    return w ? A(to_acc(w[c])) : A(1);
}
template <typename A, typename P> __device__ __forceinline__ A shift_of(const P* b, int c) {
    return b ? A(to_acc(b[c])) : A(0);
}

template <typename T, typename P = T>
__global__ void batch_norm_apply(const T* __restrict__ x, const acc_t<T>* __restrict__ mean,
                                 const acc_t<T>* __restrict__ invstd, const P* __restrict__ w,
                                 const P* __restrict__ b, T* __restrict__ y, long long n, int C,
                                 long long L) {
    using A = acc_t<T>;
    const long long start = blockIdx.x * (long long)blockDim.x + threadIdx.x;
    const long long step = (long long)gridDim.x * blockDim.x;
    FlatChannel ch(start, step, L, C);
    for (long long i = start; i < n; i += step, ch.next()) {
        const int c = ch.c;
        y[i] = from_acc<T>((to_acc(x[i]) - mean[c]) * (invstd[c] * scale_of<A>(w, c)) +
                           shift_of<A>(b, c));
    }
}

// The plane kernels: blockIdx.y (+ gridDim.y steps) walks the N * C planes (n, c) of L
// values, blockIdx.x the plane's slices of len values (len and, with V > 1, L multiples of
// V, and the bases 16-byte aligned: the launcher checks). A block works out its channel's
// constants once; each thread then moves V values per load and store, no index arithmetic
// beyond the loop's add. The flat kernels above track the channel of every element: four
// 64-bit divisions each, which bound them by the ALU, not by memory.
template <typename T, int V, typename P = T>
__global__ void __launch_bounds__(NORM_THREADS)
batch_norm_apply_planes(const T* __restrict__ x, const acc_t<T>* __restrict__ mean,
                        const acc_t<T>* __restrict__ invstd, const P* __restrict__ w,
                        const P* __restrict__ b, T* __restrict__ y, long long planes, int C,
                        long long L, long long len) {
    using A = acc_t<T>;
    const long long lo = blockIdx.x * len, hi = min(L, lo + len);
    for (long long p = blockIdx.y; p < planes; p += gridDim.y) {
        const int c = (int)(p % C);
        const A m = mean[c], k = invstd[c] * scale_of<A>(w, c), sh = shift_of<A>(b, c);
        const T* xp = x + p * L;
        T* yp = y + p * L;
        for (long long i = lo + (long long)threadIdx.x * V; i < hi; i += NORM_THREADS * V) {
            Pack<T, V> v = load_pack<T, V>(xp + i);
#pragma unroll
            for (int j = 0; j < V; ++j) v.v[j] = from_acc<T>((to_acc(v.v[j]) - m) * k + sh);
            store_pack<T, V>(yp + i, v);
        }
    }
}

template <typename T, typename P = T>
__global__ void __launch_bounds__(NORM_THREADS)
batch_norm_bwd_partials(const T* __restrict__ gy, const T* __restrict__ x,
                        const P* __restrict__ mean, acc_t<T>* __restrict__ part, int N, int C,
                        long long L, int S) {
    using A = acc_t<T>;
    __shared__ A sg[NORM_THREADS], sgx[NORM_THREADS];
    const int c = blockIdx.x, s = blockIdx.y, t = threadIdx.x;
    const int end = split_start(N, S, s + 1);
    const A m = A(to_acc(mean[c]));
    A acc_g = A(0), acc_gx = A(0);
    for (ChannelRows it(split_start(N, S, s), t, L, C, c); it.n < end; it.next()) {
        const long long o = it.offset();
        const A g = to_acc(gy[o]);
        acc_g += g;
        acc_gx += g * (to_acc(x[o]) - m);
    }
    sg[t] = acc_g; sgx[t] = acc_gx;
    __syncthreads();
    for (int half = NORM_THREADS / 2; half > 0; half /= 2) {
        if (t < half) { sg[t] += sg[t + half]; sgx[t] += sgx[t + half]; }
        __syncthreads();
    }
    if (t == 0) {
        part[((long long)c * S + s) * 2] = sg[0];
        part[((long long)c * S + s) * 2 + 1] = sgx[0];
    }
}

// gw, gb in P (returned); gw_a, gb_a: null, or the same unrounded in A (P narrower than A)
template <typename T, typename P = T>
__global__ void batch_norm_bwd_finish(const acc_t<T>* __restrict__ part,
                                      const P* __restrict__ invstd, P* __restrict__ gw,
                                      P* __restrict__ gb, int C, int S,
                                      acc_t<T>* __restrict__ gw_a, acc_t<T>* __restrict__ gb_a) {
    using A = acc_t<T>;
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;
    A sum_g = A(0), sum_gx = A(0);
    for (int s = 0; s < S; ++s) {
        sum_g += part[((long long)c * S + s) * 2];
        sum_gx += part[((long long)c * S + s) * 2 + 1];
    }
    const A w = sum_gx * A(to_acc(invstd[c]));
    gb[c] = from_acc<P>(sum_g);
    gw[c] = from_acc<P>(w);
    if (gw_a) {
        gb_a[c] = sum_g;
        gw_a[c] = w;
    }
}

// gw, gb: the finish kernel's sums in A
template <typename T, typename P = T>
__global__ void batch_norm_bwd_apply(const T* __restrict__ gy, const T* __restrict__ x,
                                     const P* __restrict__ mean, const P* __restrict__ invstd,
                                     const P* __restrict__ w, const acc_t<T>* __restrict__ gw,
                                     const acc_t<T>* __restrict__ gb, T* __restrict__ gx,
                                     long long n, int C, long long L, long long M, int training) {
    using A = acc_t<T>;
    const long long start = blockIdx.x * (long long)blockDim.x + threadIdx.x;
    const long long step = (long long)gridDim.x * blockDim.x;
    const A inv_m = A(1) / A(M);
    FlatChannel ch(start, step, L, C);
    for (long long i = start; i < n; i += step, ch.next()) {
        const int c = ch.c;
        const A is = A(to_acc(invstd[c])), k = scale_of<A>(w, c) * is;
        if (training) {
            const A xhat = (to_acc(x[i]) - A(to_acc(mean[c]))) * is;
            gx[i] = from_acc<T>(k * (to_acc(gy[i]) - gb[c] * inv_m - xhat * gw[c] * inv_m));
        } else {
            gx[i] = from_acc<T>(k * to_acc(gy[i]));
        }
    }
}

template <typename T, int V, typename P = T>
__global__ void __launch_bounds__(NORM_THREADS)
batch_norm_bwd_apply_planes(const T* __restrict__ gy, const T* __restrict__ x,
                            const P* __restrict__ mean, const P* __restrict__ invstd,
                            const P* __restrict__ w, const acc_t<T>* __restrict__ gw,
                            const acc_t<T>* __restrict__ gb, T* __restrict__ gx, long long planes,
                            int C, long long L, long long len, long long M, int training) {
    using A = acc_t<T>;
    const long long lo = blockIdx.x * len, hi = min(L, lo + len);
    const A inv_m = A(1) / A(M);
    for (long long p = blockIdx.y; p < planes; p += gridDim.y) {
        const int c = (int)(p % C);
        const A is = A(to_acc(invstd[c])), k = scale_of<A>(w, c) * is;
        const T* gp = gy + p * L;
        T* op = gx + p * L;
        if (training) {
            const A m = A(to_acc(mean[c])), gbm = gb[c] * inv_m, gwc = gw[c];
            const T* xp = x + p * L;
            for (long long i = lo + (long long)threadIdx.x * V; i < hi; i += NORM_THREADS * V) {
                const Pack<T, V> g = load_pack<T, V>(gp + i), xv = load_pack<T, V>(xp + i);
                Pack<T, V> r;
#pragma unroll
                for (int j = 0; j < V; ++j) {
                    const A xhat = (to_acc(xv.v[j]) - m) * is;
                    r.v[j] = from_acc<T>(k * (to_acc(g.v[j]) - gbm - xhat * gwc * inv_m));
                }
                store_pack<T, V>(op + i, r);
            }
        } else {
            for (long long i = lo + (long long)threadIdx.x * V; i < hi; i += NORM_THREADS * V) {
                Pack<T, V> g = load_pack<T, V>(gp + i);
#pragma unroll
                for (int j = 0; j < V; ++j) g.v[j] = from_acc<T>(k * to_acc(g.v[j]));
                store_pack<T, V>(op + i, g);
            }
        }
    }
}
