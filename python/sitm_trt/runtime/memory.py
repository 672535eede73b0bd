"""The memory guard: estimate a conversion's peak host memory before allocating it, and refuse (or tile) what
does not fit, instead of being killed by the out-of-memory killer half-way (docs/reliability.md).

The estimate is linear in the pixels: ``pixels x bytes_per_pixel(preset)``, where ``bytes_per_pixel`` is a fit
to peak resident memory measured on this project's 2-core CPU machine (the script and table in
docs/reliability.md, "The memory guard": ``compact`` 533-593 B/px with the torch backend, 328-380 with ONNX Runtime, ``fast``
579, ``paper`` 1482-2073), kept on the high side so the guard errs towards refusing:
``400 + 6 * S`` bytes, ``S = 2 * sum(widths[l] / 4**l) + 3 * mefm_width`` (the channels that live at full
resolution in the two U-Nets and the MEFM). The budget is the memory the kernel says is available
(``MemAvailable``, or a cgroup's limit when lower) unless ``SITM_TRT_MEMORY_LIMIT`` (bytes, with an optional
K/M/G/T suffix) sets it; ``SITM_TRT_MEMORY_LIMIT=0`` turns the guard off. :func:`limited` sets it for a block of
code (``sitm-trt infer/video --max-memory``), over the environment. :func:`choose_tile` picks the tile size of a
frame that does not fit whole.

Only host (CPU) work is guarded: a CUDA allocation that does not fit raises an error of its own.
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
from typing import Any, Iterator

__all__ = ["bytes_per_pixel", "budget", "check", "choose_tile", "fits", "format_bytes", "image_size", "limited",
           "parse_bytes", "DECODED_BYTES_PER_PIXEL", "TILES"]

DECODED_BYTES_PER_PIXEL = 24
"""Host bytes per pixel that a tiled conversion keeps for the whole frame: the decoded 8/16-bit RGB (3-6), the
float32 HDR result (12) and the half-float copy the EXR writer makes (6)."""


def bytes_per_pixel(preset: Any) -> int:
    """Estimated peak host bytes per pixel of one untiled network call at ``preset`` (a Preset, its JSON, a
    dict, or a :class:`sitm_trt.weights.Weights`)."""
    if hasattr(preset, "preset_json"):
        preset = preset.preset_json
    if isinstance(preset, str):
        preset = json.loads(preset)
    if not isinstance(preset, dict):
        preset = preset.to_dict()
    widths = preset.get("widths", (32, 64, 128, 256, 512))
    s = 2 * sum(w / 4**level for level, w in enumerate(widths)) + 3 * preset.get("mefm_width", 64)
    return int(400 + 6 * s)


def parse_bytes(text: str, what: str = "SITM_TRT_MEMORY_LIMIT") -> int:
    """``"8G"``, ``"512M"``, ``"1.5GiB"``, ``"1000000"`` -> bytes (K/M/G/T are powers of 1024); ValueError naming
    ``what`` for anything else, NaN, infinity or a negative number."""
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}.get(t[-1:], 1)
    try:
        value = float(t[:-1] if scale > 1 else t)
    except ValueError:
        raise ValueError(f"{what} must be a number of bytes such as 8G, got {text!r}") from None
    if not value >= 0 or value == float("inf"):  # NaN, inf and negatives
        raise ValueError(f"{what} must be a finite number of bytes >= 0, got {text!r}")
    return int(value * scale)


_limits: list[int] = []  # the budgets set by `limited`, innermost last


@contextlib.contextmanager
def limited(nbytes: int) -> Iterator[None]:
    """Within the block, :func:`budget` is ``nbytes`` (0: no guard), whatever ``SITM_TRT_MEMORY_LIMIT`` says.
    Process-wide, so the threads a command starts inside the block see it too."""
    if nbytes < 0:
        raise ValueError(f"a memory budget must be >= 0 bytes, got {nbytes}")
    _limits.append(int(nbytes))
    try:
        yield
    finally:
        _limits.pop()


def budget() -> int | None:
    """Bytes a conversion may use: the innermost :func:`limited` block's, else ``SITM_TRT_MEMORY_LIMIT`` when set
    (0: no guard, None), else the available memory (``MemAvailable`` of /proc/meminfo, lowered to the cgroup v2
    ``memory.max`` headroom); None where neither can be read (then nothing is refused)."""
    if _limits:
        return _limits[-1] or None
    env = os.environ.get("SITM_TRT_MEMORY_LIMIT")
    if env:
        limit = parse_bytes(env)
        return limit or None
    avail = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
                    break
    except (OSError, ValueError, IndexError):
        return None
    try:
        with open("/sys/fs/cgroup/memory.max") as f:
            limit = f.read().strip()
        with open("/sys/fs/cgroup/memory.current") as f:
            used = int(f.read().strip())
        if limit != "max" and avail is not None:
            avail = min(avail, max(0, int(limit) - used))
    except (OSError, ValueError):
        pass
    return avail


def format_bytes(n: float) -> str:
    return f"{n / (1 << 30):.1f} GiB" if n >= 1 << 30 else f"{n / (1 << 20):.0f} MiB"


def fits(preset: Any, n: int, h: int, w: int, *, tiled: int | None = None,
         frame_bytes: int = DECODED_BYTES_PER_PIXEL) -> tuple[bool, int, int | None]:
    """(fits?, estimated bytes, budget) of converting ``n`` frames of ``h`` x ``w``; ``tiled``: the tile size of
    a tiled conversion (the whole frame then costs only ``frame_bytes`` per pixel, the network one tile)."""
    per = bytes_per_pixel(preset)
    if tiled:  # a window is the tile plus its context (at most 64 px a side at the shipped presets)
        need = n * h * w * frame_bytes + min(h, tiled + 128) * min(w, tiled + 128) * per
    else:
        need = n * h * w * per
    limit = budget()
    return (limit is None or need <= limit), need, limit


TILES = (1024, 512, 256, 128)
"""The tile sizes an automatic tiling tries, largest (fastest) first."""


def choose_tile(preset: Any, h: int, w: int, *, frame_bytes: int = DECODED_BYTES_PER_PIXEL) -> int | None:
    """The largest of :data:`TILES` whose tiled conversion of one ``h`` x ``w`` frame fits the budget (see
    :func:`fits`), or None when none does."""
    return next((t for t in TILES if fits(preset, 1, h, w, tiled=t, frame_bytes=frame_bytes)[0]), None)


def check(preset: Any, n: int, h: int, w: int, what: str = "infer") -> None:
    """Raises MemoryError, with the numbers, when ``n`` frames of ``h`` x ``w`` would not fit the budget."""
    ok, need, limit = fits(preset, n, h, w)
    if not ok:
        raise MemoryError(
            f"{what}: {n} x {w}x{h} needs about {format_bytes(need)} ({bytes_per_pixel(preset)} bytes per pixel "
            f"at this preset) but {format_bytes(limit)} is available; use tiled inference (Pipeline(tile=1024), "
            "sitm-trt infer --tile 1024), a smaller batch, or a larger budget (SITM_TRT_MEMORY_LIMIT or "
            "--max-memory; 0 turns this check off)")


def image_size(data: bytes) -> tuple[int, int] | None:
    """(height, width) that a PNG, JPEG, TIFF, WebP, BMP or AVIF file declares in its header, read without
    decoding (AVIF: the largest ``ispe`` property in the first 64 KiB, which holds the ``meta`` box of the files
    encoders write); None when the header cannot be read (the decoder then reports the file)."""
    try:
        if data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR":
            w, h = struct.unpack(">II", data[16:24])
            return h, w
        if data[:2] == b"\xff\xd8":  # JPEG: walk the marker segments to the first SOFn
            pos = 2
            while pos + 4 <= len(data):
                if data[pos] != 0xFF:
                    return None
                marker = data[pos + 1]
                if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7 or marker == 0xFF:
                    pos += 1 if marker == 0xFF else 2
                    continue
                (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
                if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
                    h, w = struct.unpack(">HH", data[pos + 5 : pos + 9])
                    return h, w
                pos += 2 + length
            return None
        if data[:4] in (b"II*\x00", b"MM\x00*"):  # TIFF: tags 256/257 of the first IFD
            e = "<" if data[:2] == b"II" else ">"
            (ifd,) = struct.unpack(e + "I", data[4:8])
            (count,) = struct.unpack(e + "H", data[ifd : ifd + 2])
            dims = {}
            for i in range(count):
                tag, typ, _, value = struct.unpack(e + "HHII", data[ifd + 2 + 12 * i : ifd + 14 + 12 * i])
                if tag in (256, 257):
                    if typ == 3:  # SHORT: the first two bytes of the value field
                        value = struct.unpack(e + "H", data[ifd + 10 + 12 * i : ifd + 12 + 12 * i])[0]
                    dims[tag] = value
            if 256 in dims and 257 in dims:
                return dims[257], dims[256]
        if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
            chunk = data[12:16]
            if chunk == b"VP8X":  # extended: 24-bit width - 1 and height - 1
                return int.from_bytes(data[27:30], "little") + 1, int.from_bytes(data[24:27], "little") + 1
            if chunk == b"VP8L":  # lossless: 14-bit width - 1 and height - 1 after the 0x2f signature
                (bits,) = struct.unpack("<I", data[21:25])
                return ((bits >> 14) & 0x3FFF) + 1, (bits & 0x3FFF) + 1
            if chunk == b"VP8 ":  # lossy: the key frame header's 14-bit sizes
                w, h = struct.unpack("<HH", data[26:30])
                return h & 0x3FFF, w & 0x3FFF
            return None
        if data[:2] == b"BM":  # BITMAPCOREHEADER (12 bytes): 16-bit sizes; later headers: 32-bit, height signed
            (header,) = struct.unpack("<I", data[14:18])
            if header == 12:
                w, h = struct.unpack("<HH", data[18:22])
                return h, w
            w, h = struct.unpack("<ii", data[18:26])
            return abs(h), abs(w)
        if data[4:8] == b"ftyp" and data[8:12] in (b"avif", b"avis", b"mif1", b"msf1"):
            sizes, at = [], data.find(b"ispe", 0, 1 << 16)
            while at >= 0:  # box: size, 'ispe', version and flags, width, height
                w, h = struct.unpack(">II", data[at + 8 : at + 16])
                sizes.append((h, w))
                at = data.find(b"ispe", at + 4, 1 << 16)
            return max(sizes, key=lambda s: s[0] * s[1]) if sizes else None
    except (struct.error, IndexError):
        return None
    return None
