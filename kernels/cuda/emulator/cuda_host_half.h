// Host emulation of CUDA's half types (<cuda_fp16.h>, <cuda_bf16.h>), included by cuda_host.h:
// __half, __nv_bfloat16 and their pairs __half2, __nv_bfloat162, with the conversions the
// kernels use. Conversions from float round to nearest even as cvt.rn.f16.f32 /
// cvt.rn.bf16.f32 do, bit for bit: subnormals kept, overflow to infinity, every NaN to the
// canonical 0x7fff (as the CUDA headers' own host path does). Conversions to float are exact.
// __hadd, __hsub, __hmul compute in float and round once: the correctly rounded result, since
// a float rounding of a sum or product of two 16-bit values cannot change its rounding to
// 16 bits (24 >= 2 * 11 + 2 significand bits). The types have no arithmetic operators here:
// an expression such as a + b converts both to float, as a kernel should not rely on.
#pragma once

// needs cuda_host.h's __align__ and float2 (it is included from there)
#include <cstdint>
#include <cstring>

namespace cuda_host_half {
inline unsigned f2u(float f) { unsigned u; std::memcpy(&u, &f, 4); return u; }
inline float u2f(unsigned u) { float f; std::memcpy(&f, &u, 4); return f; }

// float -> binary16, round to nearest even
inline unsigned short to_half(float f) {
    const unsigned x = f2u(f), sign = (x >> 16) & 0x8000u, ax = x & 0x7fffffffu;
    if (ax > 0x7f800000u) return 0x7fffu;                      // NaN
    if (ax >= 0x477ff000u) return (unsigned short)(sign | 0x7c00u);   // >= 65520: infinity
    if (ax < 0x38800000u) {                                    // below 2**-14: subnormal half
        if (ax < 0x33000000u) return (unsigned short)sign;     // <= 2**-25: rounds to zero
        // the value in units of 2**-24, rounded to nearest even
        const unsigned e = ax >> 23, m = (ax & 0x7fffffu) | 0x800000u;
        const unsigned shift = 126 - e;                        // 14..24 for e in 102..112
        const unsigned q = m >> shift, rem = m & ((1u << shift) - 1), half = 1u << (shift - 1);
        const unsigned r = q + (rem > half || (rem == half && (q & 1)));
        return (unsigned short)(sign | r);
    }
    const unsigned q = ((ax >> 13) - (112u << 10)), rem = ax & 0x1fffu;
    const unsigned r = q + (rem > 0x1000u || (rem == 0x1000u && (q & 1)));
    return (unsigned short)(sign | r);                         // a carry may reach infinity
}
inline float from_half(unsigned short h) {
    const unsigned sign = (unsigned)(h & 0x8000u) << 16, e = (h >> 10) & 0x1f, m = h & 0x3ffu;
    if (e == 0x1f) return u2f(sign | 0x7f800000u | (m << 13));   // inf, NaN (payload kept)
    if (e == 0) {                                              // zero, subnormal: m * 2**-24
        const float v = (float)m * u2f(0x33800000u);
        return sign ? -v : v;
    }
    return u2f(sign | ((e + 112) << 23) | (m << 13));
}
// float -> bfloat16, round to nearest even
inline unsigned short to_bf16(float f) {
    const unsigned x = f2u(f);
    if ((x & 0x7fffffffu) > 0x7f800000u) return 0x7fffu;       // NaN
    return (unsigned short)((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);   // carries to inf
}
inline float from_bf16(unsigned short h) { return u2f((unsigned)h << 16); }
}  // namespace cuda_host_half

struct __half_raw { unsigned short x; };
struct __nv_bfloat16_raw { unsigned short x; };

struct __align__(2) __half {
    unsigned short __x;
    __half() = default;
    __half(float f) : __x(cuda_host_half::to_half(f)) {}
    __half(double f) : __x(cuda_host_half::to_half((float)f)) {}   // as CUDA: via float
    __half(int v) : __x(cuda_host_half::to_half((float)v)) {}
    __half(__half_raw r) : __x(r.x) {}
    operator float() const { return cuda_host_half::from_half(__x); }
};
struct __align__(2) __nv_bfloat16 {
    unsigned short __x;
    __nv_bfloat16() = default;
    __nv_bfloat16(float f) : __x(cuda_host_half::to_bf16(f)) {}
    __nv_bfloat16(double f) : __x(cuda_host_half::to_bf16((float)f)) {}
    __nv_bfloat16(int v) : __x(cuda_host_half::to_bf16((float)v)) {}
    __nv_bfloat16(__nv_bfloat16_raw r) : __x(r.x) {}
    operator float() const { return cuda_host_half::from_bf16(__x); }
};
struct __align__(4) __half2 { __half x, y; };
struct __align__(4) __nv_bfloat162 { __nv_bfloat16 x, y; };
typedef __nv_bfloat16 nv_bfloat16;
typedef __nv_bfloat162 nv_bfloat162;

inline __half __ushort_as_half(unsigned short u) { return __half(__half_raw{u}); }
inline unsigned short __half_as_ushort(__half h) { return h.__x; }
inline __nv_bfloat16 __ushort_as_bfloat16(unsigned short u) {
    return __nv_bfloat16(__nv_bfloat16_raw{u});
}
inline unsigned short __bfloat16_as_ushort(__nv_bfloat16 h) { return h.__x; }

inline __half __float2half_rn(float f) { return __half(f); }
inline __half __float2half(float f) { return __half(f); }
inline float __half2float(__half h) { return float(h); }
inline __nv_bfloat16 __float2bfloat16_rn(float f) { return __nv_bfloat16(f); }
inline __nv_bfloat16 __float2bfloat16(float f) { return __nv_bfloat16(f); }
inline float __bfloat162float(__nv_bfloat16 h) { return float(h); }

inline __half2 __halves2half2(__half a, __half b) { return __half2{a, b}; }
inline __half2 __floats2half2_rn(float a, float b) { return __half2{__half(a), __half(b)}; }
inline __half2 __float22half2_rn(float2 v) { return __floats2half2_rn(v.x, v.y); }
inline float2 __half22float2(__half2 v) { return float2{float(v.x), float(v.y)}; }
inline float __low2float(__half2 v) { return float(v.x); }
inline float __high2float(__half2 v) { return float(v.y); }
inline __half __low2half(__half2 v) { return v.x; }
inline __half __high2half(__half2 v) { return v.y; }

inline __nv_bfloat162 __halves2bfloat162(__nv_bfloat16 a, __nv_bfloat16 b) {
    return __nv_bfloat162{a, b};
}
inline __nv_bfloat162 __floats2bfloat162_rn(float a, float b) {
    return __nv_bfloat162{__nv_bfloat16(a), __nv_bfloat16(b)};
}
inline __nv_bfloat162 __float22bfloat162_rn(float2 v) { return __floats2bfloat162_rn(v.x, v.y); }
inline float2 __bfloat1622float2(__nv_bfloat162 v) { return float2{float(v.x), float(v.y)}; }
inline float __low2float(__nv_bfloat162 v) { return float(v.x); }
inline float __high2float(__nv_bfloat162 v) { return float(v.y); }
inline __nv_bfloat16 __low2bfloat16(__nv_bfloat162 v) { return v.x; }
inline __nv_bfloat16 __high2bfloat16(__nv_bfloat162 v) { return v.y; }

inline __half __hadd(__half a, __half b) { return __half(float(a) + float(b)); }
inline __half __hsub(__half a, __half b) { return __half(float(a) - float(b)); }
inline __half __hmul(__half a, __half b) { return __half(float(a) * float(b)); }
inline __nv_bfloat16 __hadd(__nv_bfloat16 a, __nv_bfloat16 b) {
    return __nv_bfloat16(float(a) + float(b));
}
inline __nv_bfloat16 __hsub(__nv_bfloat16 a, __nv_bfloat16 b) {
    return __nv_bfloat16(float(a) - float(b));
}
inline __nv_bfloat16 __hmul(__nv_bfloat16 a, __nv_bfloat16 b) {
    return __nv_bfloat16(float(a) * float(b));
}
