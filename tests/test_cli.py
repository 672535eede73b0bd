"""The sitm-trt command: infer (files, globs, batching, 16-bit, gray, alpha, EXR/HDR, previews, errors), video,
info, and -h of every command."""

from __future__ import annotations

import argparse
import json
import re
import struct
from pathlib import Path

import numpy as np
import pytest

from sitm_trt.tools import cli, cli_infer, cli_video
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
    monkeypatch.setattr(cli_infer, "_make_pipeline", lambda args: pipe)
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


def test_infer_previews_sdr_hdr_and_side_by_side(tmp_path, fast, capsys, monkeypatch):
    import sys

    from test_preview import cicp_and_clli, decode_png16

    from sitm_trt.media import preview

    src = images(tmp_path / "in")
    out = tmp_path / "out"
    assert cli.main(["infer", str(tmp_path / "in" / "a.png"), str(tmp_path / "in" / "b.tif"), "-o", str(out),
                     "--preview", "both", "--side-by-side", "-q"]) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"{n}{ext}" for n in ("a", "b") for ext in (".exr", ".preview.png", ".preview-hdr.png", ".side-by-side.png",
                                                    ".side-by-side-hdr.png"))
    for name in ("a", "b"):
        hdr = fast(np.ascontiguousarray(src[name]), layout="hwc")
        sdr = io.read_ldr(out / f"{name}.preview.png")
        assert sdr.dtype == np.uint8 and np.abs(sdr.astype(int) - preview.tonemap(hdr)).max() <= 1
        data = (out / f"{name}.preview-hdr.png").read_bytes()
        assert cicp_and_clli(data)[0] == bytes((9, 16, 0, 1))
        assert np.abs(decode_png16(data).astype(int) - preview.pq_codes(hdr)).max() <= 2
        sheet = io.read_ldr(out / f"{name}.side-by-side.png")
        assert sheet.shape == (24, 32 + 8 + 32, 3) and sheet.dtype == np.uint8
        want_left = src[name] if name == "a" else np.rint(src[name] / 257.0).astype(np.uint8)
        assert (sheet[:, :32] == want_left).all() and (sheet[:, 40:] == sdr).all()
        hdr_sheet = cv2.imread(str(out / f"{name}.side-by-side-hdr.png"), cv2.IMREAD_UNCHANGED)
        assert hdr_sheet.dtype == np.uint16 and hdr_sheet.shape == (24, 72, 3)
    # --preview hdr: only the 16-bit PQ preview; --preview alone: only the SDR one
    assert cli.main(["infer", str(tmp_path / "in" / "a.png"), "-o", str(tmp_path / "h"), "--preview", "hdr",
                     "-q"]) == 0
    assert sorted(p.name for p in (tmp_path / "h").iterdir()) == ["a.exr", "a.preview-hdr.png"]
    png = cv2.imread(str(tmp_path / "h" / "a.preview-hdr.png"), cv2.IMREAD_UNCHANGED)
    assert png.dtype == np.uint16 and png.shape == (24, 32, 3)
    assert cli.main(["infer", str(tmp_path / "in" / "a.png"), "-o", str(tmp_path / "s"), "--preview", "-q"]) == 0
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == ["a.exr", "a.preview.png"]
    # every preview is an output: an existing one is refused without --overwrite
    (tmp_path / "h" / "a.exr").unlink()
    assert cli.main(["infer", str(tmp_path / "in" / "a.png"), "-o", str(tmp_path / "h"), "--preview", "hdr",
                     "-q"]) == 2
    assert "a.preview-hdr.png: exists" in capsys.readouterr().err
    # AVIF / Ultra HDR: only for an HDR preview, and only with imagecodecs
    assert cli.main(["infer", str(tmp_path / "in" / "a.png"), "-o", str(tmp_path / "x"),
                     "--hdr-preview-format", "avif", "-q"]) == 2
    assert "give --preview hdr" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "imagecodecs", None)  # as if not installed
    assert cli.main(["infer", str(tmp_path / "in" / "a.png"), "-o", str(tmp_path / "x"), "--preview", "hdr",
                     "--hdr-preview-format", "ultrahdr", "-q"]) == 2
    assert "pip install imagecodecs" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()  # refused before anything is written


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
    assert cli.main(["infer", str(tmp_path / "in" / "h.hdr")]) == 1  # a file that cannot be an input: listed
    assert "h.hdr: is already an HDR image" in capsys.readouterr().err
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
    fps = re.search(r"\(([\d.]+) fps\)", err).group(1)
    assert len(fps.replace(".", "").lstrip("0")) >= 3, fps  # 3 significant digits, not rounded to 0.1 fps
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


