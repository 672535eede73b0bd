"""sitm_trt.media.video: decode -> pipeline -> HEVC HDR10/HLG or EXR, checked by decoding the output: frame count,
timestamps, colour tags, HDR metadata, audio, pixel values against the image API; temporal smoothing and
scene cuts; Ctrl-C and errors. Clips are generated here (tiny, no downloads)."""

from __future__ import annotations

import json
import math
import re
import struct
import types
from fractions import Fraction

import numpy as np
import pytest
import torch

from sitm_trt.media import transfer as T
from sitm_trt.media import video as V
from sitm_trt.media.video import hevc_sei, sinks

from conftest import CTRL_C_CLI

av = pytest.importorskip("av")


# ---------------------------------------------------------------------------------------------------------
# Helpers: clips and a cheap stand-in for the network
# ---------------------------------------------------------------------------------------------------------


def test_frames(n: int, h: int = 48, w: int = 64, seed: int = 0) -> list[np.ndarray]:
    """Smooth colour gradients and a moving block: content whose decode error is small and measurable."""
    rng = np.random.default_rng(seed)
    frames = []
    y, x = np.mgrid[0:h, 0:w]
    for i in range(n):
        img = np.stack([x * 255 / max(w - 1, 1), np.full((h, w), 40.0 + 20 * i), y * 255 / max(h - 1, 1)], -1)
        img[4:12, 4 + 2 * i : 12 + 2 * i] = (230, 200, 60)
        frames.append(np.clip(img + rng.normal(0, 1, img.shape), 0, 255).astype(np.uint8))
    return frames


test_frames.__test__ = False  # a helper, not a test


def make_clip(path, frames, *, codec: str = "libx264", pts=None, fps: int = 24, audio: bool = True,
              trc: int = 1) -> list[float]:
    """Write ``frames`` (RGB uint8) as a BT.709 (limited range) clip with ``pts`` in 1/fps units and an AAC
    tone; returns the frame times in seconds. ``codec="ffv1"`` stores RGB losslessly (any size)."""
    out = av.open(str(path), "w")
    h, w = frames[0].shape[:2]
    s = out.add_stream(codec, rate=fps)
    s.width, s.height = w, h
    s.time_base = Fraction(1, fps)
    s.codec_context.time_base = Fraction(1, fps)
    if codec == "ffv1":
        s.pix_fmt = "bgr0"
    else:
        s.pix_fmt = "yuv420p"
        cc = s.codec_context
        cc.colorspace, cc.color_primaries, cc.color_trc, cc.color_range = 1, 1, trc, 1
        s.options = {"qp": "0", "preset": "ultrafast"}
    a = None
    if audio:
        a = out.add_stream("aac", rate=48000)
        a.layout = "mono"
    pts = list(range(len(frames))) if pts is None else pts
    for img, p in zip(frames, pts):
        f = av.VideoFrame.from_ndarray(img, format="rgb24")
        if codec != "ffv1":  # RGB -> Y'CbCr with the BT.709 matrix the stream is tagged with
            f = f.reformat(format="yuv420p", src_colorspace=1, dst_colorspace=1, dst_color_range=1)
            f.colorspace, f.color_range = 1, 1
        f.pts = p
        for packet in s.encode(f):
            out.mux(packet)
    for packet in s.encode(None):
        out.mux(packet)
    if a is not None:
        total, t = int(48000 * (pts[-1] + 1) / fps), 0
        while t < total:
            tone = (0.2 * np.sin(np.arange(t, t + 1024) * 2 * np.pi * 440 / 48000)).astype(np.float32)
            af = av.AudioFrame.from_ndarray(tone[None], format="fltp", layout="mono")
            af.sample_rate, af.pts = 48000, t
            for packet in a.encode(af):
                out.mux(packet)
            t += 1024
        for packet in a.encode(None):
            out.mux(packet)
    out.close()
    return [p / fps for p in pts]


