"""Image files in and out: LDR (PNG/JPEG/TIFF/WebP/BMP/AVIF) and HDR (OpenEXR, Radiance .hdr), plus a preview
tone mapper. Import image io from here: the readers live in :mod:`sitm_trt.media.image_read` (the LDR reader,
with its orientation, alpha and colour-tag checks, is the larger half) and are re-exported by this module, which
holds the writers and the tone curves.

Conventions (the whole project relies on them):

* LDR images are ``numpy.ndarray`` of dtype ``uint8`` or ``uint16``, shape ``(H, W, 3)``, channel order RGB,
  upright: the EXIF orientation (JPEG, PNG, WebP, AVIF) and the TIFF orientation tag are applied, by OpenCV's
  decoder. Grayscale files are replicated to three channels; :func:`read_ldr` drops an alpha channel (not
  composited), :func:`read_ldr_image` returns it. Colours are taken as sRGB: an embedded ICC profile is not
  applied, and :func:`read_ldr_image` says so when the profile is not sRGB (Display P3, Adobe RGB, ...).
* HDR images are ``float32`` ``(H, W, 3)`` linear RGB, as stored in the file (no colour conversion).
  OpenEXR files must have ``R``, ``G``, ``B`` channels (a ``Y``-only file is replicated to RGB); the data
  window is returned. Radiance files are divided by their ``EXPOSURE=`` header values, so the result is the
  radiance before the writer scaled it.
* Every file that cannot be used raises :class:`ImageReadError` (a ``ValueError``) whose message names the
  file and what is wrong. Nothing is silently repaired, except what is documented above.
* Writers are atomic (:func:`sitm_trt.files.atomic_write`): the data goes to a temporary file in the same
  folder, which then replaces the target (``os.replace``), so a reader never sees a partial file, even when the
  writer is killed.

OpenCV (``pip install opencv-python-headless``) is needed for the LDR formats, and the OpenEXR bindings
(``pip install openexr``) for ``.exr``; both are imported on first use. Radiance ``.hdr`` is read and written
in plain NumPy.
"""

from __future__ import annotations

import io as _io
import os
from pathlib import Path

import numpy as np

from .. import files
from . import image_read
from .image_read import (
    HDR_EXTENSIONS,
    LDR_EXTENSIONS,
    ImageReadError,
    LdrImage,
    _cv2,
    _openexr,
    read_hdr,
    read_image,
    read_ldr,
    read_ldr_image,
    to_float,
)

__all__ = image_read.__all__ + [
    "write_png",
    "write_exr",
    "write_hdr",
    "write_hdr_image",
    "srgb_oetf",
    "srgb_eotf",
    "tonemap_preview",
]


# ----------------------------------------------------------------------------------------------- writers


def _quantize(img: np.ndarray, bits: int) -> np.ndarray:
    if bits not in (8, 16):
        raise ValueError(f"bits must be 8 or 16, got {bits}")
    dtype = np.uint8 if bits == 8 else np.uint16
    if img.dtype in (np.uint8, np.uint16):
        if img.dtype != dtype:
            raise ValueError(f"an image of dtype {img.dtype} cannot be written with bits={bits}")
        return img
    if not np.issubdtype(img.dtype, np.floating):
        raise ValueError(f"image must be uint8, uint16 or float in [0, 1], got {img.dtype}")
    top = float(np.iinfo(dtype).max)
    x = np.nan_to_num(img.astype(np.float32), nan=0.0, posinf=1.0, neginf=0.0)
    return np.rint(np.clip(x, 0.0, 1.0) * top).astype(dtype)


