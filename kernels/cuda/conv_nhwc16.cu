// Channels-last (NHWC) convolutions in float16 / bfloat16 on the tensor cores (mma.sync
// m16n8k16, FP32 accumulation, ldmatrix fragments, cp.async 3-stage pipeline: pipeline16.cuh
// tc16): x (N, H, W, C), w (K, R, S, C/groups), y (N, P, Q, K). Launched by conv_nhwc16.py.
// The GEMM views are those of conv_nhwc.cu (its header comment), with depth d = (r, s, c),
// c fastest, contiguous in x and in w:
//
//   conv2d_nhwc_implicit_gemm_mma16<T, VEC>  y = X_rows[g] (N*P*Q x R*S*Cg) @ W[g]^T, both
//       operands K-major in shared memory (mainloop<true, true>): A rows are output positions
//       (blockIdx.x), B rows the group's output channels (blockIdx.y); y, row-major
//       N*P*Q x K, is the GEMM's output as it stands. Each block decomposes its 128 rows
//       (n, p, q) once into a row table in shared memory. VEC (Cg % 8 == 0, x and w 16-byte
//       aligned: the launcher checks): 8 channels of one tap (r, s) are one 16-byte cp.async
//       of x, zero-filled for padding, edges and past the depth; w's rows (R*S*Cg, then a
//       multiple of 8) move as 16-byte copies too. Else element by element (any shape:
//       Cg = 3, groups): lane l copies depth k0 + l of rows warp + 4 i.
//   conv2d_nhwc_wgrad_implicit_gemm_mma16<T, VA, VB>  gw[g] (Kg x R*S*Cg) = gy[g]^T @ X_rows[g]
//       over the N*P*Q output positions, both operands MN-major (mainloop<false, false>,
//       ldmatrix .trans): A = gy (channels contiguous), B = X_rows (taps (r, s, c), c
//       contiguous); the row-major Kg x R*S*Cg result is the NHWC weight as it stands. The
//       slice's 32 positions are decomposed once per slice into the depth table (prepare).
//       VA: Kg % 8 == 0 and gy 16-byte aligned, 8 channels per 16-byte copy; VB: Cg % 8 == 0
//       and x aligned, 8 taps (one (r, s), 8 consecutive c) per copy; else element-wise.
//       blockIdx.z = group * splits + split: split s sums positions [s*kchunk, (s+1)*kchunk).
//   conv2d_nhwc_dgrad_implicit_gemm_mma16<T, VA, VB>  the input gradient at strides > 1 (or
//       padding past the dilated filter's reach), one GEMM per stride phase (described above
//       it); at stride 1 the launcher runs the forward on the rotated filters instead.
//
// Every output is one thread's FP32 sum in depth order, rounded once to T (the bias added in
// FP32 first); with splits > 1 the FP32 partials go to partial + s * split_stride (split 0
// with the bias) and gemm.cu's sum_splits_half adds them in order: deterministic. Launch
// with tc16::THREADS threads and tc16::shared_bytes<KA, KB>() + the tables' bytes
// (ROW_TABLE_BYTES forward, tc::TABLE_BYTES weight gradient, both for the input gradient) of
// dynamic shared memory.
#include "common.cuh"
#include "conv_shape.cuh"
#include "pipeline16.cuh"

// the row table of the forward and the input gradient: one int4 per block row (the forward's
// {n*H*W, p*sh - ph, q*sw - pw, 0}), written by one thread each
constexpr int ROW_TABLE_BYTES = 128 * 16;
static_assert(ROW_TABLE_BYTES == tc16::BM * 16 && tc16::THREADS == tc16::BM, "a row a thread");
// a row or position past the end: an origin that fails every bounds test
constexpr int NOWHERE = -(1 << 29);

