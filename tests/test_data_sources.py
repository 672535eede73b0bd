"""HDR sources: HLG decoding, radiance validation, folder scanning, panorama views, the Debian fetch."""

from __future__ import annotations

import hashlib
import math
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2")
pytest.importorskip("OpenEXR")

from sitm_trt.media import io  # noqa: E402
from sitm_trt.media.io import ImageReadError  # noqa: E402
from sitm_training.data import fetch as F  # noqa: E402
from sitm_training.data import source_tables as T  # noqa: E402
from sitm_training.data import sources as S  # noqa: E402
from sitm_training.data.decoders import hlg_to_linear  # noqa: E402
from sitm_training.data.views import equirect_view, sample_view  # noqa: E402


def test_hlg_inverse_oetf_hand_values() -> None:
    e = np.array([0.0, 0.25, 0.5, 0.75, 1.0])
    a, b = 0.17883277, 1 - 4 * 0.17883277
    c = 0.5 - a * math.log(4 * a)
    expected = [0.0, 0.25**2 / 3, 0.5**2 / 3, (math.exp((0.75 - c) / a) + b) / 12, 1.0]
    np.testing.assert_allclose(hlg_to_linear(e), expected, rtol=1e-5, atol=1e-8)


def test_load_hlg_png_converts_to_bt709(tmp_path: Path) -> None:
    code = np.zeros((2, 2, 3), np.uint16)
    code[0, 0] = 32768  # gray at HLG 0.5 -> 1/12
    code[0, 1] = (0, 65535, 0)  # pure BT.2020 green -> outside BT.709: negative R, B clamp to 0
    code[1, :] = 16384
    io.write_png(tmp_path / "hlg.png", code)
    lin = S.load_radiance(tmp_path / "hlg.png", "hlg_png")
    gray = (32768 / 65535) ** 2 / 3
    np.testing.assert_allclose(lin[0, 0], [gray] * 3, rtol=1e-4)  # the matrix keeps white
    np.testing.assert_allclose(lin[0, 1], [0.0, 1.1329, 0.0], atol=1e-4)
    io.write_png(tmp_path / "eight.png", code.astype(np.uint8))
    with pytest.raises(ImageReadError, match="16-bit"):
        S.load_radiance(tmp_path / "eight.png", "hlg_png")


def test_validate_radiance() -> None:
    good = np.ones((4, 4, 3), np.float32)
    tiny_neg = good.copy()
    tiny_neg[0, 0, 0] = -0.003  # DWAB-like noise: clamped
    assert S.validate_radiance(tiny_neg, "a.exr")[0, 0, 0] == 0.0
    for bad, match in [
        (np.where(np.arange(48).reshape(4, 4, 3) == 5, np.nan, good), "1 NaN/Inf"),
        (np.where(np.arange(48).reshape(4, 4, 3) < 2, np.inf, good), "2 NaN/Inf"),
        (np.where(np.arange(48).reshape(4, 4, 3) == 0, -0.5, good), "negative"),
        (np.zeros((4, 4, 3), np.float32), "all zero"),
        (np.zeros((0, 4, 3), np.float32), "non-empty"),
        (np.ones((4, 4), np.float32), "non-empty"),
    ]:
        with pytest.raises(ImageReadError, match=rf"bad\.exr: .*{match}"):
            S.validate_radiance(bad, "bad.exr")


def _exr(path: Path, img: np.ndarray) -> None:
    io.write_exr(path, img.astype(np.float32), half=False)


