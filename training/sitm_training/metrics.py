"""HDR quality metrics for the evaluation (``docs/evaluation.md``): scale alignment, a display model, PU21,
PSNR/SSIM, mu-law, a fixed tone mapper, and ColorVideoVDP's JOD when ``cvvdp`` is installed.

Everything here is NumPy (float64 inside) and works without torch; only :class:`JOD` needs ``cvvdp`` (and so
torch + torchvision), imported when it is created.

Images are ``(H, W, 3)`` linear RGB arrays (Rec. 709 primaries, the project's convention); LDR inputs are
float in [0, 1] (``sitm_trt.media.io.to_float`` of the file's code values).

The protocol, per image and method (all defaults are the module constants below):

1. **Scale alignment** (:func:`align_scale`): ITM output is relative, so the prediction is multiplied by
   ``s = exp(median(log Y_gt - log Y_pred))`` over the pixels that are well exposed in the input
   (``0.1 <= max_c(ldr) <= 0.9``) and positive in both images (``Y`` = Rec. 709 luminance). With fewer than
   :data:`MIN_ALIGN_PIXELS` such pixels, every pixel positive in both is used; with none, ``s = 1``.
2. **Display model** (:class:`Display`): relative radiance -> absolute luminance for PU21 and JOD,
   ``L = 100 cd/m^2 * x`` (1.0, the input's clipping level, is SDR reference white) clipped to
   ``[0.005, 4000] cd/m^2`` (a 4000-nit HDR display; 0.005 is PU21's lower bound).
3. **Metrics**: PU21-PSNR (RGB, peak 256) and PU21-SSIM (luminance, dynamic range 256) as in Mantiuk and
   Azimi's ``pu21_metric``; JOD (ColorVideoVDP); mu-law PSNR (mu = 5000, NTIRE normalisation by the ground
   truth's 99th percentile and ``tanh``); TM-PSNR / TM-SSIM on the fixed tone mapper :class:`Tonemapper`;
   PU21-PSNR on the input's clipped pixels only (``max_c(ldr) > 0.95``).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "REC709",
    "PU21_BANDING_GLARE",
    "PU21_L_MIN",
    "PU21_L_MAX",
    "PU21_PEAK",
    "WELL_EXPOSED",
    "CLIP_THRESHOLD",
    "MIN_ALIGN_PIXELS",
    "MU",
    "luminance",
    "well_exposed_mask",
    "clipped_mask",
    "align_scale",
    "Display",
    "pu21_encode",
    "pu21_decode",
    "psnr",
    "ssim",
    "mu_tonemap",
    "mu_psnr",
    "Tonemapper",
    "ImageScores",
    "score_image",
    "JOD",
    "cvvdp_available",
]

REC709 = (0.212656, 0.715158, 0.072186)
"""Rec. 709 / sRGB luminance weights (the ones ``pu21_metric`` and ColorVideoVDP use)."""

PU21_BANDING_GLARE = (0.353487901, 0.3734658629, 8.277049286e-05, 0.9062562627, 0.09150303166, 0.9099517204,
                      596.3148142)
"""PU21 parameters p1..p7, the recommended ``banding_glare`` variant (Mantiuk & Azimi 2021, Table 1)."""
PU21_L_MIN = 0.005
PU21_L_MAX = 10000.0
PU21_PEAK = 256.0
"""PSNR peak and SSIM dynamic range on PU21 values: PU21 maps 100 cd/m^2 to about 256 (``pu21_metric``)."""

WELL_EXPOSED = (0.1, 0.9)
"""Input pixels used for scale alignment: ``low <= max_c(ldr) <= high``."""
CLIP_THRESHOLD = 0.95
"""Input pixels counted as clipped: ``max_c(ldr) > 0.95`` (code >= 243 of 255; the region where the
project's over-exposure mask is non-zero)."""
MIN_ALIGN_PIXELS = 64
MU = 5000.0


# ------------------------------------------------------------------------------------------ helpers


def _rgb(x: Any, name: str) -> np.ndarray:
    a = np.asarray(x)
    if a.ndim != 3 or a.shape[2] != 3:
        raise ValueError(f"{name} must be an (H, W, 3) array, got shape {a.shape}")
    return a.astype(np.float64, copy=False)


def luminance(rgb: Any) -> np.ndarray:
    """Rec. 709 luminance of linear RGB ``(..., 3)`` -> ``(...)``, float64."""
    a = np.asarray(rgb, np.float64)
    return a[..., 0] * REC709[0] + a[..., 1] * REC709[1] + a[..., 2] * REC709[2]


def well_exposed_mask(ldr: Any, low: float = WELL_EXPOSED[0], high: float = WELL_EXPOSED[1]) -> np.ndarray:
    """``(H, W)`` bool: input pixels whose largest channel lies in ``[low, high]`` (``ldr`` in [0, 1])."""
    m = _rgb(ldr, "ldr").max(axis=2)
    return (m >= low) & (m <= high)


def clipped_mask(ldr: Any, threshold: float = CLIP_THRESHOLD) -> np.ndarray:
    """``(H, W)`` bool: input pixels whose largest channel exceeds ``threshold`` (``ldr`` in [0, 1])."""
    return _rgb(ldr, "ldr").max(axis=2) > threshold


def align_scale(pred: Any, gt: Any, ldr: Any, low: float = WELL_EXPOSED[0], high: float = WELL_EXPOSED[1],
                min_pixels: int = MIN_ALIGN_PIXELS) -> float:
    """The factor ``s`` that puts ``pred`` on the scale of ``gt``: ``exp(median(log(Y_gt / Y_pred)))``.

    The median runs over the input's well-exposed pixels (:func:`well_exposed_mask`) where both luminances
    are positive and finite; with fewer than ``min_pixels`` of them, over every such pixel of the image;
    with none at all, ``s = 1``. A prediction that is ``gt / k`` on those pixels gets ``s = k``.
    """
    p, g = _rgb(pred, "pred"), _rgb(gt, "gt")
    if p.shape != g.shape:
        raise ValueError(f"align_scale: pred {p.shape} and gt {g.shape} differ in shape")
    yp, yg = luminance(p), luminance(g)
    usable = (yp > 0) & (yg > 0) & np.isfinite(yp) & np.isfinite(yg)
    sel = usable & well_exposed_mask(ldr, low, high)
    if np.count_nonzero(sel) < min_pixels:
        sel = usable
    if not np.any(sel):
        return 1.0
    return float(np.exp(np.median(np.log(yg[sel]) - np.log(yp[sel]))))


@dataclass(frozen=True)
class Display:
    """Relative linear radiance -> absolute luminance (cd/m^2) on an HDR display.

    ``L = clip(white * x, black, peak)``: ``x = 1`` (the input's clipping level after alignment) shows at
    ``white`` cd/m^2; the display cannot go below ``black`` or above ``peak``.
    """

    white: float = 100.0
    peak: float = 4000.0
    black: float = PU21_L_MIN

    def __post_init__(self) -> None:
        if not (0 < self.black < self.white <= self.peak and math.isfinite(self.peak)):
            raise ValueError(f"Display needs 0 < black < white <= peak (finite), got {self}")

    def __call__(self, x: Any) -> np.ndarray:
        a = np.nan_to_num(np.asarray(x, np.float64), nan=0.0, posinf=np.inf, neginf=0.0)
        return np.clip(a * self.white, self.black, self.peak)

    def describe(self) -> str:
        return f"1.0 -> {self.white:g} cd/m^2, clipped to [{self.black:g}, {self.peak:g}] cd/m^2"


# ----------------------------------------------------------------------------------------------- PU21


def pu21_encode(luminance_cd_m2: Any, params: tuple[float, ...] = PU21_BANDING_GLARE) -> np.ndarray:
    """PU21 (Mantiuk & Azimi 2021): absolute luminance in cd/m^2 -> perceptually uniform values.

    ``V = p7 * (((p1 + p2 Y^p4) / (1 + p3 Y^p4))^p5 - p6)`` with ``Y`` clamped to [0.005, 10000] and ``V``
    to >= 0; 100 cd/m^2 maps to about 256 (so SDR metrics' ranges apply).
    """
    p1, p2, p3, p4, p5, p6, p7 = params
    y = np.clip(np.asarray(luminance_cd_m2, np.float64), PU21_L_MIN, PU21_L_MAX)
    yp = y**p4
    return np.maximum(p7 * (((p1 + p2 * yp) / (1.0 + p3 * yp)) ** p5 - p6), 0.0)


def pu21_decode(v: Any, params: tuple[float, ...] = PU21_BANDING_GLARE) -> np.ndarray:
    """Inverse of :func:`pu21_encode` (on its range)."""
    p1, p2, p3, p4, p5, p6, p7 = params
    vp = np.maximum(np.asarray(v, np.float64) / p7 + p6, 0.0) ** (1.0 / p5)
    return (np.maximum(vp - p1, 0.0) / (p2 - p3 * vp)) ** (1.0 / p4)


# ----------------------------------------------------------------------------------------- PSNR, SSIM


def psnr(a: Any, b: Any, peak: float, mask: Any = None) -> float:
    """``10 log10(peak^2 / MSE)`` over all values (all channels), or over the pixels where ``mask`` is true.

    Identical inputs give ``inf``; an empty mask gives ``nan``.
    """
    x, y = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if x.shape != y.shape:
        raise ValueError(f"psnr: shapes differ: {x.shape} vs {y.shape}")
    if mask is not None:
        m = np.asarray(mask, bool)
        if m.shape != x.shape[: m.ndim]:
            raise ValueError(f"psnr: mask {m.shape} does not match images {x.shape}")
        x, y = x[m], y[m]
    if x.size == 0:
        return float("nan")
    mse = float(np.mean((x - y) ** 2))
    if mse == 0.0:
        return float("inf")
    return 10.0 * math.log10(peak * peak / mse)


def _gaussian_kernel(sigma: float) -> np.ndarray:
    radius = int(math.ceil(3.0 * sigma))
    t = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-(t * t) / (2.0 * sigma * sigma))
    return k / k.sum()


