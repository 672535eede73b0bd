"""The ``sitm-trt`` command: ``infer`` (images), ``video``, ``batch`` (both, on Ray Data), ``info`` and ``bench``.

``sitm-trt infer IMAGES... [-o OUT]``: LDR images (PNG/JPEG/TIFF/WebP/BMP/AVIF, 8 or 16 bit, upright by their
EXIF orientation; files, folders or globs) to linear HDR
OpenEXR (half by default, ``--float``) or Radiance ``.hdr``, plus optional previews (``--preview``: SDR and/or HDR,
``--side-by-side``: input | preview; :mod:`sitm_trt.media.preview`).
Grayscale inputs are converted as RGB with R = G = B and written gray (the mean of the three outputs);
an alpha channel is kept in EXR outputs as ``A`` with the colour premultiplied (the OpenEXR convention)
and dropped, with a notice, in ``.hdr`` outputs. Images of one size are batched (``--batch``).

``sitm-trt video IN OUT``: see :mod:`sitm_trt.media.video` and docs/video.md.

``sitm-trt batch INPUT... -o OUT``: images and videos on a Ray cluster; see :mod:`sitm_trt.tools.batch` and docs/batch.md.

Exit status: 0 done, 1 some inputs failed (listed at the end; the others are converted), 2 bad usage or nothing could run (malformed
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
    """Files, folders and globs (``*``, ``?``, ``[...]``, ``**``) -> files, in order, without duplicates.

    A folder gives its image files (:data:`sitm_trt.media.io.LDR_EXTENSIONS`) sorted by name, not recursively
    (a quoted glob such as ``'photos/**/*.jpg'`` recurses), without hidden files and without the previews
    sitm-trt writes beside an image of the folder (``NAME.preview.png`` and the others of :func:`preview_paths`),
    so a second run over a folder converts what the first did. A missing file, a glob that matches nothing
    and a folder without images are usage errors."""
    from sitm_trt.media.io import LDR_EXTENSIONS

    out: list[Path] = []
    seen: set[str] = set()
    for pat in patterns:
        if Path(pat).is_dir():
            images = sorted(f for f in Path(pat).iterdir()
                            if f.suffix.lower() in LDR_EXTENSIONS and not f.name.startswith(".") and f.is_file())
            previews = {q for f in images for q in _previews_beside(f)}
            matches = [f for f in images if f not in previews]
            if not matches:
                raise UsageError(f"{pat}: no image files in this folder ({', '.join(LDR_EXTENSIONS)}; not recursive: "
                                 f"quote a glob such as '{Path(pat) / '**' / '*.jpg'}' for sub-folders)")
        elif any(c in pat for c in "*?[") and not Path(pat).exists():
            matches = [Path(m) for m in sorted(glob.glob(pat, recursive=True)) if Path(m).is_file()]
            if not matches:
                raise UsageError(f"{pat}: no file matches")
        else:
            if not Path(pat).is_file():
                raise UsageError(f"{pat}: no such file or folder")
            matches = [Path(pat)]
        for m in matches:
            key = os.path.realpath(m)
            if key not in seen:
                seen.add(key)
                out.append(m)
    return out


def _previews_beside(image: Path) -> set[Path]:
    """Every preview file sitm-trt may write beside ``image``'s HDR output in the same folder."""
    dst = image.with_suffix(".exr")
    return {q for fmt in HDR_PREVIEW_FORMATS for q in preview_paths(dst, "both", True, fmt).values()}


def input_problem(path: Path) -> str | None:
    """Why ``path`` cannot be an input of ``infer`` by its type (a message naming it), or None."""
    from sitm_trt.media.io import HDR_EXTENSIONS, LDR_EXTENSIONS

    ext = path.suffix.lower()
    if ext in HDR_EXTENSIONS:
        return f"{path}: is already an HDR image (inputs are LDR: {', '.join(LDR_EXTENSIONS)})"
    if ext in (".heic", ".heif"):
        return f"{path}: HEIC/HEIF is not read (OpenCV has no HEIF decoder): convert it to JPEG or AVIF first"
    if ext not in LDR_EXTENSIONS:
        return f"{path}: unsupported image type {ext!r} (expected {', '.join(LDR_EXTENSIONS)})"
    return None


