"""Where a model's fusion masks (Eq. 7) take each image: mean ``M_up`` / ``M_mid`` / ``M_down`` by input region.

``python -m sitm_training.diagnose --images DIR --weights NAME=PATH [--weights ...] [--limit N]``

and, for an evaluation of the project's own test samples, where a model wins or loses against a baseline by
the simulated camera of each sample (exposure mode and response curve, from the samples' ``meta``):

``python -m sitm_training.diagnose --per-image EVAL/per_image.csv --samples data/sitm256/test [--baseline linear]``

Regions of the LDR input ``I`` (in [0, 1], after the pre kernel's normalization):

* ``dark``: ``min_c I < 0.05`` (the shadows, where AUEM's exposure-up image can add detail)
* ``well``: ``0.2 < max_c I < 0.8`` (well exposed: the input itself is the best evidence)
* ``bright``: ``0.8 <= max_c I <= 0.95``
* ``clipped``: ``max_c I > 0.95`` (where ADEM's exposure-down image can add detail)

``dark`` is judged by the darkest channel and the others by the brightest, so a pixel with one dark channel
can be in ``dark`` and in another region.

Each image contributes its mean masks over a region when the region has at least ``--min-pixels`` pixels;
the table gives the mean over those images and how many there were. A model whose masks are ``(0, 1, 0)``
everywhere has reduced Eq. 7 to the input and does all its work in the curve (docs/training.md, "Status").
Writes a markdown table to stdout (and ``--out FILE`` atomically).
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch

from sitm_trt import ops
from sitm_trt.io import read_ldr, write_bytes_atomic

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


SCORES = ("pu21_psnr", "pu21_ssim", "jod", "mu_psnr", "tm_psnr", "tm_ssim", "clip_pu21_psnr")


def by_camera(per_image: Path, samples: Path, baseline: str = "linear") -> str:
    """Mean (method - baseline) per score, grouped by exposure mode and by (mode, response), as markdown.

    ``per_image``: the ``per_image.csv`` of ``python -m sitm_training.evaluate``; ``samples``: the folder of
    the samples' ``.npz`` files (``meta`` holds the camera). Rows with a failed method are left out."""
    import csv
    from collections import defaultdict

    from sitm_training.data import load_sample_meta

    rows: dict[str, dict[str, dict[str, str]]] = defaultdict(dict)
    with open(per_image, newline="") as f:
        for r in csv.DictReader(f):
            if r["status"] == "ok":
                rows[r["id"]][r["method"]] = r
    methods = sorted({m for r in rows.values() for m in r} - {baseline})
    groups: dict[tuple, dict[str, list[list[float]]]] = defaultdict(lambda: defaultdict(list))

    def num(v: str) -> float:
        return float(v) if v not in ("", "nan", "None") else float("nan")

    for sid, by_method in rows.items():
        if baseline not in by_method:
            continue
        meta = load_sample_meta(samples / f"{sid}.npz")
        mode, response = meta["exposure"]["mode"], meta["camera"]["response"]["kind"]
        for m in methods:
            if m in by_method:
                d = [num(by_method[m][k]) - num(by_method[baseline][k]) for k in SCORES]
                for key in (("all",), (mode,), (mode, response)):
                    groups[key][m].append(d)
    lines = [f"Mean (method - {baseline}) by simulated camera; positive = the method is better:", "",
             "| group | method | images | " + " | ".join(SCORES) + " |", "| --- | --- | ---: |" + " ---: |" * len(SCORES)]
    for key in sorted(groups, key=lambda k: (len(k), k)):
        for m, ds in groups[key].items():
            with warnings.catch_warnings():  # a group without clipped pixels: nan, not a warning
                warnings.simplefilter("ignore", RuntimeWarning)
                mean = np.nanmean(np.array(ds), axis=0)
            lines.append(f"| {'/'.join(key)} | {m} | {len(ds)} | " + " | ".join(f"{v:+.3f}" for v in mean) + " |")
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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m sitm_training.diagnose", description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=Path, help="a folder of LDR images (e.g. an exported pairs folder)")
    p.add_argument("--weights", action="append", help="NAME=PATH or PATH (repeatable)")
    p.add_argument("--per-image", type=Path, help="an evaluation's per_image.csv (instead of --images/--weights)")
    p.add_argument("--samples", type=Path, help="with --per-image: the samples' .npz folder (e.g. data/sitm256/test)")
    p.add_argument("--baseline", default="linear", help="with --per-image: the method to compare against")
    p.add_argument("--limit", type=int, default=None, help="the first N images (sorted by name)")
    p.add_argument("--min-pixels", type=int, default=50)
    p.add_argument("--out", type=Path, default=None, help="also write the table here")
    args = p.parse_args(argv)
    if args.per_image is not None:
        if args.samples is None or not args.samples.is_dir() or not args.per_image.is_file():
            print("error: --per-image needs an existing per_image.csv and --samples DIR", file=sys.stderr)
            return 2
        text = by_camera(args.per_image, args.samples, args.baseline)
        print(text, end="")
        if args.out is not None:
            write_bytes_atomic(args.out, text.encode())
        return 0
    if args.images is None or not args.weights:
        print("error: give --images DIR and --weights, or --per-image CSV --samples DIR", file=sys.stderr)
        return 2
    if not args.images.is_dir():
        print(f"error: {args.images}: no such folder", file=sys.stderr)
        return 2
    files = sorted(f for f in args.images.iterdir() if f.suffix.lower() in _IMAGE_SUFFIXES)[:args.limit]
    if not files:
        print(f"error: {args.images}: no images ({', '.join(_IMAGE_SUFFIXES)})", file=sys.stderr)
        return 2
    results = {}
    for spec in args.weights:
        name, _, path = spec.rpartition("=") if "=" in spec else (Path(spec).stem, "", spec)
        if not Path(path).is_file():
            print(f"error: {path}: no such weights file", file=sys.stderr)
            return 2
        results[name] = mask_stats(network_masks(path), (read_ldr(f) for f in files), args.min_pixels)
    text = f"Masks of Eq. 7 by input region, over {len(files)} images of `{args.images}`:\n\n" + table(results)
    print(text, end="")
    if args.out is not None:
        write_bytes_atomic(args.out, text.encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
