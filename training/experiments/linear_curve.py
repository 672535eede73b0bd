"""Exploratory: Eq. 8's cubic applied to the inverse-sRGB of I_fuse (torch reference only, patched in)."""
import sys, numpy as np, torch
import sitm_trt.ops as ops

def srgb_inv(x):
    x = x.clamp(0.0, 1.0)
    return torch.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4)

_curve = ops.curve
def curve_L(x, coef):
    return _curve(srgb_inv(x), coef)
ops.curve = curve_L

cmd = sys.argv[1]
if cmd == "make-init":
    from sitm_trt.model.serialization import load_weights, save_weights
    w = load_weights(sys.argv[2]); net = w.model() if hasattr(w, "model") else None
    from sitm_trt.model import SITMNet
    net = SITMNet(w.preset); net.load_state_dict(w.state_dict())
    init = (1e-4, 1.0, 0.05, 0.05)
    with torch.no_grad():
        net.mefm.coef_head.bias.copy_(torch.tensor([float(np.log(np.expm1(a))) for a in init]))
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
        kind = "model"; name = "compact-L"; description = f"SITM, L-domain curve (patched), {sys.argv[2]}"
        def __call__(self, ldr, pair):
            with torch.no_grad():
                return predict_hdr(net, torch.from_numpy(np.ascontiguousarray(ldr)))[0].permute(1, 2, 0).numpy()
    methods = [E.BaselineMethod(n) for n in ("linear", "banterle")] if hasattr(E, "BaselineMethod") else []
    E.evaluate(sys.argv[3], methods + [M()], sys.argv[4], jod=True)
