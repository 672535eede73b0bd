"""``sitm-trt infer``: LDR images -> linear HDR files and previews (:func:`cmd_infer`), and the pieces of it that
``sitm-trt batch`` and the benchmark reuse (:func:`read_image`, :func:`run_batch`, :func:`write_image_outputs`).

``sitm-trt infer IMAGES... [-o OUT]``: LDR images (PNG/JPEG/TIFF/WebP/BMP/AVIF, 8 or 16 bit, upright by their
EXIF orientation; files, folders or globs) to linear HDR
OpenEXR (half by default, ``--float``) or Radiance ``.hdr``, plus optional previews (``--preview``: SDR and/or HDR,
``--side-by-side``: input | preview; :mod:`sitm_trt.media.preview`).
Grayscale inputs are converted as RGB with R = G = B and written gray (the mean of the three outputs);
an alpha channel is kept in EXR outputs as ``A`` with the colour premultiplied (the OpenEXR convention)
and dropped, with a notice, in ``.hdr`` outputs. Images of one size are batched (``--batch``).

In order: the inputs are expanded and checked (:func:`expand_inputs`, :func:`input_problem`), their outputs
planned and checked before any network work (:func:`plan_outputs`, :func:`preview_paths`); then the images are
read ahead in a thread, run in batches of one size (in tiles when one does not fit the memory budget,
``--max-memory``/``--tile``), and written by two writer threads. A file that fails is listed at the end and the
others are converted (exit status 1). The options are parsed by :func:`sitm_trt.tools.cli.build_parser`.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import glob
import os
import sys
from pathlib import Path
from typing import Any, Iterator

from sitm_trt.tools.cli_common import UsageError, check_outputs, check_runtime, say

__all__ = ["HDR_FORMATS", "HDR_PREVIEW_FORMATS", "PREVIEW_KINDS", "cmd_infer", "expand_inputs", "input_problem",
           "plan_outputs", "preview_paths", "read_image", "run_batch", "write_image_outputs"]

HDR_FORMATS = {"exr": ".exr", "hdr": ".hdr"}
"""``--format`` -> the HDR file's extension."""
PREVIEW_KINDS = ("sdr", "hdr", "both")
HDR_PREVIEW_FORMATS = {"png": ".png", "avif": ".avif", "ultrahdr": ".jpg"}


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
    from sitm_trt.media.io import LDR_EXTENSIONS

    suffix = HDR_FORMATS[fmt]
    if output is not None and Path(output).suffix.lower() in LDR_EXTENSIONS and not Path(output).is_dir():
        raise UsageError(f"-o {output}: HDR images are written as OpenEXR (.exr) or Radiance (.hdr); give a file "
                         "name with one of those, or a folder")
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


_MULTI_IMAGE = (".tif", ".tiff", ".png", ".apng", ".webp", ".gif")  # formats that can hold several images


