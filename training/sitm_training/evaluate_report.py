"""The written results of ``python -m sitm_training.evaluate``: ``table.md``, ``per_image.csv`` and
``summary.json``.

:func:`summarize` averages each method's scores over the images every method succeeded on (:data:`METRIC_COLUMNS`,
NaN scores left out per column); :func:`table_md` writes them as a Markdown table with the protocol, the methods,
the skipped pairs and the failures; :func:`per_image_csv` has one row per image and method, failures included;
:func:`summary_json` is the table's means as strict JSON. :func:`write_text` writes each file atomically.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from sitm_trt.files import atomic_write

from . import metrics as M

if TYPE_CHECKING:
    from .evaluate import EvalResult, Method

__all__ = ["METRIC_COLUMNS", "summarize", "table_md", "per_image_csv", "summary_json", "write_text"]

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


def summarize(rows: list[dict[str, Any]], names: list[str], common: list[str]) -> dict[str, dict[str, float]]:
    """Per method: each metric's mean over the ``common`` images (and ``n_<metric>``, the images it has a value
    for), the median ``log2_scale``, the mean seconds per image and ``n``, the images counted."""
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


def summary_json(res: EvalResult, methods: Sequence[Method], pairs_dir: Path) -> dict[str, Any]:
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


# ---------------------------------------------------------------------------------------------- files


def write_text(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` whole or not at all."""
    atomic_write(path, text.encode("utf-8"))


def per_image_csv(rows: list[dict[str, Any]]) -> str:
    """``per_image.csv``: one row per image and method, failed runs with their error."""
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


def table_md(res: EvalResult, methods: Sequence[Method], pairs_dir: Path, n_pairs: int, display: M.Display,
             align: bool, with_jod: bool) -> str:
    """``table.md``: each method's means, then the protocol, the methods, the skipped pairs and the failures."""
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
