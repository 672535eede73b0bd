"""Exposure stacks and the choice of the optimal exposure-up / exposure-down labels (the SICE-S idea).

The paper trains each exposure model against ONE label per input: the exposure of the stack that best
recovers what the input lost (Sec. 1, 4.1). SICE-S picked them by hand; here the choice is a fixed rule on
the stack's code values, so the same rule serves simulated stacks and real bracketed ones (SICE folders).

Criterion (all thresholds on the per-pixel maximum channel ``m`` of the code values in [0, 1]):

* an input pixel is *under-exposed* if ``m < under`` (default 0.1, code 25.5 of 255: deep shadows where
  noise and quantization dominate) and *over-exposed* if ``m > over`` (default 0.95, code 242: at or next
  to clipping). A pixel of a stack image is *well exposed* if ``well[0] <= m <= well[1]`` (default
  [0.2, 0.8]: mid-tones, clear of both ends);
* ``U`` = the input's under-exposed pixels. For each exposure-up step ``e > 0`` of the stack, the
  *coverage* ``r(e)`` is the fraction of ``U`` that is well exposed in the stack image at ``e``;
* the up label is the **smallest** ``e`` with ``r(e) >= coverage`` (default 0.5: most of the dark pixels
  recovered). Among the steps that recover enough, the smallest one clips the fewest of the other pixels,
  since clipping only grows with ``e``. If no step reaches ``coverage``, the step with the largest
  ``r(e)`` (the smallest one on ties). If ``U`` holds fewer than ``min_fraction`` of the pixels (nothing to
  recover), the smallest step;
* the down label is the same rule, mirrored: ``O`` = over-exposed input pixels, steps ``e < 0`` ordered by
  ``|e|``.

For simulated stacks the rule runs on noise-free renders (:func:`render_stack`), so the choice does not
depend on the noise draw; for real stacks it runs on the images themselves.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from .camera import Camera, render

__all__ = [
    "DEFAULT_EVS",
    "stack_evs",
    "LabelCriterion",
    "LabelChoice",
    "exposure_classes",
    "choose_labels",
    "render_stack",
]

DEFAULT_EVS: tuple[float, ...] = (-4.0, -3.0, -2.0, -1.0, 0.0, 1.0, 2.0, 3.0, 4.0)


def stack_evs(ev_max: float = 4.0, ev_step: float = 1.0) -> tuple[float, ...]:
    """The stack's EVs relative to the input: ``-ev_max, ..., 0, ..., +ev_max`` in steps of ``ev_step``."""
    if ev_step <= 0 or ev_max < ev_step:
        raise ValueError(f"need 0 < ev_step <= ev_max, got ev_step={ev_step}, ev_max={ev_max}")
    n = int(round(ev_max / ev_step))
    if abs(n * ev_step - ev_max) > 1e-9:
        raise ValueError(f"ev_max={ev_max} must be a multiple of ev_step={ev_step}")
    return tuple(float(k * ev_step) for k in range(-n, n + 1))


@dataclass(frozen=True)
class LabelCriterion:
    """Thresholds of the label rule (see the module docstring)."""

    under: float = 0.1
    over: float = 0.95
    well: tuple[float, float] = (0.2, 0.8)
    coverage: float = 0.5
    min_fraction: float = 0.005

    def __post_init__(self) -> None:
        if not 0.0 < self.under < self.over < 1.0 or not 0.0 <= self.well[0] < self.well[1] <= 1.0:
            raise ValueError(f"need 0 < under < over < 1 and a well-exposed band inside [0, 1], got {self}")
        if not 0.0 < self.coverage <= 1.0 or not 0.0 <= self.min_fraction < 1.0:
            raise ValueError(f"bad coverage/min_fraction: {self.coverage}, {self.min_fraction}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["well"] = list(self.well)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LabelCriterion:
        return cls(
            float(d["under"]),
            float(d["over"]),
            (float(d["well"][0]), float(d["well"][1])),
            float(d["coverage"]),
            float(d["min_fraction"]),
        )


@dataclass
class LabelChoice:
    """The chosen EVs and the numbers behind them (kept in the manifest for inspection)."""

    ev_up: float
    ev_down: float
    under_fraction: float  # |U| / N
    over_fraction: float  # |O| / N
    up_coverage: dict[float, float] = field(default_factory=dict)  # r(e) for each e > 0
    down_coverage: dict[float, float] = field(default_factory=dict)  # r(e) for each e < 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "ev_up": self.ev_up,
            "ev_down": self.ev_down,
            "under_fraction": round(self.under_fraction, 6),
            "over_fraction": round(self.over_fraction, 6),
            "up_coverage": {f"{k:g}": round(v, 6) for k, v in self.up_coverage.items()},
            "down_coverage": {f"{k:g}": round(v, 6) for k, v in self.down_coverage.items()},
        }


