"""Training losses (Eq. 9-16), exposure masks and the mask-aware discriminator, against independent references."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sitm_trt import reference as ops
from sitm_trt.model import Preset, SITMNet
from sitm_training.discriminator import MaskAwareDiscriminator, mix
from sitm_training.losses import (
    VGG16_POOL_INDICES,
    GeneratorLoss,
    LossWeights,
    SITMLoss,
    VGG16Features,
    VGGPerceptual,
    hdr_loss,
    image_pyramid,
    highlight_ramp,
    pu21_hdr_loss,
    pu21_clipped_loss,
    align_scale_torch,
    lsgan_d_loss,
    lsgan_g_loss,
    mask_aware_d_loss,
    progressive_loss,
    ssim,
)
from sitm_training.masks import OVER_TAU, UNDER_TAU, exposure_mask, over_exposure_mask, under_exposure_mask

TINY = Preset(
    name="tiny",
    widths=(4, 4, 8, 8, 8),
    enc_convs=(1, 1, 1, 1, 1),
    dec_convs=(1, 1, 1, 1),
    eab_dim=8,
    eab_heads=2,
    mefm_width=4,
    mefm_local=1,
    mefm_dilated=1,
    thumb_size=64,
)


def rand(*shape, seed=0):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


def substitute_perceptual() -> VGGPerceptual:
    with pytest.warns(UserWarning, match="REPLACED"):
        return VGGPerceptual()


# --- masks --------------------------------------------------------------------------------------------------


def test_exposure_masks_match_the_formulas():
    img = rand(2, 3, 9, 11)
    img[0, :, 0, 0] = 1.0  # saturated
    img[0, :, 0, 1] = 0.0  # black
    x = img.double().numpy()
    over = np.clip((x.max(axis=1, keepdims=True) - 0.95) / 0.05, 0, 1)
    under = np.clip((0.12 - x.min(axis=1, keepdims=True)) / 0.12, 0, 1)
    assert (OVER_TAU, UNDER_TAU) == (0.95, 0.12)
    np.testing.assert_allclose(over_exposure_mask(img).double().numpy(), over, atol=1e-6)
    np.testing.assert_allclose(under_exposure_mask(img).double().numpy(), under, atol=1e-6)
    np.testing.assert_allclose(exposure_mask(img).double().numpy(), np.maximum(over, under), atol=1e-6)
    assert over_exposure_mask(img)[0, 0, 0, 0] == 1 and under_exposure_mask(img)[0, 0, 0, 1] == 1
    with pytest.raises(ValueError):
        exposure_mask(img, "sideways")


# --- discriminator and LSGAN (Eq. 13-14) --------------------------------------------------------------------


def test_mix_and_discriminator_outputs():
    fake, real, m = rand(2, 3, 32, 48, seed=1), rand(2, 3, 32, 48, seed=2), rand(2, 1, 32, 48, seed=3)
    z, b = mix(fake, real, m)
    torch.testing.assert_close(z, fake * m + real * (1 - m))
    torch.testing.assert_close(b, 1 - m)
    torch.manual_seed(0)
    disc = MaskAwareDiscriminator(width=4, max_width=16)
    out = disc(z)
    assert out.global_score.shape == (2, 1) and out.pixel_score.shape == (2, 1, 32, 48)
    (out.global_score.sum() + out.pixel_score.sum()).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in disc.parameters())
    # the per-pixel head responds where the image changed
    z2 = z.clone()
    z2[..., 24:, 40:] = 0.0
    with torch.no_grad():
        o1, o2 = disc.eval()(z), disc(z2)
    assert not torch.allclose(o1.pixel_score[..., 24:, 40:], o2.pixel_score[..., 24:, 40:])
    with pytest.raises(ValueError, match="multiples of 16"):
        disc(z[..., :40])


def test_lsgan_terms():
    r, f, b = torch.tensor([0.5, 1.5]), torch.tensor([0.2, -0.4]), torch.tensor([1.0, 0.0])
    assert lsgan_d_loss(r, f, b).item() == pytest.approx(0.5 * (0.25 + 0.25) / 2 + 0.5 * (0.64 + 0.16) / 2)
    assert lsgan_g_loss(f).item() == pytest.approx(0.5 * (0.64 + 1.96) / 2)


def test_mask_aware_d_loss_labels():
    """Per-pixel label 1 - M on z, 1 on real; global label: the real fraction of z."""
    torch.manual_seed(0)
    disc = MaskAwareDiscriminator(width=4, max_width=8, use_spectral_norm=False).eval()
    fake, real = rand(1, 3, 16, 16, seed=4), rand(1, 3, 16, 16, seed=5)
    m = torch.zeros(1, 1, 16, 16)
    m[..., :8, :] = 1.0
    with torch.no_grad():
        loss = mask_aware_d_loss(disc, fake, real, m)
        r, zf = disc(real), disc(fake * m + real * (1 - m))
    expected = (
        0.5 * ((r.pixel_score - 1) ** 2).mean() + 0.5 * ((zf.pixel_score - (1 - m)) ** 2).mean()
        + 0.5 * ((r.global_score - 1) ** 2).mean() + 0.5 * ((zf.global_score - 0.5) ** 2).mean()
    )
    torch.testing.assert_close(loss, expected)


# --- progressive loss (Eq. 9-12) and HDR loss (Eq. 15) ------------------------------------------------------


def test_image_pyramid_and_progressive_l1():
    gt = rand(2, 3, 32, 16, seed=6)
    pyr = image_pyramid(gt, 5)
    assert [p.shape[-2:] for p in pyr] == [(2, 1), (4, 2), (8, 4), (16, 8), (32, 16)]
    torch.testing.assert_close(pyr[0], gt.reshape(2, 3, 2, 16, 1, 16).mean(dim=(3, 5)))
    pred = tuple(p + 0.1 * rand(*p.shape, seed=10 + i) for i, p in enumerate(pyr))
    expected = sum((p - t).abs().mean() for p, t in zip(pred, pyr))
    torch.testing.assert_close(progressive_loss(pred, gt), expected)
    assert progressive_loss(pyr, gt).item() == 0.0

    class Const(torch.nn.Module):
        def forward(self, a, b):
            return torch.tensor(2.0)

    torch.testing.assert_close(progressive_loss(pred, gt, Const(), lambda_per=0.5), expected + 5 * 0.5 * 2.0)
    with pytest.raises(ValueError, match="prediction"):
        progressive_loss(pred[:4] + (pred[3],), gt)


def test_hdr_loss_is_mu_law_l1():
    h, g = rand(2, 3, 5, 4, seed=7) * 4, rand(2, 3, 5, 4, seed=8) * 4
    tau = lambda x: np.log1p(5000 * x) / np.log1p(5000)  # noqa: E731
    expected = np.abs(tau(h.double().numpy()) - tau(g.double().numpy())).mean()
    assert hdr_loss(h, g).item() == pytest.approx(expected, rel=1e-5)
    assert LossWeights() == LossWeights(lambda_per=0.5, lambda_gan=0.1, lambda_h=1.0, mu=5000.0, lambda_pu21=0.0,
                                        lambda_clip=0.0, align=False, clip_norm="l1", clip_ring=1.0)


def test_pu21_clipped_loss_averages_the_over_exposed_pixels_per_image():
    from sitm_training.metrics import Display, pu21_encode

    h = rand(3, 3, 4, 5, seed=31) ** 4 * 60
    g = rand(3, 3, 4, 5, seed=32) ** 4 * 60
    image = torch.full((3, 3, 4, 5), 0.5)
    image[0, 1, 0, :2] = 1.0  # two fully over-exposed pixels (mask 1)
    image[0, 0, 3, 4] = 0.975  # one half over-exposed (Eq. 14: (0.975 - 0.95) / 0.05)
    image[2, :, 2, 2] = 1.0  # one pixel; image 1 has none and does not count
    e = np.abs(pu21_encode(Display()(h.double().numpy())) - pu21_encode(Display()(g.double().numpy()))).mean(axis=1)
    first = (e[0, 0, 0] + e[0, 0, 1] + 0.5 * e[0, 3, 4]) / 2.5
    want = (first + e[2, 2, 2]) / 2 / 256
    assert pu21_clipped_loss(h, g, image).item() == pytest.approx(want, rel=1e-4)
    # no over-exposed pixel anywhere: zero, and still differentiable
    hh = h.clone().requires_grad_(True)
    loss = pu21_clipped_loss(hh, g, torch.full_like(image, 0.5))
    loss.backward()
    assert loss.item() == 0 and hh.grad.abs().sum().item() == 0
    # the squared form: per image the weighted mean over pixels of the RGB-mean squared error
    sq = ((pu21_encode(Display()(h.double().numpy())) - pu21_encode(Display()(g.double().numpy()))) ** 2).mean(axis=1)
    first = (sq[0, 0, 0] + sq[0, 0, 1] + 0.5 * sq[0, 3, 4]) / 2.5
    want_l2 = (first + sq[2, 2, 2]) / 2 / 256 ** 2
    assert pu21_clipped_loss(h, g, image, norm="l2").item() == pytest.approx(want_l2, rel=1e-4)
    with pytest.raises(ValueError, match="norm must be one of"):
        pu21_clipped_loss(h, g, image, norm="rms")


def test_l2_clipped_term_aims_at_the_mean_not_the_median():
    # one clipped pixel whose truth is 1 (two images in three) or 20 (one): summed over the three images, the L1
    # term is least at the median 1, the squared one at the mean in PU21 space; minimized over constant predictions
    from sitm_training.losses import _clipped_term, pu21_error

    image = torch.ones(3, 3, 1, 1)
    truth = torch.tensor([1.0, 1.0, 20.0]).view(3, 1, 1, 1).expand(3, 3, 1, 1)
    grid = torch.linspace(0.5, 25.0, 491)

    def best(norm):  # the constant prediction that minimizes the sum over the three outcomes
        losses = [sum(_clipped_term(pu21_error(torch.full((1, 3, 1, 1), float(x)), truth[i:i + 1]), image[:1], norm)
                      for i in range(3)) for x in grid]
        return float(grid[int(torch.argmin(torch.stack(losses)))])

    assert best("l1") == pytest.approx(1.0, abs=0.05)
    assert 2.0 < best("l2") < 20.0


def test_align_scale_torch_matches_the_evaluation_alignment():
    from sitm_training.metrics import align_scale

    g = rand(3, 3, 16, 16, seed=31) ** 2 * 4 + 0.01
    image = rand(3, 3, 16, 16, seed=32)
    image[2] *= 0.05  # no well-exposed pixels: every usable pixel decides
    noise = torch.exp(0.1 * torch.randn(3, 1, 16, 16, generator=torch.Generator().manual_seed(3)))
    h = g / torch.tensor([2.0, 0.5, 3.0]).view(3, 1, 1, 1) * noise
    s = align_scale_torch(h, g, image).flatten()
    for n in range(3):
        want = align_scale(h[n].permute(1, 2, 0).numpy(), g[n].permute(1, 2, 0).numpy(), image[n].permute(1, 2, 0).numpy())
        assert s[n].item() == pytest.approx(want, rel=2e-2)  # the medians' even-count rule differs (docstring)
    assert s.tolist() == pytest.approx([2.0, 0.5, 3.0], rel=0.1)
    assert align_scale_torch(torch.zeros_like(g), g, image).flatten().tolist() == [1.0, 1.0, 1.0]  # nothing usable


def test_aligned_pu21_terms_ignore_a_global_scale():
    torch.manual_seed(0)
    net = SITMNet(TINY)
    image = rand(1, 3, 32, 32, seed=11)
    out = net.forward_train(*ops.pre(image))
    gt = [rand(1, 3, 32, 32, seed=s) for s in (12, 13)]
    hdr = ops.post(out.masks, image, out.image_up, out.image_down, out.coef)
    crit = SITMLoss(None, LossWeights(lambda_h=1.0, mu=5000.0, lambda_pu21=3.0, align=True))
    a = crit.generator(out, image, *gt, hdr.detach()).hdr.item()  # the target is the prediction itself
    b = crit.generator(out, image, *gt, hdr.detach() * 4).hdr.item()  # ... four times brighter
    mu_a = hdr_loss(hdr, hdr.detach(), 5000.0).item()
    mu_b = hdr_loss(hdr, hdr.detach() * 4, 5000.0).item()
    assert a == pytest.approx(mu_a, abs=1e-5) and b == pytest.approx(mu_b, abs=1e-4)  # the PU21 term is ~0 in both


def test_pu21_hdr_loss_matches_the_evaluation_encoding():
    from sitm_training.metrics import Display, pu21_encode

    h = rand(2, 3, 6, 5, seed=9) ** 4 * 60  # spans below PU21's black (5e-5 here) to above the 4000-nit peak
    g = rand(2, 3, 6, 5, seed=10) ** 4 * 60
    disp = Display()
    expected = np.abs(pu21_encode(disp(h.double().numpy())) - pu21_encode(disp(g.double().numpy()))).mean() / 256
    assert pu21_hdr_loss(h, g).item() == pytest.approx(expected, rel=1e-4)
    # gradients flow inside the display's range and stop where the display clips
    x = torch.tensor([1e-6, 0.01, 1.0, 100.0], requires_grad=True)
    pu21_hdr_loss(x, torch.full_like(x, 0.5)).backward()
    assert x.grad[0] == 0 and x.grad[3] == 0 and x.grad[1] < 0 and x.grad[2] > 0


def test_generator_adds_the_pu21_terms_only_when_weighted():
    torch.manual_seed(0)
    net = SITMNet(TINY)
    image = rand(1, 3, 32, 32, seed=11)
    out = net.forward_train(*ops.pre(image))
    gt = [rand(1, 3, 32, 32, seed=s) for s in (12, 13)] + [rand(1, 3, 32, 32, seed=14) * 3]
    plain = SITMLoss(None).generator(out, image, *gt)
    hdr = ops.post(out.masks, image, out.image_up, out.image_down, out.coef)
    torch.testing.assert_close(plain.hdr, hdr_loss(hdr, gt[2]))
    l1, clipped = pu21_hdr_loss(hdr, gt[2]).item(), pu21_clipped_loss(hdr, gt[2], image).item()
    assert clipped > 0  # the random input has over-exposed pixels
    for w_pu21, w_clip in ((0.5, 0.0), (0.0, 0.7), (0.5, 0.7)):
        got = SITMLoss(None, LossWeights(lambda_pu21=w_pu21, lambda_clip=w_clip)).generator(out, image, *gt)
        assert got.hdr.item() == pytest.approx(plain.hdr.item() + w_pu21 * l1 + w_clip * clipped, rel=1e-5)
    l2 = pu21_clipped_loss(hdr, gt[2], image, norm="l2").item()
    got = SITMLoss(None, LossWeights(lambda_clip=0.7, clip_norm="l2")).generator(out, image, *gt)
    assert 0 < l2 < clipped and got.hdr.item() == pytest.approx(plain.hdr.item() + 0.7 * l2, rel=1e-5)


# --- perceptual loss (Eq. 10) -------------------------------------------------------------------------------


def _vgg_reference(state: dict[str, torch.Tensor], x: torch.Tensor) -> list[torch.Tensor]:
    """VGG-16 with torchvision's indices written out: 13 convs, pools after 2, 4, 7, 10, 13."""
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    y = (x - mean) / std
    conv_idx = [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]
    pool_after = {2: 4, 4: 9, 7: 16, 10: 23, 13: 30}
    outs = []
    for n, i in enumerate(conv_idx, start=1):
        y = F.relu(F.conv2d(y, state[f"features.{i}.weight"], state[f"features.{i}.bias"], padding=1))
        if n in pool_after:
            y = F.max_pool2d(y, 2)
            if pool_after[n] in VGG16_POOL_INDICES:
                outs.append(y)
    return outs


