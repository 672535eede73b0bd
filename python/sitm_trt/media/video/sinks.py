"""Where the processed frames go. :class:`_VideoSink` encodes HEVC Main 10 with libx265 (BT.2020, PQ or HLG,
narrow range), copies the audio (or transcodes it to AAC) and writes the exclusively created temporary through
its file object; :func:`_finalize_hdr10` remuxes that file (a packet copy) with the HDR10 SEI before the
slices of every keyframe, atomically into the output; :class:`_ExrSink` writes an OpenEXR sequence, each
frame atomically, and ``sequence.json``. :func:`_check_encoder` refuses an FFmpeg build without a 10-bit HEVC
encoder before any work.
"""

from __future__ import annotations

import contextlib
import fractions
import json
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from sitm_trt.files import atomic_write
from sitm_trt.media.video.decode import _nominal_rate
from sitm_trt.media.video.hevc_sei import _insert_before_vcl
from sitm_trt.media.video.options import VideoError, VideoOptions, _av
from sitm_trt.media.video.temporaries import _claim_temp

_MUXERS = {".mp4": "mp4", ".mov": "mov", ".mkv": "matroska"}


def _check_encoder(name: str = "libx265") -> None:
    av = _av()
    if name not in av.codecs_available:
        raise VideoError(f"the HEVC encoder {name} is not in this FFmpeg build (PyAV {av.__version__}); the PyPI "
                         "wheels of PyAV include it: pip install --force-reinstall av")
    formats = [f.name for f in (av.codec.Codec(name, "w").video_formats or [])]
    if "yuv420p10le" not in formats:
        raise VideoError(f"the encoder {name} of this FFmpeg build cannot encode 10-bit 4:2:0 (yuv420p10le)")


