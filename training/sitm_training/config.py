"""The trainer's options: a typed config of five groups, the command line that fills it, and how a stored one
is read back.

:class:`TrainConfig` groups the options of ``python -m sitm_training.train`` as data, model, optimisation, loss
and run (:class:`DataConfig`, :class:`ModelConfig`, :class:`OptimConfig`, :class:`LossConfig`,
:class:`RunConfig`) and checks them when made. The run card and ``ckpt/state.json`` store it as one flat mapping
keyed by option name (:meth:`TrainConfig.to_dict`, ``stage1_steps`` for ``--stage1-steps``); :func:`stored_config`
reads one back, including those of the trainer before :data:`REMOVED_OPTIONS` were removed.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sitm_trt.model import Preset, get_preset

from .data.camera import RESPONSE_KINDS
from .losses import CLIP_NORMS, DOWN_LABELS, LossWeights

__all__ = ["DataConfig", "ModelConfig", "OptimConfig", "LossConfig", "RunConfig", "TrainConfig", "REMOVED_OPTIONS",
           "stored_config", "config_from_args"]


@dataclass(frozen=True)
class DataConfig:
    """What the network is trained on: the data set, its crops and batches, and the exposure labels."""

    root: str = field(metadata={"key": "data"})  # a data set built by `python -m sitm_training.data build`
    crop: int = 128  # random crops of this size (a multiple of the network stride)
    batch: int = 8
    workers: int = 2  # DataLoader worker processes
    down_label: str = "data"  # the ADEM's label: "data" (the data set's) or "input" (losses.input_down_label)
    up_ev_max: float | None = None  # shoot the exposure-up labels of more EV again at this EV (data.relabel_up)
    oversample_under: float = 1.0  # draw under-exposed training samples this many times as often (1 = uniform)
    oversample_real: float = 1.0  # draw training samples of real scenes (not procedural/*) this many times as often
    families: tuple = ()  # train only on samples shot through these camera response families (empty: every one)


@dataclass(frozen=True)
class ModelConfig:
    """The network, where its weights start, what of it trains, and the discriminator's size."""

    preset: str = "compact"
    fusion: str = "paper"  # Preset.fusion: "paper" (Eq. 7-8) or "residual" (docs/model.md, "The residual fusion")
    boost: str = "down"  # Preset.boost (residual fusion): the gain 2^(12 b) on M_down only, or on the whole blend
    mefm_context: int = 0  # Preset.mefm_context: residual dilated convolutions that widen what the MEFM's masks see
    mefm_global_width: int = 0  # Preset.mefm_global_width: channels of the MEFM global branch (0: the MEFM's width)
    mefm_clip_prior: int = 0  # Preset.mefm_clip_prior: box half-width of the gain's clipped-region prior (0: none)
    mefm_shoulder: bool = False  # Preset.mefm_shoulder: the input's highlight histogram into the MEFM's global vector
    mefm_ring: int = 0  # Preset.mefm_ring: half-width of the ring maps added to the mask features (0: none)
    init: str | None = None  # start a new run from these weights (fresh optimizer, step 0): a fine-tune
    freeze_exposure: bool = False  # stage 2 trains the MEFM only (EAB, AUEM, ADEM fixed): a fusion fine-tune
    fixed_curve: bool = False  # residual fusion: the curve correction k2 = log gamma held at 0 (gamma = 1)
    disc_width: int = 16
    disc_max_width: int = 64

    def network_preset(self) -> Preset:
        """The network these options build: the named preset with ``fusion``, ``boost``, ``mefm_context``,
        ``mefm_global_width``, ``mefm_clip_prior``, ``mefm_shoulder`` and ``mefm_ring`` (``Preset`` checks them)."""
        return dataclasses.replace(get_preset(self.preset), fusion=self.fusion, boost=self.boost,
                                   mefm_context=self.mefm_context, mefm_global_width=self.mefm_global_width,
                                   mefm_clip_prior=self.mefm_clip_prior, mefm_shoulder=self.mefm_shoulder,
                                   mefm_ring=self.mefm_ring)


