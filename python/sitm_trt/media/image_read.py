"""Image files in: LDR (PNG/JPEG/TIFF/WebP/BMP/AVIF, by OpenCV) and HDR (OpenEXR, Radiance ``.hdr`` in plain NumPy).

The LDR reader does more than decode: it checks the size the header declares before decoding, turns the image
upright by its EXIF orientation (alpha included), tells gray files from colour ones, and reads the colour tags
(ICC profile, PNG ``cICP``) to say when the colours are not sRGB. The conventions of the arrays and errors are
those of :mod:`sitm_trt.media.io`, which re-exports this module's public names: import them from there.
"""

from __future__ import annotations

import io as _io
import os
import struct
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

__all__ = [
    "ImageReadError",
    "LDR_EXTENSIONS",
    "HDR_EXTENSIONS",
    "LdrImage",
    "read_ldr",
    "read_ldr_image",
    "read_hdr",
    "read_image",
    "to_float",
]

LDR_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".webp", ".bmp", ".avif")
"""The LDR files read here (by OpenCV; AVIF where the installed OpenCV is built with libavif, as the
opencv-python-headless 5 wheels are). HEIC/HEIF is not read: OpenCV has no HEIF decoder."""
HDR_EXTENSIONS = (".exr", ".hdr", ".rgbe", ".pic")


class ImageReadError(ValueError):
    """A file that is not a usable image: unreadable, truncated, wrong channels, wrong type, empty."""

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


# --------------------------------------------------------------------------------------------- imports


def _cv2() -> Any:
    try:
        import cv2
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "reading/writing PNG, JPEG, TIFF, WebP, BMP and AVIF needs OpenCV: pip install opencv-python-headless"
        ) from err
    return cv2


def _openexr() -> Any:
    try:
        import OpenEXR
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("reading/writing .exr needs the OpenEXR bindings: pip install openexr") from err
    return OpenEXR


def _read_bytes(path: str | os.PathLike[str]) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as err:
        raise ImageReadError(path, f"cannot open file ({err.strerror or err})") from err


# ------------------------------------------------------------------------------------------------- LDR


class LdrImage(NamedTuple):
    """An LDR file as :func:`read_ldr_image` reads it."""

    rgb: np.ndarray
    """``uint8``/``uint16`` ``(H, W, 3)`` RGB, upright, the file's bit depth kept."""
    alpha: np.ndarray | None
    """``float32`` ``(H, W)`` in [0, 1] (turned upright with the colour), or None when the file has none."""
    gray: bool
    """The file is grayscale: a gray PNG/TIFF/BMP/AVIF (with or without alpha), or a JPEG whose three channels
    are equal everywhere."""
    notes: tuple[str, ...]
    """What a caller should tell the user, each naming the file: colours tagged other than sRGB (an ICC profile in
    PNG/JPEG/WebP, a PNG ``cICP`` chunk) that were not converted, an alpha channel dropped because it could not be
    turned upright with the colour. (OpenCV does not return the colour tags of TIFF and AVIF files.)"""


def read_ldr(path: str | os.PathLike[str], *, max_pixels: int | None = None) -> np.ndarray:
    """Read an LDR file (:data:`LDR_EXTENSIONS`) as upright ``uint8`` or ``uint16`` ``(H, W, 3)`` RGB (the bit
    depth of the file kept): :func:`read_ldr_image` without the alpha channel and the notes."""
    return read_ldr_image(path, max_pixels=max_pixels).rgb


def _mp(pixels: int) -> str:
    """A pixel count for a message: ``400 MP``, ``0.24 MP``, ``1500 pixels``."""
    if pixels >= 10e6:
        return f"{pixels / 1e6:.0f} MP"
    if pixels >= 10e3:
        return f"{pixels / 1e6:.2g} MP"
    return f"{pixels} pixels"