class StubBackend:
    """A cheap stand-in for the network with the backend interface (stride, dtype, run): masks and images from
    the input, and curve coefficients driven by the frame's mean (``gain`` x its change), so noise makes the
    global state jitter the way an over-sensitive network's would."""

    name, stride, dtype = "stub", 4, "float32"

    def __init__(self, gain: float = 0.0, center: float = 0.5):
        self.gain, self.center = gain, center

    def run(self, inputs, stream=0):
        with torch.inference_mode():
            image = torch.from_dlpack(inputs[0])
            luma = image.mean(1, keepdim=True)
            masks = torch.cat([luma, 1 - luma, torch.full_like(luma, 0.5)], 1)
            masks = masks / masks.sum(1, keepdim=True)
            g = image.mean(dim=(1, 2, 3))
            a1 = (1.0 + self.gain * (g - self.center)).clamp_min(0.05)
            coef = torch.stack([torch.zeros_like(g), a1, torch.full_like(g, 0.5), torch.full_like(g, 1.5)], 1)
            return (image * 2).contiguous(), (image * 0.5).contiguous(), masks.contiguous(), coef.contiguous()


class StubPipeline:
    def __init__(self, gain: float = 0.0, center: float = 0.5):
        self.backend = StubBackend(gain, center)
        self.weights = types.SimpleNamespace(fusion="paper")  # the stub's masks and coefficients are Eq. 7-8's

    def backend_for(self, device):
        return self.backend


@pytest.fixture(scope="module")
def weights(tiny_weights_path):
    return tiny_weights_path


def decode_video(path):
    """Frames of the first video stream: (code values (H*3/2, W), time, frame), and the stream."""
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        frames = [(f.to_ndarray(), float(f.time), f) for f in c.decode(s)]
        return frames, s


def side_data(frame) -> dict:
    # by position: PyAV 18.1.1 made the container a plain Mapping (iterating yields the types, not the entries)
    entries = [frame.side_data[i] for i in range(len(frame.side_data))]
    return {sd.type.name: bytes(sd) for sd in entries}


def audio_packets(path) -> list[bytes]:
    with av.open(str(path)) as c:
        return [bytes(p) for p in c.demux(c.streams.audio[0]) if p.size]


# ---------------------------------------------------------------------------------------------------------
# Decoding
# ---------------------------------------------------------------------------------------------------------


def test_read_frames_decodes_rgb_exactly_and_bt709_yuv_closely(tmp_path):
    frames = test_frames(3, 49, 65)
    make_clip(tmp_path / "rgb.mkv", frames, codec="ffv1", audio=False)
    got = list(V.read_frames(tmp_path / "rgb.mkv"))
    assert len(got) == 3
    for want, (rgb, _, _) in zip(frames, got):
        np.testing.assert_array_equal(rgb, want)  # RGB source: no matrix, exact
    frames = test_frames(3)
    make_clip(tmp_path / "yuv.mp4", frames, audio=False)
    for want, (rgb, _, _) in zip(frames, V.read_frames(tmp_path / "yuv.mp4")):
        err = np.abs(rgb.astype(int) - want)
        # 4:2:0 chroma and 8-bit rounding only: the BT.601 matrix instead of BT.709 would be ~10 levels off
        assert rgb.dtype == np.uint8 and err.mean() < 2.5, err.mean()


# ---------------------------------------------------------------------------------------------------------
# HDR10 end to end with the real network, against the image API
# ---------------------------------------------------------------------------------------------------------


