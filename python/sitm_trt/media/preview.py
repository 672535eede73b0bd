"""Previews of linear HDR images: an SDR picture for any screen, and files that HDR screens show as HDR.

The HDR scale is the project's (docs/video.md, "The HDR scale"): linear BT.709 RGB, 1.0 = the SDR reference
white = the input's clipping level; for a display signal 1.0 is ``ref_white`` cd/m2 (default 203, ITU-R BT.2408).

**SDR** (:func:`tonemap`): a global operator on luminance, extended Reinhard
``T(x) = x (1 + x / W**2) / (1 + x)`` with the white point ``W`` at the image's brightest luminance (at least
the input's white, 1.0), after an exposure ``k`` from the image's own statistics; then sRGB, 8 bits.

* The exposure maps the log-average luminance (the key; black pixels count as 1e-4) to mid grey 0.18, within
  two bounds: the key is never mapped darker than it is (``k >= 1``; with no highlight above 1.0 every pixel
  then keeps at least its input value), and never brightened more than ``max_boost`` (default 2x, +1 EV), so
  a night scene stays a night scene. With ``k`` and ``W`` known, the key condition has a closed form.
* The curve is applied to luminance and every channel is multiplied by the same factor, so hue and
  saturation are kept (a per-channel curve turns every bright colour into white or grey). A bright,
  saturated colour whose largest channel would exceed 1 is scaled down to fit (hue and saturation kept,
  luminance lowered) rather than desaturated: a sunset glow stays orange, a lamp stays warm.
* An HDR that adds nothing above the input's white (its brightest luminance is 1.0) and whose key is at
  least mid grey comes out equal to the input (``k = 1``, ``W = 1``: ``T`` is the identity): what a preview
  shows beyond the input is what the HDR holds.

Why extended Reinhard and not a filmic (ACES-like) curve: both were compared side by side on the real HDR
images of ``data/heldout256-val`` and on the CC0 Poly Haven panoramas of ``@pmndrs/assets``, each exposed as a
camera would and clipped to make its LDR. Both bring back what the clipped input lost (an orange dawn horizon
and sun glow where the input has a white disc, the blue of skylights, the structure inside softboxes and
lamps); the filmic curve adds its own S-curve, which crushed shadows by about 1 EV (night ground, sea) and
changed the look of images whose HDR adds nothing, so a reader could not tell the HDR from the curve.
Desaturating out-of-range colours towards white instead of scaling them turned the dawn glow pink-white.

**HDR** (:func:`pq_codes`, :func:`pq_png`): BT.2100 PQ in BT.2020 primaries through
:func:`sitm_trt.media.transfer.encode` (display light ``rgb * ref_white`` cd/m2, clipped per channel to
``[0, peak]``), full-range 16-bit code values ``round(E' * 65535)``, written as an RGB PNG with a ``cICP`` chunk
9/16/0/1 (BT.2020 primaries, PQ, RGB, full range: PNG Third Edition) and a ``cLLi`` chunk (MaxCLL / MaxFALL
of the pixels, in 0.0001 cd/m2) before the image data. Browsers and viewers that read ``cICP`` show it as HDR;
others show a dim, flat picture. The PNG is OpenCV's; the chunks are metadata added to it.

**AVIF and Ultra HDR** (:func:`hdr_avif`, :func:`ultrahdr_jpeg`): ``imagecodecs`` (``pip install
imagecodecs``, optional, imported on use) writes both from maintained libraries: AVIF through libavif (10-bit
4:4:4, CICP 9/16/9 full range, the same PQ code values) and Ultra HDR (an SDR JPEG plus an ISO 21496-1 /
Ultra HDR gain map) through libultrahdr, which takes linear RGB with 1.0 = 203 cd/m2 and makes its own SDR
base picture. Pillow 13 writes AVIF in 8 bits without CICP, and pillow-heif writes HEIC, not AVIF.

Every function works on row strips of about a million pixels, so a large image costs little more memory than
itself.
"""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from sitm_trt import files
from sitm_trt.media import io, transfer

__all__ = [
    "KEY",
    "REF_WHITE",
    "PEAK",
    "exposure",
    "tonemap",
    "pq_codes",
    "pq_png",
    "hdr_avif",
    "ultrahdr_jpeg",
    "HDR_PREVIEW_EXTENSIONS",
    "write_sdr_preview",
    "write_hdr_preview",
    "side_by_side",
    "write_side_by_side",
]

