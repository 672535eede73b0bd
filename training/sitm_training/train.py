"""The trainer: ``python -m sitm_training.train --data DIR --out RUN [...]`` (or ``torchrun ... -m sitm_training.train``).

Two stages (Sec. 3.7, 4.1): stage 1 trains EAB + AUEM + ADEM (CMAB-linked) on the optimal exposure labels
with the progressive loss (Eq. 12) and the mask-aware adversarial loss (Eq. 13-14); stage 2 trains the whole
network end to end with the HDR loss added (Eq. 16). Adam, lr 2e-4 as in the paper; our other choices are
the defaults of :mod:`sitm_training.config` and are written to the run card.

The options are a typed :class:`~sitm_training.config.TrainConfig` of five groups (data, model, optimisation,
loss, run; :mod:`sitm_training.config` also reads the command line). :class:`Trainer` is the run:
:meth:`~Trainer.feed` a batch, :meth:`~Trainer.step` the optimisers, :meth:`~Trainer.validate`,
:meth:`~Trainer.save`, and :meth:`~Trainer.run` loops over them.

A run folder holds: ``card.json`` (the run card: preset, data recipe, seed, git commit, perceptual loss
kind, the options, the latest losses and validation), ``log.csv`` (one row per logged step), ``ckpt/``
(``model.safetensors`` + ``disc.safetensors`` weights, ``optim.pt`` optimizer states, ``state.json`` step and
stage; all written atomically) and ``val/`` (contact sheets: input | result | ground truth, tone mapped alike).
Re-running the same command resumes from the checkpoint. SIGINT/SIGTERM save a checkpoint before exiting, and so
does the end of a ``--max-seconds`` wall-clock budget (the card then says ``stopped``).
Several GPUs: ``torchrun --nproc_per_node N -m sitm_training.train ...`` (DistributedDataParallel).

One module of about 540 lines on purpose: it is one thing, the run, read top to bottom. The helpers above
:class:`Trainer` (the DDP wrapper, the two-stage view of the network, the batch iterator, the sampling weights, the
``--init`` loading, the validation with its contact sheet) are short and serve the trainer (``git_commit`` also
the weight averaging); what stands on its own already has its module (options: :mod:`.config`, losses:
:mod:`.losses`, the discriminator, the masks, the data). Moving the helpers out would make a reader follow one
step through two files.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, NamedTuple

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils.data import DataLoader, DistributedSampler, WeightedRandomSampler

from sitm_trt import reference as ops
from sitm_trt.files import atomic_write
from sitm_trt.media.io import tonemap_preview, write_png
from sitm_trt.model import SITMNet, save_weights
from sitm_trt.model.mefm import CURVE_ROW
from sitm_trt.model.serialization import load_weights
from sitm_trt.model.state import StatSource
from sitm_trt.weights import sha256_file

from .config import TrainConfig, config_from_args, stored_config
from .discriminator import MaskAwareDiscriminator
from .losses import SITMLoss, VGGPerceptual, input_down_label, mask_aware_g_loss
from .masks import over_exposure_mask, under_exposure_mask

if TYPE_CHECKING:
    from sitm_training.data import SampleDataset

__all__ = ["Batch", "Trainer", "train", "validate", "sampling_weights", "load_init", "git_commit", "main"]


# ---------------------------------------------------------------------------------------------- helpers


def git_commit() -> str:
    """HEAD, with ``+dirty`` when tracked files have uncommitted changes (the run's code is then not HEAD's)."""
    here = Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10,
                              cwd=here).stdout.strip()
        if not head:
            return "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, timeout=10, cwd=here).stdout.strip()
        return head + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _json_bytes(obj: Any) -> bytes:
    return json.dumps(obj, indent=2, default=str).encode()


class _Dist:
    """DistributedDataParallel set-up from torchrun's environment (a no-op for one process)."""

    def __init__(self, device: str):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        try:
            self.device = torch.device(device)
        except RuntimeError as err:
            raise ValueError(f"--device {device}: expected cpu, cuda or cuda:N") from err
        if self.device.type not in ("cpu", "cuda"):
            raise ValueError(f"--device {device}: expected cpu, cuda or cuda:N")
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"--device {device}: this PyTorch sees no CUDA device (torch {torch.__version__})")
        if self.world > 1:
            backend = "nccl" if self.device.type == "cuda" else "gloo"
            dist.init_process_group(backend)
            if self.device.type == "cuda":
                self.device = torch.device("cuda", self.local_rank)
                torch.cuda.set_device(self.device)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def wrap(self, module: torch.nn.Module) -> torch.nn.Module:
        if self.world == 1:
            return module
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [self.device.index] if self.device.type == "cuda" else None
        return DDP(module, device_ids=ids, find_unused_parameters=True)

    def close(self) -> None:
        if self.world > 1:
            dist.destroy_process_group()


class _Exposures(NamedTuple):
    """The two exposure images as ``SITMLoss.discriminator`` reads them (stage 1 has no full network output)."""

    image_up: torch.Tensor
    image_down: torch.Tensor


