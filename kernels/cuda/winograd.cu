// Winograd convolution F(m x m, 3 x 3) in CUDA C (Lavin & Gray, 2016), non-fused: transform
// kernels around a batched GEMM (gemm.cu), for 3x3 filters at stride 1 and dilation 1, with
// output tiles of m = 2 or 4 (the "winograd" and "winograd_4x4" algorithms). With a = m + 2,
// each m x m output tile is
//   Y = A^T [ (G g G^T) .* (B^T d B) ] A,
// d the a x a input patch at (m*th - ph, m*tw - pw), g the 3x3 filter, and the matrices of
// WinogradF<m> below (interpolation points 0, 1, -1 and infinity for m = 2; 0, +-1, +-2 and
// infinity for m = 4). The sum over input channels of the elementwise products is, for each
// of the a*a transform positions xi, a GEMM
//   M[xi] (Kg x T) = U[xi] (Kg x Cg) @ V[xi] (Cg x T),
// T the number of tiles (N * ceil(P/m) * ceil(Q/m)), batched over groups x a*a: a*a
// multiplies per tile and channel pair against the direct 9 m*m, 2.25x fewer for m = 2 and
// 4x fewer for m = 4 (whose larger transform coefficients cost accuracy: relative error
// ~5e-7 in FP32 on random data against ~1e-7, and ~3e-3 in TF32, over the TF32 bound, so
// m = 4 has no TF32 version).
//
// The weight gradient uses the same matrices. The loss's gradient with respect to the
// elementwise product of one tile is A dy A^T (dy its m x m output-gradient tile, zero
// outside P x Q), so with respect to the transformed filter it is (A dy A^T) .* (B^T d B),
// and with respect to g it is G^T [.] G; summed over the tiles:
//   gw[k, c] = G^T [ sum_t (A dy_t A^T) .* (B^T d_t B) ] G,
// a*a GEMMs Mw[xi] (Kg x Cg) = Z[xi] (Kg x T) @ V[xi]^T with the reduction over the tiles
// (split over T by the launcher, partials summed in a fixed order).
//
// Matrices are stored with rows of ld >= T elements (T rounded up to 4, so the GEMM's
// 16-byte loads apply); columns T..ld-1 are zero. With AA = a*a:
//
//   winograd_filter<T, m>       U[(g*AA + xi)*Kg + k][c] = (G w[g*Kg + k, c] G^T)[xi]   thread per (k, c)
//   winograd_input<T, m>        V[(g*AA + xi)*Cg + c][t] = (B^T d B)[xi], d the a x a patch
//                               of x[n, g*Cg + c], zero outside the input  y: channel, x: tile
//   winograd_output<T, m>       y[n, k, m*th + i, m*tw + j] = (A^T M A)[i][j] + b[k], inside
//                               P x Q                                   y: channel, x: tile
//   winograd_grad_tiles<T, m>   Z[(g*AA + xi)*Kg + k][t] = (A dy A^T)[xi], dy the m x m tile
//                               of gy[n, g*Kg + k], zero outside P x Q   y: channel, x: tile
//   winograd_grad_filter<T, m>  gw[g*Kg + k, c] = G^T Mw[g*AA + :, k, c] G  thread per (k, c);
//                               Mw stored (k, c) with strides (sk, sc): Kg x Cg, or Cg x Kg
//                               where the GEMM ran transposed (Cg <= 64 < Kg: gemm_vec's
//                               64-row tile)
//
// The transforms are small matrix products written once (left, right below) over the
// constant matrices; the loops unroll completely, so each coefficient is a constant and
// the zero terms are dropped at compile time.
//
// Tile t of a channel (below 2**31) is image n = t / (TH*TW), tile row th, column tw; the
// divisions are multiply-shifts with the host's constants (launch.py: fastdiv).
#include "common.cuh"