def read_ldr_image(path: str | os.PathLike[str], *, max_pixels: int | None = None) -> LdrImage:
    """Read an LDR file: the upright RGB, the alpha channel, whether it is gray, and notes (:class:`LdrImage`).

    Orientation: OpenCV's decoder applies the EXIF orientation (``IMREAD_ANYCOLOR | IMREAD_ANYDEPTH``) and a TIFF's
    orientation tag. OpenCV keeps an alpha channel only when it also ignores the EXIF orientation
    (``IMREAD_UNCHANGED``), so a file with both is decoded twice and its alpha gets the turn of the EXIF
    ``Orientation`` tag, checked against OpenCV's upright colour. Raises :class:`ImageReadError` for missing,
    truncated or undecodable files, float or 32-bit integer images, AVIF above 8 bits, and images with zero
    pixels.

    The size the header declares is checked before decoding (a small file may declare 20000 x 20000):
    more than ``max_pixels`` pixels, or by default more than the memory budget (:mod:`sitm_trt.runtime.memory`)
    holds at 16 bytes per pixel (the decoder's buffer and the RGB copy at 16 bits), raises MemoryError.
    """
    cv2 = _cv2()
    data = _read_bytes(path)
    if not data:
        raise ImageReadError(path, "empty file (0 bytes)")
    from sitm_trt.runtime import memory

    declared = memory.image_size(data)
    if declared is not None:
        h, w = declared
        if max_pixels is None:
            limit = memory.budget()
            max_pixels = None if limit is None else limit // 16
        if max_pixels is not None and h * w > max_pixels:
            raise MemoryError(f"{path}: declares {w}x{h} pixels ({_mp(h * w)}), more than the "
                              f"{_mp(max_pixels)} that fit the memory budget; not decoded")
    buf = np.frombuffer(data, np.uint8)
    upright = cv2.IMREAD_ANYCOLOR | cv2.IMREAD_ANYDEPTH  # what OpenCV turns by the EXIF orientation
    jpeg = data[:2] == b"\xff\xd8"  # no alpha: one decode, upright
    try:
        img, kinds, chunks = cv2.imdecodeWithMetadata(buf, upright if jpeg else cv2.IMREAD_UNCHANGED)
    except cv2.error as err:
        raise ImageReadError(path, f"cannot decode image ({err})") from err
    if img is None:
        raise ImageReadError(path, "cannot decode image (truncated, corrupt, or not an image this OpenCV reads: "
                                   f"{', '.join(LDR_EXTENSIONS)})")
    if img.dtype not in (np.uint8, np.uint16):
        raise ImageReadError(path, f"pixel type {img.dtype} is not an 8/16-bit LDR image (use read_hdr)")
    if img.size == 0:
        raise ImageReadError(path, f"image has no pixels (shape {img.shape})")
    if img.dtype == np.uint16 and data[4:8] == b"ftyp":
        raise ImageReadError(path, "AVIF with more than 8 bits per channel is not read (the decoder does not scale "
                                   "it to 16 bits, and such files are usually HDR already): save SDR images as "
                                   "8-bit AVIF or 16-bit PNG/TIFF")
    meta = {int(k): bytes(np.asarray(c, np.uint8)) for k, c in zip(kinds, chunks)}
    if img.ndim == 2:
        img = img[:, :, None]
    channels = img.shape[2]
    if channels not in (1, 2, 3, 4):
        raise ImageReadError(path, f"unsupported channel count {channels} (expected 1 to 4)")
    colour = img[:, :, :3] if channels >= 3 else img[:, :, :1]  # BGR or gray
    alpha = img[:, :, channels - 1] if channels in (2, 4) else None
    notes: list[str] = []
    orientation = _exif_orientation(meta.get(int(cv2.IMAGE_METADATA_EXIF), b""))
    if not jpeg and orientation != 1:
        turned = cv2.imdecode(buf, upright)
        turned = turned[:, :, None] if turned.ndim == 2 else turned
        if alpha is not None:
            stored = colour[:, :, : turned.shape[2]]
            if np.array_equal(_orient(stored, orientation), turned):
                alpha = _orient(alpha, orientation)
            else:
                alpha = None
                notes.append(f"{path}: alpha dropped: it could not be turned upright with the colour (EXIF "
                             f"orientation {orientation})")
        colour = turned
    gray = colour.shape[2] == 1
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 25:
        gray = data[25] in (0, 4)  # colour type 0 / 4 (gray + alpha, which OpenCV hands over as BGRA)
    elif jpeg and not gray:
        gray = bool((colour[..., 0] == colour[..., 1]).all() and (colour[..., 1] == colour[..., 2]).all())
    # the cICP and ICC kinds arrived after imdecodeWithMetadata itself (OpenCV 4.12): an older OpenCV reads no tag
    cicp, icc = (meta.get(int(getattr(cv2, f"IMAGE_METADATA_{kind}", -1)), b"") for kind in ("CICP", "ICCP"))
    if len(cicp) >= 2 and (cicp[0] not in (1, 2) or cicp[1] not in (1, 2, 6, 13, 14, 15)):  # PNG cICP wins (PNG 3)
        hdr = " (an HDR image: PQ or HLG)" if cicp[1] in (16, 18) else ""
        notes.append(f"{path}: its cICP chunk says colour primaries {cicp[0]}, transfer {cicp[1]} (ITU-T H.273), not "
                     f"sRGB{hdr}; the pixels are read as sRGB, not converted")
    elif icc and not cicp and not gray:
        name, srgb = _icc_profile(icc)
        if not srgb:
            notes.append(f"{path}: colour profile {name!r} is not sRGB; the pixels are read as sRGB, not converted "
                         "(a wider gamut such as Display P3 or Adobe RGB comes out less saturated): convert the "
                         "file to sRGB first for exact colours")
    rgb = np.repeat(colour, 3, axis=2) if colour.shape[2] == 1 else colour[:, :, ::-1]
    return LdrImage(np.ascontiguousarray(rgb), None if alpha is None else to_float(np.ascontiguousarray(alpha)),
                    gray, tuple(notes))


