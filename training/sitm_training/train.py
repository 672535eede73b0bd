"""The trainer: ``python -m sitm_training.train --data DIR --out RUN [...]`` (or ``torchrun ... -m sitm_training.train``).

Two stages (Sec. 3.7, 4.1): stage 1 trains EAB + AUEM + ADEM (CMAB-linked) on the optimal exposure labels
with the progressive loss (Eq. 12) and the mask-aware adversarial loss (Eq. 13-14); stage 2 trains the whole
network end to end with the HDR loss added (Eq. 16). Adam, lr 2e-4 as in the paper; our other choices are
the defaults below and are written to the run card.

A run folder holds: ``card.json`` (the run card: preset, data recipe, seed, git commit, perceptual loss
kind, the options, the latest losses and validation), ``log.csv`` (one row per logged step), ``ckpt/``
(``model.safetensors`` + ``disc.safetensors`` weights, ``optim.pt`` optimizer states, ``state.json`` step and
stage; all written atomically) and ``val/`` (contact sheets: input | result | ground truth, tone mapped alike).
Re-running the same command resumes from the checkpoint. SIGINT/SIGTERM save a checkpoint before exiting, and so
does the end of a ``--max-seconds`` wall-clock budget (the card then says ``stopped``).
Several GPUs: ``torchrun --nproc_per_node N -m sitm_training.train ...`` (DistributedDataParallel).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator, NamedTuple

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler, WeightedRandomSampler

from sitm_trt import reference as ops
from sitm_trt.media.io import tonemap_preview, write_bytes_atomic, write_png
from sitm_trt.model import SITMNet, get_preset, save_weights
from sitm_trt.model.serialization import load_weights
from sitm_trt.weights import sha256_file

from .discriminator import MaskAwareDiscriminator
from .losses import (DOWN_LABELS, MASK_PRIOR_SCOPES, LossWeights, SITMLoss, VGGPerceptual, input_down_label,
                     mask_aware_g_loss)
from .masks import over_exposure_mask, under_exposure_mask

__all__ = ["TrainConfig", "train", "main"]


@dataclasses.dataclass
class TrainConfig:
    data: str
    out: str
    preset: str = "compact"
    fusion: str = "paper"  # Preset.fusion: "paper" (Eq. 7-8) or "residual" (docs/model.md, "The residual fusion")
    stage1_steps: int = 2000
    stage2_steps: int = 4000
    batch: int = 8
    crop: int = 128
    lr: float = 2e-4  # Sec. 4.1
    lr_min: float = 1e-5  # cosine decay over stage 2 (our choice)
    betas: tuple[float, float] = (0.9, 0.999)
    gan: bool = True
    disc_width: int = 16
    disc_max_width: int = 64
    vgg: str | None = None  # torchvision VGG-16 ImageNet state_dict; None = SSIM substitute (warned)
    device: str = "cpu"
    amp: bool = True  # bf16/fp16 autocast on CUDA only
    workers: int = 2
    seed: int = 0
    log_every: int = 10
    val_every: int = 250
    ckpt_every: int = 100
    val_images: int = 8
    threads: int = 0  # torch intra-op threads on the CPU (0 = torch default)
    hdr_pu21: float = 0.0  # weight of losses.pu21_hdr_loss added to Eq. 15 (0 = the paper's loss)
    hdr_grad: float = 0.0  # weight of losses.pu21_gradient_loss added to Eq. 15 (0 = the paper's loss)
    hdr_clip: float = 0.0  # weight of losses.pu21_clipped_loss added to Eq. 15 (0 = the paper's loss)
    hdr_psnr: float = 0.0  # weight of losses.pu21_psnr_loss (minus per-image PU21-PSNR in dB) (0 = the paper's loss)
    hdr_align: bool = False  # the PU21 terms compare after the evaluation's scale alignment (losses.align_scale_torch)
    mask_prior: float = 0.0  # weight of losses.mask_prior_loss (0 = the paper's loss)
    mask_prior_scope: str = "well"  # where it acts: "well" (well-exposed pixels), "under" (under-exposed samples)
    #                                 or "down" (no M_down below the highlights)
    down_label: str = "data"  # the ADEM's label: "data" (the data set's) or "input" (losses.input_down_label)
    up_ev_max: float | None = None  # shoot the exposure-up labels of more EV again at this EV (data.relabel_up)
    oversample_under: float = 1.0  # draw under-exposed training samples this many times as often (1 = uniform)
    freeze_exposure: bool = False  # stage 2 trains the MEFM only (EAB, AUEM, ADEM fixed): a fusion fine-tune
    init: str | None = None  # start a new run from these weights (fresh optimizer, step 0): a fine-tune
    max_seconds: float | None = None  # wall-clock budget of this process: stop, checkpoint and write the card

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


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


def _atomic_json(path: Path, obj: Any) -> None:
    write_bytes_atomic(path, json.dumps(obj, indent=2, default=str).encode())


def _atomic_torch_save(path: Path, obj: Any) -> None:
    buf = io.BytesIO()
    torch.save(obj, buf)
    write_bytes_atomic(path, buf.getvalue())


def _atomic_weights(path: Path, module: torch.nn.Module, **kw: Any) -> None:
    tmp = path.with_name(path.stem + ".tmp.safetensors")
    save_weights(module, tmp, **kw) if isinstance(module, SITMNet) else _save_plain(module, tmp)
    os.replace(tmp, path)


def _save_plain(module: torch.nn.Module, path: Path) -> None:
    from safetensors.torch import save_file

    save_file({k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}, str(path))


class _Dist:
    """DistributedDataParallel set-up from torchrun's environment (a no-op for one process)."""

    def __init__(self, device: str):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.device = torch.device(device)
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
    """The network's two training passes behind one forward(), so DistributedDataParallel sees every call."""

    def __init__(self, net: SITMNet):
        super().__init__()
        self.net = net

    def forward(self, stage: int, *pre: torch.Tensor):
        return self.net.forward_exposure(*pre) if stage == 1 else self.net.forward_train(*pre)


