"""Previews (sitm_trt.media.preview): the SDR tone mapper keeps highlights bright and coloured and the input's
look where the HDR adds nothing; the PQ PNG decodes back to the HDR within its 16-bit step and carries cICP
9/16/0/1 and cLLi; the side-by-side pictures; AVIF and Ultra HDR where imagecodecs is installed.

PNG files are decoded here with zlib and the PNG filter definitions (no image library), and PQ is undone with
sitm_trt.media.transfer (itself checked against colour-science in test_transfer.py)."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest

from sitm_trt.media import io, preview, transfer

Y709 = np.array([0.2126, 0.7152, 0.0722])


# ------------------------------------------------------------------------------------------ PNG decoding


def png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """(type, data) of every chunk, in order; every CRC checked."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG signature"
    out, pos = [], 8
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + n]
        (crc,) = struct.unpack(">I", data[pos + 8 + n : pos + 12 + n])
        assert crc == zlib.crc32(kind + body), f"bad CRC in {kind!r}"
        out.append((kind, body))
        pos += 12 + n
    assert out[-1][0] == b"IEND"
    return out


def decode_png16(data: bytes) -> np.ndarray:
    """A 16-bit RGB, non-interlaced PNG -> uint16 (H, W, 3), by the PNG specification's filters."""
    chunks = png_chunks(data)
    assert chunks[0][0] == b"IHDR"
    w, h, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", chunks[0][1])
    assert (depth, colour, interlace) == (16, 2, 0), (depth, colour, interlace)
    raw = zlib.decompress(b"".join(body for kind, body in chunks if kind == b"IDAT"))
    bpp, stride = 6, 6 * w
    rows, prev = [], bytearray(stride)
    for y in range(h):
        ftype, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b = prev[i]
            c = prev[i - bpp] if i >= bpp else 0
            if ftype == 1:
                line[i] = (line[i] + a) & 255
            elif ftype == 2:
                line[i] = (line[i] + b) & 255
            elif ftype == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif ftype == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
            else:
                assert ftype == 0, f"filter type {ftype}"
        rows.append(bytes(line))
        prev = line
    return np.frombuffer(b"".join(rows), ">u2").reshape(h, w, 3).astype(np.uint16)


def cicp_and_clli(data: bytes) -> tuple[bytes, tuple[float, float]]:
    """The cICP bytes and the cLLi (MaxCLL, MaxFALL) in cd/m2; both must come before the first IDAT."""
    kinds = [k for k, _ in png_chunks(data)]
    first_idat = kinds.index(b"IDAT")
    assert kinds.count(b"cICP") == 1 and kinds.index(b"cICP") < first_idat, kinds
    assert kinds.count(b"cLLi") == 1 and kinds.index(b"cLLi") < first_idat, kinds
    chunks = dict(png_chunks(data))
    max_cll, max_fall = struct.unpack(">II", chunks[b"cLLi"])
    return chunks[b"cICP"], (max_cll / 10000, max_fall / 10000)


# ----------------------------------------------------------------------------------------------- SDR


def srgb_to_linear(codes: np.ndarray) -> np.ndarray:
    v = codes.astype(np.float64) / 255
    return np.where(v <= 0.04045, v / 12.92, ((v + 0.055) / 1.055) ** 2.4)