def read_image(path: Path, max_pixels: int | None = None, notice: Any = None) -> tuple[Any, Any, bool]:
    """(RGB uint8/uint16 (H, W, 3), alpha in [0, 1] float32 (H, W) or None, grayscale?) of an LDR file, upright
    (:func:`sitm_trt.media.io.read_ldr_image`). Its notes (colours not sRGB, pages after the first of a TIFF,
    frames after the first of an animated PNG, WebP or GIF)
    go to ``notice`` (default: a ``sitm-trt:`` line on stderr)."""
    from sitm_trt.media import io

    notice = notice or say
    img = io.read_ldr_image(path, max_pixels=max_pixels)  # ImageReadError, or MemoryError from the declared size
    for note in img.notes:
        notice(note)
    if path.suffix.lower() in _MULTI_IMAGE:
        cv2 = io._cv2()
        try:
            pages = cv2.imcount(str(path))
        except cv2.error:
            pages = 1
        if pages > 1:
            what = "pages (images)" if path.suffix.lower() in (".tif", ".tiff") else "frames (an animation)"
            notice(f"{path}: has {pages} {what}; converting the first only")
    return img.rgb, img.alpha, img.gray


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
                        side_by_side: Any = None, hdr_format: str = "png", keep: Any = ()) -> None:
    """Write one converted image as ``sitm-trt infer`` does: the HDR file (gray kept gray, alpha kept in EXR and
    dropped in .hdr with a ``notice``) and the previews of :func:`preview_paths` (``preview``; alpha is not
    shown); every file atomically. ``side_by_side``: the input image (RGB ``uint8``/``uint16``), to write it
    next to each preview. ``exclusive`` (``infer`` without ``--overwrite``): a file that appeared meanwhile is
    not replaced (``FileExistsError``), so two runs writing the same output cannot both succeed. ``keep``: files
    of these not to write (``--skip-existing``: the outputs that exist already)."""
    import numpy as np

    from sitm_trt.media import io
    from sitm_trt.media import preview as previews

    if gray:
        hdr = np.repeat(hdr.mean(axis=2, keepdims=True), 3, axis=2)
    keep = set(keep)
    if dst not in keep:
        if alpha is not None and dst.suffix.lower() == ".exr":
            io.write_exr(dst, hdr, half=half, alpha=alpha, exclusive=exclusive)
        else:
            if alpha is not None and notice is not None:
                notice(f"{src}: alpha dropped (Radiance .hdr has no alpha; use --format exr)")
            io.write_hdr_image(dst, hdr, half=half, exclusive=exclusive)
    for kind, path in preview_paths(dst, preview, side_by_side is not None, hdr_format).items():
        if path in keep:
            continue
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
    """The pipeline of ``--weights``, ``--backend``, ``--precision`` and ``--threads`` (tests swap in a stand-in)."""
    from sitm_trt.runtime.pipeline import Pipeline

    try:
        return Pipeline(args.weights, backend=args.backend, precision=args.precision,
                        threads=getattr(args, "threads", None))
    except ValueError as err:  # an option value the pipeline refuses (WeightsError is reported by cli.main)
        raise UsageError(str(err)) from err


def run_batch(pipe: Any, batch: Any, device: str) -> Any:
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


def _allocation_failure(err: RuntimeError) -> bool:
    """A backend's out-of-memory error (ONNX Runtime and torch raise RuntimeError, not MemoryError): that batch
    fails, the other inputs go on."""
    text = str(err).lower()
    return any(k in text for k in ("alloc", "out of memory", "bad_alloc"))


def _sample_output(path: Path, sample: Path) -> bool:
    """``path`` looks like an output of ``--sample``: an image that reads as the sample's size (its width, or
    twice it for the side-by-side pictures). Anything else at that name is the user's, and ``--sample`` does not
    replace it without ``--overwrite``."""
    from sitm_trt.media import io

    cv2 = io._cv2()
    try:
        if path.suffix.lower() in (".exr", ".hdr"):
            shape = io.read_hdr(path).shape
        else:
            img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
            if img is None:
                return False
            shape = img.shape
        ref = cv2.imread(str(sample), cv2.IMREAD_UNCHANGED).shape
    except Exception:  # noqa: BLE001 - unreadable: not ours
        return False
    return shape[0] == ref[0] and shape[1] in (ref[1], 2 * ref[1])


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


def cmd_infer(args: argparse.Namespace) -> int:
    """``sitm-trt infer``: 0 every input converted (or skipped), 1 some failed (listed at the end); bad usage raises
    :class:`~sitm_trt.tools.cli_common.UsageError` before any work."""
    if args.batch < 1:
        raise UsageError(f"--batch must be >= 1, got {args.batch}")
    if args.skip_existing and args.overwrite:
        raise UsageError("--skip-existing and --overwrite: give one (keep existing outputs, or replace them)")
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
    if args.format is None:  # -o NAME.hdr says the format; else OpenEXR
        named = Path(args.output) if args.output is not None else None
        args.format = "hdr" if named is not None and named.suffix.lower() == ".hdr" and not named.is_dir() else "exr"
    check_outputs(image_format=args.format, want_float=args.float)
    inputs = expand_inputs(args.inputs)
    device = check_runtime(args)  # the options, the weights and the tile size before any folder is made
    pipe = _make_pipeline(args)
    if args.tile is not None:
        from sitm_trt.runtime.tiling import check_tile

        preset = pipe.weights.preset()

        def fits(tile: int) -> bool:
            try:
                check_tile(preset, tile)
            except ValueError:
                return False
            return True

        if not fits(args.tile):
            least = next(t for t in range(preset.stride, 1 << 16, preset.stride) if fits(t))
            raise UsageError(f"--tile {args.tile}: tiles of the {preset.name!r} network are multiples of "
                             f"{preset.stride} pixels, at least {least}")
    from sitm_trt.files import missing_folders, remove_empty

    named_file = args.output is None or Path(args.output).suffix.lower() in (".exr", ".hdr")
    made = [] if named_file else missing_folders(args.output)  # removed again when the run writes nothing
    try:
        outputs = plan_outputs(inputs, args.output, args.format)
        return _convert_all(args, inputs, outputs, pipe, device, sample)
    finally:
        remove_empty(made)


