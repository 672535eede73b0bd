// Python bindings of the sitm-trt kernels (module sitm_trt._C). Arrays arrive as DLPack capsules (the Python
// wrapper in sitm_trt/kernels.py calls __dlpack__); every argument is checked here, where it enters C++,
// and errors name the op, the argument, what was expected and what came.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <array>
#include <cmath>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

#include "dlpack_bridge.h"
#include "sitm/ops.h"
#include "sitm/pixel_math.h"

namespace py = pybind11;
using namespace sitm;

namespace {

[[noreturn]] void bad(const std::string& op, const std::string& msg) { throw std::invalid_argument(op + ": " + msg); }

DType parse_float_dtype(const std::string& op, const std::string& s) {
  if (s == "float32") return DType::F32;
  if (s == "float16") return DType::F16;
  bad(op, "dtype must be 'float32' or 'float16', got '" + s + "'");
}

DType parse_any_dtype(const std::string& op, const std::string& s) {
  if (s == "uint8") return DType::U8;
  if (s == "uint16") return DType::U16;
  if (s == "float32" || s == "float16") return parse_float_dtype(op, s);
  bad(op, "dtype must be float32, float16, uint8 or uint16, got '" + s + "'");
}

bool is_float(DType t) { return t == DType::F32 || t == DType::F16; }

constexpr int64_t kMaxStride = int64_t{1} << 16;  // pre's padding multiple; a 17-level network would need more

// Checks a float tensor of exactly `shape` (entries < 0 are free and filled in from the tensor).
void expect_float(const std::string& op, const char* arg, const TensorView& v, std::vector<int64_t> shape,
                  const char* pattern) {
  bool ok = is_float(v.dtype) && v.shape.size() == shape.size();
  for (size_t i = 0; ok && i < shape.size(); ++i) ok = shape[i] < 0 || shape[i] == v.shape[i];
  if (!ok) {
    for (size_t i = 0; i < shape.size() && i < v.shape.size(); ++i)
      if (shape[i] < 0) shape[i] = v.shape[i];
    const bool dims_known = shape.size() == v.shape.size();
    bad(op, std::string(arg) + " must be float32 or float16 with shape " +
                (dims_known ? shape_str(shape) + " " : std::string()) + pattern + ", got " + v.describe());
  }
}

void same_device(const std::string& op, const char* arg, const TensorView& v, const char* ref_arg,
                 const TensorView& ref) {
  if (!(v.device == ref.device))
    bad(op, std::string(arg) + " is on " + v.device.str() + " but " + ref_arg + " is on " + ref.device.str());
}

// An output: given by the caller (checked: shape, dtype, device, writable) or allocated here.
struct Output {
  TensorView view;
  std::shared_ptr<Buffer> buffer;  // set when allocated here
  void* data() const { return buffer ? buffer->data() : view.data; }
};

Output make_output(const std::string& op, const char* arg, const py::object& given, DType dtype,
                   const std::vector<int64_t>& shape, const TensorView& ref, const char* ref_arg, uintptr_t stream) {
  Output o;
  if (given.is_none()) {
    o.buffer = std::make_shared<Buffer>(dtype, shape, ref.device, stream);
    return o;
  }
  o.view = view_from_capsule(given.cast<py::capsule>(), op.c_str(), arg);
  if (o.view.dtype != dtype || o.view.shape != shape)
    bad(op, std::string(arg) + " must be " + dtype_name(dtype) + " " + shape_str(shape) + ", got " + o.view.describe());
  same_device(op, arg, o.view, ref_arg, ref);
  if (o.view.read_only) bad(op, std::string(arg) + " is read-only");
  return o;
}

py::object result(const Output& o) { return o.buffer ? py::cast(o.buffer) : py::none(); }

struct Coef {
  TensorView view;
  bool per_channel = false;
};

Coef check_coef(const std::string& op, const py::capsule& cap, int64_t n, const TensorView& ref, const char* ref_arg) {
  Coef c{view_from_capsule(cap, op.c_str(), "coef")};
  const auto& s = c.view.shape;
  const bool per_image = s.size() == 2 && s[0] == n && s[1] == 4;
  c.per_channel = s.size() == 3 && s[0] == n && s[1] == 3 && s[2] == 4;
  if (!is_float(c.view.dtype) || !(per_image || c.per_channel))
    bad(op, "coef must be float32 or float16 with shape (" + std::to_string(n) + ", 4) or (" + std::to_string(n) +
                ", 3, 4) (a0..a3 per image, or per image and channel), got " + c.view.describe());
  same_device(op, "coef", c.view, ref_arg, ref);
  return c;
}

// Runs `cpu` or `cuda` by the device of `ref`, with the GIL released.
// Makes the arrays' device current for a CUDA launch and restores the caller's afterwards.
class DeviceScope {
 public:
  explicit DeviceScope(const Device& d) {
    if (!d.is_cuda()) return;
    previous_ = cuda_current_device();
    if (previous_ != d.id) cuda_set_device(d.id);
    else previous_ = -1;
  }
  ~DeviceScope() {
    if (previous_ >= 0) {
      try {
        cuda_set_device(previous_);
      } catch (...) {  // a destructor must not throw; the launch's own error is the one to report
      }
    }
  }
  DeviceScope(const DeviceScope&) = delete;
  DeviceScope& operator=(const DeviceScope&) = delete;

