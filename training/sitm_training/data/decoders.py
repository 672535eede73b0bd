"""Decoders of the registry and Debian sources' pixel formats, and the checksum of decoded pixels.

The npm package ``@pmndrs/assets`` stores each HDRI as a base64 OpenEXR inside a JS module
(:func:`extract_base64_exr` reads it as text; nothing is executed); the ``open3d`` wheel stores its skyboxes as KTX1
cubemaps in packed ``GL_R11F_G11F_B10F`` (:func:`read_ktx1_cubemap`, :func:`decode_r11g11b10f`); lossy DWAB leaves
holes of negative values inside lights, which :func:`fill_negative_pixels` fills from their surroundings; libjxl's
test image is a 16-bit HLG BT.2020 PNG (:func:`hlg_to_linear`, :data:`BT2020_TO_BT709`). :func:`pixel_sha256` pins
decoded pixels independently of the file container that stores them.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import math
import re
import struct

import numpy as np

__all__ = [
    "pixel_sha256",
    "extract_base64_exr",
    "decode_r11g11b10f",
    "read_ktx1_cubemap",
    "fill_negative_pixels",
    "hlg_to_linear",
    "BT2020_TO_BT709",
]


def pixel_sha256(img: np.ndarray) -> str:
    """SHA-256 of an image's pixels as float16 little-endian ``(H, W, 3)`` in C order (the decoded sources'
    checksum: independent of the file container and its compressor)."""
    a = np.ascontiguousarray(np.asarray(img, np.float16)).astype("<f2", copy=False)
    h = hashlib.sha256(f"{a.shape}".encode())
    h.update(a.tobytes())
    return h.hexdigest()


_DATA_URL = re.compile(rb"\A\s*export\s+default\s+(['\"])data:application/exr;base64,([A-Za-z0-9+/=\s]*)\1\s*;?\s*\Z")


def extract_base64_exr(module: bytes | str, name: str = "module") -> bytes:
    """The EXR file inside a JS module of ``@pmndrs/assets`` (``export default 'data:application/exr;base64,...'``).

    Parses the text only (nothing is executed); raises ``ValueError`` naming ``name`` when the module has
    another form, the base64 is invalid, or the payload is not an OpenEXR file.
    """
    raw = module.encode() if isinstance(module, str) else bytes(module)
    m = _DATA_URL.match(raw)
    if m is None:
        raise ValueError(f"{name}: not a `export default 'data:application/exr;base64,...'` module")
    try:
        payload = base64.b64decode(re.sub(rb"\s+", b"", m.group(2)), validate=True)
    except binascii.Error as err:
        raise ValueError(f"{name}: invalid base64 ({err})") from err
    if not payload.startswith(b"\x76\x2f\x31\x01"):
        raise ValueError(f"{name}: the payload is not an OpenEXR file (magic {payload[:4]!r})")
    return payload


def decode_r11g11b10f(words: np.ndarray) -> np.ndarray:
    """Unpack ``GL_R11F_G11F_B10F`` words (uint32) to float32 ``(..., 3)``.

    R in bits 0-10 and G in bits 11-21 (5-bit exponent, 6-bit mantissa), B in bits 22-31 (5-bit exponent,
    5-bit mantissa); unsigned, exponent bias 15, denormals ``m / 2^M * 2^-14``; exponent 31 (Inf/NaN)
    raises ``ValueError``.
    """
    w = np.asarray(words)
    if w.dtype != np.uint32:
        raise ValueError(f"R11G11B10F words must be uint32, got {w.dtype}")
    out = np.empty(w.shape + (3,), np.float32)
    for c, (shift, mbits) in enumerate(((0, 6), (11, 6), (22, 5))):
        field = (w >> np.uint32(shift)) & np.uint32((1 << (5 + mbits)) - 1)
        e = (field >> np.uint32(mbits)).astype(np.int32)
        m = (field & np.uint32((1 << mbits) - 1)).astype(np.float32)
        if np.any(e == 31):
            raise ValueError(f"R11G11B10F data holds {int(np.count_nonzero(e == 31))} Inf/NaN values")
        frac = m / np.float32(1 << mbits)
        out[..., c] = np.where(e == 0, frac * np.float32(2.0**-14), np.ldexp(1.0 + frac, e - 15).astype(np.float32))
    return out


_KTX1_ID = b"\xabKTX 11\xbb\r\n\x1a\n"
_GL_R11F_G11F_B10F = 0x8C3A
_GL_UNSIGNED_INT_10F_11F_11F_REV = 0x8C3B


def read_ktx1_cubemap(data: bytes, name: str = "ktx") -> np.ndarray:
    """Level 0 of a KTX1 cubemap in ``GL_R11F_G11F_B10F``: float32 ``(6, N, N, 3)``, faces in KTX order
    (+X, -X, +Y, -Y, +Z, -Z), rows as stored (OpenGL ``t`` from 0). Only this layout is accepted (little-endian,
    no array, 6 faces, square); anything else raises ``ValueError`` naming ``name``.

    Filament's writer (Open3D's skyboxes) stores the internal format in ``glType`` and ``glFormat`` too; both
    that and the spec's ``GL_UNSIGNED_INT_10F_11F_11F_REV`` are accepted.
    """
    if len(data) < 64 or data[:12] != _KTX1_ID:
        raise ValueError(f"{name}: not a KTX1 file")
    (endian, gl_type, type_size, gl_format, internal, base, width, height, depth, n_array, n_faces, n_mips,
     kv_bytes) = struct.unpack("<13I", data[12:64])
    if endian != 0x04030201:
        raise ValueError(f"{name}: big-endian KTX1 is not supported")
    if internal != _GL_R11F_G11F_B10F or gl_type not in (_GL_UNSIGNED_INT_10F_11F_11F_REV, _GL_R11F_G11F_B10F):
        raise ValueError(f"{name}: glInternalFormat {internal:#x} / glType {gl_type:#x}, expected R11F_G11F_B10F")
    if n_faces != 6 or n_array != 0 or depth != 0 or width != height or width == 0 or n_mips < 1:
        raise ValueError(f"{name}: not a square cubemap (faces {n_faces}, array {n_array}, depth {depth}, "
                         f"{width}x{height}, levels {n_mips})")
    off = 64 + kv_bytes
    face_bytes = width * height * 4
    if off + 4 > len(data):
        raise ValueError(f"{name}: truncated (no image data)")
    (image_size,) = struct.unpack("<I", data[off : off + 4])
    if image_size != face_bytes:
        raise ValueError(f"{name}: level 0 imageSize {image_size}, expected {face_bytes} per face")
    off += 4
    if off + 6 * face_bytes > len(data):  # faces are 4-byte aligned already: no cube padding
        raise ValueError(f"{name}: truncated ({len(data)} bytes, level 0 needs {off + 6 * face_bytes})")
    words = np.frombuffer(data, "<u4", 6 * width * height, off).astype(np.uint32)
    try:
        return decode_r11g11b10f(words).reshape(6, height, width, 3)
    except ValueError as err:
        raise ValueError(f"{name}: {err}") from err


def fill_negative_pixels(img: np.ndarray) -> tuple[np.ndarray, int]:
    """Fill the pixels with a negative channel from their surroundings; ``(float32 image, count)``.

    Lossy DWAB at 512x256 rings around suns and lamps and leaves holes of negative values inside them, which
    clamping would turn into black dots inside the lights. Each such pixel gets, per channel, the mean log
    radiance of its known 8-neighbours, filled from the hole's edge inwards (onion peeling), so a filled value
    lies between the smallest and largest value around the hole. Other pixels are returned unchanged.
    """
    import cv2

    img = np.asarray(img, np.float32)
    todo = (img < 0).any(axis=-1)
    n = int(todo.sum())
    if n == 0:
        return img, 0
    log_img = np.log(np.maximum(img, np.float32(1e-30))).astype(np.float64)
    known = ~todo
    kernel = np.ones((3, 3), np.float64)
    kernel[1, 1] = 0.0
    while todo.any():
        k = known.astype(np.float64)
        count = cv2.filter2D(k, -1, kernel, borderType=cv2.BORDER_CONSTANT)
        ring = todo & (count > 0)
        if not ring.any():  # no known pixel at all (an image of negatives): nothing to fill from
            break
        for c in range(img.shape[-1]):
            total = cv2.filter2D(np.where(known, log_img[..., c], 0.0), -1, kernel, borderType=cv2.BORDER_CONSTANT)
            log_img[..., c] = np.where(ring, total / np.maximum(count, 1.0), log_img[..., c])
        known |= ring
        todo &= ~ring
    out = img.copy()
    filled = (img < 0).any(axis=-1) & known
    out[filled] = np.exp(log_img[filled]).astype(np.float32)
    return out, n


BT2020_TO_BT709 = np.array(
    [[1.660491, -0.587641, -0.072850], [-0.124550, 1.132900, -0.008349], [-0.018151, -0.100579, 1.118730]], np.float32
)

_HLG_A = 0.17883277
_HLG_B = 1.0 - 4.0 * _HLG_A
_HLG_C = 0.5 - _HLG_A * math.log(4.0 * _HLG_A)


def hlg_to_linear(signal: np.ndarray) -> np.ndarray:
    """HLG inverse OETF (ITU-R BT.2100): signal [0, 1] -> normalized scene-linear light [0, 1]; float32."""
    e = np.clip(np.asarray(signal, np.float64), 0.0, 1.0)
    low = e * e / 3.0
    high = (np.exp((e - _HLG_C) / _HLG_A) + _HLG_B) / 12.0
    return np.where(e <= 0.5, low, high).astype(np.float32)
