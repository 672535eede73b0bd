"""Score ITM methods on a folder of (LDR, HDR) pairs: ``table.md``, ``per_image.csv``, ``contact_sheet.png``,
``clipped_sheet.png`` (zoomed on the largest clipped region of the most clipped pairs) and ``summary.json`` (the
table's means, machine-readable).

``python -m sitm_training.evaluate --pairs DIR --weights RUN/ckpt/model.safetensors --out DIR``

Methods: the model (``--weights``, repeatable, ``NAME=PATH`` to name it), the baselines of
:mod:`sitm_training.baselines` (``--baselines``, default all), and any program given as a command
(``--method 'NAME=python my_itm.py {input} {output}'``, run once per image: ``{input}`` is the LDR file,
``{output}`` an ``.exr`` path (``{output_hdr}``: a Radiance ``.hdr`` path) it must write, ``{id}`` the pair's
name). Every result is scale-aligned to the ground truth and scored with :mod:`sitm_training.metrics`; the
protocol is in ``docs/evaluation.md``.

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
import csv
import io
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
from sitm_trt.files import atomic_write
from sitm_trt.media.io import ImageReadError, read_hdr, read_ldr, to_float, write_exr, write_png

from . import metrics as M
from .baselines import BASELINES, CITATIONS

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

METRIC_COLUMNS = ("pu21_psnr", "pu21_ssim", "jod", "mu_psnr", "tm_psnr", "tm_ssim", "clip_pu21_psnr")
_HEADERS = {
    "pu21_psnr": "PU21-PSNR (dB)",
    "pu21_ssim": "PU21-SSIM",
    "jod": "JOD",
    "mu_psnr": "mu-PSNR (dB)",
    "tm_psnr": "TM-PSNR (dB)",
    "tm_ssim": "TM-SSIM",
    "clip_pu21_psnr": "clipped PU21-PSNR (dB)",
}
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


@dataclass(frozen=True)
class ClippedRow:
    """One row of ``clipped_sheet.png``: the pair, its number of clipped input pixels (whole image), the size of
    its largest clipped region, the window shown (``x0, y0, x1, y1``, ends exclusive) and the mean log2 luminance
    ratio to the ground truth over that region of the linearized input and of each method shown (NaN where the
    method failed on the pair)."""

    id: str
    scene: str | None
    clipped_pixels: int
    region_pixels: int
    box: tuple[int, int, int, int]
    linearized_log2: float
    methods_log2: dict[str, float]


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
    :class:`_ClippedSheet`). Raises ``FileNotFoundError``/``ValueError`` before any
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
    sheet_ids = _sheet_selection([p.id for p in pairs], sheet_images)
    shown = [n for n in names if not _same_as_input(methods, n)]
    clipped = _ClippedSheet(clip_rows)
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
    summary = _summarize(rows, names, common)

    out_dir.mkdir(parents=True, exist_ok=True)
    files = {"per_image": out_dir / "per_image.csv", "sheet": out_dir / "contact_sheet.png",
             "clipped_sheet": out_dir / "clipped_sheet.png", "table": out_dir / "table.md"}
    _write_text(files["per_image"], _csv(rows))
    sheet_rows = ["input"] + shown + ["gt"]
    write_png(files["sheet"], _contact_sheet(sheet, [i for i in sheet_ids if i in sheet], sheet_rows, sheet_tile))
    zooms = clipped.selected()
    write_png(files["clipped_sheet"], _clipped_sheet(zooms, shown, sheet_tile))
    result = EvalResult(rows, names, skipped, failures, common, summary, jod_note, files,
                        [z.row(shown) for z in zooms])
    _write_text(files["table"], _table(result, methods, pairs_dir, len(pairs) + len(orphans), display, align,
                                       jod_metric is not None))
    files["summary"] = out_dir / "summary.json"
    result.files["summary"] = files["summary"]
    _write_text(files["summary"], json.dumps(_summary_json(result, methods, pairs_dir), indent=2) + "\n")
    return result


def _summary_json(res: EvalResult, methods: Sequence[Method], pairs_dir: Path) -> dict[str, Any]:
    """``summary.json``: the table's means, machine-readable (NaN -> null, infinities as "inf"/"-inf", so the
    file is strict JSON), with each method's kind."""

    def clean(v: Any) -> Any:
        if isinstance(v, float) and not math.isfinite(v):
            return None if math.isnan(v) else ("inf" if v > 0 else "-inf")
        return v

    return {
        "pairs": str(pairs_dir), "images": len(res.common), "metrics": list(METRIC_COLUMNS), "jod": res.jod,
        "methods": {m.name: {"kind": m.kind, "description": m.description,
                             **{k: clean(v) for k, v in res.summary[m.name].items()}} for m in methods},
    }


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


