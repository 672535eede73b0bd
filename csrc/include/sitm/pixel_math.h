// Per-pixel math of every sitm-trt kernel, written once and shared by the CPU loops (csrc/cpu) and the CUDA
// kernels (csrc/cuda). Only the loops differ between the two; the CPU path is the reference for the CUDA one.
// The PyTorch reference of the same equations is python/sitm_trt/reference.py; the standards' constants are in
// encode_constants.h.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "sitm/encode_constants.h"

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

// Max / min of two floats that are never NaN (the pre pass's values are sanitized first). On the host these
// are plain comparisons that the compiler inlines and vectorizes: fmaxf/fminf are libm calls on x86-64
// without SSE4.1 (they must handle NaN), which made the CPU pre pass several times slower than a copy.
SITM_HD float max_sanitized(float a, float b) {
#if defined(__CUDA_ARCH__)
  return fmaxf(a, b);
#else
  return a > b ? a : b;
#endif
}
SITM_HD float min_sanitized(float a, float b) {
#if defined(__CUDA_ARCH__)
  return fminf(a, b);
#else
  return a < b ? a : b;
#endif
}

// r, g, b: sanitized (clamped to [0, 1], no NaN).
SITM_HD PrePixel pre_pixel(float r, float g, float b) {
  return {max_sanitized(max_sanitized(r, g), b), 1.0f - min_sanitized(min_sanitized(r, g), b)};
}

// One output pixel of the pre pass: read source pixel (n, sy, sx) - float NCHW (clamped to [0, 1], NaN -> 0)
// or uint8/uint16 NHWC (normalized) - and write I, I*L_down, I*L_up and both guides at plane offset `i`
// (image planes) / `ig` (guide planes) of the (N, 3|2, hp, wp) outputs.
template <typename TI, typename TO, bool HWC>
SITM_HD void pre_pixel_io(const TI* src, int64_t n, int64_t sy, int64_t sx, int64_t h, int64_t w, TO* image,
                          TO* down, TO* up, TO* guide, int64_t i, int64_t ig, int64_t plane) {
  float r, g, b;
  if constexpr (HWC) {
    const int64_t s = ((n * h + sy) * w + sx) * 3;
    r = Scalar<TI>::load(src, s);
    g = Scalar<TI>::load(src, s + 1);
    b = Scalar<TI>::load(src, s + 2);
  } else {
    const int64_t s = (n * 3 * h + sy) * w + sx, cs = h * w;
    r = clamp01(Scalar<TI>::load(src, s));
    g = clamp01(Scalar<TI>::load(src, s + cs));
    b = clamp01(Scalar<TI>::load(src, s + 2 * cs));
  }
  const PrePixel p = pre_pixel(r, g, b);
  Scalar<TO>::store(image, i, r);
  Scalar<TO>::store(image, i + plane, g);
  Scalar<TO>::store(image, i + 2 * plane, b);
  Scalar<TO>::store(down, i, r * p.l_down);
  Scalar<TO>::store(down, i + plane, g * p.l_down);
  Scalar<TO>::store(down, i + 2 * plane, b * p.l_down);
  Scalar<TO>::store(up, i, r * p.l_up);
  Scalar<TO>::store(up, i + plane, g * p.l_up);
  Scalar<TO>::store(up, i + 2 * plane, b * p.l_up);
  Scalar<TO>::store(guide, ig, p.l_down);
  Scalar<TO>::store(guide, ig + plane, p.l_up);
}

// ---------------------------------------------------------------------------------------------------------
// fuse (Eq. 7) and curve (Eq. 8)
// ---------------------------------------------------------------------------------------------------------

SITM_HD float fuse_pixel(float m_up, float m_mid, float m_down, float i, float i_up, float i_down) {
  return m_up * i_up + m_mid * i + m_down * i_down;
}

