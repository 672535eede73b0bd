"""Memory-bounded inference for very large frames: overlapping tiles that share the whole frame's state.

The SITM network is not fully convolutional: the EAB's F_glo, the CMAB channel-attention gates, the codes
S_j and decoder means mu_j of Eq. 4-6 and the MEFM global vector are computed from the whole frame
(:mod:`sitm_trt.model.state`). Running tiles through ``SITMNet.forward`` recomputes them per tile, so each
tile adapts differently and the seams show. Here every tile uses the whole frame's values instead, and the
tiles agree:

* the frame is cut into windows of at most ``tile`` x ``tile`` padded pixels that overlap; each window
  writes only its *core*, the cores tile the frame without overlap, and every core has at least
  ``overlap`` pixels of context on each side that faces another tile;
* the fine U-Net levels (``< coarse_level``) and the MEFM's local branches run per window; the coarse levels
  (``>= coarse_level``: 1/4**coarse_level of the pixels) run once on the whole frame, from the stitched
  output of the fine encoder, so their whole-frame statistics (and their large receptive fields: the CMAB
  dilations reach 13 px at 1/16 resolution) are exact;
* a whole-frame statistic of a fine level (a CMAB gate, a decoder mean mu_j, the MEFM thumbnail) is the sum
  of per-window partial sums over the cores, gathered in one pass over the windows; each statistic needs
  the ones before it, so the fine levels are run once per such statistic (passes are counted in ``info``);
* the two thumbnails (EAB input, MEFM global branch) are computed exactly as ``thumbnail()`` does, from the
  frame rows and columns the resize reads (at most 4 per thumbnail pixel), gathered per core.

Peak memory is the windows' activations plus the output and the coarse levels (1/16 of the pixels at the
default ``coarse_level`` 2 of ``compact``/``fast``); the full-resolution network inputs and the exposure
images are never held for the whole frame. ``docs/tiling.md`` has the seam error, memory and time, measured
by ``python -m sitm_trt.tools.tiling_probe``.

With a given ``state`` (e.g. a state smoothed over video frames) no statistic pass is needed: two passes
over the fine levels (the encoder for the coarse input, then the whole fine network).

:func:`infer_tiled` runs the post step (fusion and curve) on each core; :func:`network_tiled` hands each core's
network outputs to the caller instead (the video frame loop smooths the coefficients and encodes PQ/HLG itself).

Why one module of about 700 lines: it is one algorithm. Its sections (geometry, frame views, thumbnails from
pieces, the statistic gatherer, the driver) serve each other - the gatherer feeds the thumbnail accumulator
and reads the tile geometry, the driver uses them all - and none is of use alone; as separate modules their
private helpers would become an internal API to keep stable, and no part would read better on its own. The
public part is ``__all__``.
"""

from __future__ import annotations

import copy
import os
import sys
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F

from sitm_trt import reference as ops
from sitm_trt.model import Preset, SITMNet
from sitm_trt.model.blocks import CMAB_DILATIONS, cast
from sitm_trt.model.config import MEFM_CONTEXT_DILATIONS
from sitm_trt.model.exposure import guide_pyramid
from sitm_trt.model.mefm import CLIP_PRIOR_PASSES, RING_NEAR, RING_SCALES
from sitm_trt.model.state import GlobalState, StatSource

__all__ = [
    "check_tile",
    "infer_tiled",
    "network_tiled",
    "global_state_tiled",
    "Tile",
    "tile_grid",
    "context_radius",
    "default_coarse_level",
    "default_overlap",
    "frame_thumbnail",
]


Write = Callable[..., None]
"""``write(top, left, masks, image, image_up, image_down, coef)``: one core's network outputs
(:func:`network_tiled`)."""

# ---------------------------------------------------------------------------------------------------------
# Geometry
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tile:
    """One window (the network input) and its core (the pixels it writes), in padded-frame pixels."""

    top: int
    left: int
    height: int
    width: int
    core_top: int
    core_left: int
    core_height: int
    core_width: int


def _check_tiling(tile: int, overlap: int, stride: int) -> None:
    for name, v in (("tile", tile), ("overlap", overlap)):
        if isinstance(v, bool) or not isinstance(v, int):
            raise TypeError(f"infer_tiled: {name} must be an integer number of pixels, got {type(v).__name__} {v!r}")
    if tile < stride or tile % stride:
        raise ValueError(f"infer_tiled: tile must be a positive multiple of the network stride {stride}, got {tile}")
    if overlap < 0 or overlap % stride:
        raise ValueError(
            f"infer_tiled: overlap must be a non-negative multiple of the network stride {stride}, got {overlap}"
        )
    if tile - 2 * overlap < stride:
        raise ValueError(
            f"infer_tiled: tile ({tile}) must exceed 2 * overlap ({2 * overlap}) by at least the stride {stride}, "
            f"so each tile keeps a core to write"
        )