def _sheet_selection(ids: list[str], k: int) -> list[str]:
    if k <= 0 or not ids:
        return []
    idx = np.unique(np.round(np.linspace(0, len(ids) - 1, min(k, len(ids)))).astype(int))
    return [ids[i] for i in idx]


def _summarize(rows: list[dict[str, Any]], names: list[str], common: list[str]) -> dict[str, dict[str, float]]:
    keep = set(common)
    out: dict[str, dict[str, float]] = {}
    for name in names:
        rs = [r for r in rows if r["method"] == name and r["id"] in keep]
        s: dict[str, float] = {"n": float(len(rs))}
        for col in METRIC_COLUMNS:
            vals = np.array([r[col] for r in rs], np.float64)
            vals = vals[~np.isnan(vals)]
            s[col] = float(np.mean(vals)) if vals.size else float("nan")
            s[f"n_{col}"] = float(vals.size)
        s["log2_scale"] = float(np.median([r["log2_scale"] for r in rs])) if rs else float("nan")
        s["seconds"] = float(np.mean([r["seconds"] for r in rs])) if rs else float("nan")
        out[name] = s
    return out


# ---------------------------------------------------------------------------------------------- files


def _write_text(path: Path, text: str) -> None:
    atomic_write(path, text.encode("utf-8"))


def _csv(rows: list[dict[str, Any]]) -> str:
    cols = ["id", "method", "status", "log2_scale", *METRIC_COLUMNS, "clip_fraction", "seconds", "error"]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({c: (f"{r[c]:.6g}" if isinstance(r.get(c), float) else r.get(c, "")) for c in cols})
    return buf.getvalue()


def _fmt(v: float, digits: int) -> str:
    if math.isnan(v):
        return "-"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return f"{v:.{digits}f}"


def _table(res: EvalResult, methods: Sequence[Method], pairs_dir: Path, n_pairs: int, display: M.Display,
           align: bool, with_jod: bool) -> str:
    cols = [c for c in METRIC_COLUMNS if with_jod or c != "jod"]
    digits = {"pu21_ssim": 4, "tm_ssim": 4, "jod": 3}
    n_clip = max((int(s["n_clip_pu21_psnr"]) for s in res.summary.values()), default=0)
    head = ["method", *(_HEADERS[c] for c in cols), "align (EV)", "s / image"]
    lines = [
        "# ITM evaluation",
        "",
        f"Pairs: `{pairs_dir}`: {n_pairs} found, {len(res.common)} scored by every method"
        + (f", {len(res.skipped)} skipped (unusable)" if res.skipped else "")
        + (f", {n_pairs - len(res.skipped) - len(res.common)} left out (a method failed)" if res.failures else "")
        + ". Means over those images; higher is better in every score column.",
        "",
        "| " + " | ".join(head) + " |",
        "| " + " | ".join(["---"] + ["---:"] * (len(head) - 1)) + " |",
    ]
    for name in res.methods:
        s = res.summary[name]
        cells = [name] + [_fmt(s[c], digits.get(c, 2)) for c in cols]
        cells += [_fmt(s["log2_scale"], 2), _fmt(s["seconds"], 3)]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "Protocol (docs/evaluation.md):",
        "",
        ("- scale alignment: each result is multiplied by exp(median(log Y_gt - log Y_result)) over the input's "
         f"well-exposed pixels ({M.WELL_EXPOSED[0]:g} <= max channel <= {M.WELL_EXPOSED[1]:g}, Rec. 709 luminance Y); "
         "`align (EV)` is the median log2 of that factor (0 = the method's own scale, 1.0 = the input's clip level)"
         if align else "- no scale alignment (--no-align): results scored as they are (1.0 = the input's clip level)"),
        f"- display for PU21 and JOD: {display.describe()}",
        "- PU21-PSNR: RGB, PU21 banding+glare encoding, peak 256; PU21-SSIM: on PU21-encoded luminance, dynamic "
        "range 256 (as Mantiuk & Azimi's pu21_metric)",
        f"- JOD: {res.jod}",
        f"- mu-PSNR: mu = {M.MU:g}, log(1 + mu tanh(x / p99)) / log(1 + mu), p99 = the ground truth's 99th percentile",
        "- TM-PSNR / TM-SSIM: Reinhard et al. 2002 global operator with white point, key 0.18, fitted on the ground "
        "truth and applied alike to every result, sRGB-encoded; SSIM per RGB channel",
        f"- clipped PU21-PSNR: only the input's clipped pixels (max channel > {M.CLIP_THRESHOLD:g}); "
        f"{n_clip} of the images have any",
        "",
        "Methods:",
        "",
    ]
    lines += [f"- `{m.name}` ({m.kind}): {m.description}" for m in methods]
    if res.skipped:
        lines += ["", "Skipped pairs:", ""] + [f"- `{i}`: {why}" for i, why in res.skipped]
    if res.failures:
        lines += ["", "Failures:", ""] + [f"- `{m}` on `{i}`: {why}" for i, m, why in res.failures]
    return "\n".join(lines) + "\n"


