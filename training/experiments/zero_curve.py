"""A weights file with the residual fusion's curve correction switched off: ``k2 = log gamma`` (``coef[:, 2]``) is
exactly 0 for every image, as in weights that never trained it (R14), and everything else is unchanged. The trained
residual models learned ``k2`` of about 0.1 on every image whatever its camera (gamma 1.1: mid-tones darker against
the highlights), which the scale alignment turns into brighter highlights on every camera. The twenty-first
round (training/LOG.md).

``python training/experiments/zero_curve.py IN.safetensors OUT.safetensors``"""
import sys

import torch

from _common import load_weights
from sitm_trt.model.serialization import save_weights


def main(src: str, dst: str) -> None:
    net = load_weights(src)
    if net.preset.fusion != "residual":
        raise SystemExit(f"{src}: fusion {net.preset.fusion!r}; only the residual fusion has the curve correction k2")
    with torch.no_grad():  # coef = (gain_up + d0, gain_down + d1, d2, 0), d = coef_head(g): row 2 is k2
        net.mefm.coef_head.weight[2].zero_()
        net.mefm.coef_head.bias[2].zero_()
    save_weights(net, dst, metadata={"derived_from": src, "edit": "k2 = 0"})


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    main(*sys.argv[1:])
