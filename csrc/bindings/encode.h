// The post kernel's output encoding, as the bindings receive it, and the standards' constants it is built
// from (sitm/encode_constants.h), shown to Python.
#pragma once

#include <pybind11/pybind11.h>

#include <string>

#include "sitm/pixel_math.h"

namespace sitm::bindings {

// Checks the encoding options of post (from the Python wrapper sitm_trt.kernels.post, which takes the gamut
// matrix and luma coefficients from sitm_trt.media.transfer) and turns them into the kernels' EncodeParams.
// `matrix`: None or 9 numbers (linear BT.709 -> output primaries, row-major); `luma`: None (BT.709) or
// Kr, Kg, Kb. `bits` and `code_range` matter only when `quantized` (integer code values).
EncodeParams parse_encoding(const std::string& op, const std::string& transfer, const pybind11::object& matrix,
                            const pybind11::object& luma, double ref_white, double peak,
                            const std::string& code_range, int bits, bool quantized);

// sitm/encode_constants.h as a read-only mapping (types.MappingProxyType) of name -> float (luma_bt709: a
// tuple of three), for sitm_trt._C.ENCODE_CONSTANTS.
pybind11::object encode_constants();

}  // namespace sitm::bindings
