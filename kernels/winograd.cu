// Winograd convolution F(2x2, 3x3) in CUDA C (Lavin & Gray, 2016), non-fused: three
// transform kernels around a batched GEMM (gemm.cu), for 3x3 filters at stride 1 and
// dilation 1. Each 2x2 output tile is Y = A^T [ (G g G^T) .* (B^T d B) ] A, with d the 4x4
// input patch, g the 3x3 filter and
//   B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1],  G = [1 0 0; .5 .5 .5; .5 -.5 .5; 0 0 1],
//   A^T = [1 1 1 0; 0 1 -1 -1].
// The sum over input channels of the elementwise products is, for each of the 16
// transform positions xi, a GEMM: M[xi] (Kg x T) = U[xi] (Kg x Cg) @ V[xi] (Cg x T), T the
// number of tiles (N * ceil(P/2) * ceil(Q/2)), batched over groups x 16. 16 * Kg * Cg * T
// multiplies against the direct 9 * Kg * Cg * 4T: 2.25x fewer.
//
//   winograd_filter<T>  U[(g*16 + xi)*Kg + k][c] = (G w[g*Kg + k, c] G^T)[xi]     thread per (k, c)
//   winograd_input<T>   V[(g*16 + xi)*Cg + c][t] = (B^T d B)[xi], d the 4x4 patch of x[n, g*Cg + c]
//                       at (2*th - ph, 2*tw - pw), zero outside      thread per (n, c, tile)
//   winograd_output<T>  y[n, k, 2*th + i, 2*tw + j] = (A^T M A)[i][j] + b[k], inside P x Q
//                                                                    thread per (n, k, tile)
#include "common.cuh"

// i over (channels, N, TH, TW) -> the channel (returned), the tile t within the channel's
// N * TH * TW, and the tile's image and position
__device__ __forceinline__ int tile_of(long long i, long long tiles, int TH, int TW,
                                       long long& t, int& n, int& th, int& tw) {
    t = i % tiles;
    n = (int)(t / ((long long)TH * TW));
    th = (int)(t / TW % TH);
    tw = (int)(t % TW);
    return (int)(i / tiles);
}

template <typename T>
__global__ void winograd_filter(const T* __restrict__ w, T* __restrict__ U, int K, int Cg,
                                int groups) {
    const int Kg = K / groups;
    const long long total = (long long)K * Cg;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total;
         i += (long long)gridDim.x * blockDim.x) {
        const int k = (int)(i / Cg), c = (int)(i % Cg);
        const int g = k / Kg, kk = k % Kg;
        const T* f = w + i * 9;
        T t[4][3];                                          // G g
#pragma unroll
        for (int s = 0; s < 3; ++s) {
            const T a = f[s], b = f[3 + s], d = f[6 + s];
            t[0][s] = a;
            t[1][s] = T(0.5) * (a + b + d);
            t[2][s] = T(0.5) * (a - b + d);
            t[3][s] = d;
        }
#pragma unroll
        for (int r = 0; r < 4; ++r) {                       // (G g) G^T
            const T a = t[r][0], b = t[r][1], d = t[r][2];
            const T u[4] = {a, T(0.5) * (a + b + d), T(0.5) * (a - b + d), d};
#pragma unroll
            for (int s = 0; s < 4; ++s)
                U[(((long long)g * 16 + r * 4 + s) * Kg + kk) * Cg + c] = u[s];
        }
    }
}

template <typename T>
__global__ void winograd_input(const T* __restrict__ x, T* __restrict__ V, int N, int C, int H,
                               int W, int ph, int pw, int groups, int TH, int TW) {
    const int Cg = C / groups;
    const long long tiles = (long long)N * TH * TW;          // T, the GEMM's N
    const long long total = (long long)C * tiles;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total;
         i += (long long)gridDim.x * blockDim.x) {
        long long t;                                         // consecutive threads: consecutive tiles
        int n, th, tw;
        const int c_all = tile_of(i, tiles, TH, TW, t, n, th, tw);
        const int g = c_all / Cg, c = c_all % Cg;
        const T* xp = x + ((long long)n * C + c_all) * H * W;
        const int h0 = 2 * th - ph, w0 = 2 * tw - pw;
        T d[4][4];
#pragma unroll
        for (int r = 0; r < 4; ++r)
#pragma unroll
            for (int s = 0; s < 4; ++s) {
                const int h = h0 + r, v = w0 + s;
                d[r][s] = (h >= 0 && h < H && v >= 0 && v < W) ? xp[(long long)h * W + v] : T(0);
            }
        T b[4][4];                                           // B^T d
#pragma unroll
        for (int s = 0; s < 4; ++s) {
            b[0][s] = d[0][s] - d[2][s];
            b[1][s] = d[1][s] + d[2][s];
            b[2][s] = d[2][s] - d[1][s];
            b[3][s] = d[1][s] - d[3][s];
        }
        T* out = V + ((long long)g * 16 * Cg + c) * tiles + t;
        const long long step = (long long)Cg * tiles;        // next xi
#pragma unroll
        for (int r = 0; r < 4; ++r) {                        // (B^T d) B
            out[(r * 4 + 0) * step] = b[r][0] - b[r][2];
            out[(r * 4 + 1) * step] = b[r][1] + b[r][2];
            out[(r * 4 + 2) * step] = b[r][2] - b[r][1];
            out[(r * 4 + 3) * step] = b[r][1] - b[r][3];
        }
    }
}

template <typename T>
__global__ void winograd_output(const T* __restrict__ M, const T* __restrict__ bias,
                                T* __restrict__ y, int N, int K, int P, int Q, int groups,
                                int TH, int TW) {
    const int Kg = K / groups;
    const long long tiles = (long long)N * TH * TW;
    const long long total = (long long)K * tiles;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total;
         i += (long long)gridDim.x * blockDim.x) {
        long long t;
        int n, th, tw;
        const int k_all = tile_of(i, tiles, TH, TW, t, n, th, tw);
        const int g = k_all / Kg, k = k_all % Kg;
        const T* in = M + ((long long)g * 16 * Kg + k) * tiles + t;
        const long long step = (long long)Kg * tiles;
        T m[4][4];
#pragma unroll
        for (int r = 0; r < 4; ++r)
#pragma unroll
            for (int s = 0; s < 4; ++s) m[r][s] = in[(r * 4 + s) * step];
        T a[2][4];                                           // A^T m
#pragma unroll
        for (int s = 0; s < 4; ++s) {
            a[0][s] = m[0][s] + m[1][s] + m[2][s];
            a[1][s] = m[1][s] - m[2][s] - m[3][s];
        }
        const T b = bias ? bias[k_all] : T(0);
        T* yp = y + ((long long)n * K + k_all) * P * Q;
#pragma unroll
        for (int r = 0; r < 2; ++r) {                        // (A^T m) A
            const int p = 2 * th + r;
            if (p >= P) continue;
            const T o0 = a[r][0] + a[r][1] + a[r][2], o1 = a[r][1] - a[r][2] - a[r][3];
            const int q = 2 * tw;
            yp[(long long)p * Q + q] = o0 + b;
            if (q + 1 < Q) yp[(long long)p * Q + q + 1] = o1 + b;
        }
    }
}
