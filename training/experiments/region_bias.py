"""Is the error on clipped pixels a matter of the clipped region's size? Per simulated camera, over clip-mode
samples: each 8-connected region of clipped pixels (input max RGB >= 0.99) is put in a size class by its share of
the image, and the table gives the mean over regions of ``mean log2(Y_result / Y_truth)`` inside it (results
scale-aligned as the evaluation does; minus the ``linear`` column is how far the truth lies above the linearized
input there). A size-aware prior is worth building only if the size classes want different gains. The eighteenth round (training/LOG.md).

``python training/experiments/region_bias.py data/heldout-aces/val [NAME=WEIGHTS ...]``"""
import sys
from pathlib import Path

import cv2
import numpy as np

from band_bias import aligned_views  # this folder's probe: the same samples, methods and alignment

CLASSES = ((0.0, 0.001), (0.001, 0.01), (0.01, 0.05), (0.05, 1.01))  # share of the image's pixels
MIN_PIXELS = 4


def clipped_regions(views, min_pixels: int):
    """Each 8-connected region of clipped pixels (input max RGB >= 0.99) of at least ``min_pixels`` in
    ``aligned_views``' views: ``(camera, region mask, the input's max RGB, truth luminance, {name: luminance})``.
    Shared with ``rolloff_bias.py``."""
    for x, camera, yg, ys in views:
        mx = x.max(axis=2)
        n_reg, labels = cv2.connectedComponents((mx >= 0.99).astype(np.uint8), connectivity=8)
        for r in range(1, n_reg):
            m = labels == r
            if m.sum() >= min_pixels:
                yield camera, m, mx, yg, ys


def mean_log2_ratio(a: np.ndarray, b: np.ndarray, m: np.ndarray) -> float:
    """``mean log2(a / b)`` over the pixels ``m`` (both floored at 1e-9)."""
    return float(np.mean(np.log2(np.maximum(a[m], 1e-9)) - np.log2(np.maximum(b[m], 1e-9))))


def table(title: str, head: list[str], rows: list[list[str]]) -> list[str]:
    """A titled Markdown table, the first column left-aligned and the others right-aligned."""
    return [f"\n{title}", "", "| " + " | ".join(head) + " |", "| --- |" + " ---: |" * (len(head) - 1),
            *("| " + " | ".join(row) + " |" for row in rows)]


def main(samples: Path, specs: list[str]) -> str:
    names, views = aligned_views(samples, specs)
    acc: dict[tuple, list[float]] = {}
    for camera, m, _, yg, ys in clipped_regions(views, MIN_PIXELS):
        share = m.mean()
        k = next(i for i, (lo, hi) in enumerate(CLASSES) if lo <= share < hi)
        for n in names:
            acc.setdefault((camera, k, n), []).append(mean_log2_ratio(ys[n], yg, m))
    lines = []
    for camera in sorted({c for c, _, _ in acc}):
        rows = [[f"{lo:g}-{min(hi, 1):g}", str(len(acc[(camera, k, "linear")]))]
                + [f"{np.mean(acc[(camera, k, n)]):+.2f}" for n in names]
                for k, (lo, hi) in enumerate(CLASSES) if (camera, k, "linear") in acc]
        lines += table(f"{camera}: per clipped region, mean log2(result / truth) by the region's share of the image "
                       "(regions)", ["share", "regions", *names], rows)
    return "\n".join(lines)

if __name__ == "__main__":
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    print(main(Path(sys.argv[1]), sys.argv[2:]))
