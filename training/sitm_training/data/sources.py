"""Real HDR sources: files shipped inside Debian packages (fetched with checksums), user folders, and views.

The Debian files are fetched without installing anything: ``apt-get download PKG`` into the cache, then
the wanted members are streamed out of ``dpkg-deb --fsys-tarfile PKG.deb`` and checked against the
SHA-256 recorded below (observed on Debian 12 "bookworm"). Nothing of it belongs in git: the cache is
``$SITM_TRT_CACHE`` or ``~/.cache/sitm-trt``.

Two registry packages add real radiance maps the same way (no install, no code of theirs executed): the npm
tarball ``@pmndrs/assets`` (Poly Haven HDRIs stored as base64 EXR inside JS modules, read as text) and the
PyPI wheel ``open3d`` (KTX1 cubemaps in packed R11G11B10F, read from the zip). Both are pinned by the
artefact's SHA-256, each member's SHA-256 and the decoded pixels' SHA-256 (:data:`REGISTRY_FILES`).

Splits are by source (whole scenes, never crops): :data:`TEST_SOURCE_IDS` feed only the test split,
:data:`VAL_SOURCE_IDS` only the validation split; the train split sees neither.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import math
import os
import re
import shutil
import struct
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sitm_trt.files import atomic_write
from sitm_trt.media.io import HDR_EXTENSIONS, ImageReadError, read_hdr, read_ldr, write_exr

__all__ = [
    "card_sources",
    "DebianFile",
    "DEBIAN_FILES",
    "TEST_SOURCE_IDS",
    "VAL_SOURCE_IDS",
    "RegistryArtefact",
    "RegistryFile",
    "REGISTRY_ARTEFACTS",
    "REGISTRY_FILES",
    "SKIPPED_SCENES",
    "fetch_registry",
    "find_registry_sources",
    "find_all_sources",
    "source_split",
    "extract_base64_exr",
    "decode_r11g11b10f",
    "read_ktx1_cubemap",
    "pixel_sha256",
    "fill_negative_pixels",
    "cubemap_view",
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

# Held out for validation (whole scenes; fixed on 2026-12-06 from content and dynamic range alone, before any
# model was scored on them, and not to be changed after looking at scores). Chosen to cover what the model must
# restore: suns (brightday, crossroads), night lights (nightlights, streetlamp), lamps indoors (esplanade,
# open3d/hall, pmndrs/hall, workshop, lobby), a bright outside seen from the shade (pillars), daylight through
# glass (bridge). No scene here has a sibling (same place, another capture) in the train split; everything from
# them is in the val split only (docs/data.md).
VAL_SOURCE_IDS = frozenset({
    "open3d/brightday", "open3d/crossroads", "open3d/hall", "open3d/nightlights", "open3d/pillars",
    "open3d/streetlamp", "pmndrs/bridge", "pmndrs/esplanade", "pmndrs/hall", "pmndrs/lobby", "pmndrs/workshop",
})


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
                atomic_write(target, data)
                out[f.id] = target
        proc.stdout.read()  # drain, so dpkg-deb can exit
        errors = proc.stderr.read().decode(errors="replace")
        if proc.wait() != 0:
            raise FetchError(f"dpkg-deb --fsys-tarfile {deb} failed: {errors[-500:]}")
    return out


# ------------------------------------------------------------------------------------- registry packages


@dataclass(frozen=True)
class RegistryArtefact:
    """One package file fetched with its registry's own client, pinned by SHA-256."""

    registry: str  # "npm" | "pypi"
    package: str
    version: str
    filename: str  # what the client writes
    sha256: str

    @property
    def spec(self) -> str:
        return f"{self.package}@{self.version}" if self.registry == "npm" else f"{self.package}=={self.version}"

    def command(self, dest: Path) -> list[str]:
        """The download command (run in ``dest``)."""
        if self.registry == "npm":  # `npm pack` writes the registry tarball; nothing is installed or run
            return ["npm", "pack", "--silent", "--ignore-scripts", "--cache", str(dest / ".npm"), self.spec]
        # the same wheel on every platform (its resources are platform-independent): pinned tags
        return [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--no-cache-dir",
                "--python-version", "3.11", "--implementation", "cp", "--abi", "cp311",
                "--platform", "manylinux_2_35_x86_64", "--disable-pip-version-check", "-d", str(dest), self.spec]


@dataclass(frozen=True)
class RegistryFile:
    """One radiance map inside a registry package, decoded into ``CACHE/hdr/<id>.exr`` (float16, ZIP)."""

    id: str
    artefact: str  # key of REGISTRY_ARTEFACTS
    member: str  # path inside the tarball / wheel
    member_sha256: str  # of the embedded file (the EXR payload after base64, the .ktx)
    pixels_sha256: str  # of the decoded pixels (pixel_sha256): after fill_negative_pixels, float16 (H, W, 3)
    kind: str  # "panorama" (equirectangular) | "cubemap" (6 faces stacked vertically: +X -X +Y -Y +Z -Z)
    license: str
    license_known: bool = True
    weight: float = 1.0

    @property
    def suffix(self) -> str:
        return ".exr"


