"""Flicker measurement (docs/video.md, "Temporal stability"): the linear HDR frames of a clip with or without
the temporal smoothing (:func:`hdr_frames`), the flicker of a clip, the RMS over frames of the frame-to-frame
change of its mean log2 luminance in stops (:func:`flicker`), and the static noisy synthetic clip it is
measured on (:func:`static_noisy_clip`). ``python -m sitm_trt.media.video flicker`` prints the numbers.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from sitm_trt.media import transfer as T
from sitm_trt.media.video.frames import FrameProcessor


def hdr_frames(pipeline: Any, frames: Sequence[np.ndarray], fps: float = 24.0, *, smoothing: float = 0.0,
               scene_cut: float = 0.1, device: str = "cpu") -> list[np.ndarray]:
    """Linear HDR (h, w, 3) float32 of each frame, with the temporal smoothing of :func:`convert`."""
    proc = FrameProcessor(pipeline, device, encoding="linear", smoothing=smoothing, scene_cut=scene_cut, slots=1)
    out = []
    for i, f in enumerate(frames):
        done = proc(f, i / fps)
        done.wait()
        out.append(np.array(done.out))
        proc.release(done)
    return out


def mean_log_luminance(frame: np.ndarray) -> float:
    """Mean log2 relative luminance of a frame: linear HDR float (H, W, 3), or uint8/uint16 sRGB-encoded."""
    arr = np.asarray(frame)
    if arr.dtype in (np.uint8, np.uint16):
        from sitm_trt.media.io import srgb_eotf, to_float

        x = srgb_eotf(to_float(arr)).astype(np.float64)
    else:
        x = np.nan_to_num(arr.astype(np.float64), nan=0.0)
    y = x @ np.array(T.LUMA["bt709"])
    return float(np.mean(np.log2(np.maximum(y, 0.0) + 1e-4)))


def flicker(frames: Sequence[np.ndarray]) -> float:
    """Flicker of a clip: the RMS over frames of the frame-to-frame change of :func:`mean_log_luminance`
    (in stops). A static scene should have none; sensor noise and a jittery global state give some."""
    d = np.diff(np.array([mean_log_luminance(f) for f in frames]))
    return float(np.sqrt(np.mean(d * d))) if d.size else 0.0


def static_noisy_clip(frames: int = 48, height: int = 64, width: int = 96, noise: float = 3.0,
                      seed: int = 0) -> np.ndarray:
    """A static synthetic scene (gradient sky, a bright sun, dark objects) plus fresh Gaussian noise of
    ``noise`` 8-bit levels per frame: uint8 (frames, H, W, 3). What flicker is measured on."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / np.array([height, width])[:, None, None]
    sky = np.stack([0.35 + 0.4 * (1 - y), 0.5 + 0.35 * (1 - y), 0.85 - 0.1 * y], -1)
    img = sky * (0.6 + 0.4 * x[..., None])
    sun = ((x - 0.75) ** 2 * 4 + (y - 0.25) ** 2) < 0.01
    img[sun] = 1.0
    img[(y > 0.6) & (x > 0.1) & (x < 0.45)] = (0.12, 0.1, 0.08)
    base = img * 255
    clip = base[None] + rng.normal(0, noise, (frames, height, width, 3))
    return np.clip(np.rint(clip), 0, 255).astype(np.uint8)
