"""Reading the input with PyAV (FFmpeg): opening and checking it (a video stream, a decoder, SDR), the first
frame's display rotation and interlacing, each decoded frame as RGB (uint8, or uint16 for deeper sources; YUV
converted with the frame's own matrix and range) with its time in seconds, and the frame count the progress
bar shows. :func:`read_frames` gives the frames exactly as :func:`~sitm_trt.media.video.convert` sees them.
"""

from __future__ import annotations

import fractions
import os
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from sitm_trt.media.video.options import VideoError, _av


def _peek(path: Path) -> tuple[int, bool]:
    """(display rotation in degrees counter-clockwise, interlaced?) from the first decodable video frame;
    (0, False) when none decodes (the conversion then reports the input)."""
    av = _av()
    try:
        with av.open(str(path)) as c:
            if not c.streams.video:
                return 0, False
            for frame in c.decode(video=0):
                return int(round(getattr(frame, "rotation", 0) or 0)) % 360, bool(frame.interlaced_frame)
    except (av.error.FFmpegError, OSError, UnicodeDecodeError, ValueError):
        pass
    return 0, False


def _open_input(path: str | os.PathLike) -> Any:
    av = _av()
    p = Path(path)
    if not p.exists():
        raise VideoError(f"{p}: no such file")
    try:
        container = av.open(str(p))
    except (av.error.FFmpegError, OSError, UnicodeDecodeError) as err:
        raise VideoError(f"{p}: cannot open as a video ({err})") from err
    if not container.streams.video:
        container.close()
        raise VideoError(f"{p}: has no video stream")
    stream = container.streams.video[0]
    if stream.codec_context is None:
        container.close()
        raise VideoError(f"{p}: no decoder for its video codec in this FFmpeg build")
    if not (stream.codec_context.width and stream.codec_context.height):  # e.g. a text file FFmpeg probed as JPEG
        container.close()
        raise VideoError(f"{p}: no decodable video (its video stream declares no frame size)")
    trc = int(stream.codec_context.color_trc or 2)
    if trc in (16, 18):  # SMPTE ST 2084, ARIB STD-B67
        container.close()
        raise VideoError(f"{p}: is already HDR ({'PQ' if trc == 16 else 'HLG'}); inverse tone mapping needs SDR input")
    stream.thread_type = "AUTO"
    return container


def _rgb(frame: Any) -> np.ndarray:
    """A decoded frame as RGB HWC: uint8 for 8-bit sources, uint16 for deeper ones. YUV is converted with the
    frame's matrix and range (untagged: BT.709 from 720 lines up, else BT.601; limited range unless yuvj),
    chroma interpolated to full resolution and rounded accurately (swscale's default path is ~2 levels dark)."""
    fmt = frame.format
    deep = any(c.bits > 8 for c in fmt.components)
    target = "rgb48le" if deep else "rgb24"
    if fmt.is_rgb:
        return frame.to_ndarray(format=target)
    cs = int(frame.colorspace or 2)
    if cs == 2:  # unspecified
        cs = 1 if frame.height >= 720 else 6
    rng = int(frame.color_range or 0)
    if rng == 0:
        rng = 2 if fmt.name.startswith("yuvj") else 1
    av = _av()
    interp = av.video.reformatter.Interpolation
    return frame.to_ndarray(format=target, src_colorspace=cs, dst_colorspace=cs, src_color_range=rng,
                            dst_color_range=2,
                            interpolation=interp.BILINEAR | interp.FULL_CHR_H_INT | interp.ACCURATE_RND)


_NOTIMESTAMPS = 0x80  # AVFMT_NOTIMESTAMPS: a raw elementary stream (.h264, .hevc, ...), whose frames carry no pts


def _nominal_rate(container: Any) -> fractions.Fraction | None:
    """The frame rate of the input's video stream: the container's average rate, except for a raw elementary
    stream, whose demuxer reports a default 25 fps and whose frames carry no timestamps: there the bitstream's own
    rate (the SPS/VUI timing) comes first."""
    s = container.streams.video[0]
    if int(getattr(container.format, "flags", 0) or 0) & _NOTIMESTAMPS:
        return s.codec_context.framerate or s.guessed_rate or s.average_rate
    return s.average_rate or s.guessed_rate


def _frame_time(frame: Any, index: int, rate: fractions.Fraction | None, last: float | None) -> float:
    if frame.pts is not None and frame.time_base is not None:
        return float(frame.pts * frame.time_base)
    step = float(1 / rate) if rate else 1 / 25
    return (last + step) if last is not None else index * step


def _timing(frame: Any, index: int, rate: fractions.Fraction | None, period: fractions.Fraction | int,
            time_base: fractions.Fraction | None, last: float | None) -> tuple[int | None, float]:
    """(pts, seconds) of decoded frame ``index``: its own, or for a frame without a pts (a raw stream) its place
    at the nominal ``rate`` (``period``: one frame in ``time_base``, 0 when unknown), in pts and in seconds."""
    if frame.pts is None and period and time_base:
        pts = int(round(index * period))
        return pts, float(pts * time_base)
    return frame.pts, _frame_time(frame, index, rate, last)


def read_frames(path: str | os.PathLike,
                max_frames: int | None = None) -> Iterator[tuple[np.ndarray, int | None, float]]:
    """(RGB HWC uint8/uint16, pts, seconds) of each video frame of ``path``, as :func:`convert` sees them."""
    container = _open_input(path)
    try:
        stream = container.streams.video[0]
        rate = _nominal_rate(container)
        period = 1 / (rate * stream.time_base) if rate and stream.time_base else 0
        last = None
        for i, frame in enumerate(container.decode(stream)):
            if max_frames is not None and i >= max_frames:
                break
            pts, last = _timing(frame, i, rate, period, stream.time_base, last)
            yield _rgb(frame), pts, last
    finally:
        container.close()


def _estimate_frames(container: Any) -> int | None:
    """The frame count of the input's video stream: as declared, else its duration times its rate; None when
    neither is known (the progress bar then has no total)."""
    s = container.streams.video[0]
    if s.frames:
        return int(s.frames)
    rate = _nominal_rate(container)
    if s.duration and s.time_base:
        dur = s.duration * s.time_base
    else:
        dur = container.duration / 1e6 if container.duration else None
    return int(round(float(dur * rate))) if dur and rate else None
