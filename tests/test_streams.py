"""Issue 17: stream-ordered buffers, the device runtime's fences, DLPack device types and streams, TensorRT I/O
checks, the CUDA architecture list, strided inputs. The bookkeeping is checked on the CPU through the Buffer's
CPU twin (host Buffers keep the same last-use-stream records, without CUDA calls) and fakes; the `gpu` tests
check the same on a device (two streams, dropped results while busy, no host synchronization)."""

from __future__ import annotations

import ctypes
import shutil
import subprocess
import threading
import types
import warnings
from pathlib import Path

import numpy as np
import pytest

from sitm_trt import kernels
from sitm_trt.runtime import device as runtime_device

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def trace():
    C = kernels.extension()
    C._stream_trace(True)
    yield C
    C._stream_trace(False)


# ---------------------------------------------------------------------------------------------------------
# Buffer bookkeeping (CPU twin): last-use stream, cross-stream waits, stream-ordered free
# ---------------------------------------------------------------------------------------------------------


def test_view_on_another_stream_waits_for_the_last_use_and_keeps_it(trace):
    C = trace
    b = C.empty([8], "float32", "cpu", 11)
    assert b.stream == 11
    v1 = b.view([4], None, 11)  # same stream: already ordered, no wait
    v2 = b.view([4], None, 22)  # another stream: waits for 11
    v3 = v1.view([2], None, 33)  # a view of a view: waits for 22 (the storage's last use), not v1's 11
    assert (b.stream, v1.stream, v2.stream, v3.stream) == (33, 33, 33, 33)  # one storage, one last use
    b.view([8])  # no stream: no use, nothing recorded
    assert C._stream_trace_take() == [("wait", 22, 11), ("wait", 33, 22)]
    del b, v1, v2, v3
    assert C._stream_trace_take() == [("free", 33, 0)]  # freed once, ordered on the last stream


def test_free_is_ordered_on_the_stream_of_the_last_use(trace):
    C = trace
    b = C.empty([4], "uint8", "cpu", 5)
    del b
    assert C._stream_trace_take() == [("free", 5, 0)]
    b = C.empty([4], "uint8", "cpu", 5)
    cap = b.__dlpack__(stream=77)  # a consumer on stream 77: it waits for 5 and is the last use from now on
    del b
    assert C._stream_trace_take() == [("wait", 77, 5)]  # the capsule keeps the memory alive
    del cap
    assert C._stream_trace_take() == [("free", 77, 0)]


@pytest.mark.parametrize("stream, consumer", [(None, 0), (1, 0), (2, 2), (1234, 1234)])
def test_dlpack_stream_argument(trace, stream, consumer):
    """None is the legacy default stream (Array API), like 1; 2 is the per-thread default stream handle."""
    C = trace
    b = C.empty([4], "float32", "cpu", 9)
    cap = b.__dlpack__(stream=stream)
    assert C._stream_trace_take() == [("wait", consumer, 9)]
    assert b.stream == consumer
    del cap


def test_dlpack_stream_minus_one_orders_nothing(trace):
    C = trace
    b = C.empty([4], "float32", "cpu", 9)
    cap = b.__dlpack__(stream=-1)
    assert C._stream_trace_take() == [] and b.stream == 9
    with pytest.raises(ValueError, match="stream must be"):
        b.__dlpack__(stream=-5)
    del cap


def test_pool_views_are_fenced_when_the_stream_changes(trace):
    pool = kernels.BufferPool()
    a = pool.get("x", [2, 3], "float32", "cpu", 3)
    pool.get("x", [2, 3], "float32", "cpu", 3)
    pool.get("x", [1, 3], "float32", "cpu", 4)  # reused (smaller) on another stream
    assert trace._stream_trace_take() == [("wait", 4, 3)]
    assert a.stream == 4


# ---------------------------------------------------------------------------------------------------------
# DLPack device types: the pair agrees, and consumers accept it
# ---------------------------------------------------------------------------------------------------------


