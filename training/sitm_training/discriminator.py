"""Mask-aware U-Net discriminator (Sec. 3.6), after the U-Net GAN discriminator of Schonfeld et al. 2020.

A 5-level U-Net: the encoder halves the resolution four times and ends in a global head (one LSGAN score per
image); the decoder comes back to full resolution through skip connections and ends in a per-pixel head (one
LSGAN score per pixel). Spectral normalisation on every convolution and linear layer (as in U-Net GAN) is on
by default.

The mask-aware part is in the inputs and labels (:func:`mix`): the fake image is
``z = I_g * M_exp + I_gt * (1 - M_exp)`` with the per-pixel label ``b = 1 - M_exp`` (Eq. 13), so the
discriminator judges only the over/under-exposed regions of a generated image as fake.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

__all__ = ["DiscriminatorOutput", "MaskAwareDiscriminator", "mix"]


class DiscriminatorOutput(NamedTuple):
    global_score: torch.Tensor  # (N, 1)
    pixel_score: torch.Tensor  # (N, 1, H, W)


def mix(fake: torch.Tensor, real: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``z = fake * M + real * (1 - M)`` and its per-pixel label ``b = 1 - M`` (``mask``: ``(N, 1, H, W)``)."""
    if mask.dim() != 4 or mask.shape[1] != 1:
        raise ValueError(f"mix: mask must be (N, 1, H, W), got {tuple(mask.shape)}")
    return fake * mask + real * (1.0 - mask), 1.0 - mask


class MaskAwareDiscriminator(nn.Module):
    """``forward(x) -> DiscriminatorOutput(global (N, 1), pixel (N, 1, H, W))``; H, W multiples of 16.

    ``width`` is the first level's channels; level ``k`` has ``width * 2**k`` up to ``max_width``.
    """

    levels = 5

    def __init__(
        self,
        in_channels: int = 3,
        width: int = 32,
        max_width: int = 256,
        *,
        use_spectral_norm: bool = True,
        negative_slope: float = 0.2,
    ) -> None:
        super().__init__()
        sn = spectral_norm if use_spectral_norm else (lambda m: m)
        widths = [min(max_width, width * 2**k) for k in range(self.levels)]
        self.act = nn.LeakyReLU(negative_slope)
        self.stem = sn(nn.Conv2d(in_channels, widths[0], 3, padding=1))
        self.down = nn.ModuleList(
            sn(nn.Conv2d(widths[k - 1], widths[k], 4, stride=2, padding=1)) for k in range(1, self.levels)
        )
        self.enc = nn.ModuleList(sn(nn.Conv2d(w, w, 3, padding=1)) for w in widths)
        self.global_head = sn(nn.Linear(widths[-1], 1))
        self.up = nn.ModuleList(sn(nn.Conv2d(widths[k + 1], widths[k], 1)) for k in range(self.levels - 1))
        self.dec = nn.ModuleList(sn(nn.Conv2d(2 * widths[k], widths[k], 3, padding=1)) for k in range(self.levels - 1))
        self.pixel_head = sn(nn.Conv2d(widths[0], 1, 1))

    @property
    def stride(self) -> int:
        return 2 ** (self.levels - 1)

    def forward(self, x: torch.Tensor) -> DiscriminatorOutput:
        h, w = x.shape[-2:]
        if h % self.stride or w % self.stride:
            raise ValueError(f"MaskAwareDiscriminator: H, W must be multiples of {self.stride}, got {h}x{w}")
        skips = []
        y = self.act(self.enc[0](self.act(self.stem(x))))
        skips.append(y)
        for k in range(1, self.levels):
            y = self.act(self.enc[k](self.act(self.down[k - 1](y))))
            skips.append(y)
        global_score = self.global_head(y.mean(dim=(2, 3)))
        for k in reversed(range(self.levels - 1)):
            y = F.interpolate(self.up[k](y), scale_factor=2.0, mode="bilinear", align_corners=False)
            y = self.act(self.dec[k](torch.cat([y, skips[k]], dim=1)))
        return DiscriminatorOutput(global_score, self.pixel_head(y))