// H = a3 x^3 + a2 x^2 + a1 x + a0, evaluated in Horner form (the PyTorch reference uses the same order).
SITM_HD float curve_eval(float x, float a0, float a1, float a2, float a3) { return ((a3 * x + a2) * x + a1) * x + a0; }

// ---------------------------------------------------------------------------------------------------------
// pow_scaled: 2^(e (log2(x) + k) + s) = (x 2^k)^e 2^s for x = 0 or a normal float, an integer k and e >= 0,
// in plain float arithmetic and bit casts, so that the CPU loops vectorize it (a libm powf call is scalar and
// blocks vectorization) and CUDA runs the same math. The residual fusion's decode is one such pow per value
// (decode_gamma): ((v + a) / (1 + a))^(2.4 gamma) = (v + a)^(2.4 gamma) 2^(-2.4 gamma log2(1 + a)), and
// (v / 12.92)^gamma = (v 2^24 2^-28)^gamma 2^(gamma log2(16 / 12.92)): no division rounds the base, and the
// exact scaling by 2^24 makes a subnormal v a normal float.
// Method: x = m 2^E, m in [sqrt(1/2), sqrt(2)); log2(m) = t P(t^2), t = (m - 1) / (m + 1); y = e (E + k +
// log2 m) + s = n + f, n an integer, |f| <= 1/2; 2^f = 1 + f Q(f); the result 2^n 2^f. P and Q are minimax
// fits (relative error 6.9e-10 and 2.0e-9). e comes split (PowExponent): e = hi + lo with hi of at most 16
// significant bits, so hi (E + k) is exact: the large part of y carries no rounding error (an exponent rounded
// to float, and y rounded to float, would be off by up to 2^-24 |y|, |y| up to 150 e); |s| stays below
// e / 2, so its own rounding is small. Valid for |E + k| <= 160 and e <= 2^14 (every product and sum then
// stays below 2^22, where round_small is exact): prepare_curve caps gamma for that.
// Max relative error, measured against double over every float32 x in [2^-30, 1] for e = gamma and 2.4 gamma,
// gamma = exp(k), |k| <= 0.5: 4.6e-7 (6.3 ulp, at e = 3.96), 2.7e-7 (3.8 ulp) for e <= 2.4, 1.0e-7 at e = 1;
// with and without FMA (docs/kernels.md, "Speed (CPU)", also for decode_gamma's).
// x = 0 gives exactly 0; a subnormal result is rounded once. NaN x is not an input (the callers clamp).
// ---------------------------------------------------------------------------------------------------------

// c ? a : b as bit operations: a select the compiler keeps branch-free. With a float ternary GCC may move
// the computation of a or b into a branch (it does not speculate float operations that might trap), which
// keeps the CPU loops from vectorizing.
SITM_HD float select_bits(bool c, float a, float b) {
  const uint32_t mask = 0u - static_cast<uint32_t>(c);
  return bits_f32((f32_bits(a) & mask) | (f32_bits(b) & ~mask));
}

// round-to-nearest-even of |v| < 2^22, as a float, and the integer in its low bits (no float-to-int
// conversion: well-defined for every input, NaN included)
SITM_HD float round_small(float v, int32_t& n) {
  constexpr float magic = 12582912.0f;  // 1.5 * 2^23: the sum's last mantissa bit has weight 1
  const float sum = v + magic;
  n = static_cast<int32_t>(f32_bits(sum) - f32_bits(magic));
  return sum - magic;
}

// The constants of one pow_scaled: e = hi + lo (hi with at most 16 significant bits, |lo| < 2^-15 e),
// full = float(e), the shift s and the integer k.
struct PowExponent {
  float hi, lo, full, s;
  int32_t k;
};

SITM_HD PowExponent pow_exponent(double e, double s, int32_t k) {
  const float hi = bits_f32(f32_bits(static_cast<float>(e)) & 0xffff8000u);  // 1 + 15 mantissa bits
  return {hi, static_cast<float>(e - static_cast<double>(hi)), static_cast<float>(e), static_cast<float>(s), k};
}

