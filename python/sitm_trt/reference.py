"""Differentiable PyTorch reference of the per-pixel equations around the network.

This module is the single place where the math of the C++/CUDA kernels (``csrc/``) is written in PyTorch.
Training uses it (it is differentiable) and the kernel tests compare the kernels against it.

Conventions shared with the kernels (see ``docs/kernels.md``):

* images are float ``(N, 3, H, W)`` in [0, 1]; LDR input is clamped to [0, 1] and NaN becomes 0;
* ``guide`` is ``(N, 2, H, W)``: channel 0 is ``L_down = max(R, G, B)`` (ADEM), channel 1 is
  ``L_up = 1 - min(R, G, B)`` (AUEM), Sec. 3.2 of the paper;
* ``masks`` is ``(N, 3, H, W)``: channels ``M_up, M_mid, M_down`` of Eq. 7;
* ``coef`` is ``(N, 4)`` (one curve per image) or ``(N, 3, 4)`` (one per image and channel), with
  ``coef[..., i] = a_i`` of Eq. 8 (for the residual fusion: the two log2 exposure gains and log gamma, see
  :func:`residual_fuse`);
* padding is reflect padding at the bottom and right edges up to a multiple of ``stride``; a pad wider
  than the image keeps reflecting (period ``2 * (size - 1)``), and a size of 1 repeats its only pixel.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

__all__ = [
    "FUSIONS",
    "srgb_to_linear",
    "residual_fuse",
    "PreOutputs",
    "normalize_frame",
    "guide_maps",
    "padded_size",
    "reflect_index",
    "pad_reflect",
    "pre",
    "fuse",
    "curve",
    "post",
    "mu_law",
]


class PreOutputs(NamedTuple):
    """The network inputs that the pre pass produces, all padded to a multiple of the stride."""

    image: torch.Tensor  # (N, 3, Hp, Wp)  I
    image_down: torch.Tensor  # (N, 3, Hp, Wp)  I * L_down  (ADEM's first LGC multiply)
    image_up: torch.Tensor  # (N, 3, Hp, Wp)  I * L_up    (AUEM's first LGC multiply)
    guide: torch.Tensor  # (N, 2, Hp, Wp)  L_down, L_up


def normalize_frame(frame: torch.Tensor) -> torch.Tensor:
    """Any accepted frame -> float32 ``(N, 3, H, W)`` in [0, 1] (NaN -> 0).

    Accepts float ``(N, 3, H, W)``, or uint8/uint16 ``(H, W, 3)`` / ``(N, H, W, 3)``.
    """
    if frame.dtype in (torch.uint8, torch.uint16):
        scale = 255.0 if frame.dtype == torch.uint8 else 65535.0
        x = frame if frame.dim() == 4 else frame.unsqueeze(0)
        # divided by a tensor on the frame's device: with a Python scalar, CUDA torch multiplies by its reciprocal
        # (1 ulp off true division for 126 of the 256 uint8 codes), while the kernels and the CPU divide. torch.full
        # fills it on the device (no host-to-device copy per frame, as torch.tensor would make).
        x = x.permute(0, 3, 1, 2).to(torch.float32) / torch.full((), scale, dtype=torch.float32, device=x.device)
    else:
        x = frame.to(torch.float32)
    return torch.nan_to_num(x, nan=0.0).clamp(0.0, 1.0)


def guide_maps(image: torch.Tensor) -> torch.Tensor:
    """``(N, 3, H, W)`` -> ``(N, 2, H, W)``: ``max(R, G, B)`` and ``1 - min(R, G, B)``."""
    l_down = image.amax(dim=1, keepdim=True)
    l_up = 1.0 - image.amin(dim=1, keepdim=True)
    return torch.cat([l_down, l_up], dim=1)


def padded_size(size: int, stride: int) -> int:
    """The smallest multiple of ``stride`` that is >= ``size``."""
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    return -(-size // stride) * stride


def reflect_index(i: torch.Tensor, size: int) -> torch.Tensor:
    """Reflect (without repeating the edge) an index into ``[0, size)``; periodic for wide pads."""
    if size == 1:
        return torch.zeros_like(i)
    period = 2 * (size - 1)
    j = torch.remainder(i, period)
    return torch.where(j >= size, period - j, j)


def pad_reflect(x: torch.Tensor, stride: int) -> torch.Tensor:
    """Reflect-pad the last two dims at the bottom/right up to multiples of ``stride``."""
    h, w = x.shape[-2:]
    hp, wp = padded_size(h, stride), padded_size(w, stride)
    if (hp, wp) == (h, w):
        return x
    rows = reflect_index(torch.arange(hp, device=x.device), h)
    cols = reflect_index(torch.arange(wp, device=x.device), w)
    return x.index_select(-2, rows).index_select(-1, cols)


def pre(frame: torch.Tensor, stride: int = 1, dtype: torch.dtype = torch.float32) -> PreOutputs:
    """Reference of the pre kernel: normalize, pad, guide maps and the first LGC multiply."""
    image = pad_reflect(normalize_frame(frame), stride)
    guide = guide_maps(image)
    outs = PreOutputs(image, image * guide[:, 0:1], image * guide[:, 1:2], guide)
    return PreOutputs(*(t.to(dtype) for t in outs))


def fuse(masks: torch.Tensor, image: torch.Tensor, image_up: torch.Tensor, image_down: torch.Tensor) -> torch.Tensor:
    """Eq. 7: ``I_fuse = M_up * I_up + M_mid * I + M_down * I_down`` (masks broadcast over RGB)."""
    return masks[:, 0:1] * image_up + masks[:, 1:2] * image + masks[:, 2:3] * image_down


def _coef_planes(coef: torch.Tensor, n: int) -> tuple[torch.Tensor, ...]:
    """``(N, 4)`` or ``(N, 3, 4)`` -> four tensors that broadcast against ``(N, 3, H, W)``."""
    if coef.dim() == 2 and coef.shape == (n, 4):
        c = coef[:, None, None, None, :]
    elif coef.dim() == 3 and coef.shape == (n, 3, 4):
        c = coef[:, :, None, None, :]
    else:
        raise ValueError(f"curve: coef must have shape ({n}, 4) or ({n}, 3, 4), got {tuple(coef.shape)}")
    return tuple(c[..., i] for i in range(4))


def curve(x: torch.Tensor, coef: torch.Tensor) -> torch.Tensor:
    """Eq. 8: ``H = a3 x^3 + a2 x^2 + a1 x + a0`` per image (or per image and channel)."""
    a0, a1, a2, a3 = _coef_planes(coef, x.shape[0])
    return ((a3 * x + a2) * x + a1) * x + a0


FUSIONS = ("paper", "residual")


def srgb_to_linear(v: torch.Tensor) -> torch.Tensor:
    """The inverse sRGB curve (IEC 61966-2-1) of ``clamp(v, 0, 1)``."""
    v = v.clamp(0.0, 1.0)
    return torch.where(v <= 0.04045, v / 12.92, ((v + 0.055) / 1.055) ** 2.4)


def residual_fuse(masks: torch.Tensor, image: torch.Tensor, image_up: torch.Tensor, image_down: torch.Tensor,
                  coef: torch.Tensor) -> torch.Tensor:
    """The residual fusion (docs/model.md): the three images decoded to linear light, ``L(v) =
    srgb^-1(v)^gamma`` with ``gamma = exp(k2)``, and merged with per-image exposure gains::

        HDR = M_mid L(I) + M_up 2^k0 L(I_up) + M_down 2^k1 L(I_down)

    ``coef`` holds ``(k0, k1, k2, k3)`` per image ``(N, 4)`` (or per image and channel ``(N, 3, 4)``); ``k3``
    is unused. Masks ``(0, 1, 0)`` with ``k2 = 0`` give exactly ``srgb^-1(I)``, the linearized input.
    """
    k0, k1, k2, _ = _coef_planes(coef, image.shape[0])
    gamma = torch.exp(k2)

    def power(lin: torch.Tensor) -> torch.Tensor:
        # l^gamma with a finite gradient at l = 0 (where the value is 0 whatever gamma is)
        return torch.where(lin > 0, lin.clamp_min(1e-30) ** gamma, torch.zeros_like(lin))

    def decode(v: torch.Tensor) -> torch.Tensor:
        lin = srgb_to_linear(v)
        # exactly l at gamma 1 (torch's pow with a tensor exponent is not exact there), as the kernel computes it;
        # a plain where would also zero d/dgamma there, and gamma starts at exactly 1 (k2 = 0): the curve would
        # never train. The added difference is 0 in value and carries d/dgamma = l^gamma ln l (the gradient in
        # l comes from l itself: d l^gamma / d l = 1 at gamma 1).
        if not gamma.requires_grad:
            return torch.where(gamma == 1.0, lin, power(lin))
        at_one = power(lin.detach())
        return torch.where(gamma == 1.0, lin + (at_one - at_one.detach()), power(lin))

    def term(mask: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        # like the kernel, an image whose mask is 0 contributes exactly 0 (even where its gain overflowed): there
        # the product is taken with the value made finite (and detached: d/dvalue = mask = 0), which is exactly 0
        # and keeps d/dmask = the value, so a shut M_up or M_down learns what opening it would bring
        finite = torch.nan_to_num(value.detach(), nan=0.0, posinf=1e30, neginf=-1e30).clamp(-1e30, 1e30)
        return torch.where(mask != 0, mask * value, mask * finite)

    return (term(masks[:, 1:2], decode(image)) + term(masks[:, 0:1], torch.exp2(k0) * decode(image_up))
            + term(masks[:, 2:3], torch.exp2(k1) * decode(image_down)))


def post(
    masks: torch.Tensor,
    image: torch.Tensor,
    image_up: torch.Tensor,
    image_down: torch.Tensor,
    coef: torch.Tensor,
    height: int | None = None,
    width: int | None = None,
    layout: str = "nchw",
    dtype: torch.dtype = torch.float32,
    fusion: str = "paper",
) -> torch.Tensor:
    """Reference of the post kernel: fuse (Eq. 7), curve (Eq. 8), crop to ``height x width``, cast, lay out.

    ``fusion="residual"``: :func:`residual_fuse` instead of Eq. 7-8 (``Preset.fusion`` says which)."""
    f32 = [t.to(torch.float32) for t in (masks, image, image_up, image_down)]
    if fusion == "paper":
        hdr = curve(fuse(*f32), coef.to(torch.float32))
    elif fusion == "residual":
        hdr = residual_fuse(*f32, coef.to(torch.float32))
    else:
        raise ValueError(f"post: fusion must be one of {FUSIONS}, got {fusion!r}")
    h = hdr.shape[-2] if height is None else height
    w = hdr.shape[-1] if width is None else width
    hdr = hdr[..., :h, :w]
    if layout == "nhwc":
        hdr = hdr.permute(0, 2, 3, 1)
    elif layout != "nchw":
        raise ValueError(f"post: layout must be 'nchw' or 'nhwc', got {layout!r}")
    return hdr.contiguous().to(dtype)


def mu_law(hdr: torch.Tensor, mu: float = 5000.0) -> torch.Tensor:
    """Eq. 15's tone mapper ``log(1 + mu H) / log(1 + mu)`` (negative radiance is clamped to 0)."""
    return torch.log1p(mu * hdr.clamp_min(0.0)) / torch.log1p(torch.tensor(mu, dtype=hdr.dtype, device=hdr.device))
