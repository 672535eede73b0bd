"""Real HDR sources: files shipped inside Debian packages (fetched with checksums), user folders, and views.

The Debian files are fetched without installing anything: ``apt-get download PKG`` into the cache, then
the wanted members are streamed out of ``dpkg-deb --fsys-tarfile PKG.deb`` and checked against the
SHA-256 recorded below (observed on Debian 12 "bookworm"). Nothing of it belongs in git: the cache is
``$SITM_TRT_CACHE`` or ``~/.cache/sitm-trt``.

Splits are by source: :data:`TEST_SOURCE_IDS` never reach the train or validation split.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import shutil
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sitm_trt.io import HDR_EXTENSIONS, ImageReadError, read_hdr, read_ldr

__all__ = [
    "DebianFile",
    "DEBIAN_FILES",
    "TEST_SOURCE_IDS",
    "FetchError",
    "HDRSource",
    "default_cache_dir",
    "fetch",
    "find_debian_sources",
    "scan_hdr_dir",
    "validate_radiance",
    "load_radiance",
    "hlg_to_linear",
    "BT2020_TO_BT709",
    "equirect_view",
    "sample_view",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DebianFile:
    """One HDR image inside a Debian package."""

    id: str
    package: str
    member: str  # path inside the package's data tarball
    sha256: str
    kind: str  # "panorama" (equirectangular), "hlg_png" (16-bit HLG BT.2020 PNG)
    license: str
    weight: float = 1.0  # relative sampling weight among the real training sources

    @property
    def suffix(self) -> str:
        return Path(self.member).suffix


_BLENDER = "./usr/share/blender/datafiles/studiolights/world/"
_QT = "./usr/share/qtcreator/qml/qmlpuppet/mockfiles/images/"
_CC0 = "CC0-1.0 (Blender studio lights, from Poly Haven)"

DEBIAN_FILES: tuple[DebianFile, ...] = (
    DebianFile(
        "blender/city",
        "blender-data",
        _BLENDER + "city.exr",
        "70940108df90c0721799d29f758ca79e67e509d9a2636487e639db7779561524",
        "panorama",
        _CC0,
    ),
    DebianFile(
        "blender/courtyard",
        "blender-data",
        _BLENDER + "courtyard.exr",
        "1518fa37da6a8a389810a7a70262c410553018a51f0be9e248155b9bb363ff3d",
        "panorama",
        _CC0,
    ),
    DebianFile(
        "blender/forest",
        "blender-data",
        _BLENDER + "forest.exr",
        "63ad3243d0f9c29bd1f51b9a3bbf5c0ad25ea39299698dba6cfc29d1660d6008",
        "panorama",
        _CC0,
    ),
    DebianFile(
        "blender/interior",
        "blender-data",
        _BLENDER + "interior.exr",
        "4f6810b182ade346eac6964bf02405adf430c321b8853a644316af4e05d0fdb5",
        "panorama",
        _CC0,
    ),
    DebianFile(
        "blender/night",
        "blender-data",
        _BLENDER + "night.exr",
        "a46488f5cb744f325abc9f5af3c3eeb5d9393df69b5178fbe727538522120045",
        "panorama",
        _CC0,
    ),
    DebianFile(
        "blender/studio",
        "blender-data",
        _BLENDER + "studio.exr",
        "e501dd8a1172bd0e03903ede7f452300f8368448fe74720600338304d79281d9",
        "panorama",
        _CC0,
    ),
    DebianFile(
        "blender/sunrise",
        "blender-data",
        _BLENDER + "sunrise.exr",
        "b97206217e29763d62d9a65ad2d7058460acfb4824659e7a59f5bde374f21937",
        "panorama",
        _CC0,
    ),
    DebianFile(
        "blender/sunset",
        "blender-data",
        _BLENDER + "sunset.exr",
        "a164f20b86bc43ba4afd66c988a20a9dd5f1a0a5d8e960aed57a33f78119c168",
        "panorama",
        _CC0,
    ),
    DebianFile(
        "libjxl/hdr_room",
        "libjxl-testdata",
        "./usr/share/libjxl-testdata/jxl/hdr_room.png",
        "df2efb86c6114dba264c849ac0ae3a073c663d5aa55890fa276b8bd3b0efb2ae",
        "hlg_png",
        "BSD-3-Clause (libjxl test data)",
    ),
    DebianFile(
        "qtcreator/preview_landscape",
        "qtcreator-data",
        _QT + "preview_landscape.hdr",
        "b7691521e8a3f683f55649a8022033be52d4fa4039707fee0a6817f297a3fe8e",
        "panorama",
        "GPL-3.0 with Qt exception (Qt Creator data)",
        weight=0.25,
    ),
    DebianFile(
        "qtcreator/preview_studio",
        "qtcreator-data",
        _QT + "preview_studio.hdr",
        "51ea42f8d43370264cef1c89ad22b0cf308732f7fe92f4bee0af2fcb221aceae",
        "panorama",
        "GPL-3.0 with Qt exception (Qt Creator data)",
        weight=0.25,
    ),
)

# Held out: the evaluation's real test images; everything cut from them is in the test split only.
TEST_SOURCE_IDS = frozenset({"blender/courtyard", "blender/sunset", "libjxl/hdr_room"})


class FetchError(RuntimeError):
    """The Debian sources could not be fetched (no apt-get, no network, unknown package, bad checksum)."""


def default_cache_dir() -> Path:
    """``$SITM_TRT_CACHE`` or ``~/.cache/sitm-trt``."""
    env = os.environ.get("SITM_TRT_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "sitm-trt"


def _cached(cache: Path, f: DebianFile) -> Path:
    return cache / "hdr" / (f.id + f.suffix)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _run(cmd: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)


def fetch(
    cache: Path | None = None, *, update: bool = False, keep_debs: bool = False, allow_unverified: bool = False
) -> dict[str, Path]:
    """Fetch the Debian HDR files into ``cache/hdr`` (skipping verified ones); returns ``{id: path}``.

    Runs ``apt-get update`` first when ``update`` (needs root). Files whose SHA-256 differs from the
    recorded one (another package version) are kept only with ``allow_unverified``; otherwise they are
    not written and :class:`FetchError` lists them after the others are extracted.
    """
    cache = Path(cache) if cache is not None else default_cache_dir()
    done = {
        f.id: _cached(cache, f)
        for f in DEBIAN_FILES
        if _cached(cache, f).is_file() and (_sha256(_cached(cache, f)) == f.sha256 or allow_unverified)
    }
    todo = [f for f in DEBIAN_FILES if f.id not in done]
    if not todo:
        return done
    for tool in ("apt-get", "dpkg-deb"):
        if shutil.which(tool) is None:
            raise FetchError(
                f"{tool} not found: fetching the Debian HDR sources needs a Debian/Ubuntu system. Copy the files "
                f"into {cache / 'hdr'} by hand, pass your own folders with --hdr-dir/--pano-dir, or build "
                "from the procedural generator alone."
            )
    debs = cache / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    if update:
        r = _run(["apt-get", "update"])
        if r.returncode != 0:
            raise FetchError(f"apt-get update failed ({r.returncode}): {r.stderr.strip()[-500:]}")
    mismatched: list[str] = []
    for package in sorted({f.package for f in todo}):
        found = sorted(debs.glob(f"{package}_*.deb"))
        if not found:
            log.info("apt-get download %s", package)
            r = _run(["apt-get", "download", package], cwd=debs)
            found = sorted(debs.glob(f"{package}_*.deb"))
            if r.returncode != 0 or not found:
                hint = " (run `apt-get update` once, or pass --update)" if "Unable to locate" in r.stderr else ""
                raise FetchError(f"apt-get download {package} failed ({r.returncode}){hint}: {r.stderr.strip()[-500:]}")
        wanted = {f.member: f for f in todo if f.package == package}
        extracted = _extract(found[-1], wanted, cache, allow_unverified, mismatched)
        done.update(extracted)
        missing = sorted(f.member for f in wanted.values() if f.id not in extracted and f.id not in mismatched)
        if missing:
            raise FetchError(f"{found[-1].name} lacks {missing}: the package layout changed")
        if not keep_debs:
            found[-1].unlink()
    if mismatched:
        raise FetchError(
            f"checksum mismatch for {mismatched} (a different package version?): not used. "
            "Check the files and pass --allow-unverified to use them anyway."
        )
    return done


def _extract(
    deb: Path, wanted: dict[str, DebianFile], cache: Path, allow_unverified: bool, mismatched: list[str]
) -> dict[str, Path]:
    out: dict[str, Path] = {}
    with subprocess.Popen(
        ["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    ) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        with tarfile.open(fileobj=proc.stdout, mode="r|*") as tar:
            for member in tar:
                f = wanted.get(member.name)
                if f is None or not member.isfile():
                    continue
                fh = tar.extractfile(member)
                assert fh is not None
                data = fh.read()
                digest = hashlib.sha256(data).hexdigest()
                if digest != f.sha256:
                    log.warning("%s: sha256 %s differs from the recorded %s", f.id, digest, f.sha256)
                    if not allow_unverified:
                        mismatched.append(f.id)
                        continue
                target = _cached(cache, f)
                target.parent.mkdir(parents=True, exist_ok=True)
                tmp = target.with_name(target.name + ".part")
                tmp.write_bytes(data)
                os.replace(tmp, target)
                out[f.id] = target
        proc.stdout.read()  # drain, so dpkg-deb can exit
        errors = proc.stderr.read().decode(errors="replace")
        if proc.wait() != 0:
            raise FetchError(f"dpkg-deb --fsys-tarfile {deb} failed: {errors[-500:]}")
    return out


# --------------------------------------------------------------------------------------------- sources


@dataclass(frozen=True)
class HDRSource:
    """An HDR image to cut training views from."""

    id: str
    path: Path
    kind: str  # "panorama" | "image" | "hlg_png"
    license: str = "unknown (user file)"
    weight: float = 1.0
    sha256: str = ""

    def load(self) -> np.ndarray:
        """The validated radiance (float32, >= 0, finite); raises :class:`ImageReadError` when unusable."""
        return load_radiance(self.path, self.kind)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "path": str(self.path),
            "kind": self.kind,
            "license": self.license,
            "weight": self.weight,
            "sha256": self.sha256,
        }


def find_debian_sources(
    cache: Path | None = None, *, allow_unverified: bool = False
) -> tuple[list[HDRSource], list[str]]:
    """The fetched Debian sources present in ``cache`` with a matching checksum; ``(sources, missing ids)``."""
    cache = Path(cache) if cache is not None else default_cache_dir()
    sources, missing = [], []
    for f in DEBIAN_FILES:
        path = _cached(cache, f)
        if not path.is_file():
            missing.append(f.id)
            continue
        digest = _sha256(path)
        if digest != f.sha256 and not allow_unverified:
            log.warning("%s: checksum %s differs from the recorded one; not used", path, digest)
            missing.append(f.id)
            continue
        sources.append(HDRSource(f.id, path, f.kind, f.license, f.weight, digest))
    return sources, missing


def scan_hdr_dir(root: str | os.PathLike[str], kind: str = "image") -> tuple[list[HDRSource], list[tuple[str, str]]]:
    """Every ``.exr``/``.hdr`` under ``root`` (recursive, sorted) that loads and validates.

    Returns ``(sources, rejected)`` with ``rejected`` a list of ``(path, reason)``; each rejection is also
    logged with the file name. Source ids are ``user/<relative path>``.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"HDR folder {root} does not exist")
    sources, rejected = [], []
    for path in sorted(p for p in root.rglob("*") if p.suffix.lower() in HDR_EXTENSIONS and p.is_file()):
        try:
            load_radiance(path, kind)
        except ImageReadError as err:
            log.warning("skipping %s", err)
            rejected.append((str(path), err.reason))
            continue
        rel = path.relative_to(root).as_posix()
        sources.append(HDRSource(f"user/{root.name}/{rel}", path, kind, sha256=_sha256(path)))
    return sources, rejected