@pytest.mark.parametrize("fmt", ["pth", "safetensors"])
def test_vgg_loads_torchvision_layout_and_computes_pool3_to_5(tmp_path, fmt):
    torch.manual_seed(0)
    state = {k: v * 0.5 for k, v in VGG16Features().state_dict().items()}
    state["classifier.0.weight"] = torch.zeros(2, 2)  # ignored, as in torchvision's full checkpoint
    path = tmp_path / f"vgg16.{fmt}"
    if fmt == "pth":
        torch.save(state, path)
    else:
        from safetensors.torch import save_file

        save_file(state, str(path))
    perc = VGGPerceptual(path)
    assert perc.kind == "vgg16-pool3-5"
    a, b = rand(1, 3, 32, 32, seed=1), rand(1, 3, 32, 32, seed=2)
    fa, fb = _vgg_reference(state, a), _vgg_reference(state, b)
    assert [f.shape[-1] for f in fa] == [4, 2, 1]
    expected = sum((x - y).abs().mean() for x, y in zip(fa, fb))
    torch.testing.assert_close(perc(a, b), expected, rtol=1e-4, atol=1e-6)
    small = perc(a[..., :8, :8], b[..., :8, :8])  # upscaled to 32 so pool5 exists
    assert torch.isfinite(small)
    assert all(not p.requires_grad for p in perc.parameters())
    bad = tmp_path / "bad.pth"
    torch.save({"conv.weight": torch.zeros(1)}, bad)
    with pytest.raises(ValueError, match="features"):
        VGGPerceptual(bad)
    garbage = tmp_path / f"garbage.{fmt}"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="garbage.* cannot read as a state_dict"):
        VGGPerceptual(garbage)
    with pytest.raises(ValueError, match="missing.pth: no such file"):
        VGGPerceptual(tmp_path / "missing.pth")


