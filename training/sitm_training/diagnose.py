"""Where a model's fusion masks (Eq. 7) take each image: mean ``M_up`` / ``M_mid`` / ``M_down`` by input region.

``python -m sitm_training.diagnose --images DIR --weights NAME=PATH [--weights ...] [--limit N] [--samples SAMPLES]``

(with ``--samples``, the project's own samples' folder, one row per exposure mode of the images' samples)

and, for an evaluation of the project's own samples, where a model wins or loses against a baseline by
the simulated camera of each sample (exposure mode, response curve family, from the samples' ``meta``) and scene,
the families the data set held out of its train split marked (``build --holdout-response``):

``python -m sitm_training.diagnose --per-image EVAL/per_image.csv --samples data/sitm256/test [--baseline linear]``

and, to choose between candidates without the test split, per method the t-statistic of each score's per-image
difference to a baseline and the weakest of them (the rows of several evaluations merged by image id):

``python -m sitm_training.diagnose --weakest EVAL1/per_image.csv [EVAL2/per_image.csv ...] [--baseline linear]``

and, on a folder of (LDR, HDR) pairs, what each method makes of the input's clipped pixels, against the ground
truth (the linearized input and each model, every result scale-aligned as the evaluation does):

``python -m sitm_training.diagnose --highlights --images PAIRS --weights NAME=PATH [--weights ...]``

which gives, over the images with at least ``--min-pixels`` clipped pixels (``max_c I > 0.95``), the mean of the
per-image standard deviation of log luminance there (the detail) and the median over images of the per-image
median luminance there (1.0 = the input's clip level on the ground truth's scale).

and, on the project's own samples (a split's ``.npz`` folder), how far each result's clipped pixels are from the
truth, by scene kind (real or procedural), camera response family and clipped fraction of the input:

``python -m sitm_training.diagnose --clip-bias --samples data/sitm256r/train --weights NAME=PATH [--every K]``

which gives, over the clip-mode samples with at least ``--min-pixels`` clipped pixels (every ``K``-th sample), the
mean of the per-image mean ``log2(Y_result / Y_gt)`` there, each result scale-aligned as the evaluation does
(0 = right on average; negative = too dark), for the inverse-sRGB linearized input and each model.

and the whole-frame coefficients (gains, curve exponent) by scene kind and camera family, and copies of
residual-fusion weights with the curve's log-exponent ``k2`` fixed (to evaluate which curve each camera wants):

``python -m sitm_training.diagnose --coefficients --samples data/heldout-aces/val --weights NAME=PATH``
``python -m sitm_training.diagnose --fix-curve -0.1 0 0.05 --weights NAME=PATH --variants DIR``

Regions of the LDR input ``I`` (in [0, 1], after the pre kernel's normalization):

* ``dark``: ``min_c I < 0.05`` (the shadows, where AUEM's exposure-up image can add detail)
* ``well``: ``0.2 < max_c I < 0.8`` (well exposed: the input itself is the best evidence)
* ``bright``: ``0.8 <= max_c I <= 0.95``
* ``clipped``: ``max_c I > 0.95`` (where ADEM's exposure-down image can add detail)

``dark`` is judged by the darkest channel and the others by the brightest, so a pixel with one dark channel
can be in ``dark`` and in another region.

Each image contributes its mean masks over a region when the region has at least ``--min-pixels`` pixels;
the table gives the mean over those images and how many there were. A model whose masks are ``(0, 1, 0)``
everywhere has reduced Eq. 7 to the input and does all its work in the curve (training/LOG.md, "Status").
Writes a markdown table to stdout (and ``--out FILE`` atomically).
"""

from __future__ import annotations

import argparse
import math
import sys
import warnings
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch

from sitm_trt import reference as ops
from sitm_trt.files import atomic_write
from sitm_trt.media.io import read_ldr

REGIONS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "dark": lambda lo, hi: lo < 0.05,
    "well": lambda lo, hi: (hi > 0.2) & (hi < 0.8),
    "bright": lambda lo, hi: (hi >= 0.8) & (hi <= 0.95),
    "clipped": lambda lo, hi: hi > 0.95,
}
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")


def region_masks(image: torch.Tensor) -> dict[str, torch.Tensor]:
    """``image`` (3, H, W) in [0, 1] -> boolean (H, W) per region."""
    lo, hi = image.amin(0), image.amax(0)
    return {name: f(lo, hi) for name, f in REGIONS.items()}


