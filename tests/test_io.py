"""Tests of sitm_trt.media.io against independent references: OpenCV/OpenEXR written files and hand-made bytes."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2")
OpenEXR = pytest.importorskip("OpenEXR")

from sitm_trt.media import io  # noqa: E402


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


# ------------------------------------------------------------------------------------------------- LDR


@pytest.mark.parametrize("ext", [".png", ".tif"])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_read_ldr_lossless_rgb_order_and_depth(tmp_path: Path, ext: str, dtype: type) -> None:
    top = np.iinfo(dtype).max
    rgb = _rng().integers(0, top + 1, size=(7, 5, 3), dtype=np.int64).astype(dtype)
    path = tmp_path / f"a{ext}"
    assert cv2.imwrite(str(path), rgb[:, :, ::-1].copy())  # OpenCV writes BGR
    out = io.read_ldr(path)
    assert out.dtype == dtype and out.shape == (7, 5, 3)
    np.testing.assert_array_equal(out, rgb)


def test_read_ldr_gray_is_replicated_and_alpha_dropped(tmp_path: Path) -> None:
    gray = _rng(1).integers(0, 256, size=(4, 6), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "g.png"), gray)
    out = io.read_ldr(tmp_path / "g.png")
    assert out.shape == (4, 6, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[:, :, c], gray)

    bgra = _rng(2).integers(0, 256, size=(3, 3, 4), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "a.png"), bgra)
    out = io.read_ldr(tmp_path / "a.png")
    np.testing.assert_array_equal(out, bgra[:, :, 2::-1])


def test_read_ldr_jpeg(tmp_path: Path) -> None:
    rgb = np.full((16, 16, 3), (200, 100, 50), np.uint8)
    cv2.imwrite(str(tmp_path / "a.jpg"), rgb[:, :, ::-1].copy(), [cv2.IMWRITE_JPEG_QUALITY, 100])
    out = io.read_ldr(tmp_path / "a.jpg")
    assert out.dtype == np.uint8
    assert np.abs(out.astype(int) - rgb).max() <= 3  # flat colour survives JPEG within a few codes


@pytest.mark.parametrize("case", ["missing", "empty", "garbage", "truncated_png", "truncated_jpg", "float_tiff"])
def test_read_ldr_errors_name_the_file(tmp_path: Path, case: str) -> None:
    path = tmp_path / f"bad_{case}.png"
    img = _rng(3).integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
    if case == "empty":
        path.write_bytes(b"")
    elif case == "garbage":
        path.write_bytes(b"this is not an image" * 10)
    elif case == "truncated_png":
        data = cv2.imencode(".png", img)[1].tobytes()
        path.write_bytes(data[: len(data) // 2])
    elif case == "truncated_jpg":
        path = tmp_path / "bad.jpg"
        data = cv2.imencode(".jpg", img)[1].tobytes()
        path.write_bytes(data[: len(data) // 2])
    elif case == "float_tiff":
        path = tmp_path / "bad.tif"
        path.write_bytes(cv2.imencode(".tiff", img.astype(np.float32))[1].tobytes())
    with pytest.raises(io.ImageReadError) as info:
        io.read_ldr(path)
    assert str(path) in str(info.value)
    assert isinstance(info.value, ValueError)
    assert info.value.path == str(path)


def test_to_float() -> None:
    np.testing.assert_allclose(io.to_float(np.array([0, 51, 255], np.uint8)), [0.0, 0.2, 1.0], rtol=1e-6)
    np.testing.assert_allclose(io.to_float(np.array([0, 65535], np.uint16)), [0.0, 1.0])


def test_write_png_8_and_16_bit(tmp_path: Path) -> None:
    x = np.array([[[0.0, 0.2, 1.0], [0.7, -1.0, np.nan]]], np.float32)
    io.write_png(tmp_path / "a.png", x)
    back = cv2.imread(str(tmp_path / "a.png"), cv2.IMREAD_UNCHANGED)[:, :, ::-1]
    # round(v * 255): 0.2 -> 51, 0.7 -> 178.5 -> 178 (half to even), clip -1 -> 0, NaN -> 0
    np.testing.assert_array_equal(back, [[[0, 51, 255], [178, 0, 0]]])
    io.write_png(tmp_path / "b.png", x, bits=16)
    back = cv2.imread(str(tmp_path / "b.png"), cv2.IMREAD_UNCHANGED)[:, :, ::-1]
    assert back.dtype == np.uint16
    np.testing.assert_array_equal(back, [[[0, 13107, 65535], [45874, 0, 0]]])  # 0.7 * 65535 = 45874.5
    u16 = _rng(4).integers(0, 65536, size=(3, 4, 3), dtype=np.int64).astype(np.uint16)
    io.write_png(tmp_path / "c.png", u16)
    np.testing.assert_array_equal(io.read_ldr(tmp_path / "c.png"), u16)
    with pytest.raises(ValueError):
        io.write_png(tmp_path / "d.png", u16, bits=8)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "b.png", "c.png"]  # no temp files left


# ------------------------------------------------------------------------------------------------- EXR


def _write_exr_reference(path: Path, channels: dict[str, np.ndarray]) -> None:
    header = {"compression": OpenEXR.ZIP_COMPRESSION, "type": OpenEXR.scanlineimage}
    OpenEXR.File(header, {k: np.ascontiguousarray(v) for k, v in channels.items()}).write(str(path))


def test_read_exr_float_half_and_y(tmp_path: Path) -> None:
    rgb = (_rng(5).random((6, 9, 3)) * 1000.0).astype(np.float32)
    _write_exr_reference(tmp_path / "f.exr", {c: rgb[:, :, i] for i, c in enumerate("RGB")})
    np.testing.assert_array_equal(io.read_hdr(tmp_path / "f.exr"), rgb)

    half = rgb.astype(np.float16)
    _write_exr_reference(tmp_path / "h.exr", {c: half[:, :, i] for i, c in enumerate("RGB")} | {"A": half[:, :, 0]})
    out = io.read_hdr(tmp_path / "h.exr")
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, half.astype(np.float32))

    _write_exr_reference(tmp_path / "y.exr", {"Y": rgb[:, :, 1]})
    out = io.read_hdr(tmp_path / "y.exr")
    for c in range(3):
        np.testing.assert_array_equal(out[:, :, c], rgb[:, :, 1])


def test_read_exr_errors(tmp_path: Path) -> None:
    z = np.ones((4, 4), np.float32)
    _write_exr_reference(tmp_path / "depth.exr", {"Z": z})
    with pytest.raises(io.ImageReadError, match=r"depth\.exr.*R, G, B"):
        io.read_hdr(tmp_path / "depth.exr")
    _write_exr_reference(tmp_path / "rg.exr", {"R": z, "G": z})
    with pytest.raises(io.ImageReadError, match=r"rg\.exr"):
        io.read_hdr(tmp_path / "rg.exr")

    _write_exr_reference(tmp_path / "ok.exr", {c: _rng(6).random((64, 64)).astype(np.float32) for c in "RGB"})
    data = (tmp_path / "ok.exr").read_bytes()
    for cut in (0, 20, len(data) // 2, len(data) - 8):
        (tmp_path / "cut.exr").write_bytes(data[:cut])
        with pytest.raises(io.ImageReadError, match=r"cut\.exr"):
            io.read_hdr(tmp_path / "cut.exr")
    with pytest.raises(io.ImageReadError, match=r"unknown HDR extension"):
        io.read_hdr(tmp_path / "x.png")


@pytest.mark.parametrize("half", [True, False])
def test_write_exr_roundtrip_with_reference_reader(tmp_path: Path, half: bool) -> None:
    img = (np.exp(_rng(7).normal(0.0, 4.0, (5, 7, 3)))).astype(np.float32)  # many decades
    io.write_exr(tmp_path / "o.exr", img, half=half)
    f = OpenEXR.File(str(tmp_path / "o.exr"), separate_channels=True)
    ch = f.channels()
    for i, c in enumerate("RGB"):
        expected = img[:, :, i].astype(np.float16) if half else img[:, :, i]
        assert ch[c].pixels.dtype == (np.float16 if half else np.float32)
        np.testing.assert_array_equal(ch[c].pixels, expected)
    assert [p.name for p in tmp_path.iterdir()] == ["o.exr"]


def test_writers_are_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "keep.exr"
    old = np.ones((2, 2, 3), np.float32)
    io.write_exr(target, old)
    before = target.read_bytes()

    def boom(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        io.write_exr(target, np.zeros((3, 3, 3), np.float32))
    with pytest.raises(OSError, match="disk full"):
        io.write_hdr(tmp_path / "new.hdr", np.zeros((3, 3, 3), np.float32))
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["keep.exr"]  # temporaries removed, nothing partial


# ---------------------------------------------------------------------------------------------- RGBE


def _rgbe_file(path: Path, body: bytes, width: int, height: int, extra: bytes = b"", ydir: bytes = b"-Y") -> None:
    header = b"#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n" + extra + b"\n" + ydir + b" %d +X %d\n" % (height, width)
    path.write_bytes(header + body)


def test_read_rgbe_flat_pixels_by_hand(tmp_path: Path) -> None:
    # value = mantissa * 2 ** (exponent - 136):  (128, 64, 32, 129) -> (1, 0.5, 0.25); (0, 0, 0, 0) -> 0
    body = bytes([128, 64, 32, 129, 0, 0, 0, 0, 200, 100, 0, 140])
    _rgbe_file(tmp_path / "a.hdr", body, width=3, height=1)
    out = io.read_hdr(tmp_path / "a.hdr")
    np.testing.assert_array_equal(out, [[[1.0, 0.5, 0.25], [0, 0, 0], [200 * 16, 100 * 16, 0]]])
    # +Y stores the bottom row first; EXPOSURE=2 means the writer doubled the values
    body = bytes([128, 128, 128, 129, 128, 128, 128, 130])
    _rgbe_file(tmp_path / "b.hdr", body, width=1, height=2, extra=b"EXPOSURE=2\n", ydir=b"+Y")
    np.testing.assert_array_equal(io.read_hdr(tmp_path / "b.hdr")[:, 0, 0], [1.0, 0.5])


def test_read_rgbe_run_length_scanline_by_hand(tmp_path: Path) -> None:
    width = 8
    r = bytes([128 + 8, 100])  # a run of 8 x 100
    g = bytes([8, 0, 1, 2, 3, 4, 5, 6, 7])  # 8 literal bytes
    b = bytes([128 + 4, 9, 4, 10, 11, 12, 13])  # run of 4 x 9, then 4 literals
    e = bytes([128 + 8, 130])
    body = bytes([2, 2, 0, width]) + r + g + b + e
    _rgbe_file(tmp_path / "rle.hdr", body, width=width, height=1)
    out = io.read_hdr(tmp_path / "rle.hdr")
    scale = 2.0 ** (130 - 136)
    np.testing.assert_array_equal(out[0, :, 0], np.full(8, 100 * scale))
    np.testing.assert_array_equal(out[0, :, 1], np.arange(8) * scale)
    np.testing.assert_array_equal(out[0, :, 2], np.array([9, 9, 9, 9, 10, 11, 12, 13]) * scale)
    # OpenCV's independent decoder agrees
    ref = cv2.imread(str(tmp_path / "rle.hdr"), cv2.IMREAD_UNCHANGED)[:, :, ::-1]
    np.testing.assert_array_equal(out, ref)
    # truncated inside the runs
    _rgbe_file(tmp_path / "cut.hdr", body[:-3], width=width, height=1)
    with pytest.raises(io.ImageReadError, match=r"cut\.hdr.*truncated"):
        io.read_hdr(tmp_path / "cut.hdr")


@pytest.mark.parametrize(
    "content, message",
    [
        (b"P6\n1 1\n255\n\x00\x00\x00", "signature"),
        (b"#?RADIANCE\nFORMAT=32-bit_rle_xyze\n\n-Y 1 +X 1\n\x80\x80\x80\x80", "format"),
        (b"#?RADIANCE\n\n+X 1 -Y 1\n\x80\x80\x80\x80", "resolution"),
        (b"#?RADIANCE\n\n-Y 0 +X 5\n", "no pixels"),
        (b"#?RADIANCE\n\n-Y 2 +X 2\n\x80\x80\x80\x80", "truncated"),
        (b"#?RADIANCE\nFORMAT=32-bit", "truncated"),
    ],
)
def test_read_rgbe_errors(tmp_path: Path, content: bytes, message: str) -> None:
    (tmp_path / "bad.hdr").write_bytes(content)
    with pytest.raises(io.ImageReadError, match=rf"bad\.hdr.*{message}"):
        io.read_hdr(tmp_path / "bad.hdr")


def test_write_hdr_roundtrip(tmp_path: Path) -> None:
    img = np.exp(_rng(8).normal(0.0, 5.0, (9, 11, 3))).astype(np.float32)
    img[0, 0] = 0.0
    img[0, 1] = (-1.0, np.nan, 2.0)
    io.write_hdr(tmp_path / "o.hdr", img)
    out = io.read_hdr(tmp_path / "o.hdr")
    ref = cv2.imread(str(tmp_path / "o.hdr"), cv2.IMREAD_UNCHANGED)[:, :, ::-1]
    np.testing.assert_array_equal(out, ref)
    clean = np.nan_to_num(np.maximum(img, 0.0))
    # RGBE: error of each channel below 1/128 of the pixel's largest channel
    err = np.abs(out - clean) / np.maximum(clean.max(axis=2, keepdims=True), 1e-30)
    assert err.max() <= 1.0 / 128.0
    np.testing.assert_array_equal(out[0, 0], 0.0)
    assert out[0, 1, 0] == 0.0 and out[0, 1, 1] == 0.0 and abs(out[0, 1, 2] - 2.0) < 2.0 / 128


def test_write_hdr_image_dispatch(tmp_path: Path) -> None:
    img = np.full((2, 3, 3), 70000.0, np.float32)  # above the float16 range
    io.write_hdr_image(tmp_path / "a.exr", img)
    np.testing.assert_array_equal(io.read_image(tmp_path / "a.exr"), img)
    with pytest.raises(ValueError, match="extension"):
        io.write_hdr_image(tmp_path / "a.png", img)
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        io.write_exr(tmp_path / "b.exr", np.zeros((2, 3), np.float32))


# ------------------------------------------------------------------------------------- tone mapping


def test_srgb_hand_values() -> None:
    x = np.array([0.0, 0.0031308, 0.18, 0.5, 1.0, 2.0], np.float32)
    expected = [0.0, 0.04045, 1.055 * 0.18 ** (1 / 2.4) - 0.055, 1.055 * 0.5 ** (1 / 2.4) - 0.055, 1.0, 1.0]
    np.testing.assert_allclose(io.srgb_oetf(x), expected, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(io.srgb_eotf(io.srgb_oetf(x[:5])), x[:5], rtol=1e-5, atol=1e-7)


def test_tonemap_preview_hand_values() -> None:
    img = np.array([[[1.0, 4.0, 0.0]]], np.float32)
    out = io.tonemap_preview(img, ev=0.0, white=4.0)
    y1 = 1.0 * (1 + 1 / 16) / 2  # extended Reinhard of 1 with white 4
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out[0, 0], [round((1.055 * y1 ** (1 / 2.4) - 0.055) * 255), 255, 0])
    # ev=1 doubles: 2 -> 2 * (1 + 2/16) / 3 = 0.75
    out = io.tonemap_preview(np.full((1, 1, 3), 1.0, np.float32), ev=1.0)
    assert out[0, 0, 0] == round((1.055 * 0.75 ** (1 / 2.4) - 0.055) * 255)


def test_tonemap_preview_auto_exposure_black_and_nan() -> None:
    flat = np.full((4, 4, 3), 123.0, np.float32)
    x = 0.18  # auto exposure maps the log-average luminance to 0.18
    y = x * (1 + x / 16) / (1 + x)
    expected = round((1.055 * y ** (1 / 2.4) - 0.055) * 255)
    assert np.all(io.tonemap_preview(flat) == expected)
    scene = np.exp(_rng(9).normal(0, 3, (8, 8, 3))).astype(np.float32)
    np.testing.assert_array_equal(io.tonemap_preview(scene), io.tonemap_preview(scene * 1000.0))
    assert np.all(io.tonemap_preview(np.zeros((3, 3, 3), np.float32)) == 0)
    bad = np.array([[[np.nan, -5.0, np.inf]]], np.float32)
    out = io.tonemap_preview(bad, ev=0.0)
    np.testing.assert_array_equal(out[0, 0], [0, 0, 255])


def test_exclusive_writes_never_replace_a_file_that_appeared(tmp_path: Path) -> None:
    """``exclusive=True`` publishes with a hard link: a file written meanwhile by another run stays as it was,
    the writer gets FileExistsError, and no temporary is left behind; without it the file is replaced."""
    img = np.full((4, 5, 3), 0.5, np.float32)
    for name, write in (("a.exr", io.write_exr), ("a.hdr", io.write_hdr), ("a.png", io.write_png)):
        dst = tmp_path / name
        dst.write_bytes(b"the other run's result")
        with pytest.raises(FileExistsError, match="written by another run"):
            write(dst, img, exclusive=True)
        assert dst.read_bytes() == b"the other run's result"
        write(dst, img)  # the default (and --overwrite): replaced
        assert dst.read_bytes() != b"the other run's result"
        fresh = tmp_path / f"new-{name}"
        write(fresh, img, exclusive=True)  # nothing there: written
        assert fresh.stat().st_size > 0
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temporaries left


def test_exclusive_write_without_hard_links(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On a filesystem without hard links (os.link fails with EPERM) the exclusive write still publishes a new
    file, and still refuses one that exists."""
    import errno

    def no_links(src, dst):
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(io.os, "link", no_links)
    img = np.full((4, 5, 3), 0.25, np.float32)
    io.write_exr(tmp_path / "a.exr", img, exclusive=True)
    np.testing.assert_allclose(io.read_hdr(tmp_path / "a.exr"), img, rtol=1e-3)
    with pytest.raises(FileExistsError, match="written by another run"):
        io.write_exr(tmp_path / "a.exr", img * 2, exclusive=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.exr"]
