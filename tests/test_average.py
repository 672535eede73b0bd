"""Weight averaging (``python -m sitm_training.average``) and packaging its result (``sitm_training.export``)."""

from __future__ import annotations

import hashlib
import re
import json

import pytest
import torch

pytest.importorskip("safetensors")

from sitm_trt.model import SITMNet, save_weights  # noqa: E402
from sitm_trt.model.serialization import load_weights  # noqa: E402
from sitm_training import average as A  # noqa: E402


def _pair(tmp_path):
    torch.manual_seed(1)
    a = SITMNet("compact").eval()
    b = SITMNet("compact").eval()
    b.load_state_dict(a.state_dict())
    with torch.no_grad():  # a "fine-tune" of a: only the MEFM differs
        for p in b.mefm.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    pa, pb = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    save_weights(a, pa)
    save_weights(b, pb)
    return a, b, pa, pb


def test_average_state_is_the_linear_interpolation():
    a = {"w": torch.tensor([0.0, 1.0, 2.0]), "n": torch.tensor([3])}
    b = {"w": torch.tensor([4.0, 1.0, -2.0]), "n": torch.tensor([3])}
    out = A.average_state(a, b, 0.25)
    assert out["w"].tolist() == pytest.approx([1.0, 1.0, 1.0]) and out["n"].tolist() == [3]
    assert A.average_state(a, b, 0.0)["w"].tolist() == a["w"].tolist()
    with pytest.raises(ValueError, match="alpha"):
        A.average_state(a, b, 1.5)
    with pytest.raises(ValueError, match="integer"):
        A.average_state(a, {**b, "n": torch.tensor([4])}, 0.5)
    with pytest.raises(ValueError, match="different tensors"):
        A.average_state(a, {"w": b["w"]}, 0.5)
    with pytest.raises(ValueError, match="w"):
        A.average_state(a, {**b, "w": torch.zeros(4)}, 0.5)


def test_average_cli_writes_weights_and_card(tmp_path, capsys):
    a, b, pa, pb = _pair(tmp_path)
    cards = []
    for i, (step, secs) in enumerate(((100, 10.0), (20, 2.5))):
        c = tmp_path / f"card{i}.json"
        c.write_text(json.dumps({"step": step, "train_seconds": secs, "data": {"recipe_hash": "abc"}, "perceptual": "x"}))
        cards.append(c)
    out = tmp_path / "new" / "folder" / "soup.safetensors"  # a folder that does not exist yet is made
    args = [str(pa), str(pb), "--alpha", "0.1", "--out", str(out)] + [f"--card={c}" for c in cards]
    assert A.main(args) == 0
    soup = load_weights(out)
    sa, sb = a.state_dict(), b.state_dict()
    for k, v in soup.state_dict().items():
        if v.is_floating_point():
            torch.testing.assert_close(v, 0.9 * sa[k] + 0.1 * sb[k], rtol=1e-6, atol=1e-7)
    card = json.loads(out.with_suffix(".json").read_text())
    assert card["step"] == 120 and card["train_seconds"] == pytest.approx(12.5) and card["data"]["recipe_hash"] == "abc"
    prov = card["average"]
    assert prov["alpha"] == 0.1 and prov["b"]["sha256"] == hashlib.sha256(pb.read_bytes()).hexdigest()
    assert 0 < prov["tensors_averaged"] < prov["tensors"]  # the MEFM only
    from safetensors import safe_open

    with safe_open(str(out), "pt") as f:
        assert json.loads(f.metadata()[A.META_KEY])["a"]["sha256"] == prov["a"]["sha256"]
    # clear errors, no output file: a missing input, a card from another data set, a bad suffix
    assert A.main([str(pa), str(tmp_path / "none.safetensors"), "--alpha", "0.5", "--out", str(tmp_path / "x.safetensors")]) == 2
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"data": {"recipe_hash": "zzz"}}))
    assert A.main([str(pa), str(pb), "--alpha", "0.5", "--out", str(tmp_path / "y.safetensors"),
                   "--card", str(cards[0]), "--card", str(other)]) == 2
    assert "different data sets" in capsys.readouterr().err
    assert not (tmp_path / "x.safetensors").exists() and not (tmp_path / "y.safetensors").exists()
    assert A.main([str(pa), str(pb), "--alpha", "0.5", "--out", str(tmp_path / "z.bin")]) == 2
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a safetensors file")
    assert A.main([str(garbage), str(pb), "--alpha", "0.5", "--out", str(tmp_path / "g.safetensors")]) == 2
    assert "not a weights file" in capsys.readouterr().err


