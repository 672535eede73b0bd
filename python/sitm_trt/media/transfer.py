"""HDR signal encoding: BT.709 -> BT.2020, SMPTE ST 2084 (PQ), ARIB STD-B67 / BT.2100 HLG, Y'CbCr, code values.

This is the float64 NumPy reference of the post kernel's output encoding (``sitm_trt.kernels.post(...,
transfer=, gamut=)``, per-pixel math in ``csrc/include/sitm/pixel_math.h``), and the place the kernel wrapper
takes its constants from (gamut matrices, luma coefficients, HLG system gamma). The tests compare the kernel
with these functions and these functions with ``colour-science``.

Scale (docs/video.md): the pipeline's linear output is relative, 1.0 = the input's clipping level = the SDR
reference white. Display light is ``rgb * ref_white`` cd/m2 (default 203, ITU-R BT.2408), clipped per
channel to ``[0, peak]``; PQ encodes ``light / 10000``; HLG applies the inverse OOTF of a display whose
nominal peak is ``peak`` (system gamma ``1.2 + 0.42 log10(peak / 1000)``, black level 0), then the OETF, so
203 cd/m2 on a 1000 cd/m2 display is HLG 0.75 as BT.2408 says.

Arrays are channels-last ``(..., 3)`` RGB unless a function says otherwise; everything is float64.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "PRIMARIES",
    "WHITE_D65",
    "LUMA",
    "TRANSFERS",
    "GAMUTS",
    "rgb_to_xyz_matrix",
    "gamut_matrix",
    "luma_coefficients",
    "pq_inverse_eotf",
    "pq_eotf",
    "hlg_oetf",
    "hlg_inverse_oetf",
    "hlg_system_gamma",
    "hlg_ootf",
    "hlg_inverse_ootf",
    "display_light",
    "encode",
    "decode",
    "rgb_to_ycbcr",
    "ycbcr_to_rgb",
    "quantize",
    "dequantize",
    "yuv420p",
    "split_yuv420p",
    "yuv420p_size",
    "light_stats",
]

# CIE 1931 xy of the R, G, B primaries (ITU-R BT.709-6 Table 1 item 1.2, BT.2020-2 Table 3 item 3.3) and D65.
PRIMARIES = {
    "bt709": ((0.640, 0.330), (0.300, 0.600), (0.150, 0.060)),
    "bt2020": ((0.708, 0.292), (0.170, 0.797), (0.131, 0.046)),
}
WHITE_D65 = (0.3127, 0.3290)
# Kr, Kg, Kb as the standards state them (BT.709-6 item 3.2; BT.2020-2 Table 4; BT.2100-2 Table 6): used for
# Y'CbCr and for HLG's OOTF luminance. They are the Y row of rgb_to_xyz_matrix, rounded to 4 digits.
LUMA = {"bt709": (0.2126, 0.7152, 0.0722), "bt2020": (0.2627, 0.6780, 0.0593)}
TRANSFERS = ("linear", "pq", "hlg")
GAMUTS = tuple(PRIMARIES)

# SMPTE ST 2084 constants
_M1, _M2 = 2610 / 16384, 2523 / 4096 * 128
_C1, _C2, _C3 = 3424 / 4096, 2413 / 4096 * 32, 2392 / 4096 * 32
# ARIB STD-B67 / BT.2100 HLG constants
_HLG_A = 0.17883277
_HLG_B = 1 - 4 * _HLG_A
_HLG_C = 0.5 - _HLG_A * np.log(4 * _HLG_A)


def _check_gamut(gamut: str) -> str:
    if gamut not in PRIMARIES:
        raise ValueError(f"gamut must be one of {GAMUTS}, got {gamut!r}")
    return gamut


def rgb_to_xyz_matrix(gamut: str) -> np.ndarray:
    """The 3x3 matrix from linear RGB of ``gamut`` (D65 white) to CIE XYZ (SMPTE RP 177)."""
    prim = np.array(PRIMARIES[_check_gamut(gamut)], np.float64)
    xyz = np.stack([prim[:, 0] / prim[:, 1], np.ones(3), (1 - prim[:, 0] - prim[:, 1]) / prim[:, 1]])  # columns
    wx, wy = WHITE_D65
    white = np.array([wx / wy, 1.0, (1 - wx - wy) / wy])
    return xyz * np.linalg.solve(xyz, white)[None, :]


def gamut_matrix(src: str, dst: str) -> np.ndarray:
    """Linear ``src`` RGB -> linear ``dst`` RGB (same D65 white, no adaptation); e.g. BT.709 -> BT.2020."""
    return np.linalg.solve(rgb_to_xyz_matrix(dst), rgb_to_xyz_matrix(src))


def luma_coefficients(gamut: str) -> tuple[float, float, float]:
    """(Kr, Kg, Kb) of ``gamut`` as its standard states them."""
    return LUMA[_check_gamut(gamut)]


# ------------------------------------------------------------------------------------------------- PQ


def pq_inverse_eotf(nits: np.ndarray) -> np.ndarray:
    """SMPTE ST 2084: luminance in cd/m2 (clipped to [0, 10000]) -> signal E' in [0, 1]."""
    y = np.clip(np.asarray(nits, np.float64) / 10000.0, 0.0, 1.0)
    p = y**_M1
    return ((_C1 + _C2 * p) / (1 + _C3 * p)) ** _M2


