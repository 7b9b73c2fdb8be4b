// The 16-bit floating types of the tensor-core kernels: CUDA's <cuda_fp16.h> and <cuda_bf16.h>
// on the device (NVRTC finds them on the include path sources.options() gives), the host
// emulation's own (emulator/cuda_host_half.h) under CONVGPU_HOST. Half16<T> says how a kernel
// templated on T = __half or __nv_bfloat16 converts: to float exactly, from float rounded to
// nearest even, in pairs for 4-byte stores, and which mma.sync operand type T is.
#pragma once
#ifndef CONVGPU_HOST
#include <cuda_fp16.h>
#include <cuda_bf16.h>
#endif

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
