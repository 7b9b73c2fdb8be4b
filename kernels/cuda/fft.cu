// The FFT convolution's layout kernels (fft.py): between cuFFT's spectra, complex and
// contiguous along the frequency f, and the per-frequency GEMMs' real operands, stacked
// [real | imaginary] and frequency-major. One pass each way, through a shared-memory tile
// so that both the frequency-contiguous side and the column-contiguous side are read and
// written coalesced. (The CuPy version took a transposed copy, a concatenation per block
// of the stacked matrix and a negation: several strided passes over each operand.)
//
//   spectra_stack<T>    out[g][f][i][j] = s * part(S[g sg + (i % Ri) si + (j % Rj) sj + f]),
//                       i < QR Ri, j < QC Rj; the quadrant q = (i / Ri) * 2 + (j / Rj) of the
//                       output picks the part and the sign: bit 2q of `code` = imaginary,
//                       bit 2q + 1 = negated (e.g. [[Wr, -Wi], [Wi, Wr]]: q0 real, q1 -imag,
//                       q2 imag, q3 real)
//   spectra_unstack<T>  S[g sg + i si + j sj + f] = (in[g][f][i][j], in[g][f][i][Rj + j]): a
//                       GEMM result's [real | imaginary] columns back into spectra
//
// S is complex, stored as T pairs (real, imaginary), read and written a pair at a time
// (float2 / double2: the launcher passes arrays of complex64 / complex128, so aligned); F
// frequencies per spectrum. A block
// moves a tile of 32 frequencies x 32 columns j of one row (g, i); blockIdx.z walks the
// G * Ri rows in a grid-stride loop (more rows than gridDim.z allows).
#include "common.cuh"

constexpr int SP_TILE = 32, SP_ROWS = 8;     // blockDim (32, 8): each thread moves 4 per pass

// one complex value as a vector of its two parts: one 8- or 16-byte access instead of two
template <typename T> struct Pair;
template <> struct Pair<float> { using type = float2; };
template <> struct Pair<double> { using type = double2; };

template <typename T>
__global__ void __launch_bounds__(SP_TILE * SP_ROWS)
spectra_stack(const T* __restrict__ S, T* __restrict__ out, int G, int F, int Ri, int Rj,
              int QR, int QC, long long sg, long long si, long long sj, int code) {
    __shared__ T re[SP_TILE][SP_TILE + 1], im[SP_TILE][SP_TILE + 1];
    const int tx = threadIdx.x, ty = threadIdx.y;
    const int f0 = blockIdx.x * SP_TILE, j0 = blockIdx.y * SP_TILE;
    const long long rowsOut = (long long)QR * Ri, colsOut = (long long)QC * Rj;
    for (long long gi = blockIdx.z; gi < (long long)G * Ri; gi += gridDim.z) {
        const int g = (int)(gi / Ri), i = (int)(gi % Ri);
        // load: a warp reads 32 consecutive frequencies of one column j (coalesced)
#pragma unroll
        for (int k = 0; k < SP_TILE; k += SP_ROWS) {
            const int j = j0 + ty + k, f = f0 + tx;
            if (j < Rj && f < F) {
                const auto v = reinterpret_cast<const typename Pair<T>::type*>(S)[
                    g * sg + i * si + j * sj + f];
                re[ty + k][tx] = v.x;
                im[ty + k][tx] = v.y;
            }
        }
        __syncthreads();
        // store: a warp writes 32 consecutive columns of one frequency, in each quadrant
#pragma unroll
        for (int k = 0; k < SP_TILE; k += SP_ROWS) {
            const int f = f0 + ty + k, j = j0 + tx;
            if (j < Rj && f < F) {
                const T r = re[tx][ty + k], m = im[tx][ty + k];
                for (int qi = 0; qi < QR; ++qi)
                    for (int qj = 0; qj < QC; ++qj) {
                        const int q = qi * 2 + qj;
                        T v = ((code >> (2 * q)) & 1) ? m : r;
                        if ((code >> (2 * q + 1)) & 1) v = -v;
                        out[((long long)g * F + f) * rowsOut * colsOut
                            + ((long long)qi * Ri + i) * colsOut + (long long)qj * Rj + j] = v;
                    }
            }
        }
        __syncthreads();                         // the tile is reused by the next row
    }
}

template <typename T>
__global__ void __launch_bounds__(SP_TILE * SP_ROWS)
spectra_unstack(const T* __restrict__ in, T* __restrict__ S, int G, int F, int Ri, int Rj,
                long long sg, long long si, long long sj) {
    __shared__ T re[SP_TILE][SP_TILE + 1], im[SP_TILE][SP_TILE + 1];
    const int tx = threadIdx.x, ty = threadIdx.y;
    const int f0 = blockIdx.x * SP_TILE, j0 = blockIdx.y * SP_TILE;
    for (long long gi = blockIdx.z; gi < (long long)G * Ri; gi += gridDim.z) {
        const int g = (int)(gi / Ri), i = (int)(gi % Ri);
        // load: a warp reads 32 consecutive columns (real, then imaginary) of one frequency
#pragma unroll
        for (int k = 0; k < SP_TILE; k += SP_ROWS) {
            const int f = f0 + ty + k, j = j0 + tx;
            if (j < Rj && f < F) {
                const long long row = (((long long)g * F + f) * Ri + i) * 2 * Rj;
                re[tx][ty + k] = in[row + j];
                im[tx][ty + k] = in[row + Rj + j];
            }
        }
        __syncthreads();
        // store: a warp writes 32 consecutive frequencies of one column
#pragma unroll
        for (int k = 0; k < SP_TILE; k += SP_ROWS) {
            const int j = j0 + ty + k, f = f0 + tx;
            if (j < Rj && f < F) {
                typename Pair<T>::type v;
                v.x = re[ty + k][tx];
                v.y = im[ty + k][tx];
                reinterpret_cast<typename Pair<T>::type*>(S)[g * sg + i * si + j * sj + f] = v;
            }
        }
        __syncthreads();
    }
}