@dataclass(frozen=True)
class OptimConfig:
    """The two stages' lengths, Adam and its learning-rate schedule, mixed precision."""

    stage1_steps: int = 2000
    stage2_steps: int = 4000
    lr: float = 2e-4  # Sec. 4.1
    lr_min: float = 1e-5  # cosine decay over stage 2 (our choice)
    coef_lr_mult: float = 1.0  # the MEFM's coefficient head (the residual fusion's k0..k2) learns at lr times this
    prior_lr_mult: float = 1.0  # the clip prior's strength head (--mefm-clip-prior) learns at lr times this
    betas: tuple[float, float] = (0.9, 0.999)
    amp: bool = True  # bf16/fp16 autocast on CUDA only
    grad_clip: float = 0.0  # the network's gradient clipped to this global L2 norm before each step; 0: off

    @property
    def total_steps(self) -> int:
        return self.stage1_steps + self.stage2_steps

    def stage(self, step: int) -> int:
        """The stage that step ``step`` (counted from 0) belongs to: 1 or 2."""
        return 1 if step < self.stage1_steps else 2

    def lr_at(self, step: int) -> float:
        """Constant ``lr`` in stage 1, then a cosine from ``lr`` to ``lr_min`` over stage 2."""
        if step < self.stage1_steps:
            return self.lr
        t = (step - self.stage1_steps) / max(1, self.stage2_steps)
        return self.lr_min + 0.5 * (self.lr - self.lr_min) * (1 + math.cos(math.pi * min(1.0, t)))


@dataclass(frozen=True)
class LossConfig:
    """Eq. 16 and our additions to it (all off by default: the paper's loss)."""

    gan: bool = True  # the mask-aware adversarial terms (Eq. 13-14)
    vgg: str | None = None  # torchvision VGG-16 ImageNet state_dict; None = SSIM substitute (warned)
    hdr_pu21: float = 0.0  # weight of losses.pu21_hdr_loss added to Eq. 15
    hdr_clip: float = 0.0  # weight of losses.pu21_clipped_loss added to Eq. 15
    hdr_align: bool = False  # the PU21 terms compare after the evaluation's scale alignment (losses.align_scale_torch)
    hdr_clip_norm: str = "l1"  # the --hdr-clip term per image: "l1" or "l2" (losses.pu21_clipped_loss)
    camera_aux: float = 0.0  # weight of the auxiliary loss: a linear probe of the MEFM's g names the camera family
    hdr_clip_ring: float = 1.0  # the --hdr-clip term's weight on bright-ringed regions of S-curve samples (1: off)
    hdr_clip_ring_families: tuple = ("filmic", "hable")  # the camera families --hdr-clip-ring treats as S-curves

    def weights(self) -> LossWeights:
        return LossWeights(lambda_pu21=self.hdr_pu21, lambda_clip=self.hdr_clip, align=self.hdr_align,
                           clip_norm=self.hdr_clip_norm, clip_ring=self.hdr_clip_ring)


@dataclass(frozen=True)
class RunConfig:
    """Where the run lives, on what it runs, how often it logs, validates and saves, and for how long."""

    out: str  # the run folder (resumed when it holds a checkpoint)
    device: str = "cpu"
    seed: int = 0
    threads: int = 0  # torch intra-op threads on the CPU (0 = torch default)
    log_every: int = 10
    val_every: int = 250
    ckpt_every: int = 100
    val_images: int = 8
    max_seconds: float | None = None  # wall-clock budget of this process: stop, checkpoint and write the card


_GROUPS = (("data", DataConfig), ("model", ModelConfig), ("optim", OptimConfig), ("loss", LossConfig),
           ("run", RunConfig))


def _key(f: dataclasses.Field) -> str:
    """A field's option name: the command line's ``--NAME`` with ``_`` for ``-``, and its key in the run card."""
    return f.metadata.get("key", f.name)


def _option_fields() -> dict[str, tuple[str, dataclasses.Field]]:
    return {_key(f): (group, f) for group, cls in _GROUPS for f in dataclasses.fields(cls)}


def _default(key: str) -> Any:
    return _option_fields()[key][1].default


