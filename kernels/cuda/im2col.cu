// The im2col / col2im kernels that pair with gemm.cu for the GEMM-based convolutions
// (launched by im2col.py):
//   im2col<T>   cols[g, (c*R + r)*S + s, (n*P + p)*Q + q] = x[...] or 0 (one thread each)
//   col2im<T, Col>  gx[n, c, h, w] = sum of the column entries that read x[n, c, h, w] (a
//       gather: one thread per input element, fixed order, no atomics)
// T float, double or a half type (half.cuh): im2col copies (exact in any type); col2im of a
// half type reads the GEMM's FP32 columns (Col = float), sums them in FP32 and rounds once.
#include "common.cuh"
#include "conv_shape.cuh"
#include "half.cuh"

// im2col / col2im on a 2-D grid: blockIdx.y walks the rows of the column matrix (im2col:
// g, c, r, s) or the planes of gx (col2im: n, c), whose coordinates are worked out once per
// row; blockIdx.x and the threads walk the columns (n, p, q) or the plane's (h, v), divided
// by multiply-shift (divider_for). The 1-D versions divided a 64-bit flat index per element
// (four 64-bit and four 32-bit divisions in im2col), far more work than the copy itself.
// Columns N*P*Q and planes H*W stay below 2**31 (the launchers check).
template <typename T>
__global__ void im2col(const T* __restrict__ x, T* __restrict__ cols, CONV_SHAPE_PARAMS) {
    const CONV_SHAPE;
    const int Cg = s.C / s.groups, RS = s.R * s.S, CRS = Cg * RS, PQ = s.P * s.Q;
    const int NPQ = s.N * PQ, rows = s.groups * CRS;
    const long long HW = (long long)s.H * s.W, CHW = (long long)s.C * HW;
    const Divider<int> divPQ = divider_for(PQ), divQ = divider_for(s.Q);
    for (int row = blockIdx.y; row < rows; row += gridDim.y) {
        const int g = row / CRS, crs = row - g * CRS, c = crs / RS, rs = crs - c * RS;
        const int r = rs / s.S, dh = r * s.dh - s.ph, dw = (rs - r * s.S) * s.dw - s.pw;
        const T* xc = x + ((long long)g * Cg + c) * HW;
        T* out = cols + (long long)row * NPQ;
        for (int col = blockIdx.x * blockDim.x + threadIdx.x; col < NPQ;
             col += gridDim.x * blockDim.x) {
            const int n = divPQ.div(col), pq = col - n * PQ, p = divQ.div(pq);
            const int h = p * s.sh + dh, v = (pq - p * s.Q) * s.sw + dw;
            out[col] = (h >= 0 && h < s.H && v >= 0 && v < s.W)
                           ? xc[n * CHW + (long long)h * s.W + v] : from_acc<T>(0);
        }
    }
}

template <typename T, typename Col = T>
__global__ void col2im(const Col* __restrict__ cols, T* __restrict__ gx, CONV_SHAPE_PARAMS) {
    const CONV_SHAPE;
    const int Cg = s.C / s.groups, RS = s.R * s.S, PQ = s.P * s.Q, HW = s.H * s.W;
    const long long NPQ = (long long)s.N * PQ, CRS = (long long)Cg * RS;
    const Divider<int> divW = divider_for(s.W), divSH = divider_for(s.sh), divSW = divider_for(s.sw);
    const int planes = s.N * s.C;
    for (int plane = blockIdx.y; plane < planes; plane += gridDim.y) {
        const int n = plane / s.C, c = plane - n * s.C, g = c / Cg, cw = c - g * Cg;
        const Col* cg = cols + g * CRS * NPQ + (long long)cw * RS * NPQ + (long long)n * PQ;
        T* out = gx + (long long)plane * HW;
        for (int e = blockIdx.x * blockDim.x + threadIdx.x; e < HW; e += gridDim.x * blockDim.x) {
            const int h = divW.div(e), v = e - h * s.W;
            acc_t<T> acc = 0;
            for (int r = 0; r < s.R; ++r) {
                const int hp = h + s.ph - r * s.dh;
                const int p = divSH.div(hp);
                if (hp < 0 || hp != p * s.sh || p >= s.P) continue;
                for (int q_s = 0; q_s < s.S; ++q_s) {
                    const int vq = v + s.pw - q_s * s.dw;
                    const int q = divSW.div(vq);
                    if (vq < 0 || vq != q * s.sw || q >= s.Q) continue;
                    acc += cg[(long long)(r * s.S + q_s) * NPQ + p * s.Q + q];
                }
            }
            out[e] = from_acc<T>(acc);
        }
    }
}
