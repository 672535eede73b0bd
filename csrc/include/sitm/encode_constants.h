// The published numbers behind the post kernel's output encoding and the residual fusion's sRGB decode, written
// once for the C++ side: the per-pixel math (pixel_math.h, CPU and CUDA) and the host code that fills
// EncodeParams (csrc/bindings/encode.cpp) read them here, and the module shows them to Python as the read-only
// mapping sitm_trt._C.ENCODE_CONSTANTS (csrc/bindings/encode.cpp, encode_constants()).
//
// The float64 NumPy reference python/sitm_trt/media/transfer.py keeps its own copy on purpose: it is the
// independent check of the kernels (and is itself checked against colour-science), so it must not take its
// numbers from the code it checks. tests/test_encode_constants.py holds both copies to each other and to the
// values the standards publish.
//
// Scalars only (and double, not long double), so CUDA device code may read them directly; the kernels use
// them as float, which gives the same bits as the float literals the standards' values round to.
#pragma once

namespace sitm::encode {

// SMPTE ST 2084 (PQ), exact rationals; signal 1.0 is kPqPeak cd/m2.
constexpr double kPqM1 = 2610.0 / 16384.0;
constexpr double kPqM2 = 2523.0 / 4096.0 * 128.0;
constexpr double kPqC1 = 3424.0 / 4096.0;
constexpr double kPqC2 = 2413.0 / 4096.0 * 32.0;
constexpr double kPqC3 = 2392.0 / 4096.0 * 32.0;
constexpr double kPqPeak = 10000.0;

// ARIB STD-B67 / ITU-R BT.2100 HLG OETF: a, b = 1 - 4a, c = 0.5 - a ln(4a). c is the 8-decimal value the
// standards print (std::log is not constexpr).
constexpr double kHlgA = 0.17883277;
constexpr double kHlgB = 1.0 - 4.0 * kHlgA;
constexpr double kHlgC = 0.55991073;

// BT.2100 Table 5 note: HLG system gamma = kHlgGamma + kHlgGammaPerDecade * log10(L_W / kHlgGammaRefPeak) for
// a display of nominal peak L_W cd/m2.
constexpr double kHlgGamma = 1.2;
constexpr double kHlgGammaPerDecade = 0.42;
constexpr double kHlgGammaRefPeak = 1000.0;

// Kr, Kg, Kb of BT.709 (BT.709-6 item 3.2): the luma weights when the caller names none.
constexpr double kLumaBt709R = 0.2126;
constexpr double kLumaBt709G = 0.7152;
constexpr double kLumaBt709B = 0.0722;

// BT.2100 Table 9 narrow ("limited") range in 8-bit units, scaled by 2^(bits - 8):
// Y' code = (219 E' + 16) 2^(n-8), Cb/Cr code = (224 E' + 128) 2^(n-8).
constexpr double kNarrowLumaScale = 219.0;
constexpr double kNarrowLumaOffset = 16.0;
constexpr double kNarrowChromaScale = 224.0;
constexpr double kNarrowChromaOffset = 128.0;

// IEC 61966-2-1 sRGB decode: V <= kSrgbDecodeThreshold ? V / kSrgbSlope : ((V + a) / (1 + a))^kSrgbExponent,
// a = kSrgbOffset. The threshold is the standard's 0.04045: the encode threshold 0.0031308 times 12.92, to
// 5 decimals.
constexpr double kSrgbSlope = 12.92;
constexpr double kSrgbDecodeThreshold = 0.04045;
constexpr double kSrgbOffset = 0.055;
constexpr double kSrgbExponent = 2.4;

}  // namespace sitm::encode