class _Stages(torch.nn.Module):
    """The network's two training passes behind one forward(), so DistributedDataParallel sees every call. Stage 2
    returns the output and the MEFM's global vector ``g`` of the pass (``--camera-aux``'s probe reads it)."""

    def __init__(self, net: SITMNet):
        super().__init__()
        self.net = net

    def forward(self, stage: int, *pre: torch.Tensor):
        if stage == 1:
            return self.net.forward_exposure(*pre)
        stats = StatSource()
        return self.net.forward_train(*pre, stats=stats), stats.values["mefm_g"]


class Batch(NamedTuple):
    """One training batch on the device, with the labels the losses compare against."""

    ldr: torch.Tensor
    up: torch.Tensor
    down: torch.Tensor
    hdr: torch.Tensor
    camera: torch.Tensor | None = None  # --camera-aux: the index of each sample's camera family (-100: not one)
    s_curve: torch.Tensor | None = None  # --hdr-clip-ring: whether each sample's camera has a shoulder


def _batches(loader: DataLoader, start_epoch: int) -> Iterator[dict[str, Any]]:
    epoch = start_epoch
    while True:
        if isinstance(loader.sampler, DistributedSampler):
            loader.sampler.set_epoch(epoch)
        if hasattr(loader.dataset, "set_epoch"):
            loader.dataset.set_epoch(epoch)
        yield from loader
        epoch += 1


def sampling_weights(dataset: SampleDataset, oversample_under: float, oversample_real: float = 1.0,
                     families: tuple[str, ...] = ()) -> list[float]:
    """Sampling weight per training sample: ``oversample_under`` for the under-exposed ones (the camera
    ``meta`` of each sample says ``exposure.mode``), times ``oversample_real`` for the samples of real scenes (the
    manifest's ``source`` of each is not ``procedural/...``); 1 for the rest. With ``families``, 0 for every sample
    whose camera response family (``meta["camera"]["response"]["kind"]``) is not one of them; each named family
    must have a sample."""
    from sitm_training.data import camera_family, load_sample_meta, under_exposed

    weights, seen = [], set()
    for r in dataset.records:
        w = 1.0
        meta = load_sample_meta(dataset.root / r["file"]) if oversample_under != 1.0 or families else None
        if oversample_under != 1.0:
            under = under_exposed(meta)
            if under is None:
                raise ValueError(f"{dataset.root / r['file']}: the sample's meta records no exposure mode, which "
                                 "--oversample-under needs")
            w = float(oversample_under) if under else 1.0
        if oversample_real != 1.0:
            source = r.get("source")
            if not isinstance(source, str) or not source:
                raise ValueError(f"{dataset.root}: the manifest records no source for {r['file']}, which "
                                 "--oversample-real needs")
            if not source.startswith("procedural/"):
                w *= float(oversample_real)
        if families:
            kind = camera_family(meta)
            if kind is None:
                raise ValueError(f"{dataset.root / r['file']}: the sample's meta records no camera response family, "
                                 "which --families needs")
            seen.add(kind)
            if kind not in families:
                w = 0.0
        weights.append(w)
    missing = [f for f in families if f not in seen]
    if missing:
        raise ValueError(f"--families {','.join(families)}: {dataset.root}'s train split has no sample of "
                         f"{', '.join(missing)} (it has {', '.join(sorted(seen)) or 'none'})")
    return weights


CAMERA_PROBE_LR_MULT = 100.0
"""``--camera-aux``: the probe learns at this many times the network's rate. It starts untrained, and a fine-tune's
rate (5e-5) moves each of its weights by about 0.1 in 2000 steps, so it would stay at chance (cross-entropy ln 5)
and give ``g`` no target: R33's first 300 steps at the network's rate did (training/LOG.md, "Nineteenth round")."""


GLOBAL_BRANCH = ("mefm.glob.", "mefm.glob_fc.", "mefm.shoulder_fc.", "mefm.fuse_global.", "mefm.coef_head.")
"""What ``--mefm-global-width`` widens: the global branch (with the shoulder features' layer into ``g``) and the two
layers that read ``g``."""


