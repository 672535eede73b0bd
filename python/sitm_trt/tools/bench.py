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

# The benchmarks themselves live beside this command: bench_kernels (the kernels against torch eager),
# bench_pipeline (pre, network, post per backend) and bench_commands (sitm-trt video and batch end to end);
# tiling_probe measures tiled inference. This module parses the command line and prints their tables; the row
# types and formatters are importable from here to read a --json file back (docs/gpu.md).

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict

from sitm_trt.tools.bench_commands import bench_batch, bench_video
from sitm_trt.tools.bench_common import RESOLUTIONS
from sitm_trt.tools.bench_kernels import Row, bench_kernels, format_table
from sitm_trt.tools.bench_pipeline import PipeRow, backend_spec, bench_pipeline, format_pipeline

__all__ = ["main", "Row", "PipeRow", "bench_kernels", "bench_pipeline", "bench_video", "bench_batch", "backend_spec",
           "format_table", "format_pipeline"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sitm-trt bench", description=__doc__.replace("``", ""),
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
    bb.add_argument("--backend", choices=["auto", "torch", "tensorrt", "onnxruntime"], default="auto")
    args = parser.parse_args(argv)
    # mistakes are one usage line (exit 2), not a traceback from the middle of a run
    if getattr(args, "repeats", 1) < 1 or getattr(args, "warmup", 0) < 0:
        parser.error("--repeats must be >= 1 and --warmup >= 0")
    if args.what in ("video", "batch"):
        from sitm_trt.weights import load

        try:
            load(args.weights)
        except (ValueError, TypeError) as err:  # WeightsError is a ValueError
            parser.error(f"--weights: {err}")
    if args.what == "video":
        if args.frames < 1:
            parser.error("--frames must be >= 1")
        if args.device is not None:
            from sitm_trt.tools.cli_common import UsageError, check_runtime

            try:
                check_runtime(argparse.Namespace(device=args.device, backend="auto", precision=None))
            except UsageError as err:
                parser.error(str(err))
    if args.what == "batch":
        from sitm_trt.runtime.device import cuda_devices

        if args.backend == "tensorrt" and not cuda_devices()[0]:
            parser.error("--backend tensorrt runs on a GPU, and this machine has none usable")
        try:
            import ray.data  # noqa: F401
        except ImportError:
            parser.error('bench batch needs Ray: pip install "sitm-trt[ray]"')

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
