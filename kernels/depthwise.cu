// Depthwise convolution in CUDA C: groups = C, each input channel c convolved with its own
// m = K / C filters (output channels c*m .. c*m + m - 1), the layers of MobileNet-style
// networks. The general kernels tile over output channels of a group (conv_direct.cu: 32,
// the implicit GEMM: 128), of which a depthwise group has m (usually 1): these kernels tile
// over output pixels of one plane instead.
//
//   conv2d_depthwise<T>      one 256-thread block per TP x TQ = 8 x 32 tile (blockIdx.y) of
//                            one output plane (n, k) (blockIdx.x): the input patch the tile needs and the plane's
//                            R x S filter are staged in shared memory (zeros where the
//                            window is in the padding), then each thread sums the R*S
//                            products of its output in a fixed order
//   conv2d_depthwise_dgrad<T>  one thread per input element (n, c, h, w): the sum over the
//                            c's m filters and the (r, s) whose window holds (h, w) on the
//                            stride grid of w * gy (a gather: deterministic)
//   conv2d_depthwise_wgrad<T>  one 256-thread block per filter tap (k, r, s): the products
//                            gy[n, k, p, q] * x[n, k / m, p sh - ph + r dh, q sw - pw + s dw]
//                            over every (n, p, q), each thread a strided share, then a
//                            fixed shared-memory tree
#include "common.cuh"

namespace dw {
constexpr int TP = 8, TQ = 32, THREADS = 256;
}

template <typename T>
__global__ void __launch_bounds__(dw::THREADS)
conv2d_depthwise(const T* __restrict__ x, const T* __restrict__ w, const T* __restrict__ bias,
                 T* __restrict__ y, int C, int H, int W, int K, int R, int S, int P, int Q,
                 int sh, int sw, int ph, int pw, int dh, int dw_, int patch_h, int patch_w) {
    using namespace dw;
    CONVGPU_DYNAMIC_SHARED(smem_raw);
    T* xs = reinterpret_cast<T*>(smem_raw);              // patch_h x patch_w
    T* fs = xs + patch_h * patch_w;                      // R x S
    const int tid = threadIdx.x, m = K / C;
    const int tiles_q = (Q + TQ - 1) / TQ;
    const int p0 = (blockIdx.y / tiles_q) * TP, q0 = (blockIdx.y % tiles_q) * TQ;
    const long long plane = blockIdx.x;                  // n * K + k
    const int k = (int)(plane % K);
    const long long n = plane / K;
    const T* xp = x + (n * C + k / m) * (long long)H * W;
    const int h0 = p0 * sh - ph, w0 = q0 * sw - pw;      // the patch's top-left input pixel
    for (int i = tid; i < patch_h * patch_w; i += THREADS) {
        const int h = h0 + i / patch_w, v = w0 + i % patch_w;
        xs[i] = (h >= 0 && h < H && v >= 0 && v < W) ? xp[(long long)h * W + v] : T(0);
    }
    for (int i = tid; i < R * S; i += THREADS) fs[i] = w[(long long)k * R * S + i];
    __syncthreads();
    const int p = p0 + tid / TQ, q = q0 + tid % TQ;
    if (p >= P || q >= Q) return;
    const T* row = xs + ((tid / TQ) * sh) * patch_w + (tid % TQ) * sw;
    T acc = T(0);
    for (int r = 0; r < R; ++r)
        for (int s = 0; s < S; ++s) acc += fs[r * S + s] * row[r * dh * patch_w + s * dw_];
    y[plane * P * Q + (long long)p * Q + q] = acc + (bias ? bias[k] : T(0));
}

template <typename T>
__global__ void conv2d_depthwise_dgrad(const T* __restrict__ gy, const T* __restrict__ w,
                                       T* __restrict__ gx, long long total, int C, int H, int W,
                                       int K, int R, int S, int P, int Q, int sh, int sw, int ph,
                                       int pw, int dh, int dw_) {
    const int m = K / C;
    for (long long t = blockIdx.x * (long long)blockDim.x + threadIdx.x; t < total;
         t += (long long)gridDim.x * blockDim.x) {
        const int v = (int)(t % W), h = (int)((t / W) % H);
        const long long nc = t / ((long long)H * W);
        const int c = (int)(nc % C);
        const long long n = nc / C;
        T acc = T(0);
        for (int j = 0; j < m; ++j) {
            const int k = c * m + j;
            const T* g = gy + (n * K + k) * (long long)P * Q;
            const T* f = w + (long long)k * R * S;
            for (int r = 0; r < R; ++r) {
                const int hp = h + ph - r * dh;               // = p * sh for the output p
                if (hp < 0 || hp % sh) continue;
                const int p = hp / sh;
                if (p >= P) continue;
                for (int s = 0; s < S; ++s) {
                    const int wq = v + pw - s * dw_;
                    if (wq < 0 || wq % sw) continue;
                    const int q = wq / sw;
                    if (q < Q) acc += f[r * S + s] * g[(long long)p * Q + q];
                }
            }
        }
        gx[t] = acc;
    }
}

template <typename T>
__global__ void __launch_bounds__(dw::THREADS)
conv2d_depthwise_wgrad(const T* __restrict__ x, const T* __restrict__ gy, T* __restrict__ gw,
                       int N, int C, int H, int W, int K, int R, int S, int P, int Q, int sh,
                       int sw, int ph, int pw, int dh, int dw_) {
    using namespace dw;
    __shared__ T buf[THREADS];
    const int tap = blockIdx.x;                          // (k * R + r) * S + s
    const int s = tap % S, r = (tap / S) % R, k = tap / (R * S);
    const int c = k / (K / C), tid = threadIdx.x;
    const int PQ = P * Q;
    T acc = T(0);
    for (int n = 0; n < N; ++n) {
        const T* g = gy + ((long long)n * K + k) * PQ;
        const T* xp = x + ((long long)n * C + c) * H * W;
        for (int j = tid; j < PQ; j += THREADS) {
            const int p = j / Q, q = j - p * Q;
            const int h = p * sh - ph + r * dh, v = q * sw - pw + s * dw_;
            if (h >= 0 && h < H && v >= 0 && v < W) acc += g[j] * xp[(long long)h * W + v];
        }
    }
    buf[tid] = acc;
    __syncthreads();
    for (int half = THREADS / 2; half > 0; half /= 2) {
        if (tid < half) buf[tid] += buf[tid + half];
        __syncthreads();
    }
    if (tid == 0) gw[tap] = buf[0];
}
