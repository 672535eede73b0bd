"""The residual fusion (docs/model.md, "The residual fusion"): the post kernel's math against a float64 NumPy
reimplementation and hand-computed values, and the network's starting point (an untrained network returns the
linearized input exactly), through every path that applies the fusion (reference, kernels, encodings, tiling,
ONNX, the pipeline)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from sitm_trt import kernels as K
from sitm_trt import reference as ops
from sitm_trt.media import transfer as T
from sitm_trt.model import SITMNet, get_preset, predict_hdr
from sitm_trt.model.mefm import exposure_gains

from conftest import cpu_and_cuda

FLOATS = {"float32": torch.float32, "float16": torch.float16}

# Relative tolerance of the post kernel against the float64 reference. CPU: the decode's pow (pow_scaled in
# pixel_math.h) is within 4.6e-7 of the exact power over every float in [2^-30, 1] (docs/kernels.md), and the
# whole kernel measured within 5.6e-7 of residual_np on these tests' data (the float gamma = expf(k2), whose
# rounding the power amplifies, included): 2e-6 leaves a margin of 3. CUDA keeps 2e-5: its expf/exp2f are
# 2-ulp functions, and no GPU measured the margin.
RTOL = {"cpu": 2e-6, "cuda": 2e-5}


def residual_preset(name: str = "compact"):
    return dataclasses.replace(get_preset(name), fusion="residual")


def srgb_decode_np(v: np.ndarray) -> np.ndarray:
    """IEC 61966-2-1, written out independently of sitm_trt.reference."""
    v = np.clip(v, 0.0, 1.0)
    return np.where(v <= 0.04045, v / 12.92, ((v + 0.055) / 1.055) ** 2.4)


def residual_np(masks, image, up, down, coef) -> np.ndarray:
    """float64 NumPy: M_mid L(I) + M_up 2^k0 L(I_up) + M_down 2^k1 L(I_down), L = srgb^-1(.)^exp(k2)."""
    masks, image, up, down, coef = (np.asarray(t, dtype=np.float64) for t in (masks, image, up, down, coef))
    k = coef[:, None, None, None, :] if coef.ndim == 2 else coef[:, :, None, None, :]
    gamma = np.exp(k[..., 2])

    def dec(v):
        return srgb_decode_np(v) ** gamma

    return (masks[:, 1:2] * dec(image) + masks[:, 0:1] * 2.0 ** k[..., 0] * dec(up)
            + masks[:, 2:3] * 2.0 ** k[..., 1] * dec(down))


def outputs(n, h, w, gen, per_channel=False, sparse=True):
    """Network-like outputs: masks with many exact zeros (the gates are sparse), images in [0, 1] with exact
    0 and 1, gains of several EV, gamma around 1."""
    gates = (torch.rand(n, 2, h, w, generator=gen) * 1.6 - 0.5).clamp(0, 1)
    if not sparse:
        gates = torch.rand(n, 2, h, w, generator=gen)
    gates = gates / gates.sum(1, keepdim=True).clamp_min(1)
    masks = torch.cat([gates[:, :1], 1 - gates.sum(1, keepdim=True), gates[:, 1:]], dim=1)
    images = [torch.rand(n, 3, h, w, generator=gen) for _ in range(3)]
    images[0].view(-1)[:2] = torch.tensor([0.0, 1.0])
    shape = (n, 3, 4) if per_channel else (n, 4)
    coef = torch.stack([torch.rand(shape[:-1], generator=gen) * -4, torch.rand(shape[:-1], generator=gen) * 6,
                        torch.randn(shape[:-1], generator=gen) * 0.2, torch.zeros(shape[:-1])], dim=-1)
    return masks, *images, coef


def test_hand_computed_pixel():
    # One pixel: I = 0.5, I_up = 0.9, I_down = 0.25; masks (0.2, 0.5, 0.3); gains 2^-2 and 2^3, gamma 1.
    lin = lambda v: ((v + 0.055) / 1.055) ** 2.4  # noqa: E731 (all three values are above 0.04045)
    want = 0.5 * lin(0.5) + 0.2 * 0.25 * lin(0.9) + 0.3 * 8.0 * lin(0.25)
    masks = torch.tensor([0.2, 0.5, 0.3]).view(1, 3, 1, 1)
    img = [torch.full((1, 3, 1, 1), v) for v in (0.5, 0.9, 0.25)]
    coef = torch.tensor([[-2.0, 3.0, 0.0, 0.0]])
    got = K.post(masks, *img, coef, fusion="residual")
    assert float(got[0, 0, 0, 0]) == pytest.approx(want, rel=1e-6)
    assert float(ops.post(masks, *img, coef, fusion="residual")[0, 1, 0, 0]) == pytest.approx(want, rel=1e-6)
    # gamma = exp(k2) applies to the decoded value: exp(ln 2) = 2 squares it
    coef2 = torch.tensor([[0.0, 0.0, float(np.log(2.0)), 0.0]])
    m_mid = torch.tensor([0.0, 1.0, 0.0]).view(1, 3, 1, 1)
    assert float(K.post(m_mid, *img, coef2, fusion="residual")[0, 2, 0, 0]) == pytest.approx(lin(0.5) ** 2, rel=2e-6)


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("in_dtype", ["float32", "float16"])
@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
@pytest.mark.parametrize("per_channel", [False, True])
def test_post_residual_matches_numpy(device, in_dtype, layout, per_channel):
    gen = torch.Generator().manual_seed(3)
    n, hp, wp, h, w = 2, 16, 32, 13, 29
    masks, image, up, down, coef = outputs(n, hp, wp, gen, per_channel)
    ins = [t.to(FLOATS[in_dtype]).to(device) for t in (masks, image, up, down)]
    got = K.post(*ins, coef.to(device), height=h, width=w, layout=layout, fusion="residual")
    want = residual_np(*(t.float().cpu().numpy() for t in ins), coef.numpy())[..., :h, :w]
    if layout == "nhwc":
        want = want.transpose(0, 2, 3, 1)
    np.testing.assert_allclose(got.cpu().numpy(), want, rtol=RTOL[device], atol=1e-7)
    ref = ops.post(*(t.double() for t in ins), coef.double(), h, w, layout=layout, dtype=torch.float64,
                   fusion="residual")
    np.testing.assert_allclose(ref.cpu().numpy(), want, rtol=2e-6, atol=1e-9)  # ops.post computes in float32


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_decode_over_the_whole_range(device):
    """L(v) alone (masks (0, 1, 0)) on a log scale of v from subnormal floats to 1, at and beside the sRGB
    threshold, and clamped inputs, against float64 within the kernel's tolerance (a subnormal result within
    two of its steps); NaN counts as 0. Below v = 1e-8 (no uint8, uint16 or float16 input gets there) the
    float32 gamma = expf(k2) of the kernels (and of ops.post) differs from float64's exp(k2) by up to 2^-25
    relative (CUDA's expf: 2^-22), which L = 2^(gamma log2(...)) amplifies by |ln L| (up to 175 here): 1e-5
    (CUDA 1e-4) where gamma != 1.
    An absurd gamma (k2 = 20, capped at 4096 in the kernel) gives finite values that vanish below v = 0.99,
    not overflow."""
    t = np.float32(0.04045)
    v = np.concatenate([np.logspace(-45, 0, 500), [0.0, np.nextafter(t, 0), t, np.nextafter(t, 1), 0.5, 1.0, 1.5,
                                                    -0.25, np.inf, -np.inf]]).astype(np.float32)
    image = torch.from_numpy(v).view(1, 1, 1, -1).expand(1, 3, 1, -1).contiguous().to(device)
    masks = torch.zeros_like(image)
    masks[:, 1] = 1.0
    for k2 in (-0.5, 0.0, 0.1, 0.5):
        coef = torch.tensor([[0.0, 0.0, k2, 0.0]], device=device)
        got = K.post(masks, image, image, image, coef, fusion="residual").cpu().numpy()
        want = residual_np(*(t.cpu().numpy() for t in (masks, image, image, image, coef)))
        small = v < 1e-8
        np.testing.assert_allclose(got[..., ~small], want[..., ~small], rtol=RTOL[device], atol=3e-45)
        rtol_small = RTOL[device] if k2 == 0.0 else {"cpu": 1e-5, "cuda": 1e-4}[device]
        np.testing.assert_allclose(got[..., small], want[..., small], rtol=rtol_small, atol=3e-45)
    nan = torch.full_like(image, float("nan"))
    assert torch.equal(K.post(masks, nan, nan, nan, torch.tensor([[0.0, 0.0, 0.3, 0.0]], device=device),
                              fusion="residual"), torch.zeros_like(image))
    got = K.post(masks, image, image, image, torch.tensor([[0.0, 0.0, 20.0, 0.0]], device=device),
                 fusion="residual").cpu().numpy()[0, 0, 0]
    assert np.isfinite(got).all() and got.max() <= 1.0 + 1e-3
    assert got[(v >= 0) & (v <= 0.99)].max() < 1e-20


@pytest.mark.parametrize("transfer", ["pq", "hlg"])
def test_post_residual_encodings(transfer):
    """The encoding paths (display signal, uint16 code values) read the same residual HDR."""
    gen = torch.Generator().manual_seed(5)
    masks, image, up, down, coef = outputs(1, 8, 12, gen)
    lin = residual_np(masks, image, up, down, coef)[0].transpose(1, 2, 0)
    got = K.post(masks, image, up, down, coef, layout="nhwc", transfer=transfer, gamut="bt2020", fusion="residual")
    want = T.encode(lin, transfer, "bt2020")
    np.testing.assert_allclose(got[0].numpy(), want, atol=2e-5)
    codes = K.post(masks, image, up, down, coef, layout="nhwc", dtype="uint16", transfer=transfer, gamut="bt2020",
                   fusion="residual")
    assert np.abs(codes[0].numpy().astype(np.int64) - T.quantize(want, "limited", 10)).max() <= 1


def test_identity_masks_give_the_linearized_input():
    """Masks (0, 1, 0), gamma 1: the kernel returns srgb^-1 of the (padded, then cropped) frame, whatever the
    gains and the other two images are (they are not read where their mask is 0)."""
    frame = torch.randint(0, 256, (2, 9, 11, 3), dtype=torch.uint8)
    p = K.pre(frame, stride=16)
    masks = torch.zeros_like(p.image)
    masks[:, 1] = 1.0
    coef = torch.tensor([[5.0, -7.0, 0.0, 0.0], [-3.0, 2.0, 0.0, 0.0]])
    nan = torch.full_like(p.image, float("nan"))
    hdr = K.post(masks, p.image, nan, nan, coef, height=9, width=11, layout="nhwc", fusion="residual")
    want = srgb_decode_np(frame.numpy() / 255.0)
    np.testing.assert_allclose(hdr.numpy(), want, rtol=1e-6, atol=0)  # float32: a few ulp


def test_fusion_argument_is_checked():
    masks, image, up, down, coef = outputs(1, 4, 4, torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="fusion must be 'paper' or 'residual'"):
        K.post(masks, image, up, down, coef, fusion="cubic")
    with pytest.raises(ValueError, match="fusion must be one of"):
        ops.post(masks, image, up, down, coef, fusion="cubic")
    with pytest.raises(ValueError, match="fusion must be 'paper' or 'residual'"):
        dataclasses.replace(get_preset("compact"), fusion="cubic")


def test_untrained_network_returns_the_linearized_input():
    torch.manual_seed(0)
    net = SITMNet(residual_preset()).eval()
    frame = torch.rand(2, 3, 37, 51)
    with torch.no_grad():
        hdr = predict_hdr(net, frame)
        out = net(*ops.pre(frame, stride=net.stride))
    # exact up to the float32 rounding of srgb^-1 itself (torch's vectorized and scalar pow differ by an ulp)
    torch.testing.assert_close(hdr, ops.srgb_to_linear(frame), rtol=3e-7, atol=0)
    assert torch.equal(out.masks[:, 1], torch.ones_like(out.masks[:, 1]))
    assert torch.equal(out.coef[:, 2:], torch.zeros(2, 2))


def test_exposure_gains_hand_computed():
    """I_down exactly 2 EV darker in linear light where I is below its highlights, and garbage where I is
    clipped (excluded): the measured gain is +2; I_up 1 EV brighter: -1."""
    t = 64
    gen = torch.Generator().manual_seed(1)
    lin = torch.rand(1, 3, t, t, generator=gen) * 0.6 + 0.05
    enc = lambda x: torch.where(x <= 0.0031308, 12.92 * x, 1.055 * x ** (1 / 2.4) - 0.055)  # noqa: E731
    image = enc(lin)
    image[..., :8, :] = 1.0  # clipped rows
    down = enc(lin / 4)
    down[..., :8, :] = torch.rand(1, 3, 8, t, generator=gen)  # whatever the ADEM made there: not measured
    up = enc((lin * 2).clamp(max=1.0))
    g = exposure_gains(torch.cat([image, up, down], dim=1))
    assert float(g[0, 1]) == pytest.approx(2.0, abs=0.01)
    # I_up clips where 2 * lin > 1 is not possible here (lin <= 0.65 -> up <= 1.3): those pixels fade out
    assert float(g[0, 0]) == pytest.approx(-1.0, abs=0.05)
    # nothing measurable (all clipped): gain 0, not NaN
    white = torch.ones(1, 9, t, t)
    assert torch.equal(exposure_gains(white), torch.zeros(1, 2))


def test_residual_gates_learn_and_stay_exact_in_eval():
    """The gates start shut (masks (0, 1, 0)) yet get a gradient; the value is clamp(z, 0, 1) in training and
    in eval alike (the leak only changes the gradient)."""
    torch.manual_seed(0)
    net = SITMNet(residual_preset()).train()
    frame = torch.rand(1, 3, 32, 32)
    pre = ops.pre(frame, stride=net.stride)
    out = net(*pre)
    hdr = ops.post(out.masks, pre.image, out.image_up, out.image_down, out.coef, fusion="residual")
    hdr.mean().backward()  # through the fusion alone
    assert net.mefm.mask_head.weight.grad.abs().sum() > 0
    assert net.mefm.coef_head.weight.grad[2].abs().sum() > 0  # the curve's k2 starts at 0 and still learns
    with torch.no_grad():
        # down gate saturates (the sum > 1 is rescaled); boost gate at 0.25 -> M_down gains 2^(12 * 0.25) = 8
        net.mefm.mask_head.bias.copy_(torch.tensor([0.3, 2.0, 0.25]))
        m_train = net(*pre).masks
        m_eval = net.eval()(*pre).masks
    torch.testing.assert_close(m_train, m_eval, rtol=0, atol=0)
    torch.testing.assert_close(m_eval[:, 0], torch.full_like(m_eval[:, 0], 0.3 / 1.3))
    torch.testing.assert_close(m_eval[:, 2], torch.full_like(m_eval[:, 0], 8.0 / 1.3))
    assert float(m_eval[:, 1].min()) >= 0 and float(m_eval[:, 1].max()) <= 1e-6  # M_mid = 1 - 1.3 / 1.3


@pytest.mark.parametrize("k2", [0.0, 0.15])
def test_residual_fuse_gradients_match_the_plain_formula(k2):
    """The reference's gradients against float64 autograd of the formula written without its exactness guards:
    d/dk2 at gamma = 1 exactly (where training starts: a plain ``where(gamma == 1, l, l^gamma)`` gave 0 there,
    and every residual model up to R16 trained with its curve frozen at gamma = 1), and d/dmask where a mask is 0
    (a shut gate) -- while the values stay bit for bit those computed without a gradient."""
    gen = torch.Generator().manual_seed(3)
    n, h, w = 2, 5, 6
    masks = torch.rand(n, 3, h, w, generator=gen)
    masks[:, 0, :2] = 0.0  # shut gates
    masks[:, 2, 3:] = 0.0
    images = [torch.rand(n, 3, h, w, generator=gen) * 0.98 + 0.01 for _ in range(3)]  # l > 0: ln l finite
    coef = torch.tensor([[-1.5, 2.0, k2, 0.0], [0.5, 1.0, k2, 0.0]])

    m32, c32 = masks.clone().requires_grad_(), coef.clone().requires_grad_()
    out = ops.residual_fuse(m32, *images, c32)
    out.sum().backward()
    with torch.no_grad():
        assert torch.equal(out, ops.residual_fuse(masks, *images, coef))

    m64, c64 = masks.double().requires_grad_(), coef.double().requires_grad_()
    im = [t.double() for t in images]
    k = [c64[:, i].view(n, 1, 1, 1) for i in range(4)]
    gamma = torch.exp(k[2])
    lin = [torch.where(v <= 0.04045, v / 12.92, ((v + 0.055) / 1.055) ** 2.4) ** gamma for v in im]
    want = m64[:, 1:2] * lin[0] + m64[:, 0:1] * 2.0 ** k[0] * lin[1] + m64[:, 2:3] * 2.0 ** k[1] * lin[2]
    want.sum().backward()
    assert float(c64.grad[:, 2].abs().min()) > 1.0  # the curve has a real gradient to match
    torch.testing.assert_close(c32.grad, c64.grad.float(), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(m32.grad, m64.grad.float(), rtol=1e-5, atol=1e-6)
    assert float(m32.grad[:, 0, :2].abs().min()) > 0  # a shut gate sees what opening it would bring


def test_tiled_residual_equals_whole_frame():
    from sitm_trt.runtime import tiling

    torch.manual_seed(0)
    net = SITMNet(residual_preset()).eval()
    with torch.no_grad():  # open the gates a little, so the test is not of the identity
        net.mefm.mask_head.bias.copy_(torch.tensor([0.1, 0.2, 0.1]))
        net.mefm.coef_head.bias.copy_(torch.tensor([0.3, -0.2, 0.05]))
    frame = torch.rand(1, 3, 96, 80)
    with torch.no_grad():
        whole = predict_hdr(net, frame)
        tiled = tiling.infer_tiled(net, frame, tile=48, overlap=16)
    torch.testing.assert_close(tiled, whole, rtol=1e-4, atol=1e-5)


def test_onnx_export_of_the_residual_network(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    from sitm_trt.model import export_onnx

    torch.manual_seed(0)
    net = SITMNet(residual_preset()).eval()
    with torch.no_grad():
        net.mefm.mask_head.bias.copy_(torch.tensor([0.1, 0.2, 0.1]))
    path = export_onnx(net, tmp_path / "r.onnx")
    pre = ops.pre(torch.rand(1, 3, 64, 48), stride=net.stride)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    got = sess.run(None, {k: v.numpy() for k, v in zip(names, pre)})
    with torch.no_grad():
        want = net(*pre)
    np.testing.assert_allclose(got[2], want.masks.numpy(), atol=1e-5)
    np.testing.assert_allclose(got[3], want.coef.numpy(), atol=1e-5)


def test_init_from_paper_weights_starts_at_the_linearized_input():
    """``train --fusion residual --init PAPER_WEIGHTS``: the branches and exposure models come from the paper
    network, the two heads start at zero (whatever their shapes), so the result is the linearized input."""
    from sitm_training.train import load_init

    torch.manual_seed(0)
    paper = SITMNet("compact").eval()
    net = SITMNet(residual_preset()).eval()
    fresh = load_init(net, paper, "paper.safetensors")
    assert fresh == ["mefm.coef_head.bias", "mefm.coef_head.weight", "mefm.mask_head.bias", "mefm.mask_head.weight"]
    ours, theirs = net.state_dict(), paper.state_dict()
    for k in ours:
        if k not in fresh:  # every other tensor, the MEFM's branches included, is the paper network's
            assert torch.equal(ours[k], theirs[k]), k
    frame = torch.rand(1, 3, 32, 48)
    with torch.no_grad():
        torch.testing.assert_close(predict_hdr(net, frame), ops.srgb_to_linear(frame), rtol=3e-7, atol=0)
    with pytest.raises(ValueError, match="do not fit"):
        load_init(SITMNet("compact"), SITMNet("fast"), "fast.safetensors")


def test_boost_all_brightens_the_whole_blend_by_the_gain():
    """``Preset.boost == "all"``: the gain ``2^(12 b)`` multiplies all three masks, so with the up/down gates shut
    and ``b = 0.25`` everywhere the HDR is ``2^3`` times the linearized input (hand value); with ``"down"`` the
    same gate changes nothing while ``M_down`` is shut; untrained, both are the linearized input."""
    torch.manual_seed(0)
    frame = torch.rand(1, 3, 32, 48)
    lin = ops.srgb_to_linear(frame)
    for boost, factor in (("all", 8.0), ("down", 1.0)):
        net = SITMNet(dataclasses.replace(residual_preset(), boost=boost)).eval()
        with torch.no_grad():
            torch.testing.assert_close(predict_hdr(net, frame), lin, rtol=3e-7, atol=0)
            net.mefm.mask_head.bias.copy_(torch.tensor([0.0, 0.0, 0.25]))
            out = net(*ops.pre(frame, stride=net.stride))
            hdr = predict_hdr(net, frame)
        assert torch.equal(out.masks[:, 0], torch.zeros_like(out.masks[:, 0]))
        torch.testing.assert_close(out.masks[:, 1], torch.full_like(out.masks[:, 1], factor))
        torch.testing.assert_close(hdr, lin * factor, rtol=1e-5, atol=0)


def test_boost_travels_in_the_preset_and_is_checked():
    from sitm_trt.model import Preset

    down, every = residual_preset(), dataclasses.replace(residual_preset(), boost="all")
    assert "boost" not in down.to_dict() and every.to_dict()["boost"] == "all"  # old files keep their meaning
    assert Preset.from_dict(down.to_dict()).boost == "down" and Preset.from_dict(every.to_dict()) == every
    with pytest.raises(ValueError, match="boost"):
        dataclasses.replace(get_preset("compact"), boost="all")  # the paper fusion has no gain
    with pytest.raises(ValueError, match="boost"):
        dataclasses.replace(residual_preset(), boost="sky")


def test_init_across_boost_kinds_shuts_the_gain():
    """``--boost all --init`` of ``"down"`` weights: everything is copied except the gain's gate channel, which
    starts shut (zero), so the starting point is the init's own result where its down gate was shut."""
    from sitm_training.train import load_init

    torch.manual_seed(0)
    old = SITMNet(residual_preset()).eval()
    with torch.no_grad():
        old.mefm.mask_head.weight.normal_(0, 0.1)
        old.mefm.mask_head.bias.copy_(torch.tensor([0.0, -1.0, 0.5]))  # down gate shut, gain gate open
    net = SITMNet(dataclasses.replace(residual_preset(), boost="all")).eval()
    assert load_init(net, old, "down.safetensors") == []
    w, b = net.mefm.mask_head.weight, net.mefm.mask_head.bias
    assert torch.equal(w[2], torch.zeros_like(w[2])) and b[2].item() == 0.0
    assert torch.equal(w[:2], old.mefm.mask_head.weight[:2]) and torch.equal(b[:2], old.mefm.mask_head.bias[:2])
