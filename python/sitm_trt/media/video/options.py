"""What a video conversion takes and gives back: the output formats and containers, :class:`VideoOptions`
(checked before any work), :class:`VideoResult`, and :class:`VideoError`, the one exception for a video that
cannot be read or written. It also holds :func:`_av`, the lazy PyAV import that every module touching FFmpeg
goes through, so that importing :mod:`sitm_trt.media.video` never loads PyAV.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

from sitm_trt.media import transfer as T

FORMATS = ("hdr10", "hlg", "exr")
X265_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow",
                "placebo")
"""libx265's ``preset`` names (x265 --help)."""
CONTAINERS = (".mp4", ".mov", ".mkv")
# Mastering display primaries for the SEI (xy of R, G, B) and D65; the content itself is BT.709 gamut.
MASTERING_PRIMARIES = {
    "bt709": T.PRIMARIES["bt709"],
    "p3": ((0.680, 0.320), (0.265, 0.690), (0.150, 0.060)),
    "bt2020": T.PRIMARIES["bt2020"],
}


class VideoError(RuntimeError):
    """A video that cannot be read or written: unreadable input, missing encoder, bad output path, ..."""


def _av() -> Any:
    """PyAV, imported on first use (so the package imports without it), or an ImportError saying how to get it."""
    try:
        import av
    except ImportError as err:
        raise ImportError("sitm-trt video needs PyAV (FFmpeg): pip install av") from err
    return av


@dataclasses.dataclass
class VideoOptions:
    """What :func:`convert` writes. ``format`` None: ``exr`` for a directory or ``*.exr`` output, else hdr10."""

    format: str | None = None
    peak_nits: float = 1000.0  # display peak: PQ clips there; HLG's OOTF and the mastering display use it
    ref_white: float = 203.0  # cd/m2 of the SDR reference white (linear 1.0), ITU-R BT.2408
    crf: float = 18.0  # libx265 constant rate factor
    preset: str = "medium"  # libx265 preset
    lossless: bool = False  # libx265 lossless (tests, archival)
    x265_params: str = ""  # extra libx265 parameters, "key=value:key=value"
    mastering_primaries: str = "bt709"  # the SEI's mastering display: bt709 (the content gamut), p3 or bt2020
    smoothing: float = 0.25  # time constant in seconds of the coef moving average; 0 turns it off
    scene_cut: float = 0.1  # SceneCutDetector threshold (mean absolute luma change of a block thumbnail)
    audio: bool = True  # copy the audio streams (transcoded to AAC when the container cannot hold them)
    max_frames: int | None = None  # stop after this many frames
    exr_half: bool = True  # EXR sequence: half (True) or float32 (False)

    def check(self) -> None:
        if self.format not in (None, *FORMATS):
            raise ValueError(f"format must be one of {FORMATS}, got {self.format!r}")
        if not (0 < self.peak_nits <= 10000):
            raise ValueError(f"peak_nits must be in (0, 10000], got {self.peak_nits}")
        if not (0 < self.ref_white <= self.peak_nits):
            raise ValueError(f"ref_white must be in (0, peak_nits], got {self.ref_white}")
        if self.smoothing < 0 or not math.isfinite(self.smoothing):
            raise ValueError(f"smoothing must be >= 0 seconds, got {self.smoothing}")
        if self.mastering_primaries not in MASTERING_PRIMARIES:
            raise ValueError(f"mastering_primaries must be one of {tuple(MASTERING_PRIMARIES)}")
        if not (0 <= self.crf <= 51):  # libx265's range for 8 to 10-bit output
            raise ValueError(f"crf must be in [0, 51], got {self.crf}")
        if self.preset not in X265_PRESETS:
            raise ValueError(f"preset must be one of libx265's: {', '.join(X265_PRESETS)}; got {self.preset!r}")
        if not (0 < self.scene_cut <= 1) or not math.isfinite(self.scene_cut):  # a luma change in [0, 1]
            raise ValueError(f"scene_cut must be in (0, 1] (a mean luma change), got {self.scene_cut}")
        if self.max_frames is not None and self.max_frames < 1:
            raise ValueError(f"max_frames must be >= 1, got {self.max_frames}")


@dataclasses.dataclass
class VideoResult:
    output: Path
    format: str
    frames: int
    seconds: float  # wall time
    fps: float
    width: int
    height: int
    max_cll: int | None  # cd/m2 (hdr10, hlg)
    max_fall: int | None
    scene_cuts: list[int]  # indices of the frames where the smoothing was reset
