"""Model weights: the shipped defaults and user files, as torch-free handles.

A weights file is safetensors with the preset JSON in its metadata (``sitm_trt.model.save_weights``). The
shipped default lives beside this module as ``default.safetensors`` with a ``default.json`` card (preset,
sha256, data recipe, training, evaluation) and its ONNX exports (``default-fp32.onnx``, ``default-fp16.onnx``),
so a TensorRT deployment needs neither torch nor a GPU-side export. :func:`load` verifies the sha256 that the
card states. Weights without shipped ONNX are exported on first use (needs torch) into the cache.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import struct
from pathlib import Path

__all__ = ["Weights", "load", "WeightsError", "shipped_names", "WEIGHTS_DIR", "sha256_file", "ONNX_EXPORT_VERSION", "resolve_path"]

WEIGHTS_DIR = Path(__file__).resolve().parent
PRESET_KEY = "sitm_trt.preset"


class WeightsError(ValueError):
    """A weights file that is missing, unreadable, or fails its checksum."""


ONNX_EXPORT_VERSION = 1
"""Part of the name of cached ONNX exports: bump it when ``sitm_trt.model.export_onnx`` changes the graph."""


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _safetensors_metadata(path: Path) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file, read from its JSON header (no torch, no safetensors)."""
    try:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > 100 << 20:
                raise WeightsError(f"{path}: not a safetensors file (header of {n} bytes)")
            header = json.loads(f.read(n))
    except (OSError, struct.error, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise WeightsError(f"{path}: cannot read a safetensors header: {err}") from err
    return dict(header.get("__metadata__") or {})


@dataclasses.dataclass(frozen=True)
class Weights:
    """A verified weights file: where it is, its preset (as JSON and name), its sha256, its card."""

    path: Path
    sha256: str
    preset_json: str
    card: dict

    @property
    def preset_name(self) -> str:
        return json.loads(self.preset_json).get("name", "custom")

    @property
    def stride(self) -> int:
        """The network stride, ``2 ** (levels - 1)`` as ``Preset.stride`` says, read without importing torch."""
        return 2 ** (len(json.loads(self.preset_json)["widths"]) - 1)

    def preset(self):
        from sitm_trt.model import Preset

        return Preset.from_json(self.preset_json)

    def model(self, device: str = "cpu"):
        """The PyTorch network with these weights (float32, eval mode)."""
        from sitm_trt.model import load_weights

        return load_weights(self.path, device=device)

    def onnx(self, precision: str, cache_dir: str | os.PathLike | None = None) -> Path:
        """The ONNX export for ``precision`` ("fp32" | "fp16"): shipped beside the weights, or exported once
        into the cache (needs torch)."""
        if precision not in ("fp32", "fp16"):
            raise ValueError(f"precision must be 'fp32' or 'fp16', got {precision!r}")
        shipped = self.path.with_name(f"{self.path.stem}-{precision}.onnx")
        if shipped.exists() and self.card.get("onnx", {}).get(precision) == sha256_file(shipped):
            return shipped
        from sitm_trt.backends.trt_engine import cache_root

        root = Path(cache_dir) if cache_dir is not None else cache_root() / "onnx"
        root.mkdir(parents=True, exist_ok=True)
        target = root / f"{self.sha256[:32]}-{precision}-v{ONNX_EXPORT_VERSION}.onnx"
        if not target.exists():
            from sitm_trt.model import export_onnx

            tmp = target.with_suffix(f".{os.getpid()}.tmp")
            try:
                export_onnx(self.model(), tmp, fp16=precision == "fp16")
                os.replace(tmp, target)
            finally:
                if tmp.exists():
                    tmp.unlink()
        return target


def shipped_names() -> list[str]:
    return sorted(p.stem for p in WEIGHTS_DIR.glob("*.safetensors"))


def resolve_path(path_or_name: str | os.PathLike) -> Path:
    """The weights file a shipped name (``"default"``) or a path stands for; raises WeightsError if missing."""
    p = Path(path_or_name)
    if not p.suffix and not p.exists():
        p = WEIGHTS_DIR / f"{path_or_name}.safetensors"
        if not p.exists():
            names = shipped_names()
            raise WeightsError(
                f"no shipped weights named {str(path_or_name)!r} (shipped: {', '.join(names) if names else 'none'}); "
                "pass the path of a .safetensors file written by sitm_trt.model.save_weights or the trainer"
            )
    if not p.is_file():
        raise WeightsError(f"weights file not found: {p}")
    return p.resolve()


def load(path_or_name: str | os.PathLike | Weights = "default") -> Weights:
    """Weights by shipped name (``"default"``) or path; the sha256 is checked against the card when there is
    one (``<name>.json`` beside the file, with a ``sha256`` field)."""
    if isinstance(path_or_name, Weights):
        return path_or_name
    p = resolve_path(path_or_name)
    card_path = p.with_suffix(".json")
    card = {}
    if card_path.exists():
        try:
            card = json.loads(card_path.read_text())
        except json.JSONDecodeError as err:
            raise WeightsError(f"{card_path}: unreadable card: {err}") from err
    digest = sha256_file(p)
    if card.get("sha256") and card["sha256"] != digest:
        raise WeightsError(f"{p}: sha256 {digest} does not match its card {card_path.name} ({card['sha256']}); "
                           "the file is corrupt or was replaced")
    meta = _safetensors_metadata(p)
    if PRESET_KEY not in meta:
        raise WeightsError(f"{p}: not a sitm-trt weights file (no {PRESET_KEY!r} in its metadata)")
    return Weights(p.resolve(), digest, meta[PRESET_KEY], card)