template <int M> struct WinogradF;
template <> struct WinogradF<2> {
    static constexpr int A = 4;
    __device__ static constexpr double BT(int i, int j) {
        constexpr double m[4][4] = {{1, 0, -1, 0}, {0, 1, 1, 0}, {0, -1, 1, 0}, {0, 1, 0, -1}};
        return m[i][j];
    }
    __device__ static constexpr double G(int i, int j) {
        constexpr double m[4][3] = {{1, 0, 0}, {.5, .5, .5}, {.5, -.5, .5}, {0, 0, 1}};
        return m[i][j];
    }
    __device__ static constexpr double AT(int i, int j) {
        constexpr double m[2][4] = {{1, 1, 1, 0}, {0, 1, -1, -1}};
        return m[i][j];
    }
};
template <> struct WinogradF<4> {
    static constexpr int A = 6;
    __device__ static constexpr double BT(int i, int j) {
        constexpr double m[6][6] = {{4, 0, -5, 0, 1, 0}, {0, -4, -4, 1, 1, 0},
                                    {0, 4, -4, -1, 1, 0}, {0, -2, -1, 2, 1, 0},
                                    {0, 2, -1, -2, 1, 0}, {0, 4, 0, -5, 0, 1}};
        return m[i][j];
    }
    __device__ static constexpr double G(int i, int j) {
        constexpr double m[6][3] = {{1. / 4, 0, 0}, {-1. / 6, -1. / 6, -1. / 6},
                                    {-1. / 6, 1. / 6, -1. / 6}, {1. / 24, 1. / 12, 1. / 6},
                                    {1. / 24, -1. / 12, 1. / 6}, {0, 0, 1}};
        return m[i][j];
    }
    __device__ static constexpr double AT(int i, int j) {
        constexpr double m[4][6] = {{1, 1, 1, 1, 1, 0}, {0, 1, -1, 2, -2, 0},
                                    {0, 1, 1, 4, 4, 0}, {0, 1, -1, 8, -8, 1}};
        return m[i][j];
    }
};

// out[r][c] = sum over j < I of w(r, c, j) * x(r, c, j), w a compile-time constant once the
// loops are unrolled: zero terms are dropped, +-1 terms need no multiply
template <int R, int C, int I, typename T, typename W, typename X>
__device__ __forceinline__ void combine(W w, X x, T (&out)[R][C]) {
#pragma unroll
    for (int r = 0; r < R; ++r)
#pragma unroll
        for (int c = 0; c < C; ++c) {
            T acc = T(0);
            bool first = true;
#pragma unroll
            for (int j = 0; j < I; ++j) {
                const double k = w(r, c, j);
                if (k == 0) continue;
                const T v = k == 1 ? x(r, c, j) : k == -1 ? -x(r, c, j) : T(k) * x(r, c, j);
                acc = first ? v : acc + v;
                first = false;
            }
            out[r][c] = acc;
        }
}
// left: out (R x C) = L (R x I) @ in (I x C); right: out (R x C) = in (R x I) @ L^T, L (C x I);
// L(i, j) a constant coefficient function
template <int R, int I, int C, typename T, typename L>
__device__ __forceinline__ void left(L coef, const T (&in)[I][C], T (&out)[R][C]) {
    combine<R, C, I>([&](int r, int, int j) { return coef(r, j); },
                     [&](int, int c, int j) { return in[j][c]; }, out);
}
template <int R, int I, int C, typename T, typename L>
__device__ __forceinline__ void right(L coef, const T (&in)[R][I], T (&out)[R][C]) {
    combine<R, C, I>([&](int, int c, int j) { return coef(c, j); },
                     [&](int r, int, int j) { return in[r][j]; }, out);
}

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
// column t of a transform row whose AA values lie `step` apart: past the T tiles (the padding
// to ld) they are written zero and false is returned (nothing more to do for t)
template <int AA, typename T>
__device__ __forceinline__ bool live_column(const Tiles& tl, int t, T* out, long long step) {
    if (t < tl.tiles) return true;
#pragma unroll
    for (int xi = 0; xi < AA; ++xi) out[xi * step] = T(0);
    return false;
}
// a channel's tiles t: blockIdx.y walks the channels, x the tiles (both loop past the grid)
#define FOR_CHANNEL_TILES(ch, channels, t)                                                 \
    for (int ch = blockIdx.y; ch < (channels); ch += gridDim.y)                            \
        for (int t = blockIdx.x * blockDim.x + threadIdx.x; t < tl.ld;                     \
             t += gridDim.x * blockDim.x)

