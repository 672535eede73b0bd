"""``Preset.mefm_clip_prior`` (docs/model.md, "The clipped-region prior"): a Rempel-style prior on the residual
fusion's gain, a factor ``2^(s P)`` with ``P`` the blurred nearly clipped mask and ``s`` a per-pixel strength the
network predicts. Checked: the map against a NumPy reimplementation and hand-computed values, the gain against
the formula (gate open or shut, the clamps) and its gradient where the gate is shut, the exact identity after
``--init`` of weights without it, the reach the tiling assumes, tiling, ONNX, the preset's round trip and the
trainer's option."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from sitm_trt.model import Preset, SITMNet, get_preset
from sitm_trt.model.config import MAX_CLIP_PRIOR
from sitm_trt.model.mefm import clip_prior_map

from test_mefm_context import (assert_init_is_identity, assert_tiled_equals_whole_frame,
                               check_fp16_onnx_against_float32, check_onnx_against_pytorch, trained_like)


def preset(radius: int = 0, context: int = 0) -> Preset:
    return dataclasses.replace(get_preset("compact"), fusion="residual", boost="all", mefm_context=context,
                               mefm_clip_prior=radius)


def with_prior(radius: int, context: int = 0, seed: int = 0) -> SITMNet:
    """``trained_like``'s network with a clip prior whose strength head is not at its zero start."""
    old = trained_like(context, seed)
    net = SITMNet(preset(radius, context)).eval()
    net.load_state_dict(old.state_dict(), strict=False)
    with torch.no_grad():
        net.mefm.prior_head.weight.normal_(0, 0.1)
        net.mefm.prior_head.bias.fill_(0.5)
    return net


def box_mean_inside(a: np.ndarray, r: int, axis: int) -> np.ndarray:
    """The mean of the ``2 r + 1`` values around each entry along ``axis``, over those inside the array only."""
    a = np.moveaxis(a, axis, -1)
    n = a.shape[-1]
    out = np.empty_like(a)
    for i in range(n):
        lo, hi = max(0, i - r), min(n, i + r + 1)
        out[..., i] = a[..., lo:hi].mean(axis=-1)
    return np.moveaxis(out, -1, axis)


def reference_map(image: np.ndarray, r: int) -> np.ndarray:
    """Float64 NumPy reimplementation of ``clip_prior_map`` for ``(3, H, W)``."""
    m = np.clip((image.max(axis=0).astype(np.float64) - 0.92) / 0.08, 0.0, 1.0)
    for _ in range(3):
        m = box_mean_inside(box_mean_inside(m, r, axis=1), r, axis=0)
    return m


def test_preset_field_round_trips_and_is_checked():
    assert get_preset("compact").mefm_clip_prior == 0
    assert "mefm_clip_prior" not in preset(0).to_dict()  # files without the key keep their meaning
    p = preset(8)
    assert p.to_dict()["mefm_clip_prior"] == 8 and Preset.from_json(p.to_json()) == p
    for bad in (-1, MAX_CLIP_PRIOR + 1, 2.5, True):
        with pytest.raises(ValueError, match="mefm_clip_prior"):
            preset(bad)
    with pytest.raises(ValueError, match="mefm_clip_prior needs the residual fusion"):
        dataclasses.replace(get_preset("compact"), mefm_clip_prior=4)