# ---------------------------------------------------------------------------------------------------------
# Inputs (folders, formats, orientation), messages and summary, the memory budget, the Quickstart, --version
# ---------------------------------------------------------------------------------------------------------

ROOT = Path(__file__).resolve().parents[1]


def exif_orientation(orientation: int) -> np.ndarray:
    """An EXIF block (a TIFF structure) holding only the Orientation tag, as OpenCV's encoders take it."""
    block = b"II*\x00" + struct.pack("<IH", 8, 1) + struct.pack("<HHIHH", 0x0112, 3, 1, orientation, 0) + b"\0" * 4
    return np.frombuffer(block, np.uint8)


def test_infer_a_folder_walks_its_images_but_not_sub_folders_or_previews(tmp_path, fast, capsys):
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    bgr = np.random.default_rng(5).integers(0, 256, (16, 24, 3), dtype=np.uint8)
    cv2.imwrite(str(folder / "a.png"), bgr)
    cv2.imwrite(str(folder / "b.webp"), bgr, [cv2.IMWRITE_WEBP_QUALITY, 101])
    cv2.imwrite(str(folder / "c.bmp"), bgr)
    ok, buf = cv2.imencodeWithMetadata(".jpg", bgr, [cv2.IMAGE_METADATA_EXIF], [exif_orientation(6)])
    (folder / "d.jpg").write_bytes(buf.tobytes())  # a phone photo stored sideways
    (folder / "notes.txt").write_text("not an image")
    cv2.imwrite(str(folder / ".hidden.png"), bgr)
    cv2.imwrite(str(folder / "sub" / "e.png"), bgr)
    images_ = {"a.png": "a", "b.webp": "b", "c.bmp": "c", "d.jpg": "d"}
    assert cli.main(["infer", str(folder), "--preview"]) == 0
    out = capsys.readouterr()
    assert sorted(out.out.splitlines()) == [f"{folder / n} -> {folder / (s + '.exr')}, {folder / (s + '.preview.png')}"
                                            for n, s in images_.items()]  # one line per converted image
    assert "sitm-trt: 4 inputs: 4 written, 0 skipped, 0 failed" in out.err
    assert sorted(p.name for p in (folder / "sub").iterdir()) == ["e.png"]  # not recursive
    assert not (folder / ".hidden.exr").exists() and not (folder / "notes.exr").exists()
    assert io.read_hdr(folder / "d.exr").shape == (24, 16, 3)  # upright: EXIF orientation 6
    # again: the previews written beside the images are not inputs, and --skip-existing lists what it skips
    assert cli.main(["infer", str(folder), "--preview", "--skip-existing"]) == 0
    out = capsys.readouterr()
    assert sorted(out.out.splitlines()) == [f"skipped {folder / n}: {folder / (s + '.exr')} exists"
                                            for n, s in images_.items()]
    assert "sitm-trt: 4 inputs: 0 written, 4 skipped, 0 failed" in out.err
    assert cli.main(["infer", str(folder)]) == 2  # neither --skip-existing nor --overwrite: refused, before any work
    assert "a.exr: exists" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert cli.main(["infer", str(tmp_path / "empty")]) == 2
    assert "empty: no image files in this folder" in capsys.readouterr().err