def plan_outputs(inputs: list[Path], output: str | None, fmt: str) -> list[Path]:
    """Where each input's HDR goes: beside it, into the folder ``output``, or (one input) the file ``output``."""
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


def read_image(path: Path, max_pixels: int | None = None, notice: Any = None) -> tuple[Any, Any, bool]:
    """(RGB uint8/uint16 (H, W, 3), alpha in [0, 1] float32 (H, W) or None, grayscale?) of an LDR file, upright
    (:func:`sitm_trt.media.io.read_ldr_image`). Its notes (colours not sRGB, pages after the first of a TIFF)
    go to ``notice`` (default: a ``sitm-trt:`` line on stderr)."""
    from sitm_trt.media import io

    notice = notice or _err
    img = io.read_ldr_image(path, max_pixels=max_pixels)  # ImageReadError, or MemoryError from the declared size
    for note in img.notes:
        notice(note)
    if path.suffix.lower() in (".tif", ".tiff"):
        cv2 = io._cv2()
        try:
            pages = cv2.imcount(str(path))
        except cv2.error:
            pages = 1
        if pages > 1:
            notice(f"{path}: has {pages} pages (images); converting the first only")
    return img.rgb, img.alpha, img.gray


PREVIEW_KINDS = ("sdr", "hdr", "both")
HDR_PREVIEW_FORMATS = {"png": ".png", "avif": ".avif", "ultrahdr": ".jpg"}


def preview_paths(dst: Path, preview: str | bool | None, side_by_side: bool = False,
                  hdr_format: str = "png") -> dict[str, Path]:
    """The preview files written beside the HDR file ``dst``, by kind: ``sdr`` ``NAME.preview.png``, ``hdr``
    ``NAME.preview-hdr.png`` (``.avif``, or ``.jpg`` for Ultra HDR: ``hdr_format``), and with ``side_by_side``
    the input next to each preview asked for (the SDR one when none is): ``sdr-sheet`` ``NAME.side-by-side.png``,
    ``hdr-sheet`` ``NAME.side-by-side-hdr.png``. ``preview``: one of :data:`PREVIEW_KINDS`, ``True`` (= sdr),
    or ``None``/``False``."""
    if preview is True:
        preview = "sdr"
    kinds = {"sdr": ["sdr"], "hdr": ["hdr"], "both": ["sdr", "hdr"]}[preview] if preview else []
    paths = {"sdr": dst.with_suffix(".preview.png"),
             "hdr": dst.with_suffix(".preview-hdr" + HDR_PREVIEW_FORMATS[hdr_format])}
    out = {k: paths[k] for k in kinds}
    if side_by_side:
        for k in kinds or ["sdr"]:
            out[f"{k}-sheet"] = dst.with_suffix(".side-by-side.png" if k == "sdr" else ".side-by-side-hdr.png")
    return out


def write_image_outputs(src: Path, dst: Path, hdr: Any, alpha: Any, gray: bool, *, half: bool,
                        preview: str | bool | None, notice: Any = None, exclusive: bool = False,
                        side_by_side: Any = None, hdr_format: str = "png") -> None:
    """Write one converted image as ``sitm-trt infer`` does: the HDR file (gray kept gray, alpha kept in EXR and
    dropped in .hdr with a ``notice``) and the previews of :func:`preview_paths` (``preview``; alpha is not
    shown); every file atomically. ``side_by_side``: the input image (RGB ``uint8``/``uint16``), to write it
    next to each preview. ``exclusive`` (``infer`` without ``--overwrite``): a file that appeared meanwhile is
    not replaced (``FileExistsError``), so two runs writing the same output cannot both succeed."""
    import numpy as np

    from sitm_trt.media import io
    from sitm_trt.media import preview as previews

    if gray:
        hdr = np.repeat(hdr.mean(axis=2, keepdims=True), 3, axis=2)
    if alpha is not None and dst.suffix.lower() == ".exr":
        io.write_exr(dst, hdr, half=half, alpha=alpha, exclusive=exclusive)
    else:
        if alpha is not None and notice is not None:
            notice(f"{src}: alpha dropped (Radiance .hdr has no alpha; use --format exr)")
        io.write_hdr_image(dst, hdr, half=half, exclusive=exclusive)
    for kind, path in preview_paths(dst, preview, side_by_side is not None, hdr_format).items():
        if kind == "sdr":
            previews.write_sdr_preview(path, hdr, exclusive=exclusive)
        elif kind == "hdr":
            previews.write_hdr_preview(path, hdr, exclusive=exclusive)
        else:
            previews.write_side_by_side(path, side_by_side, hdr, hdr_screen=kind == "hdr-sheet", exclusive=exclusive)


