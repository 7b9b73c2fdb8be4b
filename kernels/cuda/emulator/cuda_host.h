// Host emulation of the CUDA C subset our kernels use, so that kernels/cuda/*.cu run on a CPU,
// thread by thread, in tests on machines without a GPU (emulator/cuda_host.py builds
// each .cu with g++ -include cuda_host.h and launches through ctypes).
//
// Model: one OS thread. The blocks of a grid run one after another; the threads of a block
// are fibers (ucontext) that run one at a time and switch only at a barrier:
//   __syncthreads()   a fiber waits until every fiber of its block has arrived;
//   warp-collective operations (mma.sync, shuffles, __syncwarp) wait for the 32 lanes.
// A fiber therefore runs from one barrier to the next without interruption, in an order the
// launcher picks (forward, reverse, or a seeded shuffle of thread and block order; the
// shuffle draws a new thread order at every barrier). At warp collectives, forward order
// releases all waiting warps together (lockstep); reverse and shuffled order release one warp
// (the last / a random one), which runs alone to its next __syncthreads. A kernel whose
// result depends on any of this has a race, and tests compare the orders bitwise. A block whose threads
// wait at different barriers, or reach a warp operation with some lanes exited, is reported
// (on a GPU it would hang or be undefined).
//
// Poisoning: __shared__ variables are function-local statics; python/convgpu/cuda_host.py
// finds them in the library's symbol table (nm) and hands their addresses over
// (cuda_host_set_shared), and they are filled with 0xFF bytes (NaN for floats, -1 for
// integers) before each block, so shared memory read before it is written in that block
// shows up; locals start as a byte pattern (-ftrivial-auto-var-init).
// Dynamic shared memory (CONVGPU_DYNAMIC_SHARED in common.cuh) is one buffer per launch of
// the launch's shared_mem bytes, poisoned the same way, its end against an inaccessible page.
// cp.async copies complete at either extreme the hardware allows: in forward order they are
// deferred to the cp.async.wait_group that covers them (a read before the wait sees
// poison), in reverse order they land at once (a copy issued into a buffer that other
// threads have not finished reading, before the barrier that says they have, overwrites
// it), and in shuffled order each copy picks one of the two at random.
// Global arrays arrive from Python in guard-paged buffers; an access past either end, a
// fixed-size array indexed out of bounds and a misaligned vector access
// (-fsanitize=bounds,alignment) stop the process with a message naming the kernel, block
// and thread.
#pragma once
#ifndef CONVGPU_HOST
#define CONVGPU_HOST 1
#endif

#include <signal.h>
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <type_traits>
#include <utility>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
#define __shared__ static

struct uint3 { unsigned x, y, z; };
struct dim3 {
    unsigned x = 1, y = 1, z = 1;
};
inline uint3 threadIdx, blockIdx;
inline dim3 blockDim, gridDim;
constexpr int warpSize = 32;

#define CUDA_HOST_VEC2(T, N) struct __attribute__((aligned(2 * sizeof(T)))) N { T x, y; }; \
    inline N make_##N(T x, T y) { return N{x, y}; }
#define CUDA_HOST_VEC4(T, N, A) struct __attribute__((aligned(A))) N { T x, y, z, w; }; \
    inline N make_##N(T x, T y, T z, T w) { return N{x, y, z, w}; }
CUDA_HOST_VEC2(float, float2)
CUDA_HOST_VEC2(double, double2)
CUDA_HOST_VEC2(int, int2)
CUDA_HOST_VEC2(long long, longlong2)
CUDA_HOST_VEC4(float, float4, 16)
CUDA_HOST_VEC4(int, int4, 16)
CUDA_HOST_VEC4(double, double4, 16)

#include "cuda_host_half.h"

