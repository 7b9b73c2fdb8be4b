// max_pool2d_bwd_cells_shuffle<T, I>: a candidate for max_pool2d_bwd_cells (pool.cu), launched
// by pool_cells_shuffle.py. The cells kernel is bound by L2 (ncu, H100, e8f4431: L2 94%
// busy, DRAM 50% on AlexNet's pool; overlapping windows read each output row from two cell
// rows). Here each cell loads windows (i-1, j) and (i, j) and takes (i-1, j-1) and (i, j-1)
// from the thread of the cell to its left by __shfl_up_sync (lane 0 and row starts load their
// own), so each window crosses L2 twice, not 4 times; the block's threads loop together for
// the shuffle. Same candidates in the same order: bitwise the cells kernel's result. Written
// after the last GPU run (commit a7ce314): compiled and emulated only, never timed; under
// CONVGPU_DEV=1 as algo="cells_shuffle" until a GPU run decides.
#include "pool.cu"

template <typename T, typename I>
__global__ void max_pool2d_bwd_cells_shuffle(const T* __restrict__ gy,
                                             const long long* __restrict__ idx,
                                             T* __restrict__ gx, int* __restrict__ bad, I NC,
                                             int CH, int CW, unsigned long long mCH,
                                             unsigned long long mCW, POOL_SHAPE_PARAMS) {
    const POOL_SHAPE;
    POOL_DIV(I, divCW, CW, mCW);
    POOL_DIV(I, divCH, CH, mCH);
    POOL_DIV(I, divW, W, mW);
    const I total = NC * CH * CW;
    const int lane = threadIdx.x % 32;
    int flags = 0;
    // the block's threads loop together (a shuffle needs its whole warp): past the end a
    // thread works on the last cell again and stores nothing
    for (I t0 = blockIdx.x * (I)blockDim.x; t0 < total; t0 += (I)gridDim.x * blockDim.x) {
        const I t = t0 + (I)threadIdx.x;
        const bool live = t < total;
        int i, j;
        const I nc = unravel3(live ? t : total - 1, divCH, divCW, i, j);
        const long long base = (long long)nc * s.P * s.Q;
        long long id[2][2];
        T g[2][2];
        // unconditional loads from clamped (valid) positions, masked after
        auto load = [&](int a, int b) {
            const int p = i - 1 + a, q = j - 1 + b;
            const bool in = p >= 0 && p < s.P && q >= 0 && q < s.Q;
            const long long at = base + (long long)min(max(p, 0), s.P - 1) * s.Q +
                                 min(max(q, 0), s.Q - 1);
            id[a][b] = in ? idx[at] : -1;
            g[a][b] = gy[at];
        };
        // windows (i-1, j) and (i, j) from memory; (i-1, j-1) and (i, j-1) are the left
        // neighbour's: cells run along j with the threads, so lane - 1 holds cell (i, j - 1)
        // unless this cell starts a row or its warp. Each window is read by 2 cells, not 4
        load(0, 1);
        load(1, 1);
#pragma unroll
        for (int a = 0; a < 2; ++a) {
            id[a][0] = __shfl_up_sync(0xffffffffu, id[a][1], 1);
            g[a][0] = __shfl_up_sync(0xffffffffu, g[a][1], 1);
        }
        if (lane == 0 || j == 0) {
            load(0, 0);
            load(1, 0);
        }
        if (!live) continue;
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
                    T acc = T(0);
#pragma unroll
                    for (int a = 0; a < 2; ++a)
#pragma unroll
                        for (int b = 0; b < 2; ++b)
                            if (id[a][b] == me) acc += g[a][b];
                    gp[me] = acc;
                }
            }
    }
    if (flags) atomicOr(bad, flags);
}
