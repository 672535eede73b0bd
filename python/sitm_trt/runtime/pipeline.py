"""The whole pipeline of one frame: pre kernel -> network backend -> post kernel (ARCHITECTURE.md).

``Pipeline`` holds the weights, one backend per device and reusable buffers; ``infer`` runs a default,
cached ``Pipeline``. The pipeline runs where the input lives: a CPU array on the CPU (ONNX Runtime, else
torch), a CUDA array on its GPU (TensorRT when it can run there, else ONNX Runtime's CUDA execution provider
when ``onnxruntime-gpu`` is installed, else torch). On CUDA a call is stream-ordered like a torch
op: ordered after the caller's stream (``stream=``, default the current torch/CuPy stream), which is ordered
after the call, and the host never waits; the work runs on the device's runtime stream
(:mod:`sitm_trt.runtime.device`).

Inputs: float32/float16 ``(N, 3, H, W)`` in [0, 1], or uint8/uint16 ``(H, W, 3)`` / ``(N, H, W, 3)``, as torch
tensors, NumPy arrays or any DLPack array. LDR values outside [0, 1] are clamped and NaN becomes 0 (the pre
kernel sanitizes; documented, not an error). Output: linear HDR (1.0 = the input's clipping level), float32
(or ``dtype="float16"``) ``(N, 3, H, W)``, or ``layout="hwc"``: ``(N, H, W, 3)`` - ``(H, W, 3)`` for an
``(H, W, 3)`` input - on the input's device, as the input's array type, or written into ``out=``.
"""

from __future__ import annotations

import collections
import contextlib
import threading
import warnings
from typing import Any

from sitm_trt import kernels
from sitm_trt.runtime import device as runtime_device
from sitm_trt.runtime.backends.trt_engine import EngineCache, Profile, TensorRTUnavailable, find_flavour, gpu_plan
from sitm_trt.weights import Weights, WeightsError, load, resolve_path

__all__ = ["Pipeline", "infer", "info", "load"]

_BACKENDS = ("auto", "torch", "tensorrt", "onnxruntime")


