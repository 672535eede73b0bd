"""Model weights: the shipped defaults and user files, as torch-free handles.

A weights file is safetensors with the preset JSON in its metadata (``sitm_trt.model.save_weights``). Two sets
ship beside this module, ``default`` (any input) and ``filmic`` (inputs declared to come through a filmic S-curve),
each as ``NAME.safetensors`` with a ``NAME.json`` card (preset, sha256, data recipe, training, evaluation) and its
ONNX exports (``NAME-fp32.onnx``, ``NAME-fp16.onnx``),
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


from sitm_trt.errors import EngineError, WeightsError  # noqa: E402 - defined once for weights and engines


ONNX_EXPORT_VERSION = 1
"""Part of the name of cached ONNX exports: bump it when ``sitm_trt.model.export_onnx`` changes the graph."""


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
                "U16": 2, "U32": 4, "U64": 8, "BOOL": 1}


def _safetensors_metadata(path: Path) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file, read from its JSON header (no torch, no safetensors).

    The whole header is checked against the file, so a malformed or truncated file is a WeightsError here
    and never reaches a parser that would fail with its own error type: a JSON object whose entries are
    the metadata (a string map) and tensors of a known dtype whose shape matches their byte range, the
    ranges tiling the data section, which ends where the file ends."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise WeightsError(f"{path}: not a safetensors file ({len(head)} bytes)")
            (n,) = struct.unpack("<Q", head)
            if n > 100 << 20:
                raise WeightsError(f"{path}: not a safetensors file (header of {n} bytes)")
            raw = f.read(n)
            size = os.fstat(f.fileno()).st_size
        if len(raw) < n:
            raise WeightsError(f"{path}: truncated (header of {n} bytes, file of {size})")
        header = json.loads(raw)
    except (OSError, struct.error, json.JSONDecodeError, UnicodeDecodeError, RecursionError) as err:
        raise WeightsError(f"{path}: cannot read a safetensors header: {err}") from err
    if not isinstance(header, dict):
        raise WeightsError(f"{path}: malformed safetensors header (a JSON {type(header).__name__}, not an object)")
    meta = header.get("__metadata__") or {}
    if not isinstance(meta, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
        raise WeightsError(f"{path}: malformed safetensors metadata (must map strings to strings)")
    ranges = []
    for name, t in header.items():
        if name == "__metadata__":
            continue
        ok = (isinstance(t, dict) and t.get("dtype") in _DTYPE_BYTES and isinstance(t.get("shape"), list)
              and all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 1 << 40 for d in t["shape"])
              and isinstance(t.get("data_offsets"), list) and len(t["data_offsets"]) == 2
              and all(isinstance(o, int) and not isinstance(o, bool) and o >= 0 for o in t["data_offsets"]))
        if not ok:
            raise WeightsError(f"{path}: malformed safetensors entry for tensor {name!r}")
        begin, end = t["data_offsets"]
        count = _DTYPE_BYTES[t["dtype"]]
        for d in t["shape"]:
            count *= d
        if end < begin or end - begin != count:
            raise WeightsError(f"{path}: tensor {name!r} has data offsets [{begin}, {end}) that do not hold "
                               f"{t['dtype']} {tuple(t['shape'])}")
        ranges.append((begin, end, name))
    pos = 0
    for begin, end, name in sorted(ranges):
        if begin != pos:
            raise WeightsError(f"{path}: tensor {name!r} starts at byte {begin} of the data, expected {pos} "
                               "(overlapping or gapped offsets)")
        pos = end
    if 8 + n + pos != size:
        raise WeightsError(f"{path}: the header describes {8 + n + pos} bytes but the file has {size} "
                           f"({'truncated' if size < 8 + n + pos else 'trailing data'})")
    return dict(meta)


def _check_preset_json(path: Path, text: str) -> None:
    """The preset stored in a weights file is valid JSON and a valid Preset (its limits included), checked
    without importing torch (config.py is loaded on its own when the package ``sitm_trt.model`` is not)."""
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as err:
        raise WeightsError(f"{path}: the preset in its metadata is not valid JSON: {err}") from err
    if not isinstance(data, dict):
        raise WeightsError(f"{path}: the preset in its metadata is not a JSON object")
    import sys

    mod = sys.modules.get("sitm_trt.model.config") or sys.modules.get("_sitm_trt_preset_check")
    if mod is None:
        import importlib.util

        spec = importlib.util.spec_from_file_location("_sitm_trt_preset_check",
                                                      Path(__file__).resolve().parent.parent / "model" / "config.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = mod  # dataclasses look the module up while building the class
        spec.loader.exec_module(mod)
    try:
        mod.Preset.from_dict(data)
    except (TypeError, ValueError) as err:
        raise WeightsError(f"{path}: invalid preset in its metadata: {err}") from err


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
    def fusion(self) -> str:
        """``Preset.fusion`` of these weights ("paper" when the preset predates the field), read without torch."""
        return json.loads(self.preset_json).get("fusion", "paper")

    @property
    def stride(self) -> int:
        """The network stride, ``2 ** (levels - 1)`` as ``Preset.stride`` says, read without importing torch."""
        return 2 ** (len(json.loads(self.preset_json).get("widths", (0,) * 5)) - 1)  # Preset's default: 5 levels

    def preset(self):
        from sitm_trt.model import Preset

        return Preset.from_json(self.preset_json)

    def model(self, device: str = "cpu"):
        """The PyTorch network with these weights (float32, eval mode)."""
        from sitm_trt.model import load_weights

        try:
            return load_weights(self.path, device=device)
        except (ImportError, MemoryError):
            raise
        except Exception as err:  # safetensors' SafetensorError, load_state_dict's RuntimeError, ...
            raise WeightsError(f"{self.path}: cannot load the weights: {err}") from err

    def onnx(self, precision: str, cache_dir: str | os.PathLike | None = None) -> Path:
        """The ONNX export for ``precision`` ("fp32" | "fp16"): shipped beside the weights, or exported once
        into the cache (needs torch)."""
        if precision not in ("fp32", "fp16"):
            raise ValueError(f"precision must be 'fp32' or 'fp16', got {precision!r}")
        shipped = self.path.with_name(f"{self.path.stem}-{precision}.onnx")
        if shipped.exists() and self.card.get("onnx", {}).get(precision) == sha256_file(shipped):
            return shipped
        from sitm_trt.runtime.backends.trt_engine import cache_root

        root = Path(cache_dir) if cache_dir is not None else cache_root() / "onnx"
        target = root / f"{self.sha256[:32]}-{precision}-v{ONNX_EXPORT_VERSION}.onnx"
        if target.is_file():
            return target
        from sitm_trt.model import export_onnx

        model = self.model()
        try:
            root.mkdir(parents=True, exist_ok=True)
            export_onnx(model, target, fp16=precision == "fp16")  # atomic: never a partial file in the cache
        except OSError as err:
            raise EngineError(f"cannot write the ONNX export of {self.path.name} into the cache {root}: "
                              f"{err.strerror or err}; set SITM_TRT_CACHE to a writable folder") from err
        return target


def shipped_names() -> list[str]:
    return sorted(p.stem for p in WEIGHTS_DIR.glob("*.safetensors"))


def resolve_path(path_or_name: str | os.PathLike) -> Path:
    """The weights file a shipped name (``"default"``) or a path stands for; raises WeightsError if missing."""
    if path_or_name is None or not isinstance(path_or_name, (str, os.PathLike)):
        raise TypeError(f"weights must be a shipped name ({', '.join(shipped_names())}) or the path of a "
                        f".safetensors file, got {type(path_or_name).__name__} {path_or_name!r}")
    p = Path(path_or_name)
    # A bare name ("default", no folder, no suffix) is a shipped name even when the working directory holds a file
    # or folder of that name (an output folder called "default" is common); "./default" names the local file.
    bare = isinstance(path_or_name, str) and p.name == path_or_name and not p.suffix
    if bare and (WEIGHTS_DIR / f"{path_or_name}.safetensors").is_file():
        p = WEIGHTS_DIR / f"{path_or_name}.safetensors"
    elif not p.suffix and not p.exists():
        p = WEIGHTS_DIR / f"{path_or_name}.safetensors"
        if not p.exists():
            names = shipped_names()
            raise WeightsError(
                f"no shipped weights named {str(path_or_name)!r} (shipped: {', '.join(names) if names else 'none'}); "
                "pass the path of a .safetensors file written by sitm_trt.model.save_weights or the trainer"
            )
    if not p.is_file():
        raise WeightsError(f"weights file not found: {p}")
    if p.suffix.lower() == ".json":  # its card, not the weights: the sha256 check would call the card corrupt
        raise WeightsError(f"{p}: is a weights card (JSON), not weights; pass the weights file it describes, "
                           f"{p.with_suffix('.safetensors')}")
    if p.suffix.lower() == ".onnx":
        raise WeightsError(f"{p}: is an ONNX graph, not weights; pass the .safetensors file it was exported from")
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
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise WeightsError(f"{card_path}: unreadable card: {err}") from err
        if not isinstance(card, dict):
            raise WeightsError(f"{card_path}: unreadable card: not a JSON object")
    try:
        digest = sha256_file(p)
    except OSError as err:
        raise WeightsError(f"{p}: cannot read: {err.strerror or err}") from err
    if card.get("sha256") and card["sha256"] != digest:
        raise WeightsError(f"{p}: sha256 {digest} does not match its card {card_path.name} ({card['sha256']}); "
                           "the file is corrupt or was replaced")
    meta = _safetensors_metadata(p)
    if PRESET_KEY not in meta:
        raise WeightsError(f"{p}: not a sitm-trt weights file (no {PRESET_KEY!r} in its metadata)")
    _check_preset_json(p, meta[PRESET_KEY])
    return Weights(p.resolve(), digest, meta[PRESET_KEY], card)
