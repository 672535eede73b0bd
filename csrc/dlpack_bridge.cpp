#include "dlpack_bridge.h"

#include <cstdlib>
#include <cstring>
#include <sstream>
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
  int64_t numel = 1;
  for (int64_t s : v.shape) numel *= s;
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

std::string Device::str() const { return is_cuda() ? "cuda:" + std::to_string(id) : "cpu"; }

std::string shape_str(const std::vector<int64_t>& shape) {
  std::ostringstream s;
  s << "(";
  for (size_t i = 0; i < shape.size(); ++i) s << (i ? ", " : "") << shape[i];
  if (shape.size() == 1) s << ",";
  s << ")";
  return s.str();
}

int64_t TensorView::numel() const {
  int64_t n = 1;
  for (int64_t s : shape) n *= s;
  return n;
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

Buffer::Buffer(DType dtype, std::vector<int64_t> shape, Device device, uintptr_t stream, bool pinned)
    : pinned_(pinned && !device.is_cuda()), dtype_(dtype), shape_(std::move(shape)), device_(device), stream_(stream) {
  for (int64_t s : shape_)
    if (s < 0) throw std::invalid_argument("Buffer: negative dimension in " + shape_str(shape_));
  capacity_ = nbytes();
  if (device_.is_cuda()) {
    const int id = device_.id;
    storage_ = std::shared_ptr<void>(cuda_alloc(capacity_, id, stream), [id](void* p) { cuda_free(p, id); });
  } else if (pinned_) {
    storage_ = std::shared_ptr<void>(cuda_alloc_host(capacity_), [](void* p) { cuda_free_host(p); });
  } else {
    const size_t rounded = static_cast<size_t>((capacity_ + 63) / 64 * 64);
    void* p = std::aligned_alloc(64, rounded == 0 ? 64 : rounded);
    if (p == nullptr) throw std::bad_alloc();
    storage_ = std::shared_ptr<void>(p, [](void* q) { std::free(q); });
  }
}

Buffer::Buffer(const Buffer& base, DType dtype, std::vector<int64_t> shape, std::optional<uintptr_t> stream)
    : storage_(base.storage_), capacity_(base.capacity_), pinned_(base.pinned_), dtype_(dtype),
      shape_(std::move(shape)), device_(base.device_), stream_(stream.value_or(base.stream_)) {
  for (int64_t s : shape_)
    if (s < 0) throw std::invalid_argument("Buffer.view: negative dimension in " + shape_str(shape_));
  if (nbytes() > capacity_)
    throw std::invalid_argument("Buffer.view: " + std::string(dtype_name(dtype)) + " " + shape_str(shape_) + " needs " +
                                std::to_string(nbytes()) + " bytes, the buffer has " + std::to_string(capacity_));
}

int64_t Buffer::itemsize(DType t) { return sitm::itemsize(t); }

int64_t Buffer::nbytes() const {
  int64_t n = sitm::itemsize(dtype_);
  for (int64_t s : shape_) n *= s;
  return n;
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
  t.device = {e->keep->device().is_cuda() ? kDLCUDA : (e->keep->pinned() ? kDLCUDAHost : kDLCPU), e->keep->device().id};
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
  if (self->device_.is_cuda() && consumer_stream && *consumer_stream != -1) {
    // DLPack stream numbers: 1 = legacy default stream, 2 = per-thread default stream, else a handle.
    const int64_t s = *consumer_stream;
    if (s == 0) throw std::invalid_argument("__dlpack__: stream 0 is ambiguous for CUDA (use 1 or 2)");
    const uintptr_t consumer = s == 1 ? 0 : static_cast<uintptr_t>(s);
    cuda_stream_wait(consumer, self->stream_, self->device_.id);
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
