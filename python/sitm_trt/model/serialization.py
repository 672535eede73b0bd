"""Weights as safetensors with the preset JSON in the file's metadata: small, no pickle."""

from __future__ import annotations

import json
import os
import struct

import torch

from .config import Preset
from .network import SITMNet

__all__ = ["save_weights", "load_weights", "read_preset", "PRESET_KEY", "FORMAT_KEY", "FORMAT"]

PRESET_KEY = "sitm_trt.preset"
FORMAT_KEY = "sitm_trt.format"
FORMAT = "sitm-weights-1"


def _require_safetensors():
    try:
        import safetensors.torch as st
    except ImportError as err:  # pragma: no cover - safetensors is a dependency of the torch extra
        raise ImportError("sitm_trt.model weights need the 'safetensors' package (pip install safetensors)") from err
    return st


def save_weights(
    model: SITMNet,
    path: str | os.PathLike,
    *,
    dtype: torch.dtype = torch.float32,
    metadata: dict[str, str] | None = None,
) -> None:
    """Write ``model``'s parameters and persistent buffers to ``path`` (safetensors), the preset in the metadata.

    ``dtype`` (float32 or float16/bfloat16) is the storage type; :func:`load_weights` returns float32.
    ``metadata`` adds string entries (e.g. a data recipe); the keys ``sitm_trt.*`` are reserved.
    """
    st = _require_safetensors()
    if not dtype.is_floating_point:
        raise ValueError(f"save_weights: dtype must be a floating type, got {dtype}")
    extra = dict(metadata or {})
    reserved = sorted(k for k in extra if k.startswith("sitm_trt."))
    if reserved:
        raise ValueError(f"save_weights: metadata keys {reserved} are reserved")
    tensors = {k: v.detach().to("cpu", dtype if v.is_floating_point() else v.dtype).contiguous()
               for k, v in model.state_dict().items()}
    meta = {**extra, PRESET_KEY: model.preset.to_json(indent=None), FORMAT_KEY: FORMAT}
    # Through the atomic writer: no partial file, and the mode a new file gets (save_file makes 0600, which
    # a wheel would carry to every user).
    from sitm_trt.files import atomic_write

    atomic_write(path, _canonical_header(st.save(tensors, metadata=meta)))


def _canonical_header(blob: bytes) -> bytes:
    """``blob`` (a safetensors file) with its JSON header in a fixed order: ``safetensors`` writes the metadata from
    a hash map, so the same weights would give different bytes (and sha256) in every process. The header keeps
    its length (compact JSON, padded with spaces as the format allows), so the data offsets stay valid."""
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8 : 8 + n])
    ordered = {}
    if "__metadata__" in header:
        ordered["__metadata__"] = dict(sorted(header.pop("__metadata__").items()))
    ordered.update(sorted(header.items(), key=lambda kv: (kv[1]["data_offsets"][0], kv[0])))
    text = json.dumps(ordered, separators=(",", ":"), ensure_ascii=False).encode()
    if len(text) > n:  # cannot happen for the same content; keep the library's bytes rather than break offsets
        return blob
    return blob[:8] + text + b" " * (n - len(text)) + blob[8 + n :]


def read_preset(path: str | os.PathLike) -> Preset:
    """The preset stored in a weights file's metadata."""
    _require_safetensors()
    from safetensors import safe_open

    with safe_open(os.fspath(path), framework="pt") as f:
        meta = f.metadata() or {}
    if PRESET_KEY not in meta:
        raise ValueError(f"{os.fspath(path)}: not a sitm-trt weights file (no {PRESET_KEY!r} in its metadata)")
    return Preset.from_json(meta[PRESET_KEY])


def load_weights(path: str | os.PathLike, *, device: str | torch.device = "cpu") -> SITMNet:
    """Build the network of the stored preset and load its weights (float32, eval mode, on ``device``)."""
    st = _require_safetensors()
    preset = read_preset(path)
    model = SITMNet(preset)
    state = st.load_file(os.fspath(path), device="cpu")
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    model.load_state_dict(state, strict=True)
    return model.to(device).eval()