def widen(src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """``src`` embedded in the larger ``dst`` so that the layer keeps its function on its old inputs and outputs:
    the leading block is ``src``; the weights from new inputs into old outputs are 0 (so the new channels do not
    reach anything that existed); new outputs keep ``dst``'s values (their fresh initialisation)."""
    if src.dim() != dst.dim() or any(a > b for a, b in zip(src.shape, dst.shape)):
        raise ValueError(f"cannot widen {tuple(src.shape)} to {tuple(dst.shape)}")
    out = dst.clone()
    out[:src.shape[0]] = 0
    out[tuple(slice(0, n) for n in src.shape)] = src
    return out


def hold_curve_fixed(net: SITMNet) -> None:
    """``--fixed-curve``: the residual fusion's curve correction ``k2 = log gamma`` is 0 for every image from now on.

    ``MEFM.fix_curve(0)`` zeroes the coefficient head's row :data:`~sitm_trt.model.mefm.CURVE_ROW`, and its gradient
    is masked, so Adam (whose step is 0 where the gradient always was) leaves it at 0 and the saved weights have
    ``gamma = 1`` exactly. The trained residual models learned ``k2`` of about 0.1 on every image whatever its camera
    (training/LOG.md, "Twenty-first round")."""
    net.mefm.fix_curve(0.0)
    head = net.mefm.coef_head
    keep = torch.ones_like(head.bias)
    keep[CURVE_ROW] = 0.0
    head.weight.register_hook(lambda grad: grad * keep[:, None])
    head.bias.register_hook(lambda grad: grad * keep)


def load_init(net: SITMNet, init: SITMNet, path: str) -> list[str]:
    """Copy ``init``'s weights into ``net``. Between the two fusions (``--fusion residual --init`` of
    paper-fusion weights) the MEFM's mask and coefficient heads keep ``net``'s initialisation (zero: the residual
    heads start at the linearized input), whatever their shapes; so do MEFM context convolutions ``init`` lacks
    (``--mefm-context``: zero, an identity), a clip prior's strength head (``--mefm-clip-prior``: zero) and the
    shoulder features' layer (``--mefm-shoulder``: zero). A wider
    MEFM global branch (``--mefm-global-width``) gets ``init``'s narrower one by :func:`widen`, so the network keeps
    ``init``'s function. Returns the names of what kept ``net``'s initialisation."""
    src, dst = init.state_dict(), net.state_dict()
    if init.preset.global_width > net.preset.global_width:
        raise ValueError(f"--init {path}: the weights' MEFM global branch has {init.preset.global_width} channels, "
                         f"the network's {net.preset.global_width}: pass --mefm-global-width {init.preset.global_width}")
    if init.preset.global_width < net.preset.global_width:
        src = dict(src)
        for k in dst:
            if k.startswith(GLOBAL_BRANCH) and k in src and src[k].shape != dst[k].shape:
                src[k] = widen(src[k], dst[k])
        print(f"--init {path}: MEFM global branch {init.preset.global_width} -> {net.preset.global_width} channels; "
              f"the new ones start uncoupled", file=sys.stderr)
    heads = ("mefm.mask_head.", "mefm.coef_head.") if init.preset.fusion != net.preset.fusion else ()
    fresh = sorted(k for k in dst if k not in src or src[k].shape != dst[k].shape or k.startswith(heads))
    extra = sorted(k for k in src if k not in dst)
    # new context layers, a new clip prior's strength, new shoulder features and ring maps start at zero (identities)
    added = [k for k in fresh if k.startswith(("mefm.context.", "mefm.prior_head.", "mefm.shoulder_fc.",
                                               "mefm.ring_fc.")) and k not in src]
    others = [k for k in fresh if k not in added]
    if init.preset.mefm_context > net.preset.mefm_context:
        raise ValueError(f"--init {path}: the weights have {init.preset.mefm_context} MEFM context convolutions, the "
                         f"network {net.preset.mefm_context}: pass --mefm-context {init.preset.mefm_context}")
    if init.preset.mefm_clip_prior not in (0, net.preset.mefm_clip_prior):
        raise ValueError(f"--init {path}: the weights' clip prior has radius {init.preset.mefm_clip_prior}, the "
                         f"network's {net.preset.mefm_clip_prior}: pass --mefm-clip-prior {init.preset.mefm_clip_prior}")
    if init.preset.mefm_shoulder and not net.preset.mefm_shoulder:
        raise ValueError(f"--init {path}: the weights read the shoulder features, the network does not: pass "
                         f"--mefm-shoulder")
    if init.preset.mefm_ring not in (0, net.preset.mefm_ring):
        raise ValueError(f"--init {path}: the weights' ring maps have half-width {init.preset.mefm_ring}, the "
                         f"network's {net.preset.mefm_ring}: pass --mefm-ring {init.preset.mefm_ring}")
    if init.preset.fusion == net.preset.fusion and (others or extra):
        raise ValueError(f"--init {path}: the weights do not fit the network ({fresh + extra})")
    net.load_state_dict({k: v for k, v in src.items() if k in dst and k not in fresh}, strict=False)
    if init.preset.fusion == net.preset.fusion == "residual" and init.preset.boost != net.preset.boost:
        # the gain's gate meant another thing in ``init`` (docs/model.md, "The boost"): it starts shut (zero)
        with torch.no_grad():
            net.mefm.mask_head.weight[2].zero_()
            net.mefm.mask_head.bias[2].zero_()
        print(f"--init {path}: boost {init.preset.boost} -> {net.preset.boost}; the gain's gate starts at zero",
              file=sys.stderr)
    if added:
        print(f"--init {path}: new MEFM layers start at zero (context {init.preset.mefm_context} -> "
              f"{net.preset.mefm_context}, clip prior {init.preset.mefm_clip_prior} -> {net.preset.mefm_clip_prior}, "
              f"shoulder {init.preset.mefm_shoulder} -> {net.preset.mefm_shoulder}, ring {init.preset.mefm_ring} -> "
              f"{net.preset.mefm_ring}): "
              f"{', '.join(added)}", file=sys.stderr)
    if others:
        print(f"--init {path}: {init.preset.fusion} -> {net.preset.fusion} fusion; freshly initialised: "
              f"{', '.join(others)}", file=sys.stderr)
    return fresh


@torch.no_grad()
def validate(net: SITMNet, dataset, device: torch.device, n: int, sheet: Path | None = None) -> dict[str, float]:
    """Mean mu-law L1 (Eq. 15) and mu-law PSNR of the HDR, and PSNR of the exposure images, on ``n`` images."""
    net.eval()
    stats = {"val_hdr_l1": 0.0, "val_mu_psnr": 0.0, "val_up_psnr": 0.0, "val_down_psnr": 0.0}
    rows = []
    count = min(n, len(dataset))
    for i in range(count):
        item = dataset[i]
        ldr = item["ldr"][None].to(device)
        h, w = ldr.shape[-2:]
        pre = ops.pre(ldr, stride=net.stride)
        out = net(*pre)
        hdr = ops.post(out.masks, pre.image, out.image_up, out.image_down, out.coef, h, w, fusion=net.preset.fusion)
        gt = item["hdr"][None].to(device)
        tm, tg = ops.mu_law(hdr), ops.mu_law(gt)
        stats["val_hdr_l1"] += float((tm - tg).abs().mean())
        stats["val_mu_psnr"] += float(-10 * torch.log10(((tm - tg) ** 2).mean().clamp_min(1e-12)))
        for key, pred in (("up", out.image_up), ("down", out.image_down)):
            ref = item[key][None].to(device)
            mse = ((pred[..., :h, :w] - ref) ** 2).mean().clamp_min(1e-12)
            stats[f"val_{key}_psnr"] += float(-10 * torch.log10(mse))
        if sheet is not None and i < 4:
            to_np = lambda t: t[0].permute(1, 2, 0).float().cpu().numpy()  # noqa: E731
            g = to_np(gt)
            lum = g @ np.array([0.2126, 0.7152, 0.0722], np.float32)
            ev = float(np.log2(0.18 / np.exp(np.mean(np.log(lum + 1e-6 * max(float(lum.max()), 1e-12))))))
            tm = lambda a: tonemap_preview(a, ev=ev).astype(np.float32) / 255.0  # noqa: E731  same exposure for both
            rows.append(np.concatenate([to_np(ldr), tm(to_np(hdr)), tm(g)], axis=1))
    net.train()
    if sheet is not None and rows:
        width = max(r.shape[1] for r in rows)
        rows = [np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0))) for r in rows]
        write_png(sheet, np.clip(np.concatenate(rows, axis=0), 0, 1), bits=8)
    return {k: v / max(1, count) for k, v in stats.items()}