def test_hdr10_matches_image_api_with_metadata_timestamps_and_audio(tmp_path, weights):
    from sitm_trt.runtime.pipeline import Pipeline

    frames = test_frames(4)
    times = make_clip(tmp_path / "in.mp4", frames, pts=[3, 4, 6, 7])  # late start, variable frame rate
    out = tmp_path / "out.mp4"
    pipe = Pipeline(weights)
    opts = V.VideoOptions(lossless=True, preset="ultrafast", smoothing=0)
    res = V.convert(tmp_path / "in.mp4", out, pipeline=pipe, options=opts, device="cpu", progress=False)
    assert res.frames == 4 and res.format == "hdr10" and (res.width, res.height) == (64, 48)
    assert not list(tmp_path.glob(".*"))  # no partial or temporary file left

    decoded, stream = decode_video(out)
    cc = stream.codec_context
    assert cc.name == "hevc" and cc.profile == "Main 10" and cc.format.name == "yuv420p10le"
    assert (cc.color_primaries, cc.color_trc, cc.colorspace, cc.color_range) == (9, 16, 9, 1)  # container tags
    assert len(decoded) == 4
    np.testing.assert_allclose([t for _, t, _ in decoded], times, atol=1e-3)

    # Pixel values: the image API's HDR, encoded by the reference (PQ, BT.2020, 4:2:0, narrow range);
    # x265 is lossless here, so the decoded code values are the post kernel's.
    light = []
    for (codes, _, frame), (rgb, _, _) in zip(decoded, V.read_frames(tmp_path / "in.mp4")):
        assert (frame.color_primaries, frame.color_trc, frame.colorspace, frame.color_range) == (9, 16, 9, 1)  # VUI
        hdr = pipe(rgb, layout="hwc").astype(np.float64)
        want = T.yuv420p(T.encode(hdr, "pq", "bt2020", 203.0, 1000.0), "bt2020", "limited", 10)
        diff = np.abs(codes.reshape(-1).astype(np.int64) - want)
        assert diff.max() <= 1 and (diff == 0).mean() > 0.98
        light.append(T.light_stats(hdr, "pq", "bt2020", 203.0, 1000.0))

    # HDR10 static metadata on every keyframe: mastering display (BT.709 primaries, D65, 1000 / 0.0001
    # cd/m2) and MaxCLL / MaxFALL measured on the output (CTA-861.3).
    sd = side_data(decoded[0][2])
    mdcv = struct.unpack("<20i2i", sd["MASTERING_DISPLAY_METADATA"][:88])  # AVRationals, R, G, B order
    prim = [mdcv[i] / mdcv[i + 1] for i in range(0, 16, 2)]
    np.testing.assert_allclose(prim, [0.64, 0.33, 0.30, 0.60, 0.15, 0.06, 0.3127, 0.3290], atol=2e-5)
    assert mdcv[16] / mdcv[17] == pytest.approx(0.0001) and mdcv[18] / mdcv[19] == pytest.approx(1000.0)
    assert mdcv[20] == 1 and mdcv[21] == 1  # has_primaries, has_luminance
    max_cll, max_fall = struct.unpack("<2I", sd["CONTENT_LIGHT_LEVEL"])
    assert (max_cll, max_fall) == (res.max_cll, res.max_fall)
    assert abs(max_cll - math.ceil(max(m for m, _ in light))) <= 1
    assert abs(max_fall - math.ceil(max(f for _, f in light))) <= 1
    assert 0 < max_fall <= max_cll <= 1000

    # Audio is copied packet for packet.
    assert audio_packets(out) == audio_packets(tmp_path / "in.mp4")


# ---------------------------------------------------------------------------------------------------------
# HLG, odd sizes, EXR (the stand-in network)
# ---------------------------------------------------------------------------------------------------------


def test_hlg_odd_size_is_cropped_and_tagged(tmp_path):
    frames = test_frames(3, 49, 65)
    times = make_clip(tmp_path / "in.mkv", frames, codec="ffv1", audio=False)
    notes = []
    res = V.convert(tmp_path / "in.mkv", tmp_path / "out.mkv", pipeline=StubPipeline(), device="cpu", progress=False,
                    options=V.VideoOptions(format="hlg", lossless=True, preset="ultrafast"), log=notes.append)
    assert (res.width, res.height) == (64, 48) and res.frames == 3 and "cropped to 64x48" in notes[0]
    decoded, stream = decode_video(tmp_path / "out.mkv")
    cc = stream.codec_context
    assert (cc.color_primaries, cc.color_trc, cc.colorspace, cc.color_range) == (9, 18, 9, 1)
    assert (cc.width, cc.height) == (64, 48) and len(decoded) == 3
    np.testing.assert_allclose([t for _, t, _ in decoded], times, atol=1e-3)
    assert "CONTENT_LIGHT_LEVEL" not in side_data(decoded[0][2])  # HLG carries no static metadata
    # The code values are the stand-in's HDR (cropped) through the reference HLG encoding.
    hdr = V.hdr_frames(StubPipeline(), frames, smoothing=0.25)
    for (codes, _, _), h in zip(decoded, hdr):
        want = T.yuv420p(T.encode(h[:48, :64], "hlg", "bt2020", 203.0, 1000.0), "bt2020", "limited", 10)
        assert np.abs(codes.reshape(-1).astype(np.int64) - want).max() <= 1


