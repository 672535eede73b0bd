// CPU loops of the sitm-trt kernels: the per-pixel math is sitm/pixel_math.h, shared with csrc/cuda.
// Work is split by rows over std::threads; the inner loops run over contiguous pixels of a row with no
// branches in the common (unpadded) part, so the compiler can vectorize them.
//
// One file of about 560 lines on purpose: it is the CPU twin of csrc/cuda/kernels.cu, one row loop per op
// (pre, fuse, curve, post and its encoded outputs, ema) plus their dtype dispatch, and every loop uses the same
// file-local helpers (parallel_for and the thread count, the row writers, the dispatch templates) from an
// anonymous namespace, where they inline. Split by op family, those helpers would become an internal header
// shared by two translation units, for files that still change together whenever an op's arguments do.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <stdexcept>
#include <thread>
#include <type_traits>
#include <vector>

#if defined(__SSE2__)
#include <xmmintrin.h>
#endif

#include "sitm/ops.h"
#include "sitm/pixel_math.h"

namespace sitm {
namespace {

std::atomic<int> g_threads{0};

template <typename T>
struct TypeTag {
  using type = T;
};

int resolved_threads() {
  const int n = g_threads.load();
  if (n > 0) return n;
  const unsigned hw = std::thread::hardware_concurrency();
  return hw == 0 ? 1 : static_cast<int>(hw);
}

// Runs fn(begin, end) over [0, count) split into contiguous chunks, one per thread. Threads are started per
// call (no pool to survive fork() in data-loader workers); below `min_per_thread` items it runs inline.
template <typename Fn>
void parallel_for(int64_t count, int64_t min_per_thread, Fn&& fn) {
  if (count <= 0) return;
  const int64_t want = std::max<int64_t>(1, count / std::max<int64_t>(1, min_per_thread));
  const int threads = static_cast<int>(std::min<int64_t>(resolved_threads(), want));
  if (threads <= 1) {
    fn(int64_t{0}, count);
    return;
  }
  std::vector<std::thread> pool;
  pool.reserve(threads - 1);
  const int64_t chunk = (count + threads - 1) / threads;
  std::exception_ptr error;
  std::atomic<bool> failed{false};
  auto run = [&](int64_t b, int64_t e) {
    try {
      fn(b, e);
    } catch (...) {
      if (!failed.exchange(true)) error = std::current_exception();
    }
  };
  for (int t = 1; t < threads; ++t) {
    const int64_t b = t * chunk, e = std::min(count, b + chunk);
    if (b < e) pool.emplace_back(run, b, e);
  }
  run(0, std::min(count, chunk));
  for (auto& th : pool) th.join();
  if (error) std::rethrow_exception(error);
}

// Rows are the unit of work; keep at least ~16k pixels per thread so thread start-up stays negligible.
int64_t rows_per_thread(int64_t width) { return std::max<int64_t>(1, 16384 / std::max<int64_t>(1, width)); }

// ---- pre from interleaved integer frames (the decoder's uint8/uint16 (N, H, W, 3)): the hot path -----------
// The frame is read once and 11 planes are written (44 bytes per pixel in float32 for 3 read), so the pass is
// bound by the stores. The 11 planes lie a multiple of the plane size apart, so writing one pixel to all of
// them at once makes 11 store streams that share cache sets (and, with non-temporal stores, exhaust the
// write-combining buffers): 7-14x slower than a copy. Instead each row is done in chunks: the chunk's pixels
// are normalized and run through pre_pixel into small arrays (pre_normalize), then each of the 11 output rows
// is written as one contiguous run.
// Float32 outputs of large frames use non-temporal stores (whole cache lines are overwritten, so reading them
// first is wasted traffic, and the network reads them much later).

// Normalizes `count` interleaved pixels (r, g, b, l_down, l_up arrays) with Scalar<TI>::load (a true division:
// bit-exact with the generic path) and pre_pixel. The compiler vectorizes this loop (stride-3 loads included);
// on x86-64 Linux it is also compiled for AVX2 and picked at load time.
#if defined(__x86_64__) && defined(__linux__) && defined(__GNUC__)
#define SITM_CPU_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define SITM_CPU_CLONES
#endif

template <typename TI>
inline void pre_normalize_impl(const TI* __restrict s, int64_t count, float* __restrict r, float* __restrict g,
                               float* __restrict b, float* __restrict l_down, float* __restrict l_up) {
  for (int64_t k = 0; k < count; ++k) {
    const float R = Scalar<TI>::load(s, 3 * k), G = Scalar<TI>::load(s, 3 * k + 1), B = Scalar<TI>::load(s, 3 * k + 2);
    const PrePixel p = pre_pixel(R, G, B);
    r[k] = R;
    g[k] = G;
    b[k] = B;
    l_down[k] = p.l_down;
    l_up[k] = p.l_up;
  }
}
SITM_CPU_CLONES void pre_normalize(const uint8_t* s, int64_t count, float* r, float* g, float* b, float* l_down,
                                   float* l_up) {
  pre_normalize_impl(s, count, r, g, b, l_down, l_up);
}
SITM_CPU_CLONES void pre_normalize(const uint16_t* s, int64_t count, float* r, float* g, float* b, float* l_down,
                                   float* l_up) {
  pre_normalize_impl(s, count, r, g, b, l_down, l_up);
}

constexpr int64_t kPreChunk = 256;  // pixels: 5 float arrays of 1 KiB stay in L1; each output run is 16 lines

// Frames whose float32 outputs exceed this many bytes are written with non-temporal stores; smaller ones
// stay in the last-level cache for the network (32 MiB here).
constexpr int64_t kStreamingBytes = int64_t{16} << 20;

// out[x] = a[x] * b[x] (b == nullptr: a[x]) for x in [0, count).
template <typename TO>
inline void pre_write(TO* out, const float* a, const float* b, int64_t count, bool streaming) {
#if defined(__SSE2__)
  if constexpr (std::is_same_v<TO, float>) {
    if (streaming) {  // out is 16-byte aligned and count a multiple of 4 (checked by the caller)
      for (int64_t x = 0; x < count; x += 4) {
        const __m128 v = b ? _mm_mul_ps(_mm_loadu_ps(a + x), _mm_loadu_ps(b + x)) : _mm_loadu_ps(a + x);
        _mm_stream_ps(out + x, v);
      }
      return;
    }
  }
#endif
  (void)streaming;
  if (b)
    for (int64_t x = 0; x < count; ++x) Scalar<TO>::store(out, x, a[x] * b[x]);
  else
    for (int64_t x = 0; x < count; ++x) Scalar<TO>::store(out, x, a[x]);
}

template <typename TI, typename TO>
void pre_hwc_impl(const PreArgs& a) {
  const TI* src = static_cast<const TI*>(a.src);
  TO* image = static_cast<TO*>(a.image);
  TO* down = static_cast<TO*>(a.image_down);
  TO* up = static_cast<TO*>(a.image_up);
  TO* guide = static_cast<TO*>(a.guide);
  const int64_t h = a.h, w = a.w, hp = a.hp, wp = a.wp, plane = hp * wp;
  bool streaming = false;
#if defined(__SSE2__)
  if constexpr (std::is_same_v<TO, float>) {
    const auto aligned = [](const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; };
    streaming = a.n * 11 * plane * int64_t{4} >= kStreamingBytes && wp % 4 == 0 && aligned(image) &&
                aligned(down) && aligned(up) && aligned(guide);
  }
#endif
  parallel_for(a.n * hp, rows_per_thread(wp), [&](int64_t begin, int64_t end) {
    alignas(64) float c[3][kPreChunk], l_down[kPreChunk], l_up[kPreChunk];
    for (int64_t row = begin; row < end; ++row) {
      const int64_t n = row / hp, y = row % hp, sy = reflect_index(y, h);
      const int64_t o = n * 3 * plane + y * wp, og = n * 2 * plane + y * wp;
      const TI* s = src + (n * h + sy) * w * 3;
      for (int64_t x0 = 0; x0 < wp; x0 += kPreChunk) {
        const int64_t count = std::min(kPreChunk, wp - x0);
        const int64_t inside = std::max<int64_t>(0, std::min(count, w - x0));  // pixels before the padding
        pre_normalize(s + x0 * 3, inside, c[0], c[1], c[2], l_down, l_up);
        for (int64_t k = inside; k < count; ++k) {  // reflected padding columns
          const int64_t i = reflect_index(x0 + k, w) * 3;
          const float r = Scalar<TI>::load(s, i), g = Scalar<TI>::load(s, i + 1), b = Scalar<TI>::load(s, i + 2);
          const PrePixel p = pre_pixel(r, g, b);
          c[0][k] = r;
          c[1][k] = g;
          c[2][k] = b;
          l_down[k] = p.l_down;
          l_up[k] = p.l_up;
        }
        for (int ch = 0; ch < 3; ++ch) {
          const int64_t at = o + ch * plane + x0;
          pre_write(image + at, c[ch], nullptr, count, streaming);
          pre_write(down + at, c[ch], l_down, count, streaming);
          pre_write(up + at, c[ch], l_up, count, streaming);
        }
        pre_write(guide + og + x0, l_down, nullptr, count, streaming);
        pre_write(guide + og + plane + x0, l_up, nullptr, count, streaming);
      }
    }
#if defined(__SSE2__)
    if (streaming) _mm_sfence();  // order the non-temporal stores before the join
#endif
  });
}

template <typename TI, typename TO, bool HWC>
void pre_impl(const PreArgs& a) {
  if constexpr (HWC && (std::is_same_v<TI, uint8_t> || std::is_same_v<TI, uint16_t>)) {
    return pre_hwc_impl<TI, TO>(a);
  }
  const TI* src = static_cast<const TI*>(a.src);
  TO* image = static_cast<TO*>(a.image);
  TO* down = static_cast<TO*>(a.image_down);
  TO* up = static_cast<TO*>(a.image_up);
  TO* guide = static_cast<TO*>(a.guide);
  const int64_t h = a.h, w = a.w, hp = a.hp, wp = a.wp, plane = hp * wp;
  parallel_for(a.n * hp, rows_per_thread(wp), [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t n = row / hp, y = row % hp, sy = reflect_index(y, h);
      const int64_t o = n * 3 * plane + y * wp;  // offset of this row in channel 0 of an (N,3,hp,wp) tensor
      const int64_t og = n * 2 * plane + y * wp;
      auto pixel = [&](int64_t x, int64_t sx) {
        pre_pixel_io<TI, TO, HWC>(src, n, sy, sx, h, w, image, down, up, guide, o + x, og + x, plane);
      };
      for (int64_t x = 0; x < w; ++x) pixel(x, x);
      for (int64_t x = w; x < wp; ++x) pixel(x, reflect_index(x, w));
    }
  });
}

template <typename TI, typename TO>
void fuse_impl(const FuseArgs& a) {
  const TI* m = static_cast<const TI*>(a.masks);
  const TI* img = static_cast<const TI*>(a.image);
  const TI* iu = static_cast<const TI*>(a.image_up);
  const TI* id = static_cast<const TI*>(a.image_down);
  TO* out = static_cast<TO*>(a.out);
  const int64_t plane = a.h * a.w;
  parallel_for(a.n * a.h, rows_per_thread(a.w), [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t n = row / a.h, y = row % a.h;
      const int64_t base = n * 3 * plane + y * a.w;
      for (int c = 0; c < 3; ++c) {
        const int64_t ch = base + c * plane;
        for (int64_t x = 0; x < a.w; ++x) {
          const int64_t mi = base + x;
          const float v = fuse_pixel(Scalar<TI>::load(m, mi), Scalar<TI>::load(m, mi + plane),
                                     Scalar<TI>::load(m, mi + 2 * plane), Scalar<TI>::load(img, ch + x),
                                     Scalar<TI>::load(iu, ch + x), Scalar<TI>::load(id, ch + x));
          Scalar<TO>::store(out, ch + x, v);
        }
      }
    }
  });
}

