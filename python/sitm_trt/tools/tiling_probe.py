"""Tiled against whole-frame inference: seam error, peak memory and time (``python -m sitm_trt.tools.tiling_probe``).

The measurements of docs/tiling.md. A test frame (the shipped sample, or ``--image``, resized to ``--size``) is
converted whole (``predict_hdr``), with :func:`sitm_trt.runtime.tiling.infer_tiled` per ``--tile``, and with
``--naive`` also tile by tile with each tile's own global state (:func:`naive_tiles`: the seams). Each run is a
process of its own, so that its peak memory is its own: the peak resident set (``VmHWM``) is reset through
``/proc/self/clear_refs`` once the frame and the weights are loaded, and read after the run (Linux only). Each run
prints one JSON line; the tiled and naive lines also get their error against the whole frame (:func:`seam_errors`).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from sitm_trt import reference as ops
from sitm_trt.model import SITMNet, predict_hdr
from sitm_trt.runtime.tiling import Tile, default_coarse_level, default_overlap, infer_tiled, tile_grid

__all__ = ["naive_tiles", "seam_errors", "main"]


def naive_tiles(net: SITMNet, frame: Any, tile: int, overlap: int) -> np.ndarray:
    """Each window of :func:`~sitm_trt.runtime.tiling.tile_grid` through ``forward`` with its own global state
    (``predict_hdr``), cropped to its core: what tiles give without the whole frame's state.

    ``frame``: float ``(N, 3, H, W)`` or uint8/uint16 ``(H, W, 3)`` / ``(N, H, W, 3)``, torch or NumPy; each
    window is read from it (reflect-padded as the pre kernel pads), the frame is never converted whole.
    Returns float32 ``(N, 3, H, W)`` (NumPy).
    """
    x = torch.as_tensor(frame)
    hwc = x.dtype in (torch.uint8, torch.uint16)
    if hwc and x.dim() == 3:
        x = x.unsqueeze(0)
    rdim, cdim = (1, 2) if hwc else (2, 3)
    n, h, w, s = x.shape[0], x.shape[rdim], x.shape[cdim], net.stride
    out = torch.empty(n, 3, h, w)
    with torch.inference_mode():
        for t in tile_grid(ops.padded_size(h, s), ops.padded_size(w, s), tile=tile, overlap=overlap, stride=s):
            rows = ops.reflect_index(torch.arange(t.top, t.top + t.height), h)
            cols = ops.reflect_index(torch.arange(t.left, t.left + t.width), w)
            hdr = predict_hdr(net, x.index_select(rdim, rows).index_select(cdim, cols))
            ch, cw = min(t.core_height, h - t.core_top), min(t.core_width, w - t.core_left)
            if ch > 0 and cw > 0:
                r, c = t.core_top - t.top, t.core_left - t.left
                core = hdr[:, :, r : r + ch, c : c + cw]
                out[:, :, t.core_top : t.core_top + ch, t.core_left : t.core_left + cw] = core
    return out.numpy()


def seam_errors(ref: np.ndarray, hdr: np.ndarray, grid: list[Tile], band: int = 2) -> dict:
    """Max/mean absolute and relative (``|d| / max(|ref|, 1e-3)``) error of ``hdr`` against ``ref`` (both
    ``(N, 3, H, W)``), overall and within ``band`` pixels of a core boundary inside the frame (the seams) versus
    elsewhere."""
    d = np.abs(hdr.astype(np.float64) - ref.astype(np.float64))
    rel = d / np.maximum(np.abs(ref), 1e-3)
    h, w = ref.shape[-2:]
    rows, cols = np.zeros(h, bool), np.zeros(w, bool)
    for t in grid:
        for b in (t.core_top, t.core_top + t.core_height):
            if 0 < b < h:
                rows[max(0, b - band) : b + band] = True
        for b in (t.core_left, t.core_left + t.core_width):
            if 0 < b < w:
                cols[max(0, b - band) : b + band] = True
    seam = rows[:, None] | cols[None, :]
    dm = d.max(axis=(0, 1))

    def stats(m) -> dict:
        if not m.any():
            return {"max_abs": 0.0, "mean_abs": 0.0, "max_rel": 0.0}
        return {"max_abs": float(dm[m].max()), "mean_abs": float(d[..., m].mean()),
                "max_rel": float(rel.max(axis=(0, 1))[m].max())}

    return {"all": stats(np.ones_like(seam)), "seams": stats(seam), "elsewhere": stats(~seam),
            "ref_range": [float(ref.min()), float(ref.max())]}


# ---------------------------------------------------------------------------------------------------------
# One run (a child process)
# ---------------------------------------------------------------------------------------------------------


def _test_frame(image: str | None, height: int, width: int) -> np.ndarray:
    """The sample photo (or ``image``) resized to ``height x width``, uint8 HWC NumPy (a decoder's output)."""
    from sitm_trt.media import io
    from sitm_trt.samples import SAMPLE

    x = torch.from_numpy(io.read_ldr(image or str(SAMPLE))).permute(2, 0, 1)[None].float()
    x = F.interpolate(x, size=(height, width), mode="bicubic", align_corners=False)
    return x.round().clamp(0, 255 if x.max() <= 255 else 65535)[0].permute(1, 2, 0).to(torch.uint8).numpy()


def _net(weights: str, preset: str) -> SITMNet:
    if weights == "random":
        torch.manual_seed(0)
        return SITMNet(preset).eval()
    from sitm_trt.weights import load

    return load(weights).model(device="cpu").eval()


def _rss_kib(field: str) -> int:
    """``VmRSS`` (now) or ``VmHWM`` (peak since the last reset) of this process, KiB (Linux)."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def _worker(args: argparse.Namespace) -> dict:
    """One run (``args.worker``: full, tiled or naive) on the saved frame; prints and returns its JSON line."""
    if args.threads:
        torch.set_num_threads(args.threads)
    net = _net(args.weights, args.preset)
    level = default_coarse_level(net.preset, args.tile)
    if args.overlap is None:
        args.overlap = default_overlap(net.preset, level)
    frame = np.load(args.frame)
    with open("/proc/self/clear_refs", "w") as fh:  # reset the peak (VmHWM) to the current RSS
        fh.write("5")
    base = _rss_kib("VmRSS")
    info: dict = {}
    t0, c0 = time.perf_counter(), time.process_time()
    with torch.inference_mode():
        if args.worker == "full":
            hdr = predict_hdr(net, torch.from_numpy(frame)).numpy()
        elif args.worker == "naive":
            hdr = naive_tiles(net, frame, args.tile, args.overlap)
        else:
            hdr = infer_tiled(net, frame, tile=args.tile, overlap=args.overlap, info=info)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    peak = _rss_kib("VmHWM")
    np.save(args.save, hdr)
    res = {"mode": args.worker, "preset": net.preset.name, "tile": args.tile, "overlap": args.overlap,
           "coarse_level": level, "seconds": round(seconds, 1),
           "cpu_seconds": round(cpu, 1),
           "peak_rss_mib": round(peak / 1024), "rss_before_mib": round(base / 1024),  # frame, weights, torch
           "peak_increase_mib": round((peak - base) / 1024), "threads": torch.get_num_threads(),
           "tiles": info.get("tiles"), "passes": info.get("passes")}
    print(json.dumps(res))
    return res


# ---------------------------------------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """Measure tiled against whole-frame inference: seam error, peak memory (RSS, one process per run), time."""
    ap = argparse.ArgumentParser(prog="python -m sitm_trt.tools.tiling_probe", description=main.__doc__)
    ap.add_argument("--weights", default="random", help="'random' (seed 0), 'default' or a weights file")
    ap.add_argument("--preset", default="compact", help="preset of --weights random")
    ap.add_argument("--size", default="4096x3072", help="WIDTHxHEIGHT of the test frame")
    ap.add_argument("--image", default=None, help="image to resize to --size (default: the shipped sample)")
    ap.add_argument("--tile", type=int, nargs="+", default=[256, 512])
    ap.add_argument("--overlap", type=int, default=None, help="default: the preset's default_overlap")
    ap.add_argument("--naive", action="store_true", help="also run tiles with per-tile state (the seams)")
    ap.add_argument("--no-full", action="store_true", help="skip the whole-frame run (memory only)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's)")
    ap.add_argument("--json", default=None, help="write the results here")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--save", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--frame", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.width, args.height = (int(v) for v in args.size.lower().split("x"))
    if args.worker:
        args.tile = args.tile[0]
        _worker(args)
        return 0
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        np.save(f"{tmp}/frame.npy", _test_frame(args.image, args.height, args.width))
        runs = [] if args.no_full else [("full", 0)]
        runs += [(m, t) for t in args.tile for m in (("tiled", "naive") if args.naive else ("tiled",))]
        for mode, t in runs:
            cmd = [sys.executable, "-m", "sitm_trt.tools.tiling_probe", "--worker", mode,
                   "--save", f"{tmp}/{mode}{t}.npy", "--frame", f"{tmp}/frame.npy",
                   "--weights", args.weights, "--preset", args.preset, "--size", args.size,
                   "--tile", str(t or 512), "--threads", str(args.threads)]
            if args.overlap is not None:
                cmd += ["--overlap", str(args.overlap)]
            line = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
            res = json.loads(line)
            if mode != "full" and not args.no_full:
                ref, hdr = np.load(f"{tmp}/full0.npy"), np.load(f"{tmp}/{mode}{t}.npy")
                s = 16
                grid = tile_grid(ops.padded_size(args.height, s), ops.padded_size(args.width, s), tile=t,
                                 overlap=res["overlap"], stride=s)
                res["error"] = seam_errors(ref, hdr, grid)
            print(json.dumps(res), flush=True)
            results.append(res)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"args": {k: v for k, v in vars(args).items() if k not in ("worker", "save")},
                       "results": results}, fh, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
