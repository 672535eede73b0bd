"""Temporal stability across frames: the network's global state is smoothed over time. Here that is the MEFM
curve coefficients (``coef``, Eq. 8), with an exponential moving average whose time constant is ``smoothing``
seconds (:class:`CoefSmoother`, on the device, with the extension's ``ema`` kernel), reset at scene cuts
(:class:`SceneCutDetector`, on the decoded frame). The EAB exposure features are not smoothed yet (they are
inside the network; see docs/video.md).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from sitm_trt import kernels
from sitm_trt.media import transfer as T


class SceneCutDetector:
    """Flags a frame whose content differs from the previous one: the mean absolute difference of a 16x16
    block-average luma thumbnail (values in [0, 1]) above ``threshold``. Block averages make sensor noise
    negligible (each averages many samples); a cut changes most blocks by a large amount."""

    def __init__(self, threshold: float = 0.1, grid: int = 16, samples: int = 4):
        self.threshold = float(threshold)
        self.grid, self.samples = grid, samples
        self._prev: np.ndarray | None = None
        self.last_score = 0.0

    def thumbnail(self, frame: np.ndarray) -> np.ndarray:
        """(grid, grid) block means of the luma of an (H, W, 3) uint8/uint16/float frame."""
        f = np.asarray(frame)
        h, w = f.shape[:2]
        n = self.grid * self.samples
        rows = (np.arange(n) * h // n).clip(0, h - 1)
        cols = (np.arange(n) * w // n).clip(0, w - 1)
        x = f[rows[:, None], cols[None, :]].astype(np.float32)
        if f.dtype == np.uint8:
            x /= 255.0
        elif f.dtype == np.uint16:
            x /= 65535.0
        luma = x @ np.array(T.LUMA["bt709"], np.float32)
        return luma.reshape(self.grid, self.samples, self.grid, self.samples).mean(axis=(1, 3))

    def __call__(self, frame: np.ndarray) -> bool:
        thumb = self.thumbnail(frame)
        prev, self._prev = self._prev, thumb
        if prev is None:
            self.last_score = 0.0
            return False
        self.last_score = float(np.abs(thumb - prev).mean())
        return self.last_score > self.threshold


class CoefSmoother:
    """Exponential moving average of the curve coefficients (N, 4) or (N, 3, 4) over time.

    ``state = a * state + (1 - a) * coef`` with ``a = exp(-dt / time_constant)`` for the time ``dt`` between
    frames (so the smoothing does not depend on the frame rate), reset to ``coef`` at a scene cut or when the
    shape or device changes. Runs where ``coef`` lives, with the extension's ``ema`` kernel on the given
    stream (no torch, no host synchronization); the state is a float32 buffer of its own, returned as the
    array type of ``coef`` (a view that the next call updates). ``time_constant=0`` passes ``coef`` through.
    """

    def __init__(self, time_constant: float):
        self.time_constant = float(time_constant)
        self._state = None
        self._key: tuple = ()
        self._t: float | None = None

    def reset(self) -> None:
        self._state, self._key, self._t = None, (), None

    def __call__(self, coef: Any, t: float, cut: bool = False, stream: Any = None) -> Any:
        if self.time_constant <= 0:
            return coef
        dev = kernels._device(coef, "smoothing", "coef")
        device = kernels._device_name(dev)
        handle = kernels._stream_handle(coef, dev, stream)
        key = (tuple(int(s) for s in coef.shape), device)
        if cut or self._state is None or key != self._key:
            if key != self._key:
                self._state = kernels.extension().empty(list(key[0]), "float32", device, handle)
                self._key = key
            a = 0.0  # a reset: the state becomes coef
        else:
            dt = min(max(t - self._t, 0.0), 10 * self.time_constant) if self._t is not None else 0.0
            a = math.exp(-dt / self.time_constant)
        kernels.ema(self._state, coef, a, stream=handle)
        self._t = t
        return kernels._wrap(self._state, coef)
