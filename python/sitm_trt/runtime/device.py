"""Device, stream and buffer handling of the CUDA runtime (docs/runtime.md, "Streams and buffers").

One :class:`DeviceRuntime` per CUDA device owns a non-blocking stream (process lifetime: the extension's
buffers are freed stream-ordered on the stream of their last use, so a stream they may name is never
destroyed). The pipeline and the TensorRT backend enqueue their work on it, never on the legacy default
stream:

* on entry (:meth:`DeviceRuntime.enter`) the runtime stream waits on an event recorded on the caller's stream,
  so the work sees everything the caller enqueued before the call (its input, its ``out=`` array);
* on exit (:meth:`DeviceRuntime.exit`) the caller's stream waits on an event recorded on the runtime stream,
  so whatever the caller enqueues next sees the results.

Both are device-side waits (``cudaStreamWaitEvent``): the host never waits, a call stays "like a torch op".
Because every call on a device runs on the one runtime stream, the pipeline's pooled buffers and a TensorRT
execution context's scratch memory are never used by two calls at once, whatever streams or threads the
callers use. Buffers handed across streams carry their own bookkeeping (``sitm_trt._C.Buffer.stream``: a
use on another stream waits for the last one; the free is ``cudaFreeAsync`` on it).
"""

from __future__ import annotations

import contextlib
import ctypes
import sys
import threading
from typing import Any, Iterator

__all__ = ["DL_CPU", "DL_CUDA", "DL_CUDA_HOST", "DL_CUDA_MANAGED", "DeviceRuntime", "runtime_for", "scope",
           "contiguous"]

# DLPack device types (dlpack.h DLDeviceType). Host memory, pinned included, is exported as kDLCPU.
DL_CPU, DL_CUDA, DL_CUDA_HOST, DL_CUDA_MANAGED = 1, 2, 3, 13


class DeviceRuntime:
    """The runtime stream of one CUDA device and the fences around a call on it (see the module doc).

    ``ext`` is the extension module (``sitm_trt._C``) or a stand-in with ``stream_create(device)`` and
    ``stream_wait(consumer, producer, device)`` (the tests use a recording fake)."""

    def __init__(self, device: int, ext: Any = None):
        self.device = int(device)
        self._ext = ext
        self._stream: int | None = None
        self._lock = threading.Lock()

    def _extension(self) -> Any:
        if self._ext is None:
            from sitm_trt import kernels

            self._ext = kernels.extension()
        return self._ext

    @property
    def stream(self) -> int:
        """The runtime's non-blocking stream (a ``cudaStream_t`` as an integer), created on first use."""
        with self._lock:
            if self._stream is None:
                s = int(self._extension().stream_create(self.device))
                if s == 0:
                    raise RuntimeError(f"cuda:{self.device}: stream_create returned the legacy default stream")
                self._stream = s
            return self._stream

    def enter(self, caller: int) -> int:
        """The runtime stream waits (on the device) for the caller's work so far; returns the runtime stream."""
        s = self.stream
        if int(caller) != s:
            self._extension().stream_wait(s, int(caller), self.device)
        return s

    def exit(self, caller: int) -> None:
        """The caller's stream waits (on the device) for the runtime's work so far."""
        s = self.stream
        if int(caller) != s:
            self._extension().stream_wait(int(caller), s, self.device)

    @contextlib.contextmanager
    def scope(self, caller: int) -> Iterator[int]:
        """``with rt.scope(caller) as s:`` enqueue on ``s``; the caller's stream is fenced after, even on error."""
        s = self.enter(caller)
        try:
            yield s
        finally:
            self.exit(caller)


_RUNTIMES: dict[int, DeviceRuntime] = {}
_RUNTIMES_LOCK = threading.Lock()


def runtime_for(device: int) -> DeviceRuntime:
    """The process-wide :class:`DeviceRuntime` of CUDA device ``device``."""
    with _RUNTIMES_LOCK:
        rt = _RUNTIMES.get(int(device))
        if rt is None:
            rt = _RUNTIMES[int(device)] = DeviceRuntime(int(device))
        return rt


