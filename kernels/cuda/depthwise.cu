// Depthwise convolution in CUDA C: groups = C, each input channel c convolved with its own
// m = K / C filters (output channels c*m .. c*m + m - 1), the layers of MobileNet-style
// networks. The general kernels tile over output channels of a group (conv_direct.cu: 32,
// the implicit GEMM: 128), of which a depthwise group has m (usually 1): these kernels tile
// over output pixels of one plane instead.
//
//   conv2d_depthwise<T, KS, RP>  one 256-thread block per TP * RP x TQ = 8 RP x 32 tile
//                            (blockIdx.y) of one output plane (n, k) (blockIdx.x): the
//                            input patch the tile needs and the plane's R x S filter are
//                            staged in shared memory (zeros where the window is in the
//                            padding), then each thread sums the R*S products of each of its
//                            RP outputs in a fixed order (below)
//   conv2d_depthwise_dgrad<T>  one thread per input element (n, c, h, w): the sum over the
//                            c's m filters and the (r, s) whose window holds (h, w) on the
//                            stride grid of w * gy (a gather: deterministic). With m = 1 at
//                            stride 1 the launcher runs conv2d_depthwise on the rotated
//                            filters instead
//   conv2d_depthwise_wgrad<T>  (filters other than 3 x 3) one 256-thread block per filter
//                            tap (k, r, s): the products
//                            gy[n, k, p, q] * x[n, k / m, p sh - ph + r dh, q sw - pw + s dw]
//                            over every (n, p, q), each thread a strided share, then a
//                            fixed shared-memory tree
//   conv2d_depthwise_wgrad3<T> the same for 3 x 3 filters, all nine taps of output channel k
//                            (blockIdx.x) at once over split blockIdx.y's images: gy read
//                            once, not nine times; partial sums per split, summed in order
//                            by gemm.cu's sum_splits (the half types: FP32 partials summed
//                            in order and rounded once by conv2d_depthwise_wgrad3_finish<T>)
//
// The half types (T = __half, __nv_bfloat16; half.cuh) compute in A = acc_t<T> = float: the
// forward stages its patch and filter in shared memory as float, every sum is carried in
// float and each stored value rounded once.
#include "common.cuh"
#include "half.cuh"

namespace dw {
constexpr int TP = 8, TQ = 32, THREADS = 256;
}

