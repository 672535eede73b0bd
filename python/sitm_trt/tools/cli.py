"""The ``sitm-trt`` command: ``infer`` (images), ``video``, ``batch`` (both, on Ray Data), ``info`` and ``bench``.

This module holds the parser (every option and help text, :func:`build_parser`) and :func:`main`, which
dispatches and turns failures into exit statuses; each sub-command lives in its own module:

``sitm-trt infer IMAGES... [-o OUT]``: LDR images to linear HDR files and previews; see
:mod:`sitm_trt.tools.cli_infer`.

``sitm-trt video IN OUT``: see :mod:`sitm_trt.tools.cli_video`, :mod:`sitm_trt.media.video` and docs/video.md.

``sitm-trt batch INPUT... -o OUT``: images and videos on a Ray cluster; see :mod:`sitm_trt.tools.batch` and docs/batch.md.

``sitm-trt bench`` and ``sitm-trt build-engine`` parse their own arguments (:mod:`sitm_trt.tools.bench`,
:mod:`sitm_trt.tools.build_engine`).

Exit status: 0 done, 1 some inputs failed (listed at the end; the others are converted), 2 bad usage or nothing could run (malformed
weights, an engine that cannot be built or cached, a frame over the memory budget: one ``sitm-trt: error:``
line), 130 Ctrl-C, 143 SIGTERM during ``video``. docs/reliability.md lists what is refused and how.

Importing this module and the sub-command modules costs the standard library only (a sub-command imports
NumPy, OpenCV and the runtime when it runs), so ``sitm-trt --help`` is quick.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from sitm_trt.tools.cli_common import UsageError, say
from sitm_trt.tools.cli_infer import HDR_FORMATS, HDR_PREVIEW_FORMATS, PREVIEW_KINDS, cmd_infer
from sitm_trt.tools.cli_video import cmd_video


def _cmd_info(args: argparse.Namespace) -> int:
    import sitm_trt

    print(json.dumps(sitm_trt.info(), indent=2, default=str))
    return 0


def _cmd_batch(args: argparse.Namespace) -> int:
    from sitm_trt.tools import batch

    return batch.run_cli(args)


def _memory_size(text: str) -> int:
    from sitm_trt.runtime import memory

    try:
        return memory.parse_bytes(text, "--max-memory")
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from err


def _version() -> str:
    import sitm_trt

    return f"sitm-trt {sitm_trt.__version__}"


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def _runtime_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--weights", default="default",
                   help="a weights file or a shipped name: 'default' (any input; chosen for camera photos through the "
                        "sRGB curve) or 'filmic' (inputs declared to come through a filmic S-curve grade, e.g. ACES or "
                        "Hable view transforms; README, 'Quality of the shipped weights')")
    p.add_argument("--backend", choices=["auto", "torch", "tensorrt", "onnxruntime"], default="auto",
                   help="auto: ONNX Runtime on the CPU; TensorRT on a GPU where it can run (docs/runtime.md)")
    p.add_argument("--precision", choices=["fp16", "fp32"], default=None,
                   help="default: fp16 with TensorRT, fp32 with torch and ONNX Runtime")
    p.add_argument("--device", default="auto", help="auto (the first GPU if any), cpu, cuda or cuda:N")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    p.add_argument("-q", "--quiet", action="store_true",
                   help="no progress bar, per-file lines or summary (failures are still listed)")


def _threads_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=_positive_int, default=None, metavar="N",
                   help="CPU threads of the network (default: the backend's, ONNX Runtime: one per physical core; "
                        "1 was as fast or faster on a busy shared machine: BENCHMARKS.md, docs/runtime.md)")


def _memory_arg(p: argparse.ArgumentParser) -> None:
    then = "is converted in tiles (needs PyTorch), or refused when even tiles do not fit"
    p.add_argument("--max-memory", type=_memory_size, default=None, metavar="SIZE",
                   help="host memory budget such as 8G or 512M (default: $SITM_TRT_MEMORY_LIMIT, else the memory "
                        f"available now: MemAvailable or the cgroup limit; 0: no limit); a frame over it {then}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sitm-trt",
                                     description="Stack-based inverse tone mapping (LDR -> linear HDR).")
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="how sitm-trt was built and what it can use here")
    sub.add_parser("bench", help="benchmarks (sitm-trt bench -h)", add_help=False)
    sub.add_parser("build-engine", help="prebuild a TensorRT engine into the cache (sitm-trt build-engine -h)",
                   add_help=False)

    inf = sub.add_parser("infer", help="LDR images -> HDR images (EXR or Radiance .hdr)",
                         description="LDR images (PNG, JPEG, TIFF, WebP, BMP, AVIF; 8 or 16 bits) -> linear HDR "
                                     "(1.0 = the input's white). Images are turned upright by their EXIF orientation "
                                     "and read as sRGB (a Display P3 or Adobe RGB profile is reported, not "
                                     "converted). Grayscale stays gray; alpha is kept in EXR (premultiplied), dropped "
                                     "in .hdr. One line per converted image on stdout, a summary on stderr; a file "
                                     "that fails is listed at the end and the others are converted (exit status 1).")
    inf.add_argument("inputs", nargs="*", metavar="IMAGE",
                     help="files, folders (their images, not recursive) or globs (quote a glob for recursion: "
                          "'in/**/*.png')")
    inf.add_argument("--sample", action="store_true",
                     help="also convert the sample photo shipped with sitm-trt (sitm_trt.samples.SAMPLE, CC0); its "
                          "outputs replace those of an earlier --sample run")
    inf.add_argument("-o", "--output", help="output folder (default: beside each input), or a file name for one input")
    _image_args(inf, previews=True)
    inf.add_argument("--skip-existing", action="store_true",
                     help="skip (and list) inputs whose outputs all exist; an input with some of them (a preview asked "
                          "for later) is converted again for the missing ones, and the existing files are kept")
    _runtime_args(inf)
    _threads_arg(inf)
    _memory_arg(inf)
    inf.add_argument("--tile", type=_positive_int, default=None, metavar="N",
                     help="convert every image in N-pixel tiles (memory bounded by the tile; the same pixels within "
                          "float rounding, docs/tiling.md; needs PyTorch); default: only images over --max-memory")

    vid = sub.add_parser("video", help="SDR video -> HDR10 / HLG video or an EXR sequence",
                         description="SDR video (anything FFmpeg reads) -> HEVC Main 10 HDR10 (PQ) or HLG in "
                                     ".mp4/.mov/.mkv, or an OpenEXR sequence (OUT a folder or frames/%06d.exr).")
    vid.add_argument("input", metavar="IN")
    vid.add_argument("output", metavar="OUT")
    vid.add_argument("-f", "--format", choices=["hdr10", "hlg", "exr"], default=None,
                     help="default: exr for a folder (an existing one, or a name without an extension) or "
                          "*.exr, else hdr10")
    _video_args(vid)
    vid.add_argument("--float", action="store_true", help="EXR sequence as float32 (default: half)")
    vid.add_argument("--cuda-graphs", action="store_true",
                     help="TensorRT: replay the engine as a CUDA graph for each frame (fixed frame size)")
    _runtime_args(vid)
    _threads_arg(vid)
    _memory_arg(vid)

    bat = sub.add_parser("batch", help="images and videos -> HDR on a Ray cluster (resumable; needs sitm-trt[ray])",
                         description="Images and videos (files, folders, globs, or object-store URIs such as "
                                     "s3://bucket/photos/) -> the outputs of `infer` / `video` in OUTPUT_DIR, on Ray "
                                     "Data: a local Ray instance by default, or a cluster (--address / RAY_ADDRESS). "
                                     "Existing outputs are skipped; OUTPUT_DIR/manifest.jsonl records every item "
                                     "(docs/batch.md).")
    bat.add_argument("inputs", nargs="+", metavar="INPUT", help="files, folders (recursive), globs or URIs")
    bat.add_argument("-o", "--output", required=True, metavar="OUTPUT_DIR",
                     help="output folder (a folder input's sub-folders are kept)")
    _image_args(bat)
    bat.add_argument("--video-format", choices=["hdr10", "hlg", "exr"], default="hdr10",
                     help="videos: hdr10 or hlg (NAME.mp4, see --video-container) or an EXR sequence (folder NAME/)")
    bat.add_argument("--video-container", choices=["mp4", "mov", "mkv"], default="mp4",
                     help="the container of hdr10 / hlg videos (default mp4)")
    _video_args(bat)
    _runtime_args(bat)
    bat.add_argument("--address", default=None,
                     help="Ray cluster to run on (default: $RAY_ADDRESS, else a local Ray started for the job)")
    bat.add_argument("--workers", type=int, default=None,
                     help="model replicas (default: one per GPU, else one per --cpus-per-worker CPUs)")
    bat.add_argument("--cpus-per-worker", type=float, default=1.0, help="CPUs per worker (default 1)")
    bat.add_argument("--num-gpus-per-worker", type=float, default=None,
                     help="GPUs per worker (default: 1 when the cluster has GPUs, else 0: CPU-only workers)")
    bat.add_argument("--retries", type=int, default=2,
                     help="extra attempts for an item that fails for a reason other than its input (default 2)")
    bat.add_argument("--manifest", default=None, help="JSONL manifest (default: OUTPUT_DIR/manifest.jsonl)")
    return parser


def _image_args(p: argparse.ArgumentParser, previews: bool = False) -> None:
    """The image options of ``infer`` and ``batch``; ``previews``: the preview kinds and the side-by-side picture
    (``infer``), else ``--preview`` is a flag for the SDR preview (``batch``)."""
    p.add_argument("-f", "--format", choices=sorted(HDR_FORMATS), default=None if previews else "exr",
                   help="exr: OpenEXR, linear, half float (--float: float32), alpha kept (default); hdr: Radiance "
                        "RGBE, no alpha" + ("; -o NAME.hdr implies hdr" if previews else ""))
    p.add_argument("--float", action="store_true", help="EXR as float32 (default: half)")
    if not previews:
        p.add_argument("--preview", action="store_true",
                       help="also write NAME.preview.png (SDR, tone mapped as sitm-trt infer --preview sdr)")
    else:
        p.add_argument("--preview", nargs="?", const="sdr", choices=PREVIEW_KINDS, default=None,
                       help="also write previews: sdr (the default) NAME.preview.png, an 8-bit sRGB picture that "
                            "keeps highlights bright and coloured; hdr NAME.preview-hdr.png, a 16-bit PQ PNG (BT.2100, "
                            "cICP) that HDR screens show as HDR; or both (give the option after the images, or "
                            "--preview=sdr)")
        p.add_argument("--hdr-preview-format", choices=sorted(HDR_PREVIEW_FORMATS), default="png",
                       help="the HDR preview's file: png (default), avif (10-bit PQ) or ultrahdr "
                            "(NAME.preview-hdr.jpg, an SDR JPEG with an HDR gain map); avif and ultrahdr need: "
                            "pip install imagecodecs")
        p.add_argument("--side-by-side", action="store_true",
                       help="also write the input next to each preview (the SDR one without --preview): "
                            "NAME.side-by-side.png (SDR) and/or NAME.side-by-side-hdr.png (PQ, the input as an HDR "
                            "screen shows SDR)")
    p.add_argument("--batch", type=int, default=4, help="images of one size per network call (default 4)")


def _video_args(vid: argparse.ArgumentParser) -> None:
    vid.add_argument("--peak-nits", type=float, default=1000.0, help="display peak in cd/m2 (default 1000)")
    vid.add_argument("--ref-white", type=float, default=203.0,
                     help="cd/m2 of the SDR reference white, linear 1.0 (default 203, ITU-R BT.2408)")
    vid.add_argument("--crf", type=float, default=18.0, help="libx265 CRF (default 18)")
    vid.add_argument("--preset", default="medium", help="libx265 preset (default medium)")
    vid.add_argument("--lossless", action="store_true", help="libx265 lossless")
    vid.add_argument("--x265-params", default="", help="extra libx265 parameters, key=value:key=value")
    vid.add_argument("--mastering-primaries", choices=["bt709", "p3", "bt2020"], default=None,
                     help="mastering display primaries in the HDR10 metadata (default bt709, the content gamut)")
    vid.add_argument("--smoothing", type=float, default=0.25,
                     help="time constant (s) of the curve-coefficient smoothing against flicker; 0 = off "
                          "(default 0.25)")
    vid.add_argument("--scene-cut", type=float, default=0.1,
                     help="scene-cut threshold: mean luma change of a 16x16 thumbnail (default 0.1)")
    vid.add_argument("--no-audio", action="store_true", help="drop the audio")
    vid.add_argument("--max-frames", type=int, default=None, help="stop after this many frames")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bench"]:
        from sitm_trt.tools import bench

        return bench.main(argv[1:])
    if argv[:1] == ["build-engine"]:
        from sitm_trt.tools import build_engine

        return build_engine.main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    commands = {"info": _cmd_info, "infer": cmd_infer, "video": cmd_video, "batch": _cmd_batch}
    from sitm_trt.errors import EngineError, WeightsError

    try:
        from sitm_trt.runtime import memory

        if os.environ.get("SITM_TRT_MEMORY_LIMIT"):  # a malformed limit is a usage error, not a traceback later
            try:
                memory.budget()
            except ValueError as err:
                raise UsageError(str(err)) from err
        if getattr(args, "max_memory", None) is not None:
            with memory.limited(args.max_memory):
                return commands[args.command](args)
        return commands[args.command](args)
    except KeyboardInterrupt as err:
        from sitm_trt.errors import Terminated

        say("terminated" if isinstance(err, Terminated) else "interrupted")
        return 143 if isinstance(err, Terminated) else 130
    except (UsageError, WeightsError, EngineError, MemoryError) as err:
        say(f"error: {err}")
        return 2
    except ImportError as err:
        say(f"error: {err}")
        return 2
    except Exception as err:  # noqa: BLE001 - the command line reports, the library raises
        from sitm_trt.media.video import VideoError

        if isinstance(err, VideoError):
            say(f"error: {err}")
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
