"""The TensorRT backend: an engine from the cache (built on first use), run with ``execute_async_v3``.

No torch at run time: device memory, copies and device queries come from the sitm-trt extension, the engine
from the weights' shipped ONNX. Inputs are bound by their device pointers (``set_tensor_address``), the
outputs are reusable extension buffers; the engine runs on the device's runtime stream, fenced against the
caller's stream (:mod:`sitm_trt.runtime.device`), never on the legacy default stream.
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Any, Sequence

from sitm_trt.runtime.backends.trt_engine import (INPUTS, OUTPUTS, EngineCache, EngineKey, Flavour, Profile,
                                          build_serialized, find_flavour)
from sitm_trt.kernels import BufferPool
from sitm_trt.weights import Weights, sha256_file

_RTX_PORTABLE = "rtx-portable (sm_80, 86, 89, 120)"


class TensorRTCannotRun(RuntimeError):
    """TensorRT is installed but cannot run here: no CUDA device, or a flavour that does not support the GPU."""


def engine_target(flavour: Flavour, device_props: dict | None) -> str:
    """What an engine is specific to: TensorRT-RTX engines are portable across its supported GPUs (and can
    be built without one); classic engines belong to one GPU model."""
    if flavour.is_rtx:
        return _RTX_PORTABLE
    if device_props is None:
        raise RuntimeError("classic TensorRT builds engines for the GPU it runs on: no CUDA device is visible")
    major, minor = device_props["compute_capability"]
    return f"{device_props['name']} sm_{major}{minor}"


def engine_key(weights: Weights, onnx_sha256: str, flavour: Flavour, precision: str, profile: Profile,
               target: str) -> EngineKey:
    return EngineKey(weights.sha256, onnx_sha256, weights.preset_name, flavour.name, flavour.version, precision,
                     profile.padded(weights.stride), target)


def prepare_engine(weights: Weights, *, precision: str = "fp16", profile: Profile | None = None,
                   flavour: Flavour | None = None, cache: EngineCache | None = None, device_props: dict | None = None,
                   validate=None, log=None) -> tuple[bytes, bool, EngineKey]:
    """The serialized engine for these weights (from the cache, or built now): ``(bytes, built, key)``.
    Needs no GPU with TensorRT-RTX (ahead-of-time build)."""
    flavour = flavour or find_flavour()
    profile = profile or Profile()
    cache = cache or EngineCache()
    onnx = weights.onnx(precision)
    key = engine_key(weights, sha256_file(onnx), flavour, precision, profile, engine_target(flavour, device_props))
    padded = profile.padded(weights.stride)
    data, built = cache.get_or_build(key, lambda: build_serialized(flavour, onnx, padded, log=log), validate=validate)
    return data, built, key


class GraphReplay:
    """CUDA graph replay of ``execute_async_v3`` for classic TensorRT (fixed shapes, e.g. video frames).

    A call with new shapes or tensor addresses runs the engine normally (which also applies the new shapes)
    and then captures the same enqueue on a private stream into a graph; later calls with the same shapes
    and addresses launch that graph on the caller's stream instead (one launch instead of one per kernel).
    Capture that fails (an engine that synchronizes or allocates while enqueuing) turns replay off with a
    warning; the results are then those of plain execution. TensorRT-RTX does this itself
    (``CudaGraphStrategy.WHOLE_GRAPH_CAPTURE``), so this class serves the classic flavour only.
    """

    def __init__(self, make_graph):
        self._make_graph = make_graph  # () -> sitm_trt._C.Graph on the engine's device
        self._graph = None
        self._key: tuple | None = None
        self.enabled = True
        self.reason: str | None = None  # why replay is off, when it is
        self.launches = 0  # graph launches so far (for tests and describe())
        self.captures = 0

    def run(self, key: tuple, execute, stream: int) -> None:
        """``execute(stream) -> bool`` enqueues the engine; ``key`` identifies shapes and addresses."""
        if self.enabled and self._graph is not None and key == self._key:
            self._graph.launch(stream)
            self.launches += 1
            return
        if not execute(stream):
            raise RuntimeError("tensorrt backend: execute_async_v3 failed (see the TensorRT log above)")
        if self.enabled:
            self._capture(key, execute)

    def _capture(self, key: tuple, execute) -> None:
        self._graph, self._key = None, None
        graph = self._make_graph()
        capture_stream = graph.begin()
        try:
            ok = execute(capture_stream)
        except Exception as err:  # noqa: BLE001 - leave no capture open, whatever the failure
            graph.abort()
            return self._disable(f"enqueue under capture raised {err}")
        if not ok:
            graph.abort()
            return self._disable("enqueue under capture failed")
        try:
            graph.end()
        except RuntimeError as err:
            return self._disable(str(err))
        self._graph, self._key = graph, key
        self.captures += 1

    def _disable(self, why: str) -> None:
        self.enabled = False
        self.reason = f"CUDA graph capture of the engine failed ({why}); running without graphs"
        warnings.warn(f"sitm-trt: {self.reason}", RuntimeWarning, stacklevel=4)


class TensorRTBackend:
    """``cuda_graphs=True``: replay the engine as a CUDA graph when shapes and buffers repeat (video): native
    with TensorRT-RTX (``CudaGraphStrategy.WHOLE_GRAPH_CAPTURE``), by stream capture (:class:`GraphReplay`)
    with classic TensorRT."""

    name = "tensorrt"

    def __init__(self, weights: Weights, *, device: int = 0, precision: str = "fp16", profile: Profile | None = None,
                 cache: EngineCache | None = None, flavour: Flavour | None = None, log=None,
                 cuda_graphs: bool = False):
        from sitm_trt import kernels

        if precision not in ("fp32", "fp16"):
            raise ValueError(f"tensorrt backend: precision must be 'fp16' or 'fp32', got {precision!r}")
        self._C = kernels.extension()
        count, err = self._C.cuda_devices()
        if count == 0:
            raise TensorRTCannotRun(f"tensorrt backend needs a CUDA device: {err}")
        self.flavour = flavour or find_flavour()
        props = dict(self._C.device_properties(device))
        major, minor = props["compute_capability"]
        if not self.flavour.supports_compute_capability(major, minor):
            raise TensorRTCannotRun(
                f"{self.flavour.name} {self.flavour.version} cannot run on {props['name']} (sm_{major}{minor}): "
                "TensorRT-RTX serves RTX-class GPUs (sm_80/86/89/120) and not Hopper (H100/H200) or datacenter "
                "Blackwell; install classic TensorRT (pip install tensorrt-cu13) for this GPU")
        self.device = f"cuda:{device}"
        self._device_index = device
        self.precision = precision
        self.dtype = "float16" if precision == "fp16" else "float32"
        self.weights = weights
        self.stride = weights.stride
        self.profile = (profile or Profile()).padded(self.stride)
        trt = self.flavour.module
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self._engine = None

        def deserialize(data: bytes) -> bool:
            self._engine = self._runtime.deserialize_cuda_engine(data)
            return self._engine is not None

        with self._on_device():
            _, self.built, self.key = prepare_engine(weights, precision=precision, profile=profile,
                                                     flavour=self.flavour, cache=cache, device_props=props,
                                                     validate=deserialize, log=log)
            self._context, self.graphs = self._create_context(cuda_graphs)
        self._replay = GraphReplay(lambda: self._C.Graph(self._device_index)) if self.graphs == "capture" else None
        self._out_dtypes = {name: self._dtype_name(self._engine.get_tensor_dtype(name)) for name in OUTPUTS}
        self._outputs = BufferPool()

    def _create_context(self, cuda_graphs: bool):
        """The execution context and how it uses CUDA graphs: None, "rtx" (native) or "capture"."""
        if not cuda_graphs:
            return self._engine.create_execution_context(), None
        trt = self.flavour.module
        if self.flavour.is_rtx:
            config = self._engine.create_runtime_config()
            config.cuda_graph_strategy = trt.CudaGraphStrategy.WHOLE_GRAPH_CAPTURE
            return self._engine.create_execution_context(config), "rtx"
        return self._engine.create_execution_context(), "capture"

    @contextlib.contextmanager
    def _on_device(self):
        """TensorRT works on the current CUDA device: make it this backend's, restore the caller's after."""
        previous = self._C.current_device()
        if previous != self._device_index:
            self._C.set_device(self._device_index)
        try:
            yield
        finally:
            if previous != self._device_index:
                self._C.set_device(previous)

    def describe(self) -> str:
        graphs = ""
        if self.graphs == "rtx":
            graphs = "; CUDA graphs (TensorRT-RTX native)"
        elif self._replay is not None:
            graphs = ("; CUDA graphs (stream capture)" if self._replay.enabled else f"; {self._replay.reason}")
        return (f"{self.flavour.name} {self.flavour.version} on {self.device} ({self.precision}; "
                f"{self.profile.describe()}{graphs})")

    def _dtype_name(self, dt) -> str:
        trt = self.flavour.module
        return {trt.float32: "float32", trt.float16: "float16"}[dt]

    def run(self, inputs: Sequence[Any], stream: int = 0) -> tuple[Any, Any, Any, Any]:
        """``inputs``: extension Buffers (``sitm_trt._C.Buffer``: device pointer and shape), as the Pipeline
        passes them; the outputs are Buffers too, reused across calls.

        The engine always runs on this device's runtime stream (``sitm_trt.runtime.device``), never on the
        legacy default stream: it waits for ``stream`` on entry and ``stream`` waits for it on exit (device-side
        waits; the Pipeline passes the runtime stream itself, so both are no-ops there). One stream per device
        also means the execution context's scratch memory is never used by two calls at once."""
        from sitm_trt.runtime import device as runtime_device

        n, _, h, w = inputs[0].shape
        if not self.profile.contains(n, h, w):
            raise ValueError(f"tensorrt backend: a padded batch of {n} x {w}x{h} is outside the engine's profile "
                             f"({self.profile.describe()}); build an engine with a larger profile "
                             "(sitm-trt build-engine --max WxH) or use backend='torch'")
        rt = runtime_device.runtime_for(self._device_index)
        with self._on_device(), rt.scope(int(stream)) as s:
            outs = self._bind(inputs, s)
            if self._replay is not None:
                key = (n, h, w, *(x.data_ptr for x in inputs), *(b.data_ptr for b in outs))
                self._replay.run(key, self._context.execute_async_v3, s)
            elif not self._context.execute_async_v3(s):
                raise RuntimeError("tensorrt backend: execute_async_v3 failed (see the TensorRT log above)")
        if int(stream) != s:  # the caller's stream reads the outputs next: their last use moves there
            outs = [b.view(list(b.shape), None, int(stream)) for b in outs]
        return tuple(outs)

    def _bind(self, inputs: Sequence[Any], stream: int) -> list[Any]:
        """Sets the input shapes and addresses (checked against the engine), then binds output buffers of the
        shapes the context reports; returns the output buffers (views used on ``stream``)."""
        ctx, engine = self._context, self._engine
        for name, x in zip(INPUTS, inputs):
            want = self._dtype_name(engine.get_tensor_dtype(name))
            got = str(getattr(x, "dtype", "?"))
            if got != want:
                raise ValueError(f"tensorrt backend: input {name!r} is {got} but the engine takes {want} "
                                 f"({self.precision} engine)")
            if not ctx.set_input_shape(name, tuple(int(d) for d in x.shape)):
                raise ValueError(f"tensorrt backend: the engine refused input {name!r} of shape {tuple(x.shape)} "
                                 f"(profile {self.profile.describe()}; see the TensorRT log above)")
            ctx.set_tensor_address(name, x.data_ptr)
        outs = []
        for name in OUTPUTS:
            shape = [int(d) for d in ctx.get_tensor_shape(name)]
            if not shape or any(d < 0 for d in shape):
                raise RuntimeError(f"tensorrt backend: output {name!r} has unresolved shape {shape} after the input "
                                   "shapes were set (missing or inconsistent input shapes)")
            buf = self._outputs.get(name, shape, self._out_dtypes[name], self.device, stream)
            ctx.set_tensor_address(name, buf.data_ptr)
            outs.append(buf)
        return outs