SITM_HD float pow_scaled(float x, const PowExponent& e) {
  constexpr float two64 = 18446744073709551616.0f;
  // log2(m) = t (c0 + c1 t^2 + c2 t^4 + c3 t^6), minimax for t^2 in [0, 0.02944]
  constexpr float c0 = 2.88539008f, c1 = 0.961798848f, c2 = 0.576714394f, c3 = 0.431735620f;
  // 2^f = 1 + f (d1 + d2 f + ... + d6 f^5), minimax for f in [-1/2, 1/2]; Estrin's scheme (shorter chains)
  constexpr float d1 = 0.693147203f, d2 = 0.240226479f, d3 = 0.0555033247f, d4 = 0.00961843739f;
  constexpr float d5 = 0.00133988745f, d6 = 0.000153533504f;
  constexpr uint32_t sqrt_half = 0x3f3504f3u;  // the bits of sqrt(1/2)

  // x = m 2^E with m in [sqrt(1/2), sqrt(2)): offset the bits by sqrt(1/2)'s, so that the exponent field is E
  // (an arithmetic shift) and the mantissa, offset back, is m
  const int32_t u = static_cast<int32_t>(f32_bits(x) - sqrt_half);
  const float m = bits_f32((static_cast<uint32_t>(u) & 0x007fffffu) + sqrt_half);
  const float ek = static_cast<float>((u >> 23) + e.k);  // E + k
  const float t = (m - 1.0f) / (m + 1.0f), t2 = t * t;
  const float l = t * (c0 + t2 * (c1 + t2 * (c2 + t2 * c3)));  // log2(m), |l| <= 1/2
  // y = n1 + r: hi (E + k) is exact, n1 its nearest integer
  const float ph = e.hi * ek;
  int32_t n1, n2;
  const float r = (ph - round_small(ph, n1)) + ((e.lo * ek + e.full * l) + e.s);
  const float f = r - round_small(r, n2);  // |f| <= 1/2
  const float f2 = f * f;
  const float p = 1.0f + f * ((d1 + d2 * f) + f2 * ((d3 + d4 * f) + f2 * (d5 + d6 * f)));
  // 2^n p as (2^(n + 64) p) 2^-64: exact until the last product, which rounds a subnormal result once;
  // n below -190 gives 0 whatever p is. The sum wraps (never UB) for NaN exponents, which give NaN.
  int32_t n = static_cast<int32_t>(static_cast<uint32_t>(n1) + static_cast<uint32_t>(n2));
  n = n < -190 ? -190 : (n > 63 ? 63 : n);
  const float v = (p * bits_f32(static_cast<uint32_t>(n + 64 + 127) << 23)) * (1.0f / two64);
  return select_bits(x > 0.0f, v, 0.0f);
}

// ---------------------------------------------------------------------------------------------------------
// The residual fusion (docs/model.md, "The residual fusion"): the three images are decoded to linear light
// with the inverse sRGB curve raised to a per-image power gamma = exp(k[2]), and merged in radiance with the
// per-image exposure gains 2^k[0] (exposure-up image) and 2^k[1] (exposure-down image):
//   HDR = M_mid L(I) + M_up 2^k0 L(I_up) + M_down 2^k1 L(I_down),   L(v) = srgb^-1(clamp(v, 0, 1))^gamma.
// k[3] is unused (0). With masks (0, 1, 0) and k[2] = 0 the result is srgb^-1(I) (to float rounding): the
// linearized input, the network's starting point. An image whose mask is 0 contributes exactly 0.
// ---------------------------------------------------------------------------------------------------------

// The fusion modes of the post kernel: the paper's Eq. 7 + Eq. 8, or the residual fusion above.
enum class Fusion : int { Paper = 0, Residual = 1 };

