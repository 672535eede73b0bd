"""``Preset.mefm_context`` (docs/model.md, "Context"): residual dilated convolutions after the MEFM's dilated
branch. Checked: they start as an exact identity (so ``--init`` of weights without them keeps their result),
they widen what the masks see by the hand-computed radius, the preset carries them (old files keep their
meaning), and tiling, ONNX and the trainer's options follow."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from sitm_trt import reference as ops
from sitm_trt.model import Preset, SITMNet, get_preset, predict_hdr
from sitm_trt.model.config import MEFM_CONTEXT_DILATIONS


def preset(context: int = 0, global_width: int = 0) -> Preset:
    return dataclasses.replace(get_preset("compact"), fusion="residual", boost="all", mefm_context=context,
                               mefm_global_width=global_width)


def trained_like(context: int = 0, seed: int = 0, global_width: int = 0) -> SITMNet:
    """A residual network whose heads are not at their zero start, so the tests are not of the identity (also
    used by test_mefm_global.py)."""
    torch.manual_seed(seed)
    net = SITMNet(preset(context, global_width)).eval()
    with torch.no_grad():
        net.mefm.mask_head.weight.normal_(0, 0.2)
        net.mefm.mask_head.bias.copy_(torch.tensor([0.1, 0.1, 0.2]))
        net.mefm.coef_head.weight.normal_(0, 0.05)
    return net


def randomize_context(net: SITMNet) -> None:
    with torch.no_grad():
        for layer in net.mefm.context:
            layer[0].weight.normal_(0, 0.1)
            layer[0].bias.normal_(0, 0.05)


def test_preset_field_round_trips_and_is_checked():
    assert get_preset("compact").mefm_context == 0
    assert "mefm_context" not in preset(0).to_dict()  # files without the key keep their meaning
    p = preset(2)
    assert p.to_dict()["mefm_context"] == 2 and Preset.from_json(p.to_json()) == p
    assert Preset.from_dict(preset(0).to_dict()).mefm_context == 0
    for bad in (-1, len(MEFM_CONTEXT_DILATIONS) + 1, 1.5, True):
        with pytest.raises(ValueError, match="mefm_context"):
            preset(bad)


def assert_init_is_identity(old: SITMNet, net: SITMNet, added: list[str]) -> None:
    """``load_init(net, old)`` reports exactly ``added`` as new, leaves them zero, and ``net`` gives ``old``'s
    masks, coefficients and HDR bit for bit (also used by test_clip_prior.py)."""
    from sitm_training.train import load_init

    assert load_init(net, old, "old.safetensors") == added
    assert all(not net.state_dict()[k].any() for k in added)
    frame = torch.rand(1, 3, 48, 64)
    pre = ops.pre(frame, stride=net.stride)
    with torch.no_grad():
        a, b = old(*pre), net(*pre)
        assert torch.equal(a.masks, b.masks) and torch.equal(a.coef, b.coef)
        assert torch.equal(predict_hdr(old, frame), predict_hdr(net, frame))


def test_new_context_layers_start_as_an_exact_identity():
    """``load_init`` of weights without context into a network with two context layers: every tensor is copied,
    the four new ones are zero, and the outputs are bit-identical (``d + LReLU(0) == d``)."""
    from sitm_training.train import load_init

    assert_init_is_identity(trained_like(0), SITMNet(preset(2)).eval(), [
        "mefm.context.0.0.bias", "mefm.context.0.0.weight", "mefm.context.1.0.bias", "mefm.context.1.0.weight"])
    with pytest.raises(ValueError, match="have 2 MEFM context convolutions, the network 1: pass --mefm-context 2"):
        load_init(SITMNet(preset(1)), SITMNet(preset(2)), "more.safetensors")  # nowhere to put the second


@pytest.mark.parametrize("context", [0, 1, 2])
def test_context_widens_what_the_masks_see_by_the_hand_computed_radius(context):
    """The masks at one pixel, perturbing ``I`` only, ``r`` and ``r + 1`` pixels away (MEFM alone, ``g`` fixed).
    ``compact``: local branch 2 convs (radius 2), dilated branch 1 conv of dilation 2 (radius 2), mask head 3x3
    (+1): ``r = 3``; each context layer adds its dilation (4, then 8): 7, then 15."""
    net = trained_like(context)
    randomize_context(net)
    radius = 3 + sum(MEFM_CONTEXT_DILATIONS[:context])
    torch.manual_seed(1)
    image, up, down = (torch.rand(1, 3, 40, 40) for _ in range(3))
    g = torch.rand(1, net.mefm.width + 2)
    cy = cx = 20

    def masks_at_centre(dx: int) -> torch.Tensor:
        x = image.clone()
        x[:, :, cy, cx + dx] = 1.0 - x[:, :, cy, cx + dx]
        with torch.no_grad():
            return net.mefm.masks(x, up, down, g)[0, :, cy, cx]

    with torch.no_grad():
        ref = net.mefm.masks(image, up, down, g)[0, :, cy, cx]
    assert not torch.equal(masks_at_centre(radius), ref)  # the outermost tap reaches
    assert torch.equal(masks_at_centre(radius + 1), ref)  # one pixel further does not


def assert_tiled_equals_whole_frame(net: SITMNet, frame: torch.Tensor) -> None:
    """``tiling.infer_tiled`` in 112-pixel tiles, with the default overlap (which follows ``context_radius``),
    gives the whole frame's HDR up to float rounding (also used by the tests of the other MEFM options)."""
    from sitm_trt.runtime import tiling

    with torch.no_grad():
        whole = predict_hdr(net, frame)
        tiled = tiling.infer_tiled(net, frame, tile=112)
    torch.testing.assert_close(tiled, whole, rtol=1e-4, atol=1e-5)