def lamp_scene(h: int = 48, w: int = 64) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A textured room (linear 0.08-0.4) with a warm clipped lamp 60x brighter; masks of the lamp's core and
    of a ring around it."""
    rng = np.random.default_rng(0)
    hdr = (rng.uniform(0.08, 0.4, (h, w, 1)) * np.array([1.0, 0.95, 0.85])).astype(np.float32)
    yy, xx = np.mgrid[:h, :w]
    r = np.hypot(yy - h / 2, xx - w / 2)
    hdr[r < 6] = (60.0, 30.0, 8.0)
    return hdr, r < 4, (r > 10) & (r < 16)


def test_lamp_stays_brighter_than_its_surroundings_and_keeps_its_colour():
    hdr, core, ring = lamp_scene()
    out = preview.tonemap(hdr)
    assert out.dtype == np.uint8 and out.shape == hdr.shape
    lin = srgb_to_linear(out)
    lamp, room = lin[core].mean(axis=0), lin[ring].mean(axis=0)
    assert lamp @ Y709 > 1.8 * (room @ Y709), (lamp, room)
    assert lamp.max() > 0.97  # as bright as an SDR pixel of its colour can be
    # its colour: R > G > B in the lamp's own ratios (60 : 30 : 8), not grey or white
    assert (lamp.max() - lamp.min()) / lamp.max() > 0.8, lamp
    np.testing.assert_allclose(lamp / lamp[0], [1.0, 0.5, 8 / 60], atol=0.03)
    # no pixel at or below the log-average luminance is darker than the input shows it (the HDR clipped at 1)
    ldr = np.rint(io.srgb_oetf(np.clip(hdr, 0, 1)) * 255)
    lum = hdr.astype(np.float64) @ Y709
    low = lum <= np.exp(np.log(lum).mean())
    assert low.sum() > 1000 and (out[low].astype(int) >= ldr[low] - 1).all()


def test_monotonic_in_luminance():
    h = np.full((8, 200, 3), 0.2, np.float32)
    s = np.geomspace(1e-4, 80.0, 200).astype(np.float32)
    h[2] = s[:, None]  # grey ramp
    h[4] = s[:, None] * np.array([1.0, 0.6, 0.2], np.float32)  # orange ramp
    h[6] = s[:, None] * np.array([0.2, 0.3, 1.0], np.float32)  # blue ramp
    out = preview.tonemap(h).astype(int)
    for row in (2, 4, 6):
        assert (np.diff(out[row], axis=0) >= 0).all(), row
        assert (np.diff(srgb_to_linear(out[row]) @ Y709) >= 0).all(), row
        assert out[row, -1].max() > 250 and out[row, 0].max() < 5


def test_the_input_comes_back_where_the_hdr_adds_nothing():
    rng = np.random.default_rng(1)
    bright = rng.integers(90, 256, (20, 30, 3), dtype=np.uint8)
    bright[0, 0] = 255  # the brightest pixel is the input's white: the HDR adds nothing above it
    hdr = srgb_to_linear(bright).astype(np.float32)
    assert np.abs(preview.tonemap(hdr).astype(int) - bright).max() <= 1
    # a dark image is brightened (never darkened), its log-average by 2x (+1 EV) in linear light, not more
    dark = rng.integers(0, 70, (20, 30, 3), dtype=np.uint8)
    lin = srgb_to_linear(dark)
    out = srgb_to_linear(preview.tonemap(lin.astype(np.float32)))
    assert (out >= lin - 1e-3).all() and (out <= 2.1 * lin + 2e-3).all()
    key = lambda x: np.exp(np.log(np.maximum(x @ Y709, 1e-4)).mean())  # noqa: E731
    assert key(out) / key(lin) == pytest.approx(2.0, rel=0.05)


def test_the_log_average_goes_to_mid_grey():
    hdr = np.full((32, 32, 3), 0.05, np.float32)
    hdr[:16] = 0.2
    hdr[0, :4] = 40.0  # highlights far above the input's white
    lum = hdr.astype(np.float64) @ Y709
    key = np.exp(np.log(lum).mean())
    assert 0.09 < key < 0.18  # so the target is mid grey itself
    out = srgb_to_linear(preview.tonemap(hdr))
    # the pixels at the key's luminance would be there; the two levels straddle it in the right order
    lo, hi = out[20, 5] @ Y709, out[5, 5] @ Y709
    k, white = preview.exposure(hdr)
    assert white == pytest.approx(40.0, rel=1e-5)
    t = lambda x: x * (1 + x / (k * white) ** 2) / (1 + x)  # noqa: E731 - the documented curve
    assert t(k * key) == pytest.approx(0.18, rel=1e-4)
    assert lo == pytest.approx(t(k * 0.05), abs=3e-3) and hi == pytest.approx(t(k * 0.2), abs=3e-3)
    assert lo < 0.18 < hi


def test_bad_values_and_black():
    assert (preview.tonemap(np.zeros((4, 5, 3), np.float32)) == 0).all()
    bad = np.array([[[np.nan, 0.5, -1.0], [np.inf, np.inf, np.inf], [2.0, 2.0, 2.0], [0.3, 0.3, 0.3]]], np.float32)
    out = preview.tonemap(bad)
    assert out.dtype == np.uint8 and out[0, 0, 0] == 0 and out[0, 0, 2] == 0 and out[0, 0, 1] > 0
    assert (out[0, 1] == out[0, 2]).all() and (out[0, 2] == 255).all()  # +Inf counts as the largest finite value
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        preview.tonemap(np.zeros((4, 5), np.float32))


# ------------------------------------------------------------------------------------------------ HDR


def assert_within_the_16_bit_step(codes: np.ndarray, hdr: np.ndarray) -> np.ndarray:
    """PQ code values decode (BT.2020 cd/m2) to the HDR's display light within half a 16-bit step per channel;
    returns that half step (cd/m2, per value)."""
    light = transfer.pq_eotf(codes / 65535.0)
    want = transfer.display_light(hdr, "bt2020", 203.0, 1000.0)
    e = transfer.pq_inverse_eotf(want)
    step = (transfer.pq_eotf(np.minimum(e + 0.5 / 65535, 1)) - transfer.pq_eotf(np.maximum(e - 0.5 / 65535, 0))) / 2
    assert (np.abs(light - want) <= step * (1 + 1e-6) + 1e-9).all()
    return step


def test_pq_png_decodes_back_within_the_16_bit_step_and_is_tagged(tmp_path):
    rng = np.random.default_rng(2)
    hdr = (rng.uniform(0, 1, (9, 13, 3)) ** 3 * 4.9).astype(np.float32)  # within 1000 cd/m2 at 203 per 1.0
    hdr[0, 0] = 1.0  # reference white
    hdr[0, 1] = (10.0, 0.0, 0.0)  # above the peak: clipped
    path = tmp_path / "x.preview-hdr.png"
    preview.write_hdr_preview(path, hdr)
    data = path.read_bytes()
    assert cicp_and_clli(data)[0] == bytes((9, 16, 0, 1))  # BT.2020, PQ, RGB, full range
    codes = decode_png16(data)
    step = assert_within_the_16_bit_step(codes, hdr)
    light = transfer.pq_eotf(codes / 65535.0)
    assert light[0, 0] == pytest.approx([203.0] * 3, rel=2e-4)
    assert light[0, 1, 0] == pytest.approx(1000.0, rel=2e-4)
    # back in the HDR's own units (linear BT.709, 1.0 = 203 cd/m2), away from the clipped pixel: within the
    # half steps carried through the BT.2020 -> BT.709 matrix
    back = transfer.decode(codes / 65535.0, "pq", "bt2020", 203.0, 1000.0)
    bound = (step / 203.0) @ np.abs(transfer.gamut_matrix("bt2020", "bt709")).T
    ok = np.ones(hdr.shape[:2], bool)
    ok[0, 1] = False
    assert (np.abs(back - hdr)[ok] <= bound[ok] * (1 + 1e-6) + 1e-9).all()
    # cLLi: MaxCLL and MaxFALL of max(R, G, B), as for HDR10 video
    max_cll, max_fall = cicp_and_clli(data)[1]
    want_cll, want_fall = transfer.light_stats(hdr, "pq", "bt2020", 203.0, 1000.0)
    assert max_cll == pytest.approx(want_cll, rel=1e-3) and max_fall == pytest.approx(want_fall, rel=1e-3)


def test_side_by_side_pictures(tmp_path):
    rng = np.random.default_rng(3)
    ldr = rng.integers(0, 256, (10, 14, 3), dtype=np.uint8)
    hdr = (srgb_to_linear(ldr) * 3).astype(np.float32)
    preview.write_side_by_side(tmp_path / "s.png", ldr, hdr)
    sdr = io.read_ldr(tmp_path / "s.png")
    assert sdr.shape == (10, 14 + 8 + 14, 3) and sdr.dtype == np.uint8
    assert (sdr[:, :14] == ldr).all() and (sdr[:, 14:22] == 0).all()
    assert (sdr[:, 22:] == preview.tonemap(hdr)).all()
    preview.write_side_by_side(tmp_path / "h.png", ldr.astype(np.uint16) * 257, hdr, hdr_screen=True)
    data = (tmp_path / "h.png").read_bytes()
    assert cicp_and_clli(data)[0] == bytes((9, 16, 0, 1))
    codes = decode_png16(data)
    # left: the input as an HDR screen shows SDR (sRGB decoded, white at 203 cd/m2); right: the HDR
    assert_within_the_16_bit_step(codes[:, :14], srgb_to_linear(ldr))
    assert (codes[:, 22:] == preview.pq_codes(hdr)).all()
    with pytest.raises(ValueError, match="shape"):
        preview.write_side_by_side(tmp_path / "x.png", ldr[:5], hdr)


def test_hdr_preview_extensions(tmp_path):
    with pytest.raises(ValueError, match="HDR previews are"):
        preview.write_hdr_preview(tmp_path / "x.tif", np.zeros((2, 2, 3), np.float32))


def test_avif_and_ultrahdr(tmp_path):
    ic = pytest.importorskip("imagecodecs")
    rng = np.random.default_rng(4)
    hdr = np.repeat(np.repeat(rng.uniform(0.05, 4.0, (8, 12, 3)), 4, 0), 4, 1).astype(np.float32)  # flat blocks
    preview.write_hdr_preview(tmp_path / "x.avif", hdr)
    data = (tmp_path / "x.avif").read_bytes()
    assert b"colrnclx" + bytes((0, 9, 0, 16, 0, 9, 0x80)) in data  # BT.2020, PQ, BT.2020 NCL, full range
    ten = ic.avif_decode(data).astype(np.float64) / 1023
    want = transfer.encode(hdr, "pq", "bt2020", 203.0, 1000.0)
    assert np.abs(ten - want).mean() < 3 / 1023  # lossy 10-bit (about 1.6 steps measured)
    preview.write_hdr_preview(tmp_path / "x.jpg", hdr)
    data = (tmp_path / "x.jpg").read_bytes()
    assert data[:2] == b"\xff\xd8"
    lin = ic.ultrahdr_decode(data, dtype="float16", transfer=ic.ULTRAHDR.CT.LINEAR)[..., :3].astype(np.float64)
    # a gain-map JPEG is lossy: luminance within 10 % in the median
    rel = np.abs(lin @ Y709 - hdr @ Y709) / (hdr @ Y709)
    assert np.median(rel) < 0.1, np.median(rel)
