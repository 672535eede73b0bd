"""The PyTorch backend: the network as an ``nn.Module`` on the CPU or a CUDA device.

Inference mode; channels-last memory format (default on: measured 1.3x to 1.6x faster than NCHW on the CPU
with oneDNN, ``sitm-trt bench pipeline --cpu-configs``, BENCHMARKS.md; ``channels_last=False`` turns it
off); optional ``torch.compile`` on CUDA. It is the reference the TensorRT engines are checked against.
"""

from __future__ import annotations

import contextlib
from typing import Any, Sequence

from sitm_trt.weights import Weights


class TorchBackend:
    name = "torch"

    def __init__(self, weights: Weights, *, device: str = "cpu", precision: str = "fp32",
                 channels_last: bool | None = None, compile: bool = False):
        import torch

        self._torch = torch
        if precision not in ("fp32", "fp16"):
            raise ValueError(f"torch backend: precision must be 'fp32' or 'fp16', got {precision!r}")
        dev = torch.device(device)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("torch backend: a CUDA device was asked for, but torch sees none "
                               f"(torch {torch.__version__}, CUDA build: {torch.version.cuda})")
        if precision == "fp16" and dev.type != "cuda":
            raise ValueError("torch backend: fp16 needs a CUDA device; use precision='fp32' on the CPU")
        if dev.type == "cuda" and dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
        self.device = str(dev)
        self.precision = precision
        self.dtype = "float16" if precision == "fp16" else "float32"
        self.weights = weights
        self.stride = weights.stride
        model = weights.model(device="cpu")
        if precision == "fp16":
            model = model.half()
        self.channels_last = True if channels_last is None else channels_last
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model.to(dev).eval()
        self._forward = torch.compile(self.model) if compile and dev.type == "cuda" else self.model

    def describe(self) -> str:
        return f"torch {self._torch.__version__} on {self.device} ({self.precision}{', channels-last' if self.channels_last else ''})"

    def _stream_ctx(self, stream: int):
        """The network runs on ``stream``, the one the pre and post kernels use (stream 0 included: torch's
        legacy default stream), never on whatever torch's current stream is: the caching allocator then
        orders the reuse of the network's outputs after the post kernel that reads them."""
        torch = self._torch
        if not self.device.startswith("cuda"):
            return contextlib.nullcontext()
        if int(stream) == 0:
            return torch.cuda.stream(torch.cuda.default_stream(self.device))
        if int(stream) == torch.cuda.current_stream(self.device).cuda_stream:
            return contextlib.nullcontext()
        return torch.cuda.stream(torch.cuda.ExternalStream(int(stream), device=self.device))

    def run(self, inputs: Sequence[Any], stream: int = 0) -> tuple[Any, Any, Any, Any]:
        torch = self._torch
        with self._stream_ctx(stream), torch.inference_mode():
            xs = [torch.from_dlpack(x) for x in inputs]
            if self.channels_last:
                xs = [x.contiguous(memory_format=torch.channels_last) for x in xs]
            out = self._forward(*xs)
            # The post kernel reads compact NCHW: contiguous() is free when the layout already is.
            return (out.image_up.contiguous(), out.image_down.contiguous(), out.masks.contiguous(),
                    out.coef.contiguous())
