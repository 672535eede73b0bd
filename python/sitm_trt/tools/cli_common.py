"""What the ``sitm-trt`` sub-commands share: the usage error, the ``sitm-trt:`` line on stderr, and ``--device``.

Standard library only at import time, as the rest of the command line: ``sitm-trt --help`` stays fast.
"""

from __future__ import annotations

import sys

__all__ = ["UsageError", "check_runtime", "resolve_device", "say"]


class UsageError(Exception):
    """Bad arguments: reported as ``sitm-trt: error: ...`` with exit status 2."""


def say(msg: str) -> None:
    """``sitm-trt: msg`` on stderr (notices, errors, the summary of ``infer``)."""
    print(f"sitm-trt: {msg}", file=sys.stderr)


def resolve_device(name: str) -> str:
    """``--device`` -> a device string: ``auto`` is the first GPU (``cuda:0``) when the extension sees one, else
    ``cpu``; ``cuda`` is ``cuda:0``; anything else is passed on as given."""
    if name != "auto":
        return name if name != "cuda" else "cuda:0"
    from sitm_trt import kernels

    try:
        count, _ = kernels.extension().cuda_devices()
    except ImportError:
        return "cpu"
    return "cuda:0" if count else "cpu"


def check_runtime(args) -> str:
    """``--device``, ``--backend`` and ``--precision`` checked together before any output is made (a usage error
    names the option); returns the device string of :func:`resolve_device`. A GPU device must be one the
    extension can use; on the CPU, TensorRT and fp16 are refused (the CPU backends run fp32)."""
    import re

    dev = resolve_device(args.device)
    if dev != "cpu":
        m = re.fullmatch(r"cuda:(\d+)", dev)
        if m is None:
            raise UsageError(f"--device {args.device}: expected auto, cpu, cuda or cuda:N")
        from sitm_trt.runtime.device import cuda_devices

        count, why = cuda_devices()
        if not count:
            raise UsageError(f"--device {args.device}: no usable CUDA device ({why})")
        if int(m[1]) >= count:
            raise UsageError(f"--device {args.device}: no such GPU ({count} visible: cuda:0 to cuda:{count - 1})")
        return dev
    if args.backend == "tensorrt":
        raise UsageError("--backend tensorrt runs on a GPU, and this run is on the CPU (--device cpu, or no GPU "
                         "here): use --backend auto, onnxruntime or torch")
    if args.precision == "fp16":
        raise UsageError("--precision fp16 needs a GPU; on the CPU the network runs in fp32 (leave --precision out)")
    return dev


def check_outputs(*, image_format: str | None = None, video_kind: str | None = None, want_float: bool = False,
                  mastering_primaries: str | None = None) -> None:
    """Output options that cannot apply, one usage error each (``infer``, ``video`` and ``batch`` alike):
    ``--float`` with Radiance .hdr images or a 10-bit video, ``--mastering-primaries`` with anything but HDR10."""
    if want_float and image_format == "hdr":
        raise UsageError("--float: Radiance .hdr is RGBE (a shared exponent), with no float option; --float is for EXR")
    if want_float and video_kind in ("hdr10", "hlg"):
        raise UsageError(f"--float: {video_kind} video is 10-bit; --float is for an EXR sequence (-f exr)")
    if mastering_primaries is not None and video_kind is not None and video_kind != "hdr10":
        raise UsageError(f"--mastering-primaries: only HDR10 video carries mastering display metadata; this output "
                         f"is {video_kind}")
