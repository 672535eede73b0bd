"""The ONNX Runtime backend: the weights' ONNX export in an ``onnxruntime.InferenceSession``, no torch.

On the CPU (the default of ``backend="auto"`` for CPU inputs) it runs the fp32 export with the CPU execution
provider; where ``onnxruntime-gpu`` is installed, the CUDA execution provider serves CUDA inputs (fp32 or
fp16), e.g. on GPUs that the installed TensorRT flavour cannot serve.

No copies: the four inputs are the Pipeline's pre-kernel buffers and the four outputs are this backend's own
reusable extension buffers, both bound by address through an ``IOBinding`` (``bind_input`` /
``bind_output`` with ``buffer_ptr``), so ONNX Runtime reads and writes our memory directly and the post
kernel reads its results in place.

The ONNX file is the one shipped beside the weights (``default-fp32.onnx``, checksummed in the card) or an
export made once on first use into the cache (``Weights.onnx``: needs torch once, then never again for those
weights).

Threads (CPU): ``threads`` is ONNX Runtime's intra-op pool size (``None``: ONNX Runtime's default, one thread
per physical core), with spinning off; inter-op parallelism is off (the graph is one chain). On this project's
busy 2-core machine 1 thread was as fast as or faster than 2 (BENCHMARKS.md, "ONNX Runtime backend"): pass
``threads=1`` on a shared machine.

Streams (CUDA execution provider): ONNX Runtime runs on its own CUDA stream. The backend waits for the
caller's stream (the pre kernel) before the run and synchronizes the outputs after it
(``IOBinding.synchronize_outputs``), so results are correct on any stream; unlike TensorRT, the host waits for the
frame.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

from sitm_trt.weights import Weights

INPUTS = ("image", "image_down", "image_up", "guide")  # sitm_trt.model.export.INPUT_NAMES
OUTPUTS = ("exposure_up", "exposure_down", "masks", "coef")  # sitm_trt.model.export.OUTPUT_NAMES
_ORT_DTYPES = {"tensor(float)": "float32", "tensor(float16)": "float16"}


class OnnxRuntimeUnavailable(ImportError):
    """onnxruntime is not importable, or lacks the execution provider a device needs."""


def import_onnxruntime():
    try:
        import onnxruntime
    except ImportError as err:
        raise OnnxRuntimeUnavailable(f"onnxruntime is not importable ({err}): pip install onnxruntime "
                                     "(or onnxruntime-gpu for the CUDA execution provider)") from err
    return onnxruntime


def cuda_provider_available() -> bool:
    """Whether the installed onnxruntime has the CUDA execution provider (``onnxruntime-gpu``)."""
    try:
        return "CUDAExecutionProvider" in import_onnxruntime().get_available_providers()
    except OnnxRuntimeUnavailable:
        return False


def _onnx_for(weights: Weights, precision: str) -> str:
    """The weights' ONNX export (shipped, cached, or exported now); a clear error when the export needs torch."""
    try:
        return str(weights.onnx(precision))
    except ModuleNotFoundError as err:
        if err.name != "torch":
            raise
        raise ImportError(f"{weights.path.name} ships no {precision} ONNX export and none is cached: making one "
                          "once needs PyTorch (pip install 'sitm-trt[torch]'), then ONNX Runtime runs without it") from err