def test_map_matches_a_numpy_reimplementation_and_hand_values():
    rng = np.random.default_rng(0)
    image = rng.uniform(0.0, 1.0, (3, 37, 29)).astype(np.float32)  # 22 % of pixels have max > 0.92
    got = clip_prior_map(torch.from_numpy(image)[None], 3)[0, 0].numpy()
    np.testing.assert_allclose(got, reference_map(image, 3), rtol=1e-5, atol=1e-6)
    # by hand: a clipped block wider than the blur's reach is 1 in its core (to float32 rounding: the pool
    # multiplies by 1/5); far from it, exactly 0;
    # a pixel at 0.96 counts half (the ramp from 0.92 to 1)
    block = np.zeros((3, 60, 60), np.float32)
    block[:, 10:40, 10:40] = 1.0
    m = clip_prior_map(torch.from_numpy(block)[None], 2)[0, 0].numpy()
    assert np.all(abs(m[16:34, 16:34] - 1.0) < 1e-6) and np.all(m[47:, :] == 0.0) and np.all(m[:, 47:] == 0.0)
    assert 0.0 < m[40, 25] < 1.0 and abs(m[39, 25] + m[40, 25] - 1.0) < 1e-6  # symmetric about the edge
    half = np.full((3, 20, 20), 0.5, np.float32)
    half[0] = 0.96
    assert np.allclose(clip_prior_map(torch.from_numpy(half)[None], 1).numpy(), 0.5, atol=1e-6)


def masks_with_and_without_prior(gate_bias: float, strength_bias: float, train: bool = False):
    """Masks of ``with_prior(2)`` with its gain gate and strength heads constant (weights zeroed, biases set), of the
    same network without the prior, the frame, and the network."""
    net = with_prior(2)
    with torch.no_grad():
        net.mefm.prior_head.weight.zero_()
        net.mefm.prior_head.bias.fill_(strength_bias)
        net.mefm.mask_head.weight[2].zero_()
        net.mefm.mask_head.bias[2] = gate_bias
    plain = SITMNet(preset(0)).eval()
    plain.load_state_dict({k: v for k, v in net.state_dict().items() if "prior_head" not in k})
    torch.manual_seed(2)
    image, up, down = (torch.rand(1, 3, 24, 20) for _ in range(3))
    g = torch.rand(1, net.mefm.width + 2)
    net.train(train)
    got = net.mefm.masks(image, up, down, g)
    with torch.no_grad():
        base = plain.mefm.masks(image, up, down, g)
    return got, base, image, net


@pytest.mark.parametrize("gate_bias", [0.1, -3.0])
@pytest.mark.parametrize("strength_bias,ev", [(0.5, 0.5), (-1.0, -1.0), (10.0, 4.0)])
def test_prior_multiplies_the_gain_by_two_to_the_strength_times_map(gate_bias, strength_bias, ev):
    """Gain gate and strength constant: the masks are the no-prior masks times ``2^(s P)``, ``s`` clamped to
    [-4, 4] EV, whether the gate is open (0.1: a gain of 2^1.2 already) or shut (-3, where the trained models keep
    it: the prior acts outside the gate's clamp)."""
    got, base, image, _ = masks_with_and_without_prior(gate_bias, strength_bias)
    p = reference_map(image[0].numpy(), 2)
    want = base.double() * torch.from_numpy(2.0 ** (ev * p))[None, None]
    torch.testing.assert_close(got.detach().double(), want, rtol=2e-5, atol=1e-7)
    assert (p > 1e-3).mean() > 0.2  # the prior did act on a good part of this frame


def test_prior_gain_is_capped_at_twelve_ev():
    """A gate wide open (2^12) and a positive strength: the total gain stays 2^12 (FP16 holds it), not 2^16."""
    got, base, image, _ = masks_with_and_without_prior(5.0, 4.0)
    torch.testing.assert_close(got.detach(), base, rtol=1e-6, atol=0.0)


def test_strength_gets_its_gradient_where_the_gate_is_shut():
    """At the zero start, with the gate shut (-3), d(sum of masks)/d(strength bias) = ln 2 sum(P x masks): the full
    gradient, not the gate's 0.01 leak (the reason the prior sits outside the clamp)."""
    got, base, image, net = masks_with_and_without_prior(-3.0, 0.0, train=True)
    got.sum().backward()
    p = torch.from_numpy(reference_map(image[0].numpy(), 2)).float()
    want = float(np.log(2.0)) * (base[0] * p).sum()
    torch.testing.assert_close(net.mefm.prior_head.bias.grad[0], want, rtol=1e-4, atol=0.0)
    assert want > 1.0


