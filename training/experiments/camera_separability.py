"""How well a whole-frame feature tells the camera from the picture: leave-one-scene-out accuracy of an
L2-regularized logistic regression that predicts the response family (sRGB against the held-out ``aces``) of the
paired real validation views of a ``--holdout-response aces`` build, from (a) histograms of the input (max RGB and
mean RGB, 16 bins each, plus the mean saturation and the clipped and black fractions), (b) the six shoulder
features of ``Preset.mefm_shoulder`` (log2 shares above 0.5 ... 0.99 of the model's thumbnail) and (c) with ``WEIGHTS``, the
MEFM's global vector ``g`` of those weights, split into its first 8 entries, the rest, and the two measured
exposure gains. 0.5 is chance: every view is shot through both cameras. The sixteenth round (training/LOG.md).

``python training/experiments/camera_separability.py data/heldout-aces/val [WEIGHTS]``"""
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from sitm_trt import reference as ops
from sitm_trt.model.blocks import thumbnail
from sitm_trt.model.mefm import shoulder_features
from sitm_trt.model.serialization import load_weights
from sitm_training.data import load_sample
from sitm_training.diagnose import _scene_and_camera


def histograms(ldr: np.ndarray) -> np.ndarray:
    x = ldr.astype(np.float32) / 255.0
    mx, mean = x.max(-1), x.mean(-1)
    sat = (mx - x.min(-1)) / (mx + 1e-3)
    hist = [np.histogram(v, bins=16, range=(0.0, 1.0))[0] / v.size for v in (mx, mean)]
    return np.concatenate(hist + [[sat.mean(), (mx > 0.95).mean(), (mx < 0.05).mean()]])


def loso_accuracy(x: np.ndarray, y: np.ndarray, scenes: np.ndarray, l2: float = 1e-2) -> float:
    """Mean over scenes of the accuracy on that scene's views of a model fitted on the other scenes."""
    x = (x - x.mean(0)) / (x.std(0) + 1e-6)
    acc = []
    for scene in np.unique(scenes):
        train = scenes != scene
        xt, yt = torch.tensor(x[train], dtype=torch.float32), torch.tensor(y[train], dtype=torch.float32)
        w = torch.zeros(x.shape[1], requires_grad=True)
        b = torch.zeros(1, requires_grad=True)
        opt = torch.optim.LBFGS([w, b], max_iter=200)

        def closure():
            opt.zero_grad()
            loss = F.binary_cross_entropy_with_logits(xt @ w + b, yt) + l2 * (w * w).sum()
            loss.backward()
            return loss

        opt.step(closure)
        with torch.no_grad():
            pred = (torch.tensor(x[~train], dtype=torch.float32) @ w + b).numpy() > 0
        acc.append(float((pred == y[~train]).mean()))
    return float(np.mean(acc))


def shoulder(ldr: np.ndarray) -> np.ndarray:
    """The six shoulder features of ``Preset.mefm_shoulder`` of an 8-bit ``(H, W, 3)`` input, on the model's
    256x256 thumbnail (shared with the other camera probes)."""
    x = torch.from_numpy(np.ascontiguousarray(ldr)).permute(2, 0, 1)[None].float() / 255.0
    return shoulder_features(thumbnail(x, 256))[0].numpy()


def paired_views(samples: str):
    """The views of a ``--holdout-response aces`` val split shot through sRGB or ``aces``: ``(sample, is_aces)``
    (shared with ``camera_local_cues.py``)."""
    for f in sorted(Path(samples).glob("*.npz")):
        s = load_sample(f)
        cam = _scene_and_camera(s)[1]
        if cam in ("srgb", "aces"):
            yield s, cam == "aces"


def main(samples: str, weights: str | None = None) -> None:
    net = load_weights(weights).eval() if weights else None
    if net is not None and net.preset.fusion != "residual":
        sys.exit(f"{weights}: needs residual-fusion weights (their g carries the two exposure gains)")
    feats, shoulders, gs, ys, scenes = [], [], [], [], []
    for s, is_aces in paired_views(samples):
        feats.append(histograms(s.ldr))
        shoulders.append(shoulder(s.ldr))
        ys.append(is_aces)
        scenes.append(s.source)
        if net is not None:
            with torch.no_grad():
                st = net.global_state(*ops.pre(torch.from_numpy(np.ascontiguousarray(s.ldr)), stride=net.stride))
            gs.append(st.mefm_g[0].numpy())
    y, sc, h = np.array(ys, float), np.array(scenes), np.array(feats)
    print(f"{len(y)} views of {len(np.unique(sc))} scenes, {int(y.sum())} through aces; leave-one-scene-out accuracy")
    print(f"  histogram of max RGB: {loso_accuracy(h[:, :16], y, sc):.3f}")
    print(f"  histogram of mean RGB: {loso_accuracy(h[:, 16:32], y, sc):.3f}")
    print(f"  all histogram features: {loso_accuracy(h, y, sc):.3f}")
    print(f"  shoulder features (Preset.mefm_shoulder): {loso_accuracy(np.array(shoulders), y, sc):.3f}")
    print(f"  shoulder and histogram features: {loso_accuracy(np.hstack([h, shoulders]), y, sc):.3f}")
    if net is not None:
        g, w, gw = np.array(gs), net.preset.mefm_width, net.preset.global_width
        print(f"  g, first {w} entries: {loso_accuracy(g[:, :w], y, sc):.3f}")
        if gw > w:
            print(f"  g, the other {gw - w} learned entries: {loso_accuracy(g[:, w:gw], y, sc):.3f}")
        print(f"  g, the two exposure gains: {loso_accuracy(g[:, gw:], y, sc):.3f}")


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__.split("\n\n")[-1])
    main(*sys.argv[1:])