@dataclass(frozen=True)
class TrainConfig:
    """Every option of a training run, in five groups; checked when made (a ``ValueError`` names the option)."""

    data: DataConfig
    run: RunConfig
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)

    def __post_init__(self) -> None:
        try:
            stride = self.model.network_preset().stride
        except ValueError as err:
            raise ValueError(f"--preset/--fusion/--boost/--mefm-context/--mefm-global-width/--mefm-clip-prior/"
                             f"--mefm-shoulder/--mefm-ring: {err}") from err
        if self.model.fixed_curve and self.model.fusion != "residual":
            raise ValueError("--fixed-curve holds the residual fusion's curve correction k2 at 0: it needs --fusion "
                             f"residual, got --fusion {self.model.fusion}")
        if self.data.crop % stride:
            raise ValueError(f"--crop must be a multiple of the network stride {stride}, got {self.data.crop}")
        if self.data.down_label not in DOWN_LABELS:
            raise ValueError(f"--down-label must be one of {DOWN_LABELS}, got {self.data.down_label!r}")
        if self.data.up_ev_max is not None and not self.data.up_ev_max > 0:
            raise ValueError(f"--up-ev-max must be > 0 EV, got {self.data.up_ev_max}")
        if not self.data.oversample_under > 0:
            raise ValueError(f"--oversample-under must be > 0, got {self.data.oversample_under}")
        if not self.data.oversample_real > 0:
            raise ValueError(f"--oversample-real must be > 0, got {self.data.oversample_real}")
        if self.loss.hdr_clip_norm not in CLIP_NORMS:
            raise ValueError(f"--hdr-clip-norm must be one of {CLIP_NORMS}, got {self.loss.hdr_clip_norm!r}")
        if not (self.optim.coef_lr_mult > 0 and math.isfinite(self.optim.coef_lr_mult)):
            raise ValueError(f"--coef-lr-mult must be > 0, got {self.optim.coef_lr_mult}")
        if not (self.loss.camera_aux >= 0 and math.isfinite(self.loss.camera_aux)):
            raise ValueError(f"--camera-aux must be >= 0, got {self.loss.camera_aux}")
        if not (self.loss.hdr_clip_ring >= 0 and math.isfinite(self.loss.hdr_clip_ring)):
            raise ValueError(f"--hdr-clip-ring must be >= 0, got {self.loss.hdr_clip_ring}")
        if self.loss.hdr_clip_ring != 1.0 and not self.loss.hdr_clip > 0:
            raise ValueError("--hdr-clip-ring weighs the --hdr-clip term: set --hdr-clip too")
        unknown = sorted(set(self.data.families) - set(RESPONSE_KINDS))
        if unknown:
            raise ValueError(f"--families must name camera families of {RESPONSE_KINDS}, got "
                             f"{','.join(self.data.families)!r}")
        unknown = sorted(set(self.loss.hdr_clip_ring_families) - set(RESPONSE_KINDS))
        if unknown or not self.loss.hdr_clip_ring_families:
            raise ValueError(f"--hdr-clip-ring-families must name camera families of {RESPONSE_KINDS}, got "
                             f"{','.join(self.loss.hdr_clip_ring_families)!r}")
        if not (self.optim.prior_lr_mult > 0 and math.isfinite(self.optim.prior_lr_mult)):
            raise ValueError(f"--prior-lr-mult must be > 0, got {self.optim.prior_lr_mult}")
        if self.run.max_seconds is not None and not self.run.max_seconds > 0:
            raise ValueError(f"--max-seconds must be > 0, got {self.run.max_seconds}")
        if not (self.optim.grad_clip >= 0 and math.isfinite(self.optim.grad_clip)):
            raise ValueError(f"--grad-clip must be >= 0 (0: off), got {self.optim.grad_clip}")
        for option, value, least in (("stage1-steps", self.optim.stage1_steps, 0),
                                     ("stage2-steps", self.optim.stage2_steps, 0), ("batch", self.data.batch, 1),
                                     ("crop", self.data.crop, 1), ("workers", self.data.workers, 0)):
            if value < least:
                raise ValueError(f"--{option} must be >= {least}, got {value}")
        if self.optim.stage1_steps + self.optim.stage2_steps < 1:
            raise ValueError("--stage1-steps and --stage2-steps are both 0: nothing to train")

    def to_dict(self) -> dict[str, Any]:
        """The options as one flat mapping keyed by option name: what the run card and ``ckpt/state.json`` store."""
        return {_key(f): getattr(getattr(self, group), f.name)
                for group, cls in _GROUPS for f in dataclasses.fields(cls)}

    @classmethod
    def from_dict(cls, options: Mapping[str, Any]) -> TrainConfig:
        """The config of a flat mapping as :meth:`to_dict` makes it (``--data`` and ``--out`` required, any other
        option left out takes its default); a key that is not an option of this trainer is a ``ValueError``."""
        known = _option_fields()
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise ValueError(f"not options of this trainer: {', '.join(unknown)}")
        missing = [k for k in ("data", "out") if k not in options]
        if missing:
            raise ValueError(f"the options lack {', '.join(missing)}")
        groups: dict[str, dict[str, Any]] = {group: {} for group, _ in _GROUPS}
        for key, value in options.items():
            group, f = known[key]
            groups[group][f.name] = tuple(value) if isinstance(f.default, tuple) else value  # JSON stores lists
        return cls(**{group: kind(**groups[group]) for group, kind in _GROUPS})


