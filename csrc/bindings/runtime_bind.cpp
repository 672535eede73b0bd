// The runtime side of the module: extension memory (Buffer: allocation, views, DLPack export, copies),
// devices and streams, and the Event and Graph classes that Python owns.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstring>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "bindings/args.h"
#include "bindings/bind.h"

namespace sitm::bindings {
namespace {

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

void bind_runtime(py::module_& m) {
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
}

}  // namespace sitm::bindings