REGISTRY_ARTEFACTS: dict[str, RegistryArtefact] = {
    "npm:@pmndrs/assets": RegistryArtefact(
        "npm", "@pmndrs/assets", "1.7.0", "pmndrs-assets-1.7.0.tgz",
        "152bd218a3390703f184f0c6ce16e73c8f0a87f32d38530d418a09d33d8208dc",
    ),
    "pypi:open3d": RegistryArtefact(
        "pypi", "open3d", "0.20.0", "open3d-0.20.0-cp311-cp311-manylinux_2_35_x86_64.whl",
        "18ae25cbc9f8fcabc06bad71e00cca3cd0ff0a762ce0fbec093f2e2a4d05eddf",
    ),
}

_PMNDRS_LICENSE = "CC0-1.0 (@pmndrs/assets 1.7.0: package.json and LICENSE; Poly Haven HDRIs)"
_OPEN3D_LICENSE = "unknown (the open3d 0.20.0 wheel names no licence or author for its skyboxes; docs/data.md)"
# name: (member sha256, pixels sha256); names as in the packages
_PMNDRS = {
    "apartment": (
        "31c62c03b5686b3d899071070ec1bfc760a3ddc1e6a05915ebc28102fef2fb1c",
        "c30f8061b3fb63ad34a8857d55b1b19d2d7a1d202b2044d6f70052fea7bcdb55",
    ),
    "bridge": (
        "921f8b95cd1ae8bda602d4d395d8ce5574975ae0df626504eb4387cc963212ea",
        "64838a956534f2934b66bf5b105d056708a230c6dc88c6910e23e57203557532",
    ),
    "city": (
        "82847b3f3e2073d16647be2eb5712dc0f7e37ddc9480a1d45f2270fe8cd048f6",
        "e8bf041a6a88784201d7a3907a5b7fafad8a837218534ea162d9b20fc2668022",
    ),
    "dawn": (
        "02529d0a04dbc6e761adb9b4f6bcb07b0ef3931b218b394ee6be68b1fe39ce79",
        "5a42e1f88c0e7de3415a40b7ca1f2560b168fdc4ea2a6ea2e4aa1c8d5e8c9780",
    ),
    "esplanade": (
        "2a3c5a870167dc1a1ad44115cd0c554cfde97fa6ca859f4f90f39771db90b54c",
        "48a835e7b1bbca28ada01c505dca54c185ab863e730bd7f2db1dd8bd19ed90c2",
    ),
    "forest": (
        "6fff311b5f3dad0910d8f334a6d9d88218ffd873d72c679ee1b7e4bccfa140e3",
        "5994ce962370477e3244eb91eccc3bc72d54f4ba86338a8204022353de0eb79d",
    ),
    "hall": (
        "205a84e0108d40fb207e077db9bc68a15f329a8af8ee1f82c28524e967963b81",
        "7ffa8dd5eefec64b95e8d4f376538a975c61b926114e69520c3a3b105148a83d",
    ),
    "lab": (
        "4f993660d9c53e97cb23f2d901e06aed9bc0323f6cd9079ec0de02e73634796e",
        "677968e9c14cbfce629146a3342dccb056d4f6af6d903ed0c03f851fc38d6146",
    ),
    "lobby": (
        "55b54fc7b4efc5e9fef27529208d4abe9614839307f40490b135ce75aa08b72c",
        "c92f1ca135002da95c030bf7d8ab959a3271fb04fb820dcd4fe8e0fc45322b76",
    ),
    "night": (
        "9509f1b917dbb4c98d63b92e9fd12fb79e3376d17ec3186e2de39543e32ce5ff",
        "9500164f20dd8d0ffb05df247b738465793f9fa6f915c42e445efa7d9f18ab60",
    ),
    "sky": (
        "a72412700b91a49080a582420476d2ab9a1e8fd181031f4ae7ec5e2596addc2a",
        "0f18951dbb257ac9ed5608906882f9adb116010b5b7bcdefa805ecbfc259a0b9",
    ),
    "studio": (
        "08038ed9159c24bb732d2218dafa09cef2abaa44f9ce11ec511d87c842d88fad",
        "8ca9d6db099061975124a4e636bfa0a4ba6f3acf16ddc202ea5ced72b12e5a5c",
    ),
    "sunset": (
        "d09a4d7581f5454f13c3da3c323a231d00a34e60200de7654a895d2d41a7ceb7",
        "d79c611a57fb105274456d01b561c53cd0bbdf7c948be1cdedd5d28c27ee4a70",
    ),
    "warehouse": (
        "bb11fe7e9c3037b8db21beab826a7ed7c452a48cb6d361f982ca7311aacba9c1",
        "277e4df7bed157114700fe8bc45d4b78ba467a6de4f6d8c43ac3613001a07021",
    ),
    "workshop": (
        "793ca687c647e032c79ea3a67bd016ad3158d17506540cfa8fdd901550cc0a5d",
        "52bb1ad19eae3372d1d5e258630b5f597c7f223141f27b33369fde037ebb51e8",
    ),
}
_OPEN3D = {
    "brightday": (
        "e81c7fc3027f5468d267f73f677a9b0401ba4882b6d2a35227e8bb983a302638",
        "11c9708b2e296c14837cb66dc5641f397c3a082580ca26e519e17823f95ef7ea",
    ),
    "crossroads": (
        "1329be5765c841d3009000451c4f8827978ccc54b074838b644cf986432829ae",
        "81122ecd2597f583feb2ab9a11a067c09d800d6df3be54a94e2c3235c4f050b3",
    ),
    "hall": (
        "86d049ee7c2217fbfd0a7741b1cce9d90da3c03049159f6cdd70bf87710add8b",
        "a956ee840ae9fb9d83b215fe7374f2296229f16f8b48b276ade7add9dd88a1ac",
    ),
    "konzerthaus": (
        "2f57c55996e199ec3c258d92a50f13ccc0d233d672b5574e3ea145751e1bcdcf",
        "a2ad9bab9c6cdb87bd08e1b17a503bca9ce3aa61ca87f9901b28441d3eefda93",
    ),
    "nightlights": (
        "fb3cd049b382cca5ec7f9434e212fc13725804cd80191193a778fbce4ffaa3b0",
        "da08f6190d76d0ec706ed91c9fdcf49dc535542fbfcf2fa8bd2eab1a5a250727",
    ),
    "park": (
        "86227fb5ec25b44c13d0ca6c1f8eeca39523eabe903b0c5f790cc9d25790dba3",
        "747d77bb12d754b07a99e667edb59121b49f701a8fa22939f2337a1dffa5a4ab",
    ),
    "park2": (
        "319859a3585ce9a078e3046c98ad7629eb75d36d5daf171edc93e8b05bca93ce",
        "0a191e68fd93f9e2c5659e9a29ead72219b4d5f7c5e0c6d7e3193b7b93e2bcb9",
    ),
    "pillars": (
        "c846c2f5c727aa4c0b0a27837f789f2906585f12e804f9cd90c15cea1c5131ce",
        "011643a602e021f0969cad92e74b90e2b896f71642b60b0e0d979e6282231314",
    ),
    "streetlamp": (
        "a8307629a943bb7aeca4756f6f85156f70ecc5868b4e73a2a7c7f5d62e0de07b",
        "85f65b3b8108c3c3a97a635f16ec99c69b8493ce43becb2e606acaa4c96a61bf",
    ),
}

