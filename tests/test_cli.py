"""The sitm-trt command: infer (files, globs, batching, 16-bit, gray, alpha, EXR/HDR, previews, errors), video,
info, and -h of every command."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sitm_trt.tools import cli
from sitm_trt.media import io
from sitm_trt.runtime.pipeline import Pipeline

from test_video import StubBackend, make_clip, test_frames  # noqa: F401 - test_frames is a helper

cv2 = pytest.importorskip("cv2")


@pytest.fixture(scope="module")
def weights(tiny_weights_path):
    return tiny_weights_path


def stub_pipeline(weights) -> Pipeline:
    """A real Pipeline (pre kernel, post kernel, buffers) whose CPU backend is the cheap stand-in network."""
    pipe = Pipeline(weights)
    pipe._backends["cpu"] = StubBackend()
    return pipe


@pytest.fixture
def fast(monkeypatch, weights):
    """Make `sitm-trt infer` use the stand-in network (the plumbing is under test, not the network)."""
    pipe = stub_pipeline(weights)
    monkeypatch.setattr(cli, "_make_pipeline", lambda args: pipe)
    return pipe


def images(folder, h=24, w=32, seed=0):
    """8-bit RGB PNG, 16-bit RGB TIFF, 8-bit gray PNG, 8-bit RGBA PNG, all h x w."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    rgb8 = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    rgb16 = rng.integers(0, 65536, (h, w, 3), dtype=np.uint16)
    gray = rng.integers(0, 256, (h, w), dtype=np.uint8)
    rgba = rng.integers(0, 256, (h, w, 4), dtype=np.uint8)
    cv2.imwrite(str(folder / "a.png"), rgb8[:, :, ::-1])
    cv2.imwrite(str(folder / "b.tif"), rgb16[:, :, ::-1])
    cv2.imwrite(str(folder / "gray.png"), gray)
    cv2.imwrite(str(folder / "rgba.png"), rgba[:, :, [2, 1, 0, 3]])
    return {"a": rgb8, "b": rgb16, "gray": np.repeat(gray[:, :, None], 3, 2), "rgba": rgba}


def read_exr_channels(path):
    import OpenEXR

    with OpenEXR.File(str(path), separate_channels=True) as f:
        return {k: v.pixels.astype(np.float32) for k, v in f.channels().items()}


def test_help_for_every_command(capsys):
    for cmd in (["-h"], ["infer", "-h"], ["video", "-h"], ["info", "-h"], ["bench", "-h"], ["build-engine", "-h"]):
        with pytest.raises(SystemExit) as e:
            cli.main(cmd)
        assert e.value.code == 0, cmd
    assert "--peak-nits" in capsys.readouterr().out
    # `info` imports TensorRT; in a child process, since importing TensorRT-RTX in this process makes a later
    # Matroska encode fail (the open bug noted in test_video_command)
    import subprocess
    import sys

    res = subprocess.run([sys.executable, "-m", "sitm_trt.tools.cli", "info"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert {"extension", "auto"} <= set(json.loads(res.stdout))


def test_infer_exr_with_16bit_gray_alpha_preview_and_batches(tmp_path, fast):
    src = images(tmp_path / "in")
    out = tmp_path / "out"
    assert cli.main(["infer", str(tmp_path / "in" / "*.png"), str(tmp_path / "in" / "b.tif"), "-o", str(out),
                     "--preview", "--batch", "2", "-q"]) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"{n}{ext}" for n in ("a", "b", "gray", "rgba") for ext in (".exr", ".preview.png"))
    for name, ldr in src.items():
        want = fast(np.ascontiguousarray(ldr[:, :, :3]), layout="hwc")
        ch = read_exr_channels(out / f"{name}.exr")
        got = np.stack([ch[c] for c in "RGB"], -1)
        if name == "gray":  # gray in, gray out: the mean of the three channels
            want = np.repeat(want.mean(axis=2, keepdims=True), 3, axis=2)
            assert (got[..., 0] == got[..., 1]).all() and (got[..., 1] == got[..., 2]).all()
        if name == "rgba":  # alpha kept, colour premultiplied (OpenEXR convention)
            alpha = ldr[:, :, 3] / 255.0
            np.testing.assert_allclose(ch["A"], alpha, rtol=1e-3)
            want = want * alpha[:, :, None]
        else:
            assert "A" not in ch
        np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4)  # half
        preview = io.read_ldr(out / f"{name}.preview.png")
        assert preview.dtype == np.uint8 and preview.shape == (24, 32, 3)


