#include "dlpack_bridge.h"

#include <cstdlib>
#include <cstring>
#include <sstream>
#include <utility>
#include <stdexcept>

namespace py = pybind11;

namespace sitm {
namespace {

constexpr const char* kLegacy = "dltensor";
constexpr const char* kVersioned = "dltensor_versioned";
constexpr const char* kUsedLegacy = "used_dltensor";
constexpr const char* kUsedVersioned = "used_dltensor_versioned";

std::string dl_dtype_str(const DLDataType& t) {
  std::string base;
  switch (t.code) {
    case kDLInt: base = "int"; break;
    case kDLUInt: base = "uint"; break;
    case kDLFloat: base = "float"; break;
    case kDLBfloat: base = "bfloat"; break;
    case kDLBool: return "bool";
    default: base = "code" + std::to_string(t.code) + "_"; break;
  }
  std::string s = base + std::to_string(t.bits);
  if (t.lanes != 1) s += "x" + std::to_string(t.lanes);
  return s;
}

bool to_dtype(const DLDataType& t, DType* out) {
  if (t.lanes != 1) return false;
  if (t.code == kDLFloat && t.bits == 32) *out = DType::F32;
  else if (t.code == kDLFloat && t.bits == 16) *out = DType::F16;
  else if (t.code == kDLUInt && t.bits == 8) *out = DType::U8;
  else if (t.code == kDLUInt && t.bits == 16) *out = DType::U16;
  else return false;
  return true;
}

DLDataType to_dl(DType t) {
  switch (t) {
    case DType::F32: return {kDLFloat, 32, 1};
    case DType::F16: return {kDLFloat, 16, 1};
    case DType::U8: return {kDLUInt, 8, 1};
    case DType::U16: return {kDLUInt, 16, 1};
  }
  return {kDLFloat, 32, 1};
}

int64_t itemsize(DType t) { return (t == DType::F32) ? 4 : (t == DType::U8 ? 1 : 2); }

[[noreturn]] void fail(const char* op, const char* arg, const std::string& what) {
  throw std::invalid_argument(std::string(op) + ": " + arg + " " + what);
}

// Fills the view from a DLTensor; `owner` already holds the managed tensor.
TensorView make_view(const DLTensor& t, bool read_only, std::shared_ptr<void> owner, const char* op, const char* arg) {
  TensorView v;
  v.owner = std::move(owner);
  v.read_only = read_only;
  if (t.ndim < 0 || static_cast<size_t>(t.ndim) > kMaxRank)
    fail(op, arg, "has " + std::to_string(t.ndim) + " dimensions (at most " + std::to_string(kMaxRank) + ")");
  if (t.ndim > 0 && t.shape == nullptr) fail(op, arg, "has no shape");
  v.shape.assign(t.shape, t.shape + t.ndim);
  switch (t.device.device_type) {
    case kDLCPU:
    case kDLCUDAHost: v.device = {kDLCPU, 0}; break;
    case kDLCUDA:
    case kDLCUDAManaged: v.device = {kDLCUDA, t.device.device_id}; break;
    default:
      fail(op, arg, "is on an unsupported DLPack device type " + std::to_string(t.device.device_type) +
                        " (expected CPU or CUDA memory)");
  }
  if (!to_dtype(t.dtype, &v.dtype))
    fail(op, arg, "has unsupported dtype " + dl_dtype_str(t.dtype) + " " + shape_str(v.shape) +
                      " (expected float32, float16, uint8 or uint16)");
  const int64_t numel = checked_nbytes(op, arg, v.shape, itemsize(v.dtype)) / itemsize(v.dtype);
  if (numel > 0 && t.data == nullptr) fail(op, arg, "has a null data pointer");
  if (t.strides != nullptr && numel > 0) {
    int64_t expected = 1;
    for (int d = t.ndim - 1; d >= 0; --d) {
      if (v.shape[d] != 1 && t.strides[d] != expected) {
        std::vector<int64_t> strides(t.strides, t.strides + t.ndim);
        fail(op, arg, "must be C-contiguous, got " + v.describe() + " with strides " + shape_str(strides) +
                          " (call .contiguous() / np.ascontiguousarray first)");
      }
      expected *= v.shape[d];
    }
  }
  v.data = static_cast<char*>(t.data) + t.byte_offset;
  return v;
}

}  // namespace

namespace {

// r = a (sym) b for sizes: both operands non-negative, no overflow, the result within kMaxBytes.
int64_t checked(const char* op, const char* arg, int64_t a, int64_t b, bool overflowed, int64_t r, const char* sym) {
  if (a < 0 || b < 0 || overflowed || r > kMaxBytes)
    fail(op, arg, "size " + std::to_string(a) + " " + sym + " " + std::to_string(b) + " overflows (limit " +
                      std::to_string(kMaxBytes) + ")");
  return r;
}

}  // namespace

int64_t checked_mul(const char* op, const char* arg, int64_t a, int64_t b) {
  int64_t r = 0;
  const bool overflowed = __builtin_mul_overflow(a, b, &r);
  return checked(op, arg, a, b, overflowed, r, "x");
}

int64_t checked_add(const char* op, const char* arg, int64_t a, int64_t b) {
  int64_t r = 0;
  const bool overflowed = __builtin_add_overflow(a, b, &r);
  return checked(op, arg, a, b, overflowed, r, "+");
}

int64_t checked_nbytes(const char* op, const char* arg, const std::vector<int64_t>& shape, int64_t itemsize) {
  if (shape.size() > kMaxRank)
    fail(op, arg, shape_str(shape) + " has " + std::to_string(shape.size()) + " dimensions (at most " +
                      std::to_string(kMaxRank) + ")");
  // The product of all non-zero dimensions must fit too: kernels compute planes (h * w) even when n == 0.
  int64_t nonzero = itemsize, zero = 0;
  for (int64_t s : shape) {
    if (s < 0) fail(op, arg, shape_str(shape) + " has a negative dimension");
    if (s == 0) {
      zero = 1;
      continue;
    }
    int64_t r = 0;
    if (__builtin_mul_overflow(nonzero, s, &r) || r > kMaxBytes)
      fail(op, arg, shape_str(shape) + " is too large: more than " + std::to_string(kMaxBytes) + " bytes of " +
                        std::to_string(itemsize) + "-byte elements (or a size that overflows int64)");
    nonzero = r;
  }
  return zero ? 0 : nonzero;
}

std::string Device::str() const { return is_cuda() ? "cuda:" + std::to_string(id) : "cpu"; }

std::string shape_str(const std::vector<int64_t>& shape) {
  std::ostringstream s;
  s << "(";
  for (size_t i = 0; i < shape.size(); ++i) s << (i ? ", " : "") << shape[i];
  if (shape.size() == 1) s << ",";
  s << ")";
  return s.str();
}

int64_t TensorView::numel() const {  // checked when the view was made
  return checked_nbytes("view", "shape", shape, 1);
}

std::string TensorView::describe() const {
  return std::string(dtype_name(dtype)) + " " + shape_str(shape) + " on " + device.str();
}

TensorView view_from_capsule(const py::capsule& capsule, const char* op, const char* arg) {
  PyObject* obj = capsule.ptr();
  const char* name = PyCapsule_GetName(obj);
  if (name == nullptr) {
    PyErr_Clear();
    fail(op, arg, "is not a DLPack capsule");
  }
  if (std::strcmp(name, kUsedLegacy) == 0 || std::strcmp(name, kUsedVersioned) == 0)
    fail(op, arg, "is a DLPack capsule that was already consumed (a capsule can be used once)");
  if (std::strcmp(name, kVersioned) == 0) {
    auto* m = static_cast<DLManagedTensorVersioned*>(PyCapsule_GetPointer(obj, kVersioned));
    if (m == nullptr) throw py::error_already_set();
    if (m->version.major != 1) fail(op, arg, "uses DLPack " + std::to_string(m->version.major) + ".x (expected 1.x)");
    // From here on the managed tensor is ours: rename first so the capsule's destructor leaves it alone.
    if (PyCapsule_SetName(obj, kUsedVersioned) != 0) throw py::error_already_set();
    std::shared_ptr<void> owner(m, [](void* p) {
      auto* mt = static_cast<DLManagedTensorVersioned*>(p);
      if (mt->deleter) mt->deleter(mt);
    });
    return make_view(m->dl_tensor, (m->flags & SITM_DLPACK_FLAG_READ_ONLY) != 0, std::move(owner), op, arg);
  }
  if (std::strcmp(name, kLegacy) == 0) {
    auto* m = static_cast<DLManagedTensor*>(PyCapsule_GetPointer(obj, kLegacy));
    if (m == nullptr) throw py::error_already_set();
    if (PyCapsule_SetName(obj, kUsedLegacy) != 0) throw py::error_already_set();
    std::shared_ptr<void> owner(m, [](void* p) {
      auto* mt = static_cast<DLManagedTensor*>(p);
      if (mt->deleter) mt->deleter(mt);
    });
    return make_view(m->dl_tensor, false, std::move(owner), op, arg);
  }
  fail(op, arg, std::string("is a capsule named '") + name + "', not a DLPack tensor");
}

// ------------------------------------------------------------------------------------------------------
// Buffer
// ------------------------------------------------------------------------------------------------------

namespace {
std::mutex g_trace_mu;
bool g_trace_on = false;
std::vector<std::tuple<std::string, uintptr_t, uintptr_t>> g_trace;

void trace(const char* kind, uintptr_t a, uintptr_t b) {
  std::lock_guard<std::mutex> lock(g_trace_mu);
  if (g_trace_on) g_trace.emplace_back(kind, a, b);
}
}  // namespace

void stream_trace_enable(bool on) {
  std::lock_guard<std::mutex> lock(g_trace_mu);
  g_trace_on = on;
  g_trace.clear();
}

std::vector<std::tuple<std::string, uintptr_t, uintptr_t>> stream_trace_take() {
  std::lock_guard<std::mutex> lock(g_trace_mu);
  return std::exchange(g_trace, {});
}

Storage::~Storage() {
  trace("free", last_stream, 0);
  if (device.is_cuda()) cuda_free_async(ptr, device.id, last_stream);  // never a synchronizing cudaFree
  else if (pinned) cuda_free_host(ptr);
  else std::free(ptr);
}

void Storage::use_on(uintptr_t stream) {
  std::lock_guard<std::mutex> lock(mu_);
  if (stream == last_stream) return;  // same stream: already ordered
  if (device.is_cuda()) cuda_stream_wait(stream, last_stream, device.id);  // event on the last, waited on by the new
  trace("wait", stream, last_stream);
  last_stream = stream;
}

uintptr_t Storage::stream() const {
  std::lock_guard<std::mutex> lock(mu_);
  return last_stream;
}

Buffer::Buffer(DType dtype, std::vector<int64_t> shape, Device device, uintptr_t stream, bool pinned)
    : dtype_(dtype), shape_(std::move(shape)), device_(device) {
  capacity_ = checked_nbytes("empty", "shape", shape_, sitm::itemsize(dtype_));
  const bool host_pinned = pinned && !device.is_cuda();
  void* p = nullptr;
  if (device_.is_cuda()) {
    p = cuda_alloc(capacity_, device_.id, stream);
  } else if (host_pinned) {
    p = cuda_alloc_host(capacity_);
  } else {
    const size_t rounded = static_cast<size_t>((capacity_ + 63) / 64 * 64);
    p = std::aligned_alloc(64, rounded == 0 ? 64 : rounded);
    if (p == nullptr) throw std::bad_alloc();
  }
  try {
    storage_ = std::make_shared<Storage>(p, device_, host_pinned, stream);
  } catch (...) {
    { Storage cleanup(p, device_, host_pinned, stream); }  // frees p the same way
    throw;
  }
}

Buffer::Buffer(const Buffer& base, DType dtype, std::vector<int64_t> shape, std::optional<uintptr_t> stream)
    : storage_(base.storage_), capacity_(base.capacity_), dtype_(dtype), shape_(std::move(shape)),
      device_(base.device_) {
  if (checked_nbytes("Buffer.view", "shape", shape_, sitm::itemsize(dtype_)) > capacity_)
    throw std::invalid_argument("Buffer.view: " + std::string(dtype_name(dtype)) + " " + shape_str(shape_) + " needs " +
                                std::to_string(nbytes()) + " bytes, the buffer has " + std::to_string(capacity_));
  if (stream) storage_->use_on(*stream);  // the old stream's pending use is waited on, never dropped
}

DLDevice Buffer::dl_device() const {
  return {device_.is_cuda() ? kDLCUDA : kDLCPU, device_.is_cuda() ? device_.id : 0};
}

int64_t Buffer::itemsize(DType t) { return sitm::itemsize(t); }

int64_t Buffer::nbytes() const {  // checked when the buffer was made
  return checked_nbytes("Buffer", "shape", shape_, sitm::itemsize(dtype_));
}

namespace {

// What an exported capsule points to: the DLPack struct plus what keeps the memory alive.
template <typename Managed>
struct Export {
  Managed managed{};
  std::shared_ptr<Buffer> keep;
  std::vector<int64_t> shape;
};

template <typename Managed>
void fill_tensor(Export<Managed>* e) {
  DLTensor& t = e->managed.dl_tensor;
  t.data = e->keep->data();
  t.device = e->keep->dl_device();  // the same as __dlpack_device__ (pinned host memory: kDLCPU)
  t.ndim = static_cast<int32_t>(e->shape.size());
  t.dtype = to_dl(e->keep->dtype());
  t.shape = e->shape.data();
  t.strides = nullptr;  // compact row-major
  t.byte_offset = 0;
  e->managed.manager_ctx = e;
  e->managed.deleter = [](Managed* self) { delete static_cast<Export<Managed>*>(self->manager_ctx); };
}

template <typename Managed>
void capsule_destructor(PyObject* cap, const char* live_name) {
  // Runs whenever the capsule dies, possibly while an exception is propagating: keep that exception.
  PyObject *type, *value, *traceback;
  PyErr_Fetch(&type, &value, &traceback);
  // Only an unconsumed capsule still owns its tensor; a consumer renamed it and calls the deleter itself.
  if (PyCapsule_IsValid(cap, live_name)) {
    auto* m = static_cast<Managed*>(PyCapsule_GetPointer(cap, live_name));
    if (m && m->deleter) m->deleter(m);
  }
  PyErr_Restore(type, value, traceback);
}

}  // namespace

py::capsule Buffer::to_dlpack(const std::shared_ptr<Buffer>& self, std::optional<int64_t> consumer_stream,
                              bool versioned) {
  if (!consumer_stream || *consumer_stream != -1) {
    // DLPack stream numbers: None = the legacy default stream (Array API), -1 = no ordering, 1 = legacy
    // default stream, 2 = per-thread default stream (cudaStreamPerThread is the handle 0x2), else a handle.
    const int64_t s = consumer_stream.value_or(1);
    if (s == 0 && self->device_.is_cuda())
      throw std::invalid_argument("__dlpack__: stream 0 is ambiguous for CUDA (use 1 or 2)");
    if (s < -1) throw std::invalid_argument("__dlpack__: stream must be None, -1, 1, 2 or a stream handle, got " +
                                            std::to_string(s));
    // The consumer's stream waits for the last use, then is the last use (host memory: the same bookkeeping
    // without CUDA calls, the CPU twin the tests check).
    self->use_on(s == 1 ? 0 : static_cast<uintptr_t>(s));
  }
  if (versioned) {
    auto* e = new Export<DLManagedTensorVersioned>();
    e->keep = self;
    e->shape = self->shape_;
    e->managed.version = {1, 0};
    e->managed.flags = 0;
    fill_tensor(e);
    PyObject* cap = PyCapsule_New(&e->managed, kVersioned, [](PyObject* c) {
      capsule_destructor<DLManagedTensorVersioned>(c, kVersioned);
    });
    if (cap == nullptr) {
      delete e;
      throw py::error_already_set();
    }
    return py::reinterpret_steal<py::capsule>(cap);
  }
  auto* e = new Export<DLManagedTensor>();
  e->keep = self;
  e->shape = self->shape_;
  fill_tensor(e);
  PyObject* cap = PyCapsule_New(&e->managed, kLegacy, [](PyObject* c) {
    capsule_destructor<DLManagedTensor>(c, kLegacy);
  });
  if (cap == nullptr) {
    delete e;
    throw py::error_already_set();
  }
  return py::reinterpret_steal<py::capsule>(cap);
}

}  // namespace sitm
