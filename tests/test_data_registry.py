"""Registry HDR sources (npm @pmndrs/assets; the open3d skyboxes from Debian's open3d-gui-data, else the PyPI
wheel): R11G11B10F + KTX1 decoding, base64 EXR modules,
cubemap views, checksummed fetches on generated packages, and whole-scene split assignment. No network."""

from __future__ import annotations

import base64
import hashlib
import io as _io
import json
import math
import logging
import os
import shutil
import struct
import subprocess
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("cv2")
OpenEXR = pytest.importorskip("OpenEXR")

from sitm_trt.media import io  # noqa: E402
from sitm_trt.weights import sha256_file  # noqa: E402
from sitm_training.data import fetch as F  # noqa: E402
from sitm_training.data import source_tables as T  # noqa: E402
from sitm_training.data import sources as S  # noqa: E402
from sitm_training.data.__main__ import main  # noqa: E402
from sitm_training.data.decoders import (decode_r11g11b10f, extract_base64_exr, fill_negative_pixels,  # noqa: E402
                                         pixel_sha256, read_ktx1_cubemap)
from sitm_training.data.recipe import Recipe, make_plan  # noqa: E402
from sitm_training.data.samples import load_sample  # noqa: E402
from sitm_training.data.views import cubemap_view, sample_view  # noqa: E402

# ------------------------------------------------------------------------------------- R11G11B10F


def test_r11g11b10f_hand_computed_bit_patterns() -> None:
    words = np.array(
        [
            0x742103C0,  # R e=15 m=0 -> 1.0; G e=16 m=32 -> 2 * 1.5 = 3.0; B e=14 m=16 -> 0.5 * 1.5 = 0.75
            0x00000000,
            0x07C1F801,  # denormals: R m=1 -> 2^-20; G m=63 -> 63/64 2^-14; B m=31 -> 31/32 2^-14
            0xF7FDFFBF,  # largest: R, G e=30 m=63 -> 2^15 (1 + 63/64) = 65024; B e=30 m=31 -> 2^15 (1 + 31/32)
        ],
        np.uint32,
    )
    expected = [
        [1.0, 3.0, 0.75],
        [0.0, 0.0, 0.0],
        [2.0**-20, 63 / 64 * 2.0**-14, 31 / 32 * 2.0**-14],
        [65024.0, 65024.0, 64512.0],
    ]
    got = decode_r11g11b10f(words)
    assert got.dtype == np.float32 and got.shape == (4, 3)
    np.testing.assert_array_equal(got, np.array(expected, np.float32))


def test_r11g11b10f_rejects_inf_nan_and_wrong_dtype() -> None:
    with pytest.raises(ValueError, match="1 Inf/NaN"):
        decode_r11g11b10f(np.array([0x7C0, 0x3C0], np.uint32))  # R exponent 31
    with pytest.raises(ValueError, match="uint32"):
        decode_r11g11b10f(np.array([0x3C0], np.int64))


# -------------------------------------------------------------------------------------------- KTX1


def _ktx(faces: np.ndarray, *, gl_type: int = 0x8C3A, internal: int = 0x8C3A, endian: int = 0x04030201,
         n_faces: int = 6, kv: bytes = b"") -> bytes:
    """A KTX1 file written from the spec (Filament's variant puts the internal format in glType/glFormat)."""
    n = faces.shape[1]
    head = b"\xabKTX 11\xbb\r\n\x1a\n" + struct.pack(
        "<13I", endian, gl_type, 1, internal, internal, internal, n, n, 0, 0, n_faces, 1, len(kv)
    )
    body = struct.pack("<I", n * n * 4) + b"".join(f.astype("<u4").tobytes() for f in faces)
    return head + kv + body


def _face_words(n: int = 4) -> np.ndarray:
    faces = np.zeros((6, n, n), np.uint32)
    for k in range(6):
        faces[k] = (15 + k) << 6  # R = 2^k, G = B = 0
    faces[0, 0, 1] = 0x742103C0  # (1, 3, 0.75) at row 0, column 1 of +X
    return faces


