// DLPack in and out of the extension, the only place that touches DLPack structs.
//  * TensorView: a consumed DLPack capsule as a plain view (pointer, shape, dtype, device). It owns the
//    producer's managed tensor and calls the producer's deleter when the last copy of the view goes away.
//  * Buffer: memory the extension allocated (host or CUDA), exported to any consumer through __dlpack__.
#pragma once

#include <pybind11/pybind11.h>

#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <tuple>
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

// Size limits checked wherever a shape enters C++ (a DLPack view, a new Buffer, a Buffer.view): every size
// and offset the kernels compute from such a shape then fits in int64 with room to spare.
constexpr size_t kMaxRank = 16;                     // dimensions of one array
constexpr int64_t kMaxBytes = int64_t{1} << 48;     // bytes of one array (256 TiB); also bounds each dimension

// a * b and a + b on non-negative sizes; throw std::invalid_argument ("op: arg ... overflows") on overflow or
// a result above kMaxBytes.
int64_t checked_mul(const char* op, const char* arg, int64_t a, int64_t b);
int64_t checked_add(const char* op, const char* arg, int64_t a, int64_t b);
// Bytes of a compact array of `shape` with elements of `itemsize` bytes: rank <= kMaxRank, every dimension in
// [0, kMaxBytes], the product (even when another dimension is 0) and the byte count <= kMaxBytes, all
// computed with overflow checks. Throws std::invalid_argument naming op and arg (ValueError in Python).
int64_t checked_nbytes(const char* op, const char* arg, const std::vector<int64_t>& shape, int64_t itemsize);

// The allocation a Buffer and all its views share, and the stream it was last used on (its pending use).
// Invariant: every use of the memory so far is ordered before the work enqueued on `last_stream` from now
// on. A use on another stream first makes that stream wait on an event recorded on `last_stream` (then it
// becomes the last stream), and the memory is freed stream-ordered on `last_stream` (cudaFreeAsync): the
// host never waits, and the pool hands the memory out again only after every use. Host memory keeps the
// same bookkeeping (the CPU twin the tests check through stream_trace) without CUDA calls.
struct Storage {
  Storage(void* p, Device d, bool pinned, uintptr_t stream) : ptr(p), device(d), pinned(pinned), last_stream(stream) {}
  ~Storage();
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;
  // Orders a use on `stream` after every earlier use (cudaStreamWaitEvent when the stream changes).
  void use_on(uintptr_t stream);
  uintptr_t stream() const;

  void* ptr;
  Device device;
  bool pinned;

 private:
  mutable std::mutex mu_;
  uintptr_t last_stream;
};

// Test hook: while on, every cross-stream wait and every free a Buffer's bookkeeping issues (or, for host
// memory, would issue) is appended as (kind, stream, other): ("wait", consumer, producer), ("free", stream, 0).
void stream_trace_enable(bool on);
std::vector<std::tuple<std::string, uintptr_t, uintptr_t>> stream_trace_take();

class Buffer {
 public:
  // Allocates numel(shape) elements (host: 64-byte aligned; CUDA: cudaMallocAsync on `stream`). `pinned`
  // host memory (cudaMallocHost) makes host<->device copies asynchronous.
  Buffer(DType dtype, std::vector<int64_t> shape, Device device, uintptr_t stream, bool pinned = false);
  // A view of `base`'s memory with another dtype/shape that must fit in base's capacity (reusing a buffer
  // for a smaller frame); it keeps the memory alive.
  // `stream` (when given) is the stream the view is used on now: it first waits for the memory's pending
  // use on its last stream (Storage::use_on), so a pooled buffer never races across streams.
  Buffer(const Buffer& base, DType dtype, std::vector<int64_t> shape, std::optional<uintptr_t> stream = std::nullopt);
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;

  void* data() const { return storage_->ptr; }
  int64_t capacity() const { return capacity_; }
  bool pinned() const { return storage_->pinned; }
  // The DLPack device of this memory, the same in __dlpack_device__ and in exported capsules: kDLCPU for
  // host memory, pinned included (host-visible; consumers such as torch reject kDLCUDAHost), kDLCUDA.
  DLDevice dl_device() const;
  DType dtype() const { return dtype_; }
  const std::vector<int64_t>& shape() const { return shape_; }
  const Device& device() const { return device_; }
  uintptr_t stream() const { return storage_->stream(); }  // the stream of the last use
  void use_on(uintptr_t stream) { storage_->use_on(stream); }
  int64_t nbytes() const;
  static int64_t itemsize(DType t);

  // Exports a capsule that keeps `self` alive until the consumer calls the deleter. `consumer_stream` is the
  // DLPack stream argument: None (= the legacy default stream, as the Array API says), -1 (no ordering),
  // 1 = legacy default, 2 = per-thread default, or a cudaStream_t; the consumer's stream waits for the
  // memory's last use and becomes its last stream (so the free is ordered after the consumer's work).
  static pybind11::capsule to_dlpack(const std::shared_ptr<Buffer>& self, std::optional<int64_t> consumer_stream,
                                     bool versioned);

 private:
  std::shared_ptr<Storage> storage_;  // frees the allocation when the last Buffer/export using it is gone
  int64_t capacity_ = 0;              // bytes
  DType dtype_;
  std::vector<int64_t> shape_;
  Device device_;
};

}  // namespace sitm
