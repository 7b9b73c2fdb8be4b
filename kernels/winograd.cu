// Winograd convolution F(2x2, 3x3) in CUDA C (Lavin & Gray, 2016), non-fused: transform
// kernels around a batched GEMM (gemm.cu), for 3x3 filters at stride 1 and dilation 1.
// Each 2x2 output tile is Y = A^T [ (G g G^T) .* (B^T d B) ] A, with d the 4x4 input patch
// at (2*th - ph, 2*tw - pw), g the 3x3 filter and
//   B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1],  G = [1 0 0; .5 .5 .5; .5 -.5 .5; 0 0 1],
//   A^T = [1 1 1 0; 0 1 -1 -1].
// The sum over input channels of the elementwise products is, for each of the 16
// transform positions xi, a GEMM: M[xi] (Kg x T) = U[xi] (Kg x Cg) @ V[xi] (Cg x T), T the
// number of tiles (N * ceil(P/2) * ceil(Q/2)), batched over groups x 16. 16 * Kg * Cg * T
// multiplies against the direct 9 * Kg * Cg * 4T: 2.25x fewer.
//
// The weight gradient uses the same matrices. The loss's gradient with respect to the
// elementwise product of one tile is A dy A^T (dy its 2x2 output-gradient tile, zero
// outside P x Q), so with respect to the transformed filter it is (A dy A^T) .* (B^T d B),
// and with respect to g it is G^T [.] G; summed over the tiles:
//   gw[k, c] = G^T [ sum_t (A dy_t A^T) .* (B^T d_t B) ] G,
// 16 GEMMs Mw[xi] (Kg x Cg) = Z[xi] (Kg x T) @ V[xi]^T with the reduction over the tiles
// (split over T by the launcher, partials summed in a fixed order).
//
// Matrices are stored with rows of ld >= T elements (T rounded up to 4, so the GEMM's
// 16-byte loads apply); columns T..ld-1 are zero.
//
//   winograd_filter<T>       U[(g*16 + xi)*Kg + k][c] = (G w[g*Kg + k, c] G^T)[xi]     thread per (k, c)
//   winograd_input<T>        V[(g*16 + xi)*Cg + c][t] = (B^T d B)[xi], d the 4x4 patch of
//                            x[n, g*Cg + c], zero outside the input    y: channel, x: tile
//   winograd_output<T>       y[n, k, 2*th + i, 2*tw + j] = (A^T M A)[i][j] + b[k], inside P x Q
//                                                                      y: channel, x: tile
//   winograd_grad_tiles<T>   Z[(g*16 + xi)*Kg + k][t] = (A dy A^T)[xi], dy the 2x2 tile of
//                            gy[n, g*Kg + k], zero outside P x Q       y: channel, x: tile
//   winograd_grad_filter<T>  gw[g*Kg + k, c] = G^T Mw[g*16 + :, k, c] G   thread per (k, c);
//                            Mw stored (k, c) with strides (sk, sc): Kg x Cg, or Cg x Kg
//                            where the GEMM ran transposed (Cg <= 64 < Kg: gemm_vec's
//                            64-row tile)
//
// Tile t of a channel (below 2**31) is image n = t / (TH*TW), tile row th, column tw; the
// divisions are multiply-shifts with the host's constants (kernels/cuda_ops.py: fastdiv).
#include "common.cuh"

// the tiles of one channel: t -> (n, th, tw) by two multiply-shift divisions
struct Tiles {
    int tiles, ld, TH, TW;
    Divider<int> per_image, per_row;                    // by TH * TW, by TW
    __device__ __forceinline__ void of(int t, int& n, int& th, int& tw) const {
        n = per_image.div(t);
        const int r = t - n * TH * TW;
        th = per_row.div(r);
        tw = r - th * TW;
    }
};
#define TILES_PARAMS int tiles, int ld, int TH, int TW, unsigned long long div_img, \
                     unsigned long long div_tw
#define TILES const Tiles tl{tiles, ld, TH, TW, \
    divider<int>(TH * TW, (unsigned)div_img, (unsigned)(div_img >> 32)), \
    divider<int>(TW, (unsigned)div_tw, (unsigned)(div_tw >> 32))}