// One slice of a K-major A tile gathered from a channels-last tensor src (images of Hin x Win
// pixels, Cin channels each): row `row` has table entry rows[row] = {its image's first pixel,
// y0, x0, _}; the thread's depth (kk = (tid % 4) * 8 for VEC, else its lane) is the tap
// offset (dy, dx) and channel c (dy = NOWHERE past the depth's end). Element (row, kk) =
// src[(first + (y0 + dy) * Win + x0 + dx) * Cin + c] inside the image, else zero. VEC: 8
// channels as one 16-byte cp.async (zero-filled outside) for rows tid / 4 + 32 i; else
// element by element for rows warp + 4 i, a warp reading 32 consecutive depths.
template <bool VEC>
__device__ __forceinline__ void gather_rows(unsigned short* As, const unsigned short* __restrict__ src,
                                            const int4* rows, int dy, int dx, int c, int Hin,
                                            int Win, long long Cin, int tid) {
    if constexpr (VEC) {
        const int kk = (tid % 4) * 8;
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const int row = tid / 4 + 32 * i;
            const int4 t = rows[row];
            const int h = t.y + dy, v = t.z + dx;
            const bool ok = (unsigned)h < (unsigned)Hin && (unsigned)v < (unsigned)Win;
            const unsigned short* p = ok ? src + (long long)(t.x + h * Win + v) * Cin + c : src;
            cp_async<16>(As + tc16::at<true>(row, kk), p, ok);
        }
    } else {
        const int kk = tid % 32, warp = tid / 32;
#pragma unroll 8
        for (int i = 0; i < tc16::BM / 4; ++i) {
            const int row = warp + 4 * i;
            const int4 t = rows[row];
            const int h = t.y + dy, v = t.z + dx;
            const bool ok = (unsigned)h < (unsigned)Hin && (unsigned)v < (unsigned)Win;
            As[tc16::at<true>(row, kk)] =
                ok ? src[(long long)(t.x + h * Win + v) * Cin + c] : (unsigned short)0;
        }
    }
}

template <typename T, bool VEC>
__global__ void __launch_bounds__(tc16::THREADS)
conv2d_nhwc_implicit_gemm_mma16(const T* __restrict__ x, const T* __restrict__ w,
                                const T* __restrict__ bias, T* __restrict__ y,
                                float* __restrict__ partial, CONV_SHAPE_PARAMS, int splits,
                                int kchunk, long long split_stride) {
    const CONV_SHAPE;
    unsigned short* smem = tc16::dynamic_smem();
    const int tid = threadIdx.x;
    const int Cg = s.C / s.groups, Kg = s.K / s.groups;
    const int RSC = s.R * s.S * Cg, PQ = s.P * s.Q, NPQ = s.N * PQ;
    const tc16::SplitK z = tc16::SplitK(splits).over(kchunk, RSC);
    const int g = z.outer, kbeg = z.kbeg, kend = z.kend;
    if (z.split > 0) bias = nullptr;
    if (partial) partial += z.split * split_stride;
    const int m0 = blockIdx.x * tc16::BM, n0 = blockIdx.y * tc16::BN;
    const unsigned short* xg = reinterpret_cast<const unsigned short*>(x) + (long long)g * Cg;
    const unsigned short* wg = reinterpret_cast<const unsigned short*>(w) + (long long)g * Kg * RSC;

    int4* rows = tc16::depth_table<true, true>(smem);
    {
        const int row = m0 + tid;                       // THREADS == BM: one row a thread
        int4 t = make_int4(0, NOWHERE, NOWHERE, 0);
        if (row < NPQ) {
            const int n = row / PQ, pq = row - n * PQ, p = pq / s.Q;
            t = make_int4(n * s.H * s.W, p * s.sh - s.ph, (pq - p * s.Q) * s.sw - s.pw, 0);
        }
        rows[tid] = t;
    }
    __syncthreads();

    // A: X_rows gathered from x; B: W[g]'s rows, R*S*Cg long
    auto load = [&](unsigned short* As, unsigned short* Bs, int step) {
        const int k0 = kbeg + step * tc16::BK;
        // the thread's depth: a chunk of 8 (VEC: within one tap, as Cg % 8 == 0) or one
        const int kk = VEC ? (tid % 4) * 8 : tid % 32;
        const int d = k0 + kk;
        const int rs = d / Cg, c = d - rs * Cg, r = rs / s.S;
        const int dr = d < kend ? r * s.dh : NOWHERE, ds = (rs - r * s.S) * s.dw;
        gather_rows<VEC>(As, xg, rows, dr, ds, c, s.H, s.W, s.C, tid);
        tc16::load_tile<true, VEC>(Bs, wg, RSC, n0, Kg, k0, kend, tid);
    };
    float acc[tc16::NACC];
    tc16::mainloop<true, true, Half16<T>::BF16>(smem, z.steps(), tid, acc, load);

    // tile row i = output position m0 + i, its channels g*Kg + c in y; pairs of channels as
    // one 4-byte store where Kg is even (then r*K + g*Kg + c is even: aligned)
    tc16::store_half_pairs<T, true>(acc, tid, n0, Kg, bias ? bias + g * Kg : bias,
        [&](int i) { const int r = m0 + i;
                     return r < NPQ ? (long long)r * s.K + g * Kg : -1LL; },
        partial == nullptr && Kg % 2 == 0, y, partial);
}

