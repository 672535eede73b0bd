"""What goes in and comes out: image files (`io`), video (`video`: decode, frame loop, HEVC SEI, sinks), and the
colour and signal encodings (`transfer`: sRGB, PQ, HLG, BT.2020). docs/architecture.md has the data flow.

The sub-modules load on first use as attributes too (``sitm_trt.media.io.read_ldr(...)`` after ``import
sitm_trt``), so importing the package costs nothing."""

from __future__ import annotations

import importlib
from typing import Any

_SUBMODULES = ("io", "image_read", "preview", "transfer", "video")


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_SUBMODULES))
