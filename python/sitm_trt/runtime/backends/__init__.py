"""Network backends: one interface, three implementations.

A backend runs the network between the pre and post kernels. ``run(inputs, stream)`` takes the four
padded network inputs (extension Buffers, ``sitm_trt._C.Buffer``, on the backend's device, dtype
``backend.dtype``: the Pipeline's reusable buffers) and returns
``(exposure_up, exposure_down, masks, coef)`` as DLPack arrays on the same device, enqueued on ``stream``
(a ``cudaStream_t`` integer; 0 on the CPU) without synchronizing the host.

- :class:`~sitm_trt.runtime.backends.torch_backend.TorchBackend`: the PyTorch module, CPU or CUDA.
- :class:`~sitm_trt.runtime.backends.tensorrt_backend.TensorRTBackend`: a TensorRT engine (classic or RTX), CUDA only,
  no torch needed.
- :class:`~sitm_trt.runtime.backends.onnxruntime_backend.OnnxRuntimeBackend`: an ONNX Runtime session, CPU (the CPU
  default) or CUDA with ``onnxruntime-gpu``, no torch needed.
"""

from __future__ import annotations

from typing import Any, Protocol, Sequence


class Backend(Protocol):
    name: str  # "torch" | "tensorrt" | "onnxruntime"
    device: str  # "cpu" | "cuda:N"
    precision: str  # "fp32" | "fp16"
    dtype: str  # dtype of the network inputs and image outputs: "float32" | "float16"
    stride: int

    def run(self, inputs: Sequence[Any], stream: int) -> tuple[Any, Any, Any, Any]: ...

    def describe(self) -> str: ...
