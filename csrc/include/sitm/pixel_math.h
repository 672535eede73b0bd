// Per-pixel math of every sitm-trt kernel, written once and shared by the CPU loops (csrc/cpu) and the CUDA
// kernels (csrc/cuda). Only the loops differ between the two; the CPU path is the reference for the CUDA one.
// The PyTorch reference of the same equations is python/sitm_trt/ops.py.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#include <cuda_fp16.h>
#define SITM_HD __host__ __device__ __forceinline__
#else
#define SITM_HD inline
#endif

namespace sitm {

// ---------------------------------------------------------------------------------------------------------
// Storage types. float16 is carried as its bit pattern (uint16_t) so host code needs no half type.
// ---------------------------------------------------------------------------------------------------------
struct half_t {
  uint16_t bits;
};

SITM_HD uint32_t f32_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
#endif
}

SITM_HD float bits_f32(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, 4);
  return f;
#endif
}

// IEEE binary16 -> binary32, exact for every input (subnormals, infinities and NaN included).
SITM_HD float half_to_float(uint16_t h) {
#if defined(__CUDA_ARCH__)
  return __half2float(__ushort_as_half(h));
#else
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  uint32_t bits = static_cast<uint32_t>(h & 0x7fffu) << 13;  // exponent and mantissa, shifted into place
  const uint32_t exp = bits & (0x1fu << 23);
  bits += (127u - 15u) << 23;  // re-bias the exponent
  if (exp == (0x1fu << 23)) {
    bits += (128u - 16u) << 23;  // infinity / NaN: exponent to all ones
  } else if (exp == 0) {
    bits += 1u << 23;  // zero / subnormal: renormalize with one float subtraction
    const float magnitude = bits_f32(bits) - bits_f32(113u << 23);
    return bits_f32(f32_bits(magnitude) | sign);
  }
  return bits_f32(bits | sign);
#endif
}

// IEEE binary32 -> binary16, round to nearest even, overflow to infinity, NaN stays NaN.
SITM_HD uint16_t float_to_half(float f) {
#if defined(__CUDA_ARCH__)
  return __half_as_ushort(__float2half_rn(f));
#else
  uint32_t u = f32_bits(f);
  const uint32_t sign = u & 0x80000000u;
  u ^= sign;
  uint16_t out;
  if (u >= (143u << 23)) {  // >= 65536: infinity, or NaN (kept quiet); 65520..65536 carry into inf below
    out = (u > (255u << 23)) ? 0x7e00u : 0x7c00u;
  } else if (u < (113u << 23)) {  // result is subnormal or zero: let float addition do the rounding
    const float denorm_magic = bits_f32(((127u - 15u) + (23u - 10u) + 1u) << 23);
    out = static_cast<uint16_t>(f32_bits(bits_f32(u) + denorm_magic) - f32_bits(denorm_magic));
  } else {
    const uint32_t mant_odd = (u >> 13) & 1u;
    u += (static_cast<uint32_t>(15 - 127) << 23) + 0xfffu;  // re-bias and round half up...
    u += mant_odd;                                           // ...or to even on ties
    out = static_cast<uint16_t>(u >> 13);
  }
  return static_cast<uint16_t>(out | (sign >> 16));
#endif
}

template <typename T>
struct Scalar;
template <>
struct Scalar<float> {
  static SITM_HD float load(const float* p, int64_t i) { return p[i]; }
  static SITM_HD void store(float* p, int64_t i, float v) { p[i] = v; }
};
template <>
struct Scalar<half_t> {
  static SITM_HD float load(const half_t* p, int64_t i) { return half_to_float(p[i].bits); }
  static SITM_HD void store(half_t* p, int64_t i, float v) { p[i].bits = float_to_half(v); }
};
template <>
struct Scalar<uint8_t> {
  static SITM_HD float load(const uint8_t* p, int64_t i) { return static_cast<float>(p[i]) / 255.0f; }
};
template <>
struct Scalar<uint16_t> {
  static SITM_HD float load(const uint16_t* p, int64_t i) {
    return static_cast<float>(p[i]) / 65535.0f;  // a true division: bit-exact with the reference
  }
};

// ---------------------------------------------------------------------------------------------------------
// Geometry
// ---------------------------------------------------------------------------------------------------------

// Reflect an index into [0, size) without repeating the edge (numpy/torch "reflect"); a pad wider than the
// image keeps reflecting with period 2 * (size - 1); size 1 repeats its only pixel.
SITM_HD int64_t reflect_index(int64_t i, int64_t size) {
  if (i < size) return i;  // the common case: inside the image
  if (size <= 1) return 0;
  const int64_t period = 2 * (size - 1);
  const int64_t j = i % period;
  return j >= size ? period - j : j;
}

SITM_HD int64_t padded_size(int64_t size, int64_t stride) { return (size + stride - 1) / stride * stride; }

// ---------------------------------------------------------------------------------------------------------
// pre: the luminance-guided multiply (Sec. 3.2)
// ---------------------------------------------------------------------------------------------------------

// LDR sanitizing: clamp to [0, 1]; NaN becomes 0 (fmaxf returns the non-NaN operand).
SITM_HD float clamp01(float v) { return fminf(fmaxf(v, 0.0f), 1.0f); }

struct PrePixel {
  float l_down;  // max(R, G, B): ADEM's guide
  float l_up;    // 1 - min(R, G, B): AUEM's guide
};

SITM_HD PrePixel pre_pixel(float r, float g, float b) {
  return {fmaxf(fmaxf(r, g), b), 1.0f - fminf(fminf(r, g), b)};
}

// ---------------------------------------------------------------------------------------------------------
// fuse (Eq. 7) and curve (Eq. 8)
// ---------------------------------------------------------------------------------------------------------

SITM_HD float fuse_pixel(float m_up, float m_mid, float m_down, float i, float i_up, float i_down) {
  return m_up * i_up + m_mid * i + m_down * i_down;
}

// H = a3 x^3 + a2 x^2 + a1 x + a0, evaluated in Horner form (the PyTorch reference uses the same order).
SITM_HD float curve_eval(float x, float a0, float a1, float a2, float a3) { return ((a3 * x + a2) * x + a1) * x + a0; }

}  // namespace sitm
