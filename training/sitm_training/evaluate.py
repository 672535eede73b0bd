"""Score ITM methods on a folder of (LDR, HDR) pairs: ``table.md``, ``per_image.csv``, ``contact_sheet.png``,
``clipped_sheet.png`` (zoomed on the largest clipped region of the most clipped pairs) and ``summary.json`` (the
table's means, machine-readable).

``python -m sitm_training.evaluate --pairs DIR --weights RUN/ckpt/model.safetensors --out DIR``

Methods: the model (``--weights``, repeatable, ``NAME=PATH`` to name it), the baselines of
:mod:`sitm_training.baselines` (``--baselines``, default all), and any program given as a command
(``--method 'NAME=python my_itm.py {input} {output}'``, run once per image: ``{input}`` is the LDR file,
``{output}`` an ``.exr`` path (``{output_hdr}``: a Radiance ``.hdr`` path) it must write, ``{id}`` the pair's
name). Every result is scale-aligned to the ground truth and scored with :mod:`sitm_training.metrics`; the
protocol is in ``docs/evaluation.md``. This module holds the methods, the pairs and the scoring loop; the two
contact sheets are drawn by :mod:`sitm_training.evaluate_sheets`, the table, CSV and JSON written by
:mod:`sitm_training.evaluate_report`.

Broken input is reported, never silently used: a pair whose LDR or HDR file is unreadable, whose HDR is not
valid radiance (NaN/Inf, all black, large negatives) or whose sizes differ is skipped and named (log, table);
a stem with only one side is skipped and named too. A method that fails on an image (non-zero exit,
timeout, missing or unreadable output, wrong size, NaN/Inf, an exception) is recorded with its error in
``per_image.csv``; the table averages every method over the same images, those where all methods succeeded,
and says how many were left out. Exit status: 0 = all scored, 1 = some method failed on some image (outputs
still written), 2 = bad arguments or no usable pair (nothing written). Outputs are written atomically, after
all images are scored, so an interrupted run leaves no partial files.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sitm_trt.media.io import ImageReadError, read_hdr, read_ldr, to_float, write_exr, write_png

from . import metrics as M
from .baselines import BASELINES, CITATIONS
from .evaluate_report import METRIC_COLUMNS, per_image_csv, summarize, summary_json, table_md, write_text
from .evaluate_sheets import ClippedRow, ClippedSheet, clipped_sheet, contact_sheet, contact_sheet_ids

log = logging.getLogger("sitm_training.evaluate")

__all__ = [
    "Pair",
    "ClippedRow",
    "Method",
    "MethodError",
    "BaselineMethod",
    "ModelMethod",
    "CommandMethod",
    "parse_method",
    "EvalResult",
    "evaluate",
    "main",
    "METRIC_COLUMNS",
]

_RESERVED = {"input", "gt", "ground_truth"}


class MethodError(RuntimeError):
    """A method could not produce a usable result for one image (the message says why)."""


@dataclass(frozen=True)
class Pair:
    """One (LDR, HDR) pair; ``scene`` is its source scene when the folder's ``pairs.json`` (written by
    ``python -m sitm_training.data export``) names it, else None."""

    id: str
    ldr: Path
    hdr: Path
    scene: str | None = None


# -------------------------------------------------------------------------------------------- methods


class Method:
    """An ITM method: ``method(ldr, pair) -> float (H, W, 3)`` linear HDR; ``ldr`` as read (uint8/uint16)."""

    name: str
    kind: str
    description: str

    def __call__(self, ldr: np.ndarray, pair: Pair) -> np.ndarray:  # pragma: no cover - interface
        raise NotImplementedError

    def close(self) -> None:
        pass


class BaselineMethod(Method):
    kind = "baseline"

    def __init__(self, name: str, fn: Callable[[np.ndarray], np.ndarray] | None = None, description: str = ""):
        if fn is None:
            if name not in BASELINES:
                raise ValueError(f"unknown baseline {name!r} (known: {', '.join(BASELINES)})")
            fn, description = BASELINES[name], CITATIONS[name]
        self.name, self.fn, self.description = name, fn, description

    def __call__(self, ldr: np.ndarray, pair: Pair) -> np.ndarray:
        return self.fn(ldr)


class ModelMethod(Method):
    """The SITM network through ``sitm_trt.Pipeline`` (torch backend on the CPU, or ``device="cuda"``)."""

    kind = "model"

    def __init__(self, weights: str | os.PathLike[str], name: str = "sitm", device: str = "cpu"):
        import sitm_trt

        self.name, self.device = name, device
        self.weights = sitm_trt.load(weights)
        self.pipeline = sitm_trt.Pipeline(self.weights, backend="torch", precision="fp32")  # the reference, any device
        path = Path(self.weights.path)
        try:  # relative to where the command ran, so a table (and a card that carries it) names no home directory
            path = path.relative_to(Path.cwd())
        except ValueError:
            pass
        self.description = f"SITM, weights `{path}` (sha256 {self.weights.sha256[:12]}...)"

    def __call__(self, ldr: np.ndarray, pair: Pair) -> np.ndarray:
        if self.device == "cpu":
            return np.asarray(self.pipeline(np.ascontiguousarray(ldr), layout="hwc"))
        import torch

        x = torch.from_numpy(np.ascontiguousarray(ldr)).to(self.device)
        return self.pipeline(x, layout="hwc").cpu().numpy()


class CommandMethod(Method):
    """A program run once per image (see the module docstring for the placeholders)."""

    kind = "command"

    def __init__(self, name: str, template: str, timeout: float | None = None):
        self.name, self.template, self.timeout = name, template, timeout
        try:
            args = shlex.split(template)
        except ValueError as err:
            raise ValueError(f"method {name!r}: cannot parse command {template!r}: {err}") from err
        if not args:
            raise ValueError(f"method {name!r}: empty command")
        joined = " ".join(args)
        if "{input}" not in joined or not ("{output}" in joined or "{output_hdr}" in joined):
            raise ValueError(f"method {name!r}: the command must contain {{input}} and {{output}} (or {{output_hdr}}), "
                             f"got {template!r}")
        try:
            [a.format(input="i", output="o", output_hdr="h", id="x") for a in args]
        except (KeyError, IndexError, ValueError) as err:
            raise ValueError(f"method {name!r}: bad placeholder in {template!r} ({err!r}); known: "
                             "{input} {output} {output_hdr} {id} (write {{ }} for literal braces)") from err
        if shutil.which(args[0]) is None:
            raise ValueError(f"method {name!r}: program {args[0]!r} not found")
        self.args = args
        self.hdr_ext = ".exr" if "{output}" in joined else ".hdr"
        self._tmp = tempfile.TemporaryDirectory(prefix=f"sitm-eval-{name}-")
        self.description = f"command `{template}`"

    def __call__(self, ldr: np.ndarray, pair: Pair) -> np.ndarray:
        out = Path(self._tmp.name) / f"{pair.id}{self.hdr_ext}"
        out.unlink(missing_ok=True)
        fields = {"input": str(pair.ldr.resolve()), "output": str(out), "output_hdr": str(out), "id": pair.id}
        argv = [a.format(**fields) for a in self.args]
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=self.timeout, check=False)
        except subprocess.TimeoutExpired as err:
            raise MethodError(f"timed out after {self.timeout:g} s") from err
        except OSError as err:
            raise MethodError(f"cannot run {argv[0]!r}: {err}") from err
        if proc.returncode != 0:
            tail = " | ".join((proc.stderr or proc.stdout or "").strip().splitlines()[-3:])
            raise MethodError(f"exit status {proc.returncode}" + (f": {tail}" if tail else ""))
        if not out.exists():
            raise MethodError(f"the command exited 0 but wrote no {out.name}")
        try:
            return read_hdr(out)
        except ImageReadError as err:
            raise MethodError(f"unreadable output: {err.reason}") from err
        finally:
            out.unlink(missing_ok=True)

    def close(self) -> None:
        self._tmp.cleanup()


def parse_method(spec: str, timeout: float | None = None) -> CommandMethod:
    """``NAME=COMMAND`` -> :class:`CommandMethod`."""
    name, sep, command = spec.partition("=")
    name = name.strip()
    if not sep or not name or not command.strip():
        raise ValueError(f"--method must be NAME=COMMAND, got {spec!r}")
    return CommandMethod(name, command, timeout)


def _parse_weights(spec: str, index: int, count: int) -> tuple[str, str]:
    name, sep, path = spec.partition("=")
    if sep and name and "/" not in name and os.sep not in name:
        return name, path
    return ("sitm" if count == 1 else f"sitm{index + 1}"), spec


# -------------------------------------------------------------------------------------------- pairs


def _scenes(root: Path) -> dict[str, str]:
    """Pair id -> source scene from ``root/pairs.json`` (``data export``: ``{"pairs": [{"id", "source"}, ...]}``);
    empty when the file is absent, and with a warning when it cannot be read."""
    path = root / "pairs.json"
    if not path.is_file():
        return {}
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))["pairs"]
        return {str(e["id"]): str(e["source"]) for e in entries if e.get("source")}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        log.warning("%s: cannot read the pairs' scenes (%s: %s); the clipped sheet does not group by scene",
                    path, type(err).__name__, err)
        return {}


def _find_pairs(root: Path) -> tuple[list[Pair], list[tuple[str, str]]]:
    """The pairs of ``root`` (``data.real.find_pairs``, with the scenes of ``pairs.json``) and the stems with only
    one side, with the reason."""
    from sitm_trt.media.io import HDR_EXTENSIONS, LDR_EXTENSIONS

    from .data.real import find_pairs

    scenes = _scenes(root)
    pairs = [Pair(ldr.stem, ldr, hdr, scenes.get(ldr.stem)) for ldr, hdr in find_pairs(root)]
    ldr_dir = hdr_dir = root
    for a, b in (("LDR", "HDR"), ("ldr", "hdr")):
        if (root / a).is_dir() and (root / b).is_dir():
            ldr_dir, hdr_dir = root / a, root / b
            break
    stems = lambda d, exts: {p.stem for p in d.iterdir() if p.is_file() and p.suffix.lower() in exts}  # noqa: E731
    ldrs, hdrs = stems(ldr_dir, LDR_EXTENSIONS), stems(hdr_dir, HDR_EXTENSIONS)
    orphans = [(s, f"no {'HDR' if s in ldrs else 'LDR'} file with this name") for s in sorted(ldrs ^ hdrs)]
    return pairs, orphans


def _load_pair(pair: Pair) -> tuple[np.ndarray, np.ndarray]:
    """(ldr as read, validated radiance float32); raises ImageReadError naming the file."""
    from .data.sources import validate_radiance

    ldr = read_ldr(pair.ldr)
    hdr = validate_radiance(read_hdr(pair.hdr), pair.hdr)
    if ldr.shape[:2] != hdr.shape[:2]:
        raise ImageReadError(pair.hdr, f"size {hdr.shape[1]}x{hdr.shape[0]} differs from the LDR "
                                       f"{pair.ldr.name} ({ldr.shape[1]}x{ldr.shape[0]})")
    return ldr, hdr


def _check_output(out: Any, shape: tuple[int, ...]) -> np.ndarray:
    a = np.asarray(out)
    if a.shape != shape:
        raise MethodError(f"result has shape {a.shape}, expected {shape}")
    if not np.issubdtype(a.dtype, np.floating):
        raise MethodError(f"result must be float linear HDR, got {a.dtype}")
    bad = int(np.count_nonzero(~np.isfinite(a)))
    if bad:
        raise MethodError(f"result has {bad} NaN/Inf values")
    return np.maximum(a.astype(np.float64), 0.0)  # small negatives (codecs, curve fits) count as black


# ------------------------------------------------------------------------------------------ evaluation


@dataclass
class EvalResult:
    rows: list[dict[str, Any]]
    methods: list[str]
    skipped: list[tuple[str, str]]
    failures: list[tuple[str, str, str]]
    common: list[str]
    summary: dict[str, dict[str, float]]
    jod: str
    files: dict[str, Path] = field(default_factory=dict)
    clipped: list[ClippedRow] = field(default_factory=list)


def evaluate(
    pairs_dir: str | os.PathLike[str],
    methods: Sequence[Method],
    out_dir: str | os.PathLike[str],
    *,
    display: M.Display | None = None,
    jod: bool | None = None,
    align: bool = True,
    sheet_images: int = 6,
    sheet_tile: int = 192,
    clip_rows: int = 12,
    save_results: bool = False,
    limit: int | None = None,
    progress: bool = True,
) -> EvalResult:
    """Score ``methods`` on the pairs in ``pairs_dir`` and write the output files into ``out_dir``.

    ``jod``: True = require cvvdp, False = skip JOD, None = use it when it imports. ``align=False`` scores the
    raw outputs (1.0 = the input's clipping level). ``clip_rows``: pairs in ``clipped_sheet.png`` (see
    :class:`~.evaluate_sheets.ClippedSheet`). Raises ``FileNotFoundError``/``ValueError`` before any
    work when the folder has no pairs or the methods are not usable.
    """
    pairs_dir, out_dir = Path(pairs_dir), Path(out_dir)
    display = display or M.Display()
    names = [m.name for m in methods]
    if not methods:
        raise ValueError("no methods to evaluate")
    if len(set(names)) != len(names):
        raise ValueError(f"method names must be unique, got {names}")
    bad = [n for n in names if n in _RESERVED or not n.replace("-", "_").replace(".", "_").isidentifier()]
    if bad:
        raise ValueError(f"bad method name(s) {bad}: use letters, digits, '_', '-', '.', not {sorted(_RESERVED)}")
    pairs, orphans = _find_pairs(pairs_dir)
    if limit is not None:
        pairs, orphans = pairs[:limit], []
    if not pairs:
        raise FileNotFoundError(f"no (LDR, HDR) pairs in {pairs_dir} (expected X.png next to X.exr, or LDR/ and HDR/)")

    jod_metric, jod_note = _make_jod(jod, display)
    sheet_ids = contact_sheet_ids([p.id for p in pairs], sheet_images)
    shown = [n for n in names if not _same_as_input(methods, n)]
    clipped = ClippedSheet(clip_rows)
    sheet: dict[str, dict[str, np.ndarray]] = {}
    rows: list[dict[str, Any]] = []
    skipped: list[tuple[str, str]] = list(orphans)
    failures: list[tuple[str, str, str]] = []
    results_dir = out_dir / "results"

    from tqdm import tqdm

    for pair in tqdm(pairs, desc="evaluate", unit="image", disable=not progress, dynamic_ncols=True):
        try:
            ldr, gt = _load_pair(pair)
        except ImageReadError as err:
            log.warning("skipping pair %s: %s", pair.id, err)
            skipped.append((pair.id, str(err)))
            continue
        ldr01 = to_float(ldr).astype(np.float64)
        gt64 = gt.astype(np.float64)
        tm = M.Tonemapper.fit(gt64)
        clip_mask = M.clipped_mask(ldr01)
        clip_frac = float(np.mean(clip_mask))
        if pair.id in sheet_ids:
            sheet[pair.id] = {"gt": tm.to_uint8(gt64)}
        zoom = clipped.offer(pair, ldr, gt64, clip_mask)
        for method in methods:
            row: dict[str, Any] = {"id": pair.id, "method": method.name, "status": "ok", "error": "",
                                   "clip_fraction": clip_frac}
            t0 = time.perf_counter()
            try:
                pred = _check_output(method(ldr, pair), gt.shape)
            except Exception as err:  # one image's failure must not throw away the rest of a long run
                why = str(err) if isinstance(err, MethodError) else f"{type(err).__name__}: {err}"
                row.update(status="failed", error=why, seconds=time.perf_counter() - t0)
                failures.append((pair.id, method.name, why))
                log.warning("%s failed on %s: %s", method.name, pair.id, why)
                rows.append(row)
                continue
            row["seconds"] = time.perf_counter() - t0
            scale = M.align_scale(pred, gt64, ldr01) if align else 1.0
            pred *= scale
            row["log2_scale"] = math.log2(scale)
            scores = M.score_image(pred, gt64, ldr01, display, tm, jod_metric)
            row.update(vars(scores))
            rows.append(row)
            if pair.id in sheet_ids:
                sheet[pair.id][method.name] = tm.to_uint8(pred)
            if zoom is not None and method.name in shown:
                zoom.add(method.name, pred)
            if save_results:
                (results_dir / method.name).mkdir(parents=True, exist_ok=True)
                write_exr(results_dir / method.name / f"{pair.id}.exr", pred.astype(np.float32), half=False)
        if pair.id in sheet_ids or zoom is not None:
            lin = BASELINES["linear"](ldr).astype(np.float64)
            lin *= M.align_scale(lin, gt64, ldr01) if align else 1.0
            if pair.id in sheet_ids:
                sheet[pair.id]["input"] = tm.to_uint8(lin)
            if zoom is not None:
                zoom.linearized = zoom.crop(lin)

    scored = sorted({r["id"] for r in rows}, key=[p.id for p in pairs].index)
    if not scored:
        raise FileNotFoundError(f"no usable pairs in {pairs_dir}: all {len(pairs)} were skipped "
                                f"(first: {skipped[0][0]}: {skipped[0][1]})")
    failed_ids = {f[0] for f in failures}
    common = [i for i in scored if i not in failed_ids]
    summary = summarize(rows, names, common)

    out_dir.mkdir(parents=True, exist_ok=True)
    files = {"per_image": out_dir / "per_image.csv", "sheet": out_dir / "contact_sheet.png",
             "clipped_sheet": out_dir / "clipped_sheet.png", "table": out_dir / "table.md"}
    write_text(files["per_image"], per_image_csv(rows))
    sheet_rows = ["input"] + shown + ["gt"]
    write_png(files["sheet"], contact_sheet(sheet, [i for i in sheet_ids if i in sheet], sheet_rows, sheet_tile))
    zooms = clipped.selected()
    write_png(files["clipped_sheet"], clipped_sheet(zooms, shown, sheet_tile))
    result = EvalResult(rows, names, skipped, failures, common, summary, jod_note, files,
                        [z.row(shown) for z in zooms])
    write_text(files["table"], table_md(result, methods, pairs_dir, len(pairs) + len(orphans), display, align,
                                        jod_metric is not None))
    files["summary"] = out_dir / "summary.json"
    result.files["summary"] = files["summary"]
    write_text(files["summary"], json.dumps(summary_json(result, methods, pairs_dir), indent=2) + "\n")
    return result


def _same_as_input(methods: Sequence[Method], name: str) -> bool:
    """The ``linear`` baseline is the sheet's input row (the input is shown linearized and aligned)."""
    return any(m.name == name and isinstance(m, BaselineMethod) and m.fn is BASELINES["linear"] for m in methods)


