"""Typed presets of the SITM network, serialized as JSON next to the weights.

The paper (Sec. 3) gives the structure but no widths; every number here is our choice and
``docs/model.md`` says why. Three presets ship:

* ``paper``: the usual 5-level U-Net widths 32/64/128/256/512 for AUEM and ADEM, ExpandNet's 64 channels
  for MEFM, a 64-channel two-block Swin stage (one W-MSA, one SW-MSA) in the EAB;
* ``compact``: small enough to train on two CPU cores in a few hours (the shipped default weights);
* ``fast``: for 4K video: narrow and shallow at the fine levels, no CMAB at the two finest levels.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Preset", "PRESETS", "MEFM_CONTEXT_DILATIONS", "SHOULDER_THRESHOLDS", "get_preset", "preset_names"]

THUMB_SIZE = 256  # Sec. 3.4: the EAB input is the LDR image resized to 256 x 256
MAX_LEVELS = 12  # limits a preset read from a file must respect (Preset._check_limits): stride <= 2048
MAX_WIDTH = 4096
MAX_CONVS = 16
MEFM_CONTEXT_DILATIONS = (4, 8, 16, 32)  # Preset.mefm_context: the dilation of each residual context convolution
MAX_RING = 64  # Preset.mefm_ring: the largest window half-width (its wide scale reaches 4 x 64 + 4 pixels)
MAX_CLIP_PRIOR = 64  # Preset.mefm_clip_prior: the largest box half-width (three passes reach 3 x 64 pixels)
SHOULDER_THRESHOLDS = (0.5, 0.7, 0.85, 0.92, 0.97, 0.99)  # Preset.mefm_shoulder: max RGB levels whose shares g sees


@dataclass(frozen=True)
class Preset:
    """Every width and depth of one SITM network.

    Sequences run from the finest level (full resolution) to the coarsest (the bottleneck); the number of
    U-Net levels is ``len(widths)`` (5 in the paper) and the network stride is ``2 ** (levels - 1)``.
    """

    name: str
    widths: tuple[int, ...] = (32, 64, 128, 256, 512)
    """Channels of AUEM/ADEM at each level (the decoder level j uses the width of its skip)."""
    enc_convs: tuple[int, ...] = (2, 2, 2, 2, 2)
    """3x3 convolutions per encoder level; the first one of each level is the LGC (Sec. 3.2)."""
    dec_convs: tuple[int, ...] = (2, 2, 2, 2)
    """3x3 convolutions per decoder level, finest first (``levels - 1`` entries)."""
    cmab_levels: tuple[bool, ...] = (True, True, True, True, True)
    """Which encoder levels exchange features through a CMAB (Sec. 3.3)."""
    cmab_reduction: int = 4
    """Eq. 1: the 1x1 reductions map C channels to ``max(cmab_min_channels, C // cmab_reduction)``."""
    cmab_min_channels: int = 4
    ca_reduction: int = 4
    """Reduction of the CBAM channel-attention MLP inside the CMAB."""
    eab_dim: int = 64
    """Channels of the EAB stem and of its Swin blocks (F_glo)."""
    eab_depth: int = 2
    """Swin blocks in the EAB; odd ones (1, 3, ...) use the shifted window."""
    eab_heads: int = 4
    eab_window: int = 8
    eab_mlp_ratio: float = 2.0
    mefm_width: int = 64
    """Channels of each MEFM branch (local, dilated, global)."""
    mefm_local: int = 2
    """3x3 convolutions of the MEFM local branch."""
    mefm_dilated: int = 3
    """3x3 dilated convolutions of the MEFM dilated branch."""
    mefm_dilation: int = 2
    mefm_context: int = 0
    """Residual 3x3 convolutions after the MEFM dilated branch, with dilations ``MEFM_CONTEXT_DILATIONS`` (4, 8,
    16, 32), each ``x + LReLU(conv(x))`` and zero-initialised, so weights trained without them keep their function
    when they are added. They let the masks (the residual fusion's gain) see how far a clipped region extends:
    the two branches of ``compact`` see 7x7 pixels (docs/model.md, "Context"). Written into a preset's JSON only
    when not 0, so files without the key keep their meaning."""
    mefm_global_width: int = 0
    """Channels of the MEFM global branch (its convolutions, its linear layer and so the vector ``g``); 0 means
    ``mefm_width``. A wider global branch costs almost nothing (it runs on the thumbnail) and gives the whole-frame
    coefficients (the residual fusion's gains and curve exponent) more to tell one camera from another with
    (docs/model.md, "The global branch"). The extra channels start uncoupled (zero weights into ``g``'s first
    entries, the mask bias and the coefficient head), so ``--init`` of narrower weights keeps their function.
    Written into a preset's JSON only when not 0, so files without the key keep their meaning."""
    mefm_clip_prior: int = 0
    """Residual fusion only: the half-width ``r`` in pixels of a Rempel-style prior on the gain (0: none, in every
    shipped preset and every file without the key). The input's nearly clipped pixels (max RGB from 0.92 to 1),
    blurred by three passes of a ``(2r + 1)``-pixel box, times a per-pixel strength in EV that a zero-initialised
    3x3 head predicts, are added to the gain's exponent outside its gate, so ``--init`` of weights without it keeps
    their function (docs/model.md, "The clipped-region prior")."""
    mefm_shoulder: bool = False
    """Feed the MEFM global branch the input's highlight histogram: the log2 shares of the thumbnail's pixels whose
    max RGB lies above each of :data:`SHOULDER_THRESHOLDS` (0.5 to 0.99), through a zero-initialised linear layer
    into the pre-activation of ``g``, so the whole-frame coefficients and the mask bias can see how a camera's
    curve rolls into its clip point (an S-curve's shoulder) and ``--init`` of weights without it keeps their
    function (docs/model.md, "The shoulder features"). Written into a preset's JSON only when true, so files
    without the key keep their meaning."""
    mefm_ring: int = 0
    """The half-width ``r`` in pixels of the MEFM's ring maps (0: none, in every shipped preset and every file
    without the key): per pixel, how bright the non-clipped pixels around the nearby clipped ones are, averaged over
    windows of half-width ``r`` and ``4 r`` (:func:`sitm_trt.model.mefm.ring_maps`), added to the mask features
    through a zero-initialised 1x1 convolution, so ``--init`` of weights without them keeps their function. A
    clipped region ringed by nearly clipped pixels (a sky, a window) lies little above its clip level through an
    sRGB-like camera, a lamp ringed by dark pixels far above it (docs/model.md, "The ring maps")."""
    negative_slope: float = 0.2
    """LeakyReLU slope used everywhere."""
    thumb_size: int = THUMB_SIZE
    fusion: str = "paper"
    """How the post kernel makes HDR of the three images: ``"paper"`` (Eq. 7 masks, then the cubic of Eq. 8 on
    the fused sRGB values) or ``"residual"`` (the images merged in linear light with per-image exposure gains;
    an untrained network returns the linearized input; docs/model.md, "The residual fusion")."""
    boost: str = "down"
    """Residual fusion only: what the per-pixel gain ``2^(BOOST_EV b)`` multiplies: ``"down"`` the exposure-down
    term (``M_down``; the weights trained until 2026-12-06) or ``"all"`` the whole blend (all three masks), so that
    the gain can brighten a clipped pixel before the exposure-down gate opens (docs/model.md, "The boost").
    Written into a preset's JSON only when not ``"down"``, so files without the key keep their meaning."""
    description: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        self._check_limits()
        levels = len(self.widths)
        if levels < 2:
            raise ValueError(f"Preset {self.name!r}: need at least 2 levels, got widths={self.widths}")
        checks = [
            (len(self.enc_convs) == levels, f"enc_convs must have {levels} entries, got {self.enc_convs}"),
            (len(self.dec_convs) == levels - 1, f"dec_convs must have {levels - 1} entries, got {self.dec_convs}"),
            (len(self.cmab_levels) == levels, f"cmab_levels must have {levels} entries, got {self.cmab_levels}"),
            (all(w >= 1 for w in self.widths), f"widths must be positive, got {self.widths}"),
            (all(n >= 1 for n in self.enc_convs + self.dec_convs), "every level needs at least one convolution"),
            (self.cmab_reduction >= 1 and self.ca_reduction >= 1, "reductions must be >= 1"),
            (self.eab_dim % self.eab_heads == 0, f"eab_dim {self.eab_dim} not divisible by eab_heads {self.eab_heads}"),
            (self.eab_depth >= 1, f"eab_depth must be >= 1, got {self.eab_depth}"),
            (
                self.thumb_size >= 64 and self.thumb_size & (self.thumb_size - 1) == 0,
                f"thumb_size must be a power of two >= 64, got {self.thumb_size}",
            ),
            (
                (self.thumb_size // 4) % self.eab_window == 0,
                f"the EAB token grid {self.thumb_size // 4} must be a multiple of eab_window {self.eab_window}",
            ),
            (self.mefm_width >= 1 and self.mefm_local >= 1 and self.mefm_dilated >= 1, "MEFM sizes must be >= 1"),
            (self.fusion in ("paper", "residual"), f"fusion must be 'paper' or 'residual', got {self.fusion!r}"),
            (self.boost in ("down", "all"), f"boost must be 'down' or 'all', got {self.boost!r}"),
            (not self.mefm_clip_prior or self.fusion == "residual",
             f"mefm_clip_prior needs the residual fusion (it scales its gain), got fusion {self.fusion!r}"),
            (self.boost == "down" or self.fusion == "residual", "boost='all' needs the residual fusion"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(f"Preset {self.name!r}: {msg}")

    def _check_limits(self) -> None:
        """Types and sane bounds of every field, checked before any size is computed from them: a preset read
        from a file must not ask for a 2 ** 31 network stride or terabyte-sized layers."""

        def bad(msg: str) -> None:
            raise ValueError(f"Preset {self.name!r}: {msg}")

        def ints(name: str, lo: int, hi: int) -> None:
            v = getattr(self, name)
            if not isinstance(v, tuple) or not all(isinstance(x, int) and not isinstance(x, bool) for x in v):
                bad(f"{name} must be a list of integers, got {v!r}")
            if len(v) > MAX_LEVELS:
                bad(f"{name} has {len(v)} entries; at most {MAX_LEVELS} levels (network stride 2 ** (levels - 1))")
            if any(not lo <= x <= hi for x in v):
                bad(f"{name} entries must be in [{lo}, {hi}], got {v}")

        if not isinstance(self.name, str):
            bad(f"name must be a string, got {self.name!r}")
        ints("widths", 1, MAX_WIDTH)
        ints("enc_convs", 1, MAX_CONVS)
        ints("dec_convs", 1, MAX_CONVS)
        if not isinstance(self.mefm_shoulder, bool):
            bad(f"mefm_shoulder must be true or false, got {self.mefm_shoulder!r}")
        if not isinstance(self.cmab_levels, tuple) or not all(isinstance(x, bool) for x in self.cmab_levels):
            bad(f"cmab_levels must be a list of booleans, got {self.cmab_levels!r}")
        for name, lo, hi in (("cmab_reduction", 1, MAX_WIDTH), ("cmab_min_channels", 1, MAX_WIDTH),
                             ("ca_reduction", 1, MAX_WIDTH), ("eab_dim", 1, MAX_WIDTH), ("eab_depth", 1, MAX_CONVS),
                             ("eab_heads", 1, MAX_WIDTH), ("eab_window", 1, 1024), ("mefm_width", 1, MAX_WIDTH),
                             ("mefm_local", 1, MAX_CONVS), ("mefm_dilated", 1, MAX_CONVS), ("mefm_dilation", 1, 64),
                             ("mefm_context", 0, len(MEFM_CONTEXT_DILATIONS)), ("mefm_global_width", 0, MAX_WIDTH),
                             ("mefm_clip_prior", 0, MAX_CLIP_PRIOR), ("mefm_ring", 0, MAX_RING),
                             ("thumb_size", 1, 4096)):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
                bad(f"{name} must be an integer in [{lo}, {hi}], got {v!r}")
        for name, lo, hi in (("eab_mlp_ratio", 0.0, 64.0), ("negative_slope", 0.0, 1.0)):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not lo <= v <= hi:
                bad(f"{name} must be a number in [{lo}, {hi}], got {v!r}")
        if not isinstance(self.description, str):
            bad(f"description must be a string, got {self.description!r}")

    @property
    def levels(self) -> int:
        return len(self.widths)

    @property
    def global_width(self) -> int:
        """Channels of the MEFM global branch: ``mefm_global_width``, or ``mefm_width`` when that is 0."""
        return self.mefm_global_width or self.mefm_width

    @property
    def stride(self) -> int:
        """Inputs must be padded to a multiple of this (2 ** (levels - 1): 16 for 5 levels)."""
        return 2 ** (self.levels - 1)

    def to_dict(self) -> dict[str, Any]:
        d = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}
        if d["boost"] == "down":  # the meaning of every file written before the field existed
            del d["boost"]
        for key in ("mefm_context", "mefm_global_width", "mefm_clip_prior", "mefm_shoulder", "mefm_ring"):  # likewise
            if not d[key]:
                del d[key]
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Preset:
        if not isinstance(data, dict):
            raise ValueError(f"Preset: expected a JSON object, got {type(data).__name__}")
        if "name" not in data:
            raise ValueError("Preset: missing key 'name'")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"Preset: unknown keys {unknown}")
        kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        return cls(**kwargs)

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Preset:
        return cls.from_dict(json.loads(text))


PRESETS: dict[str, Preset] = {
    "paper": Preset(
        name="paper",
        description="Paper-size network: 5-level U-Nets 32..512, ExpandNet-width MEFM (64).",
    ),
    "compact": Preset(
        name="compact",
        widths=(8, 12, 16, 24, 32),
        enc_convs=(1, 1, 1, 2, 2),
        dec_convs=(1, 1, 1, 2),
        cmab_levels=(False, True, True, True, True),
        cmab_reduction=2,
        ca_reduction=2,
        eab_dim=24,
        eab_depth=2,
        eab_heads=2,
        eab_mlp_ratio=2.0,
        mefm_width=8,
        mefm_local=2,
        mefm_dilated=1,
        description="Trainable on 2 CPU cores in hours (~0.26M parameters); the shipped default weights.",
    ),
    "fast": Preset(
        name="fast",
        widths=(8, 12, 16, 32, 64),
        enc_convs=(1, 1, 1, 2, 2),
        dec_convs=(1, 1, 1, 1),
        cmab_levels=(False, False, True, True, True),
        cmab_reduction=4,
        ca_reduction=4,
        eab_dim=32,
        eab_depth=2,
        eab_heads=2,
        eab_mlp_ratio=2.0,
        mefm_width=8,
        mefm_local=1,
        mefm_dilated=1,
        description="4K video: 8 channels and one 3x3 conv per stage at full resolution, no CMAB at the two "
        "finest levels, one-conv MEFM branches, most parameters at the coarse levels where they are cheap.",
    ),
}


def preset_names() -> list[str]:
    return list(PRESETS)


def get_preset(name: str | Preset) -> Preset:
    """A shipped preset by name (``paper``, ``compact``, ``fast``); a ``Preset`` is returned unchanged."""
    if isinstance(name, Preset):
        return name
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose one of {preset_names()}") from None
