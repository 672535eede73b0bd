// CUDA launches of the sitm-trt kernels: one thread per output pixel (grid-stride loops), per-pixel math
// from sitm/pixel_math.h shared with the CPU loops in csrc/cpu.
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

#include "sitm/ops.h"
#include "sitm/pixel_math.h"

namespace sitm {
namespace {

constexpr int kThreads = 256;

void check_launch(const char* op) {
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) throw std::runtime_error(std::string(op) + ": CUDA launch failed: " + cudaGetErrorString(err));
}

dim3 grid_for(int64_t count) {
  int64_t blocks = (count + kThreads - 1) / kThreads;
  if (blocks > 65535LL * 32) blocks = 65535LL * 32;  // grid-stride loops cover the rest
  return dim3(static_cast<unsigned>(blocks));
}

template <typename TI, typename TO, bool HWC>
__global__ void pre_kernel(const TI* __restrict__ src, TO* __restrict__ image, TO* __restrict__ down,
                           TO* __restrict__ up, TO* __restrict__ guide, int64_t n_img, int64_t h, int64_t w,
                           int64_t hp, int64_t wp) {
  const int64_t plane = hp * wp, total = n_img * plane;
  for (int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; t < total;
       t += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t n = t / plane, p = t % plane, y = p / wp, x = p % wp;
    const int64_t sy = reflect_index(y, h), sx = reflect_index(x, w);
    float r, g, b;
    if constexpr (HWC) {
      const int64_t s = ((n * h + sy) * w + sx) * 3;
      r = Scalar<TI>::load(src, s);
      g = Scalar<TI>::load(src, s + 1);
      b = Scalar<TI>::load(src, s + 2);
    } else {
      const int64_t s = (n * 3 * h + sy) * w + sx, cs = h * w;
      r = clamp01(Scalar<TI>::load(src, s));
      g = clamp01(Scalar<TI>::load(src, s + cs));
      b = clamp01(Scalar<TI>::load(src, s + 2 * cs));
    }
    const PrePixel px = pre_pixel(r, g, b);
    const int64_t i = n * 3 * plane + p, ig = n * 2 * plane + p;
    Scalar<TO>::store(image, i, r);
    Scalar<TO>::store(image, i + plane, g);
    Scalar<TO>::store(image, i + 2 * plane, b);
    Scalar<TO>::store(down, i, r * px.l_down);
    Scalar<TO>::store(down, i + plane, g * px.l_down);
    Scalar<TO>::store(down, i + 2 * plane, b * px.l_down);
    Scalar<TO>::store(up, i, r * px.l_up);
    Scalar<TO>::store(up, i + plane, g * px.l_up);
    Scalar<TO>::store(up, i + 2 * plane, b * px.l_up);
    Scalar<TO>::store(guide, ig, px.l_down);
    Scalar<TO>::store(guide, ig + plane, px.l_up);
  }
}

template <typename TC>
__device__ __forceinline__ void load_coef(const void* coef, bool per_channel, int64_t n, int c, float k[4]) {
  const TC* p = static_cast<const TC*>(coef);
  const int64_t base = per_channel ? (n * 3 + c) * 4 : n * 4;
#pragma unroll
  for (int i = 0; i < 4; ++i) k[i] = Scalar<TC>::load(p, base + i);
}

template <typename TC, typename TI, typename TO, bool HWC>
__global__ void post_kernel(const TI* __restrict__ m, const TI* __restrict__ img, const TI* __restrict__ iu,
                            const TI* __restrict__ id, const TC* __restrict__ coef, bool per_channel,
                            TO* __restrict__ out, int64_t n_img, int64_t hp, int64_t wp, int64_t h, int64_t w) {
  const int64_t plane = hp * wp, oplane = h * w, total = n_img * oplane;
  for (int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; t < total;
       t += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t n = t / oplane, p = t % oplane, y = p / w, x = p % w;
    const int64_t base = n * 3 * plane + y * wp + x;
    const float mu = Scalar<TI>::load(m, base), mm = Scalar<TI>::load(m, base + plane),
                md = Scalar<TI>::load(m, base + 2 * plane);
#pragma unroll
    for (int c = 0; c < 3; ++c) {
      float k[4];
      load_coef<TC>(coef, per_channel, n, c, k);
      const int64_t i = base + c * plane;
      const float f = fuse_pixel(mu, mm, md, Scalar<TI>::load(img, i), Scalar<TI>::load(iu, i), Scalar<TI>::load(id, i));
      const float v = curve_eval(f, k[0], k[1], k[2], k[3]);
      if constexpr (HWC)
        Scalar<TO>::store(out, t * 3 + c, v);
      else
        Scalar<TO>::store(out, (n * 3 + c) * oplane + p, v);
    }
  }
}

template <typename TI, typename TO>
__global__ void fuse_kernel(const TI* __restrict__ m, const TI* __restrict__ img, const TI* __restrict__ iu,
                            const TI* __restrict__ id, TO* __restrict__ out, int64_t n_img, int64_t plane) {
  const int64_t total = n_img * plane;
  for (int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; t < total;
       t += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t n = t / plane, p = t % plane, base = n * 3 * plane + p;
    const float mu = Scalar<TI>::load(m, base), mm = Scalar<TI>::load(m, base + plane),
                md = Scalar<TI>::load(m, base + 2 * plane);
#pragma unroll
    for (int c = 0; c < 3; ++c) {
      const int64_t i = base + c * plane;
      Scalar<TO>::store(out, i, fuse_pixel(mu, mm, md, Scalar<TI>::load(img, i), Scalar<TI>::load(iu, i), Scalar<TI>::load(id, i)));
    }
  }
}

template <typename TC, typename TI, typename TO>
__global__ void curve_kernel(const TI* __restrict__ x, const TC* __restrict__ coef, bool per_channel,
                             TO* __restrict__ out, int64_t n_img, int64_t plane) {
  const int64_t total = n_img * 3 * plane;
  for (int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; t < total;
       t += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t nc = t / plane, n = nc / 3;
    const int c = static_cast<int>(nc % 3);
    float k[4];
    load_coef<TC>(coef, per_channel, n, c, k);
    Scalar<TO>::store(out, t, curve_eval(Scalar<TI>::load(x, t), k[0], k[1], k[2], k[3]));
  }
}

cudaStream_t as_stream(uintptr_t s) { return reinterpret_cast<cudaStream_t>(s); }

// Calls f(TypeTag<T>{}) for the float storage type `t`.
template <typename T>
struct Tag {
  using type = T;
};
template <typename F>
void with_float(DType t, const char* op, F&& f) {
  if (t == DType::F32) return f(Tag<float>{});
  if (t == DType::F16) return f(Tag<half_t>{});
  throw std::invalid_argument(std::string(op) + ": unsupported dtype " + dtype_name(t));
}

}  // namespace

