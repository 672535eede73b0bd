"""What a perfect exposure-up image would earn, at which EV:
``venv-eval/bin/python training/experiments/up_label_oracle.py WEIGHTS PAIRS_DIR ID[,ID...] SAMPLES_DIR [EV,...]``.

For each pair (``ID.png`` input, ``ID.exr`` ground truth; ``SAMPLES_DIR/ID.npz`` the data set's sample it was
exported from) it prints ColorVideoVDP JOD, scale-aligned and on the display of the evaluation (docs/evaluation.md),
for: the linearized input; the model's result; the result without ``I_up`` (its mask added to ``M_mid``); and,
with the model's own masks, ``I_down`` and curve, ``I_up`` replaced by the sample's own label, by the input moved by
the label's EV in linear light (``sRGB(min(1, sRGB^-1(I) 2^ev_up))``), and by the label shot again by the sample's
simulated camera at each EV (default 1,2,3,4; ``data.relabel_up``, noise drawn with seed 0). Then the means.
Images must be a multiple of the network's stride (16) in size, as the exported pairs (256x256) are. Needs ``cvvdp``
(the evaluation environment).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

from _common import jod_scorer, load_weights, srgb_decode, without  # (also puts sitm_training on the import path)

from sitm_trt import reference as ops
from sitm_trt.media.io import read_hdr, read_ldr, srgb_eotf, to_float
from sitm_training.data import load_sample, relabel_up
from sitm_training.losses import srgb_encode


def _chw(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a.astype(np.float32).transpose(2, 0, 1) / 255.0))[None]


def main(argv: list[str]) -> int:
    if len(argv) not in (4, 5):
        print(__doc__.split("\n\n")[0], file=sys.stderr)
        return 2
    net = load_weights(argv[0]).eval()
    root, ids, samples = Path(argv[1]), argv[2].split(","), Path(argv[3])
    evs = [float(e) for e in argv[4].split(",")] if len(argv) == 5 else [1.0, 2.0, 3.0, 4.0]
    score = jod_scorer()

    names = ["linear", "result", "without I_up", "I_up = label", "I_up = input x 2^ev"] + [f"label at +{e:g}" for e in evs]
    print("id | label EV | " + " | ".join(names))
    rows = []
    for i in ids:
        ldr = to_float(read_ldr(root / f"{i}.png"))
        gt = read_hdr(root / f"{i}.exr")
        s = load_sample(samples / f"{i}.npz")
        if not np.array_equal(s.ldr, read_ldr(root / f"{i}.png")):
            raise SystemExit(f"{samples / i}.npz is not the sample {root / i}.png was exported from")
        x = _chw(s.ldr)
        h, w = ldr.shape[:2]
        with torch.no_grad():
            pre = ops.pre(x, stride=net.stride)
            out = net(*pre)
            no_up = without(out.masks, 0)
            moved = srgb_encode(srgb_decode(x) * float(2.0**s.ev_up))
            ups = [_chw(s.up), moved] + [_chw(relabel_up(s, e, np.random.default_rng(0)).up) for e in evs]
            hdrs = [ops.post(out.masks, pre.image, out.image_up, out.image_down, out.coef, h, w),
                    ops.post(no_up, pre.image, out.image_up, out.image_down, out.coef, h, w)]
            hdrs += [ops.post(out.masks, pre.image, up, out.image_down, out.coef, h, w) for up in ups]
        scores = [score(srgb_eotf(ldr), gt, ldr)] + [score(p[0].numpy().transpose(1, 2, 0), gt, ldr) for p in hdrs]
        rows.append(scores)
        print(f"{i} | {s.ev_up:g} | " + " | ".join(f"{v:.3f}" for v in scores), flush=True)
    print("mean | | " + " | ".join(f"{v:.3f}" for v in np.mean(rows, axis=0)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
