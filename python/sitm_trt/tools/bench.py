"""Benchmarks: ``sitm-trt bench kernels | pipeline | video | batch`` (or ``python -m sitm_trt.tools.bench ...``).

``pipeline``: ms per frame of the pre kernel, the network and the post kernel and end to end, frames/s and
peak memory, per backend, precision and preset, with the speed-up of each backend over torch; the backends
run in one process and take turns frame by frame (``--backend torch onnxruntime``; ``--threads 1 2`` runs
each thread count, ``--cpu-configs`` sweeps CPU threads and channels-last).
``video``: frames/s of ``sitm-trt video`` (decode + infer + encode) on a generated clip.
``batch``: images/s of ``sitm-trt batch`` (Ray Data, a local Ray) with 1 and 2 workers against the plain
sequential loop (read, infer, write one image after the other in this process), as ratios in one run.

``kernels``: per kernel, ms per frame, effective GB/s and the speed-up over equivalent torch eager code, at
1080p and 4K, on the CPU always and on CUDA when a device is present. On the CPU the STREAM-triad bandwidth
of this machine (``sitm_trt._C.cpu_triad_bandwidth``: ``a = b + s * c`` over 3 x 256 MiB arrays with the
kernels' threads, 12 bytes per element) is the roof the kernels are compared against, and each kernel is
also timed alternately with a plain copy moving the same bytes (half of its reads + writes copied, same
threads): "% of copy speed" is the copy's time over the kernel's.
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
    or random-init ones. ``backends``: ``BACKEND[:DEVICE[:PRECISION]]`` specs (:func:`backend_spec`); all of them
    run in this one process, taking turns frame by frame."""
    import tempfile

    import torch

    from sitm_trt import kernels as K
    from sitm_trt.runtime.pipeline import Pipeline

    header = {"python": platform.python_version(), "torch": torch.__version__,
              "cpu": platform.processor() or platform.machine(), "build": K.build_info()}
    if torch.cuda.is_available():
        header["gpu"] = torch.cuda.get_device_name()
        header["driver"] = K.extension().device_properties(0)["driver_version"]
    if any(b.startswith("tensorrt") for b in backends):  # import TensorRT only when it is benchmarked
        try:
            from sitm_trt.runtime.backends.trt_engine import find_flavour

            fl = find_flavour()
            header["tensorrt"] = f"{fl.name} {fl.version}"
        except ImportError:
            header["tensorrt"] = "none"
    if any(b.startswith("onnxruntime") for b in backends):
        import onnxruntime

        header["onnxruntime"] = onnxruntime.__version__
    rows: list[PipeRow] = []
    configs = configs or [{}]
    default_threads, default_kernel_threads = torch.get_num_threads(), K.get_num_threads()
    specs = [backend_spec(b) for b in backends]
    with tempfile.TemporaryDirectory() as tmp:
        for preset in presets:
            weights = load_weights_for(preset, tmp, weights_path)
            for cfg in configs:
                threads = cfg.get("threads")
                torch.set_num_threads(threads or default_threads)
                K.set_num_threads(threads or default_kernel_threads)
                pipes, seen = [], set()
                for backend, device, precision in specs:
                    # channels-last is a torch option: other backends get one row per thread count
                    own = {k: v for k, v in cfg.items() if backend == "torch" or k != "channels_last"}
                    label = ", ".join(f"{k}={v}" for k, v in own.items()) or "default"
                    if (backend, device, precision, label) in seen:
                        continue
                    seen.add((backend, device, precision, label))
                    pipe = Pipeline(weights, backend=backend, precision=precision,
                                    channels_last=own.get("channels_last"), threads=threads)
                    pipes.append((backend, device, precision, label, pipe))
                for res in resolutions:
                    h, w = RESOLUTIONS[res]
                    runs = [(b, d, p, lab, pipe, _frame_runner(pipe, "cuda:0" if d == "cuda" else "cpu", h, w))
                            for b, d, p, lab, pipe in pipes]
                    for *_, run in runs:
                        for _ in range(warmup + 1):
                            run()
                    # The backends take turns frame by frame, so a busy machine slows them alike: the ratios
                    # between rows of one run are the meaningful numbers.
                    stages = {i: [[], [], [], []] for i in range(len(runs))}
                    for _ in range(repeats):
                        for i, (*_, run) in enumerate(runs):
                            t = run()
                            for k in range(4):
                                stages[i][k].append(t[k])
                    for i, (backend, device, precision, label, _pipe, run) in enumerate(runs):
                        t_pre, t_net, t_post = (statistics.median(x) for x in stages[i][:3])
                        t_all = stages[i][3]
                        med = statistics.median(t_all)
                        rows.append(PipeRow(backend, device, precision, preset, res, label, t_pre, t_net, t_post, med,
                                            min(t_all), max(t_all), 1e3 / med, run.memory_mb()))
    return rows, header


