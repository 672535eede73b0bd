"""Do full-resolution cues tell the camera where whole-frame statistics do not? Per sample, for 8 bins of the
input's max RGB (0 to 0.96; the clipped pixels left out): the log of the mean absolute high-pass residual
(the input minus its 3x3 box blur: noise and fine texture) and of the mean gradient magnitude, each minus its mean
over the bins (so the scene's overall noise and contrast drop out and what is left is how they change with the
level, which a curve's slope sets: a shoulder compresses both near the top). Fitted as in
``camera_family_probe.py`` (five training families, held-out sources) and as in ``camera_separability.py`` (sRGB
against ``aces`` on the paired real views, leave one scene out), beside the shoulder features. The nineteenth
round (training/LOG.md).

``python training/experiments/camera_local_cues.py data/sitm256h data/heldout-aces/val [N]``"""
import sys

import numpy as np
import torch
import torch.nn.functional as F

from camera_family_probe import fit, held_out_sources, train_samples
from camera_separability import loso_accuracy, paired_views, shoulder

EDGES = np.linspace(0.0, 0.96, 9)


def local_cues(ldr: np.ndarray) -> np.ndarray:
    x = ldr.astype(np.float64) / 255.0
    level = x.max(axis=2)
    lum = x.mean(axis=2)
    blur = F.avg_pool2d(torch.from_numpy(lum)[None, None], 3, stride=1, padding=1, count_include_pad=False)[0, 0]
    residual = np.abs(lum - blur.numpy())
    gy, gx = np.gradient(lum)
    grad = np.hypot(gx, gy)
    out = []
    for stat in (residual, grad):
        per_bin = []
        for lo, hi in zip(EDGES[:-1], EDGES[1:]):
            m = (level >= lo) & (level < hi)
            per_bin.append(np.log(stat[m].mean() + 1e-5) if m.sum() >= 20 else np.nan)
        v = np.array(per_bin)
        v = v - np.nanmean(v)
        out.append(np.nan_to_num(v, nan=0.0))
    return np.concatenate(out)


def main(train_root: str, paired: str, n: int = 600) -> None:
    families, samples = train_samples(train_root, n)
    cues, sh, y, sources = [], [], [], []
    for s in samples:
        cues.append(local_cues(s.ldr))
        sh.append(shoulder(s.ldr))
        y.append(families.index(s.meta["camera"]["response"]["kind"]))
        sources.append(s.source)
    cues, sh, y, sources = np.array(cues), np.array(sh), np.array(y), np.array(sources)
    test = held_out_sources(sources)
    print(f"five families ({families}), {len(y)} train samples, {int(test.sum())} of held-out sources; "
          f"chance cross-entropy {np.log(len(families)):.3f}")
    for name, feats in (("local cues", cues), ("shoulder features", sh), ("both", np.hstack([cues, sh]))):
        ce, acc = fit(feats, y, test, len(families))
        print(f"  {name}: cross-entropy {ce:.3f}, accuracy {acc:.3f}")
    pc, ps, py, pscenes = [], [], [], []
    for s, is_aces in paired_views(paired):
        pc.append(local_cues(s.ldr))
        ps.append(shoulder(s.ldr))
        py.append(is_aces)
        pscenes.append(s.source)
    pc, ps, py, pscenes = np.array(pc), np.array(ps), np.array(py, float), np.array(pscenes)
    print(f"sRGB against aces, {len(py)} paired views, leave one scene out (0.5 is chance):")
    for name, feats in (("local cues", pc), ("shoulder features", ps), ("both", np.hstack([pc, ps]))):
        print(f"  {name}: {loso_accuracy(feats, py, pscenes):.3f}")


if __name__ == "__main__":
    if len(sys.argv) not in (3, 4):
        sys.exit(__doc__.split("\n\n")[-1])
    main(sys.argv[1], sys.argv[2], *(int(a) for a in sys.argv[3:]))