def _make_jod(jod: bool | None, display: M.Display) -> tuple[M.JOD | None, str]:
    if jod is False:
        return None, "not computed (--jod off)"
    ok, why = M.cvvdp_available()
    if not ok:
        if jod:
            raise ImportError(f"--jod on needs ColorVideoVDP: pip install cvvdp ({why})")
        log.warning("JOD not computed: cvvdp does not import (%s)", why)
        return None, f"not computed: cvvdp does not import ({why})"
    metric = M.JOD(display)
    return metric, f"ColorVideoVDP (cvvdp {metric.version})"


# ------------------------------------------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m sitm_training.evaluate",
        description="Score ITM methods on (LDR, HDR) pairs; writes table.md, per_image.csv, contact_sheet.png, "
                    "clipped_sheet.png, summary.json.",
        epilog="Example: python -m sitm_training.evaluate --pairs data/sitm-test --weights run/ckpt/model.safetensors "
               "--method 'mine=python my_itm.py {input} {output}' --out eval/run1",
    )
    p.add_argument("--pairs", type=Path, required=True,
                   help="folder of pairs: X.png next to X.exr/.hdr, or LDR/ and HDR/ (e.g. `python -m "
                        "sitm_training.data export` output)")
    p.add_argument("--out", type=Path, required=True, help="output folder (created; the output files are replaced)")
    p.add_argument("--weights", action="append", default=[], metavar="[NAME=]PATH",
                   help="model weights (.safetensors) to score; repeatable (default name: sitm)")
    p.add_argument("--method", action="append", default=[], metavar="NAME=COMMAND",
                   help="a program run per image; placeholders {input} {output} (.exr) or {output_hdr} (.hdr) {id}")
    p.add_argument("--baselines", default=",".join(BASELINES),
                   help=f"comma-separated baselines, or 'none' (default: {','.join(BASELINES)})")
    p.add_argument("--jod", choices=("auto", "on", "off"), default="auto",
                   help="ColorVideoVDP JOD: auto = when cvvdp imports (default), on = required, off = skip")
    p.add_argument("--no-align", action="store_true", help="score raw outputs, without scale alignment")
    p.add_argument("--white-nits", type=float, default=100.0, help="display luminance of 1.0 (default 100 cd/m^2)")
    p.add_argument("--peak-nits", type=float, default=4000.0, help="display peak (default 4000 cd/m^2)")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds per image for --method commands (600)")
    p.add_argument("--device", default="cpu", help="device for --weights models: cpu (default) or cuda[:N]")
    p.add_argument("--sheet-images", type=int, default=6, help="images (columns) in the contact sheet (6)")
    p.add_argument("--sheet-tile", type=int, default=192, help="tile size in both contact sheets, pixels (192)")
    p.add_argument("--clip-rows", type=int, default=12,
                   help="pairs (rows) in clipped_sheet.png, the most clipped, at most 2 per scene (12)")
    p.add_argument("--save-results", action="store_true", help="also write OUT/results/METHOD/ID.exr (aligned)")
    p.add_argument("--limit", type=int, default=None, help="only the first N pairs (smoke tests)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    methods: list[Method] = []
    try:
        if args.sheet_tile < 16:
            raise ValueError(f"--sheet-tile must be at least 16, got {args.sheet_tile}")
        if args.clip_rows < 0:
            raise ValueError(f"--clip-rows must be at least 0, got {args.clip_rows}")
        display = M.Display(white=args.white_nits, peak=args.peak_nits)
        names = [b.strip() for b in args.baselines.split(",") if b.strip()]
        if names == ["none"]:
            names = []
        methods += [BaselineMethod(b) for b in names]
        for i, spec in enumerate(args.weights):
            name, path = _parse_weights(spec, i, len(args.weights))
            methods.append(ModelMethod(path, name, device=args.device))
        methods += [parse_method(spec, args.timeout) for spec in args.method]
        res = evaluate(args.pairs, methods, args.out, display=display,
                       jod={"auto": None, "on": True, "off": False}[args.jod], align=not args.no_align,
                       sheet_images=args.sheet_images, sheet_tile=args.sheet_tile, clip_rows=args.clip_rows,
                       save_results=args.save_results,
                       limit=args.limit, progress=not args.no_progress)
    except (ValueError, FileNotFoundError, ImportError) as err:
        log.error("%s", err)
        return 2
    finally:
        for m in methods:
            m.close()
    sys.stdout.write(res.files["table"].read_text(encoding="utf-8"))
    for key in ("table", "per_image", "sheet", "clipped_sheet"):
        print(f"wrote {res.files[key]}")
    if res.failures:
        log.error("%d method run(s) failed; see %s", len(res.failures), res.files["per_image"])
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
