"""``Preset.mefm_shoulder`` (docs/model.md, "The shoulder features"): the input's highlight histogram, fed to the
MEFM's global vector through a zero-initialised linear layer. Checked: the features against a NumPy
reimplementation and hand-computed values, ``g`` against the formula, the exact identity after ``--init`` of
weights without it and the gradient that lets the layer move off zero, tiling, ONNX, the preset's round trip and
the trainer's option."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sitm_trt import reference as ops
from sitm_trt.model import Preset, SITMNet, get_preset, predict_hdr
from sitm_trt.model.config import SHOULDER_THRESHOLDS
from sitm_trt.model.mefm import exposure_gains, shoulder_features

from test_mefm_context import (assert_init_is_identity, assert_tiled_equals_whole_frame,
                               check_onnx_against_pytorch, trained_like)


def preset(shoulder: bool = False, context: int = 0, global_width: int = 0) -> Preset:
    return dataclasses.replace(get_preset("compact"), fusion="residual", boost="all", mefm_context=context,
                               mefm_global_width=global_width, mefm_shoulder=shoulder)


def with_shoulder(context: int = 0, seed: int = 0) -> SITMNet:
    """``trained_like``'s network with shoulder features whose layer is not at its zero start."""
    old = trained_like(context, seed)
    net = SITMNet(preset(True, context)).eval()
    net.load_state_dict(old.state_dict(), strict=False)
    with torch.no_grad():
        net.mefm.shoulder_fc.weight.normal_(0, 0.05)
    return net


def reference_features(thumb: np.ndarray) -> np.ndarray:
    """Float64 NumPy reimplementation of ``shoulder_features`` for ``(C, t, t)``."""
    m = thumb[:3].max(axis=0).astype(np.float64)
    return np.array([np.log2(np.clip((m - t) / 0.02 + 0.5, 0.0, 1.0).mean() + 2.0 ** -10)
                     for t in SHOULDER_THRESHOLDS])


def test_preset_field_round_trips_and_is_checked():
    assert get_preset("compact").mefm_shoulder is False
    assert "mefm_shoulder" not in preset(False).to_dict()  # files without the key keep their meaning
    p = preset(True)
    assert p.to_dict()["mefm_shoulder"] is True and Preset.from_json(p.to_json()) == p
    for bad in (1, "yes", None):
        with pytest.raises(ValueError, match="mefm_shoulder must be true or false"):
            preset(bad)


def test_features_match_numpy_and_hand_values():
    torch.manual_seed(1)
    thumb = torch.rand(2, 9, 32, 32) ** 0.3  # bright: every threshold has pixels above it
    got = shoulder_features(thumb).numpy()
    for i in range(2):
        np.testing.assert_allclose(got[i], reference_features(thumb[i].numpy()), rtol=0, atol=2e-5)
    assert got.shape == (2, len(SHOULDER_THRESHOLDS)) and np.all(np.diff(got, axis=1) <= 0)  # shares fall with t
    # by hand: black -> every share 0 -> log2(2^-10) = -10; a flat 0.995 -> 1 below 0.97, a ramp of 0.75 at 0.99
    flat = shoulder_features(torch.full((1, 3, 8, 8), 0.995))[0]
    torch.testing.assert_close(shoulder_features(torch.zeros(1, 3, 8, 8))[0], torch.full((6,), -10.0))
    want = [np.log2(1 + 2.0 ** -10)] * 5 + [np.log2(0.75 + 2.0 ** -10)]
    torch.testing.assert_close(flat, torch.tensor(want, dtype=torch.float32), rtol=0, atol=1e-6)
    # a quarter of the frame clipped, the rest at 0.8: shares 1, 1, 1/4, 1/4, 1/4, 1/4
    half = torch.full((1, 3, 8, 8), 0.8)
    half[:, :, :4, :4] = 1.0
    want = [np.log2(1 + 2.0 ** -10)] * 2 + [np.log2(0.25 + 2.0 ** -10)] * 4
    torch.testing.assert_close(shoulder_features(half)[0], torch.tensor(want, dtype=torch.float32), rtol=0, atol=1e-6)


def test_g_adds_the_layer_before_the_activation():
    """``g = LReLU(glob_fc(mean(glob(thumb))) + W_s f)`` then the two exposure gains, recomputed by hand."""
    net = with_shoulder()
    m = net.mefm
    torch.manual_seed(2)
    thumb = torch.rand(2, 9, 256, 256) ** 0.5
    with torch.no_grad():
        pre = m.glob_fc(m.glob(thumb).mean(dim=(2, 3))) + shoulder_features(thumb) @ m.shoulder_fc.weight.T
        want = torch.cat([F.leaky_relu(pre, 0.2), exposure_gains(thumb)], dim=1)
        torch.testing.assert_close(m.global_vector(thumb), want, rtol=1e-5, atol=1e-6)
        # and the layer matters: without it g differs
        plain = SITMNet(preset(False)).eval()
        plain.load_state_dict(net.state_dict(), strict=False)
        assert (plain.mefm.global_vector(thumb) - want).abs().max() > 1e-2


def test_init_without_the_features_is_an_exact_identity_and_the_layer_gets_a_gradient():
    from sitm_training.train import load_init

    net = SITMNet(preset(True, context=2)).eval()
    assert_init_is_identity(trained_like(2), net, ["mefm.shoulder_fc.weight"])
    net.train()
    pre = ops.pre(torch.rand(1, 3, 48, 64) ** 0.5, stride=net.stride)
    net.forward_train(*pre).coef[:, 2].sum().backward()
    assert net.mefm.shoulder_fc.weight.grad.abs().sum() > 0  # zero weights, nonzero inputs: it can move
    with pytest.raises(ValueError, match="read the shoulder features, the network does not: pass --mefm-shoulder"):
        load_init(SITMNet(preset(False, context=2)), net, "s.safetensors")


def test_init_into_a_wider_global_branch_keeps_the_features_function():
    """``--mefm-global-width 32 --init`` of 8-channel weights with the features: their layer is widened like the
    rest of the branch (new rows zero), and the network's outputs stay the old ones."""
    from sitm_training.train import load_init

    old = with_shoulder()
    net = SITMNet(preset(True, global_width=32)).eval()
    assert load_init(net, old, "s8.safetensors") == []
    w = net.mefm.shoulder_fc.weight
    assert torch.equal(w[:8], old.mefm.shoulder_fc.weight) and not w[8:].any()
    frame = torch.rand(1, 3, 48, 64) ** 0.5
    with torch.no_grad():
        torch.testing.assert_close(predict_hdr(net, frame), predict_hdr(old, frame), rtol=1e-5, atol=1e-6)


def test_tiled_equals_whole_frame_with_the_features():
    assert_tiled_equals_whole_frame(with_shoulder(context=2), torch.rand(1, 3, 160, 144) ** 0.3)


def test_onnx_export_with_the_features(tmp_path):
    check_onnx_against_pytorch(with_shoulder(context=1), tmp_path / "s.onnx")


def test_train_option_builds_the_network():
    from sitm_training.config import TrainConfig, config_from_args

    cfg = TrainConfig.from_dict({"data": "d", "out": "o", "fusion": "residual", "mefm_shoulder": True})
    assert cfg.model.network_preset().mefm_shoulder is True
    assert TrainConfig.from_dict({"data": "d", "out": "o"}).model.network_preset().mefm_shoulder is False
    assert config_from_args(["--data", "d", "--out", "o", "--fusion", "residual", "--mefm-shoulder"]).model.mefm_shoulder
    assert not config_from_args(["--data", "d", "--out", "o"]).model.mefm_shoulder