def test_exr_sequence(tmp_path):
    from sitm_trt.media import io

    frames = test_frames(3)
    times = make_clip(tmp_path / "in.mp4", frames)
    res = V.convert(tmp_path / "in.mp4", tmp_path / "seq", pipeline=StubPipeline(), device="cpu", progress=False)
    assert res.format == "exr" and res.frames == 3
    meta = json.loads((tmp_path / "seq" / "sequence.json").read_text())
    assert [f["file"] for f in meta["frames"]] == [f"frame_{i:06d}.exr" for i in range(3)]
    np.testing.assert_allclose([f["time"] for f in meta["frames"]], times, atol=1e-3)
    want = V.hdr_frames(StubPipeline(), [rgb for rgb, _, _ in V.read_frames(tmp_path / "in.mp4")], smoothing=0.25)
    for i, w in enumerate(want):
        got = io.read_hdr(tmp_path / "seq" / f"frame_{i:06d}.exr")
        np.testing.assert_allclose(got, w.astype(np.float16).astype(np.float32), rtol=0, atol=0)  # half, exact
    with pytest.raises(V.VideoError, match="is not empty"):
        V.convert(tmp_path / "in.mp4", tmp_path / "seq", pipeline=StubPipeline(), device="cpu", progress=False)
    res = V.convert(tmp_path / "in.mp4", tmp_path / "p" / "f%03d.exr", pipeline=StubPipeline(), device="cpu",
                    progress=False, options=V.VideoOptions(max_frames=2, exr_half=False))
    assert sorted(p.name for p in (tmp_path / "p").iterdir()) == ["f000.exr", "f001.exr", "sequence.json"]


def _zero_video_data(src, dst) -> None:
    """``src`` (an .mp4) with the payload of its ``mdat`` box zeroed: it opens, declares its frames and size, and
    no frame decodes."""
    data = bytearray(src.read_bytes())
    i = data.find(b"mdat")
    size = int.from_bytes(data[i - 4:i], "big")
    data[i + 4:i - 4 + size] = bytes(size - 8)
    dst.write_bytes(bytes(data))


def test_exr_sequence_without_a_decoded_frame_writes_nothing_and_keeps_an_earlier_run(tmp_path):
    make_clip(tmp_path / "in.mp4", test_frames(3), audio=False)
    _zero_video_data(tmp_path / "in.mp4", tmp_path / "zero.mp4")
    run = dict(pipeline=StubPipeline(), device="cpu", progress=False)
    with pytest.raises(V.VideoError, match="zero.mp4: no frame was converted; nothing was written"):
        V.convert(tmp_path / "zero.mp4", tmp_path / "a" / "seq", **run)
    assert not (tmp_path / "a").exists()  # the folders it made are gone again
    V.convert(tmp_path / "in.mp4", tmp_path / "seq", **run)
    before = {p.name: p.read_bytes() for p in (tmp_path / "seq").iterdir()}
    assert len(before) == 4
    with pytest.raises(V.VideoError, match="no frame was converted"):  # it removed the earlier frames once
        V.convert(tmp_path / "zero.mp4", tmp_path / "seq", overwrite=True, **run)
    assert {p.name: p.read_bytes() for p in (tmp_path / "seq").iterdir()} == before
    (tmp_path / "text.jpg").write_text("not a picture, not a video")  # FFmpeg probes it as a JPEG of no size
    with pytest.raises(V.VideoError, match=r"text.jpg: (no decodable video|cannot open as a video)"):
        V.convert(tmp_path / "text.jpg", tmp_path / "t.mp4", **run)
    assert not (tmp_path / "t.mp4").exists()