REGISTRY_FILES: tuple[RegistryFile, ...] = tuple(
    RegistryFile(f"pmndrs/{name}", "npm:@pmndrs/assets", f"package/hdri/{name}.exr.js", m, px, "panorama",
                 _PMNDRS_LICENSE, weight=0.5)  # 512x256: half the pixel density of the Blender panoramas
    for name, (m, px) in _PMNDRS.items()
) + tuple(
    RegistryFile(f"open3d/{name}", "pypi:open3d", f"open3d/resources/{name}_skybox.ktx", m, px, "cubemap",
                 _OPEN3D_LICENSE, license_known=False)
    for name, (m, px) in _OPEN3D.items()
)

# Left out on purpose (found while adding the registry packages; see docs/data.md).
SKIPPED_SCENES = {
    "pmndrs/sunrise": "the same panorama as blender/sunrise (log-luminance correlation 0.998 at the best yaw)",
    "pmndrs/park": "DWAB turned the sun into a blue 4x4 block (red and green near 0, blue 11800): a wrong target",
    "pmndrs/venice": "the Venice lagoon waterfront at dusk, next to the test scene blender/sunset (same series, "
    "another spot): kept out so that nothing like a test scene is trained on",
    "open3d/default": "synthetic gradient, not a photograph",
}


def pixel_sha256(img: np.ndarray) -> str:
    """SHA-256 of an image's pixels as float16 little-endian ``(H, W, 3)`` in C order (the decoded sources'
    checksum: independent of the file container and its compressor)."""
    a = np.ascontiguousarray(np.asarray(img, np.float16)).astype("<f2", copy=False)
    h = hashlib.sha256(f"{a.shape}".encode())
    h.update(a.tobytes())
    return h.hexdigest()


_DATA_URL = re.compile(rb"\A\s*export\s+default\s+(['\"])data:application/exr;base64,([A-Za-z0-9+/=\s]*)\1\s*;?\s*\Z")


