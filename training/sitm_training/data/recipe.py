"""What a data set is made of: the :class:`Recipe` (every parameter that changes the samples' pixels) and the plan
(:func:`make_plan`: which sample comes from which source, in which split, shot by which camera families).

The recipe and its hash are stored in the data set's manifest (:mod:`.build`); the plan is a pure function of the
recipe and the sources, so sample ``i`` is the same whatever the order, the number of workers or a resume. Scenes
are held out whole: a source feeds one split only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .camera import RESPONSE_KINDS, CameraConfig
from .sources import HDRSource
from .stack import DEFAULT_EVS, LabelCriterion

__all__ = ["GENERATOR_VERSION", "CAMERA_DRAWS", "Recipe", "PlanItem", "make_plan"]

GENERATOR_VERSION = 1  # bump when the generated pixels change for the same recipe
# where a sample's camera comes from (make_sample's ``cameras``): the training families, all the recipe's families
# (the test split; the val split without held-out families), or one member of a held-out validation pair
CAMERA_DRAWS = ("train", "all", "srgb", "held-out")


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
