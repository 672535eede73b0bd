"""Training losses of Sec. 3.7 (Eq. 9-16).

* progressive reconstruction loss (Eq. 9-12): at each of the 5 scales of AUEM/ADEM's Eq. 11 outputs,
  ``L1 + lambda_per * L_per`` against the area-downsampled ground truth;
* perceptual loss (Eq. 10): L1 between VGG-16 pool3, pool4 and pool5 features, with ImageNet weights loaded
  from a file the user names (:class:`VGGPerceptual`); without one, a documented substitute (``1 - SSIM``)
  that warns loudly and says so in :attr:`VGGPerceptual.kind`;
* mask-aware LSGAN terms (Eq. 13-14) with the discriminator of :mod:`sitm_training.discriminator`;
* the mu-law HDR loss (Eq. 15, ``mu = 5000``) on ``ops.post``'s output;
* optionally (``lambda_pu21 > 0``, our addition, off by default) an L1 term on the PU21-encoded HDR
  (:func:`pu21_hdr_loss`): Eq. 15's mu-law is linear below ``1/mu`` (2e-4 of the clip level), so it barely
  weighs the dark tones that PU21 (and a viewer) resolve down to 5e-5; and (``lambda_clip > 0``) the same L1
  in the input's over-exposed pixels only (:func:`pu21_clipped_loss`); with ``align`` both compare ``H`` after
  the evaluation's scale alignment (:func:`align_scale_torch`); the run card records the options that set them;
* the exposure-down label of ``--down-label input`` (:func:`input_down_label`);
* the total (Eq. 16) with ``lambda_per = 0.5``, ``lambda_gan = 0.1``, ``lambda_H = 1``.

Eq. 16 writes ``L_prog + lambda_gan (L_G + L_D) + lambda_H L_H`` as one sum; with two players it is two
objectives: the generator minimises ``L_prog + lambda_gan L_G + lambda_H L_H``
(:meth:`SITMLoss.generator`), the discriminator ``lambda_gan L_D`` (:meth:`SITMLoss.discriminator`).
"""

from __future__ import annotations

import logging
import math
import os
import warnings
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from sitm_trt import reference as ops

from .discriminator import MaskAwareDiscriminator, mix
from .masks import _check as check_image
from .masks import over_exposure_mask, under_exposure_mask

__all__ = [
    "DOWN_LABELS",
    "input_down_label",
    "srgb_decode",
    "srgb_encode",
    "VGG16_CFG",
    "VGG16_POOL_INDICES",
    "VGG16Features",
    "VGGPerceptual",
    "ssim",
    "image_pyramid",
    "l1_loss",
    "progressive_loss",
    "hdr_loss",
    "pu21_torch",
    "pu21_error",
    "pu21_hdr_loss",
    "pu21_clipped_loss",
    "align_scale_torch",
    "highlight_ramp",
    "lsgan_d_loss",
    "lsgan_g_loss",
    "mask_aware_d_loss",
    "mask_aware_g_loss",
    "LossWeights",
    "GeneratorLoss",
    "SITMLoss",
]

log = logging.getLogger(__name__)