template <typename T, int M>
__global__ void winograd_filter(const T* __restrict__ w, T* __restrict__ U, int K, int Cg,
                                int groups) {
    using F = WinogradF<M>;
    constexpr int A = F::A;
    const int Kg = K / groups;
    const long long total = (long long)K * Cg;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total;
         i += (long long)gridDim.x * blockDim.x) {
        const int k = (int)(i / Cg), c = (int)(i % Cg);
        const int g = k / Kg, kk = k % Kg;
        const T* f = w + i * 9;
        T gf[3][3], t[A][3], u[A][A];
#pragma unroll
        for (int r = 0; r < 3; ++r)
#pragma unroll
            for (int s = 0; s < 3; ++s) gf[r][s] = f[r * 3 + s];
        auto G = [](int r, int c) { return F::G(r, c); };
        left<A, 3, 3>(G, gf, t);                              // G g
        right<A, 3, A>(G, t, u);                              // (G g) G^T
#pragma unroll
        for (int xi = 0; xi < A * A; ++xi)
            U[(((long long)g * A * A + xi) * Kg + kk) * Cg + c] = u[xi / A][xi % A];
    }
}

template <typename T, int M>
__global__ void winograd_input(const T* __restrict__ x, T* __restrict__ V, int N, int C, int H,
                               int W, int ph, int pw, int groups, TILES_PARAMS) {
    using F = WinogradF<M>;
    constexpr int A = F::A;
    TILES;
    const int Cg = C / groups;
    const long long step = (long long)Cg * ld;               // next xi
    FOR_CHANNEL_TILES(c_all, C, t) {                          // consecutive threads: consecutive tiles
        const int g = c_all / Cg, c = c_all - g * Cg;
        T* out = V + ((long long)g * A * A * Cg + c) * ld + t;
        if (!live_column<A * A>(tl, t, out, step)) continue;
        int n, th, tw;
        tl.of(t, n, th, tw);
        const T* xp = x + ((long long)n * C + c_all) * H * W;
        const int h0 = M * th - ph, w0 = M * tw - pw;
        T d[A][A], b[A][A], v[A][A];
#pragma unroll
        for (int r = 0; r < A; ++r)
#pragma unroll
            for (int s = 0; s < A; ++s) {
                const int h = h0 + r, u = w0 + s;
                d[r][s] = (h >= 0 && h < H && u >= 0 && u < W) ? xp[(long long)h * W + u] : T(0);
            }
        auto BT = [](int r, int c) { return F::BT(r, c); };
        left<A, A, A>(BT, d, b);                             // B^T d
        right<A, A, A>(BT, b, v);                            // (B^T d) B
#pragma unroll
        for (int xi = 0; xi < A * A; ++xi) out[xi * step] = v[xi / A][xi % A];
    }
}