@pytest.mark.parametrize("gl_type", [0x8C3A, 0x8C3B])
def test_ktx1_cubemap_faces_in_order(gl_type: int) -> None:
    faces = read_ktx1_cubemap(_ktx(_face_words(), gl_type=gl_type, kv=b"\x0c\x00\x00\x00KTXorient\x00\x00\x00"))
    assert faces.shape == (6, 4, 4, 3) and faces.dtype == np.float32
    for k in range(6):
        mask = np.ones((4, 4), bool)
        if k == 0:
            mask[0, 1] = False
        np.testing.assert_array_equal(faces[k][mask], np.tile([2.0**k, 0, 0], (int(mask.sum()), 1)))
    np.testing.assert_array_equal(faces[0, 0, 1], [1.0, 3.0, 0.75])


def test_ktx1_refuses_other_layouts() -> None:
    good = _ktx(_face_words())
    cases = [
        (b"\x00" * 12 + good[12:], "not a KTX1"),
        (_ktx(_face_words(), endian=0x01020304), "big-endian"),
        (_ktx(_face_words(), internal=0x881A), "expected R11F_G11F_B10F"),
        (_ktx(_face_words(), gl_type=0x1406), "expected R11F_G11F_B10F"),
        (_ktx(_face_words(), n_faces=1), "not a square cubemap"),
        (good[:-8], "truncated"),
        (good[:64], "truncated"),
    ]
    for data, match in cases:
        with pytest.raises(ValueError, match=rf"x\.ktx: .*{match}"):
            read_ktx1_cubemap(data, "x.ktx")


# ----------------------------------------------------------------------------------- cubemap views


def _direction_strip(n: int = 32) -> np.ndarray:
    """Each texel stores its own direction + 2, from the OpenGL table written forwards: face -> (s, t) -> ray."""
    t, s = (np.mgrid[0:n, 0:n] + 0.5) / n
    sc, tc = 2 * s - 1, 2 * t - 1
    one = np.ones_like(sc)
    rays = [(one, -tc, -sc), (-one, -tc, sc), (sc, one, tc), (sc, -one, -tc), (sc, -tc, one), (-sc, -tc, -one)]
    faces = []
    for x, y, z in rays:
        d = np.stack([x, y, z], -1)
        faces.append(d / np.linalg.norm(d, axis=-1, keepdims=True) + 2)
    return np.concatenate(faces, 0).astype(np.float32)


@pytest.mark.parametrize("yaw_deg, pitch_deg", [(0, 0), (90, 0), (45, 0), (-135, 20), (170, -30), (10, 60), (0, -80)])
def test_cubemap_view_looks_where_asked(yaw_deg: float, pitch_deg: float) -> None:
    strip = _direction_strip()
    view = cubemap_view(strip, math.radians(yaw_deg), math.radians(pitch_deg), math.radians(60), 9)
    assert view.shape == (9, 9, 3) and view.dtype == np.float32
    yaw, pitch = math.radians(yaw_deg), math.radians(pitch_deg)
    # the camera of equirect_view: yaw = 0 looks along +z, yaw = 90 degrees along +x, pitch up along +y
    want = np.array([math.sin(yaw) * math.cos(pitch), math.sin(pitch), math.cos(yaw) * math.cos(pitch)]) + 2
    np.testing.assert_allclose(view[4, 4], want, atol=0.04)
    assert view[0, 4, 1] > view[8, 4, 1]  # the top row looks higher


def test_sample_view_of_a_cubemap_and_load_checks_the_strip(tmp_path: Path) -> None:
    strip = _direction_strip(16)
    a, meta = sample_view(np.random.default_rng(4), strip, "cubemap", 12)
    b, _ = sample_view(np.random.default_rng(4), strip, "cubemap", 12)
    np.testing.assert_array_equal(a, b)
    assert set(meta) == {"yaw", "pitch", "fov"} and a.shape == (12, 12, 3)
    norms = np.linalg.norm(a - 2, axis=-1)  # every pixel holds a unit direction (bilinear: slightly shorter)
    assert norms.min() > 0.97 and norms.max() < 1.001
    io.write_exr(tmp_path / "c.exr", strip, half=False)
    np.testing.assert_array_equal(S.load_radiance(tmp_path / "c.exr", "cubemap"), strip)
    io.write_exr(tmp_path / "wide.exr", strip[:32], half=False)
    with pytest.raises(io.ImageReadError, match="wide.exr: a cubemap strip"):
        S.load_radiance(tmp_path / "wide.exr", "cubemap")