def test_init_without_the_prior_is_an_exact_identity():
    from sitm_training.train import load_init

    net = SITMNet(preset(8, context=2)).eval()
    assert_init_is_identity(trained_like(2), net, ["mefm.prior_head.bias", "mefm.prior_head.weight"])
    with pytest.raises(ValueError, match="clip prior has radius 8, the network's 4: pass --mefm-clip-prior 8"):
        load_init(SITMNet(preset(4, context=2)), net, "r8.safetensors")
    with pytest.raises(ValueError, match="radius 8, the network's 0: pass --mefm-clip-prior 8"):  # nowhere to put it
        load_init(SITMNet(preset(0, context=2)), net, "r8.safetensors")


@pytest.mark.parametrize("radius", [1, 3])
def test_prior_reaches_three_radii(radius):
    """One pixel set to clipped ``3 r`` pixels from the centre (the rest below the threshold) changes the centre's
    masks; ``3 r + 1`` pixels away it does not (the branches of ``compact`` reach 3, less than ``3 r`` here)."""
    net = with_prior(radius)
    torch.manual_seed(3)
    image = torch.rand(1, 3, 40, 40) * 0.5
    up, down = torch.rand(1, 3, 40, 40), torch.rand(1, 3, 40, 40)
    g = torch.rand(1, net.mefm.width + 2)
    reach = max(3, 3 * radius)

    def centre(dx: int | None) -> torch.Tensor:
        x = image.clone()
        if dx is not None:
            x[:, :, 20, 20 + dx] = 1.0
        with torch.no_grad():
            return net.mefm.masks(x, up, down, g)[0, :, 20, 20]

    assert not torch.equal(centre(reach), centre(None))
    assert torch.equal(centre(reach + 1), centre(None))


def test_tiled_equals_whole_frame_with_the_prior():
    from sitm_trt.runtime import tiling

    net = with_prior(6, context=2)
    # the prior reaches 3 x 6 = 18 pixels, past the dilated branch and its context (2 + 4 + 8 = 14)
    assert tiling.context_radius(net.preset, 2) == tiling.context_radius(preset(0, 2), 2) + 18 - 14
    assert_tiled_equals_whole_frame(net, torch.rand(1, 3, 160, 144) ** 0.3)  # bright: many pixels above 0.92


def test_onnx_export_with_the_prior(tmp_path):
    check_onnx_against_pytorch(with_prior(4, context=1), tmp_path / "p.onnx")


def test_train_option_builds_the_network_and_is_checked():
    from sitm_training.config import TrainConfig

    cfg = TrainConfig.from_dict({"data": "d", "out": "o", "fusion": "residual", "mefm_clip_prior": 8})
    assert cfg.model.network_preset().mefm_clip_prior == 8
    with pytest.raises(ValueError, match="--mefm-ring: .*mefm_clip_prior needs the residual fusion"):
        TrainConfig.from_dict({"data": "d", "out": "o", "mefm_clip_prior": 8})


def test_fp16_onnx_with_the_prior_tracks_float32_pytorch(tmp_path):
    """The FP16 graph (the prior's map is computed in float32 in it, as in PyTorch) on ONNX Runtime against the
    float32 model (test_mefm_context.check_fp16_onnx_against_float32)."""
    torch.manual_seed(5)
    check_fp16_onnx_against_float32(with_prior(4, context=1), tmp_path / "p16.onnx", torch.rand(1, 3, 64, 48) ** 0.5)


@pytest.mark.slow
def test_tensorrt_rtx_engine_builds_with_the_prior(tmp_path):
    """The prior's box blur (ONNX AveragePool that leaves the padding out) in an FP16 graph parses and builds as a
    TensorRT-RTX engine for 256x256 to 3840x2160, like the shipped presets (test_export.py)."""
    from sitm_trt.model import export_onnx
    from test_export import assert_rtx_engine_builds

    path = export_onnx(with_prior(8, context=2), tmp_path / "p16.onnx", fp16=True)
    assert_rtx_engine_builds(str(path), fp16=True)