// conv2d_depthwise<T, KS, RP>: thread (ty, tx) = (tid / TQ, tid % TQ) computes the RP
// outputs of column q0 + tx at rows p0 + ty * RP + o, o < RP (a tile of TP * RP x TQ).
// KS = 3: the filter is 3 x 3 (MobileNet's), its taps held in registers and the loops
// unrolled; with stride and dilation 1 a thread also reads each of its RP + 2 input rows
// once for all its outputs (3 + 6 / RP shared loads per output where the general loop does
// 9, and 9 / RP filter loads instead of 9). KS = 0: any R x S, from shared memory. Every
// output sums its products in the same (r, s) order whichever path runs: bitwise equal.
template <typename T, int KS, int RP, typename A = acc_t<T>>
__global__ void __launch_bounds__(dw::THREADS)
conv2d_depthwise(const T* __restrict__ x, const T* __restrict__ w, const T* __restrict__ bias,
                 T* __restrict__ y, int C, int H, int W, int K, int R, int S, int P, int Q,
                 int sh, int sw, int ph, int pw, int dh, int dw_, int patch_h, int patch_w) {
    using namespace dw;
    static_assert(KS == 0 || KS == 3, "the unrolled path is for 3 x 3 filters");
    if constexpr (KS == 3) { R = 3; S = 3; }
    CONVGPU_DYNAMIC_SHARED(smem_raw);
    A* xs = reinterpret_cast<A*>(smem_raw);              // patch_h x patch_w
    A* fs = xs + patch_h * patch_w;                      // R x S
    const int tid = threadIdx.x, m = K / C;
    const int tiles_q = (Q + TQ - 1) / TQ;
    const int p0 = (blockIdx.y / tiles_q) * (TP * RP), q0 = (blockIdx.y % tiles_q) * TQ;
    const long long plane = blockIdx.x;                  // n * K + k
    const int k = (int)(plane % K);
    const long long n = plane / K;
    const T* xp = x + (n * C + k / m) * (long long)H * W;
    const int h0 = p0 * sh - ph, w0 = q0 * sw - pw;      // the patch's top-left input pixel
    // a warp per patch row, lanes along it: no division per element
    for (int i = tid / 32; i < patch_h; i += THREADS / 32) {
        const int h = h0 + i;
        const bool hin = h >= 0 && h < H;
        for (int c = tid % 32; c < patch_w; c += 32) {
            const int v = w0 + c;
            xs[i * patch_w + c] =
                (hin && v >= 0 && v < W) ? A(to_acc(xp[(long long)h * W + v])) : A(0);
        }
    }
    for (int i = tid; i < R * S; i += THREADS) fs[i] = A(to_acc(w[(long long)k * R * S + i]));
    __syncthreads();
    const int ty = tid / TQ, tx = tid % TQ, q = q0 + tx;
    if (q >= Q || p0 + ty * RP >= P) return;
    A acc[RP];
#pragma unroll
    for (int o = 0; o < RP; ++o) acc[o] = A(0);
    if constexpr (KS == 3) {
        A f[9];
#pragma unroll
        for (int t = 0; t < 9; ++t) f[t] = fs[t];
        if (sh == 1 && sw == 1 && dh == 1 && dw_ == 1) {
            const A* base = xs + (ty * RP) * patch_w + tx;
#pragma unroll
            for (int ir = 0; ir < RP + 2; ++ir) {        // input row ir feeds outputs ir - r
                const A v0 = base[ir * patch_w], v1 = base[ir * patch_w + 1],
                        v2 = base[ir * patch_w + 2];
#pragma unroll
                for (int o = 0; o < RP; ++o) {
                    const int r = ir - o;
                    if (r >= 0 && r < 3) {
                        acc[o] += f[r * 3] * v0;
                        acc[o] += f[r * 3 + 1] * v1;
                        acc[o] += f[r * 3 + 2] * v2;
                    }
                }
            }
        } else {
#pragma unroll
            for (int o = 0; o < RP; ++o) {
                const A* row = xs + ((ty * RP + o) * sh) * patch_w + tx * sw;
#pragma unroll
                for (int r = 0; r < 3; ++r)
#pragma unroll
                    for (int s2 = 0; s2 < 3; ++s2)
                        acc[o] += f[r * 3 + s2] * row[r * dh * patch_w + s2 * dw_];
            }
        }
    } else {
#pragma unroll
        for (int o = 0; o < RP; ++o) {
            const A* row = xs + ((ty * RP + o) * sh) * patch_w + tx * sw;
            for (int r = 0; r < R; ++r)
                for (int s2 = 0; s2 < S; ++s2)
                    acc[o] += fs[r * S + s2] * row[r * dh * patch_w + s2 * dw_];
        }
    }
    const A b = bias ? A(to_acc(bias[k])) : A(0);
    T* yp = y + plane * P * Q + q;
#pragma unroll
    for (int o = 0; o < RP; ++o) {
        const int p = p0 + ty * RP + o;
        if (p < P) yp[(long long)p * Q] = from_acc<T>(acc[o] + b);
    }
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
        acc_t<T> acc = acc_t<T>(0);
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
                    if (q < Q) acc += to_acc(f[r * S + s]) * to_acc(g[(long long)p * Q + q]);
                }
            }
        }
        gx[t] = from_acc<T>(acc);
    }
}