template <typename T, bool VA, bool VB>
__global__ void __launch_bounds__(tc16::THREADS)
conv2d_nhwc_wgrad_implicit_gemm_mma16(const T* __restrict__ x, const T* __restrict__ gy,
                                      T* __restrict__ gw, float* __restrict__ partial,
                                      CONV_SHAPE_PARAMS, int splits, int kchunk,
                                      long long split_stride) {
    const CONV_SHAPE;
    unsigned short* smem = tc16::dynamic_smem();
    const int tid = threadIdx.x;
    const int Cg = s.C / s.groups, Kg = s.K / s.groups;
    const int RSC = s.R * s.S * Cg, PQ = s.P * s.Q, NPQ = s.N * PQ;
    const tc16::SplitK z = tc16::SplitK(splits).over(kchunk, NPQ);
    const int g = z.outer, kbeg = z.kbeg, kend = z.kend;
    if (partial) partial += z.split * split_stride;
    const int m0 = blockIdx.y * tc16::BM, n0 = blockIdx.x * tc16::BN;
    const unsigned short* xg = reinterpret_cast<const unsigned short*>(x) + (long long)g * Cg;
    const unsigned short* gyg = reinterpret_cast<const unsigned short*>(gy) + (long long)g * Kg;

    // the thread's tap column(s) of B: 8 from n0 + (tid % 16) * 8 (VB), or n0 + tid, as
    // (r*dh, s*dw, c); past the end an offset that fails every bounds test
    const int col = n0 + (VB ? (tid % 16) * 8 : tid);
    int dr = NOWHERE, ds = 0, c = 0;
    if (col < RSC) {
        const int rs = col / Cg, r = rs / s.S;
        c = col - rs * Cg;
        dr = r * s.dh;
        ds = (rs - r * s.S) * s.dw;
    }
    int4* table = tc16::depth_table<false, false>(smem);
    // position m = (n, p, q): {n*H*W, p*sh - ph, q*sw - pw, 0}
    auto prepare = [&](int step) {
        if (tid >= tc16::BK) return;
        const int m = kbeg + step * tc16::BK + tid;
        int4 t = make_int4(0, NOWHERE, NOWHERE, 0);
        if (m < kend) {
            const int n = m / PQ, pq = m - n * PQ, p = pq / s.Q;
            t = make_int4(n * s.H * s.W, p * s.sh - s.ph, (pq - p * s.Q) * s.sw - s.pw, 0);
        }
        table[(step % tc16::STAGES) * tc16::BK + tid] = t;
    };
    auto load = [&](unsigned short* As, unsigned short* Bs, int step) {
        const int k0 = kbeg + step * tc16::BK;
        tc16::load_tile<false, VA>(As, gyg, s.K, m0, Kg, k0, kend, tid);
        const int4* t = table + (step % tc16::STAGES) * tc16::BK;
        if constexpr (VB) {
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                const int kk = tid / 16 + 8 * i;
                const int4 d = t[kk];
                const int h = d.y + dr, v = d.z + ds;
                const bool ok = (unsigned)h < (unsigned)s.H && (unsigned)v < (unsigned)s.W;
                const unsigned short* p = ok ? xg + (long long)(d.x + h * s.W + v) * s.C + c : xg;
                cp_async<16>(Bs + tc16::at<false>((tid % 16) * 8, kk), p, ok);
            }
        } else {
#pragma unroll 8
            for (int kk = 0; kk < tc16::BK; ++kk) {
                const int4 d = t[kk];
                const int h = d.y + dr, v = d.z + ds;
                const bool ok = (unsigned)h < (unsigned)s.H && (unsigned)v < (unsigned)s.W;
                Bs[tc16::at<false>(tid, kk)] =
                    ok ? xg[(long long)(d.x + h * s.W + v) * s.C + c] : (unsigned short)0;
            }
        }
    };
    float acc[tc16::NACC];
    tc16::mainloop<false, false, Half16<T>::BF16>(smem, z.steps(), tid, acc, load, prepare);
    tc16::store_half<T, int>(acc, tid, m0, n0, Kg, RSC, RSC,
        [&](int j) { return (long long)g * Kg * RSC + j; }, gw, partial);
}