class OnnxRuntimeBackend:
    name = "onnxruntime"

    def __init__(self, weights: Weights, *, device: str = "cpu", precision: str = "fp32", threads: int | None = None,
                 onnx_path: str | os.PathLike | None = None):
        ort = import_onnxruntime()
        self._ort = ort
        if precision not in ("fp32", "fp16"):
            raise ValueError(f"onnxruntime backend: precision must be 'fp32' or 'fp16', got {precision!r}")
        if threads is not None and (not isinstance(threads, int) or isinstance(threads, bool) or threads < 1):
            raise ValueError(f"onnxruntime backend: threads must be a positive integer or None, got {threads!r}")
        if device == "cpu":
            if precision == "fp16":
                raise ValueError("onnxruntime backend: fp16 needs a CUDA device; use precision='fp32' on the CPU")
            self._device_index = 0
            providers: list[Any] = ["CPUExecutionProvider"]
        elif device.startswith("cuda:"):
            if not cuda_provider_available():
                raise OnnxRuntimeUnavailable(
                    f"onnxruntime {ort.__version__} has no CUDAExecutionProvider (providers: "
                    f"{', '.join(ort.get_available_providers())}): install onnxruntime-gpu for CUDA inputs")
            self._device_index = int(device.split(":")[1])
            providers = [("CUDAExecutionProvider", {"device_id": self._device_index}), "CPUExecutionProvider"]
        else:
            raise ValueError(f"onnxruntime backend: device must be 'cpu' or 'cuda:N', got {device!r}")
        self.device = device
        self.precision = precision
        self.dtype = "float16" if precision == "fp16" else "float32"
        self.weights = weights
        self.stride = weights.stride
        self.threads = threads
        self.onnx_path = str(onnx_path) if onnx_path is not None else _onnx_for(weights, precision)
        opts = ort.SessionOptions()
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.inter_op_num_threads = 1
        if threads is not None:
            opts.intra_op_num_threads = threads
        # Idle pool threads sleep instead of spinning: on a busy machine spinning threads take the cores the
        # working ones need (measured with 2 threads at 1080p: 11.2 s spinning, 8.6 s not; BENCHMARKS.md).
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.log_severity_level = 3  # errors only: no per-session warnings on stderr
        self.session = ort.InferenceSession(self.onnx_path, sess_options=opts, providers=providers)
        if device != "cpu" and "CUDAExecutionProvider" not in self.session.get_providers():
            raise OnnxRuntimeUnavailable(f"onnxruntime could not create the CUDA execution provider on {device} "
                                         f"(session providers: {self.session.get_providers()})")
        names_in = [i.name for i in self.session.get_inputs()]
        names_out = [o.name for o in self.session.get_outputs()]
        if tuple(names_in) != INPUTS or set(names_out) != set(OUTPUTS):
            raise ValueError(f"{self.onnx_path}: not a sitm-trt network export (inputs {names_in}, outputs {names_out})")
        self._in_dtype = {i.name: _ORT_DTYPES.get(i.type) for i in self.session.get_inputs()}
        self._out_dtypes = {o.name: _ORT_DTYPES.get(o.type) for o in self.session.get_outputs()}
        if set(self._in_dtype.values()) != {self.dtype} or None in self._out_dtypes.values():
            raise ValueError(f"{self.onnx_path}: input/output types {self._in_dtype} / {self._out_dtypes} do not "
                             f"match precision {precision!r}")
        from sitm_trt import kernels

        self._C = kernels.extension()
        self._outputs = kernels.BufferPool()
        self._binding = self.session.io_binding()
        self._ort_device = "cpu" if device == "cpu" else "cuda"

    def describe(self) -> str:
        provider = self.session.get_providers()[0]
        threads = f"{self.threads} intra-op threads" if self.threads else "default threads"
        return f"onnxruntime {self._ort.__version__} {provider} on {self.device} ({self.precision}; {threads})"

    def _np_dtype(self, name: str):
        import numpy as np

        return np.float16 if name == "float16" else np.float32

    def _view(self, x: Any) -> tuple[int, tuple[int, ...], str]:
        """(address, shape, dtype) of a compact array: an extension Buffer (as the Pipeline passes), or any
        DLPack array (e.g. the NumPy buffers of ``sitm_trt.media.video``), read through the extension's DLPack view."""
        if isinstance(x, self._C.Buffer):
            return int(x.data_ptr), tuple(x.shape), str(x.dtype)
        from sitm_trt import kernels

        v = self._C.view_info(kernels._capsule(x, "onnxruntime backend", "input", 0))
        return int(v["data_ptr"]), tuple(v["shape"]), str(v["dtype"])

    def run(self, inputs: Sequence[Any], stream: int = 0) -> tuple[Any, Any, Any, Any]:
        """``inputs``: the four network inputs as extension Buffers (as the Pipeline passes them) or other
        compact DLPack arrays on this backend's device; the outputs are extension Buffers, reused across calls.
        The caller keeps the inputs alive during the call (ONNX Runtime reads them in place)."""
        views = [self._view(x) for x in inputs]
        n, _, h, w = views[0][1]
        if h % self.stride or w % self.stride:
            raise ValueError(f"onnxruntime backend: padded size {w}x{h} is not a multiple of the stride {self.stride}")
        b = self._binding
        b.clear_binding_inputs()
        b.clear_binding_outputs()
        for name, (ptr, shape, dtype) in zip(INPUTS, views):
            if dtype != self.dtype:
                raise ValueError(f"onnxruntime backend: input {name} is {dtype}, the session takes {self.dtype}")
            b.bind_input(name, self._ort_device, self._device_index, self._np_dtype(self.dtype), list(shape), ptr)
        outs = []
        for name in OUTPUTS:
            shape = [n, 4] if name == "coef" else [n, 3, h, w]
            buf = self._outputs.get(name, shape, self._out_dtypes[name], self.device, stream)
            b.bind_output(name, self._ort_device, self._device_index, self._np_dtype(self._out_dtypes[name]), shape,
                          buf.data_ptr)
            outs.append(buf)
        if self._ort_device == "cuda":
            # ONNX Runtime runs on its own stream: the pre kernel (on the caller's stream) must be done first.
            self._C.synchronize(stream, self._device_index)
        self.session.run_with_iobinding(b)
        if self._ort_device == "cuda":
            # The post kernel reads the outputs on another stream: wait for ONNX Runtime's stream explicitly rather
            # than rely on run_with_iobinding synchronizing it (its default, not a documented promise).
            b.synchronize_outputs()
        return tuple(outs)
