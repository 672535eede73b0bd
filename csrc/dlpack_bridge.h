// DLPack in and out of the extension, the only place that touches DLPack structs.
//  * TensorView: a consumed DLPack capsule as a plain view (pointer, shape, dtype, device). It owns the
//    producer's managed tensor and calls the producer's deleter when the last copy of the view goes away.
//  * Buffer: memory the extension allocated (host or CUDA), exported to any consumer through __dlpack__.
#pragma once

#include <pybind11/pybind11.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "sitm/dlpack.h"
#include "sitm/ops.h"

namespace sitm {

struct Device {
  int type = kDLCPU;  // kDLCPU or kDLCUDA (pinned host memory counts as CPU, managed memory as CUDA)
  int id = 0;
  bool is_cuda() const { return type == kDLCUDA; }
  bool operator==(const Device& o) const { return type == o.type && id == o.id; }
  std::string str() const;
};

struct TensorView {
  void* data = nullptr;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
  Device device;
  bool read_only = false;
  std::shared_ptr<void> owner;  // the producer's managed tensor; its deleter runs when this is released

  int64_t numel() const;
  std::string describe() const;  // e.g. "uint8 (2, 4, 5) on cpu"
};

// Consumes a "dltensor" or "dltensor_versioned" capsule (renaming it "used_..." as the protocol asks) and
// returns the view. Rejects, naming op and argument: a capsule already consumed, an unsupported dtype or
// device, vector lanes, and non-compact (non C-contiguous) strides - nothing is ever copied silently.
TensorView view_from_capsule(const pybind11::capsule& capsule, const char* op, const char* arg);

std::string shape_str(const std::vector<int64_t>& shape);

class Buffer {
 public:
  // Allocates numel(shape) elements (host: 64-byte aligned; CUDA: cudaMallocAsync on `stream`). `pinned`
  // host memory (cudaMallocHost) makes host<->device copies asynchronous.
  Buffer(DType dtype, std::vector<int64_t> shape, Device device, uintptr_t stream, bool pinned = false);
  // A view of `base`'s memory with another dtype/shape that must fit in base's capacity (reusing a buffer
  // for a smaller frame); it keeps the memory alive.
  // `stream` (when given) is the stream the view is used on now, so exports order against that stream
  // rather than the one the memory was first allocated on.
  Buffer(const Buffer& base, DType dtype, std::vector<int64_t> shape, std::optional<uintptr_t> stream = std::nullopt);
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;

  void* data() const { return storage_.get(); }
  int64_t capacity() const { return capacity_; }
  bool pinned() const { return pinned_; }
  DType dtype() const { return dtype_; }
  const std::vector<int64_t>& shape() const { return shape_; }
  const Device& device() const { return device_; }
  uintptr_t stream() const { return stream_; }
  int64_t nbytes() const;
  static int64_t itemsize(DType t);

  // Exports a capsule that keeps `self` alive until the consumer calls the deleter. `consumer_stream` is the
  // DLPack stream argument (None, -1, 1 = legacy default, 2 = per-thread default, or a cudaStream_t).
  static pybind11::capsule to_dlpack(const std::shared_ptr<Buffer>& self, std::optional<int64_t> consumer_stream,
                                     bool versioned);

 private:
  std::shared_ptr<void> storage_;  // frees the allocation when the last Buffer/export using it is gone
  int64_t capacity_ = 0;           // bytes
  bool pinned_ = false;
  DType dtype_;
  std::vector<int64_t> shape_;
  Device device_;
  uintptr_t stream_ = 0;
};

}  // namespace sitm