def extract_base64_exr(module: bytes | str, name: str = "module") -> bytes:
    """The EXR file inside a JS module of ``@pmndrs/assets`` (``export default 'data:application/exr;base64,...'``).

    Parses the text only (nothing is executed); raises ``ValueError`` naming ``name`` when the module has
    another form, the base64 is invalid, or the payload is not an OpenEXR file.
    """
    raw = module.encode() if isinstance(module, str) else bytes(module)
    m = _DATA_URL.match(raw)
    if m is None:
        raise ValueError(f"{name}: not a `export default 'data:application/exr;base64,...'` module")
    try:
        payload = base64.b64decode(re.sub(rb"\s+", b"", m.group(2)), validate=True)
    except binascii.Error as err:
        raise ValueError(f"{name}: invalid base64 ({err})") from err
    if not payload.startswith(b"\x76\x2f\x31\x01"):
        raise ValueError(f"{name}: the payload is not an OpenEXR file (magic {payload[:4]!r})")
    return payload


def decode_r11g11b10f(words: np.ndarray) -> np.ndarray:
    """Unpack ``GL_R11F_G11F_B10F`` words (uint32) to float32 ``(..., 3)``.

    R in bits 0-10 and G in bits 11-21 (5-bit exponent, 6-bit mantissa), B in bits 22-31 (5-bit exponent,
    5-bit mantissa); unsigned, exponent bias 15, denormals ``m / 2^M * 2^-14``; exponent 31 (Inf/NaN)
    raises ``ValueError``.
    """
    w = np.asarray(words)
    if w.dtype != np.uint32:
        raise ValueError(f"R11G11B10F words must be uint32, got {w.dtype}")
    out = np.empty(w.shape + (3,), np.float32)
    for c, (shift, mbits) in enumerate(((0, 6), (11, 6), (22, 5))):
        field = (w >> np.uint32(shift)) & np.uint32((1 << (5 + mbits)) - 1)
        e = (field >> np.uint32(mbits)).astype(np.int32)
        m = (field & np.uint32((1 << mbits) - 1)).astype(np.float32)
        if np.any(e == 31):
            raise ValueError(f"R11G11B10F data holds {int(np.count_nonzero(e == 31))} Inf/NaN values")
        frac = m / np.float32(1 << mbits)
        out[..., c] = np.where(e == 0, frac * np.float32(2.0**-14), np.ldexp(1.0 + frac, e - 15).astype(np.float32))
    return out


_KTX1_ID = b"\xabKTX 11\xbb\r\n\x1a\n"
_GL_R11F_G11F_B10F = 0x8C3A
_GL_UNSIGNED_INT_10F_11F_11F_REV = 0x8C3B


def read_ktx1_cubemap(data: bytes, name: str = "ktx") -> np.ndarray:
    """Level 0 of a KTX1 cubemap in ``GL_R11F_G11F_B10F``: float32 ``(6, N, N, 3)``, faces in KTX order
    (+X, -X, +Y, -Y, +Z, -Z), rows as stored (OpenGL ``t`` from 0). Only this layout is accepted (little-endian,
    no array, 6 faces, square); anything else raises ``ValueError`` naming ``name``.

    Filament's writer (Open3D's skyboxes) stores the internal format in ``glType`` and ``glFormat`` too; both
    that and the spec's ``GL_UNSIGNED_INT_10F_11F_11F_REV`` are accepted.
    """
    if len(data) < 64 or data[:12] != _KTX1_ID:
        raise ValueError(f"{name}: not a KTX1 file")
    (endian, gl_type, type_size, gl_format, internal, base, width, height, depth, n_array, n_faces, n_mips,
     kv_bytes) = struct.unpack("<13I", data[12:64])
    if endian != 0x04030201:
        raise ValueError(f"{name}: big-endian KTX1 is not supported")
    if internal != _GL_R11F_G11F_B10F or gl_type not in (_GL_UNSIGNED_INT_10F_11F_11F_REV, _GL_R11F_G11F_B10F):
        raise ValueError(f"{name}: glInternalFormat {internal:#x} / glType {gl_type:#x}, expected R11F_G11F_B10F")
    if n_faces != 6 or n_array != 0 or depth != 0 or width != height or width == 0 or n_mips < 1:
        raise ValueError(f"{name}: not a square cubemap (faces {n_faces}, array {n_array}, depth {depth}, "
                         f"{width}x{height}, levels {n_mips})")
    off = 64 + kv_bytes
    face_bytes = width * height * 4
    if off + 4 > len(data):
        raise ValueError(f"{name}: truncated (no image data)")
    (image_size,) = struct.unpack("<I", data[off : off + 4])
    if image_size != face_bytes:
        raise ValueError(f"{name}: level 0 imageSize {image_size}, expected {face_bytes} per face")
    off += 4
    if off + 6 * face_bytes > len(data):  # faces are 4-byte aligned already: no cube padding
        raise ValueError(f"{name}: truncated ({len(data)} bytes, level 0 needs {off + 6 * face_bytes})")
    words = np.frombuffer(data, "<u4", 6 * width * height, off).astype(np.uint32)
    try:
        return decode_r11g11b10f(words).reshape(6, height, width, 3)
    except ValueError as err:
        raise ValueError(f"{name}: {err}") from err


