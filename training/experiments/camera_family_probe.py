"""Can a linear probe name the training camera's response family from whole-frame features? On the first ``N``
train samples of a build (procedural and real), a multinomial logistic regression (L2 1e-2, LBFGS) is fitted on
the samples of three quarters of the sources and scored on the rest (cross-entropy against ln(families), the
chance level, and accuracy), for the MEFM's global vector ``g`` of ``WEIGHTS``, the six shoulder features of
``Preset.mefm_shoulder`` and both. The question behind ``--camera-aux`` (the nineteenth round, training/LOG.md).

``python training/experiments/camera_family_probe.py data/sitm256h WEIGHTS [N]``"""
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from camera_separability import shoulder  # this folder's probe: the same shoulder features
from sitm_trt import reference as ops
from sitm_trt.model.serialization import load_weights
from sitm_training.data import load_sample


def fit(x: np.ndarray, y: np.ndarray, test: np.ndarray, classes: int) -> tuple[float, float]:
    """Held-out ``(cross-entropy, accuracy)`` of a logistic regression fitted on ``~test``."""
    x = (x - x[~test].mean(0)) / (x[~test].std(0) + 1e-6)
    xt, yt = torch.tensor(x[~test], dtype=torch.float32), torch.tensor(y[~test])
    lin = torch.nn.Linear(x.shape[1], classes)
    opt = torch.optim.LBFGS(lin.parameters(), max_iter=300)

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(lin(xt), yt) + 1e-2 * (lin.weight ** 2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        logits = lin(torch.tensor(x[test], dtype=torch.float32))
        ce = F.cross_entropy(logits, torch.tensor(y[test])).item()
    return ce, float((logits.argmax(1).numpy() == y[test]).mean())


def train_samples(root: str, n: int):
    """``(families, samples)``: the recipe's response families and the first ``n`` train samples of a build (shared
    with ``camera_local_cues.py``)."""
    manifest = json.loads((Path(root) / "manifest.json").read_text())
    records = [r for r in manifest["samples"] if r["split"] == "train"][:n]
    return manifest["recipe"]["camera"]["responses"], (load_sample(Path(root) / r["file"]) for r in records)


def held_out_sources(sources: np.ndarray) -> np.ndarray:
    """The test mask: the samples of a fixed quarter of the sources (seed 0)."""
    names = np.unique(sources)
    held = set(np.random.default_rng(0).choice(names, len(names) // 4, replace=False))
    return np.array([s in held for s in sources])


def main(root: str, weights: str, n: int = 600) -> None:
    torch.set_num_threads(1)
    net = load_weights(weights).eval()
    families, samples = train_samples(root, n)
    g, sh, y, sources = [], [], [], []
    for s in samples:
        with torch.no_grad():
            x = torch.from_numpy(np.ascontiguousarray(s.ldr))
            g.append(net.global_state(*ops.pre(x, stride=net.stride)).mefm_g[0].numpy())
        sh.append(shoulder(s.ldr))
        y.append(families.index(s.meta["camera"]["response"]["kind"]))
        sources.append(s.source)
    g, sh, y, sources = np.array(g), np.array(sh), np.array(y), np.array(sources)
    test = held_out_sources(sources)
    held = np.unique(sources[test])
    print(f"{len(y)} samples ({np.bincount(y, minlength=len(families)).tolist()} per family of {families}), "
          f"{len(held)} of {len(np.unique(sources))} sources held out ({int(test.sum())} samples); chance: cross-entropy "
          f"{np.log(len(families)):.3f}, the held-out majority family's share {np.bincount(y[test]).max() / test.sum():.3f}")
    for name, feats in (("g", g), ("shoulder features", sh), ("g and shoulder features", np.hstack([g, sh]))):
        ce, acc = fit(feats, y, test, len(families))
        print(f"  {name}: cross-entropy {ce:.3f}, accuracy {acc:.3f}")


if __name__ == "__main__":
    if len(sys.argv) not in (3, 4):
        sys.exit(__doc__.split("\n\n")[-1])
    main(sys.argv[1], sys.argv[2], *(int(a) for a in sys.argv[3:]))
