"""``Preset.mefm_ring`` (docs/model.md, "The ring maps"): how bright the pixels around nearby clipped regions are,
added to the MEFM's mask features through a zero-initialised 1x1 convolution. Checked: the maps against a NumPy
reimplementation and hand-computed values, the exact identity after ``--init`` of weights without them and the
gradient that lets the layer move off zero, the reach the tiling assumes, tiling, ONNX, the preset's round trip
and the trainer's option."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from sitm_trt import reference as ops
from sitm_trt.model import Preset, SITMNet, get_preset
from sitm_trt.model.config import MAX_RING
from sitm_trt.model.mefm import RING_CHANNELS, ring_maps

from test_clip_prior import box_mean_inside
from test_mefm_context import (assert_init_is_identity, assert_tiled_equals_whole_frame,
                               check_fp16_onnx_against_float32, check_onnx_against_pytorch, trained_like)


def preset(radius: int = 0, context: int = 0) -> Preset:
    return dataclasses.replace(get_preset("compact"), fusion="residual", boost="all", mefm_context=context,
                               mefm_ring=radius)


def with_ring(radius: int, context: int = 0, seed: int = 0) -> SITMNet:
    """``trained_like``'s network with ring maps whose layer is not at its zero start."""
    old = trained_like(context, seed)
    net = SITMNet(preset(radius, context)).eval()
    net.load_state_dict(old.state_dict(), strict=False)
    with torch.no_grad():
        net.mefm.ring_fc.weight.normal_(0, 0.3)
    return net


def reference_maps(image: np.ndarray, r: int) -> np.ndarray:
    """Float64 NumPy reimplementation of ``ring_maps`` for ``(3, H, W)``: ``(5, H, W)``."""
    m = image.max(axis=0).astype(np.float64)
    c = np.clip((m - 0.97) / 0.02, 0.0, 1.0)
    h, w = c.shape
    near = np.zeros_like(c)
    for y in range(h):
        for x in range(w):
            near[y, x] = c[max(0, y - 4):y + 5, max(0, x - 4):x + 5].max()
    n = (1.0 - c) * near
    out = [c]
    for s in (r, 4 * r):
        density = box_mean_inside(box_mean_inside(n, s, axis=1), s, axis=0)
        level = box_mean_inside(box_mean_inside(n * m, s, axis=1), s, axis=0) / np.maximum(density, 1e-6)
        out += [level, density]
    return np.stack(out)


def test_preset_field_round_trips_and_is_checked():
    assert get_preset("compact").mefm_ring == 0
    assert "mefm_ring" not in preset(0).to_dict()  # files without the key keep their meaning
    p = preset(8)
    assert p.to_dict()["mefm_ring"] == 8 and Preset.from_json(p.to_json()) == p
    for bad in (-1, MAX_RING + 1, 2.0, True):
        with pytest.raises(ValueError, match="mefm_ring must be an integer"):
            preset(bad)


def test_maps_match_numpy_and_hand_values():
    torch.manual_seed(1)
    image = torch.rand(2, 3, 40, 36) ** 0.2  # bright: clipped pixels, ring pixels and both mixed in the ramp
    got = ring_maps(image, 3)
    assert got.shape == (2, RING_CHANNELS, 40, 36) and got.dtype == torch.float32
    for i in range(2):
        np.testing.assert_allclose(got[i].numpy(), reference_maps(image[i].numpy(), 3), rtol=1e-5, atol=5e-6)  # float32 ramp x50
    # by hand: a clipped 6x6 block in a frame at 0.8, except a 0.5 column 2 px to its left
    x = torch.full((1, 3, 30, 30), 0.8)
    x[..., 12:18, 12:18] = 1.0
    x[..., :, 10] = 0.5
    maps = ring_maps(x, 2)[0]
    assert torch.equal(maps[0], (x[0, 0] == 1.0).float())  # 1.0 is clipped, 0.8 and 0.5 are not
    # the block's centre (15, 15), half-width 2: its window is clipped, no ring
    assert maps[1, 15, 15] == 0 and maps[2, 15, 15] == 0
    # at (15, 12), the block's left edge, the 5x5 window holds 15 clipped pixels, 5 at 0.5 (column 10), 5 at 0.8
    assert maps[2, 15, 12].item() == pytest.approx(10 / 25) and maps[1, 15, 12].item() == pytest.approx(0.65)
    # half-width 8 at the centre: the 17x17 window (rows and columns 7..23) holds 36 clipped pixels; of the rest,
    # the ring is what lies within 4 of the block (rows and columns 8..21), 14 x 14 - 36 = 160 pixels: column 10's
    # 14 at 0.5, the other 146 at 0.8
    assert maps[4, 15, 15].item() == pytest.approx(160 / 289)
    assert maps[3, 15, 15].item() == pytest.approx((146 * 0.8 + 14 * 0.5) / 160)
    assert not ring_maps(torch.full((1, 3, 16, 16), 0.9), 4).any()  # nothing clipped: all zero


