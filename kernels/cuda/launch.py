"""What the CUDA C launchers share: the launch limits, the grids of the one-thread-per-element
and row-wise kernels, 32-bit argument packing, fastdiv's constants, the tile sizes of gemm.cu
and pipeline.cuh, the K-split rule and the fixed-order sum of split partials (gemm.cu's
sum_splits)."""
from __future__ import annotations

import numpy as np

from convgpu.core.args import HALF_DTYPES, ceil_div
from convgpu.kernels.cuda.module import ctype, get_function

THREADS = 256              # one-thread-per-element kernels
TILE = 128                 # the register-blocked tile of gemm.cu / conv_implicit.cu (tile::BM = BN)
GEMM_THREADS = 256
MAX_GRID_X = 2 ** 31 - 1
MAX_GRID_YZ = 65535        # gridDim.y and gridDim.z
ROWS_GRID_X, ROWS_GRID_Y = 1 << 16, 65535   # the row-wise kernels loop past these
INT_SAFE = 2 ** 31 - 2 ** 27   # flat indices below this (plus the grid stride) fit in int
WARP = 32
# pipeline.cuh's TF32 tile: 128 x 128 blocks of 128 threads, slices of 32, 3 stages in
# dynamic shared memory of 4 bytes x 3 x (K-major 128 x 36 or row-major 32 x 136) per operand
PIPE_THREADS, PIPE_BK, PIPE_STAGES = 128, 32, 3
PIPE_TABLE_BYTES = PIPE_STAGES * PIPE_BK * 16   # the gathers' depth tables (tc::TABLE_BYTES)
MAX_SPLITS = 128


def pipe_shared_bytes(a_kmajor: bool, b_kmajor: bool, table: bool = False, a_rows=128) -> int:
    """tc::shared_bytes<KA, KB, M>() (+ tc::TABLE_BYTES): the stages of an A tile of a_rows
    rows (K-major: rows x 36 floats; row-major: 32 x 136) and a 128-row B tile."""
    tile = lambda kmajor, rows: rows * 36 if kmajor else 32 * 136
    return (4 * PIPE_STAGES * (tile(a_kmajor, a_rows) + tile(b_kmajor, 128))
            + (PIPE_TABLE_BYTES if table else 0))


def i32(*v):
    return tuple(np.int32(int(a)) for a in v)


def null_or(a):
    """The array, or a null pointer for an absent optional one."""
    return a if a is not None else np.uint64(0)


def address(a) -> int:
    return a.ctypes.data if isinstance(a, np.ndarray) else a.data.ptr


def aligned16(*arrays) -> bool:
    """Every array's base on a 16-byte boundary, as a 16-byte vector access or cp.async
    needs (a view may start anywhere)."""
    return all(address(a) % 16 == 0 for a in arrays)


def vec8_fits(dtype, *arrays) -> bool:
    """The half types' 16-byte vector kernels (8 elements a load) serve: a half dtype and
    every array aligned."""
    return np.dtype(dtype) in HALF_DTYPES and aligned16(*arrays)


def conv_ints(a):
    """A ConvArgs as the kernels' CONV_SHAPE_PARAMS (conv_shape.cuh)."""
    return i32(a.N, a.C, a.H, a.W, a.K, a.R, a.S, a.P, a.Q, a.stride[0], a.stride[1],
               a.padding[0], a.padding[1], a.dilation[0], a.dilation[1], a.groups)


# A grid-stride loop steps past its last index by blocks x THREADS; over int indices (the
# pooling kernels take I = int below INT_SAFE) that overshoot must fit in the 2**27 left
# above INT_SAFE, or the index wraps negative and the loop runs on.
GRID_STRIDE_BLOCKS = (2 ** 31 - INT_SAFE) // THREADS


def elementwise_grid(n):
    return (max(1, min(ceil_div(n, THREADS), GRID_STRIDE_BLOCKS)),)


def warp_grid(rows):
    """A warp per row, THREADS // WARP rows a block, grid-stride past GRID_STRIDE_BLOCKS."""
    return (max(1, min(ceil_div(rows, THREADS // WARP), GRID_STRIDE_BLOCKS)),)


def index_type(total):
    """The index type I of the pooling kernels: int below INT_SAFE, else 64-bit."""
    return ("int", np.int32) if total < INT_SAFE else ("long long", np.int64)


def fastdiv(d: int) -> int:
    """The constants of Divider<int> (common.cuh) for divisor d, packed as mul | shr << 32:
    n // d == (n * mul >> 32) >> shr for 0 <= n < 2**31 (mul = 0 stands for d = 1)."""
    if not 1 <= d < 2 ** 31:
        raise ValueError(f"fastdiv: divisor {d} out of range")
    if d == 1:
        return 0
    p = 31 + (d - 1).bit_length()
    return ((1 << p) + d - 1) // d | (p - 32) << 32


def tf32_supports(a):
    if not getattr(a, "allow_tf32", False):
        return "TF32 is not allowed for this call (allow_tf32=True or set_allow_tf32(True))"
    if np.dtype(a.dtype) != np.float32:
        return f"TF32 kernels take float32, got {np.dtype(a.dtype).name}"
    return None


def split_for(M, N, batch, K, tile_rows=TILE):
    """Enough K-splits that the grid has about two blocks per SM's worth of work (132 SMs),
    each split at least 256 deep, at most MAX_SPLITS (a small output over a long reduction,
    as ResNet conv1's 64 x 147 weight gradient over 200704 positions, takes ~128). The
    partials are at most about (264 + blocks) tiles."""
    blocks = ceil_div(M, tile_rows) * ceil_div(N, TILE) * batch
    return max(1, min(MAX_SPLITS, ceil_div(264, blocks), ceil_div(K, 256)))


def sum_splits(parts, out, splits):
    """out = the sum of parts' `splits` leading slices, in order (gemm.cu's sum_splits):
    partial results summed the same way on every run."""
    get_function("gemm.cu", f"sum_splits<{ctype(out.dtype)}>")(
        elementwise_grid(out.size), (THREADS,),
        (parts, out, np.int64(out.size), np.int32(splits)))
    return out