def backend_spec(spec: str) -> tuple[str, str, str]:
    """``BACKEND[:DEVICE[:PRECISION]]`` -> (backend, device, precision); e.g. ``onnxruntime`` is
    ``onnxruntime:cpu:fp32``, ``tensorrt`` is ``tensorrt:cuda:fp16``."""
    parts = spec.split(":")
    names = ("torch", "onnxruntime", "tensorrt")
    if parts[0] not in names or len(parts) > 3:
        raise ValueError(f"backend spec {spec!r}: expected BACKEND[:DEVICE[:PRECISION]] with BACKEND one of {names}")
    device = parts[1] if len(parts) > 1 else ("cuda" if parts[0] == "tensorrt" else "cpu")
    precision = parts[2] if len(parts) > 2 else ("fp16" if parts[0] == "tensorrt" else "fp32")
    if device not in ("cpu", "cuda") or precision not in ("fp32", "fp16"):
        raise ValueError(f"backend spec {spec!r}: device must be cpu or cuda and precision fp32 or fp16")
    return parts[0], device, precision


def _frame_runner(pipe, dev: str, h: int, w: int):
    """``run() -> [pre, network, post, end to end]`` ms of one frame through ``pipe``'s backend on ``dev``, each
    stage timed inside the same iteration (CUDA events on the GPU) so the stages add up; ``run.memory_mb()``:
    peak RSS on the CPU, device memory added since the runner was made on CUDA."""
    import resource

    import torch

    from sitm_trt import kernels as K

    frame = torch.randint(0, 256, (1, h, w, 3), dtype=torch.uint8).to(dev)
    be = pipe.backend_for(dev)
    s = be.stride
    hp, wp = -(-h // s) * s, -(-w // s) * s
    cuda = dev != "cpu"
    stream = torch.cuda.current_stream().cuda_stream if cuda else 0
    free_before = K.extension().memory_info(0)[0] if cuda else None
    pre_out = tuple(pipe._pool.get(f"pre{i}", [1, c, hp, wp], be.dtype, dev, stream) for i, c in enumerate((3, 3, 3, 2)))
    out = torch.empty(1, 3, h, w, device=dev)
    fusion = pipe.weights.fusion  # the post kernel's cost depends on it

    def run() -> list[float]:
        if cuda:
            ev = [torch.cuda.Event(enable_timing=True) for _ in range(4)]
            ev[0].record()
            K.pre(frame, stride=s, dtype=be.dtype, out=pre_out)
            ev[1].record()
            o = be.run(pre_out, stream)
            ev[2].record()
            K.post(o[2], pre_out[0], o[0], o[1], o[3], height=h, width=w, out=out, fusion=fusion)
            ev[3].record()
            ev[3].synchronize()
            t = [ev[0].elapsed_time(ev[i]) for i in range(1, 4)]
        else:
            t0 = time.perf_counter()
            K.pre(frame, stride=s, dtype=be.dtype, out=pre_out)
            t1 = time.perf_counter()
            o = be.run(pre_out, stream)
            t2 = time.perf_counter()
            K.post(o[2], pre_out[0], o[0], o[1], o[3], height=h, width=w, out=out, fusion=fusion)
            t3 = time.perf_counter()
            t = [(t1 - t0) * 1e3, (t2 - t0) * 1e3, (t3 - t0) * 1e3]
        return [t[0], t[1] - t[0], t[2] - t[1], t[2]]

    def memory_mb() -> float:
        if cuda:  # device memory taken by this configuration (extension buffers, TensorRT, torch)
            return (free_before - K.extension().memory_info(0)[0]) / 2**20
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    run.memory_mb = memory_mb  # type: ignore[attr-defined]
    return run


def format_pipeline(rows: list[PipeRow], header: dict) -> str:
    lines = ["# sitm-trt pipeline benchmark (ms per frame, median)", ""]
    for k in ("cpu", "torch", "onnxruntime", "gpu", "driver", "tensorrt"):
        if k in header:
            lines.append(f"- {k}: {header[k]}")
    lines += ["", "| backend | device | precision | preset | size | config | pre | network | post | end to end "
              "(min-max) | frames/s | memory MB |", "|---|---|---|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        mem = (f"{r.peak_mem_mb:.0f}" + (" (added)" if r.device == "cuda" else " (RSS)")) if r.peak_mem_mb is not None else "-"
        lines.append(f"| {r.backend} | {r.device} | {r.precision} | {r.preset} | {r.resolution} | {r.config} | "
                     f"{r.pre_ms:.2f} | {r.net_ms:.1f} | {r.post_ms:.2f} | {r.total_ms:.1f} "
                     f"({r.total_min_ms:.1f}-{r.total_max_ms:.1f}) | {r.fps:.2f} | {mem} |")
    torch_rows = {(r.device, r.preset, r.resolution, r.config): r for r in rows if r.backend == "torch"}
    ratios = []
    for r in rows:
        if r.backend == "torch":
            continue
        key = (r.device, r.preset, r.resolution)
        # the same config; for --cpu-configs (channels-last is torch's only) torch's default, channels-last on
        t = torch_rows.get((*key, r.config)) or torch_rows.get((*key, f"{r.config}, channels_last=True"))
        if t is not None:
            ratios.append(f"| {r.backend} | {r.device} | {r.preset} | {r.resolution} | {t.config} | "
                          f"{t.net_ms / r.net_ms:.2f}x | {t.total_ms / r.total_ms:.2f}x |")
    if ratios:
        lines += ["", "Speed-up over torch in the same run (torch ms / backend ms, medians):", "",
                  "| backend | device | preset | size | config | network | end to end |", "|---|---|---|---|---|---:|---:|"]
        lines += ratios
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

    from sitm_trt.media import video

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


def bench_batch(weights: str, n: int, height: int, width: int, workers: list[int], backend: str) -> dict:
    """images/s of the sequential loop and of ``sitm_trt.tools.batch.convert`` per worker count, on ``n`` generated
    PNGs. The loop's pipeline is made and warmed before its clock starts. A batch job is timed whole (Ray
    already running; starting the workers and their pipelines included) and in its steady state: the images
    whose records arrived after the first one, over the time from the first record to the last."""
    import os
    import tempfile
    from pathlib import Path

    import numpy as np

    from sitm_trt.tools import batch
    from sitm_trt.tools import cli
    from sitm_trt.media import io
    from sitm_trt.runtime.pipeline import Pipeline

    batch._ray()  # says what to install
    rows: dict = {"images": n, "size": f"{width}x{height}", "backend": backend, "cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "in"
        src.mkdir()
        y, x = np.mgrid[0:height, 0:width].astype(np.float32)
        rng = np.random.default_rng(0)
        for i in range(n):  # gradients, a clipped block and noise: photo-like work for the PNG codec
            img = np.stack([x / width, y / height, 0.5 + 0.5 * np.sin((x + y + 9 * i) / 30)], -1) * 255
            img[height // 4: height // 2, width // 4: width // 2] = 255
            img = np.clip(img + rng.normal(0, 4, img.shape), 0, 255).astype(np.uint8)
            io.write_png(src / f"img_{i:04d}.png", img)
        files = sorted(src.iterdir())

        pipe = Pipeline(weights, backend=backend)
        device = cli._device("auto")
        seq = Path(tmp) / "seq"
        seq.mkdir()

        def one(path: Path) -> None:
            rgb, alpha, gray = cli.read_image(path)
            hdr = cli._run_batch(pipe, rgb[None], device)[0]
            cli.write_image_outputs(path, seq / (path.stem + ".exr"), hdr, alpha, gray, half=True, preview=False)

        one(files[0])  # warm-up: backend creation, first-call costs
        t0 = time.perf_counter()
        for f in files:
            one(f)
        rows["sequential_s"] = time.perf_counter() - t0
        rows["sequential_ips"] = n / rows["sequential_s"]
        rows["backend_used"] = pipe.backend_for(device).name

        with batch._ray_session(None, os.cpu_count(), None):  # a local Ray (or the one already running)
            rows["workers"] = []
            for k in workers:
                res = batch.convert([str(src)], Path(tmp) / f"ray{k}", weights=weights, backend=backend, workers=k,
                                    batch_size=1, progress=False)
                if res.failed or res.done != n:
                    raise RuntimeError(f"bench batch: {res.failed} of {n} images failed")
                first, last = res.arrivals[0], res.arrivals[-1]
                steady = (n - 1) / max(last - first, 1e-9)
                rows["workers"].append({"workers": k, "seconds": res.seconds, "ips": n / res.seconds,
                                        "startup_s": first, "steady_ips": steady,
                                        "ratio": (n / res.seconds) / rows["sequential_ips"],
                                        "steady_ratio": steady / rows["sequential_ips"]})
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
                    help="BACKEND[:DEVICE[:PRECISION]], e.g. torch onnxruntime torch:cuda:fp32 tensorrt:cuda:fp16 "
                         "(default: all available); all run in one process, taking turns frame by frame")
    pp.add_argument("--preset", nargs="+", default=["compact", "fast", "paper"], choices=["compact", "fast", "paper"])
    pp.add_argument("--resolution", nargs="+", choices=sorted(RESOLUTIONS), default=["512", "1080p", "4k"])
    pp.add_argument("--repeats", type=int, default=10)
    pp.add_argument("--warmup", type=int, default=2)
    pp.add_argument("--threads", type=int, nargs="+", metavar="N",
                    help="CPU thread counts to run each backend with (the network's and the kernels' threads)")
    pp.add_argument("--cpu-configs", action="store_true",
                    help="sweep the CPU configurations (threads 1/all, channels-last off/on) and report each")
    pp.add_argument("--json", metavar="FILE")
    vv = sub.add_parser("video", help="end-to-end fps of sitm-trt video (decode + infer + encode) on a generated clip")
    vv.add_argument("--weights", default="default")
    vv.add_argument("--resolution", choices=sorted(RESOLUTIONS), default="512")
    vv.add_argument("--frames", type=int, default=24)
    vv.add_argument("--format", nargs="+", choices=["hdr10", "hlg", "exr"], default=["hdr10"])
    vv.add_argument("--device", default=None, help="cpu or cuda:N (default: the first GPU if any)")
    vv.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    bb = sub.add_parser("batch", help="images/s of sitm-trt batch (Ray Data) for 1 and 2 workers vs the sequential loop")
    bb.add_argument("--weights", default="default")
    bb.add_argument("--images", type=int, default=64, help="generated PNGs (default 64)")
    bb.add_argument("--size", default="256x256", help="WIDTHxHEIGHT of the images (default 256x256)")
    bb.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    bb.add_argument("--backend", choices=["auto", "torch", "tensorrt"], default="auto")
    args = parser.parse_args(argv)

    if args.what == "batch":
        try:
            w, h = (int(v) for v in args.size.lower().split("x"))
        except ValueError:
            parser.error(f"--size must be WIDTHxHEIGHT, got {args.size!r}")
        if args.images < 2 or w < 1 or h < 1 or min(args.workers) < 1:
            parser.error("--images must be >= 2, the size and --workers positive")
        r = bench_batch(args.weights, args.images, h, w, args.workers, args.backend)
        print(f"{r['images']} images {r['size']}, backend {r['backend_used']}, {r['cpus']} CPUs; sequential loop: "
              f"{r['sequential_s']:.1f} s, {r['sequential_ips']:.2f} images/s")
        print("| workers | job s | images/s (job) | vs sequential | first result after s | images/s after the first "
              "| vs sequential |\n|---:|---:|---:|---:|---:|---:|---:|")
        for row in r["workers"]:
            print(f"| {row['workers']} | {row['seconds']:.1f} | {row['ips']:.2f} | {row['ratio']:.2f}x | "
                  f"{row['startup_s']:.1f} | {row['steady_ips']:.2f} | {row['steady_ratio']:.2f}x |")
        return 0

    if args.what == "video":
        rows = bench_video(args.weights, args.resolution, args.frames, args.format, args.device)
        print("| format | size | frames | seconds | frames/s (decode + infer + encode) |\n|---|---|---:|---:|---:|")
        for r in rows:
            print(f"| {r['format']} | {r['resolution']} | {r['frames']} | {r['seconds']:.1f} | {r['fps']:.2f} |")
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"header": {"weights": args.weights, "device": args.device}, "rows": rows}, f, indent=2)
        return 0

    if args.what == "pipeline":
        import os

        import torch

        backends = args.backend
        if backends is None:
            backends = ["torch:cpu:fp32", "onnxruntime:cpu:fp32"]
            if torch.cuda.is_available():
                backends += ["torch:cuda:fp32", "torch:cuda:fp16", "tensorrt:cuda:fp16", "tensorrt:cuda:fp32"]
        for b in backends:
            try:
                backend_spec(b)
            except ValueError as err:
                parser.error(str(err))
        if args.threads and args.cpu_configs:
            parser.error("--threads and --cpu-configs are alternatives")
        if args.threads and min(args.threads) < 1:
            parser.error("--threads: thread counts must be >= 1")
        configs = [{"threads": t} for t in args.threads] if args.threads else None
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