# torchvision's vgg16 "features" (configuration D): numbers are 3x3 conv widths (each followed by a ReLU),
# "M" a 2x2 max-pool. Module indices therefore match torchvision's state_dict keys "features.<i>.weight".
VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")
VGG16_POOL_INDICES = (16, 23, 30)  # pool3, pool4, pool5 in torchvision's numbering
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class VGG16Features(nn.Module):
    """VGG-16 convolutional part, laid out as torchvision's ``vgg16().features`` (same state_dict keys).

    ``forward(x)`` takes RGB in [0, 1] (ImageNet normalisation is applied inside) and returns the outputs of
    pool3, pool4 and pool5.
    """

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = 3
        for v in VGG16_CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(cin, int(v), 3, padding=1), nn.ReLU(inplace=False)]
                cin = int(v)
        self.features = nn.Sequential(*layers)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        y = (x - self.mean) / self.std
        out = []
        for i, layer in enumerate(self.features):
            y = layer(y)
            if i in VGG16_POOL_INDICES:
                out.append(y)
        return out

    def load_torchvision_state(self, path: str | os.PathLike) -> None:
        """Load torchvision's ``vgg16`` weights (``IMAGENET1K_V1``: ``vgg16-397923af.pth``) or any file with the
        same keys: a ``.safetensors`` file or a plain ``torch.save``d state_dict (read with
        ``weights_only=True``, no arbitrary pickle). ``classifier.*`` keys are ignored; every ``features.*``
        key must be there with the right shape."""
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise ValueError(f"{path}: no such file (--vgg: torchvision's vgg16 ImageNet state_dict)")
        try:
            if path.endswith(".safetensors"):
                from safetensors.torch import load_file

                state = load_file(path)
            else:
                state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - torch.load's unpickling errors have many types
            raise ValueError(f"{path}: cannot read as a state_dict ({type(err).__name__}: {err})") from err
        if not isinstance(state, dict):
            raise ValueError(f"{path}: expected a state_dict (a mapping of tensors), got {type(state).__name__}")
        feats = {k: v for k, v in state.items() if k.startswith("features.")}
        if not feats:
            raise ValueError(f"{path}: no 'features.*' keys; expected torchvision's vgg16 state_dict layout")
        self.load_state_dict(feats, strict=True)


