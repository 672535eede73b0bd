"""MEFM (Sec. 3.5): ExpandNet-style local, dilated and global branches over ``cat(I, I_up, I_down)``.

Outputs the masks ``(M_up, M_mid, M_down)`` of Eq. 7 and the curve coefficients ``a0..a3`` of Eq. 8; the
fusion and the curve themselves are :func:`sitm_trt.ops.fuse` / :func:`sitm_trt.ops.curve` (the post kernel).

* local: ``mefm_local`` 3x3 convolutions at full resolution;
* dilated: ``mefm_dilated`` 3x3 convolutions with dilation ``mefm_dilation`` at full resolution;
* global: the 9-channel thumbnail (``thumb_size`` square), stride-2 3x3 convolutions down to 4x4, a mean and a
  linear layer -> one vector ``g`` per image.

Masks: ``softmax(conv3x3(LReLU(W_l local + W_d dilated + W_g g)))`` over the three channels (float32), so the
masks are positive and sum to 1 and ``I_fuse`` is a convex combination of the three images (the ``W_g g``
term is ExpandNet's concatenation of the broadcast global vector, written as a per-image bias).
Coefficients: ``a_i = softplus(linear(g))_i >= 0``, so ``H = a3 x^3 + a2 x^2 + a1 x + a0`` is non-negative and
non-decreasing for every ``x >= 0``, at initialisation and after training. They start near
:data:`COEF_INIT`, a convex expansion with ``H(1) ~ 1``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import ConvAct, cast, f32, linear32, thumbnail
from .config import Preset
from .state import StatSource

__all__ = ["MEFM", "COEF_INIT"]

COEF_INIT = (1e-3, 0.5, 0.25, 0.25)  # a0..a3 at initialisation (before the image-dependent part)


def _softplus_inverse(y: float) -> float:
    return y + math.log(-math.expm1(-y))


class MEFM(nn.Module):
    def __init__(self, preset: Preset) -> None:
        super().__init__()
        p, s, w = preset, preset.negative_slope, preset.mefm_width
        self.thumb = p.thumb_size
        self.local = nn.Sequential(*[ConvAct(9 if i == 0 else w, w, s) for i in range(p.mefm_local)])
        self.dilated = nn.Sequential(
            *[ConvAct(9 if i == 0 else w, w, s, dilation=p.mefm_dilation) for i in range(p.mefm_dilated)]
        )
        steps = int(math.log2(p.thumb_size // 4))
        self.glob = nn.Sequential(*[ConvAct(9 if i == 0 else w, w, s, stride=2) for i in range(steps)])
        self.glob_fc = nn.Linear(w, w)
        self.fuse_local = nn.Conv2d(w, w, 1)
        self.fuse_dilated = nn.Conv2d(w, w, 1, bias=False)
        self.fuse_global = nn.Linear(w, w, bias=False)
        self.act = nn.LeakyReLU(s)
        self.mask_head = nn.Conv2d(w, 3, 3, padding=1)
        self.coef_head = nn.Linear(w, 4)
        self.slope = s
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
        """The global branch: ``(N, 9, t, t)`` thumbnails -> ``g`` ``(N, w)`` float32 (a whole-frame quantity)."""
        g = f32(self.glob(thumb)).mean(dim=(2, 3))
        return F.leaky_relu(linear32(self.glob_fc, g), self.slope)

    def coefficients(self, g: torch.Tensor) -> torch.Tensor:
        """``a0..a3`` ``(N, 4)`` float32 from ``g``: ``softplus(linear(g))``."""
        return F.softplus(linear32(self.coef_head, g))

    def masks(self, image: torch.Tensor, image_up: torch.Tensor, image_down: torch.Tensor,
              g: torch.Tensor) -> torch.Tensor:
        """The local and dilated branches plus the per-image bias ``W_g g`` -> the softmax masks. Every
        operation here is local (3x3 convolutions), so it runs on tiles given the whole frame's ``g``."""
        x = torch.cat([image, image_up, image_down], dim=1)
        z = self.fuse_local(self.local(x)) + self.fuse_dilated(self.dilated(x))
        z = z + cast(linear32(self.fuse_global, g), z.dtype)[:, :, None, None]
        logits = self.mask_head(self.act(z))
        return cast(torch.softmax(f32(logits), dim=1), image.dtype)