def _label(text: str, width: int, height: int, scale: float = 0.4) -> np.ndarray:
    import cv2

    img = np.full((height, width, 3), 32, np.uint8)
    (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    while tw > width - 6 and len(text) > 4:
        text = text[:-2] + "~"
        (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    cv2.putText(img, text, (3, (height + th) // 2), cv2.FONT_HERSHEY_SIMPLEX, scale, (235, 235, 235), 1, cv2.LINE_AA)
    return img


def _fit_tile(img: np.ndarray, tile: int) -> np.ndarray:
    """``img`` (uint8) fitted into a ``tile`` x ``tile`` cell, centred: enlarged with nearest neighbour (pixels stay
    visible as squares), reduced with area averaging."""
    import cv2

    cell = np.full((tile, tile, 3), 16, np.uint8)
    h, w = img.shape[:2]
    f = min(tile / h, tile / w)
    nh, nw = max(1, round(h * f)), max(1, round(w * f))
    small = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_AREA if f < 1 else cv2.INTER_NEAREST)
    y0, x0 = (tile - nh) // 2, (tile - nw) // 2
    cell[y0:y0 + nh, x0:x0 + nw] = small
    return cell


def _contact_sheet(sheet: dict[str, dict[str, np.ndarray]], ids: list[str], rows: list[str], tile: int) -> np.ndarray:
    """Rows: input, each method, ground truth; columns: images; each tile fitted into ``tile`` x ``tile``."""
    label_w, head_h, gap = 96, 18, 2
    ncol = max(1, len(ids))
    width = label_w + ncol * (tile + gap)
    out = [np.concatenate([_label("", label_w, head_h)] + [_label(i, tile + gap, head_h) for i in ids]
                          + ([] if ids else [_label("no images", tile + gap, head_h)]), axis=1)]
    for r in rows:
        cells = [_label(r if r != "gt" else "ground truth", label_w, tile)]
        for i in ids:
            cell = np.full((tile, tile + gap, 3), 16, np.uint8)
            img = sheet[i].get(r)
            cell[:, :tile] = _label("failed", tile, tile) if img is None else _fit_tile(img, tile)  # None: failed
            cells.append(cell)
        if not ids:
            cells.append(np.full((tile, tile + gap, 3), 16, np.uint8))
        out.append(np.concatenate(cells, axis=1))
        out.append(np.full((gap, width, 3), 16, np.uint8))
    return np.concatenate(out, axis=0)


# --------------------------------------------------------------------------------------- clipped sheet

CLIP_SHEET_PER_SCENE = 2
"""At most this many pairs of one scene in ``clipped_sheet.png`` (when the pairs' scenes are known)."""
CLIP_WINDOW_MIN = 48
"""The smallest side, in pixels, of a clipped sheet's window (cut to the image where the image is smaller)."""


def _clip_window(mask: np.ndarray) -> tuple[tuple[int, int, int, int], np.ndarray]:
    """The window shown for a clipped mask: a square of twice the longer side of the bounding box of the largest
    8-connected clipped region, at least :data:`CLIP_WINDOW_MIN`, centred on that box and moved to lie inside
    the image (cut to the image where it is larger). Returns ``((x0, y0, x1, y1), the region's (H, W) mask)``."""
    import cv2

    _, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    k = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    x, y, w, h = (int(v) for v in stats[k, :4])
    side = max(2 * max(w, h), CLIP_WINDOW_MIN)

    def place(start: int, length: int, size: int) -> tuple[int, int]:
        n = min(side, size)
        a = min(max(round(start + length / 2 - n / 2), 0), size - n)
        return a, a + n

    (x0, x1), (y0, y1) = place(x, w, mask.shape[1]), place(y, h, mask.shape[0])
    return (x0, y0, x1, y1), labels == k


class _Zoom:
    """A candidate row of the clipped sheet: the window around one pair's largest clipped region and the crops
    shown in it (the input as it is, the aligned linearized input, each method's aligned result, the truth)."""

    def __init__(self, pair: Pair, order: int, clipped_pixels: int, ldr: np.ndarray, gt: np.ndarray,
                 mask: np.ndarray):
        self.pair, self.order, self.clipped_pixels = pair, order, clipped_pixels
        self.box, region = _clip_window(mask)
        self.region = self.crop(region)
        self.srgb = np.rint(to_float(self.crop(ldr)) * 255.0).astype(np.uint8)
        self.gt = self.crop(gt)
        self.linearized: np.ndarray | None = None
        self.methods: dict[str, np.ndarray] = {}
        y = M.luminance(self.gt)[self.region]
        y = y[y > 0]
        # the ground truth's log-average luminance over the region (NaN where it is black there)
        self.level = float(np.exp(np.mean(np.log(y)))) if y.size else float("nan")

    def crop(self, img: np.ndarray) -> np.ndarray:
        x0, y0, x1, y1 = self.box
        return np.array(img[y0:y1, x0:x1])  # a copy: the whole image is not kept

    def add(self, name: str, result: np.ndarray) -> None:
        self.methods[name] = self.crop(result)

    def tonemapper(self) -> M.Tonemapper:
        """The row's one tone mapper: :class:`metrics.Tonemapper` (Reinhard's global operator with white point)
        exposed for the clipped region instead of the whole image. The ground truth's log-average luminance over
        the region maps to ``L_m = 1`` (about half of white before the sRGB encoding, code 188) and the white point
        is the crop's brightest ground truth pixel, so the truth's highlight spans mid-grey to white with its
        structure visible instead of all white, its surroundings show darker, a result that falls short of the
        truth in the region shows darker than it and one that overshoots brighter (white above the truth's
        maximum). A region that is black in the truth falls back to ``Tonemapper.fit`` on the crop."""
        if not self.level > 0.0:
            return M.Tonemapper.fit(self.gt)
        scale = 1.0 / self.level
        return M.Tonemapper(scale, max(float(M.luminance(self.gt).max()) * scale, 1.0), key=1.0)

    def log2_ratio(self, img: np.ndarray) -> float:
        """Mean over the region of ``log2(Y / Y_gt)`` (Rec. 709 luminance; both floored at 1e-4 times the truth's
        log-average over the region, so a black result counts as about -13, not -inf): 0 = as bright as the truth,
        -1 = half as bright."""
        floor = 1e-4 * self.level if self.level > 0.0 else 1e-12
        y = np.maximum(M.luminance(img)[self.region], floor)
        y_gt = np.maximum(M.luminance(self.gt)[self.region], floor)
        return float(np.mean(np.log2(y) - np.log2(y_gt)))

    def row(self, shown: Sequence[str]) -> ClippedRow:
        nan = float("nan")
        return ClippedRow(
            self.pair.id, self.pair.scene, self.clipped_pixels, int(self.region.sum()), self.box,
            self.log2_ratio(self.linearized) if self.linearized is not None else nan,
            {n: self.log2_ratio(self.methods[n]) if n in self.methods else nan for n in shown},
        )


class _ClippedSheet:
    """Chooses the rows of ``clipped_sheet.png`` while the pairs stream by, keeping crops only of candidates.

    Pairs are ranked by their number of clipped input pixels (:func:`metrics.clipped_mask`), the most first, ties
    to the earlier pair; pairs without any are never shown. When the pairs' scenes are known (``pairs.json``), the
    sheet takes the most clipped pair of every scene first, then the second, up to :data:`CLIP_SHEET_PER_SCENE`
    per scene and ``rows`` rows in all; a pair without a known scene counts as a scene of its own. The rows are
    shown grouped by scene, in the order the scenes first appear, each scene's most clipped pair first.
    """

    def __init__(self, rows: int, per_scene: int = CLIP_SHEET_PER_SCENE):
        self.rows, self.per_scene = rows, per_scene
        self.buckets: dict[str | None, list[_Zoom]] = {}  # None: the pairs without a scene
        self.first_seen: dict[str, int] = {}
        self.offered = 0

    def offer(self, pair: Pair, ldr: np.ndarray, gt: np.ndarray, mask: np.ndarray) -> _Zoom | None:
        """A :class:`_Zoom` to fill with the pair's results if the pair is (so far) one of the chosen, else None;
        ``mask``: the input's clipped pixels."""
        order, self.offered = self.offered, self.offered + 1
        if pair.scene is not None:
            self.first_seen.setdefault(pair.scene, order)
        if self.rows <= 0:
            return None
        count = int(mask.sum())
        if count == 0:
            return None
        bucket = self.buckets.setdefault(pair.scene, [])
        if len(bucket) >= (self.per_scene if pair.scene is not None else self.rows):
            worst = min(bucket, key=lambda z: (z.clipped_pixels, -z.order))
            if count <= worst.clipped_pixels:
                return None
            bucket.remove(worst)
        zoom = _Zoom(pair, order, count, ldr, gt, mask)
        bucket.append(zoom)
        return zoom

    def selected(self) -> list[_Zoom]:
        ranked = []
        for scene, bucket in self.buckets.items():
            for rank, z in enumerate(sorted(bucket, key=lambda z: (-z.clipped_pixels, z.order))):
                ranked.append((rank if scene is not None else 0, -z.clipped_pixels, z.order, z))
        chosen = [z for *_, z in sorted(ranked, key=lambda t: t[:3])[: max(self.rows, 0)]]
        group = lambda z: self.first_seen[z.pair.scene] if z.pair.scene is not None else z.order  # noqa: E731
        return sorted(chosen, key=lambda z: (group(z), -z.clipped_pixels, z.order))


def _text_block(lines: Sequence[str], width: int, height: int, line_h: int = 16) -> np.ndarray:
    img = np.full((height, width, 3), 32, np.uint8)
    for i, text in enumerate(lines[: height // line_h]):
        img[i * line_h:(i + 1) * line_h] = _label(text, width, line_h)
    return img


def _clipped_sheet(zooms: Sequence[_Zoom], shown: Sequence[str], tile: int) -> np.ndarray:
    """Rows: the chosen pairs; columns: the input (its sRGB code values as they are), the linearized input, each
    method, the ground truth, each cropped to the row's window, tone mapped with the row's one tone mapper
    (:meth:`_Zoom.tonemapper`) and fitted into ``tile`` x ``tile``. Under each row, each column's mean log2
    luminance ratio to the ground truth over the clipped region (:meth:`_Zoom.log2_ratio`)."""
    label_w, head_h, cap_h, gap = 150, 18, 16, 2
    cols = ["input (sRGB)", "linearized", *shown, "ground truth"]
    width = label_w + len(cols) * (tile + gap)
    out = [np.concatenate([_label("pair", label_w, head_h)] + [_label(c, tile + gap, head_h) for c in cols], axis=1)]
    if not zooms:
        out.append(_label("no rows: no pair has clipped pixels (or --clip-rows 0)", width, tile))
    for z in zooms:
        tm = z.tonemapper()
        x0, y0, x1, y1 = z.box
        info = [z.pair.id, z.pair.scene or "", f"{z.clipped_pixels} px clipped", f"largest: {int(z.region.sum())} px",
                f"{x1 - x0}x{y1 - y0} at ({x0},{y0})"]
        images: list[np.ndarray | None] = [z.srgb, tm.to_uint8(z.linearized) if z.linearized is not None else None]
        images += [tm.to_uint8(z.methods[n]) if n in z.methods else None for n in shown]
        images.append(tm.to_uint8(z.gt))
        cells = [_text_block(info, label_w, tile)]
        for img in images:
            cell = np.full((tile, tile + gap, 3), 16, np.uint8)
            cell[:, :tile] = _label("failed", tile, tile) if img is None else _fit_tile(img, tile)
            cells.append(cell)
        out.append(np.concatenate(cells, axis=1))
        row = z.row(shown)
        ratios = [row.linearized_log2, *(row.methods_log2[n] for n in shown)]
        captions = [_label("log2 Y / Y_gt, region", label_w, cap_h), _label("", tile + gap, cap_h)]
        captions += [_label("failed" if math.isnan(r) else f"{r:+.2f}", tile + gap, cap_h) for r in ratios]
        captions.append(_label("0 (reference)", tile + gap, cap_h))
        out.append(np.concatenate(captions, axis=1))
        out.append(np.full((gap, width, 3), 16, np.uint8))
    return np.concatenate(out, axis=0)


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
