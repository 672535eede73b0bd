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

from .blocks import CMAB, GFFB, ExposureRemap, conv_block, remap
from .config import Preset

__all__ = ["ExposureUNet", "encode_pair", "guide_pyramid", "upsample2"]


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

    def encode_level(self, k: int, x: torch.Tensor, guide_k: torch.Tensor) -> torch.Tensor:
        """Encoder level ``k`` before its CMAB. ``x`` is the previous level's output (the LGC-multiplied
        image at ``k = 0``); ``guide_k`` is this model's one-channel guide map at level ``k``."""
        if k > 0:
            x = F.max_pool2d(x, 2) * guide_k  # LGC (Sec. 3.2): multiply, then convolve
        return self.enc[k](x)

    def cross(self, k: int, cur: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        """The CMAB of level ``k`` (identity on levels without one)."""
        return self.cmab[k](cur, ref) if self.has_cmab[k] else cur

    def decode(self, skips: list[torch.Tensor], f_glo: torch.Tensor) -> list[torch.Tensor]:
        """Encoder outputs (finest first; the last is ``F_enc``) and ``F_glo`` -> the progressive images of
        Eq. 11, coarsest first (``levels`` images, the last at full resolution)."""
        n = self.levels
        f_enc = skips[-1]
        x = self.gffb(f_enc, f_glo)
        codes = self.codes(f_glo, f_enc)
        images = [self.to_rgb[n - 1](x)]
        for j, k in enumerate(reversed(range(n - 1))):
            x = upsample2(self.reduce[k](x))
            x = self.dec[k](torch.cat([x, skips[k]], dim=1))
            x = remap(x, codes[j])
            images.append(upsample2(images[-1]) + self.to_rgb[k](x))
        return images


def encode_pair(
    auem: ExposureUNet, adem: ExposureUNet, image_up: torch.Tensor, image_down: torch.Tensor, guide: torch.Tensor
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Run both encoders level by level, exchanging features through the CMABs.

    ``image_up = I * L_up`` and ``image_down = I * L_down`` (the level-0 LGC multiply); ``guide`` channel 0
    is ``L_down = max(R, G, B)`` (ADEM), channel 1 ``L_up = 1 - min(R, G, B)`` (AUEM). Each CMAB's reference
    is the other model's same-level feature before its own CMAB. Returns the skips of AUEM and ADEM.
    """
    guides = guide_pyramid(guide, auem.levels)
    xu, xd = image_up, image_down
    skips_up: list[torch.Tensor] = []
    skips_down: list[torch.Tensor] = []
    for k in range(auem.levels):
        fu = auem.encode_level(k, xu, guides[k][:, 1:2])
        fd = adem.encode_level(k, xd, guides[k][:, 0:1])
        xu, xd = auem.cross(k, fu, fd), adem.cross(k, fd, fu)
        skips_up.append(xu)
        skips_down.append(xd)
    return skips_up, skips_down
