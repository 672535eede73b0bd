// The kernels' entry points (pre, fuse, curve, ema, post) and the CPU thread settings. Each checks its
// arguments (args.h), then runs the CPU or CUDA implementation (sitm/ops.h) by the arrays' device.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <array>
#include <string>
#include <vector>

#include "bindings/args.h"
#include "bindings/bind.h"
#include "bindings/encode.h"

namespace sitm::bindings {
namespace {

constexpr int64_t kMaxStride = int64_t{1} << 16;  // pre's padding multiple; a 17-level network would need more

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

}  // namespace

void bind_kernels(py::module_& m) {
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
  m.def("set_num_threads", &set_cpu_threads, py::arg("n"), "CPU kernel threads; 0 = all hardware threads");
  m.def("get_num_threads", &get_cpu_threads);
  m.def("cpu_triad_bandwidth", &cpu_triad_bandwidth, py::arg("floats"), py::arg("repeats"),
        "STREAM-triad bandwidth (GB/s, 12 bytes per element) with the kernels' threads");
}

}  // namespace sitm::bindings
