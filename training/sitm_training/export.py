"""Package trained weights for shipping: ``python -m sitm_training.export --run RUN --out DIR/NAME``
(or ``--weights FILE [--card CARD ...]``).

Writes ``NAME.safetensors`` (float32, preset in the metadata), ``NAME-fp32.onnx`` and ``NAME-fp16.onnx`` (the
network graph for TensorRT; see ``sitm_trt.model.export_onnx``) and ``NAME.json``, the card: preset, the
sha256 of every file (``sitm_trt.load`` verifies the weights' one), the data recipe, the training run (steps,
seconds, losses, perceptual loss kind, git commit) and, with ``--eval DIR``, the evaluation table written by
``python -m sitm_training.evaluate``. The weights, the card's match with them (the same preset, fusion, boost and
MEFM context), the evaluation folder and both graphs are checked and made before anything is written, and every
file is written atomically (``sitm_trt.files.atomic_write``). ``--out DIR/NAME.safetensors`` is ``DIR/NAME``.

Weights that more than one run made (a fine-tune started with ``--init`` from another run's weights, and that
one from a third) take every run's card, the one that wrote the weights first: ``--weights W --card
FINETUNE/card.json --card BASE/card.json``. The card then counts the steps and seconds of all of them and keeps
their cards under ``training.runs``; losses, options and validation are the first card's. The runs may have used
different data sets: ``data`` is then the first card's, its ``sources`` every run's. The oldest card may be an
exported one (the ``NAME.json`` of shipped weights a fine-tune started from).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from sitm_trt.files import atomic_write
from sitm_trt.model import save_weights
from sitm_trt.model.export import onnx_bytes
from sitm_trt.model.serialization import load_weights
from sitm_trt.errors import WeightsError
from sitm_trt.weights import sha256_file

log = logging.getLogger(__name__)


def combine_cards(runs: list[dict], same_data: bool = True) -> dict:
    """The training summary of weights that several runs made (a chain of ``--init`` fine-tunes, or the runs
    behind a weight average): their summed steps and seconds, their data set, the perceptual loss kinds, and the
    cards themselves under ``runs``. An average needs one data set (``ValueError`` when the cards name different
    recipes); a chain of fine-tunes (``same_data=False``) may change it, and its ``data`` is then the newest run's
    with ``sources`` the union of every run's (so the card names every source the weights ever learned from)."""
    runs = [_as_run_card(r) for r in runs]
    recipes = {json.dumps((r.get("data") or {}).get("recipe_hash")) for r in runs}
    if same_data and len(recipes) > 1:
        raise ValueError(f"the cards come from different data sets ({sorted(recipes)})")
    data = runs[0].get("data") if runs else None
    if len(recipes) > 1 and data is not None:
        datas = [_data_with_sources(r.get("data")) or {} for r in runs]
        sources: dict[tuple, dict] = {}  # each (id, split) once, in the order the runs name them, newest run first
        for d in datas:
            for src in d.get("sources") or []:
                sources.setdefault((src.get("id"), src.get("split")), src)
        data = {**datas[0], "sources": list(sources.values()),
                "lineage_recipe_hashes": [d.get("recipe_hash") for d in datas]}
    return {"runs": runs,
            "step": sum(int(r.get("step") or 0) for r in runs),
            "train_seconds": sum(float(r.get("train_seconds") or 0.0) for r in runs),
            "data": data,
            "perceptual": sorted({str(r.get("perceptual")) for r in runs}) if runs else None}


def _as_run_card(card: dict) -> dict:
    """A run's card as ``train`` writes it; an exported card (``NAME.json``, e.g. the shipped default a fine-tune
    started from) holds that under ``training`` and ``data``."""
    if "training" in card and "sha256" in card and "step" not in card:
        return {**card["training"], "data": card.get("data"), "exported_as": card.get("name"),
                "sha256": card.get("sha256")}
    return card


def lineage_card(cards: list[dict]) -> dict:
    """One run card for weights made by ``cards[0]``'s run, started from ``cards[1]``'s weights, and so on (each
    may have trained on another data set; an exported card is accepted as the oldest)."""
    if len(cards) == 1:
        return _as_run_card(cards[0])
    combined = combine_cards(cards, same_data=False)
    return {**_as_run_card(cards[0]), **{k: combined[k] for k in ("runs", "step", "train_seconds", "data")}}


CONFIG_PRESET_KEYS = {"preset": "name", "fusion": "fusion", "boost": "boost", "mefm_context": "mefm_context"}
"""A run card's ``config`` option -> the ``Preset`` field it sets: what a card and the weights must agree on."""


def check_card_matches(net: Any, run_card: dict | None) -> None:
    """Raise ValueError when ``run_card`` (the newest run's ``config``) describes another network than ``net``'s
    preset (another preset, fusion, boost or MEFM context): its provenance would not be these weights'."""
    config = (run_card or {}).get("config") or {}
    have = net.preset.to_dict()
    for option, field in CONFIG_PRESET_KEYS.items():
        if option in config and field in have and config[option] != have[field]:
            raise ValueError(f"the card's run trained --{option.replace('_', '-')} {config[option]!r}, and these "
                             f"weights have {field} {have[field]!r}: the card is not this network's")


