"""From radiance to training samples, and the data set builder (deterministic, resumable, with a manifest).

A sample (one ``.npz`` file, zlib-compressed) holds:

* ``ldr``: ``uint8 (S, S, 3)``, the simulated camera's shot at the input exposure (EV 0);
* ``up``, ``down``: ``uint8 (S, S, 3)``, the same camera at the chosen labels' EVs (other noise draws);
* ``hdr``: ``(S, S, 3)``, the ground-truth linear radiance through the camera's colour (white balance
  and saturation), scaled so that 1.0 just clips at the input's exposure; finite and >= 0. Stored as
  float16 (relative error <= 2**-11) unless a value exceeds the float16 range, then float32; readers
  (:func:`load_sample`, the Datasets) always return float32;
* ``ev_up`` (> 0), ``ev_down`` (< 0): the labels' EVs relative to the input (float32 scalars);
* ``source``: the source id (``procedural/<kind>``, ``blender/city``, ``user/...``), ``meta``: JSON text
  (camera, exposure, view, label statistics).

The data set folder holds ``manifest.json`` and ``<split>/<id>.npz``. The manifest records the recipe (every
parameter that changes the output), its hash, the seed, the sources with their checksums, and per sample
its split, source, EVs and SHA-256. Sample ``i`` is generated from the seed sequence ``(seed, i)`` alone (the
second sample of a held-out-camera validation pair from its first one's, :func:`make_plan`), so the result does
not depend on the order, the number of workers or on resuming.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import platform
import sys
import time
import zipfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from sitm_trt.files import atomic_write
from sitm_trt.media.io import ImageReadError, write_exr, write_png

from .camera import (RESPONSE_KINDS, Camera, CameraConfig, Response, apply_color, capture, render, sample_camera,
                     sample_exposure)
from .procedural import generate_scene
from .sources import HDRSource, sample_view, source_split
from .stack import DEFAULT_EVS, LabelCriterion, choose_labels

__all__ = [
    "FORMAT",
    "GENERATOR_VERSION",
    "CAMERA_DRAWS",
    "Recipe",
    "Sample",
    "PlanItem",
    "BuildError",
    "make_sample",
    "relabel_up",
    "make_plan",
    "generate_item",
    "build",
    "load_manifest",
    "load_sample",
    "verify",
    "export_split",
]

log = logging.getLogger(__name__)

FORMAT = "sitm-trt-samples/1"
GENERATOR_VERSION = 1  # bump when the generated pixels change for the same recipe
SPLITS = ("train", "val", "test")
# where a sample's camera comes from (make_sample's ``cameras``): the training families, all the recipe's families
# (the test split; the val split without held-out families), or one member of a held-out validation pair
CAMERA_DRAWS = ("train", "all", "srgb", "held-out")


class BuildError(RuntimeError):
    """The data set cannot be built as asked (e.g. the output folder holds another recipe)."""


@dataclass(frozen=True)
class Recipe:
    """Everything that determines the samples' pixels (the manifest stores it and its hash)."""

    seed: int = 0
    n: int = 1000  # train + val samples
    n_test: int = 96  # test samples, cut from the held-out real sources
    size: int = 320  # stored side length (square); the Datasets crop 256 from it
    val_fraction: float = 0.05  # of n, procedural
    n_val_real: int = 0  # more val samples, cut from the held-out validation scenes (VAL_SOURCE_IDS, val/ dirs)
    holdout_responses: tuple[str, ...] = ()  # response families the train split never draws; the real val
    # samples are then pairs: one view shot through the exact sRGB curve and through a held-out family
    real_fraction: float = 0.5  # of the train samples, from real (non-test) sources when there are any
    evs: tuple[float, ...] = DEFAULT_EVS
    dynamic_range: tuple[float, float] = (1e3, 1e7)  # procedural scenes
    camera: CameraConfig = field(default_factory=CameraConfig)
    criterion: LabelCriterion = field(default_factory=LabelCriterion)

    def __post_init__(self) -> None:
        if self.n < 0 or self.n_test < 0 or self.n_val_real < 0:
            raise ValueError(f"n, n_test and n_val_real must be >= 0, got {self.n}, {self.n_test}, {self.n_val_real}")
        if self.size < 16:
            raise ValueError(f"size must be at least 16, got {self.size}")
        if not 0.0 <= self.val_fraction < 1.0 or not 0.0 <= self.real_fraction <= 1.0:
            raise ValueError(f"bad fractions: val {self.val_fraction}, real {self.real_fraction}")
        if 0.0 not in self.evs or not any(e > 0 for e in self.evs) or not any(e < 0 for e in self.evs):
            raise ValueError(f"evs must hold 0 and EVs on both sides, got {self.evs}")
        held = self.holdout_responses
        if set(held) - set(RESPONSE_KINDS) or "srgb" in held or len(set(held)) != len(held):
            raise ValueError(f"holdout_responses must be distinct response kinds other than srgb (the validation's "
                             f"reference camera), from {RESPONSE_KINDS}, got {held}")
        if held and not self.train_responses:
            raise ValueError(f"holdout_responses {held} leave the train split no response family of "
                             f"{self.camera.responses}")

    @property
    def train_responses(self) -> tuple[str, ...]:
        """The response families the train split draws from: ``camera.responses`` without the held-out ones."""
        return tuple(k for k in self.camera.responses if k not in self.holdout_responses)

    def to_dict(self) -> dict[str, Any]:
        extra: dict[str, Any] = {}  # these two are absent at their defaults, so the older recipes' hashes hold
        if self.n_val_real:
            extra["n_val_real"] = self.n_val_real
        if self.holdout_responses:
            extra["holdout_responses"] = list(self.holdout_responses)
        return {
            **extra,
            "seed": self.seed,
            "n": self.n,
            "n_test": self.n_test,
            "size": self.size,
            "val_fraction": self.val_fraction,
            "real_fraction": self.real_fraction,
            "evs": list(self.evs),
            "dynamic_range": list(self.dynamic_range),
            "camera": self.camera.to_dict(),
            "criterion": self.criterion.to_dict(),
            "generator_version": GENERATOR_VERSION,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Recipe:
        cam = {k: tuple(v) if isinstance(v, list) else v for k, v in d["camera"].items()}
        return cls(
            seed=int(d["seed"]),
            n=int(d["n"]),
            n_test=int(d["n_test"]),
            size=int(d["size"]),
            val_fraction=float(d["val_fraction"]),
            n_val_real=int(d.get("n_val_real", 0)),
            holdout_responses=tuple(str(k) for k in d.get("holdout_responses", ())),
            real_fraction=float(d["real_fraction"]),
            evs=tuple(float(e) for e in d["evs"]),
            dynamic_range=(float(d["dynamic_range"][0]), float(d["dynamic_range"][1])),
            camera=CameraConfig(**cam),
            criterion=LabelCriterion.from_dict(d["criterion"]),
        )


@dataclass
class Sample:
    """One training sample (see the module docstring for the meaning of each field)."""

    ldr: np.ndarray
    up: np.ndarray
    down: np.ndarray
    hdr: np.ndarray
    ev_up: float
    ev_down: float
    source: str
    meta: dict[str, Any] = field(default_factory=dict)


def _draw_camera(rng: np.random.Generator, recipe: Recipe, cameras: str) -> Camera:
    """A camera from the families ``cameras`` names (:data:`CAMERA_DRAWS`, see :func:`make_sample`)."""
    if cameras == "all":
        return sample_camera(rng, recipe.camera)
    if cameras == "train":
        return sample_camera(rng, replace(recipe.camera, responses=recipe.train_responses))
    if cameras not in ("srgb", "held-out"):
        raise ValueError(f"cameras must be one of {CAMERA_DRAWS}, got {cameras!r}")
    if not recipe.holdout_responses:
        raise ValueError(f"cameras={cameras!r} needs a recipe with holdout_responses")
    camera = sample_camera(rng, replace(recipe.camera, responses=recipe.holdout_responses))
    return replace(camera, response=Response("srgb")) if cameras == "srgb" else camera


def make_sample(radiance: np.ndarray, rng: np.random.Generator, recipe: Recipe = Recipe(), source: str = "",
                cameras: str = "train") -> Sample:
    """Simulate a camera on ``radiance`` (float32 (H, W, 3), any scale) and pick the labels.

    Steps: draw a camera; apply its white balance and saturation; choose the input exposure (the scale
    that makes ``hdr`` clip at 1.0); render the noise-free stack at ``recipe.evs`` and choose the labels on
    it (:mod:`.stack`); shoot the input and the two labels with noise, clipping, 8-bit and optional JPEG.

    ``cameras`` says which response families the camera's curve comes from: ``"train"``, the recipe's
    :attr:`~Recipe.train_responses` (without held-out families, the same as ``"all"``); ``"all"``,
    ``recipe.camera.responses``; ``"held-out"``, the recipe's ``holdout_responses``; ``"srgb"``, the same draw
    as ``"held-out"`` (white balance, saturation, noise, JPEG, and the same random numbers after it) with the
    exact sRGB curve instead, so that a ``"srgb"`` and a ``"held-out"`` sample made from equal ``rng`` states
    differ in the response curve alone.
    """
    camera = _draw_camera(rng, recipe, cameras)
    rad = apply_color(radiance, camera)
    scale, exposure = sample_exposure(rng, rad, recipe.camera)
    hdr = (rad * np.float32(scale)).astype(np.float32)
    # the rule looks at the maximum channel only, and max_c f(x_c) = f(max_c x_c) for a monotone f
    peak = hdr.max(axis=-1)
    choice = choose_labels({float(e): render(peak, camera, e) for e in recipe.evs}, recipe.criterion)
    ldr = capture(hdr, camera, 0.0, rng)
    up = capture(hdr, camera, choice.ev_up, rng)
    down = capture(hdr, camera, choice.ev_down, rng)
    meta = {
        "camera": camera.to_dict(),
        "exposure": exposure,
        "labels": choice.to_dict(),
        "clipped_fraction": float((hdr.max(axis=-1) >= 1.0).mean()),
    }
    return Sample(ldr, up, down, hdr, choice.ev_up, choice.ev_down, source, meta)


def relabel_up(sample: Sample, ev: float, rng: np.random.Generator | None) -> Sample:
    """``sample`` with its exposure-up label shot again at ``ev`` (EV relative to the input) by the sample's own
    simulated camera (``meta["camera"]``) from its stored radiance: the same :func:`~.camera.capture` as the
    build (noise, clipping, response, 8 bits, JPEG), so only the EV (and, from the float16-stored radiance, a
    rounding of 2**-11) differs from a label the build chose. ``rng=None`` shoots without noise. The returned
    sample's ``meta["labels"]`` says ``ev_up`` (the new EV) and ``ev_up_stored`` (the build's).

    Raises ``ValueError`` for a sample without a simulated camera (a real bracketed stack) or ``ev <= 0``.
    """
    if not ev > 0:
        raise ValueError(f"an exposure-up label needs ev > 0, got {ev}")
    cam = sample.meta.get("camera")
    if cam is None:
        raise ValueError(f"sample {sample.source!r} records no simulated camera (meta['camera']), "
                         "so its exposure-up label cannot be shot again at another EV")
    up = capture(sample.hdr.astype(np.float32), Camera.from_dict(cam), float(ev), rng)
    labels = {**sample.meta.get("labels", {}), "ev_up": float(ev), "ev_up_stored": float(sample.ev_up)}
    return Sample(sample.ldr, up, sample.down, sample.hdr, float(ev), sample.ev_down, sample.source,
                  {**sample.meta, "labels": labels})


@dataclass(frozen=True)
class PlanItem:
    index: int
    split: str
    source: str  # "procedural" or a real source id
    cameras: str = "train"  # the response families its camera comes from (make_sample's `cameras`)
    seed_index: int | None = None  # when set, the seed sequence is (seed, seed_index), not (seed, index): the
    # two samples of a held-out validation pair share their first one's, hence the view, exposure and noise

    @property
    def id(self) -> str:
        return f"{self.index:06d}"

    @property
    def file(self) -> str:
        return f"{self.split}/{self.id}.npz"


def make_plan(
    recipe: Recipe,
    train_sources: Sequence[HDRSource],
    test_sources: Sequence[HDRSource],
    val_sources: Sequence[HDRSource] = (),
) -> list[PlanItem]:
    """Which sample comes from which source, in which split (deterministic for the recipe's seed).

    Indices ``0 .. n_train-1`` are train, then ``n_val`` val (procedural), then ``n_test`` test (round-robin
    over the held-out real sources; procedural when there are none), then ``n_val_real`` val (round-robin over
    the held-out validation scenes; none when there are none). Among the train samples exactly
    ``round(real_fraction * n_train)`` are real (sources drawn by weight), at random positions. A source in
    more than one of the lists is refused: scenes are held out whole.

    Cameras: train and the procedural val samples draw from the training families (``"train"``), the test
    split from all of the recipe's (``"all"``, so it does not depend on ``holdout_responses``). With
    ``holdout_responses`` the real val samples come in pairs of one view (round-robin over the scenes by
    view): the even ones shot with the exact sRGB curve (``"srgb"``), the odd ones with a held-out family
    (``"held-out"``), both from the even one's seed; an odd ``n_val_real`` leaves the last view with the sRGB
    shot alone. Without it they draw from ``"all"``.
    """
    ids = [[s.id for s in group] for group in (train_sources, test_sources, val_sources)]
    shared = (set(ids[0]) & set(ids[1])) | (set(ids[0]) & set(ids[2])) | (set(ids[1]) & set(ids[2]))
    if shared:
        raise ValueError(f"sources in more than one split: {sorted(shared)}")
    rng = np.random.default_rng(np.random.SeedSequence([recipe.seed, 0x5EED]))
    n_val = int(round(recipe.n * recipe.val_fraction))
    n_train = recipe.n - n_val
    n_real = int(round(n_train * recipe.real_fraction)) if train_sources else 0
    is_real = np.zeros(n_train, bool)
    is_real[rng.permutation(n_train)[:n_real]] = True
    weights = np.array([s.weight for s in train_sources], np.float64)
    picks = rng.choice(len(train_sources), size=n_real, p=weights / weights.sum()) if n_real else np.zeros(0, int)
    plan, k = [], 0
    for i in range(n_train):
        if is_real[i]:
            plan.append(PlanItem(i, "train", train_sources[int(picks[k])].id))
            k += 1
        else:
            plan.append(PlanItem(i, "train", "procedural"))
    plan += [PlanItem(n_train + i, "val", "procedural") for i in range(n_val)]
    base = recipe.n
    for i in range(recipe.n_test):
        src = test_sources[i % len(test_sources)].id if test_sources else "procedural"
        plan.append(PlanItem(base + i, "test", src, cameras="all"))
    base += recipe.n_test
    if not val_sources:
        return plan
    # indices after the test split: the samples of earlier recipes keep their index and pixels
    if not recipe.holdout_responses:
        plan += [PlanItem(base + i, "val", val_sources[i % len(val_sources)].id, cameras="all")
                 for i in range(recipe.n_val_real)]
        return plan
    for i in range(recipe.n_val_real):
        view, held = divmod(i, 2)
        plan.append(PlanItem(base + i, "val", val_sources[view % len(val_sources)].id,
                             cameras="held-out" if held else "srgb", seed_index=base + 2 * view))
    return plan


class _SourceCache:
    """Loads real sources on first use and keeps a few in memory."""

    def __init__(self, sources: Sequence[HDRSource], capacity: int = 64) -> None:  # all 35 fetched: ~120 MB
        self.sources = {s.id: s for s in sources}
        self.capacity = capacity
        self.loaded: dict[str, np.ndarray] = {}

    def get(self, sid: str) -> tuple[HDRSource, np.ndarray]:
        src = self.sources[sid]
        if sid not in self.loaded:
            if len(self.loaded) >= self.capacity:
                self.loaded.pop(next(iter(self.loaded)))
            self.loaded[sid] = src.load()
        return src, self.loaded[sid]


def generate_item(item: PlanItem, recipe: Recipe, cache: _SourceCache | None = None) -> Sample:
    """Generate planned sample ``item`` from the seed sequence ``(recipe.seed, item.index)`` (``item.seed_index``
    when set), its camera drawn as ``item.cameras`` says; a held-out validation pair's sample records its role in
    ``meta["camera_family"]`` (``"srgb"`` or ``"held-out"``) and the pair's seed index in ``meta["view_seed"]``."""
    seed_index = item.index if item.seed_index is None else item.seed_index
    rng = np.random.default_rng(np.random.SeedSequence([recipe.seed, seed_index]))
    if item.source == "procedural":
        radiance, info = generate_scene(rng, recipe.size, dynamic_range=recipe.dynamic_range)
        source = f"procedural/{info['kind']}"
        view_meta: dict[str, Any] = {"scene": info}
    else:
        if cache is None:
            raise ValueError(f"sample {item.id} needs real source {item.source} but no sources were given")
        src, pano = cache.get(item.source)
        for _ in range(20):  # a view that is not black (e.g. the ground of a night panorama)
            radiance, view_meta = sample_view(rng, pano, src.kind, recipe.size)
            if float(radiance.max()) > 0.0 and float(np.percentile(radiance.max(axis=-1), 99.0)) > 0.0:
                break
        else:
            raise ImageReadError(src.path, "20 random views were black")
        source = src.id
    sample = make_sample(radiance, rng, recipe, source, item.cameras)
    sample.meta["view"] = view_meta
    if item.cameras in ("srgb", "held-out"):
        sample.meta["camera_family"] = item.cameras
        sample.meta["view_seed"] = seed_index
    return sample


# ------------------------------------------------------------------------------------------- files


_F16_MAX = float(np.finfo(np.float16).max)


def _storage_hdr(hdr: np.ndarray) -> np.ndarray:
    """float16 (relative error <= 2**-11, half the file size) when the sample fits its range, else float32."""
    return hdr.astype(np.float16) if float(hdr.max()) < _F16_MAX else hdr.astype(np.float32)


def _npz_bytes(sample: Sample) -> bytes:
    """The sample as an ``.npz`` (a zip of ``.npy`` files, as ``np.savez_compressed`` writes, at deflate
    level 1: twice as fast as level 6 for 2% more bytes)."""
    arrays = {
        "ldr": sample.ldr,
        "up": sample.up,
        "down": sample.down,
        "hdr": _storage_hdr(sample.hdr),
        "ev_up": np.float32(sample.ev_up),
        "ev_down": np.float32(sample.ev_down),
        "source": np.str_(sample.source),
        "meta": np.str_(json.dumps(sample.meta, sort_keys=True, default=float)),
    }
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        for name, value in arrays.items():
            member = io.BytesIO()
            np.lib.format.write_array(member, np.asanyarray(value), allow_pickle=False)
            zf.writestr(
                zipfile.ZipInfo(name + ".npy", date_time=(1980, 1, 1, 0, 0, 0)),
                member.getvalue(),
                compress_type=zipfile.ZIP_DEFLATED,
                compresslevel=1,
            )
    return buf.getvalue()


def load_sample_meta(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``meta`` of one sample file (camera, exposure, labels) without reading its images."""
    try:
        with np.load(path, allow_pickle=False) as z:
            return json.loads(str(z["meta"]))
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as err:
        raise ValueError(f"{path}: corrupt sample file ({type(err).__name__}: {err})") from err


def under_exposed(meta: dict[str, Any]) -> bool | None:
    """Whether the simulated camera under-exposed the sample (``meta["exposure"]["mode"] == "under"``), or
    ``None`` when the meta does not record an exposure mode (samples not made by the camera simulation)."""
    mode = meta.get("exposure", {}).get("mode")
    return None if mode is None else mode == "under"


def load_sample(path: str | os.PathLike[str]) -> Sample:
    """Read one sample file (raises ``ValueError`` naming the file when it is corrupt or incomplete)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            s = Sample(
                ldr=z["ldr"],
                up=z["up"],
                down=z["down"],
                hdr=z["hdr"].astype(np.float32),
                ev_up=float(z["ev_up"]),
                ev_down=float(z["ev_down"]),
                source=str(z["source"]),
                meta=json.loads(str(z["meta"])),
            )
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as err:
        raise ValueError(f"{path}: corrupt sample file ({type(err).__name__}: {err})") from err
    for name in ("ldr", "up", "down"):
        a = getattr(s, name)
        if a.dtype != np.uint8 or a.ndim != 3 or a.shape[2] != 3:
            raise ValueError(f"{path}: {name} must be uint8 (H, W, 3), got {a.dtype} {a.shape}")
    if s.hdr.shape != s.ldr.shape or s.up.shape != s.ldr.shape or s.down.shape != s.ldr.shape:
        raise ValueError(f"{path}: arrays have different shapes")
    if not np.isfinite(s.hdr).all() or float(s.hdr.min()) < 0.0:
        raise ValueError(f"{path}: hdr has NaN/Inf or negative values")
    return s


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


def _write_manifest(root: Path, manifest: dict[str, Any]) -> None:
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
    _WORKER["cache"] = _SourceCache(sources)


def _worker_run(item: PlanItem) -> tuple[PlanItem, bytes | str, dict[str, Any]]:
    try:
        sample = generate_item(item, _WORKER["recipe"], _WORKER["cache"])
    except ImageReadError as err:
        return item, f"{err}", {}
    return item, _npz_bytes(sample), _info(sample)


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
        _write_manifest(out, manifest)

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
    per_mode: int | None = None, seed: int = 0,
) -> list[dict[str, Any]]:
    """Write a split as evaluation pairs: ``out/<id>.png`` (LDR input), ``out/<id>.exr`` (float32 HDR),
    ``out/labels/<id>_up.png`` / ``<id>_down.png``, and ``out/pairs.json`` (ids, files, EVs, sources).

    ``real_only`` keeps the samples of real HDR sources (not ``procedural/*``); ``per_mode`` keeps at most that
    many samples of each exposure mode (``meta["exposure"]["mode"]``), the first ones in an order shuffled with
    ``seed``: e.g. a small real-scene set from the train split for choosing between models.
    """
    root, out = Path(root), Path(out)
    manifest = load_manifest(root)
    records = [r for r in manifest["samples"] if r["split"] == split
               and not (real_only and str(r.get("source", "")).startswith("procedural"))]
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
    atomic_write(
        out / "pairs.json",
        json.dumps(
            {"split": split, "from": str(root), "recipe_hash": manifest["recipe_hash"], "real_only": real_only,
             "per_mode": per_mode, "seed": seed if per_mode is not None else None, "pairs": pairs}, indent=1
        ).encode(),
    )
    return pairs