# ---------------------------------------------------------------------------------------------- the trainer

LOG_COLUMNS = ("step", "stage", "lr", "loss", "prog", "gan", "hdr", "d_loss", "grad_norm", "samples_per_s", "elapsed_s")
LOSS_NAMES = ("loss", "prog", "gan", "hdr", "d_loss", "grad_norm")  # grad_norm: before --grad-clip


class Trainer:
    """One training run of ``cfg``: set up (or resumed from ``OUT/ckpt``) when made; :meth:`run` trains it.

    The parts: :meth:`feed` (the next batch, with its labels, on the device), :meth:`step` (one update of the
    network and of the discriminator), :meth:`validate` (the val split's scores and contact sheet, into the
    card) and :meth:`save` (checkpoint and card, each file atomically). ``steps`` counts the steps done."""

    def __init__(self, cfg: TrainConfig):
        from sitm_training.data import SampleDataset, load_manifest

        self.cfg = cfg
        self.dist = d = _Dist(cfg.run.device)
        self.device = d.device
        if cfg.run.threads:
            torch.set_num_threads(cfg.run.threads)
        torch.manual_seed(cfg.run.seed + d.rank)
        self.run_dir = Path(cfg.run.out)
        self.ckpt = self.run_dir / "ckpt"
        if self.run_dir.resolve() == Path(cfg.data.root).resolve() or (self.run_dir / "manifest.json").exists():
            raise ValueError(f"--out {cfg.run.out}: is a data set; give a run folder of its own")

        # data
        manifest = load_manifest(cfg.data.root)
        self.train_set = SampleDataset(cfg.data.root, "train", crop=cfg.data.crop, augment=True, seed=cfg.run.seed,
                                       up_ev_max=cfg.data.up_ev_max)
        self.val_set = SampleDataset(cfg.data.root, "val", crop=None, augment=False, up_ev_max=cfg.data.up_ev_max)
        if len(self.train_set) == 0:
            raise ValueError(f"{cfg.data.root}: the train split is empty")
        sampler = self._sampler()
        self.loader = DataLoader(self.train_set, batch_size=cfg.data.batch, shuffle=sampler is None, sampler=sampler,
                                 num_workers=cfg.data.workers, drop_last=True, persistent_workers=cfg.data.workers > 0,
                                 generator=torch.Generator().manual_seed(cfg.run.seed))
        if len(self.loader) == 0:  # drop_last: no full batch, and _batches would look for one forever
            per = len(sampler) if sampler is not None else len(self.train_set)
            raise ValueError(f"--batch {cfg.data.batch} is more than the {per} training samples "
                             f"{'each process draws per epoch' if d.world > 1 else 'of ' + str(cfg.data.root)}: "
                             "lower --batch")

        # model, losses, optimisers
        self.net = SITMNet(cfg.model.network_preset()).to(self.device)
        self.disc = (MaskAwareDiscriminator(width=cfg.model.disc_width, max_width=cfg.model.disc_max_width)
                     .to(self.device) if cfg.loss.gan else None)
        self.perceptual = VGGPerceptual(cfg.loss.vgg).to(self.device)
        self.criterion = SITMLoss(self.perceptual, cfg.loss.weights())
        # --camera-aux: a linear probe of g (its learned entries, and the residual fusion's two exposure gains) -> the
        # recipe's families
        self.camera_families = tuple((manifest.get("recipe") or {}).get("camera", {}).get("responses") or ())
        self.camera_probe = None
        if cfg.loss.camera_aux > 0:
            if len(self.camera_families) < 2:
                raise ValueError(f"--camera-aux: {cfg.data.root}'s recipe names {len(self.camera_families)} camera "
                                 "response families; the probe needs at least two to tell apart")
            width = self.net.preset.global_width + (2 if self.net.preset.fusion == "residual" else 0)
            self.camera_probe = torch.nn.Linear(width, len(self.camera_families)).to(self.device)
        if cfg.loss.hdr_clip_ring != 1.0 and not set(cfg.loss.hdr_clip_ring_families) & set(self.camera_families):
            raise ValueError(f"--hdr-clip-ring: {cfg.data.root}'s recipe has none of the camera families "
                             f"{', '.join(cfg.loss.hdr_clip_ring_families)} (it has "
                             f"{', '.join(self.camera_families) or 'none'}), so the option would change nothing")
        self.opt_g = torch.optim.Adam(self._param_groups(), lr=cfg.optim.lr, betas=cfg.optim.betas)
        self.opt_d = (torch.optim.Adam(self.disc.parameters(), lr=cfg.optim.lr, betas=cfg.optim.betas)
                      if self.disc is not None else None)

        self.steps, self.epoch = self._restore()
        if cfg.model.freeze_exposure:
            if self.steps < cfg.optim.stage1_steps:
                raise ValueError("--freeze-exposure fine-tunes the MEFM in stage 2; stage 1 trains only the exposure "
                                 "models")
            for p in self.net.exposure_parameters():
                p.requires_grad_(False)
        if cfg.model.fixed_curve:
            hold_curve_fixed(self.net)
        if d.main:  # everything above is checked: only now is the run folder made
            self.ckpt.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "val").mkdir(exist_ok=True)
        self.gmodel = d.wrap(_Stages(self.net))
        self.gdisc = d.wrap(self.disc) if self.disc is not None else None
        self.gprobe = d.wrap(self.camera_probe) if self.camera_probe is not None else None
        self.use_amp = cfg.optim.amp and self.device.type == "cuda"
        self.amp_dtype = torch.bfloat16 if self.use_amp and torch.cuda.is_bf16_supported() else torch.float16
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp and self.amp_dtype == torch.float16)
        self.card = self._card(manifest)
        self.batches = _batches(self.loader, self.epoch)
        self.stop_requested = False

    # -- set-up

    def _sampler(self):
        cfg, d = self.cfg, self.dist
        if cfg.data.oversample_under != 1.0 or cfg.data.oversample_real != 1.0 or cfg.data.families:
            if d.world > 1:
                raise ValueError("--oversample-under/--oversample-real/--families are not supported with several "
                                 "processes (torchrun) yet")
            weights = sampling_weights(self.train_set, cfg.data.oversample_under, cfg.data.oversample_real,
                                       cfg.data.families)
            return WeightedRandomSampler(weights,
                                         len(self.train_set), replacement=True,
                                         generator=torch.Generator().manual_seed(cfg.run.seed))
        if d.world > 1:
            return DistributedSampler(self.train_set, d.world, d.rank, shuffle=True, seed=cfg.run.seed)
        return None

    def _param_groups(self) -> list[dict]:
        """One group, or with ``--coef-lr-mult`` / ``--prior-lr-mult`` one more for each: the MEFM's coefficient
        head, the clip prior's strength head and the ring maps' layer, at ``lr_mult`` times the rate (:meth:`step` sets each group's ``lr``
        from the schedule times its ``lr_mult``). Without them one group, as every checkpoint before the options
        has (its optimizer state resumes)."""
        heads = [(self.net.mefm.coef_head, self.cfg.optim.coef_lr_mult)]
        if self.net.preset.mefm_clip_prior:
            heads.append((self.net.mefm.prior_head, self.cfg.optim.prior_lr_mult))
        if self.net.preset.mefm_ring:  # the ring maps' layer: like the prior's head, it starts at zero
            heads.append((self.net.mefm.ring_fc, self.cfg.optim.prior_lr_mult))
        extra = [{"params": list(head.parameters()), "lr_mult": mult} for head, mult in heads if mult != 1.0]
        ids = {id(p) for group in extra for p in group["params"]}
        groups = [{"params": [p for p in self.net.parameters() if id(p) not in ids], "lr_mult": 1.0}, *extra]
        if self.camera_probe is not None:  # --camera-aux: the training-only probe, last, at its own rate
            groups.append({"params": list(self.camera_probe.parameters()), "lr_mult": CAMERA_PROBE_LR_MULT})
        return groups

    def _restore(self) -> tuple[int, int]:
        """Resume from ``OUT/ckpt`` (its stored config must be of this preset and fusion), or start from
        ``--init``'s weights, or from scratch: ``(steps done, epoch)``."""
        cfg, ckpt = self.cfg, self.ckpt
        state_path = ckpt / "state.json"
        if not state_path.exists():
            if cfg.model.init:
                init = load_weights(cfg.model.init)
                if init.preset.name != cfg.model.preset:
                    raise ValueError(f"--init {cfg.model.init}: preset {init.preset.name!r}, not {cfg.model.preset!r}")
                load_init(self.net, init, cfg.model.init)
            return 0, 0
        state = json.loads(state_path.read_text())
        before = stored_config(state["config"], str(state_path))
        # what the network's shapes and meaning follow, and the optimizer's parameter groups
        for group, key in (("model", "preset"), ("model", "fusion"), ("model", "boost"), ("model", "mefm_context"),
                           ("model", "mefm_global_width"), ("model", "mefm_clip_prior"), ("model", "mefm_shoulder"),
                           ("model", "mefm_ring"), ("model", "fixed_curve"),
                           ("optim", "coef_lr_mult"), ("optim", "prior_lr_mult"), ("loss", "camera_aux")):
            was, now = getattr(getattr(before, group), key), getattr(getattr(cfg, group), key)
            if was != now:
                raise ValueError(f"{self.run_dir}: the checkpoint's --{key.replace('_', '-')} is {was!r}, not {now!r}")
        self.net.load_state_dict(load_weights(ckpt / "model.safetensors").state_dict())
        if self.camera_probe is not None:
            from safetensors.torch import load_file

            self.camera_probe.load_state_dict(load_file(str(ckpt / "camera_probe.safetensors"), device=str(self.device)))
        optim = torch.load(ckpt / "optim.pt", map_location=self.device, weights_only=True)
        self.opt_g.load_state_dict(optim["g"])
        if self.disc is not None and (ckpt / "disc.safetensors").exists():
            from safetensors.torch import load_file

            self.disc.load_state_dict(load_file(str(ckpt / "disc.safetensors"), device=str(self.device)))
            if optim.get("d") is not None:
                self.opt_d.load_state_dict(optim["d"])
        steps = int(state["step"])
        if self.dist.main:
            print(f"resuming {self.run_dir} at step {steps}", file=sys.stderr)
        return steps, int(state.get("epoch", 0))

    def _card(self, manifest: dict[str, Any]) -> dict[str, Any]:
        """The run card; on resume it keeps the earlier card's time, losses and validation, and records in
        ``history`` which options this resume changed."""
        from sitm_training.data.source_tables import card_sources

        cfg = self.cfg
        card: dict[str, Any] = {
            "preset": self.net.preset.to_dict(), "config": cfg.to_dict(), "seed": cfg.run.seed,
            "git_commit": git_commit(),
            "data": {"root": os.path.abspath(cfg.data.root), "recipe": manifest.get("recipe"),
                     "recipe_hash": manifest.get("recipe_hash"), "sources": card_sources(manifest)},
            "perceptual": self.perceptual.kind, "torch": torch.__version__, "device": str(self.device),
            "world_size": self.dist.world,
            "init": ({"path": os.path.abspath(cfg.model.init), "sha256": sha256_file(Path(cfg.model.init))}
                     if cfg.model.init else None),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "train_seconds": 0.0,
        }
        if self.camera_probe is not None:  # the classes of --camera-aux's probe, in its output order
            card["camera_aux"] = {"families": list(self.camera_families)}
        path = self.run_dir / "card.json"
        if not path.exists():
            return card
        old = json.loads(path.read_text())
        card["train_seconds"] = old.get("train_seconds", 0.0)
        card["started"] = old.get("started", card["started"])
        for k in ("losses", "validation", "step", "history"):
            if k in old:
                card[k] = old[k]
        as_stored = lambda c: json.loads(json.dumps(c.to_dict()))  # noqa: E731  (tuples become lists)
        now, before = as_stored(cfg), as_stored(stored_config(old.get("config", {}), str(path)))
        changed = {k: [before[k], now[k]] for k in sorted(now) if k != "out" and before[k] != now[k]}
        if changed:  # resumed with other options: keep what the earlier steps were trained with
            card.setdefault("history", []).append({"step": self.steps, "changed": changed})
        return card

    # -- the parts of a step

    @property
    def stage(self) -> int:
        """The stage of the next step: 1 or 2."""
        return self.cfg.optim.stage(self.steps)

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.use_amp)

    def feed(self) -> Batch:
        """The next training batch on the device; with ``--down-label input`` the ADEM's label is made from the
        input (:func:`~sitm_training.losses.input_down_label`)."""
        batch = next(self.batches)
        ldr, up, down, hdr = (batch[k].to(self.device, non_blocking=True) for k in ("ldr", "up", "down", "hdr"))
        if self.cfg.data.down_label == "input":
            down = input_down_label(ldr, down, batch["ev_down"].to(self.device))
        camera = None
        if self.camera_probe is not None:
            index = {kind: i for i, kind in enumerate(self.camera_families)}
            camera = torch.tensor([index.get(kind, -100) for kind in batch["camera"]], device=self.device)
        s_curve = None
        if self.cfg.loss.hdr_clip_ring != 1.0:
            s_curve = torch.tensor([kind in self.cfg.loss.hdr_clip_ring_families for kind in batch["camera"]],
                                   device=self.device)
        return Batch(ldr, up, down, hdr, camera, s_curve)

    def step(self, batch: Batch) -> dict[str, float]:
        """One step on ``batch``: the generator's loss of the current stage (stage 1: Eq. 12 + the adversarial
        terms on the exposure images; stage 2: Eq. 16) and one update, then one of the discriminator. Returns
        the step's losses (:data:`LOSS_NAMES`)."""
        stage = self.stage
        for group in self.opt_g.param_groups:
            group["lr"] = self.cfg.optim.lr_at(self.steps) * group.get("lr_mult", 1.0)
        camera = None
        pre = ops.pre(batch.ldr, stride=1)
        with self._autocast():
            if stage == 1:  # EAB + AUEM + ADEM on the exposure labels
                pyr_up, pyr_down = self.gmodel(1, *pre)
                up, down = pyr_up[-1].clamp(0, 1), pyr_down[-1].clamp(0, 1)
                prog = self.criterion.exposure(pyr_up, pyr_down, batch.up, batch.down)
                gan = prog.new_zeros(())
                if self.gdisc is not None:
                    gan = (mask_aware_g_loss(self.gdisc, up, batch.up, under_exposure_mask(pre.image))
                           + mask_aware_g_loss(self.gdisc, down, batch.down, over_exposure_mask(pre.image)))
                hdr = prog.new_zeros(())
                loss = prog + self.criterion.weights.lambda_gan * gan
            else:  # end to end, Eq. 16
                out, g = self.gmodel(2, *pre)
                up, down = out.image_up, out.image_down
                loss, prog, gan, hdr = self.criterion.generator(out, pre.image, batch.up, batch.down, batch.hdr,
                                                                self.gdisc, fusion=self.cfg.model.fusion,
                                                                s_curve=batch.s_curve)
                if self.gprobe is not None:  # the mean over the samples of a known family (0 when none is)
                    known = (batch.camera >= 0).sum().clamp_min(1)
                    camera = F.cross_entropy(self.gprobe(g.float()), batch.camera, ignore_index=-100,
                                             reduction="sum") / known
                    loss = loss + self.cfg.loss.camera_aux * camera
        self.opt_g.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.opt_g)  # the true gradient (a no-op without fp16 scaling), for its norm and the clip
        params = [p for group in self.opt_g.param_groups for p in group["params"] if p.grad is not None]
        if self.cfg.optim.grad_clip > 0:
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, self.cfg.optim.grad_clip))
        else:  # only measured: the gradient is left exactly as it is
            grad_norm = float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad.float())
                                                                    for p in params]))) if params else 0.0
        self.scaler.step(self.opt_g)
        self.scaler.update()
        d_loss = 0.0
        if self.gdisc is not None:
            with self._autocast():
                dl = self.criterion.discriminator(self.gdisc, _Exposures(up, down), pre.image, batch.up, batch.down)
            self.opt_d.zero_grad(set_to_none=True)
            dl.backward()
            self.opt_d.step()
            d_loss = float(dl.detach())
        self.steps += 1
        vals = {"loss": float(loss.detach()), "prog": float(prog.detach()), "gan": float(gan.detach()),
                "hdr": float(hdr.detach()), "d_loss": d_loss, "grad_norm": grad_norm}
        if camera is not None:  # --camera-aux: in the card's losses (the log's columns stay those of LOSS_NAMES)
            vals["camera"] = float(camera.detach())
        return vals

    def validate(self) -> None:
        """Score ``--val-images`` images of the val split into the card and write their contact sheet (main
        process only)."""
        if self.dist.main and len(self.val_set):
            sheet = self.run_dir / "val" / f"step{self.steps:07d}.png"
            self.card["validation"] = {"step": self.steps, **validate(self.net, self.val_set, self.device,
                                                                      self.cfg.run.val_images, sheet)}

    def save(self) -> None:
        """Checkpoint (weights, optimizer states, ``state.json``) and card, each file atomically (main process)."""
        if not self.dist.main:
            return
        save_weights(self.net, self.ckpt / "model.safetensors", metadata={"step": str(self.steps)})
        if self.disc is not None:
            from safetensors.torch import save

            tensors = {k: v.detach().cpu().contiguous() for k, v in self.disc.state_dict().items()}
            atomic_write(self.ckpt / "disc.safetensors", save(tensors))
        if self.camera_probe is not None:
            from safetensors.torch import save

            tensors = {k: v.detach().cpu().contiguous() for k, v in self.camera_probe.state_dict().items()}
            atomic_write(self.ckpt / "camera_probe.safetensors", save(tensors))
        optim = {"g": self.opt_g.state_dict(), "d": self.opt_d.state_dict() if self.opt_d else None}
        atomic_write(self.ckpt / "optim.pt", lambda f: torch.save(optim, f))
        state = {"step": self.steps, "epoch": self.epoch, "stage": self.cfg.optim.stage(self.steps),
                 "config": self.cfg.to_dict()}
        atomic_write(self.ckpt / "state.json", _json_bytes(state))
        atomic_write(self.run_dir / "card.json", _json_bytes(self.card))

    # -- the loop

    def _on_signal(self, signum, frame) -> None:
        self.stop_requested = True

    def run(self) -> dict[str, Any]:
        """Train to ``--stage1-steps`` + ``--stage2-steps``, or until SIGINT/SIGTERM or the end of ``--max-seconds``;
        log, validate and checkpoint on the way and save at the end. Returns the card."""
        cfg, d = self.cfg, self.dist
        handlers = ({s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
                    if d.main else {})
        columns = LOG_COLUMNS  # a run resumed from an earlier trainer's log keeps that log's columns
        if d.main and (self.run_dir / "log.csv").is_file():
            with open(self.run_dir / "log.csv", newline="") as f:
                columns = tuple(next(csv.reader(f), None) or LOG_COLUMNS)
        log_file = open(self.run_dir / "log.csv", "a", newline="") if d.main else None
        writer = csv.writer(log_file) if log_file else None
        if log_file and log_file.tell() == 0:
            writer.writerow(LOG_COLUMNS)
        from tqdm import tqdm

        bar = tqdm(total=cfg.optim.total_steps, initial=self.steps, disable=not d.main, dynamic_ncols=True,
                   desc=f"train {cfg.model.preset}")
        t_start = t_last = time.perf_counter()
        n_last = 0
        avg: dict[str, float] = {}
        first = self.steps
        try:
            while self.steps < cfg.optim.total_steps and not self.stop_requested:
                if cfg.run.max_seconds is not None and time.perf_counter() - t_start >= cfg.run.max_seconds:
                    self.card["stopped"] = {"reason": "max_seconds", "max_seconds": cfg.run.max_seconds,
                                            "step": self.steps}
                    break
                stage = self.stage
                batch = self.feed()
                vals = self.step(batch)
                n_last += batch.ldr.shape[0] * d.world
                for k, v in vals.items():
                    avg[k] = v if k not in avg else 0.95 * avg[k] + 0.05 * v
                bar.update(1)
                if self.steps % cfg.run.log_every == 0 and d.main:
                    now = time.perf_counter()
                    sps = n_last / (now - t_last)
                    self.card["train_seconds"] += now - t_last
                    t_last, n_last = now, 0
                    bar.set_postfix(stage=stage, loss=f"{avg['loss']:.4f}", hdr=f"{avg['hdr']:.4f}", sps=f"{sps:.1f}")
                    row = {"step": self.steps, "stage": stage, "lr": f"{cfg.optim.lr_at(self.steps):.3g}",
                           **{k: f"{vals[k]:.6g}" for k in LOSS_NAMES}, "samples_per_s": f"{sps:.2f}",
                           "elapsed_s": f"{self.card['train_seconds']:.1f}"}  # training seconds, over resumes too
                    writer.writerow([row.get(c, "") for c in columns])
                    log_file.flush()
                    self.card["losses"] = {k: round(v, 6) for k, v in avg.items()}
                    self.card["step"] = self.steps
                if self.steps % cfg.run.val_every == 0:
                    self.validate()
                if self.steps % cfg.run.ckpt_every == 0:
                    self.save()
                if self.steps % len(self.loader) == 0:
                    self.epoch += 1
            if (self.steps > first and self.steps >= cfg.optim.total_steps and self.steps % cfg.run.val_every
                    and not self.stop_requested):
                self.validate()  # the last step, when --val-every skipped it: the card's validation is these weights'
        finally:
            bar.close()
            if d.main:
                self.card["train_seconds"] += time.perf_counter() - t_last
                self.card["step"] = self.steps
                self.save()
                log_file.close()
            for s, h in handlers.items():
                signal.signal(s, h)
            d.close()
        return self.card


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Train (or resume) the run ``cfg`` describes; returns its card."""
    return Trainer(cfg).run()


def main(argv: list[str] | None = None) -> int:
    """``python -m sitm_training.train``: 0 trained (or stopped by --max-seconds with a checkpoint); a mistake in
    the options, the data or the files they name is one ``error:`` line and exit status 2, with nothing written."""
    from safetensors import SafetensorError

    from sitm_trt.errors import WeightsError

    try:
        cfg = config_from_args(argv, description=__doc__)
        trainer = Trainer(cfg)
    except (ValueError, OSError, WeightsError, SafetensorError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    card = trainer.run()
    print(json.dumps({k: card.get(k) for k in ("step", "losses", "validation", "train_seconds", "perceptual")}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