# ------------------------------------------------------------------------------- base64 EXR modules


def _exr_bytes(img: np.ndarray, compression: str = "ZIP") -> bytes:
    channels = {c: np.ascontiguousarray(img[:, :, i].astype(np.float16)) for i, c in enumerate("RGB")}
    header = {"compression": getattr(OpenEXR, f"{compression}_COMPRESSION"), "type": OpenEXR.scanlineimage}
    buf = _io.BytesIO()
    OpenEXR.File(header, channels).write(buf)
    return buf.getvalue()


def _module(payload: bytes) -> bytes:
    return b"export default 'data:application/exr;base64," + base64.b64encode(payload) + b"'\n"


def _radiance(h: int = 16, w: int = 32, seed: int = 0) -> np.ndarray:
    return np.exp(np.random.default_rng(seed).normal(0, 2, (h, w, 3))).astype(np.float16).astype(np.float32)


def test_fill_negative_pixels_fills_holes_from_their_surroundings() -> None:
    img = np.full((24, 24, 3), 0.5, np.float32)
    yy, xx = np.mgrid[0:24, 0:24]
    disc = (yy - 12) ** 2 + (xx - 12) ** 2 <= 36
    img[disc] = (900.0, 800.0, 700.0)  # a lamp
    img[11:13, 11:14] = (-40.0, 600.0, -3.0)  # DWAB-like hole inside it
    img[2, 2, 1] = -0.01  # and a tiny negative in the dark part
    out, n = fill_negative_pixels(img)
    assert n == 7 and out.dtype == np.float32
    holes = (img < 0).any(-1)
    np.testing.assert_array_equal(out[~holes], img[~holes])  # everything else untouched
    np.testing.assert_allclose(out[11:13, 11:14], np.tile([900.0, 800.0, 700.0], (2, 3, 1)), rtol=1e-3)
    np.testing.assert_allclose(out[2, 2], [0.5, 0.5, 0.5], rtol=1e-3)
    same, zero = fill_negative_pixels(np.abs(img))
    assert zero == 0 and np.array_equal(same, np.abs(img))


def test_extract_base64_exr_from_a_generated_module(tmp_path: Path) -> None:
    img = _radiance()
    img[3, 4] = (0.0, 5.0, -0.0)  # the pixel checksum must not depend on the sign of zero
    payload = _exr_bytes(img)
    assert extract_base64_exr(_module(payload)) == payload
    assert extract_base64_exr(_module(payload).decode()) == payload  # text too
    f = T.RegistryFile("fake/m", "npm:fake", "package/hdri/m.exr.js", "", "", "panorama", "test")
    got, sha = F._decode_member(f, _module(payload), tmp_path, f.member)
    assert sha == hashlib.sha256(payload).hexdigest()
    np.testing.assert_array_equal(got, img)
    assert np.signbit(got).sum() == 0

    dwab = _exr_bytes(np.abs(img) + 0.5, "DWAB")  # the packages' codec: lossy, read by the OpenEXR bindings
    got, _ = F._decode_member(f, _module(dwab), tmp_path, f.member)
    np.testing.assert_allclose(got, np.abs(img) + 0.5, rtol=0.1)


def test_extract_base64_exr_refuses_other_modules() -> None:
    payload = _exr_bytes(_radiance())
    b64 = base64.b64encode(payload)
    for text, match in [
        (b"export default 'data:image/png;base64," + b64 + b"'", "not a `export default"),
        (b"module.exports = 'data:application/exr;base64," + b64 + b"'", "not a `export default"),
        (b"export default 'data:application/exr;base64," + b64 + b"\"", "not a `export default"),
        (b"export default 'data:application/exr;base64," + b64[:-3] + b"'", "invalid base64"),
        (_module(b"PNG not an exr at all"), "the payload is not an OpenEXR file"),
    ]:
        with pytest.raises(ValueError, match=rf"m\.js: {match}"):
            extract_base64_exr(text, "m.js")


# --------------------------------------------------------------------------------- fetch (no network)


def _tgz(path: Path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, _io.BytesIO(data))


def _fake_npm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tgz: Path, filename: str) -> Path:
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    log = tmp_path / "npm-args.txt"
    (bindir / "npm").write_text(f'#!/bin/sh\necho "$@" > "{log}"\n[ "$1" = pack ] && cp "{tgz}" "./{filename}"\n')
    (bindir / "npm").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    return log


