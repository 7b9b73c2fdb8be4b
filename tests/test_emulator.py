"""The host emulation's own tests (kernels/cuda/emulator): that it catches what it claims
to (a missing barrier, an access past an array, a shared array indexed out of bounds, a
misaligned vector access, a barrier some threads never reach, a mistyped argument, a launch
past the limits), that warps drift apart and thread orders vary so races show, and that
its TF32 rounding, dynamic shared memory and cp.async behave as the device's. The kernels'
tests over the emulation are by op family (tests/ops) and in tests/test_cuda_host.py."""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from convgpu.kernels.cuda.emulator import cuda_host

if not cuda_host.available():
    pytest.skip(f"no C++ compiler ({cuda_host.CXX}) for the host emulation", allow_module_level=True)


@pytest.fixture(autouse=True)
def emulated(monkeypatch):
    monkeypatch.setenv("CONVGPU_CUDA_HOST", "1")
    monkeypatch.setenv("CONVGPU_POISON", "1")


# ---------------------------------------------------------------------------------------
# the emulator catches what it claims to

TOY = r"""
#include "common.cuh"
template <typename T> __global__ void reverse64(const T* x, T* y, int sync) {
    __shared__ T s[64];
    s[threadIdx.x] = x[threadIdx.x];
    if (sync) __syncthreads();
    y[threadIdx.x] = s[63 - threadIdx.x];
}
__global__ void write_at(float* y, int offset) { y[(int)threadIdx.x + offset] = 1.0f; }
__global__ void shared_oob(float* y) {
    __shared__ float s[64];
    s[threadIdx.x + 1] = 1.0f;
    y[threadIdx.x] = s[threadIdx.x];
}
__global__ void sync_half(float* y) {
    if (threadIdx.x < 32) __syncthreads();
    y[threadIdx.x] = 1.0f;
}
__global__ void warp_total(const float* x, float* y) {
    float v = x[threadIdx.x];
    for (int m = 16; m > 0; m /= 2) v += __shfl_xor_sync(0xffffffffu, v, m);
    y[threadIdx.x] = v;
}
__global__ void mma_partial(float* y) {
    float d[4] = {0, 0, 0, 0};
    unsigned a[4] = {0, 0, 0, 0}, b[2] = {0, 0};
    if (threadIdx.x < 16) tile::mma_m16n8k8_tf32(d, a, b);
    y[threadIdx.x] = d[0];
}
__global__ void overwrite_early(const float* x, float* y, int sync) {
    __shared__ float s[64];
    const int t = threadIdx.x;
    s[t] = x[t];
    __syncthreads();
    float v = s[63 - t];                        // reads, each followed by a warp collective
    v = __shfl_xor_sync(0xffffffffu, v, 1);
    v += s[(t + 32) % 64];                      // the other warp's elements
    v = __shfl_xor_sync(0xffffffffu, v, 1);
    if (sync) __syncthreads();                  // without it: overwritten while still read
    s[t] = -1.0f;
    __syncthreads();
    y[t] = v + s[t];
}
__global__ void scalars(float* y, int i, long long j, double d) { y[0] = float(i + j + d); }
__global__ void vector_at(const float* x, float* y, int offset) {
    const float4 v = *reinterpret_cast<const float4*>(x + offset);
    y[0] = v.x + v.y + v.z + v.w;
}
"""
TOY_EXPRS = ("reverse64<float>", "write_at", "shared_oob", "sync_half", "warp_total",
             "mma_partial", "overwrite_early", "scalars", "vector_at")


def toy():
    return cuda_host.module_from_source(TOY, TOY_EXPRS)


def test_barrier_makes_the_shared_reversal_right_and_its_absence_shows():
    k = toy()["reverse64<float>"]
    x = np.arange(1, 65, dtype=np.float32)
    for which in ("forward", "reverse"):
        with cuda_host.order(which):
            y = np.zeros(64, np.float32)
            k((1,), (64,), (x, y, np.int32(1)))
            np.testing.assert_array_equal(y, x[::-1])
            y[:] = 0
            k((1,), (64,), (x, y, np.int32(0)))
            # without the barrier, half the threads read shared memory not yet written:
            # poisoned (NaN) in this order
            assert np.isnan(y).sum() == 32, which


