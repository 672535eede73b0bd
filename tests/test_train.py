"""The trainer end to end on a tiny procedural data set: both stages, checkpoint, resume, run card, log."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from sitm_training.data import Recipe, build
from sitm_training.train import TrainConfig, train
from sitm_trt.model.serialization import load_weights
from sitm_trt.weights import sha256_file

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    build(root, Recipe(seed=1, n=12, n_test=0, size=64, val_fraction=0.2), progress=False)
    return root


def read_log(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def run(tiny_data, out, steps2):
    cfg = TrainConfig(data=str(tiny_data), out=str(out), stage1_steps=3, stage2_steps=steps2, batch=2, crop=32,
                      workers=0, log_every=1, val_every=3, ckpt_every=2, val_images=1, disc_width=8, disc_max_width=16)
    with pytest.warns(UserWarning, match="perceptual loss of Eq. 10 is REPLACED"):
        return train(cfg)


def train_small(data, out, **options):
    """A few steps at batch 2 on 32-pixel crops, no discriminator: ``(config, card)``; a ``ValueError`` for a bad
    option comes out before any step. ``options`` override anything (steps, the option under test)."""
    cfg = TrainConfig(**{"data": str(data), "out": str(out), "batch": 2, "crop": 32, "workers": 0, "gan": False,
                         **options})
    with pytest.warns(UserWarning, match="perceptual loss of Eq. 10 is REPLACED"):
        return cfg, train(cfg)


def test_two_stages_checkpoint_and_resume(tiny_data, tmp_path):
    card = run(tiny_data, tmp_path, steps2=2)
    assert card["step"] == 5 and card["perceptual"] == "ssim-substitute"
    assert card["data"]["recipe"]["seed"] == 1 and card["config"]["preset"] == "compact"
    rows = read_log(tmp_path / "log.csv")
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4, 5]
    assert [r["stage"] for r in rows] == ["1", "1", "1", "2", "2"]
    assert all(float(r["hdr"]) == 0 for r in rows[:3]) and all(float(r["hdr"]) > 0 for r in rows[3:])
    assert (tmp_path / "val" / "step0000003.png").exists()
    state = json.loads((tmp_path / "ckpt" / "state.json").read_text())
    assert state["step"] == 5 and state["stage"] == 2
    first = load_weights(tmp_path / "ckpt" / "model.safetensors").state_dict()

    card2 = run(tiny_data, tmp_path, steps2=4)  # same run folder, more steps: resumes at 5
    assert card2["step"] == 7
    rows = read_log(tmp_path / "log.csv")
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4, 5, 6, 7]
    second = load_weights(tmp_path / "ckpt" / "model.safetensors").state_dict()
    assert any(not torch.equal(first[k], second[k]) for k in first)  # training went on from the checkpoint
    assert card2["train_seconds"] > card["train_seconds"]
    assert card2["history"] == [{"step": 5, "changed": {"stage2_steps": [2, 4]}}]  # what the resume changed


def test_crop_must_fit_the_stride(tiny_data, tmp_path):
    with pytest.raises(ValueError, match="multiple of the network stride 16"):
        train(TrainConfig(data=str(tiny_data), out=str(tmp_path), crop=40, workers=0))


def test_validation_sheet_is_not_blank(tiny_data, tmp_path):
    """The contact sheet shows input | result | ground truth with the same exposure for the last two."""
    from sitm_training.data import SampleDataset
    from sitm_training.train import validate
    from sitm_trt.media.io import read_ldr
    from sitm_trt.model import SITMNet

    sheet = tmp_path / "sheet.png"
    stats = validate(SITMNet("compact"), SampleDataset(tiny_data, "val", crop=None, augment=False),
                     torch.device("cpu"), 2, sheet)
    img = read_ldr(sheet)
    h, w = img.shape[:2]
    gt = img[:, 2 * w // 3:]
    assert 5 < gt.mean() < 250 and gt.std() > 1  # a picture, not a white or black block
    assert set(stats) == {"val_hdr_l1", "val_mu_psnr", "val_up_psnr", "val_down_psnr"}


def test_init_and_freeze_exposure_fine_tune_only_the_mefm(tiny_data, tmp_path):
    base = run(tiny_data, tmp_path / "base", steps2=1)
    assert base["step"] == 4
    start = load_weights(tmp_path / "base" / "ckpt" / "model.safetensors").state_dict()
    cfg = TrainConfig(data=str(tiny_data), out=str(tmp_path / "ft"), stage1_steps=0, stage2_steps=2, batch=2, crop=32,
                      workers=0, log_every=1, val_every=100, ckpt_every=100, val_images=1, gan=False,
                      init=str(tmp_path / "base" / "ckpt" / "model.safetensors"), freeze_exposure=True,
                      hdr_pu21=1.0, hdr_grad=1.0)
    with pytest.warns(UserWarning, match="REPLACED"):
        card = train(cfg)
    assert card["step"] == 2 and card["init"]["sha256"] == sha256_file(tmp_path / "base" / "ckpt" / "model.safetensors")
    end = load_weights(tmp_path / "ft" / "ckpt" / "model.safetensors").state_dict()
    changed = {k for k in start if not torch.equal(start[k], end[k])}
    assert changed and all(k.startswith("mefm.") for k in changed)  # the exposure models stayed as they were
    with pytest.warns(UserWarning, match="REPLACED"), pytest.raises(ValueError, match="freeze-exposure"):
        train(TrainConfig(data=str(tiny_data), out=str(tmp_path / "bad"), stage1_steps=2, crop=32, workers=0,
                          freeze_exposure=True))


def test_git_commit_marks_uncommitted_changes(monkeypatch):
    """The run card's commit says when the code that ran was not HEAD's (tracked files modified)."""
    import subprocess

    from sitm_training import train as T

    status = {"out": ""}

    def fake_run(cmd, **kw):
        out = "abc123\n" if cmd[1] == "rev-parse" else status["out"]
        return subprocess.CompletedProcess(cmd, 0, stdout=out, stderr="")

    monkeypatch.setattr(T.subprocess, "run", fake_run)
    assert T.git_commit() == "abc123"
    status["out"] = " M training/sitm_training/losses.py\n"
    assert T.git_commit() == "abc123+dirty"


def test_oversample_under_weights_follow_the_sample_meta(tmp_path, monkeypatch):
    import dataclasses

    from sitm_training.data import SampleDataset
    from sitm_training.data.camera import CameraConfig
    from sitm_training.train import exposure_weights

    root = tmp_path / "data"
    build(root, Recipe(seed=2, n=8, n_test=0, size=64, val_fraction=0.2,
                       camera=dataclasses.replace(CameraConfig(), under_prob=0.5)), progress=False)
    ds = SampleDataset(root, "train", crop=32)
    modes = []
    for r in ds.records:
        with np.load(root / r["file"]) as z:
            modes.append(json.loads(str(z["meta"]))["exposure"]["mode"])
    assert "under" in modes and "clip" in modes  # this seed gives both kinds
    assert exposure_weights(ds, 4.0) == [4.0 if m == "under" else 1.0 for m in modes]
    assert [ds[i]["under"].item() for i in range(len(ds))] == [1.0 if m == "under" else 0.0 for m in modes]
    from sitm_training.data import under_exposed

    assert under_exposed({"exposure": {"mode": "under"}}) is True and under_exposed({"exposure": {"mode": "clip"}}) is False
    assert under_exposed({}) is None and under_exposed({"exposure": {}}) is None
    import sitm_training.data as data_pkg

    with monkeypatch.context() as mp:  # samples that do not record their exposure: a clear error, not a KeyError
        mp.setattr(data_pkg, "load_sample_meta", lambda path: {})
        with pytest.raises(ValueError, match="records no exposure mode"):
            exposure_weights(ds, 4.0)
    cfg = TrainConfig(data=str(root), out=str(tmp_path / "run"), stage1_steps=1, stage2_steps=0, batch=2, crop=32,
                      workers=0, oversample_under=0.0)
    with pytest.raises(ValueError, match="--oversample-under must be > 0"):
        train(cfg)
    _, card = train_small(root, tmp_path / "run", stage1_steps=1, stage2_steps=0, gan=True, oversample_under=4.0)
    assert card["step"] == 1 and card["config"]["oversample_under"] == 4.0


def test_mask_prior_under_scope_trains_and_checks_its_data(tmp_path, tiny_data):
    import dataclasses

    cfg, card = train_small(tiny_data, tmp_path / "run", stage1_steps=0, stage2_steps=2, mask_prior=1.0,
                            mask_prior_scope="under")
    assert card["step"] == 2 and card["config"]["mask_prior_scope"] == "under"
    with pytest.raises(ValueError, match="--mask-prior-scope must be one of"):
        train(dataclasses.replace(cfg, out=str(tmp_path / "bad"), mask_prior_scope="dark"))


def test_down_label_input_is_what_stage_1_trains_on(tmp_path, tiny_data, monkeypatch):
    import dataclasses

    import sitm_training.train as T

    calls = []
    real = T.input_down_label

    def spy(ldr, down, ev):
        out = real(ldr, down, ev)
        calls.append((ldr.shape, float((out - down).abs().max())))
        return out

    monkeypatch.setattr(T, "input_down_label", spy)
    cfg, card = train_small(tiny_data, tmp_path / "run", stage1_steps=2, stage2_steps=0, down_label="input")
    assert card["step"] == 2 and card["config"]["down_label"] == "input"
    assert len(calls) == 2 and all(shape[0] == 2 for shape, _ in calls)
    assert max(diff for _, diff in calls) > 0  # the label the loss saw is not the data set's
    with pytest.raises(ValueError, match="--down-label must be one of"):
        train(dataclasses.replace(cfg, out=str(tmp_path / "bad"), down_label="clean"))


def test_up_ev_max_is_the_label_stage_1_trains_on(tmp_path, tiny_data, monkeypatch):
    import dataclasses

    import sitm_training.data.dataset as D

    shot = []
    real = D.relabel_up

    def spy(sample, ev, rng):
        shot.append((sample.ev_up, ev))
        return real(sample, ev, rng)

    monkeypatch.setattr(D, "relabel_up", spy)
    cfg, card = train_small(tiny_data, tmp_path / "run", stage1_steps=2, stage2_steps=0, up_ev_max=1.0, val_every=2)
    assert card["step"] == 2 and card["config"]["up_ev_max"] == 1.0
    # the training batches' labels above +1 EV were shot again at +1 (and so were the validation's)
    assert shot and all(stored > 1.0 and ev == 1.0 for stored, ev in shot)
    with pytest.raises(ValueError, match="--up-ev-max must be > 0"):
        train(dataclasses.replace(cfg, out=str(tmp_path / "bad"), up_ev_max=0.0))


def test_max_seconds_stops_with_a_checkpoint_and_the_run_resumes(tiny_data, tmp_path):
    _, card = train_small(tiny_data, tmp_path, stage1_steps=2, stage2_steps=0, max_seconds=1e-6)
    assert card["step"] == 0 and card["stopped"] == {"reason": "max_seconds", "max_seconds": 1e-6, "step": 0}
    assert json.loads((tmp_path / "ckpt" / "state.json").read_text())["step"] == 0  # the checkpoint was written
    assert json.loads((tmp_path / "card.json").read_text())["stopped"]["reason"] == "max_seconds"
    _, card = train_small(tiny_data, tmp_path, stage1_steps=2, stage2_steps=0, max_seconds=600.0,
                          log_every=1)  # an ample budget: runs to the end
    assert card["step"] == 2 and "stopped" not in card
    assert [int(r["step"]) for r in read_log(tmp_path / "log.csv")] == [1, 2]
    with pytest.raises(ValueError, match="--max-seconds must be > 0"):
        train(TrainConfig(data=str(tiny_data), out=str(tmp_path / "bad"), workers=0, max_seconds=0.0))
