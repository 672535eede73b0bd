"""PyTorch Datasets over built data sets, on-the-fly procedural samples, and the real layouts.

Every Dataset returns a dict of tensors:

* ``ldr``, ``up``, ``down``: float32 ``(3, h, w)`` in [0, 1] (``up``/``down`` absent where a layout has none);
* ``hdr``: float32 ``(3, h, w)``, linear, 1.0 = clipping point of the input's exposure, >= 0;
* ``ev_up``, ``ev_down``: float32 0-dim tensors (EV of each label relative to the input; batches to ``(N,)``);
* ``source``, ``id``: strings.

Augmentation (Sec. 4.1 of the paper: random crops, flips, rotations) applies one random crop, horizontal
flip, vertical flip and rotation by a multiple of 90 degrees to all images of a sample. With ``seed`` set,
item ``i`` at epoch ``e`` (:meth:`set_epoch`) always gets the same augmentation, whatever the worker;
without it, the generator is seeded from ``torch`` (so ``torch.manual_seed`` and DataLoader worker seeding
apply).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from sitm_trt.media.io import ImageReadError, read_hdr, read_ldr, to_float

from .build import load_manifest
from .real import MergedStack, SICEStack, find_pairs, find_sice_stacks, merge_stack, scan_hdr_files, stack_sample
from .recipe import PlanItem, Recipe
from .samples import Sample, camera_family, generate_item, load_sample, load_sample_meta, make_sample, relabel_up
from .sources import validate_radiance
from .stack import LabelCriterion

__all__ = ["augment", "SampleDataset", "ProceduralDataset", "SICEDataset", "PairFolderDataset", "HDRFolderDataset"]

log = logging.getLogger(__name__)


def augment(
    arrays: dict[str, np.ndarray], rng: np.random.Generator, crop: int | None, random: bool = True
) -> dict[str, np.ndarray]:
    """Crop (random or centred) and, when ``random``, flip and rotate all ``(H, W, C)`` arrays alike."""
    h, w = next(iter(arrays.values())).shape[:2]
    if crop is not None and (crop > h or crop > w):
        raise ValueError(f"crop {crop} is larger than the images ({h}x{w})")
    if crop is not None:
        y0 = int(rng.integers(0, h - crop + 1)) if random else (h - crop) // 2
        x0 = int(rng.integers(0, w - crop + 1)) if random else (w - crop) // 2
        arrays = {k: a[y0 : y0 + crop, x0 : x0 + crop] for k, a in arrays.items()}
    if random:
        hflip, vflip, k = rng.random() < 0.5, rng.random() < 0.5, int(rng.integers(4))
        out = {}
        for name, a in arrays.items():
            if hflip:
                a = a[:, ::-1]
            if vflip:
                a = a[::-1]
            out[name] = np.rot90(a, k)
        arrays = out
    return {k: np.ascontiguousarray(a) for k, a in arrays.items()}


def _tensor(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(to_float(a).transpose(2, 0, 1)))


def _to_item(
    arrays: dict[str, np.ndarray], ev_up: float | None, ev_down: float | None, source: str, sid: str,
    camera: str = "",
) -> dict[str, Any]:
    item: dict[str, Any] = {k: _tensor(a) for k, a in arrays.items()}
    if ev_up is not None:
        item["ev_up"] = torch.tensor(ev_up, dtype=torch.float32)
    if ev_down is not None:
        item["ev_down"] = torch.tensor(ev_down, dtype=torch.float32)
    item["source"] = source
    item["id"] = sid
    item["camera"] = camera  # the simulated camera's response family ("" when unknown: pairs, SICE)
    return item


class _Augmented(Dataset):
    def __init__(self, crop: int | None, augment: bool, seed: int | None) -> None:
        self.crop = crop
        self.augment = augment
        self.seed = seed
        # in shared memory, so that set_epoch() also reaches DataLoader workers (persistent_workers=True)
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()

    @property
    def epoch(self) -> int:
        return int(self._epoch)

    def set_epoch(self, epoch: int) -> None:
        """Vary the augmentation by epoch when a ``seed`` is set (seen by running DataLoader workers too)."""
        self._epoch.fill_(int(epoch))

    def _rng(self, index: int) -> np.random.Generator:
        if self.seed is not None:
            return np.random.default_rng(np.random.SeedSequence([self.seed, self.epoch, index]))
        return np.random.default_rng(int(torch.randint(0, 2**62, ()).item()))

    def _finish(self, index: int, s: Sample, sid: str) -> dict[str, Any]:
        arrays = {"ldr": s.ldr, "up": s.up, "down": s.down, "hdr": s.hdr}
        arrays = augment(arrays, self._rng(index), self.crop, self.augment)
        return _to_item(arrays, s.ev_up, s.ev_down, s.source, sid, camera_family(s.meta) or "")


class SampleDataset(_Augmented):
    """A data set built by ``python -m sitm_training.data build`` (one split of it).

    ``crop=None`` returns whole images; otherwise ``crop x crop`` (random when ``augment``, centred
    otherwise). ``up_ev_max``: a sample whose exposure-up label is more than this many EV above the input gets
    its label shot again at ``up_ev_max`` (:func:`~.samples.relabel_up`; the noise draw is fixed per item, like a
    stored label's: seeded by ``seed`` (0 when ``None``) and the item's position in the split). ``check=True`` verifies every file's checksum at construction (raising ``ValueError`` with
    the broken files' names before any training step); otherwise a corrupt file raises ``ValueError`` naming
    it when read.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: str = "train",
        crop: int | None = 256,
        augment: bool = True,
        seed: int | None = None,
        check: bool = False,
        up_ev_max: float | None = None,
    ) -> None:
        super().__init__(crop, augment, seed)
        if up_ev_max is not None and not up_ev_max > 0:
            raise ValueError(f"up_ev_max must be > 0 EV, got {up_ev_max}")
        self.up_ev_max = up_ev_max
        self.root = Path(root)
        self.manifest = load_manifest(self.root)
        if split not in ("train", "val", "test"):
            raise ValueError(f"split must be train, val or test, got {split!r}")
        self.split = split
        self.records = [r for r in self.manifest["samples"] if r["split"] == split]
        size = int(self.manifest["recipe"]["size"])
        if crop is not None and crop > size:
            raise ValueError(f"crop {crop} is larger than the stored size {size} of {self.root}")
        if up_ev_max is not None:  # fail here, not in a DataLoader worker at the first relabelled item
            above = next((r for r in self.records if float(r.get("ev_up", 0.0)) > up_ev_max), None)
            if above is not None and "camera" not in load_sample_meta(self.root / above["file"]):
                raise ValueError(f"up_ev_max needs samples from a simulated camera (meta['camera']) to shoot their "
                                 f"labels again; {self.root / above['file']} records none (a real bracketed stack?)")
        if not self.manifest.get("complete"):
            log.warning(
                "%s: the build is incomplete; using the %d finished %s samples", self.root, len(self.records), split
            )
        if check:  # before training starts, rather than at some step deep inside it
            bad = []
            for r in self.records:
                path = self.root / r["file"]
                if not path.is_file():
                    bad.append(f"{path}: missing")
                elif hashlib.sha256(path.read_bytes()).hexdigest() != r["sha256"]:
                    bad.append(f"{path}: checksum mismatch")
            if bad:
                raise ValueError(
                    f"{len(bad)} broken sample files in {self.root} (first: {bad[0]}); "
                    "rebuild with the same command to repair"
                )

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        rec = self.records[index]
        s = load_sample(self.root / rec["file"])
        if self.up_ev_max is not None and s.ev_up > self.up_ev_max:
            rng = np.random.default_rng(np.random.SeedSequence([0 if self.seed is None else self.seed, index, 0x75]))
            s = relabel_up(s, self.up_ev_max, rng)
        return self._finish(index, s, rec["id"])