KEY = 0.18  # mid grey: where the log-average luminance goes
REF_WHITE = 203.0  # cd/m2 of linear 1.0 (ITU-R BT.2408), as sitm-trt video
PEAK = 1000.0  # cd/m2 where PQ previews clip, as sitm-trt video's default --peak-nits
HDR_PREVIEW_EXTENSIONS = (".png", ".avif", ".jpg")  # PQ PNG (cICP), PQ AVIF, Ultra HDR JPEG

_Y709 = np.array(transfer.LUMA["bt709"], np.float32)
_BLACK = 1e-4  # luminance floor of the log-average (about 1/3 of the darkest 8-bit sRGB step)
_STRIP = 1 << 20  # pixels per strip
_GAP = 8  # pixels between the two halves of a side-by-side picture


def _strips(height: int, width: int) -> Iterator[slice]:
    rows = max(1, _STRIP // max(1, width))
    for y in range(0, height, rows):
        yield slice(y, min(height, y + rows))


def _clean(x: np.ndarray, top: float) -> np.ndarray:
    """float32, NaN and negative -> 0, +Inf -> ``top`` (the image's largest finite value)."""
    x = np.nan_to_num(np.asarray(x, np.float32), nan=0.0, posinf=top, neginf=0.0)
    return np.maximum(x, 0.0)


def _finite_max(hdr: np.ndarray) -> float:
    top = 0.0
    for s in _strips(*hdr.shape[:2]):
        x = hdr[s]
        finite = x[np.isfinite(x)]
        if finite.size:
            top = max(top, float(finite.max()))
    return top


def _exposure(hdr: np.ndarray, top: float, key: float, max_boost: float) -> tuple[float, float]:
    n, log_sum, white = 0, 0.0, 0.0
    for s in _strips(*hdr.shape[:2]):
        lum = _clean(hdr[s], top) @ _Y709
        n += lum.size
        log_sum += float(np.log(np.maximum(lum, _BLACK), dtype=np.float64).sum())
        white = max(white, float(lum.max()))
    white = max(white, 1.0)
    avg = float(np.exp(log_sum / n))
    target = min(max(key, avg), max_boost * avg, 0.9)
    # T(k avg) = target with W = k white:  k avg (1 - target) = target - (avg / white)^2
    k = (target - (avg / white) ** 2) / (avg * (1.0 - target))
    return max(1.0, k), white


def exposure(hdr: np.ndarray, key: float = KEY, max_boost: float = 2.0) -> tuple[float, float]:
    """``(k, white)`` of :func:`tonemap` for ``hdr``: the exposure and the white point (luminance, before
    exposure). ``white`` is the brightest luminance, at least 1.0; ``k`` makes ``T(k * L_avg) = target`` with
    ``target = min(max(key, L_avg), max_boost * L_avg, 0.9)``, and is at least 1."""
    hdr = io.check_hdr_array(hdr)
    return _exposure(hdr, _finite_max(hdr), key, max_boost)


def tonemap(hdr: np.ndarray, key: float = KEY, max_boost: float = 2.0) -> np.ndarray:
    """Linear HDR ``(H, W, 3)`` (1.0 = SDR reference white) -> the SDR preview, sRGB-encoded ``uint8``.

    Extended Reinhard on luminance with the white point at the image's brightest luminance, after the
    exposure of :func:`exposure`; the colour ratios of each pixel are kept, and a colour that would leave
    [0, 1] is scaled down to fit. NaN and negative values count as 0, +Inf as the largest finite value; an
    all-black image stays black. See the module docstring for the choices."""
    hdr = io.check_hdr_array(hdr)
    top = _finite_max(hdr)
    k, white = _exposure(hdr, top, key, max_boost)
    wk = np.float32(k * white)
    out = np.empty(hdr.shape, np.uint8)
    for s in _strips(*hdr.shape[:2]):
        rgb = _clean(hdr[s], top)
        x = (rgb @ _Y709) * np.float32(k)
        gain = np.float32(k) * (1.0 + (x / wk) / wk) / (1.0 + x)  # T(x) / L
        rgb *= gain[..., None]
        rgb /= np.maximum(rgb.max(axis=-1, keepdims=True), 1.0)
        out[s] = np.rint(io.srgb_oetf(rgb) * 255.0).astype(np.uint8)
    return out


def pq_codes(hdr: np.ndarray, ref_white: float = REF_WHITE, peak: float = PEAK) -> np.ndarray:
    """Linear BT.709 ``(H, W, 3)`` (1.0 = ``ref_white`` cd/m2) -> BT.2100 PQ, BT.2020 primaries, full-range
    16-bit code values ``uint16 (H, W, 3)`` (light clipped per channel to ``[0, peak]`` cd/m2; NaN -> 0)."""
    hdr = io.check_hdr_array(hdr)
    out = np.empty(hdr.shape, np.uint16)
    for s in _strips(*hdr.shape[:2]):
        signal = transfer.encode(hdr[s], "pq", "bt2020", ref_white, peak)
        out[s] = transfer.quantize(signal, "full", 16)
    return out


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _light_levels(codes: np.ndarray) -> tuple[float, float]:
    """(MaxCLL, MaxFALL) in cd/m2 of PQ code values: the max and the mean over the pixels of max(R, G, B)."""
    top, total = 0.0, 0.0
    for s in _strips(*codes.shape[:2]):
        light = transfer.pq_eotf(codes[s].max(axis=-1) / 65535.0)
        top = max(top, float(light.max()))
        total += float(light.sum())
    return top, total / (codes.shape[0] * codes.shape[1])


def pq_png(codes: np.ndarray) -> bytes:
    """16-bit PQ code values ``(H, W, 3)`` (:func:`pq_codes`) -> the bytes of an RGB PNG tagged ``cICP``
    9/16/0/1 with ``cLLi`` (MaxCLL, MaxFALL of the pixels), both before the image data."""
    codes = np.asarray(codes)
    if codes.dtype != np.uint16 or codes.ndim != 3 or codes.shape[2] != 3 or codes.size == 0:
        raise ValueError(f"PQ code values must be a non-empty uint16 (H, W, 3) array, got {codes.dtype} {codes.shape}")
    ok, buf = io._cv2().imencode(".png", np.ascontiguousarray(codes[:, :, ::-1]))
    if not ok:  # pragma: no cover - OpenCV failure
        raise OSError("PNG encoding failed")
    png = buf.tobytes()
    ihdr_end = 8 + 8 + 13 + 4  # signature, IHDR (length, type, 13 bytes, CRC)
    if png[12:16] != b"IHDR":  # pragma: no cover - every PNG starts so
        raise OSError("the PNG encoder did not start with IHDR")
    max_cll, max_fall = _light_levels(codes)
    cicp = _chunk(b"cICP", bytes((9, 16, 0, 1)))  # BT.2020, SMPTE ST 2084, RGB (identity), full range
    clli = _chunk(b"cLLi", struct.pack(">II", round(max_cll * 10000), round(max_fall * 10000)))
    return png[:ihdr_end] + cicp + clli + png[ihdr_end:]


def _imagecodecs(what: str) -> Any:
    try:
        import imagecodecs
    except ImportError as err:
        raise ImportError(f"{what} previews need imagecodecs: pip install imagecodecs") from err
    return imagecodecs


def hdr_avif(codes: np.ndarray, quality: int = 90) -> bytes:
    """16-bit PQ code values (:func:`pq_codes`) -> AVIF bytes: 10-bit 4:4:4, CICP 9/16/9 (BT.2020, PQ,
    BT.2020 non-constant luminance), full range, libavif through ``imagecodecs``."""
    ic = _imagecodecs("AVIF")
    ten = ((np.asarray(codes, np.uint32) * 1023 + 32767) // 65535).astype(np.uint16)
    return bytes(ic.avif_encode(ten, quality, bitspersample=10, pixelformat="444", primaries=9, transfer=16,
                                matrix=9))


def ultrahdr_jpeg(hdr: np.ndarray, ref_white: float = REF_WHITE, quality: int = 95) -> bytes:
    """Linear BT.709 HDR (1.0 = ``ref_white`` cd/m2) -> Ultra HDR JPEG bytes (an SDR JPEG with a gain map and
    ISO 21496-1 metadata), libultrahdr through ``imagecodecs``; libultrahdr tone-maps the SDR base itself and
    takes linear 1.0 as 203 cd/m2, so the image is scaled by ``ref_white / 203``."""
    ic = _imagecodecs("Ultra HDR")
    hdr = io.check_hdr_array(hdr)
    top = _finite_max(hdr)
    rgba = np.ones(hdr.shape[:2] + (4,), np.float16)
    for s in _strips(*hdr.shape[:2]):
        rgba[s, :, :3] = np.minimum(_clean(hdr[s], top) * np.float32(ref_white / 203.0), 65504.0)
    return bytes(ic.ultrahdr_encode(rgba, quality, gamut=ic.ULTRAHDR.CG.BT_709, transfer=ic.ULTRAHDR.CT.LINEAR))


def write_sdr_preview(path: str | os.PathLike[str], hdr: np.ndarray, *, exclusive: bool = False) -> None:
    """Write :func:`tonemap` of ``hdr`` as an 8-bit sRGB PNG, atomically (``exclusive``: as
    :func:`sitm_trt.media.io.write_png`)."""
    io.write_png(path, tonemap(hdr), exclusive=exclusive)


def write_hdr_preview(path: str | os.PathLike[str], hdr: np.ndarray, *, ref_white: float = REF_WHITE,
                      peak: float = PEAK, exclusive: bool = False) -> None:
    """Write the HDR preview of ``hdr``, atomically, in the format of the extension: ``.png`` (16-bit PQ with
    ``cICP``, :func:`pq_png`), ``.avif`` (:func:`hdr_avif`) or ``.jpg`` (Ultra HDR, :func:`ultrahdr_jpeg`;
    ``peak`` does not apply)."""
    ext = Path(path).suffix.lower()
    if ext not in HDR_PREVIEW_EXTENSIONS:
        raise ValueError(f"{path}: HDR previews are {', '.join(HDR_PREVIEW_EXTENSIONS)} files, not {ext!r}")
    if ext == ".jpg":
        data = ultrahdr_jpeg(hdr, ref_white)
    else:
        codes = pq_codes(hdr, ref_white, peak)
        data = pq_png(codes) if ext == ".png" else hdr_avif(codes)
    files.atomic_write(path, data, exclusive=exclusive)


def side_by_side(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Two images of one height and dtype next to each other, 8 black pixels between them."""
    if left.shape[0] != right.shape[0] or left.dtype != right.dtype:
        raise ValueError(f"side_by_side needs one height and dtype, got {left.shape} {left.dtype} and "
                         f"{right.shape} {right.dtype}")
    gap = np.zeros((left.shape[0], _GAP, 3), left.dtype)
    return np.concatenate([left, gap, right], axis=1)


def write_side_by_side(path: str | os.PathLike[str], ldr: np.ndarray, hdr: np.ndarray, *, hdr_screen: bool = False,
                       ref_white: float = REF_WHITE, peak: float = PEAK, exclusive: bool = False) -> None:
    """Write ``input | preview`` as one PNG, atomically. ``ldr``: the sRGB input, ``uint8``/``uint16``
    ``(H, W, 3)``; ``hdr``: its HDR.

    SDR (default): the input in 8 bits next to :func:`tonemap` of the HDR. ``hdr_screen``: a 16-bit PQ PNG
    (:func:`pq_png`) with the input as an HDR screen shows SDR content (its sRGB decoded to linear, 1.0 =
    ``ref_white``, as BT.2408 places SDR white) next to the HDR: the two halves differ only where the HDR
    goes beyond the input."""
    ldr = np.asarray(ldr)
    if ldr.dtype not in (np.uint8, np.uint16) or ldr.shape != np.shape(hdr):
        raise ValueError(f"the input must be uint8/uint16 of the HDR's shape {np.shape(hdr)}, got "
                         f"{ldr.dtype} {ldr.shape}")
    if hdr_screen:
        data = pq_png(side_by_side(pq_codes(io.srgb_eotf(io.to_float(ldr)), ref_white, peak),
                                   pq_codes(hdr, ref_white, peak)))
        files.atomic_write(path, data, exclusive=exclusive)
        return
    left = ldr if ldr.dtype == np.uint8 else np.rint(ldr / 257.0).astype(np.uint8)
    io.write_png(path, side_by_side(left, tonemap(hdr)), exclusive=exclusive)