def test_tiled_equals_whole_frame_with_context():
    from sitm_trt.runtime import tiling

    net = trained_like(2)
    randomize_context(net)
    p = net.preset
    assert tiling.context_radius(p, 2) == tiling.context_radius(preset(0), 2) + 4 + 8
    assert_tiled_equals_whole_frame(net, torch.rand(1, 3, 160, 144))


def check_onnx_against_pytorch(net: SITMNet, path) -> None:
    """``net`` exported to ONNX and run by ONNX Runtime gives PyTorch's masks and coefficients (also used by
    test_mefm_global.py)."""
    ort = pytest.importorskip("onnxruntime")
    from sitm_trt.model import export_onnx

    export_onnx(net, path)
    pre = ops.pre(torch.rand(1, 3, 64, 48), stride=net.stride)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {i.name: v.numpy() for i, v in zip(sess.get_inputs(), pre)})
    with torch.no_grad():
        want = net(*pre)
    # the gain 2^(12 b) turns an absolute error e in the gate into a relative one of 8.3 e: compare relatively, and
    # a mask whose gate is near 0 (an absolute error e x gain) relative to its pixel's gain (the three masks' sum)
    masks = want.masks.numpy()
    gain = masks.sum(axis=1, keepdims=True)
    excess = np.abs(got[2] - masks) - (1e-5 + 1e-4 * np.abs(masks) + 1e-5 * gain)
    assert excess.max() <= 0, f"masks: {int((excess > 0).sum())} of {masks.size} off by up to {excess.max():.2e} more"
    np.testing.assert_allclose(got[3], want.coef.numpy(), rtol=1e-4, atol=1e-5)  # log2 of thumbnail sums


def check_fp16_onnx_against_float32(net: SITMNet, path, image: torch.Tensor) -> None:
    """``net``'s FP16 graph on ONNX Runtime against ``net`` in float32, on ``image``: the masks within a small
    multiple of the same model's error run in float16 by PyTorch, relative to the masks' size (the gain reaches
    2^12; test_export's rule). Used by the tests of the MEFM options that compute maps in float32 in that graph."""
    ort = pytest.importorskip("onnxruntime")
    import copy

    from sitm_trt.model import export_onnx

    path = export_onnx(net, path, fp16=True)
    pre = ops.pre(image, stride=net.stride)
    with torch.no_grad():
        ref = net(*pre)
        half = copy.deepcopy(net).half()(*(t.half() for t in pre))
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {i.name: v.half().numpy() for i, v in zip(sess.get_inputs(), pre)})
    scale = ref.masks.abs().max().item()
    err = np.abs(got[2].astype(np.float32) - ref.masks.numpy()).max() / scale
    err_torch = (half.masks.float() - ref.masks).abs().max().item() / scale
    assert err <= 4 * err_torch + 1e-3, f"masks: onnx fp16 error {err:.2e}, torch fp16 error {err_torch:.2e}"


def test_onnx_export_with_context(tmp_path):
    net = trained_like(1)
    randomize_context(net)
    check_onnx_against_pytorch(net, tmp_path / "c.onnx")


def test_train_option_builds_the_network_and_is_checked(tmp_path):
    from sitm_training.config import TrainConfig

    cfg = TrainConfig.from_dict({"data": "d", "out": "o", "fusion": "residual", "mefm_context": 2})
    assert cfg.model.mefm_context == 2
    with pytest.raises(ValueError, match="mefm-context"):
        TrainConfig.from_dict({"data": "d", "out": "o", "mefm_context": 9})