def test_frame_over_the_memory_budget_is_converted_in_tiles(tmp_path, weights, monkeypatch):
    """A budget that a whole 256x384 frame exceeds but 128-pixel tiles fit: the EXR sequence (lossless float32)
    equals the whole-frame conversion within the seam error of docs/tiling.md (float rounding), with the
    temporal smoothing on; a budget too small even for tiles is refused before any work."""
    from sitm_trt.media import io
    from sitm_trt.media.video import conversion
    from sitm_trt.runtime import memory
    from sitm_trt.runtime.pipeline import Pipeline

    make_clip(tmp_path / "in.mp4", test_frames(3, h=256, w=384), audio=False)
    pipe = Pipeline(weights, backend="torch")  # both runs on the same model: the difference is the tiles
    opts = V.VideoOptions(exr_half=False, smoothing=0.25)
    monkeypatch.setenv("SITM_TRT_MEMORY_LIMIT", "0")  # no guard: the whole frame
    V.convert(tmp_path / "in.mp4", tmp_path / "whole", pipeline=pipe, device="cpu", progress=False, options=opts)
    frame_bytes = conversion._tiled_frame_bytes("exr", half=False)
    ok, need, _ = memory.fits(pipe.weights, 1, 256, 384, tiled=128, frame_bytes=frame_bytes)
    assert memory.fits(pipe.weights, 1, 256, 384)[1] > need  # whole frames do not fit this budget
    monkeypatch.setenv("SITM_TRT_MEMORY_LIMIT", str(need))
    notices = []
    res = V.convert(tmp_path / "in.mp4", tmp_path / "tiled", pipeline=pipe, device="cpu", progress=False,
                    options=opts, log=notices.append)
    assert res.frames == 3 and any("converting in 128-pixel tiles" in m for m in notices), notices
    for i in range(3):
        want = io.read_hdr(tmp_path / "whole" / f"frame_{i:06d}.exr")
        got = io.read_hdr(tmp_path / "tiled" / f"frame_{i:06d}.exr")
        assert want.shape == got.shape == (256, 384, 3) and want.max() > 0.1
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    monkeypatch.setenv("SITM_TRT_MEMORY_LIMIT", str(need - 1))
    with pytest.raises(MemoryError, match="even in 128-pixel tiles"):
        V.convert(tmp_path / "in.mp4", tmp_path / "refused", pipeline=pipe, device="cpu", progress=False,
                  options=opts)
    assert not list((tmp_path / "refused").glob("*.exr"))


def test_tiled_frames_encode_pq_like_whole_frames(weights):
    """The tiled frame loop feeds the same post kernel: PQ 4:2:0 code values of an odd-sized frame (cropped to
    even sizes) within one code of the whole frame's, and the same light statistics (MaxCLL/MaxFALL terms)."""
    from sitm_trt.media.video.frames import FrameProcessor
    from sitm_trt.runtime.pipeline import Pipeline

    pipe = Pipeline(weights, backend="torch")
    frames = test_frames(3, h=201, w=331)
    outs = {}
    for tile in (None, 128):
        proc = FrameProcessor(pipe, "cpu", encoding="pq", smoothing=0.25, slots=1, tile=tile)
        outs[tile] = []
        for i, f in enumerate(frames):
            done = proc(f, i / 24)
            done.wait()
            outs[tile].append((np.array(done.out), np.array(done.stats)))
            proc.release(done)
    for (want, want_stats), (got, got_stats) in zip(outs[None], outs[128]):
        assert want.shape == got.shape == (T.yuv420p_size(200, 330),)
        assert np.abs(want.astype(np.int64) - got).max() <= 1 and (want != got).mean() < 1e-3
        np.testing.assert_allclose(got_stats, want_stats, rtol=1e-5)


