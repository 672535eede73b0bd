"""Take the exposure-up image out of Eq. 7: ``python training/experiments/drop_exposure_up.py IN.safetensors OUT.safetensors``.

Sets the MEFM's mask head so that the ``M_up`` logit is the constant -30 (its 3x3 kernel zero, its bias -30):
the softmax then gives ``M_up`` < 1e-13 everywhere and splits the rest between ``M_mid`` and ``M_down`` in the
proportions the network already had. A fine-tune of the MEFM afterwards cannot bring ``M_up`` back (its
gradients are ~1e-13 too). Why: on under-exposed inputs the compact AUEM's ``I_up`` (EV +3 from an already dark
input, about 21 dB from its label on val) costs ColorVideoVDP JOD where the fusion blends it in (docs/training.md,
Status, fourth round). The network graph, the ONNX export and the runtime are unchanged.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from sitm_trt.model import save_weights
from sitm_trt.model.serialization import load_weights

UP = 0  # channel order of the masks: M_up, M_mid, M_down


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__.split("\n\n")[0], file=sys.stderr)
        return 2
    src, dst = Path(argv[0]), Path(argv[1])
    net = load_weights(src)
    with torch.no_grad():
        net.mefm.mask_head.weight[UP].zero_()
        net.mefm.mask_head.bias[UP] = -30.0
    save_weights(net, dst, metadata={"drop_exposure_up": str(src)})
    print(f"wrote {dst}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
