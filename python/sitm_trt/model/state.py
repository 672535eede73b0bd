"""The whole-frame ("global") quantities of the network, as one small per-image state.

A fully convolutional network gives the same pixels whether it runs on a whole frame or on overlapping
tiles. SITM is not one: several of its quantities are computed from the whole frame, and a naive tiled run
recomputes them per tile, which makes every tile adapt differently (seams). They are:

=========================  ====================================================  ==============================
field of GlobalState        what (paper)                                          depends on the whole frame via
=========================  ====================================================  ==============================
``f_glo``                   EAB output F_glo (Sec. 3.4), ``(N, d, t/4, t/4)``     the thumbnail of the frame
``gates_up/down[k]``        CBAM channel-attention gate of the CMAB of encoder    mean and max of the CMAB's
                            level k (Eq. 3), ``(N, C)`` float32; ``None`` where   dilated features over the frame
                            the level has no CMAB
``codes_up/down[j]``        S_j of Eq. 4-5 (coarsest decoder level first)         AAPool(F_glo), AAPool(F_enc)
``means_up/down[j]``        mu_j of Eq. 6, the channel means of decoder level j   the decoder feature, whole frame
``mefm_g``                  MEFM global vector g (gives the per-image mask bias)  thumbnail of cat(I, I_up, I_down)
``coef``                    a0..a3 of Eq. 8, ``(N, 4)`` float32                   g
=========================  ====================================================  ==============================

Every field has a fixed shape whatever the frame size, so a state can be computed on one frame (or a
downscaled proxy of it) and applied to another, smoothed over time (:meth:`GlobalState.lerp`), or assembled
from per-tile partial sums (``sitm_trt.runtime.tiling``). The GFFB's bilinear resize of F_glo to the bottleneck size
is not stored: it follows from ``f_glo`` and the frame size (``region=`` of ``SITMNet.forward_state``).

:class:`StatSource` is how the network code asks for these quantities: each request names a key; a known
value is returned as is, a missing one is computed from the tensor at hand (the whole-frame behaviour of
``forward``) and recorded. Subclasses change what "missing" does (``sitm_trt.runtime.tiling`` accumulates partial
sums over tile interiors instead).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import torch

from .blocks import spatial_mean32

__all__ = ["GlobalState", "StatSource", "state_keys"]

Region = tuple[int, int, int, int]  # top, left, frame height, frame width (padded pixels, stride multiples)


def state_keys(levels: int, cmab_levels: tuple[bool, ...]) -> list[str]:
    """The :class:`StatSource` keys of a network with ``levels`` U-Net levels, in dependency order."""
    keys = ["f_glo"]
    keys += [f"gate.{role}.{k}" for k in range(levels) if cmab_levels[k] for role in ("up", "down")]
    keys += ["codes.up", "codes.down"]
    keys += [f"mean.{role}.{j}" for j in range(levels - 1) for role in ("up", "down")]
    return keys + ["mefm_g", "coef"]


class GlobalState(NamedTuple):
    """Every whole-frame quantity of one batch of frames (see the module docstring); all per image."""

    f_glo: torch.Tensor
    gates_up: tuple[torch.Tensor | None, ...]
    gates_down: tuple[torch.Tensor | None, ...]
    codes_up: tuple[torch.Tensor, ...]
    codes_down: tuple[torch.Tensor, ...]
    means_up: tuple[torch.Tensor, ...]
    means_down: tuple[torch.Tensor, ...]
    mefm_g: torch.Tensor
    coef: torch.Tensor

    @classmethod
    def from_values(cls, values: Mapping[str, Any], levels: int) -> GlobalState:
        """Build from :class:`StatSource` values (keys as :func:`state_keys`)."""
        missing = [k for k in ("f_glo", "codes.up", "codes.down", "mefm_g", "coef") if k not in values]
        missing += [f"mean.{r}.{j}" for j in range(levels - 1) for r in ("up", "down") if f"mean.{r}.{j}" not in values]
        if missing:
            raise ValueError(f"GlobalState: values are missing {missing}")

        def per(prefix: str, role: str, n: int) -> tuple:
            return tuple(values.get(f"{prefix}.{role}.{i}") for i in range(n))

        return cls(
            f_glo=values["f_glo"],
            gates_up=per("gate", "up", levels),
            gates_down=per("gate", "down", levels),
            codes_up=tuple(values["codes.up"]),
            codes_down=tuple(values["codes.down"]),
            means_up=per("mean", "up", levels - 1),
            means_down=per("mean", "down", levels - 1),
            mefm_g=values["mefm_g"],
            coef=values["coef"],
        )

    def values(self) -> dict[str, Any]:
        """The :class:`StatSource` values of this state (the inverse of :meth:`from_values`)."""
        out: dict[str, Any] = {"f_glo": self.f_glo, "codes.up": list(self.codes_up),
                               "codes.down": list(self.codes_down), "mefm_g": self.mefm_g, "coef": self.coef}
        for role, gates, means in (("up", self.gates_up, self.means_up), ("down", self.gates_down, self.means_down)):
            out.update({f"gate.{role}.{k}": g for k, g in enumerate(gates) if g is not None})
            out.update({f"mean.{role}.{j}": m for j, m in enumerate(means)})
        return out

    def map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> GlobalState:
        """Apply ``fn`` to every tensor (``None`` entries stay ``None``)."""

        def f(x):
            if x is None:
                return None
            if isinstance(x, tuple):
                return tuple(f(t) for t in x)
            return fn(x)

        return GlobalState(*(f(x) for x in self))

    def to(self, device: torch.device | str | None = None) -> GlobalState:
        return self.map(lambda t: t.to(device))

    def lerp(self, other: GlobalState, weight: float) -> GlobalState:
        """``self + weight * (other - self)`` field by field: the step of an exponential moving average.

        Every field enters the network affinely or is a convex quantity (gates in (0, 1), coefficients
        >= 0), so an average of states is a valid state: use it to smooth the global state over time.
        """
        if not 0.0 <= weight <= 1.0:
            raise ValueError(f"GlobalState.lerp: weight must be in [0, 1], got {weight}")

        def f(a, b):
            if a is None or b is None:
                if (a is None) != (b is None):
                    raise ValueError("GlobalState.lerp: the states come from different presets")
                return None
            if isinstance(a, tuple):
                if len(a) != len(b):
                    raise ValueError("GlobalState.lerp: the states come from different presets")
                return tuple(f(x, y) for x, y in zip(a, b))
            if a.shape != b.shape:
                raise ValueError(f"GlobalState.lerp: shapes differ, {tuple(a.shape)} vs {tuple(b.shape)}")
            return torch.lerp(a, b.to(a.dtype), weight)

        return GlobalState(*(f(a, b) for a, b in zip(self, other)))


class StatSource:
    """Supplies the whole-frame quantities to the network code, by key (see :func:`state_keys`).

    ``known``: values to use as given (e.g. ``GlobalState.values()``); anything else is computed from the
    tensor the network has at hand, exactly as ``SITMNet.forward`` does, and recorded in :attr:`values`.
    ``strict``: raise instead of computing a missing value. ``region``: where the input sits in a larger
    frame, for the GFFB's resize of F_glo (see ``SITMNet.forward_state``).
    """

    def __init__(self, known: Mapping[str, Any] | None = None, *, strict: bool = False,
                 region: Region | None = None) -> None:
        self.values: dict[str, Any] = dict(known or {})
        self.strict = strict
        self.region = region

    def has(self, key: str) -> bool:
        return key in self.values

    def _get(self, key: str, compute: Callable[[], Any]) -> Any:
        if key in self.values:
            return self.values[key]
        if self.strict:
            raise KeyError(f"the global state has no {key!r}")
        value = self.values[key] = compute()
        return value

    # -- the requests the network makes ------------------------------------------------------------------
    def f_glo(self, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        return self._get("f_glo", compute)

    def gate(self, key: str, ca, feature: torch.Tensor) -> torch.Tensor:
        """The channel-attention gate ``(N, C)`` float32 of ``ca`` over ``feature`` (whole frame)."""
        return self._get(key, lambda: ca.gate(feature))

    def codes(self, key: str, remap_module, f_glo: torch.Tensor, f_enc: torch.Tensor) -> list[torch.Tensor]:
        """S_1.. of Eq. 4-5 (``remap_module`` is the model's ExposureRemap)."""
        return self._get(key, lambda: remap_module(f_glo, f_enc))

    def mean(self, key: str, feature: torch.Tensor) -> torch.Tensor:
        """mu_j of Eq. 6: the channel means ``(N, C)`` float32 of ``feature`` (whole frame)."""
        return self._get(key, lambda: spatial_mean32(feature))

    def mefm_g(self, compute: Callable[[], torch.Tensor], image_up: torch.Tensor,
               image_down: torch.Tensor) -> torch.Tensor:
        """The MEFM global vector; ``compute()`` makes it from the thumbnails (``image_up/down`` are the
        full-resolution exposure images, which a tiled source accumulates instead)."""
        return self._get("mefm_g", compute)

    def coef(self, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        return self._get("coef", compute)

    def glo_map(self, f_glo: torch.Tensor, size: tuple[int, int], stride: int) -> torch.Tensor:
        """F_glo bilinearly resized to the bottleneck of the whole frame, cropped to this input's part."""
        import torch.nn.functional as F

        if self.region is None:
            return F.interpolate(f_glo, size=size, mode="bilinear", align_corners=False)
        top, left, fh, fw = self.region
        if top % stride or left % stride or fh % stride or fw % stride:
            raise ValueError(f"region {self.region} must be in multiples of the stride {stride}")
        if top < 0 or left < 0 or top // stride + size[0] > fh // stride or left // stride + size[1] > fw // stride:
            raise ValueError(f"region {self.region}: an input of bottleneck size {tuple(size)} does not fit")
        full = F.interpolate(f_glo, size=(fh // stride, fw // stride), mode="bilinear", align_corners=False)
        return full[:, :, top // stride : top // stride + size[0], left // stride : left // stride + size[1]]

    def barrier(self) -> None:
        """Called after each group of requests that can be served together (both models, one level)."""