def _max_channel(code: np.ndarray) -> np.ndarray:
    code = np.asarray(code)
    if code.dtype == np.uint8:
        code = code.astype(np.float32) / 255.0
    elif code.dtype == np.uint16:
        code = code.astype(np.float32) / 65535.0
    return code.max(axis=-1) if code.ndim == 3 else code


def exposure_classes(code: np.ndarray, criterion: LabelCriterion = LabelCriterion()) -> tuple[np.ndarray, np.ndarray]:
    """Boolean ``(under, over)`` masks of an image (``uint8``/``uint16`` or float codes, (H, W, 3) or (H, W))."""
    m = _max_channel(code)
    return m < criterion.under, m > criterion.over


def _pick(
    steps: list[float], bad: np.ndarray, codes: Mapping[float, np.ndarray], criterion: LabelCriterion
) -> tuple[float, dict[float, float]]:
    n_bad = int(bad.sum())
    coverage: dict[float, float] = {}
    if n_bad == 0 or n_bad < criterion.min_fraction * bad.size:
        return steps[0], coverage
    for e in steps:
        m = _max_channel(codes[e])[bad]
        coverage[e] = float(np.count_nonzero((m >= criterion.well[0]) & (m <= criterion.well[1]))) / n_bad
    for e in steps:
        if coverage[e] >= criterion.coverage:
            return e, coverage
    best = max(coverage.values())
    return next(e for e in steps if coverage[e] == best), coverage


def choose_labels(codes: Mapping[float, np.ndarray], criterion: LabelCriterion = LabelCriterion()) -> LabelChoice:
    """Choose the up and down labels from a stack ``{ev relative to the input: image}``; ``codes[0]`` is the input.

    The stack needs at least one positive and one negative EV. Images may be ``uint8``/``uint16`` or float
    code values in [0, 1]; only their order along the EV axis matters, so real stacks with unknown EVs can
    pass ranks (-2, -1, 0, 1, ...) as keys.
    """
    if 0.0 not in codes:
        raise ValueError(f"the stack needs the input at EV 0, got EVs {sorted(codes)}")
    ups = sorted(e for e in codes if e > 0)
    downs = sorted((e for e in codes if e < 0), reverse=True)
    if not ups or not downs:
        raise ValueError(f"the stack needs EVs on both sides of 0, got {sorted(codes)}")
    under, over = exposure_classes(codes[0.0], criterion)
    ev_up, up_cov = _pick(ups, under, codes, criterion)
    ev_down, down_cov = _pick(downs, over, codes, criterion)
    return LabelChoice(float(ev_up), float(ev_down), float(under.mean()), float(over.mean()), up_cov, down_cov)


def render_stack(hdr: np.ndarray, camera: Camera, evs: tuple[float, ...] = DEFAULT_EVS) -> dict[float, np.ndarray]:
    """Noise-free code values of the stack ``{ev: f(clip(2**ev * hdr))}`` through ``camera``'s response."""
    return {float(e): render(hdr, camera, e) for e in evs}
