"""Exploratory: Eq. 8's cubic applied to the inverse sRGB of I_fuse (the PyTorch reference, patched in this
process only). ``make-init`` resets the coefficient head's bias to the curve of this domain."""
import sys

import torch
from _common import main, softplus_inverse, srgb_decode

import sitm_trt.reference as ops
from sitm_trt.model.serialization import load_weights, save_weights

COEF_INIT = (1e-4, 1.0, 0.05, 0.05)  # a0..a3: the linearized input, slightly convex

_curve = ops.curve
ops.curve = lambda x, coef: _curve(srgb_decode(x), coef)


def make_init(old: str, new: str) -> None:
    net = load_weights(old)
    with torch.no_grad():
        net.mefm.coef_head.bias.copy_(torch.tensor([softplus_inverse(a) for a in COEF_INIT]))
    save_weights(net, new)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], make_init, dict(name="compact-L", description="SITM, Eq. 8 on sRGB^-1(I_fuse) (patched)",
                                                baselines=("linear", "banterle"), jod=True)))
