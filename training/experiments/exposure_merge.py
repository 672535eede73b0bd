"""Exploratory: exposure-compensated merge H = M_up C(I_up) 2^-ev_up + M_mid C(I) + M_down C(I_down) 2^-ev_down,
one cubic C (Eq. 8's coefficients) and two per-image EVs from a new head on the MEFM's global vector.
Patched into the PyTorch reference (sitm_trt.ops.post, MEFM); torch only, for val experiments."""
import sys, numpy as np, torch, torch.nn as nn, torch.nn.functional as F
import sitm_trt.ops as ops
from sitm_trt.model import mefm as MM
from sitm_trt.model.blocks import linear32

EV_INIT = (2.0, 1.5)  # ev_up = softplus(z0) >= 0, ev_down = -softplus(z1) <= 0 at init: +2 and -1.5 stops

_init = MM.MEFM.__init__
def __init__(self, preset):
    _init(self, preset)
    self.ev_head = nn.Linear(preset.mefm_width, 2)
    with torch.no_grad():
        self.ev_head.weight.zero_()
        self.ev_head.bias.copy_(torch.tensor([float(np.log(np.expm1(v))) for v in EV_INIT]))
MM.MEFM.__init__ = __init__

def coefficients(self, g):
    a = F.softplus(linear32(self.coef_head, g))
    z = linear32(self.ev_head, g)
    return torch.cat([a, F.softplus(z[:, :1]), -F.softplus(z[:, 1:2])], dim=1)
MM.MEFM.coefficients = coefficients

def post(masks, image, image_up, image_down, coef, height=None, width=None, layout="nchw", dtype=torch.float32):
    m, i, u, d = (t.to(torch.float32) for t in (masks, image, image_up, image_down))
    c = coef.to(torch.float32)
    a = c[:, :4]
    ev_up, ev_down = c[:, 4].view(-1, 1, 1, 1), c[:, 5].view(-1, 1, 1, 1)
    hdr = (m[:, 0:1] * ops.curve(u, a) * torch.exp2(-ev_up) + m[:, 1:2] * ops.curve(i, a)
           + m[:, 2:3] * ops.curve(d, a) * torch.exp2(-ev_down))
    h = hdr.shape[-2] if height is None else height
    w = hdr.shape[-1] if width is None else width
    hdr = hdr[..., :h, :w]
    if layout == "nhwc":
        hdr = hdr.permute(0, 2, 3, 1)
    return hdr.contiguous().to(dtype)
ops.post = post

cmd = sys.argv[1]
if cmd == "make-init":
    from sitm_trt.model.serialization import load_weights, save_weights
    from sitm_trt.model import SITMNet
    MM.MEFM.__init__ = _init
    w = load_weights(sys.argv[2])
    MM.MEFM.__init__ = __init__
    net = SITMNet(w.preset)
    missing, unexpected = net.load_state_dict(w.state_dict(), strict=False)
    assert not unexpected and all(k.startswith("mefm.ev_head") for k in missing), (missing, unexpected)
    save_weights(net, sys.argv[3])
elif cmd == "train":
    from sitm_training.train import main
    sys.exit(main(sys.argv[2:]))
elif cmd == "eval":
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1]))
    from sitm_training import evaluate as E
    from sitm_trt.model.serialization import load_weights
    from sitm_trt.model import SITMNet, predict_hdr
    w = load_weights(sys.argv[2]); net = SITMNet(w.preset); net.load_state_dict(w.state_dict()); net.eval()
    class M(E.Method):
        kind = "model"; name = "merge"; description = f"SITM, exposure-compensated merge (patched), {sys.argv[2]}"
        def __call__(self, ldr, pair):
            with torch.no_grad():
                return predict_hdr(net, torch.from_numpy(np.ascontiguousarray(ldr)))[0].permute(1, 2, 0).numpy()
    E.evaluate(sys.argv[3], [E.BaselineMethod("linear"), M()], sys.argv[4], jod=False)
elif cmd == "inspect":  # inspect WEIGHTS PAIRS [N]: the EVs and M_down in the clipped pixels over the first N images
    import glob
    from sitm_trt.io import read_ldr
    from sitm_trt.model.serialization import load_weights
    from sitm_trt.model import SITMNet
    w = load_weights(sys.argv[2]); net = SITMNet(w.preset); net.load_state_dict(w.state_dict()); net.eval()
    evs, md = [], []
    for f in sorted(glob.glob(f"{sys.argv[3]}/*.png"))[:int(sys.argv[4]) if len(sys.argv) > 4 else 40]:
        x = torch.from_numpy(read_ldr(f)).permute(2, 0, 1)[None].float() / 255
        with torch.no_grad():
            o = net(*ops.pre(x, stride=net.stride))
        evs.append(o.coef[0, 4:].tolist())
        clip = x.amax(1, keepdim=True) > 0.95
        if clip.sum() > 50:
            md.append(float(o.masks[:, 2:3, :x.shape[2], :x.shape[3]][clip].mean()))
    print("EV up/down: mean", np.mean(evs, 0).round(2), "std over images", np.std(evs, 0).round(2))
    print("mean M_down in the clipped pixels:", round(float(np.mean(md)), 4), f"({len(md)} images)")
