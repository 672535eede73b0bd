"""The full SITM network: EAB (shared) + AUEM + ADEM (CMAB-linked) + MEFM.

Inputs are exactly the four tensors of :func:`sitm_trt.ops.pre`, outputs exactly the inputs of
:func:`sitm_trt.ops.post`, so ``HDR = ops.post(masks, image, image_up, image_down, coef)``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

import torch
from torch import nn

from .. import ops
from .blocks import EAB, thumbnail
from .config import Preset, get_preset
from .exposure import ExposureUNet, encode_pair
from .mefm import MEFM

__all__ = ["SITMNet", "SITMOutput", "SITMTrainOutput", "predict_hdr"]


class SITMOutput(NamedTuple):
    image_up: torch.Tensor  # (N, 3, H, W) predicted exposure-up image, clamped to [0, 1]
    image_down: torch.Tensor  # (N, 3, H, W) predicted exposure-down image, clamped to [0, 1]
    masks: torch.Tensor  # (N, 3, H, W) M_up, M_mid, M_down (softmax: positive, sum to 1)
    coef: torch.Tensor  # (N, 4) a0..a3 of Eq. 8 (float32, >= 0)


class SITMTrainOutput(NamedTuple):
    image_up: torch.Tensor
    image_down: torch.Tensor
    masks: torch.Tensor
    coef: torch.Tensor
    pyramid_up: tuple[torch.Tensor, ...]  # Eq. 11 images of AUEM, coarsest (H/stride) first, unclamped
    pyramid_down: tuple[torch.Tensor, ...]  # same for ADEM


class SITMNet(nn.Module):
    """The network between the pre and post kernels.

    ``forward(image, image_down, image_up, guide)`` takes the outputs of ``ops.pre(frame, stride=net.stride)``
    (heights and widths multiples of :attr:`stride`, any size) and returns :class:`SITMOutput`.
    :meth:`forward_train` also returns the progressive images of Eq. 11; :meth:`forward_exposure` runs
    only AUEM/ADEM (stage-1 training, with :meth:`exposure_parameters`).
    """

    def __init__(self, preset: Preset | str = "compact") -> None:
        super().__init__()
        self.preset = get_preset(preset)
        p = self.preset
        self.eab = EAB(
            p.eab_dim, p.eab_depth, p.eab_heads, p.eab_window, p.eab_mlp_ratio, p.thumb_size, p.negative_slope
        )
        self.auem = ExposureUNet(p)
        self.adem = ExposureUNet(p)
        self.mefm = MEFM(p)

    @property
    def stride(self) -> int:
        return self.preset.stride

    def _check(self, image: torch.Tensor, image_down: torch.Tensor, image_up: torch.Tensor, guide: torch.Tensor):
        if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
            return
        if image.dim() != 4 or image.shape[1] != 3:
            raise ValueError(f"SITMNet: image must be (N, 3, H, W), got {tuple(image.shape)}")
        n, _, h, w = image.shape
        if h % self.stride or w % self.stride:
            raise ValueError(
                f"SITMNet: height and width must be multiples of stride {self.stride}, got {h}x{w} "
                f"(pad with sitm_trt.ops.pre(frame, stride=net.stride))"
            )
        for name, t, c in (("image_down", image_down, 3), ("image_up", image_up, 3), ("guide", guide, 2)):
            if tuple(t.shape) != (n, c, h, w):
                raise ValueError(f"SITMNet: {name} must be {(n, c, h, w)}, got {tuple(t.shape)}")

    def _exposure(self, image, image_down, image_up, guide):
        self._check(image, image_down, image_up, guide)
        thumb = thumbnail(image, self.preset.thumb_size)
        f_glo = self.eab(thumb)
        skips_up, skips_down = encode_pair(self.auem, self.adem, image_up, image_down, guide)
        return thumb, tuple(self.auem.decode(skips_up, f_glo)), tuple(self.adem.decode(skips_down, f_glo))

    def forward_exposure(
        self, image: torch.Tensor, image_down: torch.Tensor, image_up: torch.Tensor, guide: torch.Tensor
    ) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
        """AUEM and ADEM only: the Eq. 11 pyramids ``(pyramid_up, pyramid_down)``, coarsest first."""
        _, pyr_up, pyr_down = self._exposure(image, image_down, image_up, guide)
        return pyr_up, pyr_down

    def forward_train(
        self, image: torch.Tensor, image_down: torch.Tensor, image_up: torch.Tensor, guide: torch.Tensor
    ) -> SITMTrainOutput:
        thumb, pyr_up, pyr_down = self._exposure(image, image_down, image_up, guide)
        up, down = pyr_up[-1].clamp(0.0, 1.0), pyr_down[-1].clamp(0.0, 1.0)
        masks, coef = self.mefm(image, up, down, thumb)
        return SITMTrainOutput(up, down, masks, coef, pyr_up, pyr_down)

    def forward(
        self, image: torch.Tensor, image_down: torch.Tensor, image_up: torch.Tensor, guide: torch.Tensor
    ) -> SITMOutput:
        out = self.forward_train(image, image_down, image_up, guide)
        return SITMOutput(out.image_up, out.image_down, out.masks, out.coef)

    def exposure_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters of EAB, AUEM and ADEM (stage 1: train the exposure models alone)."""
        for m in (self.eab, self.auem, self.adem):
            yield from m.parameters()

    def fusion_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters of the MEFM."""
        yield from self.mefm.parameters()


def predict_hdr(net: SITMNet, frame: torch.Tensor) -> torch.Tensor:
    """Reference pipeline of one frame: ``ops.pre`` (pad) -> ``net`` -> ``ops.post`` (fuse, curve, crop).

    ``frame`` is anything :func:`sitm_trt.ops.normalize_frame` accepts; returns float32 ``(N, 3, H, W)``.
    """
    x = ops.normalize_frame(frame)
    h, w = x.shape[-2:]
    pre = ops.pre(x, stride=net.stride)
    out = net(*pre)
    return ops.post(out.masks, pre.image, out.image_up, out.image_down, out.coef, h, w)