def test_batching_does_not_change_results(tmp_path, fast):
    rng = np.random.default_rng(1)
    (tmp_path / "in").mkdir()
    for i in range(3):
        io.write_png(tmp_path / "in" / f"{i}.png", rng.integers(0, 256, (16, 20, 3), dtype=np.uint8))
    for b in (1, 3):
        assert cli.main(["infer", str(tmp_path / "in" / "*.png"), "-o", str(tmp_path / f"b{b}"), "--batch", str(b),
                         "--float", "-q"]) == 0
    for i in range(3):
        a, b = (io.read_hdr(tmp_path / f"b{n}" / f"{i}.exr") for n in (1, 3))
        np.testing.assert_array_equal(a, b)


def test_infer_hdr_format_single_output_and_alpha_notice(tmp_path, fast, capsys):
    src = images(tmp_path / "in")
    target = tmp_path / "x.hdr"
    assert cli.main(["infer", str(tmp_path / "in" / "rgba.png"), "-o", str(target), "-f", "hdr", "-q"]) == 0
    assert "alpha dropped" in capsys.readouterr().err
    want = fast(np.ascontiguousarray(src["rgba"][:, :, :3]), layout="hwc")
    got = io.read_hdr(target)
    big = want.max(axis=2, keepdims=True)  # RGBE: 8-bit mantissa shared by the channels
    assert (np.abs(got - want) <= big / 64 + 1e-6).all()


def test_infer_with_real_weights(tmp_path, weights):
    src = images(tmp_path / "in")
    assert cli.main(["infer", str(tmp_path / "in" / "a.png"), "--weights", str(weights), "-q", "--float"]) == 0
    want = Pipeline(weights)(src["a"], layout="hwc")
    np.testing.assert_allclose(io.read_hdr(tmp_path / "in" / "a.exr"), want, rtol=1e-6, atol=1e-7)


