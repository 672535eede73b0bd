"""Fetching the pinned HDR sources into the cache, and finding them there.

The cache is ``$SITM_TRT_CACHE`` or ``~/.cache/sitm-trt`` (:func:`default_cache_dir`); nothing of it belongs in git.
The Debian files (:data:`~.source_tables.DEBIAN_FILES`) are fetched without installing anything: ``apt-get download
PKG`` into the cache, then the wanted members are streamed out of ``dpkg-deb --fsys-tarfile PKG.deb`` and checked
against their recorded SHA-256 (:func:`fetch`). The packages whose members are decoded
(:data:`~.source_tables.REGISTRY_ARTEFACTS`) are downloaded with their registry's own client (``npm pack``, ``pip
download``, ``apt-get download``; no install, no code of theirs executed), checked, read in memory, decoded
(:mod:`.decoders`) and written as float16 EXR (:func:`fetch_registry`); a file whose package cannot be fetched comes
from its alternative package when it has one (the open3d skyboxes: Debian's 18 MB package, else the 400 MB wheel).
:func:`find_all_sources` returns the fetched files whose checksums hold as :class:`~.sources.HDRSource`\\ s.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import tarfile
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from sitm_trt.files import atomic_write
from sitm_trt.media.io import ImageReadError, read_hdr, write_exr
from sitm_trt.weights import sha256_file

from .decoders import extract_base64_exr, fill_negative_pixels, pixel_sha256, read_ktx1_cubemap
from .source_tables import (
    DEBIAN_FILES,
    REGISTRY_ARTEFACTS,
    REGISTRY_FILES,
    DebianFile,
    RegistryArtefact,
    RegistryFile,
    registry_origin,
)
from .sources import HDRSource

__all__ = [
    "FetchError",
    "default_cache_dir",
    "fetch",
    "fetch_registry",
    "find_debian_sources",
    "find_registry_sources",
    "find_all_sources",
]

log = logging.getLogger(__name__)


class FetchError(RuntimeError):
    """The sources could not be fetched (no apt-get or npm, no network, unknown package, bad checksum)."""


def default_cache_dir() -> Path:
    """``$SITM_TRT_CACHE`` or ``~/.cache/sitm-trt``."""
    env = os.environ.get("SITM_TRT_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "sitm-trt"


def _cached(cache: Path, f: DebianFile | RegistryFile) -> Path:
    """Where a fetched file lives: ``cache/hdr/<id><suffix>``."""
    return cache / "hdr" / (f.id + f.suffix)


def _run(cmd: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)


# -------------------------------------------------------------------------------------- Debian packages


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
        if _cached(cache, f).is_file() and (sha256_file(_cached(cache, f)) == f.sha256 or allow_unverified)
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
    for name, data in _deb_members(deb, set(wanted)).items():
        f = wanted[name]
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
    return out


def _deb_members(path: Path, wanted: set[str]) -> dict[str, bytes]:
    """The wanted members of a .deb's data archive, read in memory from ``dpkg-deb --fsys-tarfile``."""
    out: dict[str, bytes] = {}
    with subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(path)], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        try:
            with tarfile.open(fileobj=proc.stdout, mode="r|*") as tar:
                for member in tar:
                    if member.name in wanted and member.isfile():
                        fh = tar.extractfile(member)
                        assert fh is not None
                        out[member.name] = fh.read()
        except (tarfile.TarError, OSError, EOFError) as err:
            proc.kill()
            raise FetchError(f"{path.name}: cannot read the package ({type(err).__name__}: {err})") from err
        proc.stdout.read()  # drain, so dpkg-deb can exit
        errors = proc.stderr.read().decode(errors="replace")
        if proc.wait() != 0:
            raise FetchError(f"{path.name}: cannot read the package (dpkg-deb --fsys-tarfile: {errors.strip()[-500:]})")
    return out


# ------------------------------------------------------------------------------------- registry packages


def _decode_member(f: RegistryFile, data: bytes, workdir: Path, member: str) -> tuple[np.ndarray, str]:
    """``(radiance, sha256 of the embedded file)``: float32 >= 0, the EXR inside the JS module (its SHA-256 is
    the EXR's), or the KTX cubemap as a vertical strip of its 6 faces (its SHA-256 is the .ktx file's)."""
    if f.kind == "cubemap":
        embedded = data
        faces = read_ktx1_cubemap(data, member)
        img = faces.reshape(6 * faces.shape[1], faces.shape[2], 3)
    else:
        embedded = extract_base64_exr(data, member)
        tmp = workdir / (f.id.replace("/", "_") + ".exr")
        tmp.write_bytes(embedded)
        img = read_hdr(tmp)  # DWAB, half float; ImageReadError (a ValueError) when broken
    if not np.isfinite(img).all():
        raise ValueError(f"{member} holds NaN/Inf")
    img, filled = fill_negative_pixels(img)
    if filled:
        log.info("%s: %d pixels with a negative channel (DWAB ringing) filled from their surroundings", f.id, filled)
    return np.where(img > 0, img, np.float32(0)).astype(np.float32), hashlib.sha256(embedded).hexdigest()


def _missing_tool(art: RegistryArtefact) -> str | None:
    """The first program ``art`` needs that is not on ``PATH``, or None."""
    return next((t for t in art.tools if shutil.which(t) is None), None)


