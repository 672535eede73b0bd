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

// The runtime keeps the last error of a failed call until cudaGetLastError() reads it. A failure elsewhere that
// was thrown and caught (an out-of-memory cudaMallocAsync, one input of a batch) would otherwise be reported by
// the next, successful launch's check: each entry point clears it before launching.
void clear_stale_error() { (void)cudaGetLastError(); }

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
    pre_pixel_io<TI, TO, HWC>(src, n, sy, sx, h, w, image, down, up, guide, n * 3 * plane + p, n * 2 * plane + p,
                              plane);
  }
}

template <typename TC>
__device__ __forceinline__ void load_coef(const void* coef, bool per_channel, int64_t n, int c, float k[4]) {
  const TC* p = static_cast<const TC*>(coef);
  const int64_t base = per_channel ? (n * 3 + c) * 4 : n * 4;
#pragma unroll
  for (int i = 0; i < 4; ++i) k[i] = Scalar<TC>::load(p, base + i);
}

// The post kernel's curves of image n, one per channel.
template <typename TC>
__device__ __forceinline__ void prepare_curves(const void* coef, bool per_channel, int64_t n, Fusion fusion,
                                               PixelCurve cv[3]) {
#pragma unroll
  for (int c = 0; c < 3; ++c) {
    float k[4];
    load_coef<TC>(coef, per_channel, n, c, k);
    cv[c] = prepare_curve(fusion, k);
  }
}

template <typename TC, typename TI, typename TO, bool HWC>
__global__ void post_kernel(const TI* __restrict__ m, const TI* __restrict__ img, const TI* __restrict__ iu,
                            const TI* __restrict__ id, const TC* __restrict__ coef, bool per_channel,
                            TO* __restrict__ out, int64_t n_img, int64_t hp, int64_t wp, int64_t h, int64_t w,
                            Fusion fusion) {
  const int64_t plane = hp * wp, oplane = h * w, total = n_img * oplane;
  // The three channels' curves of the current image, prepared once per thread and image, not per pixel
  // (prepare_curve has exp and double arithmetic: per pixel, on GPUs with slow FP64, it could rival the
  // pixel's memory traffic).
  PixelCurve cv[3];
  int64_t cv_n = -1;
  for (int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; t < total;
       t += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t n = t / oplane, p = t % oplane, y = p / w, x = p % w;
    if (n != cv_n) {
      prepare_curves<TC>(coef, per_channel, n, fusion, cv);
      cv_n = n;
    }
    const int64_t base = n * 3 * plane + y * wp + x;
    const float mu = Scalar<TI>::load(m, base), mm = Scalar<TI>::load(m, base + plane),
                md = Scalar<TI>::load(m, base + 2 * plane);
#pragma unroll
    for (int c = 0; c < 3; ++c) {
      const int64_t i = base + c * plane;
      const float v = hdr_pixel(cv[c], mu, mm, md, Scalar<TI>::load(img, i), Scalar<TI>::load(iu, i),
                                Scalar<TI>::load(id, i));
      if constexpr (HWC)
        Scalar<TO>::store(out, t * 3 + c, v);
      else
        Scalar<TO>::store(out, (n * 3 + c) * oplane + p, v);
    }
  }
}

// ---- post with an output encoding ----------------------------------------------------------------------
// Grid: x strides over the pixels (or 2x2 blocks) of one image, y is the image, so a block's light statistics
// belong to one image: each thread accumulates, the block reduces, one atomic per block and statistic.

constexpr int kStatsBlocks = 2048;  // grid.x cap when statistics are gathered: few atomics, enough to fill a GPU

// The coefficients' dtype is a runtime flag in PostInputs (uniform across the grid), to keep instantiations few.
template <typename TI>
struct PostInputs {
  const TI* __restrict__ m;
  const TI* __restrict__ img;
  const TI* __restrict__ iu;
  const TI* __restrict__ id;
  const void* coef;
  bool coef_half, per_channel;
  int64_t hp, wp;
  Fusion fusion;
};

// The curves of image n (a block's image: grid y), prepared once per thread before its pixel loop.
template <typename TI>
__device__ __forceinline__ void prepare_curves_rt(const PostInputs<TI>& in, int64_t n, PixelCurve cv[3]) {
  if (in.coef_half)
    prepare_curves<half_t>(in.coef, in.per_channel, n, in.fusion, cv);
  else
    prepare_curves<float>(in.coef, in.per_channel, n, in.fusion, cv);
}

// Eq. 7 + Eq. 8 (or the residual fusion) + encode_rgb for pixel (y, x) of image n, whose curves are cv.
template <typename TI>
__device__ __forceinline__ void encoded_pixel(const PostInputs<TI>& in, const EncodeParams& e, const PixelCurve cv[3],
                                              int64_t n, int64_t y, int64_t x, float rgb[3], float& light) {
  const int64_t plane = in.hp * in.wp, base = n * 3 * plane + y * in.wp + x;
  const float mu = Scalar<TI>::load(in.m, base), mm = Scalar<TI>::load(in.m, base + plane),
              md = Scalar<TI>::load(in.m, base + 2 * plane);
#pragma unroll
  for (int c = 0; c < 3; ++c) {
    const int64_t i = base + c * plane;
    rgb[c] = hdr_pixel(cv[c], mu, mm, md, Scalar<TI>::load(in.img, i), Scalar<TI>::load(in.iu, i),
                       Scalar<TI>::load(in.id, i));
  }
  encode_rgb(e, rgb[0], rgb[1], rgb[2], light);
}

