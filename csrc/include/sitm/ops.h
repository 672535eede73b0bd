// The ops' parameter blocks and the two implementations of each (csrc/cpu/*.cpp, csrc/cuda/*.cu).
// Arguments reach these functions already checked by csrc/bindings: shapes agree, buffers are compact
// row-major, dtypes are the supported ones. Element counts may be zero (then nothing runs).
#pragma once

#include <cstdint>
#include <string>

#include "sitm/pixel_math.h"

namespace sitm {

enum class DType : int { F32 = 0, F16 = 1, U8 = 2, U16 = 3 };

inline const char* dtype_name(DType t) {
  switch (t) {
    case DType::F32: return "float32";
    case DType::F16: return "float16";
    case DType::U8: return "uint8";
    case DType::U16: return "uint16";
  }
  return "?";
}

// Frame -> network inputs, padded to (hp, wp) with reflect padding at the bottom/right.
//   src: float (N, 3, H, W) when !src_hwc, or uint8/uint16 (N, H, W, 3) when src_hwc.
//   image, image_down, image_up: (N, 3, hp, wp); guide: (N, 2, hp, wp) = (max RGB, 1 - min RGB).
struct PreArgs {
  const void* src;
  DType src_type;
  bool src_hwc;
  int64_t n, h, w, hp, wp;
  void* image;
  void* image_down;
  void* image_up;
  void* guide;
  DType out_type;
};

// Eq. 7: out = masks[:,0]*image_up + masks[:,1]*image + masks[:,2]*image_down. All (N, 3, H, W).
struct FuseArgs {
  const void* masks;
  const void* image;
  const void* image_up;
  const void* image_down;
  DType in_type;
  int64_t n, h, w;
  void* out;
  DType out_type;
};

// Eq. 8 on x (N, 3, H, W); coef (N, 4) or (N, 3, 4) as a0..a3.
struct CurveArgs {
  const void* x;
  DType in_type;
  const void* coef;
  DType coef_type;
  bool coef_per_channel;
  int64_t n, h, w;
  void* out;
  DType out_type;
};

// Fuse + curve in one pass over padded (N, 3, hp, wp) inputs, cropped to (h, w), written as
// (N, 3, h, w) or (N, h, w, 3) when out_hwc.
// With `encode`, each pixel then goes through encode_rgb (gamut, display light, PQ/HLG) and, for a U16
// output, becomes integer code values (EncodeParams.q_*): R'G'B' in the NCHW/NHWC layouts, or, with
// out_yuv420, planar 4:2:0 Y'CbCr per image: Y (h, w), Cb and Cr ((h+1)/2, (w+1)/2), one flat (N, L) array.
// Chroma is sited left (H.273 chroma_loc 0): [1 2 1]/4 across columns 2j-1..2j+1, averaged over rows 2i and
// 2i+1, edges clamped. `stats` (float32 (N, 2), overwritten) receives the max and the mean over the h x w
// pixels of max(R, G, B) display light in cd/m2 (MaxCLL / MaxFALL of one frame).
struct PostArgs {
  const void* masks;
  const void* image;
  const void* image_up;
  const void* image_down;
  DType in_type;
  const void* coef;
  DType coef_type;
  bool coef_per_channel;
  int64_t n, hp, wp, h, w;
  void* out;
  DType out_type;
  bool out_hwc;
  Fusion fusion = Fusion::Paper;  // Eq. 7 + 8, or the residual fusion (pixel_math.h)
  bool encode = false;
  EncodeParams enc{};
  bool out_yuv420 = false;
  float* stats = nullptr;
};

// state = ema_step(state, x, a) elementwise over `count` values (the video curve smoothing); state float32.
struct EmaArgs {
  float* state;
  const void* x;
  DType x_type;
  int64_t count;
  float a;
};

// CPU implementations (csrc/cpu). Multithreaded over rows; set_cpu_threads(0) means all hardware threads.
void pre_cpu(const PreArgs& a);
void fuse_cpu(const FuseArgs& a);
void curve_cpu(const CurveArgs& a);
void post_cpu(const PostArgs& a);
void ema_cpu(const EmaArgs& a);
void set_cpu_threads(int n);
int get_cpu_threads();
// STREAM-triad style bandwidth probe (a[i] = b[i] + s * c[i] over `floats` floats), in GB/s counting
// 12 bytes per element; the best of `repeats` runs, with the same threads the kernels use.
double cpu_triad_bandwidth(int64_t floats, int repeats);

// CUDA implementations (csrc/cuda), launched on `stream` (a cudaStream_t as an integer; 0 is the legacy
// default stream). In a build without CUDA they throw std::runtime_error("built without CUDA").
bool cuda_compiled();
void pre_cuda(const PreArgs& a, uintptr_t stream);
void fuse_cuda(const FuseArgs& a, uintptr_t stream);
void curve_cuda(const CurveArgs& a, uintptr_t stream);
void post_cuda(const PostArgs& a, uintptr_t stream);
void ema_cuda(const EmaArgs& a, uintptr_t stream);

// Device memory and devices (csrc/cuda/runtime.cu, or the stubs).
int cuda_device_count(std::string* error);  // 0 and a reason when there is no usable device
void* cuda_alloc(int64_t bytes, int device, uintptr_t stream);
// Frees with cudaFree, which synchronizes the device: only for the fallback below.
void cuda_free(void* ptr, int device);
// Frees stream-ordered (cudaFreeAsync) on `stream`, the stream the memory was last used on: the host never
// waits, and the memory returns to the pool after the work enqueued on `stream` so far. If the free cannot be
// enqueued (e.g. that stream was destroyed), falls back to cuda_free. Never throws (called from deleters).
void cuda_free_async(void* ptr, int device, uintptr_t stream);
void cuda_stream_wait(uintptr_t consumer, uintptr_t producer, int device);  // consumer waits for producer's work
std::string cuda_runtime_version();
void* cuda_alloc_host(int64_t bytes);  // pinned host memory
void cuda_free_host(void* ptr);
// kind: 0 host->device, 1 device->host, 2 device->device, 3 host->host (cudaMemcpyKind order + 1 shift)
void cuda_memcpy_async(void* dst, const void* src, int64_t bytes, int kind, int device, uintptr_t stream);
void cuda_stream_synchronize(uintptr_t stream, int device);
// Events (disable-timing, blocking-sync: a waiting host thread sleeps instead of spinning), as integers.
uintptr_t cuda_event_create(int device);
void cuda_event_destroy(uintptr_t event);  // never throws
void cuda_event_record(uintptr_t event, uintptr_t stream, int device);
void cuda_event_synchronize(uintptr_t event);
bool cuda_event_query(uintptr_t event);  // true when the work before the last record has finished
// CUDA graphs of captured stream work (csrc/cuda/runtime.cu), as integers. Capture runs in thread-local mode
// on a stream of our own (the legacy default stream cannot be captured); the instantiated graph is then
// launched on any stream, the caller's included.
uintptr_t cuda_stream_create(int device);  // non-blocking
void cuda_stream_destroy(uintptr_t stream);  // never throws
void cuda_capture_begin(uintptr_t stream, int device);
// Ends the capture and instantiates its graph; throws (leaving no capture open) when the captured work was
// not capturable (e.g. it synchronized or allocated).
uintptr_t cuda_capture_end(uintptr_t stream, int device);
void cuda_capture_abort(uintptr_t stream);  // ends a capture that failed midway; never throws
void cuda_graph_launch(uintptr_t exec, uintptr_t stream, int device);
void cuda_graph_destroy(uintptr_t exec);  // never throws
struct CudaDeviceProps {
  std::string name;
  int major = 0, minor = 0;
  int64_t total_memory = 0;
  int driver_version = 0;
};
CudaDeviceProps cuda_device_props(int device);
int cuda_current_device();
void cuda_set_device(int device);
void cuda_mem_info(int device, int64_t* free_bytes, int64_t* total_bytes);

}  // namespace sitm