def mask_stats(masks_of: Callable[[torch.Tensor], torch.Tensor], frames: Iterable[np.ndarray],
               min_pixels: int = 50) -> dict[str, tuple[np.ndarray, int]]:
    """``masks_of(image (1, 3, H, W)) -> (1, 3, H, W)`` masks; returns per region (mean [up, mid, down], images)."""
    acc: dict[str, list[list[float]]] = {name: [] for name in REGIONS}
    for frame in frames:
        image = ops.normalize_frame(torch.from_numpy(frame))
        masks = masks_of(image)[0].float()
        for name, r in region_masks(image[0]).items():
            if int(r.sum()) >= min_pixels:
                acc[name].append([masks[i][r].mean().item() for i in range(3)])
    return {name: (np.mean(v, axis=0) if v else np.full(3, np.nan), len(v)) for name, v in acc.items()}


def network_masks(weights: str | Path) -> Callable[[torch.Tensor], torch.Tensor]:
    """The masks of a weights file on an image: pre (pad) -> network -> crop."""
    from sitm_trt.model.serialization import load_weights

    net = load_weights(weights).eval()

    def masks_of(image: torch.Tensor) -> torch.Tensor:
        h, w = image.shape[-2:]
        with torch.no_grad():
            return net(*ops.pre(image, stride=net.stride)).masks[..., :h, :w]

    return masks_of


def exposure_groups(files: list[Path], samples: Path) -> dict[str, list[Path]]:
    """``files`` grouped by the exposure mode of the sample of the same name in ``samples`` (its ``meta``):
    ``{"clip": [...], "under": [...]}`` (modes in sorted order; a file without a sample raises ``OSError``)."""
    from sitm_training.data import load_sample_meta

    groups: dict[str, list[Path]] = {}
    for f in files:
        npz = samples / f"{f.stem}.npz"
        if not npz.is_file():
            raise FileNotFoundError(f"no sample {npz.name} for {f.name}")
        groups.setdefault(str(load_sample_meta(npz)["exposure"]["mode"]), []).append(f)
    return dict(sorted(groups.items()))


SCORES = ("pu21_psnr", "pu21_ssim", "jod", "mu_psnr", "tm_psnr", "tm_ssim", "clip_pu21_psnr")


def _per_image_rows(files: list[Path]) -> dict[str, dict[str, dict[str, str]]]:
    """``{image id: {method: row}}`` of the successful rows of ``per_image.csv`` files (the first row of each
    method and image wins), so methods scored in different runs on the same pairs line up by image."""
    import csv

    rows: dict[str, dict[str, dict[str, str]]] = {}
    for f in files:
        with open(f, newline="") as fh:
            for r in csv.DictReader(fh):
                if r["status"] == "ok":
                    rows.setdefault(r["id"], {}).setdefault(r["method"], r)
    return rows


def _num(v: str | None) -> float:
    """A score cell as a float; empty, ``nan`` and ``None`` cells are NaN."""
    return float(v) if v not in (None, "", "nan", "None") else float("nan")


def _held_out_families(samples: Path) -> tuple[str, ...]:
    """The response families the train split of the data set that ``samples`` (a split folder) belongs to never
    drew (its manifest's ``recipe.holdout_responses``); empty when there are none or no manifest is found."""
    import json

    manifest = samples.resolve().parent / "manifest.json"
    if not manifest.is_file():
        return ()
    return tuple(json.loads(manifest.read_text()).get("recipe", {}).get("holdout_responses", ()))


CLIP_BINS = (0.0, 0.01, 0.03, 0.1, 1.0)  # bins of the input's clipped fraction (--per-image, --clip-bias)


def _clip_bin(fraction: float) -> str:
    """The :data:`CLIP_BINS` bin of a clipped fraction as ``"lo-hi"`` (the lower edge in the bin, 0 in the first)."""
    k = min(max(int(np.searchsorted(CLIP_BINS, fraction, side="right")) - 1, 0), len(CLIP_BINS) - 2)
    return f"{CLIP_BINS[k]:g}-{CLIP_BINS[k + 1]:g}"


