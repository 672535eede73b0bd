"""Real data layouts: SICE bracketed stacks (with a Debevec merge), LDR/HDR pair folders, HDR-only folders.

* **SICE** (Cai et al. 2018): ``Dataset_Part1/<n>/<k>.JPG`` (the exposures of scene ``n``) and
  ``Dataset_Part1/Label/<n>.JPG`` (the expert-fused LDR label, kept but not used as HDR). Any folder of
  two or more images that is not named ``Label`` counts as a stack; its images are ordered by mean
  brightness (SICE numbers them dark to bright; we do not rely on it).
  There is no radiance: the HDR target is merged from the whole stack with Debevec and Malik's method
  (own NumPy implementation, hat weights), standing in for the paper's Photomatix. Exposure times come
  from an ``exposures.json`` next to the images (``{"1.JPG": 0.01, ...}`` in seconds) when present, else
  they are estimated from the images (median ratio of sRGB-linearized, well-exposed pixels).
* **Pair folders** (our test export, many HDR-Eye conversions): ``X.png|jpg|tif`` next to ``X.exr|hdr``,
  or ``LDR/X.*`` and ``HDR/X.*``.
* **HDR-only folders** (HDR-Eye, Fairchild's HDR Photographic Survey): every ``.exr``/``.hdr`` under a
  folder; the LDR input is simulated (see ``HDRFolderDataset``).

Broken files are reported by name (``ImageReadError``) and skipped by the scanners, never used.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sitm_trt.files import atomic_write
from sitm_trt.media.io import HDR_EXTENSIONS, LDR_EXTENSIONS, ImageReadError, read_hdr, read_ldr, srgb_eotf

from .samples import Sample
from .sources import validate_radiance
from .stack import LabelCriterion, choose_labels

__all__ = [
    "SICEStack",
    "find_sice_stacks",
    "load_stack",
    "estimate_exposures",
    "debevec_response",
    "merge_debevec",
    "stack_sample",
    "MergedStack",
    "merge_stack",
    "sice_samples",
    "import_sice",
    "find_pairs",
    "scan_hdr_files",
]

log = logging.getLogger(__name__)


def _natural_key(path: Path | str) -> tuple:
    """Sort key that orders "2" before "10"."""
    name = path.name if isinstance(path, Path) else path
    return tuple((0, int(t), "") if t.isdigit() else (1, 0, t.lower()) for t in re.split(r"(\d+)", name) if t)


def _images_in(folder: Path, exts: tuple[str, ...] = LDR_EXTENSIONS) -> list[Path]:
    return sorted((p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in exts), key=_natural_key)


@dataclass
class SICEStack:
    """One bracketed scene: its images (file order) and the optional SICE label image."""

    name: str
    images: list[Path]
    label: Path | None = None
    exposure_times: dict[str, float] | None = None  # seconds by file name, from exposures.json


def find_sice_stacks(root: str | os.PathLike[str]) -> list[SICEStack]:
    """All stacks under ``root`` (a SICE ``Dataset_Part*`` folder or its parent), in natural order."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"SICE folder {root} does not exist")
    stacks = []
    for folder in sorted(
        (p for p in root.rglob("*") if p.is_dir()),
        key=lambda p: tuple(_natural_key(q) for q in p.relative_to(root).parts),
    ):
        if folder.name.lower() == "label":
            continue
        images = _images_in(folder)
        if len(images) < 2:
            continue
        label = None
        for d in (folder.parent / "Label", folder.parent / "label"):
            if d.is_dir():
                label = next((p for p in _images_in(d) if p.stem == folder.name), None)
                break
        times = None
        if (folder / "exposures.json").is_file():
            with open(folder / "exposures.json") as f:
                times = {str(k): float(v) for k, v in json.load(f).items()}
        stacks.append(SICEStack(folder.relative_to(root).as_posix(), images, label, times))
    return stacks


def load_stack(stack: SICEStack, size: int | None = None) -> tuple[list[np.ndarray], list[Path]]:
    """Read a stack's images as ``uint8`` RGB (16-bit files are reduced to 8 bits), darkest first.

    Raises :class:`ImageReadError` naming the file when one is unreadable or has another size than the
    first. ``size`` resizes every image to ``size x size`` (area filter), as the paper's 512x512.
    """
    import cv2

    imgs = []
    for p in stack.images:
        img = read_ldr(p)
        if img.dtype == np.uint16:
            img = (img >> 8).astype(np.uint8)
        if imgs and img.shape != imgs[0].shape:
            raise ImageReadError(
                p, f"size {img.shape[:2]} differs from the stack's {imgs[0].shape[:2]} ({stack.images[0].name})"
            )
        imgs.append(img)
    if size is not None:
        imgs = [cv2.resize(i, (size, size), interpolation=cv2.INTER_AREA) for i in imgs]
    order = np.argsort([float(srgb_eotf(i.astype(np.float32) / 255.0).mean()) for i in imgs], kind="stable")
    return [imgs[k] for k in order], [stack.images[k] for k in order]


