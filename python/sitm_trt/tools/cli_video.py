"""``sitm-trt video IN OUT``: an SDR video -> HDR10 / HLG video or an EXR sequence (:func:`cmd_video`), through
:func:`sitm_trt.media.video.convert`; see :mod:`sitm_trt.media.video` and docs/video.md. :func:`video_options` is
shared with ``sitm-trt batch``. The options are parsed by :func:`sitm_trt.tools.cli.build_parser`.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from sitm_trt.tools.cli_common import UsageError, check_outputs, check_runtime, say

__all__ = ["cmd_video", "significant", "video_options"]


def video_options(args: argparse.Namespace, fmt: str | None) -> Any:
    """The :class:`sitm_trt.media.video.VideoOptions` of the parsed video options (``sitm_trt.tools.cli._video_args``),
    checked."""
    from sitm_trt.media import video

    opts = video.VideoOptions(
        format=fmt, peak_nits=args.peak_nits, ref_white=args.ref_white, crf=args.crf, preset=args.preset,
        lossless=args.lossless, x265_params=args.x265_params, mastering_primaries=args.mastering_primaries or "bt709",
        smoothing=args.smoothing, scene_cut=args.scene_cut, audio=not args.no_audio, max_frames=args.max_frames,
        exr_half=not args.float)
    try:
        opts.check()
    except ValueError as err:
        raise UsageError(str(err)) from err
    return opts


def cmd_video(args: argparse.Namespace) -> int:
    """``sitm-trt video``: 0 when the output is written (every failure raises)."""
    from sitm_trt.media import video

    opts = video_options(args, args.format)
    if args.float or args.mastering_primaries is not None:
        from pathlib import Path

        from sitm_trt.media.video.conversion import _output_kind

        # the format -f names, else the one the output's name implies (out.mp4: hdr10); VideoError for a name
        # no format fits is reported as such
        kind = _output_kind(Path(args.output), args.format)
        check_outputs(video_kind=kind, want_float=args.float, mastering_primaries=args.mastering_primaries)
    device = check_runtime(args)
    pipeline = None
    if args.threads is not None:  # else convert() makes the pipeline, with the backend's default threads
        from sitm_trt.runtime.pipeline import Pipeline

        pipeline = Pipeline(args.weights, backend=args.backend, precision=args.precision, threads=args.threads,
                            cuda_graphs=args.cuda_graphs)
    res = video.convert(args.input, args.output, weights=args.weights, pipeline=pipeline, backend=args.backend,
                        precision=args.precision, options=opts, device=device,
                        progress=not args.quiet, overwrite=args.overwrite, log=say, cuda_graphs=args.cuda_graphs)
    if not args.quiet:
        meta = f", MaxCLL {res.max_cll} / MaxFALL {res.max_fall} cd/m2" if res.format == "hdr10" else ""
        print(f"{res.output}: {res.frames} frames {res.width}x{res.height} {res.format} in {res.seconds:.1f} s "
              f"({significant(res.fps)} fps){meta}, {len(res.scene_cuts)} scene cuts", file=sys.stderr)
    return 0


def significant(x: float, digits: int = 3) -> str:
    """``x`` with ``digits`` significant digits, in plain notation: 0.0523, 2.10, 24.0, 1234."""
    import math

    if x == 0 or not math.isfinite(x):
        return f"{x:.{digits - 1}f}" if x == 0 else str(x)
    return f"{x:.{max(0, digits - 1 - math.floor(math.log10(abs(x))))}f}"