# ---------------------------------------------------------------------------------------------------------
# Ctrl-C and errors leave a playable file
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("exc", [KeyboardInterrupt, RuntimeError])
def test_interrupt_or_error_leaves_a_playable_file(tmp_path, exc):
    make_clip(tmp_path / "in.mp4", test_frames(8))

    def stop(i):
        if i == 3:
            raise exc("stop here")

    notes = []
    with pytest.raises(exc):
        V.convert(tmp_path / "in.mp4", tmp_path / "out.mp4", pipeline=StubPipeline(), device="cpu", progress=False,
                  options=V.VideoOptions(preset="ultrafast"), on_frame=stop, log=notes.append)
    decoded, _ = decode_video(tmp_path / "out.mp4")
    assert len(decoded) == 4  # frames 0..3 were enqueued before the stop
    assert "CONTENT_LIGHT_LEVEL" in side_data(decoded[0][2])
    assert "holds the 4 frames" in notes[-1]
    assert not list(tmp_path.glob(".*"))


def test_clear_errors(tmp_path):
    pipe = StubPipeline()
    with pytest.raises(V.VideoError, match="no such file"):
        V.convert(tmp_path / "missing.mp4", tmp_path / "o.mp4", pipeline=pipe, progress=False)
    (tmp_path / "text.mp4").write_text("not a video")
    with pytest.raises(V.VideoError, match="cannot open as a video"):
        V.convert(tmp_path / "text.mp4", tmp_path / "o.mp4", pipeline=pipe, progress=False)
    make_clip(tmp_path / "pq.mp4", test_frames(1), trc=16, audio=False)
    with pytest.raises(V.VideoError, match="already HDR"):
        V.convert(tmp_path / "pq.mp4", tmp_path / "o.mp4", pipeline=pipe, progress=False)
    make_clip(tmp_path / "in.mp4", test_frames(1), audio=False)
    with pytest.raises(V.VideoError, match="needs a .mp4, .mov, .mkv file name"):
        V.convert(tmp_path / "in.mp4", tmp_path / "o.avi", pipeline=pipe, progress=False)
    (tmp_path / "exists.mp4").write_bytes(b"x")
    with pytest.raises(V.VideoError, match="exists"):
        V.convert(tmp_path / "in.mp4", tmp_path / "exists.mp4", pipeline=pipe, progress=False)
    with pytest.raises(V.VideoError, match="encoder libnope is not in this FFmpeg build"):
        sinks._check_encoder("libnope")
    with pytest.raises(ValueError, match="ref_white"):
        V.VideoOptions(ref_white=2000).check()


# ---------------------------------------------------------------------------------------------------------
# Temporal stability
# ---------------------------------------------------------------------------------------------------------