REMOVED_OPTIONS: dict[str, Any] = {"hdr_grad": 0.0, "hdr_psnr": 0.0, "mask_prior": 0.0, "mask_prior_scope": "well"}
"""Options of earlier versions of this trainer, removed because their experiments lost (training/LOG.md: the
neighbour-difference term, the per-image PSNR term and the mask prior with its scopes), with the value that left
each one off. Run cards and checkpoints of those versions store them; :func:`stored_config` accepts them at that
value, which is what this trainer does without them."""


def stored_config(options: Mapping[str, Any], where: str) -> TrainConfig:
    """The config a run card or ``ckpt/state.json`` stored (``where`` names the file for the messages).

    A :data:`REMOVED_OPTIONS` key at its old default is dropped; at any other value it is a ``ValueError``: that
    run trained with a term this trainer no longer has, so it cannot go on here (an earlier commit of this file
    can resume it)."""
    current = dict(options)
    for key, off in REMOVED_OPTIONS.items():
        if key in current and current.pop(key) != off:
            raise ValueError(f"{where}: the run was trained with {key}={options[key]!r}, an option this trainer no "
                             f"longer has (removed with the experiments that lost, training/LOG.md); only a run with "
                             f"its default {off!r} resumes here")
    try:
        return TrainConfig.from_dict(current)
    except ValueError as err:
        raise ValueError(f"{where}: the stored config does not fit this trainer: {err}") from err


# ---------------------------------------------------------------------------------------------- command line


def _families(text: str) -> tuple[str, ...]:
    """``--families``' and ``--hdr-clip-ring-families``' comma-separated names (checked by :class:`TrainConfig`)."""
    return tuple(name.strip() for name in text.split(",") if name.strip())