def _batches(loader: DataLoader, start_epoch: int) -> Iterator[dict[str, Any]]:
    epoch = start_epoch
    while True:
        if isinstance(loader.sampler, DistributedSampler):
            loader.sampler.set_epoch(epoch)
        if hasattr(loader.dataset, "set_epoch"):
            loader.dataset.set_epoch(epoch)
        yield from loader
        epoch += 1


def _lr_at(cfg: TrainConfig, step: int) -> float:
    if step < cfg.stage1_steps:
        return cfg.lr
    t = (step - cfg.stage1_steps) / max(1, cfg.stage2_steps)
    return cfg.lr_min + 0.5 * (cfg.lr - cfg.lr_min) * (1 + math.cos(math.pi * min(1.0, t)))


def exposure_weights(dataset: SampleDataset, oversample_under: float) -> list[float]:
    """Sampling weight per training sample: ``oversample_under`` for the under-exposed ones (the camera
    ``meta`` of each sample says ``exposure.mode``), 1 for the rest."""
    from sitm_training.data import load_sample_meta, under_exposed

    weights = []
    for r in dataset.records:
        under = under_exposed(load_sample_meta(dataset.root / r["file"]))
        if under is None:
            raise ValueError(f"{dataset.root / r['file']}: the sample's meta records no exposure mode, which "
                             "--oversample-under and --mask-prior-scope under need")
        weights.append(float(oversample_under) if under else 1.0)
    return weights


def load_init(net: SITMNet, init: SITMNet, path: str) -> list[str]:
    """Copy ``init``'s weights into ``net``. Between the two fusions (``--fusion residual --init`` of
    paper-fusion weights) the MEFM's mask and coefficient heads keep ``net``'s initialisation (zero: the residual
    heads start at the linearized input), whatever their shapes; returns their names."""
    src, dst = init.state_dict(), net.state_dict()
    heads = ("mefm.mask_head.", "mefm.coef_head.") if init.preset.fusion != net.preset.fusion else ()
    fresh = sorted(k for k in dst if k not in src or src[k].shape != dst[k].shape or k.startswith(heads))
    extra = sorted(k for k in src if k not in dst)
    if init.preset.fusion == net.preset.fusion and (fresh or extra):
        raise ValueError(f"--init {path}: the weights do not fit the network ({fresh + extra})")
    net.load_state_dict({k: v for k, v in src.items() if k in dst and k not in fresh}, strict=False)
    if fresh:
        print(f"--init {path}: {init.preset.fusion} -> {net.preset.fusion} fusion; freshly initialised: "
              f"{', '.join(fresh)}", file=sys.stderr)
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


