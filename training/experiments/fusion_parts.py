"""Which part of Eq. 7 costs or earns JOD on given images:
``venv-eval/bin/python training/experiments/fusion_parts.py WEIGHTS PAIRS_DIR ID[,ID...]``.

For each pair (``ID.png`` input, ``ID.exr`` ground truth) it prints ColorVideoVDP JOD, scale-aligned and on the
display of the evaluation (docs/evaluation.md), for: the linearized input; the model's result; Eq. 8 on the input
alone (masks ``(0, 1, 0)``); the result without ``I_up`` (its mask added to ``M_mid``); the result without ``I_down``
(likewise); and the mean masks. Needs ``cvvdp`` (the evaluation environment).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

from _common import jod_scorer, load_weights, without  # (importing _common also puts sitm_training on the import path)

from sitm_trt import reference as ops
from sitm_trt.media.io import read_hdr, read_ldr, srgb_eotf, to_float


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__.split("\n\n")[0], file=sys.stderr)
        return 2
    net = load_weights(argv[0]).eval()
    root, ids = Path(argv[1]), argv[2].split(",")
    score = jod_scorer()

    print("id | linear | result | Eq. 8 only | without I_up | without I_down | M_up / M_mid / M_down")
    for i in ids:
        ldr = to_float(read_ldr(root / f"{i}.png"))
        gt = read_hdr(root / f"{i}.exr")
        x = torch.from_numpy(np.ascontiguousarray(ldr.transpose(2, 0, 1)))[None]
        h, w = ldr.shape[:2]
        with torch.no_grad():
            pre = ops.pre(x, stride=net.stride)
            out = net(*pre)
            mid = torch.zeros_like(out.masks)
            mid[:, 1] = 1
            variants = [out.masks, mid, without(out.masks, 0), without(out.masks, 2)]
            hdrs = [ops.post(m, pre.image, out.image_up, out.image_down, out.coef, h, w)[0].numpy().transpose(1, 2, 0)
                    for m in variants]
        scores = [score(srgb_eotf(ldr), gt, ldr)] + [score(p, gt, ldr) for p in hdrs]
        means = out.masks.mean((0, 2, 3)).tolist()
        print(f"{i} | " + " | ".join(f"{s:.3f}" for s in scores) + " | " + " / ".join(f"{m:.2f}" for m in means),
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
