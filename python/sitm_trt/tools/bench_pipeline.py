"""``sitm-trt bench pipeline``: ms per frame of the pre kernel, the network and the post kernel, and end to end.

Frames/s and peak memory per backend, precision and preset, with the speed-up of each backend over torch. The
backends run in one process and take turns frame by frame, so a busy machine slows them alike.
"""

from __future__ import annotations

import platform
import statistics
import time
from dataclasses import dataclass

from sitm_trt.tools.bench_common import RESOLUTIONS

__all__ = ["PipeRow", "backend_spec", "bench_pipeline", "format_pipeline", "load_weights_for"]


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