template <typename T, int M>
__global__ void winograd_output(const T* __restrict__ Mt, const T* __restrict__ bias,
                                T* __restrict__ y, int N, int K, int P, int Q, int groups,
                                TILES_PARAMS) {
    using F = WinogradF<M>;
    constexpr int A = F::A;
    TILES;
    const int Kg = K / groups;
    const long long step = (long long)Kg * ld;
    FOR_CHANNEL_TILES(k_all, K, t) {
        if (t >= tl.tiles) continue;
        int n, th, tw;
        tl.of(t, n, th, tw);
        const int g = k_all / Kg, k = k_all - g * Kg;
        const T* in = Mt + ((long long)g * A * A * Kg + k) * ld + t;
        T m[A][A], a[M][A], o[M][M];
#pragma unroll
        for (int xi = 0; xi < A * A; ++xi) m[xi / A][xi % A] = in[xi * step];
        auto AT = [](int r, int c) { return F::AT(r, c); };
        left<M, A, A>(AT, m, a);                             // A^T m
        right<M, A, M>(AT, a, o);                            // (A^T m) A
        const T b = bias ? bias[k_all] : T(0);
        T* yp = y + ((long long)n * K + k_all) * P * Q;
#pragma unroll
        for (int i = 0; i < M; ++i) {
            const int p = M * th + i;
            if (p >= P) continue;
#pragma unroll
            for (int j = 0; j < M; ++j) {
                const int q = M * tw + j;
                if (q < Q) yp[(long long)p * Q + q] = o[i][j] + b;
            }
        }
    }
}

template <typename T, int M>
__global__ void winograd_grad_tiles(const T* __restrict__ gy, T* __restrict__ Z, int N, int K,
                                    int P, int Q, int groups, TILES_PARAMS) {
    using F = WinogradF<M>;
    constexpr int A = F::A;
    TILES;
    const int Kg = K / groups;
    const long long step = (long long)Kg * ld;
    // A (a x m) = (A^T)^T
    auto Acoef = [](int i, int j) { return F::AT(j, i); };
    FOR_CHANNEL_TILES(k_all, K, t) {
        const int g = k_all / Kg, k = k_all - g * Kg;
        T* out = Z + ((long long)g * A * A * Kg + k) * ld + t;
        if (!live_column<A * A>(tl, t, out, step)) continue;
        int n, th, tw;
        tl.of(t, n, th, tw);
        const T* gp = gy + ((long long)n * K + k_all) * P * Q;
        T d[M][M], u[A][M], z[A][A];
#pragma unroll
        for (int i = 0; i < M; ++i)
#pragma unroll
            for (int j = 0; j < M; ++j) {
                const int p = M * th + i, q = M * tw + j;
                d[i][j] = p < P && q < Q ? gp[(long long)p * Q + q] : T(0);
            }
        left<A, M, M>(Acoef, d, u);                          // A dy
        right<A, M, A>(Acoef, u, z);                         // (A dy) A^T
#pragma unroll
        for (int xi = 0; xi < A * A; ++xi) out[xi * step] = z[xi / A][xi % A];
    }
}

template <typename T, int M>
__global__ void winograd_grad_filter(const T* __restrict__ Mw, T* __restrict__ gw, int K,
                                     int Cg, int groups, int sk, int sc) {
    using F = WinogradF<M>;
    constexpr int A = F::A;
    const int Kg = K / groups;
    const long long total = (long long)K * Cg;
    auto GT = [](int i, int j) { return F::G(j, i); };      // G^T (3 x a)
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total;
         i += (long long)gridDim.x * blockDim.x) {
        const int k = (int)(i / Cg), c = (int)(i % Cg);
        const int g = k / Kg, kk = k % Kg;
        const T* in = Mw + (long long)g * A * A * Kg * Cg + (long long)kk * sk + (long long)c * sc;
        const long long step = (long long)Kg * Cg;
        T m[A][A], a[3][A], o[3][3];
#pragma unroll
        for (int xi = 0; xi < A * A; ++xi) m[xi / A][xi % A] = in[xi * step];
        left<3, A, A>(GT, m, a);                             // G^T m
        right<3, A, 3>(GT, a, o);                            // (G^T m) G
        T* out = gw + i * 9;
#pragma unroll
        for (int r = 0; r < 3; ++r)
#pragma unroll
            for (int s = 0; s < 3; ++s) out[r * 3 + s] = o[r][s];
    }
}
