"""The full SITM network: EAB (shared) + AUEM + ADEM (CMAB-linked) + MEFM.

Inputs are exactly the four tensors of :func:`sitm_trt.reference.pre`, outputs exactly the inputs of
:func:`sitm_trt.reference.post`, so ``HDR = ops.post(masks, image, image_up, image_down, coef)``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

import torch
from torch import nn

from .. import reference as ops
from .blocks import EAB, cast, thumbnail
from .config import Preset, get_preset
from .exposure import ExposureUNet, bottleneck_pair, decode_levels, encode_levels, guide_pyramid
from .mefm import MEFM
from .state import GlobalState, StatSource

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
    only AUEM/ADEM (stage-1 training, with :meth:`exposure_parameters`). :meth:`global_state` returns the
    whole-frame quantities and :meth:`forward_state` runs the network with given ones (tiles, video);
    :meth:`forward_with_state` returns the output and the quantities of one pass.
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
                f"(pad with sitm_trt.reference.pre(frame, stride=net.stride))"
            )
        for name, t, c in (("image_down", image_down, 3), ("image_up", image_up, 3), ("guide", guide, 2)):
            if tuple(t.shape) != (n, c, h, w):
                raise ValueError(f"SITMNet: {name} must be {(n, c, h, w)}, got {tuple(t.shape)}")

    def _run(
        self,
        image: torch.Tensor,
        image_down: torch.Tensor,
        image_up: torch.Tensor,
        guide: torch.Tensor,
        stats: StatSource,
        *,
        fusion: bool = True,
    ) -> SITMTrainOutput | tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
        """The whole network with its whole-frame quantities taken from (or recorded into) ``stats``."""
        self._check(image, image_down, image_up, guide)
        n, size = self.preset.levels, self.preset.thumb_size
        thumbs: list[torch.Tensor] = []

        def image_thumb() -> torch.Tensor:  # computed at most once, only when something needs it
            if not thumbs:
                thumbs.append(thumbnail(image, size))
            return thumbs[0]

        f_glo = cast(stats.f_glo(lambda: self.eab(image_thumb())), image.dtype)
        skips = encode_levels(self.auem, self.adem, image_up, image_down, guide_pyramid(guide, n), range(n), stats)
        x, first, codes = bottleneck_pair(self.auem, self.adem, skips[0][-1], skips[1][-1], f_glo, self.stride, stats)
        _, (pyr_up, pyr_down) = decode_levels(self.auem, self.adem, x, first, skips, codes, range(n - 2, -1, -1), stats)
        pyr_up, pyr_down = (first[0], *pyr_up), (first[1], *pyr_down)
        if not fusion:
            return pyr_up, pyr_down
        up, down = pyr_up[-1].clamp(0.0, 1.0), pyr_down[-1].clamp(0.0, 1.0)
        masks, coef = self.mefm(image, up, down, image_thumb, stats)
        return SITMTrainOutput(up, down, masks, coef, pyr_up, pyr_down)

    def forward_exposure(
        self, image: torch.Tensor, image_down: torch.Tensor, image_up: torch.Tensor, guide: torch.Tensor
    ) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
        """AUEM and ADEM only: the Eq. 11 pyramids ``(pyramid_up, pyramid_down)``, coarsest first."""
        return self._run(image, image_down, image_up, guide, StatSource(), fusion=False)  # type: ignore[return-value]

    def forward_train(
        self, image: torch.Tensor, image_down: torch.Tensor, image_up: torch.Tensor, guide: torch.Tensor,
        stats: StatSource | None = None,
    ) -> SITMTrainOutput:
        """``forward`` plus the Eq. 11 pyramids; ``stats`` (default: a fresh one) records the whole-frame quantities
        of the pass, with their graphs (the trainer's ``--camera-aux`` reads ``stats.values["mefm_g"]``)."""
        return self._run(image, image_down, image_up, guide,  # type: ignore[return-value]
                         StatSource() if stats is None else stats)

    def forward(
        self, image: torch.Tensor, image_down: torch.Tensor, image_up: torch.Tensor, guide: torch.Tensor
    ) -> SITMOutput:
        out = self.forward_train(image, image_down, image_up, guide)
        return SITMOutput(out.image_up, out.image_down, out.masks, out.coef)

    # -- the whole-frame state (Sec. 3.4-3.5 quantities; see state.py) --------------------------------------
    def global_state(
        self, image: torch.Tensor, image_down: torch.Tensor, image_up: torch.Tensor, guide: torch.Tensor
    ) -> GlobalState:
        """Every whole-frame quantity of these inputs (one forward pass): F_glo, the CMAB channel-attention
        gates, the codes S_j and decoder means mu_j of both exposure models, the MEFM ``g`` and ``coef``.

        ``forward_state(*inputs, state=global_state(*inputs))`` equals ``forward(*inputs)`` exactly.
        """
        stats = StatSource()
        self._run(image, image_down, image_up, guide, stats)
        return GlobalState.from_values(stats.values, self.preset.levels)

    def forward_with_state(
        self, image: torch.Tensor, image_down: torch.Tensor, image_up: torch.Tensor, guide: torch.Tensor
    ) -> tuple[SITMOutput, GlobalState]:
        """``(forward(*inputs), global_state(*inputs))`` from one forward pass: the output and the whole-frame
        quantities it used (``sitm_trt.runtime.tiling`` returns both for a frame that fits one tile)."""
        stats = StatSource()
        out = self._run(image, image_down, image_up, guide, stats)
        state = GlobalState.from_values(stats.values, self.preset.levels)
        return SITMOutput(out.image_up, out.image_down, out.masks, out.coef), state  # type: ignore[union-attr]

    def forward_state(
        self,
        image: torch.Tensor,
        image_down: torch.Tensor,
        image_up: torch.Tensor,
        guide: torch.Tensor,
        state: GlobalState,
        *,
        region: tuple[int, int, int, int] | None = None,
    ) -> SITMOutput:
        """The network with every whole-frame quantity taken from ``state`` instead of these inputs.

        With the state fixed, the network is a pure stack of local operations: run it on a crop of a frame
        (``region = (top, left, frame_height, frame_width)`` in padded pixels, multiples of :attr:`stride`,
        so the GFFB crops the whole frame's resize of F_glo) or with a state smoothed over video frames
        (:meth:`GlobalState.lerp`), or computed on another (e.g. downscaled) copy of the frame.
        """
        stats = StatSource(state.values(), strict=True, region=region)
        out = self._run(image, image_down, image_up, guide, stats)
        return SITMOutput(out.image_up, out.image_down, out.masks, out.coef)  # type: ignore[union-attr]

    # -- parts, for running the network in pieces (sitm_trt.runtime.tiling) ------------------------------------------
    def encode_levels(self, x_up, x_down, guides, levels: range, stats: StatSource | None = None):
        """See :func:`sitm_trt.model.exposure.encode_levels` (both encoders, levels ``levels``)."""
        return encode_levels(self.auem, self.adem, x_up, x_down, guides, levels, stats)

    def bottleneck(self, f_enc_up, f_enc_down, f_glo, stats: StatSource | None = None):
        """See :func:`sitm_trt.model.exposure.bottleneck_pair` (GFFB, codes, coarsest images)."""
        return bottleneck_pair(self.auem, self.adem, f_enc_up, f_enc_down, f_glo, self.stride, stats)

    def decode_levels(self, x, image, skips, codes, levels: range, stats: StatSource | None = None):
        """See :func:`sitm_trt.model.exposure.decode_levels` (both decoders, levels ``levels``)."""
        return decode_levels(self.auem, self.adem, x, image, skips, codes, levels, stats)

    def exposure_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters of EAB, AUEM and ADEM (stage 1: train the exposure models alone)."""
        for m in (self.eab, self.auem, self.adem):
            yield from m.parameters()

    def fusion_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters of the MEFM."""
        yield from self.mefm.parameters()


def predict_hdr(net: SITMNet, frame: torch.Tensor) -> torch.Tensor:
    """Reference pipeline of one frame: ``ops.pre`` (pad) -> ``net`` -> ``ops.post`` (fuse, curve, crop).

    ``frame`` is anything :func:`sitm_trt.reference.normalize_frame` accepts; returns float32 ``(N, 3, H, W)``.
    """
    x = ops.normalize_frame(frame)
    h, w = x.shape[-2:]
    pre = ops.pre(x, stride=net.stride)
    out = net(*pre)
    return ops.post(out.masks, pre.image, out.image_up, out.image_down, out.coef, h, w, fusion=net.preset.fusion)