template <typename TO>
struct Code {
  static __device__ __forceinline__ void put(TO* p, int64_t i, float v, const EncodeParams&) {
    Scalar<TO>::store(p, i, v);
  }
};
template <>
struct Code<uint16_t> {
  static __device__ __forceinline__ void put(uint16_t* p, int64_t i, float v, const EncodeParams& e) {
    p[i] = static_cast<uint16_t>(quantize(v, e.q_mul, e.q_add, e.q_top));
  }
};

// Block-wide max and sum, then stats[0] = max(stats[0], max) and stats[1] += sum * inv_count (float32;
// the light values are >= 0, so their bit patterns order like the values and atomicMax on them works).
__device__ __forceinline__ void reduce_stats(float mx, float sum, float* stats, float inv_count) {
  __shared__ float s_max[32], s_sum[32];
  for (int o = 16; o > 0; o >>= 1) {
    mx = fmaxf(mx, __shfl_down_sync(0xffffffffu, mx, o));
    sum += __shfl_down_sync(0xffffffffu, sum, o);
  }
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = (blockDim.x + 31) >> 5;
  if (lane == 0) s_max[warp] = mx, s_sum[warp] = sum;
  __syncthreads();
  if (warp == 0) {
    mx = lane < warps ? s_max[lane] : 0.0f;
    sum = lane < warps ? s_sum[lane] : 0.0f;
    for (int o = 16; o > 0; o >>= 1) {
      mx = fmaxf(mx, __shfl_down_sync(0xffffffffu, mx, o));
      sum += __shfl_down_sync(0xffffffffu, sum, o);
    }
    if (lane == 0) {
      // + 0.0f turns -0.0 (whose sign bit would out-order every positive value) into +0.0
      atomicMax(reinterpret_cast<unsigned int*>(stats), __float_as_uint(mx + 0.0f));
      atomicAdd(stats + 1, sum * inv_count);
    }
  }
}

template <typename TI, typename TO, bool HWC>
__global__ void post_encode_kernel(PostInputs<TI> in, EncodeParams e, TO* __restrict__ out, float* stats,
                                   int64_t h, int64_t w) {
  const int64_t n = blockIdx.y, oplane = h * w;
  PixelCurve cv[3];
  prepare_curves_rt(in, n, cv);
  float mx = 0.0f, sum = 0.0f;
  for (int64_t p = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; p < oplane;
       p += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t y = p / w, x = p % w;
    float rgb[3], light;
    encoded_pixel(in, e, cv, n, y, x, rgb, light);
    mx = fmaxf(mx, light);
    sum += light;
#pragma unroll
    for (int c = 0; c < 3; ++c) {
      if constexpr (HWC)
        Code<TO>::put(out, (n * oplane + p) * 3 + c, rgb[c], e);
      else
        Code<TO>::put(out, (n * 3 + c) * oplane + p, rgb[c], e);
    }
  }
  if (stats != nullptr) reduce_stats(mx, sum, stats + 2 * n, 1.0f / static_cast<float>(oplane));
}

