// The small ops in CUDA C: relu and its backward, bias add, the bias gradient, global
// average pooling and its backward, softmax cross-entropy and its backward. Grid-stride
// loops over 64-bit flat indices; every reduction runs in a fixed order (deterministic).
// T is the data type: float, double, or a half type (__half, __nv_bfloat16), whose
// instantiations load and store T and compute in acc_t<T> = float, rounding once per store
// (half.cuh); scalars arrive in acc_t<T>.
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
//   xent_bwd<T>          g[i, j] = (softmax(z[i])[j] - (j == label[i])) / N (times *scale, the
//                        loss's gradient, where scale is not null); one warp per row
//   adam_step<T>         in place, one pass: g = grad + wd p; m = b1 m + c1 g; v = b2 v + c2 g^2;
//                        p -= lr (m / bc1) / (sqrt(v / bc2) + eps)  (c1 = 1 - b1, c2 = 1 - b2,
//                        bc1 = 1 - b1^step, bc2 = 1 - b2^step: worked out on the host)
//   sgd_step<T>          in place: g = grad + wd p; with momentum buf = mu buf + g, g = buf;
//                        p -= lr g
//   relu_fwd_vec8<T>, relu_bwd_vec8<T>, bias_add_vec8<T>   the half types' relu, its backward
//                        and bias add by 16-byte vectors of 8 (every pointer 16-byte aligned:
//                        the launcher checks), the n % 8 tail element by element
#include "common.cuh"
#include "half.cuh"

constexpr int EW_THREADS = 256;

template <typename T> __device__ __forceinline__ T relu_of(T xi) {
    const acc_t<T> v = to_acc(xi);
    return (v > acc_t<T>(0) || v != v) ? xi : from_acc<T>(acc_t<T>(0));
}
template <typename T> __device__ __forceinline__ T relu_grad_of(T gyi, T xi) {
    return to_acc(xi) > acc_t<T>(0) ? gyi : from_acc<T>(acc_t<T>(0));
}
template <typename T>
__device__ __forceinline__ T bias_added(T xi, const T* b, long long i, int C, long long inner) {
    return from_acc<T>(to_acc(xi) + to_acc(b[(i / inner) % C]));
}

template <typename T>
__global__ void relu_fwd(const T* __restrict__ x, T* __restrict__ y, long long n) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x)
        y[i] = relu_of(x[i]);
}

template <typename T>
__global__ void relu_bwd(const T* __restrict__ gy, const T* __restrict__ x, T* __restrict__ gx,
                         long long n) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x)
        gx[i] = relu_grad_of(gy[i], x[i]);
}

template <typename T>
__global__ void bias_add_fwd(const T* __restrict__ x, const T* __restrict__ b, T* __restrict__ y,
                             long long n, int C, long long inner) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x)
        y[i] = bias_added(x[i], b, i, C, inner);
}

// the vectorised forms: thread t takes vectors t, t + stride, ... of the n / 8 whole ones,
// then element 8 (n / 8) + t of the tail, if any
#define VEC8_LOOP(i)                                                                          \
    const long long tid_ = blockIdx.x * (long long)blockDim.x + threadIdx.x,                  \
                    stride_ = (long long)gridDim.x * blockDim.x, nv_ = n / 8;                 \
    for (long long i = tid_; i < nv_; i += stride_)
#define VEC8_TAIL(i) for (long long i = nv_ * 8 + tid_; i < n; i += stride_)

template <typename T>
__global__ void relu_fwd_vec8(const T* __restrict__ x, T* __restrict__ y, long long n) {
    VEC8_LOOP(i) {
        Pack<T, 8> v = load_pack<T, 8>(x + i * 8);
#pragma unroll
        for (int j = 0; j < 8; ++j) v.v[j] = relu_of(v.v[j]);
        store_pack<T, 8>(y + i * 8, v);
    }
    VEC8_TAIL(i) y[i] = relu_of(x[i]);
}

template <typename T>
__global__ void relu_bwd_vec8(const T* __restrict__ gy, const T* __restrict__ x,
                              T* __restrict__ gx, long long n) {
    VEC8_LOOP(i) {
        Pack<T, 8> g = load_pack<T, 8>(gy + i * 8);
        const Pack<T, 8> v = load_pack<T, 8>(x + i * 8);
#pragma unroll
        for (int j = 0; j < 8; ++j) g.v[j] = relu_grad_of(g.v[j], v.v[j]);
        store_pack<T, 8>(gx + i * 8, g);
    }
    VEC8_TAIL(i) gx[i] = relu_grad_of(gy[i], x[i]);
}

template <typename T>
__global__ void bias_add_vec8(const T* __restrict__ x, const T* __restrict__ b,
                              T* __restrict__ y, long long n, int C, long long inner) {
    VEC8_LOOP(i) {
        Pack<T, 8> v = load_pack<T, 8>(x + i * 8);
#pragma unroll
        for (int j = 0; j < 8; ++j) v.v[j] = bias_added(v.v[j], b, i * 8 + j, C, inner);
        store_pack<T, 8>(y + i * 8, v);
    }
    VEC8_TAIL(i) y[i] = bias_added(x[i], b, i, C, inner);
}