template <typename TC>
void load_coef(const void* coef, bool per_channel, int64_t n, int c, float k[4]) {
  const TC* p = static_cast<const TC*>(coef);
  const int64_t base = per_channel ? (n * 3 + c) * 4 : n * 4;
  for (int i = 0; i < 4; ++i) k[i] = Scalar<TC>::load(p, base + i);
}

inline void load_coef_any(const void* coef, DType t, bool per_channel, int64_t n, int c, float k[4]) {
  if (t == DType::F32)
    load_coef<float>(coef, per_channel, n, c, k);
  else
    load_coef<half_t>(coef, per_channel, n, c, k);
}

template <typename TI, typename TO>
void curve_impl(const CurveArgs& a) {
  const TI* x = static_cast<const TI*>(a.x);
  TO* out = static_cast<TO*>(a.out);
  const int64_t plane = a.h * a.w;
  parallel_for(a.n * a.h, rows_per_thread(a.w), [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t n = row / a.h, y = row % a.h;
      for (int c = 0; c < 3; ++c) {
        float k[4];
        load_coef_any(a.coef, a.coef_type, a.coef_per_channel, n, c, k);
        const int64_t o = (n * 3 + c) * plane + y * a.w;
        for (int64_t i = 0; i < a.w; ++i)
          Scalar<TO>::store(out, o + i, curve_eval(Scalar<TI>::load(x, o + i), k[0], k[1], k[2], k[3]));
      }
    }
  });
}

