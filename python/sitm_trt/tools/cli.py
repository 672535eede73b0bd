"""The ``sitm-trt`` command: ``infer`` (images), ``video``, ``batch`` (both, on Ray Data), ``info`` and ``bench``.

``sitm-trt infer IMAGES... [-o OUT]``: LDR images (PNG/JPEG/TIFF, 8 or 16 bit; files or globs) to linear HDR
OpenEXR (half by default, ``--float``) or Radiance ``.hdr``, plus an optional tone-mapped PNG preview.
Grayscale inputs are converted as RGB with R = G = B and written gray (the mean of the three outputs);
an alpha channel is kept in EXR outputs as ``A`` with the colour premultiplied (the OpenEXR convention)
and dropped, with a notice, in ``.hdr`` outputs. Images of one size are batched (``--batch``).

``sitm-trt video IN OUT``: see :mod:`sitm_trt.media.video` and docs/video.md.

``sitm-trt batch INPUT... -o OUT``: images and videos on a Ray cluster; see :mod:`sitm_trt.tools.batch` and docs/batch.md.

Exit status: 0 done, 1 some inputs failed (each is reported), 2 bad usage or nothing could run (malformed
weights, an engine that cannot be built or cached, a frame over the memory budget: one ``sitm-trt: error:``
line), 130 Ctrl-C, 143 SIGTERM during ``video``. docs/reliability.md lists what is refused and how.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import glob
import json
import os
import sys
from pathlib import Path
from typing import Any, Iterator

_HDR_FORMATS = {"exr": ".exr", "hdr": ".hdr"}


class UsageError(Exception):
    """Bad arguments: reported as ``sitm-trt: error: ...`` with exit status 2."""


def _cmd_info(args: argparse.Namespace) -> int:
    import sitm_trt

    print(json.dumps(sitm_trt.info(), indent=2, default=str))
    return 0


def _err(msg: str) -> None:
    print(f"sitm-trt: {msg}", file=sys.stderr)


# ---------------------------------------------------------------------------------------------------------
# infer
# ---------------------------------------------------------------------------------------------------------


def expand_inputs(patterns: list[str]) -> list[Path]:
    """Files and globs (``*``, ``?``, ``[...]``, ``**``) -> existing files, in order, without duplicates."""
    out: list[Path] = []
    seen: set[str] = set()
    for pat in patterns:
        if any(c in pat for c in "*?[") and not Path(pat).exists():
            matches = sorted(glob.glob(pat, recursive=True))
            matches = [m for m in matches if Path(m).is_file()]
            if not matches:
                raise UsageError(f"{pat}: no file matches")
        else:
            if not Path(pat).is_file():
                raise UsageError(f"{pat}: no such file")
            matches = [pat]
        for m in matches:
            key = os.path.realpath(m)
            if key not in seen:
                seen.add(key)
                out.append(Path(m))
    return out


def plan_outputs(inputs: list[Path], output: str | None, fmt: str) -> list[Path]:
    """Where each input's HDR goes: beside it, into the folder ``output``, or (one input) the file ``output``."""
    from sitm_trt.media.io import HDR_EXTENSIONS, LDR_EXTENSIONS

    for p in inputs:
        ext = p.suffix.lower()
        if ext in HDR_EXTENSIONS:
            raise UsageError(f"{p}: is already an HDR image (inputs are PNG/JPEG/TIFF)")
        if ext not in LDR_EXTENSIONS:
            raise UsageError(f"{p}: unsupported image type {ext!r} (expected {', '.join(LDR_EXTENSIONS)})")
    suffix = _HDR_FORMATS[fmt]
    if output is not None and Path(output).suffix.lower() in (".exr", ".hdr") and not Path(output).is_dir():
        if len(inputs) != 1:
            raise UsageError(f"-o {output} is a file name but there are {len(inputs)} inputs: give a folder")
        if Path(output).suffix.lower() != suffix:
            raise UsageError(f"-o {output} does not match --format {fmt}")
        return [Path(output)]
    if output is not None:
        try:
            Path(output).mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise UsageError(f"-o {output}: cannot create the output folder ({err.strerror or err})") from err
    outs = [(Path(output) if output is not None else p.parent) / (p.stem + suffix) for p in inputs]
    seen: dict[str, Path] = {}
    for p, o in zip(inputs, outs):
        key = os.path.realpath(o)
        if key in seen:
            raise UsageError(f"{seen[key]} and {p} would both be written to {o}")
        seen[key] = p
    return outs