// TO: the output's type (xent's FP32 row losses are summed into a half loss by
// channel_sum<float, half type>: one rounding)
template <typename T, typename TO = T>
__global__ void __launch_bounds__(EW_THREADS)
channel_sum(const T* __restrict__ a, TO* __restrict__ out, int B, int K, long long L,
            acc_t<TO> scale) {
    using A = acc_t<TO>;
    __shared__ A buf[EW_THREADS];
    const int k = blockIdx.x, t = threadIdx.x;
    A acc = A(0);
    if (L >= EW_THREADS) {                  // long rows (a bias gradient's P*Q): along them
        for (int b = 0; b < B; ++b) {
            const T* row = a + ((long long)b * K + k) * L;
            for (long long l = t; l < L; l += EW_THREADS) acc += to_acc(row[l]);
        }
    } else {                                // short rows (a linear layer's: L = 1): over (b, l)
        const long long n = (long long)B * L;
        for (long long j = t; j < n; j += EW_THREADS) {
            const long long b = j / L;
            acc += to_acc(a[(b * K + k) * L + (j - b * L)]);
        }
    }
    buf[t] = acc;
    __syncthreads();
    for (int step = EW_THREADS / 2; step > 0; step /= 2) {
        if (t < step) buf[t] += buf[t + step];
        __syncthreads();
    }
    if (t == 0) out[k] = from_acc<TO>(buf[0] * scale);
}

template <typename T>
__global__ void plane_mean(const T* __restrict__ x, T* __restrict__ y, long long planes, int HW) {
    using A = acc_t<T>;
    const int lane = threadIdx.x % 32;
    const long long warps = (long long)gridDim.x * (blockDim.x / 32);
    for (long long p = blockIdx.x * (long long)(blockDim.x / 32) + threadIdx.x / 32; p < planes;
         p += warps) {                                  // p is the same on all lanes of a warp
        const T* xp = x + p * HW;
        A acc = A(0);
        for (int i = lane; i < HW; i += 32) acc += to_acc(xp[i]);
        acc = warp_sum(acc);
        if (lane == 0) y[p] = from_acc<T>(acc / A(HW));
    }
}

template <typename T>
__global__ void plane_spread(const T* __restrict__ gy, T* __restrict__ gx, long long n, int HW) {
    using A = acc_t<T>;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x)
        gx[i] = from_acc<T>(to_acc(gy[i / HW]) / A(HW));
}

// max and sum of exp over one row, by the 32 lanes of a warp
template <typename T>
__device__ __forceinline__ void row_stats(const T* zr, int C, int lane, acc_t<T>& m,
                                          acc_t<T>& s) {
    using A = acc_t<T>;
    m = to_acc(zr[0]);
    for (int j = lane; j < C; j += 32) m = max(m, to_acc(zr[j]));
#pragma unroll
    for (int o = 16; o > 0; o /= 2) m = max(m, __shfl_xor_sync(0xffffffffu, m, o));
    s = A(0);
    for (int j = lane; j < C; j += 32) s += exp_t(to_acc(zr[j]) - m);
    s = warp_sum(s);
}

// each row's loss in acc_t<T> (FP32 for the half types: the mean rounds once)
template <typename T>
__global__ void xent_rows(const T* __restrict__ z, const long long* __restrict__ labels,
                          acc_t<T>* __restrict__ loss, int N, int C) {
    const int lane = threadIdx.x % 32;
    const int warps = gridDim.x * (blockDim.x / 32);
    for (int i = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32; i < N; i += warps) {
        const T* zr = z + (long long)i * C;
        acc_t<T> m, s;
        row_stats(zr, C, lane, m, s);
        if (lane == 0) loss[i] = m + log_t(s) - to_acc(zr[labels[i]]);
    }
}

template <typename T>
__global__ void xent_bwd(const T* __restrict__ z, const long long* __restrict__ labels,
                         const T* __restrict__ scale, T* __restrict__ g, int N, int C) {
    using A = acc_t<T>;
    const A sc = scale ? to_acc(*scale) : A(1);              // x * 1 is exact
    const int lane = threadIdx.x % 32;
    const int warps = gridDim.x * (blockDim.x / 32);
    for (int i = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32; i < N; i += warps) {
        const T* zr = z + (long long)i * C;
        A m, s;
        row_stats(zr, C, lane, m, s);
        const long long t = labels[i];
        for (int j = lane; j < C; j += 32) {
            const A p = exp_t(to_acc(zr[j]) - m) / s;
            g[(long long)i * C + j] = from_acc<T>((j == t ? p - A(1) : p) / A(N) * sc);
        }
    }
}

// the state (m, v, buf) in the parameter's dtype, as torch.optim keeps it; each new value
// rounded once, the parameter's update from the unrounded moments
template <typename T>
__global__ void adam_step(T* __restrict__ p, const T* __restrict__ grad, T* __restrict__ m,
                          T* __restrict__ v, long long n, acc_t<T> lr, acc_t<T> b1, acc_t<T> c1,
                          acc_t<T> b2, acc_t<T> c2, acc_t<T> eps, acc_t<T> wd, acc_t<T> bc1,
                          acc_t<T> bc2) {
    using A = acc_t<T>;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        const A w = to_acc(p[i]);
        const A g = wd != A(0) ? to_acc(grad[i]) + wd * w : to_acc(grad[i]);
        const A mi = b1 * to_acc(m[i]) + c1 * g;
        const A vi = b2 * to_acc(v[i]) + c2 * g * g;
        m[i] = from_acc<T>(mi);
        v[i] = from_acc<T>(vi);
        p[i] = from_acc<T>(w - lr * (mi / bc1) / (sqrt(vi / bc2) + eps));
    }
}

template <typename T>
__global__ void sgd_step(T* __restrict__ p, const T* __restrict__ grad, T* __restrict__ buf,
                         long long n, acc_t<T> lr, acc_t<T> mu, acc_t<T> wd) {
    using A = acc_t<T>;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        const A w = to_acc(p[i]);
        A g = wd != A(0) ? to_acc(grad[i]) + wd * w : to_acc(grad[i]);
        if (buf) {                                           // null without momentum
            g = mu * to_acc(buf[i]) + g;
            buf[i] = from_acc<T>(g);
        }
        p[i] = from_acc<T>(w - lr * g);
    }
}