# ------------------------------------------------------------------------------------------- radiance

BT2020_TO_BT709 = np.array(
    [[1.660491, -0.587641, -0.072850], [-0.124550, 1.132900, -0.008349], [-0.018151, -0.100579, 1.118730]], np.float32
)

_HLG_A = 0.17883277
_HLG_B = 1.0 - 4.0 * _HLG_A
_HLG_C = 0.5 - _HLG_A * math.log(4.0 * _HLG_A)


def hlg_to_linear(signal: np.ndarray) -> np.ndarray:
    """HLG inverse OETF (ITU-R BT.2100): signal [0, 1] -> normalized scene-linear light [0, 1]; float32."""
    e = np.clip(np.asarray(signal, np.float64), 0.0, 1.0)
    low = e * e / 3.0
    high = (np.exp((e - _HLG_C) / _HLG_A) + _HLG_B) / 12.0
    return np.where(e <= 0.5, low, high).astype(np.float32)


def validate_radiance(img: np.ndarray, path: str | os.PathLike[str], negative_tolerance: float = 0.05) -> np.ndarray:
    """Check a radiance map; returns float32 with small negatives clamped to 0.

    Rejects (``ImageReadError`` naming ``path``) empty images, NaN/Inf, all-black images, and negative
    values larger than ``negative_tolerance`` times the 99th percentile (lossy codecs such as DWAB leave
    tiny negatives, which are clamped).
    """
    img = np.asarray(img)
    if img.ndim != 3 or img.shape[2] != 3 or img.shape[0] == 0 or img.shape[1] == 0:
        raise ImageReadError(path, f"expected a non-empty (H, W, 3) image, got shape {img.shape}")
    bad = int(np.count_nonzero(~np.isfinite(img)))
    if bad:
        raise ImageReadError(path, f"radiance has {bad} NaN/Inf values")
    img = img.astype(np.float32, copy=False)
    top = float(np.percentile(np.abs(img), 99.0))
    if not float(img.max()) > 0.0:
        raise ImageReadError(path, "radiance is all zero or negative")
    low = float(img.min())
    if low < 0.0:
        if -low > negative_tolerance * top:
            raise ImageReadError(path, f"radiance has large negative values (min {low:g}, 99th percentile {top:g})")
        img = np.maximum(img, 0.0)
    return img