// a channel's tiles t: blockIdx.y walks the channels, x the tiles (both loop past the grid)
#define FOR_CHANNEL_TILES(ch, channels, t)                                                 \
    for (int ch = blockIdx.y; ch < (channels); ch += gridDim.y)                            \
        for (int t = blockIdx.x * blockDim.x + threadIdx.x; t < tl.ld;                     \
             t += gridDim.x * blockDim.x)

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
                               int W, int ph, int pw, int groups, TILES_PARAMS) {
    TILES;
    const int Cg = C / groups;
    const long long step = (long long)Cg * ld;               // next xi
    FOR_CHANNEL_TILES(c_all, C, t) {                          // consecutive threads: consecutive tiles
        const int g = c_all / Cg, c = c_all - g * Cg;
        T* out = V + ((long long)g * 16 * Cg + c) * ld + t;
        if (t >= tl.tiles) {                                  // the zero columns past T
#pragma unroll
            for (int xi = 0; xi < 16; ++xi) out[xi * step] = T(0);
            continue;
        }
        int n, th, tw;
        tl.of(t, n, th, tw);
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
                                TILES_PARAMS) {
    TILES;
    const int Kg = K / groups;
    const long long step = (long long)Kg * ld;
    FOR_CHANNEL_TILES(k_all, K, t) {
        if (t >= tl.tiles) continue;
        int n, th, tw;
        tl.of(t, n, th, tw);
        const int g = k_all / Kg, k = k_all - g * Kg;
        const T* in = M + ((long long)g * 16 * Kg + k) * ld + t;
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

// A = (A^T)^T = [1 0; 1 1; 1 -1; 0 -1]: A (a, b) = (a, a + b, a - b, -b)
template <typename T>
__global__ void winograd_grad_tiles(const T* __restrict__ gy, T* __restrict__ Z, int N, int K,
                                    int P, int Q, int groups, TILES_PARAMS) {
    TILES;
    const int Kg = K / groups;
    const long long step = (long long)Kg * ld;
    FOR_CHANNEL_TILES(k_all, K, t) {
        const int g = k_all / Kg, k = k_all - g * Kg;
        T* out = Z + ((long long)g * 16 * Kg + k) * ld + t;
        if (t >= tl.tiles) {
#pragma unroll
            for (int xi = 0; xi < 16; ++xi) out[xi * step] = T(0);
            continue;
        }
        int n, th, tw;
        tl.of(t, n, th, tw);
        const T* gp = gy + ((long long)n * K + k_all) * P * Q;
        const int p = 2 * th, q = 2 * tw;
        const bool p1 = p + 1 < P, q1 = q + 1 < Q;           // the tile's second row, column
        const T* g0 = gp + (long long)p * Q + q;
        const T d00 = g0[0];
        const T d01 = q1 ? g0[1] : T(0);
        const T d10 = p1 ? g0[Q] : T(0);
        const T d11 = p1 && q1 ? g0[Q + 1] : T(0);
        const T u[4][2] = {{d00, d01}, {d00 + d10, d01 + d11}, {d00 - d10, d01 - d11},
                           {-d10, -d11}};                      // A dy
#pragma unroll
        for (int r = 0; r < 4; ++r) {                          // (A dy) A^T
            out[(r * 4 + 0) * step] = u[r][0];
            out[(r * 4 + 1) * step] = u[r][0] + u[r][1];
            out[(r * 4 + 2) * step] = u[r][0] - u[r][1];
            out[(r * 4 + 3) * step] = -u[r][1];
        }
    }
}

// G^T = [1 .5 .5 0; 0 .5 -.5 0; 0 .5 .5 1]: G^T (a, b, c, d) = (a + (b + c)/2, (b - c)/2, (b + c)/2 + d)
template <typename T>
__global__ void winograd_grad_filter(const T* __restrict__ Mw, T* __restrict__ gw, int K,
                                     int Cg, int groups, int sk, int sc) {
    const int Kg = K / groups;
    const long long total = (long long)K * Cg;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total;
         i += (long long)gridDim.x * blockDim.x) {
        const int k = (int)(i / Cg), c = (int)(i % Cg);
        const int g = k / Kg, kk = k % Kg;
        const T* in = Mw + (long long)g * 16 * Kg * Cg + (long long)kk * sk + (long long)c * sc;
        const long long step = (long long)Kg * Cg;
        T m[4][4];
#pragma unroll
        for (int r = 0; r < 4; ++r)
#pragma unroll
            for (int s = 0; s < 4; ++s) m[r][s] = in[(r * 4 + s) * step];
        T a[3][4];                                            // G^T m
#pragma unroll
        for (int s = 0; s < 4; ++s) {
            const T h = T(0.5) * (m[1][s] + m[2][s]);
            a[0][s] = m[0][s] + h;
            a[1][s] = T(0.5) * (m[1][s] - m[2][s]);
            a[2][s] = h + m[3][s];
        }
        T* out = gw + i * 9;
#pragma unroll
        for (int r = 0; r < 3; ++r) {                         // (G^T m) G
            const T h = T(0.5) * (a[r][1] + a[r][2]);
            out[r * 3 + 0] = a[r][0] + h;
            out[r * 3 + 1] = T(0.5) * (a[r][1] - a[r][2]);
            out[r * 3 + 2] = h + a[r][3];
        }
    }
}
