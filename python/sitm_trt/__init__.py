"""sitm-trt: stack-based inverse tone mapping (CVPR 2023) with C++/CUDA kernels and TensorRT engines.

``import sitm_trt`` needs only NumPy: torch, TensorRT and the compiled kernels load on first use, and a
missing piece raises an ImportError that says what to install.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

__all__ = ["__version__", "infer", "Pipeline", "load", "info", "build_info", "kernels", "reference", "model"]

_LAZY_FUNCS = {
    "build_info": "sitm_trt.kernels",
    "infer": "sitm_trt.runtime.pipeline",
    "Pipeline": "sitm_trt.runtime.pipeline",
    "info": "sitm_trt.runtime.pipeline",
    "load": "sitm_trt.weights",
    "WeightsError": "sitm_trt.errors",
    "EngineError": "sitm_trt.errors",
}
_EXTRAS = {
    "torch": "pip install 'sitm-trt[torch]' (or see https://pytorch.org for a CUDA build)",
    "cv2": "pip install opencv-python-headless",
    "OpenEXR": "pip install openexr",
    "av": "pip install av",
}
# Sub-packages and modules reachable as attributes (docs/architecture.md says which folder owns what). ``ops`` is
# the name ``reference`` had before the 2026-12 layout; it stays an alias so code written against it keeps working.
_LAZY_MODULES = {"kernels": "kernels", "reference": "reference", "ops": "reference", "model": "model",
                 "runtime": "runtime", "media": "media", "tools": "tools", "errors": "errors", "weights": "weights",
                 "samples": "samples"}


def __getattr__(name: str) -> Any:
    if name in _LAZY_FUNCS:
        return getattr(importlib.import_module(_LAZY_FUNCS[name]), name)
    if name in _LAZY_MODULES:
        try:
            return importlib.import_module(f"sitm_trt.{_LAZY_MODULES[name]}")
        except ModuleNotFoundError as err:
            if err.name in _EXTRAS:
                raise ImportError(
                    f"sitm_trt.{name} needs {err.name}, which is not installed: {_EXTRAS[err.name]}"
                ) from err
            raise
    raise AttributeError(f"module 'sitm_trt' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY_FUNCS) | set(_LAZY_MODULES))
