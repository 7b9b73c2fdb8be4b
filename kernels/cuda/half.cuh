// The 16-bit floating types, float16 = __half and bfloat16 = __nv_bfloat16: CUDA's
// <cuda_fp16.h> and <cuda_bf16.h> on the device (NVRTC finds them on the include path
// sources.options() gives), the host emulation's own bit-exact ones
// (emulator/cuda_host_half.h) under CONVGPU_HOST.
//   - The kernels that are not GEMMs load and store the half type and compute in acc_t<T>
//     (float for the half types, T itself for float and double, so those instantiations
//     are the FP32 / FP64 kernels unchanged); to_acc is exact, from_acc rounds to nearest
//     even: one rounding on the store, as docs/tolerances.md's half bounds assume.
//   - Half16<T> says how a tensor-core kernel templated on T converts (to float exactly,
//     from float to nearest even, in pairs for 4-byte stores) and which mma.sync operand
//     type T is.
#pragma once
#ifndef CONVGPU_HOST
#include <cuda_fp16.h>
#include <cuda_bf16.h>
#endif

template <typename T> struct acc_type { using type = T; };
template <> struct acc_type<__half> { using type = float; };
template <> struct acc_type<__nv_bfloat16> { using type = float; };
template <typename T> using acc_t = typename acc_type<T>::type;
// the 16-bit types: stored in 16 bits, computed in float
template <typename T> constexpr bool is_half = sizeof(acc_t<T>) > sizeof(T);

template <typename T> __device__ __forceinline__ acc_t<T> to_acc(T v) {
    return static_cast<acc_t<T>>(v);
}
template <typename T> __device__ __forceinline__ T from_acc(acc_t<T> v) { return T(v); }

// V values of T moved as one vector: V = 16 / sizeof(T) (float4, double2, 8 halves), or V = 1.
// (the 16-bit types move as float4 too: loads and stores copy bits, no arithmetic)
template <typename T> struct Vec16 { using type = float4; };
template <> struct Vec16<float> { using type = float4; };
template <> struct Vec16<double> { using type = double2; };
template <typename T, int V> struct alignas(V * sizeof(T)) Pack { T v[V]; };
template <typename T, int V> __device__ __forceinline__ Pack<T, V> load_pack(const T* p) {
    Pack<T, V> r;
    if constexpr (V == 1) {
        r.v[0] = *p;
    } else {
        static_assert(V * sizeof(T) == 16, "a pack is one value or 16 bytes");
        using W = typename Vec16<T>::type;
        *reinterpret_cast<W*>(r.v) = __ldg(reinterpret_cast<const W*>(p));
    }
    return r;
}
template <typename T, int V> __device__ __forceinline__ void store_pack(T* p, const Pack<T, V>& r) {
    if constexpr (V == 1) {
        *p = r.v[0];
    } else {
        using W = typename Vec16<T>::type;
        *reinterpret_cast<W*>(p) = *reinterpret_cast<const W*>(r.v);
    }
}

template <typename T> struct Half16;
template <> struct Half16<__half> {
    static constexpr bool BF16 = false;
    using Pair = __half2;
    static __device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
    static __device__ __forceinline__ __half from_float(float v) { return __float2half_rn(v); }
    static __device__ __forceinline__ Pair pair(float lo, float hi) {
        return __floats2half2_rn(lo, hi);
    }
};
template <> struct Half16<__nv_bfloat16> {
    static constexpr bool BF16 = true;
    using Pair = __nv_bfloat162;
    static __device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
    static __device__ __forceinline__ __nv_bfloat16 from_float(float v) {
        return __float2bfloat16_rn(v);
    }
    static __device__ __forceinline__ Pair pair(float lo, float hi) {
        return __floats2bfloat162_rn(lo, hi);
    }
};
