"""The two contact sheets of ``python -m sitm_training.evaluate``: ``contact_sheet.png`` and ``clipped_sheet.png``.

:func:`contact_sheet` shows a few whole pairs (rows: the input, each method, the ground truth), each tone mapped
with the tone mapper fitted to its ground truth. :class:`ClippedSheet` chooses, while the pairs stream by, the most
clipped pairs (at most :data:`CLIP_SHEET_PER_SCENE` per scene) and keeps only their crops around the largest clipped
region; :func:`clipped_sheet` draws them (columns: the input as it is, the linearized input, each method, the
ground truth, under one tone mapper exposed for the region) with each column's mean log2 luminance ratio to the
truth over the region (:class:`ClippedRow`, also returned in the evaluation's result).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from sitm_trt.media.io import to_float

from . import metrics as M

if TYPE_CHECKING:
    from .evaluate import Pair

__all__ = [
    "contact_sheet", "contact_sheet_ids", "ClippedSheet", "Zoom", "ClippedRow", "clipped_sheet", "CLIP_SHEET_PER_SCENE",
    "CLIP_WINDOW_MIN",
]


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


# --------------------------------------------------------------------------------------- contact sheet


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


def contact_sheet_ids(ids: list[str], k: int) -> list[str]:
    """The contact sheet's pairs (columns): at most ``k`` of ``ids``, evenly spaced from the first to the last."""
    if k <= 0 or not ids:
        return []
    idx = np.unique(np.round(np.linspace(0, len(ids) - 1, min(k, len(ids)))).astype(int))
    return [ids[i] for i in idx]


def contact_sheet(sheet: dict[str, dict[str, np.ndarray]], ids: list[str], rows: list[str], tile: int) -> np.ndarray:
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


class Zoom:
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


class ClippedSheet:
    """Chooses the rows of ``clipped_sheet.png`` while the pairs stream by, keeping crops only of candidates.

    Pairs are ranked by their number of clipped input pixels (:func:`metrics.clipped_mask`), the most first, ties
    to the earlier pair; pairs without any are never shown. When the pairs' scenes are known (``pairs.json``), the
    sheet takes the most clipped pair of every scene first, then the second, up to :data:`CLIP_SHEET_PER_SCENE`
    per scene and ``rows`` rows in all; a pair without a known scene counts as a scene of its own. The rows are
    shown grouped by scene, in the order the scenes first appear, each scene's most clipped pair first.
    """

    def __init__(self, rows: int, per_scene: int = CLIP_SHEET_PER_SCENE):
        self.rows, self.per_scene = rows, per_scene
        self.buckets: dict[str | None, list[Zoom]] = {}  # None: the pairs without a scene
        self.first_seen: dict[str, int] = {}
        self.offered = 0

    def offer(self, pair: Pair, ldr: np.ndarray, gt: np.ndarray, mask: np.ndarray) -> Zoom | None:
        """A :class:`Zoom` to fill with the pair's results if the pair is (so far) one of the chosen, else None;
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
        zoom = Zoom(pair, order, count, ldr, gt, mask)
        bucket.append(zoom)
        return zoom

    def selected(self) -> list[Zoom]:
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


def clipped_sheet(zooms: Sequence[Zoom], shown: Sequence[str], tile: int) -> np.ndarray:
    """Rows: the chosen pairs; columns: the input (its sRGB code values as they are), the linearized input, each
    method, the ground truth, each cropped to the row's window, tone mapped with the row's one tone mapper
    (:meth:`Zoom.tonemapper`) and fitted into ``tile`` x ``tile``. Under each row, each column's mean log2
    luminance ratio to the ground truth over the clipped region (:meth:`Zoom.log2_ratio`)."""
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