def _cached_registry(cache: Path, f: RegistryFile) -> Path:
    return cache / "hdr" / (f.id + f.suffix)


def _decode_member(f: RegistryFile, data: bytes, workdir: Path) -> tuple[np.ndarray, str]:
    """``(radiance, sha256 of the embedded file)``: float32 >= 0, the EXR inside the JS module (its SHA-256 is
    the EXR's), or the KTX cubemap as a vertical strip of its 6 faces (its SHA-256 is the .ktx file's)."""
    if f.kind == "cubemap":
        embedded = data
        faces = read_ktx1_cubemap(data, f.member)
        img = faces.reshape(6 * faces.shape[1], faces.shape[2], 3)
    else:
        embedded = extract_base64_exr(data, f.member)
        tmp = workdir / (f.id.replace("/", "_") + ".exr")
        tmp.write_bytes(embedded)
        img = read_hdr(tmp)  # DWAB, half float; ImageReadError (a ValueError) when broken
    if not np.isfinite(img).all():
        raise ValueError(f"{f.member} holds NaN/Inf")
    img, filled = fill_negative_pixels(img)
    if filled:
        log.info("%s: %d pixels with a negative channel (DWAB ringing) filled from their surroundings", f.id, filled)
    return np.where(img > 0, img, np.float32(0)).astype(np.float32), hashlib.sha256(embedded).hexdigest()


def fill_negative_pixels(img: np.ndarray) -> tuple[np.ndarray, int]:
    """Fill the pixels with a negative channel from their surroundings; ``(float32 image, count)``.

    Lossy DWAB at 512x256 rings around suns and lamps and leaves holes of negative values inside them, which
    clamping would turn into black dots inside the lights. Each such pixel gets, per channel, the mean log
    radiance of its known 8-neighbours, filled from the hole's edge inwards (onion peeling), so a filled value
    lies between the smallest and largest value around the hole. Other pixels are returned unchanged.
    """
    import cv2

    img = np.asarray(img, np.float32)
    todo = (img < 0).any(axis=-1)
    n = int(todo.sum())
    if n == 0:
        return img, 0
    log_img = np.log(np.maximum(img, np.float32(1e-30))).astype(np.float64)
    known = ~todo
    kernel = np.ones((3, 3), np.float64)
    kernel[1, 1] = 0.0
    while todo.any():
        k = known.astype(np.float64)
        count = cv2.filter2D(k, -1, kernel, borderType=cv2.BORDER_CONSTANT)
        ring = todo & (count > 0)
        if not ring.any():  # no known pixel at all (an image of negatives): nothing to fill from
            break
        for c in range(img.shape[-1]):
            total = cv2.filter2D(np.where(known, log_img[..., c], 0.0), -1, kernel, borderType=cv2.BORDER_CONSTANT)
            log_img[..., c] = np.where(ring, total / np.maximum(count, 1.0), log_img[..., c])
        known |= ring
        todo &= ~ring
    out = img.copy()
    filled = (img < 0).any(axis=-1) & known
    out[filled] = np.exp(log_img[filled]).astype(np.float32)
    return out, n


def _download(art: RegistryArtefact, dest: Path) -> Path:
    """Run the registry client in ``dest``; returns the artefact's path (tests replace this function)."""
    tool = "npm" if art.registry == "npm" else None
    if tool and shutil.which(tool) is None:
        raise FetchError(f"npm not found: `npm pack {art.spec}` fetches the HDRIs of {art.package}; install "
                         "Node.js/npm, or leave them out with --no-npm")
    r = _run(art.command(dest), cwd=dest)
    path = dest / art.filename
    if r.returncode != 0 or not path.is_file():
        got = sorted(p.name for p in dest.iterdir())
        raise FetchError(f"`{' '.join(art.command(dest)[:4])} ... {art.spec}` failed ({r.returncode}; files: {got}): "
                         f"{(r.stderr or r.stdout).strip()[-500:]}")
    return path


