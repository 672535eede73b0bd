"""What the experiment scripts share: the import path, the torch sRGB decoding (``sitm_training.losses``), the
evaluation's JOD of one result and a mask edit (for the scripts that take Eq. 7 apart image by image), and the
make-init / train / eval commands of a script that patches the PyTorch reference in its own process."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # sitm_training, without installing it

from sitm_trt.model.mefm import _softplus_inverse as softplus_inverse  # noqa: E402,F401  (re-exported)
from sitm_trt.model.serialization import load_weights  # noqa: E402
from sitm_training.losses import srgb_decode  # noqa: E402,F401  (re-exported)


def jod_scorer() -> Callable[[np.ndarray, np.ndarray, np.ndarray], float]:
    """``score(pred, gt, ldr)``: ColorVideoVDP JOD of ``pred`` scale-aligned to ``gt`` over ``ldr``'s well-exposed
    pixels, on the evaluation's display (docs/evaluation.md). Needs ``cvvdp``."""
    from sitm_training import metrics as M

    display = M.Display()
    jod = M.JOD(display)

    def score(pred: np.ndarray, gt: np.ndarray, ldr: np.ndarray) -> float:
        return jod(display(pred * M.align_scale(pred, gt, ldr)), display(gt))

    return score


def without(masks: torch.Tensor, k: int) -> torch.Tensor:
    """Eq. 7's masks ``(M_up, M_mid, M_down)`` with mask ``k`` moved into ``M_mid`` (that image left out)."""
    m = masks.clone()
    m[:, 1] += m[:, k]
    m[:, k] = 0
    return m


def evaluate(weights: str, pairs: str, out: str, name: str, description: str, baselines: tuple[str, ...],
             jod: bool) -> None:
    """``python -m sitm_training.evaluate`` for the patched network (``predict_hdr``, the PyTorch reference)."""
    from sitm_training import evaluate as E
    from sitm_trt.model import predict_hdr

    net = load_weights(weights)

    class Patched(E.Method):
        kind = "model"

        def __init__(self) -> None:
            self.name, self.description = name, f"{description}, weights `{weights}`"

        def __call__(self, ldr: np.ndarray, pair) -> np.ndarray:
            with torch.no_grad():
                return predict_hdr(net, torch.from_numpy(np.ascontiguousarray(ldr)))[0].permute(1, 2, 0).numpy()

    E.evaluate(pairs, [E.BaselineMethod(b) for b in baselines] + [Patched()], out, jod=jod)


def main(argv: list[str], make_init: Callable[[str, str], None], eval_kw: dict,
         extra: dict[str, Callable[[list[str]], None]] | None = None) -> int:
    """``make-init OLD NEW`` | ``train ARGS`` (``python -m sitm_training.train``'s) | ``eval WEIGHTS PAIRS OUT`` | extra."""
    cmd, args = (argv[0], argv[1:]) if argv else ("", [])
    if cmd == "make-init" and len(args) == 2:
        make_init(*args)
    elif cmd == "train":
        from sitm_training.train import main as train_main

        return train_main(args)
    elif cmd == "eval" and len(args) == 3:
        evaluate(*args, **eval_kw)
    elif extra and cmd in extra:
        extra[cmd](args)
    else:
        print(f"usage: {Path(sys.argv[0]).name} make-init OLD NEW | train ARGS | eval WEIGHTS PAIRS OUT"
              + "".join(f" | {k} ..." for k in extra or {}), file=sys.stderr)
        return 2
    return 0
