"""Can one highlight level pass the gate for both cameras? Scores a weights file's result with its highlights
raised by a fixed number of stops, ``result * 2**(d * t)``, where ``t`` ramps from 0 to 1 as the input's max RGB
goes from LO to HI (default 0.90 to 0.97, the splice probe's ramp; ``--ramp LO HI``), for each ``d`` given, beside
the result itself, with the evaluation's metrics (JOD on). The scale alignment uses the well-exposed pixels, which
the ramp leaves alone, so each column moves only where the camera clipped or nearly clipped. The twenty-fifth
round (training/LOG.md).

With ``--dark-ring`` the raise skips the clipped regions whose ring is bright (``losses.bright_ring_regions``: a sky
or a window that only just clips), so only regions ringed by darker pixels (lamps, the sun in a darker sky,
speculars) are raised.

``python training/experiments/level_probe.py PAIRS OUT NAME=WEIGHTS D [D ...] [--ramp LO HI] [--dark-ring]``"""
import sys

import numpy as np
import torch

from _common import load_weights
from sitm_training import evaluate as E
from sitm_training.baselines import _ldr01
from sitm_training.losses import bright_ring_regions
from splice_probe import One, run

LO, HI = 0.90, 0.97


class Raised(E.Method):
    kind = "model"

    def __init__(self, net, stops: float, lo: float, hi: float, dark_ring: bool, name: str, description: str) -> None:
        self.net, self.stops, self.lo, self.hi, self.dark_ring = net, stops, lo, hi, dark_ring
        self.name, self.description = name, description

    def __call__(self, ldr: np.ndarray, pair) -> np.ndarray:
        x = np.asarray(_ldr01(ldr), np.float32)
        t = np.clip((x.max(axis=2, keepdims=True) - self.lo) / (self.hi - self.lo), 0, 1)
        if self.dark_ring:
            bright = bright_ring_regions(torch.from_numpy(x).permute(2, 0, 1)[None])[0, 0].numpy()
            t = np.where(bright[..., None], 0.0, t)
        return run(self.net, ldr, pair) * np.exp2(self.stops * t).astype(np.float32)


def main(argv: list[str]) -> None:
    lo, hi = LO, HI
    dark_ring = "--dark-ring" in argv
    argv = [a for a in argv if a != "--dark-ring"]
    if "--ramp" in argv:
        i = argv.index("--ramp")
        lo, hi = float(argv[i + 1]), float(argv[i + 2])
        argv = argv[:i] + argv[i + 3:]
    if len(argv) < 4:
        raise SystemExit(__doc__)
    pairs, out, spec, stops = argv[0], argv[1], argv[2], [float(d) for d in argv[3:]]
    name, weights = spec.split("=", 1)
    net = load_weights(weights)
    methods = [E.BaselineMethod("linear"), E.BaselineMethod("rempel"), One(net, name, weights)]
    where = ", dark-ringed regions only" if dark_ring else ""
    methods += [Raised(net, d, lo, hi, dark_ring, f"{name}-up{d:g}",
                       f"{name} raised by {d:+g} stops, ramp {lo}-{hi} of the input max RGB{where}") for d in stops]
    E.evaluate(pairs, methods, out, jod=True)


if __name__ == "__main__":
    main(sys.argv[1:])