def by_camera(per_image: Path, samples: Path, baseline: str = "linear") -> str:
    """Mean (method - baseline) per score, grouped by exposure mode, by (mode, response), by camera family (the
    response curve's kind, ``camera/<kind>``), by family and scene (``camera/<kind>/<scene>``), by scene (the
    sample's source) and, for the clip-mode samples, by family and the input's clipped fraction (the baseline's
    ``clip_fraction`` column, :data:`CLIP_BINS`: ``clipped/<kind>/<lo>-<hi>``), as markdown. A family the data
    set's train split never drew (``build --holdout-response``, read from ``samples/../manifest.json``) is marked
    ``(held out)``.

    ``per_image``: the ``per_image.csv`` of ``python -m sitm_training.evaluate``; ``samples``: the folder of
    the samples' ``.npz`` files (``meta`` holds the camera). Rows with a failed method are left out."""
    from collections import defaultdict

    from sitm_training.data import load_sample_meta

    rows = _per_image_rows([per_image])
    methods = sorted({m for r in rows.values() for m in r} - {baseline})
    groups: dict[tuple, dict[str, list[list[float]]]] = defaultdict(lambda: defaultdict(list))
    held = _held_out_families(samples)
    missing = [sid for sid in rows if not (samples / f"{sid}.npz").is_file()]
    if missing:
        raise ValueError(f"{samples}: has no sample {missing[0]}.npz ({len(missing)} of the {len(rows)} ids of "
                         f"{per_image} are not there): is this the split that was evaluated?")

    for sid, by_method in rows.items():
        if baseline not in by_method:
            continue
        meta = load_sample_meta(samples / f"{sid}.npz")
        mode, response = meta["exposure"]["mode"], meta["camera"]["response"]["kind"]
        family = f"{response} (held out)" if response in held else response
        with np.load(samples / f"{sid}.npz") as z:
            scene = str(z["source"])
        keys = [("all",), (mode,), (mode, response), ("camera", family), ("camera", family, scene), ("scene", scene)]
        fraction = _num(by_method[baseline].get("clip_fraction", "nan"))
        if mode == "clip" and np.isfinite(fraction):  # by the input's clipped fraction (CLIP_BINS)
            keys.append(("clipped", family, _clip_bin(fraction)))
        for m in methods:
            if m in by_method:
                d = [_num(by_method[m][k]) - _num(by_method[baseline][k]) for k in SCORES]
                for key in keys:
                    groups[key][m].append(d)
    lines = [f"Mean (method - {baseline}) by simulated camera; positive = the method is better:", ""]
    if held:
        lines += [f"Response families the train split never drew: {', '.join(held)}.", ""]
    lines += ["| group | method | images | " + " | ".join(SCORES) + " |",
              "| --- | --- | ---: |" + " ---: |" * len(SCORES)]
    for key in sorted(groups, key=lambda k: (len(k), k)):
        for m, ds in groups[key].items():
            with warnings.catch_warnings():  # a group without clipped pixels: nan, not a warning
                warnings.simplefilter("ignore", RuntimeWarning)
                mean = np.nanmean(np.array(ds), axis=0)
            lines.append(f"| {'/'.join(key)} | {m} | {len(ds)} | " + " | ".join(f"{v:+.3f}" for v in mean) + " |")
    return "\n".join(lines) + "\n"


def weakest_scores(per_image: list[Path], baseline: str = "linear") -> str:
    """Per method, the t-statistic of its per-image difference to ``baseline`` for each score (mean over images
    / standard error, images without the score left out), and the weakest of them, as markdown. The rows of
    several ``per_image.csv`` files are merged by image id (each method once per id), so methods scored in
    different runs on the same pairs compare on the same images."""
    import math

    rows = _per_image_rows(per_image)
    methods = sorted({m for r in rows.values() for m in r} - {baseline})
    if not any(baseline in r for r in rows.values()):
        raise ValueError(f"no image has a result of the baseline {baseline!r}")

    lines = [f"t-statistic of the per-image difference (method - {baseline}) over the images both have; "
             "positive = the method is better:", "",
             "| method | images | " + " | ".join(SCORES) + " | weakest |", "| --- | ---: |" + " ---: |" * (len(SCORES) + 1)]
    for m in methods:
        both = [r for r in rows.values() if m in r and baseline in r]
        ts = []
        for k in SCORES:
            d = np.array([_num(r[m].get(k)) - _num(r[baseline].get(k)) for r in both])
            d = d[np.isfinite(d)]
            sd = d.std(ddof=1) if d.size > 1 else float("nan")
            ts.append(d.mean() / (sd / math.sqrt(d.size)) if d.size > 1 and sd > 0 else float("nan"))
        weakest = int(np.nanargmin(ts)) if np.isfinite(ts).any() else None
        tail = f"{ts[weakest]:.2f} ({SCORES[weakest]})" if weakest is not None else "-"
        lines.append(f"| {m} | {len(both)} | " + " | ".join(f"{t:.2f}" for t in ts) + f" | {tail} |")
    return "\n".join(lines) + "\n"