def _exif_orientation(exif: bytes) -> int:
    """The ``Orientation`` tag (0x0112) of IFD0 of an EXIF block (a TIFF structure, as OpenCV returns it, or
    after an ``Exif\\0\\0`` header): 1 to 8, and 1 when it is absent or unreadable."""
    if exif[:6] == b"Exif\x00\x00":
        exif = exif[6:]
    if exif[:4] not in (b"II*\x00", b"MM\x00*"):
        return 1
    e = "<" if exif[:2] == b"II" else ">"
    try:
        (ifd,) = struct.unpack(e + "I", exif[4:8])
        (count,) = struct.unpack(e + "H", exif[ifd : ifd + 2])
        for i in range(count):
            at = ifd + 2 + 12 * i
            tag, kind = struct.unpack(e + "HH", exif[at : at + 4])
            if tag == 0x0112 and kind == 3:  # SHORT: the first two bytes of the value field
                (value,) = struct.unpack(e + "H", exif[at + 8 : at + 10])
                return value if 1 <= value <= 8 else 1
    except struct.error:
        return 1
    return 1


def _orient(img: np.ndarray, orientation: int) -> np.ndarray:
    """``img`` (stored order, rows first) turned upright for an EXIF ``orientation`` (TIFF 6.0 / EXIF 2.3: where
    the stored first row and column are displayed)."""
    turns = {
        1: lambda x: x,
        2: lambda x: x[:, ::-1],  # mirrored left-right
        3: lambda x: x[::-1, ::-1],  # rotated 180
        4: lambda x: x[::-1],  # mirrored top-bottom
        5: lambda x: x.swapaxes(0, 1),  # transposed
        6: lambda x: x.swapaxes(0, 1)[:, ::-1],  # rotated 90 clockwise to display
        7: lambda x: x.swapaxes(0, 1)[::-1, ::-1],  # transverse
        8: lambda x: x.swapaxes(0, 1)[::-1],  # rotated 90 counter-clockwise to display
    }
    return turns[orientation](img)


# sRGB's primaries as an ICC profile's rXYZ, gXYZ, bXYZ tags hold them (adapted to D50): IEC 61966-2-1 through the
# Bradford transform, as in the sRGB profiles of the ICC, HP/Microsoft and the camera makers (within 0.002).
_SRGB_COLORANTS = np.array([[0.4361, 0.2225, 0.0139], [0.3851, 0.7169, 0.0971], [0.1431, 0.0606, 0.7141]])


def _icc_profile(icc: bytes) -> tuple[str, bool]:
    """(description, sRGB?) of an ICC profile. sRGB: an RGB profile whose primaries (the ``rXYZ``, ``gXYZ``,
    ``bXYZ`` tags) are sRGB's within 0.01, or, for a profile without them (LUT-based), whose description names
    sRGB. The transfer curves are not compared. A gray profile counts as sRGB (it has no gamut to convert)."""
    tags: dict[bytes, bytes] = {}
    try:
        if len(icc) >= 132 and icc[36:40] == b"acsp":
            (count,) = struct.unpack(">I", icc[128:132])
            for i in range(min(count, 256)):
                sig, offset, size = struct.unpack(">4sII", icc[132 + 12 * i : 144 + 12 * i])
                tags[sig] = icc[offset : offset + size]
    except struct.error:
        pass
    name = _icc_text(tags.get(b"desc", b"")) or "unnamed"
    if icc[16:20] == b"GRAY":
        return name, True
    try:
        xyz = np.array([struct.unpack(">3i", tags[t][8:20]) for t in (b"rXYZ", b"gXYZ", b"bXYZ")]) / 65536.0
    except (KeyError, struct.error):
        return name, "srgb" in name.lower()
    return name, bool(np.abs(xyz - _SRGB_COLORANTS).max() <= 0.01)


