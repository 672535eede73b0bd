// Device queries, stream-ordered device memory and cross-stream ordering for the bindings.
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

#include "sitm/ops.h"

namespace sitm {
namespace {

// Throws for a failed call, after reading the error back so that it is not reported again by the next launch's
// check (a caught out-of-memory must not fail the next batch; kernels.cu clears it too).
void check(cudaError_t err, const char* what) {
  if (err == cudaSuccess) return;
  (void)cudaGetLastError();
  throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(err));
}

// Makes `device` current for the scope and restores the caller's device afterwards.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    check(cudaGetDevice(&previous_), "cudaGetDevice");
    if (previous_ != device) check(cudaSetDevice(device), "cudaSetDevice");
  }
  ~DeviceGuard() {
    int now = -1;
    if (cudaGetDevice(&now) == cudaSuccess && now != previous_) cudaSetDevice(previous_);
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int previous_ = 0;
};

cudaStream_t as_stream(uintptr_t s) { return reinterpret_cast<cudaStream_t>(s); }

}  // namespace

int cuda_device_count(std::string* error) {
  int n = 0;
  const cudaError_t err = cudaGetDeviceCount(&n);
  if (err != cudaSuccess) {
    if (error) *error = cudaGetErrorString(err);
    cudaGetLastError();  // clear the sticky-free error so later queries start clean
    return 0;
  }
  return n;
}

void* cuda_alloc(int64_t bytes, int device, uintptr_t stream) {
  if (bytes < 0) throw std::invalid_argument("cudaMallocAsync: negative size " + std::to_string(bytes));
  DeviceGuard guard(device);
  void* ptr = nullptr;
  check(cudaMallocAsync(&ptr, static_cast<size_t>(bytes > 0 ? bytes : 1), as_stream(stream)), "cudaMallocAsync");
  return ptr;
}

void cuda_free(void* ptr, int device) {
  if (ptr == nullptr) return;
  int previous = -1;
  // Called from deleters, which must not throw: a failure here can only leak.
  if (cudaGetDevice(&previous) != cudaSuccess) {
    cudaGetLastError();
    return;
  }
  if (previous != device) cudaSetDevice(device);
  if (cudaFree(ptr) != cudaSuccess) cudaGetLastError();
  if (previous != device) cudaSetDevice(previous);
}

void cuda_free_async(void* ptr, int device, uintptr_t stream) {
  if (ptr == nullptr) return;
  int previous = -1;
  if (cudaGetDevice(&previous) != cudaSuccess) {  // called from deleters, which must not throw
    cudaGetLastError();
    return;
  }
  if (previous != device) cudaSetDevice(device);
  // Stream-ordered: no host wait; the pool reuses the memory only after the work on `stream` so far.
  const cudaError_t err = cudaFreeAsync(ptr, as_stream(stream));
  if (err != cudaSuccess) {
    cudaGetLastError();
    if (cudaFree(ptr) != cudaSuccess) cudaGetLastError();  // correct but synchronizing: the rare fallback
  }
  if (previous != device) cudaSetDevice(previous);
}

int cuda_current_device() {
  int d = 0;
  check(cudaGetDevice(&d), "cudaGetDevice");
  return d;
}

void cuda_set_device(int device) { check(cudaSetDevice(device), "cudaSetDevice"); }

void cuda_mem_info(int device, int64_t* free_bytes, int64_t* total_bytes) {
  DeviceGuard guard(device);
  size_t f = 0, t = 0;
  check(cudaMemGetInfo(&f, &t), "cudaMemGetInfo");
  *free_bytes = static_cast<int64_t>(f);
  *total_bytes = static_cast<int64_t>(t);
}

void cuda_stream_wait(uintptr_t consumer, uintptr_t producer, int device) {
  if (consumer == producer) return;
  DeviceGuard guard(device);
  cudaEvent_t ev;
  check(cudaEventCreateWithFlags(&ev, cudaEventDisableTiming), "cudaEventCreate");
  const cudaError_t rec = cudaEventRecord(ev, as_stream(producer));
  const cudaError_t wait = rec == cudaSuccess ? cudaStreamWaitEvent(as_stream(consumer), ev, 0) : rec;
  cudaEventDestroy(ev);
  check(wait, "cudaStreamWaitEvent");
}

void* cuda_alloc_host(int64_t bytes) {
  if (bytes < 0) throw std::invalid_argument("cudaMallocHost: negative size " + std::to_string(bytes));
  void* ptr = nullptr;
  check(cudaMallocHost(&ptr, static_cast<size_t>(bytes > 0 ? bytes : 1)), "cudaMallocHost");
  return ptr;
}

void cuda_free_host(void* ptr) {
  if (ptr != nullptr && cudaFreeHost(ptr) != cudaSuccess) cudaGetLastError();
}

