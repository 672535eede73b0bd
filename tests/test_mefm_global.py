"""``Preset.mefm_global_width`` (docs/model.md, "The global branch"): a wider MEFM global branch. Checked: the
preset carries it (old files keep their meaning), ``--init`` of narrower weights keeps their function (to rounding)
while the new channels can learn, narrowing is refused, and tiling and ONNX follow."""

from __future__ import annotations

import pytest
import torch

from sitm_trt import reference as ops
from sitm_trt.model import Preset, SITMNet, get_preset, predict_hdr
from sitm_trt.model.mefm import exposure_gains
from test_mefm_context import assert_tiled_equals_whole_frame, check_onnx_against_pytorch
from test_mefm_context import preset as context_preset
from test_mefm_context import randomize_context
from test_mefm_context import trained_like as context_trained_like


def preset(width: int = 0) -> Preset:
    return context_preset(1, width)


def trained_like(width: int = 0, seed: int = 0) -> SITMNet:
    net = context_trained_like(1, seed, width)
    randomize_context(net)
    return net


def test_preset_field_round_trips_and_is_checked():
    assert get_preset("compact").mefm_global_width == 0 and get_preset("compact").global_width == 8
    assert "mefm_global_width" not in preset(0).to_dict()  # files without the key keep their meaning
    p = preset(32)
    assert p.global_width == 32 and p.to_dict()["mefm_global_width"] == 32 and Preset.from_json(p.to_json()) == p
    for bad in (-1, 1.5, True, 10**9):
        with pytest.raises(ValueError, match="mefm_global_width"):
            preset(bad)


def test_the_branch_and_the_layers_that_read_g_take_the_width():
    m = SITMNet(preset(24)).mefm
    assert m.glob[0][0].weight.shape == (24, 9, 3, 3) and m.glob[1][0].weight.shape == (24, 24, 3, 3)
    assert m.glob_fc.weight.shape == (24, 24) and m.fuse_global.weight.shape == (8, 24)
    assert m.coef_head.weight.shape == (3, 24)
    thumb = torch.rand(2, 9, 256, 256)
    g = m.global_vector(thumb)
    assert g.shape == (2, 26)  # 24 learned entries, then the two measured exposure gains
    torch.testing.assert_close(g[:, 24:], exposure_gains(thumb))


def test_init_of_narrower_weights_keeps_their_function_and_the_new_channels_can_learn():
    """``load_init`` of an 8-channel branch into a 32-channel one: the old block is copied, the weights from the
    new channels into old ones (and into the mask bias and the coefficient head) are 0, the new channels keep
    their fresh initialisation; the outputs equal the old network's; and a loss on the coefficients reaches the
    coefficient head's new columns (so they can move off zero)."""
    from sitm_training.train import load_init

    old = trained_like(0)
    torch.manual_seed(5)
    net = SITMNet(preset(32)).eval()
    fresh_glob_fc = net.mefm.glob_fc.weight.detach().clone()
    assert load_init(net, old, "old.safetensors") == []
    m, o = net.mefm, old.mefm
    assert torch.equal(m.glob_fc.weight[:8, :8], o.glob_fc.weight) and not m.glob_fc.weight[:8, 8:].any()
    assert torch.equal(m.glob_fc.weight[8:], fresh_glob_fc[8:]) and m.glob_fc.weight[8:].abs().sum() > 0
    assert torch.equal(m.glob[0][0].weight[:8], o.glob[0][0].weight)
    assert torch.equal(m.glob[2][0].weight[:8, :8], o.glob[2][0].weight) and not m.glob[2][0].weight[:8, 8:].any()
    assert not m.fuse_global.weight[:, 8:].any() and not m.coef_head.weight[:, 8:].any()
    assert torch.equal(m.coef_head.bias, o.coef_head.bias)
    frame = torch.rand(1, 3, 48, 64)
    pre = ops.pre(frame, stride=net.stride)
    # in float64, so that the check does not depend on the CPU: float32 convolutions of 8 and of 32 channels may
    # take different kernels (summation orders), which moved the masks by 5e-5 on one machine; the copy is exact
    with torch.no_grad():
        a, b = old.double()(*[t.double() for t in pre]), net.double()(*[t.double() for t in pre])
    torch.testing.assert_close(b.coef, a.coef, rtol=0, atol=1e-12)
    torch.testing.assert_close(b.masks, a.masks, rtol=0, atol=1e-12)
    old.float(), net.float()
    with torch.no_grad():
        torch.testing.assert_close(predict_hdr(net, frame), predict_hdr(old, frame), rtol=1e-5, atol=1e-6)
    net.train()
    net.forward_train(*pre).coef[:, 2].sum().backward()
    assert m.coef_head.weight.grad[2, 8:].abs().sum() > 0
    with pytest.raises(ValueError, match="has 32 channels, the network's 8: pass --mefm-global-width 32"):
        load_init(SITMNet(preset(0)), SITMNet(preset(32)), "wide.safetensors")


def test_widen_rejects_a_smaller_target():
    from sitm_training.train import widen

    out = widen(torch.ones(2, 3), torch.full((4, 5), 7.0))
    assert torch.equal(out, torch.tensor([[1.0, 1, 1, 0, 0], [1, 1, 1, 0, 0], [7, 7, 7, 7, 7], [7, 7, 7, 7, 7]]))
    with pytest.raises(ValueError, match="cannot widen"):
        widen(torch.ones(4, 3), torch.ones(2, 5))


def test_tiled_and_onnx_follow_the_width(tmp_path):
    net = trained_like(16)
    assert_tiled_equals_whole_frame(net, torch.rand(1, 3, 160, 144))
    check_onnx_against_pytorch(net, tmp_path / "g.onnx")
