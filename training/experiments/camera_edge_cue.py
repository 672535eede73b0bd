"""Does the way colours mix across edges tell the camera? (Lin et al., "Radiometric calibration from a single
image", CVPR 2004.) Optics and the sensor mix the radiance of two regions linearly at their edge, so in linear light
an edge pixel lies on the line between the colours on either side; a camera curve bends it off the line. Each
sample is linearized with the sRGB curve, and for every pixel whose neighbours 2 pixels away on either side (along a
row or a column) differ in colour (chromaticity distance >= 0.05, both in (0.02, 0.95) max RGB, each flat: its own
neighbours within 0.02) and which lies between them (0.15 < t < 0.85 along the line), the distance from the line
over the line's length is taken. Features per sample: the mean and median of that over all such triplets and over
three bands of the triplet's level, the count (log), and the mean signed deviation of the centre's luminance from
the line's (positive: brighter than a linear mix). Through the exact sRGB curve the triplets are on the line up to
8-bit rounding; through an S-curve they are not, by an amount that depends on the level. Scored as
``camera_separability.py`` (sRGB against ``aces`` on the paired views, leave one scene out; 0.5 is chance), alone
and with the shoulder features. The twenty-first round (training/LOG.md).

``python training/experiments/camera_edge_cue.py data/heldout-aces/val``"""
import sys

import numpy as np

from camera_separability import loso_accuracy, paired_views, shoulder
from sitm_trt.media.io import srgb_eotf

GAP = 2
BANDS = ((0.0, 0.1), (0.1, 0.35), (0.35, 1.01))  # the triplet's mean linear max RGB


def edge_features(ldr: np.ndarray) -> np.ndarray:
    v = ldr.astype(np.float64) / 255.0
    x = np.asarray(srgb_eotf(v), np.float64)
    mx = v.max(-1)
    dev, signed, level = [], [], []
    for axis in (0, 1):
        n = x.shape[axis]
        take = lambda arr, lo, hi: np.take(arr, np.arange(lo, n - hi), axis=axis)  # noqa: E731
        a, c, b = take(x, 0, 2 * GAP), take(x, GAP, GAP), take(x, 2 * GAP, 0)
        ma, mb = take(mx, 0, 2 * GAP), take(mx, 2 * GAP, 0)
        # flatness of the two ends: their own neighbours one pixel further out and in
        fa = np.abs(a - np.roll(a, 1, axis=axis)).max(-1)
        fb = np.abs(b - np.roll(b, -1, axis=axis)).max(-1)
        ab = b - a
        length2 = (ab * ab).sum(-1)
        chroma = lambda p: p / (p.sum(-1, keepdims=True) + 1e-6)  # noqa: E731
        cdist = np.abs(chroma(a) - chroma(b)).sum(-1)
        t = ((c - a) * ab).sum(-1) / np.maximum(length2, 1e-12)
        ok = ((cdist >= 0.05) & (ma > 0.02) & (ma < 0.95) & (mb > 0.02) & (mb < 0.95) & (fa < 0.02) & (fb < 0.02)
              & (t > 0.15) & (t < 0.85) & (length2 > 1e-4))
        r = c - a - t[..., None] * ab
        dev.append((np.sqrt((r * r).sum(-1)) / np.sqrt(np.maximum(length2, 1e-12)))[ok])
        lum = lambda p: p @ np.array([0.2126, 0.7152, 0.0722])  # noqa: E731
        line = lum(a) + t * lum(ab)
        signed.append(((lum(c) - line) / np.maximum(np.abs(lum(ab)), 1e-3))[ok])
        level.append(((a + b) / 2).max(-1)[ok])
    dev, signed, level = np.concatenate(dev), np.concatenate(signed), np.concatenate(level)
    feats = [np.log1p(dev.size)]
    for sel in [np.ones(dev.size, bool)] + [(level >= lo) & (level < hi) for lo, hi in BANDS]:
        d, s = dev[sel], signed[sel]
        feats += [d.mean(), np.median(d), s.mean()] if d.size >= 5 else [0.0, 0.0, 0.0]
    return np.array(feats)


def main(samples: str) -> None:
    feats, shoulders, ys, scenes = [], [], [], []
    for s, is_aces in paired_views(samples):
        feats.append(edge_features(s.ldr))
        shoulders.append(shoulder(s.ldr))
        ys.append(is_aces)
        scenes.append(s.source)
    f, y, sc = np.array(feats), np.array(ys, float), np.array(scenes)
    print(f"{len(y)} views of {len(np.unique(sc))} scenes; leave-one-scene-out accuracy (0.5 is chance)")
    for name, aces in (("sRGB", False), ("aces", True)):
        m = f[y == aces]
        print(f"  {name}: triplets per view {np.expm1(m[:, 0]).mean():.0f}, mean distance {m[:, 1].mean():.4f}, "
              f"mean signed luminance {m[:, 3].mean():+.4f}")
    print(f"  edge features: {loso_accuracy(f, y, sc):.3f}")
    print(f"  shoulder features: {loso_accuracy(np.array(shoulders), y, sc):.3f}")
    print(f"  both: {loso_accuracy(np.hstack([f, shoulders]), y, sc):.3f}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__.split("\n\n")[-1])
    main(sys.argv[1])