def _ssim_reference(a: np.ndarray, b: np.ndarray, window: int = 7, sigma: float = 1.5) -> float:
    x = np.arange(window) - (window - 1) / 2
    g = np.exp(-(x**2) / (2 * sigma**2))
    g /= g.sum()
    p = window // 2

    def blur(img):  # separable Gaussian, edge padding, per channel
        out = np.pad(img, ((0, 0), (0, 0), (p, p), (p, p)), mode="edge")
        out = sum(g[i] * out[:, :, i : i + img.shape[2], :] for i in range(window))
        return sum(g[i] * out[:, :, :, i : i + img.shape[3]] for i in range(window))

    c1, c2 = 0.01**2, 0.03**2
    ma, mb = blur(a), blur(b)
    va, vb, cov = blur(a * a) - ma**2, blur(b * b) - mb**2, blur(a * b) - ma * mb
    return float((((2 * ma * mb + c1) * (2 * cov + c2)) / ((ma**2 + mb**2 + c1) * (va + vb + c2))).mean())


def test_perceptual_substitute_warns_and_is_one_minus_ssim():
    perc = substitute_perceptual()
    assert perc.kind == "ssim-substitute"
    a, b = rand(2, 3, 20, 13, seed=1), rand(2, 3, 20, 13, seed=2)
    expected = 1 - _ssim_reference(a.double().numpy(), b.double().numpy())
    assert perc(a, b).item() == pytest.approx(expected, rel=1e-4)
    assert perc(a, a).item() == pytest.approx(0.0, abs=1e-6)
    assert ssim(a, a.clone()).item() == pytest.approx(1.0, abs=1e-6)