def _capsule_device(cap) -> tuple[int, int]:
    """(device_type, device_id) read from a legacy "dltensor" capsule's DLTensor (data pointer, then DLDevice)."""
    get = ctypes.pythonapi.PyCapsule_GetPointer
    get.restype, get.argtypes = ctypes.c_void_p, [ctypes.py_object, ctypes.c_char_p]
    ptr = get(cap, b"dltensor")
    dev = (ctypes.c_int32 * 2).from_address(ptr + ctypes.sizeof(ctypes.c_void_p))
    return int(dev[0]), int(dev[1])


def test_host_buffer_device_type_is_the_same_in_both_places():
    b = kernels.extension().empty([2, 3], "float32", "cpu")
    assert b.__dlpack_device__() == (runtime_device.DL_CPU, 0)
    assert _capsule_device(b.__dlpack__()) == b.__dlpack_device__()
    torch = pytest.importorskip("torch")
    assert torch.from_dlpack(b).shape == (2, 3) and np.from_dlpack(b).shape == (2, 3)


@pytest.mark.gpu
def test_pinned_buffer_is_cpu_in_both_places_and_torch_takes_it():
    import torch

    b = kernels.extension().empty([2, 3], "float32", "cpu", 0, True)
    assert b.pinned
    assert b.__dlpack_device__() == (runtime_device.DL_CPU, 0)
    assert _capsule_device(b.__dlpack__()) == (runtime_device.DL_CPU, 0)
    t = torch.from_dlpack(b)
    t.fill_(2.0)
    assert t.device.type == "cpu" and float(np.from_dlpack(b).sum()) == 12.0


# ---------------------------------------------------------------------------------------------------------
# DeviceRuntime fences (with a recording fake of the extension)
# ---------------------------------------------------------------------------------------------------------


class _FakeExt:
    def __init__(self):
        self.calls = []
        self.next = 1000

    def stream_create(self, device):
        self.next += 1
        self.calls.append(("create", device, self.next))
        return self.next

    def stream_wait(self, consumer, producer, device):
        self.calls.append(("wait", consumer, producer, device))


def test_runtime_fences_the_caller_on_entry_and_exit():
    ext = _FakeExt()
    rt = runtime_device.DeviceRuntime(1, ext)
    with rt.scope(0) as s:  # the legacy default stream as the caller: the runtime still uses its own
        assert s == 1001
        ext.calls.append(("work", s))
    with rt.scope(77) as s2:
        assert s2 == s  # one stream per device, created once
    assert ext.calls == [("create", 1, 1001), ("wait", 1001, 0, 1), ("work", 1001), ("wait", 0, 1001, 1),
                         ("wait", 1001, 77, 1), ("wait", 77, 1001, 1)]


def test_runtime_exit_fence_runs_on_errors_and_is_skipped_on_its_own_stream():
    ext = _FakeExt()
    rt = runtime_device.DeviceRuntime(0, ext)
    with pytest.raises(RuntimeError, match="boom"):
        with rt.scope(5):
            raise RuntimeError("boom")
    assert ext.calls[-1] == ("wait", 5, rt.stream, 0)
    n = len(ext.calls)
    with rt.scope(rt.stream):  # the pipeline passes the runtime stream to the backend: no fences
        pass
    assert len(ext.calls) == n


def test_runtime_scope_on_the_cpu_uses_no_streams():
    with runtime_device.scope("cpu", 0) as s:
        assert s == 0


def test_driver_too_old_is_named():
    err = "CUDA driver version is insufficient for CUDA runtime version"
    msg = runtime_device.explain_cuda_error(err, "13.0", 12040)
    assert ">= 580" in msg and "CUDA 12.4" in msg and "13.0 runtime" in msg
    # no driver at all (a CPU machine with a CUDA build gets the same runtime error): not "too old"
    assert "no NVIDIA driver is installed" in runtime_device.explain_cuda_error(err, "13.0", None)
    assert runtime_device.explain_cuda_error("no CUDA-capable device is detected", "13.0", 13000) == \
        "no CUDA-capable device is detected"