// One image's (and channel's) curve, prepared once from its four coefficients, not per pixel: the paper's
// a0..a3, or the residual fusion's exposure gains 2^k0, 2^k1 and the pow_scaled constants of L's two pieces
// (decode_gamma), computed in double from the float gamma = exp(k2).
struct PixelCurve {
  Fusion fusion;
  float k[4];
  float gain_up, gain_down;
  PowExponent e_linear, e_power;
};

SITM_HD PixelCurve prepare_curve(Fusion fusion, const float k[4]) {
  // log2(16 / kSrgbSlope) = 4 - log2(12.92) and log2(1 + kSrgbOffset) = log2(1.055), to double precision
  constexpr double log2_16_slope = 0.30846583508079979, log2_scale = 0.077242998932460438;
  static_assert(encode::kSrgbSlope == 12.92 && encode::kSrgbOffset == 0.055, "update the two logarithms");
  // pow_scaled's exponent stays below 2^14: gamma is capped at 4096 (k2 = 8.3, far beyond a plausible
  // network output; L(v) at gamma = 4096 is below 1e-20 for v <= 0.995, and only v above that would differ)
  constexpr float max_gamma = 4096.0f;
  PixelCurve c{fusion, {k[0], k[1], k[2], k[3]}, 1.0f, 1.0f, {}, {}};
  if (fusion == Fusion::Residual) {
    c.gain_up = exp2f(k[0]);
    c.gain_down = exp2f(k[1]);
    const float gamma = k[2] == 0.0f ? 1.0f : expf(k[2]);
    const double g = gamma > max_gamma ? max_gamma : gamma;  // NaN stays NaN (and gives NaN)
    const double ge = encode::kSrgbExponent * g;
    c.e_linear = pow_exponent(g, g * log2_16_slope, -28);  // (v 2^24 2^-28)^g 2^(g log2(16 / 12.92))
    c.e_power = pow_exponent(ge, -ge * log2_scale, 0);     // (v + a)^ge 2^(-ge log2(1 + a))
  }
  return c;
}

// clamp01 with the same values (NaN -> 0) from comparisons and select_bits on the host, where fminf/fmaxf
// are libm calls that block vectorization (see max_sanitized). (A ternary that yields a constant lets GCC
// specialize the code after it for that constant, a branch that keeps the loop from vectorizing.)
SITM_HD float clamp01_select(float v) {
#if defined(__CUDA_ARCH__)
  return clamp01(v);
#else
  v = select_bits(v > 0.0f, v, 0.0f);
  return select_bits(v < 1.0f, v, 1.0f);
#endif
}

// L(v) = srgb^-1(clamp(v, 0, 1))^gamma with one pow_scaled (see there for the two pieces), gamma = 1
// included. Branch-free (the pieces' operands are selected), so the CPU loop vectorizes.
SITM_HD float decode_gamma(float v, const PixelCurve& c) {
  constexpr float threshold = static_cast<float>(encode::kSrgbDecodeThreshold);
  constexpr float offset = static_cast<float>(encode::kSrgbOffset), two24 = 16777216.0f;
  v = clamp01_select(v);
  const bool linear = v <= threshold;
  const PowExponent& a = c.e_linear;
  const PowExponent& b = c.e_power;
  const PowExponent e{select_bits(linear, a.hi, b.hi), select_bits(linear, a.lo, b.lo),
                      select_bits(linear, a.full, b.full), select_bits(linear, a.s, b.s), linear ? a.k : b.k};
  return pow_scaled(select_bits(linear, v * two24, v + offset), e);
}

// The blend of the three decoded images l = L(I), L(I_up), L(I_down). Branch-free: an image whose mask is 0
// adds exactly 0 (even where its gain overflowed to infinity).
SITM_HD float residual_blend(float m_up, float m_mid, float m_down, float l_mid, float l_up, float l_down,
                             const PixelCurve& c) {
  const float v = select_bits(m_mid != 0.0f, m_mid * l_mid, 0.0f);
  return (v + select_bits(m_up != 0.0f, m_up * (c.gain_up * l_up), 0.0f)) +
         select_bits(m_down != 0.0f, m_down * (c.gain_down * l_down), 0.0f);
}