def _download(art: RegistryArtefact, dest: Path) -> Path:
    """Run the registry client in ``dest``; returns the artefact's path (tests replace this function)."""
    tool = _missing_tool(art)
    if tool == "npm":
        raise FetchError(f"npm not found: `npm pack {art.spec}` fetches the HDRIs of {art.package}; install "
                         "Node.js/npm, or leave them out with --no-npm")
    if tool is not None:
        raise FetchError(f"{tool} not found: `apt-get download {art.spec}` needs a Debian/Ubuntu system")
    r = _run(art.command(dest), cwd=dest)
    path = dest / art.filename
    if r.returncode != 0 or not path.is_file():
        got = sorted(p.name for p in dest.iterdir())
        raise FetchError(f"`{' '.join(art.command(dest)[:4])} ... {art.spec}` failed ({r.returncode}; files: {got}): "
                         f"{(r.stderr or r.stdout).strip()[-500:]}")
    return path


def _members(art: RegistryArtefact, path: Path, wanted: set[str]) -> dict[str, bytes]:
    """The wanted members' bytes, read in memory (nothing is extracted to disk)."""
    if art.registry == "debian":
        return _deb_members(path, wanted)
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

    A file with an ``alternative`` comes from its own artefact where that artefact's tools are on ``PATH``, else
    from the alternative; when its artefact fails (download, checksum, layout), the alternative is tried before
    giving up. An artefact, member or decoded image with another checksum fails and nothing of it is written,
    unless ``allow_unverified`` (then it is written and logged); :class:`FetchError` names every failure when a
    file could not be fetched at all. ``keep`` keeps the downloaded artefacts in ``cache/registry``.
    """
    cache = Path(cache) if cache is not None else default_cache_dir()
    keys = tuple(REGISTRY_ARTEFACTS) if artefacts is None else artefacts
    done: dict[str, Path] = {}
    routes: dict[str, list[tuple[str, str]]] = {}  # id -> the (artefact, member) pairs left to try, in order
    files: dict[str, RegistryFile] = {}
    for f in REGISTRY_FILES:
        ways = [r for r in ((f.artefact, f.member), f.alternative) if r is not None and r[0] in keys]
        if not ways:
            continue
        path = _cached(cache, f)
        if path.is_file() and _registry_file_ok(path, f, allow_unverified):
            done[f.id] = path
        else:
            routes[f.id], files[f.id] = ways, f
    errors: dict[str, str] = {}
    while routes:
        # each file from its first artefact whose tools are here (else its first: that fails with the reason)
        plan: dict[str, list[tuple[RegistryFile, str]]] = {}
        for fid, ways in routes.items():
            key, member = next((w for w in ways if _missing_tool(REGISTRY_ARTEFACTS[w[0]]) is None), ways[0])
            plan.setdefault(key, []).append((files[fid], member))
        for key, items in plan.items():
            cache.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(prefix=".fetch-", dir=cache) as tmp:
                try:
                    got = _fetch_artefact(REGISTRY_ARTEFACTS[key], items, Path(tmp), cache, allow_unverified, keep)
                except FetchError as err:
                    errors[key], got = str(err), {}
            done.update(got)
            retry = []
            for f, _ in items:
                routes[f.id] = [] if f.id in got else [w for w in routes[f.id] if w[0] != key]
                if routes[f.id]:
                    retry.append(f.id)
                else:
                    del routes[f.id]
            if retry:
                alt = REGISTRY_ARTEFACTS[routes[retry[0]][0][0]]
                log.warning("%s; fetching %d file(s) from %s (%s) instead", errors[key], len(retry), alt.spec,
                            alt.registry)
    if any(f.id not in done for f in files.values()):
        raise FetchError("; ".join(errors.values()))
    return done


def _fetch_artefact(
    art: RegistryArtefact, todo: list[tuple[RegistryFile, str]], work: Path, cache: Path, allow_unverified: bool,
    keep: bool,
) -> dict[str, Path]:
    """Download ``art``, check it and the ``(file, member)`` pairs of ``todo`` inside it, write the decoded maps."""
    log.info("fetching %s (%s)", art.spec, art.registry)
    path = _download(art, work)
    digest = sha256_file(path)
    if digest != art.sha256:
        msg = f"{art.filename}: sha256 {digest} differs from the recorded {art.sha256}"
        if not allow_unverified:
            raise FetchError(f"checksum mismatch: {msg}; nothing of it is used (--allow-unverified to use it anyway)")
        log.warning("%s (used: --allow-unverified)", msg)
    members = _members(art, path, {member for _, member in todo})
    missing = sorted(member for _, member in todo if member not in members)
    if missing:
        raise FetchError(f"{art.filename} lacks {missing}: the package layout changed")
    decoded: dict[RegistryFile, np.ndarray] = {}
    bad: list[str] = []
    for f, member in todo:
        try:
            img, embedded_sha = _decode_member(f, members[member], work, member)
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
        target = _cached(cache, f)
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


# ------------------------------------------------------------------------------------------- finding


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
        digest = sha256_file(path)
        if digest != f.sha256 and not allow_unverified:
            log.warning("%s: checksum %s differs from the recorded one; not used", path, digest)
            missing.append(f.id)
            continue
        sources.append(HDRSource(f.id, path, f.kind, f.license, f.weight, digest,
                                 origin=f"debian {f.package}: {f.member}"))
    return sources, missing


def find_registry_sources(
    cache: Path | None = None, *, allow_unverified: bool = False
) -> tuple[list[HDRSource], list[str]]:
    """The decoded registry sources present in ``cache`` whose pixels match the recorded checksum;
    ``(sources, missing ids)``."""
    cache = Path(cache) if cache is not None else default_cache_dir()
    sources, missing = [], []
    for f in REGISTRY_FILES:
        path = _cached(cache, f)
        if not path.is_file() or not _registry_file_ok(path, f, allow_unverified):
            missing.append(f.id)
            continue
        sources.append(HDRSource(f.id, path, f.kind, f.license, f.weight, f.pixels_sha256 or sha256_file(path),
                                 license_known=f.license_known, origin=registry_origin(f, REGISTRY_ARTEFACTS)))
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