template <typename To, typename From> inline To cuda_host_bits(From v) {
    static_assert(sizeof(To) == sizeof(From), "bit cast of different sizes");
    To t;
    std::memcpy(&t, &v, sizeof(To));
    return t;
}
inline float __int_as_float(int v) { return cuda_host_bits<float>(v); }
inline float __uint_as_float(unsigned v) { return cuda_host_bits<float>(v); }
inline int __float_as_int(float v) { return cuda_host_bits<int>(v); }
inline unsigned __float_as_uint(float v) { return cuda_host_bits<unsigned>(v); }
inline double __longlong_as_double(long long v) { return cuda_host_bits<double>(v); }
inline long long __double_as_longlong(double v) { return cuda_host_bits<long long>(v); }
inline float __fdividef(float a, float b) { return a / b; }
inline float __frcp_rn(float a) { return 1.0f / a; }
inline double __drcp_rn(double a) { return 1.0 / a; }
inline float __expf(float a) { return std::exp(a); }
inline float __logf(float a) { return std::log(a); }
inline float __fmaf_rn(float a, float b, float c) { return std::fma(a, b, c); }
inline float rsqrtf(float a) { return 1.0f / std::sqrt(a); }
template <typename T> inline T __ldg(const T* p) { return *p; }
inline unsigned __umulhi(unsigned a, unsigned b) {
    return (unsigned)(((unsigned long long)a * b) >> 32);
}
inline int __clz(int v) { return v ? __builtin_clz((unsigned)v) : 32; }

// CUDA's min/max: the usual arithmetic conversions, fmin/fmax for floating types
template <typename A, typename B> inline std::common_type_t<A, B> min(A a, B b) {
    using C = std::common_type_t<A, B>;
    if constexpr (std::is_floating_point_v<C>) return std::fmin(C(a), C(b));
    else return C(a) < C(b) ? C(a) : C(b);
}
template <typename A, typename B> inline std::common_type_t<A, B> max(A a, B b) {
    using C = std::common_type_t<A, B>;
    if constexpr (std::is_floating_point_v<C>) return std::fmax(C(a), C(b));
    else return C(a) < C(b) ? C(b) : C(a);
}

// Fibers run one at a time and never in the middle of an expression: atomics are plain.
template <typename T> inline T atomicAdd(T* p, T v) { T old = *p; *p = old + v; return old; }
template <typename T> inline T atomicMax(T* p, T v) { T old = *p; *p = max(old, v); return old; }
template <typename T> inline T atomicOr(T* p, T v) { T old = *p; *p = old | v; return old; }