def estimate_exposures(images: list[np.ndarray], low: int = 20, high: int = 235) -> np.ndarray:
    """log2 exposure of each image relative to the first, from pixels well exposed in neighbouring images.

    Assumes an sRGB-like response: each step is the median of ``log2(lin(Z_j+1) / lin(Z_j))`` over pixels
    (channels) with both codes in ``[low, high]``; steps are chained.
    """
    ev = [0.0]
    for a, b in zip(images[:-1], images[1:]):
        ok = (a >= low) & (a <= high) & (b >= low) & (b <= high)
        if ok.sum() < 16:
            raise ValueError("adjacent exposures share too few well-exposed pixels to estimate their EV step")
        la = srgb_eotf(a[ok].astype(np.float32) / 255.0)
        lb = srgb_eotf(b[ok].astype(np.float32) / 255.0)
        ev.append(ev[-1] + float(np.median(np.log2(lb / la))))
    return np.array(ev)


def _hat(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, np.float64)
    return np.where(z <= 127.5, z, 255.0 - z)


def debevec_response(
    images: list[np.ndarray], log_times: np.ndarray, n_samples: int = 300, smoothness: float = 50.0, seed: int = 0
) -> np.ndarray:
    """Debevec & Malik (1997) response recovery: ``g[z, c] = ln(exposure)`` for code ``z``, shape (256, 3).

    ``log_times`` are natural logs of the exposure times. Samples ``n_samples`` pixels (seeded), stratified
    over the middle image's brightness; ``g[128] = 0`` fixes the scale.
    """
    p = len(images)
    if p < 2 or len(log_times) != p:
        raise ValueError(f"need >= 2 images and one time each, got {p} images, {len(log_times)} times")
    h, w = images[0].shape[:2]
    rng = np.random.default_rng(seed)
    mid = images[p // 2].max(axis=-1).reshape(-1)
    order = np.argsort(mid, kind="stable")
    picks = order[np.linspace(0, order.size - 1, n_samples).astype(int)]  # stratified by brightness
    picks = np.unique(np.clip(picks + rng.integers(-2, 3, picks.size), 0, h * w - 1))
    n = picks.size
    g = np.zeros((256, 3))
    for c in range(3):
        z = np.stack([im[..., c].reshape(-1)[picks] for im in images], axis=1).astype(int)  # (n, p)
        rows = n * p + 1 + 254
        a = np.zeros((rows, 256 + n))
        b = np.zeros(rows)
        wz = _hat(z) + 1e-3
        r = np.arange(n * p)
        a[r, z.reshape(-1)] = wz.reshape(-1)
        a[r, 256 + np.repeat(np.arange(n), p)] = -wz.reshape(-1)
        b[r] = (wz * np.asarray(log_times)[None, :]).reshape(-1)
        a[n * p, 128] = 1.0
        k = np.arange(1, 255)
        rr = n * p + 1 + np.arange(254)
        wk = smoothness * (_hat(k) + 1e-3)
        a[rr, k - 1] = wk
        a[rr, k] = -2 * wk
        a[rr, k + 1] = wk
        ata = a.T @ a  # normal equations: 10x faster than an SVD here, and the system is well posed
        ata[np.diag_indices_from(ata)] += 1e-12 * np.trace(ata) / ata.shape[0]
        sol = np.linalg.solve(ata, a.T @ b)[:256]
        sol -= sol[128]  # the scale is free (g + k, ln E + k fit the same): pin g(128) = 0 exactly
        g[:, c] = np.maximum.accumulate(sol)  # a response is monotone
    return g


def merge_debevec(images: list[np.ndarray], log_times: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Merge a stack into radiance ``E`` with ``ln E = sum w(Z) (g(Z) - ln t) / sum w(Z)`` (hat weights).

    Pixels with no usable exposure take the darkest image's value when saturated everywhere and the
    brightest image's value when black everywhere. float32 ``(H, W, 3)``.
    """
    num = np.zeros(images[0].shape, np.float64)
    den = np.zeros(images[0].shape, np.float64)
    for img, lt in zip(images, log_times):
        wz = _hat(img)
        num += wz * (np.take_along_axis(g[None, None, :, :], img[..., None, :].astype(int), axis=2)[..., 0, :] - lt)
        den += wz
    darkest = np.take_along_axis(g[None, None], images[0][..., None, :].astype(int), axis=2)[..., 0, :] - log_times[0]
    brightest = (
        np.take_along_axis(g[None, None], images[-1][..., None, :].astype(int), axis=2)[..., 0, :] - log_times[-1]
    )
    fallback = np.where(images[0] >= 128, darkest, brightest)
    ln_e = np.where(den > 0, num / np.maximum(den, 1e-12), fallback)
    return np.exp(ln_e).astype(np.float32)


def stack_sample(
    images: list[np.ndarray],
    log2_exposures: np.ndarray,
    index: int,
    radiance: np.ndarray,
    g: np.ndarray,
    criterion: LabelCriterion = LabelCriterion(),
    source: str = "",
) -> Sample:
    """A training sample with input ``images[index]`` of a real stack (darkest first).

    The labels are chosen by the same rule as for simulated stacks, on the real images, with the EVs
    ``log2_exposures - log2_exposures[index]``. The HDR is ``radiance`` scaled per channel so that 1.0 is
    the radiance that reaches code 255 at the input's exposure (``exp(g[255]) / t_index``).
    """
    if not 0 < index < len(images) - 1:
        raise ValueError(f"input {index} needs darker and brighter images in the stack of {len(images)}")
    evs = np.asarray(log2_exposures, np.float64) - float(log2_exposures[index])
    codes = {float(e): img for e, img in zip(evs, images)}
    codes[0.0] = images[index]
    choice = choose_labels(codes, criterion)
    by_ev = {float(e): i for i, e in enumerate(evs)}
    t_in = float(log2_exposures[index]) * math.log(2.0)
    clip = np.exp(g[255] - t_in)  # radiance reaching code 255 at the input's exposure, per channel
    hdr = validate_radiance((radiance / clip).astype(np.float32), source or "merged stack")
    return Sample(
        ldr=images[index],
        up=images[by_ev[choice.ev_up]],
        down=images[by_ev[choice.ev_down]],
        hdr=hdr,
        ev_up=choice.ev_up,
        ev_down=choice.ev_down,
        source=source,
        meta={"labels": choice.to_dict(), "input_index": index},
    )


@dataclass
class MergedStack:
    """A loaded stack, darkest first, with its EVs, the Debevec response and the merged radiance."""

    name: str
    images: list[np.ndarray]
    paths: list[Path]
    log2_exposures: np.ndarray  # relative to the darkest image
    response: np.ndarray  # g, (256, 3), natural log
    radiance: np.ndarray  # float32 (H, W, 3)


def merge_stack(stack: SICEStack, size: int | None = None) -> MergedStack:
    """Load a stack, get its EVs (``exposures.json`` or estimated), recover the response and merge it.

    Raises :class:`ImageReadError` naming the file or folder for anything unusable (unreadable image,
    mismatched sizes, missing exposure time, exposures that cannot be told apart).
    """
    images, paths = load_stack(stack, size)
    folder = stack.images[0].parent
    if stack.exposure_times:
        missing = [p.name for p in paths if p.name not in stack.exposure_times]
        if missing:
            raise ImageReadError(folder / "exposures.json", f"no exposure time for {missing}")
        log2_t = np.log2([stack.exposure_times[p.name] for p in paths])
        log2_t = log2_t - log2_t[0]
    else:
        try:
            log2_t = estimate_exposures(images)
        except ValueError as err:
            raise ImageReadError(folder, f"cannot estimate the exposures: {err}") from err
    if np.any(np.diff(log2_t) <= 0.05):
        raise ImageReadError(folder, f"exposures are not distinct: log2 {np.round(log2_t, 3).tolist()}")
    g = debevec_response(images, log2_t * math.log(2.0))
    radiance = merge_debevec(images, log2_t * math.log(2.0), g)
    return MergedStack(stack.name, images, paths, log2_t, g, radiance)


def sice_samples(merged: MergedStack, criterion: LabelCriterion = LabelCriterion()) -> list[Sample]:
    """One sample per input that has a darker and a brighter image in the stack."""
    return [
        stack_sample(
            merged.images, merged.log2_exposures, i, merged.radiance, merged.response, criterion, f"sice/{merged.name}"
        )
        for i in range(1, len(merged.images) - 1)
    ]


def find_pairs(root: str | os.PathLike[str]) -> list[tuple[Path, Path]]:
    """``(ldr, hdr)`` pairs of a folder: same stem side by side, or ``LDR/`` and ``HDR/`` subfolders.

    Stems with only one side are logged and skipped.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"pair folder {root} does not exist")
    ldr_dir, hdr_dir = root, root
    for a, b in (("LDR", "HDR"), ("ldr", "hdr")):
        if (root / a).is_dir() and (root / b).is_dir():
            ldr_dir, hdr_dir = root / a, root / b
            break
    ldrs = {p.stem: p for p in _images_in(ldr_dir, LDR_EXTENSIONS)}
    hdrs = {p.stem: p for p in _images_in(hdr_dir, HDR_EXTENSIONS)}
    for stem in sorted(set(ldrs) ^ set(hdrs)):
        log.warning("%s: %s has no %s counterpart; skipped", root, stem, "HDR" if stem in ldrs else "LDR")
    return [(ldrs[s], hdrs[s]) for s in sorted(set(ldrs) & set(hdrs), key=_natural_key)]


def scan_hdr_files(root: str | os.PathLike[str]) -> tuple[list[Path], list[tuple[str, str]]]:
    """Every readable, valid HDR file under ``root`` (recursive); ``(paths, rejected (path, reason))``."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"HDR folder {root} does not exist")
    good, rejected = [], []
    for path in sorted(
        (p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in HDR_EXTENSIONS), key=_natural_key
    ):
        try:
            validate_radiance(read_hdr(path), path)
        except ImageReadError as err:
            log.warning("skipping %s", err)
            rejected.append((str(path), err.reason))
            continue
        good.append(path)
    return good, rejected


def import_sice(
    root: str | os.PathLike[str],
    out: str | os.PathLike[str],
    size: int = 512,
    test_fraction: float = 0.2,
    val_fraction: float = 0.05,
    seed: int = 0,
    criterion: LabelCriterion = LabelCriterion(),
    progress: bool = True,
) -> dict:
    """Convert SICE-style stacks into a built data set (same files and manifest as ``build``).

    Splits are by stack (scene), drawn with ``seed``. Sample ids are ``<stack number>_<input index>``.
    Unusable stacks are logged by file name, listed in the manifest's ``rejected`` and left out. Stacks
    whose sample files all exist with the manifest's checksums are not merged again (resumable).
    """
    import hashlib

    from .build import FORMAT, load_manifest, write_manifest
    from .samples import npz_bytes

    root, out = Path(root), Path(out)
    stacks = find_sice_stacks(root)
    if not stacks:
        raise FileNotFoundError(f"no stacks (folders of 2+ images) under {root}")
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x51CE]))
    order = rng.permutation(len(stacks))
    n_test = int(round(len(stacks) * test_fraction))
    n_val = int(round(len(stacks) * val_fraction))
    split_of = {
        int(k): ("test" if r < n_test else "val" if r < n_test + n_val else "train") for r, k in enumerate(order)
    }
    recipe = {
        "kind": "sice",
        "root": str(root),
        "size": size,
        "test_fraction": test_fraction,
        "val_fraction": val_fraction,
        "seed": seed,
        "criterion": criterion.to_dict(),
        "stacks": [s.name for s in stacks],
    }
    rhash = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]
    out.mkdir(parents=True, exist_ok=True)
    done: dict[str, dict] = {}
    if (out / "manifest.json").exists():
        old = load_manifest(out)
        if old.get("recipe_hash") != rhash:
            raise ValueError(f"{out} holds another data set (recipe hash {old.get('recipe_hash')} != {rhash})")
        done = {r["id"]: r for r in old["samples"]}
    for split in ("train", "val", "test"):
        (out / split).mkdir(exist_ok=True)
    records: list[dict] = []
    rejected: list[tuple[str, str]] = []
    iterator = range(len(stacks))
    if progress:
        from tqdm import tqdm

        iterator = tqdm(iterator, unit="stack")
    for k in iterator:
        st, split = stacks[k], split_of[k]
        ids = [f"{k:04d}_{i:02d}" for i in range(1, len(st.images) - 1)]
        kept = []
        for sid in ids:
            rec = done.get(sid)
            path = out / split / f"{sid}.npz"
            if rec and path.is_file() and hashlib.sha256(path.read_bytes()).hexdigest() == rec["sha256"]:
                kept.append(rec)
        if len(kept) == len(ids):
            records += kept
            continue
        try:
            merged = merge_stack(st, size)
        except ImageReadError as err:
            log.error("SICE stack %s left out: %s", st.name, err)
            rejected.append((err.path, err.reason))
            continue
        for sid, sample in zip(ids, sice_samples(merged, criterion)):
            data = npz_bytes(sample)
            atomic_write(out / split / f"{sid}.npz", data)
            records.append(
                {
                    "id": sid,
                    "split": split,
                    "file": f"{split}/{sid}.npz",
                    "source": sample.source,
                    "ev_up": sample.ev_up,
                    "ev_down": sample.ev_down,
                    "sha256": hashlib.sha256(data).hexdigest(),
                    "bytes": len(data),
                }
            )
    manifest = {
        "format": FORMAT,
        "recipe_hash": rhash,
        "recipe": recipe,
        "seed": seed,
        "sources": [],
        "test_is_real": True,
        "train_has_real": True,
        "complete": True,
        "rejected": rejected,
        "samples": records,
        "counts": {sp: sum(r["split"] == sp for r in records) for sp in ("train", "val", "test")},
        "bytes": sum(r["bytes"] for r in records),
        "hdr_note": "HDR merged from each full stack with Debevec & Malik (Photomatix substitute)",
    }
    write_manifest(out, manifest)
    return manifest