@pytest.mark.parametrize("how", ["glob", "list"])
def test_a_corrupt_file_in_the_middle_costs_that_file_only(tmp_path, fast, capsys, how):
    """The files after a corrupt one are converted; the failures are listed once, at the end; exit status 1."""
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("1", "3"):
        cv2.imwrite(str(folder / f"{name}.png"), np.full((16, 16, 3), 90, np.uint8))
    good = cv2.imencode(".png", np.full((16, 16, 3), 90, np.uint8))[1].tobytes()
    (folder / "2.png").write_bytes(good[: len(good) // 2])  # truncated
    args = [str(folder / "*.png")] if how == "glob" else [str(folder / f"{n}.png") for n in "123"]
    out = tmp_path / "out"
    assert cli.main(["infer", *args, "-o", str(out)]) == 1
    cap = capsys.readouterr()
    assert sorted(p.name for p in out.iterdir()) == ["1.exr", "3.exr"]
    assert cap.out.splitlines() == [f"{folder / n}.png -> {out / n}.exr" for n in "13"]
    assert cap.err.count("2.png") == 1, cap.err  # named once: in the list at the end
    lines = cap.err.splitlines()
    assert "sitm-trt: 3 inputs: 2 written, 0 skipped, 1 failed" in lines
    at = lines.index("sitm-trt: 1 of 3 inputs failed:")
    assert lines[at + 1].startswith(f"sitm-trt:   {folder / '2.png'}: cannot decode image")
    # types that cannot be inputs are failures of their own too, listed in the order given
    (folder / "phone.heic").write_bytes(b"\0\0\0\x18ftypheic")
    assert cli.main(["infer", str(folder / "phone.heic"), str(folder / "1.png"), "-o", str(tmp_path / "o2"), "-q"]) == 1
    cap = capsys.readouterr()
    assert "phone.heic: HEIC/HEIF is not read" in cap.err and (tmp_path / "o2" / "1.exr").exists()
    assert cap.out == ""  # -q: the failures only


def test_max_memory_tiles_automatically_and_gives_the_whole_frame_pixels(tmp_path, weights, capsys):
    """A 400x300 image under --max-memory 60M (79 MiB estimated in one piece) runs in 128-pixel tiles: the pixels
    of whole-frame inference within float rounding (docs/tiling.md: 2.4e-7 with these random-init weights, 7.2e-7
    with the shipped ones); --tile 128 forces the same tiles."""
    y, x = np.mgrid[0:300, 0:400]
    img = np.stack([(x * 0.6) % 256, (y * 0.8) % 256, (x + y) % 256], -1).astype(np.uint8)
    cv2.imwrite(str(tmp_path / "s.png"), img[:, :, ::-1])
    common = ["--weights", str(weights), "--backend", "torch", "--float"]
    assert cli.main(["infer", str(tmp_path / "s.png"), "-o", str(tmp_path / "auto"), "--max-memory", "60M", *common]) == 0
    assert "s.png: 400x300 needs about 79 MiB in one piece, 60 MiB available (--max-memory): converting in " \
           "128-pixel tiles" in capsys.readouterr().err
    tiled = io.read_hdr(tmp_path / "auto" / "s.exr")
    whole = Pipeline(weights, backend="torch")(img, layout="hwc")
    assert np.abs(tiled - whole).max() <= 2e-6
    assert cli.main(["infer", str(tmp_path / "s.png"), "-o", str(tmp_path / "forced"), "--tile", "128", *common]) == 0
    np.testing.assert_array_equal(io.read_hdr(tmp_path / "forced" / "s.exr"), tiled)


def test_without_torch_tiles_are_refused_with_the_reason(tmp_path):
    """No PyTorch (import blocked): an image over the budget fails with the reason and the fix, the image that
    fits is converted (ONNX Runtime, the shipped weights), and --tile is refused before any work."""
    import subprocess
    import sys

    cv2.imwrite(str(tmp_path / "big.png"), np.full((300, 400, 3), 120, np.uint8))
    cv2.imwrite(str(tmp_path / "small.png"), np.full((32, 32, 3), 120, np.uint8))
    code = ("import sys; sys.modules['torch'] = None\nfrom sitm_trt.tools import cli\n"
            "sys.exit(cli.main(sys.argv[1:]))")
    run = lambda *a: subprocess.run([sys.executable, "-c", code, "infer", *a], cwd=tmp_path,  # noqa: E731
                                    capture_output=True, text=True, timeout=300)
    proc = run("big.png", "small.png", "-o", "out", "--max-memory", "60M", "-q")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "big.png: 400x300 needs about 79 MiB in one piece, 60 MiB available (--max-memory), and tiles run the " \
           "PyTorch model: pip install 'sitm-trt[torch]'" in proc.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["small.exr"]
    proc = run("small.png", "-o", "out2", "--tile", "64")
    assert proc.returncode == 2 and "--tile: tiled inference runs the PyTorch model" in proc.stderr, proc.stderr


def test_quickstart_first_command_runs_twice_and_leaves_nothing_untracked(tmp_path, monkeypatch, capsys):
    """The README Quickstart's first command (after the install), twice in a row in a fresh folder: both runs
    succeed (the sample replaces its own outputs), and everything they write lies in a folder .gitignore names."""
    text = (ROOT / "README.md").read_text().split("## Quickstart", 1)[1]
    first = text.split("```bash\n", 1)[1].splitlines()[0]
    argv = first.split("&&", 1)[1].split()
    assert argv[:3] == ["sitm-trt", "infer", "--sample"], first
    monkeypatch.chdir(tmp_path)
    for _ in range(2):
        assert cli.main(argv[1:]) == 0, capsys.readouterr().err
    written = [p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file()]
    assert {p.name for p in written} >= {"coffee.exr", "coffee.preview.png"}
    ignored = (ROOT / ".gitignore").read_text().splitlines()
    assert all(len(p.parts) > 1 and f"/{p.parts[0]}/" in ignored for p in written), (written, ignored)
    # only the sample's own outputs are replaced: another input's existing output is still refused
    cv2.imwrite(str(tmp_path / "mine.png"), np.zeros((8, 8, 3), np.uint8))
    folder = argv[argv.index("-o") + 1]
    (tmp_path / folder / "mine.exr").write_bytes(b"keep")
    assert cli.main(["infer", "mine.png", *argv[2:]]) == 2
    assert (tmp_path / folder / "mine.exr").read_bytes() == b"keep"


def test_version(capsys):
    from importlib.metadata import version

    with pytest.raises(SystemExit) as e:
        cli.main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"sitm-trt {version('sitm-trt')}"


def test_info_without_an_nvidia_driver_says_so(tmp_path):
    """A CUDA build on a machine without the driver library: the CUDA runtime's own words ("driver version is
    insufficient") would send the user after a driver update; `sitm-trt info` says no driver was found."""
    import subprocess
    import sys

    code = """
import sys
from sitm_trt import kernels
from sitm_trt.runtime import device
from sitm_trt.tools import cli, cli_infer, cli_video

class NoDriver:  # the extension as a CUDA build sees a machine without libcuda
    def __getattr__(self, name):
        return getattr(real, name)

    def cuda_devices(self):
        return 0, "CUDA driver version is insufficient for CUDA runtime version"

real = kernels.extension()
kernels.extension = lambda: NoDriver()
kernels.build_info = lambda: {"cuda": True, "cuda_runtime": "13.0"}
device.driver_version = lambda: None
sys.exit(cli.main(["info"]))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    reason = json.loads(proc.stdout)["cuda_devices_reason"]
    assert reason.startswith("no NVIDIA driver found") and "insufficient" not in reason, reason


def test_help_texts_render_and_every_option_has_one(capsys):
    for cmd, want in ((["video", "-h"], "frames/%06d.exr"), (["infer", "-h"], "Radiance RGBE")):
        with pytest.raises(SystemExit):
            cli.main(cmd)
        text = capsys.readouterr().out
        assert want in text and "%%" not in text and "``" not in text, cmd
    parser = cli.build_parser()
    subs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    for name in ("infer", "video", "batch"):
        missing = [a.option_strings for a in subs[name]._actions if a.option_strings and not a.help]
        assert not missing, (name, missing)


def test_three_significant_digits():
    assert [cli_video.significant(v) for v in (0.05234, 0.5, 2.1, 24.0, 123.4, 1234.4)] == \
        ["0.0523", "0.500", "2.10", "24.0", "123", "1234"]


def test_video_threads_and_max_memory(tmp_path, weights, capsys, monkeypatch):
    """--threads reaches the video's Pipeline; a frame that does not fit --max-memory even in 128-pixel
    tiles is refused before any work, and nothing is left behind."""
    from sitm_trt.runtime import pipeline as P

    made = []

    class Recording(P.Pipeline):
        def __init__(self, *a, **kw):
            made.append(kw.get("threads"))
            super().__init__(*a, **kw)

    monkeypatch.setattr(P, "Pipeline", Recording)
    make_clip(tmp_path / "in.mp4", test_frames(2), audio=False)
    args = ["video", str(tmp_path / "in.mp4"), "--weights", str(weights), "--device", "cpu", "-q"]
    assert cli.main([*args[:2], str(tmp_path / "f" / "f_%04d.exr"), *args[2:], "--threads", "1"]) == 0
    assert made == [1] and len(list((tmp_path / "f").glob("*.exr"))) == 2
    assert cli.main([*args[:2], str(tmp_path / "out.mkv"), *args[2:], "--max-memory", "1M"]) == 2
    err = capsys.readouterr().err
    assert "64x48 needs about" in err and "--max-memory" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f", "in.mp4"]


def test_option_mistakes_are_usage_errors_before_any_folder_is_made(tmp_path, fast, capsys):
    """Every option a user can get wrong ends in one `sitm-trt: error:` line (exit 2) that names it, before the
    output folder is made; no traceback."""
    from sitm_trt.runtime.device import cuda_devices
    from sitm_trt.runtime.tiling import check_tile

    images(tmp_path / "in")
    a = str(tmp_path / "in" / "a.png")
    out = tmp_path / "new" / "out"
    cases = [(["--device", "gpu"], "--device gpu: expected auto, cpu, cuda or cuda:N"),
             (["--device", "cpu", "--backend", "tensorrt"], "--backend tensorrt runs on a GPU"),
             (["--device", "cpu", "--precision", "fp16"], "--precision fp16 needs a GPU"),
             (["--tile", "16"], r"--tile 16: tiles of the '\w+' network are multiples of \d+ pixels, at least \d+"),
             (["-f", "hdr", "--float"], "--float: Radiance .hdr is RGBE"),
             (["--skip-existing", "--overwrite"], "--skip-existing and --overwrite: give one")]
    if cuda_devices()[0] == 0:
        cases.append((["--device", "cuda:0"], r"--device cuda:0: no usable CUDA device \(.+\)"))
    for extra, message in cases:
        assert cli.main(["infer", a, "-o", str(out), "-q", *extra]) == 2, extra
        err = capsys.readouterr().err
        assert re.search("sitm-trt: error: " + message, err), (extra, err)
        assert "Traceback" not in err and not (tmp_path / "new").exists(), extra
    # the smallest tile the message names is the smallest that works, against the tiling's own check
    assert cli.main(["infer", a, "-o", str(out), "--tile", "16"]) == 2
    stride, least = map(int, re.search(r"multiples of (\d+) pixels, at least (\d+)", capsys.readouterr().err).groups())
    preset = fast.weights.preset()
    check_tile(preset, least)
    with pytest.raises(ValueError):
        check_tile(preset, least - stride)
    # an image file name as -o: refused, and no folder of that name is made (it was, once)
    for name in ("out.png", "a.png"):
        target = tmp_path / "in" / name if name == "a.png" else tmp_path / name
        before = target.read_bytes() if target.exists() else None
        assert cli.main(["infer", a, "-o", str(target), "--overwrite", "-q"]) == 2
        assert "HDR images are written as OpenEXR (.exr) or Radiance (.hdr)" in capsys.readouterr().err
        assert (target.read_bytes() if target.exists() else None) == before and not target.is_dir()
    # -o NAME.hdr without -f: a Radiance file, not a refusal
    assert cli.main(["infer", a, "-o", str(tmp_path / "x.hdr"), "-q"]) == 0
    assert (tmp_path / "x.hdr").read_bytes().startswith(b"#?RADIANCE")


def test_a_run_that_writes_nothing_leaves_no_folder(tmp_path, fast, capsys):
    io.write_hdr(tmp_path / "h.hdr", np.ones((2, 2, 3), np.float32))
    assert cli.main(["infer", str(tmp_path / "h.hdr"), "-o", str(tmp_path / "a" / "b"), "-q"]) == 1  # listed failure
    assert "is already an HDR image" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()
    images(tmp_path / "in1")
    images(tmp_path / "in2")  # two a.png: refused after the folder was planned, which goes again
    assert cli.main(["infer", str(tmp_path / "in1" / "a.png"), str(tmp_path / "in2" / "a.png"), "-o",
                     str(tmp_path / "c" / "d")]) == 2
    assert "would both be written to" in capsys.readouterr().err and not (tmp_path / "c").exists()
    (tmp_path / "kept").mkdir()  # a folder that was there before stays
    assert cli.main(["infer", str(tmp_path / "h.hdr"), "-o", str(tmp_path / "kept"), "-q"]) == 1
    assert (tmp_path / "kept").is_dir()


def test_skip_existing_adds_missing_previews_and_keeps_what_exists(tmp_path, fast, capsys):
    images(tmp_path / "in")
    a, out = str(tmp_path / "in" / "a.png"), tmp_path / "out"
    assert cli.main(["infer", a, "-o", str(out), "-q"]) == 0
    exr = out / "a.exr"
    exr.write_bytes(exr.read_bytes())  # same bytes, new inode: replacing it would show in the inode
    inode, data = exr.stat().st_ino, exr.read_bytes()
    assert cli.main(["infer", a, "-o", str(out), "--skip-existing", "--preview"]) == 0
    std = capsys.readouterr()
    assert (out / "a.preview.png").exists() and exr.stat().st_ino == inode and exr.read_bytes() == data
    assert f"{a} -> {out / 'a.preview.png'}" in std.out and "a.exr" not in std.out.split("->")[1]
    # the preview matches what a fresh run writes for it
    assert cli.main(["infer", a, "-o", str(tmp_path / "fresh"), "--preview", "-q"]) == 0
    assert cv2.imread(str(out / "a.preview.png")).tobytes() == cv2.imread(str(tmp_path / "fresh" / "a.preview.png")).tobytes()
    # everything there: skipped
    assert cli.main(["infer", a, "-o", str(out), "--skip-existing", "--preview"]) == 0
    assert f"skipped {a}" in capsys.readouterr().out


def test_sample_replaces_its_own_outputs_only(tmp_path, weights, capsys):
    out = tmp_path / "coffee.exr"
    args = ["infer", "--sample", "-o", str(out), "--weights", str(weights), "-q"]
    assert cli.main(args) == 0 and cli.main(args) == 0  # the Quickstart, twice
    mine = tmp_path / "mine" / "coffee.exr"
    mine.parent.mkdir()
    io.write_exr(mine, np.ones((4, 4, 3), np.float32))  # the user's own file at the sample's output name
    data = mine.read_bytes()
    assert cli.main(["infer", "--sample", "-o", str(mine.parent), "--weights", str(weights), "-q"]) == 2
    assert "coffee.exr: exists and is not an output of an earlier --sample run" in capsys.readouterr().err
    assert mine.read_bytes() == data


def test_an_out_of_memory_error_of_the_backend_fails_that_file_only(tmp_path, fast, capsys, monkeypatch):
    """ONNX Runtime and torch raise RuntimeError when an allocation fails (e.g. under ulimit -v): that image is
    listed as failed and the others are converted; any other RuntimeError is still a bug and propagates."""
    images(tmp_path / "in")
    cv2.imwrite(str(tmp_path / "in" / "big.png"), np.zeros((40, 40, 3), np.uint8))
    real = cli_infer.run_batch

    def failing(pipe, batch, device):
        if batch.shape[1:3] == (40, 40):
            raise RuntimeError("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Failed to allocate memory for buffer")
        return real(pipe, batch, device)

    monkeypatch.setattr(cli_infer, "run_batch", failing)
    assert cli.main(["infer", str(tmp_path / "in" / "big.png"), str(tmp_path / "in" / "a.png"), "-o",
                     str(tmp_path / "o"), "-q"]) == 1
    err = capsys.readouterr().err
    assert "big.png: out of memory: [ONNXRuntimeError]" in err and "1 of 2 inputs failed" in err
    assert (tmp_path / "o" / "a.exr").exists() and not (tmp_path / "o" / "big.exr").exists()

    def broken(pipe, batch, device):
        raise RuntimeError("shape mismatch in a kernel")

    monkeypatch.setattr(cli_infer, "run_batch", broken)
    with pytest.raises(RuntimeError, match="shape mismatch"):
        cli.main(["infer", str(tmp_path / "in" / "a.png"), "-o", str(tmp_path / "o2"), "-q"])


def test_video_option_mistakes(tmp_path, weights, capsys):
    make_clip(tmp_path / "in.mp4", test_frames(2), audio=False)
    base = ["video", str(tmp_path / "in.mp4"), str(tmp_path / "out.mp4"), "--weights", str(weights)]
    for extra, message in ((["--crf", "99"], r"crf must be in \[0, 51\]"),
                           (["--preset", "bogus"], "preset must be one of libx265's: ultrafast, "),
                           (["--scene-cut", "-1"], r"scene_cut must be in \(0, 1\]"),
                           (["--float", "-f", "hdr10"], "--float: hdr10 video is 10-bit"),
                           # the format the output's name implies (out.mp4: hdr10) is checked too; it was ignored
                           (["--float"], "--float: hdr10 video is 10-bit"),
                           (["--device", "bogus"], "--device bogus: expected auto, cpu, cuda or cuda:N"),
                           (["--device", "cpu", "--precision", "fp16"], "--precision fp16 needs a GPU"),
                           (["-f", "hlg", "--mastering-primaries", "p3"],
                            "--mastering-primaries: only HDR10 video carries mastering display metadata; this output "
                            "is hlg")):
        assert cli.main([*base, *extra]) == 2, extra
        err = capsys.readouterr().err
        assert re.search("sitm-trt: error: " + message, err) and "Traceback" not in err, (extra, err)
    assert not (tmp_path / "out.mp4").exists()


def test_a_weights_card_or_onnx_graph_is_named_for_what_it_is(tmp_path, capsys):
    from sitm_trt.weights import WEIGHTS_DIR

    images(tmp_path / "in")
    for path, message in ((WEIGHTS_DIR / "filmic.json", "is a weights card (JSON), not weights; pass the weights "
                           f"file it describes, {WEIGHTS_DIR / 'filmic.safetensors'}"),
                          (WEIGHTS_DIR / "default-fp32.onnx", "is an ONNX graph, not weights")):
        assert cli.main(["infer", str(tmp_path / "in" / "a.png"), "-o", str(tmp_path / "o"), "--weights",
                         str(path)]) == 2
        err = capsys.readouterr().err
        assert message in err and "corrupt" not in err
    assert not (tmp_path / "o").exists()
