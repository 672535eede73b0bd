// Python bindings of the sitm-trt kernels (module sitm_trt._C). Arrays arrive as DLPack capsules (the Python
// wrapper in sitm_trt/kernels.py calls __dlpack__); every argument is checked where it enters C++ (args.h).
// The module is put together here from its parts: the runtime (runtime_bind.cpp: Buffer, Event, Graph,
// devices, streams), the kernels (kernels_bind.cpp), the output encoding's constants (encode.cpp) and how it
// was built.
#include <pybind11/pybind11.h>

#include <string>

#include "bindings/bind.h"
#include "bindings/encode.h"
#include "sitm/ops.h"

namespace py = pybind11;

namespace {

py::dict build_info() {
  py::dict d;
  d["version"] = SITM_VERSION;
  d["cuda"] = sitm::cuda_compiled();
  d["cuda_architectures"] = std::string(SITM_CUDA_ARCHITECTURES);
  d["cuda_runtime"] = sitm::cuda_runtime_version();
  d["cuda_compiler"] = std::string(SITM_CUDA_COMPILER);
  d["cxx_compiler"] = std::string(SITM_CXX_COMPILER);
  d["build_type"] = std::string(SITM_BUILD_TYPE);
  d["cpu_threads"] = sitm::get_cpu_threads();
  return d;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "sitm-trt C++/CUDA kernels (pre, fuse, curve, post); use the wrappers in sitm_trt.kernels";
  sitm::bindings::bind_runtime(m);
  sitm::bindings::bind_kernels(m);
  m.def("build_info", &build_info);
  // Read-only: name -> value of the standards' constants the kernels use (sitm/encode_constants.h).
  m.attr("ENCODE_CONSTANTS") = sitm::bindings::encode_constants();
}
