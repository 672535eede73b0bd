"""The error types of sitm-trt's own (docs/reliability.md).

* :class:`WeightsError` (a ``ValueError``): a weights file that is missing, unreadable, malformed (a header
  that is not a safetensors header, metadata that is not a string map, a preset that is not valid JSON or
  misses keys, tensor offsets outside the file, a truncated file) or that fails its checksum.
* :class:`EngineError` (a ``RuntimeError``): a TensorRT engine that cannot be built, stored, loaded or
  copied (a read-only or full cache, an output path that is a folder, a tampered engine), or an ONNX export that
  cannot be written into the cache.

The command line reports both as ``sitm-trt: error: MESSAGE`` with exit status 2.
"""

from __future__ import annotations

__all__ = ["WeightsError", "EngineError", "Terminated"]


class WeightsError(ValueError):
    """A weights file that is missing, unreadable, malformed, or fails its checksum."""


class EngineError(RuntimeError):
    """A TensorRT engine that cannot be built, cached, loaded or copied; an ONNX export the cache cannot hold."""


class Terminated(KeyboardInterrupt):
    """SIGTERM during a video conversion: handled like Ctrl-C (the output is closed and playable), then raised;
    the command line exits with 143 (128 + SIGTERM)."""
