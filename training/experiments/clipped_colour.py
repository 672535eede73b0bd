"""Is the colour a model gives a fully clipped pixel right? Per simulated camera, over clip-mode samples and the
pixels whose input is clipped in all three channels (min RGB >= 0.99: the camera wrote a neutral white there),
the mean of ``log2(R/G)`` and ``log2(B/G)`` of each result and of the truth, and each method's mean absolute
error against the truth's (a neutral method, such as the linearized input, scores the truth's own tint). A
sample counts with at least 50 such pixels; means are over samples. The review item of session 21: the
`filmic` weights tint a clipped white warm on a warm picture; this asks whether the truth is warm there too.

``python training/experiments/clipped_colour.py data/heldout-aces/val [NAME=WEIGHTS ...]``"""
import sys
from pathlib import Path

import numpy as np

from band_bias import pipelines  # this folder's probes: the same NAME=WEIGHTS pipelines
from sitm_training.baselines import BASELINES, _ldr01
from sitm_training.data import load_sample
from sitm_training.diagnose import _scene_and_camera

MIN_PIXELS = 50
EPS = 1e-6


def tints(rgb: np.ndarray, m: np.ndarray) -> tuple[float, float]:
    """Mean ``log2(R/G)`` and ``log2(B/G)`` over the pixels ``m`` of an HxWx3 image."""
    p = np.maximum(rgb[m].astype(np.float64), EPS)
    return float(np.mean(np.log2(p[:, 0] / p[:, 1]))), float(np.mean(np.log2(p[:, 2] / p[:, 1])))


def main(samples: Path, specs: list[str]) -> str:
    pipes = pipelines(specs)
    names = ["linear", *pipes]
    acc: dict[tuple, list[tuple[float, float]]] = {}
    for f in sorted(samples.glob("*.npz")):
        s = load_sample(f)
        if s.meta.get("exposure", {}).get("mode") != "clip":
            continue
        x = np.asarray(_ldr01(s.ldr), np.float64)
        m = x.min(axis=2) >= 0.99
        if m.sum() < MIN_PIXELS:
            continue
        camera = _scene_and_camera(s)[1]
        acc.setdefault((camera, "truth"), []).append(tints(s.hdr, m))
        outs = {"linear": BASELINES["linear"](s.ldr)}
        for name, pipe in pipes.items():
            outs[name] = np.asarray(pipe(np.ascontiguousarray(s.ldr), layout="hwc")).reshape(s.hdr.shape)
        for name in names:
            acc.setdefault((camera, name), []).append(tints(np.asarray(outs[name]), m))
    lines = []
    for camera in sorted({k[0] for k in acc}):
        truth = np.array(acc[camera, "truth"])
        lines += ["", f"{camera}: fully clipped pixels, {len(truth)} samples; mean log2(R/G), log2(B/G) and the mean "
                  "absolute error against the truth's", "",
                  "| method | log2 R/G | log2 B/G | error R/G | error B/G |", "| --- | ---: | ---: | ---: | ---: |",
                  f"| truth | {truth[:, 0].mean():+.3f} | {truth[:, 1].mean():+.3f} | | |"]
        for name in names:
            t = np.array(acc[camera, name])
            err = np.abs(t - truth).mean(axis=0)
            lines.append(f"| {name} | {t[:, 0].mean():+.3f} | {t[:, 1].mean():+.3f} | {err[0]:.3f} | {err[1]:.3f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    print(main(Path(sys.argv[1]), sys.argv[2:]))
