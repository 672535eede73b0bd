"""Where a model's fusion masks (Eq. 7) take each image: mean ``M_up`` / ``M_mid`` / ``M_down`` by input region.

``python -m sitm_training.diagnose --images DIR --weights NAME=PATH [--weights ...] [--limit N]``

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
    p.add_argument("--images", type=Path, required=True, help="a folder of LDR images (e.g. an exported pairs folder)")
    p.add_argument("--weights", action="append", required=True, help="NAME=PATH or PATH (repeatable)")
    p.add_argument("--limit", type=int, default=None, help="the first N images (sorted by name)")
    p.add_argument("--min-pixels", type=int, default=50)
    p.add_argument("--out", type=Path, default=None, help="also write the table here")
    args = p.parse_args(argv)
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