def export_names(out: Path) -> dict[str, Path]:
    """The files ``export`` writes for ``--out DIR/NAME`` (``DIR/NAME.safetensors`` is taken as NAME too; a dot
    inside NAME stays, ``v1.2`` gives ``v1.2.safetensors``)."""
    name = out.name[: -len(".safetensors")] if out.name.endswith(".safetensors") else out.name
    if not name or name in (".", ".."):
        raise ValueError(f"--out {out}: give DIR/NAME")
    return {"weights": out.parent / f"{name}.safetensors", "card": out.parent / f"{name}.json",
            "fp32": out.parent / f"{name}-fp32.onnx", "fp16": out.parent / f"{name}-fp16.onnx"}


def export(weights: Path, out: Path, run_card: dict | None = None, eval_dir: Path | None = None) -> dict:
    """Write ``out``'s weights, card and two ONNX graphs (:func:`export_names`). Everything that can fail on the
    inputs (the weights, the card's match, the evaluation folder, the graphs) is done before the first file is
    written, so a mistake never leaves new weights beside an old card."""
    files = export_names(out)
    net = load_weights(weights)
    check_card_matches(net, run_card)
    evaluation = None
    if eval_dir is not None:
        table = eval_dir / "table.md"
        if not table.is_file():
            raise ValueError(f"--eval {eval_dir}: no table.md there (the output folder of python -m "
                             "sitm_training.evaluate)")
        summary = eval_dir / "summary.json"
        evaluation = {"table": table.read_text(),
                      "summary": json.loads(summary.read_text()) if summary.exists() else None}
    graphs = {k: onnx_bytes(net, fp16=k == "fp16") for k in ("fp32", "fp16")}  # a failed export writes nothing
    out.parent.mkdir(parents=True, exist_ok=True)
    save_weights(net, files["weights"], metadata={"step": str((run_card or {}).get("step", ""))})
    for k, data in graphs.items():
        atomic_write(files[k], data)
    card = {
        "name": files["weights"].stem,
        "preset": net.preset.to_dict(),
        "sha256": sha256_file(files["weights"]),
        "onnx": {"fp32": sha256_file(files["fp32"]), "fp16": sha256_file(files["fp16"])},
        "parameters": sum(p.numel() for p in net.parameters()),
        "bytes": {k: files[k].stat().st_size for k in ("weights", "fp32", "fp16")},
    }
    if run_card:
        card["training"] = {k: run_card.get(k) for k in ("step", "train_seconds", "losses", "validation", "perceptual",
                                                          "git_commit", "config", "torch", "device", "started")}
        if "average" in run_card:  # a card of python -m sitm_training.average: the averaged runs and how
            card["training"]["average"] = run_card["average"]
        if "runs" in run_card:  # an average's or a chain of fine-tunes' cards
            card["training"]["runs"] = run_card["runs"]
        card["data"] = _data_with_sources(run_card.get("data"))
    if evaluation is not None:
        card["evaluation"] = evaluation
    atomic_write(files["card"], (json.dumps(card, indent=2) + "\n").encode())
    return card


def _data_with_sources(data: dict[str, Any] | None) -> dict[str, Any] | None:
    """The run card's data section with every source's license and checksum (``card_sources``); a card written
    before runs recorded them gets them from its data set's manifest when that folder is still there."""
    if not data or data.get("sources") or not data.get("root"):
        return data
    manifest = Path(data["root"]) / "manifest.json"
    if not manifest.is_file():
        log.warning("the card's data set %s is gone: the exported card lists no data sources", data["root"])
        return data
    from sitm_training.data.source_tables import card_sources

    return {**data, "sources": card_sources(json.loads(manifest.read_text()))}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m sitm_training.export", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, help="a training run folder (uses RUN/ckpt/model.safetensors and RUN/card.json)")
    p.add_argument("--weights", type=Path, help="a weights file (instead of --run)")
    p.add_argument("--out", type=Path, required=True, help="DIR/NAME: writes NAME.safetensors, NAME.json, NAME-*.onnx")
    p.add_argument("--card", type=Path, action="append", default=[],
                   help="with --weights: the training card to put in the card (a run's card.json, or the .json "
                        "that python -m sitm_training.average writes); repeat it for the runs the weights' run "
                        "started from, newest first")
    p.add_argument("--eval", type=Path, help="an evaluation output folder to put in the card")
    args = p.parse_args(argv)
    if (args.run is None) == (args.weights is None):
        p.error("give exactly one of --run and --weights")
    if args.card and args.run is not None:
        p.error("--card goes with --weights (--run uses RUN/card.json)")
    weights = args.weights or args.run / "ckpt" / "model.safetensors"
    card_files = [args.run / "card.json"] if args.run else args.card
    for f in (weights, *card_files):
        if not f.is_file():
            print(f"error: {f}: no such file", file=sys.stderr)
            return 2
    cards = []
    for f in card_files:
        try:
            cards.append(json.loads(f.read_text()))
        except (ValueError, UnicodeDecodeError) as err:  # JSONDecodeError is a ValueError
            print(f"error: {f}: not a JSON card ({err})", file=sys.stderr)
            return 2
    try:
        run_card = lineage_card(cards) if cards else None
        card = export(weights, args.out, run_card, args.eval)
    except (ValueError, WeightsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps({k: card[k] for k in ("name", "sha256", "parameters", "bytes")}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