def _convert_all(args: argparse.Namespace, inputs: list[Path], outputs: list[Path], pipe: Any, device: str,
                 sample: Path | None) -> int:
    """The conversion of :func:`cmd_infer` once the inputs, outputs and pipeline are checked."""
    import numpy as np
    from tqdm import tqdm

    sources = {os.path.realpath(p): p for p in inputs}
    failed = {p: m for p in inputs if (m := input_problem(p))}  # messages naming the file; listed once, at the end
    written: dict[Path, list[Path]] = {}  # each input's output files, announced once they are written
    skipped = 0
    keep: dict[Path, list[Path]] = {}  # --skip-existing: outputs of an input that exist already and stay
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
        if existing and not args.overwrite and src == sample:  # replaced only when an earlier --sample wrote it
            foreign = [t for t in existing if not _sample_output(t, sample)]
            if foreign:
                raise UsageError(f"{foreign[0]}: exists and is not an output of an earlier --sample run "
                                 "(--overwrite to replace)")
        if existing and not args.overwrite and src != sample:
            if not args.skip_existing:
                raise UsageError(f"{existing[0]}: exists (--overwrite to replace, --skip-existing to skip)")
            if len(existing) == len(targets):
                skipped += 1
                if not args.quiet:
                    print(f"skipped {src}: {existing[0]} exists", flush=True)
                continue
            keep[src] = existing  # converted again for the outputs it lacks (a preview asked for later)
        todo.append((src, dst))
        written[src] = [t for t in targets if t not in keep.get(src, ())]
    for folder in sorted({os.path.realpath(dst.parent) for _, dst in todo}):  # before any network work
        if not os.path.isdir(folder):
            raise UsageError(f"{folder}: no such folder for the outputs")
        if not os.access(folder, os.W_OK | os.X_OK):
            raise UsageError(f"{folder}: not writable (permission denied)")
    from sitm_trt.media import io
    from sitm_trt.runtime import memory

    limit = memory.budget()
    max_pixels = None if limit is None else limit // memory.DECODED_BYTES_PER_PIXEL
    tiled: dict[int, Any] = {}  # tiled pipelines by tile size: --tile, or made when an image does not fit untiled
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
                return list(run_batch(pipe, np.stack([b[2] for b in batch]), device))
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
            return list(run_batch(tiled[tile], np.stack([b[2] for b in batch]), device))

        def write(src: Path, dst: Path, hdr: Any, alpha: Any, gray: bool, rgb: Any) -> None:
            write_image_outputs(src, dst, hdr, alpha, gray, half=half, preview=args.preview,
                                notice=lambda m: tqdm.write(f"sitm-trt: {m}", file=sys.stderr),
                                exclusive=not (args.overwrite or src == sample),
                                side_by_side=rgb if args.side_by_side else None,
                                hdr_format=args.hdr_preview_format, keep=keep.get(src, ()))

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
            except (MemoryError, RuntimeError) as err:
                if isinstance(err, RuntimeError) and not _allocation_failure(err):
                    raise
                err = err if isinstance(err, MemoryError) else MemoryError(f"out of memory: {err}")
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
        noun = "input" if len(inputs) == 1 else "inputs"
        say(f"{len(inputs)} {noun}: {len(written)} written, {skipped} skipped, {len(failed)} failed")
    if failed:
        say(f"{len(failed)} of {len(inputs)} inputs failed:")
        for src in inputs:
            if src in failed:
                say(f"  {failed[src]}")
        return 1
    return 0