void cuda_memcpy_async(void* dst, const void* src, int64_t bytes, int kind, int device, uintptr_t stream) {
  if (bytes <= 0) return;
  static const cudaMemcpyKind kinds[] = {cudaMemcpyHostToDevice, cudaMemcpyDeviceToHost, cudaMemcpyDeviceToDevice,
                                         cudaMemcpyHostToHost};
  if (kind < 0 || kind > 3) throw std::invalid_argument("memcpy: kind must be 0..3");
  DeviceGuard guard(device);
  check(cudaMemcpyAsync(dst, src, static_cast<size_t>(bytes), kinds[kind], as_stream(stream)), "cudaMemcpyAsync");
}

void cuda_stream_synchronize(uintptr_t stream, int device) {
  DeviceGuard guard(device);
  check(cudaStreamSynchronize(as_stream(stream)), "cudaStreamSynchronize");
}

uintptr_t cuda_event_create(int device) {
  DeviceGuard guard(device);
  cudaEvent_t ev = nullptr;
  check(cudaEventCreateWithFlags(&ev, cudaEventDisableTiming | cudaEventBlockingSync), "cudaEventCreate");
  return reinterpret_cast<uintptr_t>(ev);
}

void cuda_event_destroy(uintptr_t event) {
  if (event != 0 && cudaEventDestroy(reinterpret_cast<cudaEvent_t>(event)) != cudaSuccess) cudaGetLastError();
}

void cuda_event_record(uintptr_t event, uintptr_t stream, int device) {
  DeviceGuard guard(device);
  check(cudaEventRecord(reinterpret_cast<cudaEvent_t>(event), as_stream(stream)), "cudaEventRecord");
}

void cuda_event_synchronize(uintptr_t event) {
  check(cudaEventSynchronize(reinterpret_cast<cudaEvent_t>(event)), "cudaEventSynchronize");
}

bool cuda_event_query(uintptr_t event) {
  const cudaError_t err = cudaEventQuery(reinterpret_cast<cudaEvent_t>(event));
  if (err == cudaErrorNotReady) {
    cudaGetLastError();
    return false;
  }
  check(err, "cudaEventQuery");
  return true;
}

uintptr_t cuda_stream_create(int device) {
  DeviceGuard guard(device);
  cudaStream_t s = nullptr;
  check(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), "cudaStreamCreate");
  return reinterpret_cast<uintptr_t>(s);
}

void cuda_stream_destroy(uintptr_t stream) {
  if (stream != 0 && cudaStreamDestroy(as_stream(stream)) != cudaSuccess) cudaGetLastError();
}

void cuda_capture_begin(uintptr_t stream, int device) {
  DeviceGuard guard(device);
  check(cudaStreamBeginCapture(as_stream(stream), cudaStreamCaptureModeThreadLocal), "cudaStreamBeginCapture");
}

uintptr_t cuda_capture_end(uintptr_t stream, int device) {
  DeviceGuard guard(device);
  cudaGraph_t graph = nullptr;
  const cudaError_t err = cudaStreamEndCapture(as_stream(stream), &graph);
  if (err != cudaSuccess) {
    if (graph != nullptr) cudaGraphDestroy(graph);
    cudaGetLastError();  // an invalidated capture is not sticky: clear it so later calls start clean
    throw std::runtime_error(std::string("cudaStreamEndCapture: ") + cudaGetErrorString(err));
  }
  cudaGraphExec_t exec = nullptr;
  const cudaError_t ierr = cudaGraphInstantiate(&exec, graph, 0);
  cudaGraphDestroy(graph);  // the executable graph keeps what it needs
  if (ierr != cudaSuccess) {
    cudaGetLastError();
    throw std::runtime_error(std::string("cudaGraphInstantiate: ") + cudaGetErrorString(ierr));
  }
  return reinterpret_cast<uintptr_t>(exec);
}

void cuda_capture_abort(uintptr_t stream) {
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  if (cudaStreamIsCapturing(as_stream(stream), &status) != cudaSuccess) {
    cudaGetLastError();
    return;
  }
  if (status == cudaStreamCaptureStatusNone) return;
  cudaGraph_t graph = nullptr;
  cudaStreamEndCapture(as_stream(stream), &graph);
  if (graph != nullptr) cudaGraphDestroy(graph);
  cudaGetLastError();
}

void cuda_graph_launch(uintptr_t exec, uintptr_t stream, int device) {
  DeviceGuard guard(device);
  check(cudaGraphLaunch(reinterpret_cast<cudaGraphExec_t>(exec), as_stream(stream)), "cudaGraphLaunch");
}

void cuda_graph_destroy(uintptr_t exec) {
  if (exec != 0 && cudaGraphExecDestroy(reinterpret_cast<cudaGraphExec_t>(exec)) != cudaSuccess) cudaGetLastError();
}

CudaDeviceProps cuda_device_props(int device) {
  cudaDeviceProp p{};
  check(cudaGetDeviceProperties(&p, device), "cudaGetDeviceProperties");
  CudaDeviceProps out;
  out.name = p.name;
  out.major = p.major;
  out.minor = p.minor;
  out.total_memory = static_cast<int64_t>(p.totalGlobalMem);
  cudaDriverGetVersion(&out.driver_version);
  return out;
}

std::string cuda_runtime_version() {
  const int v = CUDART_VERSION;
  return std::to_string(v / 1000) + "." + std::to_string((v % 1000) / 10);
}

}  // namespace sitm
