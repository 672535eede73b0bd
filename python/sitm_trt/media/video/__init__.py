"""SDR video in, HDR video out: decode (PyAV/FFmpeg), the pipeline frame by frame, encode.

Outputs (``docs/video.md``):

* ``hdr10``: HEVC Main 10 (libx265), BT.2020 primaries, PQ (SMPTE ST 2084), narrow range, 4:2:0, with
  mastering-display and content-light-level (MaxCLL/MaxFALL, measured on the output) SEI messages;
* ``hlg``: the same with ARIB STD-B67 / BT.2100 HLG for a ``peak_nits`` display (no static metadata);
* ``exr``: an OpenEXR sequence (half float by default), linear BT.709, 1.0 = the SDR reference white.

The data flow of one video; :func:`convert` (:mod:`.conversion`) runs the three threads, and the module in
brackets does the work of each step::

    checks          input and output, before any work; claim the output's locked temporary [temporaries]
    decode thread   demux -> decode -> RGB uint8/uint16 [decode] -> queue(8); audio packets pass through
    calling thread  scene cut? [temporal] -> [H2D] -> pre -> network -> coef EMA [temporal]
                    -> post (PQ/HLG, BT.2020, 4:2:0, light level) -> [D2H] -> event [frames] -> queue
    encode thread   wait for the frame's event -> libx265 + mux, or EXR files [sinks]
    end             HDR10: remux with the MaxCLL/MaxFALL SEI [sinks, hevc_sei]; rename into the output

:mod:`.options` holds :class:`VideoOptions`, :class:`VideoResult` and :class:`VideoError`; :mod:`.measure`
measures flicker (``python -m sitm_trt.media.video flicker``). Importing this package loads neither PyAV nor
torch: PyAV is imported when a video is read or written, torch only by a backend that needs it.
"""

from __future__ import annotations

from sitm_trt.media.video.conversion import convert
from sitm_trt.media.video.decode import read_frames
from sitm_trt.media.video.frames import FrameProcessor
from sitm_trt.media.video.hevc_sei import content_light_level_sei, mastering_display_sei
from sitm_trt.media.video.measure import flicker, hdr_frames, mean_log_luminance, static_noisy_clip
from sitm_trt.media.video.options import FORMATS, VideoError, VideoOptions, VideoResult
from sitm_trt.media.video.temporal import CoefSmoother, SceneCutDetector

__all__ = [
    "FORMATS",
    "VideoError",
    "VideoOptions",
    "VideoResult",
    "SceneCutDetector",
    "CoefSmoother",
    "FrameProcessor",
    "convert",
    "read_frames",
    "hdr_frames",
    "flicker",
    "mean_log_luminance",
    "static_noisy_clip",
    "mastering_display_sei",
    "content_light_level_sei",
]