 private:
  int previous_ = -1;
};

// Runs `cpu` or `cuda` by the device of `ref` (on that device), with the GIL released.
template <typename Args>
void run(const TensorView& ref, const Args& a, void (*cpu)(const Args&), void (*cuda)(const Args&, uintptr_t),
         uintptr_t stream) {
  py::gil_scoped_release release;
  if (ref.device.is_cuda()) {
    DeviceScope scope(ref.device);
    cuda(a, stream);
  } else {
    cpu(a);
  }
}

// ------------------------------------------------------------------------------------------------------

py::tuple pre(const py::capsule& frame_cap, int64_t stride, const std::string& dtype, const py::object& outs,
              uintptr_t stream) {
  const std::string op = "pre";
  const DType out_type = parse_float_dtype(op, dtype);
  if (stride < 1) bad(op, "stride must be >= 1, got " + std::to_string(stride));
  TensorView f = view_from_capsule(frame_cap, "pre", "frame");
  PreArgs a{};
  a.src = f.data;
  a.src_type = f.dtype;
  a.out_type = out_type;
  const auto& s = f.shape;
  if (is_float(f.dtype)) {
    if (s.size() != 4 || s[1] != 3)
      bad(op, "frame must be float (N, 3, H, W) or uint8/uint16 (H, W, 3) or (N, H, W, 3), got " + f.describe());
    a.src_hwc = false;
    a.n = s[0], a.h = s[2], a.w = s[3];
  } else {
    const bool hwc3 = s.size() == 3 && s[2] == 3, nhwc = s.size() == 4 && s[3] == 3;
    if (!hwc3 && !nhwc)
      bad(op, "frame must be float (N, 3, H, W) or uint8/uint16 (H, W, 3) or (N, H, W, 3), got " + f.describe());
    a.src_hwc = true;
    a.n = hwc3 ? 1 : s[0];
    a.h = hwc3 ? s[0] : s[1];
    a.w = hwc3 ? s[1] : s[2];
  }
  // Padded sizes with checked arithmetic (the kernels' padded_size would overflow for a huge stride), and the
  // outputs' total size checked before anything is allocated.
  if (stride > kMaxStride)
    bad(op, "stride must be <= " + std::to_string(kMaxStride) + " (a network stride is 2 ** (levels - 1)), got " +
                std::to_string(stride));
  a.hp = checked_mul("pre", "stride", checked_add("pre", "stride", a.h, stride - 1) / stride, stride);
  a.wp = checked_mul("pre", "stride", checked_add("pre", "stride", a.w, stride - 1) / stride, stride);
  checked_nbytes("pre", "out (frame padded to the stride)", {a.n, 5, a.hp, a.wp}, Buffer::itemsize(out_type));
  std::array<py::object, 4> given{py::none(), py::none(), py::none(), py::none()};
  if (!outs.is_none()) {
    auto t = outs.cast<py::tuple>();
    if (t.size() != 4) bad(op, "out must be a tuple of 4 arrays (image, image_down, image_up, guide), got " + std::to_string(t.size()));
    for (int i = 0; i < 4; ++i) given[i] = t[i];
  }
  const std::vector<int64_t> s3{a.n, 3, a.hp, a.wp}, s2{a.n, 2, a.hp, a.wp};
  Output image = make_output(op, "out[0] (image)", given[0], out_type, s3, f, "frame", stream);
  Output down = make_output(op, "out[1] (image_down)", given[1], out_type, s3, f, "frame", stream);
  Output up = make_output(op, "out[2] (image_up)", given[2], out_type, s3, f, "frame", stream);
  Output guide = make_output(op, "out[3] (guide)", given[3], out_type, s2, f, "frame", stream);
  a.image = image.data();
  a.image_down = down.data();
  a.image_up = up.data();
  a.guide = guide.data();
  run(f, a, &pre_cpu, &pre_cuda, stream);
  return py::make_tuple(result(image), result(down), result(up), result(guide));
}

py::object fuse(const py::capsule& masks_cap, const py::capsule& image_cap, const py::capsule& up_cap,
                const py::capsule& down_cap, const std::string& dtype, const py::object& out, uintptr_t stream) {
  const std::string op = "fuse";
  const DType out_type = parse_float_dtype(op, dtype);
  TensorView m = view_from_capsule(masks_cap, "fuse", "masks");
  expect_float(op, "masks", m, {-1, 3, -1, -1}, "(N, 3, H, W) (M_up, M_mid, M_down)");
  const std::vector<int64_t> shape = m.shape;
  TensorView img = view_from_capsule(image_cap, "fuse", "image");
  TensorView up = view_from_capsule(up_cap, "fuse", "image_up");
  TensorView down = view_from_capsule(down_cap, "fuse", "image_down");
  for (auto [arg, v] : {std::pair<const char*, TensorView*>{"image", &img}, {"image_up", &up}, {"image_down", &down}}) {
    expect_float(op, arg, *v, shape, "(N, 3, H, W) like masks");
    if (v->dtype != m.dtype) bad(op, std::string(arg) + " is " + dtype_name(v->dtype) + " but masks is " + dtype_name(m.dtype) + " (inputs must share a dtype)");
    same_device(op, arg, *v, "masks", m);
  }
  Output o = make_output(op, "out", out, out_type, shape, m, "masks", stream);
  FuseArgs a{m.data, img.data, up.data, down.data, m.dtype, shape[0], shape[2], shape[3], o.data(), out_type};
  run(m, a, &fuse_cpu, &fuse_cuda, stream);
  return result(o);
}

py::object curve(const py::capsule& x_cap, const py::capsule& coef_cap, const std::string& dtype,
                 const py::object& out, uintptr_t stream) {
  const std::string op = "curve";
  const DType out_type = parse_float_dtype(op, dtype);
  TensorView x = view_from_capsule(x_cap, "curve", "x");
  expect_float(op, "x", x, {-1, 3, -1, -1}, "(N, 3, H, W)");
  Coef c = check_coef(op, coef_cap, x.shape[0], x, "x");
  Output o = make_output(op, "out", out, out_type, x.shape, x, "x", stream);
  CurveArgs a{x.data, x.dtype, c.view.data, c.view.dtype, c.per_channel, x.shape[0], x.shape[2], x.shape[3], o.data(), out_type};
  run(x, a, &curve_cpu, &curve_cuda, stream);
  return result(o);
}

py::none ema(const py::capsule& state_cap, const py::capsule& x_cap, double a, uintptr_t stream) {
  const std::string op = "ema";
  if (!(a >= 0.0 && a <= 1.0)) bad(op, "a must be in [0, 1], got " + std::to_string(a));
  TensorView x = view_from_capsule(x_cap, "ema", "x");
  if (!is_float(x.dtype)) bad(op, "x must be float32 or float16, got " + x.describe());
  Output st = make_output(op, "state", state_cap, DType::F32, x.shape, x, "x", stream);
  int64_t count = 1;
  for (int64_t d : x.shape) count *= d;
  EmaArgs args{static_cast<float*>(st.data()), x.data, x.dtype, count, static_cast<float>(a)};
  run(x, args, &ema_cpu, &ema_cuda, stream);
  return py::none();
}

// The output encoding of post, from the Python wrapper (sitm_trt.kernels.post fills it from sitm_trt.media.transfer).
EncodeParams parse_encoding(const std::string& op, const std::string& transfer, const py::object& matrix,
                            const py::object& luma, double ref_white, double peak, const std::string& code_range,
                            int bits, bool quantized) {
  EncodeParams e{};
  if (transfer == "linear") e.transfer = static_cast<int>(Transfer::Linear);
  else if (transfer == "pq") e.transfer = static_cast<int>(Transfer::PQ);
  else if (transfer == "hlg") e.transfer = static_cast<int>(Transfer::HLG);
  else bad(op, "transfer must be 'linear', 'pq' or 'hlg', got '" + transfer + "'");
  if (!(ref_white > 0.0 && std::isfinite(ref_white))) bad(op, "ref_white must be a positive number of cd/m2, got " + std::to_string(ref_white));
  if (!(peak > 0.0 && peak <= 10000.0)) bad(op, "peak must be in (0, 10000] cd/m2, got " + std::to_string(peak));
  e.scale = static_cast<float>(ref_white);
  e.peak = static_cast<float>(peak);
  e.hlg_gamma = static_cast<float>(1.2 + 0.42 * std::log10(peak / 1000.0));
  if (!matrix.is_none()) {
    auto m = matrix.cast<std::vector<double>>();
    if (m.size() != 9) bad(op, "matrix must hold 9 numbers (3x3, row-major), got " + std::to_string(m.size()));
    for (int i = 0; i < 9; ++i) {
      if (!std::isfinite(m[i])) bad(op, "matrix must be finite");
      e.matrix[i] = static_cast<float>(m[i]);
    }
    e.convert = 1;
  }
  std::vector<double> k{0.2126, 0.7152, 0.0722};  // BT.709 until told otherwise
  if (!luma.is_none()) {
    k = luma.cast<std::vector<double>>();
    if (k.size() != 3 || !(k[0] > 0 && k[0] < 1 && k[2] > 0 && k[2] < 1))
      bad(op, "luma must be 3 coefficients Kr, Kg, Kb in (0, 1)");
  }
  for (int i = 0; i < 3; ++i) e.luma[i] = static_cast<float>(k[i]);
  e.cb_scale = static_cast<float>(0.5 / (1.0 - k[2]));
  e.cr_scale = static_cast<float>(0.5 / (1.0 - k[0]));
  if (quantized) {
    if (bits < 8 || bits > 16) bad(op, "bits must be 8..16, got " + std::to_string(bits));
    const double top = std::ldexp(1.0, bits) - 1.0, unit = std::ldexp(1.0, bits - 8);
    e.q_top = static_cast<float>(top);
    if (code_range == "limited") {  // BT.2100 Table 9 "narrow": (219 E' + 16) 2^(n-8), (224 E' + 128) 2^(n-8)
      e.q_mul = static_cast<float>(219.0 * unit), e.q_add = static_cast<float>(16.0 * unit);
      e.qc_mul = static_cast<float>(224.0 * unit), e.qc_add = static_cast<float>(128.0 * unit);
    } else if (code_range == "full") {  // (2^n - 1) E', (2^n - 1) E' + 2^(n-1)
      e.q_mul = e.qc_mul = static_cast<float>(top);
      e.q_add = 0.0f, e.qc_add = static_cast<float>(std::ldexp(1.0, bits - 1));
    } else {
      bad(op, "code_range must be 'limited' or 'full', got '" + code_range + "'");
    }
  }
  return e;
}

py::object post(const py::capsule& masks_cap, const py::capsule& image_cap, const py::capsule& up_cap,
                const py::capsule& down_cap, const py::capsule& coef_cap, int64_t height, int64_t width,
                const std::string& layout, const std::string& dtype, const py::object& out, uintptr_t stream,
                const std::string& transfer, const py::object& matrix, const py::object& luma, double ref_white,
                double peak, const std::string& code_range, int bits, const py::object& stats,
                const std::string& fusion) {
  const std::string op = "post";
  if (fusion != "paper" && fusion != "residual") bad(op, "fusion must be 'paper' or 'residual', got '" + fusion + "'");
  const bool quantized = dtype == "uint16";
  const DType out_type = quantized ? DType::U16 : parse_float_dtype(op, dtype);
  const bool yuv = layout == "yuv420p";
  if (layout != "nchw" && layout != "nhwc" && !yuv)
    bad(op, "layout must be 'nchw' or 'nhwc' (or 'yuv420p' with dtype uint16), got '" + layout + "'");
  if (quantized && transfer == "linear")
    bad(op, "dtype uint16 (integer code values) needs transfer 'pq' or 'hlg', got 'linear'");
  if (yuv && !quantized) bad(op, "layout 'yuv420p' needs dtype uint16, got " + dtype);
  const bool encode = transfer != "linear" || !matrix.is_none() || quantized || !stats.is_none();
  EncodeParams enc{};
  if (encode) enc = parse_encoding(op, transfer, matrix, luma, ref_white, peak, code_range, bits, quantized);
  TensorView m = view_from_capsule(masks_cap, "post", "masks");
  expect_float(op, "masks", m, {-1, 3, -1, -1}, "(N, 3, Hp, Wp) (M_up, M_mid, M_down)");
  const std::vector<int64_t> shape = m.shape;
  TensorView img = view_from_capsule(image_cap, "post", "image");
  TensorView up = view_from_capsule(up_cap, "post", "image_up");
  TensorView down = view_from_capsule(down_cap, "post", "image_down");
  for (auto [arg, v] : {std::pair<const char*, TensorView*>{"image", &img}, {"image_up", &up}, {"image_down", &down}}) {
    expect_float(op, arg, *v, shape, "(N, 3, Hp, Wp) like masks");
    if (v->dtype != m.dtype) bad(op, std::string(arg) + " is " + dtype_name(v->dtype) + " but masks is " + dtype_name(m.dtype) + " (inputs must share a dtype)");
    same_device(op, arg, *v, "masks", m);
  }
  Coef c = check_coef(op, coef_cap, shape[0], m, "masks");
  const int64_t n = shape[0], hp = shape[2], wp = shape[3];
  const int64_t h = height < 0 ? hp : height, w = width < 0 ? wp : width;
  if (h > hp || w > wp)
    bad(op, "crop " + std::to_string(h) + "x" + std::to_string(w) + " is larger than the padded input " +
                std::to_string(hp) + "x" + std::to_string(wp));
  const bool hwc = layout == "nhwc";
  std::vector<int64_t> oshape = hwc ? std::vector<int64_t>{n, h, w, 3} : std::vector<int64_t>{n, 3, h, w};
  if (yuv) oshape = {n, h * w + 2 * ((h + 1) / 2) * ((w + 1) / 2)};
  Output o = make_output(op, "out", out, out_type, oshape, m, "masks", stream);
  TensorView st;
  if (!stats.is_none()) {
    st = view_from_capsule(stats.cast<py::capsule>(), op.c_str(), "stats");
    if (st.dtype != DType::F32 || st.shape != std::vector<int64_t>{n, 2})
      bad(op, "stats must be float32 " + shape_str({n, 2}) + " (max and mean light per image), got " + st.describe());
    same_device(op, "stats", st, "masks", m);
    if (st.read_only) bad(op, "stats is read-only");
  }
  PostArgs a{m.data, img.data, up.data, down.data, m.dtype, c.view.data, c.view.dtype, c.per_channel,
             n, hp, wp, h, w, o.data(), out_type, hwc};
  a.fusion = fusion == "residual" ? Fusion::Residual : Fusion::Paper;
  a.encode = encode;
  a.enc = enc;
  a.out_yuv420 = yuv;
  a.stats = stats.is_none() ? nullptr : static_cast<float*>(st.data);
  run(m, a, &post_cpu, &post_cuda, stream);
  return result(o);
}

py::dict build_info() {
  py::dict d;
  d["version"] = SITM_VERSION;
  d["cuda"] = cuda_compiled();
  d["cuda_architectures"] = std::string(SITM_CUDA_ARCHITECTURES);
  d["cuda_runtime"] = cuda_runtime_version();
  d["cuda_compiler"] = std::string(SITM_CUDA_COMPILER);
  d["cxx_compiler"] = std::string(SITM_CXX_COMPILER);
  d["build_type"] = std::string(SITM_BUILD_TYPE);
  d["cpu_threads"] = get_cpu_threads();
  return d;
}

std::shared_ptr<Buffer> empty(std::vector<int64_t> shape, const std::string& dtype, const std::string& device,
                              uintptr_t stream, bool pinned) {
  Device d;
  if (device == "cpu") {
    d = {kDLCPU, 0};
  } else if (device.rfind("cuda", 0) == 0) {
    int id = 0;
    const std::string rest = device.substr(4);
    if (!rest.empty()) {
      const std::string num = rest.substr(1);
      if (rest[0] != ':' || num.empty() || num.size() > 4 || num.find_first_not_of("0123456789") != std::string::npos)
        bad("empty", "device must be 'cpu' or 'cuda[:N]', got '" + device + "'");
      id = std::stoi(num);
    }
    d = {kDLCUDA, id};
  } else {
    bad("empty", "device must be 'cpu' or 'cuda[:N]', got '" + device + "'");
  }
  return std::make_shared<Buffer>(parse_any_dtype("empty", dtype), std::move(shape), d, stream, pinned);
}

// Copies src into dst (same byte size; host<->device or device<->device), stream-ordered.
void copy(const py::capsule& dst_cap, const py::capsule& src_cap, uintptr_t stream) {
  TensorView dst = view_from_capsule(dst_cap, "copy", "dst");
  TensorView src = view_from_capsule(src_cap, "copy", "src");
  const int64_t bytes = src.numel() * Buffer::itemsize(src.dtype);
  if (dst.numel() * Buffer::itemsize(dst.dtype) != bytes)
    bad("copy", "dst " + dst.describe() + " and src " + src.describe() + " differ in size");
  if (dst.read_only) bad("copy", "dst is read-only");
  if (!dst.device.is_cuda() && !src.device.is_cuda()) {
    py::gil_scoped_release release;
    std::memcpy(dst.data, src.data, static_cast<size_t>(bytes));
    return;
  }
  const int kind = src.device.is_cuda() ? (dst.device.is_cuda() ? 2 : 1) : 0;
  const int device = src.device.is_cuda() ? src.device.id : dst.device.id;
  py::gil_scoped_release release;
  cuda_memcpy_async(dst.data, src.data, bytes, kind, device, stream);
}

py::dict device_props(int device) {
  const CudaDeviceProps p = cuda_device_props(device);
  py::dict d;
  d["name"] = p.name;
  d["compute_capability"] = py::make_tuple(p.major, p.minor);
  d["total_memory"] = p.total_memory;
  d["driver_version"] = p.driver_version;
  return d;
}

// A CUDA event owned by Python: record it on a stream, then wait for (or poll) the work before it.
class Event {
 public:
  explicit Event(int device) : device_(device), event_(cuda_event_create(device)) {}
  ~Event() { cuda_event_destroy(event_); }
  Event(const Event&) = delete;
  Event& operator=(const Event&) = delete;
  void record(uintptr_t stream) { cuda_event_record(event_, stream, device_); }
  void synchronize() {
    py::gil_scoped_release release;
    cuda_event_synchronize(event_);
  }
  bool query() { return cuda_event_query(event_); }
  int device() const { return device_; }