namespace cuda_host {

enum State { RUNNABLE, AT_SYNCTHREADS, AT_WARP, DONE };

struct Copy { char* dst; const char* src; int bytes, src_bytes; };

struct Fiber {
    ucontext_t ctx;
    uint3 tid;
    State state;
    std::vector<std::vector<Copy>> groups;   // committed cp.async groups, oldest first
    std::vector<Copy> open;                  // issued, not yet committed
};

constexpr size_t STACK = 256 * 1024;
constexpr int MAX_THREADS = 1024;

struct Launch {
    std::vector<Fiber> fibers;
    std::vector<char*> stacks;
    ucontext_t sched;
    int current = -1;
    int nthreads = 0;
    const std::function<void()>* body = nullptr;
    const char* kernel = "";
    char error[512] = {0};
    std::vector<std::pair<char*, size_t>> shared;   // the __shared__ variables
    int order = 0;                                  // 0 forward, 1 reverse, 2 shuffled
    char* dynamic = nullptr;                        // the launch's dynamic shared memory
    size_t dynamic_bytes = 0;
    std::vector<char> altstack = std::vector<char>(64 * 1024);
    // per-warp exchange slots of the collective operations
    unsigned long long slots[MAX_THREADS / 32][32][8];
};
inline Launch L;

inline Fiber& me() { return L.fibers[L.current]; }
inline char* dynamic_shared() { return L.dynamic; }
inline void yield(State s) {
    me().state = s;
    swapcontext(&me().ctx, &L.sched);
}
inline int lane() { return L.current % 32; }
inline int warp() { return L.current / 32; }

inline void fail(const char* fmt, const char* what) {
    if (!L.error[0]) std::snprintf(L.error, sizeof L.error, fmt, what);
}

// ---- cp.async -------------------------------------------------------------------------
inline void run_copies(std::vector<Copy>& v) {
    for (auto& c : v) {
        std::memcpy(c.dst, c.src, c.src_bytes);
        std::memset(c.dst + c.src_bytes, 0, c.bytes - c.src_bytes);
    }
    v.clear();
}
inline unsigned next_random();
inline void cp_async(void* dst, const void* src, int bytes, int src_bytes) {
    Copy c{static_cast<char*>(dst), static_cast<const char*>(src), bytes, src_bytes};
    const bool now = L.order == 1 || (L.order == 2 && (next_random() & 1));
    if (now) {
        std::vector<Copy> one{c};
        run_copies(one);
    } else {
        me().open.push_back(c);
    }
}
inline void cp_async_commit() {
    me().groups.push_back(std::move(me().open));
    me().open.clear();
}
inline void cp_async_wait(int pending) {
    auto& g = me().groups;
    while ((int)g.size() > pending) {
        run_copies(g.front());
        g.erase(g.begin());
    }
}

// ---- warp collectives -----------------------------------------------------------------
inline void warp_sync() { yield(AT_WARP); }

template <typename T> inline T shfl(T v, int src_lane) {
    static_assert(sizeof(T) <= 8, "shuffle of a value over 8 bytes");
    unsigned long long u = 0;
    std::memcpy(&u, &v, sizeof(T));
    L.slots[warp()][lane()][0] = u;
    warp_sync();
    u = L.slots[warp()][src_lane & 31][0];
    warp_sync();
    T r;
    std::memcpy(&r, &u, sizeof(T));
    return r;
}

// a tensor-core operand register as the hardware reads it: the top 19 bits (sign, exponent,
// 10 mantissa bits)
inline float tf32_bits(unsigned long long slot) { return __uint_as_float((unsigned)slot & 0xffffe000u); }

// mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32, fragments as in the PTX ISA: lane
// (g = lane / 4, t = lane % 4) holds a0 = A[g][t], a1 = A[g+8][t], a2 = A[g][t+4],
// a3 = A[g+8][t+4]; b0 = B[t][g], b1 = B[t+4][g]; c0..c3 = C[g][2t], C[g][2t+1],
// C[g+8][2t], C[g+8][2t+1]. Each operand is truncated to TF32 (its low 13 bits dropped, as
// the tensor cores do: see tile::to_tf32); the products are exact, summed in float.
inline void mma_m16n8k8_tf32(float* d, const unsigned* a, const unsigned* b) {
    auto& s = L.slots[warp()];
    for (int i = 0; i < 4; ++i) s[lane()][i] = a[i];
    for (int i = 0; i < 2; ++i) s[lane()][4 + i] = b[i];
    warp_sync();
    float A[16][8], B[8][8];
    for (int l = 0; l < 32; ++l) {
        const int g = l / 4, t = l % 4;
        A[g][t] = tf32_bits(s[l][0]);
        A[g + 8][t] = tf32_bits(s[l][1]);
        A[g][t + 4] = tf32_bits(s[l][2]);
        A[g + 8][t + 4] = tf32_bits(s[l][3]);
        B[t][g] = tf32_bits(s[l][4]);
        B[t + 4][g] = tf32_bits(s[l][5]);
    }
    warp_sync();
    const int g = lane() / 4, t = lane() % 4;
    const int rows[4] = {g, g, g + 8, g + 8}, cols[4] = {2 * t, 2 * t + 1, 2 * t, 2 * t + 1};
    for (int v = 0; v < 4; ++v) {
        float acc = d[v];
        for (int k = 0; k < 8; ++k) acc += A[rows[v]][k] * B[k][cols[v]];
        d[v] = acc;
    }
}

// a 32-bit tensor-core register of 16-bit operands: the element of the lower index in the
// low half (f16 or, with BF16, bf16 bits), read exactly
template <bool BF16> inline float half_bits(unsigned long long reg, int high) {
    const unsigned short h = (unsigned short)(reg >> (16 * high));
    return BF16 ? cuda_host_half::from_bf16(h) : cuda_host_half::from_half(h);
}

// mma.sync.aligned.m16n8k16.row.col.f32.{f16,bf16}.{f16,bf16}.f32, fragments as in the PTX
// ISA: lane (g = lane / 4, t = lane % 4), h = 0 (low half) or 1 (high half) of a register:
// a0 = A[g][2t+h], a1 = A[g+8][2t+h], a2 = A[g][2t+8+h], a3 = A[g+8][2t+8+h];
// b0 = B[2t+h][g], b1 = B[2t+8+h][g]; c0..c3 as in m16n8k8. The products of 16-bit operands
// are exact in float; they are summed in float, in order of k, onto the accumulator (the
// hardware's FP32 accumulation order is its own: results agree to FP32 rounding, not bitwise).
template <bool BF16> inline void mma_m16n8k16(float* d, const unsigned* a, const unsigned* b) {
    auto& s = L.slots[warp()];
    for (int i = 0; i < 4; ++i) s[lane()][i] = a[i];
    for (int i = 0; i < 2; ++i) s[lane()][4 + i] = b[i];
    warp_sync();
    float A[16][16], B[16][8];
    for (int l = 0; l < 32; ++l) {
        const int g = l / 4, t = l % 4;
        for (int h = 0; h < 2; ++h) {
            A[g][2 * t + h] = half_bits<BF16>(s[l][0], h);
            A[g + 8][2 * t + h] = half_bits<BF16>(s[l][1], h);
            A[g][2 * t + 8 + h] = half_bits<BF16>(s[l][2], h);
            A[g + 8][2 * t + 8 + h] = half_bits<BF16>(s[l][3], h);
            B[2 * t + h][g] = half_bits<BF16>(s[l][4], h);
            B[2 * t + 8 + h][g] = half_bits<BF16>(s[l][5], h);
        }
    }
    warp_sync();
    const int g = lane() / 4, t = lane() % 4;
    const int rows[4] = {g, g, g + 8, g + 8}, cols[4] = {2 * t, 2 * t + 1, 2 * t, 2 * t + 1};
    for (int v = 0; v < 4; ++v) {
        float acc = d[v];
        for (int k = 0; k < 16; ++k) acc += A[rows[v]][k] * B[k][cols[v]];
        d[v] = acc;
    }
}

// ldmatrix.sync.aligned.m8n8.x4[.trans].shared.b16: lane l gives the address of row l % 8 of
// 8 x 8 matrix l / 8 (16 bytes, 16-byte aligned). Register i of lane l receives matrix i's
// row l / 4, columns 2 (l % 4) and 2 (l % 4) + 1 (low half, high half); with .trans (TRANS)
// its column l / 4, rows 2 (l % 4) and 2 (l % 4) + 1.
template <bool TRANS> inline void ldmatrix_x4(unsigned* r, const void* row) {
    auto& s = L.slots[warp()];
    s[lane()][0] = (unsigned long long)reinterpret_cast<uintptr_t>(row);
    if (reinterpret_cast<uintptr_t>(row) % 16) fail("%s: ldmatrix row address not 16-byte aligned", L.kernel);
    warp_sync();
    const int l = lane(), q = l / 4, p = 2 * (l % 4);
    for (int i = 0; i < 4; ++i) {
        auto at = [&](int rr, int c) {
            return (unsigned)reinterpret_cast<const unsigned short*>(s[8 * i + rr][0])[c];
        };
        r[i] = TRANS ? at(p, q) | at(p + 1, q) << 16 : at(q, p) | at(q, p + 1) << 16;
    }
    warp_sync();
}

// ---- scheduler ------------------------------------------------------------------------
inline void fiber_main() {
    (*L.body)();
    for (auto& g : me().groups) run_copies(g);   // copies never waited for still land
    run_copies(me().open);
    me().groups.clear();
    me().state = DONE;
    // returning resumes L.sched through uc_link
}

// Runs one block; false (with L.error set) on a barrier that can never be passed.
// order: 0 forward, 1 reverse, 2 shuffled (a new permutation for every round between
// barriers, from a generator seeded by the launch)
inline unsigned long long rng_state = 1;
inline unsigned next_random() {                     // xorshift64*
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return (unsigned)((rng_state * 2685821657736338717ULL) >> 32);
}

inline bool run_block(int order) {
    const int n = L.nthreads;
    for (int i = 0; i < n; ++i) {
        Fiber& f = L.fibers[i];
        f.tid = uint3{unsigned(i % blockDim.x), unsigned((i / blockDim.x) % blockDim.y),
                      unsigned(i / (blockDim.x * blockDim.y))};
        f.state = RUNNABLE;
        f.groups.clear();
        f.open.clear();
        getcontext(&f.ctx);
        f.ctx.uc_stack.ss_sp = L.stacks[i];
        f.ctx.uc_stack.ss_size = STACK;
        f.ctx.uc_link = &L.sched;
        makecontext(&f.ctx, fiber_main, 0);
    }
    std::vector<int> perm(n);
    for (int k = 0; k < n; ++k) perm[k] = order == 1 ? n - 1 - k : k;
    for (;;) {
        if (order == 2)
            for (int k = n - 1; k > 0; --k) std::swap(perm[k], perm[next_random() % (k + 1)]);
        for (int k = 0; k < n; ++k) {
            const int i = perm[k];
            if (L.fibers[i].state != RUNNABLE) continue;
            L.current = i;
            threadIdx = L.fibers[i].tid;
            swapcontext(&L.sched, &L.fibers[i].ctx);
        }
        if (L.error[0]) return false;
        // every fiber now waits at a barrier or is done. Warps waiting at a warp-collective
        // operation go on: in forward order all together (the warps advance in lockstep, one
        // collective at a time), otherwise one warp at a time (the last / a random one), which
        // then runs alone to its next __syncthreads: warps drift apart as far as the block's
        // barriers let them, so a write one warp makes before a barrier that another warp's
        // reads needed shows.
        std::vector<int> ready;
        for (int w = 0; w * 32 < n; ++w) {
            int at_warp = 0, done = 0, other = 0;
            for (int i = w * 32; i < std::min(n, w * 32 + 32); ++i) {
                const State s = L.fibers[i].state;
                at_warp += s == AT_WARP;
                done += s == DONE;
                other += s == AT_SYNCTHREADS;
            }
            if (at_warp == 0) continue;
            if (done || other || (w * 32 + 32 > n)) {
                fail("%s: a warp-collective operation reached by only part of a warp", L.kernel);
                return false;
            }
            ready.push_back(w);
        }
        if (!ready.empty()) {
            if (order == 1) ready = {ready.back()};
            else if (order == 2) ready = {ready[next_random() % ready.size()]};
            for (int w : ready)
                for (int i = w * 32; i < w * 32 + 32; ++i) L.fibers[i].state = RUNNABLE;
            continue;
        }
        int waiting = 0, done = 0;
        for (int i = 0; i < n; ++i) {
            waiting += L.fibers[i].state == AT_SYNCTHREADS;
            done += L.fibers[i].state == DONE;
        }
        if (done == n) return true;
        if (done) {
            fail("%s: __syncthreads() waited for threads that had already exited", L.kernel);
            return false;
        }
        for (int i = 0; i < n; ++i) L.fibers[i].state = RUNNABLE;   // all at __syncthreads
    }
}

// ---- crash reports --------------------------------------------------------------------
inline void on_signal(int sig, siginfo_t* info, void*) {
    char msg[400];
    const int k = std::snprintf(
        msg, sizeof msg,
        "\ncuda_host: %s in kernel %s, block (%u, %u, %u), thread (%u, %u, %u), address %p: "
        "%s\n",
        sig == SIGSEGV ? "SIGSEGV" : sig == SIGBUS ? "SIGBUS" : sig == SIGILL ? "SIGILL" : "SIGFPE",
        L.kernel, blockIdx.x, blockIdx.y, blockIdx.z, threadIdx.x, threadIdx.y, threadIdx.z,
        info->si_addr,
        sig == SIGILL ? "a fixed-size array indexed out of bounds or a misaligned vector "
                        "access (-fsanitize=bounds,alignment trap)"
                      : "an access outside the arrays passed to the kernel (guard page)");
    if (write(2, msg, k) < 0) {}
    _exit(86);
}

struct Entry {
    const char* name;
    std::function<void(void**)> invoke;
    int nparams;
    int kind[32];   // 0 integer, 1 floating, 2 bool, 3 pointer to integer, 4 pointer to
                    // floating, 5 other pointer; + 8 for a pointer to const
    int size[32];   // sizeof the parameter, or of the pointee for pointers
};

template <typename P> inline void describe(int& kind, int& size) {
    if constexpr (std::is_pointer_v<P>) {
        using Q = std::remove_pointer_t<P>;
        using E = std::remove_cv_t<Q>;
        kind = (std::is_floating_point_v<E> ? 4 : std::is_integral_v<E> ? 3 : 5) +
               (std::is_const_v<Q> ? 8 : 0);
        if constexpr (std::is_void_v<E>) size = 1;
        else size = sizeof(E);
    } else {
        kind = std::is_same_v<P, bool> ? 2 : std::is_floating_point_v<P> ? 1 : 0;
        size = sizeof(P);
    }
}

template <typename... A, size_t... I>
inline void call(void (*f)(A...), void** args, std::index_sequence<I...>) {
    f(*static_cast<std::remove_cv_t<A>*>(args[I])...);
}

template <typename... A> inline Entry entry(const char* name, void (*f)(A...)) {
    static_assert(sizeof...(A) <= 32, "too many kernel parameters");
    Entry e{name, [f](void** args) { call(f, args, std::index_sequence_for<A...>{}); },
            int(sizeof...(A)), {}, {}};
    int i = 0;
    ((describe<A>(e.kind[i], e.size[i]), ++i), ...);
    return e;
}

inline int launch(const Entry& e, const unsigned* grid, const unsigned* block, void** args,
                  long long shared_bytes, int order, char* error, int error_size) {
    blockDim = dim3{block[0], block[1], block[2]};
    gridDim = dim3{grid[0], grid[1], grid[2]};
    L.nthreads = int(block[0] * block[1] * block[2]);
    L.kernel = e.name;
    L.order = order;
    L.error[0] = 0;
    if (L.nthreads < 1 || L.nthreads > MAX_THREADS) {
        std::snprintf(error, error_size, "%s: %d threads per block", e.name, L.nthreads);
        return 1;
    }
    const size_t page = sysconf(_SC_PAGESIZE);
    while ((int)L.stacks.size() < L.nthreads) {   // each stack above a guard page
        char* p = static_cast<char*>(mmap(nullptr, STACK + page, PROT_READ | PROT_WRITE,
                                          MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
        mprotect(p, page, PROT_NONE);
        L.stacks.push_back(p + page);
    }
    L.fibers.resize(L.nthreads);
    // dynamic shared memory: its end against a PROT_NONE page (an access past it faults),
    // its start 16-byte aligned; poisoned like the static variables before each block
    char* dyn_region = nullptr;
    size_t dyn_size = 0;
    L.dynamic = nullptr;
    L.dynamic_bytes = size_t(shared_bytes);
    if (shared_bytes > 0) {
        const size_t data = (size_t(shared_bytes) + 15 + page - 1) / page * page;
        dyn_size = data + page;
        dyn_region = static_cast<char*>(mmap(nullptr, dyn_size, PROT_READ | PROT_WRITE,
                                             MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
        mprotect(dyn_region + data, page, PROT_NONE);
        L.dynamic = reinterpret_cast<char*>(
            reinterpret_cast<uintptr_t>(dyn_region + data - size_t(shared_bytes)) & ~uintptr_t(15));
    }
    const std::function<void()> body = [&] { e.invoke(args); };
    L.body = &body;

    stack_t ss{}, old_ss{};
    ss.ss_sp = L.altstack.data();
    ss.ss_size = L.altstack.size();
    sigaltstack(&ss, &old_ss);
    struct sigaction sa{}, old[4];
    sa.sa_sigaction = on_signal;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
    const int sigs[4] = {SIGSEGV, SIGBUS, SIGILL, SIGFPE};
    for (int i = 0; i < 4; ++i) sigaction(sigs[i], &sa, &old[i]);

    const long long nblocks = (long long)grid[0] * grid[1] * grid[2];
    rng_state = 0x9E3779B97F4A7C15ULL ^ (unsigned long long)nblocks * 0x100000001B3ULL;
    std::vector<long long> blocks;                  // the block order, when shuffled
    if (order == 2) {
        blocks.resize(nblocks);
        for (long long k = 0; k < nblocks; ++k) blocks[k] = k;
        for (long long k = nblocks - 1; k > 0; --k)
            std::swap(blocks[k], blocks[next_random() % (unsigned long long)(k + 1)]);
    }
    int rc = 0;
    for (long long k = 0; k < nblocks && rc == 0; ++k) {
        const long long b = order == 2 ? blocks[k] : order == 1 ? nblocks - 1 - k : k;
        blockIdx = uint3{unsigned(b % grid[0]), unsigned((b / grid[0]) % grid[1]),
                         unsigned(b / ((long long)grid[0] * grid[1]))};
        for (auto& r : L.shared) std::memset(r.first, 0xff, r.second);
        if (L.dynamic) std::memset(L.dynamic, 0xff, L.dynamic_bytes);
        if (!run_block(order)) rc = 2;
    }
    for (int i = 0; i < 4; ++i) sigaction(sigs[i], &old[i], nullptr);
    sigaltstack(&old_ss, nullptr);
    if (dyn_region) munmap(dyn_region, dyn_size);
    L.dynamic = nullptr;
    if (rc) std::snprintf(error, error_size, "%s", L.error);
    return rc;
}

}  // namespace cuda_host

inline void __syncthreads() { cuda_host::yield(cuda_host::AT_SYNCTHREADS); }
inline void __syncwarp(unsigned = 0xffffffffu) { cuda_host::warp_sync(); }
template <typename T> inline T __shfl_sync(unsigned, T v, int src) { return cuda_host::shfl(v, src); }
template <typename T> inline T __shfl_xor_sync(unsigned, T v, int m) {
    return cuda_host::shfl(v, cuda_host::lane() ^ m);
}
template <typename T> inline T __shfl_down_sync(unsigned, T v, unsigned d) {
    const int src = cuda_host::lane() + int(d);
    const T r = cuda_host::shfl(v, src < 32 ? src : cuda_host::lane());
    return r;
}
template <typename T> inline T __shfl_up_sync(unsigned, T v, unsigned d) {
    const int src = cuda_host::lane() - int(d);
    return cuda_host::shfl(v, src >= 0 ? src : cuda_host::lane());
}

// The table each generated translation unit defines: CUDA_HOST_TABLE(entries).
#define CUDA_HOST_TABLE(entries)                                                           \
    extern "C" int cuda_host_anchor = 1;                                                   \
    extern "C" void cuda_host_set_shared(long long anchor_offset, const long long* offset, \
                                         const long long* size, int n) {                   \
        char* base = reinterpret_cast<char*>(&cuda_host_anchor) - anchor_offset;           \
        cuda_host::L.shared.clear();                                                       \
        for (int i = 0; i < n; ++i) cuda_host::L.shared.emplace_back(base + offset[i], size[i]); \
    }                                                                                      \
    extern "C" int cuda_host_count() { return int(sizeof(entries) / sizeof(entries[0])); } \
    extern "C" const char* cuda_host_name(int i) { return entries[i].name; }               \
    extern "C" int cuda_host_signature(int i, int* kind, int* size) {                      \
        for (int p = 0; p < entries[i].nparams; ++p) {                                     \
            kind[p] = entries[i].kind[p];                                                  \
            size[p] = entries[i].size[p];                                                  \
        }                                                                                  \
        return entries[i].nparams;                                                         \
    }                                                                                      \
    extern "C" int cuda_host_launch(int i, const unsigned* grid, const unsigned* block,    \
                                    void** args, long long shared_bytes, int order,        \
                                    char* error, int n) {                                  \
        return cuda_host::launch(entries[i], grid, block, args, shared_bytes, order, error, n); \
    }