def _members(art: RegistryArtefact, path: Path, wanted: set[str]) -> dict[str, bytes]:
    """The wanted members' bytes, read in memory (nothing is extracted to disk)."""
    out: dict[str, bytes] = {}
    try:
        if art.registry == "npm":
            with tarfile.open(path, "r:gz") as tar:
                for member in tar:
                    if member.name in wanted and member.isfile():
                        fh = tar.extractfile(member)
                        assert fh is not None
                        out[member.name] = fh.read()
        else:
            with zipfile.ZipFile(path) as zf:
                names = set(zf.namelist())
                out = {n: zf.read(n) for n in sorted(wanted & names)}
    except (tarfile.TarError, zipfile.BadZipFile, OSError, EOFError) as err:
        raise FetchError(f"{path.name}: cannot read the package ({type(err).__name__}: {err})") from err
    return out


def fetch_registry(
    cache: Path | None = None,
    *,
    artefacts: tuple[str, ...] | None = None,
    keep: bool = False,
    allow_unverified: bool = False,
) -> dict[str, Path]:
    """Fetch the registry packages (:data:`REGISTRY_ARTEFACTS`, all or ``artefacts``) into a temporary folder
    under ``cache``, check each artefact's SHA-256, decode the wanted members and write them atomically to
    ``cache/hdr/<id>.exr`` (float16 ZIP EXR, lossless for these sources). Files already there with the
    recorded pixel checksum are skipped. Returns ``{id: path}``.

    An artefact, member or decoded image with another checksum raises :class:`FetchError` and nothing of it is
    written, unless ``allow_unverified`` (then it is written and logged). ``keep`` keeps the downloaded
    artefact in ``cache/registry``.
    """
    cache = Path(cache) if cache is not None else default_cache_dir()
    keys = tuple(REGISTRY_ARTEFACTS) if artefacts is None else artefacts
    done: dict[str, Path] = {}
    errors: list[str] = []
    for key in keys:
        art = REGISTRY_ARTEFACTS[key]
        files = [f for f in REGISTRY_FILES if f.artefact == key]
        todo = []
        for f in files:
            path = _cached_registry(cache, f)
            if path.is_file() and _registry_file_ok(path, f, allow_unverified):
                done[f.id] = path
            else:
                todo.append(f)
        if not todo:
            continue
        cache.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".fetch-", dir=cache) as tmp:
            work = Path(tmp)
            try:
                got = _fetch_artefact(art, todo, work, cache, allow_unverified, keep)
            except FetchError as err:
                errors.append(str(err))
                continue
            done.update(got)
    if errors:
        raise FetchError("; ".join(errors))
    return done


def _fetch_artefact(
    art: RegistryArtefact, todo: list[RegistryFile], work: Path, cache: Path, allow_unverified: bool, keep: bool
) -> dict[str, Path]:
    log.info("fetching %s (%s)", art.spec, art.registry)
    path = _download(art, work)
    digest = _sha256(path)
    if digest != art.sha256:
        msg = f"{art.filename}: sha256 {digest} differs from the recorded {art.sha256}"
        if not allow_unverified:
            raise FetchError(f"checksum mismatch: {msg}; nothing of it is used (--allow-unverified to use it anyway)")
        log.warning("%s (used: --allow-unverified)", msg)
    members = _members(art, path, {f.member for f in todo})
    missing = sorted(f.member for f in todo if f.member not in members)
    if missing:
        raise FetchError(f"{art.filename} lacks {missing}: the package layout changed")
    decoded: dict[RegistryFile, np.ndarray] = {}
    bad: list[str] = []
    for f in todo:
        try:
            img, embedded_sha = _decode_member(f, members[f.member], work)
        except ValueError as err:
            raise FetchError(f"{art.filename}: {f.id}: {err}") from err
        checks = [("member", embedded_sha, f.member_sha256), ("pixels", pixel_sha256(img), f.pixels_sha256)]
        wrong = [f"{what} {got} != {want}" for what, got, want in checks if got != want]
        if wrong:
            log.warning("%s: %s", f.id, "; ".join(wrong))
            if not allow_unverified:
                bad.append(f.id)
                continue
        decoded[f] = img
    if bad:
        raise FetchError(f"checksum mismatch for {bad} in {art.filename}: not used (--allow-unverified to use them)")
    out: dict[str, Path] = {}
    for f, img in decoded.items():
        target = _cached_registry(cache, f)
        target.parent.mkdir(parents=True, exist_ok=True)
        write_exr(target, img, half=True)  # atomic; reads back as the float16 pixels the checksum was taken on
        out[f.id] = target
    if keep:
        (cache / "registry").mkdir(parents=True, exist_ok=True)
        os.replace(path, cache / "registry" / art.filename)
    return out


def _registry_file_ok(path: Path, f: RegistryFile, allow_unverified: bool) -> bool:
    try:
        img = read_hdr(path)
    except ImageReadError as err:
        log.warning("%s", err)
        return False
    if pixel_sha256(img) == f.pixels_sha256:
        return True
    log.warning("%s: pixel checksum differs from the recorded one%s", path, "" if allow_unverified else "; not used")
    return allow_unverified