def test_shuffled_order_runs_and_exposes_the_missing_barrier():
    k = toy()["reverse64<float>"]
    x = np.arange(1, 65, dtype=np.float32)
    with cuda_host.order("shuffle"):
        y = np.zeros(64, np.float32)
        k((1,), (64,), (x, y, np.int32(1)))
        np.testing.assert_array_equal(y, x[::-1])
        k((1,), (64,), (x, y, np.int32(0)))
        assert 0 < np.isnan(y).sum() < 64
    with pytest.raises(ValueError, match="order is one of"):
        with cuda_host.order("sideways"):
            pass


def test_warps_drift_apart_so_an_early_overwrite_shows():
    """In forward order warps advance in lockstep at each warp collective, which would hide a
    write made before the barrier that other warps' reads needed; in reverse and shuffled
    order one warp runs alone to its next barrier, and the race changes the result."""
    k = toy()["overwrite_early"]
    x = np.arange(1, 65, dtype=np.float32)
    t = np.arange(64)
    # lane t ends with lane t^1's first read moved back by the second shuffle, plus lane
    # t^1's second read, plus its own s[t] = -1
    want = x[63 - t] + x[((t ^ 1) + 32) % 64] - 1
    res = {}
    for which in ("forward", "reverse", "shuffle"):
        for sync in (1, 0):
            y = np.zeros(64, np.float32)
            with cuda_host.order(which):
                k((1,), (64,), (x, y, np.int32(sync)))
            res[which, sync] = y
        np.testing.assert_array_equal(res[which, 1], want)
    np.testing.assert_array_equal(res["forward", 0], want)      # lockstep hides it
    assert not np.array_equal(res["reverse", 0], want)          # a warp alone shows it


def test_warp_shuffle_reduction():
    k = toy()["warp_total"]
    x = np.arange(64, dtype=np.float32)
    y = np.zeros(64, np.float32)
    k((1,), (64,), (x, y))
    np.testing.assert_array_equal(y, np.repeat([x[:32].sum(), x[32:].sum()], 32))


@pytest.mark.parametrize("name, match", [("sync_half", "already exited"),
                                         ("mma_partial", "only part of a warp")])
def test_divergent_barriers_are_reported(name, match):
    with pytest.raises(RuntimeError, match=match):
        toy()[name]((1,), (64,), (np.zeros(64, np.float32),))


def test_arguments_are_checked_against_the_c_signature():
    k = toy()["scalars"]
    y = np.zeros(1, np.float32)
    k((1,), (1,), (y, np.int32(1), np.int64(2), np.float64(0.5)))
    assert y[0] == 3.5
    for bad, match in [((y, 1, np.int64(2), np.float64(0.5)), "numpy scalar"),
                       ((y, np.int64(1), np.int64(2), np.float64(0.5)), "4-byte integer"),
                       ((y, np.int32(1), np.int64(2), np.float32(0.5)), "8-byte floating"),
                       ((y.astype(np.float64), np.int32(1), np.int64(2), np.float64(0.5)),
                        "pointer to a 4-byte float"),
                       ((y, np.int32(1), np.int64(2)), "3 arguments for 4")]:
        with pytest.raises(TypeError, match=match):
            k((1,), (1,), bad)


def test_launch_limits_are_enforced():
    k = toy()["warp_total"]
    x, y = np.zeros(64, np.float32), np.zeros(64, np.float32)
    with pytest.raises(ValueError, match="grid"):
        k((1, 1, 65536), (64,), (x, y))
    with pytest.raises(ValueError, match="block"):
        k((1,), (2048,), (x, y))


def _crash(code):
    """Run `code` in a fresh interpreter (an emulated fault ends the process)."""
    env = dict(os.environ, CONVGPU_CUDA_HOST="1")
    prelude = ("import numpy as np\nfrom convgpu.kernels.cuda.emulator import cuda_host\n"
               "import test_emulator as t\n")
    return subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code)],
                          capture_output=True, text=True, env=env,
                          cwd=os.path.dirname(__file__), timeout=300)


@pytest.mark.parametrize("offset, order", [(0, "forward"), (1, "forward"), (-1, "reverse")])
def test_access_past_an_array_stops_with_a_message(offset, order):
    # 1024 floats = one page: both ends of the array touch a guard page
    r = _crash(f"""
        y = np.zeros(1024, np.float32)
        with cuda_host.order("{order}"):
            t.toy()["write_at"]((1,), (1024,), (y, np.int32({offset})))
        print("survived", (y == 1).sum())
    """)
    if offset == 0:
        assert r.returncode == 0 and "survived 1024" in r.stdout, r.stderr
    else:
        assert r.returncode == 86, (r.returncode, r.stdout, r.stderr)
        assert "SIGSEGV in kernel write_at" in r.stderr and "guard page" in r.stderr


