"""The trainer end to end on a tiny procedural data set: both stages, checkpoint, resume, run card, log."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from sitm_training.data import Recipe, build
from sitm_training.config import TrainConfig
from sitm_training.train import train
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


def config(data, out, **options):
    """A config from options keyed as on the command line (``stage1_steps`` for ``--stage1-steps``)."""
    return TrainConfig.from_dict({"data": str(data), "out": str(out), **options})


def run(tiny_data, out, steps2):
    cfg = config(tiny_data, out, stage1_steps=3, stage2_steps=steps2, batch=2, crop=32, workers=0, log_every=1,
                 val_every=3, ckpt_every=2, val_images=1, disc_width=8, disc_max_width=16)
    with pytest.warns(UserWarning, match="perceptual loss of Eq. 10 is REPLACED"):
        return train(cfg)


def train_small(data, out, **options):
    """A few steps at batch 2 on 32-pixel crops, no discriminator: ``(config, card)``; a ``ValueError`` for a bad
    option comes out before any step. ``options`` override anything (steps, the option under test)."""
    cfg = config(data, out, **{"batch": 2, "crop": 32, "workers": 0, "gan": False, **options})
    with pytest.warns(UserWarning, match="perceptual loss of Eq. 10 is REPLACED"):
        return cfg, train(cfg)


def test_two_stages_checkpoint_and_resume(tiny_data, tmp_path):
    card = run(tiny_data, tmp_path, steps2=2)
    assert card["step"] == 5 and card["perceptual"] == "ssim-substitute"
    assert card["data"]["recipe"]["seed"] == 1 and card["config"]["preset"] == "compact"
    assert [s["id"] for s in card["data"]["sources"]][-1] == "procedural"  # every source, with its license
    rows = read_log(tmp_path / "log.csv")
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4, 5]
    assert [r["stage"] for r in rows] == ["1", "1", "1", "2", "2"]
    assert all(float(r["hdr"]) == 0 for r in rows[:3]) and all(float(r["hdr"]) > 0 for r in rows[3:])
    assert (tmp_path / "val" / "step0000003.png").exists()
    assert card["validation"]["step"] == 5  # the last step, which --val-every 3 skips: validated at the end
    state = json.loads((tmp_path / "ckpt" / "state.json").read_text())
    assert state["step"] == 5 and state["stage"] == 2
    first = load_weights(tmp_path / "ckpt" / "model.safetensors").state_dict()

    card2 = run(tiny_data, tmp_path, steps2=4)  # same run folder, more steps: resumes at 5
    assert card2["step"] == 7
    rows = read_log(tmp_path / "log.csv")
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4, 5, 6, 7]
    elapsed = [float(r["elapsed_s"]) for r in rows]
    assert elapsed == sorted(elapsed)  # the run's training seconds, not restarted by the resume
    second = load_weights(tmp_path / "ckpt" / "model.safetensors").state_dict()
    assert any(not torch.equal(first[k], second[k]) for k in first)  # training went on from the checkpoint
    assert card2["train_seconds"] > card["train_seconds"]
    assert card2["history"] == [{"step": 5, "changed": {"stage2_steps": [2, 4]}}]  # what the resume changed


def test_crop_must_fit_the_stride(tiny_data, tmp_path):
    with pytest.raises(ValueError, match="multiple of the network stride 16"):
        config(tiny_data, tmp_path, crop=40)
    assert config(tiny_data, tmp_path, crop=96).data.crop == 96
    assert not list(tmp_path.iterdir())  # refused before anything was written


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
    cfg = config(tiny_data, tmp_path / "ft", stage1_steps=0, stage2_steps=2, batch=2, crop=32, workers=0,
                 log_every=1, val_every=100, ckpt_every=100, val_images=1, gan=False,
                 init=str(tmp_path / "base" / "ckpt" / "model.safetensors"), freeze_exposure=True, hdr_pu21=1.0,
                 hdr_clip=1.0)
    with pytest.warns(UserWarning, match="REPLACED"):
        card = train(cfg)
    assert card["step"] == 2 and card["init"]["sha256"] == sha256_file(tmp_path / "base" / "ckpt" / "model.safetensors")
    end = load_weights(tmp_path / "ft" / "ckpt" / "model.safetensors").state_dict()
    changed = {k for k in start if not torch.equal(start[k], end[k])}
    assert changed and all(k.startswith("mefm.") for k in changed)  # the exposure models stayed as they were
    with pytest.warns(UserWarning, match="REPLACED"), pytest.raises(ValueError, match="freeze-exposure"):
        train(config(tiny_data, tmp_path / "bad", stage1_steps=2, crop=32, workers=0, freeze_exposure=True))


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
    from sitm_training.train import sampling_weights

    root = tmp_path / "data"
    build(root, Recipe(seed=2, n=8, n_test=0, size=64, val_fraction=0.2,
                       camera=dataclasses.replace(CameraConfig(), under_prob=0.5)), progress=False)
    ds = SampleDataset(root, "train", crop=32)
    modes = []
    for r in ds.records:
        with np.load(root / r["file"]) as z:
            modes.append(json.loads(str(z["meta"]))["exposure"]["mode"])
    assert "under" in modes and "clip" in modes  # this seed gives both kinds
    assert sampling_weights(ds, 4.0) == [4.0 if m == "under" else 1.0 for m in modes]
    from sitm_training.data import under_exposed

    assert under_exposed({"exposure": {"mode": "under"}}) is True and under_exposed({"exposure": {"mode": "clip"}}) is False
    assert under_exposed({}) is None and under_exposed({"exposure": {}}) is None
    import sitm_training.data as data_pkg

    with monkeypatch.context() as mp:  # samples that do not record their exposure: a clear error, not a KeyError
        mp.setattr(data_pkg, "load_sample_meta", lambda path: {})
        with pytest.raises(ValueError, match="records no exposure mode"):
            sampling_weights(ds, 4.0)
    with pytest.raises(ValueError, match="--oversample-under must be > 0"):
        config(root, tmp_path / "run", oversample_under=0.0)
    _, card = train_small(root, tmp_path / "run", stage1_steps=1, stage2_steps=0, gan=True, oversample_under=4.0)
    assert card["step"] == 1 and card["config"]["oversample_under"] == 4.0


def test_oversample_real_weights_follow_the_manifest_source(tmp_path):
    from sitm_training.data import SampleDataset
    from sitm_training.train import sampling_weights

    root = tmp_path / "data"
    build(root, Recipe(seed=2, n=8, n_test=0, size=64, val_fraction=0.2), progress=False)
    ds = SampleDataset(root, "train", crop=32)
    assert all(r["source"].startswith("procedural/") for r in ds.records)  # a procedural-only build
    assert sampling_weights(ds, 1.0, 3.0) == [1.0] * len(ds.records)
    for i, r in enumerate(ds.records):  # pretend every other sample came from a real panorama
        if i % 2:
            r["source"] = "pmndrs/bridge"
    modes = [json.loads(str(np.load(root / r["file"])["meta"]))["exposure"]["mode"] for r in ds.records]
    expected = [(2.0 if m == "under" else 1.0) * (3.0 if i % 2 else 1.0) for i, m in enumerate(modes)]
    assert sampling_weights(ds, 2.0, 3.0) == expected  # the two factors multiply
    assert sampling_weights(ds, 1.0, 1.0) == [1.0] * len(ds.records)
    ds.records[0].pop("source")
    with pytest.raises(ValueError, match="records no source"):
        sampling_weights(ds, 1.0, 3.0)
    with pytest.raises(ValueError, match="--oversample-real must be > 0"):
        config(root, tmp_path / "run", oversample_real=-1.0)
    _, card = train_small(root, tmp_path / "run", stage1_steps=1, stage2_steps=0, oversample_real=2.0)
    assert card["step"] == 1 and card["config"]["oversample_real"] == 2.0


def test_families_draw_only_the_named_camera_families(tmp_path):
    import dataclasses

    from sitm_training.data import SampleDataset
    from sitm_training.data.camera import CameraConfig
    from sitm_training.train import sampling_weights

    root = tmp_path / "data"
    build(root, Recipe(seed=2, n=12, n_test=0, size=64, val_fraction=0.2,
                       camera=dataclasses.replace(CameraConfig(), responses=("srgb", "filmic"))), progress=False)
    ds = SampleDataset(root, "train", crop=32)
    kinds = [json.loads(str(np.load(root / r["file"])["meta"]))["camera"]["response"]["kind"] for r in ds.records]
    assert set(kinds) == {"srgb", "filmic"}  # this seed gives both
    assert sampling_weights(ds, 1.0, 1.0, ("filmic",)) == [1.0 if k == "filmic" else 0.0 for k in kinds]
    assert sampling_weights(ds, 1.0, 1.0, ("filmic", "srgb")) == [1.0] * len(kinds)
    with pytest.raises(ValueError, match="has no sample of hable"):
        sampling_weights(ds, 1.0, 1.0, ("filmic", "hable"))
    with pytest.raises(ValueError, match="--families must name camera families"):
        config(root, tmp_path / "run", families=("filmc",))
    import sitm_training.train as T

    drawn = []
    real = T._batches

    def spy(*args, **kwargs):
        for batch in real(*args, **kwargs):
            drawn.extend(batch["camera"])
            yield batch

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(T, "_batches", spy)
        _, card = train_small(root, tmp_path / "run", stage1_steps=0, stage2_steps=3, families=("filmic",))
    assert card["step"] == 3 and list(card["config"]["families"]) == ["filmic"]
    assert drawn and set(drawn) == {"filmic"}  # every sample the loss saw came from the named family


def test_down_label_input_is_what_stage_1_trains_on(tmp_path, tiny_data, monkeypatch):
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
        TrainConfig.from_dict({**cfg.to_dict(), "down_label": "clean"})


def test_up_ev_max_is_the_label_stage_1_trains_on(tmp_path, tiny_data, monkeypatch):
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
        TrainConfig.from_dict({**cfg.to_dict(), "up_ev_max": 0.0})


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
        config(tiny_data, tmp_path / "bad", max_seconds=0.0)


def test_config_groups_and_the_command_line():
    """The command line fills the five typed groups; the run card's flat mapping round-trips; an option whose
    experiment lost is no longer accepted on the command line."""
    from sitm_training.config import config_from_args

    cfg = config_from_args(["--data", "d", "--out", "r", "--preset", "compact", "--fusion", "residual", "--init",
                            "w.safetensors", "--stage1-steps", "0", "--stage2-steps", "4000", "--batch", "8", "--crop",
                            "128", "--no-gan", "--workers", "0", "--lr", "1e-4", "--hdr-pu21", "3", "--hdr-clip", "3",
                            "--hdr-align", "--max-seconds", "8000", "--val-every", "500"])
    assert (cfg.data.root, cfg.data.crop, cfg.data.batch, cfg.data.workers) == ("d", 128, 8, 0)
    assert (cfg.model.preset, cfg.model.fusion, cfg.model.init) == ("compact", "residual", "w.safetensors")
    assert (cfg.optim.stage1_steps, cfg.optim.stage2_steps, cfg.optim.lr) == (0, 4000, 1e-4)
    assert cfg.optim.betas == (0.9, 0.999) and cfg.optim.amp
    assert (cfg.loss.gan, cfg.loss.hdr_pu21, cfg.loss.hdr_clip, cfg.loss.hdr_align) == (False, 3.0, 3.0, True)
    assert (cfg.run.out, cfg.run.max_seconds, cfg.run.val_every, cfg.run.log_every) == ("r", 8000.0, 500, 10)
    stored = json.loads(json.dumps(cfg.to_dict()))  # as the card and state.json store it (betas: a list)
    assert stored["data"] == "d" and stored["betas"] == [0.9, 0.999] and "root" not in stored
    assert TrainConfig.from_dict(stored) == cfg
    assert cfg.optim.lr_at(0) == 1e-4 and cfg.optim.lr_at(4000) == pytest.approx(1e-5)
    assert cfg.optim.lr_at(2000) == pytest.approx((1e-4 + 1e-5) / 2)
    for gone in (["--mask-prior", "1"], ["--hdr-grad", "1"], ["--hdr-psnr", "0.02"], ["--mask-prior-scope", "under"]):
        with pytest.raises(SystemExit):
            config_from_args(["--data", "d", "--out", "r", *gone])
    with pytest.raises(ValueError, match="not options of this trainer: crop_size"):
        TrainConfig.from_dict({"data": "d", "out": "r", "crop_size": 64})
    with pytest.raises(ValueError, match="lack out"):
        TrainConfig.from_dict({"data": "d"})


def test_stored_configs_of_earlier_trainers():
    """A run card or checkpoint of the trainer before the removal holds the removed options: accepted at the value
    that left them off (the shipped R4 candidate's card, committed), refused with the option named otherwise."""
    from pathlib import Path

    from sitm_training.config import REMOVED_OPTIONS, stored_config

    card = Path(__file__).resolve().parents[1] / "training" / "checkpoints" / "residual-R4" / "card.json"
    old = json.loads(card.read_text())["config"]
    assert REMOVED_OPTIONS.keys() <= old.keys()
    cfg = stored_config(old, str(card))
    # the card predates --boost, --oversample-real, --hdr-clip-norm, --mefm-context, --mefm-global-width,
    # --mefm-clip-prior, --mefm-shoulder, --camera-aux, --hdr-clip-ring, --families and --grad-clip: the config takes their defaults,
    # the meaning those weights have (boost "down", uniform sampling of every camera family, the L1 clipped term, no
    # context, the MEFM's width for the global branch, no clip prior, no shoulder features, no camera probe)
    assert cfg.to_dict() == {**{k: tuple(v) if k == "betas" else v for k, v in old.items() if k not in REMOVED_OPTIONS},
                             "boost": "down", "oversample_real": 1.0, "hdr_clip_norm": "l1", "mefm_context": 0,
                             "mefm_global_width": 0, "mefm_clip_prior": 0, "mefm_shoulder": False, "camera_aux": 0.0,
                             "hdr_clip_ring": 1.0, "hdr_clip_ring_families": ("filmic", "hable"), "mefm_ring": 0,
                             "fixed_curve": False, "families": (),
                             "coef_lr_mult": 1.0,
                             "prior_lr_mult": 1.0, "grad_clip": 0.0}
    assert cfg.model.fusion == "residual" and cfg.model.freeze_exposure and cfg.loss.hdr_clip == 3.0
    for key, value in (("mask_prior", 1.0), ("mask_prior_scope", "under"), ("hdr_grad", 3.0), ("hdr_psnr", 0.02)):
        with pytest.raises(ValueError, match=f"card.json: the run was trained with {key}={value!r}, an option this "
                                             "trainer no longer has"):
            stored_config({**old, key: value}, str(card))
    with pytest.raises(ValueError, match="card.json: the stored config does not fit this trainer: not options"):
        stored_config({**old, "mask_weight": 0.0}, str(card))


def test_resume_of_a_run_saved_by_the_earlier_trainer(tiny_data, tmp_path):
    """A run folder whose state.json and card.json hold the removed options at their defaults (as every run of
    the earlier trainer does) resumes, and the card's history records no change for them; one trained with a
    removed term is refused before anything is written."""
    from sitm_training.config import REMOVED_OPTIONS

    _, card = train_small(tiny_data, tmp_path, stage1_steps=1, stage2_steps=0)
    assert card["step"] == 1 and not REMOVED_OPTIONS.keys() & card["config"].keys()
    for name in ("ckpt/state.json", "card.json"):  # written as the earlier trainer wrote them
        path = tmp_path / name
        saved = json.loads(path.read_text())
        saved["config"] = {**saved["config"], **REMOVED_OPTIONS}
        path.write_text(json.dumps(saved))
    _, card = train_small(tiny_data, tmp_path, stage1_steps=2, stage2_steps=0)
    assert card["step"] == 2 and card["history"] == [{"step": 1, "changed": {"stage1_steps": [1, 2]}}]
    assert not REMOVED_OPTIONS.keys() & json.loads((tmp_path / "ckpt" / "state.json").read_text())["config"].keys()

    state = tmp_path / "ckpt" / "state.json"
    saved = json.loads(state.read_text())
    state.write_text(json.dumps({**saved, "config": {**saved["config"], "mask_prior": 1.0}}))
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    with pytest.warns(UserWarning, match="REPLACED"), pytest.raises(ValueError, match="mask_prior=1.0"):
        train(config(tiny_data, tmp_path, batch=2, crop=32, workers=0, gan=False, stage1_steps=3, stage2_steps=0))
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


def test_hdr_clip_norm_reaches_the_loss_and_is_checked(tmp_path):
    cfg = config(tmp_path / "data", tmp_path / "run", hdr_clip=10.0, hdr_clip_norm="l2")
    assert cfg.loss.weights().clip_norm == "l2" and cfg.loss.weights().lambda_clip == 10.0
    assert config(tmp_path / "data", tmp_path / "run").loss.weights().clip_norm == "l1"  # the default
    with pytest.raises(ValueError, match=r"--hdr-clip-norm must be one of \('l1', 'l2'\), got 'rms'"):
        config(tmp_path / "data", tmp_path / "run", hdr_clip_norm="rms")


def test_mefm_context_trains_travels_in_the_weights_and_must_match_on_resume(tiny_data, tmp_path):
    """``--mefm-context 1``: the context layer trains (moves off its zero start), the saved weights carry it in
    their preset, and resuming the run with another value is a clear error, not a silent shape change."""
    options = dict(fusion="residual", boost="all", mefm_context=1, stage1_steps=0, stage2_steps=2, log_every=1,
                   val_every=100, ckpt_every=100, val_images=1, lr=1e-3)
    _, card = train_small(tiny_data, tmp_path / "c", **options)
    net = load_weights(tmp_path / "c" / "ckpt" / "model.safetensors")
    assert net.preset.mefm_context == 1 and net.mefm.context[0][0].weight.abs().sum() > 0
    assert card["preset"] == net.preset.to_dict()  # the card names the network that trained, not the bare preset
    with pytest.raises(ValueError, match="mefm-context is 1, not 2"):
        train_small(tiny_data, tmp_path / "c", **{**options, "mefm_context": 2, "stage2_steps": 3})


def test_mefm_global_width_travels_in_the_weights_and_must_match_on_resume(tiny_data, tmp_path):
    """``--mefm-global-width 16``: the saved weights carry the width in their preset, and resuming with another
    value is a clear error, not a silent shape change."""
    options = dict(fusion="residual", boost="all", mefm_global_width=16, stage1_steps=0, stage2_steps=1,
                   log_every=1, val_every=100, ckpt_every=100, val_images=1)
    train_small(tiny_data, tmp_path / "g", **options)
    net = load_weights(tmp_path / "g" / "ckpt" / "model.safetensors")
    assert net.preset.global_width == 16 and net.mefm.coef_head.weight.shape == (3, 16)
    with pytest.raises(ValueError, match="mefm-global-width is 16, not 0"):
        train_small(tiny_data, tmp_path / "g", **{**options, "mefm_global_width": 0, "stage2_steps": 2})


def test_mefm_clip_prior_trains_travels_in_the_weights_and_must_match_on_resume(tiny_data, tmp_path):
    """``--mefm-clip-prior 2``: the prior's strength head trains (moves off its zero start), the saved weights carry
    the radius in their preset, and resuming with another value is a clear error."""
    options = dict(fusion="residual", boost="all", mefm_clip_prior=2, stage1_steps=0, stage2_steps=2, log_every=1,
                   val_every=100, ckpt_every=100, val_images=1, lr=1e-3)
    train_small(tiny_data, tmp_path / "p", **options)
    net = load_weights(tmp_path / "p" / "ckpt" / "model.safetensors")
    assert net.preset.mefm_clip_prior == 2 and net.mefm.prior_head.weight.abs().sum() > 0
    with pytest.raises(ValueError, match="mefm-clip-prior is 2, not 4"):
        train_small(tiny_data, tmp_path / "p", **{**options, "mefm_clip_prior": 4, "stage2_steps": 3})


def test_mefm_shoulder_trains_travels_in_the_weights_and_must_match_on_resume(tiny_data, tmp_path):
    """``--mefm-shoulder``: the features' layer trains (moves off its zero start), the saved weights carry the flag
    in their preset, and resuming without it is a clear error."""
    options = dict(fusion="residual", boost="all", mefm_shoulder=True, stage1_steps=0, stage2_steps=2, log_every=1,
                   val_every=100, ckpt_every=100, val_images=1, lr=1e-3)
    train_small(tiny_data, tmp_path / "s", **options)
    net = load_weights(tmp_path / "s" / "ckpt" / "model.safetensors")
    assert net.preset.mefm_shoulder and net.mefm.shoulder_fc.weight.abs().sum() > 0
    with pytest.raises(ValueError, match="mefm-shoulder is True, not False"):
        train_small(tiny_data, tmp_path / "s", **{**options, "mefm_shoulder": False, "stage2_steps": 3})


def first_step_sizes(data, tmp_path, lr: float, mask_head: bool = False, **options) -> tuple[dict[str, float], dict]:
    """One training step at ``lr`` from a fixed residual ``compact`` start (``options`` also name the network's
    extras; ``mask_head``: its gate convolution drawn at random instead of zero, so the mask features get a
    gradient): the largest change of every tensor, and the options (to resume with)."""
    import dataclasses

    from sitm_trt.model import SITMNet, get_preset, save_weights

    extras = {k: options[k] for k in ("mefm_clip_prior", "mefm_ring") if k in options}
    torch.manual_seed(0)
    start = SITMNet(dataclasses.replace(get_preset("compact"), fusion="residual", boost="all", **extras))
    if mask_head:
        with torch.no_grad():
            start.mefm.mask_head.weight.normal_(0, 0.1)
            start.mefm.mask_head.bias.fill_(0.3)  # the gates open: their clamp passes the gradient
    save_weights(start, tmp_path / "start.safetensors")
    options = dict(fusion="residual", boost="all", init=str(tmp_path / "start.safetensors"), stage1_steps=0,
                   stage2_steps=1, log_every=1, val_every=100, ckpt_every=100, val_images=1, lr=lr, **options)
    train_small(data, tmp_path / "r", **options)
    before, moved = start.state_dict(), load_weights(tmp_path / "r" / "ckpt" / "model.safetensors").state_dict()
    return {k: (moved[k] - before[k]).abs().max().item() for k in before}, options


def test_prior_lr_mult_steps_the_strength_head_faster(tiny_data, tmp_path):
    """``--prior-lr-mult 10``: Adam's first step moves the clip prior's strength bias by 10 lr (it has a gradient
    from the zero start: the prior sits outside the gain's gate) and everything else by at most lr; the value must
    match on resume."""
    lr = 1e-4
    step, options = first_step_sizes(tiny_data, tmp_path, lr, mefm_clip_prior=2, prior_lr_mult=10.0)
    assert step["mefm.prior_head.bias"] == pytest.approx(10 * lr, rel=1e-3)
    assert max(v for k, v in step.items() if not k.startswith("mefm.prior_head.")) == pytest.approx(lr, rel=1e-3)
    with pytest.raises(ValueError, match="prior-lr-mult is 10.0, not 1.0"):
        train_small(tiny_data, tmp_path / "r", **{**options, "prior_lr_mult": 1.0, "stage2_steps": 2})
    with pytest.raises(ValueError, match="--prior-lr-mult must be > 0"):
        config(tmp_path / "data", tmp_path / "x", prior_lr_mult=float("nan"))


def test_mefm_ring_trains_at_the_prior_rate_and_travels_with_the_weights(tiny_data, tmp_path):
    """``--mefm-ring 2 --prior-lr-mult 10``: the ring maps' layer (zero at the start; its bias has a gradient once
    the mask head is not zero) moves by 10 lr in Adam's first step, everything else by at most lr; the weights carry the
    preset key, and the value must match on resume."""
    lr = 1e-4
    step, options = first_step_sizes(tiny_data, tmp_path, lr, mask_head=True, mefm_ring=2, prior_lr_mult=10.0)
    assert step["mefm.ring_fc.bias"] == pytest.approx(10 * lr, rel=1e-3)
    assert max(v for k, v in step.items() if not k.startswith("mefm.ring_fc.")) == pytest.approx(lr, rel=1e-3)
    assert load_weights(tmp_path / "r" / "ckpt" / "model.safetensors").preset.mefm_ring == 2
    with pytest.raises(ValueError, match="mefm-ring is 2, not 0"):
        train_small(tiny_data, tmp_path / "r", **{**options, "mefm_ring": 0, "stage2_steps": 2})


def test_fixed_curve_holds_k2_at_zero_and_the_rest_trains(tiny_data, tmp_path):
    """``--fixed-curve``: from weights whose curve correction k2 is not zero, two steps save a network whose k2 is
    exactly 0 for any image (its row zeroed, its gradient masked) while the gains' rows and the rest still train;
    without the option the same start moves k2 (it has a gradient). It needs the residual fusion and must match on
    resume."""
    import dataclasses

    from sitm_trt import reference as ops
    from sitm_trt.model import SITMNet, get_preset, save_weights

    torch.manual_seed(0)
    start = SITMNet(dataclasses.replace(get_preset("compact"), fusion="residual", boost="all"))
    with torch.no_grad():
        start.mefm.coef_head.weight.normal_(0, 0.1)
        start.mefm.coef_head.bias.fill_(0.2)
    save_weights(start, tmp_path / "start.safetensors")
    options = dict(fusion="residual", boost="all", init=str(tmp_path / "start.safetensors"), stage1_steps=0,
                   stage2_steps=2, log_every=1, val_every=100, ckpt_every=100, val_images=1, lr=1e-3)
    frame = torch.rand(2, 3, 48, 64)
    for fixed in (True, False):
        train_small(tiny_data, tmp_path / str(fixed), fixed_curve=fixed, **options)
        net = load_weights(tmp_path / str(fixed) / "ckpt" / "model.safetensors")
        with torch.no_grad():
            k2 = net(*ops.pre(frame, stride=net.stride)).coef[:, 2]
        head, was = net.mefm.coef_head, start.mefm.coef_head
        assert (head.weight[:2] - was.weight[:2]).abs().max() > 1e-4  # the gains' rows train either way
        if fixed:
            assert torch.equal(k2, torch.zeros(2)) and head.weight[2].abs().max() == 0 and head.bias[2] == 0
        else:
            assert k2.abs().min() > 0.1 and abs(head.bias[2].item() - 0.2) > 1e-4
    with pytest.raises(ValueError, match="fixed-curve is True, not False"):
        train_small(tiny_data, tmp_path / "True", **{**options, "stage2_steps": 3})
    with pytest.raises(ValueError, match="--fixed-curve holds the residual fusion's curve correction k2 at 0: it "
                                         "needs --fusion residual, got --fusion paper"):
        config(tmp_path / "data", tmp_path / "x", fixed_curve=True)
    with pytest.raises(ValueError, match="fix_curve: only the residual fusion has the curve correction k2"):
        SITMNet(get_preset("compact")).mefm.fix_curve(0.0)


def test_coef_lr_mult_steps_the_coefficient_head_faster(tiny_data, tmp_path):
    """``--coef-lr-mult 10``: Adam's first step moves each parameter by its group's rate times the sign of its
    gradient, so the coefficient head's curve entry moves 10 lr and the rest at most lr; the value must match on
    resume (the optimizer's groups follow it)."""
    lr = 1e-4
    step, options = first_step_sizes(tiny_data, tmp_path, lr, coef_lr_mult=10.0)
    # the curve's k2 (row 2) has a gradient from the first step (the fusion's fixed where; the gates shut)
    assert step["mefm.coef_head.bias"] == pytest.approx(10 * lr, rel=1e-3)
    assert max(v for k, v in step.items() if not k.startswith("mefm.coef_head.")) == pytest.approx(lr, rel=1e-3)
    with pytest.raises(ValueError, match="coef-lr-mult is 10.0, not 1.0"):
        train_small(tiny_data, tmp_path / "r", **{**options, "coef_lr_mult": 1.0, "stage2_steps": 2})
    with pytest.raises(ValueError, match="--coef-lr-mult must be > 0"):
        config(tmp_path / "data", tmp_path / "x", coef_lr_mult=0.0)


def test_camera_aux_is_the_probes_cross_entropy_and_travels_with_the_checkpoint(tiny_data, tmp_path):
    """``--camera-aux 0.5``: each item names its camera family; the step's ``camera`` loss is the cross-entropy of
    the probe on the pass's ``g`` against the recipe's family index (recomputed here from the same weights before
    the step); the probe is saved with the checkpoint (not in the weights), resumes, and must match on resume."""
    import torch.nn.functional as F

    from sitm_trt import reference as ops
    from sitm_trt.model.state import StatSource
    from sitm_training.data import SampleDataset
    from sitm_training.train import Trainer

    families = json.loads((tiny_data / "manifest.json").read_text())["recipe"]["camera"]["responses"]
    assert SampleDataset(tiny_data, "train", crop=32)[0]["camera"] in families
    options = dict(fusion="residual", boost="all", camera_aux=0.5, stage1_steps=0, stage2_steps=2, log_every=1,
                   val_every=100, ckpt_every=100, val_images=1, lr=1e-3)
    cfg = config(tiny_data, tmp_path / "c", **{"batch": 2, "crop": 32, "workers": 0, "gan": False, **options})
    with pytest.warns(UserWarning, match="perceptual loss of Eq. 10 is REPLACED"):
        trainer = Trainer(cfg)
    assert trainer.camera_families == tuple(families)
    raw = next(iter(trainer.loader))
    assert all(kind in families for kind in raw["camera"])
    raw["camera"] = [families[-1], "no-such-family"]  # a family the recipe does not name is left out of the loss
    trainer.batches = iter([raw])
    batch = trainer.feed()
    want_labels = torch.tensor([len(families) - 1, -100])
    assert torch.equal(batch.camera.cpu(), want_labels)
    with torch.no_grad():
        stats = StatSource()
        trainer.net.forward_train(*ops.pre(batch.ldr, stride=1), stats=stats)
        logits = trainer.camera_probe(stats.values["mefm_g"])
        want = F.cross_entropy(logits[:1], want_labels[:1]).item()  # the one known sample's
    probe_before = trainer.camera_probe.weight.detach().clone()
    fc_before = trainer.net.mefm.glob_fc.weight.detach().clone()
    vals = trainer.step(batch)
    assert vals["camera"] == pytest.approx(want, rel=1e-5) and want > 0
    # Adam's first step moves every weight with a gradient by its group's rate: the probe's is 100x the network's
    probe_step = (trainer.camera_probe.weight - probe_before).abs().max().item()
    assert probe_step == pytest.approx(100 * 1e-3, rel=1e-3)
    assert (trainer.net.mefm.glob_fc.weight - fc_before).abs().max().item() == pytest.approx(1e-3, rel=1e-3)
    trainer.batches = iter(trainer.loader)
    trainer.run()
    card = json.loads((tmp_path / "c" / "card.json").read_text())
    assert card["camera_aux"] == {"families": families} and "camera" in card["losses"]
    saved = (tmp_path / "c" / "ckpt" / "camera_probe.safetensors")
    assert saved.exists() and "camera" not in read_log(tmp_path / "c" / "log.csv")[0]  # the log keeps its columns
    _, card = train_small(tiny_data, tmp_path / "c", **{**options, "stage2_steps": 3})  # resumes with the probe
    assert card["step"] == 3
    with pytest.raises(ValueError, match="camera-aux is 0.5, not 0.0"):
        train_small(tiny_data, tmp_path / "c", **{**options, "camera_aux": 0.0, "stage2_steps": 4})
    with pytest.raises(ValueError, match="--camera-aux must be >= 0"):
        config(tiny_data, tmp_path / "x", camera_aux=-1.0)
    _, card = train_small(tiny_data, tmp_path / "p", **{**options, "fusion": "paper", "boost": "down"})
    assert card["step"] == 2 and card["losses"]["camera"] > 0  # the paper fusion's g has no exposure gains


def test_hdr_clip_ring_weighs_the_s_curve_samples_bright_ringed_regions(tiny_data, tmp_path):
    """``--hdr-clip-ring 0``: the batch marks the samples of the named families; the step's HDR loss is the
    criterion's with those marks (recomputed here from the same weights before the step), and differs from the
    unweighted one on a batch with a bright-ringed clipped block; bad values and a recipe without the families
    are refused before any step."""
    from sitm_trt import reference as ops
    from sitm_training.losses import LossWeights, SITMLoss
    from sitm_training.train import Trainer

    families = json.loads((tiny_data / "manifest.json").read_text())["recipe"]["camera"]["responses"]
    s_families = [f for f in families if f in ("filmic", "hable")]
    assert s_families and len(s_families) < len(families)
    options = dict(fusion="residual", boost="all", hdr_clip=1.0, hdr_clip_ring=0.0, stage1_steps=0, stage2_steps=2,
                   log_every=1, val_every=100, ckpt_every=100, val_images=1)
    cfg = config(tiny_data, tmp_path / "r", **{"batch": 2, "crop": 32, "workers": 0, "gan": False, **options})
    with pytest.warns(UserWarning, match="perceptual loss of Eq. 10 is REPLACED"):
        trainer = Trainer(cfg)
    raw = next(iter(trainer.loader))
    raw["camera"] = [s_families[0], next(f for f in families if f not in s_families)]
    raw["ldr"][:, :, 8:20, 8:20] = 1.0  # a clipped block in a bright frame: bright-ringed in both samples
    raw["ldr"][:, :, :8] = raw["ldr"][:, :, 20:] = 0.9
    raw["ldr"][:, :, :, :8] = raw["ldr"][:, :, :, 20:] = 0.9
    trainer.batches = iter([raw])
    batch = trainer.feed()
    assert batch.s_curve.tolist() == [True, False]
    with torch.no_grad():
        out, _ = trainer.gmodel(2, *ops.pre(batch.ldr, stride=1))
        args = (out, batch.ldr, batch.up, batch.down, batch.hdr)
        weights = trainer.criterion.weights
        want = trainer.criterion.generator(*args, fusion="residual", s_curve=batch.s_curve).hdr.item()
        plain = SITMLoss(None, LossWeights(**{**weights.__dict__, "clip_ring": 1.0})).generator(
            *args, fusion="residual").hdr.item()
    assert weights.clip_ring == 0.0 and want < plain
    assert trainer.step(batch)["hdr"] == pytest.approx(want, rel=1e-5)
    trainer.batches = iter(trainer.loader)
    trainer.run()
    card = json.loads((tmp_path / "r" / "card.json").read_text())
    assert card["config"]["hdr_clip_ring"] == 0.0 and card["config"]["hdr_clip_ring_families"] == ["filmic", "hable"]
    with pytest.raises(ValueError, match="recipe has none of the camera families aces"):
        train_small(tiny_data, tmp_path / "a", **{**options, "hdr_clip_ring_families": ("aces",)})
    with pytest.raises(ValueError, match="--hdr-clip-ring must be >= 0"):
        config(tiny_data, tmp_path / "x", hdr_clip=1.0, hdr_clip_ring=-0.5)
    with pytest.raises(ValueError, match="set --hdr-clip too"):
        config(tiny_data, tmp_path / "x", hdr_clip_ring=0.5)
    with pytest.raises(ValueError, match="--hdr-clip-ring-families must name camera families"):
        config(tiny_data, tmp_path / "x", hdr_clip=1.0, hdr_clip_ring=0.5, hdr_clip_ring_families=("sigmoid",))
    from sitm_training.config import config_from_args

    parsed = config_from_args(["--data", "d", "--out", "o", "--hdr-clip", "3", "--hdr-clip-ring", "0.25",
                               "--hdr-clip-ring-families", "hable, emor"])
    assert parsed.loss.hdr_clip_ring == 0.25 and parsed.loss.hdr_clip_ring_families == ("hable", "emor")


@pytest.mark.filterwarnings("ignore:VGGPerceptual")  # the cases past the data checks make the loss first
def test_command_line_mistakes_are_one_error_line_and_write_nothing(tiny_data, tmp_path, capsys):
    """`python -m sitm_training.train` with a mistake: exit 2, one `error:` line naming it, no traceback and no run
    folder. A batch larger than the train split once looped forever (drop_last left every epoch empty)."""
    from sitm_training.train import main

    n_train = sum(1 for _ in (tiny_data / "train").glob("*.npz"))
    base = ["--data", str(tiny_data), "--crop", "32", "--workers", "0", "--no-gan", "--stage1-steps", "1",
            "--stage2-steps", "1"]
    out = tmp_path / "run"
    cases = [(["--batch", str(n_train + 1)], f"--batch {n_train + 1} is more than the {n_train} training samples"),
             (["--stage2-steps", "-5"], "--stage2-steps must be >= 0, got -5"),
             (["--batch", "0"], "--batch must be >= 1, got 0"),
             (["--device", "gpu"], "--device gpu: expected cpu, cuda or cuda:N"),
             (["--init", str(tmp_path / "missing.safetensors")], "missing.safetensors"),
             (["--data", str(tmp_path / "no-data")], "no-data")]
    if not torch.cuda.is_available():
        cases.append((["--device", "cuda"], "--device cuda: this PyTorch sees no CUDA device"))
    for extra, message in cases:
        assert main([*base, "--out", str(out), *extra]) == 2, extra
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and "Traceback" not in err, (extra, err)
        assert not out.exists(), extra
    # the data set itself as the run folder
    before = sorted(p.name for p in tiny_data.iterdir())
    assert main([*base, "--out", str(tiny_data)]) == 2
    assert "is a data set; give a run folder of its own" in capsys.readouterr().err
    assert sorted(p.name for p in tiny_data.iterdir()) == before


@pytest.mark.filterwarnings("ignore:VGGPerceptual")
def test_grad_clip_bounds_the_gradient_adam_steps_with_and_the_log_shows_the_norm(tiny_data, tmp_path):
    """--grad-clip: the gradient the optimizer steps with has at most that global norm; grad_norm (logged and in the
    card) is the norm before clipping. Off (0), the step's gradient is the loss's own."""
    from sitm_training.train import Trainer

    def grads_after_one_step(clip, out):
        trainer = Trainer(config(tiny_data, out, batch=2, crop=32, workers=0, gan=False, stage1_steps=0,
                                 stage2_steps=1, grad_clip=clip))
        vals = trainer.step(trainer.feed())
        params = [p for g in trainer.opt_g.param_groups for p in g["params"] if p.grad is not None]
        return vals["grad_norm"], float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params])))

    before, after = grads_after_one_step(0.0, tmp_path / "off")
    assert before > 0 and after == pytest.approx(before, rel=1e-5)
    before, after = grads_after_one_step(before / 10, tmp_path / "on")
    assert after == pytest.approx(before / 10, rel=1e-4)
    with pytest.raises(ValueError, match="--grad-clip must be >= 0"):
        config(tiny_data, tmp_path / "bad", grad_clip=-1.0)
    _, card = train_small(tiny_data, tmp_path / "log", stage1_steps=0, stage2_steps=2, log_every=1, grad_clip=1.0)
    rows = read_log(tmp_path / "log" / "log.csv")
    assert all(float(r["grad_norm"]) > 0 for r in rows) and card["losses"]["grad_norm"] > 0
