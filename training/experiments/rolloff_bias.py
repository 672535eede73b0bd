"""Does the way the input rolls into a clipped region tell how far the truth lies above it? Per simulated camera,
over clip-mode samples: each 8-connected region of clipped pixels (input max RGB >= 0.99, at least 16 pixels) is
put in a class by its ring's level, the mean input max RGB over the pixels 1 to 4 pixels outside it (a smooth
region that only just clips is ringed by nearly clipped pixels; a lamp by darker ones). The table gives, per class,
the mean over regions of ``mean log2(Y_truth / Y_linear)`` inside the region (how much a method must brighten) and
of ``mean log2(Y_result / Y_truth)`` for each method (results scale-aligned as the evaluation does). A local cue
that tells a sky from a lamp on every camera would show the same trend on each. The nineteenth round
(training/LOG.md).

``python training/experiments/rolloff_bias.py data/heldout-aces/val [NAME=WEIGHTS ...]``"""
import sys
from pathlib import Path

import cv2
import numpy as np

from band_bias import aligned_views  # this folder's probes: the same samples, methods and alignment
from region_bias import clipped_regions, mean_log2_ratio, table

CLASSES = ((0.0, 0.6), (0.6, 0.75), (0.75, 0.85), (0.85, 0.92), (0.92, 1.01))  # the ring's mean max RGB
MIN_PIXELS = 16
RING = 4


def main(samples: Path, specs: list[str]) -> str:
    names, views = aligned_views(samples, specs)
    need: dict[tuple, list[float]] = {}
    bias: dict[tuple, list[float]] = {}
    kernel = np.ones((2 * RING + 1, 2 * RING + 1), np.uint8)
    for camera, m, mx, yg, ys in clipped_regions(views, MIN_PIXELS):
        ring = (cv2.dilate(m.astype(np.uint8), kernel) > 0) & (mx < 0.99)
        if ring.sum() < MIN_PIXELS:  # a region that fills the frame's edge has no ring to read
            continue
        level = float(mx[ring].mean())
        k = next(i for i, (lo, hi) in enumerate(CLASSES) if lo <= level < hi)
        need.setdefault((camera, k), []).append(mean_log2_ratio(yg, ys["linear"], m))
        for n in names:
            bias.setdefault((camera, k, n), []).append(mean_log2_ratio(ys[n], yg, m))
    lines = []
    for camera in sorted({c for c, _ in need}):
        rows = [[f"{lo:g}-{min(hi, 1):g}", str(len(need[(camera, k)])), f"{np.mean(need[(camera, k)]):+.2f}"]
                + [f"{np.mean(bias[(camera, k, n)]):+.2f}" for n in names]
                for k, (lo, hi) in enumerate(CLASSES) if (camera, k) in need]
        lines += table(f"{camera}: per clipped region by its ring's mean max RGB: regions, mean log2(truth / linear), "
                       "and mean log2(result / truth) per method", ["ring level", "regions", "truth above linear",
                                                                    *names], rows)
    return "\n".join(lines)

if __name__ == "__main__":
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    print(main(Path(sys.argv[1]), sys.argv[2:]))