def table(results: dict[str, dict[str, tuple[np.ndarray, int]]]) -> str:
    lines = ["| model | " + " | ".join(f"{r}: up / mid / down (images)" for r in REGIONS) + " |",
             "| --- |" + " ---: |" * len(REGIONS)]
    for name, stats in results.items():
        cells = []
        for r in REGIONS:
            m, n = stats[r]
            cells.append(f"{m[0]:.3f} / {m[1]:.3f} / {m[2]:.3f} ({n})" if n else "- (0)")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _clipped_luminance(pred: np.ndarray, gt: np.ndarray, ldr01: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(Y of the scale-aligned pred, Y of gt)`` over the clipped pixels of ``ldr01`` (1-D, the same pixels)."""
    from . import metrics as M

    clip = M.clipped_mask(ldr01)
    return M.luminance(pred * M.align_scale(pred, gt, ldr01))[clip], M.luminance(gt)[clip]


def clipped_stats(pred: np.ndarray, gt: np.ndarray, ldr01: np.ndarray, min_pixels: int) -> tuple[float, float] | None:
    """``(std of log Y, median Y)`` of the scale-aligned ``pred`` (``(H, W, 3)`` linear) over the clipped pixels
    of ``ldr01`` (``(H, W, 3)`` in [0, 1]), or ``None`` when fewer than ``min_pixels`` are clipped."""
    y, _ = _clipped_luminance(pred, gt, ldr01)
    if y.size < min_pixels:
        return None
    y = y[y > 0]
    if y.size == 0:
        return None
    return float(np.std(np.log(y))), float(np.median(y))


def highlights(pairs: Path, weights: list[tuple[str, str]], min_pixels: int, limit: int | None = None) -> str:
    """The ``--highlights`` table for the ground truth, the linearized input and each ``(name, path)``."""
    import sitm_trt
    from sitm_trt.media.io import read_hdr

    from .baselines import BASELINES, _ldr01

    files = sorted(f for f in pairs.iterdir() if f.suffix.lower() in _IMAGE_SUFFIXES and f.with_suffix(".exr").is_file())
    files = files[:limit]
    if not files:
        raise ValueError(f"{pairs}: no (LDR, .exr) pairs")
    pipes = {name: sitm_trt.Pipeline(sitm_trt.load(path), backend="torch", precision="fp32") for name, path in weights}
    stats: dict[str, list[tuple[float, float]]] = {"ground truth": [], "linear": [], **{n: [] for n in pipes}}
    for f in files:
        ldr, gt = read_ldr(f), read_hdr(f.with_suffix(".exr"))
        ldr01 = np.asarray(_ldr01(ldr), np.float64)
        outs = {"ground truth": gt, "linear": BASELINES["linear"](ldr)}
        for name, pipe in pipes.items():
            outs[name] = np.asarray(pipe(np.ascontiguousarray(ldr), layout="hwc")).reshape(gt.shape)
        for name, out in outs.items():
            st = clipped_stats(np.asarray(out, np.float64), gt, ldr01, min_pixels)
            if st is not None:
                stats[name].append(st)
    lines = [f"Clipped input pixels (max_c > 0.95) of `{pairs}`, results scale-aligned to the ground truth:", "",
             "| result | images | std of log luminance (detail) | median luminance (1 = clip level) |",
             "| --- | ---: | ---: | ---: |"]
    for name, rows in stats.items():
        if rows:
            a = np.array(rows)
            lines.append(f"| {name} | {len(a)} | {a[:, 0].mean():.3f} | {np.median(a[:, 1]):.2f} |")
        else:
            lines.append(f"| {name} | 0 | - | - |")
    return "\n".join(lines) + "\n"


def clip_log_ratio(pred: np.ndarray, gt: np.ndarray, ldr01: np.ndarray, min_pixels: int) -> float | None:
    """Mean ``log2(Y_pred / Y_gt)`` over the clipped pixels of ``ldr01`` (both luminances positive), ``pred``
    scale-aligned to ``gt`` as the evaluation does; ``None`` with fewer than ``min_pixels`` such pixels."""
    yp, yg = _clipped_luminance(pred, gt, ldr01)
    ok = (yp > 0) & (yg > 0) & np.isfinite(yp) & np.isfinite(yg)
    if np.count_nonzero(ok) < min_pixels:
        return None
    return float(np.mean(np.log2(yp[ok] / yg[ok])))


def _sample_files(samples: Path, every: int = 1, limit: int | None = None) -> list[Path]:
    """Every ``every``-th ``.npz`` sample of ``samples`` (sorted by name), the first ``limit`` of those."""
    if every < 1:
        raise ValueError(f"--every must be >= 1, got {every}")
    files = sorted(samples.glob("*.npz"))[::every][:limit]
    if not files:
        raise ValueError(f"{samples}: no .npz samples")
    return files


def _scene_and_camera(sample) -> tuple[str, str]:
    """``("procedural" | "real", the camera's response family)`` of a loaded sample."""
    from .data import camera_family

    return "procedural" if sample.source.startswith("procedural/") else "real", camera_family(sample.meta) or "?"


def clip_bias(samples: Path, weights: list[tuple[str, str]], min_pixels: int, every: int = 1,
              limit: int | None = None) -> str:
    """The ``--clip-bias`` table: per (scene kind, camera family, clipped-fraction bin) the mean over samples of
    :func:`clip_log_ratio` for the linearized input and each ``(name, path)``."""
    import sitm_trt

    from . import metrics as M
    from .baselines import BASELINES, _ldr01
    from .data import load_sample

    files = _sample_files(samples, every, limit)
    pipes = {name: sitm_trt.Pipeline(sitm_trt.load(path), backend="torch", precision="fp32") for name, path in weights}
    names = ["linear", *pipes]
    groups: dict[tuple[str, str, str], dict[str, list[float]]] = {}
    for f in files:
        sample = load_sample(f)  # a corrupt file: ValueError naming it
        if sample.meta.get("exposure", {}).get("mode") != "clip":
            continue
        ldr, gt = sample.ldr, sample.hdr.astype(np.float64)
        ldr01 = np.asarray(_ldr01(ldr), np.float64)
        key = (*_scene_and_camera(sample), _clip_bin(float(np.mean(M.clipped_mask(ldr01)))))
        outs = {"linear": BASELINES["linear"](ldr)}
        for name, pipe in pipes.items():
            outs[name] = np.asarray(pipe(np.ascontiguousarray(ldr), layout="hwc")).reshape(gt.shape)
        values = {name: clip_log_ratio(np.asarray(outs[name], np.float64), gt, ldr01, min_pixels) for name in names}
        if any(v is None for v in values.values()):
            continue
        row = groups.setdefault(key, {name: [] for name in names})
        for name in names:
            row[name].append(values[name])  # type: ignore[arg-type]
    lines = [f"Mean log2(result / truth) over the input's clipped pixels (max_c > 0.95), results scale-aligned, "
             f"{len(files)} samples of `{samples}` (clip-mode ones with >= {min_pixels} clipped pixels):", "",
             "| scenes | camera | clipped fraction | images | " + " | ".join(names) + " |",
             "| --- | --- | --- | ---: | " + " | ".join("---:" for _ in names) + " |"]
    for key in sorted(groups):
        row = groups[key]
        lines.append(f"| {key[0]} | {key[1]} | {key[2]} | {len(row['linear'])} | "
                     + " | ".join(f"{np.mean(row[n]):+.2f}" for n in names) + " |")
    return "\n".join(lines) + "\n"


def coefficients(samples: Path, weights: list[tuple[str, str]], limit: int | None = None) -> str:
    """The ``--coefficients`` table: per weights file, scene kind and camera family, the mean and standard
    deviation over the samples of the network's whole-frame coefficients ``coef`` (the residual fusion's
    ``k0, k1, k2``: exposure gains in EV and the curve's log-exponent; Eq. 8's ``a0..a2`` for the paper fusion)."""
    from sitm_trt.model import load_weights

    from .data import load_sample

    files = _sample_files(samples, limit=limit)
    nets = [(name, load_weights(path).eval()) for name, path in weights]
    rows: dict[tuple[str, str, str], list[np.ndarray]] = {}
    with torch.no_grad():
        for f in files:
            sample = load_sample(f)  # a corrupt file: ValueError naming it
            group = _scene_and_camera(sample)
            frame = torch.from_numpy(np.ascontiguousarray(sample.ldr))  # uint8 (H, W, 3)
            for name, net in nets:
                out = net(*ops.pre(frame, stride=net.stride))
                rows.setdefault((name, *group), []).append(out.coef[0, :3].double().numpy())
    lines = [f"Whole-frame coefficients over {len(files)} samples of `{samples}`, mean +- standard deviation "
             "(residual fusion: k0, k1 the exposure gains in EV, k2 = log gamma of the curve):", "",
             "| weights | scenes | camera | images | k0 | k1 | k2 |", "| --- | --- | --- | ---: | ---: | ---: | ---: |"]
    for key in sorted(rows):
        a = np.array(rows[key])
        cells = " | ".join(f"{m:+.3f} +- {sd:.3f}" for m, sd in zip(a.mean(0), a.std(0)))
        lines.append(f"| {key[0]} | {key[1]} | {key[2]} | {len(a)} | {cells} |")
    return "\n".join(lines) + "\n"


def fixed_curve_variants(weights: list[tuple[str, str]], exponents: list[float], folder: Path) -> str:
    """``--fix-curve``: for each residual-fusion weights file and each ``k`` in ``exponents``, a copy whose curve
    log-exponent ``k2`` is ``k`` for every picture (the coefficient head's row 2: weights 0, bias ``k``; all else
    unchanged), written to ``folder/NAME-k2=K.safetensors``. Evaluating them side by side shows which fixed curve
    each camera wants (training/LOG.md, "Sixteenth round")."""
    from sitm_trt.model import load_weights, save_weights

    nets = [(name, path, load_weights(path)) for name, path in weights]
    for _, path, net in nets:  # every file checked before anything is written
        if net.preset.fusion != "residual":
            raise ValueError(f"{path}: --fix-curve needs residual-fusion weights (fusion {net.preset.fusion!r})")
    lines = ["| weights | k2 | file |", "| --- | ---: | --- |"]
    folder.mkdir(parents=True, exist_ok=True)
    for name, _, net in nets:
        for k in exponents:  # only the curve's row changes between the copies
            net.mefm.fix_curve(k)
            out = folder / f"{name}-k2={k:g}.safetensors"
            save_weights(net, out)
            lines.append(f"| {name} | {k:+g} | `{out}` |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m sitm_training.diagnose", description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=Path, help="a folder of LDR images (e.g. an exported pairs folder)")
    p.add_argument("--weights", action="append", help="NAME=PATH or PATH (repeatable)")
    p.add_argument("--highlights", action="store_true",
                   help="with --images PAIRS: detail and level of each result in the input's clipped pixels")
    p.add_argument("--clip-bias", action="store_true",
                   help="with --samples DIR and --weights: mean log2(result / truth) in the input's clipped pixels by "
                        "scene kind, camera family and clipped fraction")
    p.add_argument("--coefficients", action="store_true",
                   help="with --samples DIR and --weights: the network's whole-frame coefficients (the residual "
                        "fusion's exposure gains and curve exponent) by scene kind and camera family")
    p.add_argument("--fix-curve", type=float, nargs="+", metavar="K",
                   help="with --weights and --variants DIR: write a copy of each residual-fusion weights file whose curve "
                        "log-exponent k2 is K for every picture, one per K")
    p.add_argument("--variants", type=Path, help="with --fix-curve: the folder the copies go to")
    p.add_argument("--every", type=int, default=1, help="with --clip-bias: every K-th sample (sorted by name)")
    p.add_argument("--per-image", type=Path, help="an evaluation's per_image.csv (instead of --images/--weights)")
    p.add_argument("--weakest", type=Path, nargs="+", metavar="CSV",
                   help="per_image.csv files: per method the t-statistic of each score's difference to --baseline, "
                        "and the weakest (the rule that picks between candidates off the test split)")
    p.add_argument("--samples", type=Path,
                   help="the samples' .npz folder (e.g. data/sitm256/test): with --per-image, required; with --images, "
                        "one row per exposure mode of the samples (clipping / under-exposed)")
    p.add_argument("--baseline", default="linear", help="with --per-image or --weakest: the method to compare against")
    p.add_argument("--limit", type=int, default=None, help="the first N images (sorted by name)")
    p.add_argument("--min-pixels", type=int, default=50)
    p.add_argument("--out", type=Path, default=None, help="also write the table here")
    args = p.parse_args(argv)
    try:
        text = _run(args)
    except _UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(text, end="")
    if args.out is not None:
        atomic_write(args.out, text.encode())
    return 0


class _UsageError(Exception):
    """Bad arguments or inputs: the CLI prints the message and exits with 2."""


def _weight_specs(specs: list[str]) -> list[tuple[str, str]]:
    """``NAME=PATH`` or ``PATH`` (named by its stem) -> ``(name, path)``, every file checked to exist."""
    pairs = [tuple(spec.rpartition("=")[::2]) if "=" in spec else (Path(spec).stem, spec) for spec in specs]
    missing = [path for _, path in pairs if not Path(path).is_file()]
    if missing:
        raise _UsageError(f"{missing[0]}: no such weights file")
    return pairs


def _run(args: argparse.Namespace) -> str:
    """The table the arguments ask for, as markdown."""
    if args.weakest:
        missing = [f for f in args.weakest if not f.is_file()]
        if missing:
            raise _UsageError(f"{missing[0]}: no such file")
        try:
            return weakest_scores(args.weakest, args.baseline)
        except (ValueError, KeyError) as err:
            raise _UsageError(str(err)) from err
    if args.clip_bias:
        if args.samples is None or not args.samples.is_dir() or not args.weights:
            raise _UsageError("--clip-bias needs --samples DIR (a split's .npz folder) and --weights")
        try:
            return clip_bias(args.samples, _weight_specs(args.weights), args.min_pixels, args.every, args.limit)
        except ValueError as err:
            raise _UsageError(str(err)) from err
    if args.fix_curve:
        if args.variants is None or not args.weights:
            raise _UsageError("--fix-curve needs --weights and --variants DIR")
        if not all(math.isfinite(k) for k in args.fix_curve):
            raise _UsageError(f"--fix-curve: exponents must be finite, got {args.fix_curve}")
        try:
            return fixed_curve_variants(_weight_specs(args.weights), args.fix_curve, args.variants)
        except ValueError as err:
            raise _UsageError(str(err)) from err
    if args.coefficients:
        if args.samples is None or not args.samples.is_dir() or not args.weights:
            raise _UsageError("--coefficients needs --samples DIR (a split's .npz folder) and --weights")
        try:
            return coefficients(args.samples, _weight_specs(args.weights), args.limit)
        except ValueError as err:
            raise _UsageError(str(err)) from err
    if args.per_image is not None:
        if args.samples is None or not args.samples.is_dir() or not args.per_image.is_file():
            raise _UsageError("--per-image needs an existing per_image.csv and --samples DIR")
        try:
            return by_camera(args.per_image, args.samples, args.baseline)
        except ValueError as err:
            raise _UsageError(str(err)) from err
    if args.images is None or not args.weights:
        raise _UsageError("give --images DIR and --weights, or --per-image CSV --samples DIR")
    if not args.images.is_dir():
        raise _UsageError(f"{args.images}: no such folder")
    specs = _weight_specs(args.weights)
    if args.highlights:
        try:
            return highlights(args.images, specs, args.min_pixels, args.limit)
        except ValueError as err:
            raise _UsageError(str(err)) from err
    files = sorted(f for f in args.images.iterdir() if f.suffix.lower() in _IMAGE_SUFFIXES)[:args.limit]
    if not files:
        raise _UsageError(f"{args.images}: no images ({', '.join(_IMAGE_SUFFIXES)})")
    try:
        groups = exposure_groups(files, args.samples) if args.samples is not None else {"": files}
    except (OSError, KeyError, ValueError) as err:
        raise _UsageError(f"--samples {args.samples}: {err}") from err
    results = {}
    for name, path in specs:
        masks_of = network_masks(path)
        for group, members in groups.items():
            row = f"{name}, {group} inputs ({len(members)})" if group else name
            results[row] = mask_stats(masks_of, (read_ldr(f) for f in members), args.min_pixels)
    return f"Masks of Eq. 7 by input region, over {len(files)} images of `{args.images}`:\n\n" + table(results)

if __name__ == "__main__":
    sys.exit(main())