def _pin_npm(monkeypatch: pytest.MonkeyPatch, tgz_sha: str, payload: bytes, img: np.ndarray) -> T.RegistryFile:
    art = T.RegistryArtefact("npm", "@fake/assets", "1.0.0", "fake-assets-1.0.0.tgz", tgz_sha)
    f = T.RegistryFile("fakenpm/m", "npm:@fake/assets", "package/hdri/m.exr.js", hashlib.sha256(payload).hexdigest(),
                       pixel_sha256(img), "panorama", "CC0-1.0 (test)")
    monkeypatch.setattr(F, "REGISTRY_ARTEFACTS", {"npm:@fake/assets": art})
    monkeypatch.setattr(F, "REGISTRY_FILES", (f,))
    return f


def test_fetch_npm_package_checks_and_decodes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    img = _radiance(8, 16, seed=1)
    payload = _exr_bytes(img)
    tgz = tmp_path / "pkg.tgz"
    _tgz(tgz, {"package/package.json": b"{}", "package/hdri/m.exr.js": _module(payload)})
    args_log = _fake_npm(tmp_path, monkeypatch, tgz, "fake-assets-1.0.0.tgz")
    _pin_npm(monkeypatch, hashlib.sha256(tgz.read_bytes()).hexdigest(), payload, img)
    cache = tmp_path / "cache"
    got = F.fetch_registry(cache)
    assert got == {"fakenpm/m": cache / "hdr" / "fakenpm" / "m.exr"}
    assert "pack" in args_log.read_text() and "@fake/assets@1.0.0" in args_log.read_text()
    assert sorted(p.name for p in cache.iterdir()) == ["hdr"]  # the download folder is gone
    found, missing = F.find_registry_sources(cache)
    assert [s.id for s in found] == ["fakenpm/m"] and missing == [] and found[0].kind == "panorama"
    assert found[0].to_dict()["origin"].startswith("npm @fake/assets@1.0.0 (fake-assets-1.0.0.tgz, sha256 ")
    np.testing.assert_array_equal(found[0].load(), img)
    before = got["fakenpm/m"].stat().st_mtime_ns
    tgz.unlink()  # verified files are not fetched again
    assert F.fetch_registry(cache) == got and got["fakenpm/m"].stat().st_mtime_ns == before


def test_fetch_refuses_a_tampered_artefact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    img = _radiance(8, 16, seed=2)
    payload = _exr_bytes(img)
    good = tmp_path / "good.tgz"
    _tgz(good, {"package/hdri/m.exr.js": _module(payload)})
    tampered = tmp_path / "tampered.tgz"
    _tgz(tampered, {"package/hdri/m.exr.js": _module(payload), "package/postinstall.js": b"evil()"})
    _pin_npm(monkeypatch, hashlib.sha256(good.read_bytes()).hexdigest(), payload, img)
    _fake_npm(tmp_path, monkeypatch, tampered, "fake-assets-1.0.0.tgz")
    cache = tmp_path / "cache"
    with pytest.raises(F.FetchError, match=r"checksum mismatch: fake-assets-1\.0\.0\.tgz: sha256 [0-9a-f]{64} differs"):
        F.fetch_registry(cache)
    assert not (cache / "hdr").exists() and sorted(cache.iterdir()) == []  # nothing written, nothing left
    assert F.find_registry_sources(cache) == ([], ["fakenpm/m"])
    got = F.fetch_registry(cache, allow_unverified=True)  # the members still match: used when asked
    assert got["fakenpm/m"].is_file()
    garbage = tmp_path / "garbage.tgz"
    garbage.write_bytes(b"\x1f\x8b not really gzip")
    _fake_npm(tmp_path, monkeypatch, garbage, "fake-assets-1.0.0.tgz")
    with pytest.raises(F.FetchError, match="fake-assets-1.0.0.tgz: cannot read the package"):
        F.fetch_registry(tmp_path / "cache3", allow_unverified=True)


def _wheel(path: Path, members: dict[str, bytes]) -> None:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)


