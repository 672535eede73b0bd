"""``sitm-trt build-engine``: build (or verify) a TensorRT engine ahead of time into the engine cache.

Useful in a container image build: the first ``sitm_trt.infer`` on the GPU then finds its engine. With
TensorRT-RTX no GPU is needed (the engine is portable across the RTX GPUs it supports); classic TensorRT
builds for the GPU it runs on. ``--output FILE`` also copies the engine out of the cache.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def _hw(text: str) -> tuple[int, int]:
    """'1920x1080' (width x height) -> (height, width)."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT such as 1920x1080, got {text!r}") from None
    if w < 1 or h < 1:
        raise argparse.ArgumentTypeError(f"sizes must be positive, got {text!r}")
    return h, w


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sitm-trt build-engine", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", default="default", help="shipped name or .safetensors path (default: default)")
    p.add_argument("--precision", choices=["fp16", "fp32"], default="fp16")
    p.add_argument("--min", type=_hw, default=(64, 64), metavar="WxH", help="smallest frame (default 64x64)")
    p.add_argument("--opt", type=_hw, default=(1080, 1920), metavar="WxH", help="tuning size (default 1920x1080)")
    p.add_argument("--max", type=_hw, default=(2160, 3840), metavar="WxH", help="largest frame (default 3840x2160)")
    p.add_argument("--batch", type=int, default=1, help="largest batch (default 1)")
    p.add_argument("--flavour", choices=["tensorrt", "tensorrt-rtx"], default=None,
                   help="default: classic TensorRT when importable, else TensorRT-RTX")
    p.add_argument("--cache-dir", default=None, help="engine cache (default $SITM_TRT_CACHE/engines or ~/.cache/sitm-trt/engines)")
    p.add_argument("--output", type=Path, default=None, help="also copy the engine to this file")
    return p


def main(argv: list[str] | None = None) -> int:
    """Exit status: 0 built or found, 2 any failure (bad arguments, weights, cache, TensorRT), with one line
    ``build-engine: error: ...`` on stderr."""
    args = parser().parse_args(argv)
    from sitm_trt.errors import EngineError, WeightsError

    try:
        return _main(args)
    except (WeightsError, EngineError, ImportError) as err:
        print(f"build-engine: error: {err}", file=sys.stderr)
        return 2
    except (OSError, RuntimeError) as err:  # a TensorRT build failure, an unwritable --output, ...
        print(f"build-engine: error: {type(err).__name__}: {err}", file=sys.stderr)
        return 2


def _main(args: argparse.Namespace) -> int:
    from sitm_trt import kernels
    from sitm_trt.runtime.backends.tensorrt_backend import prepare_engine
    from sitm_trt.runtime.backends.trt_engine import EngineCache, Profile, find_flavour
    from sitm_trt.weights import load

    if not (args.min[0] <= args.opt[0] <= args.max[0] and args.min[1] <= args.opt[1] <= args.max[1]):
        print("build-engine: need --min <= --opt <= --max in both width and height", file=sys.stderr)
        return 2
    if args.batch < 1:
        print("build-engine: --batch must be >= 1", file=sys.stderr)
        return 2
    if args.output is not None and args.output.is_dir():
        print(f"build-engine: error: --output {args.output} is a folder (give a file name)", file=sys.stderr)
        return 2
    weights = load(args.weights)
    flavour = find_flavour(args.flavour)
    props = None
    count, _ = kernels.extension().cuda_devices()
    if count:
        props = dict(kernels.extension().device_properties(0))
    profile = Profile(min_hw=args.min, opt_hw=args.opt, max_hw=args.max, max_batch=args.batch)
    cache = EngineCache(args.cache_dir)
    t0 = time.perf_counter()
    validate = None
    if props is not None and flavour.supports_compute_capability(*props["compute_capability"]):
        trt = flavour.module  # a cached engine must also deserialize on this GPU, or it is rebuilt
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))

        def validate(data: bytes) -> bool:
            return runtime.deserialize_cuda_engine(data) is not None

    data, built, key = prepare_engine(weights, precision=args.precision, profile=profile, flavour=flavour, cache=cache,
                                      device_props=props, validate=validate, log=lambda m: print(m, file=sys.stderr))
    path = cache.paths(key)[0]
    if built:
        what = "built"
    elif validate is not None:
        what = "found in the cache (deserialized on this GPU)"
    else:  # a checksum that matches its sidecar proves the file is the one stored, not that it is an engine
        what = ("found in the cache (checksum matches its sidecar; not deserialized here without a usable GPU: the "
                "first use deserializes it and rebuilds it if that fails)")
    print(f"{flavour.name} {flavour.version} engine {what}: {path} ({len(data) / 1e6:.1f} MB, "
          f"{time.perf_counter() - t0:.1f} s; {weights.preset_name}, {args.precision}, "
          f"{profile.padded(weights.stride).describe()}; target {key.target})")
    if args.output:
        from sitm_trt.files import atomic_write

        args.output.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(args.output, data)  # never a partial copy
        print(f"copied to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
