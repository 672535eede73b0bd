"""The data set builder: deterministic, resumable, with a manifest; and the data set's checks and exports.

The data set folder holds ``manifest.json`` and ``<split>/<id>.npz`` (the sample file: :mod:`.samples`). The
manifest records the recipe (every parameter that changes the output, :mod:`.recipe`), its hash, the seed, the
sources with their checksums, and per sample its split, source, EVs and SHA-256. Sample ``i`` is generated from the
seed sequence ``(seed, i)`` alone (the second sample of a held-out-camera validation pair from its first one's,
:func:`~.recipe.make_plan`), so the result does not depend on the order, the number of workers or on resuming.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sitm_trt.files import atomic_write
from sitm_trt.media.io import ImageReadError, write_exr, write_png

from .recipe import PlanItem, Recipe, make_plan
from .samples import (Sample, SourceCache, camera_family, generate_item, load_sample, load_sample_meta, npz_bytes,
                      under_exposed)
from .source_tables import source_split
from .sources import HDRSource

__all__ = ["FORMAT", "BuildError", "build", "load_manifest", "write_manifest", "verify", "export_split"]

log = logging.getLogger(__name__)

FORMAT = "sitm-trt-samples/1"
SPLITS = ("train", "val", "test")


class BuildError(RuntimeError):
    """The data set cannot be built as asked (e.g. the output folder holds another recipe)."""


# ------------------------------------------------------------------------------------------ manifest


def _info(sample: Sample) -> dict[str, Any]:
    return {"source": sample.source, "ev_up": float(sample.ev_up), "ev_down": float(sample.ev_down)}


def _record(item: PlanItem, info: dict[str, Any], data: bytes) -> dict[str, Any]:
    return {
        "id": item.id,
        "split": item.split,
        "file": item.file,
        **info,
        "sha256": hashlib.sha256(data).hexdigest(),
        "bytes": len(data),
    }


def _recipe_hash(recipe_dict: dict[str, Any], sources: list[dict[str, Any]]) -> str:
    blob = json.dumps({"recipe": recipe_dict, "sources": [(s["id"], s["sha256"]) for s in sources]}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def load_manifest(root: str | os.PathLike[str]) -> dict[str, Any]:
    path = Path(root) / "manifest.json"
    try:
        with open(path) as f:
            manifest = json.load(f)
    except FileNotFoundError as err:
        raise FileNotFoundError(
            f"{path} not found: build the data set first (python -m sitm_training.data build)"
        ) from err
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{path}: unknown format {manifest.get('format')!r}, expected {FORMAT!r}")
    return manifest


def write_manifest(root: Path, manifest: dict[str, Any]) -> None:
    """Write ``root/manifest.json`` atomically (readers see the old one or the new one whole)."""
    atomic_write(root / "manifest.json", json.dumps(manifest, indent=1, sort_keys=False).encode())


# --------------------------------------------------------------------------------------------- build

_WORKER: dict[str, Any] = {}


def _worker_init(recipe_dict: dict[str, Any], sources: list[HDRSource]) -> None:
    try:
        import cv2

        cv2.setNumThreads(1)
    except ImportError:  # pragma: no cover
        pass
    _WORKER["recipe"] = Recipe.from_dict(recipe_dict)
    _WORKER["cache"] = SourceCache(sources)


def _worker_run(item: PlanItem) -> tuple[PlanItem, bytes | str, dict[str, Any]]:
    try:
        sample = generate_item(item, _WORKER["recipe"], _WORKER["cache"])
    except ImageReadError as err:
        return item, f"{err}", {}
    return item, npz_bytes(sample), _info(sample)


def build(
    out: str | os.PathLike[str],
    recipe: Recipe,
    sources: Sequence[HDRSource] = (),
    *,
    workers: int = 1,
    progress: bool = True,
    checkpoint_every: int = 200,
    on_sample: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Build (or resume) the data set in ``out``; returns the manifest.

    ``sources`` are the real HDR sources: those in :data:`TEST_SOURCE_IDS` or whose id starts with
    ``test/`` feed the test split, those in :data:`VAL_SOURCE_IDS` or whose id starts with ``val/`` the
    ``n_val_real`` real samples of the val split, the others the train split (whole scenes: the train split
    never sees a held-out scene). Without real train sources the train split is procedural, without held-out
    test sources the test split is procedural, and without validation scenes the val split has no real
    samples: all are logged as warnings and recorded in the manifest (``test_is_real``, ``val_has_real``).
    With ``recipe.holdout_responses`` the train split never uses those response families and the real val
    samples are pairs of one view, shot with the exact sRGB curve and with a held-out family (:func:`make_plan`).
    Samples whose file exists and matches the manifest's checksum (or, when the manifest was not yet updated,
    loads as a complete sample) are kept.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    test_sources = [s for s in sources if source_split(s.id) == "test"]
    val_sources = [s for s in sources if source_split(s.id) == "val"]
    train_sources = [s for s in sources if source_split(s.id) == "train"]
    if not train_sources and recipe.real_fraction > 0:
        log.warning(
            "NO REAL HDR SOURCES for training: the train split is procedural only "
            "(run `python -m sitm_training.data fetch`)"
        )
    if not test_sources and recipe.n_test > 0:
        log.warning("NO HELD-OUT REAL HDR SOURCES: the test split is procedural, not real images")
    if not val_sources and recipe.n_val_real > 0:
        log.warning("NO HELD-OUT REAL VALIDATION SCENES: the val split has no real samples "
                    "(run `python -m sitm_training.data fetch`)")
    if recipe.holdout_responses and not (val_sources and recipe.n_val_real > 1):
        log.warning("held-out response families %s: the train split never draws them, but without real val "
                    "samples (--n-val-real >= 2 and validation scenes) nothing is shot with them",
                    ", ".join(recipe.holdout_responses))
    recipe_dict = recipe.to_dict()
    source_dicts = [s.to_dict() | {"split": source_split(s.id)} for s in sources]
    rhash = _recipe_hash(recipe_dict, source_dicts)
    plan = make_plan(recipe, train_sources, test_sources, val_sources)

    done: dict[str, dict[str, Any]] = {}
    manifest_path = out / "manifest.json"
    if manifest_path.exists():
        old = load_manifest(out)
        if old.get("recipe_hash") != rhash:
            raise BuildError(
                f"{out} holds a data set with another recipe or other sources "
                f"(hash {old.get('recipe_hash')} != {rhash}); "
                "use a new --out folder or delete this one"
            )
        done = {s["id"]: s for s in old.get("samples", [])}
    for split in SPLITS:
        (out / split).mkdir(exist_ok=True)

    records: dict[str, dict[str, Any]] = {}
    todo: list[PlanItem] = []
    for item in plan:
        path = out / item.file
        if path.is_file():
            rec = done.get(item.id)
            data = path.read_bytes()
            if rec is not None and rec.get("sha256") == hashlib.sha256(data).hexdigest():
                records[item.id] = rec
                continue
            if rec is None:  # written before the last manifest checkpoint: keep it if it is complete
                try:
                    sample = load_sample(path)
                except ValueError as err:
                    log.warning("regenerating %s", err)
                else:
                    records[item.id] = _record(item, _info(sample), data)
                    continue
        todo.append(item)

    manifest: dict[str, Any] = {
        "format": FORMAT,
        "recipe_hash": rhash,
        "recipe": recipe_dict,
        "seed": recipe.seed,
        "sources": source_dicts,
        "test_source_ids": sorted(s.id for s in test_sources),
        "test_is_real": bool(test_sources),
        "val_source_ids": sorted(s.id for s in val_sources),
        "val_has_real": bool(val_sources) and recipe.n_val_real > 0,
        "train_has_real": bool(train_sources),
        "software": {
            "python": sys.version.split()[0],
            "numpy": np.__version__,
            "opencv": _cv2_version(),
            "platform": platform.platform(),
        },
        "complete": False,
        "samples": [],
    }

    def checkpoint(complete: bool = False) -> None:
        manifest["samples"] = [records[i.id] for i in plan if i.id in records]
        manifest["counts"] = {sp: sum(1 for r in manifest["samples"] if r["split"] == sp) for sp in SPLITS}
        manifest["bytes"] = sum(r["bytes"] for r in manifest["samples"])
        manifest["complete"] = complete
        write_manifest(out, manifest)

    if len(records) < len(plan):
        log.info("%d of %d samples to generate (%d kept)", len(todo), len(plan), len(records))
    failures: list[str] = []
    start = time.perf_counter()
    bar = _progress(len(todo), progress)
    since = 0
    for item, result, info in _run_items(todo, recipe_dict, list(sources), workers):
        if isinstance(result, str):
            failures.append(result)
            log.error("sample %s failed: %s", item.id, result)
        else:
            atomic_write(out / item.file, result)
            records[item.id] = _record(item, info, result)
            if on_sample is not None:
                on_sample(records[item.id])
        bar.update(1)
        since += 1
        if since >= checkpoint_every:
            checkpoint()
            since = 0
    bar.close()
    elapsed = time.perf_counter() - start
    manifest["build"] = {"generated": len(todo) - len(failures), "seconds": round(elapsed, 2), "workers": workers}
    if failures:
        manifest["failures"] = failures
    checkpoint(complete=not failures)
    if failures:
        raise BuildError(
            f"{len(failures)} samples failed (see manifest 'failures'); the others are written. First: {failures[0]}"
        )
    return manifest


def _cv2_version() -> str:
    try:
        import cv2

        return str(cv2.__version__)
    except ImportError:  # pragma: no cover
        return "missing"


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(total: int, enabled: bool) -> Any:
    if not enabled:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, unit="sample", dynamic_ncols=True)


def _run_items(
    todo: list[PlanItem], recipe_dict: dict[str, Any], sources: list[HDRSource], workers: int
) -> Iterator[tuple[PlanItem, bytes | str, dict[str, Any]]]:
    if workers <= 1 or len(todo) < 2:
        _worker_init(recipe_dict, sources)
        for item in todo:
            yield _worker_run(item)
        return
    import multiprocessing as mp

    ctx = mp.get_context("spawn")  # no fork of a process that may hold threads (torch, OpenCV)
    with ctx.Pool(workers, initializer=_worker_init, initargs=(recipe_dict, sources)) as pool:
        yield from pool.imap(_worker_run, todo, chunksize=4)


# ------------------------------------------------------------------------------------ verify, export


def verify(root: str | os.PathLike[str]) -> list[str]:
    """Problems found in a built data set (missing files, checksum mismatches, incomplete build); empty if fine."""
    root = Path(root)
    manifest = load_manifest(root)
    problems = []
    if not manifest.get("complete"):
        problems.append("the build did not complete (run the same build command again to resume)")
    for rec in manifest["samples"]:
        path = root / rec["file"]
        if not path.is_file():
            problems.append(f"{path}: missing")
        elif hashlib.sha256(path.read_bytes()).hexdigest() != rec["sha256"]:
            problems.append(f"{path}: checksum mismatch")
    return problems


def export_split(
    root: str | os.PathLike[str], out: str | os.PathLike[str], split: str = "test", *, real_only: bool = False,
    per_mode: int | None = None, seed: int = 0, families: tuple[str, ...] = (),
) -> list[dict[str, Any]]:
    """Write a split as evaluation pairs: ``out/<id>.png`` (LDR input), ``out/<id>.exr`` (float32 HDR),
    ``out/labels/<id>_up.png`` / ``<id>_down.png``, and ``out/pairs.json`` (ids, files, EVs, sources).

    ``real_only`` keeps the samples of real HDR sources (not ``procedural/*``); ``per_mode`` keeps at most that
    many samples of each exposure mode (``meta["exposure"]["mode"]``), the first ones in an order shuffled with
    ``seed``: e.g. a small real-scene set from the train split for choosing between models. ``families`` keeps the
    samples shot through those camera response families (``meta["camera"]["response"]["kind"]``): e.g. the S-curve
    samples a model for filmic inputs is scored on.
    """
    root, out = Path(root), Path(out)
    manifest = load_manifest(root)
    records = [r for r in manifest["samples"] if r["split"] == split
               and not (real_only and str(r.get("source", "")).startswith("procedural"))]
    if families:
        records = [r for r in records if camera_family(load_sample_meta(root / r["file"])) in families]
        if not records:
            raise ValueError(f"{root}: the {split} split has no sample of the camera families {', '.join(families)}")
    if per_mode is not None:
        if per_mode < 1:
            raise ValueError(f"per_mode must be >= 1, got {per_mode}")
        np.random.default_rng(seed).shuffle(records)
        taken: dict[bool | None, int] = {}
        chosen = []
        for rec in records:
            mode = under_exposed(load_sample_meta(root / rec["file"]))
            if taken.get(mode, 0) < per_mode:
                taken[mode] = taken.get(mode, 0) + 1
                chosen.append(rec)
        records = chosen
    what = {"split": split, "from": str(root), "recipe_hash": manifest["recipe_hash"], "real_only": real_only,
            "per_mode": per_mode, "seed": seed if per_mode is not None else None, "families": list(families) or None}
    if out.is_dir() and any(out.iterdir()):  # pairs of another export would stay beside these and be scored too
        try:
            earlier = json.loads((out / "pairs.json").read_text())
        except (OSError, ValueError):
            earlier = None
        if not isinstance(earlier, dict) or {k: earlier.get(k) for k in what} != what:
            raise ValueError(f"{out}: is not empty and holds no export of these pairs; give a new folder (the pairs "
                             "already there would be evaluated with these)")
    out.mkdir(parents=True, exist_ok=True)
    (out / "labels").mkdir(exist_ok=True)
    pairs = []
    for rec in records:
        s = load_sample(root / rec["file"])
        sid = rec["id"]
        write_png(out / f"{sid}.png", s.ldr)
        write_exr(out / f"{sid}.exr", s.hdr, half=False)
        write_png(out / "labels" / f"{sid}_up.png", s.up)
        write_png(out / "labels" / f"{sid}_down.png", s.down)
        pairs.append(
            {
                "id": sid,
                "ldr": f"{sid}.png",
                "hdr": f"{sid}.exr",
                "up": f"labels/{sid}_up.png",
                "down": f"labels/{sid}_down.png",
                "ev_up": s.ev_up,
                "ev_down": s.ev_down,
                "source": s.source,
            }
        )
    atomic_write(out / "pairs.json", json.dumps({**what, "pairs": pairs}, indent=1).encode())
    return pairs
