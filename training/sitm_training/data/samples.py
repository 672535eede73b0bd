"""From radiance to a training sample, and the sample file.

:func:`make_sample` simulates a camera on a radiance map and picks the optimal exposure labels;
:func:`generate_item` makes planned sample ``i`` (:func:`~.recipe.make_plan`) from the seed sequence ``(seed, i)``
alone, from a procedural scene or a view of a real source (:mod:`.views`). A sample (one ``.npz`` file,
zlib-compressed; :func:`npz_bytes`, :func:`load_sample`) holds:

* ``ldr``: ``uint8 (S, S, 3)``, the simulated camera's shot at the input exposure (EV 0);
* ``up``, ``down``: ``uint8 (S, S, 3)``, the same camera at the chosen labels' EVs (other noise draws);
* ``hdr``: ``(S, S, 3)``, the ground-truth linear radiance through the camera's colour (white balance
  and saturation), scaled so that 1.0 just clips at the input's exposure; finite and >= 0. Stored as
  float16 (relative error <= 2**-11) unless a value exceeds the float16 range, then float32; readers
  (:func:`load_sample`, the Datasets) always return float32;
* ``ev_up`` (> 0), ``ev_down`` (< 0): the labels' EVs relative to the input (float32 scalars);
* ``source``: the source id (``procedural/<kind>``, ``blender/city``, ``user/...``), ``meta``: JSON text
  (camera, exposure, view, label statistics).
"""

from __future__ import annotations

import io
import json
import os
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from sitm_trt.media.io import ImageReadError

from .camera import Camera, Response, apply_color, capture, render, sample_camera, sample_exposure
from .procedural import generate_scene
from .recipe import CAMERA_DRAWS, PlanItem, Recipe
from .sources import HDRSource
from .stack import choose_labels
from .views import sample_view

__all__ = [
    "Sample",
    "make_sample",
    "relabel_up",
    "SourceCache",
    "generate_item",
    "npz_bytes",
    "load_sample",
    "load_sample_meta",
    "under_exposed",
]


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


class SourceCache:
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


def generate_item(item: PlanItem, recipe: Recipe, cache: SourceCache | None = None) -> Sample:
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


def npz_bytes(sample: Sample) -> bytes:
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


def camera_family(meta: dict[str, Any]) -> str | None:
    """The camera response family the simulated camera shot the sample through (``meta["camera"]["response"]
    ["kind"]``, e.g. ``"srgb"``, ``"filmic"``), or ``None`` when the meta records none (pairs, SICE stacks)."""
    camera = meta.get("camera")
    response = camera.get("response") if isinstance(camera, dict) else None
    kind = response.get("kind") if isinstance(response, dict) else None
    return kind if isinstance(kind, str) else None


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