def test_scene_cut_detector():
    clip = V.static_noisy_clip(frames=10, noise=4.0)
    other = np.ascontiguousarray(clip[:, ::-1, ::-1] // 2)  # another scene: flipped and darker
    det = V.SceneCutDetector()
    cuts = [i for i, f in enumerate(np.concatenate([clip, other])) if det(f)]
    assert cuts == [10]
    det = V.SceneCutDetector()
    fade = [np.clip(clip[0] * (1 - i / 40), 0, 255).astype(np.uint8) for i in range(10)]  # gradual: no cut
    assert not any(det(f) for f in fade)


def test_smoothing_reduces_flicker_and_resets_at_cuts():
    clip = V.static_noisy_clip(frames=24, noise=3.0)
    pipe = StubPipeline(gain=1500.0, center=float(clip.mean() / 255))  # global state jitters with the noise
    raw = V.hdr_frames(pipe, clip, fps=24, smoothing=0)
    smooth = V.hdr_frames(pipe, clip, fps=24, smoothing=0.25)
    f_raw, f_smooth = V.flicker(raw), V.flicker(smooth)
    assert f_smooth < 0.5 * f_raw, (f_raw, f_smooth)
    # A cut resets the average: the first frame of the new scene is the unsmoothed result.
    other = np.ascontiguousarray(clip[:, ::-1, ::-1])  # another scene (upside down), as bright
    both = np.concatenate([clip[:8], other[:4]])
    raw = V.hdr_frames(pipe, both, smoothing=0)
    smooth = V.hdr_frames(pipe, both, smoothing=0.25)
    np.testing.assert_array_equal(smooth[8], raw[8])
    assert not np.array_equal(smooth[9], raw[9])
    np.testing.assert_array_equal(smooth[0], raw[0])


def test_coef_smoother_is_frame_rate_independent():
    c = [torch.tensor([[0.0, 1.0, 0.0, 0.0]]), torch.tensor([[0.0, 2.0, 0.0, 0.0]])]
    a = V.CoefSmoother(0.5)
    a(c[0], 0.0)
    one_step = a(c[1], 0.1).clone()
    b = V.CoefSmoother(0.5)
    b(c[0], 0.0)
    b(c[1], 0.05)
    two_steps = b(c[1], 0.1)
    torch.testing.assert_close(one_step, two_steps)  # exp(-0.1/tau) = exp(-0.05/tau)^2
    assert one_step[0, 1].item() == pytest.approx(2 - math.exp(-0.1 / 0.5))
    assert V.CoefSmoother(0)(c[1], 0.0) is c[1]


def test_coef_smoother_without_torch_matches_the_recurrence():
    """NumPy coefficients (as a torch-free TensorRT deployment has them, float16 here): the extension's ema
    kernel against the recurrence written out in float64; a cut and a shape change reset the state."""
    rng = np.random.default_rng(3)
    coefs = [rng.normal(size=(1, 3, 4)).astype(np.float16) for _ in range(5)]
    times = [0.0, 0.04, 0.08, 0.2, 0.24]
    sm = V.CoefSmoother(0.25)
    want = None
    for i, (c, t) in enumerate(zip(coefs, times)):
        got = sm(c, t, cut=(i == 3))
        assert isinstance(got, np.ndarray) and got.dtype == np.float32 and got.shape == (1, 3, 4)
        if i in (0, 3):
            want = c.astype(np.float64)
        else:
            a = math.exp(-(t - times[i - 1]) / 0.25)
            want = a * want + (1 - a) * c.astype(np.float64)
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(sm(coefs[0][:, 0], 0.3), coefs[0][:, 0].astype(np.float32))  # (1, 4): reset


# ---------------------------------------------------------------------------------------------------------
# SEI bytes
# ---------------------------------------------------------------------------------------------------------


def unescape(nal: bytes) -> bytes:
    out, zeros = bytearray(), 0
    for b in nal:
        if zeros >= 2 and b == 3:
            zeros = 0
            continue
        out.append(b)
        zeros = zeros + 1 if b == 0 else 0
    return bytes(out)


def test_sei_nal_and_payloads():
    md = V.mastering_display_sei(T.PRIMARIES["bt2020"], T.WHITE_D65, 1000.0, 0.0001)
    # ST 2086 as HEVC carries it: G, B, R, white in 0.00002 units; max, min in 0.0001 cd/m2
    assert struct.unpack(">8H2I", md) == (8500, 39850, 6550, 2300, 35400, 14600, 15635, 16450, 10000000, 1)
    cll = V.content_light_level_sei(0, 1)  # 00 00 00 01: needs emulation prevention
    nal = hevc_sei._sei_nal([(137, md), (144, cll)])
    assert nal[:2] == b"\x4e\x01"  # prefix SEI, layer 0, temporal id 1
    assert b"\x00\x00\x00" not in nal and b"\x00\x00\x01" not in nal
    rbsp = unescape(nal[2:])
    assert rbsp == bytes([137, 24]) + md + bytes([144, 4]) + cll + b"\x80"
    au = b"".join(len(n).to_bytes(4, "big") + n for n in [b"\x40\x01vps", b"\x02\x01slice"])  # VPS, TRAIL_R
    got = hevc_sei._insert_before_vcl(au, nal, 4)
    assert got == au[:9] + len(nal).to_bytes(4, "big") + nal + au[9:]


def test_sigint_leaves_a_playable_file(tmp_path, weights):
    """A real Ctrl-C (SIGINT to the sitm-trt process) while it converts: exit status 130, a closed file with
    the frames converted so far and its HDR10 metadata, no temporary file left."""
    import signal
    import subprocess
    import sys
    import threading
    import time

    # long enough that the conversion cannot finish between the progress line and the signal on a fast machine
    make_clip(tmp_path / "in.mp4", test_frames(600), audio=False)
    out = tmp_path / "out.mp4"
    args = ["video", str(tmp_path / "in.mp4"), str(out), "--weights", str(weights), "--device", "cpu",
            "--preset", "ultrafast"]
    cmd = [*CTRL_C_CLI, *args]  # the child takes Ctrl-C as from a terminal, whatever this process holds
    err: list[str] = []
    with subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True) as proc:
        reader = threading.Thread(target=lambda: err.extend(iter(lambda: proc.stderr.read(1), "")), daemon=True)
        reader.start()
        deadline = time.monotonic() + 120
        def converted() -> int:  # the progress bar's latest "N/600"
            counts = re.findall(r"(\d+)/600", "".join(err))
            return int(counts[-1]) if counts else 0

        while converted() < 2 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, "".join(err)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=120) == 130
        reader.join(timeout=10)
    text = "".join(err)
    assert "interrupted" in text and "holds the" in text
    decoded, _ = decode_video(out)
    assert 2 <= len(decoded) < 600
    assert "CONTENT_LIGHT_LEVEL" in side_data(decoded[0][2])
    assert not list(tmp_path.glob(".*"))


