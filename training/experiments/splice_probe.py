"""Where does a model's gain on a camera come from: its clipped pixels or the rest? Scores a splice of two weights
files, BODY's result where the input's max RGB is below LO and HIGHLIGHTS' where it is above HI (a linear ramp in
between), beside both, with the evaluation's metrics. Both results are linear radiance on the linearized input's
scale (residual fusion), so the splice needs no alignment of its own. The twenty-first round (training/LOG.md).

``python training/experiments/splice_probe.py PAIRS OUT BODY=WEIGHTS HIGHLIGHTS=WEIGHTS [LO HI]``"""
import sys

import numpy as np
import torch

from _common import load_weights
from sitm_training import evaluate as E
from sitm_training.baselines import _ldr01
from sitm_trt.model import predict_hdr


_LAST: dict[int, tuple[str, np.ndarray]] = {}  # per network: the last pair's result, which the splice reuses


def run(net, ldr: np.ndarray, pair) -> np.ndarray:
    """``net``'s HDR of ``ldr``; the evaluation runs every method on one pair before the next, so each network
    runs once per pair for both its own column and the splice's."""
    last = _LAST.get(id(net))
    if last is None or last[0] != pair.id:
        with torch.no_grad():
            hdr = predict_hdr(net, torch.from_numpy(np.ascontiguousarray(ldr)))[0].permute(1, 2, 0).numpy()
        _LAST[id(net)] = last = (pair.id, hdr)
    return last[1]


class Splice(E.Method):
    kind = "model"

    def __init__(self, body, high, lo: float, hi: float, name: str, description: str) -> None:
        self.body, self.high, self.lo, self.hi = body, high, lo, hi
        self.name, self.description = name, description

    def __call__(self, ldr: np.ndarray, pair) -> np.ndarray:
        t = np.clip((np.asarray(_ldr01(ldr)).max(axis=2, keepdims=True) - self.lo) / (self.hi - self.lo), 0, 1)
        return (1 - t) * run(self.body, ldr, pair) + t * run(self.high, ldr, pair)


class One(E.Method):
    kind = "model"

    def __init__(self, net, name: str, description: str) -> None:
        self.net, self.name, self.description = net, name, description

    def __call__(self, ldr: np.ndarray, pair) -> np.ndarray:
        return run(self.net, ldr, pair)


def main(argv: list[str]) -> None:
    if len(argv) not in (4, 6):
        raise SystemExit(__doc__)
    pairs, out, body, high = argv[:4]
    lo, hi = (float(argv[4]), float(argv[5])) if len(argv) == 6 else (0.90, 0.97)
    (bn, bw), (hn, hw) = body.split("=", 1), high.split("=", 1)
    nb, nh = load_weights(bw), load_weights(hw)
    methods = [E.BaselineMethod("linear"), One(nb, bn, bw), One(nh, hn, hw),
               Splice(nb, nh, lo, hi, f"{bn}-body-{hn}-high", f"{bn} below max RGB {lo}, {hn} above {hi}")]
    E.evaluate(pairs, methods, out, jod=True)


if __name__ == "__main__":
    main(sys.argv[1:])