// One thread per chroma sample (i, j): luma of the 2x2 block at (2i, 2j), chroma from columns 2j-1..2j+1 of
// rows 2i and 2i+1 (clamped at the edges), the same filter and order of operations as the CPU twin.
template <typename TI>
__global__ void post_yuv420_kernel(PostInputs<TI> in, EncodeParams e, uint16_t* __restrict__ out, float* stats,
                                   int64_t h, int64_t w) {
  const int64_t n = blockIdx.y, ch = (h + 1) / 2, cw = (w + 1) / 2, count = ch * cw;
  uint16_t* f = out + n * (h * w + 2 * count);
  PixelCurve cv[3];
  prepare_curves_rt(in, n, cv);
  float mx = 0.0f, sum = 0.0f;
  for (int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; t < count;
       t += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t i = t / cw, j = t % cw;
    const int64_t xs[3] = {j > 0 ? 2 * j - 1 : 0, 2 * j, 2 * j + 1 < w ? 2 * j + 1 : w - 1};
    float acc[2][3];
#pragma unroll
    for (int k = 0; k < 2; ++k) {
      const int64_t yy = 2 * i + k, y = yy < h ? yy : h - 1;
      float px[3][3];
#pragma unroll
      for (int s = 0; s < 3; ++s) {
        float light;
        encoded_pixel(in, e, cv, n, y, xs[s], px[s], light);
        const bool own = yy < h && s > 0 && (s == 1 || 2 * j + 1 < w);  // pixels (yy, 2j) and (yy, 2j+1)
        if (own) {
          float Y, cb, cr;
          rgb_to_ycbcr(e, px[s][0], px[s][1], px[s][2], Y, cb, cr);
          f[yy * w + xs[s]] = static_cast<uint16_t>(quantize(Y, e.q_mul, e.q_add, e.q_top));
          mx = fmaxf(mx, light);
          sum += light;
        }
      }
#pragma unroll
      for (int c = 0; c < 3; ++c) acc[k][c] = px[0][c] + 2.0f * px[1][c] + px[2][c];
    }
    float avg[3];
#pragma unroll
    for (int c = 0; c < 3; ++c) avg[c] = (acc[0][c] + acc[1][c]) * 0.125f;
    float Y, cb, cr;
    rgb_to_ycbcr(e, avg[0], avg[1], avg[2], Y, cb, cr);
    f[h * w + t] = static_cast<uint16_t>(quantize(cb, e.qc_mul, e.qc_add, e.q_top));
    f[h * w + count + t] = static_cast<uint16_t>(quantize(cr, e.qc_mul, e.qc_add, e.q_top));
  }
  if (stats != nullptr) reduce_stats(mx, sum, stats + 2 * n, 1.0f / static_cast<float>(h * w));
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

template <typename TX>
__global__ void ema_kernel(float* __restrict__ state, const TX* __restrict__ x, int64_t count, float a) {
  for (int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; t < count;
       t += static_cast<int64_t>(gridDim.x) * blockDim.x)
    state[t] = ema_step(state[t], Scalar<TX>::load(x, t), a);
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
  clear_stale_error();
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
  clear_stale_error();
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

void ema_cuda(const EmaArgs& a, uintptr_t stream) {
  clear_stale_error();
  if (a.count == 0) return;
  with_float(a.x_type, "ema", [&](auto tx) {
    using TX = typename decltype(tx)::type;
    ema_kernel<TX><<<grid_for(a.count), kThreads, 0, as_stream(stream)>>>(a.state, static_cast<const TX*>(a.x),
                                                                           a.count, a.a);
  });
  check_launch("ema");
}

void curve_cuda(const CurveArgs& a, uintptr_t stream) {
  clear_stale_error();
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

namespace {

void post_encode_cuda(const PostArgs& a, uintptr_t stream) {
  clear_stale_error();
  const cudaStream_t s = as_stream(stream);
  if (a.stats != nullptr) {
    const cudaError_t err = cudaMemsetAsync(a.stats, 0, static_cast<size_t>(a.n) * 2 * sizeof(float), s);
    if (err != cudaSuccess) {
      clear_stale_error();
      throw std::runtime_error(std::string("post: clearing stats failed: ") + cudaGetErrorString(err));
    }
  }
  const int64_t work = a.out_yuv420 ? ((a.h + 1) / 2) * ((a.w + 1) / 2) : a.h * a.w;
  if (a.n == 0 || work == 0) return;
  if (a.n > 65535) throw std::invalid_argument("post: at most 65535 images per call with an output encoding");
  int64_t blocks = (work + kThreads - 1) / kThreads;
  const int64_t cap = a.stats != nullptr ? kStatsBlocks : 65535LL * 32;
  if (blocks > cap) blocks = cap;
  const dim3 grid(static_cast<unsigned>(blocks), static_cast<unsigned>(a.n));
  with_float(a.in_type, "post", [&](auto ti) {
    using TI = typename decltype(ti)::type;
    PostInputs<TI> in{static_cast<const TI*>(a.masks), static_cast<const TI*>(a.image),
                      static_cast<const TI*>(a.image_up), static_cast<const TI*>(a.image_down), a.coef,
                      a.coef_type == DType::F16, a.coef_per_channel, a.hp, a.wp, a.fusion};
    if (a.out_yuv420) {
      if (a.out_type != DType::U16) throw std::invalid_argument("post: yuv420p output must be uint16");
      post_yuv420_kernel<TI><<<grid, kThreads, 0, s>>>(in, a.enc, static_cast<uint16_t*>(a.out), a.stats, a.h, a.w);
      return;
    }
    auto launch = [&](auto to, auto hwc) {
      using TO = typename decltype(to)::type;
      post_encode_kernel<TI, TO, decltype(hwc)::value>
          <<<grid, kThreads, 0, s>>>(in, a.enc, static_cast<TO*>(a.out), a.stats, a.h, a.w);
    };
    auto with_layout = [&](auto to) {
      if (a.out_hwc)
        launch(to, std::true_type{});
      else
        launch(to, std::false_type{});
    };
    switch (a.out_type) {
      case DType::F32: with_layout(Tag<float>{}); break;
      case DType::F16: with_layout(Tag<half_t>{}); break;
      case DType::U16: with_layout(Tag<uint16_t>{}); break;
      default: throw std::invalid_argument(std::string("post: unsupported dtype ") + dtype_name(a.out_type));
    }
  });
  check_launch("post");
}

}  // namespace

void post_cuda(const PostArgs& a, uintptr_t stream) {
  clear_stale_error();
  if (a.encode) return post_encode_cuda(a, stream);
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
              static_cast<TO*>(a.out), a.n, a.hp, a.wp, a.h, a.w, a.fusion);
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