// ---- the residual fusion's rows -------------------------------------------------------------------------
// decode_gamma is branch-free and its pow (pow_scaled) plain float arithmetic, so these loops vectorize (with
// libm's powf, two per decode, the residual post was 8-16x slower than the paper's). Per chunk of a row the
// three images are decoded in one loop each, then blended: a loop body of one decode keeps its constants in
// registers (three interleaved decodes spill them). On x86-64 this is also compiled for AVX2 with FMA (the
// compiler contracts a * b + c into one instruction and one rounding, in pow_scaled's polynomials mostly:
// 25% faster than AVX2 alone) and that version is picked once at run time; the two versions' results differ
// by those roundings, within pow_scaled's stated error.
constexpr int64_t kResidualChunk = 512;  // pixels: 3 decoded rows of 2 KiB stay in L1

inline void residual_loop(const float* __restrict mu, const float* __restrict mm, const float* __restrict md,
                          const float* __restrict i, const float* __restrict iu, const float* __restrict id,
                          int64_t count, const PixelCurve& curve, float* __restrict out) {
  const PixelCurve c = curve;  // a local copy: the stores cannot change it
  alignas(64) float l[3][kResidualChunk];
  const float* src[3] = {i, iu, id};
  for (int64_t x0 = 0; x0 < count; x0 += kResidualChunk) {
    const int64_t len = std::min(kResidualChunk, count - x0);
    for (int k = 0; k < 3; ++k) {
      const float* __restrict v = src[k] + x0;
      float* __restrict lk = l[k];
      for (int64_t x = 0; x < len; ++x) lk[x] = decode_gamma(v[x], c);
    }
    for (int64_t x = 0; x < len; ++x)
      out[x0 + x] = residual_blend(mu[x0 + x], mm[x0 + x], md[x0 + x], l[0][x], l[1][x], l[2][x], c);
  }
}
__attribute__((flatten)) void residual_span_generic(const float* mu, const float* mm, const float* md, const float* i,
                                                    const float* iu, const float* id, int64_t count,
                                                    const PixelCurve& c, float* out) {
  residual_loop(mu, mm, md, i, iu, id, count, c, out);
}
#if defined(__x86_64__) && defined(__GNUC__)
#define SITM_CPU_FMA 1
__attribute__((flatten, target("avx2,fma"))) void residual_span_fma(const float* mu, const float* mm, const float* md,
                                                                   const float* i, const float* iu, const float* id,
                                                                   int64_t count, const PixelCurve& c, float* out) {
  residual_loop(mu, mm, md, i, iu, id, count, c, out);
}
#endif
// Dispatched by hand, not with target_clones like SITM_CPU_CLONES: a clone is one ISA name ("avx2" cannot add
// FMA), and GCC's resolver picks an "arch=haswell" clone only on Intel Haswell-class CPUs (__builtin_cpu_is):
// measured on this AMD machine, the SSE2 clone ran instead, 2.7x slower.
void residual_span(const float* mu, const float* mm, const float* md, const float* i, const float* iu, const float* id,
                   int64_t count, const PixelCurve& c, float* out) {
#if defined(SITM_CPU_FMA)
  static const bool fma = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  if (fma) return residual_span_fma(mu, mm, md, i, iu, id, count, c, out);
#endif
  residual_span_generic(mu, mm, md, i, iu, id, count, c, out);
}