def write_png(path: str | os.PathLike[str], img: np.ndarray, bits: int | None = None, *,
              exclusive: bool = False) -> None:
    """Write an RGB (or gray ``(H, W)``) image as PNG, atomically.

    ``uint8``/``uint16`` arrays are written as they are (``bits`` defaults to their depth). Float arrays are
    taken as [0, 1] (clipped, NaN -> 0) and rounded to ``bits`` (default 8).
    """
    cv2 = _cv2()
    img = np.asarray(img)
    if bits is None:
        bits = 16 if img.dtype == np.uint16 else 8
    q = _quantize(img, bits)
    if q.ndim == 3 and q.shape[2] == 3:
        q = q[:, :, ::-1]
    elif not (q.ndim == 2 or (q.ndim == 3 and q.shape[2] == 1)):
        raise ValueError(f"image must be (H, W, 3) or (H, W), got shape {img.shape}")
    if q.size == 0:
        raise ValueError(f"cannot write an image with no pixels (shape {img.shape})")
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(q))
    if not ok:  # pragma: no cover - OpenCV failure
        raise OSError(f"{path}: PNG encoding failed")
    files.atomic_write(path, buf.tobytes(), exclusive=exclusive)


def _float_to_rgbe(img: np.ndarray) -> np.ndarray:
    v = img.max(axis=2).astype(np.float64)
    mant, expo = np.frexp(v)  # v = mant * 2**expo, mant in [0.5, 1)
    small = v < 1e-32
    scale = np.where(small, 0.0, mant * 256.0 / np.where(small, 1.0, v))
    rgb = np.floor(img.astype(np.float64) * scale[..., None])
    out = np.empty(img.shape[:2] + (4,), np.uint8)
    out[..., :3] = np.clip(rgb, 0, 255).astype(np.uint8)
    out[..., 3] = np.where(small, 0, np.clip(expo + 128, 0, 255)).astype(np.uint8)
    return out


def check_hdr_array(img: np.ndarray) -> np.ndarray:
    """``img`` as an array when it is a non-empty float ``(H, W, 3)`` HDR image; ``ValueError`` otherwise."""
    img = np.asarray(img)
    if img.ndim != 3 or img.shape[2] != 3 or img.size == 0:
        raise ValueError(f"HDR image must be a non-empty (H, W, 3) array, got shape {img.shape}")
    if not np.issubdtype(img.dtype, np.floating):
        raise ValueError(f"HDR image must be float, got {img.dtype}")
    return img


def write_hdr(path: str | os.PathLike[str], img: np.ndarray, *, exclusive: bool = False) -> None:
    """Write float ``(H, W, 3)`` linear RGB as a Radiance ``.hdr`` (flat RGBE scanlines), atomically.

    RGBE keeps 8 bits of mantissa per channel with a shared exponent: the largest channel of each pixel is
    stored to within 1/128 relative error; negative and NaN values are written as 0.
    """
    img = check_hdr_array(img)
    h, w = img.shape[:2]
    clean = np.nan_to_num(img.astype(np.float32), nan=0.0, posinf=np.finfo(np.float32).max, neginf=0.0)
    rgbe = _float_to_rgbe(np.maximum(clean, 0.0))
    header = f"#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n\n-Y {h} +X {w}\n".encode("ascii")
    files.atomic_write(path, header + rgbe.tobytes(), exclusive=exclusive)


def write_exr(path: str | os.PathLike[str], img: np.ndarray, half: bool = True, alpha: np.ndarray | None = None, *,
              exclusive: bool = False) -> None:
    """Write float ``(H, W, 3)`` linear RGB as OpenEXR (ZIP compression), atomically.

    ``half=True`` stores float16 (values above 65504 become Inf: use ``half=False`` for such images).
    ``alpha`` (``(H, W)`` in [0, 1]) adds an ``A`` channel; the colour is then premultiplied by it (the
    OpenEXR convention).
    """
    exr = _openexr()
    img = check_hdr_array(img)
    dtype = np.float16 if half else np.float32
    if alpha is not None:
        alpha = np.asarray(alpha, dtype=np.float32)
        if alpha.shape != img.shape[:2]:
            raise ValueError(f"write_exr: alpha must be {img.shape[:2]}, got {alpha.shape}")
        img = img * alpha[:, :, None]
    channels = {c: np.ascontiguousarray(img[:, :, i].astype(dtype)) for i, c in enumerate("RGB")}
    if alpha is not None:
        channels["A"] = np.ascontiguousarray(alpha.astype(dtype))
    header = {"compression": exr.ZIP_COMPRESSION, "type": exr.scanlineimage}
    buf = _io.BytesIO()
    exr.File(header, channels).write(buf)
    files.atomic_write(path, buf.getvalue(), exclusive=exclusive)


