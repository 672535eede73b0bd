"""Can the ring maps carry how far a clipped region's truth lies above a model's result? Over the clip-mode samples
of a split, the per-pixel error ``log2(Y_truth / Y_model)`` on clipped pixels (``c > 0`` of ``mefm.ring_maps``,
max RGB >= 0.97; results scale-aligned as the evaluation does) is regressed on a constant and the ring maps' four
level and density channels (half-width ``RADIUS``) by least squares, each sample weighted equally and its pixels by
``c``. ``dump`` writes the features and errors of a split; ``fit`` fits on one dump (the training split), per
training camera family and for chosen family sets, and reports on other dumps (held-out splits) the per-sample RMS
and mean error on clipped pixels (max RGB >= 0.99) before and after the correction
``Y * 2^(c clamp(w . maps + b, -4, 4))``, per camera and per ring class as ``rolloff_bias.py``. It also fits one
level per sample from the whole frame (the log2 shares of pixels whose max RGB is at least 0.5, 0.7, 0.85, 0.92,
0.97, 0.99: ``mefm.shoulder_features``' cue) to the sample's mean error, and reports the same way. The twenty-first
round (training/LOG.md).

``python training/experiments/ring_fit.py dump SPLIT NAME=WEIGHTS OUT.npz [--every K]``
``python training/experiments/ring_fit.py fit TRAIN.npz HELDOUT.npz ...``"""
import sys
from pathlib import Path

import cv2
import numpy as np
import torch

from band_bias import aligned_views
from rolloff_bias import CLASSES, MIN_PIXELS, RING
from sitm_trt.model.mefm import ring_maps

RADIUS = 8
PER_IMAGE = 3000  # clipped pixels kept per sample (at random), so large skies do not dominate the dump's size
EV = 4.0
SHARES = (0.5, 0.7, 0.85, 0.92, 0.97, 0.99)


def dump(split: Path, spec: str, out: Path, every: int) -> None:
    names, views = aligned_views(split, [spec])
    model = names[-1]
    rows = {k: [] for k in ("feat", "err", "cls", "img", "cam", "clipped", "shares")}
    rng = np.random.default_rng(0)
    kernel = np.ones((2 * RING + 1, 2 * RING + 1), np.uint8)
    for i, (x, camera, yg, ys) in enumerate(views):
        if i % every:
            continue
        maps = ring_maps(torch.from_numpy(x.transpose(2, 0, 1)[None].astype(np.float32)), RADIUS)[0].numpy()
        mx = x.max(axis=2)
        sel = (maps[0] > 0) & (yg > 0) & (ys[model] > 0)
        # the ring class of each clipped region (rolloff_bias.py's), -1 for pixels outside a classed region
        cls = np.full(mx.shape, -1, np.int8)
        n_reg, labels = cv2.connectedComponents((mx >= 0.99).astype(np.uint8), connectivity=8)
        for r in range(1, n_reg):
            m = labels == r
            if m.sum() < MIN_PIXELS:
                continue
            ring = (cv2.dilate(m.astype(np.uint8), kernel) > 0) & (mx < 0.99)
            if ring.sum() < MIN_PIXELS:
                continue
            level = float(mx[ring].mean())
            cls[m] = next(k for k, (lo, hi) in enumerate(CLASSES) if lo <= level < hi)
        idx = np.flatnonzero(sel)
        if idx.size == 0:
            continue
        if idx.size > PER_IMAGE:
            idx = rng.choice(idx, PER_IMAGE, replace=False)
        rows["feat"].append(maps.reshape(5, -1)[:, idx].T.astype(np.float32))
        rows["err"].append((np.log2(yg.ravel()[idx]) - np.log2(ys[model].ravel()[idx])).astype(np.float32))
        rows["cls"].append(cls.ravel()[idx])
        rows["clipped"].append(mx.ravel()[idx] >= 0.99)
        rows["img"].append(np.full(idx.size, i, np.int32))
        rows["cam"].append(np.full(idx.size, camera, object))
        rows["shares"].append(np.repeat([[np.log2(np.mean(mx >= t) + 2.0 ** -10) for t in SHARES]], idx.size, 0))
        print(f"\r{i} {camera} {idx.size}", end="", file=sys.stderr)
    np.savez(out, **{k: np.concatenate(v) for k, v in rows.items()})
    print(file=sys.stderr)


def design(feat: np.ndarray) -> np.ndarray:
    return np.concatenate([np.ones((len(feat), 1), np.float64), feat[:, 1:].astype(np.float64)], axis=1)