def _axis(size: int, tile: int, overlap: int, stride: int) -> list[tuple[int, int, int, int]]:
    """Windows ``(w0, w1)`` and cores ``(c0, c1)`` along one axis of ``size`` (a multiple of ``stride``)."""
    if size <= tile:
        return [(0, size, 0, size)]
    units = (size - 2 * overlap) // stride  # the cores, less the outer margins, in stride units
    core_units = (tile - 2 * overlap) // stride
    m = -(-units // core_units)
    bounds = [0] + [overlap + stride * ((i * units) // m) for i in range(1, m)] + [size]
    out = []
    for c0, c1 in zip(bounds[:-1], bounds[1:]):
        center = (c0 + c1) // 2
        w0 = min(max(0, (center - tile // 2) // stride * stride), size - tile)
        w1 = w0 + tile
        assert w0 <= c0 and c1 <= w1 and (c0 == 0 or c0 - w0 >= overlap) and (c1 == size or w1 - c1 >= overlap)
        out.append((w0, w1, c0, c1))
    return out


def tile_grid(height: int, width: int, *, tile: int = 512, overlap: int = 32, stride: int = 16) -> list[Tile]:
    """The windows of a padded ``height x width`` frame (multiples of ``stride``), row by row.

    Windows are ``min(tile, size)`` long and start on stride multiples (so every pooling grid of the U-Net
    matches the whole frame's); cores cover the frame once, in near-equal parts, each with at least
    ``overlap`` pixels of its window beyond it on every side that is not the frame's edge.
    """
    _check_tiling(tile, overlap, stride)
    if height % stride or width % stride or height < 1 or width < 1:
        raise ValueError(f"tile_grid: the padded size must be positive multiples of {stride}, got {height}x{width}")
    rows, cols = _axis(height, tile, overlap, stride), _axis(width, tile, overlap, stride)
    return [
        Tile(r0, c0, r1 - r0, c1 - c0, cr0, cc0, cr1 - cr0, cc1 - cc0)
        for (r0, r1, cr0, cr1) in rows
        for (c0, c1, cc0, cc1) in cols
    ]


def context_radius(preset: Preset, coarse_level: int) -> int:
    """How far (frame pixels) a tile's output can depend on pixels beyond it, with the whole-frame state
    given and the levels from ``coarse_level`` on run on the whole frame: an upper bound from the layers of
    the tiled part (3x3 convolutions, the CMAB dilations up to 13, 2x2 pools, bilinear x2 upsamples, the
    MEFM's local and dilated branches, its context convolutions and its clip prior), each counted at its
    level's scale.

    With ``overlap >= context_radius`` the tiles agree with the whole frame up to float rounding (the
    bound is loose: the outer taps of the dilated convolutions weigh little). 38 for ``compact`` at level 2,
    16 for ``fast`` at level 2, 61 for ``paper`` at level 2 and 283 at level 4.
    """
    p, big = preset, max(CMAB_DILATIONS)
    if not 1 <= coarse_level <= p.levels - 1:
        raise ValueError(f"coarse_level must be in [1, {p.levels - 1}], got {coarse_level}")
    enc: list[int] = []  # the encoder outputs of the tiled levels
    for k in range(coarse_level):
        pooled = enc[-1] + 2 ** (k - 1) if k else 0
        enc.append(pooled + 2**k * (p.enc_convs[k] + (big if p.cmab_levels[k] else 0)))
    r = 2**coarse_level  # the bilinear upsample of the whole-frame decoder feature, cropped to the window
    for k in reversed(range(coarse_level)):
        r = max(r + 2 ** (k + 1), enc[k]) + 2**k * p.dec_convs[k]
    dilated = p.mefm_dilated * p.mefm_dilation + sum(MEFM_CONTEXT_DILATIONS[: p.mefm_context])
    prior = CLIP_PRIOR_PASSES * p.mefm_clip_prior  # Preset.mefm_clip_prior's blur of the input
    ring = RING_NEAR + max(RING_SCALES) * p.mefm_ring if p.mefm_ring else 0  # Preset.mefm_ring's maps
    r += max(p.mefm_local, dilated, prior, ring) + 1  # MEFM local/dilated (+ context) branches, priors, mask head
    return max(r, enc[-1] + 2 ** (coarse_level - 1))  # also: the stitched input of the coarse levels


def default_coarse_level(preset: Preset, tile: int | None = None) -> int:
    """The first U-Net level run on the whole frame.

    The finest level whose features, and every coarser level's, hold at most one value per frame pixel
    (``width_l / 4**l <= 1``: 2 for ``compact`` and ``fast``, 4 for ``paper``), made finer while the
    :func:`context_radius` exceeds ``tile / 4`` (so the context costs at most half of each window):
    ``paper`` runs from level 2 for tiles up to 1024.
    """
    n = preset.levels
    level = next((lv for lv in range(1, n) if all(preset.widths[k] / 4**k <= 1.0 for k in range(lv, n))), n - 1)
    while tile is not None and level > 1 and context_radius(preset, level) > tile // 4:
        level -= 1
    return level


def default_overlap(preset: Preset, coarse_level: int) -> int:
    """:func:`context_radius` rounded up to the network stride: 48 for ``compact``, 16 for ``fast``, 64 for
    ``paper`` (at their default coarse levels)."""
    return ops.padded_size(context_radius(preset, coarse_level), preset.stride)


# ---------------------------------------------------------------------------------------------------------
# Frames
# ---------------------------------------------------------------------------------------------------------


class _Frame:
    """A caller's frame as a torch view (no copy): float ``(N, 3, H, W)`` or uint8/uint16 ``(N, H, W, 3)``."""

    def __init__(self, frame: Any) -> None:
        self.kind = "torch"
        np = sys.modules.get("numpy")
        if isinstance(frame, torch.Tensor):
            x = frame
        elif np is not None and isinstance(frame, np.ndarray):
            self.kind = "numpy"
            try:
                x = torch.from_numpy(frame)
            except (ValueError, TypeError):  # negative strides or an unsupported dtype view
                x = torch.from_numpy(np.ascontiguousarray(frame))
        elif hasattr(frame, "__dlpack__"):
            x = torch.from_dlpack(frame)
        else:
            raise TypeError(
                "infer_tiled: frame must be a torch.Tensor, a numpy.ndarray or a DLPack array, "
                f"got {type(frame).__name__}"
            )
        x = x.detach()  # inference: a tensor that requires grad is read, never differentiated
        shape, name = tuple(x.shape), str(x.dtype).replace("torch.", "")
        self.unbatched = False
        if x.dtype in (torch.uint8, torch.uint16) and len(shape) in (3, 4) and shape[-1] == 3:
            self.hwc = True
            if len(shape) == 3:
                x, self.unbatched = x.unsqueeze(0), True
            self.n, self.h, self.w = x.shape[0], x.shape[1], x.shape[2]
        elif x.dtype in (torch.float32, torch.float16) and len(shape) == 4 and shape[1] == 3:  # as the pre kernel
            self.hwc = False
            self.n, self.h, self.w = x.shape[0], x.shape[2], x.shape[3]
        else:
            raise ValueError(
                "infer_tiled: frame must be float32/float16 (N, 3, H, W) or uint8/uint16 (H, W, 3) or (N, H, W, 3), "
                f"got {name} {shape}"
            )
        self.x = x
        self.device = x.device

    def crop(self, r0: int, r1: int, c0: int, c1: int) -> torch.Tensor:
        """Rows ``[r0, r1)`` and columns ``[c0, c1)`` of the frame reflect-padded at the bottom/right as the
        pre kernel pads it, in the frame's own dtype and layout."""
        rdim, cdim = (1, 2) if self.hwc else (2, 3)
        x = self.x
        for dim, a, b, size in ((rdim, r0, r1, self.h), (cdim, c0, c1, self.w)):
            if b <= size:
                x = x.narrow(dim, a, b - a)
            else:
                x = x.index_select(dim, ops.reflect_index(torch.arange(a, b, device=x.device), size))
        return x

    def gather(self, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """The padded frame at the given padded row and column indices, normalized to float32 NCHW."""
        rdim, cdim = (1, 2) if self.hwc else (2, 3)
        x = self.x.index_select(rdim, ops.reflect_index(rows, self.h))
        return ops.normalize_frame(x.index_select(cdim, ops.reflect_index(cols, self.w)))


# ---------------------------------------------------------------------------------------------------------
# Thumbnails from pieces
# ---------------------------------------------------------------------------------------------------------


def _thumb_weights(n_in: int, size: int, device: torch.device) -> torch.Tensor:
    """``(size, n_in)`` float64: one axis of ``thumbnail()`` as a matrix - a bilinear resize to ``2 * size``
    (``align_corners=False``, no antialias: PyTorch's index and weight arithmetic, in float32 as its CPU
    kernel does) followed by the mean of each output pair."""
    out = 2 * size
    scale = torch.tensor(n_in, dtype=torch.float32) / out
    dst = torch.arange(out, dtype=torch.float32)
    src = (scale * (dst + 0.5) - 0.5).clamp_min(0.0)
    i0 = src.floor().long().clamp_max(n_in - 1)
    lam = (src - i0.float()).clamp(0.0, 1.0)
    i1 = torch.where(i0 < n_in - 1, i0 + 1, i0)
    b = torch.zeros(out, n_in, dtype=torch.float64)
    b.index_put_((torch.arange(out), i0), (1.0 - lam).double(), accumulate=True)
    b.index_put_((torch.arange(out), i1), lam.double(), accumulate=True)
    return (0.5 * (b[0::2] + b[1::2])).to(device)


class _ThumbAccumulator:
    """``thumbnail()`` of a ``height x width`` image that arrives in pieces (float64 sums over the pieces)."""

    def __init__(self, height: int, width: int, size: int, device: torch.device) -> None:
        self.wr = _thumb_weights(height, size, device)
        self.wc = _thumb_weights(width, size, device)
        self.total: torch.Tensor | None = None

    def needed(self, axis: int, start: int, stop: int) -> torch.Tensor:
        """Indices in ``[start, stop)`` that the thumbnail reads along ``axis`` (0 rows, 1 columns)."""
        w = (self.wr if axis == 0 else self.wc)[:, start:stop]
        return (w != 0).any(dim=0).nonzero().flatten() + start

    def add(self, x: torch.Tensor, top: int, left: int, rows: torch.Tensor | None = None,
            cols: torch.Tensor | None = None) -> None:
        """Add a piece: ``x`` holds the image at rows ``rows`` and columns ``cols`` (default: the block at
        ``(top, left)`` of ``x``'s size, of which only the rows and columns the thumbnail reads are used)."""
        if rows is None:
            rows = self.needed(0, top, top + x.shape[-2])
            x = x.index_select(-2, (rows - top).to(x.device))
        if cols is None:
            cols = self.needed(1, left, left + x.shape[-1])
            x = x.index_select(-1, (cols - left).to(x.device))
        part = self.wr[:, rows] @ x.double() @ self.wc[:, cols].T
        self.total = part if self.total is None else self.total + part

    def result(self, dtype: torch.dtype) -> torch.Tensor:
        assert self.total is not None
        return self.total.to(dtype)


def frame_thumbnail(frame: Any, size: int, stride: int = 16) -> torch.Tensor:
    """``thumbnail(pre(frame).image, size)`` (float32) without making the padded float frame: reads only
    the rows and columns the resize reads (at most ``4 * size`` of each)."""
    f = frame if isinstance(frame, _Frame) else _Frame(frame)
    hp, wp = ops.padded_size(f.h, stride), ops.padded_size(f.w, stride)
    acc = _ThumbAccumulator(hp, wp, size, f.device)
    rows, cols = acc.needed(0, 0, hp), acc.needed(1, 0, wp)
    acc.add(f.gather(rows.to(f.device), cols.to(f.device)), 0, 0, rows, cols)
    return acc.result(torch.float32)


# ---------------------------------------------------------------------------------------------------------
# Whole-frame statistics from tiles
# ---------------------------------------------------------------------------------------------------------


class _Pending(Exception):
    """A window reached a statistic that this pass is still gathering: the rest of it waits for the next pass."""


class _TileStats(StatSource):
    """A :class:`StatSource` whose missing values are gathered over the cores of all windows.

    With :attr:`tile` set (a window is running), a missing gate, mean or MEFM vector is accumulated over the
    window's core and the window stops at the next barrier; :meth:`finish_pass` turns the sums into values.
    With :attr:`tile` ``None`` (the coarse levels, run on the whole frame) it behaves as ``forward``.
    """

    def __init__(self, known: dict[str, Any], net: SITMNet, padded: tuple[int, int], device: torch.device):
        super().__init__(known)
        self.net = net
        self.padded = padded
        self.device = device
        self.tile: Tile | None = None
        self.image_thumb: torch.Tensor | None = None  # the EAB thumbnail, for the MEFM global branch
        self._acc: dict[str, dict] = {}
        self._thumb: _ThumbAccumulator | None = None
        self._pending = False

    def _core(self, x: torch.Tensor) -> torch.Tensor:
        t = self.tile
        s = t.height // x.shape[-2]
        return x[..., (t.core_top - t.top) // s : (t.core_top - t.top + t.core_height) // s,
                 (t.core_left - t.left) // s : (t.core_left - t.left + t.core_width) // s]

    def _accumulate(self, key: str, x: torch.Tensor, ca=None) -> None:
        c = self._core(x).double()
        a = self._acc.get(key)
        if a is None:
            a = self._acc[key] = {"sum": 0.0, "max": None, "count": 0, "ca": ca}
        a["sum"] = a["sum"] + c.sum(dim=(2, 3))
        if ca is not None:
            m = c.amax(dim=(2, 3))
            a["max"] = m if a["max"] is None else torch.maximum(a["max"], m)
        a["count"] += c.shape[-2] * c.shape[-1]
        self._pending = True

    def gate(self, key, ca, feature):
        if key in self.values or self.tile is None:
            return super().gate(key, ca, feature)
        self._accumulate(key, feature, ca)
        return ca.gate(feature)  # a stand-in: this window stops at the barrier that follows

    def mean(self, key, feature):
        if key in self.values or self.tile is None:
            return super().mean(key, feature)
        self._accumulate(key, feature)
        return torch.zeros(feature.shape[:2], dtype=torch.float32, device=feature.device)  # stand-in

    def mefm_g(self, compute, image_up, image_down):
        if "mefm_g" in self.values or self.tile is None:
            return super().mefm_g(compute, image_up, image_down)
        if self._thumb is None:
            self._thumb = _ThumbAccumulator(*self.padded, self.net.preset.thumb_size, self.device)
        t = self.tile
        self._thumb.add(self._core(torch.cat([image_up, image_down], dim=1)), t.core_top, t.core_left)
        self._pending = True
        return None  # MEFM.forward calls barrier() before using it

    def codes(self, key, remap_module, f_glo, f_enc):
        if key not in self.values and self.tile is not None:
            raise RuntimeError(f"internal: {key} is computed on the whole frame, not per tile")
        return super().codes(key, remap_module, f_glo, f_enc)

    def barrier(self) -> None:
        if self._pending:
            self._pending = False
            raise _Pending

    def finish_pass(self) -> list[str]:
        """Turn the sums of the pass into values; returns the keys that were completed."""
        done = []
        for key, a in self._acc.items():
            mean = (a["sum"] / a["count"]).float()
            self.values[key] = mean if a["ca"] is None else a["ca"].gate_from_pools(mean, a["max"].float())
            done.append(key)
        self._acc.clear()
        if self._thumb is not None:
            mefm = self.net.mefm
            thumb = torch.cat([self.image_thumb, self._thumb.result(self.image_thumb.dtype)], dim=1)
            self.values["mefm_g"] = mefm.global_vector(thumb)
            done.append("mefm_g")
            self._thumb = None
        self._pending = False
        return done


# ---------------------------------------------------------------------------------------------------------
# The driver
# ---------------------------------------------------------------------------------------------------------


def _resolve_net(net_or_weights: Any, device: torch.device) -> SITMNet:
    if isinstance(net_or_weights, SITMNet):
        net = net_or_weights
    elif hasattr(net_or_weights, "model") and isinstance(getattr(net_or_weights, "model"), SITMNet):
        net = net_or_weights.model  # a TorchBackend
    elif hasattr(net_or_weights, "model") and callable(net_or_weights.model):  # sitm_trt.weights.Weights
        return net_or_weights.model(device=str(device))
    elif isinstance(net_or_weights, (str, os.PathLike)):
        from sitm_trt.weights import load

        return load(net_or_weights).model(device=str(device))
    else:
        raise TypeError(
            "infer_tiled: net_or_weights must be an SITMNet, a sitm_trt Weights handle, a weights path or "
            f"'default', got {type(net_or_weights).__name__}"
        )
    param = next(net.parameters())
    if param.device != device:
        net = copy.deepcopy(net).to(device)  # the caller's module is left where it is
    return net


class _Runner:
    def __init__(self, net: SITMNet, frame: _Frame, tile: int, overlap: int, level: int,
                 state: GlobalState | None, info: dict | None) -> None:
        self.net, self.f = net, frame
        s = net.stride
        self.hp, self.wp = ops.padded_size(frame.h, s), ops.padded_size(frame.w, s)
        self.tiles = tile_grid(self.hp, self.wp, tile=tile, overlap=overlap, stride=s)
        self.level = level
        self.dtype = next(net.parameters()).dtype
        known = {} if state is None else self._state_values(state)
        self.stats = _TileStats(known, net, (self.hp, self.wp), frame.device)
        self.info = info if info is not None else {}
        self.info.update(tiles=len(self.tiles), coarse_level=level, passes=0, tile=tile, overlap=overlap)

    def _state_values(self, state: GlobalState) -> dict[str, Any]:
        if not isinstance(state, GlobalState):
            raise TypeError(f"infer_tiled: state must be a GlobalState, got {type(state).__name__}")
        if state.coef.shape[0] != self.f.n:
            raise ValueError(f"infer_tiled: the state is for {state.coef.shape[0]} images, the frame has {self.f.n}")
        return state.to(self.f.device).values()

    def pre(self, t: Tile) -> ops.PreOutputs:
        return ops.pre(self.f.crop(t.top, t.top + t.height, t.left, t.left + t.width), stride=1, dtype=self.dtype)

    def global_inputs(self) -> None:
        st, net = self.stats, self.net
        if not st.has("f_glo") or not st.has("mefm_g"):
            st.image_thumb = frame_thumbnail(self.f, net.preset.thumb_size, net.stride).to(self.dtype)
        if not st.has("f_glo"):
            st.values["f_glo"] = net.eab(st.image_thumb)
        st.values["f_glo"] = cast(st.values["f_glo"], self.dtype)

    def _pass(self, body) -> bool:
        """Run ``body(tile)`` on every window; returns True when the pass completed (no statistic pending)."""
        self.info["passes"] += 1
        pending = False
        for t in self.tiles:
            self.stats.tile = t
            try:
                body(t)
            except _Pending:
                pending = True
        self.stats.tile = None
        if pending:
            self.info.setdefault("statistics", []).append(self.stats.finish_pass())
        return not pending

    def coarse(self) -> None:
        """Fine encoder per window (stitching its pooled output), then the coarse levels on the whole frame."""
        net, L, n = self.net, self.level, self.net.preset.levels
        s = 2**L
        shape = (self.f.n, net.preset.widths[L - 1], self.hp // s, self.wp // s)
        kw = {"dtype": self.dtype, "device": self.f.device}
        pooled = [torch.empty(shape, **kw), torch.empty(shape, **kw)]
        guide = torch.empty((self.f.n, 2, self.hp // s, self.wp // s), **kw)

        def body(t: Tile) -> None:
            pre = self.pre(t)
            guides = guide_pyramid(pre.guide, L + 1)
            skips = net.encode_levels(pre.image_up, pre.image_down, guides, range(L), self.stats)
            rows = slice(t.core_top // s, (t.core_top + t.core_height) // s)
            cols = slice(t.core_left // s, (t.core_left + t.core_width) // s)
            for buf, skip in zip(pooled, skips):
                buf[:, :, rows, cols] = self.stats._core(F.max_pool2d(skip[L - 1], 2))
            guide[:, :, rows, cols] = self.stats._core(guides[L])

        while not self._pass(body):
            pass
        st = self.stats
        guides = [None] * L + guide_pyramid(guide, n - L)
        skips = net.encode_levels(pooled[0], pooled[1], guides, range(L, n), st)
        del pooled, guide
        x, first, codes = net.bottleneck(skips[0][n - 1], skips[1][n - 1], st.values["f_glo"], st)
        if L < n - 1:
            x, (pyr_up, pyr_down) = net.decode_levels(x, first, skips, codes, range(n - 2, L - 1, -1), st)
            first = (pyr_up[-1], pyr_down[-1])
        self.x_coarse, self.image_coarse, self.codes = x, first, codes

    def fine(self, write: Write | None) -> None:
        """The fine levels and the MEFM per window (passes until every statistic is known); the last pass hands
        each core's outputs to ``write``."""
        net, L, st = self.net, self.level, self.stats
        s = 2**L

        def body(t: Tile) -> None:
            pre = self.pre(t)
            skips = net.encode_levels(pre.image_up, pre.image_down, guide_pyramid(pre.guide, L), range(L), st)
            rows = slice(t.top // s, (t.top + t.height) // s)
            cols = slice(t.left // s, (t.left + t.width) // s)
            x = tuple(v[:, :, rows, cols] for v in self.x_coarse)
            img = tuple(v[:, :, rows, cols] for v in self.image_coarse)
            _, (pyr_up, pyr_down) = net.decode_levels(x, img, skips, self.codes, range(L - 1, -1, -1), st)
            up, down = pyr_up[-1].clamp(0.0, 1.0), pyr_down[-1].clamp(0.0, 1.0)
            masks, coef = net.mefm(pre.image, up, down, None, st)
            if write is not None:
                write(t.core_top, t.core_left, *(st._core(v) for v in (masks, pre.image, up, down)), coef)

        while True:
            if write is None and st.has("mefm_g"):
                return  # only the state was asked for
            if self._pass(body):
                return

    def state(self) -> GlobalState:
        st = self.stats
        if not st.has("coef"):
            st.values["coef"] = self.net.mefm.coefficients(st.values["mefm_g"])
        return GlobalState.from_values(st.values, self.net.preset.levels)


def _single(net: SITMNet, frame: _Frame, state: GlobalState | None, write: Write | None,
            dtype: torch.dtype) -> GlobalState:
    """One window covers the frame: exactly the whole-frame network."""
    s = net.stride
    pre = ops.pre(frame.crop(0, ops.padded_size(frame.h, s), 0, ops.padded_size(frame.w, s)), stride=1, dtype=dtype)
    if state is None:
        res, state = net.forward_with_state(*pre)
    else:
        res = net.forward_state(*pre, state.to(frame.device))
    if write is not None:
        write(0, 0, res.masks, pre.image, res.image_up, res.image_down, res.coef)
    return state


def _network(net: SITMNet, f: _Frame, tile: int, overlap: int, level: int, state: GlobalState | None,
             info: dict | None, write: Write | None) -> GlobalState:
    """The tiled network on a non-empty frame (inside ``inference_mode``): each core's outputs go to ``write``;
    returns the frame's state (or the given one)."""
    runner = _Runner(net, f, tile, overlap, level, state, info)
    if len(runner.tiles) == 1:
        runner.info["passes"] = 1
        return _single(net, f, state, write, runner.dtype)
    runner.global_inputs()
    runner.coarse()
    runner.fine(write)
    return runner.state()


def _run(net_or_weights, frame, tile, overlap, coarse_level, state, layout, dtype, out, info, produce: bool):
    if layout not in ("nchw", "hwc", "nhwc"):
        raise ValueError(f"infer_tiled: layout must be 'nchw' or 'hwc', got {layout!r}")
    names = {"float32": torch.float32, "float16": torch.float16, torch.float32: torch.float32,
             torch.float16: torch.float16}
    if dtype not in names:
        raise ValueError(f"infer_tiled: dtype must be 'float32' or 'float16', got {dtype!r}")
    f = _Frame(frame)
    net = _resolve_net(net_or_weights, f.device)
    tile, overlap, level = _resolve_geometry(net.preset, tile, overlap, coarse_level)
    hwc = layout != "nchw"
    oshape = (f.n, f.h, f.w, 3) if hwc else (f.n, 3, f.h, f.w)
    result = write = None
    if produce:
        result = (torch.empty(oshape, dtype=names[dtype], device=f.device) if out is None
                  else _out_view(out, oshape, f, names[dtype]))

        def write(top: int, left: int, masks, image, image_up, image_down, coef) -> None:
            h, w = min(masks.shape[-2], f.h - top), min(masks.shape[-1], f.w - left)
            if h <= 0 or w <= 0:
                return  # a core in the bottom/right padding
            hdr = ops.post(masks, image, image_up, image_down, coef, h, w, layout="nhwc" if hwc else "nchw",
                           dtype=result.dtype, fusion=net.preset.fusion)
            if hwc:
                result[:, top : top + h, left : left + w, :] = hdr
            else:
                result[:, :, top : top + h, left : left + w] = hdr

    with torch.inference_mode():
        if f.n == 0 or f.h == 0 or f.w == 0:
            if state is None and not produce:
                raise ValueError("global_state_tiled: the frame is empty")
            return state, result, f
        return _network(net, f, tile, overlap, level, state, info, write), result, f


def check_tile(preset: Preset, tile: int, overlap: int | None = None, coarse_level: int | None = None) -> None:
    """Raise ValueError (saying the smallest tile that works) when ``tile`` cannot tile frames of ``preset`` with
    this ``overlap`` and ``coarse_level`` (None: the defaults :func:`infer_tiled` uses); the check
    :func:`infer_tiled` makes, before any frame is read."""
    _resolve_geometry(preset, tile, overlap, coarse_level)


def _resolve_geometry(preset: Preset, tile: int, overlap: int | None, coarse_level: int | None):
    """Checked ``(tile, overlap, coarse_level)`` with the defaults filled in."""
    _check_tiling(tile, 0, preset.stride)
    n = preset.levels
    if coarse_level is None:
        coarse_level = default_coarse_level(preset, tile)
    if isinstance(coarse_level, bool) or not isinstance(coarse_level, int) or not 1 <= coarse_level <= n - 1:
        raise ValueError(f"infer_tiled: coarse_level must be an int in [1, {n - 1}], got {coarse_level!r}")
    if overlap is None:
        overlap = default_overlap(preset, coarse_level)
        if tile - 2 * overlap < preset.stride:
            raise ValueError(
                f"infer_tiled: tile {tile} is too small for the {overlap}-pixel context of preset "
                f"{preset.name!r} at coarse_level {coarse_level}: use tile >= {2 * overlap + preset.stride}, a "
                f"smaller coarse_level, or an explicit overlap (a smaller one lets seams show)"
            )
    _check_tiling(tile, overlap, preset.stride)
    return tile, overlap, coarse_level


def _out_view(out: Any, shape: tuple[int, ...], f: _Frame, dtype: torch.dtype) -> torch.Tensor:
    """``out=`` as a writable torch view (torch, NumPy or DLPack), checked against the result's shape and the
    requested ``dtype`` (as the untiled path checks it)."""
    np = sys.modules.get("numpy")
    if isinstance(out, torch.Tensor):
        t = out
    elif np is not None and isinstance(out, np.ndarray):
        if not out.flags.writeable:  # torch.from_numpy would only warn, then write into it
            raise ValueError("infer_tiled: out is read-only")
        t = torch.from_numpy(out)
    elif hasattr(out, "__dlpack__"):
        try:  # a DLPack 1.x producer flags read-only memory; the extension reads the flag for us
            from sitm_trt import kernels

            read_only = kernels.extension().view_info(out.__dlpack__(max_version=(1, 0)))["read_only"]
        except (ImportError, TypeError, ValueError, BufferError):
            read_only = False
        if read_only:
            raise ValueError("infer_tiled: out is read-only")
        t = torch.from_dlpack(out)
    else:
        raise TypeError(
            f"infer_tiled: out must be a torch.Tensor, numpy.ndarray or DLPack array, got {type(out).__name__}"
        )
    if f.unbatched and len(shape) == 4 and shape[-1] == 3 and t.dim() == 3:
        t = t.unsqueeze(0)
    if tuple(t.shape) != shape or t.dtype != dtype or t.device != f.device:
        raise ValueError(
            f"infer_tiled: out must be {str(dtype).replace('torch.', '')} {shape} on {f.device} (dtype=), "
            f"got {t.dtype} {tuple(t.shape)} on {t.device}"
        )
    return t


def _wrap(result: torch.Tensor, f: _Frame, layout: str, out: Any) -> Any:
    if out is not None:
        return out
    if layout != "nchw" and f.unbatched:
        result = result[0]
    return result.numpy() if f.kind == "numpy" else result


def infer_tiled(
    net_or_weights: Any,
    frame: Any,
    *,
    tile: int = 512,
    overlap: int | None = None,
    state: GlobalState | None = None,
    coarse_level: int | None = None,
    layout: str = "nchw",
    dtype: str = "float32",
    out: Any = None,
    return_state: bool = False,
    info: dict | None = None,
) -> Any:
    """LDR frame(s) -> linear HDR, in overlapping tiles that share the whole frame's global state.

    ``net_or_weights``: an :class:`~sitm_trt.model.SITMNet` (used on the frame's device; copied there if it
    is elsewhere), a ``sitm_trt.weights`` handle, a weights path or ``"default"``. ``frame``: what
    ``sitm_trt.infer`` accepts - float ``(N, 3, H, W)`` in [0, 1], or uint8/uint16 ``(H, W, 3)`` /
    ``(N, H, W, 3)`` - as a torch tensor (CPU or CUDA), NumPy array or DLPack array.

    ``tile``: the largest window side in (padded) pixels; ``overlap``: the context kept around each
    window's core (both multiples of the network stride, ``tile > 2 * overlap``; default
    :func:`default_overlap`, the layers' reach, so tiles agree with the whole frame to float rounding; 32
    for ``compact`` is 15% cheaper at ``tile=512`` for errors near 1e-4). A frame that fits one window is
    run whole (exactly ``forward``). ``state``: a :class:`~sitm_trt.model.GlobalState` to use instead of
    this frame's own (video smoothing; no statistic passes). ``coarse_level``: the first U-Net level run on
    the whole frame (default :func:`default_coarse_level`). ``layout``, ``dtype``, ``out`` as
    ``sitm_trt.infer``. ``return_state``: also return the state used (``(hdr, state)``). ``info``: a dict
    to fill with the tiles, passes, overlap and coarse level used.

    Returns float32 (or float16) ``(N, 3, H, W)`` - ``(N, H, W, 3)`` with ``layout="hwc"``, ``(H, W, 3)``
    for an ``(H, W, 3)`` input - on the frame's device, as a NumPy array for a NumPy frame.
    """
    st, result, f = _run(net_or_weights, frame, tile, overlap, coarse_level, state, layout, dtype, out, info, True)
    wrapped = _wrap(result, f, layout, out)
    return (wrapped, st) if return_state else wrapped


def network_tiled(
    net_or_weights: Any,
    frame: Any,
    write: Write,
    *,
    tile: int = 512,
    overlap: int | None = None,
    coarse_level: int | None = None,
    state: GlobalState | None = None,
    info: dict | None = None,
) -> GlobalState:
    """The network outputs of a non-empty frame, in tiles, for callers that post-process them themselves
    (the video frame loop: curve smoothing and PQ/HLG encoding in the post kernel, docs/video.md).

    ``write(top, left, masks, image, image_up, image_down, coef)`` is called once per core, in the last pass:
    the tensors are the core's ``(N, C, h, w)`` block of the padded ``(N, C, Hp, Wp)`` outputs that
    ``SITMNet.forward`` (masks, exposure images) and the pre kernel (image) give, at padded-frame row ``top``
    and column ``left``; the cores tile the padded frame once. ``coef`` is the frame's curve coefficients
    ``(N, 4)`` (the same in every call). The other arguments are :func:`infer_tiled`'s; returns the state
    used. Each core's tensors are the same as :func:`infer_tiled` feeds to the post step.
    """
    f = _Frame(frame)
    if f.n == 0 or f.h == 0 or f.w == 0:
        raise ValueError("network_tiled: the frame is empty")
    net = _resolve_net(net_or_weights, f.device)
    tile, overlap, level = _resolve_geometry(net.preset, tile, overlap, coarse_level)
    with torch.inference_mode():
        return _network(net, f, tile, overlap, level, state, info, write)


def global_state_tiled(
    net_or_weights: Any,
    frame: Any,
    *,
    tile: int = 512,
    overlap: int | None = None,
    coarse_level: int | None = None,
    info: dict | None = None,
) -> GlobalState:
    """The frame's :class:`~sitm_trt.model.GlobalState`, computed in tiles with the memory of
    :func:`infer_tiled` (all of its passes but the last). Equal to ``SITMNet.global_state`` of the whole
    frame up to the tiles' receptive-field truncation (see ``docs/tiling.md``)."""
    st, _, _ = _run(net_or_weights, frame, tile, overlap, coarse_level, None, "nchw", "float32", None, info, False)
    return st