def test_write_into_alignment_slack_is_caught():
    y = np.zeros(1021, np.float32)         # 3 floats short of a 16-byte multiple
    with pytest.raises(RuntimeError, match="outside its 4084 bytes"):
        toy()["write_at"]((1,), (1022,), (y, np.int32(0)))


def test_shared_array_index_out_of_bounds_stops_with_a_message():
    r = _crash("""
        t.toy()["shared_oob"]((1,), (64,), (np.zeros(64, np.float32),))
    """)
    assert r.returncode == 86, (r.returncode, r.stderr)
    assert "SIGILL in kernel shared_oob" in r.stderr and "out of bounds" in r.stderr


@pytest.mark.parametrize("offset", [0, 1])
def test_misaligned_vector_access_stops_with_a_message(offset):
    r = _crash(f"""
        y = np.zeros(1, np.float32)
        t.toy()["vector_at"]((1,), (1,), (np.arange(8, dtype=np.float32), y, np.int32({offset})))
        print("sum", y[0])
    """)
    if offset == 0:
        assert r.returncode == 0 and "sum 6.0" in r.stdout, r.stderr
    else:
        assert r.returncode == 86, (r.returncode, r.stderr)
        assert "SIGILL in kernel vector_at" in r.stderr and "misaligned" in r.stderr


def test_tf32_rounding_is_to_nearest_ties_away():
    """tile::to_tf32 as the tensor cores read it (top 19 bits): to nearest, ties away from
    zero; infinities and NaNs kept, the NaNs whose mantissa is all ones included (an add of
    half an ulp would carry them into the exponent and sign: the device's canonical NaN
    0x7fffffff would become -0)."""
    k = cuda_host.module_from_source(r"""
        #include "common.cuh"
        __global__ void round_tf32(const float* x, unsigned* y) {
            y[threadIdx.x] = tile::to_tf32(x[threadIdx.x]); }
    """, ("round_tf32",))["round_tf32"]
    f = lambda v: int(np.float32(v).view(np.uint32))
    cases = [   # (input bits, the TF32 value's bits; None: any NaN)
        (f(1 + 2 ** -11), f(1 + 2 ** -10)), (f(-(1 + 2 ** -11)), f(-(1 + 2 ** -10))),
        (f(1 + 2 ** -12), f(1.0)), (f(1 + 3 * 2 ** -11), f(1 + 2 ** -9)),
        (f(1 + 2 ** -11 - 2 ** -23), f(1.0)),
        (0x7f7fffff, 0x7f800000),                    # the largest float rounds up to inf
        (0x7f800000, 0x7f800000), (0xff800000, 0xff800000),
        (0x00081000, 0x00082000), (0x80080fff, 0x80080000),   # subnormals
        (0x7fffffff, None), (0xffffffff, None), (0x7ffff000, None), (0xfffff001, None),
        (0x7fc00000, None),
        (0x7f800001, 0x7f800000)]   # a NaN payload only in the dropped bits: inf, as cvt.rna
    x = np.array([c[0] for c in cases], np.uint32).view(np.float32)
    y = np.zeros(x.size, np.uint32)
    k((1,), (x.size,), (x, y))
    got = y & np.uint32(0xffffe000)
    for (inp, want), g in zip(cases, got, strict=True):
        if want is None:
            assert np.isnan(np.uint32(g).view(np.float32)), (hex(inp), hex(g))
        else:
            assert g == want, (hex(inp), hex(g), hex(want))


DYN = r"""
#include "pipeline.cuh"
__global__ void dyn_reverse(const float* x, float* y, int sync) {
    CONVGPU_DYNAMIC_SHARED(raw);
    float* s = reinterpret_cast<float*>(raw);
    s[threadIdx.x] = x[threadIdx.x];
    if (sync) __syncthreads();
    y[threadIdx.x] = s[blockDim.x - 1 - threadIdx.x];
}
__global__ void dyn_write_at(float* y, int offset) {
    CONVGPU_DYNAMIC_SHARED(raw);
    float* s = reinterpret_cast<float*>(raw);
    s[(int)threadIdx.x + offset] = 1.0f;
    y[threadIdx.x] = 2.0f;
}
__global__ void async_copy(const float* x, float* y, int wait) {
    CONVGPU_DYNAMIC_SHARED(raw);
    float* s = reinterpret_cast<float*>(raw);
    cp_async<4>(s + threadIdx.x, x + threadIdx.x, threadIdx.x % 2 == 0);   // odd: zero-filled
    cp_async_commit();
    if (wait) cp_async_wait<0>();
    __syncthreads();
    y[threadIdx.x] = s[threadIdx.x];
}
"""
DYN_EXPRS = ("dyn_reverse", "dyn_write_at", "async_copy")