def train(cfg: TrainConfig) -> dict[str, Any]:
    from sitm_training.data import SampleDataset, load_manifest

    d = _Dist(cfg.device)
    device = d.device
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed + d.rank)
    if cfg.crop % get_preset(cfg.preset).stride:
        raise ValueError(f"--crop must be a multiple of the network stride {get_preset(cfg.preset).stride}")
    run_dir = Path(cfg.out)
    ckpt = run_dir / "ckpt"
    if d.main:
        ckpt.mkdir(parents=True, exist_ok=True)
        (run_dir / "val").mkdir(exist_ok=True)

    manifest = load_manifest(cfg.data)
    if cfg.max_seconds is not None and not cfg.max_seconds > 0:
        raise ValueError(f"--max-seconds must be > 0, got {cfg.max_seconds}")
    if cfg.up_ev_max is not None and not cfg.up_ev_max > 0:
        raise ValueError(f"--up-ev-max must be > 0 EV, got {cfg.up_ev_max}")
    train_set = SampleDataset(cfg.data, "train", crop=cfg.crop, augment=True, seed=cfg.seed, up_ev_max=cfg.up_ev_max)
    val_set = SampleDataset(cfg.data, "val", crop=None, augment=False, up_ev_max=cfg.up_ev_max)
    if len(train_set) == 0:
        raise ValueError(f"{cfg.data}: the train split is empty")
    if cfg.down_label not in DOWN_LABELS:
        raise ValueError(f"--down-label must be one of {DOWN_LABELS}, got {cfg.down_label!r}")
    if cfg.mask_prior_scope not in MASK_PRIOR_SCOPES:
        raise ValueError(f"--mask-prior-scope must be one of {MASK_PRIOR_SCOPES}, got {cfg.mask_prior_scope!r}")
    if cfg.mask_prior and cfg.mask_prior_scope == "under":  # fail before the first step, not at it
        from sitm_training.data import load_sample_meta, under_exposed

        if under_exposed(load_sample_meta(train_set.root / train_set.records[0]["file"])) is None:
            raise ValueError(f"{cfg.data}: --mask-prior-scope under needs each sample's camera exposure mode "
                             "(meta['exposure']['mode']), which this data set does not record")
    sampler = DistributedSampler(train_set, d.world, d.rank, shuffle=True, seed=cfg.seed) if d.world > 1 else None
    if cfg.oversample_under != 1.0:
        if not cfg.oversample_under > 0:
            raise ValueError(f"--oversample-under must be > 0, got {cfg.oversample_under}")
        if d.world > 1:
            raise ValueError("--oversample-under is not supported with several processes (torchrun) yet")
        sampler = WeightedRandomSampler(exposure_weights(train_set, cfg.oversample_under), len(train_set),
                                        replacement=True, generator=torch.Generator().manual_seed(cfg.seed))
    loader = DataLoader(train_set, batch_size=cfg.batch, shuffle=sampler is None, sampler=sampler,
                        num_workers=cfg.workers, drop_last=True, persistent_workers=cfg.workers > 0,
                        generator=torch.Generator().manual_seed(cfg.seed))

    net = SITMNet(dataclasses.replace(get_preset(cfg.preset), fusion=cfg.fusion)).to(device)
    disc = MaskAwareDiscriminator(width=cfg.disc_width, max_width=cfg.disc_max_width).to(device) if cfg.gan else None
    perceptual = VGGPerceptual(cfg.vgg).to(device)
    criterion = SITMLoss(perceptual, LossWeights(lambda_pu21=cfg.hdr_pu21, lambda_grad=cfg.hdr_grad, lambda_clip=cfg.hdr_clip,
                                                 lambda_psnr=cfg.hdr_psnr, lambda_mask=cfg.mask_prior,
                                                 mask_scope=cfg.mask_prior_scope, align=cfg.hdr_align))
    opt_g = torch.optim.Adam(net.parameters(), lr=cfg.lr, betas=cfg.betas)
    opt_d = torch.optim.Adam(disc.parameters(), lr=cfg.lr, betas=cfg.betas) if disc is not None else None

    step, epoch = 0, 0
    state_path = ckpt / "state.json"
    if state_path.exists():  # resume
        state = json.loads(state_path.read_text())
        if state.get("config", {}).get("preset") != cfg.preset:
            raise ValueError(f"{run_dir}: the checkpoint is of preset {state['config'].get('preset')!r}, not {cfg.preset!r}")
        if state.get("config", {}).get("fusion", "paper") != cfg.fusion:
            raise ValueError(f"{run_dir}: the checkpoint's fusion is {state['config'].get('fusion', 'paper')!r}, "
                             f"not {cfg.fusion!r}")
        net.load_state_dict(load_weights(ckpt / "model.safetensors").state_dict())
        optim = torch.load(ckpt / "optim.pt", map_location=device, weights_only=True)
        opt_g.load_state_dict(optim["g"])
        if disc is not None and (ckpt / "disc.safetensors").exists():
            from safetensors.torch import load_file

            disc.load_state_dict(load_file(str(ckpt / "disc.safetensors"), device=str(device)))
            if optim.get("d") is not None:
                opt_d.load_state_dict(optim["d"])
        step, epoch = int(state["step"]), int(state.get("epoch", 0))
        if d.main:
            print(f"resuming {run_dir} at step {step}", file=sys.stderr)
    elif cfg.init:
        init = load_weights(cfg.init)
        if init.preset.name != cfg.preset:
            raise ValueError(f"--init {cfg.init}: preset {init.preset.name!r}, not {cfg.preset!r}")
        load_init(net, init, cfg.init)

    if cfg.freeze_exposure:
        if step < cfg.stage1_steps:
            raise ValueError("--freeze-exposure fine-tunes the MEFM in stage 2; stage 1 trains only the exposure models")
        for p in net.exposure_parameters():
            p.requires_grad_(False)
    gmodel = d.wrap(_Stages(net))
    gdisc = d.wrap(disc) if disc is not None else None
    use_amp = cfg.amp and device.type == "cuda"
    amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)

    total = cfg.stage1_steps + cfg.stage2_steps
    card_path = run_dir / "card.json"
    card: dict[str, Any] = {
        "preset": get_preset(cfg.preset).to_dict(), "config": cfg.to_dict(), "seed": cfg.seed,
        "git_commit": git_commit(), "data": {"root": os.path.abspath(cfg.data), "recipe": manifest.get("recipe"),
                                               "recipe_hash": manifest.get("recipe_hash")},
        "perceptual": perceptual.kind, "torch": torch.__version__, "device": str(device), "world_size": d.world,
        "init": {"path": os.path.abspath(cfg.init), "sha256": sha256_file(Path(cfg.init))} if cfg.init else None,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if card_path.exists():
        old = json.loads(card_path.read_text())
        card["train_seconds"] = old.get("train_seconds", 0.0)
        card["started"] = old.get("started", card["started"])
        for k in ("losses", "validation", "step", "history"):
            if k in old:
                card[k] = old[k]
        now = json.loads(json.dumps(cfg.to_dict()))  # as the card stores it (tuples become lists)
        before = old.get("config", {})
        changed = {k: [before.get(k), now.get(k)] for k in sorted({*before, *now} - {"out"}) if before.get(k) != now.get(k)}
        if changed:  # resumed with other options: keep what the earlier steps were trained with
            card.setdefault("history", []).append({"step": step, "changed": changed})
    else:
        card["train_seconds"] = 0.0

    stop = {"now": False}

    def _on_signal(signum, _frame):
        stop["now"] = True

    old_handlers = {s: signal.signal(s, _on_signal) for s in (signal.SIGINT, signal.SIGTERM)} if d.main else {}

    def save() -> None:
        if not d.main:
            return
        _atomic_weights(ckpt / "model.safetensors", net, metadata={"step": str(step)})
        if disc is not None:
            _atomic_weights(ckpt / "disc.safetensors", disc)
        _atomic_torch_save(ckpt / "optim.pt", {"g": opt_g.state_dict(), "d": opt_d.state_dict() if opt_d else None})
        _atomic_json(state_path, {"step": step, "epoch": epoch, "stage": 1 if step < cfg.stage1_steps else 2,
                                  "config": cfg.to_dict()})
        _atomic_json(card_path, card)

    log_file = open(run_dir / "log.csv", "a", newline="") if d.main else None
    writer = csv.writer(log_file) if log_file else None
    if log_file and log_file.tell() == 0:
        writer.writerow(["step", "stage", "lr", "loss", "prog", "gan", "hdr", "d_loss", "samples_per_s", "elapsed_s"])

    from tqdm import tqdm

    bar = tqdm(total=total, initial=step, disable=not d.main, dynamic_ncols=True, desc=f"train {cfg.preset}")
    batches = _batches(loader, epoch)
    t_last, n_last, t_start = time.perf_counter(), 0, time.perf_counter()
    avg: dict[str, float] = {}
    try:
        while step < total and not stop["now"]:
            if cfg.max_seconds is not None and time.perf_counter() - t_start >= cfg.max_seconds:
                card["stopped"] = {"reason": "max_seconds", "max_seconds": cfg.max_seconds, "step": step}
                break
            stage = 1 if step < cfg.stage1_steps else 2
            for g in opt_g.param_groups:
                g["lr"] = _lr_at(cfg, step)
            batch = next(batches)
            ldr, gt_up, gt_down, gt_hdr = (batch[k].to(device, non_blocking=True) for k in ("ldr", "up", "down", "hdr"))
            if cfg.down_label == "input":
                gt_down = input_down_label(ldr, gt_down, batch["ev_down"].to(device))
            pre = ops.pre(ldr, stride=1)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp):
                if stage == 1:  # EAB + AUEM + ADEM on the exposure labels
                    pyr_up, pyr_down = gmodel(1, *pre)
                    up, down = pyr_up[-1].clamp(0, 1), pyr_down[-1].clamp(0, 1)
                    prog = criterion.exposure(pyr_up, pyr_down, gt_up, gt_down)
                    gan = prog.new_zeros(())
                    if gdisc is not None:
                        gan = (mask_aware_g_loss(gdisc, up, gt_up, under_exposure_mask(pre.image))
                               + mask_aware_g_loss(gdisc, down, gt_down, over_exposure_mask(pre.image)))
                    hdr_l = prog.new_zeros(())
                    loss = prog + criterion.weights.lambda_gan * gan
                else:  # end to end, Eq. 16
                    out = gmodel(2, *pre)
                    up, down = out.image_up, out.image_down
                    under = batch["under"].to(device) if "under" in batch else None
                    loss, prog, gan, hdr_l = criterion.generator(out, pre.image, gt_up, gt_down, gt_hdr, gdisc, under,
                                                                 fusion=cfg.fusion)
            opt_g.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt_g)
            scaler.update()
            d_loss = 0.0
            if gdisc is not None:
                with torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp):
                    dl = criterion.discriminator(gdisc, _Exposures(up, down), pre.image, gt_up, gt_down)
                opt_d.zero_grad(set_to_none=True)
                dl.backward()
                opt_d.step()
                d_loss = float(dl.detach())
            step += 1
            n_last += ldr.shape[0] * d.world
            vals = {"loss": float(loss.detach()), "prog": float(prog.detach()), "gan": float(gan.detach()),
                    "hdr": float(hdr_l.detach()), "d_loss": d_loss}
            for k, v in vals.items():
                avg[k] = v if k not in avg else 0.95 * avg[k] + 0.05 * v
            bar.update(1)
            if step % cfg.log_every == 0 and d.main:
                now = time.perf_counter()
                sps = n_last / (now - t_last)
                card["train_seconds"] += now - t_last
                t_last, n_last = now, 0
                bar.set_postfix(stage=stage, loss=f"{avg['loss']:.4f}", hdr=f"{avg['hdr']:.4f}", sps=f"{sps:.1f}")
                writer.writerow([step, stage, f"{_lr_at(cfg, step):.3g}"] + [f"{vals[k]:.6g}" for k in
                                 ("loss", "prog", "gan", "hdr", "d_loss")] + [f"{sps:.2f}", f"{now - t_start:.1f}"])
                log_file.flush()
                card["losses"] = {k: round(v, 6) for k, v in avg.items()}
                card["step"] = step
            if step % cfg.val_every == 0 and d.main and len(val_set):
                card["validation"] = {"step": step, **validate(net, val_set, device, cfg.val_images,
                                                               run_dir / "val" / f"step{step:07d}.png")}
            if step % cfg.ckpt_every == 0:
                save()
            if step % len(loader) == 0:
                epoch += 1
    finally:
        bar.close()
        if d.main:
            card["train_seconds"] += time.perf_counter() - t_last
            card["step"] = step
            save()
            if log_file:
                log_file.close()
        for s, h in old_handlers.items():
            signal.signal(s, h)
        d.close()
    return card


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m sitm_training.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = TrainConfig(data="", out="")
    p.add_argument("--data", required=True, help="a data set built by `python -m sitm_training.data build`")
    p.add_argument("--out", required=True, help="the run folder (resumed when it holds a checkpoint)")
    p.add_argument("--preset", default=defaults.preset, choices=["paper", "compact", "fast"])
    p.add_argument("--fusion", default=defaults.fusion, choices=["paper", "residual"],
                   help="how the masks and coefficients make HDR: the paper's Eq. 7-8, or the residual fusion around "
                        "the linearized input (docs/model.md); with --init of paper weights the two MEFM heads start fresh")
    for name in ("stage1_steps", "stage2_steps", "batch", "crop", "disc_width", "disc_max_width", "workers", "seed",
                 "log_every", "val_every", "ckpt_every", "val_images", "threads"):
        p.add_argument("--" + name.replace("_", "-"), type=int, default=getattr(defaults, name))
    p.add_argument("--lr", type=float, default=defaults.lr)
    p.add_argument("--lr-min", type=float, default=defaults.lr_min)
    p.add_argument("--hdr-pu21", type=float, default=defaults.hdr_pu21,
                   help="weight of an extra L1 term on PU21-encoded HDR in stage 2 (default 0: Eq. 16 as published)")
    p.add_argument("--hdr-grad", type=float, default=defaults.hdr_grad,
                   help="weight of an extra L1 term on neighbour differences of PU21-encoded HDR in stage 2 (default 0)")
    p.add_argument("--hdr-clip", type=float, default=defaults.hdr_clip,
                   help="weight of an extra PU21 L1 term over the input's over-exposed pixels only (per image, Eq. 14's "
                        "mask) in stage 2 (default 0)")
    p.add_argument("--hdr-psnr", type=float, default=defaults.hdr_psnr,
                   help="weight of minus the per-image PU21-PSNR in dB added in stage 2 (0.01: 1 dB = 0.01; default 0)")
    p.add_argument("--hdr-align", action="store_true",
                   help="the PU21 terms (--hdr-pu21/--hdr-grad/--hdr-clip/--hdr-psnr) compare after scaling H like the evaluation "
                        "does (median log-ratio over well-exposed pixels, no gradient); Eq. 15 stays absolute")
    p.add_argument("--mask-prior", type=float, default=defaults.mask_prior,
                   help="weight of a term pulling Eq. 7 towards the input where it is well exposed (default 0)")
    p.add_argument("--mask-prior-scope", default=defaults.mask_prior_scope, choices=list(MASK_PRIOR_SCOPES),
                   help="where the mask prior acts: 'well' (well-exposed pixels of every sample, default), 'under' "
                        "(everything below the highlights, in the samples of under-exposing cameras only) or 'down' "
                        "(M_down pulled to 0 below the highlights, every sample)")
    p.add_argument("--down-label", default=defaults.down_label, choices=list(DOWN_LABELS),
                   help="the exposure-down label: 'data' (the data set's, default) or 'input' (below the highlights, "
                        "the input moved by the label's EV in linear light; losses.input_down_label)")
    p.add_argument("--up-ev-max", type=float, default=defaults.up_ev_max,
                   help="exposure-up labels of more than this many EV above the input are shot again at this EV by the "
                        "sample's simulated camera (data.relabel_up); default: the data set's labels")
    p.add_argument("--oversample-under", type=float, default=defaults.oversample_under,
                   help="draw under-exposed training samples K times as often (default 1: uniform)")
    p.add_argument("--init", default=None, help="start a new run from these weights (.safetensors; fresh optimizer)")
    p.add_argument("--max-seconds", type=float, default=None,
                   help="wall-clock budget of this process, counted from the first step and checked before each "
                        "step: once spent, stop as after SIGTERM (checkpoint, card with 'stopped'); rerunning resumes. "
                        "The lr schedule still follows the step counts")
    p.add_argument("--freeze-exposure", action="store_true",
                   help="stage 2 updates only the MEFM (a fusion fine-tune from a trained checkpoint)")
    p.add_argument("--no-gan", action="store_true", help="train without the mask-aware discriminator")
    p.add_argument("--vgg", default=None, help="torchvision VGG-16 ImageNet weights (.pth) for the perceptual loss; "
                                               "without it a 1-SSIM substitute is used (and the run card says so)")
    p.add_argument("--device", default=defaults.device, help="cpu, cuda or cuda:N")
    p.add_argument("--no-amp", action="store_true", help="no mixed precision on CUDA")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    kw = {k: v for k, v in vars(args).items() if k not in ("no_gan", "no_amp")}
    cfg = TrainConfig(**kw, gan=not args.no_gan, amp=not args.no_amp)
    card = train(cfg)
    print(json.dumps({k: card.get(k) for k in ("step", "losses", "validation", "train_seconds", "perceptual")}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