def _blur(img: np.ndarray, k: np.ndarray) -> np.ndarray:
    """Separable filter with replicated borders, output the size of the input (MATLAB ``imgaussfilt``)."""
    r = len(k) // 2
    p = np.pad(img, r, mode="edge")
    h, w = img.shape
    rows = sum(k[i] * p[i : i + h, :] for i in range(len(k)))
    return sum(k[i] * rows[:, i : i + w] for i in range(len(k)))


def ssim(a: Any, b: Any, data_range: float, sigma: float = 1.5) -> float:
    """Mean SSIM (Wang et al. 2004) of two 2-D images, as MATLAB's ``ssim``.

    Gaussian window ``sigma`` (size ``2 ceil(3 sigma) + 1``, 11 for 1.5), replicated borders, the map kept at
    full size, ``C1 = (0.01 R)^2``, ``C2 = (0.03 R)^2`` with ``R = data_range``. A 3-D ``(H, W, C)`` input
    gives the mean over channels.
    """
    x, y = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if x.shape != y.shape:
        raise ValueError(f"ssim: shapes differ: {x.shape} vs {y.shape}")
    if x.ndim == 3:
        return float(np.mean([ssim(x[..., c], y[..., c], data_range, sigma) for c in range(x.shape[2])]))
    if x.ndim != 2 or x.size == 0:
        raise ValueError(f"ssim: expected a non-empty (H, W) or (H, W, C) image, got {x.shape}")
    k = _gaussian_kernel(sigma)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mx, my = _blur(x, k), _blur(y, k)
    sxx = _blur(x * x, k) - mx * mx
    syy = _blur(y * y, k) - my * my
    sxy = _blur(x * y, k) - mx * my
    num = (2 * mx * my + c1) * (2 * sxy + c2)
    den = (mx * mx + my * my + c1) * (sxx + syy + c2)
    return float(np.mean(num / den))