def dyn():
    return cuda_host.module_from_source(DYN, DYN_EXPRS)


def test_dynamic_shared_memory_is_poisoned_and_limited():
    k = dyn()["dyn_reverse"]
    x = np.arange(1, 65, dtype=np.float32)
    y = np.zeros(64, np.float32)
    k((1,), (64,), (x, y, np.int32(1)), shared_mem=256)
    np.testing.assert_array_equal(y, x[::-1])
    with cuda_host.order("forward"):
        k((1,), (64,), (x, y, np.int32(0)), shared_mem=256)
    assert np.isnan(y).sum() == 32                  # read before written: poison
    # past 48 KiB a launch needs the function's limit raised first, as on a GPU
    from convgpu.kernels.cuda import module as _module
    big = 64 * 1024
    with pytest.raises(ValueError, match="past the function's limit"):
        k((1,), (64,), (x, y, np.int32(1)), shared_mem=big)
    _module.set_max_dynamic_shared(k, big)
    k((1,), (64,), (x, y, np.int32(1)), shared_mem=big)
    np.testing.assert_array_equal(y, x[::-1])
    with pytest.raises(ValueError, match="at most"):
        k((1,), (64,), (x, y, np.int32(1)), shared_mem=228 * 1024)


def test_set_max_dynamic_shared_uses_only_the_rawkernel_api(monkeypatch):
    """The device branch of _module.set_max_dynamic_shared (which the emulation above does
    not reach) against a stand-in with exactly cupy.RawKernel's attributes: at fd868cd it
    read fn.ptr, which RawKernel lacks, and every pipelined launch on the GPU failed."""
    cupy = pytest.importorskip("cupy")
    from unittest import mock
    from convgpu.kernels.cuda import module as _module
    monkeypatch.setattr(_module, "host_emulation", lambda: False)
    monkeypatch.setattr(cupy.cuda, "Device", lambda *a: mock.Mock(id=0))
    fn = mock.create_autospec(cupy.RawKernel, instance=True)
    _module.set_max_dynamic_shared(fn, 100_000)
    assert fn.max_dynamic_shared_size_bytes == 100_000
    fn.max_dynamic_shared_size_bytes = 0            # set once per function and size
    _module.set_max_dynamic_shared(fn, 90_000)
    assert fn.max_dynamic_shared_size_bytes == 0
    with pytest.raises(AttributeError):
        fn.ptr                                       # what the autospec refuses, as RawKernel


def test_access_past_dynamic_shared_memory_stops_with_a_message():
    r = _crash("""
        y = np.zeros(1024, np.float32)
        t.dyn()["dyn_write_at"]((1,), (1024,), (y, np.int32(1)), shared_mem=4096)
        print("survived")
    """)
    assert r.returncode == 86, (r.returncode, r.stdout, r.stderr)
    assert "SIGSEGV in kernel dyn_write_at" in r.stderr


def test_cp_async_lands_at_the_wait_and_zero_fills():
    k = dyn()["async_copy"]
    x = np.arange(1, 65, dtype=np.float32)
    y = np.zeros(64, np.float32)
    k((1,), (64,), (x, y, np.int32(1)), shared_mem=256)
    np.testing.assert_array_equal(y, np.where(np.arange(64) % 2 == 0, x, 0))
    # forward order: copies land as late as allowed (at the wait), so a read without the
    # wait sees poison; reverse order: they land at once (the other extreme)
    k((1,), (64,), (x, y, np.int32(0)), shared_mem=256)
    assert np.isnan(y).all()
    with cuda_host.order("reverse"):
        k((1,), (64,), (x, y, np.int32(0)), shared_mem=256)
    np.testing.assert_array_equal(y, np.where(np.arange(64) % 2 == 0, x, 0))


def test_every_name_expression_builds_and_is_found():
    from convgpu.kernels.cuda import sources
    for file, expr in sources.all_name_expressions():
        assert cuda_host.get_function(file, expr).name == expr
