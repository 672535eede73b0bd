"""How much highlight detail the ADEM's exposure-down image carries: in the input's clipped pixels (max_c > 0.95)
of one split's samples (test by default), the MSE of I_down against its label, next to the MSE of the best flat guess (the label's own
mean there, per channel: an oracle level with no detail), and the spread of each.

python training/experiments/adem_highlights.py [WEIGHTS] [SAMPLES_ROOT] [SPLIT (test)]
"""
import sys

import numpy as np
import torch
from _common import load_weights

from sitm_training.data import SampleDataset
from sitm_trt import reference as ops

weights = sys.argv[1] if len(sys.argv) > 1 else "python/sitm_trt/weights/default.safetensors"
root = sys.argv[2] if len(sys.argv) > 2 else "data/sitm256"
net = load_weights(weights)
split = sys.argv[3] if len(sys.argv) > 3 else "test"
ds = SampleDataset(root, split, crop=None, augment=False)
e_net, e_flat, std_lab, std_net = [], [], [], []
for i in range(len(ds)):
    it = ds[i]
    x, lab = it["ldr"][None], it["down"][None]
    h, wd = x.shape[-2:]
    clip = (x.amax(1, keepdim=True) > 0.95).expand_as(x)
    if clip.sum() < 150:  # 50 pixels x 3 channels
        continue
    with torch.no_grad():
        d = net(*ops.pre(x, stride=net.stride)).image_down[..., :h, :wd]
    flat = torch.stack([lab[0, c][clip[0, c]].mean() for c in range(3)]).view(1, 3, 1, 1).expand_as(lab)
    e_net.append(float(((d - lab)[clip] ** 2).mean()))
    e_flat.append(float(((flat - lab)[clip] ** 2).mean()))
    std_lab.append(float(lab[clip].std()))
    std_net.append(float(d[clip].std()))
print(f"{len(e_net)} {split} images with >= 50 clipped pixels")
print(f"MSE in the clipped pixels: ADEM's I_down {np.mean(e_net):.5f}, the label's flat mean {np.mean(e_flat):.5f}")
print(f"std in the clipped pixels: label {np.mean(std_lab):.4f}, ADEM {np.mean(std_net):.4f}")
