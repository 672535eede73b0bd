"""Parameters and GFLOPs per megapixel of each sub-network, per preset.

Run ``python -m sitm_trt.model`` (``--help`` for options). FLOPs are counted by
``torch.utils.flop_counter.FlopCounterMode`` (2 per multiply-add of convolutions and matrix products;
element-wise ops, pooling and resizes are not counted) on the ``meta`` device, so no memory is allocated and
even the ``paper`` preset at 4K is counted in a second. The EAB and the MEFM global branch see a fixed
256x256 thumbnail, so their cost per frame is constant and their cost per megapixel depends on the
resolution: the table is for one frame of the given size (default 3840x2160).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

from .config import Preset, get_preset, preset_names
from .network import SITMNet

__all__ = ["SubnetCost", "count_costs", "format_table", "main"]

SUBNETS = ("eab", "auem", "adem", "mefm")


@dataclass(frozen=True)
class SubnetCost:
    preset: str
    subnet: str
    params: int
    gflops_per_frame: float
    gflops_per_mp: float


def _subtree_flops(by_module: dict[str, dict], root: str) -> int:
    """FLOPs under ``root``: the counter attributes ops to every module whose ``forward`` ran, so sum the
    outermost counted modules of the subtree (a sub-network may be driven by its parent, e.g. ``encode_pair``
    calls the encoder levels directly)."""
    keys = [k for k in by_module if k == root or k.startswith(root + ".")]
    outer = [k for k in keys if not any(k != a and k.startswith(a + ".") for a in keys)]
    return sum(sum(by_module[k].values()) for k in outer)


def count_costs(preset: Preset | str, height: int = 2160, width: int = 3840) -> list[SubnetCost]:
    """Parameters and FLOPs of each sub-network (and the total) for one ``height x width`` frame.

    The frame is padded to the network stride as the pre pass would; FLOPs per megapixel divide by the
    unpadded size.
    """
    preset = get_preset(preset)
    with torch.device("meta"):
        net = SITMNet(preset).eval()
        s = preset.stride
        hp, wp = -(-height // s) * s, -(-width // s) * s
        inputs = (
            torch.empty(1, 3, hp, wp),
            torch.empty(1, 3, hp, wp),
            torch.empty(1, 3, hp, wp),
            torch.empty(1, 2, hp, wp),
        )
        counter = FlopCounterMode(display=False, depth=None)
        with counter, torch.no_grad():
            net(*inputs)
    by_module = counter.get_flop_counts()
    mp = height * width / 1e6
    rows = []
    for name in SUBNETS:
        flops = _subtree_flops(by_module, f"SITMNet.{name}")
        params = sum(p.numel() for p in getattr(net, name).parameters())
        rows.append(SubnetCost(preset.name, name, params, flops / 1e9, flops / 1e9 / mp))
    total = counter.get_total_flops()
    params = sum(p.numel() for p in net.parameters())
    rows.append(SubnetCost(preset.name, "total", params, total / 1e9, total / 1e9 / mp))
    return rows


def format_table(rows: list[SubnetCost], height: int, width: int) -> str:
    head = f"| preset | sub-network | params | GFLOPs / frame ({width}x{height}) | GFLOPs / MP |"
    lines = [head, "| --- | --- | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(
            f"| {r.preset} | {r.subnet} | {r.params:,} | {r.gflops_per_frame:.2f} | {r.gflops_per_mp:.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m sitm_trt.model", description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", action="append", choices=preset_names(), help="preset(s) to count (default: all)")
    ap.add_argument("--height", type=int, default=2160)
    ap.add_argument("--width", type=int, default=3840)
    ap.add_argument("--json", action="store_true", help="print JSON instead of a Markdown table")
    ap.add_argument("--show-preset", action="store_true", help="also print each preset's JSON")
    args = ap.parse_args(argv)
    names = args.preset or preset_names()
    rows = [r for name in names for r in count_costs(name, args.height, args.width)]
    if args.json:
        print(json.dumps([asdict(r) for r in rows], indent=2))
    else:
        print(format_table(rows, args.height, args.width))
    if args.show_preset:
        for name in names:
            print(get_preset(name).to_json())
    return 0