def _gaussian_window(size: int, sigma: float, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    x = torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return g[:, None] * g[None, :]


def ssim(a: torch.Tensor, b: torch.Tensor, window: int = 7, sigma: float = 1.5) -> torch.Tensor:
    """Mean SSIM (Wang et al. 2004) of images in [0, 1], Gaussian window, replicate padding (any size)."""
    c = a.shape[1]
    win = _gaussian_window(window, sigma, a.device, a.dtype).expand(c, 1, window, window)
    p = window // 2

    def blur(x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.pad(x, (p, p, p, p), mode="replicate"), win, groups=c)

    c1, c2 = 0.01**2, 0.03**2
    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return s.mean()


class VGGPerceptual(nn.Module):
    """Eq. 10: ``sum_{l=3..5} mean |phi_l(a) - phi_l(b)|`` with VGG-16 pool3..pool5 features.

    ``weights_path`` names torchvision's ImageNet VGG-16 weights (see :meth:`VGG16Features.load_torchvision_state`;
    e.g. ``vgg16-397923af.pth`` fetched once by the user on a machine with network access). Images smaller than
    ``min_size`` on a side are bilinearly upscaled (both alike) so that pool5 is at least 1x1.

    Without ``weights_path`` nothing can be downloaded here, so the loss is a **substitute**: ``1 - SSIM``
    (Gaussian window 7, sigma 1.5) on the same images, a structure term that needs no learned weights
    (Zhao et al. 2017 showed L1 + (MS-)SSIM to be a strong restoration loss). It warns (``UserWarning`` and a
    log line) and :attr:`kind` says which loss runs, for the run card.
    """

    KIND_VGG = "vgg16-pool3-5"
    KIND_SUBSTITUTE = "ssim-substitute"

    def __init__(self, weights_path: str | os.PathLike | None = None, *, min_size: int = 32) -> None:
        super().__init__()
        self.min_size = min_size
        if weights_path is None:
            self.vgg = None
            self.kind = self.KIND_SUBSTITUTE
            msg = (
                "VGGPerceptual: no VGG-16 weights given, so the perceptual loss of Eq. 10 is REPLACED by "
                "1 - SSIM (substitute, kind='ssim-substitute'). Pass weights_path= torchvision's vgg16 ImageNet "
                "state_dict (e.g. vgg16-397923af.pth) to train as in the paper."
            )
            warnings.warn(msg, UserWarning, stacklevel=2)  # once (a log line too printed it twice on the console)
        else:
            self.vgg = VGG16Features()
            self.vgg.load_torchvision_state(weights_path)
            self.vgg.requires_grad_(False)
            self.vgg.eval()
            self.kind = self.KIND_VGG
            log.info("VGGPerceptual: VGG-16 weights from %s", os.fspath(weights_path))

    def train(self, mode: bool = True) -> VGGPerceptual:
        super().train(mode)
        if self.vgg is not None:
            self.vgg.eval()  # frozen feature extractor
        return self

    def _upscale(self, x: torch.Tensor) -> torch.Tensor:
        short = min(x.shape[-2:])
        if short >= self.min_size:
            return x
        f = math.ceil(self.min_size / short)
        return F.interpolate(x, scale_factor=float(f), mode="bilinear", align_corners=False)

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.vgg is None:
            return 1.0 - ssim(pred, target)
        fp = self.vgg(self._upscale(pred))
        with torch.no_grad():
            ft = self.vgg(self._upscale(target))
        return sum((a - b).abs().mean() for a, b in zip(fp, ft))


def image_pyramid(image: torch.Tensor, levels: int) -> tuple[torch.Tensor, ...]:
    """Area-downsampled copies (2x2 means) of ``image`` at ``levels`` scales, coarsest first, matching the
    progressive outputs of Eq. 11 (the last one is ``image`` itself)."""
    out = [image]
    for _ in range(levels - 1):
        out.append(F.avg_pool2d(out[-1], 2))
    return tuple(reversed(out))


def l1_loss(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Eq. 9, averaged over elements."""
    return (a - b).abs().mean()


def progressive_loss(
    pyramid: tuple[torch.Tensor, ...] | list[torch.Tensor],
    target: torch.Tensor,
    perceptual: nn.Module | None = None,
    lambda_per: float = 0.5,
) -> torch.Tensor:
    """Eq. 12: ``sum_j L1(I_gj, T_j) + lambda_per * L_per(I_gj, T_j)`` over the Eq. 11 ``pyramid`` (coarsest
    first) and the area-downsampled ``target``; without ``perceptual`` only the L1 terms."""
    targets = image_pyramid(target, len(pyramid))
    total = target.new_zeros(())
    for p, t in zip(pyramid, targets):
        if p.shape != t.shape:
            raise ValueError(f"progressive_loss: prediction {tuple(p.shape)} vs target {tuple(t.shape)}")
        total = total + l1_loss(p, t)
        if perceptual is not None and lambda_per:
            total = total + lambda_per * perceptual(p, t)
    return total


def hdr_loss(hdr: torch.Tensor, target: torch.Tensor, mu: float = 5000.0) -> torch.Tensor:
    """Eq. 15: ``mean |tau(H) - tau(H_gt)|``, ``tau(H) = log(1 + mu H) / log(1 + mu)`` (``ops.mu_law``).

    Radiance is expected normalised so that the range of interest is [0, 1] (the data pipeline's job)."""
    return (ops.mu_law(hdr, mu) - ops.mu_law(target, mu)).abs().mean()


def lsgan_d_loss(real_score: torch.Tensor, fake_score: torch.Tensor, fake_label: torch.Tensor | float) -> torch.Tensor:
    """Eq. 13: ``1/2 mean (D(real) - 1)^2 + 1/2 mean (D(fake) - b)^2``."""
    return 0.5 * ((real_score - 1.0) ** 2).mean() + 0.5 * ((fake_score - fake_label) ** 2).mean()


def lsgan_g_loss(fake_score: torch.Tensor) -> torch.Tensor:
    """Eq. 14: ``1/2 mean (D(z) - 1)^2``."""
    return 0.5 * ((fake_score - 1.0) ** 2).mean()


def mask_aware_d_loss(
    disc: MaskAwareDiscriminator, fake: torch.Tensor, real: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """Discriminator side of Eq. 13 on both heads; ``fake`` is detached.

    Per-pixel head: real -> 1, ``z`` -> ``b = 1 - M_exp``. Global head (our choice; the paper states the
    per-pixel one): real -> 1, ``z`` -> the mean of ``b`` over the image (the fraction of real pixels), so two
    identical inputs never get different labels (``M_exp = 0`` makes ``z`` the real image).
    """
    z, b = mix(fake.detach(), real, mask)
    r, f = disc(real), disc(z)
    b_global = b.mean(dim=(1, 2, 3))[:, None]
    return lsgan_d_loss(r.pixel_score, f.pixel_score, b) + lsgan_d_loss(r.global_score, f.global_score, b_global)


def mask_aware_g_loss(
    disc: MaskAwareDiscriminator, fake: torch.Tensor, real: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """Generator side, Eq. 14, on both heads: ``1/2 mean (D(z) - 1)^2``."""
    z, _ = mix(fake, real, mask)
    f = disc(z)
    return lsgan_g_loss(f.pixel_score) + lsgan_g_loss(f.global_score)


def pu21_torch(luminance_cd_m2: torch.Tensor) -> torch.Tensor:
    """:func:`sitm_training.metrics.pu21_encode` in differentiable PyTorch (float32): absolute luminance in
    cd/m^2, clamped to PU21's [0.005, 10000] -> PU21 values (100 cd/m^2 -> about 256)."""
    from .metrics import PU21_BANDING_GLARE, PU21_L_MAX, PU21_L_MIN

    p1, p2, p3, p4, p5, p6, p7 = PU21_BANDING_GLARE
    yp = luminance_cd_m2.float().clamp(PU21_L_MIN, PU21_L_MAX) ** p4
    return (p7 * (((p1 + p2 * yp) / (1.0 + p3 * yp)) ** p5 - p6)).clamp_min(0.0)


def _pu21_display(x: torch.Tensor, white: float, peak: float) -> torch.Tensor:
    """PU21 of relative radiance shown on the evaluation's display (``white`` cd/m^2 at 1.0, clipped at ``peak``)."""
    return pu21_torch((x.float() * white).clamp_max(peak))


def pu21_error(hdr: torch.Tensor, target: torch.Tensor, white: float = 100.0, peak: float = 4000.0) -> torch.Tensor:
    """``(PU21(D(H)) - PU21(D(H_gt))) / 256`` per RGB value, ``D(x) = clip(white x, 0.005, peak)``: the evaluation's
    display model (:class:`sitm_training.metrics.Display`, 1.0 -> 100 cd/m^2 on a 4000-nit display) and PU21
    encoding, divided by PU21's peak. Every PU21 term below is a function of it, so :class:`SITMLoss` encodes
    once per step when both are on."""
    from .metrics import PU21_PEAK

    return (_pu21_display(hdr, white, peak) - _pu21_display(target, white, peak)) / PU21_PEAK


def _l1_term(e: torch.Tensor) -> torch.Tensor:
    return e.abs().mean()


CLIP_NORMS = ("l1", "l2")


def _clipped_term(e: torch.Tensor, image: torch.Tensor, norm: str = "l1",
                  scale: torch.Tensor | None = None) -> torch.Tensor:
    """Per image the ``over(I)``-weighted mean of ``|e|`` (``"l1"``) or of ``e^2`` (``"l2"``), each first averaged
    over RGB; then the mean over the images that have any over-exposed pixel.

    ``scale`` (``(N, 1, H, W)``, optional): each pixel's error counts ``scale`` times, but the per-image mean still
    divides by the sum of ``over(I)``, so a pixel scaled by 0 leaves the image's other clipped pixels their weight
    instead of handing its share to them (``--hdr-clip-ring``)."""
    if norm not in CLIP_NORMS:
        raise ValueError(f"clipped-term norm must be one of {CLIP_NORMS}, got {norm!r}")
    w = over_exposure_mask(image)
    per_w = w.sum(dim=(1, 2, 3))
    has = per_w > 0
    err = e.abs() if norm == "l1" else e.square()
    if scale is not None:
        w = w * scale
    per_image = (w * err.mean(dim=1, keepdim=True)).sum(dim=(1, 2, 3)) / per_w.clamp_min(1e-12)
    return (per_image * has).sum() / has.sum().clamp_min(1)


RING_CLIP = 0.99  # a pixel is clipped from this max RGB up (training/experiments/rolloff_bias.py's regions)
RING_WIDTH = 4  # a region's ring: its non-clipped pixels at most this many pixels away (Chebyshev distance)
RING_MIN_PIXELS = 16  # regions, and rings, of fewer pixels are left unclassed (rolloff_bias.py)
RING_BRIGHT = 0.85  # a region is bright-ringed when its ring's mean max RGB is at least this (LOG, nineteenth round)


def bright_ring_regions(image: torch.Tensor, bright: float = RING_BRIGHT) -> torch.Tensor:
    """``(N, 1, H, W)`` bool: the pixels of each 8-connected region of clipped pixels (max RGB >= :data:`RING_CLIP`)
    whose ring (its non-clipped pixels within :data:`RING_WIDTH` pixels) has a mean max RGB of at least ``bright``;
    regions or rings of fewer than :data:`RING_MIN_PIXELS` pixels are never marked. The region classes of
    ``training/experiments/rolloff_bias.py`` (cv2 there), on the device and without a gradient: a smooth region
    that only just clips (a sky, a window) is ringed by nearly clipped pixels, a lamp by darker ones.

    Regions are labelled by spreading the largest pixel index through each region (3x3 max-pooling, then pointer
    jumping: a pixel takes the label of the pixel its label names, which lies in the same region and holds at least
    that label) until nothing changes. A non-clipped pixel adds its max RGB once to every region in its
    ``(2 RING_WIDTH + 1)^2`` window: read from the window's largest and smallest labels where those are all it
    holds, and from its sorted labels in the few windows that reach two regions or more."""
    check_image(image)
    with torch.no_grad():
        mx = image.detach().float().amax(dim=1, keepdim=True)
        n, _, h, w = mx.shape
        clip = mx >= RING_CLIP
        dtype = torch.float32 if n * h * w < 2**24 else torch.float64  # pixel indices exactly representable
        index = torch.arange(1, n * h * w + 1, device=mx.device, dtype=dtype).view(n, 1, h, w)
        label = torch.where(clip, index, torch.zeros_like(index))
        for _ in range(h * w):  # a sweep spreads each label by at least a pixel; the jumps make it far faster
            grown = torch.where(clip, F.max_pool2d(label, 3, stride=1, padding=1), label)
            for _ in range(2):
                grown = torch.where(clip, grown.flatten()[(grown.flatten().long() - 1).clamp_min(0)].view_as(grown),
                                    grown)
            if torch.equal(grown, label):
                break
            label = grown
        k, r = 2 * RING_WIDTH + 1, RING_WIDTH
        top = F.max_pool2d(label, k, stride=1, padding=r)
        low = -F.max_pool2d(torch.where(clip, -label, torch.full_like(label, -float("inf"))), k, stride=1, padding=r)
        ring = ~clip & (top > 0)
        size = n * h * w + 1
        ring_sum = torch.zeros(size, device=mx.device, dtype=torch.float64)
        ring_n = torch.zeros(size, device=mx.device, dtype=torch.float64)

        def add(slots: torch.Tensor, values: torch.Tensor) -> None:
            ring_sum.index_add_(0, slots.long(), values.double())
            ring_n.index_add_(0, slots.long(), torch.ones_like(slots, dtype=torch.float64))

        add(top[ring], mx[ring])
        two = ring & (low < top)
        add(low[two], mx[two])
        many = two[:, 0]  # windows that reach two regions may reach more: read them whole for labels between
        if many.any():
            near = F.unfold(label, k, padding=r).view(n, k * k, h, w).permute(0, 2, 3, 1)[many]
            near = near.sort(dim=1).values
            inner = torch.ones_like(near, dtype=torch.bool)
            inner[:, 1:] = near[:, 1:] != near[:, :-1]  # each label once
            inner &= (near > low[:, 0][many][:, None]) & (near < top[:, 0][many][:, None])
            add(near[inner], mx[:, 0][many][:, None].expand_as(near)[inner])
        region_n = torch.zeros(size, device=mx.device, dtype=torch.float64)
        region_n.index_add_(0, label[clip].long(), torch.ones(int(clip.sum()), device=mx.device, dtype=torch.float64))
        marked = (ring_n >= RING_MIN_PIXELS) & (region_n >= RING_MIN_PIXELS) & (ring_sum >= bright * ring_n)
        marked[0] = False
        return marked[label.long()] & clip


def ring_scale(image: torch.Tensor, s_curve: torch.Tensor, weight: float) -> torch.Tensor:
    """``--hdr-clip-ring W``'s per-pixel scale of the clipped term: ``W`` on the :func:`bright_ring_regions` of
    the samples whose camera has a shoulder (``s_curve``, ``(N,)`` bool), 1 everywhere else."""
    marked = bright_ring_regions(image) & s_curve.view(-1, 1, 1, 1).to(image.device)
    return torch.where(marked, torch.full_like(image[:, :1], weight), torch.ones_like(image[:, :1]))


def pu21_hdr_loss(hdr: torch.Tensor, target: torch.Tensor, white: float = 100.0, peak: float = 4000.0) -> torch.Tensor:
    """``mean |PU21(D(H)) - PU21(D(H_gt))| / 256`` per RGB value (:func:`pu21_error`), about as large as Eq. 15's."""
    return _l1_term(pu21_error(hdr, target, white, peak))


def pu21_clipped_loss(hdr: torch.Tensor, target: torch.Tensor, image: torch.Tensor, white: float = 100.0,
                      peak: float = 4000.0, norm: str = "l1") -> torch.Tensor:
    """The PU21 L1 of :func:`pu21_hdr_loss` in the input's over-exposed pixels only: per image the mean over them,
    weighted by Eq. 14's mask ``over(I)`` (:func:`sitm_training.masks.over_exposure_mask`), then the mean over the
    images that have any (zero, with a gradient, when none has). Where the input clipped is where ITM has to
    restore what was lost, and the evaluation's clipped score averages per image in the same way; a term over all
    pixels gives those few pixels little weight.

    ``norm="l2"``: the weighted mean squared error instead (smaller than the L1 wherever ``|e| < 1``: on R6's
    clipped pixels of train samples 0.092 against 0.163 on average, so weigh it up). Over the training set an L1 term is least for the median of what the truth under a given
    clipped region could be, a squared one for its mean, which is what PSNR (a mean squared error) rewards; that
    spread is skewed upward (a lamp or the sun could be far brighter), so the median is darker than the mean
    (training/LOG.md, "Ninth round")."""
    return _clipped_term(pu21_error(hdr, target, white, peak), image, norm)


def align_scale_torch(hdr: torch.Tensor, target: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """Per image, the factor ``s`` (``(N, 1, 1, 1)``, no gradient) of :func:`sitm_training.metrics.align_scale`
    that puts ``hdr`` on the scale of ``target``: ``exp(median(log(Y_target / Y_hdr)))`` over the input's
    well-exposed pixels where both luminances are positive (every such pixel when fewer than 64; 1 when none).
    ``torch.median`` takes the lower of the two middle values, NumPy's their mean: they differ by half a step."""
    from .metrics import MIN_ALIGN_PIXELS, REC709, WELL_EXPOSED

    with torch.no_grad():  # vectorized over the batch: no host synchronization on a GPU
        w = torch.tensor(REC709, dtype=torch.float32, device=hdr.device).view(1, 3, 1, 1)
        yp = (hdr.float() * w).sum(1).flatten(1)
        yg = (target.float() * w).sum(1).flatten(1)
        m = image.float().amax(1).flatten(1)
        usable = (yp > 0) & (yg > 0) & torch.isfinite(yp) & torch.isfinite(yg)
        well = usable & (m >= WELL_EXPOSED[0]) & (m <= WELL_EXPOSED[1])
        sel = torch.where((well.sum(1) >= MIN_ALIGN_PIXELS)[:, None], well, usable)
        ratio = torch.where(sel, torch.log(yg.clamp_min(1e-30)) - torch.log(yp.clamp_min(1e-30)), float("nan"))
        med = torch.nanmedian(ratio, dim=1).values  # NaN where nothing is selected: s = 1 there
        return torch.where(torch.isnan(med), torch.ones_like(med), torch.exp(med)).view(-1, 1, 1, 1)


DOWN_LABELS = ("data", "input")
HIGHLIGHT_RAMP = (0.8, 0.9)  # highlight_ramp falls from 1 to 0 as max_c(I) goes 0.8 -> 0.9


# IEC 61966-2-1 decoding of ``v`` clamped to [0, 1] (torch; ``sitm_trt.media.io.srgb_eotf`` is the NumPy one): the
# library's, which the residual fusion's reference uses too.
srgb_decode = ops.srgb_to_linear


def srgb_encode(x: torch.Tensor) -> torch.Tensor:
    """IEC 61966-2-1 encoding of ``x`` clamped to [0, 1] (torch; ``sitm_trt.media.io.srgb_oetf`` is the NumPy one)."""
    x = x.clamp(0.0, 1.0)
    return torch.where(x <= 0.0031308, 12.92 * x, 1.055 * x.clamp_min(0.0031308) ** (1.0 / 2.4) - 0.055)


def highlight_ramp(image: torch.Tensor) -> torch.Tensor:
    """``clip((0.9 - max_c I) / 0.1, 0, 1)`` (``(N, 1, H, W)``): 1 below the highlights, 0 from 0.9 up."""
    lo, hi = HIGHLIGHT_RAMP
    return ((hi - image.amax(dim=1, keepdim=True)) / (hi - lo)).clamp(0.0, 1.0)


def input_down_label(ldr: torch.Tensor, down: torch.Tensor, ev_down: torch.Tensor) -> torch.Tensor:
    """The exposure-down label ``--down-label input`` trains the ADEM on: the data set's label in and around the
    highlights, and below them the input itself moved by the label's EV in linear light,
    ``w sRGB(sRGB^-1(I) 2^ev_down) + (1 - w) down`` with ``w`` = :func:`highlight_ramp` of the input.

    The data set's label is an 8-bit rendering through the simulated camera; for an input that is already
    under-exposed, its shadows are a few code values of read noise with the camera's white balance, and the
    ADEM learns to reproduce that noise, which the fusion then blends into the result (docs/training.md, third
    round: it helped JOD on under-exposed inputs, but less than the exposure-up image costs there).
    Below the highlights a darker exposure holds nothing the input does not, so there the label is the input.
    """
    scaled = srgb_decode(ldr) * torch.exp2(ev_down.to(ldr.dtype)).view(-1, 1, 1, 1)
    w = highlight_ramp(ldr)
    return w * srgb_encode(scaled) + (1.0 - w) * down


@dataclass(frozen=True)
class LossWeights:
    lambda_per: float = 0.5
    lambda_gan: float = 0.1
    lambda_h: float = 1.0
    mu: float = 5000.0
    lambda_pu21: float = 0.0  # our addition (pu21_hdr_loss); 0 = Eq. 16 as published
    lambda_clip: float = 0.0  # our addition (pu21_clipped_loss); 0 = Eq. 16 as published
    align: bool = False  # the PU21 terms see H scaled by align_scale_torch (the evaluation's alignment); Eq. 15 does not
    clip_norm: str = "l1"  # the lambda_clip term per image: "l1" (mean |e|) or "l2" (mean e^2); _clipped_term
    clip_ring: float = 1.0  # the lambda_clip term's weight on S-curve samples' bright-ringed regions (ring_scale)


class GeneratorLoss(NamedTuple):
    total: torch.Tensor  # L_prog + lambda_gan L_G + lambda_H L_H
    prog: torch.Tensor  # Eq. 12 summed over AUEM and ADEM
    gan: torch.Tensor  # Eq. 14 summed over AUEM and ADEM (0 without a discriminator)
    hdr: torch.Tensor  # Eq. 15 (+ the lambda_pu21 and lambda_clip terms when those weights are set)


class SITMLoss(nn.Module):
    """Eq. 16 for :class:`sitm_trt.model.SITMNet` outputs (``forward_train``).

    One discriminator judges both exposure images: ``I_up`` with the under-exposure mask of the input ``I``
    (AUEM recovers shadows), ``I_down`` with the over-exposure mask (ADEM recovers highlights).
    """

    def __init__(self, perceptual: nn.Module | None, weights: LossWeights = LossWeights()) -> None:
        super().__init__()
        self.perceptual = perceptual
        self.weights = weights

    def exposure(self, pyramid_up, pyramid_down, gt_up: torch.Tensor, gt_down: torch.Tensor) -> torch.Tensor:
        """``L_prog`` of both exposure models (also the whole stage-1 loss)."""
        lp = self.weights.lambda_per
        return progressive_loss(pyramid_up, gt_up, self.perceptual, lp) + progressive_loss(
            pyramid_down, gt_down, self.perceptual, lp
        )

    def generator(
        self,
        out,
        image: torch.Tensor,
        gt_up: torch.Tensor,
        gt_down: torch.Tensor,
        gt_hdr: torch.Tensor,
        disc: MaskAwareDiscriminator | None = None,
        fusion: str = "paper",
        s_curve: torch.Tensor | None = None,
    ) -> GeneratorLoss:
        """``out``: a ``SITMTrainOutput``; ``image`` the network's input ``I``; ground truths at its size;
        ``fusion`` the network's (``ops.post``); ``s_curve`` (``(N,)`` bool) which samples' cameras have a shoulder,
        needed when ``clip_ring`` is not 1."""
        w = self.weights
        if w.lambda_clip and w.clip_ring != 1.0 and s_curve is None:
            raise ValueError("SITMLoss: clip_ring needs s_curve, which samples' cameras have a shoulder")
        prog = self.exposure(out.pyramid_up, out.pyramid_down, gt_up, gt_down)
        hdr = ops.post(out.masks, image, out.image_up, out.image_down, out.coef, fusion=fusion)
        l_h = hdr_loss(hdr, gt_hdr, w.mu)
        if w.lambda_pu21 or w.lambda_clip:
            e = pu21_error(hdr * align_scale_torch(hdr, gt_hdr, image) if w.align else hdr, gt_hdr)
            if w.lambda_pu21:
                l_h = l_h + w.lambda_pu21 * _l1_term(e)
            if w.lambda_clip:
                scale = ring_scale(image, s_curve, w.clip_ring) if w.clip_ring != 1.0 else None
                l_h = l_h + w.lambda_clip * _clipped_term(e, image, w.clip_norm, scale)
        gan = prog.new_zeros(())
        if disc is not None:
            gan = mask_aware_g_loss(disc, out.image_up, gt_up, under_exposure_mask(image)) + mask_aware_g_loss(
                disc, out.image_down, gt_down, over_exposure_mask(image)
            )
        return GeneratorLoss(prog + w.lambda_gan * gan + w.lambda_h * l_h, prog, gan, l_h)

    def discriminator(
        self, disc: MaskAwareDiscriminator, out, image: torch.Tensor, gt_up: torch.Tensor, gt_down: torch.Tensor
    ) -> torch.Tensor:
        """``lambda_gan * L_D`` (Eq. 13) for both exposure images; generator outputs are detached."""
        d = mask_aware_d_loss(disc, out.image_up, gt_up, under_exposure_mask(image)) + mask_aware_d_loss(
            disc, out.image_down, gt_down, over_exposure_mask(image)
        )
        return self.weights.lambda_gan * d
