"""AUEM and ADEM (Sec. 3.1-3.4, Eq. 11): two U-Nets of the same structure whose encoders run in lockstep.

Encoder level ``k`` (0 = full resolution): ``x_k = maxpool(F_{k-1}) * L_k`` (the LGC multiply, with ``L_k``
the guide map area-downsampled ``k`` times; at ``k = 0`` the multiply is done by the pre pass), then the
level's 3x3 convolutions, then the CMAB with the other model's same-level feature as reference. The
bottleneck feature ``F_enc`` goes through the GFFB with the EAB's ``F_glo``; a 1x1 conv gives the coarsest
image ``I_g1``. Each decoder level reduces channels (1x1), upsamples bilinearly, concatenates the skip,
convolves, is remapped by Eq. 6 with its code ``S_j``, and adds a 1x1-conv residual to the upsampled previous
image (Eq. 11).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import CMAB, GFFB, ExposureRemap, GateFn, conv_block, remap
from .config import Preset
from .state import StatSource

__all__ = [
    "ExposureUNet",
    "encode_pair",
    "encode_levels",
    "bottleneck_pair",
    "decode_levels",
    "guide_pyramid",
    "upsample2",
]


def upsample2(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)


def guide_pyramid(guide: torch.Tensor, levels: int) -> list[torch.Tensor]:
    """``(N, 2, H, W)`` guide -> its area-downsampled copies at every level, full resolution first."""
    out = [guide]
    for _ in range(levels - 1):
        out.append(F.avg_pool2d(out[-1], 2))
    return out


class ExposureUNet(nn.Module):
    """One exposure model (AUEM or ADEM; the structure is the same, only the guide and the data differ)."""

    def __init__(self, preset: Preset) -> None:
        super().__init__()
        p, s = preset, preset.negative_slope
        w, n = p.widths, p.levels
        self.levels = n
        self.enc = nn.ModuleList(conv_block(3 if k == 0 else w[k - 1], w[k], p.enc_convs[k], s) for k in range(n))
        self.has_cmab = tuple(p.cmab_levels)
        self.cmab = nn.ModuleList(
            CMAB(w[k], min(w[k], max(p.cmab_min_channels, w[k] // p.cmab_reduction)), p.ca_reduction, s)
            if p.cmab_levels[k]
            else nn.Identity()
            for k in range(n)
        )
        self.gffb = GFFB(w[-1], p.eab_dim, s)
        self.codes = ExposureRemap(p.eab_dim, w[-1], [w[k] for k in reversed(range(n - 1))], s)
        self.reduce = nn.ModuleList(nn.Conv2d(w[k + 1], w[k], 1) for k in range(n - 1))
        self.dec = nn.ModuleList(conv_block(2 * w[k], w[k], p.dec_convs[k], s) for k in range(n - 1))
        self.to_rgb = nn.ModuleList(nn.Conv2d(w[k], 3, 1) for k in range(n))

    def encode_level(self, k: int, x: torch.Tensor, guide_k: torch.Tensor, *, pooled: bool = False) -> torch.Tensor:
        """Encoder level ``k`` before its CMAB. ``x`` is the previous level's output (the LGC-multiplied
        image at ``k = 0``), or its 2x2 max-pool when ``pooled``; ``guide_k`` is this model's one-channel
        guide map at level ``k``."""
        if k > 0:
            x = (x if pooled else F.max_pool2d(x, 2)) * guide_k  # LGC (Sec. 3.2): multiply, then convolve
        return self.enc[k](x)

    def cross(self, k: int, cur: torch.Tensor, ref: torch.Tensor, gate: GateFn | None = None) -> torch.Tensor:
        """The CMAB of level ``k`` (identity on levels without one); ``gate`` as :meth:`CMAB.residual`."""
        return self.cmab[k](cur, ref, gate=gate) if self.has_cmab[k] else cur

    def up_block(self, k: int, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        """Decoder level ``k`` before the remap: 1x1 reduce, bilinear x2, concatenate the skip, convolve."""
        return self.dec[k](torch.cat([upsample2(self.reduce[k](x)), skip], dim=1))

    def rgb_step(self, k: int, x: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """Eq. 11: ``I_gj = g(F~_Dj) + up(I_g(j-1))``."""
        return upsample2(image) + self.to_rgb[k](x)

    def decode(self, skips: list[torch.Tensor], f_glo: torch.Tensor) -> list[torch.Tensor]:
        """Encoder outputs (finest first; the last is ``F_enc``) and ``F_glo`` -> the progressive images of
        Eq. 11, coarsest first (``levels`` images, the last at full resolution)."""
        n = self.levels
        f_enc = skips[-1]
        x = self.gffb(f_enc, f_glo)
        codes = self.codes(f_glo, f_enc)
        images = [self.to_rgb[n - 1](x)]
        for j, k in enumerate(reversed(range(n - 1))):
            x = remap(self.up_block(k, x, skips[k]), codes[j])
            images.append(self.rgb_step(k, x, images[-1]))
        return images


def _stats(stats: StatSource | None) -> StatSource:
    return StatSource() if stats is None else stats


def encode_levels(
    auem: ExposureUNet,
    adem: ExposureUNet,
    x_up: torch.Tensor,
    x_down: torch.Tensor,
    guides: list[torch.Tensor | None],
    levels: range,
    stats: StatSource | None = None,
) -> tuple[list[torch.Tensor | None], list[torch.Tensor | None]]:
    """Encoder levels ``levels`` (a contiguous ascending range) of both models in lockstep, through the CMABs.

    ``x_up``/``x_down``: the input of the first level: ``image_up``/``image_down`` at level 0, else the 2x2
    max-pool of the previous level's output (the LGC multiply by the guide is done here). ``guides[k]`` is
    the ``(N, 2, H_k, W_k)`` guide at level ``k`` (channel 0 ``L_down`` for ADEM, channel 1 ``L_up`` for
    AUEM). Each CMAB's reference is the other model's same-level feature before its own CMAB; its
    channel-attention gate comes from ``stats`` (key ``gate.up.k`` / ``gate.down.k``). Returns the outputs
    of every level as lists indexed by level (``None`` outside ``levels``).
    """
    stats = _stats(stats)
    outs_up: list[torch.Tensor | None] = [None] * auem.levels
    outs_down: list[torch.Tensor | None] = [None] * auem.levels
    xu, xd = x_up, x_down
    for i, k in enumerate(levels):
        pooled = i == 0
        fu = auem.encode_level(k, xu, guides[k][:, 1:2] if k else None, pooled=pooled)
        fd = adem.encode_level(k, xd, guides[k][:, 0:1] if k else None, pooled=pooled)
        if auem.has_cmab[k]:
            xu = auem.cross(k, fu, fd, lambda ca, d, k=k: stats.gate(f"gate.up.{k}", ca, d))
            xd = adem.cross(k, fd, fu, lambda ca, d, k=k: stats.gate(f"gate.down.{k}", ca, d))
            stats.barrier()
        else:
            xu, xd = fu, fd
        outs_up[k], outs_down[k] = xu, xd
    return outs_up, outs_down


def bottleneck_pair(
    auem: ExposureUNet,
    adem: ExposureUNet,
    f_enc_up: torch.Tensor,
    f_enc_down: torch.Tensor,
    f_glo: torch.Tensor,
    stride: int,
    stats: StatSource | None = None,
) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...], tuple[list[torch.Tensor], list[torch.Tensor]]]:
    """GFFB, the codes S_j (Eq. 4-5) and the coarsest Eq. 11 image of both models.

    Returns ``(x_up, x_down), (image_up, image_down), (codes_up, codes_down)``. The resized F_glo and the
    codes come from ``stats`` (``glo_map``, keys ``codes.up`` / ``codes.down``).
    """
    stats = _stats(stats)
    n = auem.levels
    glo = stats.glo_map(f_glo, tuple(f_enc_up.shape[-2:]), stride)
    xs, images, codes = [], [], []
    for role, model, f_enc in (("up", auem, f_enc_up), ("down", adem, f_enc_down)):
        x = model.gffb.fuse_map(f_enc, glo)
        codes.append(stats.codes(f"codes.{role}", model.codes, f_glo, f_enc))
        xs.append(x)
        images.append(model.to_rgb[n - 1](x))
    stats.barrier()
    return (xs[0], xs[1]), (images[0], images[1]), (codes[0], codes[1])


def decode_levels(
    auem: ExposureUNet,
    adem: ExposureUNet,
    x: tuple[torch.Tensor, torch.Tensor],
    image: tuple[torch.Tensor, torch.Tensor],
    skips: tuple[list[torch.Tensor | None], list[torch.Tensor | None]],
    codes: tuple[list[torch.Tensor], list[torch.Tensor]],
    levels: range,
    stats: StatSource | None = None,
) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[list[torch.Tensor], list[torch.Tensor]]]:
    """Decoder levels ``levels`` (descending, e.g. ``range(n - 2, -1, -1)``) of both models in lockstep.

    ``x``/``image``: each model's feature and Eq. 11 image at level ``levels[0] + 1``; ``skips``: encoder
    outputs indexed by level; ``codes``: S_j (coarsest decoder level first). The Eq. 6 means come from
    ``stats`` (keys ``mean.up.j`` / ``mean.down.j``, ``j = levels - 2 - k``). Returns the features at the
    last level and the Eq. 11 images of every decoded level (coarsest first).
    """
    stats = _stats(stats)
    n = auem.levels
    xu, xd = x
    iu, idn = image
    pyr_up: list[torch.Tensor] = []
    pyr_down: list[torch.Tensor] = []
    for k in levels:
        j = n - 2 - k
        xu = auem.up_block(k, xu, skips[0][k])
        xd = adem.up_block(k, xd, skips[1][k])
        mu, md = stats.mean(f"mean.up.{j}", xu), stats.mean(f"mean.down.{j}", xd)
        stats.barrier()
        xu, xd = remap(xu, codes[0][j], mu), remap(xd, codes[1][j], md)
        iu, idn = auem.rgb_step(k, xu, iu), adem.rgb_step(k, xd, idn)
        pyr_up.append(iu)
        pyr_down.append(idn)
    return (xu, xd), (pyr_up, pyr_down)


def encode_pair(
    auem: ExposureUNet, adem: ExposureUNet, image_up: torch.Tensor, image_down: torch.Tensor, guide: torch.Tensor
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Run both encoders level by level over the whole input, exchanging features through the CMABs.

    ``image_up = I * L_up`` and ``image_down = I * L_down`` (the level-0 LGC multiply); ``guide`` channel 0
    is ``L_down = max(R, G, B)`` (ADEM), channel 1 ``L_up = 1 - min(R, G, B)`` (AUEM). Each CMAB's reference
    is the other model's same-level feature before its own CMAB. Returns the skips of AUEM and ADEM.
    """
    guides = guide_pyramid(guide, auem.levels)
    skips_up, skips_down = encode_levels(auem, adem, image_up, image_down, guides, range(auem.levels))
    return skips_up, skips_down  # type: ignore[return-value]