// One row and channel of the residual fusion into out[0, count): the masks from element offset mi (their
// planes `plane` apart), the images from ci. float inputs are read in place, float16 through float chunks.
template <typename TI>
void residual_row(const TI* m, const TI* img, const TI* iu, const TI* id, int64_t mi, int64_t plane, int64_t ci,
                  int64_t count, const PixelCurve& c, float* out) {
  const TI* src[6] = {m + mi, m + mi + plane, m + mi + 2 * plane, img + ci, iu + ci, id + ci};
  if constexpr (std::is_same_v<TI, float>) {
    residual_span(src[0], src[1], src[2], src[3], src[4], src[5], count, c, out);
  } else {
    alignas(64) float buf[6][kResidualChunk];
    for (int64_t x0 = 0; x0 < count; x0 += kResidualChunk) {
      const int64_t len = std::min(kResidualChunk, count - x0);
      for (int k = 0; k < 6; ++k)
        for (int64_t x = 0; x < len; ++x) buf[k][x] = Scalar<TI>::load(src[k], x0 + x);
      residual_span(buf[0], buf[1], buf[2], buf[3], buf[4], buf[5], len, c, out + x0);
    }
  }
}

template <typename TI, typename TO, bool HWC>
void post_impl(const PostArgs& a) {
  const TI* m = static_cast<const TI*>(a.masks);
  const TI* img = static_cast<const TI*>(a.image);
  const TI* iu = static_cast<const TI*>(a.image_up);
  const TI* id = static_cast<const TI*>(a.image_down);
  TO* out = static_cast<TO*>(a.out);
  const int64_t hp = a.hp, wp = a.wp, h = a.h, w = a.w, plane = hp * wp, oplane = h * w;
  const bool residual = a.fusion == Fusion::Residual;
  // the residual rows go straight into a float NCHW output, else through a row of floats
  constexpr bool direct = std::is_same_v<TO, float> && !HWC;
  parallel_for(a.n * h, rows_per_thread(w), [&](int64_t begin, int64_t end) {
    std::vector<float> buf(residual && !direct ? static_cast<size_t>(w) : 0);
    for (int64_t row = begin; row < end; ++row) {
      const int64_t n = row / h, y = row % h;
      const int64_t base = n * 3 * plane + y * wp;  // input row, channel 0
      for (int c = 0; c < 3; ++c) {
        float k[4];
        load_coef_any(a.coef, a.coef_type, a.coef_per_channel, n, c, k);
        const PixelCurve cv = prepare_curve(a.fusion, k);  // once per row and channel
        const int64_t ch = base + c * plane;
        if (residual) {
          if constexpr (direct) {
            residual_row<TI>(m, img, iu, id, base, plane, ch, w, cv, out + (n * 3 + c) * oplane + y * w);
          } else {
            residual_row<TI>(m, img, iu, id, base, plane, ch, w, cv, buf.data());
            for (int64_t x = 0; x < w; ++x) {
              if constexpr (HWC)
                Scalar<TO>::store(out, ((n * h + y) * w + x) * 3 + c, buf[x]);
              else
                Scalar<TO>::store(out, (n * 3 + c) * oplane + y * w + x, buf[x]);
            }
          }
          continue;
        }
        for (int64_t x = 0; x < w; ++x) {
          const int64_t mi = base + x;
          const float v = hdr_pixel(cv, Scalar<TI>::load(m, mi), Scalar<TI>::load(m, mi + plane),
                                    Scalar<TI>::load(m, mi + 2 * plane), Scalar<TI>::load(img, ch + x),
                                    Scalar<TI>::load(iu, ch + x), Scalar<TI>::load(id, ch + x));
          if constexpr (HWC)
            Scalar<TO>::store(out, ((n * h + y) * w + x) * 3 + c, v);
          else
            Scalar<TO>::store(out, (n * 3 + c) * oplane + y * w + x, v);
        }
      }
    }
  });
}

