// Pooling in CUDA C, templated on the element type T and the index type I: the launcher
// picks I = int while every flat index fits in 31 bits and I = long long past that. With
// I = int every division by a shape constant (flat index -> (n*c, p, q) or (n*c, h, w),
// window ranges by the stride) is a multiply-high and shift (common.cuh: Divider), which
// matters because these kernels issue more integer instructions than memory requests.
// Indices written for max pooling are always int64, flat over the unpadded input plane
// (h*W + w). kernels/dev/pool_*.cu include this file for their candidate kernels.
//
//   max_pool2d_fwd<T, I, K>     one thread per output; -inf start, strict '>' so the first
//                               maximum wins; the first NaN is taken and kept; windows up to
//                               3x3 unrolled with every load issued before the comparisons,
//                               exactly K x K for K = 2, 3 (square windows), no branches
//   max_pool2d_bwd_gather<T, I> one thread per input element: sums gy over the windows that
//                               can cover it and whose index points at it (deterministic); up
//                               to 2x2 candidate windows unrolled, loads first
//   max_pool2d_bwd_cells<T, I>  the same sums, one thread per stride-sized cell of inputs
//                               sharing one load of its 2x2 candidate windows (strides <= 2)
//   avg_pool2d_fwd<T, I>, avg_pool2d_bwd_gather<T, I>   torch's divisor rule
//   adaptive_avg_pool2d_fwd<T, I>   one thread per output: the mean of its window, output p
//                               of P over [floor(p H / P), ceil((p + 1) H / P)) (same along W)
//   adaptive_avg_pool2d_bwd<T, I>   one thread per input element: the sum of gy / area over
//                               the outputs whose windows hold it, p in [floor(h P / H),
//                               ceil((h + 1) P / H)) (neighbouring windows overlap where P
//                               does not divide H). Not tuned: plain divisions per element
//
// T is float, double, or a half type (__half, __nv_bfloat16: half.cuh). Every sum is carried
// in acc_t<T> (float for the half types, T itself otherwise) and rounded once on the store,
// so the float and double instantiations are the plain kernels and the half ones add in
// FP32 in the same order. Max pooling on a half type compares the values converted to float
// (exact) and stores the chosen element itself; it takes the general kernel (K = 0) and
// its loop, the launcher picks no other.
#include "common.cuh"
#include "half.cuh"

// unrolled paths: max-pool windows up to KFAST x KFAST, backward candidates up to CFAST x CFAST
constexpr int KFAST = 3, CFAST = 2;

struct PoolShape {
    int H, W, P, Q, kh, kw, sh, sw, ph, pw, dh, dw, include_pad, divisor_override;
};
// Kernels take the shape as plain ints (portable kernel arguments) and pack it here, with
// the multiply-shift constants of the divisors Q, P, W, H, sh, sw (mul | shr << 32 each;
// used by Divider<int>, ignored by Divider<long long>).
#define POOL_SHAPE_PARAMS int H, int W, int P, int Q, int kh, int kw, int sh, int sw, int ph, \
    int pw, int dh, int dw, int include_pad, int divisor_override, unsigned long long mQ, \
    unsigned long long mP, unsigned long long mW, unsigned long long mH, unsigned long long mSH, \
    unsigned long long mSW
#define POOL_SHAPE PoolShape s{H, W, P, Q, kh, kw, sh, sw, ph, pw, dh, dw, include_pad, divisor_override}
#define POOL_DIV(I, name, d, m) const Divider<I> name = divider<I>(d, (unsigned)(m), (unsigned)((m) >> 32))

// flat index t over (planes, rows, cols) -> plane (returned), row, col
template <typename I>
__device__ __forceinline__ I unravel3(I t, const Divider<I>& rows, const Divider<I>& cols, int& r,
                                      int& c) {
    const I tr = cols.div(t), plane = rows.div(tr);
    c = (int)(t - tr * cols.d);
    r = (int)(tr - plane * rows.d);
    return plane;
}

