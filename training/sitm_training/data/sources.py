"""An HDR source and its radiance: :class:`HDRSource`, user folders, and the checks every radiance map passes.

:class:`HDRSource` is one HDR image to cut training views from (a panorama, a cubemap strip, a flat image or a
16-bit HLG PNG), with its licence, checksum and origin. The pinned Debian and registry sources are fetched and
found by :mod:`.fetch` (their tables: :mod:`.source_tables`); :func:`scan_hdr_dir` finds a user's ``.exr``/``.hdr``
files. :func:`load_radiance` reads any of them and :func:`validate_radiance` refuses what is not usable radiance
(NaN/Inf, all black, large negatives).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sitm_trt.media.io import HDR_EXTENSIONS, ImageReadError, read_hdr, read_ldr
from sitm_trt.weights import sha256_file

from .decoders import BT2020_TO_BT709, hlg_to_linear

__all__ = ["HDRSource", "scan_hdr_dir", "validate_radiance", "load_radiance"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HDRSource:
    """An HDR image to cut training views from."""

    id: str
    path: Path
    kind: str  # "panorama" | "cubemap" | "image" | "hlg_png"
    license: str = "unknown (user file)"
    weight: float = 1.0
    sha256: str = ""
    license_known: bool = True  # False: the build can keep it out of training (--exclude-unknown-license)
    origin: str = ""  # where it came from: package, version, member and their checksums

    def load(self) -> np.ndarray:
        """The validated radiance (float32, >= 0, finite); raises :class:`ImageReadError` when unusable."""
        return load_radiance(self.path, self.kind)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "path": str(self.path),
            "kind": self.kind,
            "license": self.license,
            "weight": self.weight,
            "sha256": self.sha256,
            "license_known": self.license_known,
            "origin": self.origin,
        }


def scan_hdr_dir(root: str | os.PathLike[str], kind: str = "image") -> tuple[list[HDRSource], list[tuple[str, str]]]:
    """Every ``.exr``/``.hdr`` under ``root`` (recursive, sorted) that loads and validates.

    Returns ``(sources, rejected)`` with ``rejected`` a list of ``(path, reason)``; each rejection is also
    logged with the file name. Source ids are ``user/<relative path>``.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"HDR folder {root} does not exist")
    sources, rejected = [], []
    for path in sorted(p for p in root.rglob("*") if p.suffix.lower() in HDR_EXTENSIONS and p.is_file()):
        try:
            load_radiance(path, kind)
        except ImageReadError as err:
            log.warning("skipping %s", err)
            rejected.append((str(path), err.reason))
            continue
        rel = path.relative_to(root).as_posix()
        sources.append(HDRSource(f"user/{root.name}/{rel}", path, kind, sha256=sha256_file(path)))
    return sources, rejected


def validate_radiance(img: np.ndarray, path: str | os.PathLike[str], negative_tolerance: float = 0.05) -> np.ndarray:
    """Check a radiance map; returns float32 with small negatives clamped to 0.

    Rejects (``ImageReadError`` naming ``path``) empty images, NaN/Inf, all-black images, and negative
    values larger than ``negative_tolerance`` times the 99th percentile (lossy codecs such as DWAB leave
    tiny negatives, which are clamped).
    """
    img = np.asarray(img)
    if img.ndim != 3 or img.shape[2] != 3 or img.shape[0] == 0 or img.shape[1] == 0:
        raise ImageReadError(path, f"expected a non-empty (H, W, 3) image, got shape {img.shape}")
    bad = int(np.count_nonzero(~np.isfinite(img)))
    if bad:
        raise ImageReadError(path, f"radiance has {bad} NaN/Inf values")
    img = img.astype(np.float32, copy=False)
    top = float(np.percentile(np.abs(img), 99.0))
    if not float(img.max()) > 0.0:
        raise ImageReadError(path, "radiance is all zero or negative")
    low = float(img.min())
    if low < 0.0:
        if -low > negative_tolerance * top:
            raise ImageReadError(path, f"radiance has large negative values (min {low:g}, 99th percentile {top:g})")
        img = np.maximum(img, 0.0)
    return img


def load_radiance(path: str | os.PathLike[str], kind: str = "image") -> np.ndarray:
    """Read and validate a radiance map. ``kind="hlg_png"``: a 16-bit HLG BT.2020 PNG, decoded to BT.709 linear."""
    if kind == "hlg_png":
        code = read_ldr(path)
        if code.dtype != np.uint16:
            raise ImageReadError(path, f"an HLG PNG must be 16-bit, got {code.dtype}")
        img = hlg_to_linear(code.astype(np.float32) / 65535.0) @ BT2020_TO_BT709.T
        return validate_radiance(np.maximum(img, 0.0), path)  # out-of-gamut colours clamp to 0
    img = validate_radiance(read_hdr(path), path)
    if kind == "cubemap" and (img.shape[0] != 6 * img.shape[1]):
        raise ImageReadError(path, f"a cubemap strip must be (6N, N, 3) (faces +X -X +Y -Y +Z -Z), got {img.shape}")
    return img
