"""Baseline inverse tone mapping operators for the evaluation table (``docs/evaluation.md``).

Each takes an LDR image (``uint8``/``uint16`` ``(H, W, 3)``, or float in [0, 1]) and returns linear HDR
float32 ``(H, W, 3)`` with 1.0 = the input's clipping level (the project's convention); the evaluation aligns
every method's scale anyway.

* ``linear``: the input linearized with the inverse sRGB curve (IEC 61966-2-1), no expansion. Everything that
  is clipped in the input stays clipped: the floor an ITM method has to beat.
* ``banterle``: the global inverse of Reinhard et al.'s photographic operator, the expansion operator of
  Banterle, Ledda, Debattista and Chalmers, "Inverse Tone Mapping", GRAPHITE 2006 (without their
  expand-map step), on luminance with colour by ratio::

      L_w = 1/2 L_max L_white (L_d - 1 + sqrt((1 - L_d)^2 + 4 L_d / L_white^2))

  ``L_d`` = luminance of the linearized input, in [0, 1]; ``L_d = 1`` maps to ``L_max``. Defaults:
  ``L_max = L_white = 40`` (the evaluation display's 4000 cd/m^2 peak over its 100 cd/m^2 white). Then the
  curve is close to ``L_d / (1 - L_d)``, the inverse of Reinhard's ``L / (1 + L)``, up to the highlights: slope
  1 at black, ``L_d = 0.5`` -> 0.9988, ``0.9`` -> 8.5, ``1`` -> 40.
* ``rempel``: a simple expansion in the style of Rempel et al. 2007 (:func:`rempel`): the linearized input
  brightened by up to 4x in and around its clipped regions only.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from sitm_trt.media.io import srgb_eotf, to_float

__all__ = ["linearize", "banterle", "rempel", "BASELINES", "CITATIONS"]

_REC709 = np.array([0.212656, 0.715158, 0.072186])


def _ldr01(ldr: np.ndarray) -> np.ndarray:
    a = np.asarray(ldr)
    if a.ndim != 3 or a.shape[2] != 3:
        raise ValueError(f"LDR image must be (H, W, 3), got shape {a.shape}")
    if a.dtype in (np.uint8, np.uint16):
        return to_float(a)
    if not np.issubdtype(a.dtype, np.floating):
        raise ValueError(f"LDR image must be uint8, uint16 or float in [0, 1], got {a.dtype}")
    return np.clip(np.nan_to_num(a.astype(np.float32), nan=0.0), 0.0, 1.0)


def linearize(ldr: np.ndarray) -> np.ndarray:
    """Inverse sRGB of the input, no expansion: float32 ``(H, W, 3)``, 1.0 = clipped."""
    return srgb_eotf(_ldr01(ldr))


def banterle(ldr: np.ndarray, l_max: float = 40.0, l_white: float = 40.0) -> np.ndarray:
    """Banterle et al. (2006) inverse Reinhard expansion of the linearized input (module docstring)."""
    if not (l_max > 0 and l_white > 0):
        raise ValueError(f"banterle: l_max and l_white must be positive, got {l_max}, {l_white}")
    lin = linearize(ldr).astype(np.float64)
    ld = np.clip(lin @ _REC709, 0.0, 1.0)
    lw = 0.5 * l_max * l_white * (ld - 1.0 + np.sqrt((1.0 - ld) ** 2 + 4.0 * ld / (l_white * l_white)))
    ratio = np.divide(lw, ld, out=np.zeros_like(ld), where=ld > 0)
    return (lin * ratio[..., None]).astype(np.float32)


def rempel(ldr: np.ndarray, boost: float = 4.0, threshold: float = 0.92, sigma: float = 1 / 32) -> np.ndarray:
    """A simple expansion in the style of Rempel et al., "Ldr2Hdr", SIGGRAPH 2007: the linearized input times a
    smooth brightness enhancement function, ``lin * (1 + (boost - 1) * BEF)``; ``BEF`` is the mask of the
    nearly clipped pixels (max RGB ramping from ``threshold`` to 1 in the sRGB values) blurred by a Gaussian
    of ``sigma`` times the shorter side, divided by its maximum so a large clipped area gets the full boost.
    Rempel's edge-stopping step (the BEF does not cross strong edges) is left out."""
    import cv2

    if not (boost >= 1 and 0 < threshold < 1 and sigma > 0):
        raise ValueError(f"rempel: need boost >= 1, 0 < threshold < 1, sigma > 0, got {boost}, {threshold}, {sigma}")
    x = _ldr01(ldr)
    lin = srgb_eotf(x).astype(np.float64)
    mask = np.clip((x.max(axis=2).astype(np.float64) - threshold) / (1.0 - threshold), 0.0, 1.0)
    s = max(0.5, sigma * min(mask.shape))
    bef = cv2.GaussianBlur(mask, (0, 0), s, borderType=cv2.BORDER_REFLECT)
    peak = float(bef.max())
    bef = np.clip(bef / peak, 0.0, 1.0) if peak > 0 else bef
    return (lin * (1.0 + (boost - 1.0) * bef)[..., None]).astype(np.float32)


BASELINES: dict[str, Callable[[np.ndarray], np.ndarray]] = {"linear": linearize, "banterle": banterle,
                                                            "rempel": rempel}
CITATIONS = {
    "linear": "inverse sRGB (IEC 61966-2-1), no expansion",
    "banterle": "inverse Reinhard, Banterle et al., 'Inverse Tone Mapping', GRAPHITE 2006 (L_max = L_white = 40)",
    "rempel": "Rempel-style expansion, 'Ldr2Hdr', SIGGRAPH 2007: blurred clipped-pixel mask, boost 4, no edge stopping",
}