class _VideoSink:
    """libx265 HEVC Main 10 + copied audio into a temporary file beside the output."""

    # audio codecs each muxer takes as they are; the rest is transcoded to AAC (MKV takes them all)
    _COPY_AUDIO = {".mp4": {"aac", "mp3", "ac3", "eac3", "alac", "opus", "flac"},
                   ".mov": {"aac", "mp3", "ac3", "eac3", "alac", "pcm_s16le", "pcm_s16be", "pcm_s24le", "pcm_s24be",
                            "pcm_s32le", "pcm_s32be", "pcm_f32le", "pcm_f32be", "pcm_u8"}}

    def __init__(self, tmp: Path, source: Any, opts: VideoOptions, fmt: str, width: int, height: int,
                 file: Any = None, rotation: int = 0):
        av = _av()
        self.av, self.path, self.opts, self.fmt = av, tmp, opts, fmt
        ext = tmp.suffix.lower()
        # Through the file object of the exclusively created temporary (_claim_temp): FFmpeg never opens a path.
        self.file = file
        self.container = av.open(file if file is not None else str(tmp), "w", format=_MUXERS[ext])
        vin = source.streams.video[0]
        rate = _nominal_rate(source) or fractions.Fraction(25)
        s = self.container.add_stream("libx265", rate=rate)
        s.width, s.height, s.pix_fmt = width, height, "yuv420p10le"
        s.time_base = vin.time_base or fractions.Fraction(1, 1000)
        s.codec_context.time_base = s.time_base
        if vin.sample_aspect_ratio:
            s.codec_context.sample_aspect_ratio = vin.sample_aspect_ratio
        cc = s.codec_context
        cc.color_primaries = 9  # BT.2020
        cc.color_trc = 16 if fmt == "hdr10" else 18  # SMPTE ST 2084 / ARIB STD-B67
        cc.colorspace = 9  # BT.2020 non-constant luminance
        cc.color_range = 1  # narrow ("MPEG")
        if ext in (".mp4", ".mov"):
            s.codec_tag = "hvc1"  # parameter sets out of band; what Apple players need
        params = ["log-level=error", "info=0", "repeat-headers=0"]
        if fmt == "hdr10":
            params.append("hdr10-opt=1")
        if opts.lossless:
            params.append("lossless=1")
        if opts.x265_params:
            params.append(opts.x265_params)
        s.options = {"crf": f"{opts.crf:g}", "preset": opts.preset, "profile": "main10",
                     "x265-params": ":".join(params)}
        if rotation:  # the input's display matrix, carried over (the pixels stay as coded)
            s.set_display_rotation(rotation)
        self.stream = s
        self.time_base = s.time_base
        self.audio: dict[int, Any] = {}
        self.transcode: dict[int, tuple[Any, Any]] = {}
        self.transcoded: list[str] = []  # "pcm_s16le (5.1)" per stream transcoded to AAC, for the caller's notice
        self._timed: set[int] = set()  # transcoded streams whose first frame has set their start time
        if opts.audio:
            for a in source.streams.audio:
                cc = a.codec_context
                name = cc.name if cc is not None else ""
                if ext == ".mkv" or name in self._COPY_AUDIO[ext]:
                    self.audio[a.index] = self.container.add_stream_from_template(a)
                elif cc is not None:  # e.g. PCM in MP4, Opus in MOV: transcode to AAC, same rate and channels
                    layout = cc.layout.name if cc.layout is not None and cc.channels else "stereo"
                    out = self.container.add_stream("aac", rate=cc.sample_rate or 48000, layout=layout)
                    self.transcode[a.index] = (a, out)
                    self.transcoded.append(f"{name} ({layout})")
        self.frames = 0

    def write_video(self, codes: np.ndarray, pts: int | None, index: int) -> None:
        h, w = self.stream.height, self.stream.width
        frame = self.av.VideoFrame.from_ndarray(codes.reshape(h * 3 // 2, w), format="yuv420p10le")
        frame.pts = pts if pts is not None else index  # (the decoder gives every frame a pts, made up if need be)
        frame.time_base = self.time_base
        frame.color_primaries, frame.color_trc, frame.colorspace, frame.color_range = (
            9, 16 if self.fmt == "hdr10" else 18, 9, 1)
        for packet in self.stream.encode(frame):
            self.container.mux(packet)
        self.frames += 1

    def write_audio(self, packet: Any) -> None:
        idx = packet.stream.index
        if idx in self.audio:
            packet.stream = self.audio[idx]
            self.container.mux(packet)
        elif idx in self.transcode:
            src, out = self.transcode[idx]
            for frame in src.codec_context.decode(packet):
                # the first frame's timestamp sets where the audio starts (an audio track that starts late stays in
                # sync); the encoder counts samples from there, so later frames need none (and a decoder's jitter
                # in them would stop the encoder's sample queue)
                if idx in self._timed or frame.pts is None:
                    frame.pts = None
                else:
                    self._timed.add(idx)
                for p in out.encode(frame):
                    self.container.mux(p)

    def close(self) -> None:
        """Flush the encoders and write the trailer (the file is then complete and playable)."""
        try:
            for packet in self.stream.encode(None):
                self.container.mux(packet)
            for _, out in self.transcode.values():
                for packet in out.encode(None):
                    self.container.mux(packet)
        finally:
            self.container.close()
            if self.file is not None:
                self.file.flush()
                os.fsync(self.file.fileno())


def _finalize_hdr10(partial: Path, target: Path, sei: bytes) -> None:
    """Remux ``partial`` into ``target`` (atomically) with ``sei`` before the slices of every keyframe."""
    av = _av()
    fh, tmp = _claim_temp(target, "remux")
    inp = None
    try:
        inp = av.open(str(partial))
        out = av.open(fh, "w", format=_MUXERS[target.suffix.lower()])
        try:
            vin = inp.streams.video[0]
            extradata = vin.codec_context.extradata or b""
            length_size = (extradata[21] & 3) + 1 if len(extradata) > 22 and extradata[0] == 1 else 4
            mapping = {s.index: out.add_stream_from_template(s) for s in (vin, *inp.streams.audio)}
            if target.suffix.lower() in (".mp4", ".mov"):
                mapping[vin.index].codec_tag = "hvc1"
            for packet in inp.demux(*[s for s in inp.streams if s.index in mapping]):
                if packet.dts is None and packet.size == 0:
                    continue
                dst = mapping[packet.stream.index]
                if packet.stream.index == vin.index and packet.is_keyframe:
                    new = av.Packet(_insert_before_vcl(bytes(packet), sei, length_size))
                    new.pts, new.dts, new.duration = packet.pts, packet.dts, packet.duration
                    new.time_base = packet.time_base
                    new.is_keyframe = True
                    packet = new
                packet.stream = dst
                out.mux(packet)
        finally:
            out.close()
        fh.flush()
        os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        if inp is not None:
            inp.close()
        fh.close()


class _ExrSink:
    """An OpenEXR sequence, each frame written atomically, and ``sequence.json`` (timestamps) at the end."""

    def __init__(self, pattern: str, source: Any, half: bool, ref_white: float):
        from sitm_trt.media import io as sio

        self.io, self.pattern, self.half = sio, pattern, half
        self.folder = Path(pattern).parent
        self.folder.mkdir(parents=True, exist_ok=True)
        vin = source.streams.video[0]
        self.meta: dict[str, Any] = {
            "source": str(source.name), "pattern": Path(pattern).name, "colour": "linear BT.709 (Rec.709 primaries, "
            f"D65), 1.0 = the SDR reference white ({ref_white:g} cd/m2)", "half": half,
            "time_base": str(vin.time_base), "rate": str(_nominal_rate(source)), "frames": [],
        }

    def path(self, index: int) -> Path:
        return Path(self.pattern % index)

    def write_video(self, hdr: np.ndarray, pts: int | None, index: int, t: float) -> None:
        self.io.write_exr(self.path(index), hdr, half=self.half)
        self.meta["frames"].append({"file": self.path(index).name, "pts": pts, "time": t})

    def write_audio(self, packet: Any) -> None:  # an image sequence has no audio
        pass

    def close(self) -> None:
        atomic_write(self.folder / "sequence.json", json.dumps(self.meta, indent=1).encode())
        self.removed = self.remove_stale()

    def remove_stale(self) -> int:
        """Removes the files of the folder that match the frame pattern but are not frames of this run (an
        earlier, longer run's tail when overwriting), so the folder and ``sequence.json`` agree."""
        name = Path(self.pattern).name
        m = re.search(r"%0?\d*d", name)
        if m is None:
            return 0
        frame_re = re.compile(re.escape(name[: m.start()]) + r"\d+" + re.escape(name[m.end():]))
        keep = {f["file"] for f in self.meta["frames"]}
        removed = 0
        for entry in os.listdir(self.folder):
            if entry not in keep and frame_re.fullmatch(entry):
                with contextlib.suppress(FileNotFoundError, IsADirectoryError, PermissionError):
                    os.unlink(self.folder / entry)  # a symlink is removed itself, never followed
                    removed += 1
        return removed