def test_export_takes_the_average_card(tmp_path):
    from sitm_training import export as E

    _, _, pa, pb = _pair(tmp_path)
    c = tmp_path / "run.json"
    c.write_text(json.dumps({"step": 7, "train_seconds": 1.0, "data": {"recipe_hash": "abc"}}))
    soup = tmp_path / "soup.safetensors"
    A.average(pa, pb, 0.5, soup, [c])
    out = tmp_path / "pkg" / "default"
    assert E.main(["--weights", str(soup), "--card", str(soup.with_suffix(".json")), "--out", str(out)]) == 0
    card = json.loads(out.with_suffix(".json").read_text())
    assert card["training"]["step"] == 7 and card["training"]["average"]["alpha"] == 0.5
    assert card["training"]["runs"][0]["train_seconds"] == 1.0 and card["data"]["recipe_hash"] == "abc"
    assert card["sha256"] == hashlib.sha256(out.with_suffix(".safetensors").read_bytes()).hexdigest()
    for prec in ("fp32", "fp16"):
        assert (out.parent / f"default-{prec}.onnx").is_file()
    assert not list(out.parent.glob("*.tmp*"))
    assert E.main(["--weights", str(soup), "--card", str(tmp_path / "nope.json"), "--out", str(out)]) == 2


def test_export_takes_a_chain_of_fine_tune_cards(tmp_path, capsys):
    """Weights from a fine-tune of a fine-tune: every run's card, the newest first; steps and seconds add up."""
    from sitm_training import export as E

    _, _, _, pb = _pair(tmp_path)
    cards = []
    for i, (step, secs, loss) in enumerate([(2000, 600.0, 0.5), (2000, 2400.0, 0.7), (13500, 11000.0, 0.9)]):
        c = tmp_path / f"card{i}.json"
        c.write_text(json.dumps({"step": step, "train_seconds": secs, "losses": {"total": loss},
                                 "data": {"recipe_hash": "abc"}, "perceptual": "ssim-substitute"}))
        cards.append(c)
    out = tmp_path / "pkg" / "default"
    assert E.main(["--weights", str(pb), "--out", str(out)] + [f"--card={c}" for c in cards]) == 0
    training = json.loads(out.with_suffix(".json").read_text())["training"]
    assert training["step"] == 17500 and training["train_seconds"] == pytest.approx(14000.0)
    assert training["losses"] == {"total": 0.5}  # the run that wrote the weights
    assert [r["step"] for r in training["runs"]] == [2000, 2000, 13500]
    # one card alone stays as it was: no "runs"
    assert E.main(["--weights", str(pb), "--out", str(out), "--card", str(cards[2])]) == 0
    training = json.loads(out.with_suffix(".json").read_text())["training"]
    assert training["step"] == 13500 and "runs" not in training
    # a chain may change data set (a fine-tune on a rebuilt set): the card keeps the newest run's data and lists
    # every run's sources once; the oldest may be an exported card (the shipped default a fine-tune started from)
    src = lambda i, split: {"id": i, "split": split, "license": "CC0", "license_known": True, "origin": "o"}  # noqa: E731
    newer = tmp_path / "newer.json"
    newer.write_text(json.dumps({"step": 100, "train_seconds": 10.0, "losses": {"total": 0.1},
                                 "data": {"recipe_hash": "xyz", "sources": [src("a", "train"), src("r", "train")]}}))
    exported = tmp_path / "exported.json"
    exported.write_text(json.dumps({"name": "default", "sha256": "f" * 64, "preset": {},
                                    "training": {"step": 7, "train_seconds": 3.0, "losses": {"total": 9.0}},
                                    "data": {"recipe_hash": "abc", "sources": [src("a", "train"), src("b", "test")]}}))
    assert E.main(["--weights", str(pb), "--out", str(out), "--card", str(newer), "--card", str(exported)]) == 0
    card = json.loads(out.with_suffix(".json").read_text())
    assert card["training"]["step"] == 107 and card["training"]["losses"] == {"total": 0.1}
    assert card["training"]["runs"][1]["exported_as"] == "default"
    assert [(s["id"], s["split"]) for s in card["data"]["sources"]] == [("a", "train"), ("r", "train"), ("b", "test")]
    assert card["data"]["recipe_hash"] == "xyz" and card["data"]["lineage_recipe_hashes"] == ["xyz", "abc"]


