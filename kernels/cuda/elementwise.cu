// The small ops in CUDA C: relu and its backward, bias add, the bias gradient, global
// average pooling and its backward, softmax cross-entropy and its backward. Grid-stride
// loops over 64-bit flat indices; every reduction runs in a fixed order (deterministic).
//
//   relu_fwd<T>          y = x if x > 0 or x is NaN, else 0
//   relu_bwd<T>          gx = gy where x > 0, else 0
//   bias_add_fwd<T>      y[i] = x[i] + b[(i / inner) % C]
//   channel_sum<T>       out[k] = scale * sum over b, l of a[b, k, l]; one block per k: each
//                        thread sums a strided slice (of each row, or of the (b, l) pairs
//                        where rows are shorter than the block), then a shared-memory tree
//   plane_mean<T>        y[p] = mean of x[p, 0 .. HW); one warp per plane, lanes strided,
//                        then warp_sum
//   plane_spread<T>      gx[p, i] = gy[p] / HW
//   xent_rows<T>         loss[i] = logsumexp(z[i, :]) - z[i, label[i]]; one warp per row
//   xent_bwd<T>          g[i, j] = (softmax(z[i])[j] - (j == label[i])) / N; one warp per row
//   adam_step<T>         in place, one pass: g = grad + wd p; m = b1 m + c1 g; v = b2 v + c2 g^2;
//                        p -= lr (m / bc1) / (sqrt(v / bc2) + eps)  (c1 = 1 - b1, c2 = 1 - b2,
//                        bc1 = 1 - b1^step, bc2 = 1 - b2^step: worked out on the host)
//   sgd_step<T>          in place: g = grad + wd p; with momentum buf = mu buf + g, g = buf;
//                        p -= lr g
#include "common.cuh"

constexpr int EW_THREADS = 256;

template <typename T>
__global__ void relu_fwd(const T* __restrict__ x, T* __restrict__ y, long long n) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        const T v = x[i];
        y[i] = (v > T(0) || v != v) ? v : T(0);
    }
}

template <typename T>
__global__ void relu_bwd(const T* __restrict__ gy, const T* __restrict__ x, T* __restrict__ gx,
                         long long n) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x)
        gx[i] = x[i] > T(0) ? gy[i] : T(0);
}

template <typename T>
__global__ void bias_add_fwd(const T* __restrict__ x, const T* __restrict__ b, T* __restrict__ y,
                             long long n, int C, long long inner) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x)
        y[i] = x[i] + b[(i / inner) % C];
}

template <typename T>
__global__ void __launch_bounds__(EW_THREADS)
channel_sum(const T* __restrict__ a, T* __restrict__ out, int B, int K, long long L, T scale) {
    __shared__ T buf[EW_THREADS];
    const int k = blockIdx.x, t = threadIdx.x;
    T acc = T(0);
    if (L >= EW_THREADS) {                  // long rows (a bias gradient's P*Q): along them
        for (int b = 0; b < B; ++b) {
            const T* row = a + ((long long)b * K + k) * L;
            for (long long l = t; l < L; l += EW_THREADS) acc += row[l];
        }
    } else {                                // short rows (a linear layer's: L = 1): over (b, l)
        const long long n = (long long)B * L;
        for (long long j = t; j < n; j += EW_THREADS) {
            const long long b = j / L;
            acc += a[(b * K + k) * L + (j - b * L)];
        }
    }
    buf[t] = acc;
    __syncthreads();
    for (int step = EW_THREADS / 2; step > 0; step /= 2) {
        if (t < step) buf[t] += buf[t + step];
        __syncthreads();
    }
    if (t == 0) out[k] = buf[0] * scale;
}

template <typename T>
__global__ void plane_mean(const T* __restrict__ x, T* __restrict__ y, long long planes, int HW) {
    const int lane = threadIdx.x % 32;
    const long long warps = (long long)gridDim.x * (blockDim.x / 32);
    for (long long p = blockIdx.x * (long long)(blockDim.x / 32) + threadIdx.x / 32; p < planes;
         p += warps) {                                  // p is the same on all lanes of a warp
        const T* xp = x + p * HW;
        T acc = T(0);
        for (int i = lane; i < HW; i += 32) acc += xp[i];
        acc = warp_sum(acc);
        if (lane == 0) y[p] = acc / T(HW);
    }
}

template <typename T>
__global__ void plane_spread(const T* __restrict__ gy, T* __restrict__ gx, long long n, int HW) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x)
        gx[i] = gy[i / HW] / T(HW);
}

// max and sum of exp over one row, by the 32 lanes of a warp
template <typename T>
__device__ __forceinline__ void row_stats(const T* zr, int C, int lane, T& m, T& s) {
    m = zr[0];
    for (int j = lane; j < C; j += 32) m = max(m, zr[j]);
#pragma unroll
    for (int o = 16; o > 0; o /= 2) m = max(m, __shfl_xor_sync(0xffffffffu, m, o));
    s = T(0);
    for (int j = lane; j < C; j += 32) s += exp_t(zr[j] - m);
    s = warp_sum(s);
}

template <typename T>
__global__ void xent_rows(const T* __restrict__ z, const long long* __restrict__ labels,
                          T* __restrict__ loss, int N, int C) {
    const int lane = threadIdx.x % 32;
    const int warps = gridDim.x * (blockDim.x / 32);
    for (int i = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32; i < N; i += warps) {
        const T* zr = z + (long long)i * C;
        T m, s;
        row_stats(zr, C, lane, m, s);
        if (lane == 0) loss[i] = m + log_t(s) - zr[labels[i]];
    }
}

template <typename T>
__global__ void xent_bwd(const T* __restrict__ z, const long long* __restrict__ labels,
                         T* __restrict__ g, int N, int C) {
    const int lane = threadIdx.x % 32;
    const int warps = gridDim.x * (blockDim.x / 32);
    for (int i = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32; i < N; i += warps) {
        const T* zr = z + (long long)i * C;
        T m, s;
        row_stats(zr, C, lane, m, s);
        const long long t = labels[i];
        for (int j = lane; j < C; j += 32) {
            const T p = exp_t(zr[j] - m) / s;
            g[(long long)i * C + j] = (j == t ? p - T(1) : p) / T(N);
        }
    }
}

template <typename T>
__global__ void adam_step(T* __restrict__ p, const T* __restrict__ grad, T* __restrict__ m,
                          T* __restrict__ v, long long n, T lr, T b1, T c1, T b2, T c2, T eps,
                          T wd, T bc1, T bc2) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        const T w = p[i];
        const T g = wd != T(0) ? grad[i] + wd * w : grad[i];
        const T mi = b1 * m[i] + c1 * g;
        const T vi = b2 * v[i] + c2 * g * g;
        m[i] = mi;
        v[i] = vi;
        p[i] = w - lr * (mi / bc1) / (sqrt(vi / bc2) + eps);
    }
}

template <typename T>
__global__ void sgd_step(T* __restrict__ p, const T* __restrict__ grad, T* __restrict__ buf,
                         long long n, T lr, T mu, T wd) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        const T w = p[i];
        T g = wd != T(0) ? grad[i] + wd * w : grad[i];
        if (buf) {                                           // null without momentum
            g = mu * buf[i] + g;
            buf[i] = g;
        }
        p[i] = w - lr * g;
    }
}