def find_registry_sources(
    cache: Path | None = None, *, allow_unverified: bool = False
) -> tuple[list[HDRSource], list[str]]:
    """The decoded registry sources present in ``cache`` whose pixels match the recorded checksum;
    ``(sources, missing ids)``."""
    cache = Path(cache) if cache is not None else default_cache_dir()
    sources, missing = [], []
    for f in REGISTRY_FILES:
        path = _cached_registry(cache, f)
        if not path.is_file() or not _registry_file_ok(path, f, allow_unverified):
            missing.append(f.id)
            continue
        art = REGISTRY_ARTEFACTS[f.artefact]
        origin = (f"{art.registry} {art.spec} ({art.filename}, sha256 {art.sha256}): {f.member} "
                  f"(sha256 {f.member_sha256}); decoded pixels sha256 {f.pixels_sha256}")
        sources.append(HDRSource(f.id, path, f.kind, f.license, f.weight, f.pixels_sha256 or _sha256(path),
                                 license_known=f.license_known, origin=origin))
    return sources, missing


def find_all_sources(
    cache: Path | None = None, *, debian: bool = True, registry: bool = True, allow_unverified: bool = False
) -> tuple[list[HDRSource], list[str]]:
    """The fetched Debian and registry sources; ``(sources, missing ids)``."""
    found: list[HDRSource] = []
    missing: list[str] = []
    for use, finder in ((debian, find_debian_sources), (registry, find_registry_sources)):
        if use:
            f, m = finder(cache, allow_unverified=allow_unverified)
            found += f
            missing += m
    return found, missing


