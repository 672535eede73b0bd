"""Oracle capacity of curve families (masks (0,1,0)): per-image best coefficients on val pairs."""
import sys, numpy as np, torch, torch.nn.functional as F
from _common import softplus_inverse, srgb_decode
from sitm_trt import reference as ops
from sitm_training.losses import pu21_hdr_loss
from sitm_training import metrics as M
from sitm_training.data import SampleDataset, load_sample_meta
from pathlib import Path
torch.manual_seed(0)
root = Path(sys.argv[1] if len(sys.argv) > 1 else "data/sitm256")
ds = SampleDataset(root, "val", crop=None, augment=False)
idx = list(range(0, len(ds), 2))[:100]
def fam(name, x, p):
    """The three curve families, ``softplus(p)`` as a0..a3 (Eq. 8's Horner evaluation, ``ops.curve``)."""
    a = F.softplus(p)
    if name == "x":
        return ops.curve(x, a)
    if name == "L":
        return ops.curve(srgb_decode(x), a)
    if name == "Lgain":
        return srgb_decode(x) * ops.curve(x, a)
init = {"x": [1e-3, .5, .25, .25], "L": [1e-4, 1., 1e-3, 1e-3], "Lgain": [1., 1e-3, 1e-3, 1e-3]}
xs, gts, modes = [], [], []
for i in idx:
    it = ds[i]
    xs.append(it["ldr"]); gts.append(it["hdr"])
    modes.append(load_sample_meta(root / ds.records[i]["file"])["exposure"]["mode"])
x = torch.stack(xs).float(); gt = torch.stack(gts).float()
res = {}
for name in ["x", "L", "Lgain"]:
    p = torch.tensor([[softplus_inverse(v) for v in init[name]]] * len(idx), requires_grad=True)
    opt = torch.optim.Adam([p], lr=0.05)
    for k in range(300):
        loss = sum(pu21_hdr_loss(fam(name, x[j:j+1], p[j:j+1]), gt[j:j+1]) for j in range(len(idx)))
        opt.zero_grad(); loss.backward(); opt.step()
    with torch.no_grad():
        h = fam(name, x, p)
    res[name] = h
res["linear"] = srgb_decode(x)
disp = M.Display()
for name, h in res.items():
    sc = [M.score_image(h[j].permute(1,2,0).numpy(), gt[j].permute(1,2,0).numpy(), x[j].permute(1,2,0).numpy(), disp) for j in range(len(idx))]
    ps = np.array([s.pu21_psnr for s in sc]); ss = np.array([s.pu21_ssim for s in sc])
    cl = np.array([s.clip_pu21_psnr for s in sc], dtype=float)
    m = np.array(modes)
    print(f"{name:7s} all PU21 {ps.mean():.2f} SSIM {ss.mean():.4f} clip {np.nanmean(cl):.2f} | under {ps[m=='under'].mean():.2f} | clip {ps[m!='under'].mean():.2f}")
