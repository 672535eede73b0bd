"""Soft over- and under-exposure masks of an LDR image (Sec. 3.6's ``M_exp``), values in [0, 1].

* over-exposure, as in HDRCNN (Eilertsen et al. 2017): ``max(0, max_c(I) - tau) / (1 - tau)``, ``tau = 0.95``
  (their released code: ``thr = 0.05``, ``alpha = clip((max_c(I) - 1 + thr) / thr, 0, 1)``);
* under-exposure, the mirror image on the darkest channel: ``max(0, tau_u - min_c(I)) / tau_u``, with
  ``tau_u = 0.12``: SingleHDR (Liu et al. 2020) defines only an over-exposure mask, of soft width 0.12
  (``thr = 0.12`` in their code); we use that width at the black end. A pixel is "under-exposed" with weight 1
  at 0 and weight 0 from 0.12 up (about 31/255).

ADEM recovers highlights, so its images are judged with the over-exposure mask; AUEM recovers shadows and
uses the under-exposure mask; :func:`exposure_mask` with ``kind="both"`` is their maximum. Masks are computed
on the input LDR ``I`` (the clipped/crushed regions are the input's), shape ``(N, 1, H, W)``.
"""

from __future__ import annotations

import torch

__all__ = ["OVER_TAU", "UNDER_TAU", "over_exposure_mask", "under_exposure_mask", "exposure_mask"]

OVER_TAU = 0.95
UNDER_TAU = 0.12


def _check(image: torch.Tensor) -> None:
    if image.dim() != 4 or image.shape[1] != 3:
        raise ValueError(f"exposure masks: image must be (N, 3, H, W), got {tuple(image.shape)}")


def over_exposure_mask(image: torch.Tensor, tau: float = OVER_TAU) -> torch.Tensor:
    """HDRCNN's soft highlight mask ``clip((max_c(I) - tau) / (1 - tau), 0, 1)``: ``(N, 1, H, W)``."""
    _check(image)
    if not 0.0 <= tau < 1.0:
        raise ValueError(f"over_exposure_mask: tau must be in [0, 1), got {tau}")
    return ((image.amax(dim=1, keepdim=True) - tau) / (1.0 - tau)).clamp(0.0, 1.0)


def under_exposure_mask(image: torch.Tensor, tau: float = UNDER_TAU) -> torch.Tensor:
    """Soft shadow mask ``clip((tau - min_c(I)) / tau, 0, 1)``: ``(N, 1, H, W)``."""
    _check(image)
    if not 0.0 < tau <= 1.0:
        raise ValueError(f"under_exposure_mask: tau must be in (0, 1], got {tau}")
    return ((tau - image.amin(dim=1, keepdim=True)) / tau).clamp(0.0, 1.0)


def exposure_mask(image: torch.Tensor, kind: str = "both") -> torch.Tensor:
    """``"over"`` (ADEM), ``"under"`` (AUEM) or ``"both"`` (their maximum)."""
    if kind == "over":
        return over_exposure_mask(image)
    if kind == "under":
        return under_exposure_mask(image)
    if kind == "both":
        return torch.maximum(over_exposure_mask(image), under_exposure_mask(image))
    raise ValueError(f"exposure_mask: kind must be 'over', 'under' or 'both', got {kind!r}")
