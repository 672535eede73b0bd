"""SDR video in, HDR video out: decode (PyAV/FFmpeg), the pipeline frame by frame, encode.

Outputs (``docs/video.md``):

* ``hdr10``: HEVC Main 10 (libx265), BT.2020 primaries, PQ (SMPTE ST 2084), narrow range, 4:2:0, with
  mastering-display and content-light-level (MaxCLL/MaxFALL, measured on the output) SEI messages;
* ``hlg``: the same with ARIB STD-B67 / BT.2100 HLG for a ``peak_nits`` display (no static metadata);
* ``exr``: an OpenEXR sequence (half float by default), linear BT.709, 1.0 = the SDR reference white.

The post kernel does the PQ/HLG encoding, BT.709 -> BT.2020 and the 10-bit 4:2:0 Y'CbCr that the encoder
consumes, on the device the pipeline runs on, and measures each frame's light level in the same pass.

Three stages overlap: a decode thread (demux, decode, YUV -> RGB), the calling thread (pre kernel, network,
temporal smoothing, post kernel; on CUDA it only enqueues work: pinned host buffers, async copies, one event
per frame) and an encode thread (waits for a frame's event, encodes, muxes, passes audio through). Frames
keep their timestamps; audio packets are copied. Ctrl-C or an error stops decoding, encodes what was already
processed, and closes the file properly: the output plays up to the last frame, then the exception goes on.

Temporal stability: the network's global state is smoothed over time. Here that is the MEFM curve
coefficients (``coef``, Eq. 8), with an exponential moving average whose time constant is ``smoothing``
seconds, reset at scene cuts (:class:`SceneCutDetector`). The EAB exposure features are not smoothed yet
(they are inside the network; see docs/video.md).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fractions
import json
import math
import os
import queue
import re
import signal
import stat
import struct
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from sitm_trt import kernels
from sitm_trt.media import transfer as T

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

FORMATS = ("hdr10", "hlg", "exr")
CONTAINERS = (".mp4", ".mov", ".mkv")
_MUXERS = {".mp4": "mp4", ".mov": "mov", ".mkv": "matroska"}
# Mastering display primaries for the SEI (xy of R, G, B) and D65; the content itself is BT.709 gamut.
MASTERING_PRIMARIES = {
    "bt709": T.PRIMARIES["bt709"],
    "p3": ((0.680, 0.320), (0.265, 0.690), (0.150, 0.060)),
    "bt2020": T.PRIMARIES["bt2020"],
}
_END = object()  # end of a queue
_MAX_DAMAGED_RUN = 64  # damaged video packets in a row before the input counts as unreadable


class VideoError(RuntimeError):
    """A video that cannot be read or written: unreadable input, missing encoder, bad output path, ..."""


# ---------------------------------------------------------------------------------------------------------
# Output files: secure temporaries, leftovers of killed runs, SIGTERM
# ---------------------------------------------------------------------------------------------------------


def _file_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def _temp_re(target: Path) -> re.Pattern:
    """Names of the temporaries of ``target``: ``.NAME.<random>.partial.EXT`` / ``.NAME.<random>.remux.EXT``."""
    return re.compile(re.escape(f".{target.name}.") + r"[A-Za-z0-9_]+\.(partial|remux)" + re.escape(target.suffix))


def _claim_temp(target: Path, tag: str) -> tuple[Any, Path]:
    """A new, exclusively created file with an unpredictable name beside ``target`` (``mkstemp``: O_EXCL, so
    never a planted file or symlink), open for writing and locked (``flock``) while this process lives, so
    another run can tell it from a leftover. Returns (file object, path)."""
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=f".{tag}{target.suffix}", dir=target.parent)
    try:
        os.fchmod(fd, _file_mode())  # what a plain open() would give (mkstemp makes 0600)
        _try_lock(fd)
        return os.fdopen(fd, "w+b"), Path(name)
    except BaseException:
        os.close(fd)
        os.unlink(name)
        raise


def _try_lock(fd: int) -> bool:
    """An exclusive, non-blocking flock on ``fd``; False when another process holds it (True without fcntl)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _clean_leftovers(target: Path, log: Callable[[str], None]) -> None:
    """Removes the temporaries of earlier runs writing ``target`` that were killed (SIGKILL, power loss): regular
    files of ours matching :func:`_temp_re` that no live process holds locked. A locked one means another
    conversion is writing ``target`` right now: refused, so two runs never silently clobber one output."""
    pattern = _temp_re(target)
    try:
        names = os.listdir(target.parent)
    except OSError:
        return
    for name in names:
        if not pattern.fullmatch(name):
            continue
        p = target.parent / name
        try:
            st = os.lstat(p)
            if not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid():
                continue  # never follow or remove what is not a plain file of ours
            fd = os.open(p, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except OSError:
            continue
        try:
            if not _try_lock(fd):
                raise VideoError(f"{target}: another conversion is writing it now (its temporary {name} is in use)")
            os.unlink(p)
            log(f"removed {p}, left by an interrupted earlier run")
        except FileNotFoundError:
            pass
        finally:
            os.close(fd)


class _SigtermAsInterrupt:
    """While converting in the main thread, SIGTERM stops the run like Ctrl-C (the output is closed, playable,
    with the frames done so far) and raises :class:`sitm_trt.errors.Terminated`. Only when SIGTERM has its
    default action: a handler the application installed is left alone. A second SIGTERM is ignored while the
    output is being closed."""

    def __enter__(self) -> _SigtermAsInterrupt:
        self.previous = None
        if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
            from sitm_trt.errors import Terminated

            def handler(signum: int, frame: Any) -> None:
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
                raise Terminated(f"terminated by signal {signum} (SIGTERM)")

            self.previous = signal.signal(signal.SIGTERM, handler)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)


