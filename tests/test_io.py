"""Tests of sitm_trt.media.io against independent references: OpenCV/OpenEXR written files and hand-made bytes."""

from __future__ import annotations

import os
import struct
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

    monkeypatch.setattr(os, "link", no_links)
    img = np.full((4, 5, 3), 0.25, np.float32)
    io.write_exr(tmp_path / "a.exr", img, exclusive=True)
    np.testing.assert_allclose(io.read_hdr(tmp_path / "a.exr"), img, rtol=1e-3)
    with pytest.raises(FileExistsError, match="written by another run"):
        io.write_exr(tmp_path / "a.exr", img * 2, exclusive=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.exr"]


# ------------------------------------------------------------------- every LDR format, orientation, colour tags


def exif_block(orientation: int, byte_order: str = "<") -> bytes:
    """An EXIF block (a TIFF structure, EXIF 2.3) whose IFD0 holds only the Orientation tag (0x0112, SHORT)."""
    head = b"II*\x00" if byte_order == "<" else b"MM\x00*"
    entry = struct.pack(byte_order + "HHIHH", 0x0112, 3, 1, orientation, 0)
    return head + struct.pack(byte_order + "IH", 8, 1) + entry + struct.pack(byte_order + "I", 0)


def icc_profile(name: str, colorants: list | None, *, v4: bool = False) -> bytes:
    """A display RGB matrix/TRC ICC profile (ICC.1:2001-04 for v2, ICC.1:2010 for v4): header, tag table,
    ``desc`` (textDescriptionType, or mluc in v4), ``wtpt``, the colorants ``rXYZ gXYZ bXYZ`` (D50) and gamma 2.2
    curves; ``colorants=None``: no colorant tags (as a LUT-based profile)."""
    def s15(v: float) -> bytes:
        return struct.pack(">i", round(v * 65536))

    def xyz(c) -> bytes:
        return b"XYZ \0\0\0\0" + b"".join(s15(v) for v in c)

    if v4:
        text = name.encode("utf-16-be")
        desc = b"mluc\0\0\0\0" + struct.pack(">II", 1, 12) + b"enUS" + struct.pack(">II", len(text), 28) + text
    else:
        ascii_ = name.encode("ascii") + b"\0"
        desc = b"desc\0\0\0\0" + struct.pack(">I", len(ascii_)) + ascii_ + b"\0" * 12 + b"\0" * 67
    curve = b"curv\0\0\0\0" + struct.pack(">IH", 1, 0x0233) + b"\0\0"  # gamma 563/256 = 2.2
    tags = [(b"desc", desc), (b"wtpt", xyz((0.9642, 1.0, 0.8249))), (b"cprt", b"text\0\0\0\0CC0\0")]
    if colorants is not None:
        tags += [(b"rXYZ", xyz(colorants[0])), (b"gXYZ", xyz(colorants[1])), (b"bXYZ", xyz(colorants[2])),
                 (b"rTRC", curve), (b"gTRC", curve), (b"bTRC", curve)]
    table, body, start = b"", b"", 128 + 4 + 12 * len(tags)
    for sig, data in tags:
        data += b"\0" * (-len(data) % 4)
        table += struct.pack(">4sII", sig, start + len(body), len(data))
        body += data
    header = (struct.pack(">I", start + len(body)) + b"\0" * 4 + struct.pack(">I", 0x04300000 if v4 else 0x02100000)
              + b"mntrRGB XYZ " + b"\0" * 12 + b"acsp" + b"\0" * 28 + s15(0.9642) + s15(1.0) + s15(0.8249)
              + b"\0" * 48)
    return header + struct.pack(">I", len(tags)) + table + body


# D50 colorants of each colour space's profile (the published sRGB, Display P3 and Adobe RGB (1998) ICC profiles)
SRGB = [(0.4361, 0.2225, 0.0139), (0.3851, 0.7169, 0.0971), (0.1431, 0.0606, 0.7141)]
DISPLAY_P3 = [(0.5151, 0.2412, -0.0011), (0.2920, 0.6922, 0.0419), (0.1571, 0.0666, 0.7841)]
ADOBE_RGB = [(0.6097, 0.3111, 0.0195), (0.2053, 0.6257, 0.0609), (0.1492, 0.0632, 0.7446)]


def smooth(h: int, w: int, channels: int, dtype: type = np.uint8, seed: int = 0) -> np.ndarray:
    """A smooth image (lossy codecs keep it within a few codes) with a distinct value at every pixel."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    top = np.iinfo(dtype).max
    planes = [(x / w), (y / h), ((x + y) / (w + h)), 1 - x / (2 * w)][:channels]
    return np.rint(np.stack(planes, -1) * top).astype(dtype)


def encode(ext: str, img: np.ndarray, params: tuple = ()) -> bytes:
    """``img`` (RGB or RGBA) encoded by OpenCV; skips the test when this OpenCV has no encoder for ``ext``."""
    bgr = img[:, :, [2, 1, 0, 3][: img.shape[2]]] if img.ndim == 3 else img
    try:
        ok, buf = cv2.imencode(ext, np.ascontiguousarray(bgr), list(params))
    except cv2.error as err:
        pytest.skip(f"this OpenCV cannot write {ext}: {err}")
    assert ok
    return buf.tobytes()


JPEG_BEST = (cv2.IMWRITE_JPEG_QUALITY, 100, cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444)
# (extension, dtype, encoder parameters, largest error of the round trip in codes: 0 = lossless)
FORMATS = [
    (".png", np.uint8, (), 0),
    (".png", np.uint16, (), 0),
    (".tif", np.uint8, (), 0),
    (".tiff", np.uint16, (), 0),
    (".jpg", np.uint8, JPEG_BEST, 4),
    (".jpeg", np.uint8, JPEG_BEST, 4),
    (".webp", np.uint8, (cv2.IMWRITE_WEBP_QUALITY, 101), 0),  # quality > 100: lossless WebP
    (".bmp", np.uint8, (), 0),
    (".avif", np.uint8, (cv2.IMWRITE_AVIF_QUALITY, 100), 4),
]


@pytest.mark.parametrize(("ext", "dtype", "params", "tol"), FORMATS, ids=[f"{f[0]}-{f[1].__name__}" for f in FORMATS])
def test_every_format_round_trips(tmp_path: Path, ext: str, dtype: type, params: tuple, tol: int) -> None:
    """Written by OpenCV's encoder, read back as RGB of the file's depth: every LDR_EXTENSIONS format, 8 and 16 bits
    where the format has them, gray replicated, alpha returned by read_ldr_image (where the format keeps it)."""
    assert ext in io.LDR_EXTENSIONS
    rgb = smooth(24, 40, 3, dtype)
    path = tmp_path / f"a{ext}"
    path.write_bytes(encode(ext, rgb, params))
    out = io.read_ldr(path)
    assert out.dtype == dtype and out.shape == rgb.shape
    assert np.abs(out.astype(np.int64) - rgb).max() <= tol * (257 if dtype == np.uint16 else 1)
    gray = smooth(24, 40, 1, dtype)[:, :, 0]
    path.write_bytes(encode(ext, gray, params))
    img = io.read_ldr_image(path)
    if ext not in (".webp",):  # WebP has no gray mode: it stores RGB
        assert img.gray
    assert np.abs(img.rgb.astype(np.int64) - gray[:, :, None]).max() <= tol * (257 if dtype == np.uint16 else 1)
    if ext in (".png", ".tif", ".tiff", ".webp", ".bmp", ".avif"):
        rgba = smooth(24, 40, 4, dtype)
        path.write_bytes(encode(ext, rgba, params))
        img = io.read_ldr_image(path)
        assert img.alpha is not None and img.alpha.dtype == np.float32
        top = np.iinfo(dtype).max
        assert np.abs(img.alpha - rgba[:, :, 3] / top).max() <= (tol + 0.5) / 255
        assert np.abs(img.rgb.astype(np.int64) - rgba[:, :, :3]).max() <= tol * (257 if dtype == np.uint16 else 1)


def test_avif_above_8_bits_is_refused(tmp_path: Path) -> None:
    """OpenCV hands over a 10-bit AVIF as uint16 codes 0-1023 (not scaled to 16 bits): refused, not misread."""
    codes = (smooth(16, 16, 3, np.uint16) >> 6).astype(np.uint16)  # 10-bit codes
    (tmp_path / "a.avif").write_bytes(encode(".avif", codes, (cv2.IMWRITE_AVIF_DEPTH, 10)))
    with pytest.raises(io.ImageReadError, match="AVIF with more than 8 bits"):
        io.read_ldr(tmp_path / "a.avif")


def test_jpeg_exif_orientation_6_comes_out_rotated(tmp_path: Path) -> None:
    """Orientation 6: the stored image is displayed rotated 90 degrees clockwise (EXIF 2.3, TIFF 6.0); the
    stored top-left corner (red) ends up top-right."""
    stored = np.zeros((32, 48, 3), np.uint8)
    stored[:8, :8] = (255, 0, 0)
    ok, buf = cv2.imencodeWithMetadata(".jpg", stored[:, :, ::-1].copy(), [cv2.IMAGE_METADATA_EXIF],
                                       [np.frombuffer(exif_block(6), np.uint8)])
    (tmp_path / "phone.jpg").write_bytes(buf.tobytes())
    out = io.read_ldr(tmp_path / "phone.jpg")
    assert out.shape == (48, 32, 3)
    assert np.abs(out.astype(int) - np.rot90(stored, -1)).mean() < 2  # rot90 k=-1: clockwise
    assert out[2, -3, 0] > 200 and out[2, 2, 0] < 50


@pytest.mark.parametrize("byte_order", ["<", ">"])
def test_every_exif_orientation_turns_colour_and_alpha_alike(tmp_path: Path, byte_order: str) -> None:
    """PNG with an eXIf chunk and alpha, orientations 1-8: the colour is OpenCV's upright decode, and the alpha
    is turned the same way (EXIF 2.3: 2 mirror, 3 rotate 180, 4 flip, 5 transpose, 6 rotate 90 clockwise,
    7 transverse, 8 rotate 90 counter-clockwise)."""
    display = {1: lambda x: x, 2: np.fliplr, 3: lambda x: np.rot90(x, 2), 4: np.flipud,
               5: lambda x: np.rot90(np.fliplr(x), 1), 6: lambda x: np.rot90(x, -1),
               7: lambda x: np.rot90(np.fliplr(x), -1), 8: lambda x: np.rot90(x, 1)}
    rgba = _rng(9).integers(0, 256, size=(5, 7, 4), dtype=np.uint8)
    for orientation, turn in display.items():
        ok, buf = cv2.imencodeWithMetadata(".png", rgba[:, :, [2, 1, 0, 3]].copy(), [cv2.IMAGE_METADATA_EXIF],
                                           [np.frombuffer(exif_block(orientation, byte_order), np.uint8)])
        path = tmp_path / f"o{orientation}.png"
        path.write_bytes(buf.tobytes())
        img = io.read_ldr_image(path)
        np.testing.assert_array_equal(img.rgb, cv2.imdecode(buf, cv2.IMREAD_COLOR)[:, :, ::-1])  # OpenCV's turn
        np.testing.assert_array_equal(img.rgb, turn(rgba[:, :, :3]))
        np.testing.assert_array_equal(img.alpha * 255, turn(rgba[:, :, 3]).astype(np.float32))
        assert img.notes == ()


def test_tiff_orientation_tag_is_applied(tmp_path: Path) -> None:
    """A TIFF's own Orientation tag (274), here 6: OpenCV's TIFF decoder applies it."""
    stored = _rng(10).integers(0, 256, size=(6, 9, 3), dtype=np.uint8)
    data = bytearray(cv2.imencode(".tif", stored[:, :, ::-1].copy())[1].tobytes())
    (ifd,) = struct.unpack("<I", data[4:8])
    (count,) = struct.unpack("<H", data[ifd : ifd + 2])
    for i in range(count):  # PlanarConfiguration (284, = 1, the default) becomes Orientation = 6
        at = ifd + 2 + 12 * i
        if struct.unpack("<H", data[at : at + 2])[0] == 284:
            data[at : at + 12] = struct.pack("<HHIHH", 274, 3, 1, 6, 0)
    (tmp_path / "o.tif").write_bytes(bytes(data))
    np.testing.assert_array_equal(io.read_ldr(tmp_path / "o.tif"), np.rot90(stored, -1))


@pytest.mark.parametrize("ext", [".png", ".jpg", ".webp"])
def test_colour_profiles_other_than_srgb_are_reported_not_converted(tmp_path: Path, ext: str) -> None:
    """ICC profiles (built here from the ICC spec): Display P3 and Adobe RGB get a note naming the profile, the
    sRGB profile (v2, or v4 without colorants but named sRGB) none; the pixels are those of the untagged file."""
    rgb = smooth(16, 24, 3)
    untagged = tmp_path / f"plain{ext}"
    untagged.write_bytes(encode(ext, rgb, (cv2.IMWRITE_JPEG_QUALITY, 100) if ext == ".jpg" else ()))
    cases = [("Display P3", DISPLAY_P3, False, True), ("Adobe RGB (1998)", ADOBE_RGB, True, True),
             ("sRGB IEC61966-2.1", SRGB, False, False), ("sRGB v4 ICC preference", None, True, False)]
    for name, colorants, v4, reported in cases:
        profile = np.frombuffer(icc_profile(name, colorants, v4=v4), np.uint8)
        params = [cv2.IMWRITE_JPEG_QUALITY, 100] if ext == ".jpg" else []
        ok, buf = cv2.imencodeWithMetadata(ext, rgb[:, :, ::-1].copy(), [cv2.IMAGE_METADATA_ICCP], [profile], params)
        path = tmp_path / f"tagged{ext}"
        path.write_bytes(buf.tobytes())
        img = io.read_ldr_image(path)
        np.testing.assert_array_equal(img.rgb, io.read_ldr(untagged))
        if reported:
            assert len(img.notes) == 1 and f"colour profile {name!r} is not sRGB" in img.notes[0], img.notes
            assert img.notes[0].startswith(str(path))
        else:
            assert img.notes == (), img.notes


def test_png_cicp_other_than_srgb_is_reported(tmp_path: Path) -> None:
    """A PNG cICP chunk (H.273 code points): BT.709/sRGB says nothing; P3 primaries or a PQ transfer get a note."""
    rgb = smooth(8, 8, 3)
    for cicp, note in (((1, 13, 0, 1), None), ((12, 13, 0, 1), "colour primaries 12, transfer 13"),
                       ((9, 16, 0, 1), "an HDR image")):
        ok, buf = cv2.imencodeWithMetadata(".png", rgb[:, :, ::-1].copy(), [cv2.IMAGE_METADATA_CICP],
                                           [np.array(cicp, np.uint8)])
        (tmp_path / "c.png").write_bytes(buf.tobytes())
        img = io.read_ldr_image(tmp_path / "c.png")
        np.testing.assert_array_equal(img.rgb, rgb)
        assert (img.notes == ()) if note is None else (note in img.notes[0]), img.notes


@pytest.mark.parametrize("ext", [".webp", ".bmp", ".avif"])
def test_declared_size_is_checked_before_decoding(tmp_path: Path, ext: str) -> None:
    """The header's size (memory.image_size) of the formats added to PNG/JPEG/TIFF, and the refusal it allows."""
    from sitm_trt.runtime import memory

    data = encode(ext, np.zeros((37, 91, 3), np.uint8))
    assert memory.image_size(data) == (37, 91)
    (tmp_path / f"a{ext}").write_bytes(data)
    with pytest.raises(MemoryError, match=r"declares 91x37 pixels \(3367 pixels\), more than the 1000 pixels that"):
        io.read_ldr(tmp_path / f"a{ext}", max_pixels=1000)  # small budgets in pixels, not "0 MP"


def test_an_animated_png_or_webp_converts_its_first_frame_with_a_notice(tmp_path):
    """Like a multi-page TIFF: an animated PNG or WebP is read as its first frame, and the CLI says so (it was
    silent); a still image of the same formats gets no notice."""
    cv2 = pytest.importorskip("cv2")
    if not hasattr(cv2, "imwriteanimation"):
        pytest.skip("this OpenCV cannot write animations")
    from sitm_trt.tools import cli_infer

    frames = [np.full((16, 16, 3), v, np.uint8) for v in (40, 120, 200)]
    anim = cv2.Animation()
    anim.frames, anim.durations = frames, [100] * 3
    notes: list[str] = []
    for ext in (".png", ".webp"):
        assert cv2.imwriteanimation(str(tmp_path / f"anim{ext}"), anim)
        assert cv2.imwrite(str(tmp_path / f"still{ext}"), frames[1])
        rgb, _, _ = cli_infer.read_image(tmp_path / f"anim{ext}", notice=notes.append)
        assert abs(int(rgb.mean()) - 40) <= 2  # the first frame
        cli_infer.read_image(tmp_path / f"still{ext}", notice=notes.append)
    assert notes == [f"{tmp_path / 'anim.png'}: has 3 frames (an animation); converting the first only",
                     f"{tmp_path / 'anim.webp'}: has 3 frames (an animation); converting the first only"]
