// Argument checks shared by the bindings (args.h).
#include "bindings/args.h"

#include <stdexcept>

namespace sitm::bindings {

void bad(const std::string& op, const std::string& msg) { throw std::invalid_argument(op + ": " + msg); }

DType parse_float_dtype(const std::string& op, const std::string& s) {
  if (s == "float32") return DType::F32;
  if (s == "float16") return DType::F16;
  bad(op, "dtype must be 'float32' or 'float16', got '" + s + "'");
}

DType parse_any_dtype(const std::string& op, const std::string& s) {
  if (s == "uint8") return DType::U8;
  if (s == "uint16") return DType::U16;
  if (s == "float32" || s == "float16") return parse_float_dtype(op, s);
  bad(op, "dtype must be float32, float16, uint8 or uint16, got '" + s + "'");
}

void expect_float(const std::string& op, const char* arg, const TensorView& v, std::vector<int64_t> shape,
                  const char* pattern) {
  bool ok = is_float(v.dtype) && v.shape.size() == shape.size();
  for (size_t i = 0; ok && i < shape.size(); ++i) ok = shape[i] < 0 || shape[i] == v.shape[i];
  if (!ok) {
    for (size_t i = 0; i < shape.size() && i < v.shape.size(); ++i)
      if (shape[i] < 0) shape[i] = v.shape[i];
    const bool dims_known = shape.size() == v.shape.size();
    bad(op, std::string(arg) + " must be float32 or float16 with shape " +
                (dims_known ? shape_str(shape) + " " : std::string()) + pattern + ", got " + v.describe());
  }
}

void same_device(const std::string& op, const char* arg, const TensorView& v, const char* ref_arg,
                 const TensorView& ref) {
  if (!(v.device == ref.device))
    bad(op, std::string(arg) + " is on " + v.device.str() + " but " + ref_arg + " is on " + ref.device.str());
}

Output make_output(const std::string& op, const char* arg, const py::object& given, DType dtype,
                   const std::vector<int64_t>& shape, const TensorView& ref, const char* ref_arg, uintptr_t stream) {
  Output o;
  if (given.is_none()) {
    o.buffer = std::make_shared<Buffer>(dtype, shape, ref.device, stream);
    return o;
  }
  o.view = view_from_capsule(given.cast<py::capsule>(), op.c_str(), arg);
  if (o.view.dtype != dtype || o.view.shape != shape)
    bad(op, std::string(arg) + " must be " + dtype_name(dtype) + " " + shape_str(shape) + ", got " + o.view.describe());
  same_device(op, arg, o.view, ref_arg, ref);
  if (o.view.read_only) bad(op, std::string(arg) + " is read-only");
  return o;
}

py::object result(const Output& o) { return o.buffer ? py::cast(o.buffer) : py::none(); }

Coef check_coef(const std::string& op, const py::capsule& cap, int64_t n, const TensorView& ref, const char* ref_arg) {
  Coef c{view_from_capsule(cap, op.c_str(), "coef")};
  const auto& s = c.view.shape;
  const bool per_image = s.size() == 2 && s[0] == n && s[1] == 4;
  c.per_channel = s.size() == 3 && s[0] == n && s[1] == 3 && s[2] == 4;
  if (!is_float(c.view.dtype) || !(per_image || c.per_channel))
    bad(op, "coef must be float32 or float16 with shape (" + std::to_string(n) + ", 4) or (" + std::to_string(n) +
                ", 3, 4) (a0..a3 per image, or per image and channel), got " + c.view.describe());
  same_device(op, "coef", c.view, ref_arg, ref);
  return c;
}

DeviceScope::DeviceScope(const Device& d) {
  if (!d.is_cuda()) return;
  previous_ = cuda_current_device();
  if (previous_ != d.id) cuda_set_device(d.id);
  else previous_ = -1;
}

DeviceScope::~DeviceScope() {
  if (previous_ >= 0) {
    try {
      cuda_set_device(previous_);
    } catch (...) {  // a destructor must not throw; the launch's own error is the one to report
    }
  }
}

}  // namespace sitm::bindings