 private:
  int device_;
  uintptr_t event_;
};

// A CUDA graph owned by Python: capture the work enqueued between begin() and end() on a private stream,
// then launch it on any stream as often as wanted (the captured pointers and shapes are fixed).
class Graph {
 public:
  explicit Graph(int device) : device_(device), stream_(cuda_stream_create(device)) {}
  ~Graph() {
    if (capturing_) cuda_capture_abort(stream_);
    cuda_graph_destroy(exec_);
    cuda_stream_destroy(stream_);
  }
  Graph(const Graph&) = delete;
  Graph& operator=(const Graph&) = delete;
  // Starts capturing (dropping any earlier graph) and returns the stream to enqueue the work on.
  uintptr_t begin() {
    if (capturing_) throw std::runtime_error("Graph.begin: a capture is already open");
    cuda_graph_destroy(exec_);
    exec_ = 0;
    cuda_capture_begin(stream_, device_);
    capturing_ = true;
    return stream_;
  }
  void end() {
    if (!capturing_) throw std::runtime_error("Graph.end: no capture is open");
    capturing_ = false;
    exec_ = cuda_capture_end(stream_, device_);
  }
  void abort() {
    if (capturing_) cuda_capture_abort(stream_);
    capturing_ = false;
  }
  void launch(uintptr_t stream) {
    if (exec_ == 0) throw std::runtime_error("Graph.launch: nothing captured");
    cuda_graph_launch(exec_, stream, device_);
  }
  bool ready() const { return exec_ != 0; }
  int device() const { return device_; }

