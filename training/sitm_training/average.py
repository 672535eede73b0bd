"""Average two weights files of the same preset ("model soup", Wortsman et al., ICML 2022):

``python -m sitm_training.average A.safetensors B.safetensors --alpha 0.1 --out SOUP.safetensors
[--card A-card.json --card B-card.json --card BASE-card.json]``

writes ``(1 - alpha) * A + alpha * B`` for every floating tensor (integer buffers must be equal), with the
provenance in the file's metadata (``sitm_training.average``: both files' sha256 and ``alpha``), and
``SOUP.json``, a card for ``python -m sitm_training.export --weights SOUP.safetensors --card SOUP.json``:
the training cards given with ``--card`` (every run the two files came from, e.g. both fine-tunes and the
checkpoint they started from), their summed ``train_seconds`` and summed ``step``, and their data set (which
must be one and the same recipe). Averaging is meaningful for two fine-tunes of one starting point (they
stay in one basin of the loss); for unrelated weights it makes a useless network, and nothing here can tell.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from sitm_trt.files import atomic_write
from sitm_trt.model import save_weights
from sitm_trt.model.serialization import load_weights
from sitm_trt.weights import sha256_file

from .export import combine_cards
from .train import git_commit

META_KEY = "sitm_training.average"

__all__ = ["average_state", "average", "META_KEY"]


def average_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], alpha: float) -> dict[str, torch.Tensor]:
    """``(1 - alpha) a + alpha b`` per floating tensor; other tensors must be equal in ``a`` and ``b``."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if a.keys() != b.keys():
        only = sorted(a.keys() ^ b.keys())
        raise ValueError(f"the two networks have different tensors: {only[:5]}")
    out = {}
    for k, ta in a.items():
        tb = b[k]
        if ta.shape != tb.shape or ta.dtype != tb.dtype:
            raise ValueError(f"{k}: {tuple(ta.shape)} {ta.dtype} vs {tuple(tb.shape)} {tb.dtype}")
        if ta.is_floating_point():
            out[k] = torch.lerp(ta.double(), tb.double(), alpha).to(ta.dtype)
        elif torch.equal(ta, tb):
            out[k] = ta.clone()
        else:
            raise ValueError(f"{k}: integer tensors differ; they cannot be averaged")
    return out


def average(a: Path, b: Path, alpha: float, out: Path, cards: list[Path] | None = None) -> dict:
    """Write the average of ``a`` and ``b`` to ``out`` and its card to ``out.with_suffix('.json')``; returns the card."""
    runs = combine_cards([json.loads(Path(c).read_text()) for c in (cards or [])])
    na, nb = load_weights(a), load_weights(b)
    if na.preset != nb.preset:
        da, db = na.preset.to_dict(), nb.preset.to_dict()
        diff = ", ".join(f"{k} {da.get(k)!r} vs {db.get(k)!r}" for k in sorted(set(da) | set(db)) if da.get(k) != db.get(k))
        raise ValueError(f"{a} and {b} are different networks ({diff or 'presets differ'})")
    sa, sb = na.state_dict(), nb.state_dict()
    state = average_state(sa, sb, alpha)
    changed = sum(1 for k, v in sa.items() if v.is_floating_point() and not torch.equal(v, sb[k]))
    na.load_state_dict(state, strict=True)
    provenance = {"alpha": alpha, "a": {"path": str(a), "sha256": sha256_file(a)}, "b": {"path": str(b), "sha256": sha256_file(b)},
                  "tensors_averaged": changed, "tensors": len(state)}
    out.parent.mkdir(parents=True, exist_ok=True)  # like train --out and export: the folder asked for is made
    save_weights(na, out, metadata={META_KEY: json.dumps(provenance)})
    card = {"average": provenance, "git_commit": git_commit(), **runs}
    atomic_write(out.with_suffix(".json"), (json.dumps(card, indent=2) + "\n").encode())
    return card


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m sitm_training.average", description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("a", type=Path, help="weights A (.safetensors), weight 1 - alpha")
    p.add_argument("b", type=Path, help="weights B (.safetensors), weight alpha")
    p.add_argument("--alpha", type=float, required=True, help="B's share, in [0, 1]")
    p.add_argument("--out", type=Path, required=True, help="the averaged weights (.safetensors); its card goes beside it")
    p.add_argument("--card", type=Path, action="append", default=[],
                   help="a training run card (card.json) of a run behind A or B (repeatable)")
    args = p.parse_args(argv)
    for f in (args.a, args.b, *args.card):
        if not f.is_file():
            print(f"error: {f}: no such file", file=sys.stderr)
            return 2
    if args.out.suffix != ".safetensors":
        print(f"error: --out {args.out}: must end in .safetensors", file=sys.stderr)
        return 2
    try:
        card = average(args.a, args.b, args.alpha, args.out, args.card)
    except (ValueError, RuntimeError, OSError) as err:  # JSONDecodeError is a ValueError
        print(f"error: {err}", file=sys.stderr)
        return 2
    except Exception as err:  # safetensors' own error type for a file that is not safetensors
        if type(err).__name__ != "SafetensorError":
            raise
        print(f"error: not a weights file: {err}", file=sys.stderr)
        return 2
    print(f"wrote {args.out} ({card['average']['tensors_averaged']} of {card['average']['tensors']} tensors differ) "
          f"and {args.out.with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
