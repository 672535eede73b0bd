// Linked instead of csrc/cuda in a CPU-only build: the module still loads and reports how it was built;
// CUDA entry points raise "built without CUDA".
#include <stdexcept>
#include <string>

#include "sitm/ops.h"

namespace sitm {
namespace {
[[noreturn]] void no_cuda(const char* op) {
  throw std::runtime_error(std::string(op) +
                           ": sitm-trt was built without CUDA; reinstall with a CUDA compiler on PATH "
                           "(SITM_WITH_CUDA=ON pip install sitm-trt)");
}
}  // namespace

bool cuda_compiled() { return false; }
void pre_cuda(const PreArgs&, uintptr_t) { no_cuda("pre"); }
void fuse_cuda(const FuseArgs&, uintptr_t) { no_cuda("fuse"); }
void curve_cuda(const CurveArgs&, uintptr_t) { no_cuda("curve"); }
void post_cuda(const PostArgs&, uintptr_t) { no_cuda("post"); }
void ema_cuda(const EmaArgs&, uintptr_t) { no_cuda("ema"); }
int cuda_device_count(std::string* error) {
  if (error) *error = "sitm-trt was built without CUDA";
  return 0;
}
void* cuda_alloc(int64_t, int, uintptr_t) { no_cuda("allocation"); }
void cuda_free(void*, int) {}
void cuda_free_async(void*, int, uintptr_t) {}
void cuda_stream_wait(uintptr_t, uintptr_t, int) { no_cuda("stream wait"); }
std::string cuda_runtime_version() { return ""; }
void* cuda_alloc_host(int64_t) { no_cuda("pinned allocation"); }
void cuda_free_host(void*) {}
void cuda_memcpy_async(void*, const void*, int64_t, int, int, uintptr_t) { no_cuda("memcpy"); }
void cuda_stream_synchronize(uintptr_t, int) { no_cuda("stream synchronize"); }
uintptr_t cuda_stream_create(int) { no_cuda("stream create"); }
void cuda_stream_destroy(uintptr_t) {}
void cuda_capture_begin(uintptr_t, int) { no_cuda("graph capture"); }
uintptr_t cuda_capture_end(uintptr_t, int) { no_cuda("graph capture"); }
void cuda_capture_abort(uintptr_t) {}
void cuda_graph_launch(uintptr_t, uintptr_t, int) { no_cuda("graph launch"); }
void cuda_graph_destroy(uintptr_t) {}
CudaDeviceProps cuda_device_props(int) { no_cuda("device properties"); }
int cuda_current_device() { no_cuda("current device"); }
void cuda_set_device(int) { no_cuda("set device"); }
void cuda_mem_info(int, int64_t*, int64_t*) { no_cuda("memory info"); }
uintptr_t cuda_event_create(int) { no_cuda("event"); }
void cuda_event_destroy(uintptr_t) {}
void cuda_event_record(uintptr_t, uintptr_t, int) { no_cuda("event record"); }
void cuda_event_synchronize(uintptr_t) { no_cuda("event synchronize"); }
bool cuda_event_query(uintptr_t) { no_cuda("event query"); }
}  // namespace sitm