@pytest.mark.gpu
def test_cuda_path_matches_cpu(tmp_path):
    """Pinned buffers, async copies and per-frame events on the GPU give the CPU's code values."""
    frames = test_frames(6)
    make_clip(tmp_path / "in.mp4", frames, audio=False)
    opts = V.VideoOptions(lossless=True, preset="ultrafast")
    outs = {}
    for device in ("cpu", "cuda:0"):
        dst = tmp_path / f"{device.replace(':', '')}.mkv"
        res = V.convert(tmp_path / "in.mp4", dst, pipeline=StubPipeline(gain=5.0), device=device, progress=False,
                        options=opts)
        outs[device] = (decode_video(dst)[0], res)
    (cpu, rc), (gpu, rg) = outs["cpu"], outs["cuda:0"]
    assert len(cpu) == len(gpu) == 6 and abs(rc.max_cll - rg.max_cll) <= 1 and abs(rc.max_fall - rg.max_fall) <= 1
    for (a, ta, _), (b, tb, _) in zip(cpu, gpu):
        assert ta == tb and np.abs(a.astype(np.int64) - b).max() <= 1  # float32 on two devices: rounding only
    # the linear path with float16 output, frame by frame
    want = V.hdr_frames(StubPipeline(gain=5.0), frames, smoothing=0.25)
    got = V.hdr_frames(StubPipeline(gain=5.0), frames, smoothing=0.25, device="cuda:0")
    for w, g in zip(want, got):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)


@pytest.mark.gpu
def test_cuda_event_orders_host_after_device():
    from sitm_trt import kernels

    ext = kernels.extension()
    ev = ext.Event(0)
    dev = torch.arange(1 << 20, dtype=torch.float32, device="cuda") * 2
    host = ext.empty([1 << 20], "float32", "cpu", 0, True)
    stream = torch.cuda.current_stream().cuda_stream
    ext.copy(kernels._capsule(host, "t", "h", stream), kernels._capsule(dev, "t", "d", stream), stream)
    ev.record(stream)
    ev.synchronize()
    assert ev.query()
    np.testing.assert_array_equal(np.from_dlpack(host), dev.cpu().numpy())