class Pipeline:
    """pre -> network -> post with fixed weights, backend choice and precision.

    ``backend``: "auto" (CPU inputs: ONNX Runtime, else torch; CUDA inputs: TensorRT where it can run, else
    ONNX Runtime's CUDA execution provider where ``onnxruntime-gpu`` is installed, else torch), "torch",
    "tensorrt" or "onnxruntime".
    ``precision``: "fp16" or "fp32"; default fp16 for TensorRT, fp32 for torch (the reference) and ONNX Runtime.
    ``threads``: CPU threads of the network: ONNX Runtime's intra-op pool of this pipeline's session; for the
    torch backend ``torch.set_num_threads`` (process-wide). ``None``: the engine's default (docs/runtime.md).
    ``profile``: the TensorRT shape range (:class:`~sitm_trt.runtime.backends.trt_engine.Profile`).
    ``cache_dir``: where TensorRT engines are cached (default ``~/.cache/sitm-trt/engines``).
    ``tile``: memory-bounded inference for very large frames: windows of ``tile`` pixels with the whole-frame
    (global) state computed once, so tiles agree (docs/tiling.md; ``overlap=None`` picks the context that
    makes tiles float-exact). Tiles run on the PyTorch module (a TensorRT engine cannot take the state) and
    on the current torch stream.
    ``cuda_graphs``: TensorRT replays the engine as a CUDA graph while shapes and buffers repeat (video):
    natively with TensorRT-RTX, by stream capture with classic TensorRT (docs/runtime.md). Off by default.
    """

    def __init__(self, weights: str | Weights = "default", *, backend: str = "auto", precision: str | None = None,
                 profile: Profile | None = None, cache_dir: str | None = None, compile: bool = False,
                 channels_last: bool | None = None, tile: int | None = None, overlap: int | None = None, log=None,
                 cuda_graphs: bool = False, threads: int | None = None):
        if backend not in _BACKENDS:
            raise ValueError(f"backend must be one of {_BACKENDS}, got {backend!r}")
        if precision not in (None, "fp16", "fp32"):
            raise ValueError(f"precision must be 'fp16', 'fp32' or None, got {precision!r}")
        self.weights = load("default" if weights is None else weights)  # None as in infer(weights=None)
        self.backend_choice = backend
        self.precision = precision
        self.profile = profile or Profile()
        self.cache = EngineCache(cache_dir)
        self.compile = compile
        self.channels_last = channels_last
        self.log = log
        self.cuda_graphs = bool(cuda_graphs)
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise ValueError(f"threads must be a positive integer or None, got {threads!r}")
        self.threads = threads
        if tile is not None:  # checked now by the tiling's own rules, not at the first frame
            with _needs_torch("tiling (tile=)"):
                from sitm_trt.runtime.tiling import _resolve_geometry

                _resolve_geometry(self.weights.preset(), tile, overlap, None)
        self.tile, self.overlap = tile, overlap
        self._tile_models: dict[str, Any] = {}
        self._fallbacks: dict[str, Any] = {}
        self._backends: dict[str, Any] = {}
        self._pool = kernels.BufferPool()
        self.auto_reason: str | None = None  # why backend="auto" did not use TensorRT / ONNX Runtime, when it did not
        self._lock = threading.RLock()  # one call at a time: buffers and engine contexts are shared

    # -- backends ------------------------------------------------------------------------------------------
    def backend_for(self, device: str):
        """The backend serving ``device`` ("cpu" or "cuda:N"), created on first use."""
        with self._lock:
            if device not in self._backends:
                self._backends[device] = self._make_backend(device)
            return self._backends[device]

    def _make_backend(self, device: str):
        choice = self.backend_choice
        if device == "cpu":
            if self.precision == "fp16":
                raise ValueError("precision='fp16' runs on CUDA devices only; this input is on the CPU "
                                 "(precision=None or 'fp32' runs it there)")
            if choice == "tensorrt":
                raise ValueError("backend='tensorrt' needs the input on a CUDA device; this input is on the CPU "
                                 "(move it to the GPU, or use backend='onnxruntime' / 'torch' / 'auto')")
            if choice in ("auto", "onnxruntime"):
                backend = self._onnxruntime(device, required=choice == "onnxruntime")
                if backend is not None:
                    return backend
            return self._torch(device)
        if choice == "onnxruntime":
            return self._onnxruntime(device, required=True)
        if choice in ("auto", "tensorrt"):
            try:
                from sitm_trt.runtime.backends.tensorrt_backend import TensorRTBackend, TensorRTCannotRun

                return TensorRTBackend(self.weights, device=int(device.split(":")[1]), precision=self.precision or "fp16",
                                       profile=self.profile, cache=self.cache, log=self.log,
                                        cuda_graphs=self.cuda_graphs)
            except (TensorRTUnavailable, TensorRTCannotRun) as err:
                # Only "TensorRT is missing or cannot run on this GPU" falls back; a failing build or
                # out-of-memory is an error the caller must see.
                if choice == "tensorrt":
                    raise
                self.auto_reason = f"TensorRT not used on {device}: {err}"
                from sitm_trt.runtime.backends.onnxruntime_backend import cuda_provider_available

                if choice == "auto" and cuda_provider_available():
                    warnings.warn(f"sitm-trt: {self.auto_reason}; running ONNX Runtime's CUDA execution provider",
                                  RuntimeWarning, stacklevel=4)
                    return self._onnxruntime(device, required=True)
                warnings.warn(f"sitm-trt: {self.auto_reason}; running the PyTorch backend", RuntimeWarning, stacklevel=4)
        return self._torch(device)

    def _onnxruntime(self, device: str, required: bool):
        """The ONNX Runtime backend for ``device``; None (with ``auto_reason`` set) when it is not installed and
        not ``required``."""
        from sitm_trt.runtime.backends.onnxruntime_backend import OnnxRuntimeBackend, OnnxRuntimeUnavailable

        try:
            return OnnxRuntimeBackend(self.weights, device=device, precision=self.precision or "fp32",
                                      threads=self.threads)
        except OnnxRuntimeUnavailable as err:
            if required:
                raise
            self.auto_reason = f"ONNX Runtime not used on {device}: {err}"
            return None

    def _torch_for(self, device: str):
        """A torch backend for ``device``: the pipeline's own when it is torch, else one made for tiles and for
        frames outside a TensorRT engine's shape profile (without building an engine for it)."""
        with self._lock:
            backend = self._backends.get(device)
            if backend is None and (device == "cpu" or self.backend_choice == "torch"):
                backend = self.backend_for(device)
            if backend is not None and getattr(backend, "name", "") == "torch":
                return backend
            if device not in self._fallbacks:
                self._fallbacks[device] = self._torch(device)
            return self._fallbacks[device]

    def _torch(self, device: str):
        with _needs_torch("the torch backend"):
            from sitm_trt.runtime.backends.torch_backend import TorchBackend

            backend = TorchBackend(self.weights, device=device, precision=self.precision or "fp32",
                                   compile=self.compile, channels_last=self.channels_last)
        if self.threads is not None and device == "cpu":
            backend._torch.set_num_threads(self.threads)
        return backend

    # -- the call ------------------------------------------------------------------------------------------
    def __call__(self, x: Any, *, out: Any = None, stream: Any = None, layout: str = "nchw", dtype: str = "float32") -> Any:
        with self._lock:
            return self._call(x, out, stream, layout, dtype)

    def _call(self, x: Any, out: Any, stream: Any, layout: str, dtype: str) -> Any:
        if layout not in ("nchw", "hwc", "nhwc"):
            raise ValueError(f"infer: layout must be 'nchw' or 'hwc', got {layout!r}")
        if dtype not in ("float32", "float16"):
            raise ValueError(f"infer: dtype must be 'float32' or 'float16', got {dtype!r}")
        dev = kernels._device(x, "infer", "x")
        device = kernels._device_name(dev)
        handle = kernels._stream_handle(x, dev, stream)
        # any strides, a foreign byte order, a tensor that requires grad: one copy (on the caller's stream)
        x = runtime_device.contiguous(x, handle)
        shape, dtype_in = _shape_and_dtype(x, handle)
        n, h, w, unbatched = _frame_geometry(shape, dtype_in)
        hwc = layout != "nchw"
        # The result's shape: an unbatched (H, W, 3) frame in HWC layout gets an (H, W, 3) result.
        rshape = [h, w, 3] if (hwc and unbatched) else ([n, h, w, 3] if hwc else [n, 3, h, w])
        if n == 0 or h == 0 or w == 0:  # nothing to compute: an empty result of the right shape
            kernels.pre(x)  # still validates dtype, channels and layout
            if out is not None:
                _check_empty_out(out, [rshape, [n, h, w, 3]] if hwc else [rshape], dtype, device, handle)
                return out
            return kernels._wrap(kernels.extension().empty(rshape, dtype, device, handle), x)
        if self.tile is not None:
            with _needs_torch("tiling (tile=)"):
                from sitm_trt.runtime.tiling import infer_tiled

            return infer_tiled(self._torch_for(device).model, x, tile=self.tile, overlap=self.overlap,
                               layout=layout, dtype=dtype, out=out)
        if device == "cpu":  # the memory guard (sitm_trt.runtime.memory): refuse before allocating what cannot fit
            from sitm_trt.runtime import memory

            memory.check(self.weights, n, h, w)
        backend = self.backend_for(device)
        s = backend.stride
        hp, wp = -(-h // s) * s, -(-w // s) * s
        fits = getattr(backend, "profile", None)
        if fits is not None and not fits.contains(n, hp, wp) and self.backend_choice == "auto":
            backend = self._torch_for(device)  # outside the engine's shape range: the reference backend
        oshape = [n, h, w, 3] if hwc else [n, 3, h, w]
        # A result is allocated on the caller's stream before the entry fence, so the runtime stream's work
        # is ordered after the allocation (docs/runtime.md, "Streams and buffers").
        result = kernels.extension().empty(oshape, dtype, device, handle) if out is None else None
        target = out[None] if (out is not None and hwc and unbatched and len(getattr(out, "shape", ())) == 3) else out
        # CUDA: everything on the device's runtime stream (never the legacy default stream), fenced against the
        # caller's stream on entry and exit; the pooled buffers are only ever used on that stream.
        with runtime_device.scope(device, handle) as run:
            pre_out = tuple(self._pool.get(f"pre{i}", [n, c, hp, wp], backend.dtype, device, run)
                            for i, c in enumerate((3, 3, 3, 2)))
            kernels.pre(x, stride=s, dtype=backend.dtype, out=pre_out, stream=run)
            up, down, masks, coef = backend.run(pre_out, run)
            kernels.post(masks, pre_out[0], up, down, coef, height=h, width=w, layout="nhwc" if hwc else "nchw",
                         dtype=dtype, out=result if out is None else target, stream=run, fusion=self.weights.fusion)
        if out is not None:
            return out
        # The caller's stream is now the result's last use: its free is ordered after the caller's work on it.
        return kernels._wrap(result.view(rshape, None, handle), x)

    def describe(self) -> dict:
        return {"weights": str(self.weights.path), "preset": self.weights.preset_name,
                "backends": {d: b.describe() for d, b in self._backends.items()}, "auto_reason": self.auto_reason}


@contextlib.contextmanager
def _needs_torch(what: str):
    """Turns PyTorch missing (at an import or inside a constructor) into an ImportError that says what to install."""
    try:
        yield
    except ModuleNotFoundError as err:
        if (err.name or "").split(".")[0] != "torch":
            raise
        raise ImportError(f"{what} needs PyTorch: pip install 'sitm-trt[torch]'") from err


def _shape_and_dtype(x: Any, stream: int) -> tuple[tuple[int, ...], Any]:
    """The frame's shape and dtype: its own ``shape`` / ``dtype`` attributes, else (a producer that only speaks
    DLPack) read from a DLPack capsule of it."""
    shape, dtype = getattr(x, "shape", None), getattr(x, "dtype", None)
    if shape is not None and dtype is not None:
        return tuple(int(v) for v in shape), dtype
    desc = kernels.extension().view_info(kernels._capsule(x, "infer", "x", stream))
    return tuple(int(v) for v in desc["shape"]), desc["dtype"]


def _check_empty_out(out: Any, shapes: list[list[int]], dtype: str, device: str, stream: int) -> None:
    """``out=`` for an empty frame, checked as the post kernel checks a non-empty one's (shape, dtype, device,
    writable), from the extension's own reading of its DLPack view."""
    try:
        v = kernels.extension().view_info(kernels._capsule(out, "infer", "out", stream))
    except ValueError as err:  # a dtype no kernel takes (float64, ...)
        raise ValueError(f"infer: out must be {dtype} {tuple(shapes[0])} ({err})") from err
    if list(v["shape"]) not in shapes or v["dtype"] != dtype:
        raise ValueError(f"infer: out must be {dtype} {tuple(shapes[0])}, got {v['dtype']} {tuple(v['shape'])}")
    if v["device"] != device:
        raise ValueError(f"infer: out must be on {device}, like x, got {v['device']}")
    if v["read_only"]:
        raise ValueError("infer: out is read-only")


def _frame_geometry(shape: tuple[int, ...], dtype: Any) -> tuple[int, int, int, bool]:
    """(N, H, W, unbatched) of a frame; the pre kernel then checks dtype, channels and layout in detail."""
    name = str(dtype).replace("torch.", "")  # (a foreign byte order was made native by runtime_device.contiguous)
    if name in ("uint8", "uint16") and len(shape) == 3:
        return 1, shape[0], shape[1], True
    if name in ("uint8", "uint16") and len(shape) == 4:
        return shape[0], shape[1], shape[2], False
    if len(shape) == 4:
        return shape[0], shape[2], shape[3], False
    raise ValueError(f"infer: x must be float (N, 3, H, W) or uint8/uint16 (H, W, 3) or (N, H, W, 3), got {name} {shape}")


_DEFAULT: "collections.OrderedDict[tuple, tuple[tuple, Pipeline]]" = collections.OrderedDict()
_DEFAULT_LOCK = threading.Lock()
_DEFAULT_MAX = 4  # pipelines infer() keeps (least recently used dropped): each holds a session or a network


def _pipeline_key(weights: str | Weights | None, backend: str, precision: str | None) -> tuple[tuple, tuple]:
    """``(key, stamp)`` of the cached pipeline for these arguments, without hashing the weights file on every
    call: the key names the file, the stamp (size, mtime) tells a rewritten file, whose pipeline is then replaced."""
    if isinstance(weights, Weights):
        return ("handle", weights.sha256, str(weights.path), backend, precision), ()
    path = resolve_path(weights if weights is not None else "default")
    st = path.stat()
    return ("file", str(path), backend, precision), (st.st_size, st.st_mtime_ns)


def infer(x: Any, *, out: Any = None, stream: Any = None, backend: str = "auto", precision: str | None = None,
          weights: str | Weights | None = None, layout: str = "nchw", dtype: str = "float32") -> Any:
    """LDR frame(s) -> linear HDR with a default, cached :class:`Pipeline` (see the module docstring).

    The pipeline for (weights, backend, precision) is made once (the weights' sha256 is verified then) and
    reused; calls from several threads are serialized on it. A weights file rewritten since gets a new pipeline,
    and only the last few pipelines are kept (``_DEFAULT_MAX``), so scoring many checkpoints does not grow memory.
    ``weights``: a :class:`Weights`, a weights file or a shipped name, ``"default"`` (when ``None``; any input) or
    ``"filmic"`` (frames known to come through a filmic S-curve grade)."""
    key, stamp = _pipeline_key(weights, backend, precision)
    with _DEFAULT_LOCK:
        entry = _DEFAULT.get(key)
        if entry is None or entry[0] != stamp:
            _DEFAULT.pop(key, None)
            entry = (stamp, Pipeline(load(weights if weights is not None else "default"), backend=backend,
                                     precision=precision))
            _DEFAULT[key] = entry
            while len(_DEFAULT) > _DEFAULT_MAX:
                _DEFAULT.popitem(last=False)
        _DEFAULT.move_to_end(key)
        pipe = entry[1]
    return pipe(x, out=out, stream=stream, layout=layout, dtype=dtype)


def info() -> dict:
    """What is available here and what ``backend="auto"`` picks, with the reasons."""
    out: dict[str, Any] = {}
    try:
        out["extension"] = kernels.build_info()
        count, _ = kernels.extension().cuda_devices()
        out["cuda_devices"] = [dict(kernels.extension().device_properties(i)) for i in range(count)]
        if not count:  # why, in words: no NVIDIA driver, one too old for the extension, a CPU-only build
            out["cuda_devices_reason"] = runtime_device.cuda_devices()[1]
    except ImportError as e:
        out["extension"] = f"unavailable: {e}"
        count = 0
    try:
        import torch
        out["torch"] = {"version": torch.__version__, "cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available()}
    except ImportError:
        out["torch"] = "not installed (pip install 'sitm-trt[torch]')"
    try:
        import onnxruntime as ort

        out["onnxruntime"] = {"version": ort.__version__, "providers": list(ort.get_available_providers())}
        cpu_auto, ort_cuda = "onnxruntime", "CUDAExecutionProvider" in out["onnxruntime"]["providers"]
    except ImportError as e:
        out["onnxruntime"] = f"unavailable: {e}"
        cpu_auto, ort_cuda = "torch", False
    try:
        fl = find_flavour()
        out["tensorrt"] = {"flavour": fl.name, "version": fl.version,
                           "note": "TensorRT-RTX runs on sm_75/86/89/12x, not on A100 (sm_80), H100/H200 (sm_90) or "
                                   "B200 (sm_100); use classic TensorRT there" if fl.is_rtx else ""}
    except TensorRTUnavailable as e:
        fl = None
        out["tensorrt"] = f"unavailable: {e}"
    try:
        wt = load("default")
        out["weights"] = {"path": str(wt.path), "preset": wt.preset_name, "sha256": wt.sha256}
    except WeightsError as e:
        out["weights"] = f"unavailable: {e}"
    reasons = []
    if count:
        props = kernels.extension().device_properties(0)
        out["gpu_plan"] = gpu_plan(*props["compute_capability"])  # what this GPU gets, whatever is installed
    if count and fl is not None:
        if fl.supports_compute_capability(*props["compute_capability"]):
            out["auto"] = f"tensorrt ({fl.name}) on cuda:0 for CUDA inputs; {cpu_auto} on the CPU for CPU inputs"
        else:
            reasons.append(f"{fl.name} cannot run on {props['name']} (sm_{''.join(map(str, props['compute_capability']))})")
    if "auto" not in out:
        if not count:
            reasons.append("no CUDA device")
        elif fl is None:
            reasons.append("no TensorRT")
        gpu_auto = "onnxruntime (CUDA execution provider)" if ort_cuda else "torch"
        out["auto"] = f"{cpu_auto} on the CPU for CPU inputs; {gpu_auto} on the GPU for CUDA inputs"
        out["auto_reason"] = "TensorRT not used: " + "; ".join(reasons)
    return out
