// The half types (float16 = __half, bfloat16 = __nv_bfloat16) in the kernels that are not
// GEMMs: data loaded and stored in the half type, arithmetic in FP32, one rounding on the
// store (docs/tolerances.md's half bounds assume exactly that). A kernel templated on the
// data type T computes in acc_t<T> (float for the half types, T itself for float and
// double, so those instantiations are the FP32 / FP64 kernels unchanged); to_acc is exact,
// from_acc rounds to nearest even. The host emulation brings its own bit-exact types
// (emulator/cuda_host_half.h); NVRTC gets CUDA's.
#pragma once

#ifndef CONVGPU_HOST
#include <cuda_fp16.h>
#include <cuda_bf16.h>
#endif

template <typename T> struct acc_type { using type = T; };
template <> struct acc_type<__half> { using type = float; };
template <> struct acc_type<__nv_bfloat16> { using type = float; };
template <typename T> using acc_t = typename acc_type<T>::type;

template <typename T> __device__ __forceinline__ acc_t<T> to_acc(T v) {
    return static_cast<acc_t<T>>(v);
}
template <typename T> __device__ __forceinline__ T from_acc(acc_t<T> v) { return T(v); }

// eight 16-bit elements, one 16-byte vector load or store (LDG.128 / STG.128)
template <typename T> struct __align__(16) pack8 { T v[8]; };