 private:
  int device_;
  uintptr_t stream_;
  uintptr_t exec_ = 0;
  bool capturing_ = false;
};

py::tuple cuda_devices() {
  std::string err;
  const int n = cuda_device_count(&err);
  return py::make_tuple(n, err);
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "sitm-trt C++/CUDA kernels (pre, fuse, curve, post); use the wrappers in sitm_trt.kernels";

  py::class_<Buffer, std::shared_ptr<Buffer>>(m, "Buffer",
                                               "Memory allocated by sitm-trt (host or CUDA), exported via DLPack.")
      .def_property_readonly("shape", [](const Buffer& b) { return py::tuple(py::cast(b.shape())); })
      .def_property_readonly("dtype", [](const Buffer& b) { return std::string(dtype_name(b.dtype())); })
      .def_property_readonly("device", [](const Buffer& b) { return b.device().str(); })
      .def_property_readonly("data_ptr", [](const Buffer& b) { return reinterpret_cast<uintptr_t>(b.data()); })
      .def_property_readonly("nbytes", &Buffer::nbytes)
      .def_property_readonly("capacity", &Buffer::capacity)
      .def_property_readonly("pinned", &Buffer::pinned)
      .def_property_readonly("stream", &Buffer::stream,
                             "The stream of the memory's last use (a cudaStream_t as an integer): the next use on "
                             "another stream waits for it, and the memory is freed stream-ordered on it")
      .def("view",
           [](const std::shared_ptr<Buffer>& self, std::vector<int64_t> shape, py::object dtype, py::object stream) {
             const DType t = dtype.is_none() ? self->dtype() : parse_any_dtype("Buffer.view", dtype.cast<std::string>());
             std::optional<uintptr_t> s;
             if (!stream.is_none()) s = stream.cast<uintptr_t>();
             return std::make_shared<Buffer>(*self, t, std::move(shape), s);
           },
           py::arg("shape"), py::arg("dtype") = py::none(), py::arg("stream") = py::none(),
           "The same memory with another shape (and dtype) that fits in the allocation; no copy. With `stream`, "
           "the view is used on that stream: it first waits (on the device) for the memory's last use.")
      .def(
          "__dlpack__",
          [](const std::shared_ptr<Buffer>& self, py::object stream, py::object max_version, py::object dl_device,
             py::object copy) {
            if (!copy.is_none() && copy.cast<bool>())
              throw py::value_error("Buffer.__dlpack__: copy=True is not supported (the buffer is exported as is)");
            if (!dl_device.is_none()) {
              auto t = dl_device.cast<std::pair<int, int>>();
              const bool cpu_req = t.first == kDLCPU, cuda_req = t.first == kDLCUDA;
              if (!((cpu_req && !self->device().is_cuda()) ||
                    (cuda_req && self->device().is_cuda() && t.second == self->device().id)))
                throw py::buffer_error("Buffer.__dlpack__: cannot export " + self->device().str() +
                                       " memory to another device without a copy");
            }
            std::optional<int64_t> s;
            if (!stream.is_none()) s = stream.cast<int64_t>();
            bool versioned = false;
            if (!max_version.is_none()) versioned = max_version.cast<std::pair<int, int>>().first >= 1;
            return Buffer::to_dlpack(self, s, versioned);
          },
          py::kw_only(), py::arg("stream") = py::none(), py::arg("max_version") = py::none(),
          py::arg("dl_device") = py::none(), py::arg("copy") = py::none())
      .def("__dlpack_device__",
           [](const Buffer& b) {  // the device the capsule names too (Buffer::dl_device)
             const DLDevice d = b.dl_device();
             return py::make_tuple(int(d.device_type), int(d.device_id));
           })
      .def("__repr__", [](const Buffer& b) {
        return "Buffer(" + std::string(dtype_name(b.dtype())) + " " + shape_str(b.shape()) + " on " + b.device().str() + ")";
      });

  py::class_<Event, std::shared_ptr<Event>>(m, "Event", "A CUDA event (no timing, blocking sync) on one device.")
      .def(py::init<int>(), py::arg("device") = 0)
      .def("record", &Event::record, py::arg("stream") = 0, "Record on `stream` (a cudaStream_t as an integer)")
      .def("synchronize", &Event::synchronize, "Wait (GIL released) until the work before the last record is done")
      .def("query", &Event::query, "True when the work before the last record is done")
      .def_property_readonly("device", &Event::device);

  py::class_<Graph, std::shared_ptr<Graph>>(m, "Graph",
                                           "A CUDA graph: capture stream work once, launch it on any stream.")
      .def(py::init<int>(), py::arg("device") = 0)
      .def("begin", &Graph::begin, "Start capturing; returns the (private) stream to enqueue the work on")
      .def("end", &Graph::end, "End the capture and instantiate the graph (raises if it was not capturable)")
      .def("abort", &Graph::abort, "End a capture that failed midway, keeping nothing")
      .def("launch", &Graph::launch, py::arg("stream") = 0, "Launch the captured work on `stream`")
      .def_property_readonly("ready", &Graph::ready)
      .def_property_readonly("device", &Graph::device);
  m.def("pre", &pre, py::arg("frame"), py::arg("stride"), py::arg("dtype"), py::arg("out"), py::arg("stream"));
  m.def("fuse", &fuse, py::arg("masks"), py::arg("image"), py::arg("image_up"), py::arg("image_down"),
        py::arg("dtype"), py::arg("out"), py::arg("stream"));
  m.def("ema", &ema, py::arg("state"), py::arg("x"), py::arg("a"), py::arg("stream"),
        "state = a * state + (1 - a) * x in place (state float32, shaped like x); a == 0 copies x");
  m.def("curve", &curve, py::arg("x"), py::arg("coef"), py::arg("dtype"), py::arg("out"), py::arg("stream"));
  m.def("post", &post, py::arg("masks"), py::arg("image"), py::arg("image_up"), py::arg("image_down"),
        py::arg("coef"), py::arg("height"), py::arg("width"), py::arg("layout"), py::arg("dtype"), py::arg("out"),
        py::arg("stream"), py::arg("transfer") = "linear", py::arg("matrix") = py::none(),
        py::arg("luma") = py::none(), py::arg("ref_white") = 203.0, py::arg("peak") = 1000.0,
        py::arg("code_range") = "limited", py::arg("bits") = 10, py::arg("stats") = py::none(),
        py::arg("fusion") = "paper");
  m.def("view_info", [](const py::capsule& cap) {
    TensorView v = view_from_capsule(cap, "view_info", "tensor");
    py::dict d;
    d["data_ptr"] = reinterpret_cast<uintptr_t>(v.data);
    d["shape"] = py::tuple(py::cast(v.shape));
    d["dtype"] = std::string(dtype_name(v.dtype));
    d["device"] = v.device.str();
    d["read_only"] = v.read_only;
    return d;
  }, "Consumes a DLPack capsule and describes the view the kernels would see (for tests and debugging).");
  m.def("build_info", &build_info);
  m.def("empty", &empty, py::arg("shape"), py::arg("dtype"), py::arg("device") = "cpu", py::arg("stream") = 0,
        py::arg("pinned") = false, "An uninitialized Buffer (host, pinned host, or CUDA stream-ordered memory)");
  m.def("copy", &copy, py::arg("dst"), py::arg("src"), py::arg("stream") = 0,
        "Copy between DLPack arrays of equal byte size (host<->device, device<->device), on `stream`");
  m.def("synchronize", [](uintptr_t stream, int device) { cuda_stream_synchronize(stream, device); },
        py::call_guard<py::gil_scoped_release>(),
        py::arg("stream") = 0, py::arg("device") = 0);
  m.def("device_properties", &device_props, py::arg("device") = 0);
  m.def("stream_create", &cuda_stream_create, py::arg("device") = 0,
        "A new non-blocking CUDA stream on `device` (as an integer); destroy it with stream_destroy");
  m.def("stream_destroy", &cuda_stream_destroy, py::arg("stream"));
  m.def("stream_wait", &cuda_stream_wait, py::arg("consumer"), py::arg("producer"), py::arg("device") = 0,
        "The consumer stream waits (on the device, not the host) for the work enqueued on the producer so far");
  m.def("_stream_trace", &stream_trace_enable, py::arg("on"),
        "Test hook: record the cross-stream waits and frees of Buffers (cleared); see _stream_trace_take");
  m.def("_stream_trace_take", &stream_trace_take, "Test hook: the recorded (kind, stream, other) entries");
  m.def("current_device", &cuda_current_device);
  m.def("set_device", &cuda_set_device, py::arg("device"));
  m.def("memory_info", [](int device) {
    int64_t f = 0, t = 0;
    cuda_mem_info(device, &f, &t);
    return py::make_tuple(f, t);
  }, py::arg("device") = 0, "(free, total) bytes of device memory");
  m.def("cuda_devices", &cuda_devices, "(count, error): usable CUDA devices, or 0 and the reason");
  m.def("set_num_threads", &set_cpu_threads, py::arg("n"), "CPU kernel threads; 0 = all hardware threads");
  m.def("get_num_threads", &get_cpu_threads);
  m.def("cpu_triad_bandwidth", &cpu_triad_bandwidth, py::arg("floats"), py::arg("repeats"),
        "STREAM-triad bandwidth (GB/s, 12 bytes per element) with the kernels' threads");
}