def test_scan_hdr_dir_reports_and_skips_broken_files(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    root = tmp_path / "mine"
    (root / "sub").mkdir(parents=True)
    _exr(root / "a.exr", rng.random((8, 8, 3)) + 0.1)
    io.write_hdr(root / "b.hdr", (rng.random((8, 8, 3)) + 0.1).astype(np.float32))
    _exr(root / "sub" / "c.exr", rng.random((8, 8, 3)) + 0.1)
    nan = rng.random((8, 8, 3))
    nan[2, 2, 1] = np.nan
    _exr(root / "nan.exr", nan)
    data = (root / "a.exr").read_bytes()
    (root / "truncated.exr").write_bytes(data[: len(data) // 2])
    (root / "depth.exr").write_bytes(b"")
    (root / "notes.txt").write_text("ignored")
    found, rejected = S.scan_hdr_dir(root)
    assert [s.id for s in found] == ["user/mine/a.exr", "user/mine/b.hdr", "user/mine/sub/c.exr"]
    assert all(s.sha256 == hashlib.sha256(s.path.read_bytes()).hexdigest() for s in found)
    reasons = {Path(p).name: r for p, r in rejected}
    assert set(reasons) == {"nan.exr", "truncated.exr", "depth.exr"}
    assert "NaN" in reasons["nan.exr"] and "empty" in reasons["depth.exr"]
    with pytest.raises(FileNotFoundError):
        S.scan_hdr_dir(tmp_path / "nope")


def _direction_pano(h: int = 64, w: int = 128) -> np.ndarray:
    """Each pixel stores its own direction: (cos lon + 2, sin lon + 2, lat + 2)."""
    v, u = np.mgrid[0:h, 0:w].astype(np.float64) + 0.5
    lon = (u / w - 0.5) * 2 * math.pi
    lat = (0.5 - v / h) * math.pi
    return np.stack([np.cos(lon) + 2, np.sin(lon) + 2, lat + 2], axis=-1).astype(np.float32)


@pytest.mark.parametrize("yaw_deg, pitch_deg", [(0, 0), (90, 0), (-135, 20), (170, -30)])
def test_equirect_view_looks_where_asked(yaw_deg: float, pitch_deg: float) -> None:
    pano = _direction_pano()
    view = equirect_view(pano, math.radians(yaw_deg), math.radians(pitch_deg), math.radians(60), 9)
    assert view.shape == (9, 9, 3)
    centre = view[4, 4]
    yaw, pitch = math.radians(yaw_deg), math.radians(pitch_deg)
    np.testing.assert_allclose(centre, [math.cos(yaw) + 2, math.sin(yaw) + 2, pitch + 2], atol=0.03)
    assert view[0, 4, 2] > view[8, 4, 2]  # the top row looks higher


def test_sample_view_deterministic_and_sized() -> None:
    pano = _direction_pano()
    a, ia = sample_view(np.random.default_rng(1), pano, "panorama", 16)
    b, ib = sample_view(np.random.default_rng(1), pano, "panorama", 16)
    np.testing.assert_array_equal(a, b)
    assert ia == ib and set(ia) == {"yaw", "pitch", "fov"}
    c, _ = sample_view(np.random.default_rng(1), pano, "image", 16)
    assert c.shape == (16, 16, 3) and c.dtype == np.float32 and c.min() >= 0


def test_debian_table_is_consistent() -> None:
    ids = [f.id for f in T.DEBIAN_FILES]
    assert len(ids) == len(set(ids)) == 11
    assert T.TEST_SOURCE_IDS <= set(ids)
    assert all(len(f.sha256) == 64 and f.member.startswith("./usr/share/") for f in T.DEBIAN_FILES)


def test_fetch_without_apt_get_says_what_to_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(F.shutil, "which", lambda name: None)
    with pytest.raises(F.FetchError, match="apt-get not found.*--hdr-dir"):
        F.fetch(tmp_path)


@pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="needs dpkg-deb")
def test_fetch_extracts_and_checks_a_fake_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # a tiny package with one EXR inside, served by a fake apt-get that copies it
    pkg = tmp_path / "pkg"
    (pkg / "DEBIAN").mkdir(parents=True)
    (pkg / "DEBIAN" / "control").write_text(
        "Package: fakehdr\nVersion: 1.0\nArchitecture: all\nMaintainer: t <t@t>\nDescription: test\n"
    )
    (pkg / "usr/share/fake").mkdir(parents=True)
    _exr(pkg / "usr/share/fake/x.exr", np.full((4, 4, 3), 2.0))
    payload = (pkg / "usr/share/fake/x.exr").read_bytes()
    deb = tmp_path / "fakehdr.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "--build", str(pkg), str(deb)], check=True, capture_output=True)
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "apt-get").write_text(
        f'#!/bin/sh\n[ "$1" = download ] && [ "$2" = fakehdr ] && cp "{deb}" ./fakehdr_1.0_all.deb\n'
    )
    (bindir / "apt-get").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")

    good = T.DebianFile(
        "fake/x", "fakehdr", "./usr/share/fake/x.exr", hashlib.sha256(payload).hexdigest(), "image", "test"
    )
    monkeypatch.setattr(F, "DEBIAN_FILES", (good,))
    cache = tmp_path / "cache"
    got = F.fetch(cache)
    assert got == {"fake/x": cache / "hdr" / "fake" / "x.exr"}
    assert got["fake/x"].read_bytes() == payload
    assert list((cache / "debs").iterdir()) == []  # the .deb is removed unless keep_debs
    found, missing = F.find_debian_sources(cache)
    assert [s.id for s in found] == ["fake/x"] and missing == []
    np.testing.assert_array_equal(found[0].load(), np.full((4, 4, 3), 2.0, np.float32))

    bad = T.DebianFile("fake/y", "fakehdr", "./usr/share/fake/x.exr", "0" * 64, "image", "test")
    monkeypatch.setattr(F, "DEBIAN_FILES", (bad,))
    with pytest.raises(F.FetchError, match=r"checksum mismatch for \['fake/y'\]"):
        F.fetch(cache)
    assert not (cache / "hdr" / "fake" / "y.exr").exists()
    got = F.fetch(cache, allow_unverified=True)
    assert got["fake/y"].read_bytes() == payload
    found, missing = F.find_debian_sources(cache)
    assert found == [] and missing == ["fake/y"]  # not verified: not used by default


def test_card_sources_fill_old_manifests_and_name_the_generator() -> None:
    """A manifest written before sources recorded their origin gets it from the fetch tables; a user folder's
    license counts as unknown; the procedural generator is listed when the recipe used it."""
    deb = T.DEBIAN_FILES[0]
    reg = next(f for f in T.REGISTRY_FILES if not f.license_known)
    manifest = {"recipe": {"real_fraction": 0.5, "generator_version": 1}, "sources": [
        {"id": deb.id, "path": "/x.exr", "kind": deb.kind, "license": deb.license, "sha256": deb.sha256,
         "split": "train"},
        {"id": reg.id, "kind": reg.kind, "license": reg.license, "sha256": reg.pixels_sha256, "split": "val"},
        {"id": "user/mine", "kind": "image", "license": "unknown (user file)", "sha256": "ab" * 32, "split": "train"},
    ]}
    out = T.card_sources(manifest)
    assert [s["id"] for s in out] == [deb.id, reg.id, "user/mine", "procedural"]
    assert out[0]["origin"] == f"debian {deb.package}: {deb.member} (sha256 {deb.sha256})" and out[0]["license_known"]
    art = T.REGISTRY_ARTEFACTS[reg.artefact]
    assert art.sha256 in out[1]["origin"] and reg.member in out[1]["origin"] and out[1]["license_known"] is False
    assert out[2]["license_known"] is False and "path" not in out[0]
    assert T.card_sources({"recipe": {"real_fraction": 1.0}, "sources": manifest["sources"][:1]})[-1]["id"] == deb.id