# ------------------------------------------------------------------------------------------------ mu-law


def mu_tonemap(x: Any, norm: float, mu: float = MU) -> np.ndarray:
    """``log(1 + mu tanh(x / norm)) / log(1 + mu)`` (negative values clamped to 0): in [0, 1)."""
    t = np.tanh(np.maximum(np.asarray(x, np.float64), 0.0) / norm)
    return np.log1p(mu * t) / math.log1p(mu)


def mu_psnr(pred: Any, gt: Any, mu: float = MU) -> float:
    """mu-law PSNR (peak 1) with the NTIRE HDR challenge's normalisation: ``norm`` = the ground truth's 99th
    percentile (all channels; its maximum if that is 0), the same for both images."""
    g = np.asarray(gt, np.float64)
    norm = float(np.percentile(g, 99.0))
    if not norm > 0.0:
        norm = float(g.max())
    if not norm > 0.0:
        norm = 1.0
    return psnr(mu_tonemap(pred, norm, mu), mu_tonemap(g, norm, mu), 1.0)


# ------------------------------------------------------------------------------------------- tone mapper


@dataclass(frozen=True)
class Tonemapper:
    """Reinhard et al. (2002) global photographic operator with its white point, on luminance, then sRGB.

    ``L_m = key / L_avg * Y``, ``L_d = L_m (1 + L_m / L_white^2) / (1 + L_m)``, colour by ratio
    ``C_d = C * L_d / Y``, clipped to [0, 1] and sRGB-encoded. ``L_avg`` (log-average luminance, with a floor
    of 1e-6 times the maximum so black pixels count but cannot dominate) and ``L_white`` (the largest scaled
    luminance) are fitted once on the ground truth (:meth:`fit`) and then applied unchanged to every image
    of that scene, so the input, each result and the ground truth are tone mapped the same way. Black and
    non-finite pixels map to 0 (OpenCV's Reinhard/Drago/Mantiuk give NaN there).
    """

    scale: float = 1.0
    white: float = 1.0
    key: float = 0.18

    @classmethod
    def fit(cls, gt: Any, key: float = 0.18) -> Tonemapper:
        y = luminance(np.nan_to_num(np.maximum(_rgb(gt, "gt"), 0.0), nan=0.0, posinf=0.0))
        top = float(y.max())
        if not top > 0.0:
            return cls(1.0, 1.0, key)
        avg = float(np.exp(np.mean(np.log(y + 1e-6 * top))))
        scale = key / avg
        return cls(scale, max(top * scale, 1e-6), key)

    def linear(self, x: Any) -> np.ndarray:
        """Tone mapped, linear display values in [0, 1] (before the sRGB encoding)."""
        a = np.nan_to_num(np.maximum(_rgb(x, "image"), 0.0), nan=0.0, posinf=0.0)
        y = luminance(a)
        lm = y * self.scale
        ld = lm * (1.0 + lm / (self.white * self.white)) / (1.0 + lm)
        ratio = np.divide(ld, y, out=np.zeros_like(y), where=y > 0)
        return np.clip(a * ratio[..., None], 0.0, 1.0)

    def __call__(self, x: Any) -> np.ndarray:
        """Tone mapped, sRGB-encoded float64 in [0, 1]."""
        lin = self.linear(x)
        return np.where(lin <= 0.0031308, 12.92 * lin, 1.055 * np.power(lin, 1.0 / 2.4) - 0.055)

    def to_uint8(self, x: Any) -> np.ndarray:
        return np.rint(self(x) * 255.0).astype(np.uint8)