def _av() -> Any:
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


# ---------------------------------------------------------------------------------------------------------
# Temporal stability
# ---------------------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------------------
# The per-frame work
# ---------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class _Slot:
    """Host memory of one frame in flight (pinned on CUDA) and its device twins."""

    host_in: Any = None
    dev_in: Any = None
    host_out: Any = None
    dev_out: Any = None
    host_stats: Any = None
    dev_stats: Any = None
    event: Any = None
    key: tuple = ()


@dataclasses.dataclass
class _Done:
    """A processed frame: ``output()`` waits for it and gives the host array."""

    slot: int
    out: np.ndarray
    stats: np.ndarray | None
    event: Any
    pts: int | None
    time: float
    index: int

    def wait(self) -> None:
        if self.event is not None:
            self.event.synchronize()


class FrameProcessor:
    """pre -> network -> coef smoothing -> post for one frame at a time, with a ring of ``slots`` output
    buffers so the caller can hand frames to another thread while the next one is computed.

    ``encoding``: ``"linear"`` (float (h, w, 3), BT.709, 1.0 = reference white; ``dtype`` float32/float16),
    or ``"pq"`` / ``"hlg"`` (uint16 yuv420p code values, BT.2020, narrow range, the frame cropped to even
    sizes). ``device``: "cpu" or "cuda:N".
    """

    def __init__(self, pipeline: Any, device: str = "cpu", *, encoding: str = "linear", dtype: str = "float32",
                 ref_white: float = 203.0, peak_nits: float = 1000.0, smoothing: float = 0.0,
                 scene_cut: float = 0.1, slots: int = 3):
        if encoding not in ("linear", "pq", "hlg"):
            raise ValueError(f"encoding must be 'linear', 'pq' or 'hlg', got {encoding!r}")
        self.pipeline, self.device, self.encoding, self.dtype = pipeline, device, encoding, dtype
        self.ref_white, self.peak_nits = ref_white, peak_nits
        self.smoother = CoefSmoother(smoothing)
        self.detector = SceneCutDetector(scene_cut)
        self.cuts: list[int] = []
        self.backend = pipeline.backend_for(device)
        self.fusion = pipeline.weights.fusion
        self.cuda = device.startswith("cuda")
        self.dev_index = int(device.split(":")[1]) if self.cuda else 0
        self.ext = kernels.extension()
        self.stream = 0
        if self.cuda:
            torch = sys.modules.get("torch")
            if torch is not None and torch.cuda.is_available():
                self.stream = int(torch.cuda.current_stream(device).cuda_stream)
        self.slots = [_Slot() for _ in range(slots)]
        self.free: queue.Queue[int] = queue.Queue()
        for i in range(slots):
            self.free.put(i)
        self._pre: tuple = ()
        self._pre_key: tuple = ()
        self.count = 0

    def out_size(self, h: int, w: int) -> tuple[int, int]:
        """The output size: 4:2:0 video needs even sizes (an odd last row/column is dropped)."""
        return (h - h % 2, w - w % 2) if self.encoding != "linear" else (h, w)

    def _alloc(self, shape: list[int], dtype: str, where: str) -> Any:
        if where == "device":
            return self.ext.empty(shape, dtype, self.device, self.stream)
        if self.cuda:
            return self.ext.empty(shape, dtype, "cpu", 0, True)  # pinned: async copies
        return np.empty(shape, dtype)

    def _prepare(self, slot: _Slot, h: int, w: int, in_dtype: str) -> None:
        key = (h, w, in_dtype)
        if slot.key == key:
            return
        oh, ow = self.out_size(h, w)
        if self.encoding == "linear":
            oshape, odtype = [1, oh, ow, 3], self.dtype
        else:
            oshape, odtype = [1, T.yuv420p_size(oh, ow)], "uint16"
        slot.host_out = self._alloc(oshape, odtype, "host")
        slot.host_stats = self._alloc([1, 2], "float32", "host")
        if self.cuda:
            slot.host_in = self._alloc([h, w, 3], in_dtype, "host")
            slot.dev_in = self._alloc([h, w, 3], in_dtype, "device")
            slot.dev_out = self._alloc(oshape, odtype, "device")
            slot.dev_stats = self._alloc([1, 2], "float32", "device")
            if slot.event is None:
                slot.event = self.ext.Event(self.dev_index)
        slot.key = key

    def _pre_buffers(self, h: int, w: int) -> tuple:
        s = self.backend.stride
        hp, wp = -(-h // s) * s, -(-w // s) * s
        key = (hp, wp)
        if key != self._pre_key:
            where = "device" if self.cuda else "host"
            self._pre = tuple(self._alloc([1, c, hp, wp], self.backend.dtype, where) for c in (3, 3, 3, 2))
            self._pre_key = key
        return self._pre

    def __call__(self, frame: np.ndarray, t: float, pts: int | None = None) -> _Done:
        """Enqueue one (H, W, 3) uint8/uint16 RGB frame shown at ``t`` seconds; the result's ``wait()``
        blocks until its host output is ready. Call :meth:`release` with the result's slot once done."""
        frame = np.ascontiguousarray(frame)
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype not in (np.uint8, np.uint16):
            raise ValueError(f"frame must be uint8/uint16 (H, W, 3), got {frame.dtype} {frame.shape}")
        h, w = frame.shape[:2]
        oh, ow = self.out_size(h, w)
        if oh == 0 or ow == 0:
            raise VideoError(f"frame of {w}x{h} is too small")
        cut = self.detector(frame)
        if cut:
            self.cuts.append(self.count)
        i = self.free.get()
        slot = self.slots[i]
        self._prepare(slot, h, w, str(frame.dtype))
        stream = self.stream
        if self.cuda:
            np.copyto(np.from_dlpack(slot.host_in), frame)
            self.ext.copy(kernels._capsule(slot.dev_in, "video", "frame", stream),
                          kernels._capsule(slot.host_in, "video", "frame", stream), stream)
            x = slot.dev_in
        else:
            x = frame
        pre = self._pre_buffers(h, w)
        kernels.pre(x, stride=self.backend.stride, dtype=self.backend.dtype, out=pre, stream=stream)
        up, down, masks, coef = self.backend.run(pre, stream)
        coef = self.smoother(coef, t, cut, stream)
        out = slot.dev_out if self.cuda else slot.host_out
        stats = slot.dev_stats if self.cuda else slot.host_stats
        if self.encoding == "linear":
            kernels.post(masks, pre[0], up, down, coef, height=oh, width=ow, layout="nhwc", dtype=self.dtype,
                         out=out, stats=stats, ref_white=self.ref_white, stream=stream, fusion=self.fusion)
        else:
            kernels.post(masks, pre[0], up, down, coef, height=oh, width=ow, layout="yuv420p", dtype="uint16",
                         transfer=self.encoding, gamut="bt2020", ref_white=self.ref_white,
                         peak_nits=self.peak_nits, code_range="limited", bits=10, out=out, stats=stats,
                         stream=stream, fusion=self.fusion)
        event = None
        if self.cuda:
            for dst, src in ((slot.host_out, slot.dev_out), (slot.host_stats, slot.dev_stats)):
                self.ext.copy(kernels._capsule(dst, "video", "out", stream),
                              kernels._capsule(src, "video", "out", stream), stream)
            slot.event.record(stream)
            event = slot.event
        host_out = np.from_dlpack(slot.host_out) if self.cuda else slot.host_out
        host_stats = np.from_dlpack(slot.host_stats) if self.cuda else slot.host_stats
        done = _Done(i, host_out[0], host_stats[0], event, pts, t, self.count)
        self.count += 1
        return done

    def release(self, done: _Done) -> None:
        self.free.put(done.slot)


# ---------------------------------------------------------------------------------------------------------
# Decoding
# ---------------------------------------------------------------------------------------------------------


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


def _frame_time(frame: Any, index: int, rate: fractions.Fraction | None, last: float | None) -> float:
    if frame.pts is not None and frame.time_base is not None:
        return float(frame.pts * frame.time_base)
    step = float(1 / rate) if rate else 1 / 25
    return (last + step) if last is not None else index * step


def read_frames(path: str | os.PathLike,
                max_frames: int | None = None) -> Iterator[tuple[np.ndarray, int | None, float]]:
    """(RGB HWC uint8/uint16, pts, seconds) of each video frame of ``path``, as :func:`convert` sees them."""
    container = _open_input(path)
    try:
        stream = container.streams.video[0]
        last = None
        for i, frame in enumerate(container.decode(stream)):
            if max_frames is not None and i >= max_frames:
                break
            last = _frame_time(frame, i, stream.average_rate, last)
            yield _rgb(frame), frame.pts, last
    finally:
        container.close()


# ---------------------------------------------------------------------------------------------------------
# HDR10 metadata (H.265 SEI, D.2.28 and D.2.35)
# ---------------------------------------------------------------------------------------------------------


def mastering_display_sei(primaries: Sequence[Sequence[float]], white: Sequence[float], max_nits: float,
                          min_nits: float) -> bytes:
    """mastering_display_colour_volume payload: G, B, R then white xy in 0.00002 units, luminance in 0.0001
    cd/m2 (SMPTE ST 2086 as carried by HEVC)."""
    (rx, ry), (gx, gy), (bx, by) = primaries
    xy = [gx, gy, bx, by, rx, ry, white[0], white[1]]
    return struct.pack(">8H2I", *[round(v / 0.00002) for v in xy], round(max_nits * 10000), round(min_nits * 10000))


def content_light_level_sei(max_cll: int, max_fall: int) -> bytes:
    """content_light_level_info payload: MaxCLL, MaxFALL in cd/m2 (CTA-861.3)."""
    return struct.pack(">2H", min(int(max_cll), 65535), min(int(max_fall), 65535))


def _sei_nal(messages: Sequence[tuple[int, bytes]]) -> bytes:
    """A prefix SEI NAL unit (type 39) holding ``(payload_type, payload)`` messages, with emulation prevention."""
    rbsp = bytearray()
    for ptype, payload in messages:
        for v in (ptype, len(payload)):
            while v >= 255:
                rbsp.append(255)
                v -= 255
            rbsp.append(v)
        rbsp += payload
    rbsp.append(0x80)  # rbsp_trailing_bits
    out, zeros = bytearray(), 0
    for b in rbsp:
        if zeros >= 2 and b <= 3:
            out.append(3)
            zeros = 0
        out.append(b)
        zeros = zeros + 1 if b == 0 else 0
    return bytes([39 << 1, 1]) + bytes(out)


def _insert_before_vcl(data: bytes, nal: bytes, length_size: int) -> bytes:
    """Insert ``nal`` into a length-prefixed HEVC access unit before its first VCL NAL unit (type < 32)."""
    pos = 0
    while pos + length_size < len(data):
        size = int.from_bytes(data[pos : pos + length_size], "big")
        if (data[pos + length_size] >> 1) & 0x3F < 32:
            break
        pos += length_size + size
    return data[:pos] + len(nal).to_bytes(length_size, "big") + nal + data[pos:]


# ---------------------------------------------------------------------------------------------------------
# Sinks
# ---------------------------------------------------------------------------------------------------------


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

    _MP4_AUDIO = {"aac", "mp3", "ac3", "eac3", "alac", "opus", "flac"}

    def __init__(self, tmp: Path, source: Any, opts: VideoOptions, fmt: str, width: int, height: int,
                 file: Any = None, rotation: int = 0):
        av = _av()
        self.av, self.path, self.opts, self.fmt = av, tmp, opts, fmt
        ext = tmp.suffix.lower()
        # Through the file object of the exclusively created temporary (_claim_temp): FFmpeg never opens a path.
        self.file = file
        self.container = av.open(file if file is not None else str(tmp), "w", format=_MUXERS[ext])
        vin = source.streams.video[0]
        rate = vin.average_rate or vin.guessed_rate or fractions.Fraction(25)
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
        if opts.audio:
            for a in source.streams.audio:
                name = a.codec_context.name if a.codec_context is not None else ""
                if ext == ".mkv" or name in self._MP4_AUDIO:
                    self.audio[a.index] = self.container.add_stream_from_template(a)
                elif a.codec_context is not None:  # e.g. PCM in MP4: transcode to AAC
                    out = self.container.add_stream("aac", rate=a.codec_context.sample_rate or 48000)
                    self.transcode[a.index] = (a, out)
        self.frames = 0

    def write_video(self, codes: np.ndarray, pts: int | None, index: int) -> None:
        h, w = self.stream.height, self.stream.width
        frame = self.av.VideoFrame.from_ndarray(codes.reshape(h * 3 // 2, w), format="yuv420p10le")
        frame.pts = pts if pts is not None else index
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
                frame.pts = None
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
            "time_base": str(vin.time_base), "rate": str(vin.average_rate or vin.guessed_rate), "frames": [],
        }

    def path(self, index: int) -> Path:
        return Path(self.pattern % index)

    def write_video(self, hdr: np.ndarray, pts: int | None, index: int, t: float) -> None:
        self.io.write_exr(self.path(index), hdr, half=self.half)
        self.meta["frames"].append({"file": self.path(index).name, "pts": pts, "time": t})

    def write_audio(self, packet: Any) -> None:  # an image sequence has no audio
        pass

    def close(self) -> None:
        self.io.write_bytes_atomic(self.folder / "sequence.json", json.dumps(self.meta, indent=1).encode())
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


# ---------------------------------------------------------------------------------------------------------
# convert
# ---------------------------------------------------------------------------------------------------------


def _output_kind(dst: Path, fmt: str | None) -> str:
    looks_exr = dst.suffix.lower() == ".exr" or dst.suffix == "" or dst.is_dir()
    if fmt is None:
        fmt = "exr" if looks_exr else "hdr10"
    if fmt == "exr" and dst.suffix.lower() not in ("", ".exr") and not dst.is_dir():
        raise VideoError(f"{dst}: an EXR sequence goes to a folder or a pattern like frames/%06d.exr")
    if fmt != "exr" and dst.suffix.lower() not in CONTAINERS:
        raise VideoError(f"{dst}: {fmt} video needs a {', '.join(CONTAINERS)} file name")
    return fmt


def _exr_pattern(dst: Path) -> str:
    if "%" in dst.name:
        try:
            dst.name % 0
        except (TypeError, ValueError) as err:
            raise VideoError(f"{dst}: the frame pattern must hold one integer field like %06d") from err
        return str(dst)
    return str(dst / "frame_%06d.exr")


def _default_device() -> str:
    """cuda:0 when the extension can use a GPU; else the CPU, with a warning when a GPU is there but unusable
    (a driver too old for the extension's CUDA runtime) rather than silently."""
    from sitm_trt.runtime import device as runtime_device

    count, why = runtime_device.cuda_devices()
    if count:
        return "cuda:0"
    if "driver" in why.lower() and "no NVIDIA driver" not in why:  # a GPU with a driver too old: say so
        warnings.warn(f"sitm-trt: running on the CPU: {why}", RuntimeWarning, stacklevel=3)
    return "cpu"


def _estimate_frames(container: Any) -> int | None:
    s = container.streams.video[0]
    if s.frames:
        return int(s.frames)
    rate = s.average_rate or s.guessed_rate
    if s.duration and s.time_base:
        dur = s.duration * s.time_base
    else:
        dur = container.duration / 1e6 if container.duration else None
    return int(round(float(dur * rate))) if dur and rate else None


def _put(q: queue.Queue, item: Any, stop: threading.Event) -> bool:
    """Put ``item`` unless ``stop`` is set first; False when it gave up."""
    while not stop.is_set():
        try:
            q.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


def convert(src: str | os.PathLike, dst: str | os.PathLike, *, weights: Any = "default", pipeline: Any = None,
            options: VideoOptions | None = None, device: str | None = None, backend: str = "auto",
            precision: str | None = None, progress: bool = True, overwrite: bool = False,
            on_frame: Callable[[int], None] | None = None, log: Callable[[str], None] | None = None,
            cuda_graphs: bool = False) -> VideoResult:
    """Convert the SDR video ``src`` to HDR ``dst`` (see the module docstring and docs/video.md).

    ``pipeline``: a :class:`sitm_trt.Pipeline` to use (else one is made from ``weights``, ``backend``,
    ``precision``, ``cuda_graphs``). ``device``: "cpu" or "cuda:N" (default: the first GPU if there is one). ``on_frame(i)`` is
    called after frame ``i`` is enqueued (progress hooks, tests); ``log`` receives one-line notices. Raises
    :class:`VideoError` for unusable input or output, and re-raises Ctrl-C or any error after closing a
    playable output that holds the frames converted before it (``log`` says how many).
    """
    opts = options or VideoOptions()
    opts.check()
    src, dst = Path(src), Path(dst)
    say = log or (lambda m: None)
    if not src.exists():
        raise VideoError(f"{src}: no such file")
    fmt = _output_kind(dst, opts.format)
    temp = None  # (file, path) of the exclusively created temporary the video is written to
    if fmt != "exr":
        _check_encoder()
        if dst.exists() and not overwrite:
            raise VideoError(f"{dst}: exists (pass overwrite=True / --overwrite to replace it)")
        if not dst.parent.is_dir():
            raise VideoError(f"{dst.parent}: no such folder")
        if dst.is_dir():
            raise VideoError(f"{dst}: is a folder")
        if dst.exists() and os.path.samefile(src, dst):
            raise VideoError(f"{dst}: is the input itself")
        _clean_leftovers(dst, say)
        try:  # before any decoding or network work: a read-only or full folder fails here, cleanly
            temp = _claim_temp(dst, "partial")
        except OSError as err:
            raise VideoError(f"{dst}: cannot write into {dst.parent} ({err.strerror or err})") from err
    else:
        pattern = _exr_pattern(dst)
        folder = Path(pattern).parent
        if folder.is_dir() and any(folder.iterdir()) and not overwrite:
            raise VideoError(f"{folder}: is not empty (pass overwrite=True / --overwrite to write into it)")
        try:
            folder.mkdir(parents=True, exist_ok=True)
            fd, probe = tempfile.mkstemp(prefix=".sitm-write-check.", dir=folder)
            os.close(fd)
            os.unlink(probe)
        except OSError as err:
            raise VideoError(f"{folder}: cannot write the EXR sequence there ({err.strerror or err})") from err
    try:
        with _SigtermAsInterrupt():
            return _convert(src, dst, fmt, opts, temp, pattern if fmt == "exr" else "", weights, pipeline, device,
                            backend, precision, progress, on_frame, say, cuda_graphs)
    finally:
        if temp is not None:
            temp[0].close()
            temp[1].unlink(missing_ok=True)  # gone already when the output was made from it


def _convert(src: Path, dst: Path, fmt: str, opts: VideoOptions, temp: Any, pattern: str, weights: Any,
             pipeline: Any, device: str | None, backend: str, precision: str | None, progress: bool,
             on_frame: Callable[[int], None] | None, log: Callable[[str], None], cuda_graphs: bool) -> VideoResult:
    rotation, interlaced = _peek(src)
    if interlaced:
        raise VideoError(f"{src}: is interlaced; sitm-trt does not deinterlace (a frame-based network would "
                         "smear the fields): deinterlace first, e.g. ffmpeg -i IN -vf bwdif OUT")
    container = _open_input(src)
    try:
        if pipeline is None:
            from sitm_trt.runtime.pipeline import Pipeline

            pipeline = Pipeline(weights, backend=backend, precision=precision, cuda_graphs=cuda_graphs)
        device = device or _default_device()
        vin = container.streams.video[0]
        w, h = vin.codec_context.width, vin.codec_context.height
        if device == "cpu" and hasattr(getattr(pipeline, "weights", None), "preset_json"):  # the memory guard
            from sitm_trt.runtime import memory

            memory.check(pipeline.weights, 1, h, w, what=str(src))
        encoding = {"hdr10": "pq", "hlg": "hlg", "exr": "linear"}[fmt]
        proc = FrameProcessor(pipeline, device, encoding=encoding, dtype="float16" if opts.exr_half else "float32",
                              ref_white=opts.ref_white, peak_nits=opts.peak_nits, smoothing=opts.smoothing,
                              scene_cut=opts.scene_cut, slots=4)
        ow, oh = (w - w % 2, h - h % 2) if fmt != "exr" else (w, h)
        if fmt == "exr":
            sink: Any = _ExrSink(pattern, container, opts.exr_half, opts.ref_white)
            partial = None
        else:
            partial = temp[1]
            sink = _VideoSink(partial, container, opts, fmt, ow, oh, file=temp[0], rotation=rotation)
        if rotation:
            log(f"{src.name}: display rotation {rotation} degrees (counter-clockwise) "
                + ("carried to the output" if fmt != "exr" else "recorded in sequence.json; the EXR frames are "
                   "stored as coded, not rotated"))
        if fmt == "exr":
            sink.meta["rotation"] = rotation
        if (ow, oh) != (w, h):
            log(f"{src.name}: {w}x{h} cropped to {ow}x{oh} (4:2:0 needs even sizes)")
        return _run(container, proc, sink, opts, fmt, src, dst, partial, (ow, oh), progress, on_frame, log)
    finally:
        container.close()


def _run(container: Any, proc: FrameProcessor, sink: Any, opts: VideoOptions, fmt: str, src: Path, dst: Path,
         partial: Path | None, size: tuple[int, int], progress: bool, on_frame: Callable[[int], None] | None,
         log: Callable[[str], None]) -> VideoResult:
    from tqdm import tqdm

    vin = container.streams.video[0]
    audio = list(container.streams.audio) if (opts.audio and fmt != "exr") else []
    stop, stop_decode = threading.Event(), threading.Event()
    q_in: queue.Queue = queue.Queue(maxsize=8)
    q_out: queue.Queue = queue.Queue(maxsize=len(proc.slots) + 8)
    errors: list[BaseException] = []
    light = {"max": 0.0, "fall": 0.0}
    total = [n for n in (opts.max_frames, _estimate_frames(container)) if n]
    bar = tqdm(total=min(total) if total else None, unit="frame", disable=not progress,
               desc=f"{src.name} -> {dst.name}", dynamic_ncols=True, leave=True)

    av = _av()
    damaged = {"packets": 0, "run": 0, "repeated": 0, "last_error": ""}
    held: dict[str, Any] = {"rgb": None, "pts": None, "origin": None}  # the last good frame, the first one's pts
    decoded: dict[str, int | None] = {"frames": None}  # set when the input was read to its end

    pending = {"count": 0}  # damaged video packets whose frames are not yet filled in
    rate = vin.average_rate or vin.guessed_rate
    period = 1 / (rate * vin.time_base) if rate and vin.time_base else 0  # one frame, in pts (a Fraction)

    def emit_pending(before: int | None) -> bool:
        """Fills the gap between the last good frame and the frame at ``before`` (the end of the input: None)
        with copies of that last good frame, one per missing frame period and at most one per damaged packet,
        so the output keeps its length and timing (a decoder may report a damaged packet late, with frame
        threads, so the gap in timestamps says where the lost frames were)."""
        if held["rgb"] is None or held["pts"] is None or held["origin"] is None or period <= 0:
            return True
        origin = held["origin"]  # the first frame's pts: frame n sits at origin + n * period (rounded)
        base, k = round((held["pts"] - origin) / period), 1
        while pending["count"] > 0 and (before is None or origin + (base + k + 0.5) * period <= before):
            pts = origin + int(round((base + k) * period))
            pending["count"] -= 1
            damaged["repeated"] += 1
            if not _put(q_in, ("video", held["rgb"], pts, float(pts * vin.time_base)), stop_decode):
                return False
            k += 1
        if before is not None:
            pending["count"] = 0
        return True

    def decode() -> None:
        try:
            index, last = 0, None
            for packet in container.demux(vin, *audio):
                if stop_decode.is_set():
                    break
                if packet.stream.index != vin.index:
                    if packet.dts is not None and packet.size:
                        if not _put(q_in, ("audio", packet), stop_decode):
                            break
                    continue
                try:
                    frames = packet.decode()
                except av.error.EOFError:
                    break
                except av.error.FFmpegError as err:  # a damaged packet: conceal it, like FFmpeg does
                    damaged["packets"] += 1
                    damaged["run"] += 1
                    damaged["last_error"] = str(err)
                    if damaged["run"] > _MAX_DAMAGED_RUN:
                        raise VideoError(f"{damaged['run']} damaged video packets in a row ({err})") from err
                    pending["count"] += 1  # filled with the previous frame once the next good one shows the gap
                    continue
                damaged["run"] = 0
                for frame in frames:
                    if frame.pts is not None and pending["count"] and not emit_pending(frame.pts):
                        return
                    last = _frame_time(frame, index, vin.average_rate, last)
                    rgb = _rgb(frame)
                    held.update(rgb=rgb, pts=frame.pts)
                    if held["origin"] is None:
                        held["origin"] = frame.pts
                    if not _put(q_in, ("video", rgb, frame.pts, last), stop_decode):
                        return
                    index += 1
            if pending["count"] and not emit_pending(None):
                return
            decoded["frames"] = index
        except BaseException as err:  # noqa: BLE001 - handed to the caller
            failure = err
            if not isinstance(err, KeyboardInterrupt):
                failure = VideoError(f"{src}: decoding failed: {err}")
                failure.__cause__ = err
            errors.append(failure)
            stop.set()
        finally:
            _put(q_in, _END, stop_decode)

    def encode() -> None:
        try:
            while True:
                item = q_out.get()
                if item is _END:
                    break
                if item[0] == "audio":
                    if not errors:
                        sink.write_audio(item[1])
                    continue
                done: _Done = item[1]
                done.wait()
                if not errors:
                    if fmt == "exr":
                        sink.write_video(done.out, done.pts, done.index, done.time)
                    else:
                        sink.write_video(done.out, done.pts, done.index)
                    light["max"] = max(light["max"], float(done.stats[0]))
                    light["fall"] = max(light["fall"], float(done.stats[1]))
                    bar.update(1)
                proc.release(done)
        except BaseException as err:  # noqa: BLE001 - handed to the caller
            errors.append(err)
            stop.set()
            while True:  # keep draining so the producer never blocks on a full queue
                item = q_out.get()
                if item is _END:
                    break
                if item[0] == "video":
                    proc.release(item[1])

    t0 = time.perf_counter()
    decoder = threading.Thread(target=decode, name="sitm-decode", daemon=True)
    encoder = threading.Thread(target=encode, name="sitm-encode", daemon=True)
    decoder.start()
    encoder.start()
    frames, interrupted = 0, None
    try:
        while not stop.is_set():
            try:
                item = q_in.get(timeout=0.1)
            except queue.Empty:
                continue
            if item is _END:
                break
            if item[0] == "audio":
                q_out.put(item)
                continue
            _, rgb, pts, t = item
            if fmt != "exr" and (rgb.shape[1] - rgb.shape[1] % 2, rgb.shape[0] - rgb.shape[0] % 2) != size:
                raise VideoError(f"{src}: the frame size changes to {rgb.shape[1]}x{rgb.shape[0]} at frame {frames} "
                                 f"(from {size[0]}x{size[1]}); split the video there")
            done = proc(rgb, t, pts)
            q_out.put(("video", done))
            if on_frame is not None:
                on_frame(frames)
            frames += 1
            if opts.max_frames is not None and frames >= opts.max_frames:
                break
    except BaseException as err:  # Ctrl-C or an error here: finish what is queued, close, then re-raise
        interrupted = err
    finally:
        stop_decode.set()
        q_out.put(_END)
        encoder.join()
        decoder.join(timeout=5)
        bar.close()
    if damaged["packets"]:
        log(f"{src}: {damaged['packets']} damaged video packets skipped, {damaged['repeated']} of them replaced by the "
            f"previous frame to keep the timing (last error: {damaged['last_error']})")
    declared = int(vin.frames or 0)
    if decoded["frames"] is not None and declared and decoded["frames"] + damaged["packets"] < declared and not (
            opts.max_frames is not None and decoded["frames"] >= opts.max_frames):
        log(f"{src}: truncated? its header announces {declared} frames, the data ended after {decoded['frames']}")
    failure = interrupted or (errors[0] if errors else None)
    written = getattr(sink, "frames", None)
    written = len(sink.meta["frames"]) if fmt == "exr" else written
    try:
        sink.close()
    except BaseException as err:
        if partial is not None:
            partial.unlink(missing_ok=True)
        if failure is not None:
            raise failure
        if isinstance(err, (OSError, _av().error.FFmpegError)):
            raise VideoError(f"{dst}: cannot write the output ({err}); nothing was written") from err
        raise
    if fmt == "exr" and getattr(sink, "removed", 0):
        log(f"{sink.folder}: removed {sink.removed} frame files of an earlier run that this run did not write")
    max_cll = max_fall = None
    if fmt != "exr":
        assert partial is not None
        try:
            if not written:
                partial.unlink(missing_ok=True)
                raise VideoError(f"{src}: no frame was converted") from failure
            max_cll, max_fall = int(math.ceil(light["max"])), int(math.ceil(light["fall"]))
            if fmt == "hdr10":
                prim = MASTERING_PRIMARIES[opts.mastering_primaries]
                sei = _sei_nal([(137, mastering_display_sei(prim, T.WHITE_D65, opts.peak_nits, 0.0001)),
                                (144, content_light_level_sei(max_cll, max_fall))])
                _finalize_hdr10(partial, dst, sei)
                partial.unlink()
            else:
                os.replace(partial, dst)
        except BaseException as err:
            partial.unlink(missing_ok=True)
            if failure is not None:
                raise failure
            if isinstance(err, (OSError, _av().error.FFmpegError)):
                raise VideoError(f"{dst}: cannot write the output ({err}); nothing was written") from err
            raise
    if failure is not None:
        what = "interrupted" if isinstance(failure, KeyboardInterrupt) else f"stopped by an error ({failure})"
        log(f"{what}: {dst} holds the {written} frames converted before it")
        raise failure
    seconds = time.perf_counter() - t0
    return VideoResult(dst, fmt, int(written or 0), seconds, (written or 0) / seconds if seconds > 0 else 0.0,
                       size[0], size[1], max_cll, max_fall, list(proc.cuts))


# ---------------------------------------------------------------------------------------------------------
# Flicker measurement
# ---------------------------------------------------------------------------------------------------------


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


def _main(argv: Sequence[str] | None = None) -> int:
    """``python -m sitm_trt.media.video flicker``: flicker with and without the temporal smoothing (docs/video.md)."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m sitm_trt.media.video")
    sub = p.add_subparsers(dest="what", required=True)
    f = sub.add_parser("flicker", help="flicker of a static noisy synthetic clip, with and without smoothing")
    f.add_argument("--weights", default="default")
    f.add_argument("--frames", type=int, default=24)
    f.add_argument("--size", default="64x96", help="HxW")
    f.add_argument("--noise", type=float, default=3.0, help="Gaussian noise, 8-bit levels")
    f.add_argument("--fps", type=float, default=24.0)
    f.add_argument("--smoothing", type=float, default=0.25, help="time constant in seconds")
    f.add_argument("--coef-gain", type=float, default=1.0,
                   help="multiply the weights of the MEFM coefficient head (a stress test: >1 makes the curve "
                        "react more to the content, as a trained network may)")
    f.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    from sitm_trt.runtime.pipeline import Pipeline
    from sitm_trt.weights import load

    h, w = (int(v) for v in args.size.lower().split("x"))
    clip = static_noisy_clip(args.frames, h, w, args.noise)
    pipe = Pipeline(load(args.weights), backend="torch")
    if args.coef_gain != 1.0:
        import torch

        model = pipe.backend_for(args.device).model
        with torch.no_grad():
            model.mefm.coef_head.weight.mul_(args.coef_gain)
    raw = hdr_frames(pipe, clip, args.fps, smoothing=0.0, device=args.device)
    smooth = hdr_frames(pipe, clip, args.fps, smoothing=args.smoothing, device=args.device)
    report = {"frames": args.frames, "size": [h, w], "noise": args.noise, "fps": args.fps,
              "smoothing_s": args.smoothing, "coef_gain": args.coef_gain,
              "flicker_input_stops": flicker(clip), "flicker_raw_stops": flicker(raw),
              "flicker_smoothed_stops": flicker(smooth)}
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(_main())
