// Argument checks shared by the bindings (csrc/bindings/*.cpp). Every argument is checked where it enters
// C++, and errors name the op, the argument, what was expected and what came.
#pragma once

#include <pybind11/pybind11.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "dlpack_bridge.h"
#include "sitm/ops.h"

namespace sitm::bindings {

namespace py = pybind11;

// Throws std::invalid_argument("op: msg") (ValueError in Python).
[[noreturn]] void bad(const std::string& op, const std::string& msg);

DType parse_float_dtype(const std::string& op, const std::string& s);  // "float32" or "float16"
DType parse_any_dtype(const std::string& op, const std::string& s);    // float32, float16, uint8 or uint16

inline bool is_float(DType t) { return t == DType::F32 || t == DType::F16; }

// Checks a float tensor of exactly `shape` (entries < 0 are free and filled in from the tensor); `pattern`
// names the dimensions in the error.
void expect_float(const std::string& op, const char* arg, const TensorView& v, std::vector<int64_t> shape,
                  const char* pattern);

void same_device(const std::string& op, const char* arg, const TensorView& v, const char* ref_arg,
                 const TensorView& ref);

// An output: given by the caller (checked: shape, dtype, device, writable) or allocated here.
struct Output {
  TensorView view;
  std::shared_ptr<Buffer> buffer;  // set when allocated here
  void* data() const { return buffer ? buffer->data() : view.data; }
};

// `given` is None (allocate on ref's device, stream-ordered on `stream`) or a DLPack capsule.
Output make_output(const std::string& op, const char* arg, const py::object& given, DType dtype,
                   const std::vector<int64_t>& shape, const TensorView& ref, const char* ref_arg, uintptr_t stream);

// What an op returns for an output: the Buffer allocated here, or None when the caller gave the array.
py::object result(const Output& o);

// Curve coefficients: (n, 4) per image, or (n, 3, 4) per image and channel.
struct Coef {
  TensorView view;
  bool per_channel = false;
};

Coef check_coef(const std::string& op, const py::capsule& cap, int64_t n, const TensorView& ref, const char* ref_arg);

// Makes the arrays' device current for a CUDA launch and restores the caller's afterwards.
class DeviceScope {
 public:
  explicit DeviceScope(const Device& d);
  ~DeviceScope();
  DeviceScope(const DeviceScope&) = delete;
  DeviceScope& operator=(const DeviceScope&) = delete;

 private:
  int previous_ = -1;
};

// Runs `cpu` or `cuda` by the device of `ref` (on that device), with the GIL released.
template <typename Args>
void run(const TensorView& ref, const Args& a, void (*cpu)(const Args&), void (*cuda)(const Args&, uintptr_t),
         uintptr_t stream) {
  py::gil_scoped_release release;
  if (ref.device.is_cuda()) {
    DeviceScope scope(ref.device);
    cuda(a, stream);
  } else {
    cpu(a);
  }
}

}  // namespace sitm::bindings