def card_sources(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """Every data source of a built data set, for a weights card: id, split, kind, license, whether the license
    is known, the sha256 of the pixels used and where they came from (package, version, member, checksums).

    ``manifest`` is a data set's ``manifest.json``; entries written before the manifest recorded ``origin`` and
    ``license_known`` get them from this module's tables (the same ids, pinned by the same checksums). The
    procedural generator is listed last when the recipe used it (``real_fraction`` < 1, or no real source)."""
    debian = {f.id: f for f in DEBIAN_FILES}
    registry = {f.id: f for f in REGISTRY_FILES}
    out: list[dict[str, Any]] = []
    for e in manifest.get("sources") or []:
        sid = str(e.get("id", ""))
        rec = {"id": sid, "split": e.get("split"), "kind": e.get("kind"), "license": e.get("license"),
               "license_known": e.get("license_known"), "sha256": e.get("sha256"), "origin": e.get("origin") or ""}
        if sid in debian:
            f = debian[sid]
            rec["origin"] = rec["origin"] or f"debian {f.package}: {f.member} (sha256 {f.sha256})"
            rec["license_known"] = True if rec["license_known"] is None else rec["license_known"]
        elif sid in registry:
            f = registry[sid]
            art = REGISTRY_ARTEFACTS[f.artefact]
            rec["origin"] = rec["origin"] or (f"{art.registry} {art.spec} ({art.filename}, sha256 {art.sha256}): "
                                              f"{f.member} (sha256 {f.member_sha256})")
            rec["license_known"] = f.license_known if rec["license_known"] is None else rec["license_known"]
        elif rec["license_known"] is None:
            rec["license_known"] = False  # a user folder: its license is whatever the user knows
        out.append(rec)
    recipe = manifest.get("recipe") or {}
    if not out or float(recipe.get("real_fraction", 0.5)) < 1.0:
        out.append({"id": "procedural", "split": "train, val", "kind": "generated", "license":
                    "the project's license (generated by sitm_training.data.procedural)", "license_known": True,
                    "sha256": None, "origin": f"generator version {recipe.get('generator_version')}"})
    return out


def source_split(source_id: str) -> str:
    """Which split a real source feeds: ``test``, ``val`` (held-out validation scenes) or ``train``."""
    if source_id in TEST_SOURCE_IDS or source_id.startswith("test/"):
        return "test"
    if source_id in VAL_SOURCE_IDS or source_id.startswith("val/"):
        return "val"
    return "train"


# --------------------------------------------------------------------------------------------- sources


@dataclass(frozen=True)
class HDRSource:
    """An HDR image to cut training views from."""

    id: str
    path: Path
    kind: str  # "panorama" | "cubemap" | "image" | "hlg_png"
    license: str = "unknown (user file)"
    weight: float = 1.0
    sha256: str = ""
    license_known: bool = True  # False: the build can keep it out of training (--exclude-unknown-license)
    origin: str = ""  # where it came from: package, version, member and their checksums

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
            "license_known": self.license_known,
            "origin": self.origin,
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
        sources.append(HDRSource(f.id, path, f.kind, f.license, f.weight, digest,
                                 origin=f"debian {f.package}: {f.member}"))
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
    img = validate_radiance(read_hdr(path), path)
    if kind == "cubemap" and (img.shape[0] != 6 * img.shape[1]):
        raise ImageReadError(path, f"a cubemap strip must be (6N, N, 3) (faces +X -X +Y -Y +Z -Z), got {img.shape}")
    return img


# ---------------------------------------------------------------------------------------------- views


def equirect_view(pano: np.ndarray, yaw: float, pitch: float, fov: float, size: int) -> np.ndarray:
    """A square perspective view (float32 ``(size, size, 3)``) of an equirectangular panorama.

    ``yaw``/``pitch`` in radians (pitch > 0 looks up), ``fov`` the horizontal field of view in radians.
    Rendered with bilinear sampling at a resolution that does not under-sample the panorama, then
    area-averaged down to ``size``.
    """
    import cv2

    ph, pw = pano.shape[:2]
    render, x, y, z = _view_rays(yaw, pitch, fov, size, pw / (2 * math.pi))
    lon = np.arctan2(x, z)
    lat = np.arctan2(y, np.sqrt(x * x + z * z))
    u = ((lon / (2 * math.pi) + 0.5) * pw - 0.5) % pw
    v = np.clip((0.5 - lat / math.pi) * ph - 0.5, 0.0, ph - 1.0)
    view = cv2.remap(pano, u.astype(np.float32), v.astype(np.float32), cv2.INTER_LINEAR, borderMode=cv2.BORDER_WRAP)
    if render != size:
        view = cv2.resize(view, (size, size), interpolation=cv2.INTER_AREA)
    return np.maximum(view, 0.0).astype(np.float32)


def _view_rays(
    yaw: float, pitch: float, fov: float, size: int, px_per_rad: float
) -> tuple[int, np.ndarray, np.ndarray, np.ndarray]:
    """``(render, x, y, z)``: the render side (the source's density at the centre, within [size, 4 size]) and the
    unnormalized ray directions (y up, z forward at yaw = pitch = 0, yaw towards +x) of its pixels."""
    render = max(size, int(math.ceil(2 * math.tan(fov / 2) * px_per_rad)))  # the source's density at the centre
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
    return render, x, y, z


def cubemap_view(strip: np.ndarray, yaw: float, pitch: float, fov: float, size: int) -> np.ndarray:
    """A square perspective view (float32 ``(size, size, 3)``) of a cubemap stored as a vertical strip of its
    faces (+X, -X, +Y, -Y, +Z, -Z; each ``N x N`` with rows from OpenGL's ``t = 0``), y up.

    The same camera as :func:`equirect_view`. Face and ``(s, t)`` follow the OpenGL cube-map selection table;
    samples are bilinear within a face (clamped half a texel from its edges, so no face bleeds into the next).
    """
    import cv2

    n = strip.shape[1]
    if strip.ndim != 3 or strip.shape[0] != 6 * n or strip.shape[2] != 3:
        raise ValueError(f"a cubemap strip must be (6N, N, 3), got {strip.shape}")
    render, x, y, z = _view_rays(yaw, pitch, fov, size, n / (math.pi / 2))
    ax, ay, az = np.abs(x), np.abs(y), np.abs(z)
    xm = (ax >= ay) & (ax >= az)
    ym = ~xm & (ay >= az)
    face = np.where(xm, np.where(x > 0, 0, 1), np.where(ym, np.where(y > 0, 2, 3), np.where(z > 0, 4, 5)))
    #        +X   -X  +Y  -Y  +Z  -Z
    sc = np.choose(face, [-z, z, x, x, x, -x])
    tc = np.choose(face, [-y, -y, z, -z, -y, -y])
    ma = np.where(xm, ax, np.where(ym, ay, az))
    u = np.clip((sc / ma + 1) * (n / 2) - 0.5, 0.0, n - 1.0)
    v = np.clip((tc / ma + 1) * (n / 2) - 0.5, 0.0, n - 1.0) + face * n
    view = cv2.remap(strip, u.astype(np.float32), v.astype(np.float32), cv2.INTER_LINEAR,
                     borderMode=cv2.BORDER_REPLICATE)
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
    """A random square view of a source: perspective crops of panoramas and cubemaps, scaled crops of flat
    images."""
    if kind in ("panorama", "cubemap"):
        yaw = rng.uniform(-math.pi, math.pi)
        pitch = math.radians(rng.uniform(-25.0, 35.0))
        fov = math.radians(rng.uniform(60.0, 110.0))
        view = (equirect_view if kind == "panorama" else cubemap_view)(radiance, yaw, pitch, fov, size)
        if rng.random() < 0.5:
            view = np.ascontiguousarray(view[:, ::-1])
        return view, {
            "yaw": round(math.degrees(yaw), 3),
            "pitch": round(math.degrees(pitch), 3),
            "fov": round(math.degrees(fov), 3),
        }
    return _crop_view(rng, radiance, size), {}