@contextlib.contextmanager
def scope(device: str, caller: int) -> Iterator[int]:
    """For ``device`` "cuda:N": :meth:`DeviceRuntime.scope` of that device; for "cpu": no streams (yields 0)."""
    if not device.startswith("cuda"):
        yield 0
        return
    with runtime_for(int(device.split(":")[1])).scope(caller) as s:
        yield s


def contiguous(x: Any, stream: int = 0) -> Any:
    """``x`` as a C-contiguous array of the same type in native byte order (a tensor detached from autograd):
    ``x`` itself when it is one, else one copy (a CUDA tensor is copied on ``stream``, the caller's). Arrays of
    other types are returned as they are (the extension then says what it needs)."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(x, torch.Tensor):
        x = x.detach()  # inference reads a tensor that requires grad (DLPack refuses to export one)
        if x.is_contiguous():
            return x
        if x.is_cuda and stream:
            with torch.cuda.stream(torch.cuda.ExternalStream(int(stream), device=x.device)):
                return x.contiguous()
        return x.contiguous()
    np = sys.modules.get("numpy")
    if np is not None and isinstance(x, np.ndarray):
        if not x.dtype.isnative:  # big-endian data from some TIFF / FITS readers: DLPack carries native order only
            return np.ascontiguousarray(x.astype(x.dtype.newbyteorder("=")))
        return x if x.flags.c_contiguous else np.ascontiguousarray(x)
    cupy = sys.modules.get("cupy")
    if cupy is not None and isinstance(x, cupy.ndarray) and not x.flags.c_contiguous:
        if stream:
            with cupy.cuda.ExternalStream(int(stream)):
                return cupy.ascontiguousarray(x)
        return cupy.ascontiguousarray(x)
    return x


def cuda_devices() -> tuple[int, str]:
    """``(count, reason)``: the CUDA devices the extension can use, or 0 and why not. A driver too old for the
    statically linked CUDA runtime is named as such (CUDA 13 needs an NVIDIA driver >= 580), since torch may
    still see the GPU through its own, older runtime."""
    from sitm_trt import kernels

    try:
        count, err = kernels.extension().cuda_devices()
        info = kernels.build_info()
    except ImportError as e:
        return 0, f"the sitm-trt extension is not available: {e}"
    if count:
        return int(count), ""
    if not info.get("cuda"):
        return 0, "the sitm-trt extension was built without CUDA"
    return 0, explain_cuda_error(str(err), str(info.get("cuda_runtime", "")), driver_version())


def driver_version() -> int | None:
    """The installed NVIDIA driver's CUDA version (``cuDriverGetVersion``, e.g. 13000 for CUDA 13.0), or None
    when there is no driver library (no NVIDIA driver installed)."""
    try:
        lib = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return None
    v = ctypes.c_int(0)
    try:
        if lib.cuDriverGetVersion(ctypes.byref(v)) != 0:
            return None
    except AttributeError:
        return None
    return int(v.value)


def explain_cuda_error(err: str, runtime: str, driver: int | None) -> str:
    """``err`` from the CUDA runtime, explained: no NVIDIA driver at all, or one too old for ``runtime`` (the
    CUDA runtime version the extension was built with, e.g. "13.0"; ``driver`` from :func:`driver_version`)."""
    if driver is None:  # the runtime's own words ("CUDA driver version is insufficient ...") would mislead here
        return "no NVIDIA driver found (libcuda.so.1 cannot be loaded: no NVIDIA driver is installed)"
    low = err.lower()
    if "insufficient" in low or "driver" in low:
        major = runtime.split(".")[0]
        need = {"13": "580", "12": "525"}.get(major)
        hint = f"an NVIDIA driver >= {need}" if need else "a newer NVIDIA driver"
        return (f"{err}: the installed driver supports CUDA {driver // 1000}.{driver % 1000 // 10}, but the sitm-trt "
                f"extension links the CUDA {runtime} runtime statically and needs {hint} (nvidia-smi shows the "
                "driver); update the driver or build the extension with an older CUDA toolkit")
    return err or "no CUDA device"