// ---- post with an output encoding (gamut, PQ/HLG, code values, 4:2:0, light statistics) -------------------

// Stores one encoded channel: float types as they are, uint16 as a code value.
template <typename TO>
struct Code {
  static void put(TO* p, int64_t i, float v, const EncodeParams&) { Scalar<TO>::store(p, i, v); }
};
template <>
struct Code<uint16_t> {
  static void put(uint16_t* p, int64_t i, float v, const EncodeParams& e) {
    p[i] = static_cast<uint16_t>(quantize(v, e.q_mul, e.q_add, e.q_top));
  }
};

// Per-row light statistics (max, sum in double), reduced per image once the rows are done.
struct RowStats {
  std::vector<float> max;
  std::vector<double> sum;
  explicit RowStats(int64_t rows) : max(rows, 0.0f), sum(rows, 0.0) {}
  void write(float* stats, int64_t n, int64_t rows_per_image, int64_t pixels) const {
    if (stats == nullptr) return;
    for (int64_t i = 0; i < n; ++i) {
      float mx = 0.0f;
      double total = 0.0;
      for (int64_t r = i * rows_per_image; r < (i + 1) * rows_per_image; ++r) {
        mx = std::max(mx, max[r]);
        total += sum[r];
      }
      stats[2 * i] = mx;
      stats[2 * i + 1] = pixels > 0 ? static_cast<float>(total / static_cast<double>(pixels)) : 0.0f;
    }
  }
};