def _have_torch() -> bool:
    """PyTorch can be imported (tiled inference runs the torch model)."""
    import importlib.util

    try:
        return importlib.util.find_spec("torch") is not None
    except ValueError:  # a module object without a spec
        return True


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


def _batches(items: list[tuple[Path, Path]], size: int, max_pixels: int | None = None,
             notice: Any = None) -> Iterator[list[tuple[Path, Path, Any, Any, bool]]]:
    """Read ahead in a thread; group consecutive images of one shape and dtype into batches of ``size``.
    ``notice``: where the readers' notes go (:func:`read_image`)."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        futures = [pool.submit(read_image, src, max_pixels, notice) for src, _ in items[:4]]
        batch: list = []
        for i, (src, dst) in enumerate(items):
            if i + 4 < len(items):
                futures.append(pool.submit(read_image, items[i + 4][0], max_pixels, notice))
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


def _check_preview_format(preview: str | None, fmt: str) -> None:
    """``--hdr-preview-format`` other than png: only with an HDR preview, and with imagecodecs installed."""
    if fmt == "png":
        return
    if preview not in ("hdr", "both"):
        raise UsageError(f"--hdr-preview-format {fmt}: give --preview hdr or --preview both")
    try:
        import imagecodecs  # noqa: F401
    except ImportError as err:
        raise UsageError(f"--hdr-preview-format {fmt} needs imagecodecs: pip install imagecodecs") from err


def _cmd_infer(args: argparse.Namespace) -> int:
    import numpy as np
    from tqdm import tqdm

    if args.batch < 1:
        raise UsageError(f"--batch must be >= 1, got {args.batch}")
    _check_preview_format(args.preview, args.hdr_preview_format)
    sample = None  # the shipped sample: its outputs replace those of an earlier --sample run (the Quickstart)
    if args.sample:
        from sitm_trt.samples import SAMPLE

        sample = Path(SAMPLE)
        args.inputs = [*args.inputs, str(SAMPLE)]
        if args.output is None:
            raise UsageError("--sample: give -o/--output (the sample lives inside the installed package)")
    if not args.inputs:
        raise UsageError("no input images (give files, folders or globs, or --sample)")
    if args.tile is not None and not _have_torch():
        raise UsageError("--tile: tiled inference runs the PyTorch model: pip install 'sitm-trt[torch]'")
    inputs = expand_inputs(args.inputs)
    outputs = plan_outputs(inputs, args.output, args.format)
    sources = {os.path.realpath(p): p for p in inputs}
    failed = {p: m for p in inputs if (m := input_problem(p))}  # messages naming the file; listed once, at the end
    written: dict[Path, list[Path]] = {}  # each input's output files, announced once they are written
    skipped = 0
    todo = []
    for src, dst in zip(inputs, outputs):
        if src in failed:
            continue
        targets = [dst, *preview_paths(dst, args.preview, args.side_by_side, args.hdr_preview_format).values()]
        for t in targets:  # an output never replaces an input, --overwrite or not
            if os.path.realpath(t) in sources:
                raise UsageError(f"{t}: is an output of {src} and also an input; refusing to overwrite an input")
            if t.is_dir():
                raise UsageError(f"{t}: is a folder")
        existing = [t for t in targets if t.exists()]
        if existing and not args.overwrite and src != sample:
            if args.skip_existing:
                skipped += 1
                if not args.quiet:
                    print(f"skipped {src}: {existing[0]} exists", flush=True)
                continue
            raise UsageError(f"{existing[0]}: exists (--overwrite to replace, --skip-existing to skip)")
        todo.append((src, dst))
        written[src] = targets
    for folder in sorted({os.path.realpath(dst.parent) for _, dst in todo}):  # before any network work
        if not os.path.isdir(folder):
            raise UsageError(f"{folder}: no such folder for the outputs")
        if not os.access(folder, os.W_OK | os.X_OK):
            raise UsageError(f"{folder}: not writable (permission denied)")
    from sitm_trt.media import io
    from sitm_trt.runtime import memory

    limit = memory.budget()
    max_pixels = None if limit is None else limit // memory.DECODED_BYTES_PER_PIXEL
    pipe = _make_pipeline(args)
    tiled: dict[int, Any] = {}  # tiled pipelines by tile size: --tile, or made when an image does not fit untiled
    device = _device(args.device)
    half = not args.float
    io._cv2().utils.logging.setLogLevel(0)  # OpenCV's decoder log (LOG_LEVEL_SILENT): each failure is listed
    bar = tqdm(total=len(todo), unit="img", disable=args.quiet or not todo, dynamic_ncols=True)
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as writers:
        pending: list[concurrent.futures.Future] = []

        def run(batch: list) -> list:
            """HDR of the batch's images: in ``--tile`` tiles; else the whole batch when it fits the memory budget,
            else one by one, and an image too large for one untiled call in tiles (torch), with a notice."""
            n, (h, w) = len(batch), batch[0][2].shape[:2]
            tile = args.tile
            if tile is None and (device != "cpu" or memory.fits(pipe.weights, n, h, w)[0]):
                return list(_run_batch(pipe, np.stack([b[2] for b in batch]), device))
            if tile is None and n > 1:
                return [h_ for b in batch for h_ in run([b])]
            if tile is None:
                tile = next((t for t in (1024, 512, 256, 128) if memory.fits(pipe.weights, 1, h, w, tiled=t)[0]),
                            None)
                whole = f"{w}x{h} needs about {memory.format_bytes(memory.fits(pipe.weights, 1, h, w)[1])} in one " \
                        f"piece, {memory.format_bytes(limit)} available (--max-memory)"
                if tile is None:
                    need = memory.fits(pipe.weights, 1, h, w, tiled=128)[1]
                    raise MemoryError(f"{w}x{h} needs about {memory.format_bytes(need)} even in 128-pixel tiles, "
                                      f"{memory.format_bytes(limit)} available (--max-memory)")
                if not _have_torch():  # this file fails, the others go on
                    raise MemoryError(f"{whole}, and tiles run the PyTorch model: pip install 'sitm-trt[torch]'")
                tqdm.write(f"sitm-trt: {batch[0][0]}: {whole}: converting in {tile}-pixel tiles", file=sys.stderr)
            if tile not in tiled:
                from sitm_trt.runtime.pipeline import Pipeline

                tiled[tile] = Pipeline(args.weights, backend="torch", precision=args.precision, tile=tile,
                                       threads=args.threads)
            return list(_run_batch(tiled[tile], np.stack([b[2] for b in batch]), device))

        def write(src: Path, dst: Path, hdr: Any, alpha: Any, gray: bool, rgb: Any) -> None:
            write_image_outputs(src, dst, hdr, alpha, gray, half=half, preview=args.preview,
                                notice=lambda m: tqdm.write(f"sitm-trt: {m}", file=sys.stderr),
                                exclusive=not (args.overwrite or src == sample),
                                side_by_side=rgb if args.side_by_side else None,
                                hdr_format=args.hdr_preview_format)

        def fail(src: Path, err: BaseException) -> None:
            msg = str(err) if str(err).startswith(str(src)) else f"{src}: {err}"
            if isinstance(err, OSError) and err.strerror:
                msg = f"{src}: cannot write {err.filename or 'the output'}: {err.strerror}"
            failed[src] = msg

        def collect(futures: list) -> None:
            for src, f in futures:
                try:
                    f.result()
                except (OSError, ValueError, MemoryError) as err:  # a full disk, a vanished folder: that file
                    fail(src, err)
                    del written[src]
                    continue
                if not args.quiet:
                    tqdm.write(f"{src} -> {', '.join(map(str, written[src]))}", file=sys.stdout)

        notice = lambda m: tqdm.write(f"sitm-trt: {m}", file=sys.stderr)  # noqa: E731
        for batch in _batches(todo, args.batch, max_pixels, notice):
            if isinstance(batch[0][2], Exception):
                fail(batch[0][0], batch[0][2])
                del written[batch[0][0]]
                bar.update(1)
                continue
            try:
                hdr = run(batch)
            except MemoryError as err:
                for b in batch:
                    fail(b[0], err)
                    del written[b[0]]
                bar.update(len(batch))
                continue
            for (src, dst, rgb, alpha, gray), h in zip(batch, hdr):
                pending.append((src, writers.submit(write, src, dst, np.ascontiguousarray(h), alpha, gray, rgb)))
            done = [p for p in pending if p[1].done()]
            for p in done:
                pending.remove(p)
            collect(done)
            bar.update(len(batch))
        collect(pending)
    bar.close()
    if not args.quiet:
        _err(f"{len(inputs)} inputs: {len(written)} written, {skipped} skipped, {len(failed)} failed")
    if failed:
        _err(f"{len(failed)} of {len(inputs)} inputs failed:")
        for src in inputs:
            if src in failed:
                _err(f"  {failed[src]}")
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
    pipeline = None
    if args.threads is not None:  # else convert() makes the pipeline, with the backend's default threads
        from sitm_trt.runtime.pipeline import Pipeline

        pipeline = Pipeline(args.weights, backend=args.backend, precision=args.precision, threads=args.threads,
                            cuda_graphs=args.cuda_graphs)
    res = video.convert(args.input, args.output, weights=args.weights, pipeline=pipeline, backend=args.backend,
                        precision=args.precision, options=opts, device=_device(args.device),
                        progress=not args.quiet, overwrite=args.overwrite, log=_err, cuda_graphs=args.cuda_graphs)
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


# ---------------------------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------------------------


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
    p.add_argument("--weights", default="default", help="weights file or shipped name (default: the shipped default)")
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


def _memory_arg(p: argparse.ArgumentParser, tiles: bool) -> None:
    then = ("is converted in tiles (needs PyTorch), or refused when even tiles do not fit" if tiles else
            "is refused before any work (video is not tiled)")
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
    inf.add_argument("--skip-existing", action="store_true", help="skip (and list) inputs whose output exists")
    _runtime_args(inf)
    _threads_arg(inf)
    _memory_arg(inf, tiles=True)
    inf.add_argument("--tile", type=_positive_int, default=None, metavar="N",
                     help="convert every image in N-pixel tiles (memory bounded by the tile; the same pixels within "
                          "float rounding, docs/tiling.md; needs PyTorch); default: only images over --max-memory")

    vid = sub.add_parser("video", help="SDR video -> HDR10 / HLG video or an EXR sequence",
                         description="SDR video (anything FFmpeg reads) -> HEVC Main 10 HDR10 (PQ) or HLG in "
                                     ".mp4/.mov/.mkv, or an OpenEXR sequence (OUT a folder or frames/%06d.exr).")
    vid.add_argument("input", metavar="IN")
    vid.add_argument("output", metavar="OUT")
    vid.add_argument("-f", "--format", choices=["hdr10", "hlg", "exr"], default=None,
                     help="default: exr for a folder or *.exr, else hdr10")
    _video_args(vid)
    vid.add_argument("--float", action="store_true", help="EXR sequence as float32 (default: half)")
    vid.add_argument("--cuda-graphs", action="store_true",
                     help="TensorRT: replay the engine as a CUDA graph for each frame (fixed frame size)")
    _runtime_args(vid)
    _threads_arg(vid)
    _memory_arg(vid, tiles=False)

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
    p.add_argument("-f", "--format", choices=sorted(_HDR_FORMATS), default="exr",
                   help="exr: OpenEXR, linear, half float (--float: float32), alpha kept (default); hdr: Radiance "
                        "RGBE, no alpha")
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