// The three decodes are computed whatever the masks (the shipped weights' masks are dense).
SITM_HD float residual_pixel(float m_up, float m_mid, float m_down, float i, float i_up, float i_down,
                             const PixelCurve& c) {
  return residual_blend(m_up, m_mid, m_down, decode_gamma(i, c), decode_gamma(i_up, c), decode_gamma(i_down, c), c);
}

// One output channel of the post kernel for either fusion.
SITM_HD float hdr_pixel(const PixelCurve& c, float m_up, float m_mid, float m_down, float i, float i_up,
                        float i_down) {
  if (c.fusion == Fusion::Residual) return residual_pixel(m_up, m_mid, m_down, i, i_up, i_down, c);
  return curve_eval(fuse_pixel(m_up, m_mid, m_down, i, i_up, i_down), c.k[0], c.k[1], c.k[2], c.k[3]);
}

// One step of the exponential moving average of the curve coefficients over video frames:
// a * state + (1 - a) * x, and exactly x when a == 0 (a reset: the old state, possibly uninitialized memory,
// is not read into the result).
SITM_HD float ema_step(float state, float x, float a) { return a == 0.0f ? x : a * state + (1.0f - a) * x; }

// ---------------------------------------------------------------------------------------------------------
// Output encoding (post, for displays and video encoders): gamut matrix, display light, SMPTE ST 2084 (PQ)
// or ARIB STD-B67 / BT.2100 HLG, Y'CbCr and integer code values. The NumPy reference is
// python/sitm_trt/media/transfer.py; the host fills EncodeParams (csrc/bindings/encode.cpp) from the Python
// wrapper's arguments and encode_constants.h.
// ---------------------------------------------------------------------------------------------------------

enum class Transfer : int { Linear = 0, PQ = 1, HLG = 2 };

struct EncodeParams {
  int transfer;       // Transfer
  int convert;        // 1: multiply by `matrix` (linear BT.709 -> output primaries), 0: keep BT.709
  float matrix[9];    // row-major 3x3
  float luma[3];      // Kr, Kg, Kb of the output primaries (HLG's OOTF luminance and Y'CbCr)
  float cb_scale;     // 0.5 / (1 - Kb)
  float cr_scale;     // 0.5 / (1 - Kr)
  float scale;        // cd/m2 of linear 1.0 (the SDR reference white)
  float peak;         // cd/m2 of the display peak: display light is clipped to [0, peak]
  float hlg_gamma;    // HLG system gamma for `peak` (BT.2100: 1.2 + 0.42 log10(peak / 1000))
  float q_mul, q_add; // code = round(v * q_mul + q_add) for Y' (and R'G'B')
  float qc_mul, qc_add;  // the same for Cb, Cr
  float q_top;        // largest code, 2^bits - 1
};

// SMPTE ST 2084 inverse EOTF: y = luminance / 10000 cd/m2 in [0, 1] -> signal E' in [0, 1].
SITM_HD float pq_inverse_eotf(float y) {
  constexpr float m1 = static_cast<float>(encode::kPqM1), m2 = static_cast<float>(encode::kPqM2);
  constexpr float c1 = static_cast<float>(encode::kPqC1), c2 = static_cast<float>(encode::kPqC2);
  constexpr float c3 = static_cast<float>(encode::kPqC3);
  const float p = powf(y, m1);
  return powf((c1 + c2 * p) / (1.0f + c3 * p), m2);
}

