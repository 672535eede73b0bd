"""MEFM (Sec. 3.5): ExpandNet-style local, dilated and global branches over ``cat(I, I_up, I_down)``.

Outputs the masks ``(M_up, M_mid, M_down)`` of Eq. 7 and the curve coefficients ``a0..a3`` of Eq. 8; the
fusion and the curve themselves are :func:`sitm_trt.reference.fuse` / :func:`sitm_trt.reference.curve` (the post kernel).

* local: ``mefm_local`` 3x3 convolutions at full resolution;
* dilated: ``mefm_dilated`` 3x3 convolutions with dilation ``mefm_dilation`` at full resolution, then
  ``mefm_context`` residual ones (``x + LReLU(conv(x))``, dilations 4, 8, 16, 32, zero-initialised; 0 in the
  shipped presets) that widen what the masks see;
* global: the 9-channel thumbnail (``thumb_size`` square), stride-2 3x3 convolutions down to 4x4, a mean and a
  linear layer -> one vector ``g`` per image (``Preset.global_width`` entries: ``mefm_width`` unless
  ``mefm_global_width`` says more); with ``Preset.mefm_shoulder`` a zero-initialised linear layer adds the input's
  highlight histogram (:func:`shoulder_features`) to ``g`` before its activation.

Masks: ``softmax(conv3x3(LReLU(W_l local + W_d dilated + W_g g)))`` over the three channels (float32), so the
masks are positive and sum to 1 and ``I_fuse`` is a convex combination of the three images (the ``W_g g``
term is ExpandNet's concatenation of the broadcast global vector, written as a per-image bias).
Coefficients: ``a_i = softplus(linear(g))_i >= 0``, so ``H = a3 x^3 + a2 x^2 + a1 x + a0`` is non-negative and
non-decreasing for every ``x >= 0``, at initialisation and after training. They start near
:data:`COEF_INIT`, a convex expansion with ``H(1) ~ 1``.

With ``Preset.fusion == "residual"`` (docs/model.md, "The residual fusion") the heads change, the branches stay:

* masks: three gates ``m_up, m_down, b = clamp(conv3x3(...), 0, 1)``; ``m_up, m_down`` are scaled down where
  their sum exceeds 1, ``M_mid = 1 - m_up - m_down``, ``M_up = m_up`` and ``M_down = m_down 2^(BOOST_EV b)`` (a
  per-pixel gain on the exposure-down term, so masks need not sum to 1); with ``Preset.boost == "all"`` the gain
  multiplies all three masks instead (``M_k 2^(BOOST_EV b)``); the gate convolution starts at zero, so an
  untrained network has masks ``(0, 1, 0)`` exactly;
* ``g`` gains two analytic entries, the log2 exposure gains of I_up and I_down against I measured on the
  thumbnails (:func:`exposure_gains`), and ``coef = (gain_up + d0, gain_down + d1, d2, 0)`` with ``d`` a
  zero-initialised linear head of ``g``: the post kernel then computes
  ``M_mid L(I) + M_up 2^coef0 L(I_up) + M_down 2^coef1 L(I_down)``, ``L = srgb^-1(.)^exp(coef2)``;
* with ``Preset.mefm_clip_prior = r`` the gain becomes ``2^(min(BOOST_EV b + clamp(s, -4, 4) P, BOOST_EV))``,
  ``P = clip_prior_map(I, r)`` and ``s`` a zero-initialised 3x3 head of the same features: outside the gate's
  clamp, so the prior has a gradient where the gate is shut (:func:`clip_prior_map`).

With ``Preset.mefm_ring = r`` a zero-initialised 1x1 convolution adds the input's :func:`ring_maps` (how bright the
pixels around nearby clipped regions are) to the mask features before their activation, in either fusion.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .. import reference as ops
from .blocks import ConvAct, cast, f32, linear32, thumbnail
from .config import MEFM_CONTEXT_DILATIONS, SHOULDER_THRESHOLDS, Preset
from .state import StatSource

__all__ = ["MEFM", "COEF_INIT", "exposure_gains", "ring_maps", "shoulder_features"]

GATE_LEAK = 0.01  # training only: gradient slope of the residual gates outside [0, 1] (the value is unchanged)
BOOST_EV = 12.0  # the residual fusion's largest per-pixel gain on the exposure-down term, in EV
CURVE_ROW = 2  # the residual fusion: the coefficient head's row that is the curve correction k2 = log gamma
CLIP_PRIOR_THRESHOLD = 0.92  # Preset.mefm_clip_prior: max RGB ramps 0 -> 1 from here to 1 (baselines.rempel's)
CLIP_PRIOR_PASSES = 3  # box passes of the prior's blur: close to a Gaussian of sigma sqrt(r (r + 1))
CLIP_PRIOR_EV = 4.0  # the prior's largest gain (or loss) in EV: 16x (Rempel's boost of 4 is 2 EV)

RING_CLIP = 0.97  # Preset.mefm_ring: a pixel counts as clipped 0 -> 1 as max RGB goes from here to 0.99
RING_RAMP = 0.02
RING_NEAR = 4  # a ring pixel is at most this many pixels (Chebyshev) from a clipped one
RING_SCALES = (1, 4)  # the maps' window half-widths, in units of Preset.mefm_ring
RING_CHANNELS = 1 + 2 * len(RING_SCALES)  # the clipped mask, and a level and a density per scale
SHOULDER_RAMP = 0.02  # Preset.mefm_shoulder: a pixel counts 0 -> 1 as max RGB goes from t - 0.01 to t + 0.01
SHOULDER_FLOOR = 2.0 ** -10  # ... and a share below about 0.1 % of the frame reads as -10 (log2 of the floor)

COEF_INIT = (1e-3, 0.5, 0.25, 0.25)  # a0..a3 at initialisation (before the image-dependent part)


def _softplus_inverse(y: float) -> float:
    return y + math.log(-math.expm1(-y))


def exposure_gains(thumb: torch.Tensor) -> torch.Tensor:
    """``(N, 9, t, t)`` thumbnails ``cat(I, I_up, I_down)`` -> ``(N, 2)`` float32: ``log2`` of the gain that
    brings the linear light of I_up, and of I_down, to that of I (negative for I_up, positive for I_down).

    Measured where both images are informative: pixels where each of the two is below its highlights (max RGB
    < 0.9, the weight fading to 0 at 1.0) and above black (max RGB > 0.04, fading in from 0.02).
    ``log2((sum w lum(I) + eps) / (sum w lum(X) + eps))`` with ``lum`` the mean of the linear RGB, so a frame
    with no such pixel gives 0; clamped to [-8, 8] EV."""
    t = f32(thumb)
    lin = ops.srgb_to_linear(t)
    lum = [lin[:, 3 * k:3 * k + 3].mean(dim=1) for k in range(3)]
    mx = [t[:, 3 * k:3 * k + 3].amax(dim=1) for k in range(3)]

    def below_highlights(m: torch.Tensor) -> torch.Tensor:
        return ((1.0 - m) / 0.1).clamp(0.0, 1.0)

    def above_black(m: torch.Tensor) -> torch.Tensor:
        return ((m - 0.02) / 0.02).clamp(0.0, 1.0)

    eps = 1e-6 * t.shape[-1] * t.shape[-2]

    def gain(w: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        num = (w * lum[0]).sum(dim=(1, 2)) + eps
        den = (w * other).sum(dim=(1, 2)) + eps
        return torch.log2(num / den).clamp(-8.0, 8.0)

    valid = [below_highlights(m) * above_black(m) for m in mx]
    w_up, w_down = valid[0] * valid[1], valid[0] * valid[2]
    return torch.stack([gain(w_up, lum[1]), gain(w_down, lum[2])], dim=1)


def shoulder_features(thumb: torch.Tensor) -> torch.Tensor:
    """``(N, C >= 3, t, t)`` thumbnails whose first three channels are the input ``I`` -> ``(N, 6)`` float32 (the
    input of ``Preset.mefm_shoulder``): for each threshold ``t`` of :data:`SHOULDER_THRESHOLDS`,
    ``log2(mean(clamp((max_c I - t) / 0.02 + 0.5, 0, 1)) + 2^-10)``, the log share of the pixels whose max RGB is
    above ``t`` (a ramp 0.02 wide, so the value moves smoothly as a frame brightens). From 0.5 to 0.99: how many
    pixels sit near the clip point, and how the share falls off as the level rises (an S-curve's shoulder piles
    pixels up below 1; the exact sRGB curve clips them), in -10 to 0."""
    m = f32(thumb[:, 0:3]).amax(dim=1)
    shares = [((m - t) / SHOULDER_RAMP + 0.5).clamp(0.0, 1.0).mean(dim=(1, 2)) for t in SHOULDER_THRESHOLDS]
    return torch.log2(torch.stack(shares, dim=1) + SHOULDER_FLOOR)


def clip_prior_map(image: torch.Tensor, radius: int) -> torch.Tensor:
    """The clipped-region prior of ``Preset.mefm_clip_prior`` (float32 ``(N, 1, H, W)`` in [0, 1]): the mask of the
    nearly clipped pixels, ``clamp((max_c I - 0.92) / 0.08, 0, 1)`` (the threshold of ``baselines.rempel``),
    blurred by :data:`CLIP_PRIOR_PASSES` passes of a separable ``(2 radius + 1)``-pixel box that averages over the
    pixels inside the image only (so a region at the border is not darkened by padding). It is 1 inside a clipped
    region wider than the blur and falls off over about ``3 radius`` pixels around it: a smooth extent, like
    Rempel et al.'s brightness enhancement function (whose whole-frame normalisation we leave out, so that the map
    is local and tiles). Every operation is local; it reaches ``CLIP_PRIOR_PASSES * radius`` pixels."""
    m = ((f32(image).amax(dim=1, keepdim=True) - CLIP_PRIOR_THRESHOLD) / (1.0 - CLIP_PRIOR_THRESHOLD)).clamp(0.0, 1.0)
    k = 2 * radius + 1
    for _ in range(CLIP_PRIOR_PASSES):
        m = F.avg_pool2d(m, (1, k), stride=1, padding=(0, radius), count_include_pad=False)
        m = F.avg_pool2d(m, (k, 1), stride=1, padding=(radius, 0), count_include_pad=False)
    return m


def _box(x: torch.Tensor, radius: int) -> torch.Tensor:
    """The mean over the ``(2 radius + 1)^2`` window of the pixels inside the image (separable)."""
    k = 2 * radius + 1
    x = F.avg_pool2d(x, (1, k), stride=1, padding=(0, radius), count_include_pad=False)
    return F.avg_pool2d(x, (k, 1), stride=1, padding=(radius, 0), count_include_pad=False)


def ring_maps(image: torch.Tensor, radius: int) -> torch.Tensor:
    """The ring maps of ``Preset.mefm_ring`` (float32 ``(N, RING_CHANNELS, H, W)``, every value in [0, 1]).

    ``c = clamp((max_c I - 0.97) / 0.02, 0, 1)`` marks the clipped pixels; the ring weight
    ``n = (1 - c) maxpool_9x9(c)`` the pixels that are not clipped but lie within :data:`RING_NEAR` pixels of a
    clipped one. For each half-width ``s`` of ``radius`` x :data:`RING_SCALES` the maps are the ring's mean level
    ``box_s(n max_c I) / box_s(n)`` (0 where the window holds no ring) and its density ``box_s(n)``, ``box_s`` the
    mean over the ``(2 s + 1)^2`` window's pixels inside the image. Channels: ``c``, then level and density per
    scale. Inside a clipped region the level says how bright its surroundings are (a sky or window that only just
    clips is ringed by nearly clipped pixels, a lamp by dark ones), for the pixels whose window reaches the ring;
    the wide scale carries it into large regions. Every operation is local: it reaches
    ``RING_NEAR + max(RING_SCALES) radius`` pixels."""
    m = f32(image).amax(dim=1, keepdim=True)
    c = ((m - RING_CLIP) / RING_RAMP).clamp(0.0, 1.0)
    n = (1.0 - c) * F.max_pool2d(c, 2 * RING_NEAR + 1, stride=1, padding=RING_NEAR)
    maps = [c]
    for scale in RING_SCALES:
        density = _box(n, scale * radius)
        maps += [_box(n * m, scale * radius) / density.clamp_min(1e-6), density]
    return torch.cat(maps, dim=1)


class MEFM(nn.Module):
    def __init__(self, preset: Preset) -> None:
        super().__init__()
        p, s, w = preset, preset.negative_slope, preset.mefm_width
        self.thumb = p.thumb_size
        self.local = nn.Sequential(*[ConvAct(9 if i == 0 else w, w, s) for i in range(p.mefm_local)])
        self.dilated = nn.Sequential(
            *[ConvAct(9 if i == 0 else w, w, s, dilation=p.mefm_dilation) for i in range(p.mefm_dilated)]
        )
        # Preset.mefm_context: residual dilated convolutions after the dilated branch, zero at initialisation
        self.context = nn.ModuleList(
            ConvAct(w, w, s, dilation=MEFM_CONTEXT_DILATIONS[i]) for i in range(p.mefm_context)
        )
        with torch.no_grad():
            for layer in self.context:
                layer[0].weight.zero_()
                layer[0].bias.zero_()
        steps = int(math.log2(p.thumb_size // 4))
        gw = p.global_width
        self.glob = nn.Sequential(*[ConvAct(9 if i == 0 else gw, gw, s, stride=2) for i in range(steps)])
        self.glob_fc = nn.Linear(gw, gw)
        self.shoulder = p.mefm_shoulder
        if self.shoulder:  # Preset.mefm_shoulder: the highlight histogram into g's pre-activation, zero at the start
            self.shoulder_fc = nn.Linear(len(SHOULDER_THRESHOLDS), gw, bias=False)
            with torch.no_grad():
                self.shoulder_fc.weight.zero_()
        self.fuse_local = nn.Conv2d(w, w, 1)
        self.fuse_dilated = nn.Conv2d(w, w, 1, bias=False)
        self.fuse_global = nn.Linear(gw, w, bias=False)
        self.ring = p.mefm_ring
        if self.ring:  # Preset.mefm_ring: the ring maps into the mask features, zero at the start
            self.ring_fc = nn.Conv2d(RING_CHANNELS, w, 1)
            with torch.no_grad():
                self.ring_fc.weight.zero_()
                self.ring_fc.bias.zero_()
        self.act = nn.LeakyReLU(s)
        self.residual = p.fusion == "residual"
        self.boost_all = p.boost == "all"
        self.width = w
        self.global_width = gw
        self.slope = s
        self.clip_prior = p.mefm_clip_prior
        if self.residual:
            self.mask_head = nn.Conv2d(w, 3, 3, padding=1)
            self.coef_head = nn.Linear(gw, 3)
            heads = [self.mask_head, self.coef_head]
            if self.clip_prior:  # Preset.mefm_clip_prior: the prior's per-pixel strength, zero at initialisation
                self.prior_head = nn.Conv2d(w, 1, 3, padding=1)
                heads.append(self.prior_head)
            with torch.no_grad():
                for head in heads:
                    head.weight.zero_()
                    head.bias.zero_()
            return
        self.mask_head = nn.Conv2d(w, 3, 3, padding=1)
        self.coef_head = nn.Linear(gw, 4)
        with torch.no_grad():
            self.coef_head.weight.mul_(0.01)
            self.coef_head.bias.copy_(torch.tensor([_softplus_inverse(a) for a in COEF_INIT]))

    def forward(
        self,
        image: torch.Tensor,
        image_up: torch.Tensor,
        image_down: torch.Tensor,
        image_thumb: torch.Tensor | Callable[[], torch.Tensor] | None = None,
        stats: StatSource | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(N, 3, H, W)`` x3 -> masks ``(N, 3, H, W)`` (M_up, M_mid, M_down) and coef ``(N, 4)`` float32.

        ``image_thumb`` is ``thumbnail(image)`` (or a function returning it) when the caller already has it
        (the EAB's input). ``stats`` supplies the whole-frame ``g`` and ``coef`` (keys ``mefm_g``, ``coef``;
        default: computed from these images).
        """
        stats = StatSource() if stats is None else stats

        def g_from_thumbnails() -> torch.Tensor:
            thumb = image_thumb() if callable(image_thumb) else image_thumb
            if thumb is None:
                thumb = thumbnail(image, self.thumb)
            return self.global_vector(self.thumbnails(thumb, image_up, image_down))

        g = stats.mefm_g(g_from_thumbnails, image_up, image_down)
        stats.barrier()
        masks = self.masks(image, image_up, image_down, g)
        return masks, stats.coef(lambda: self.coefficients(g))

    def thumbnails(self, image_thumb: torch.Tensor, image_up: torch.Tensor, image_down: torch.Tensor) -> torch.Tensor:
        """The global branch's 9-channel input: ``cat(thumb(I), thumb(cat(I_up, I_down)))``."""
        return torch.cat([image_thumb, thumbnail(torch.cat([image_up, image_down], dim=1), self.thumb)], dim=1)

    def global_vector(self, thumb: torch.Tensor) -> torch.Tensor:
        """The global branch: ``(N, 9, t, t)`` thumbnails -> ``g`` ``(N, global_width)`` float32 (a whole-frame
        quantity; the residual fusion appends the two measured exposure gains)."""
        g = linear32(self.glob_fc, f32(self.glob(thumb)).mean(dim=(2, 3)))
        if self.shoulder:  # + W_s shoulder_features(I): zero at initialisation, an exact identity
            g = g + linear32(self.shoulder_fc, shoulder_features(thumb))
        g = F.leaky_relu(g, self.slope)
        if self.residual:  # the two measured exposure gains ride along as the last entries of g
            g = torch.cat([g, exposure_gains(thumb)], dim=1)
        return g

    def fix_curve(self, k2: float) -> None:
        """Residual fusion: make the curve correction ``k2`` the constant ``k2`` for every image (the coefficient
        head's row :data:`CURVE_ROW`: weights 0, bias ``k2``); everything else is unchanged."""
        if not self.residual:
            raise ValueError("fix_curve: only the residual fusion has the curve correction k2")
        with torch.no_grad():
            self.coef_head.weight[CURVE_ROW].zero_()
            self.coef_head.bias[CURVE_ROW].fill_(k2)

    def coefficients(self, g: torch.Tensor) -> torch.Tensor:
        """``(N, 4)`` float32 from ``g``: ``softplus(linear(g))`` (a0..a3 of Eq. 8), or for the residual fusion
        ``(gain_up + d0, gain_down + d1, d2, 0)`` with ``d = linear(g)`` (zero at initialisation)."""
        if not self.residual:
            return F.softplus(linear32(self.coef_head, g))
        w = self.global_width
        d = linear32(self.coef_head, g[:, :w])
        k2 = d[:, CURVE_ROW:CURVE_ROW + 1]
        return torch.cat([g[:, w:w + 2] + d[:, 0:2], k2, torch.zeros_like(k2)], dim=1)

    def masks(self, image: torch.Tensor, image_up: torch.Tensor, image_down: torch.Tensor,
              g: torch.Tensor) -> torch.Tensor:
        """The local and dilated branches plus the per-image bias ``W_g g`` -> the softmax masks. Every
        operation here is local (3x3 convolutions), so it runs on tiles given the whole frame's ``g``."""
        x = torch.cat([image, image_up, image_down], dim=1)
        d = self.dilated(x)
        for layer in self.context:  # x + LReLU(conv(x)): an identity while the convolution is zero
            d = d + layer(d)
        z = self.fuse_local(self.local(x)) + self.fuse_dilated(d)
        z = z + cast(linear32(self.fuse_global, g[:, :self.global_width]), z.dtype)[:, :, None, None]
        if self.ring:  # + W_r ring_maps(I): zero at initialisation, an exact identity
            z = z + self.ring_fc(cast(ring_maps(image, self.ring), z.dtype))
        h = self.act(z)
        logits = self.mask_head(h)
        if not self.residual:
            return cast(torch.softmax(f32(logits), dim=1), image.dtype)
        z = f32(logits)
        gates = z.clamp(0.0, 1.0)
        if self.training:  # a small gradient where a gate is shut, so a gate can open again (value unchanged)
            gates = gates + GATE_LEAK * (z - z.detach())
        up, down, boost = gates[:, 0:1], gates[:, 1:2], gates[:, 2:3]
        total = (up + down).clamp_min(1.0)
        up, down = up / total, down / total
        mid = (1.0 - up - down).clamp_min(0.0)
        # M_down carries a per-pixel gain of up to BOOST_EV: the exposure-down labels are only 1-2 EV below the
        # input, so the brightest highlights stay clipped in I_down too and need more than 2^k1 to come back
        log_gain = (BOOST_EV * math.log(2.0)) * boost  # ln of 2^(BOOST_EV b); ONNX opset 17 has no Exp2
        if self.clip_prior:  # + strength x blurred nearly-clipped mask, outside the gate's clamp (docs/model.md)
            strength = f32(self.prior_head(h)).clamp(-CLIP_PRIOR_EV, CLIP_PRIOR_EV)
            prior = math.log(2.0) * strength * clip_prior_map(image, self.clip_prior)
            log_gain = (log_gain + prior).clamp(max=BOOST_EV * math.log(2.0))  # at most 2^12, as without it
        gain = torch.exp(log_gain)
        if self.boost_all:  # the gain brightens the whole blend (docs/model.md, "The boost")
            return cast(torch.cat([up * gain, mid * gain, down * gain], dim=1), image.dtype)
        return cast(torch.cat([up, mid, down * gain], dim=1), image.dtype)