def _png_has_alpha(data: bytes) -> bool:
    """PNG colour type 4 (gray + alpha) or 6 (RGBA), or a tRNS chunk, from the header bytes."""
    if data[:8] != b"\x89PNG\r\n\x1a\n" or len(data) < 26:
        return False
    return data[25] in (4, 6) or b"tRNS" in data[:4096]


def read_image(path: Path, max_pixels: int | None = None) -> tuple[Any, Any, bool]:
    """(RGB uint8/uint16 (H, W, 3), alpha in [0, 1] float32 (H, W) or None, grayscale?) of an LDR file."""
    import numpy as np

    from sitm_trt.media import io

    rgb = io.read_ldr(path, max_pixels=max_pixels)  # ImageReadError, or MemoryError from the declared size
    alpha, gray = None, False
    ext = path.suffix.lower()
    if ext in (".png", ".tif", ".tiff"):
        cv2 = io._cv2()
        data = Path(path).read_bytes()
        if ext != ".png" or _png_has_alpha(data):
            raw = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
            if raw is not None and raw.ndim == 3 and raw.shape[2] in (2, 4):
                alpha = io.to_float(np.ascontiguousarray(raw[:, :, -1]))
            gray = raw is not None and (raw.ndim == 2 or raw.shape[2] in (1, 2))
            if ext == ".png" and len(data) > 25:
                gray = data[25] in (0, 4)  # colour type 0 / 4 (gray + alpha, which OpenCV hands over as BGRA)
        else:
            gray = data[25] == 0  # PNG colour type 0: grayscale
        if ext != ".png":
            try:
                pages = cv2.imcount(str(path))
            except cv2.error:
                pages = 1
            if pages > 1:
                _err(f"{path}: has {pages} pages (images); converting the first only")
    if ext in (".jpg", ".jpeg"):
        gray = bool((rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all())
    return rgb, alpha, gray


def write_image_outputs(src: Path, dst: Path, hdr: Any, alpha: Any, gray: bool, *, half: bool, preview: bool,
                        notice: Any = None, exclusive: bool = False) -> None:
    """Write one converted image as ``sitm-trt infer`` does: the HDR file (gray kept gray, alpha kept in EXR and
    dropped in .hdr with a ``notice``) and, with ``preview``, ``NAME.preview.png``; every file atomically.
    ``exclusive`` (``infer`` without ``--overwrite``): a file that appeared meanwhile is not replaced
    (``FileExistsError``), so two runs writing the same output cannot both succeed."""
    import numpy as np

    from sitm_trt.media import io

    if gray:
        hdr = np.repeat(hdr.mean(axis=2, keepdims=True), 3, axis=2)
    if alpha is not None and dst.suffix.lower() == ".exr":
        io.write_exr(dst, hdr, half=half, alpha=alpha, exclusive=exclusive)
    else:
        if alpha is not None and notice is not None:
            notice(f"{src}: alpha dropped (Radiance .hdr has no alpha; use --format exr)")
        io.write_hdr_image(dst, hdr, half=half, exclusive=exclusive)
    if preview:
        io.write_png(dst.with_suffix(".preview.png"), io.tonemap_preview(hdr), exclusive=exclusive)


def _make_pipeline(args: argparse.Namespace) -> Any:
    from sitm_trt.runtime.pipeline import Pipeline

    return Pipeline(args.weights, backend=args.backend, precision=args.precision, threads=getattr(args, "threads", None))


def _device(name: str) -> str:
    if name != "auto":
        return name if name != "cuda" else "cuda:0"
    from sitm_trt import kernels

    try:
        count, _ = kernels.extension().cuda_devices()
    except ImportError:
        return "cpu"
    return "cuda:0" if count else "cpu"


def _run_batch(pipe: Any, batch: Any, device: str) -> Any:
    """(N, H, W, 3) uint8/uint16 host array -> (N, H, W, 3) float32 host HDR, on ``device``."""
    import numpy as np

    if device == "cpu":
        return pipe(batch, layout="hwc")
    from sitm_trt import kernels

    ext = kernels.extension()
    dev_in = ext.empty(list(batch.shape), str(batch.dtype), device, 0)
    ext.copy(kernels._capsule(dev_in, "infer", "x", 0), kernels._capsule(batch, "infer", "x", 0), 0)
    out = pipe(dev_in, layout="hwc", stream=0)
    host = np.empty(tuple(out.shape), np.float32)
    ext.copy(kernels._capsule(host, "infer", "out", 0), kernels._capsule(out, "infer", "out", 0), 0)
    ext.synchronize(0, int(device.split(":")[1]))
    return host


def _batches(items: list[tuple[Path, Path]], size: int,
             max_pixels: int | None = None) -> Iterator[list[tuple[Path, Path, Any, Any, bool]]]:
    """Read ahead in a thread; group consecutive images of one shape and dtype into batches of ``size``."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        futures = [pool.submit(read_image, src, max_pixels) for src, _ in items[:4]]
        batch: list = []
        for i, (src, dst) in enumerate(items):
            if i + 4 < len(items):
                futures.append(pool.submit(read_image, items[i + 4][0], max_pixels))
            try:
                rgb, alpha, gray = futures[i].result()
            except Exception as err:  # noqa: BLE001 - reported per file
                if batch:
                    yield batch
                    batch = []
                yield [(src, dst, err, None, False)]
                continue
            if batch and (batch[0][2].shape != rgb.shape or batch[0][2].dtype != rgb.dtype or len(batch) >= size):
                yield batch
                batch = []
            batch.append((src, dst, rgb, alpha, gray))
        if batch:
            yield batch


def _cmd_infer(args: argparse.Namespace) -> int:
    import numpy as np
    from tqdm import tqdm

    if args.batch < 1:
        raise UsageError(f"--batch must be >= 1, got {args.batch}")
    if args.sample:
        from sitm_trt.samples import SAMPLE

        args.inputs = [*args.inputs, str(SAMPLE)]
        if args.output is None:
            raise UsageError("--sample: give -o/--output (the sample lives inside the installed package)")
    if not args.inputs:
        raise UsageError("no input images (give files or globs, or --sample)")
    inputs = expand_inputs(args.inputs)
    outputs = plan_outputs(inputs, args.output, args.format)
    sources = {os.path.realpath(p): p for p in inputs}
    todo = []
    for src, dst in zip(inputs, outputs):
        targets = [dst] + ([dst.with_suffix(".preview.png")] if args.preview else [])
        for t in targets:  # an output never replaces an input, --overwrite or not
            if os.path.realpath(t) in sources:
                raise UsageError(f"{t}: is an output of {src} and also an input; refusing to overwrite an input")
            if t.is_dir():
                raise UsageError(f"{t}: is a folder")
        existing = [t for t in targets if t.exists()]
        if existing and not args.overwrite:
            if args.skip_existing:
                continue
            raise UsageError(f"{existing[0]}: exists (--overwrite to replace, --skip-existing to skip)")
        todo.append((src, dst))
    for folder in sorted({os.path.realpath(dst.parent) for _, dst in todo}):  # before any network work
        if not os.path.isdir(folder):
            raise UsageError(f"{folder}: no such folder for the outputs")
        if not os.access(folder, os.W_OK | os.X_OK):
            raise UsageError(f"{folder}: not writable (permission denied)")
    from sitm_trt.runtime import memory

    limit = memory.budget()
    max_pixels = None if limit is None else limit // memory.DECODED_BYTES_PER_PIXEL
    pipe = _make_pipeline(args)
    tiled: dict[int, Any] = {}  # tiled pipelines by tile size, made when an image does not fit untiled
    device = _device(args.device)
    failed: list[str] = []
    half = not args.float
    bar = tqdm(total=len(todo), unit="img", disable=args.quiet, dynamic_ncols=True)
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as writers:
        pending: list[concurrent.futures.Future] = []

        def run(batch: list) -> list:
            """HDR of the batch's images: the whole batch when it fits the memory budget, else one by one, and
            an image too large for one untiled call in tiles (torch), with a notice."""
            n, (h, w) = len(batch), batch[0][2].shape[:2]
            if device != "cpu" or memory.fits(pipe.weights, n, h, w)[0]:
                return list(_run_batch(pipe, np.stack([b[2] for b in batch]), device))
            if n > 1:
                return [h_ for b in batch for h_ in run([b])]
            tile = next((t for t in (1024, 512, 256, 128) if memory.fits(pipe.weights, 1, h, w, tiled=t)[0]), None)
            if tile is None:
                need = memory.fits(pipe.weights, 1, h, w, tiled=128)[1]
                raise MemoryError(f"{w}x{h} needs about {memory.format_bytes(need)} even in 128-pixel tiles, "
                                  f"{memory.format_bytes(limit)} available")
            tqdm.write(f"sitm-trt: {batch[0][0]}: {w}x{h} needs about "
                       f"{memory.format_bytes(memory.fits(pipe.weights, 1, h, w)[1])} in one piece, "
                       f"{memory.format_bytes(limit)} available: converting in {tile}-pixel tiles", file=sys.stderr)
            if tile not in tiled:
                from sitm_trt.runtime.pipeline import Pipeline

                try:
                    tiled[tile] = Pipeline(args.weights, backend="torch", tile=tile)
                except ImportError as err:  # tiling runs the torch module: this file fails, the others go on
                    raise MemoryError(f"{w}x{h} does not fit in {memory.format_bytes(limit)} in one piece, and "
                                      f"tiling needs the torch extra: pip install 'sitm-trt[torch]' ({err})") from err
            return [tiled[tile](batch[0][2], layout="hwc")]

        def write(src: Path, dst: Path, hdr: Any, alpha: Any, gray: bool) -> None:
            write_image_outputs(src, dst, hdr, alpha, gray, half=half, preview=args.preview,
                                notice=lambda m: tqdm.write(f"sitm-trt: {m}", file=sys.stderr),
                                exclusive=not args.overwrite)

        def fail(src: Path, err: BaseException) -> None:
            msg = str(err) if str(err).startswith(str(src)) else f"{src}: {err}"
            if isinstance(err, OSError) and err.strerror:
                msg = f"{src}: cannot write {err.filename or 'the output'}: {err.strerror}"
            failed.append(msg)
            tqdm.write(f"sitm-trt: {msg}", file=sys.stderr)

        def collect(futures: list) -> None:
            for src, f in futures:
                try:
                    f.result()
                except (OSError, ValueError, MemoryError) as err:  # a full disk, a vanished folder: that file
                    fail(src, err)

        for batch in _batches(todo, args.batch, max_pixels):
            if isinstance(batch[0][2], Exception):
                fail(batch[0][0], batch[0][2])
                bar.update(1)
                continue
            try:
                hdr = run(batch)
            except MemoryError as err:
                for b in batch:
                    fail(b[0], err)
                bar.update(len(batch))
                continue
            for (src, dst, _, alpha, gray), h in zip(batch, hdr):
                pending.append((src, writers.submit(write, src, dst, np.ascontiguousarray(h), alpha, gray)))
            done = [p for p in pending if p[1].done()]
            for p in done:
                pending.remove(p)
            collect(done)
            bar.update(len(batch))
        collect(pending)
    bar.close()
    if failed:
        _err(f"{len(failed)} of {len(inputs)} inputs failed")
        return 1
    return 0


# ---------------------------------------------------------------------------------------------------------
# video
# ---------------------------------------------------------------------------------------------------------


def video_options(args: argparse.Namespace, fmt: str | None) -> Any:
    """The :class:`sitm_trt.media.video.VideoOptions` of the parsed video options (``_video_args``), checked."""
    from sitm_trt.media import video

    opts = video.VideoOptions(
        format=fmt, peak_nits=args.peak_nits, ref_white=args.ref_white, crf=args.crf, preset=args.preset,
        lossless=args.lossless, x265_params=args.x265_params, mastering_primaries=args.mastering_primaries,
        smoothing=args.smoothing, scene_cut=args.scene_cut, audio=not args.no_audio, max_frames=args.max_frames,
        exr_half=not args.float)
    try:
        opts.check()
    except ValueError as err:
        raise UsageError(str(err)) from err
    return opts


def _cmd_video(args: argparse.Namespace) -> int:
    from sitm_trt.media import video

    opts = video_options(args, args.format)
    res = video.convert(args.input, args.output, weights=args.weights, backend=args.backend,
                        precision=args.precision, options=opts, device=_device(args.device),
                        progress=not args.quiet, overwrite=args.overwrite, log=_err, cuda_graphs=args.cuda_graphs)
    if not args.quiet:
        meta = f", MaxCLL {res.max_cll} / MaxFALL {res.max_fall} cd/m2" if res.format == "hdr10" else ""
        print(f"{res.output}: {res.frames} frames {res.width}x{res.height} {res.format} in {res.seconds:.1f} s "
              f"({res.fps:.1f} fps){meta}, {len(res.scene_cuts)} scene cuts", file=sys.stderr)
    return 0


# ---------------------------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------------------------


def _cmd_batch(args: argparse.Namespace) -> int:
    from sitm_trt.tools import batch

    return batch.run_cli(args)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def _runtime_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--weights", default="default", help="weights file or shipped name (default: the shipped default)")
    p.add_argument("--backend", choices=["auto", "torch", "tensorrt", "onnxruntime"], default="auto",
                   help="auto: ONNX Runtime on the CPU; TensorRT on a GPU where it can run (docs/runtime.md)")
    p.add_argument("--precision", choices=["fp16", "fp32"], default=None,
                   help="default: fp16 with TensorRT, fp32 with torch and ONNX Runtime")
    p.add_argument("--device", default="auto", help="auto (the first GPU if any), cpu, cuda or cuda:N")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar or summary")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sitm-trt",
                                     description="Stack-based inverse tone mapping (LDR -> linear HDR).")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="how sitm-trt was built and what it can use here")
    sub.add_parser("bench", help="benchmarks (sitm-trt bench -h)", add_help=False)
    sub.add_parser("build-engine", help="prebuild a TensorRT engine into the cache (sitm-trt build-engine -h)",
                   add_help=False)

    inf = sub.add_parser("infer", help="LDR images -> HDR images (EXR or Radiance .hdr)",
                         description="LDR images (PNG/JPEG/TIFF, 8/16-bit) -> linear HDR (1.0 = the input's white). "
                                     "Grayscale stays gray; alpha is kept in EXR (premultiplied), dropped in .hdr.")
    inf.add_argument("inputs", nargs="*", metavar="IMAGE",
                     help="files or globs (quote globs for recursion: 'in/**/*.png')")
    inf.add_argument("--sample", action="store_true",
                     help="also convert the sample photo shipped with sitm-trt (sitm_trt.samples.SAMPLE, CC0)")
    inf.add_argument("-o", "--output", help="output folder (default: beside each input), or a file name for one input")
    _image_args(inf)
    inf.add_argument("--skip-existing", action="store_true", help="skip inputs whose output exists")
    _runtime_args(inf)
    inf.add_argument("--threads", type=_positive_int, default=None, metavar="N",
                     help="CPU threads of the network (default: the backend's; 1 was fastest on a busy machine)")

    vid = sub.add_parser("video", help="SDR video -> HDR10 / HLG video or an EXR sequence",
                         description="SDR video (anything FFmpeg reads) -> HEVC Main 10 HDR10 (PQ) or HLG in "
                                     ".mp4/.mov/.mkv, or an OpenEXR sequence (OUT a folder or frames/%%06d.exr).")
    vid.add_argument("input", metavar="IN")
    vid.add_argument("output", metavar="OUT")
    vid.add_argument("-f", "--format", choices=["hdr10", "hlg", "exr"], default=None,
                     help="default: exr for a folder or *.exr, else hdr10")
    _video_args(vid)
    vid.add_argument("--float", action="store_true", help="EXR sequence as float32 (default: half)")
    vid.add_argument("--cuda-graphs", action="store_true",
                     help="TensorRT: replay the engine as a CUDA graph for each frame (fixed frame size)")
    _runtime_args(vid)

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
    bat.add_argument("--video-container", choices=["mp4", "mov", "mkv"], default="mp4")
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


def _image_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-f", "--format", choices=sorted(_HDR_FORMATS), default="exr")
    p.add_argument("--float", action="store_true", help="EXR as float32 (default: half)")
    p.add_argument("--preview", action="store_true", help="also write NAME.preview.png (tone-mapped sRGB)")
    p.add_argument("--batch", type=int, default=4, help="images of one size per network call (default 4)")


def _video_args(vid: argparse.ArgumentParser) -> None:
    vid.add_argument("--peak-nits", type=float, default=1000.0, help="display peak in cd/m2 (default 1000)")
    vid.add_argument("--ref-white", type=float, default=203.0,
                     help="cd/m2 of the SDR reference white, linear 1.0 (default 203, ITU-R BT.2408)")
    vid.add_argument("--crf", type=float, default=18.0, help="libx265 CRF (default 18)")
    vid.add_argument("--preset", default="medium", help="libx265 preset (default medium)")
    vid.add_argument("--lossless", action="store_true", help="libx265 lossless")
    vid.add_argument("--x265-params", default="", help="extra libx265 parameters, key=value:key=value")
    vid.add_argument("--mastering-primaries", choices=["bt709", "p3", "bt2020"], default="bt709",
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
    commands = {"info": _cmd_info, "infer": _cmd_infer, "video": _cmd_video, "batch": _cmd_batch}
    from sitm_trt.errors import EngineError, WeightsError

    try:
        if os.environ.get("SITM_TRT_MEMORY_LIMIT"):  # a malformed limit is a usage error, not a traceback later
            from sitm_trt.runtime import memory

            try:
                memory.budget()
            except ValueError as err:
                raise UsageError(str(err)) from err
        return commands[args.command](args)
    except KeyboardInterrupt as err:
        from sitm_trt.errors import Terminated

        _err("terminated" if isinstance(err, Terminated) else "interrupted")
        return 143 if isinstance(err, Terminated) else 130
    except (UsageError, WeightsError, EngineError, MemoryError) as err:
        _err(f"error: {err}")
        return 2
    except ImportError as err:
        _err(f"error: {err}")
        return 2
    except Exception as err:  # noqa: BLE001 - the command line reports, the library raises
        from sitm_trt.media.video import VideoError

        if isinstance(err, VideoError):
            _err(f"error: {err}")
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