def load_radiance(path: str | os.PathLike[str], kind: str = "image") -> np.ndarray:
    """Read and validate a radiance map. ``kind="hlg_png"``: a 16-bit HLG BT.2020 PNG, decoded to BT.709 linear."""
    if kind == "hlg_png":
        code = read_ldr(path)
        if code.dtype != np.uint16:
            raise ImageReadError(path, f"an HLG PNG must be 16-bit, got {code.dtype}")
        img = hlg_to_linear(code.astype(np.float32) / 65535.0) @ BT2020_TO_BT709.T
        return validate_radiance(np.maximum(img, 0.0), path)  # out-of-gamut colours clamp to 0
    return validate_radiance(read_hdr(path), path)


# ---------------------------------------------------------------------------------------------- views


def equirect_view(pano: np.ndarray, yaw: float, pitch: float, fov: float, size: int) -> np.ndarray:
    """A square perspective view (float32 ``(size, size, 3)``) of an equirectangular panorama.

    ``yaw``/``pitch`` in radians (pitch > 0 looks up), ``fov`` the horizontal field of view in radians.
    Rendered with bilinear sampling at a resolution that does not under-sample the panorama, then
    area-averaged down to ``size``.
    """
    import cv2

    ph, pw = pano.shape[:2]
    px_per_rad = pw / (2 * math.pi)
    render = max(size, int(math.ceil(2 * math.tan(fov / 2) * px_per_rad)))  # the pano's density at the centre
    render = min(render, 4 * size)
    f = (render / 2) / math.tan(fov / 2)
    j, i = np.meshgrid(np.arange(render, dtype=np.float32) + 0.5, np.arange(render, dtype=np.float32) + 0.5)
    x = (j - render / 2) / f
    y = -(i - render / 2) / f  # up
    z = np.ones_like(x)
    cp, sp = math.cos(pitch), math.sin(pitch)
    y, z = y * cp + z * sp, -y * sp + z * cp
    cy, sy = math.cos(yaw), math.sin(yaw)
    x, z = x * cy + z * sy, -x * sy + z * cy
    lon = np.arctan2(x, z)
    lat = np.arctan2(y, np.sqrt(x * x + z * z))
    u = ((lon / (2 * math.pi) + 0.5) * pw - 0.5) % pw
    v = np.clip((0.5 - lat / math.pi) * ph - 0.5, 0.0, ph - 1.0)
    view = cv2.remap(pano, u.astype(np.float32), v.astype(np.float32), cv2.INTER_LINEAR, borderMode=cv2.BORDER_WRAP)
    if render != size:
        view = cv2.resize(view, (size, size), interpolation=cv2.INTER_AREA)
    return np.maximum(view, 0.0).astype(np.float32)


