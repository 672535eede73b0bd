// The post kernel's output encoding: options -> EncodeParams, and the constants shown to Python (encode.h).
#include "bindings/encode.h"

#include <pybind11/stl.h>

#include <cmath>
#include <vector>

#include "bindings/args.h"
#include "sitm/encode_constants.h"

namespace sitm::bindings {

EncodeParams parse_encoding(const std::string& op, const std::string& transfer, const py::object& matrix,
                            const py::object& luma, double ref_white, double peak, const std::string& code_range,
                            int bits, bool quantized) {
  EncodeParams e{};
  if (transfer == "linear") e.transfer = static_cast<int>(Transfer::Linear);
  else if (transfer == "pq") e.transfer = static_cast<int>(Transfer::PQ);
  else if (transfer == "hlg") e.transfer = static_cast<int>(Transfer::HLG);
  else bad(op, "transfer must be 'linear', 'pq' or 'hlg', got '" + transfer + "'");
  if (!(ref_white > 0.0 && std::isfinite(ref_white))) bad(op, "ref_white must be a positive number of cd/m2, got " + std::to_string(ref_white));
  if (!(peak > 0.0 && peak <= encode::kPqPeak)) bad(op, "peak must be in (0, 10000] cd/m2, got " + std::to_string(peak));
  e.scale = static_cast<float>(ref_white);
  e.peak = static_cast<float>(peak);
  e.hlg_gamma = static_cast<float>(encode::kHlgGamma +
                                   encode::kHlgGammaPerDecade * std::log10(peak / encode::kHlgGammaRefPeak));
  if (!matrix.is_none()) {
    auto m = matrix.cast<std::vector<double>>();
    if (m.size() != 9) bad(op, "matrix must hold 9 numbers (3x3, row-major), got " + std::to_string(m.size()));
    for (int i = 0; i < 9; ++i) {
      if (!std::isfinite(m[i])) bad(op, "matrix must be finite");
      e.matrix[i] = static_cast<float>(m[i]);
    }
    e.convert = 1;
  }
  std::vector<double> k{encode::kLumaBt709R, encode::kLumaBt709G, encode::kLumaBt709B};  // until told otherwise
  if (!luma.is_none()) {
    k = luma.cast<std::vector<double>>();
    if (k.size() != 3 || !(k[0] > 0 && k[0] < 1 && k[2] > 0 && k[2] < 1))
      bad(op, "luma must be 3 coefficients Kr, Kg, Kb in (0, 1)");
  }
  for (int i = 0; i < 3; ++i) e.luma[i] = static_cast<float>(k[i]);
  e.cb_scale = static_cast<float>(0.5 / (1.0 - k[2]));
  e.cr_scale = static_cast<float>(0.5 / (1.0 - k[0]));
  if (quantized) {
    if (bits < 8 || bits > 16) bad(op, "bits must be 8..16, got " + std::to_string(bits));
    const double top = std::ldexp(1.0, bits) - 1.0, unit = std::ldexp(1.0, bits - 8);
    e.q_top = static_cast<float>(top);
    if (code_range == "limited") {  // BT.2100 Table 9 "narrow": (219 E' + 16) 2^(n-8), (224 E' + 128) 2^(n-8)
      e.q_mul = static_cast<float>(encode::kNarrowLumaScale * unit);
      e.q_add = static_cast<float>(encode::kNarrowLumaOffset * unit);
      e.qc_mul = static_cast<float>(encode::kNarrowChromaScale * unit);
      e.qc_add = static_cast<float>(encode::kNarrowChromaOffset * unit);
    } else if (code_range == "full") {  // (2^n - 1) E', (2^n - 1) E' + 2^(n-1)
      e.q_mul = e.qc_mul = static_cast<float>(top);
      e.q_add = 0.0f, e.qc_add = static_cast<float>(std::ldexp(1.0, bits - 1));
    } else {
      bad(op, "code_range must be 'limited' or 'full', got '" + code_range + "'");
    }
  }
  return e;
}

py::object encode_constants() {
  using namespace encode;
  py::dict d;
  d["pq_m1"] = kPqM1;
  d["pq_m2"] = kPqM2;
  d["pq_c1"] = kPqC1;
  d["pq_c2"] = kPqC2;
  d["pq_c3"] = kPqC3;
  d["pq_peak"] = kPqPeak;
  d["hlg_a"] = kHlgA;
  d["hlg_b"] = kHlgB;
  d["hlg_c"] = kHlgC;
  d["hlg_gamma"] = kHlgGamma;
  d["hlg_gamma_per_decade"] = kHlgGammaPerDecade;
  d["hlg_gamma_ref_peak"] = kHlgGammaRefPeak;
  d["luma_bt709"] = py::make_tuple(kLumaBt709R, kLumaBt709G, kLumaBt709B);
  d["narrow_luma_scale"] = kNarrowLumaScale;
  d["narrow_luma_offset"] = kNarrowLumaOffset;
  d["narrow_chroma_scale"] = kNarrowChromaScale;
  d["narrow_chroma_offset"] = kNarrowChromaOffset;
  d["srgb_slope"] = kSrgbSlope;
  d["srgb_decode_threshold"] = kSrgbDecodeThreshold;
  d["srgb_offset"] = kSrgbOffset;
  d["srgb_exponent"] = kSrgbExponent;
  return py::module_::import("types").attr("MappingProxyType")(d);
}

}  // namespace sitm::bindings