// The input gradient at stride (sh, sw) > 1, split into its sh*sw phases (a, b): the input
// positions h = a + sh*i, v = b + sw*j take only the taps r with (a + ph - r*dh) % sh == 0
// (r = r0 + jr*rstep, rstep = sh / gcd(sh, dh); s alike), each from gy position
// p = i + (a + ph - r*dh) / sh (q alike). Per phase and group the GEMM
// gx_phase (N*Ha*Wb x Cg) = Gy_rows (N*Ha*Wb x Ra*Sa*Kg) @ W' (Ra*Sa*Kg x Cg), depth
// (jr, js, k) with k fastest: A = Gy_rows K-major (gather_rows from gy, the block's rows
// decomposed once into the row table), B = W'[(r, s, k), c] = w[g*Kg + k, r, s, c],
// MN-major (c contiguous). No product on a zero: a tap skipped by the stride is never in the
// depth (a phase without taps writes zeros). The slice's depths are decomposed once per slice
// into the depth table {w offset, p offset, q offset, k} (prepare). VA: Kg % 8 == 0 and gy
// 16-byte aligned, 8 channels of gy per cp.async; VB: Cg % 8 == 0 and w aligned, 8 of w.
// blockIdx.z = (group * sh*sw + phase) * splits + split; the splits divide the longest
// phase's depth, a split past a shorter phase's end writes zeros to its partial.
// Launch with tc16::shared_bytes<true, false>() + tc::TABLE_BYTES + ROW_TABLE_BYTES.
template <typename T, bool VA, bool VB>
__global__ void __launch_bounds__(tc16::THREADS)
conv2d_nhwc_dgrad_implicit_gemm_mma16(const T* __restrict__ gy, const T* __restrict__ w,
                                      T* __restrict__ gx, float* __restrict__ partial,
                                      CONV_SHAPE_PARAMS, int splits, int kchunk,
                                      long long split_stride) {
    const CONV_SHAPE;
    unsigned short* smem = tc16::dynamic_smem();
    const int tid = threadIdx.x;
    const tc16::SplitK zp(splits);                     // outer = group * sh*sw + phase
    const int phases = s.sh * s.sw, g = zp.outer / phases, phase = zp.outer % phases;
    const int a = phase / s.sw, b = phase % s.sw;
    const int Cg = s.C / s.groups, Kg = s.K / s.groups;
    // the phase's rows and taps
    const int Ha = a < s.H ? (s.H - a + s.sh - 1) / s.sh : 0;
    const int Wb = b < s.W ? (s.W - b + s.sw - 1) / s.sw : 0;
    const int rows_n = s.N * Ha * Wb;
    const int m0 = blockIdx.x * tc16::BM, n0 = blockIdx.y * tc16::BN;
    if (m0 >= rows_n) return;                          // this phase has fewer rows
    auto taps = [](int off, int st, int dil, int len, int& first, int& step) {
        int x = st, y = dil;                           // gcd(st, dil)
        while (y) { const int t = x % y; x = y; y = t; }
        step = st / x;
        first = len;
        for (int r = 0; r < step && r < len; ++r)
            if ((off - r * dil) % st == 0) { first = r; break; }
        return first < len ? (len - 1 - first) / step + 1 : 0;
    };
    int r0, rstep, s0, sstep;
    const int Ra = taps(a + s.ph, s.sh, s.dh, s.R, r0, rstep);
    const int Sa = taps(b + s.pw, s.sw, s.dw, s.S, s0, sstep);
    const tc16::SplitK z = zp.over(kchunk, Ra * Sa * Kg);
    const int kbeg = z.kbeg, kend = z.kend;
    if (partial) partial += z.split * split_stride;
    const unsigned short* gyg = reinterpret_cast<const unsigned short*>(gy) + (long long)g * Kg;
    const unsigned short* ws = reinterpret_cast<const unsigned short*>(w);

    int4* table = tc16::depth_table<true, false>(smem);
    int4* rows = table + tc16::STAGES * tc16::BK;
    {
        const int row = m0 + tid;
        int4 t = make_int4(0, NOWHERE, NOWHERE, -1);
        if (row < rows_n) {
            const int n = row / (Ha * Wb), ij = row - n * (Ha * Wb), i = ij / Wb, j = ij - i * Wb;
            t = make_int4(n * s.P * s.Q, i, j, (n * s.H + a + s.sh * i) * s.W + b + s.sw * j);
        }
        rows[tid] = t;
    }
    // depth d = (jr, js, k): {w's row (g*Kg + k, r, s), p - i, q - j, k}; past the end a p
    // offset that fails every bounds test
    auto prepare = [&](int step) {
        if (tid >= tc16::BK) return;
        const int d = kbeg + step * tc16::BK + tid;
        int4 e = make_int4(0, NOWHERE, 0, 0);
        if (d < kend) {
            const int k = d % Kg, t = d / Kg, js = t % Sa, jr = t / Sa;
            const int r = r0 + jr * rstep, sc = s0 + js * sstep;
            e = make_int4(((g * Kg + k) * s.R + r) * s.S * Cg + sc * Cg,
                          (a + s.ph - r * s.dh) / s.sh, (b + s.pw - sc * s.dw) / s.sw, k);
        }
        table[(step % tc16::STAGES) * tc16::BK + tid] = e;
    };
    auto load = [&](unsigned short* As, unsigned short* Bs, int step) {
        const int4* t = table + (step % tc16::STAGES) * tc16::BK;
        const int4 e = t[VA ? (tid % 4) * 8 : tid % 32];
        gather_rows<VA>(As, gyg, rows, e.y, e.z, e.w, s.P, s.Q, s.K, tid);
        if constexpr (VB) {
            const int cc = (tid % 16) * 8;
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                const int kk = tid / 16 + 8 * i;
                const int4 f = t[kk];
                const bool ok = f.y != NOWHERE && n0 + cc < Cg;
                cp_async<16>(Bs + tc16::at<false>(cc, kk), ok ? ws + f.x + n0 + cc : ws, ok);
            }
        } else {
#pragma unroll 8
            for (int kk = 0; kk < tc16::BK; ++kk) {
                const int4 f = t[kk];
                Bs[tc16::at<false>(tid, kk)] =
                    f.y != NOWHERE && n0 + tid < Cg ? ws[f.x + n0 + tid] : (unsigned short)0;
            }
        }
    };
    float acc[tc16::NACC];
    // the row table is written before mainloop's first barrier, which precedes its readers
    tc16::mainloop<true, false, Half16<T>::BF16>(smem, z.steps(), tid, acc, load, prepare);

    // row m -> gx pixel rows[m].w, channels g*Cg + c; pairs as in the forward
    tc16::store_half_pairs<T, false>(acc, tid, n0, Cg, (const T*)nullptr,
        [&](int i) { const int pix = rows[i].w;
                     return pix < 0 ? -1LL : (long long)pix * s.C + g * Cg; },
        partial == nullptr && Cg % 2 == 0, gx, partial);
}