def _crop_view(
    rng: np.random.Generator, img: np.ndarray, size: int, scale: tuple[float, float] = (0.4, 1.0)
) -> np.ndarray:
    import cv2

    h, w = img.shape[:2]
    side = max(1, int(round(min(h, w) * rng.uniform(*scale))))
    y0 = int(rng.integers(0, h - side + 1))
    x0 = int(rng.integers(0, w - side + 1))
    crop = img[y0 : y0 + side, x0 : x0 + side]
    interp = cv2.INTER_AREA if side > size else cv2.INTER_LINEAR
    view = cv2.resize(np.ascontiguousarray(crop), (size, size), interpolation=interp)
    if rng.random() < 0.5:
        view = view[:, ::-1]
    return np.ascontiguousarray(np.maximum(view, 0.0), dtype=np.float32)


def sample_view(
    rng: np.random.Generator, radiance: np.ndarray, kind: str, size: int
) -> tuple[np.ndarray, dict[str, Any]]:
    """A random square view of a source: perspective crops of panoramas, scaled crops of flat images."""
    if kind == "panorama":
        yaw = rng.uniform(-math.pi, math.pi)
        pitch = math.radians(rng.uniform(-25.0, 35.0))
        fov = math.radians(rng.uniform(60.0, 110.0))
        view = equirect_view(radiance, yaw, pitch, fov, size)
        if rng.random() < 0.5:
            view = np.ascontiguousarray(view[:, ::-1])
        return view, {
            "yaw": round(math.degrees(yaw), 3),
            "pitch": round(math.degrees(pitch), 3),
            "fov": round(math.degrees(fov), 3),
        }
    return _crop_view(rng, radiance, size), {}