def fit_weights(d, keep: np.ndarray) -> np.ndarray:
    """Least squares of the error on [1, maps 1..4], weight c / (the sample's c sum), over ``keep``."""
    feat, err, img = d["feat"][keep], d["err"][keep].astype(np.float64), d["img"][keep]
    c = feat[:, 0].astype(np.float64)
    _, inv = np.unique(img, return_inverse=True)
    w = c / np.bincount(inv, weights=c)[inv]
    X = design(feat)
    A = X.T @ (X * w[:, None]) + 1e-6 * np.eye(X.shape[1])
    return np.linalg.solve(A, X.T @ (w * err))


def fit_level(d, keep: np.ndarray) -> np.ndarray:
    """Least squares of each sample's mean error on its clipped pixels on [1, shares], each sample once."""
    on = np.flatnonzero(keep & d["clipped"])
    imgs, first, inv = np.unique(d["img"][on], return_index=True, return_inverse=True)
    X = np.concatenate([np.ones((len(imgs), 1)), d["shares"][on[first]]], axis=1)
    y = np.bincount(inv, weights=d["err"][on]) / np.bincount(inv)
    w = np.linalg.solve(X.T @ X + 1e-3 * np.eye(X.shape[1]), X.T @ y)
    print(f"  level fit: R^2 {1 - np.mean((y - X @ w) ** 2) / np.var(y):.3f} over {len(imgs)} samples")
    return w


def report(d, coefs: dict[str, np.ndarray]) -> list[str]:
    """``coefs``: name -> ring-map weights (5) or, under a name starting with ``level``, whole-frame weights (7)."""
    lines = []
    X = design(d["feat"])
    XL = np.concatenate([np.ones((len(X), 1)), d["shares"]], axis=1)
    c = d["feat"][:, 0]
    for camera in sorted(set(d["cam"])):
        on = (d["cam"] == camera) & d["clipped"]
        cells = {}
        for name, wts in {"base": None, **coefs}.items():
            corr = 0 if wts is None else c * np.clip((XL if name.startswith("level") else X) @ wts, -EV, EV)
            e = d["err"] - corr  # the error left after the correction
            per_img = lambda m: np.mean([e[m & (d["img"] == i)].mean() for i in np.unique(d["img"][m])])
            rms = np.mean([np.sqrt(np.mean(e[on & (d["img"] == i)] ** 2)) for i in np.unique(d["img"][on])])
            cells[name] = [rms, per_img(on)] + [per_img(on & (d["cls"] == k)) if np.any(on & (d["cls"] == k))
                                                else np.nan for k in range(len(CLASSES))]
        lines.append(f"\n{camera}: on clipped pixels, the per-sample RMS of log2(truth / result), its mean, then "
                     "the mean by ring class")
        lines.append("| fit | rms | all | " + " | ".join(f"{lo:g}-{min(hi, 1):g}" for lo, hi in CLASSES) + " |")
        lines.append("| --- |" + " ---: |" * (len(CLASSES) + 2))
        for name, v in cells.items():
            lines.append(f"| {name} | " + " | ".join(f"{x:+.2f}" for x in v) + " |")
    return lines


def main(argv: list[str]) -> None:
    if argv[:1] == ["dump"] and len(argv) >= 4:
        every = int(argv[argv.index("--every") + 1]) if "--every" in argv else 1
        dump(Path(argv[1]), argv[2], Path(argv[3]), every)
    elif argv[:1] == ["fit"] and len(argv) >= 3:
        d = dict(np.load(argv[1], allow_pickle=True))
        fams = sorted(set(d["cam"]))
        sets = {f: [f] for f in fams}
        sets["all"] = fams
        sets["no-hable"] = [f for f in fams if f != "hable"]
        coefs = {}
        for name, fs in sets.items():
            coefs[name] = fit_weights(d, np.isin(d["cam"], fs))
            print(name, np.array2string(coefs[name], precision=3))
        for name in ("all", "no-hable", "srgb"):
            coefs[f"level-{name}"] = fit_level(d, np.isin(d["cam"], sets[name]))
        for path in argv[2:]:
            h = dict(np.load(path, allow_pickle=True))
            print(f"\n## {path}")
            print("\n".join(report(h, {k: coefs[k] for k in ("all", "no-hable", "srgb", "level-all", "level-no-hable",
                                                              "level-srgb")})))
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