class ProceduralDataset(_Augmented):
    """``n`` samples generated on the fly from procedural scenes with the data set recipe (no files).

    Item ``i`` is the same as sample ``i`` of a procedural build with the same seed and recipe.
    """

    def __init__(
        self,
        n: int,
        size: int = 256,
        seed: int = 0,
        crop: int | None = None,
        augment: bool = False,
        recipe: Recipe | None = None,
    ) -> None:
        super().__init__(crop, augment, None if seed is None else seed)
        base = recipe or Recipe()
        self.recipe = Recipe(**{**base.__dict__, "seed": seed, "size": size, "n": n, "n_test": 0})
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < self.n:
            raise IndexError(index)
        s = generate_item(PlanItem(index, "train", "procedural"), self.recipe)
        return self._finish(index, s, f"{index:06d}")


class SICEDataset(_Augmented):
    """SICE-style bracketed stacks: one item per (stack, input image with darker and brighter neighbours).

    Images are resized to ``size x size`` (paper: 512). The stack's HDR is merged (Debevec) on first use
    and kept in memory, so this suits small sets; for SICE itself, convert once with
    ``python -m sitm_training.data import-sice`` (broken stacks reported and left out) and train on
    :class:`SampleDataset`. Here, the items of an unusable stack raise ``ImageReadError`` naming the file.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        size: int = 512,
        crop: int | None = 384,
        augment: bool = True,
        seed: int | None = None,
        criterion: LabelCriterion = LabelCriterion(),
    ) -> None:
        super().__init__(crop, augment, seed)
        self.size = size
        self.criterion = criterion
        self.stacks: list[SICEStack] = find_sice_stacks(root)
        self.items = [(k, i) for k, st in enumerate(self.stacks) for i in range(1, len(st.images) - 1)]
        self._merged: dict[int, MergedStack | ImageReadError] = {}

    def __len__(self) -> int:
        return len(self.items)

    def _stack(self, k: int) -> MergedStack:
        if k not in self._merged:
            try:
                self._merged[k] = merge_stack(self.stacks[k], self.size)
            except ImageReadError as err:
                log.error("SICE stack %s is unusable: %s", self.stacks[k].name, err)
                self._merged[k] = err
        merged = self._merged[k]
        if isinstance(merged, ImageReadError):
            raise ImageReadError(merged.path, f"SICE stack {self.stacks[k].name} is unusable: {merged.reason}")
        return merged

    def __getitem__(self, index: int) -> dict[str, Any]:
        k, i = self.items[index]
        m = self._stack(k)
        s = stack_sample(m.images, m.log2_exposures, i, m.radiance, m.response, self.criterion, f"sice/{m.name}")
        return self._finish(index, s, f"{m.name}/{i}")


class PairFolderDataset(Dataset):
    """``(ldr, hdr)`` pairs from a folder (``X.png`` + ``X.exr``, or ``LDR/`` + ``HDR/``), whole images.

    The HDR is returned as stored: its scale is the folder's, not necessarily 1.0 at clipping (our own
    test export does follow that convention). A ``pairs.json`` from :func:`export_split` adds
    ``up``/``down`` labels and the EVs. With ``skip_invalid`` (default) every pair is read once at
    construction and unusable ones (unreadable, NaN/Inf, sizes that differ) are logged by file name, listed
    in ``rejected`` and left out; otherwise they raise ``ImageReadError`` when read.
    """

    def __init__(self, root: str | os.PathLike[str], skip_invalid: bool = True) -> None:
        self.root = Path(root)
        self.pairs = find_pairs(self.root)
        self.labels: dict[str, dict[str, Any]] = {}
        if (self.root / "pairs.json").is_file():
            with open(self.root / "pairs.json") as f:
                self.labels = {p["id"]: p for p in json.load(f)["pairs"]}
        self.rejected: list[tuple[str, str]] = []
        if skip_invalid:
            good = []
            for pair in self.pairs:
                try:
                    self._read(*pair)
                except ImageReadError as err:
                    log.warning("skipping pair %s: %s", pair[0].stem, err)
                    self.rejected.append((err.path, err.reason))
                else:
                    good.append(pair)
            self.pairs = good

    def __len__(self) -> int:
        return len(self.pairs)

    @staticmethod
    def _read(ldr_path: Path, hdr_path: Path) -> tuple[np.ndarray, np.ndarray]:
        ldr = read_ldr(ldr_path)
        hdr = validate_radiance(read_hdr(hdr_path), hdr_path)
        if hdr.shape[:2] != ldr.shape[:2]:
            raise ImageReadError(hdr_path, f"size {hdr.shape[:2]} differs from its LDR {ldr_path.name} {ldr.shape[:2]}")
        return ldr, hdr

    def __getitem__(self, index: int) -> dict[str, Any]:
        ldr_path, hdr_path = self.pairs[index]
        ldr, hdr = self._read(ldr_path, hdr_path)
        arrays = {"ldr": ldr, "hdr": hdr}
        meta = self.labels.get(ldr_path.stem)
        ev_up = ev_down = None
        if meta is not None:
            arrays["up"] = read_ldr(self.root / meta["up"])
            arrays["down"] = read_ldr(self.root / meta["down"])
            ev_up, ev_down = float(meta["ev_up"]), float(meta["ev_down"])
        source = meta["source"] if meta else f"pairs/{ldr_path.stem}"
        return _to_item(arrays, ev_up, ev_down, source, ldr_path.stem)


class HDRFolderDataset(_Augmented):
    """HDR-only folders (HDR-Eye, Fairchild): the LDR input and labels are simulated, deterministically.

    Each valid file gives one item: the centred square crop, resized to ``size x size``, through a camera
    drawn from ``recipe`` with the seed sequence ``(seed, file index)``. Invalid files are skipped (logged
    by name, listed in ``rejected``).
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        size: int = 512,
        seed: int = 0,
        crop: int | None = None,
        augment: bool = False,
        recipe: Recipe | None = None,
    ) -> None:
        super().__init__(crop, augment, seed)
        self.paths, self.rejected = scan_hdr_files(root)
        self.size = size
        self.recipe = recipe or Recipe()

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict[str, Any]:
        import cv2

        path = self.paths[index]
        img = validate_radiance(read_hdr(path), path)
        h, w = img.shape[:2]
        side = min(h, w)
        y0, x0 = (h - side) // 2, (w - side) // 2
        sq = np.ascontiguousarray(img[y0 : y0 + side, x0 : x0 + side])
        interp = cv2.INTER_AREA if side > self.size else cv2.INTER_LINEAR
        view = np.maximum(cv2.resize(sq, (self.size, self.size), interpolation=interp), 0.0)
        rng = np.random.default_rng(np.random.SeedSequence([self.seed if self.seed is not None else 0, 0xF01D, index]))
        s = make_sample(view, rng, self.recipe, f"hdr/{path.name}")
        return self._finish(index, s, path.stem)