# --- Eq. 16 on the network ----------------------------------------------------------------------------------


def test_total_loss_on_the_network_and_the_two_players():
    torch.manual_seed(0)
    net = SITMNet(TINY).train()
    disc = MaskAwareDiscriminator(width=4, max_width=8)
    loss = SITMLoss(substitute_perceptual())
    image = rand(2, 3, 32, 32, seed=1)
    image[:, :, :8] = 1.0  # a saturated band, so the over-exposure mask is not empty
    gt_up, gt_down, gt_hdr = rand(2, 3, 32, 32, seed=2), rand(2, 3, 32, 32, seed=3), rand(2, 3, 32, 32, seed=4)
    out = net.forward_train(*ops.pre(image))
    terms = loss.generator(out, image, gt_up, gt_down, gt_hdr, disc)
    assert isinstance(terms, GeneratorLoss)
    torch.testing.assert_close(terms.total, terms.prog + 0.1 * terms.gan + 1.0 * terms.hdr)
    hdr = ops.post(out.masks, image, out.image_up, out.image_down, out.coef)
    torch.testing.assert_close(terms.hdr, hdr_loss(hdr, gt_hdr))
    torch.testing.assert_close(terms.prog, loss.exposure(out.pyramid_up, out.pyramid_down, gt_up, gt_down))
    assert terms.gan > 0
    terms.total.backward()
    assert all(p.grad is not None for p in net.parameters())
    net.zero_grad()
    disc.zero_grad()
    d_loss = loss.discriminator(disc, out, image, gt_up, gt_down)
    d_loss.backward()
    assert all(p.grad is None for p in net.parameters())  # fakes are detached
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in disc.parameters())
    assert math.isfinite(d_loss.item())