def test_fetch_wheel_cubemap_and_member_checksum(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    words = _face_words()
    ktx = _ktx(words)
    whl = tmp_path / "fake-1.0-py3-none-any.whl"
    _wheel(whl, {"fake/resources/x_skybox.ktx": ktx, "fake/__init__.py": b""})
    strip = decode_r11g11b10f(words).reshape(24, 4, 3)
    art = T.RegistryArtefact("pypi", "fake", "1.0", whl.name, hashlib.sha256(whl.read_bytes()).hexdigest())
    f = T.RegistryFile("fakewhl/x", "pypi:fake", "fake/resources/x_skybox.ktx", hashlib.sha256(ktx).hexdigest(),
                       pixel_sha256(strip), "cubemap", "unknown (test)", license_known=False)
    monkeypatch.setattr(F, "REGISTRY_ARTEFACTS", {"pypi:fake": art})
    monkeypatch.setattr(F, "REGISTRY_FILES", (f,))
    served = {"path": whl}

    def download(a: T.RegistryArtefact, dest: Path) -> Path:
        assert (a.registry, a.package, a.version) == ("pypi", "fake", "1.0")
        target = dest / a.filename
        target.write_bytes(served["path"].read_bytes())
        return target

    monkeypatch.setattr(F, "_download", download)
    cache = tmp_path / "cache"
    got = F.fetch_registry(cache, keep=True)
    np.testing.assert_array_equal(io.read_hdr(got["fakewhl/x"]), strip)
    assert (cache / "registry" / whl.name).read_bytes() == whl.read_bytes()  # keep=True keeps the wheel
    (src,) = F.find_registry_sources(cache)[0]
    assert src.kind == "cubemap" and src.license_known is False and src.to_dict()["license_known"] is False

    # a wheel whose artefact checksum is pinned but whose member differs (another build of the file)
    words[2, 1, 1] = 0x3C0
    bad = tmp_path / "bad" / whl.name
    bad.parent.mkdir()
    _wheel(bad, {"fake/resources/x_skybox.ktx": _ktx(words)})
    served["path"] = bad
    monkeypatch.setattr(F, "REGISTRY_ARTEFACTS", {"pypi:fake": T.RegistryArtefact(
        "pypi", "fake", "1.0", whl.name, hashlib.sha256(bad.read_bytes()).hexdigest())})
    cache2 = tmp_path / "cache2"
    with pytest.raises(F.FetchError, match=r"checksum mismatch for \['fakewhl/x'\]"):
        F.fetch_registry(cache2)
    assert not (cache2 / "hdr").exists()


def test_download_commands_pin_what_is_fetched(tmp_path: Path) -> None:
    npm = T.REGISTRY_ARTEFACTS["npm:@pmndrs/assets"].command(tmp_path)
    assert npm[:2] == ["npm", "pack"] and "--ignore-scripts" in npm and npm[-1] == "@pmndrs/assets@1.7.0"
    assert npm[npm.index("--cache") + 1] == str(tmp_path / ".npm")  # npm's cache stays in the temporary folder
    pip = T.REGISTRY_ARTEFACTS["pypi:open3d"].command(tmp_path)
    assert pip[1:4] == ["-m", "pip", "download"] and pip[-1] == "open3d==0.20.0"
    assert {"--no-deps", "--only-binary=:all:", "--no-cache-dir"} <= set(pip)
    # the same wheel on every platform: its file name (pinned with its checksum) follows from these tags
    tags = {pip[i]: pip[i + 1] for i in range(len(pip) - 1) if pip[i].startswith("--") and "=" not in pip[i]}
    assert (tags["--python-version"], tags["--abi"], tags["--platform"]) == ("3.11", "cp311", "manylinux_2_35_x86_64")
    assert T.REGISTRY_ARTEFACTS["pypi:open3d"].filename == "open3d-0.20.0-cp311-cp311-manylinux_2_35_x86_64.whl"
    deb = T.REGISTRY_ARTEFACTS["debian:open3d-gui-data"]
    assert deb.command(tmp_path) == ["apt-get", "download", "open3d-gui-data=0.16.1+ds-2"]  # this exact version
    assert deb.filename == "open3d-gui-data_0.16.1+ds-2_all.deb" and deb.tools == ("apt-get", "dpkg-deb")


def _deb(tmp_path: Path, members: dict[str, bytes]) -> Path:
    """A real .deb (``dpkg-deb --build``) holding ``members`` (paths relative to /)."""
    root = tmp_path / "debroot"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN" / "control").write_text("Package: fake-data\nVersion: 1.0\nArchitecture: all\n"
                                             "Maintainer: test <t@example.org>\nDescription: test data\n")
    for name, data in members.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    out = tmp_path / "fake-data_1.0_all.deb"
    subprocess.run(["dpkg-deb", "--build", "--root-owner-group", str(root), str(out)], check=True,
                   capture_output=True)
    return out


@pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="needs dpkg-deb (Debian/Ubuntu)")
def test_fetch_from_a_deb_and_fall_back_to_the_alternative(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A file pinned in a Debian package (the open3d skyboxes) is read out of the .deb; when that package fails
    (here: another build of it, so its checksum differs), the same member comes from the alternative wheel, and only
    when both fail does the fetch fail, naming both."""
    words = _face_words()
    ktx = _ktx(words)
    strip = decode_r11g11b10f(words).reshape(24, 4, 3)
    deb = _deb(tmp_path, {"usr/share/fake/x_skybox.ktx": ktx, "usr/share/doc/fake-data/copyright": b"test"})
    whl = tmp_path / "fake-1.0-py3-none-any.whl"
    _wheel(whl, {"fake/resources/x_skybox.ktx": ktx})
    arts = {"debian:fake-data": T.RegistryArtefact("debian", "fake-data", "1.0", deb.name,
                                                   hashlib.sha256(deb.read_bytes()).hexdigest()),
            "pypi:fake": T.RegistryArtefact("pypi", "fake", "1.0", whl.name,
                                            hashlib.sha256(whl.read_bytes()).hexdigest())}
    f = T.RegistryFile("fakedeb/x", "debian:fake-data", "./usr/share/fake/x_skybox.ktx",
                       hashlib.sha256(ktx).hexdigest(), pixel_sha256(strip), "cubemap", "unknown (test)", license_known=False,
                       alternative=("pypi:fake", "fake/resources/x_skybox.ktx"))
    monkeypatch.setattr(F, "REGISTRY_ARTEFACTS", arts)
    monkeypatch.setattr(F, "REGISTRY_FILES", (f,))
    served = {"debian": deb, "pypi": whl}
    asked: list[str] = []

    def download(a: T.RegistryArtefact, dest: Path) -> Path:
        asked.append(a.registry)
        target = dest / a.filename
        target.write_bytes(served[a.registry].read_bytes())
        return target

    monkeypatch.setattr(F, "_download", download)
    monkeypatch.setattr(F, "_missing_tool", lambda a: None)  # apt-get and dpkg-deb "present"
    cache = tmp_path / "cache"
    got = F.fetch_registry(cache)
    assert asked == ["debian"]  # the .deb first; the wheel is not downloaded
    np.testing.assert_array_equal(io.read_hdr(got["fakedeb/x"]), strip)
    (src,) = F.find_registry_sources(cache)[0]
    origin = src.to_dict()["origin"]
    assert origin.startswith("debian fake-data=1.0 (fake-data_1.0_all.deb, sha256 ") and "pypi fake==1.0" in origin

    other = tmp_path / "other" / deb.name  # another build of the package: its checksum differs from the pinned one
    other.parent.mkdir()
    other.write_bytes(_deb(tmp_path / "other", {"usr/share/fake/x_skybox.ktx": ktx, "usr/share/x": b"2"}).read_bytes())
    served["debian"] = other
    asked.clear()
    with caplog.at_level(logging.WARNING, logger=F.__name__):
        got2 = F.fetch_registry(tmp_path / "cache2")
    assert asked == ["debian", "pypi"] and io.read_hdr(got2["fakedeb/x"]).tobytes() == strip.astype(np.float16).astype(
        np.float32).tobytes()
    assert any("differs from the recorded" in r.message and "fake==1.0" in r.message for r in caplog.records)

    served["pypi"] = other  # the wheel fails too: the fetch fails and names both
    with pytest.raises(F.FetchError, match=r"fake-data_1\.0_all\.deb: sha256 .*; .*fake-1\.0-py3-none-any\.whl"):
        F.fetch_registry(tmp_path / "cache3")
    assert not (tmp_path / "cache3" / "hdr").exists()

    # without apt-get the wheel is used at once, with no failed attempt
    monkeypatch.setattr(F, "_missing_tool", lambda a: "apt-get" if a.registry == "debian" else None)
    served["pypi"] = whl
    asked.clear()
    assert F.fetch_registry(tmp_path / "cache4")["fakedeb/x"].is_file() and asked == ["pypi"]
    # leaving the wheel out (fetch --no-pypi) when the .deb fails: nothing to fall back to
    served["debian"] = other
    monkeypatch.setattr(F, "_missing_tool", lambda a: None)
    with pytest.raises(F.FetchError, match="fake-data_1.0_all.deb"):
        F.fetch_registry(tmp_path / "cache5", artefacts=("debian:fake-data",))


def test_registry_table_is_consistent() -> None:
    ids = [f.id for f in T.REGISTRY_FILES]
    assert len(ids) == len(set(ids)) == 24
    assert all(len(f.member_sha256) == 64 and len(f.pixels_sha256) == 64 for f in T.REGISTRY_FILES)
    assert all(f.artefact in T.REGISTRY_ARTEFACTS for f in T.REGISTRY_FILES)
    # the open3d skyboxes: Debian's package first, the wheel's copy of the same member as the alternative
    o3d = [f for f in T.REGISTRY_FILES if f.id.startswith("open3d/")]
    assert len(o3d) == 9 and all(f.artefact == "debian:open3d-gui-data" and f.alternative is not None
                                 and f.alternative[0] == "pypi:open3d" and f.member.endswith(f.alternative[1][17:])
                                 for f in o3d)
    assert all(f.alternative is None for f in T.REGISTRY_FILES if not f.id.startswith("open3d/"))
    assert all(len(a.sha256) == 64 for a in T.REGISTRY_ARTEFACTS.values())
    assert not set(T.SKIPPED_SCENES) & set(ids)
    assert {f.id for f in T.REGISTRY_FILES if not f.license_known} == {i for i in ids if i.startswith("open3d/")}


# ------------------------------------------------------------------------------------------- splits


def test_held_out_scenes_are_fixed_and_disjoint() -> None:
    known = {f.id for f in T.DEBIAN_FILES} | {f.id for f in T.REGISTRY_FILES}
    assert len(T.VAL_SOURCE_IDS) >= 10 and T.VAL_SOURCE_IDS <= known
    assert not T.VAL_SOURCE_IDS & T.TEST_SOURCE_IDS
    assert T.TEST_SOURCE_IDS == {"blender/courtyard", "blender/sunset", "libjxl/hdr_room"}  # unchanged
    assert {T.source_split(i) for i in T.VAL_SOURCE_IDS} == {"val"}
    assert {T.source_split(i) for i in T.TEST_SOURCE_IDS} == {"test"}
    assert T.source_split("val/mine/a.exr") == "val" and T.source_split("test/x") == "test"
    assert T.source_split("blender/city") == "train" and T.source_split("user/mine/a.exr") == "train"


def _src(sid: str, kind: str = "panorama") -> S.HDRSource:
    return S.HDRSource(sid, Path(f"/nonexistent/{sid}"), kind, sha256=hashlib.sha256(sid.encode()).hexdigest())


def test_plan_holds_out_whole_scenes() -> None:
    train = [_src("a/t1"), _src("a/t2")]
    test = [_src("a/x1")]
    val = [_src("a/v1"), _src("a/v2"), _src("a/v3")]
    recipe = Recipe(seed=3, n=40, n_test=5, n_val_real=7, val_fraction=0.1)
    plan = make_plan(recipe, train, test, val)
    by_split: dict[str, set[str]] = {"train": set(), "val": set(), "test": set()}
    for item in plan:
        by_split[item.split].add(item.source)
    assert by_split["train"] == {"a/t1", "a/t2", "procedural"}
    assert by_split["test"] == {"a/x1"}
    assert by_split["val"] == {"procedural", "a/v1", "a/v2", "a/v3"}
    real_val = [i for i in plan if i.split == "val" and i.source != "procedural"]
    assert [i.source for i in real_val] == ["a/v1", "a/v2", "a/v3", "a/v1", "a/v2", "a/v3", "a/v1"]
    assert [i.index for i in real_val] == list(range(45, 52))  # after the test split
    # the samples before are those of the same recipe without validation scenes (same indices, same sources)
    old = make_plan(Recipe(seed=3, n=40, n_test=5, val_fraction=0.1), train, test)
    assert plan[: len(old)] == old
    with pytest.raises(ValueError, match=r"more than one split: \['a/t1'\]"):
        make_plan(recipe, train, test, [*val, train[0]])


def test_recipe_hash_of_older_builds_holds() -> None:
    assert "n_val_real" not in Recipe().to_dict()
    r = Recipe(n_val_real=5)
    assert r.to_dict()["n_val_real"] == 5 and Recipe.from_dict(r.to_dict()) == r
    assert Recipe.from_dict(Recipe().to_dict()).n_val_real == 0
    with pytest.raises(ValueError, match="n_val_real"):
        Recipe(n_val_real=-1)


def test_build_feeds_val_only_from_held_out_scenes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A tiny CLI build over a fake cache: train panorama, val cubemap (open3d id), test panorama."""
    cache = tmp_path / "cache"
    rng = np.random.default_rng(5)
    pano = np.exp(rng.normal(0, 1.5, (16, 32, 3))).astype(np.float32)
    strip = np.exp(rng.normal(0, 1.5, (48, 8, 3))).astype(np.float32)
    fakes_deb, fakes_reg = [], []
    for sid, img in (("blender/city", pano), ("blender/courtyard", pano[:, ::-1])):
        path = cache / "hdr" / f"{sid}.exr"
        path.parent.mkdir(parents=True, exist_ok=True)
        io.write_exr(path, img, half=True)
        fakes_deb.append(T.DebianFile(sid, "pkg", f"./x/{sid}.exr", sha256_file(path), "panorama", "CC0-1.0 (test)"))
    for sid, img, kind in (("open3d/hall", strip, "cubemap"), ("open3d/park", strip[::-1].copy(), "cubemap")):
        path = cache / "hdr" / f"{sid}.exr"
        path.parent.mkdir(parents=True, exist_ok=True)
        io.write_exr(path, img, half=True)
        fakes_reg.append(T.RegistryFile(sid, "pypi:open3d", f"x/{sid}", "0" * 64, pixel_sha256(img), kind,
                                        "unknown (test)", license_known=False))
    mp = pytest.MonkeyPatch()
    try:
        mp.setattr(F, "DEBIAN_FILES", tuple(fakes_deb))
        mp.setattr(F, "REGISTRY_FILES", tuple(fakes_reg))
        out = tmp_path / "ds"
        args = ["build", "--out", str(out), "--n", "6", "--n-test", "2", "--n-val-real", "3", "--size", "16",
                "--real-fraction", "1", "--cache", str(cache), "--no-progress"]
        assert main(args) == 0
        report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert report["counts"] == {"train": 6, "val": 3, "test": 2} and report["val_has_real"] is True
        m = json.loads((out / "manifest.json").read_text())
        assert m["val_source_ids"] == ["open3d/hall"] and m["test_source_ids"] == ["blender/courtyard"]
        assert {s["id"]: s["split"] for s in m["sources"]} == {
            "blender/city": "train", "blender/courtyard": "test", "open3d/hall": "val", "open3d/park": "train"}
        splits = {sp: {r["source"] for r in m["samples"] if r["split"] == sp} for sp in ("train", "val", "test")}
        assert splits == {"train": {"blender/city", "open3d/park"}, "val": {"open3d/hall"},
                          "test": {"blender/courtyard"}}
        s = load_sample(out / "val" / f"{m['samples'][-1]['id']}.npz")
        assert s.source == "open3d/hall" and set(s.meta["view"]) == {"yaw", "pitch", "fov"}

        # unknown licences out of training: open3d/park leaves the train split, open3d/hall stays in val
        out2 = tmp_path / "ds2"
        assert main([*args[:2], str(out2), *args[3:], "--exclude-unknown-license"]) == 0
        m2 = json.loads((out2 / "manifest.json").read_text())
        assert {s["id"] for s in m2["sources"]} == {"blender/city", "blender/courtyard", "open3d/hall"}
        assert {r["source"] for r in m2["samples"] if r["split"] == "train"} == {"blender/city"}
    finally:
        mp.undo()


def test_sources_listing_shows_splits_licences_and_skips(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sources", "--cache", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "pmndrs/sunrise" in out and "skipped" in out and "open3d/default" in out
    assert "missing:" in out and "open3d/streetlamp" in out and "pmndrs/workshop" in out