// the first window (along one axis) whose span reaches input position i
template <typename I>
__device__ __forceinline__ int first_cover(int i, int pad, int k, const Divider<I>& s, int d) {
    const int num = i + pad - (k - 1) * d;
    return num <= 0 ? 0 : (int)s.div(num + (int)s.d - 1);
}

// NaN-propagating maximum (either operand NaN -> NaN): max.NaN.f32 on the device (sm_80+,
// one instruction); the comparison form elsewhere
template <typename T> __device__ __forceinline__ T max_nan(T a, T b) {
    return (a > b || a != a) ? a : b;
}
#ifndef CONVGPU_HOST
template <> __device__ __forceinline__ float max_nan<float>(float a, float b) {
    float r;
    asm("max.NaN.f32 %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b));
    return r;
}
#endif

// a == b and a > b without flushing subnormals: CuPy compiles with -ftz=true, under which
// two different subnormals compare equal (and fmaxf returns 0 for them), so the first of
// them would be taken for the maximum. PTX setp without .ftz keeps them; the GPU test of
// max pooling on a plane of subnormals checks it.
template <typename T> __device__ __forceinline__ bool same_value(T a, T b) { return a == b; }
template <typename T> __device__ __forceinline__ bool greater(T a, T b) { return a > b; }
#ifndef CONVGPU_HOST
template <> __device__ __forceinline__ bool same_value<float>(float a, float b) {
    unsigned r;
    asm("{\n .reg .pred p;\n setp.eq.f32 p, %1, %2;\n selp.u32 %0, 1, 0, p;\n}"
        : "=r"(r) : "f"(a), "f"(b));
    return r != 0;
}
template <> __device__ __forceinline__ bool greater<float>(float a, float b) {
    unsigned r;
    asm("{\n .reg .pred p;\n setp.gt.f32 p, %1, %2;\n selp.u32 %0, 1, 0, p;\n}"
        : "=r"(r) : "f"(a), "f"(b));
    return r != 0;
}
#endif

// The maximum of a K x K window's in-bounds values (element (r, c) is in bounds where rin[r]
// and cin[c]; NaN if one is NaN, by a NaN-propagating tree) and the flat index rpos[r] +
// cpos[c] of its first position in window order (assignments in reverse order): the first
// maximum, the first NaN (and that NaN itself), the first in-bounds element when all are
// -inf. Callers without masks pass all-true ones, which the compiler folds away.
template <int K, typename T>
__device__ __forceinline__ void first_max(const T (&val)[K][K], const bool (&rin)[K],
                                          const bool (&cin)[K], const int (&rpos)[K],
                                          const int (&cpos)[K], T& best, int& bi) {
    T m = rin[0] && cin[0] ? val[0][0] : neg_inf<T>();
#pragma unroll
    for (int r = 0; r < K; ++r)
#pragma unroll
        for (int c = 0; c < K; ++c)
            if (r + c > 0) m = max_nan(m, rin[r] && cin[c] ? val[r][c] : neg_inf<T>());
    best = m;
    bi = -1;
    if (m == m) {                                            // selects, no branches
#pragma unroll
        for (int r = K - 1; r >= 0; --r)
#pragma unroll
            for (int c = K - 1; c >= 0; --c)
                bi = rin[r] && cin[c] && same_value(val[r][c], m) ? rpos[r] + cpos[c] : bi;
    } else {                                                 // the first NaN, itself
#pragma unroll
        for (int r = K - 1; r >= 0; --r)
#pragma unroll
            for (int c = K - 1; c >= 0; --c) {
                const T v = val[r][c];
                const bool hit = rin[r] && cin[c] && v != v;
                bi = hit ? rpos[r] + cpos[c] : bi;
                best = hit ? v : best;
            }
    }
}

template <int K> struct AllTrue {
    bool v[K];
    __device__ __forceinline__ AllTrue() {
#pragma unroll
        for (int i = 0; i < K; ++i) v[i] = true;
    }
};

// One window of at most KR x KR (kh, kw <= KR at run time; EXACT: kh == kw == KR), any part
// of it possibly outside the input. Rows and columns are clamped and tested once each (a
// window element is in bounds iff its row and its column are), and every load is issued
// from the clamped, always valid, position before the first comparison needs its value (a
// loop with run-time bounds waits for each load in turn; a predicated load is sunk by the
// compiler next to its comparison). Then the answer of the sequential rule (strict '>',
// first maximum; the first NaN taken and kept; the first in-bounds element when all are
// -inf), by first_max with the row and column masks. No branch on the window's position, so a
// warp with border windows (a padded pool: more than half of a 56-wide plane's warps) runs
// one path, not two.
template <int KR, bool EXACT, typename T>
__device__ __forceinline__ void max_window(const T* xp, int h0, int w0, const PoolShape& s,
                                           T& best, int& bi) {
    bool rin[KR], cin[KR];
    int rpos[KR], cpos[KR];                                  // flat index: rpos[r] + cpos[c]
    const T* rowp[KR];
#pragma unroll
    for (int r = 0; r < KR; ++r) {
        const int h = h0 + r * s.dh;
        rin[r] = (EXACT || r < s.kh) && h >= 0 && h < s.H;
        rpos[r] = h * s.W;
        rowp[r] = xp + (unsigned)(min(max(h, 0), s.H - 1) * s.W);
    }
#pragma unroll
    for (int c = 0; c < KR; ++c) {
        cpos[c] = w0 + c * s.dw;
        cin[c] = (EXACT || c < s.kw) && cpos[c] >= 0 && cpos[c] < s.W;
    }
    T val[KR][KR];
#pragma unroll
    for (int r = 0; r < KR; ++r)
#pragma unroll
        for (int c = 0; c < KR; ++c)   // unsigned offsets: one IMAD.WIDE.U32 per address
            val[r][c] = rowp[r][(unsigned)min(max(cpos[c], 0), s.W - 1)];
    first_max<KR>(val, rin, cin, rpos, cpos, best, bi);
}

// p, opaque to the optimiser: the plane pointer stays a pointer, so an element's address is
// one IMAD.WIDE.U32 from a 32-bit offset, instead of the compiler folding the plane offset
// into a 64-bit index per element (IADD3, IMAD.X, LEA, LEA.HI.X each)
template <typename T> __device__ __forceinline__ const T* opaque(const T* p) {
#ifndef CONVGPU_HOST
    asm("mov.b64 %0, %0;" : "+l"(p));
#endif
    return p;
}

// The window's columns w0 + c clamped into [0, W) (cpos), and its values base[roff[r] +
// cpos[c]]: base and roff address the clamped rows, in global memory or in a shared copy
template <int K, typename T>
__device__ __forceinline__ void clamped_window(const T* base, const int (&roff)[K], int w0, int W,
                                               int (&cpos)[K], T (&val)[K][K]) {
#pragma unroll
    for (int c = 0; c < K; ++c) cpos[c] = min(max(w0 + c, 0), W - 1);
#pragma unroll
    for (int r = 0; r < K; ++r)
#pragma unroll
        for (int c = 0; c < K; ++c) val[r][c] = base[(unsigned)(roff[r] + cpos[c])];
}

// A K x K window at dilation 1 with no masks at all: rows and columns are clamped into the
// input, and a clamped position holds the border element that the window also holds at the
// adjacent position (a window always reaches into the input: padding <= K/2, and a
// ceil_mode window starts inside it). The duplicates sit before (top/left) or after
// (bottom/right) that element in window order, in the same order within a row, so the
// first maximum (or NaN) found among them is the same element, and its index comes from
// the clamped coordinates. Costs K + K clamps over the unpadded window.
template <int K, typename T>
__device__ __forceinline__ void max_window_clamped(const T* xp, int h0, int w0, const PoolShape& s,
                                                   T& best, int& bi) {
    int rpos[K], cpos[K];                                    // flat index: rpos[r] + cpos[c]
#pragma unroll
    for (int r = 0; r < K; ++r) rpos[r] = min(max(h0 + r, 0), s.H - 1) * s.W;
    T val[K][K];
    clamped_window<K>(xp, rpos, w0, s.W, cpos, val);
    const AllTrue<K> all;
    first_max<K>(val, all.v, all.v, rpos, cpos, best, bi);
}

// The sequential rule by a loop over the window, any size: strict '>' so the first maximum
// wins, the first NaN is taken and kept, the first in-bounds element stands while all are
// -inf. Values are compared in acc_t<T> (exact) and the element itself is kept, so a half
// type's NaN or signed zero comes back with its own bits. Position i = h * W + v of the plane
// is element at(i) from xp (i itself in NCHW; pool_nhwc.cu passes i * C).
struct PlaneOffset {
    __device__ __forceinline__ int operator()(int i) const { return i; }
};
// max_window_lanes: the same for V consecutive channels at once (pool_nhwc.cu's vector
// kernels: one 16-byte load of 8 halves a tap), the rule lane by lane.
template <int V, typename T, typename At>
__device__ __forceinline__ void max_window_lanes(const T* xp, int h0, int w0, const PoolShape& s,
                                                 Pack<T, V>& best, int (&bi)[V], At at) {
    acc_t<T> bf[V];                                          // best, as compared
#pragma unroll
    for (int j = 0; j < V; ++j) {
        bf[j] = neg_inf<acc_t<T>>();
        best.v[j] = from_acc<T>(bf[j]);
        bi[j] = -1;
    }
    for (int r = 0; r < s.kh; ++r) {
        const int h = h0 + r * s.dh;
        if (h < 0 || h >= s.H) continue;
        for (int c = 0; c < s.kw; ++c) {
            const int v = w0 + c * s.dw;
            if (v < 0 || v >= s.W) continue;
            const Pack<T, V> val = load_pack<T, V>(xp + at(h * s.W + v));
#pragma unroll
            for (int j = 0; j < V; ++j) {
                const acc_t<T> f = to_acc(val.v[j]);
                if (bf[j] != bf[j]) continue;                // a NaN was taken: keep it
                if (greater(f, bf[j]) || f != f || bi[j] < 0) {
                    bf[j] = f; best.v[j] = val.v[j]; bi[j] = h * s.W + v;
                }
            }
        }
    }
}
template <typename T, typename At = PlaneOffset>
__device__ __forceinline__ void max_window_loop(const T* xp, int h0, int w0, const PoolShape& s,
                                                T& best, int& bi, At at = At{}) {
    Pack<T, 1> b;
    int i[1];
    max_window_lanes<1>(xp, h0, w0, s, b, i, at);
    best = b.v[0];
    bi = i[0];
}

// max_pool2d_fwd<T, I, K>: K = 2 or 3 serves kh == kw == K (any stride, padding and
// dilation): the clamped window at dilation 1, else the masked one, unrolled for exactly K.
// K = 0 serves every window (up to KFAST x KFAST unrolled and masked, larger ones by a
// loop). Per-element bounds and branches made this kernel ALU-bound, not memory-bound: hence
// none here, and a max tree. The half types take the loop (K = 0 only): the max tree would
// give the tree's value, not the first maximum's own bits.
template <typename T, typename I, int K>
__global__ void max_pool2d_fwd(const T* __restrict__ x, T* __restrict__ y,
                               long long* __restrict__ idx, I NC, POOL_SHAPE_PARAMS) {
    static_assert(K == 0 || !is_half<T>, "the half types take the general kernel (K = 0)");
    const POOL_SHAPE;
    POOL_DIV(I, divQ, Q, mQ);
    POOL_DIV(I, divP, P, mP);
    const I total = NC * s.P * s.Q;
    for (I t = blockIdx.x * (I)blockDim.x + threadIdx.x; t < total; t += (I)gridDim.x * blockDim.x) {
        int p, q;
        const I nc = unravel3(t, divP, divQ, p, q);
        const T* xp = x + (long long)nc * s.H * s.W;
        const int h0 = p * s.sh - s.ph, w0 = q * s.sw - s.pw;
        T best;
        int bi;
        if constexpr (is_half<T>) {
            max_window_loop(xp, h0, w0, s, best, bi);
        } else if constexpr (K > 0) {
            if (s.dh == 1 && s.dw == 1) max_window_clamped<K>(opaque(xp), h0, w0, s, best, bi);
            else max_window<K, true>(xp, h0, w0, s, best, bi);
        } else if (s.kh <= KFAST && s.kw <= KFAST) {
            max_window<KFAST, false>(xp, h0, w0, s, best, bi);
        } else {
            max_window_loop(xp, h0, w0, s, best, bi);
        }
        y[t] = best;
        idx[t] = bi;
    }
}

// Index validation for the backward gathers, which only compare indices (so a bad one
// cannot fault, but would be silently dropped): the index of window (p, q) must lie in the
// plane (bit 1 of the flag) and inside that window, on its dilation grid (bit 2). The
// launcher reads the flag after the launch and raises ValueError.
constexpr int BAD_RANGE = 1, BAD_WINDOW = 2;
template <typename I>
__device__ __forceinline__ int index_violation(long long id, int p, int q, const PoolShape& s,
                                               const Divider<I>& divW) {
    if (id < 0 || id >= (long long)s.H * s.W) return BAD_RANGE;
    const int hh = (int)divW.div((I)id), vv = (int)id - hh * s.W;
    const int dr = hh - (p * s.sh - s.ph), dc = vv - (q * s.sw - s.pw);
    const bool ok = dr >= 0 && dr <= (s.kh - 1) * s.dh && (s.dh == 1 || dr % s.dh == 0) &&
                    dc >= 0 && dc <= (s.kw - 1) * s.dw && (s.dw == 1 || dc % s.dw == 0);
    return ok ? 0 : BAD_WINDOW;
}

// max_pool2d_check_indices<I>: one thread per output, the validation above (for the gather
// by element, which has no single owner per window; the gather by cells validates inline)
template <typename I>
__global__ void max_pool2d_check_indices(const long long* __restrict__ idx, int* __restrict__ bad,
                                         I NC, POOL_SHAPE_PARAMS) {
    const POOL_SHAPE;
    POOL_DIV(I, divQ, Q, mQ);
    POOL_DIV(I, divP, P, mP);
    POOL_DIV(I, divW, W, mW);
    const I total = NC * s.P * s.Q;
    int flags = 0;
    for (I t = blockIdx.x * (I)blockDim.x + threadIdx.x; t < total; t += (I)gridDim.x * blockDim.x) {
        int p, q;
        unravel3(t, divP, divQ, p, q);
        flags |= index_violation(idx[t], p, q, s, divW);
    }
    if (flags) atomicOr(bad, flags);
}

template <typename T, typename I>
__global__ void max_pool2d_bwd_gather(const T* __restrict__ gy, const long long* __restrict__ idx,
                                      T* __restrict__ gx, I NC, POOL_SHAPE_PARAMS) {
    const POOL_SHAPE;
    POOL_DIV(I, divW, W, mW);
    POOL_DIV(I, divH, H, mH);
    POOL_DIV(I, divSH, sh, mSH);
    POOL_DIV(I, divSW, sw, mSW);
    const I total = NC * s.H * s.W;
    for (I t = blockIdx.x * (I)blockDim.x + threadIdx.x; t < total; t += (I)gridDim.x * blockDim.x) {
        int h, v;
        const I nc = unravel3(t, divH, divW, h, v);
        const long long base = (long long)nc * s.P * s.Q;
        const int me = h * s.W + v;
        const int p_hi = min((int)divSH.div(h + s.ph), s.P - 1);
        const int q_hi = min((int)divSW.div(v + s.pw), s.Q - 1);
        acc_t<T> acc = 0;
        // candidate windows: every output whose (dilated) span covers (h, v); comparing the
        // stored index decides, so no divisibility test is needed for dilation
        const int p_lo = first_cover(h, s.ph, s.kh, divSH, s.dh);
        const int q_lo = first_cover(v, s.pw, s.kw, divSW, s.dw);
        if (p_hi - p_lo < CFAST && q_hi - q_lo < CFAST) {
            // up to CFAST x CFAST candidates (2 x 2 covers kernel <= 2 * stride, e.g. 3x3/2):
            // all index and gradient loads issued first, then the same sum in the same order
            long long id[CFAST][CFAST];
            T g[CFAST][CFAST];
#pragma unroll
            for (int a = 0; a < CFAST; ++a)
#pragma unroll
                for (int b = 0; b < CFAST; ++b) {
                    const bool in = p_lo + a <= p_hi && q_lo + b <= q_hi;
                    // unconditional loads from clamped (valid) positions, masked after
                    const long long at =
                        base + (long long)min(p_lo + a, p_hi) * s.Q + min(q_lo + b, q_hi);
                    id[a][b] = in ? idx[at] : -1;
                    g[a][b] = gy[at];
                }
#pragma unroll
            for (int a = 0; a < CFAST; ++a)
#pragma unroll
                for (int b = 0; b < CFAST; ++b)
                    if (id[a][b] == me) acc += to_acc(g[a][b]);
        } else {
            for (int p = p_lo; p <= p_hi; ++p) {
                const long long row = base + (long long)p * s.Q;
                for (int q = q_lo; q <= q_hi; ++q) {
                    if (idx[row + q] == me) acc += to_acc(gy[row + q]);
                }
            }
        }
        gx[t] = from_acc<T>(acc);
    }
}

// max_pool2d_bwd_cells<T, I>: the gather by cells, for strides up to 2 whose windows reach at
// most one stride back ((k - 1) * d < 2 * s on each axis: 3x3/2 and 2x2/2, padded or not,
// ceil_mode or not). One thread per cell of sh x sw input elements, cells aligned to the
// window grid: cell (i, j) holds rows i*sh - ph + [0, sh) and columns j*sw - pw + [0, sw).
// A window p covering row h has p*sh - ph <= h <= p*sh - ph + (kh-1)*dh, so for a row of
// cell i, p <= i and p >= i - (kh-1)*dh/sh >= i - 1: the 2 x 2 windows (i-1..i) x (j-1..j)
// hold every candidate of every element of the cell. Their indices and gradients are loaded
// once per cell (the element-per-thread gather loads up to 4 of each per element, and
// divides 6 times per element: issue-bound), then each element sums, in the same (p, q)
// order as the gather, the candidates
// whose index points at it; an element no window picked gets 0. Deterministic.
template <typename T, typename I>
__global__ void max_pool2d_bwd_cells(const T* __restrict__ gy, const long long* __restrict__ idx,
                                     T* __restrict__ gx, int* __restrict__ bad, I NC, int CH,
                                     int CW, unsigned long long mCH, unsigned long long mCW,
                                     POOL_SHAPE_PARAMS) {
    const POOL_SHAPE;
    POOL_DIV(I, divCW, CW, mCW);
    POOL_DIV(I, divCH, CH, mCH);
    POOL_DIV(I, divW, W, mW);
    const I total = NC * CH * CW;
    int flags = 0;
    for (I t = blockIdx.x * (I)blockDim.x + threadIdx.x; t < total; t += (I)gridDim.x * blockDim.x) {
        int i, j;
        const I nc = unravel3(t, divCH, divCW, i, j);
        const long long base = (long long)nc * s.P * s.Q;
        long long id[2][2];
        T g[2][2];
#pragma unroll
        for (int a = 0; a < 2; ++a)
#pragma unroll
            for (int b = 0; b < 2; ++b) {
                const int p = i - 1 + a, q = j - 1 + b;
                const bool in = p >= 0 && p < s.P && q >= 0 && q < s.Q;
                // unconditional loads from clamped (valid) positions, masked after
                const long long at = base + (long long)min(max(p, 0), s.P - 1) * s.Q +
                                     min(max(q, 0), s.Q - 1);
                id[a][b] = in ? idx[at] : -1;
                g[a][b] = gy[at];
            }
        // cell (i, j) owns window (i, j) (every window has its cell: a window starts inside
        // the input or its leading padding) and validates its index (bad == nullptr: no check)
        if (bad && i < s.P && j < s.Q) flags |= index_violation(id[1][1], i, j, s, divW);
        const int hb = i * s.sh - s.ph, wb = j * s.sw - s.pw;
        T* gp = gx + (long long)nc * s.H * s.W;
#pragma unroll
        for (int u = 0; u < 2; ++u)
#pragma unroll
            for (int z = 0; z < 2; ++z) {
                const int h = hb + u, v = wb + z;
                if (u < s.sh && z < s.sw && h >= 0 && h < s.H && v >= 0 && v < s.W) {
                    const int me = h * s.W + v;
                    acc_t<T> acc = 0;
#pragma unroll
                    for (int a = 0; a < 2; ++a)
#pragma unroll
                        for (int b = 0; b < 2; ++b)
                            if (id[a][b] == me) acc += to_acc(g[a][b]);
                    gp[me] = from_acc<T>(acc);
                }
            }
    }
    if (flags) atomicOr(bad, flags);
}

template <typename T>
__device__ __forceinline__ T avg_divisor(int p, int q, const PoolShape& s) {
    if (s.divisor_override) return T(s.divisor_override);
    const int h0 = p * s.sh - s.ph, w0 = q * s.sw - s.pw;
    const int h1 = min(h0 + s.kh, s.H + s.ph), w1 = min(w0 + s.kw, s.W + s.pw);
    if (s.include_pad) return T((h1 - h0) * (w1 - w0));
    return T((min(h1, s.H) - max(h0, 0)) * (min(w1, s.W) - max(w0, 0)));
}

template <typename T, typename I>
__global__ void avg_pool2d_fwd(const T* __restrict__ x, T* __restrict__ y, I NC, POOL_SHAPE_PARAMS) {
    const POOL_SHAPE;
    POOL_DIV(I, divQ, Q, mQ);
    POOL_DIV(I, divP, P, mP);
    const I total = NC * s.P * s.Q;
    for (I t = blockIdx.x * (I)blockDim.x + threadIdx.x; t < total; t += (I)gridDim.x * blockDim.x) {
        int p, q;
        const I nc = unravel3(t, divP, divQ, p, q);
        const T* xp = x + (long long)nc * s.H * s.W;
        const int h0 = p * s.sh - s.ph, w0 = q * s.sw - s.pw;
        acc_t<T> acc = 0;
        for (int h = max(h0, 0); h < min(h0 + s.kh, s.H); ++h)
            for (int v = max(w0, 0); v < min(w0 + s.kw, s.W); ++v) acc += to_acc(xp[h * s.W + v]);
        y[t] = from_acc<T>(acc / avg_divisor<acc_t<T>>(p, q, s));
    }
}

template <typename T, typename I>
__global__ void avg_pool2d_bwd_gather(const T* __restrict__ gy, T* __restrict__ gx, I NC,
                                      POOL_SHAPE_PARAMS) {
    const POOL_SHAPE;
    POOL_DIV(I, divW, W, mW);
    POOL_DIV(I, divH, H, mH);
    POOL_DIV(I, divSH, sh, mSH);
    POOL_DIV(I, divSW, sw, mSW);
    const I total = NC * s.H * s.W;
    for (I t = blockIdx.x * (I)blockDim.x + threadIdx.x; t < total; t += (I)gridDim.x * blockDim.x) {
        int h, v;
        const I nc = unravel3(t, divH, divW, h, v);
        const T* g = gy + (long long)nc * s.P * s.Q;
        acc_t<T> acc = 0;
        const int p_hi = min((int)divSH.div(h + s.ph), s.P - 1);
        const int q_hi = min((int)divSW.div(v + s.pw), s.Q - 1);
        const int q_lo = first_cover(v, s.pw, s.kw, divSW, 1);
        for (int p = first_cover(h, s.ph, s.kh, divSH, 1); p <= p_hi; ++p)
            for (int q = q_lo; q <= q_hi; ++q)
                acc += to_acc(g[p * s.Q + q]) / avg_divisor<acc_t<T>>(p, q, s);
        gx[t] = from_acc<T>(acc);
    }
}

// Adaptive average pooling: the window bounds along one axis of `size` inputs pooled to
// `out` outputs, and the outputs whose windows hold input i (64-bit products: out * size
// may pass 2**31 where neither does).
__device__ __forceinline__ int adaptive_start(int o, int size, int out) {
    return (int)((long long)o * size / out);
}
__device__ __forceinline__ int adaptive_end(int o, int size, int out) {
    return (int)(((long long)(o + 1) * size + out - 1) / out);
}

template <typename T, typename I>
__global__ void adaptive_avg_pool2d_fwd(const T* __restrict__ x, T* __restrict__ y, I NC, int H,
                                        int W, int P, int Q) {
    const I total = NC * P * Q;
    for (I t = blockIdx.x * (I)blockDim.x + threadIdx.x; t < total; t += (I)gridDim.x * blockDim.x) {
        const int q = (int)(t % Q), p = (int)((t / Q) % P);
        const T* xp = x + (long long)(t / ((I)P * Q)) * H * W;
        const int h0 = adaptive_start(p, H, P), h1 = adaptive_end(p, H, P);
        const int w0 = adaptive_start(q, W, Q), w1 = adaptive_end(q, W, Q);
        acc_t<T> acc = 0;
        for (int h = h0; h < h1; ++h)
            for (int v = w0; v < w1; ++v) acc += to_acc(xp[(long long)h * W + v]);
        y[t] = from_acc<T>(acc / acc_t<T>((h1 - h0) * (w1 - w0)));
    }
}

template <typename T, typename I>
__global__ void adaptive_avg_pool2d_bwd(const T* __restrict__ gy, T* __restrict__ gx, I NC, int H,
                                        int W, int P, int Q) {
    const I total = NC * H * W;
    for (I t = blockIdx.x * (I)blockDim.x + threadIdx.x; t < total; t += (I)gridDim.x * blockDim.x) {
        const int v = (int)(t % W), h = (int)((t / W) % H);
        const T* g = gy + (long long)(t / ((I)H * W)) * P * Q;
        // the outputs covering h: the windows of adaptive_start / adaptive_end, solved for p
        const int p0 = adaptive_start(h, P, H), p1 = adaptive_end(h, P, H);
        const int q0 = adaptive_start(v, Q, W), q1 = adaptive_end(v, Q, W);
        acc_t<T> acc = 0;
        for (int p = p0; p < p1; ++p) {
            const int rows = adaptive_end(p, H, P) - adaptive_start(p, H, P);
            for (int q = q0; q < q1; ++q)
                acc += to_acc(g[p * Q + q]) /
                       acc_t<T>(rows * (adaptive_end(q, W, Q) - adaptive_start(q, W, Q)));
        }
        gx[t] = from_acc<T>(acc);
    }
}
