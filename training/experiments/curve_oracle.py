"""Oracle capacity of curve families (masks (0,1,0)): per-image best coefficients on val pairs."""
import sys, numpy as np, torch, torch.nn.functional as F
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1]))
from sitm_training.losses import pu21_hdr_loss
from sitm_training import metrics as M
from sitm_training.data import SampleDataset, load_sample_meta
from pathlib import Path
torch.manual_seed(0)
root = Path(sys.argv[1] if len(sys.argv) > 1 else "data/sitm256")
ds = SampleDataset(root, "val", crop=None, augment=False)
idx = list(range(0, len(ds), 2))[:100]
def srgb_inv(x):
    return torch.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4)
def fam(name, x, p):
    a = F.softplus(p)
    a0, a1, a2, a3 = [a[:, i].view(-1, 1, 1, 1) for i in range(4)]
    if name == "x":
        return ((a3 * x + a2) * x + a1) * x + a0
    L = srgb_inv(x)
    if name == "L":
        return ((a3 * L + a2) * L + a1) * L + a0
    if name == "Lgain":
        return L * (((a3 * x + a2) * x + a1) * x + a0)
init = {"x": [1e-3, .5, .25, .25], "L": [1e-4, 1., 1e-3, 1e-3], "Lgain": [1., 1e-3, 1e-3, 1e-3]}
def inv_sp(v): return float(np.log(np.expm1(v)))
xs, gts, modes, ldrs = [], [], [], []
for i in idx:
    it = ds[i]
    xs.append(it["ldr"]); gts.append(it["hdr"])
    modes.append(load_sample_meta(root / ds.records[i]["file"])["exposure"]["mode"])
x = torch.stack(xs).float(); gt = torch.stack(gts).float()
res = {}
for name in ["x", "L", "Lgain"]:
    p = torch.tensor([[inv_sp(v) for v in init[name]]] * len(idx), requires_grad=True)
    opt = torch.optim.Adam([p], lr=0.05)
    for k in range(300):
        loss = sum(pu21_hdr_loss(fam(name, x[j:j+1], p[j:j+1]), gt[j:j+1]) for j in range(len(idx)))
        opt.zero_grad(); loss.backward(); opt.step()
    with torch.no_grad():
        h = fam(name, x, p)
    res[name] = h
res["linear"] = srgb_inv(x)
disp = M.Display()
for name, h in res.items():
    sc = [M.score_image(h[j].permute(1,2,0).numpy(), gt[j].permute(1,2,0).numpy(), x[j].permute(1,2,0).numpy(), disp) for j in range(len(idx))]
    ps = np.array([s.pu21_psnr for s in sc]); ss = np.array([s.pu21_ssim for s in sc])
    cl = np.array([s.clip_pu21_psnr for s in sc], dtype=float)
    m = np.array(modes)
    print(f"{name:7s} all PU21 {ps.mean():.2f} SSIM {ss.mean():.4f} clip {np.nanmean(cl):.2f} | under {ps[m=='under'].mean():.2f} | clip {ps[m!='under'].mean():.2f}")
