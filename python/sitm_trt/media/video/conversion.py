""":func:`convert` checks the input and the output before any work, then runs three overlapping stages: a
decode thread (demux, decode, YUV -> RGB; damaged packets are concealed with the previous frame), the calling
thread (:class:`FrameProcessor`; on CUDA it only enqueues work) and an encode thread (waits for each frame's
event, writes it to the sink, passes audio through). Frames keep their timestamps. Ctrl-C, SIGTERM or an error
stops decoding, encodes what was already processed and closes the output properly, so it plays up to the last
frame; then the exception goes on. For HDR10 the MaxCLL/MaxFALL measured on the output go into its SEI by a
final remux.
"""

from __future__ import annotations

import math
import os
import queue
import re
import signal
import tempfile
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Callable, NoReturn

from sitm_trt.files import missing_folders, remove_empty
from sitm_trt.media import transfer as T
from sitm_trt.media.video.decode import _estimate_frames, _nominal_rate, _open_input, _peek, _rgb, _timing
from sitm_trt.media.video.frames import FrameProcessor, _Done
from sitm_trt.media.video.hevc_sei import _sei_nal, content_light_level_sei, mastering_display_sei
from sitm_trt.media.video.options import (CONTAINERS, MASTERING_PRIMARIES, VideoError, VideoOptions, VideoResult,
                                          _av)
from sitm_trt.media.video.sinks import _check_encoder, _ExrSink, _finalize_hdr10, _VideoSink
from sitm_trt.media.video.temporaries import _claim_temp, _clean_leftovers

_END = object()  # end of a queue
_MAX_DAMAGED_RUN = 64  # damaged video packets in a row before the input counts as unreadable
_QUEUED = 8  # decoded frames waiting for the network
_SLOTS = 4  # output buffers of frames in flight (FrameProcessor)
_MIN_VIDEO_SIDE = 16  # libx265 refuses smaller frames
# colour primaries (H.273) that the conversion treats as BT.709 without a word: BT.709, unspecified, and the SD
# ones (BT.470 M/BG, SMPTE 170M/240M), a few hundredths off in chromaticity; any other (BT.2020, P3, ...) is noted
_BT709_LIKE_PRIMARIES = {1, 2, 4, 5, 6, 7}
_PRIMARY_NAMES = {8: "generic film", 9: "BT.2020", 10: "SMPTE ST 428 (XYZ)", 11: "DCI-P3", 12: "Display P3",
                  22: "EBU 3213"}


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
        fields = dst.name.replace("%%", "")
        if fields.count("%") != 1 or not re.search(r"%0?\d*d", fields):
            raise VideoError(f"{dst}: the frame pattern must hold one integer field like %06d")
        if not dst.name.lower().endswith(".exr"):
            raise VideoError(f"{dst}: the frame pattern must end in .exr, like frames/%06d.exr")
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
    called after frame ``i`` is enqueued (progress hooks, tests); ``log`` receives one-line notices. On the CPU a
    frame over the memory budget runs in tiles (so does every frame with a ``Pipeline(tile=N)``; docs/video.md,
    "Memory"), and MemoryError is raised before any frame is converted when even tiles do not fit. Raises
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
    if fmt != "exr":  # (the EXR sequence's folder is prepared below)
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
    made: list[Path] = []  # the folders this call creates, deepest first: removed again if it writes nothing
    if fmt == "exr":
        pattern = _exr_pattern(dst)
        folder = Path(pattern).parent
        if folder.is_dir() and any(folder.iterdir()) and not overwrite:
            raise VideoError(f"{folder}: is not empty (pass overwrite=True / --overwrite to write into it)")
        made = missing_folders(folder)
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
    except BaseException:
        remove_empty(made)  # only while empty: a folder that holds frames of this run keeps them
        raise
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
        tile = getattr(pipeline, "tile", None)
        if tile is None and device == "cpu" and hasattr(getattr(pipeline, "weights", None), "preset_json"):
            tile = _tile_for_memory(pipeline.weights, h, w, fmt, opts, src, log)
        encoding = {"hdr10": "pq", "hlg": "hlg", "exr": "linear"}[fmt]
        proc = FrameProcessor(pipeline, device, encoding=encoding, dtype="float16" if opts.exr_half else "float32",
                              ref_white=opts.ref_white, peak_nits=opts.peak_nits, smoothing=opts.smoothing,
                              scene_cut=opts.scene_cut, slots=_SLOTS, tile=tile,
                              overlap=getattr(pipeline, "overlap", None) if tile else None)
        ow, oh = (w - w % 2, h - h % 2) if fmt != "exr" else (w, h)
        if fmt != "exr" and min(ow, oh) < _MIN_VIDEO_SIDE:
            raise VideoError(f"{src}: {w}x{h} is too small for HEVC video (libx265 needs {_MIN_VIDEO_SIDE}x"
                             f"{_MIN_VIDEO_SIDE} at least); write an EXR sequence instead (-f exr)")
        prim = int(vin.codec_context.color_primaries or 2)
        if prim not in _BT709_LIKE_PRIMARIES:
            log(f"{src.name}: its colour primaries are {_PRIMARY_NAMES.get(prim, f'code {prim}')}, not BT.709: "
                "converted as BT.709, so its colours will be off (convert it to BT.709 first, e.g. ffmpeg -i IN "
                "-vf colorspace=all=bt709 OUT)")
        if fmt == "exr":
            sink: Any = _ExrSink(pattern, container, opts.exr_half, opts.ref_white)
            partial = None
            if opts.audio and container.streams.audio:
                log(f"{src.name}: its audio is not kept (an EXR sequence holds frames only)")
        else:
            partial = temp[1]
            sink = _VideoSink(partial, container, opts, fmt, ow, oh, file=temp[0], rotation=rotation)
            for what in sink.transcoded:
                log(f"{src.name}: audio {what} transcoded to AAC for the {dst.suffix} output")
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