// Encoded R'G'B' of `count` pixels of row y, image n, from column x0: planes r, g, b (count floats each).
template <typename TI>
void encoded_row(const PostArgs& a, int64_t n, int64_t y, float* r, float* g, float* b, float* light) {
  const TI* m = static_cast<const TI*>(a.masks);
  const TI* img = static_cast<const TI*>(a.image);
  const TI* iu = static_cast<const TI*>(a.image_up);
  const TI* id = static_cast<const TI*>(a.image_down);
  const int64_t plane = a.hp * a.wp, base = n * 3 * plane + y * a.wp;
  float* rgb[3] = {r, g, b};
  for (int c = 0; c < 3; ++c) {
    float k[4];
    load_coef_any(a.coef, a.coef_type, a.coef_per_channel, n, c, k);
    const PixelCurve cv = prepare_curve(a.fusion, k);  // once per row and channel
    const int64_t ch = base + c * plane;
    float* dst = rgb[c];
    if (a.fusion == Fusion::Residual) {
      residual_row<TI>(m, img, iu, id, base, plane, ch, a.w, cv, dst);
      continue;
    }
    for (int64_t x = 0; x < a.w; ++x) {
      const int64_t mi = base + x;
      dst[x] = hdr_pixel(cv, Scalar<TI>::load(m, mi), Scalar<TI>::load(m, mi + plane),
                         Scalar<TI>::load(m, mi + 2 * plane), Scalar<TI>::load(img, ch + x),
                         Scalar<TI>::load(iu, ch + x), Scalar<TI>::load(id, ch + x));
    }
  }
  for (int64_t x = 0; x < a.w; ++x) encode_rgb(a.enc, r[x], g[x], b[x], light[x]);
}

template <typename TI, typename TO, bool HWC>
void post_encode_impl(const PostArgs& a) {
  TO* out = static_cast<TO*>(a.out);
  const int64_t h = a.h, w = a.w, oplane = h * w;
  RowStats rs(a.n * h);
  parallel_for(a.n * h, rows_per_thread(w), [&](int64_t begin, int64_t end) {
    std::vector<float> buf(4 * static_cast<size_t>(w));
    float *r = buf.data(), *g = r + w, *b = g + w, *light = b + w;
    for (int64_t row = begin; row < end; ++row) {
      const int64_t n = row / h, y = row % h;
      encoded_row<TI>(a, n, y, r, g, b, light);
      float mx = 0.0f;
      double sum = 0.0;
      for (int64_t x = 0; x < w; ++x) {
        mx = std::max(mx, light[x]);
        sum += light[x];
      }
      rs.max[row] = mx;
      rs.sum[row] = sum;
      const float* rgb[3] = {r, g, b};
      for (int c = 0; c < 3; ++c) {
        for (int64_t x = 0; x < w; ++x) {
          if constexpr (HWC)
            Code<TO>::put(out, ((n * h + y) * w + x) * 3 + c, rgb[c][x], a.enc);
          else
            Code<TO>::put(out, (n * 3 + c) * oplane + y * w + x, rgb[c][x], a.enc);
        }
      }
    }
  });
  rs.write(a.stats, a.n, h, oplane);
}