def test_export_checks_everything_before_writing_and_names_files_by_one_stem(tmp_path, capsys):
    """A wrong --eval folder or a card of another network fails before any file is written, so an earlier export
    there stays consistent (its weights still match its card); NAME keeps a dot and NAME.safetensors is NAME."""
    from sitm_training import export as E
    from sitm_trt.weights import load

    _, b, _, pb = _pair(tmp_path)
    out = tmp_path / "pkg" / "v1.2"
    assert E.main(["--weights", str(pb), "--out", str(out)]) == 0
    names = sorted(p.name for p in out.parent.iterdir())
    assert names == ["v1.2-fp16.onnx", "v1.2-fp32.onnx", "v1.2.json", "v1.2.safetensors"]
    before = {p.name: p.read_bytes() for p in out.parent.iterdir()}
    assert json.loads((out.parent / "v1.2.json").read_text())["name"] == "v1.2"
    assert E.main(["--weights", str(pb), "--out", str(out), "--eval", str(tmp_path / "eval-typo")]) == 2
    assert "no table.md there" in capsys.readouterr().err
    other = tmp_path / "other.json"
    fusion = "paper" if b.preset.fusion == "residual" else "residual"
    other.write_text(json.dumps({"step": 1, "config": {"preset": b.preset.name, "fusion": fusion}}))
    assert E.main(["--weights", str(pb), "--card", str(other), "--out", str(out)]) == 2
    assert f"trained --fusion '{fusion}'" in capsys.readouterr().err
    garbage = tmp_path / "garbage.json"
    garbage.write_bytes(b"\x00not json")
    assert E.main(["--weights", str(pb), "--card", str(garbage), "--out", str(out)]) == 2
    assert f"{garbage}: not a JSON card" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in out.parent.iterdir()} == before
    load(out.parent / "v1.2.safetensors")  # its card's sha256 still matches
    # DIR/NAME.safetensors is DIR/NAME
    assert E.main(["--weights", str(pb), "--out", str(tmp_path / "pkg2" / "mine.safetensors")]) == 0
    assert sorted(p.name for p in (tmp_path / "pkg2").iterdir()) == [
        "mine-fp16.onnx", "mine-fp32.onnx", "mine.json", "mine.safetensors"]


def test_average_names_what_differs_between_two_networks(tmp_path, capsys):
    from sitm_trt.weights import load

    shipped = load("default")  # compact with the residual fusion
    plain = tmp_path / "plain.safetensors"
    save_weights(SITMNet("compact").eval(), plain)  # compact as published: the paper's fusion
    assert A.main([str(plain), str(shipped.path), "--alpha", "0.5", "--out", str(tmp_path / "s.safetensors")]) == 2
    assert re.search(r"are different networks \(.*fusion 'paper' vs 'residual'", capsys.readouterr().err)
