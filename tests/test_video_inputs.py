"""What `convert` makes of less common inputs (helper review of 2026-12-08): raw elementary streams (no
timestamps), audio that starts late, has 5.1 channels or a codec the container cannot hold, frames too small for
the encoder, wide-gamut sources, EXR patterns and outputs that drop the audio, and an interrupted run (which is not
a truncated input). Each against the file it produces, probed with PyAV."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from sitm_trt.media import video as V

from test_video import StubPipeline, make_clip, test_frames

av = pytest.importorskip("av")

FAST = V.VideoOptions(preset="ultrafast")


def convert(src, dst, notes=None, **kw):
    kw.setdefault("options", FAST)
    return V.convert(src, dst, pipeline=StubPipeline(), device="cpu", progress=False,
                     log=(notes.append if notes is not None else None), **kw)


def raw_hevc(path, n: int = 12, fps: int = 30, size=(48, 64)) -> None:
    """A raw HEVC elementary stream (``.hevc``): its frames carry no timestamps; the SPS says ``fps``."""
    out = av.open(str(path), "w", format="hevc")
    s = out.add_stream("libx265", rate=fps)
    s.height, s.width = size
    s.pix_fmt = "yuv420p"
    s.options = {"x265-params": "log-level=error"}
    for i, img in enumerate(test_frames(n, *size)):
        f = av.VideoFrame.from_ndarray(img, format="rgb24")
        f.pts = i
        for p in s.encode(f):
            out.mux(p)
    for p in s.encode(None):
        out.mux(p)
    out.close()


def with_audio(path, *, codec: str, layout: str, start: float, fps: int = 25, n: int = 10, container=None) -> None:
    """A clip with silent-ish ``codec`` audio of ``layout`` starting at ``start`` seconds."""
    out = av.open(str(path), "w", format=container)
    v = out.add_stream("libx264", rate=fps)
    v.width, v.height, v.pix_fmt = 64, 48, "yuv420p"
    a = out.add_stream(codec, rate=48000, layout=layout)
    for i, img in enumerate(test_frames(n)):
        f = av.VideoFrame.from_ndarray(img, format="rgb24")
        f.pts = i
        for p in v.encode(f):
            out.mux(p)
    channels = av.AudioLayout(layout).nb_channels
    t, step = int(start * 48000), 960
    fmt = "s16" if codec.startswith("pcm") else "fltp"
    while t < int((start + n / fps) * 48000):
        if fmt == "s16":
            af = av.AudioFrame.from_ndarray(np.zeros((1, step * channels), np.int16), format="s16", layout=layout)
        else:
            tone = (0.1 * np.sin(np.arange(t, t + step) * 0.05)).astype(np.float32)
            af = av.AudioFrame.from_ndarray(np.repeat(tone[None], channels, 0), format="fltp", layout=layout)
        af.sample_rate, af.pts, af.time_base = 48000, t, Fraction(1, 48000)
        for p in a.encode(af):
            out.mux(p)
        t += step
    for s in (v, a):
        for p in s.encode(None):
            out.mux(p)
    out.close()


def probe(path):
    """(video pts in seconds, sorted; video average rate; [(codec, layout, start seconds)] of the audio)."""
    with av.open(str(path)) as c:
        v = c.streams.video[0]
        times = sorted(float(p.pts * v.time_base) for p in c.demux(v) if p.pts is not None)
        rate = v.average_rate
    audio = []
    with av.open(str(path)) as c:
        for a in c.streams.audio:
            starts = [p.pts for p in c.demux(a) if p.pts is not None]
            audio.append((a.codec_context.name, a.codec_context.layout.name, float(min(starts) * a.time_base)))
    return times, rate, audio


def test_a_raw_stream_keeps_its_frame_rate(tmp_path):
    """Raw streams have no timestamps and the demuxer's rate is a default 25: the output plays at the bitstream's
    30 fps (it played 30 frames in 40 microseconds before)."""
    raw_hevc(tmp_path / "in.hevc", n=12, fps=30)
    convert(tmp_path / "in.hevc", tmp_path / "out.mp4")
    times, rate, _ = probe(tmp_path / "out.mp4")
    assert rate == 30 and len(times) == 12
    np.testing.assert_allclose(times, np.arange(12) / 30, atol=1e-3)
    frames = [t for _, _, t in V.read_frames(tmp_path / "in.hevc")]  # the same times, as convert sees them
    np.testing.assert_allclose(frames, np.arange(12) / 30, atol=1e-3)
    res = convert(tmp_path / "in.hevc", tmp_path / "seq", options=V.VideoOptions(format="exr"))
    import json
    meta = json.loads((tmp_path / "seq" / "sequence.json").read_text())
    assert res.frames == 12 and meta["rate"] == "30" and all(f["pts"] is not None for f in meta["frames"])
    np.testing.assert_allclose([f["time"] for f in meta["frames"]], np.arange(12) / 30, atol=1e-3)


def test_transcoded_audio_keeps_its_start_and_channels(tmp_path):
    """5.1 PCM starting at 0.5 s: into MP4 it becomes 5.1 AAC starting at 0.5 s (less the AAC encoder's
    1024-sample priming), with a notice; MOV holds the PCM as it is."""
    with_audio(tmp_path / "in.mov", codec="pcm_s16le", layout="5.1", start=0.5)
    notes: list[str] = []
    convert(tmp_path / "in.mov", tmp_path / "out.mp4", notes)
    (codec, layout, start), = probe(tmp_path / "out.mp4")[2]
    assert (codec, layout) == ("aac", "5.1") and abs(start - 0.5) <= 1024 / 48000 + 1e-3, start
    assert any("audio pcm_s16le (5.1) transcoded to AAC for the .mp4 output" in n for n in notes), notes
    notes.clear()
    convert(tmp_path / "in.mov", tmp_path / "out.mov", notes)
    assert probe(tmp_path / "out.mov")[2] == [("pcm_s16le", "5.1", 0.5)] and not any("AAC" in n for n in notes)


def test_opus_into_mov_is_transcoded(tmp_path):
    """MOV cannot hold Opus (the muxer refused it with a traceback before): it is transcoded to AAC."""
    if "libopus" not in av.codecs_available and "opus" not in av.codecs_available:
        pytest.skip("no Opus encoder in this FFmpeg build")
    codec = "libopus" if "libopus" in av.codecs_available else "opus"
    with_audio(tmp_path / "in.mkv", codec=codec, layout="stereo", start=0.0)
    notes: list[str] = []
    convert(tmp_path / "in.mkv", tmp_path / "out.mov", notes)
    assert probe(tmp_path / "out.mov")[2][0][:2] == ("aac", "stereo")
    assert any("audio opus (stereo) transcoded to AAC for the .mov output" in n for n in notes), notes


def test_refusals_before_any_work(tmp_path):
    make_clip(tmp_path / "tiny.mp4", test_frames(2, 8, 8), codec="ffv1", audio=False)
    make_clip(tmp_path / "in.mp4", test_frames(2), audio=False)
    with pytest.raises(V.VideoError, match=r"8x8 is too small for HEVC video \(libx265 needs 16x16"):
        convert(tmp_path / "tiny.mp4", tmp_path / "tiny_out.mp4")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.mp4", "tiny.mp4"]  # no temporary left
    convert(tmp_path / "tiny.mp4", tmp_path / "tiny_seq", options=V.VideoOptions(format="exr"))  # EXR can hold it
    for pattern, why in (("seq/%06d", "must end in .exr"), ("seq/%s.exr", "one integer field"),
                         ("seq/%d_%d.exr", "one integer field")):
        with pytest.raises(V.VideoError, match=why):
            convert(tmp_path / "in.mp4", tmp_path / pattern)
    assert not (tmp_path / "seq").exists()


def test_an_encoder_or_muxer_failure_is_a_video_error(tmp_path, monkeypatch):
    """A failure in the encode thread (the encoder or the muxer refusing a frame, a full disk) ends as a
    VideoError naming the output (it was a raw FFmpeg traceback), and nothing is left behind."""
    from sitm_trt.media.video import sinks

    make_clip(tmp_path / "in.mp4", test_frames(4), audio=False)

    def refuse(self, *args):
        raise av.error.ArgumentError(22, "Invalid argument", "avcodec_send_frame")

    monkeypatch.setattr(sinks._VideoSink, "write_video", refuse)
    with pytest.raises(V.VideoError, match=r"out.mp4: encoding failed: .*Invalid argument") as info:
        convert(tmp_path / "in.mp4", tmp_path / "out.mp4")
    assert isinstance(info.value.__cause__, av.error.FFmpegError)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.mp4"]


def test_notices_for_wide_gamut_input_and_dropped_audio(tmp_path):
    clip = tmp_path / "p3.mp4"
    make_clip(clip, test_frames(2), audio=True)
    with av.open(str(clip)) as c:  # retag the stream's primaries as Display P3 (12) without re-encoding
        out = av.open(str(tmp_path / "p3tag.mkv"), "w")
        m = {s.index: out.add_stream_from_template(s) for s in c.streams}
        m[c.streams.video[0].index].codec_context.color_primaries = 12
        for p in c.demux():
            if p.dts is None:
                continue
            p.stream = m[p.stream.index]
            out.mux(p)
        out.close()
    notes: list[str] = []
    with av.open(str(tmp_path / "p3tag.mkv")) as c:
        tagged = c.streams.video[0].codec_context.color_primaries == 12
    convert(tmp_path / "p3tag.mkv", tmp_path / "seq", notes, options=V.VideoOptions(format="exr"))
    assert tagged  # the template carried the tag
    assert any("colour primaries are Display P3, not BT.709" in n for n in notes), notes
    assert any("its audio is not kept (an EXR sequence holds frames only)" in n for n in notes), notes
    notes.clear()
    convert(clip, tmp_path / "plain.mp4", notes)  # BT.709: no notice
    assert not any("primaries" in n or "audio" in n for n in notes), notes


def test_a_stopped_run_is_not_called_truncated(tmp_path):
    """Stopping early (Ctrl-C, an error, --max-frames) is not the input ending early: no "truncated?" notice."""
    make_clip(tmp_path / "in.mp4", test_frames(60), audio=False)  # longer than the decoder runs ahead

    def stop(i):
        if i == 2:
            raise KeyboardInterrupt

    notes: list[str] = []
    with pytest.raises(KeyboardInterrupt):
        convert(tmp_path / "in.mp4", tmp_path / "out.mp4", notes, on_frame=stop)
    assert not any("truncated" in n for n in notes) and any("interrupted" in n for n in notes), notes
    notes.clear()
    convert(tmp_path / "in.mp4", tmp_path / "out2.mp4", notes,
            options=V.VideoOptions(preset="ultrafast", max_frames=3))
    assert not any("truncated" in n for n in notes), notes