def pq_eotf(signal: np.ndarray) -> np.ndarray:
    """SMPTE ST 2084: signal E' in [0, 1] -> luminance in cd/m2."""
    e = np.clip(np.asarray(signal, np.float64), 0.0, 1.0) ** (1 / _M2)
    return 10000.0 * (np.maximum(e - _C1, 0.0) / (_C2 - _C3 * e)) ** (1 / _M1)


# ------------------------------------------------------------------------------------------------ HLG


def hlg_oetf(e: np.ndarray) -> np.ndarray:
    """BT.2100 HLG OETF: normalized scene light E in [0, 1] -> signal E' in [0, 1]."""
    e = np.clip(np.asarray(e, np.float64), 0.0, 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        log = _HLG_A * np.log(np.maximum(12 * e - _HLG_B, 1e-300)) + _HLG_C
    return np.where(e <= 1 / 12, np.sqrt(3 * e), log)


def hlg_inverse_oetf(signal: np.ndarray) -> np.ndarray:
    """BT.2100 HLG inverse OETF: signal E' in [0, 1] -> scene light E in [0, 1]."""
    s = np.clip(np.asarray(signal, np.float64), 0.0, 1.0)
    return np.where(s <= 0.5, s * s / 3, (np.exp((s - _HLG_C) / _HLG_A) + _HLG_B) / 12)


def hlg_system_gamma(peak: float) -> float:
    """BT.2100 Table 5 note: gamma = 1.2 + 0.42 log10(L_W / 1000) for a display of nominal peak L_W cd/m2."""
    return 1.2 + 0.42 * np.log10(peak / 1000.0)


def hlg_ootf(scene: np.ndarray, peak: float, gamut: str = "bt2020") -> np.ndarray:
    """BT.2100 HLG OOTF (black level 0): scene light E (..., 3) -> display light F_D in cd/m2."""
    e = np.asarray(scene, np.float64)
    gamma = hlg_system_gamma(peak)
    y = e @ np.array(luma_coefficients(gamut))
    return peak * (y ** (gamma - 1))[..., None] * e


def hlg_inverse_ootf(display: np.ndarray, peak: float, gamut: str = "bt2020") -> np.ndarray:
    """Inverse of :func:`hlg_ootf`: display light F_D in cd/m2 (..., 3) -> scene light E."""
    f = np.asarray(display, np.float64)
    gamma = hlg_system_gamma(peak)
    y = f @ np.array(luma_coefficients(gamut))
    with np.errstate(divide="ignore", invalid="ignore"):
        k = np.where(y > 0, (np.maximum(y, 1e-300) / peak) ** ((1 - gamma) / gamma) / peak, 0.0)
    return np.minimum(f * k[..., None], 1.0)


# ------------------------------------------------------------------------------------------ the whole


def _check(transfer: str, ref_white: float, peak: float) -> None:
    if transfer not in TRANSFERS:
        raise ValueError(f"transfer must be one of {TRANSFERS}, got {transfer!r}")
    if not (ref_white > 0 and np.isfinite(ref_white)):
        raise ValueError(f"ref_white must be a positive number of cd/m2, got {ref_white}")
    if not (0 < peak <= 10000):
        raise ValueError(f"peak must be in (0, 10000] cd/m2, got {peak}")


def display_light(rgb: np.ndarray, gamut: str = "bt2020", ref_white: float = 203.0,
                  peak: float = 1000.0) -> np.ndarray:
    """Linear BT.709 (1.0 = reference white) -> display light in cd/m2 of ``gamut``, clipped to [0, peak]."""
    x = np.nan_to_num(np.asarray(rgb, np.float64), nan=0.0)  # a NaN channel counts as 0, before the matrix
    if gamut != "bt709":
        x = x @ gamut_matrix("bt709", gamut).T
    return np.clip(x * ref_white, 0.0, peak)


def encode(rgb: np.ndarray, transfer: str = "pq", gamut: str = "bt2020", ref_white: float = 203.0,
           peak: float = 1000.0) -> np.ndarray:
    """Linear BT.709 RGB (..., 3), 1.0 = reference white -> the non-linear signal R'G'B' in [0, 1] of
    ``gamut`` (``transfer="linear"``: just the gamut conversion, unscaled and unclipped; NaN stays NaN).
    PQ/HLG: a NaN channel counts as 0."""
    _check(transfer, ref_white, peak)
    _check_gamut(gamut)
    if transfer == "linear":
        x = np.asarray(rgb, np.float64)
        return x @ gamut_matrix("bt709", gamut).T if gamut != "bt709" else x
    light = display_light(rgb, gamut, ref_white, peak)
    if transfer == "pq":
        return pq_inverse_eotf(light)
    return hlg_oetf(hlg_inverse_ootf(light, peak, gamut))


def decode(signal: np.ndarray, transfer: str = "pq", gamut: str = "bt2020", ref_white: float = 203.0,
           peak: float = 1000.0) -> np.ndarray:
    """Inverse of :func:`encode` (for light within [0, peak]): signal (..., 3) -> linear BT.709, 1.0 =
    reference white."""
    _check(transfer, ref_white, peak)
    _check_gamut(gamut)
    s = np.asarray(signal, np.float64)
    if transfer == "linear":
        lin = s
    elif transfer == "pq":
        lin = pq_eotf(s) / ref_white
    else:
        lin = hlg_ootf(hlg_inverse_oetf(s), peak, gamut) / ref_white
    return lin @ gamut_matrix(gamut, "bt709").T if gamut != "bt709" else lin


def light_stats(rgb: np.ndarray, transfer: str = "pq", gamut: str = "bt2020", ref_white: float = 203.0,
                peak: float = 1000.0) -> tuple[float, float]:
    """(max, mean) over the pixels of max(R, G, B) display light in cd/m2 of one image (..., 3): the
    per-frame terms of CTA-861.3 MaxCLL / MaxFALL (linear: scaled but not clipped, NaN channels skipped)."""
    if transfer == "linear":
        x = np.asarray(rgb, np.float64)
        x = x @ gamut_matrix("bt709", gamut).T if gamut != "bt709" else x
        with np.errstate(invalid="ignore"):
            m = np.maximum(np.nan_to_num(np.fmax.reduce(x, axis=-1) * ref_white, nan=0.0), 0.0)  # NaN skipped
    else:
        m = display_light(rgb, gamut, ref_white, peak).max(axis=-1)
    return (float(m.max()), float(m.mean())) if m.size else (0.0, 0.0)


# ------------------------------------------------------------------------------- Y'CbCr and code values


def rgb_to_ycbcr(rgb: np.ndarray, gamut: str = "bt2020") -> np.ndarray:
    """Non-linear R'G'B' (..., 3) -> Y'CbCr (..., 3) with Cb, Cr in [-0.5, 0.5] (non-constant luminance)."""
    kr, kg, kb = luma_coefficients(gamut)
    x = np.asarray(rgb, np.float64)
    y = kr * x[..., 0] + kg * x[..., 1] + kb * x[..., 2]
    return np.stack([y, (x[..., 2] - y) / (2 * (1 - kb)), (x[..., 0] - y) / (2 * (1 - kr))], axis=-1)


def ycbcr_to_rgb(ycc: np.ndarray, gamut: str = "bt2020") -> np.ndarray:
    """Inverse of :func:`rgb_to_ycbcr`."""
    kr, kg, kb = luma_coefficients(gamut)
    x = np.asarray(ycc, np.float64)
    y, cb, cr = x[..., 0], x[..., 1], x[..., 2]
    r = y + 2 * (1 - kr) * cr
    b = y + 2 * (1 - kb) * cb
    return np.stack([r, (y - kr * r - kb * b) / kg, b], axis=-1)


def _code_params(code_range: str, bits: int, chroma: bool) -> tuple[float, float]:
    unit = 2.0 ** (bits - 8)
    if code_range == "limited":  # BT.2100 Table 9, narrow range
        return (224 * unit, 128 * unit) if chroma else (219 * unit, 16 * unit)
    if code_range == "full":
        top = 2.0**bits - 1
        return (top, 2.0 ** (bits - 1)) if chroma else (top, 0.0)
    raise ValueError(f"code_range must be 'limited' or 'full', got {code_range!r}")


def quantize(v: np.ndarray, code_range: str = "limited", bits: int = 10, chroma: bool = False) -> np.ndarray:
    """Signal -> integer code values (uint16): ``round(v * mul + add)`` (half up), clipped to [0, 2^bits - 1]."""
    mul, add = _code_params(code_range, bits, chroma)
    x = np.nan_to_num(np.asarray(v, np.float64), nan=0.0)
    return np.clip(np.floor(x * mul + add + 0.5), 0, 2**bits - 1).astype(np.uint16)


def dequantize(codes: np.ndarray, code_range: str = "limited", bits: int = 10, chroma: bool = False) -> np.ndarray:
    """Inverse of :func:`quantize` (up to rounding)."""
    mul, add = _code_params(code_range, bits, chroma)
    return (np.asarray(codes, np.float64) - add) / mul


def yuv420p_size(height: int, width: int) -> int:
    """Code values per image in the planar 4:2:0 layout: Y (h, w), Cb and Cr ((h+1)//2, (w+1)//2)."""
    return height * width + 2 * ((height + 1) // 2) * ((width + 1) // 2)


def yuv420p(signal: np.ndarray, gamut: str = "bt2020", code_range: str = "limited", bits: int = 10) -> np.ndarray:
    """Non-linear R'G'B' (H, W, 3) -> planar 4:2:0 Y'CbCr code values, flat uint16, as the post kernel writes
    them (``layout="yuv420p"``): luma per pixel; chroma sited left (H.273 type 0), the R'G'B' of rows 2i and
    2i+1 filtered [1 2 1]/4 over columns 2j-1..2j+1 (clamped at the edges) and averaged, then converted."""
    s = np.asarray(signal, np.float64)
    h, w = s.shape[:2]
    ycc = rgb_to_ycbcr(s, gamut)
    luma = quantize(ycc[..., 0], code_range, bits)
    rows = s[np.minimum(np.arange(0, h + (h % 2), 2)[:, None] + np.arange(2)[None, :], h - 1)]  # (ch, 2, W, 3)
    j = np.arange((w + 1) // 2)
    cols = np.stack([np.maximum(2 * j - 1, 0), 2 * j, np.minimum(2 * j + 1, w - 1)])  # (3, cw)
    taps = rows[:, :, cols[0]] + 2 * rows[:, :, cols[1]] + rows[:, :, cols[2]]  # (ch, 2, cw, 3)
    avg = (taps[:, 0] + taps[:, 1]) / 8
    c = rgb_to_ycbcr(avg, gamut)
    cb = quantize(c[..., 1], code_range, bits, chroma=True)
    cr = quantize(c[..., 2], code_range, bits, chroma=True)
    return np.concatenate([luma.ravel(), cb.ravel(), cr.ravel()])


def split_yuv420p(flat: np.ndarray, height: int, width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Views of the Y, Cb, Cr planes of one flat 4:2:0 image (:func:`yuv420p`, the kernel's output)."""
    ch, cw = (height + 1) // 2, (width + 1) // 2
    flat = np.asarray(flat).reshape(-1)
    if flat.size != yuv420p_size(height, width):
        raise ValueError(f"a {height}x{width} 4:2:0 image has {yuv420p_size(height, width)} values, got {flat.size}")
    n = height * width
    return flat[:n].reshape(height, width), flat[n : n + ch * cw].reshape(ch, cw), flat[n + ch * cw :].reshape(ch, cw)
