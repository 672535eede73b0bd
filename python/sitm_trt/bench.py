"""Benchmarks: ``sitm-trt bench kernels | pipeline | video`` (or ``python -m sitm_trt.bench ...``).

``pipeline``: ms per frame of the pre kernel, the network and the post kernel and end to end, frames/s and
peak memory, per backend, precision and preset (``--cpu-configs`` sweeps CPU threads and channels-last).
``video``: frames/s of ``sitm-trt video`` (decode + infer + encode) on a generated clip.

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


# ---------------------------------------------------------------------------------------------------------
# The pipeline: pre, network, post, end to end
# ---------------------------------------------------------------------------------------------------------


@dataclass
class PipeRow:
    backend: str
    device: str
    precision: str
    preset: str
    resolution: str
    config: str
    pre_ms: float
    net_ms: float
    post_ms: float
    total_ms: float
    total_min_ms: float
    total_max_ms: float
    fps: float
    peak_mem_mb: float | None


def load_weights_for(preset: str, tmpdir: str, path: str | None):
    from sitm_trt.weights import load

    if path is not None:
        return load(path)
    return _weights_for(preset, tmpdir, shipped=True)


def _weights_for(preset: str, tmpdir: str, shipped: bool):
    """Shipped default weights when they are of this preset, else random-init weights (same cost)."""
    from sitm_trt.weights import WeightsError, load

    if shipped:
        try:
            w = load("default")
            if w.preset_name == preset:
                return w
        except WeightsError:
            pass
    import os

    import torch

    from sitm_trt.model import SITMNet, save_weights

    path = os.path.join(tmpdir, f"{preset}.safetensors")
    if not os.path.exists(path):
        torch.manual_seed(0)
        save_weights(SITMNet(preset), path)
    return load(path)


def bench_pipeline(backends: list[str], presets: list[str], resolutions: list[str], repeats: int, warmup: int,
                   configs: list[dict] | None = None, weights_path: str | None = None) -> tuple[list[PipeRow], dict]:
    """``weights_path``: use these weights (their preset must be in ``presets``) instead of the shipped ones
    or random-init ones."""
    import resource
    import tempfile

    import torch

    from sitm_trt import kernels as K
    from sitm_trt.pipeline import Pipeline

    header = {"python": platform.python_version(), "torch": torch.__version__,
              "cpu": platform.processor() or platform.machine(), "build": K.build_info()}
    if torch.cuda.is_available():
        header["gpu"] = torch.cuda.get_device_name()
        header["driver"] = K.extension().device_properties(0)["driver_version"]
    if any(b.startswith("tensorrt") for b in backends):  # import TensorRT only when it is benchmarked
        try:
            from sitm_trt.backends.trt_engine import find_flavour

            fl = find_flavour()
            header["tensorrt"] = f"{fl.name} {fl.version}"
        except ImportError:
            header["tensorrt"] = "none"
    rows: list[PipeRow] = []
    configs = configs or [{}]
    default_threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory() as tmp:
        for spec in backends:
            backend, device, precision = spec.split(":")  # e.g. torch:cpu:fp32, tensorrt:cuda:fp16
            for preset in presets:
                weights = load_weights_for(preset, tmp, weights_path)
                for cfg in configs:
                    threads = cfg.get("threads", default_threads)
                    torch.set_num_threads(threads)
                    K.set_num_threads(threads)
                    pipe = Pipeline(weights, backend=backend, precision=precision,
                                    channels_last=cfg.get("channels_last"))
                    for res in resolutions:
                        h, w = RESOLUTIONS[res]
                        dev = "cuda:0" if device == "cuda" else "cpu"
                        frame = torch.randint(0, 256, (1, h, w, 3), dtype=torch.uint8).to(dev)
                        be = pipe.backend_for(dev)
                        s = be.stride
                        hp, wp = -(-h // s) * s, -(-w // s) * s
                        cuda = dev != "cpu"
                        stream = torch.cuda.current_stream().cuda_stream if cuda else 0
                        pre_out = tuple(pipe._pool.get(f"pre{i}", [1, c, hp, wp], be.dtype, dev, stream)
                                        for i, c in enumerate((3, 3, 3, 2)))
                        out = torch.empty(1, 3, h, w, device=dev)
                        free_before = K.extension().memory_info(0)[0] if cuda else None
                        # One frame = pre, network, post in sequence; each stage is timed inside the same
                        # iteration (CUDA events on the GPU), so the stages add up to the end-to-end time.
                        for _ in range(warmup + 1):
                            o = be.run(pre_out, stream)
                            K.post(o[2], pre_out[0], o[0], o[1], o[3], height=h, width=w, out=out)
                        stages: list[list[float]] = [[], [], [], []]
                        for _ in range(repeats):
                            if cuda:
                                ev = [torch.cuda.Event(enable_timing=True) for _ in range(4)]
                                ev[0].record()
                                K.pre(frame, stride=s, dtype=be.dtype, out=pre_out)
                                ev[1].record()
                                o = be.run(pre_out, stream)
                                ev[2].record()
                                K.post(o[2], pre_out[0], o[0], o[1], o[3], height=h, width=w, out=out)
                                ev[3].record()
                                ev[3].synchronize()
                                t = [ev[0].elapsed_time(ev[i]) for i in range(1, 4)]
                            else:
                                t0 = time.perf_counter()
                                K.pre(frame, stride=s, dtype=be.dtype, out=pre_out)
                                t1 = time.perf_counter()
                                o = be.run(pre_out, stream)
                                t2 = time.perf_counter()
                                K.post(o[2], pre_out[0], o[0], o[1], o[3], height=h, width=w, out=out)
                                t3 = time.perf_counter()
                                t = [(t1 - t0) * 1e3, (t2 - t0) * 1e3, (t3 - t0) * 1e3]
                            stages[0].append(t[0])
                            stages[1].append(t[1] - t[0])
                            stages[2].append(t[2] - t[1])
                            stages[3].append(t[2])
                        t_pre, t_net, t_post = (statistics.median(x) for x in stages[:3])
                        t_all = stages[3]
                        if cuda:  # device memory taken by this configuration (extension buffers, TensorRT, torch)
                            peak = (free_before - K.extension().memory_info(0)[0]) / 2**20
                        else:
                            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
                        med = statistics.median(t_all)
                        label = ", ".join(f"{k}={v}" for k, v in cfg.items()) or "default"
                        rows.append(PipeRow(backend, device, precision, preset, res, label, t_pre, t_net, t_post, med,
                                            min(t_all), max(t_all), 1e3 / med, peak))
    return rows, header


def format_pipeline(rows: list[PipeRow], header: dict) -> str:
    lines = ["# sitm-trt pipeline benchmark (ms per frame, median)", ""]
    for k in ("cpu", "torch", "gpu", "driver", "tensorrt"):
        if k in header:
            lines.append(f"- {k}: {header[k]}")
    lines += ["", "| backend | device | precision | preset | size | config | pre | network | post | end to end "
              "(min-max) | frames/s | memory MB |", "|---|---|---|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        mem = (f"{r.peak_mem_mb:.0f}" + (" (added)" if r.device == "cuda" else " (RSS)")) if r.peak_mem_mb is not None else "-"
        lines.append(f"| {r.backend} | {r.device} | {r.precision} | {r.preset} | {r.resolution} | {r.config} | "
                     f"{r.pre_ms:.2f} | {r.net_ms:.1f} | {r.post_ms:.2f} | {r.total_ms:.1f} "
                     f"({r.total_min_ms:.1f}-{r.total_max_ms:.1f}) | {r.fps:.2f} | {mem} |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------
# The video path: decode + infer + encode
# ---------------------------------------------------------------------------------------------------------


def _synthetic_clip(path: str, width: int, height: int, frames: int, fps: int = 24) -> None:
    """An SDR BT.709 H.264 clip: moving gradients and a bright block (clipped highlights), no audio."""
    import av
    import numpy as np

    out = av.open(path, "w")
    s = out.add_stream("libx264", rate=fps)
    s.width, s.height, s.pix_fmt = width, height, "yuv420p"
    s.options = {"preset": "ultrafast", "crf": "12"}
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    for i in range(frames):
        img = np.stack([(x + 4 * i) % width / width, y / height, 0.5 + 0.5 * np.sin((x + y + 8 * i) / 40)], -1)
        img[height // 4: height // 2, (width // 4 + 3 * i) % width:][:, : width // 8] = 1.0
        f = av.VideoFrame.from_ndarray((np.clip(img, 0, 1) * 255).astype(np.uint8), format="rgb24")
        for packet in s.encode(f.reformat(format="yuv420p")):
            out.mux(packet)
    for packet in s.encode():
        out.mux(packet)
    out.close()


def bench_video(weights: str, resolution: str, frames: int, formats: list[str], device: str | None) -> list[dict]:
    import os
    import tempfile

    from sitm_trt import video

    h, w = RESOLUTIONS[resolution]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "in.mp4")
        _synthetic_clip(src, w, h, frames)
        for fmt in formats:
            dst = os.path.join(tmp, "out.mkv" if fmt != "exr" else "exr")
            opts = video.VideoOptions(format=fmt, preset="fast")
            res = video.convert(src, dst, weights=weights, options=opts, device=device, progress=False)
            rows.append({"format": fmt, "resolution": resolution, "frames": res.frames, "seconds": res.seconds,
                         "fps": res.fps})
    return rows


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
    pp = sub.add_parser("pipeline", help="ms/frame per stage and end to end, per backend, precision and preset")
    pp.add_argument("--backend", nargs="+", default=None, metavar="BACKEND:DEVICE:PRECISION",
                    help="e.g. torch:cpu:fp32 torch:cuda:fp32 tensorrt:cuda:fp16 (default: all available)")
    pp.add_argument("--preset", nargs="+", default=["compact", "fast", "paper"], choices=["compact", "fast", "paper"])
    pp.add_argument("--resolution", nargs="+", choices=sorted(RESOLUTIONS), default=["512", "1080p", "4k"])
    pp.add_argument("--repeats", type=int, default=10)
    pp.add_argument("--warmup", type=int, default=2)
    pp.add_argument("--cpu-configs", action="store_true",
                    help="sweep the CPU configurations (threads 1/all, channels-last off/on) and report each")
    pp.add_argument("--json", metavar="FILE")
    vv = sub.add_parser("video", help="end-to-end fps of sitm-trt video (decode + infer + encode) on a generated clip")
    vv.add_argument("--weights", default="default")
    vv.add_argument("--resolution", choices=sorted(RESOLUTIONS), default="512")
    vv.add_argument("--frames", type=int, default=24)
    vv.add_argument("--format", nargs="+", choices=["hdr10", "hlg", "exr"], default=["hdr10"])
    vv.add_argument("--device", default=None, help="cpu or cuda:N (default: the first GPU if any)")
    args = parser.parse_args(argv)

    if args.what == "video":
        rows = bench_video(args.weights, args.resolution, args.frames, args.format, args.device)
        print("| format | size | frames | seconds | frames/s (decode + infer + encode) |\n|---|---|---:|---:|---:|")
        for r in rows:
            print(f"| {r['format']} | {r['resolution']} | {r['frames']} | {r['seconds']:.1f} | {r['fps']:.2f} |")
        return 0

    if args.what == "pipeline":
        import os

        import torch

        backends = args.backend
        if backends is None:
            backends = ["torch:cpu:fp32"]
            if torch.cuda.is_available():
                backends += ["torch:cuda:fp32", "torch:cuda:fp16", "tensorrt:cuda:fp16", "tensorrt:cuda:fp32"]
        configs = None
        if args.cpu_configs:
            n = os.cpu_count() or 1
            # the default first, so "default vs best" is a ratio within one run
            configs = [{}] + [{"threads": t, "channels_last": cl} for t in sorted({1, n}) for cl in (False, True)]
        rows, header = bench_pipeline(backends, args.preset, args.resolution, args.repeats, args.warmup, configs)
        print(format_pipeline(rows, header))
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"header": header, "rows": [asdict(r) for r in rows]}, f, indent=2)
        return 0

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