// ARIB STD-B67 / BT.2100 HLG OETF: scene light e in [0, 1] -> signal E' in [0, 1].
SITM_HD float hlg_oetf(float e) {
  constexpr float a = static_cast<float>(encode::kHlgA), b = static_cast<float>(encode::kHlgB);
  constexpr float c = static_cast<float>(encode::kHlgC);
  return e <= 1.0f / 12.0f ? sqrtf(3.0f * e) : a * logf(12.0f * e - b) + c;
}

// Display light of one channel in cd/m2: scaled, clipped to [0, peak]; NaN becomes 0.
SITM_HD float display_light(float v, const EncodeParams& e) { return fminf(fmaxf(v * e.scale, 0.0f), e.peak); }

// Linear BT.709 (1.0 = reference white) -> the output signal, in place. `light` receives max(R, G, B) of the
// display light in cd/m2 (CTA-861.3's per-pixel light level; for Linear the unclipped scaled value).
// A NaN channel counts as 0 for PQ/HLG (before the gamut matrix, so it does not spread to the other
// channels); Linear keeps NaN in the output, like the plain post, but not in `light`.
SITM_HD void encode_rgb(const EncodeParams& e, float& r, float& g, float& b, float& light) {
  if (e.transfer != static_cast<int>(Transfer::Linear)) {
    r = r == r ? r : 0.0f;
    g = g == g ? g : 0.0f;
    b = b == b ? b : 0.0f;
  }
  if (e.convert) {
    const float* m = e.matrix;
    const float r2 = m[0] * r + m[1] * g + m[2] * b;
    const float g2 = m[3] * r + m[4] * g + m[5] * b;
    const float b2 = m[6] * r + m[7] * g + m[8] * b;
    r = r2, g = g2, b = b2;
  }
  if (e.transfer == static_cast<int>(Transfer::Linear)) {
    light = fmaxf(fmaxf(fmaxf(r, g), b) * e.scale, 0.0f);  // fmaxf skips NaN; all NaN -> 0
    return;
  }
  const float R = display_light(r, e), G = display_light(g, e), B = display_light(b, e);
  light = fmaxf(fmaxf(R, G), B);
  if (e.transfer == static_cast<int>(Transfer::PQ)) {
    constexpr float pq_peak = static_cast<float>(encode::kPqPeak);
    r = pq_inverse_eotf(R / pq_peak);
    g = pq_inverse_eotf(G / pq_peak);
    b = pq_inverse_eotf(B / pq_peak);
    return;
  }
  // HLG: the inverse OOTF of a display with nominal peak `peak` and black 0 (BT.2100 Table 5),
  // E = F_D / peak * (Y_D / peak)^((1 - gamma) / gamma), then the OETF.
  const float y = e.luma[0] * R + e.luma[1] * G + e.luma[2] * B;
  // y / peak can round to 0 for a y > 0 (a subnormal light): powf(0, negative) is inf and 0 * inf NaN, which
  // fminf(., 1) turned into peak white; such a pixel is black, as in the float64 reference
  const float ratio = y / e.peak;
  const float k = ratio > 0.0f ? powf(ratio, (1.0f - e.hlg_gamma) / e.hlg_gamma) / e.peak : 0.0f;
  r = hlg_oetf(fminf(R * k, 1.0f));
  g = hlg_oetf(fminf(G * k, 1.0f));
  b = hlg_oetf(fminf(B * k, 1.0f));
}

// Integer code value, round half up, clamped to [0, top]; NaN becomes 0.
SITM_HD float quantize(float v, float mul, float add, float top) {
  return fminf(fmaxf(floorf(v * mul + add + 0.5f), 0.0f), top);
}

// Non-constant-luminance Y'CbCr (BT.709 / BT.2020 form) of a non-linear R'G'B'.
SITM_HD void rgb_to_ycbcr(const EncodeParams& e, float r, float g, float b, float& y, float& cb, float& cr) {
  y = e.luma[0] * r + e.luma[1] * g + e.luma[2] * b;
  cb = (b - y) * e.cb_scale;
  cr = (r - y) * e.cr_scale;
}

}  // namespace sitm
