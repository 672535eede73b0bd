"""Benchmarks: ``python -m sitm_trt.bench kernels`` (or ``sitm-trt bench kernels``).

``kernels``: per kernel, ms per frame, effective GB/s and the speed-up over equivalent torch eager code, at
1080p and 4K, on the CPU always and on CUDA when a device is present. On the CPU the STREAM-triad bandwidth
of this machine (``sitm_trt._C.cpu_triad_bandwidth``: ``a = b + s * c`` over 3 x 256 MiB arrays with the
kernels' threads, 12 bytes per element) is the roof the kernels are compared against.
Timings: warm-up, then the median (and min/max) of ``--repeats`` runs; CUDA timings use CUDA events.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from typing import Callable

RESOLUTIONS = {"1080p": (1080, 1920), "4k": (2160, 3840), "512": (512, 512)}


@dataclass
class Row:
    kernel: str
    device: str
    resolution: str
    ms: float
    ms_min: float
    ms_max: float
    gbps: float
    torch_ms: float
    speedup: float
    bandwidth_fraction: float | None


def _time(fn: Callable[[], object], repeats: int, warmup: int, device: str) -> list[float]:
    import torch

    for _ in range(warmup):
        fn()
    out = []
    if device == "cuda":
        torch.cuda.synchronize()
        for _ in range(repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            out.append(start.elapsed_time(end))
    else:
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            out.append((time.perf_counter() - t0) * 1e3)
    return out


def _eager_pre(frame, stride):
    """What one would write in torch without the kernel: the same math, one op at a time."""
    import torch
    import torch.nn.functional as F

    x = frame.permute(0, 3, 1, 2).float().div_(255.0)
    h, w = x.shape[-2:]
    x = F.pad(x, (0, -w % stride, 0, -h % stride), mode="reflect")
    l_down = x.amax(dim=1, keepdim=True)
    l_up = 1.0 - x.amin(dim=1, keepdim=True)
    return x, x * l_down, x * l_up, torch.cat([l_down, l_up], dim=1)


def _eager_post(masks, image, up, down, coef, h, w):
    f = masks[:, 0:1] * up + masks[:, 1:2] * image + masks[:, 2:3] * down
    a = coef[:, :, None, None]
    return (((a[:, 3:4] * f + a[:, 2:3]) * f + a[:, 1:2]) * f + a[:, 0:1])[..., :h, :w].contiguous()


def _eager_fuse(masks, image, up, down):
    return masks[:, 0:1] * up + masks[:, 1:2] * image + masks[:, 2:3] * down


def _eager_curve(x, coef):
    a = coef[:, :, None, None]
    return ((a[:, 3:4] * x + a[:, 2:3]) * x + a[:, 1:2]) * x + a[:, 0:1]


def bench_kernels(devices: list[str], resolutions: list[str], repeats: int, warmup: int, dtype: str) -> tuple[list[Row], dict]:
    import torch

    from sitm_trt import kernels as K

    header = {"python": platform.python_version(), "torch": torch.__version__, "cpu": platform.processor() or platform.machine(),
              "cpu_threads": K.get_num_threads(), "torch_threads": torch.get_num_threads(), "build": K.build_info(),
              "dtype": dtype}
    if "cpu" in devices:
        header["cpu_triad_gbps"] = K.extension().cpu_triad_bandwidth(64 << 20, 5)
    if "cuda" in devices:
        header["gpu"] = torch.cuda.get_device_name()
    tdt = {"float32": torch.float32, "float16": torch.float16}[dtype]
    isz = torch.tensor([], dtype=tdt).element_size()
    rows: list[Row] = []
    for device in devices:
        for res in resolutions:
            h, w = RESOLUTIONS[res]
            stride = 16
            hp, wp = -(-h // stride) * stride, -(-w // stride) * stride
            gen = torch.Generator().manual_seed(0)
            frame = torch.randint(0, 256, (1, h, w, 3), generator=gen, dtype=torch.uint8).to(device)
            nets = [torch.rand(1, 3, hp, wp, generator=gen).to(device, tdt) for _ in range(4)]
            coef = torch.randn(1, 4, generator=gen).to(device, tdt)
            pre_out = tuple(torch.empty(1, c, hp, wp, device=device, dtype=tdt) for c in (3, 3, 3, 2))
            post_out = torch.empty(1, 3, h, w, device=device)
            full_out = torch.empty(1, 3, hp, wp, device=device)
            px, pxp = h * w, hp * wp
            cases = [
                ("pre (uint8 HWC -> 4 inputs)", lambda: K.pre(frame, stride=stride, dtype=dtype, out=pre_out),
                 lambda: _eager_pre(frame, stride), 3 * px + 11 * isz * pxp),
                ("fuse (Eq. 7)", lambda: K.fuse(*nets, out=full_out), lambda: _eager_fuse(*nets), 12 * isz * pxp + 12 * pxp),
                ("curve (Eq. 8)", lambda: K.curve(nets[1], coef, out=full_out), lambda: _eager_curve(nets[1], coef),
                 3 * isz * pxp + 12 * pxp),
                ("post (fuse + curve + crop)", lambda: K.post(*nets, coef, height=h, width=w, out=post_out),
                 lambda: _eager_post(*nets, coef, h, w), 12 * isz * px + 12 * px),
            ]
            for name, ours, eager, nbytes in cases:
                t = _time(ours, repeats, warmup, device)
                te = _time(eager, repeats, warmup, device)
                ms, tms = statistics.median(t), statistics.median(te)
                gbps = nbytes / (ms * 1e-3) / 1e9
                frac = gbps / header["cpu_triad_gbps"] if device == "cpu" else None
                rows.append(Row(name, device, res, ms, min(t), max(t), gbps, tms, tms / ms, frac))
    return rows, header


def format_table(rows: list[Row], header: dict) -> str:
    lines = [f"# sitm-trt kernel benchmark ({header['dtype']} network tensors)", ""]
    for k in ("cpu", "cpu_threads", "torch", "torch_threads", "gpu"):
        if k in header:
            lines.append(f"- {k}: {header[k]}")
    if "cpu_triad_gbps" in header:
        lines.append(f"- CPU STREAM-triad bandwidth: {header['cpu_triad_gbps']:.1f} GB/s")
    b = header["build"]
    lines.append(f"- extension: CUDA {'on (' + b['cuda_architectures'] + ')' if b['cuda'] else 'off'}, {b['cxx_compiler']}")
    lines += ["", "| kernel | device | size | ms (median) | min-max | GB/s | % of triad | torch eager ms | speed-up |",
              "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        frac = f"{100 * r.bandwidth_fraction:.0f}%" if r.bandwidth_fraction is not None else "-"
        lines.append(f"| {r.kernel} | {r.device} | {r.resolution} | {r.ms:.2f} | {r.ms_min:.2f}-{r.ms_max:.2f} | "
                     f"{r.gbps:.1f} | {frac} | {r.torch_ms:.2f} | {r.speedup:.1f}x |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sitm-trt bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    k = sub.add_parser("kernels", help="the C++/CUDA kernels against torch eager")
    k.add_argument("--device", choices=["cpu", "cuda", "all"], default="all")
    k.add_argument("--resolution", nargs="+", choices=sorted(RESOLUTIONS), default=["1080p", "4k"])
    k.add_argument("--repeats", type=int, default=20)
    k.add_argument("--warmup", type=int, default=3)
    k.add_argument("--dtype", choices=["float32", "float16"], default="float32",
                   help="dtype of the network tensors (fp16 = the TensorRT FP16 engine's outputs)")
    k.add_argument("--json", metavar="FILE", help="also write the rows and header as JSON")
    args = parser.parse_args(argv)

    if args.what == "kernels":
        import torch

        devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
        if "cuda" in devices and not torch.cuda.is_available():
            if args.device == "cuda":
                parser.error("--device cuda: no CUDA device is available")
            devices.remove("cuda")
        rows, header = bench_kernels(devices, args.resolution, args.repeats, args.warmup, args.dtype)
        print(format_table(rows, header))
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"header": header, "rows": [asdict(r) for r in rows]}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