# ------------------------------------------------------------------------------------------ one image


@dataclass
class ImageScores:
    pu21_psnr: float
    pu21_ssim: float
    mu_psnr: float
    tm_psnr: float
    tm_ssim: float
    clip_pu21_psnr: float
    jod: float = float("nan")


def score_image(pred: Any, gt: Any, ldr: Any, display: Display = Display(), tonemapper: Tonemapper | None = None,
                jod: JOD | None = None, mu: float = MU, clip_threshold: float = CLIP_THRESHOLD) -> ImageScores:
    """All metrics of one aligned prediction against its ground truth (``ldr`` in [0, 1] gives the clipped
    pixels; ``tonemapper`` defaults to ``Tonemapper.fit(gt)``)."""
    p, g = _rgb(pred, "pred"), _rgb(gt, "gt")
    if p.shape != g.shape:
        raise ValueError(f"score_image: pred {p.shape} and gt {g.shape} differ in shape")
    tm = tonemapper or Tonemapper.fit(g)
    lp, lg = display(p), display(g)
    vp, vg = pu21_encode(lp), pu21_encode(lg)
    tp, tg = tm(p), tm(g)
    return ImageScores(
        pu21_psnr=psnr(vp, vg, PU21_PEAK),
        pu21_ssim=ssim(pu21_encode(luminance(lp)), pu21_encode(luminance(lg)), PU21_PEAK),
        mu_psnr=mu_psnr(p, g, mu),
        tm_psnr=psnr(tp, tg, 1.0),
        tm_ssim=ssim(tp, tg, 1.0),
        clip_pu21_psnr=psnr(vp, vg, PU21_PEAK, mask=clipped_mask(ldr, clip_threshold)),
        jod=jod(lp, lg) if jod is not None else float("nan"),
    )