def test_infer_errors(tmp_path, fast, capsys):
    images(tmp_path / "in")
    assert cli.main(["infer", str(tmp_path / "nope.png")]) == 2
    assert "nope.png: no such file" in capsys.readouterr().err
    assert cli.main(["infer", str(tmp_path / "*.jpg")]) == 2
    assert "no file matches" in capsys.readouterr().err
    io.write_hdr(tmp_path / "in" / "h.hdr", np.ones((2, 2, 3), np.float32))
    assert cli.main(["infer", str(tmp_path / "in" / "h.hdr")]) == 2
    assert "already an HDR image" in capsys.readouterr().err
    assert cli.main(["infer", str(tmp_path / "in" / "a.png"), str(tmp_path / "in" / "gray.png"), "-o",
                     str(tmp_path / "one.exr")]) == 2
    assert "give a folder" in capsys.readouterr().err
    # existing outputs: refused, skipped, or replaced
    assert cli.main(["infer", str(tmp_path / "in" / "a.png"), "-q"]) == 0
    assert cli.main(["infer", str(tmp_path / "in" / "a.png"), "-q"]) == 2
    assert "a.exr: exists" in capsys.readouterr().err
    assert cli.main(["infer", str(tmp_path / "in" / "a.png"), "-q", "--skip-existing"]) == 0
    assert cli.main(["infer", str(tmp_path / "in" / "a.png"), "-q", "--overwrite"]) == 0
    # a corrupt file is reported, the others are still converted, the exit status says so
    (tmp_path / "in" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    assert cli.main(["infer", str(tmp_path / "in" / "bad.png"), str(tmp_path / "in" / "gray.png"), "-o",
                     str(tmp_path / "o2"), "-q"]) == 1
    err = capsys.readouterr().err
    assert "bad.png: cannot decode image" in err and "1 of 2 inputs failed" in err
    assert (tmp_path / "o2" / "gray.exr").exists() and not (tmp_path / "o2" / "bad.exr").exists()


def test_infer_sample(tmp_path, weights, capsys):
    from sitm_trt.samples import SAMPLE

    out = tmp_path / "coffee.exr"
    assert cli.main(["infer", "--sample", "-o", str(out), "--preview", "--weights", str(weights), "-q"]) == 0
    hdr = io.read_hdr(out)
    assert hdr.shape == (400, 600, 3) and (tmp_path / "coffee.preview.png").exists()
    np.testing.assert_allclose(hdr, Pipeline(weights)(io.read_ldr(SAMPLE), layout="hwc"), rtol=2e-3, atol=1e-3)
    assert cli.main(["infer", "--sample"]) == 2
    assert "give -o/--output" in capsys.readouterr().err
    assert cli.main(["infer"]) == 2
    assert "no input images" in capsys.readouterr().err


def test_weights_errors(tmp_path, capsys):
    images(tmp_path / "in")
    assert cli.main(["infer", str(tmp_path / "in" / "a.png"), "--weights", str(tmp_path / "missing.safetensors")]) == 2
    assert "error:" in capsys.readouterr().err
    assert cli.main(["infer", str(tmp_path / "in" / "a.png"), "--weights", "nonexistent-name"]) == 2
    assert "no shipped weights named 'nonexistent-name'" in capsys.readouterr().err


def test_video_command(tmp_path, weights, capsys):
    # Known bug, not understood yet: after some earlier tests in the same pytest process (TensorRT-RTX imported,
    # the benchmarks), closing the Matroska output sometimes fails with EINVAL (video.py, _VideoSink.close).
    # Audio pass-through is tested in test_video.py.
    make_clip(tmp_path / "in.mp4", test_frames(3), audio=False)
    out = tmp_path / "out.mkv"
    # In a child process: the conversion must not see state left by earlier tests in this process (the open
    # EINVAL bug below).
    import subprocess
    import sys

    res = subprocess.run([sys.executable, "-m", "sitm_trt.tools.cli", "video", str(tmp_path / "in.mp4"), str(out),
                          "--weights", str(weights), "--device", "cpu", "--max-frames", "2", "--preset", "ultrafast",
                          "--peak-nits", "600"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    err = res.stderr
    assert "2 frames 64x48 hdr10" in err and "MaxCLL" in err
    import av

    with av.open(str(out)) as c:
        assert sum(1 for _ in c.decode(video=0)) == 2
    assert cli.main(["video", str(tmp_path / "missing.mp4"), str(out), "--weights", str(weights)]) == 2
    assert "missing.mp4: no such file" in capsys.readouterr().err
    assert cli.main(["video", str(tmp_path / "in.mp4"), str(out), "--weights", str(weights)]) == 2
    assert "exists" in capsys.readouterr().err
    assert cli.main(["video", str(tmp_path / "in.mp4"), str(out), "--ref-white", "900", "--peak-nits", "600"]) == 2
    assert "ref_white must be in (0, peak_nits]" in capsys.readouterr().err


def test_video_cuda_graphs_flag_reaches_the_pipeline(tmp_path, weights, monkeypatch):
    """--cuda-graphs reaches the Pipeline that video.convert makes (TensorRT uses it; the torch backend on
    the CPU ignores it, and the frames are those of a run without it)."""
    from sitm_trt.runtime import pipeline as P

    made = []

    class Recording(P.Pipeline):
        def __init__(self, *a, **kw):
            made.append(kw.get("cuda_graphs"))
            super().__init__(*a, **kw)

    monkeypatch.setattr(P, "Pipeline", Recording)
    make_clip(tmp_path / "in.mp4", test_frames(2), audio=False)
    outs = []
    for flag in (["--cuda-graphs"], []):
        out = tmp_path / f"frames{len(flag)}" / "f_%04d.exr"
        args = ["video", str(tmp_path / "in.mp4"), str(out), "--weights", str(weights), "--device", "cpu", "-q"]
        assert cli.main(args + flag) == 0
        outs.append([io.read_hdr(f) for f in sorted(out.parent.glob("*.exr"))])
    assert made == [True, False]
    assert len(outs[0]) == 2 and all(np.array_equal(a, b) for a, b in zip(*outs))
