// The parts of the module sitm_trt._C (csrc/bindings/module.cpp), each defined in its own translation unit.
#pragma once

#include <pybind11/pybind11.h>

namespace sitm::bindings {

// Buffer, Event, Graph, DLPack views, copies, devices and streams (runtime_bind.cpp).
void bind_runtime(pybind11::module_& m);
// pre, fuse, curve, ema, post and the CPU thread settings (kernels_bind.cpp).
void bind_kernels(pybind11::module_& m);

}  // namespace sitm::bindings