# ----------------------------------------------------------------------------------------------- JOD


def cvvdp_available() -> tuple[bool, str]:
    """(True, version) when ``pycvvdp`` imports, else (False, the reason)."""
    try:
        import pycvvdp  # noqa: F401
    except Exception as err:  # ImportError, or torchvision failing to load its operators
        return False, f"{type(err).__name__}: {err}"
    from importlib.metadata import PackageNotFoundError, version

    try:
        return True, version("cvvdp")
    except PackageNotFoundError:  # pragma: no cover - a source checkout of cvvdp
        return True, "unknown"


class _CvvdpScaleFilter(logging.Filter):
    """Drops cvvdp's "mean color value is less than 1" warning: dim scenes (night, under-exposed inputs)
    are meant to be dim under our display model, and the warning would repeat for every such image."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "may not be scaled in absolute photometric units" not in record.getMessage()


def _quiet_cvvdp_scale_warning() -> None:
    root = logging.getLogger()  # cvvdp logs through the root logger (logging.warning)
    if not any(isinstance(f, _CvvdpScaleFilter) for f in root.filters):
        root.addFilter(_CvvdpScaleFilter())


class JOD:
    """ColorVideoVDP (Mantiuk et al. 2024, ``pip install cvvdp``) quality in JOD (10 = no visible difference).

    Images are passed as absolute linear BT.709 luminance (cd/m^2, the :class:`Display` output); the display
    is cvvdp's ``standard_hdr_linear`` geometry (30-inch 4K at 0.75 m) with a linear EOTF, the same peak as
    the :class:`Display`, contrast 1e6:1 and 10 lux ambient light. Runs on the CPU unless ``device`` says
    otherwise; needs no network.
    """

    def __init__(self, display: Display = Display(), device: str = "cpu") -> None:
        ok, why = cvvdp_available()
        if not ok:
            raise ImportError(
                "JOD needs ColorVideoVDP (package cvvdp, which imports torch and torchvision): "
                f"pip install cvvdp ({why})"
            )
        import pycvvdp
        import torch
        from pycvvdp.display_model import vvdp_display_photo_eotf

        self._torch = torch
        _quiet_cvvdp_scale_warning()
        photometry = vvdp_display_photo_eotf(Y_peak=display.peak, contrast=1e6, source_colorspace="BT.709-linear",
                                             EOTF="linear", E_ambient=10)
        self.metric = pycvvdp.cvvdp(display_name="standard_hdr_linear", display_photometry=photometry,
                                    device=torch.device(device), quiet=True)
        self.version = why

    def __call__(self, test_cd_m2: np.ndarray, ref_cd_m2: np.ndarray) -> float:
        t = self._torch.from_numpy(np.ascontiguousarray(test_cd_m2, np.float32))
        r = self._torch.from_numpy(np.ascontiguousarray(ref_cd_m2, np.float32))
        with self._torch.no_grad():
            q, _ = self.metric.predict(t, r, dim_order="HWC")
        return float(q)