def _parser(description: str | None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m sitm_training.train", description=description,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="a data set built by `python -m sitm_training.data build`")
    p.add_argument("--out", required=True, help="the run folder (resumed when it holds a checkpoint)")
    p.add_argument("--preset", default=_default("preset"), choices=["paper", "compact", "fast"])
    p.add_argument("--fusion", default=_default("fusion"), choices=["paper", "residual"],
                   help="how the masks and coefficients make HDR: the paper's Eq. 7-8, or the residual fusion around "
                        "the linearized input (docs/model.md); with --init of paper weights the two MEFM heads start fresh")
    p.add_argument("--boost", default=_default("boost"), choices=["down", "all"],
                   help="residual fusion: what the per-pixel gain 2^(12 b) multiplies: the exposure-down term "
                        "(down) or the whole blend (all: it can brighten a clipped pixel on its own; docs/model.md, "
                        "\"The boost\"); with --init of weights of the other kind the gain's channel starts at zero")
    p.add_argument("--mefm-context", type=int, default=_default("mefm_context"),
                   help="residual dilated convolutions (dilations 4, 8, 16, 32) after the MEFM's dilated branch, so "
                        "the masks see how far a clipped region extends (docs/model.md, \"Context\"); they start at "
                        "zero, so --init of weights with fewer keeps their function")
    p.add_argument("--mefm-global-width", type=int, default=_default("mefm_global_width"),
                   help="channels of the MEFM global branch, which gives the whole-frame coefficients (gains, curve "
                        "exponent); 0: the MEFM's width. Its extra channels start uncoupled, so --init of narrower "
                        "weights keeps their function (docs/model.md, \"The global branch\")")
    p.add_argument("--mefm-clip-prior", type=int, default=_default("mefm_clip_prior"), metavar="R",
                   help="residual fusion: add a Rempel-style prior to the gain, the nearly clipped pixels blurred by "
                        "three passes of a (2R+1)-pixel box times a strength the network predicts per pixel; 0: none. "
                        "The strength starts at zero, so --init of weights without it keeps their function "
                        "(docs/model.md, \"The clipped-region prior\")")
    p.add_argument("--mefm-shoulder", action="store_true",
                   help="feed the MEFM's global vector the input's highlight histogram (log2 shares of pixels above "
                        "0.5 ... 0.99), so the whole-frame gains can tell an S-curve camera's shoulder from a hard "
                        "clip; its layer starts at zero, so --init of weights without it keeps their function "
                        "(docs/model.md, \"The shoulder features\")")
    p.add_argument("--mefm-ring", type=int, default=_default("mefm_ring"), metavar="R",
                   help="add ring maps to the MEFM's mask features: how bright the non-clipped pixels around nearby "
                        "clipped ones are, over windows of half-width R and 4R, so the gain can tell a sky that only "
                        "just clips from a lamp; 0: none. Their layer starts at zero, so --init of weights without them "
                        "keeps their function (docs/model.md, \"The ring maps\")")
    for name in ("stage1_steps", "stage2_steps", "batch", "crop", "disc_width", "disc_max_width", "workers", "seed",
                 "log_every", "val_every", "ckpt_every", "val_images", "threads"):
        p.add_argument("--" + name.replace("_", "-"), type=int, default=_default(name))
    p.add_argument("--lr", type=float, default=_default("lr"))
    p.add_argument("--lr-min", type=float, default=_default("lr_min"))
    p.add_argument("--grad-clip", type=float, default=_default("grad_clip"), metavar="NORM",
                   help="clip the network's gradient to this global L2 norm before each Adam step (default 0: off); "
                        "the card's log column grad_norm shows the norms to choose it from (training/LOG.md, R44)")
    p.add_argument("--coef-lr-mult", type=float, default=_default("coef_lr_mult"),
                   help="the MEFM's coefficient head (one small linear layer: the residual fusion's per-image exposure "
                        "gains and curve exponent) learns at --lr times this (default 1); its per-image target varies "
                        "with the camera, so its gradient is noisy and Adam moves it slowly at the network's rate")
    p.add_argument("--prior-lr-mult", type=float, default=_default("prior_lr_mult"),
                   help="the clip prior's strength head (--mefm-clip-prior; 73 parameters) and the ring maps' layer "
                        "(--mefm-ring; 48), both zero at the start, learn at --lr times this (default 1): a "
                        "fine-tune's rate moves them by at most about --lr per step")
    p.add_argument("--hdr-pu21", type=float, default=_default("hdr_pu21"),
                   help="weight of an extra L1 term on PU21-encoded HDR in stage 2 (default 0: Eq. 16 as published)")
    p.add_argument("--hdr-clip", type=float, default=_default("hdr_clip"),
                   help="weight of an extra PU21 L1 term over the input's over-exposed pixels only (per image, Eq. 14's "
                        "mask) in stage 2 (default 0)")
    p.add_argument("--hdr-clip-norm", default=_default("hdr_clip_norm"), choices=list(CLIP_NORMS),
                   help="the --hdr-clip term per image: 'l1' (mean absolute PU21 error, default) or 'l2' (mean squared, "
                        "smaller where errors are small: weigh it up; aims at the mean of what the clipped truth could "
                        "be, as PSNR rewards, not at its median)")
    p.add_argument("--camera-aux", type=float, default=_default("camera_aux"), metavar="W",
                   help="stage 2: add W x the cross-entropy of a linear probe of the MEFM's global vector g that names "
                        "each training sample's camera response family (from the data's recipe), so that g learns to "
                        "tell the camera and the gains can depend on it; the probe is training-only (saved in the "
                        "checkpoint, not in the weights). Default 0: off")
    p.add_argument("--hdr-clip-ring", type=float, default=_default("hdr_clip_ring"), metavar="W",
                   help="the --hdr-clip term counts W times on the clipped regions ringed by nearly clipped pixels "
                        "(mean max RGB >= 0.85 within 4 pixels: a sky or window that only just clips) of samples whose "
                        "camera has a shoulder (--hdr-clip-ring-families): there the truth lies far above the input "
                        "through an S-curve and barely above it through sRGB, and a model that cannot tell the camera "
                        "learns the mix (training/LOG.md, nineteenth round). Default 1: off")
    p.add_argument("--hdr-clip-ring-families", type=_families, default=_default("hdr_clip_ring_families"),
                   metavar="A,B", help="the camera response families --hdr-clip-ring weighs (default filmic,hable)")
    p.add_argument("--hdr-align", action="store_true",
                   help="the PU21 terms (--hdr-pu21/--hdr-clip) compare after scaling H like the evaluation does "
                        "(median log-ratio over well-exposed pixels, no gradient); Eq. 15 stays absolute")
    p.add_argument("--down-label", default=_default("down_label"), choices=list(DOWN_LABELS),
                   help="the exposure-down label: 'data' (the data set's, default) or 'input' (below the highlights, "
                        "the input moved by the label's EV in linear light; losses.input_down_label)")
    p.add_argument("--up-ev-max", type=float, default=_default("up_ev_max"),
                   help="exposure-up labels of more than this many EV above the input are shot again at this EV by the "
                        "sample's simulated camera (data.relabel_up); default: the data set's labels")
    p.add_argument("--oversample-under", type=float, default=_default("oversample_under"),
                   help="draw under-exposed training samples K times as often (default 1: uniform)")
    p.add_argument("--oversample-real", type=float, default=_default("oversample_real"),
                   help="draw the training samples of real scenes (every source but procedural/*) K times as often "
                        "(default 1: uniform); multiplies with --oversample-under")
    p.add_argument("--families", type=_families, default=_default("families"), metavar="A,B",
                   help="train only on the samples shot through these camera response families (each sample's "
                        "meta records its family), e.g. filmic,hable for a model of S-curve inputs; validation keeps "
                        "every sample. Default: every family")
    p.add_argument("--init", default=None, help="start a new run from these weights (.safetensors; fresh optimizer)")
    p.add_argument("--max-seconds", type=float, default=None,
                   help="wall-clock budget of this process, counted from the first step and checked before each "
                        "step: once spent, stop as after SIGTERM (checkpoint, card with 'stopped'); rerunning resumes. "
                        "The lr schedule still follows the step counts")
    p.add_argument("--freeze-exposure", action="store_true",
                   help="stage 2 updates only the MEFM (a fusion fine-tune from a trained checkpoint)")
    p.add_argument("--fixed-curve", action="store_true",
                   help="residual fusion: hold the per-image curve correction k2 = log gamma at 0 (gamma = 1, the "
                        "inverse sRGB curve) from the start; docs/training.md")
    p.add_argument("--no-gan", action="store_true", help="train without the mask-aware discriminator")
    p.add_argument("--vgg", default=None, help="torchvision VGG-16 ImageNet weights (.pth) for the perceptual loss; "
                                               "without it a 1-SSIM substitute is used (and the run card says so)")
    p.add_argument("--device", default=_default("device"), help="cpu, cuda or cuda:N")
    p.add_argument("--no-amp", action="store_true", help="no mixed precision on CUDA")
    return p


def config_from_args(argv: list[str] | None = None, description: str | None = None) -> TrainConfig:
    """The config of a command line (``python -m sitm_training.train``'s arguments; ``description`` for
    ``--help``)."""
    args = vars(_parser(description).parse_args(argv))
    options = {k: v for k, v in args.items() if k not in ("no_gan", "no_amp")}
    return TrainConfig.from_dict({**options, "gan": not args["no_gan"], "amp": not args["no_amp"]})
