"""Exploratory: exposure-compensated merge H = M_up C(I_up) 2^-ev_up + M_mid C(I) + M_down C(I_down) 2^-ev_down,
one cubic C (Eq. 8's coefficients) and two per-image EVs from a new head on the MEFM's global vector, which
``coef`` carries as columns 4 and 5. Patched into the PyTorch reference (``sitm_trt.reference.post``, the MEFM) in
this process only; ``inspect WEIGHTS PAIRS [N]`` prints the EVs and ``M_down`` in the clipped pixels."""
import glob
import sys

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from _common import main, softplus_inverse

import sitm_trt.reference as ops
from sitm_trt.media.io import read_ldr
from sitm_trt.model import SITMNet
from sitm_trt.model import mefm as MM
from sitm_trt.model.blocks import linear32
from sitm_trt.model.serialization import load_weights, save_weights

EV_INIT = (2.0, 1.5)  # ev_up = softplus(z0) >= 0, ev_down = -softplus(z1) <= 0 at init: +2 and -1.5 stops

_init = MM.MEFM.__init__


def _init_with_ev_head(self, preset):
    _init(self, preset)
    self.ev_head = nn.Linear(preset.mefm_width, 2)
    with torch.no_grad():
        self.ev_head.weight.zero_()
        self.ev_head.bias.copy_(torch.tensor([softplus_inverse(v) for v in EV_INIT]))


def _coefficients(self, g):
    a = F.softplus(linear32(self.coef_head, g))
    z = linear32(self.ev_head, g)
    return torch.cat([a, F.softplus(z[:, :1]), -F.softplus(z[:, 1:2])], dim=1)


def _merge_post(masks, image, image_up, image_down, coef, height=None, width=None, layout="nchw",
                dtype=torch.float32):
    """``ops.post`` with the merge above in place of Eq. 7-8 (same crop, layout and dtype handling)."""
    m, i, u, d = (t.to(torch.float32) for t in (masks, image, image_up, image_down))
    c = coef.to(torch.float32)
    a = c[:, :4]
    ev_up, ev_down = c[:, 4].view(-1, 1, 1, 1), c[:, 5].view(-1, 1, 1, 1)
    hdr = (m[:, 0:1] * ops.curve(u, a) * torch.exp2(-ev_up) + m[:, 1:2] * ops.curve(i, a)
           + m[:, 2:3] * ops.curve(d, a) * torch.exp2(-ev_down))
    hdr = hdr[..., :hdr.shape[-2] if height is None else height, :hdr.shape[-1] if width is None else width]
    return (hdr.permute(0, 2, 3, 1) if layout == "nhwc" else hdr).contiguous().to(dtype)


def patch() -> None:
    MM.MEFM.__init__ = _init_with_ev_head
    MM.MEFM.coefficients = _coefficients
    ops.post = _merge_post


def make_init(old: str, new: str) -> None:
    """``old`` (Eq. 7-8 weights, loaded before the patch) plus a fresh EV head."""
    plain = load_weights(old)
    patch()
    net = SITMNet(plain.preset)
    missing, unexpected = net.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and all(k.startswith("mefm.ev_head") for k in missing), (missing, unexpected)
    save_weights(net, new)


def inspect(args: list[str]) -> None:
    """``WEIGHTS PAIRS [N]``: the EVs (mean, spread over images) and M_down in the clipped pixels, first N images."""
    net = load_weights(args[0])
    evs, md = [], []
    for f in sorted(glob.glob(f"{args[1]}/*.png"))[:int(args[2]) if len(args) > 2 else 40]:
        x = torch.from_numpy(read_ldr(f)).permute(2, 0, 1)[None].float() / 255
        with torch.no_grad():
            o = net(*ops.pre(x, stride=net.stride))
        evs.append(o.coef[0, 4:].tolist())
        clip = x.amax(1, keepdim=True) > 0.95
        if clip.sum() > 50:
            md.append(float(o.masks[:, 2:3, :x.shape[2], :x.shape[3]][clip].mean()))
    print("EV up/down: mean", np.mean(evs, 0).round(2), "std over images", np.std(evs, 0).round(2))
    print("mean M_down in the clipped pixels:", round(float(np.mean(md)), 4), f"({len(md)} images)")


if __name__ == "__main__":
    if sys.argv[1:2] != ["make-init"]:
        patch()
    sys.exit(main(sys.argv[1:], make_init, dict(name="merge", description="SITM, exposure-compensated merge (patched)",
                                                baselines=("linear",), jod=False), {"inspect": inspect}))