template <typename TI>
void post_yuv420_impl(const PostArgs& a) {
  uint16_t* out = static_cast<uint16_t*>(a.out);
  const EncodeParams& e = a.enc;
  const int64_t h = a.h, w = a.w, ch = (h + 1) / 2, cw = (w + 1) / 2, frame = h * w + 2 * ch * cw;
  RowStats rs(a.n * ch);
  parallel_for(a.n * ch, std::max<int64_t>(1, rows_per_thread(w) / 2), [&](int64_t begin, int64_t end) {
    std::vector<float> buf(8 * static_cast<size_t>(w));
    for (int64_t row = begin; row < end; ++row) {
      const int64_t n = row / ch, i = row % ch;
      uint16_t* f = out + n * frame;
      float* rows[2][3];
      float mx = 0.0f;
      double sum = 0.0;
      for (int k = 0; k < 2; ++k) {
        float* r = buf.data() + k * 4 * w;
        rows[k][0] = r, rows[k][1] = r + w, rows[k][2] = r + 2 * w;
        float* light = r + 3 * w;
        const int64_t y = std::min(2 * i + k, h - 1);
        encoded_row<TI>(a, n, y, rows[k][0], rows[k][1], rows[k][2], light);
        if (2 * i + k >= h) continue;  // the last row of an odd height: chroma input only
        for (int64_t x = 0; x < w; ++x) {
          float yy, cb, cr;
          rgb_to_ycbcr(e, rows[k][0][x], rows[k][1][x], rows[k][2][x], yy, cb, cr);
          f[y * w + x] = static_cast<uint16_t>(quantize(yy, e.q_mul, e.q_add, e.q_top));
          mx = std::max(mx, light[x]);
          sum += light[x];
        }
      }
      rs.max[row] = mx;
      rs.sum[row] = sum;
      for (int64_t j = 0; j < cw; ++j) {
        const int64_t xl = std::max<int64_t>(2 * j - 1, 0), xc = 2 * j, xr = std::min(2 * j + 1, w - 1);
        float avg[3];
        for (int c = 0; c < 3; ++c) {
          const float* p0 = rows[0][c];
          const float* p1 = rows[1][c];
          avg[c] = ((p0[xl] + 2.0f * p0[xc] + p0[xr]) + (p1[xl] + 2.0f * p1[xc] + p1[xr])) * 0.125f;
        }
        float yy, cb, cr;
        rgb_to_ycbcr(e, avg[0], avg[1], avg[2], yy, cb, cr);
        f[h * w + i * cw + j] = static_cast<uint16_t>(quantize(cb, e.qc_mul, e.qc_add, e.q_top));
        f[h * w + ch * cw + i * cw + j] = static_cast<uint16_t>(quantize(cr, e.qc_mul, e.qc_add, e.q_top));
      }
    }
  });
  rs.write(a.stats, a.n, ch, h * w);
}

[[noreturn]] void unsupported(const char* op, DType t) {
  throw std::invalid_argument(std::string(op) + ": unsupported dtype " + dtype_name(t));
}

// Dispatch helpers: call F<TI, TO> for the runtime float types.
template <template <typename, typename> class F, typename Args>
void dispatch_float2(const char* op, DType ti, DType to, const Args& a) {
  if (ti == DType::F32 && to == DType::F32) return F<float, float>::run(a);
  if (ti == DType::F32 && to == DType::F16) return F<float, half_t>::run(a);
  if (ti == DType::F16 && to == DType::F32) return F<half_t, float>::run(a);
  if (ti == DType::F16 && to == DType::F16) return F<half_t, half_t>::run(a);
  unsupported(op, ti == DType::F32 || ti == DType::F16 ? to : ti);
}

