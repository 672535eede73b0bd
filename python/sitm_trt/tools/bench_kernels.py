"""``sitm-trt bench kernels``: the pre, fuse, curve and post kernels (post with the paper's and the residual
fusion) against the same math in torch eager.

Per kernel, ms per frame, effective GB/s and the speed-up over equivalent torch eager code, at 1080p and 4K, on
the CPU always and on CUDA when a device is present. On the CPU the STREAM-triad bandwidth of this machine
(``sitm_trt._C.cpu_triad_bandwidth``) is the roof the kernels are compared against, and each kernel is also timed
alternately with a plain copy moving the same bytes: "% of copy speed" is the copy's time over the kernel's.
"""

from __future__ import annotations

import platform
import statistics
import time
from dataclasses import dataclass
from typing import Callable

from sitm_trt.tools.bench_common import RESOLUTIONS

__all__ = ["Row", "bench_kernels", "format_table"]


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
    copy_ms: float | None = None  # a plain copy moving the same bytes (read + written), timed alongside
    copy_fraction: float | None = None  # copy_ms / ms: the kernel's speed as a fraction of the copy's


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


def _eager_post_residual(masks, image, up, down, coef, h, w):
    from sitm_trt import reference

    return reference.residual_fuse(masks, image, up, down, coef)[..., :h, :w].contiguous()


def _eager_fuse(masks, image, up, down):
    return masks[:, 0:1] * up + masks[:, 1:2] * image + masks[:, 2:3] * down


def _eager_curve(x, coef):
    a = coef[:, :, None, None]
    return ((a[:, 3:4] * x + a[:, 2:3]) * x + a[:, 1:2]) * x + a[:, 0:1]


def _same_bytes_copy(nbytes: int, device: str, threads: int):
    """A plain copy whose reads + writes equal ``nbytes`` (``nbytes / 2`` bytes copied), split over ``threads``
    threads on the CPU (``numpy.copyto`` releases the GIL), one ``copy_`` on CUDA."""
    import torch

    half = nbytes // 2
    if device != "cpu":
        src, dst = torch.ones(half, dtype=torch.uint8, device=device), torch.empty(half, dtype=torch.uint8, device=device)

        def copy_cuda():
            dst.copy_(src)

        copy_cuda.close = lambda: None  # type: ignore[attr-defined]
        return copy_cuda
    import concurrent.futures

    import numpy as np

    src, dst = np.ones(half, np.uint8), np.empty(half, np.uint8)
    bounds = [half * i // threads for i in range(threads + 1)]
    parts = [(dst[a:b], src[a:b]) for a, b in zip(bounds, bounds[1:])]
    pool = concurrent.futures.ThreadPoolExecutor(threads)

    def copy():
        list(pool.map(lambda p: np.copyto(*p), parts))

    copy.close = pool.shutdown  # type: ignore[attr-defined]
    return copy


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
            # the residual fusion's k0, k1 (exposure gains, EV) and k2 = log gamma, gamma != 1
            coef_residual = torch.tensor([[0.5, -0.5, 0.1, 0.0]]).to(device, tdt)
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
                ("post, residual fusion",
                 lambda: K.post(*nets, coef_residual, height=h, width=w, out=post_out, fusion="residual"),
                 lambda: _eager_post_residual(*nets, coef_residual, h, w), 12 * isz * px + 12 * px),
            ]
            for name, ours, eager, nbytes in cases:
                copy = _same_bytes_copy(nbytes, device, max(1, K.get_num_threads()))
                # The kernel and its same-bytes copy alternate, so machine load affects both alike.
                t, tc = [], []
                for _ in range(warmup):
                    ours(), copy()
                for _ in range(repeats):
                    t += _time(ours, 1, 0, device)
                    tc += _time(copy, 1, 0, device)
                copy.close()
                te = _time(eager, repeats, warmup, device)
                ms, tms, cms = statistics.median(t), statistics.median(te), statistics.median(tc)
                gbps = nbytes / (ms * 1e-3) / 1e9
                frac = gbps / header["cpu_triad_gbps"] if device == "cpu" else None
                rows.append(Row(name, device, res, ms, min(t), max(t), gbps, tms, tms / ms, frac, cms, cms / ms))
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
    lines += ["", "| kernel | device | size | ms (median) | min-max | GB/s | % of triad | copy of the same bytes ms | "
              "% of copy speed | torch eager ms | speed-up |",
              "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        frac = f"{100 * r.bandwidth_fraction:.0f}%" if r.bandwidth_fraction is not None else "-"
        copy = (f"{r.copy_ms:.2f} | {100 * r.copy_fraction:.0f}%" if r.copy_ms is not None and r.copy_fraction is not None
                else "- | -")
        lines.append(f"| {r.kernel} | {r.device} | {r.resolution} | {r.ms:.2f} | {r.ms_min:.2f}-{r.ms_max:.2f} | "
                     f"{r.gbps:.1f} | {frac} | {copy} | {r.torch_ms:.2f} | {r.speedup:.1f}x |")
    return "\n".join(lines)
