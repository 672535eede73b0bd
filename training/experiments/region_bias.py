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


def main(samples: Path, specs: list[str]) -> str:
    names, views = aligned_views(samples, specs)
    acc: dict[tuple, list[float]] = {}
    for x, camera, yg, ys in views:
        n_reg, labels = cv2.connectedComponents((x.max(axis=2) >= 0.99).astype(np.uint8), connectivity=8)
        for r in range(1, n_reg):
            m = labels == r
            if m.sum() < MIN_PIXELS:
                continue
            share = m.mean()
            k = next(i for i, (lo, hi) in enumerate(CLASSES) if lo <= share < hi)
            truth = np.log2(np.maximum(yg[m], 1e-9))
            for n in names:
                acc.setdefault((camera, k, n), []).append(float(np.mean(np.log2(np.maximum(ys[n][m], 1e-9)) - truth)))
    lines = []
    for camera in sorted({c for c, _, _ in acc}):
        lines += [f"\n{camera}: per clipped region, mean log2(result / truth) by the region's share of the image "
                  "(regions)", "", "| share | regions | " + " | ".join(names) + " |",
                  "| --- | ---: |" + " ---: |" * len(names)]
        for k, (lo, hi) in enumerate(CLASSES):
            if (camera, k, "linear") not in acc:
                continue
            row = [f"{lo:g}-{min(hi, 1):g}", str(len(acc[(camera, k, "linear")]))]
            row += [f"{np.mean(acc[(camera, k, n)]):+.2f}" for n in names]
            lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    print(main(Path(sys.argv[1]), sys.argv[2:]))