bool cuda_compiled() { return true; }

void pre_cuda(const PreArgs& a, uintptr_t stream) {
  const int64_t total = a.n * a.hp * a.wp;
  if (total == 0) return;
  with_float(a.out_type, "pre", [&](auto to) {
    using TO = typename decltype(to)::type;
    auto launch = [&](auto ti, auto hwc) {
      using TI = typename decltype(ti)::type;
      pre_kernel<TI, TO, decltype(hwc)::value><<<grid_for(total), kThreads, 0, as_stream(stream)>>>(
          static_cast<const TI*>(a.src), static_cast<TO*>(a.image), static_cast<TO*>(a.image_down),
          static_cast<TO*>(a.image_up), static_cast<TO*>(a.guide), a.n, a.h, a.w, a.hp, a.wp);
    };
    switch (a.src_type) {
      case DType::F32: launch(Tag<float>{}, std::false_type{}); break;
      case DType::F16: launch(Tag<half_t>{}, std::false_type{}); break;
      case DType::U8: launch(Tag<uint8_t>{}, std::true_type{}); break;
      case DType::U16: launch(Tag<uint16_t>{}, std::true_type{}); break;
    }
  });
  check_launch("pre");
}

void fuse_cuda(const FuseArgs& a, uintptr_t stream) {
  const int64_t plane = a.h * a.w;
  if (a.n * plane == 0) return;
  with_float(a.in_type, "fuse", [&](auto ti) {
    using TI = typename decltype(ti)::type;
    with_float(a.out_type, "fuse", [&](auto to) {
      using TO = typename decltype(to)::type;
      fuse_kernel<TI, TO><<<grid_for(a.n * plane), kThreads, 0, as_stream(stream)>>>(
          static_cast<const TI*>(a.masks), static_cast<const TI*>(a.image), static_cast<const TI*>(a.image_up),
          static_cast<const TI*>(a.image_down), static_cast<TO*>(a.out), a.n, plane);
    });
  });
  check_launch("fuse");
}

void curve_cuda(const CurveArgs& a, uintptr_t stream) {
  const int64_t plane = a.h * a.w;
  if (a.n * plane == 0) return;
  with_float(a.coef_type, "curve", [&](auto tc) {
    using TC = typename decltype(tc)::type;
    with_float(a.in_type, "curve", [&](auto ti) {
      using TI = typename decltype(ti)::type;
      with_float(a.out_type, "curve", [&](auto to) {
        using TO = typename decltype(to)::type;
        curve_kernel<TC, TI, TO><<<grid_for(a.n * 3 * plane), kThreads, 0, as_stream(stream)>>>(
            static_cast<const TI*>(a.x), static_cast<const TC*>(a.coef), a.coef_per_channel, static_cast<TO*>(a.out),
            a.n, plane);
      });
    });
  });
  check_launch("curve");
}

void post_cuda(const PostArgs& a, uintptr_t stream) {
  const int64_t total = a.n * a.h * a.w;
  if (total == 0) return;
  with_float(a.coef_type, "post", [&](auto tc) {
    using TC = typename decltype(tc)::type;
    with_float(a.in_type, "post", [&](auto ti) {
      using TI = typename decltype(ti)::type;
      with_float(a.out_type, "post", [&](auto to) {
        using TO = typename decltype(to)::type;
        auto launch = [&](auto hwc) {
          post_kernel<TC, TI, TO, decltype(hwc)::value><<<grid_for(total), kThreads, 0, as_stream(stream)>>>(
              static_cast<const TI*>(a.masks), static_cast<const TI*>(a.image), static_cast<const TI*>(a.image_up),
              static_cast<const TI*>(a.image_down), static_cast<const TC*>(a.coef), a.coef_per_channel,
              static_cast<TO*>(a.out), a.n, a.hp, a.wp, a.h, a.w);
        };
        if (a.out_hwc)
          launch(std::true_type{});
        else
          launch(std::false_type{});
      });
    });
  });
  check_launch("post");
}

}  // namespace sitm