template <typename TI, typename TO>
struct Fuse {
  static void run(const FuseArgs& a) { fuse_impl<TI, TO>(a); }
};
template <typename TI, typename TO>
struct Curve {
  static void run(const CurveArgs& a) { curve_impl<TI, TO>(a); }
};
template <typename TI, typename TO>
struct Post {
  static void run(const PostArgs& a) {
    if (a.out_hwc)
      post_impl<TI, TO, true>(a);
    else
      post_impl<TI, TO, false>(a);
  }
};
template <typename TO>
void pre_dispatch_in(const PreArgs& a) {
  switch (a.src_type) {
    case DType::F32: return pre_impl<float, TO, false>(a);
    case DType::F16: return pre_impl<half_t, TO, false>(a);
    case DType::U8: return pre_impl<uint8_t, TO, true>(a);
    case DType::U16: return pre_impl<uint16_t, TO, true>(a);
  }
  unsupported("pre", a.src_type);
}

}  // namespace

void pre_cpu(const PreArgs& a) {
  if (a.out_type == DType::F32) return pre_dispatch_in<float>(a);
  if (a.out_type == DType::F16) return pre_dispatch_in<half_t>(a);
  unsupported("pre", a.out_type);
}
void fuse_cpu(const FuseArgs& a) { dispatch_float2<Fuse>("fuse", a.in_type, a.out_type, a); }
void curve_cpu(const CurveArgs& a) { dispatch_float2<Curve>("curve", a.in_type, a.out_type, a); }
void ema_cpu(const EmaArgs& a) {  // a handful of values: no threads
  for (int64_t i = 0; i < a.count; ++i) {
    const float x = a.x_type == DType::F32 ? Scalar<float>::load(static_cast<const float*>(a.x), i)
                                           : Scalar<half_t>::load(static_cast<const half_t*>(a.x), i);
    a.state[i] = ema_step(a.state[i], x, a.a);
  }
}
namespace {
template <typename TI>
void post_encode_dispatch(const PostArgs& a) {
  if (a.out_yuv420) {
    if (a.out_type != DType::U16) unsupported("post (yuv420p)", a.out_type);
    return post_yuv420_impl<TI>(a);
  }
  auto go = [&](auto tag) {
    using TO = typename decltype(tag)::type;
    if (a.out_hwc)
      post_encode_impl<TI, TO, true>(a);
    else
      post_encode_impl<TI, TO, false>(a);
  };
  switch (a.out_type) {
    case DType::F32: return go(TypeTag<float>{});
    case DType::F16: return go(TypeTag<half_t>{});
    case DType::U16: return go(TypeTag<uint16_t>{});
    default: unsupported("post", a.out_type);
  }
}
}  // namespace

void post_cpu(const PostArgs& a) {
  if (!a.encode) return dispatch_float2<Post>("post", a.in_type, a.out_type, a);
  if (a.in_type == DType::F32) return post_encode_dispatch<float>(a);
  if (a.in_type == DType::F16) return post_encode_dispatch<half_t>(a);
  unsupported("post", a.in_type);
}

void set_cpu_threads(int n) {
  if (n < 0) throw std::invalid_argument("set_num_threads: n must be >= 0 (0 = all hardware threads), got " +
                                         std::to_string(n));
  g_threads.store(n);
}
int get_cpu_threads() { return resolved_threads(); }

double cpu_triad_bandwidth(int64_t floats, int repeats) {
  if (floats <= 0 || repeats <= 0) throw std::invalid_argument("triad: floats and repeats must be positive");
  std::vector<float> a(floats), b(floats, 1.0f), c(floats, 2.0f);
  double best = 0.0;
  for (int r = 0; r < repeats; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    parallel_for(floats, 1 << 16, [&](int64_t begin, int64_t end) {
      float* __restrict pa = a.data();
      const float* __restrict pb = b.data();
      const float* __restrict pc = c.data();
      for (int64_t i = begin; i < end; ++i) pa[i] = pb[i] + 3.0f * pc[i];
    });
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    best = std::max(best, 12.0 * static_cast<double>(floats) / s / 1e9);
  }
  if (a[floats / 2] != 7.0f) throw std::runtime_error("triad: wrong result");
  return best;
}

}  // namespace sitm