def test_no_driver_here_is_not_called_too_old():
    if runtime_device.driver_version() is None:
        count, why = runtime_device.cuda_devices()
        assert count == 0 and ">= 580" not in why


def test_default_video_device_warns_when_the_driver_is_too_old(monkeypatch):
    from sitm_trt.media.video import conversion

    monkeypatch.setattr(runtime_device, "cuda_devices", lambda: (0, "CUDA driver version is insufficient: ..."))
    with pytest.warns(RuntimeWarning, match="driver"):
        assert conversion._default_device() == "cpu"
    monkeypatch.setattr(runtime_device, "cuda_devices", lambda: (1, ""))
    assert conversion._default_device() == "cuda:0"
    monkeypatch.setattr(runtime_device, "cuda_devices", lambda: (0, "... (no NVIDIA driver is installed)"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a machine without a GPU gets the CPU quietly
        assert conversion._default_device() == "cpu"


# ---------------------------------------------------------------------------------------------------------
# TensorRT I/O checks (a fake engine and context)
# ---------------------------------------------------------------------------------------------------------


class _FakeContext:
    def __init__(self, accept=True, coef_shape=(1, 3, 4)):
        self.accept, self.coef_shape = accept, coef_shape
        self.shapes, self.addresses = {}, {}

    def set_input_shape(self, name, shape):
        self.shapes[name] = shape
        return self.accept

    def set_tensor_address(self, name, ptr):
        self.addresses[name] = ptr

    def get_tensor_shape(self, name):
        if "image" not in self.shapes:
            return (-1, 3, -1, -1)
        n, _, h, w = self.shapes["image"]
        return self.coef_shape if name == "coef" else (n, 3, h, w)


def _fake_backend(ctx, engine_dtype="float16"):
    from sitm_trt.runtime.backends.tensorrt_backend import TensorRTBackend

    trt = types.SimpleNamespace(float32="f32", float16="f16")
    be = object.__new__(TensorRTBackend)
    be.flavour = types.SimpleNamespace(module=trt)
    be._engine = types.SimpleNamespace(get_tensor_dtype=lambda name: "f16" if engine_dtype == "float16" else "f32")
    be._context = ctx
    be.precision = "fp16"
    be.device = "cpu"  # the output buffers of this fake live on the host
    be.profile = types.SimpleNamespace(describe=lambda: "fake profile")
    be._out_dtypes = {n: engine_dtype for n in ("exposure_up", "exposure_down", "masks", "coef")}
    be._outputs = kernels.BufferPool()
    return be


def _inputs(dtype="float16", h=32, w=48):
    C = kernels.extension()
    return [C.empty([1, c, h, w], dtype, "cpu") for c in (3, 3, 3, 2)]


def test_tensorrt_outputs_take_the_shapes_the_context_reports():
    ctx = _FakeContext(coef_shape=(1, 3, 4))
    outs = _fake_backend(ctx)._bind(_inputs(), 0)
    assert [tuple(o.shape) for o in outs] == [(1, 3, 32, 48)] * 3 + [(1, 3, 4)]  # not a hard-coded (n, 4)
    assert ctx.addresses["coef"] == outs[3].data_ptr and ctx.shapes["guide"] == (1, 2, 32, 48)


def test_tensorrt_input_dtype_must_match_the_engine():
    with pytest.raises(ValueError, match="'image' is float32 but the engine takes float16"):
        _fake_backend(_FakeContext())._bind(_inputs("float32"), 0)


def test_tensorrt_refused_input_shape_is_an_error():
    with pytest.raises(ValueError, match="refused input 'image'"):
        _fake_backend(_FakeContext(accept=False))._bind(_inputs(), 0)


def test_tensorrt_unresolved_output_shape_is_an_error():
    ctx = _FakeContext()
    ctx.get_tensor_shape = lambda name: (-1, 3, -1, -1)
    with pytest.raises(RuntimeError, match="unresolved shape"):
        _fake_backend(ctx)._bind(_inputs(), 0)


# ---------------------------------------------------------------------------------------------------------
# The CUDA architecture list
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake is not on PATH")
@pytest.mark.parametrize("nvcc, archs", [
    ("13.0", "80-real;86-real;89-real;90-real;100-real;120-real;120-virtual"),
    ("12.8", "80-real;86-real;89-real;90-real;100-real;120-real;120-virtual"),
    ("12.6", "80-real;86-real;89-real;90-real;90-virtual"),  # no sm_100/sm_120 before 12.8
    ("11.8", "80-real;86-real;89-real;90-real;90-virtual"),
    ("11.7", "80-real;86-real;86-virtual"),
])
def test_default_cuda_architectures_follow_the_nvcc_version(nvcc, archs):
    r = subprocess.run(["cmake", f"-DSITM_NVCC_VERSION={nvcc}", "-P", str(ROOT / "cmake" / "SitmCudaArchs.cmake")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stderr.strip() == archs  # message() writes to stderr


# ---------------------------------------------------------------------------------------------------------
# Strided inputs
# ---------------------------------------------------------------------------------------------------------


def test_contiguous_copies_only_when_needed():
    x = np.zeros((4, 6, 3), np.uint8)
    assert runtime_device.contiguous(x) is x
    t = x.transpose(1, 0, 2)
    c = runtime_device.contiguous(t)
    assert c.flags.c_contiguous and np.array_equal(c, t)


def test_a_transposed_numpy_frame_gives_the_contiguous_result(tiny_weights_path):
    import sitm_trt

    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)
    strided = np.ascontiguousarray(frame.transpose(1, 0, 2)).transpose(1, 0, 2)  # same values, other strides
    assert not strided.flags.c_contiguous and np.array_equal(strided, frame)
    pipe = sitm_trt.Pipeline(str(tiny_weights_path), backend="torch")
    ref = pipe(frame)
    got = pipe(strided)
    assert np.array_equal(got, ref)
    flipped = np.ascontiguousarray(frame[::-1])[::-1]  # negative strides
    assert np.array_equal(pipe(flipped), ref)


def test_a_permuted_torch_frame_gives_the_contiguous_result(tiny_weights_path):
    torch = pytest.importorskip("torch")
    import sitm_trt

    torch.manual_seed(0)
    x = torch.rand(1, 3, 32, 40)
    strided = x.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)  # NCHW values, channels-last strides
    assert not strided.is_contiguous()
    pipe = sitm_trt.Pipeline(str(tiny_weights_path), backend="torch")
    assert torch.equal(pipe(strided), pipe(x))


# ---------------------------------------------------------------------------------------------------------
# On a GPU
# ---------------------------------------------------------------------------------------------------------


def _frames(torch, k=4, h=72, w=120):
    g = torch.Generator().manual_seed(1)
    return [torch.randint(0, 256, (h, w, 3), dtype=torch.uint8, generator=g).cuda() for _ in range(k)]


@pytest.mark.gpu
def test_interleaved_calls_on_two_streams_are_bit_exact(tiny_weights_path):
    import torch
    import sitm_trt

    pipe = sitm_trt.Pipeline(str(tiny_weights_path), backend="torch")
    frames = _frames(torch)
    ref = [pipe(f).clone() for f in frames]
    torch.cuda.synchronize()
    s1, s2 = torch.cuda.Stream(), torch.cuda.Stream()
    outs = []
    for i, f in enumerate(frames * 3):
        s = s1 if i % 2 == 0 else s2
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            torch.cuda._sleep(2_000_000)  # keep the stream busy so the calls overlap on the device
            outs.append((i % len(frames), pipe(f, stream=s)))
    torch.cuda.synchronize()
    for k, o in outs:
        assert torch.equal(o, ref[k])


@pytest.mark.gpu
def test_calls_from_two_threads_with_their_own_streams_are_bit_exact(tiny_weights_path):
    import torch
    import sitm_trt

    frames = _frames(torch)
    ref = [sitm_trt.infer(f, backend="torch", weights=str(tiny_weights_path)).clone() for f in frames]
    torch.cuda.synchronize()
    results: dict[int, list] = {0: [], 1: []}

    def work(t):
        s = torch.cuda.Stream()
        with torch.cuda.stream(s):
            for r in range(3):
                for k in range(t, len(frames), 2):
                    torch.cuda._sleep(1_000_000)
                    results[t].append((k, sitm_trt.infer(frames[k], backend="torch", weights=str(tiny_weights_path))))
            s.synchronize()

    threads = [threading.Thread(target=work, args=(t,)) for t in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for t in (0, 1):
        assert results[t]
        for k, o in results[t]:
            assert torch.equal(o, ref[k])


@pytest.mark.gpu
def test_a_call_without_out_does_not_synchronize_the_host(tiny_weights_path):
    import torch
    import sitm_trt

    pipe = sitm_trt.Pipeline(str(tiny_weights_path), backend="torch")
    f = _frames(torch, 1)[0]
    ref = pipe(f).clone()  # warm (weights, buffers)
    torch.cuda.synchronize()
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):
        torch.cuda._sleep(2_000_000_000)  # about a second of device work
        y = pipe(f)
        busy = not s.query()  # the host got here before the stream finished: it did not wait
        del y  # dropping a result while the device is busy: freed stream-ordered, no host wait either
        still_busy = not s.query()
        z = pipe(f)
    assert busy and still_busy
    s.synchronize()
    assert torch.equal(z, ref)


@pytest.mark.gpu
def test_results_dropped_while_busy_do_not_corrupt_later_ones(tiny_weights_path):
    import torch
    import sitm_trt

    pipe = sitm_trt.Pipeline(str(tiny_weights_path), backend="torch")
    frames = _frames(torch)
    ref = [pipe(f).clone() for f in frames]
    torch.cuda.synchronize()
    s = torch.cuda.Stream()
    kept = []
    with torch.cuda.stream(s):
        for r in range(4):
            torch.cuda._sleep(5_000_000)
            for k, f in enumerate(frames):
                y = pipe(f)
                if (k + r) % 2:
                    kept.append((k, y))
                del y  # the memory returns to the pool ordered after its reads; the next call reuses it
    s.synchronize()
    for k, o in kept:
        assert torch.equal(o, ref[k])


@pytest.mark.gpu
def test_cuda_buffer_export_orders_and_frees_on_the_stream(trace):
    import torch

    C = trace
    s = torch.cuda.Stream()
    b = C.empty([1024], "float32", "cuda", s.cuda_stream)
    cap = b.__dlpack__()  # None: the legacy default stream waits for s
    assert C._stream_trace_take() == [("wait", 0, s.cuda_stream)]
    del cap, b
    assert C._stream_trace_take() == [("free", 0, 0)]
    with torch.cuda.stream(s):
        torch.cuda._sleep(1_000_000_000)
        b = C.empty([1024], "float32", "cuda", s.cuda_stream)
        del b  # cudaFreeAsync: the host does not wait for the sleeping stream
        assert not s.query()
    s.synchronize()


@pytest.mark.gpu
def test_torch_backend_runs_the_network_on_the_given_stream(tiny_weights_path):
    import torch
    from sitm_trt.runtime.backends.torch_backend import TorchBackend
    from sitm_trt.weights import load

    be = TorchBackend(load(str(tiny_weights_path)), device="cuda:0")
    with be._stream_ctx(0):
        assert torch.cuda.current_stream().cuda_stream == 0
    s = torch.cuda.Stream()
    with be._stream_ctx(s.cuda_stream):
        assert torch.cuda.current_stream().cuda_stream == s.cuda_stream