def test_no_warning_with_weights(tmp_path):
    path = tmp_path / "vgg.pth"
    torch.save(VGG16Features().state_dict(), path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert VGGPerceptual(path).kind == "vgg16-pool3-5"


def test_highlight_ramp_follows_the_brightest_channel():
    # dark, mid, halfway down the 0.8 -> 0.9 ramp, clipped
    row = torch.tensor([0.0, 0.5, 0.85, 1.0]).view(1, 1, 1, 4).expand(1, 3, 1, 4).contiguous()
    assert highlight_ramp(row).shape == (1, 1, 1, 4)
    assert highlight_ramp(row).flatten().tolist() == pytest.approx([1.0, 1.0, 0.5, 0.0])
    px = torch.tensor([0.06, 0.5, 0.88]).view(1, 3, 1, 1)  # a colour pixel: its brightest channel decides
    assert highlight_ramp(px).item() == pytest.approx((0.9 - 0.88) / 0.1)


def test_input_down_label_is_the_input_moved_by_the_ev_below_the_highlights():
    """``--down-label input``: below 0.8 the label is the input moved by ``ev_down`` in linear light (checked
    against the NumPy sRGB curves of sitm_trt.media.io), from 0.9 up the data set's label, and a linear blend between."""
    from sitm_trt.media.io import srgb_eotf, srgb_oetf
    from sitm_training.losses import input_down_label

    rng = np.random.default_rng(5)
    ldr = torch.from_numpy(rng.uniform(0.0, 0.79, size=(2, 3, 4, 5)).astype(np.float32))
    ldr[:, :, 0, 0] = 0.0  # black stays black
    ldr[1, :, 3, :] = torch.tensor([0.95, 0.2, 0.3]).view(3, 1)  # a highlight row: max channel 0.95
    ldr[1, :, 2, 4] = torch.tensor([0.85, 0.1, 0.1])  # half way up the ramp
    down = torch.from_numpy(rng.uniform(0, 1, size=(2, 3, 4, 5)).astype(np.float32))
    ev = torch.tensor([-1.0, -2.5])
    got = input_down_label(ldr, down, ev).numpy()
    want = np.stack([srgb_oetf(srgb_eotf(ldr[i].numpy()) * 2.0 ** ev[i].item()) for i in range(2)])
    below = np.ones((2, 4, 5), bool)
    below[1, 3, :] = below[1, 2, 4] = False
    np.testing.assert_allclose(got.transpose(0, 2, 3, 1)[below], want.transpose(0, 2, 3, 1)[below], atol=2e-6)
    np.testing.assert_array_equal(got[1, :, 3, :], down[1, :, 3, :].numpy())
    np.testing.assert_allclose(got[1, :, 2, 4], 0.5 * want[1, :, 2, 4] + 0.5 * down[1, :, 2, 4].numpy(), atol=2e-6)
    assert got[0, :, 0, 0].tolist() == [0.0, 0.0, 0.0]


def _ring_reference(image: np.ndarray, bright: float = 0.85) -> np.ndarray:
    """rolloff_bias.py's region classes with OpenCV: per image each 8-connected region of pixels with max RGB >= 0.99
    whose ring (dilated by a 9x9 square, minus clipped pixels) has a mean max RGB >= ``bright``; regions and rings
    of at least 16 pixels."""
    import cv2

    out = np.zeros((image.shape[0], *image.shape[2:]), bool)
    for i, x in enumerate(image):
        mx = x.max(axis=0)
        n, labels = cv2.connectedComponents((mx >= 0.99).astype(np.uint8), connectivity=8)
        for r in range(1, n):
            m = labels == r
            ring = (cv2.dilate(m.astype(np.uint8), np.ones((9, 9), np.uint8)) > 0) & (mx < 0.99)
            if m.sum() >= 16 and ring.sum() >= 16 and mx[ring].mean() >= bright:
                out[i] |= m
    return out


def test_bright_ring_regions_match_the_probes_opencv_classes():
    import cv2

    from sitm_training.losses import bright_ring_regions

    rng = np.random.default_rng(5)
    field = rng.random((64, 96, 6)).astype(np.float32)
    field = cv2.GaussianBlur(field, (0, 0), 4).transpose(2, 0, 1)  # smooth blobs, some of which clip
    field = (field - field.min()) / (field.max() - field.min())
    image = np.clip(field[:, None] * np.array([1.7, 1.65, 1.6])[None, :, None, None]
                    + rng.normal(0, 0.04, (6, 3, 64, 96)), 0, 1).astype(np.float32)
    got = bright_ring_regions(torch.from_numpy(image))
    want = _ring_reference(image)
    assert got.shape == (6, 1, 64, 96) and got.dtype == torch.bool
    assert 0 < want.sum() < (image.max(axis=1) >= 0.99).sum()  # some clipped regions marked, not all
    assert np.array_equal(got[:, 0].numpy(), want)
    for bright in (0.6, 0.8):  # the threshold moves regions between the classes, as in the reference
        assert np.array_equal(bright_ring_regions(torch.from_numpy(image), bright)[:, 0].numpy(),
                              _ring_reference(image, bright))


def test_bright_ring_regions_by_hand():
    from sitm_training.losses import bright_ring_regions

    image = torch.full((1, 3, 40, 40), 0.9)
    image[..., 2:7, 2:7] = 1.0  # 25 px ringed by 0.9: marked
    image[..., 2:7, 30:35] = 1.0  # 25 px ringed by 0.3: not marked
    image[..., 0:11, 26:39] = torch.where(image[..., 0:11, 26:39] == 1.0, 1.0, 0.3)
    image[..., 20:23, 20:23] = 1.0  # 9 px, too small: never marked
    # three regions within 4 px of one ring pixel (the window read whole): A and B dark-ringed, C bright
    image[..., 30:40, 0:12] = 0.2
    image[..., 30:34, 0:4] = 1.0  # A: 16 px
    image[..., 30:34, 8:12] = 1.0  # B: 16 px
    image[..., 36:40, 4:8] = 1.0  # C: 16 px, but its ring is mostly the dark patch
    got = bright_ring_regions(image)[0, 0]
    assert got[2:7, 2:7].all() and not got[2:7, 30:35].any() and not got[20:23, 20:23].any()
    assert not got[30:40, 0:12].any()
    assert int(got.sum()) == 25
    assert np.array_equal(got.numpy(), _ring_reference(image.numpy())[0])
    # three bands whose every ring pixel lies within 4 px of all three: the middle band's label is neither its
    # windows' largest nor smallest, and its whole ring (24 px at 0.98) is read from the sorted windows
    bands = torch.full((1, 3, 12, 12), 0.98)
    bands[..., 0:4, :] = bands[..., 5:7, :] = bands[..., 8:12, :] = 1.0
    assert bright_ring_regions(bands)[0, 0].sum() == 12 * 10
    assert np.array_equal(bright_ring_regions(bands)[0, 0].numpy(), _ring_reference(bands.numpy())[0])
    # a region that fills the frame has no ring: unmarked
    assert not bright_ring_regions(torch.ones(1, 3, 8, 8)).any()
    with pytest.raises(ValueError):
        bright_ring_regions(torch.ones(3, 8, 8))


def test_clip_ring_scales_the_clipped_term_of_s_curve_samples_bright_regions_only():
    from sitm_training.losses import _clipped_term, ring_scale

    image = torch.full((2, 3, 24, 24), 0.9)
    image[..., 2:8, 2:8] = 1.0  # bright-ringed, 36 px
    image[..., 14:24, 14:24] = 0.3
    image[..., 16:22, 16:22] = 1.0  # dark-ringed, 36 px
    e = torch.zeros(2, 3, 24, 24)
    e[..., 2:8, 2:8] = 0.4
    e[..., 16:22, 16:22] = 0.1
    s_curve = torch.tensor([True, False])
    scale = ring_scale(image, s_curve, 0.25)
    assert scale[0, 0, 2:8, 2:8].eq(0.25).all() and scale[0].sum() == 24 * 24 - 36 * 0.75
    assert scale[1].eq(1).all()  # the other camera: untouched
    # by hand: each image divides by its 72 fully over-exposed pixels (and the 0.9 ring's none: tau 0.95)
    first = (36 * 0.25 * 0.4 + 36 * 0.1) / 72
    second = (36 * 0.4 + 36 * 0.1) / 72
    assert _clipped_term(e, image, "l1", scale).item() == pytest.approx((first + second) / 2, rel=1e-6)
    assert _clipped_term(e, image, "l1").item() == pytest.approx(second, rel=1e-6)


def test_generator_weighs_the_clipped_term_by_the_ring():
    torch.manual_seed(0)
    net = SITMNet(TINY)
    image = rand(2, 3, 32, 32, seed=11) * 0.2 + 0.75  # bright everywhere: clipped blobs with bright rings
    image[:, :, 4:12, 4:12] = 1.0
    out = net.forward_train(*ops.pre(image))
    gt = [rand(2, 3, 32, 32, seed=s) for s in (12, 13)] + [rand(2, 3, 32, 32, seed=14) * 3]
    hdr = ops.post(out.masks, image, out.image_up, out.image_down, out.coef)
    base = SITMLoss(None).generator(out, image, *gt).hdr.item()
    clipped = pu21_clipped_loss(hdr, gt[2], image).item()
    from sitm_training.losses import _clipped_term, pu21_error, ring_scale

    s_curve = torch.tensor([True, False])
    for ring in (0.0, 0.5):
        got = SITMLoss(None, LossWeights(lambda_clip=2.0, clip_ring=ring)).generator(out, image, *gt, s_curve=s_curve)
        want = _clipped_term(pu21_error(hdr, gt[2]), image, "l1", ring_scale(image, s_curve, ring)).item()
        assert want < clipped  # the S-curve sample's bright-ringed block lost weight
        assert got.hdr.item() == pytest.approx(base + 2.0 * want, rel=1e-5)
    same = SITMLoss(None, LossWeights(lambda_clip=2.0)).generator(out, image, *gt, s_curve=s_curve).hdr.item()
    assert same == pytest.approx(base + 2.0 * clipped, rel=1e-5)  # clip_ring 1: s_curve changes nothing
    with pytest.raises(ValueError, match="clip_ring needs s_curve"):
        SITMLoss(None, LossWeights(lambda_clip=2.0, clip_ring=0.0)).generator(out, image, *gt)
