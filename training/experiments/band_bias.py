"""Where each method is too bright or too dark, by how bright the input is: per simulated camera, the mean over
clip-mode samples of ``mean log2(Y_result / Y_truth)`` over the pixels whose input max RGB falls in each band
(results scale-aligned as the evaluation does; a band needs 50 such pixels in a sample). Methods: the linearized
input, the Rempel-style expansion and each ``NAME=WEIGHTS``. The seventeenth round (training/LOG.md).

``python training/experiments/band_bias.py data/heldout-aces/val [NAME=WEIGHTS ...]``"""
import sys
from pathlib import Path

import numpy as np

import sitm_trt
from sitm_training import metrics as M
from sitm_training.baselines import BASELINES, _ldr01
from sitm_training.data import load_sample
from sitm_training.diagnose import _scene_and_camera

BANDS = ((0.0, 0.5), (0.5, 0.7), (0.7, 0.85), (0.85, 0.95), (0.95, 1.01))  # max_c(I); the last: the clipped pixels
MIN_PIXELS = 50


def pipelines(specs: list[str]) -> dict:
    """``{NAME: Pipeline}`` (torch, fp32) for each ``NAME=WEIGHTS``. Shared with ``clipped_colour.py``."""
    pipes = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep:
            raise SystemExit(f"expected NAME=WEIGHTS, got {spec!r}")
        pipes[name] = sitm_trt.Pipeline(sitm_trt.load(path), backend="torch", precision="fp32")
    return pipes


def aligned_views(samples: Path, specs: list[str]):
    """``(names, views)``: the methods (the linearized input, the Rempel-style expansion, each ``NAME=WEIGHTS``)
    and, per clip-mode sample, ``(x, camera, y_truth, {name: y})``, ``x`` the input in [0, 1] and ``y`` the
    luminance of each result scale-aligned as the evaluation does. Shared with ``region_bias.py``."""
    pipes = pipelines(specs)
    names = ["linear", "rempel", *pipes]

    def views():
        for f in sorted(samples.glob("*.npz")):
            s = load_sample(f)
            if s.meta.get("exposure", {}).get("mode") != "clip":
                continue
            ldr, gt = s.ldr, s.hdr.astype(np.float64)
            x = np.asarray(_ldr01(ldr), np.float64)
            outs = {"linear": BASELINES["linear"](ldr), "rempel": BASELINES["rempel"](ldr)}
            for name, pipe in pipes.items():
                outs[name] = np.asarray(pipe(np.ascontiguousarray(ldr), layout="hwc")).reshape(gt.shape)
            ys = {}
            for name in names:
                out = np.asarray(outs[name], np.float64)
                ys[name] = M.luminance(out * M.align_scale(out, gt, x))
            yield x, _scene_and_camera(s)[1], M.luminance(gt), ys

    return names, views()


def main(samples: Path, specs: list[str]) -> str:
    names, views = aligned_views(samples, specs)
    acc: dict[tuple, list[float]] = {}
    for x, camera, yg, ys in views:
        mx = x.max(axis=2)
        for name in names:
            yp = ys[name]
            for band in BANDS:
                sel = (mx >= band[0]) & (mx < band[1]) & (yp > 0) & (yg > 0)
                if np.count_nonzero(sel) >= MIN_PIXELS:
                    acc.setdefault((camera, band, name), []).append(float(np.mean(np.log2(yp[sel] / yg[sel]))))
    lines = []
    for camera in sorted({k[0] for k in acc}):
        lines += ["", f"{camera}: mean log2(result / truth) by the input's max RGB (samples)", "",
                  "| max RGB | " + " | ".join(names) + " |", "| --- | " + " | ".join("---:" for _ in names) + " |"]
        for band in BANDS:
            cells = [f"{np.mean(acc[camera, band, n]):+.2f} ({len(acc[camera, band, n])})"
                     if (camera, band, n) in acc else "-" for n in names]
            lines.append(f"| {band[0]:.2f}-{min(band[1], 1.0):.2f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    print(main(Path(sys.argv[1]), sys.argv[2:]))