def write_hdr_image(path: str | os.PathLike[str], img: np.ndarray, half: bool = False, *,
                    exclusive: bool = False) -> None:
    """Write an HDR image by extension: ``.exr`` (float32 unless ``half``) or ``.hdr`` (RGBE)."""
    ext = Path(path).suffix.lower()
    if ext == ".exr":
        write_exr(path, img, half=half, exclusive=exclusive)
    elif ext in (".hdr", ".rgbe", ".pic"):
        write_hdr(path, img, exclusive=exclusive)
    else:
        raise ValueError(f"{path}: unknown HDR extension {ext!r} (use .exr or .hdr)")


# ------------------------------------------------------------------------------------------ tone mapping


def srgb_oetf(x: np.ndarray) -> np.ndarray:
    """Linear [0, 1] -> sRGB-encoded [0, 1] (IEC 61966-2-1), float32; input clipped to [0, 1]."""
    x = np.clip(np.asarray(x, np.float32), 0.0, 1.0)
    return np.where(x <= 0.0031308, 12.92 * x, 1.055 * np.power(x, 1.0 / 2.4) - 0.055).astype(np.float32)


def srgb_eotf(v: np.ndarray) -> np.ndarray:
    """sRGB-encoded [0, 1] -> linear [0, 1], float32; input clipped to [0, 1]."""
    v = np.clip(np.asarray(v, np.float32), 0.0, 1.0)
    return np.where(v <= 0.04045, v / 12.92, np.power((v + 0.055) / 1.055, 2.4)).astype(np.float32)


def tonemap_preview(hdr: np.ndarray, ev: float | None = None, white: float = 4.0) -> np.ndarray:
    """Fixed tone mapper: exposure, extended Reinhard per channel, sRGB OETF -> ``uint8`` (H, W, 3).

    The trainer's validation sheets use it to show a prediction and its target at one exposure (``ev``) and
    one curve. It is not the preview of ``sitm-trt infer``: per channel, it turns bright colours white or grey;
    :func:`sitm_trt.media.preview.tonemap` keeps them.

    ``ev=None`` picks the exposure that maps the log-average luminance to 0.18 (Reinhard's key value; the
    average uses a floor of 1e-6 times the maximum so black pixels count but cannot dominate);
    otherwise the image is multiplied by ``2**ev``. The curve ``y = x (1 + x / white**2) / (1 + x)`` maps
    ``white`` (after exposure) to 1. NaN, negative values and black images are safe (they map to 0).
    """
    x = check_hdr_array(hdr).astype(np.float32)
    x = np.nan_to_num(x, nan=0.0, posinf=np.finfo(np.float32).max, neginf=0.0)
    x = np.maximum(x, 0.0)
    if ev is None:
        lum = (0.2126 * x[..., 0] + 0.7152 * x[..., 1] + 0.0722 * x[..., 2]).astype(np.float64)
        top = float(lum.max())
        if top > 0.0 and np.isfinite(top):
            key = float(np.exp(np.mean(np.log(lum + 1e-6 * top))))  # black pixels count, relative floor
            scale = 0.18 / key
        else:
            scale = 1.0
    else:
        scale = float(2.0**ev)
    x = np.minimum(x.astype(np.float64) * scale, 1e30)
    y = x * (1.0 + x / (white * white)) / (1.0 + x)
    return np.rint(srgb_oetf(y.astype(np.float32)) * 255.0).astype(np.uint8)