def test_init_without_the_maps_is_an_exact_identity_and_the_layer_gets_a_gradient():
    from sitm_training.train import load_init

    net = SITMNet(preset(8, context=2)).eval()
    assert_init_is_identity(trained_like(2), net, ["mefm.ring_fc.bias", "mefm.ring_fc.weight"])
    net.train()
    frame = torch.rand(1, 3, 48, 64) ** 0.3
    pre = ops.pre(frame, stride=net.stride)
    out = net.forward_train(*pre)
    out.masks.sum().backward()
    assert net.mefm.ring_fc.weight.grad.abs().sum() > 0  # zero weights, nonzero maps: it can move
    with pytest.raises(ValueError, match="ring maps have half-width 8, the network's 4: pass --mefm-ring 8"):
        load_init(SITMNet(preset(4, context=2)), net, "r8.safetensors")
    with pytest.raises(ValueError, match="half-width 8, the network's 0: pass --mefm-ring 8"):
        load_init(SITMNet(preset(0, context=2)), net, "r8.safetensors")


@pytest.mark.parametrize("radius", [1, 2])
def test_maps_reach_four_radii_and_the_ring(radius):
    """A clipped pixel ``4 r + 4 + 1`` pixels from the centre changes the centre's masks (its ring reaches 4
    pixels, the wide window ``4 r`` more, the mask head's 3x3 one more); one pixel further it does not."""
    net = with_ring(radius)
    torch.manual_seed(3)
    image = torch.rand(1, 3, 48, 48) * 0.5
    up, down = torch.rand(1, 3, 48, 48), torch.rand(1, 3, 48, 48)
    g = torch.rand(1, net.mefm.width + 2)
    reach = 4 * radius + 4 + 1

    def centre(dx: int | None) -> torch.Tensor:
        x = image.clone()
        if dx is not None:
            x[:, :, 24, 24 + dx] = 1.0
        with torch.no_grad():
            return net.mefm.masks(x, up, down, g)[0, :, 24, 24]

    assert reach > 3  # past the branches of compact
    assert not torch.equal(centre(reach), centre(None))
    assert torch.equal(centre(reach + 1), centre(None))


def test_tiled_equals_whole_frame_with_the_maps():
    from sitm_trt.runtime import tiling

    net = with_ring(4, context=2)
    # the maps reach 4 x 4 + 4 = 20 pixels, past the dilated branch and its context (2 + 4 + 8 = 14)
    assert tiling.context_radius(net.preset, 2) == tiling.context_radius(preset(0, 2), 2) + 20 - 14
    assert_tiled_equals_whole_frame(net, torch.rand(1, 3, 160, 144) ** 0.3)


def test_onnx_export_with_the_maps(tmp_path):
    check_onnx_against_pytorch(with_ring(2, context=1), tmp_path / "r.onnx")


def test_train_option_builds_the_network():
    from sitm_training.config import TrainConfig, config_from_args

    cfg = TrainConfig.from_dict({"data": "d", "out": "o", "fusion": "residual", "mefm_ring": 8})
    assert cfg.model.network_preset().mefm_ring == 8
    assert config_from_args(["--data", "d", "--out", "o", "--mefm-ring", "6"]).model.network_preset().mefm_ring == 6
    with pytest.raises(ValueError, match="--mefm-ring: .*mefm_ring must be an integer"):
        TrainConfig.from_dict({"data": "d", "out": "o", "mefm_ring": -2})


def test_fp16_onnx_with_the_maps_tracks_float32_pytorch(tmp_path):
    """The FP16 graph (the maps are computed in float32 in it, as in PyTorch) on ONNX Runtime against the float32
    model (test_mefm_context.check_fp16_onnx_against_float32)."""
    torch.manual_seed(5)
    check_fp16_onnx_against_float32(with_ring(4, context=1), tmp_path / "r16.onnx", torch.rand(1, 3, 64, 48) ** 0.3)


@pytest.mark.slow
def test_tensorrt_rtx_engine_builds_with_the_maps(tmp_path):
    """The maps' max-pool and box means (ONNX MaxPool, AveragePool that leaves the padding out) in an FP16 graph
    parse and build as a TensorRT-RTX engine for 256x256 to 3840x2160 (test_export.py)."""
    from sitm_trt.model import export_onnx
    from test_export import assert_rtx_engine_builds

    path = export_onnx(with_ring(8, context=2), tmp_path / "r16.onnx", fp16=True)
    assert_rtx_engine_builds(str(path), fp16=True)