def _icc_text(tag: bytes) -> str:
    """The text of an ICC ``textDescriptionType`` (v2 ``desc``) or ``multiLocalizedUnicodeType`` (v4 ``mluc``:
    the first record) tag; "" when unreadable."""
    try:
        if tag[:4] == b"desc":
            (n,) = struct.unpack(">I", tag[8:12])
            return tag[12 : 12 + n].split(b"\x00")[0].decode("latin-1").strip()
        if tag[:4] == b"mluc":
            records, _ = struct.unpack(">II", tag[8:16])
            if records:
                _, _, length, offset = struct.unpack(">2s2sII", tag[16:28])
                return tag[offset : offset + length].decode("utf-16-be", "replace").strip("\x00 ")
    except struct.error:
        pass
    return ""


def to_float(img: np.ndarray) -> np.ndarray:
    """``uint8``/``uint16`` image -> ``float32`` in [0, 1] (float input is returned as float32 unchanged)."""
    if img.dtype == np.uint8:
        return img.astype(np.float32) / np.float32(255.0)
    if img.dtype == np.uint16:
        return img.astype(np.float32) / np.float32(65535.0)
    return img.astype(np.float32, copy=False)


# ------------------------------------------------------------------------------------------------- HDR


def read_hdr(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an HDR image (``.exr`` or Radiance ``.hdr``/``.rgbe``/``.pic``) as float32 ``(H, W, 3)`` linear RGB.

    Values are returned as stored (NaN, Inf or negative values included: validating them is the caller's
    job). Raises :class:`ImageReadError` for unreadable, truncated, empty or wrong-channel files.
    """
    ext = Path(path).suffix.lower()
    if ext == ".exr":
        return _read_exr(path)
    if ext in (".hdr", ".rgbe", ".pic"):
        return _read_rgbe(path)
    raise ImageReadError(path, f"unknown HDR extension {ext!r} (expected one of {', '.join(HDR_EXTENSIONS)})")


def read_image(path: str | os.PathLike[str]) -> np.ndarray:
    """Read any supported image by extension: HDR files as float32, LDR files as uint8/uint16 (RGB, HWC)."""
    if Path(path).suffix.lower() in HDR_EXTENSIONS:
        return read_hdr(path)
    return read_ldr(path)


def _read_exr(path: str | os.PathLike[str]) -> np.ndarray:
    exr = _openexr()
    data = _read_bytes(path)
    if not data:
        raise ImageReadError(path, "empty file (0 bytes)")
    try:
        f = exr.File(_io.BytesIO(data), separate_channels=True)
        channels = f.channels()
    except Exception as err:  # the bindings raise RuntimeError/ValueError for corrupt/truncated files
        raise ImageReadError(path, f"cannot read OpenEXR file (truncated or corrupt?): {err}") from err
    names = sorted(channels)
    if all(c in channels for c in "RGB"):
        planes = [channels[c].pixels for c in "RGB"]
    elif "Y" in channels and not any(c in channels for c in "RGB"):
        planes = [channels["Y"].pixels] * 3
    else:
        raise ImageReadError(path, f"needs R, G, B (or Y) channels, found {names}")
    shapes = {p.shape for p in planes}
    if len(shapes) != 1 or len(planes[0].shape) != 2:
        raise ImageReadError(path, f"channels have different sizes (subsampled?): {sorted(shapes)}")
    img = np.stack([p.astype(np.float32) for p in planes], axis=-1)
    if img.size == 0:
        raise ImageReadError(path, f"image has no pixels (shape {img.shape})")
    return img


def _read_rgbe(path: str | os.PathLike[str]) -> np.ndarray:
    data = _read_bytes(path)
    if not data.startswith(b"#?"):
        raise ImageReadError(path, "not a Radiance file (missing '#?' signature)")
    pos, exposure, fmt = 0, 1.0, None
    while True:  # header: lines up to an empty line
        end = data.find(b"\n", pos)
        if end < 0:
            raise ImageReadError(path, "truncated Radiance header")
        line = data[pos:end].strip()
        pos = end + 1
        if not line:
            break
        if line.startswith(b"FORMAT="):
            fmt = line[7:].decode("ascii", "replace")
        elif line.startswith(b"EXPOSURE="):
            try:
                exposure *= float(line[9:])
            except ValueError as err:
                raise ImageReadError(path, f"bad EXPOSURE line {line!r}") from err
    if fmt not in (None, "32-bit_rle_rgbe"):
        raise ImageReadError(path, f"unsupported Radiance format {fmt!r} (only 32-bit_rle_rgbe)")
    end = data.find(b"\n", pos)
    if end < 0:
        raise ImageReadError(path, "truncated Radiance file (no resolution line)")
    res = data[pos:end].split()
    pos = end + 1
    if len(res) != 4 or res[0] not in (b"-Y", b"+Y") or res[2] != b"+X":
        raise ImageReadError(path, f"unsupported resolution line {b' '.join(res)!r} (expected '-Y H +X W')")
    try:
        height, width = int(res[1]), int(res[3])
    except ValueError as err:
        raise ImageReadError(path, f"bad resolution line {b' '.join(res)!r}") from err
    if height <= 0 or width <= 0:
        raise ImageReadError(path, f"image has no pixels ({height}x{width})")
    rgbe = _decode_rgbe_scanlines(path, data, pos, height, width)
    img = _rgbe_to_float(rgbe)
    if res[0] == b"+Y":
        img = img[::-1]
    if exposure != 1.0:
        if not exposure > 0.0:
            raise ImageReadError(path, f"EXPOSURE product must be positive, got {exposure}")
        img = img / np.float32(exposure)
    return np.ascontiguousarray(img)


def _decode_rgbe_scanlines(path: Any, data: bytes, pos: int, height: int, width: int) -> np.ndarray:
    out = np.empty((height, width, 4), np.uint8)
    n = len(data)
    for y in range(height):
        if pos + 4 > n:
            raise ImageReadError(path, f"truncated pixel data at scanline {y} of {height}")
        b0, b1, b2, b3 = data[pos], data[pos + 1], data[pos + 2], data[pos + 3]
        if not (8 <= width < 32768 and b0 == 2 and b1 == 2 and not (b2 & 0x80)):
            # flat scanline (old-style RLE is not supported and is reported as corrupt below)
            if b0 == 1 and b1 == 1 and b2 == 1:
                raise ImageReadError(path, "old-style run-length encoding is not supported")
            if pos + 4 * width > n:
                raise ImageReadError(path, f"truncated pixel data at scanline {y} of {height}")
            out[y] = np.frombuffer(data, np.uint8, 4 * width, pos).reshape(width, 4)
            pos += 4 * width
            continue
        if (b2 << 8 | b3) != width:
            raise ImageReadError(path, f"corrupt scanline {y}: width {b2 << 8 | b3} != {width}")
        pos += 4
        for c in range(4):
            line = bytearray()
            while len(line) < width:
                if pos >= n:
                    raise ImageReadError(path, f"truncated pixel data at scanline {y} of {height}")
                count = data[pos]
                if count > 128:
                    count -= 128
                    if pos + 1 >= n:
                        raise ImageReadError(path, f"truncated pixel data at scanline {y} of {height}")
                    line += bytes((data[pos + 1],)) * count
                    pos += 2
                else:
                    if count == 0 or pos + 1 + count > n:
                        raise ImageReadError(path, f"corrupt or truncated run at scanline {y} of {height}")
                    line += data[pos + 1 : pos + 1 + count]
                    pos += 1 + count
            if len(line) != width:
                raise ImageReadError(path, f"corrupt scanline {y}: run overflows the width")
            out[y, :, c] = np.frombuffer(bytes(line), np.uint8)
    return out


def _rgbe_to_float(rgbe: np.ndarray) -> np.ndarray:
    e = rgbe[..., 3].astype(np.int32)
    scale = np.where(e > 0, np.ldexp(np.float32(1.0), e - 136), 0.0).astype(np.float32)
    return rgbe[..., :3].astype(np.float32) * scale[..., None]