template <typename T>
__global__ void __launch_bounds__(dw::THREADS)
conv2d_depthwise_wgrad(const T* __restrict__ x, const T* __restrict__ gy, T* __restrict__ gw,
                       int N, int C, int H, int W, int K, int R, int S, int P, int Q, int sh,
                       int sw, int ph, int pw, int dh, int dw_) {
    using namespace dw;
    using A = acc_t<T>;
    __shared__ A buf[THREADS];
    const int tap = blockIdx.x;                          // (k * R + r) * S + s
    const int s = tap % S, r = (tap / S) % R, k = tap / (R * S);
    const int c = k / (K / C), tid = threadIdx.x;
    const int PQ = P * Q;
    A acc = A(0);
    for (int n = 0; n < N; ++n) {
        const T* g = gy + ((long long)n * K + k) * PQ;
        const T* xp = x + ((long long)n * C + c) * H * W;
        for (int j = tid; j < PQ; j += THREADS) {
            const int p = j / Q, q = j - p * Q;
            const int h = p * sh - ph + r * dh, v = q * sw - pw + s * dw_;
            if (h >= 0 && h < H && v >= 0 && v < W)
                acc += to_acc(g[j]) * to_acc(xp[(long long)h * W + v]);
        }
    }
    buf[tid] = acc;
    __syncthreads();
    for (int half = THREADS / 2; half > 0; half /= 2) {
        if (tid < half) buf[tid] += buf[tid + half];
        __syncthreads();
    }
    if (tid == 0) gw[tap] = from_acc<T>(buf[0]);
}

// conv2d_depthwise_wgrad3<T>: thread t takes positions j = t, t + THREADS, ... of each plane of
// its split's images, (p, q) advanced by adds and one compare (no division per position), and
// adds gy[j] times the nine input values under the 3 x 3 window at (p, q) to its nine sums;
// the block then sums each tap over its threads in one fixed tree (nine at a time), and
// thread tap writes part[(split * K + k) * 9 + tap]: gy is read once, not once per tap, and
// no position costs a division.
template <typename T>
__global__ void __launch_bounds__(dw::THREADS)
conv2d_depthwise_wgrad3(const T* __restrict__ x, const T* __restrict__ gy,
                        acc_t<T>* __restrict__ part, int N, int C, int H, int W, int K, int P,
                        int Q, int sh, int sw, int ph, int pw, int dh, int dw_, int splits) {
    using namespace dw;
    using A = acc_t<T>;
    __shared__ A buf[9][THREADS];
    const int k = blockIdx.x, split = blockIdx.y, tid = threadIdx.x;
    const int c = k / (K / C);
    const int n0 = split_start(N, splits, split), n1 = split_start(N, splits, split + 1);
    const int PQ = P * Q;
    // the position step THREADS as rows and columns
    const int dp = Q >= THREADS ? 0 : THREADS / Q, dq = Q >= THREADS ? THREADS : THREADS % Q;
    A acc[9];
#pragma unroll
    for (int t = 0; t < 9; ++t) acc[t] = A(0);
    for (int n = n0; n < n1; ++n) {
        const T* g = gy + ((long long)n * K + k) * PQ;
        const T* xp = x + ((long long)n * C + c) * H * W;
        int p = tid / Q, q = tid - (tid / Q) * Q;
        for (int j = tid; j < PQ; j += THREADS) {
            const A gv = to_acc(g[j]);
            const int h0 = p * sh - ph, w0 = q * sw - pw;
#pragma unroll
            for (int r = 0; r < 3; ++r) {
                const int h = h0 + r * dh;
                const bool hin = h >= 0 && h < H;
#pragma unroll
                for (int s2 = 0; s2 < 3; ++s2) {
                    const int v = w0 + s2 * dw_;
                    if (hin && v >= 0 && v < W)
                        acc[r * 3 + s2] += gv * to_acc(xp[(long long)h * W + v]);
                }
            }
            q += dq;
            p += dp;
            if (q >= Q) { q -= Q; ++p; }
        }
    }
#pragma unroll
    for (int t = 0; t < 9; ++t) buf[t][tid] = acc[t];
    __syncthreads();
    for (int half = THREADS / 2; half > 0; half /= 2) {
        if (tid < half) {
#pragma unroll
            for (int t = 0; t < 9; ++t) buf[t][tid] += buf[t][tid + half];
        }
        __syncthreads();
    }
    if (tid < 9) part[((long long)split * K + k) * 9 + tid] = buf[tid][0];
}

// the half types' weight gradient: out[i] = the FP32 sum over s of part[s * n + i], in order
// s = 0, 1, ... (as gemm.cu's sum_splits), rounded once
template <typename T>
__global__ void conv2d_depthwise_wgrad3_finish(const float* __restrict__ part, T* __restrict__ out,
                                               long long n, int splits) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        float acc = part[i];
        for (int s = 1; s < splits; ++s) acc += part[s * n + i];
        out[i] = from_acc<T>(acc);
    }
}