def _tiled_frame_bytes(fmt: str, half: bool) -> int:
    """Host bytes per pixel that a tiled video conversion keeps for whole frames: the decoded frames queued or
    held (``_QUEUED + 2``, 16-bit RGB at most: 6 bytes each), the four float32 network outputs the tiles write
    (48), the output slots (float32 12, half 6, 10-bit 4:2:0 3 bytes each) and the EXR writer's copy (12)."""
    out = {"exr": 6 if half else 12}.get(fmt, 3)
    return 6 * (_QUEUED + 2) + 48 + _SLOTS * out + 12


def _tile_for_memory(weights: Any, h: int, w: int, fmt: str, opts: VideoOptions, src: Path,
                     log: Callable[[str], None]) -> int | None:
    """The memory guard of a CPU conversion: None when a whole frame fits the budget, else the largest tile size
    whose tiled conversion fits (with a notice); MemoryError when even 128-pixel tiles do not fit, or when the
    tiles' PyTorch model is not installed."""
    from sitm_trt.runtime import memory

    ok, need, limit = memory.fits(weights, 1, h, w)
    if ok:
        return None
    frame_bytes = _tiled_frame_bytes(fmt, opts.exr_half)
    tile = memory.choose_tile(weights, h, w, frame_bytes=frame_bytes)
    whole = (f"{src}: {w}x{h} needs about {memory.format_bytes(need)} per frame in one piece, "
             f"{memory.format_bytes(limit)} available (SITM_TRT_MEMORY_LIMIT or --max-memory)")
    if tile is None:
        least = memory.fits(weights, 1, h, w, tiled=memory.TILES[-1], frame_bytes=frame_bytes)[1]
        raise MemoryError(f"{whole}, and about {memory.format_bytes(least)} even in {memory.TILES[-1]}-pixel tiles")
    try:
        import torch  # noqa: F401 - the tiles run the PyTorch model
    except ImportError:
        raise MemoryError(f"{whole}, and tiles run the PyTorch model: pip install 'sitm-trt[torch]'") from None
    log(f"{whole}: converting in {tile}-pixel tiles")
    return tile


def _discard(partial: Path | None, dst: Path, err: BaseException, failure: BaseException | None) -> NoReturn:
    """Finishing the output failed with ``err``: remove the partial file and raise what the caller should see:
    the earlier failure that stopped the conversion, else a write or mux error as a ``VideoError``, else ``err``."""
    if partial is not None:
        partial.unlink(missing_ok=True)
    if failure is not None:
        raise failure
    if isinstance(err, (OSError, _av().error.FFmpegError)):
        raise VideoError(f"{dst}: cannot write the output ({err}); nothing was written") from err
    raise err


def _run(container: Any, proc: FrameProcessor, sink: Any, opts: VideoOptions, fmt: str, src: Path, dst: Path,
         partial: Path | None, size: tuple[int, int], progress: bool, on_frame: Callable[[int], None] | None,
         log: Callable[[str], None]) -> VideoResult:
    from tqdm import tqdm

    vin = container.streams.video[0]
    audio = list(container.streams.audio) if (opts.audio and fmt != "exr") else []
    stop, stop_decode = threading.Event(), threading.Event()
    q_in: queue.Queue = queue.Queue(maxsize=_QUEUED)
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
    rate = _nominal_rate(container)
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
                    return  # stopped, not the end of the input
                if packet.stream.index != vin.index:
                    if packet.dts is not None and packet.size:
                        if not _put(q_in, ("audio", packet), stop_decode):
                            return
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
                    pts, last = _timing(frame, index, rate, period, vin.time_base, last)  # raw streams: made up
                    if pts is not None and pending["count"] and not emit_pending(pts):
                        return
                    rgb = _rgb(frame)
                    held.update(rgb=rgb, pts=pts)
                    if held["origin"] is None:
                        held["origin"] = pts
                    if not _put(q_in, ("video", rgb, pts, last), stop_decode):
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
            failure = err
            if isinstance(err, (OSError, av.error.FFmpegError)):  # the encoder or the muxer refused something
                failure = VideoError(f"{dst}: encoding failed: {err}")
                failure.__cause__ = err
            errors.append(failure)
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
    if fmt == "exr" and not written:  # no sequence.json and no stale-frame removal: an earlier run's frames stay
        if failure is not None:
            raise failure
        raise VideoError(f"{src}: no frame was converted; nothing was written")
    try:
        sink.close()
    except BaseException as err:
        _discard(partial, dst, err, failure)
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
            _discard(partial, dst, err, failure)
    if failure is not None:
        what = "interrupted" if isinstance(failure, KeyboardInterrupt) else f"stopped by an error ({failure})"
        log(f"{what}: {dst} holds the {written} frames converted before it")
        raise failure
    seconds = time.perf_counter() - t0
    return VideoResult(dst, fmt, int(written or 0), seconds, (written or 0) / seconds if seconds > 0 else 0.0,
                       size[0], size[1], max_cll, max_fall, list(proc.cuts))
