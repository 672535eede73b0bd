"""Package trained weights for shipping: ``python -m sitm_training.export --run RUN --out DIR/NAME``
(or ``--weights FILE [--card CARD]``).

Writes ``NAME.safetensors`` (float32, preset in the metadata), ``NAME-fp32.onnx`` and ``NAME-fp16.onnx`` (the
network graph for TensorRT; see ``sitm_trt.model.export_onnx``) and ``NAME.json``, the card: preset, the
sha256 of every file (``sitm_trt.load`` verifies the weights' one), the data recipe, the training run (steps,
seconds, losses, perceptual loss kind, git commit) and, with ``--eval DIR``, the evaluation table written by
``python -m sitm_training.evaluate``. Every file is written to a temporary name first and then renamed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path

from sitm_trt.model import export_onnx, save_weights
from sitm_trt.model.serialization import load_weights


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def export(weights: Path, out: Path, run_card: dict | None = None, eval_dir: Path | None = None) -> dict:
    out.parent.mkdir(parents=True, exist_ok=True)
    net = load_weights(weights)
    files = {"weights": out.with_suffix(".safetensors"), "fp32": out.parent / f"{out.name}-fp32.onnx",
             "fp16": out.parent / f"{out.name}-fp16.onnx"}
    tmp = {k: p.with_name(p.name + ".tmp" + p.suffix) for k, p in files.items()}
    try:
        meta = {"step": str((run_card or {}).get("step", ""))}
        save_weights(net, tmp["weights"], metadata=meta)
        export_onnx(net, tmp["fp32"], fp16=False)
        export_onnx(net, tmp["fp16"], fp16=True)
        for k in files:
            os.replace(tmp[k], files[k])
    finally:
        for p in tmp.values():
            if p.exists():
                p.unlink()
    card = {
        "name": out.name,
        "preset": net.preset.to_dict(),
        "sha256": sha256_file(files["weights"]),
        "onnx": {"fp32": sha256_file(files["fp32"]), "fp16": sha256_file(files["fp16"])},
        "parameters": sum(p.numel() for p in net.parameters()),
        "bytes": {k: p.stat().st_size for k, p in files.items()},
    }
    if run_card:
        card["training"] = {k: run_card.get(k) for k in ("step", "train_seconds", "losses", "validation", "perceptual",
                                                          "git_commit", "config", "torch", "device", "started")}
        if "average" in run_card:  # a card of python -m sitm_training.average: the averaged runs and how
            card["training"]["average"] = run_card["average"]
            card["training"]["runs"] = run_card.get("runs")
        card["data"] = run_card.get("data")
    if eval_dir is not None:
        card["evaluation"] = {"table": (eval_dir / "table.md").read_text(),
                              "summary": json.loads((eval_dir / "summary.json").read_text())
                              if (eval_dir / "summary.json").exists() else None}
    card_path = out.with_suffix(".json")
    tmp_card = card_path.with_name(card_path.name + ".tmp")
    tmp_card.write_text(json.dumps(card, indent=2) + "\n")
    os.replace(tmp_card, card_path)
    return card


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m sitm_training.export", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, help="a training run folder (uses RUN/ckpt/model.safetensors and RUN/card.json)")
    p.add_argument("--weights", type=Path, help="a weights file (instead of --run)")
    p.add_argument("--out", type=Path, required=True, help="DIR/NAME: writes NAME.safetensors, NAME.json, NAME-*.onnx")
    p.add_argument("--card", type=Path, help="with --weights: the training card to put in the card (a run's "
                                              "card.json, or the .json that python -m sitm_training.average writes)")
    p.add_argument("--eval", type=Path, help="an evaluation output folder to put in the card")
    args = p.parse_args(argv)
    if (args.run is None) == (args.weights is None):
        p.error("give exactly one of --run and --weights")
    if args.card is not None and args.run is not None:
        p.error("--card goes with --weights (--run uses RUN/card.json)")
    weights = args.weights or args.run / "ckpt" / "model.safetensors"
    card_file = args.run / "card.json" if args.run else args.card
    for f in (weights, card_file):
        if f is not None and not f.is_file():
            print(f"error: {f}: no such file", file=sys.stderr)
            return 2
    run_card = json.loads(card_file.read_text()) if card_file else None
    card = export(weights, args.out, run_card, args.eval)
    print(json.dumps({k: card[k] for k in ("name", "sha256", "parameters", "bytes")}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
