"""The per-frame work of a video: :class:`FrameProcessor` runs pre kernel -> network -> curve smoothing ->
post kernel on one decoded frame at a time, with a ring of slots (pinned host and device buffers on CUDA, one
event per frame), so the calling thread only enqueues work while another thread waits for each frame's result.
The post kernel does the PQ/HLG encoding, BT.709 -> BT.2020 and the 10-bit 4:2:0 Y'CbCr that the encoder
consumes, on the device the pipeline runs on, and measures each frame's light level in the same pass.

With ``tile`` set, the network runs in tiles (:func:`sitm_trt.runtime.tiling.network_tiled`, the PyTorch model)
that write its outputs into whole-frame buffers; the smoothing and the post kernel are then the same as for a
whole frame, so only the network's memory is bounded by the tile (docs/video.md, "Memory").
"""

from __future__ import annotations

import dataclasses
import queue
import sys
from typing import Any

import numpy as np

from sitm_trt import kernels
from sitm_trt.media import transfer as T
from sitm_trt.media.video.options import VideoError
from sitm_trt.media.video.temporal import CoefSmoother, SceneCutDetector


@dataclasses.dataclass
class _Slot:
    """Host memory of one frame in flight (pinned on CUDA) and its device twins."""

    host_in: Any = None
    dev_in: Any = None
    host_out: Any = None
    dev_out: Any = None
    host_stats: Any = None
    dev_stats: Any = None
    event: Any = None
    key: tuple = ()


@dataclasses.dataclass
class _Done:
    """A processed frame: ``output()`` waits for it and gives the host array."""

    slot: int
    out: np.ndarray
    stats: np.ndarray | None
    event: Any
    pts: int | None
    time: float
    index: int

    def wait(self) -> None:
        if self.event is not None:
            self.event.synchronize()


class FrameProcessor:
    """pre -> network -> coef smoothing -> post for one frame at a time, with a ring of ``slots`` output
    buffers so the caller can hand frames to another thread while the next one is computed.

    ``encoding``: ``"linear"`` (float (h, w, 3), BT.709, 1.0 = reference white; ``dtype`` float32/float16),
    or ``"pq"`` / ``"hlg"`` (uint16 yuv420p code values, BT.2020, narrow range, the frame cropped to even
    sizes). ``device``: "cpu" or "cuda:N". ``tile``: run the network in tiles of at most this many pixels a
    side, with ``overlap`` (None: the preset's default) - the pipeline's PyTorch model, whatever its backend.
    """

    def __init__(self, pipeline: Any, device: str = "cpu", *, encoding: str = "linear", dtype: str = "float32",
                 ref_white: float = 203.0, peak_nits: float = 1000.0, smoothing: float = 0.0,
                 scene_cut: float = 0.1, slots: int = 3, tile: int | None = None, overlap: int | None = None):
        if encoding not in ("linear", "pq", "hlg"):
            raise ValueError(f"encoding must be 'linear', 'pq' or 'hlg', got {encoding!r}")
        self.pipeline, self.device, self.encoding, self.dtype = pipeline, device, encoding, dtype
        self.ref_white, self.peak_nits = ref_white, peak_nits
        self.smoother = CoefSmoother(smoothing)
        self.detector = SceneCutDetector(scene_cut)
        self.cuts: list[int] = []
        self.tile, self.overlap = tile, overlap
        # tiles: the PyTorch model (as Pipeline(tile=...) runs it), and no whole-frame backend session
        self.backend = pipeline._torch_for(device) if tile else pipeline.backend_for(device)
        self.fusion = pipeline.weights.fusion
        self.cuda = device.startswith("cuda")
        self.dev_index = int(device.split(":")[1]) if self.cuda else 0
        self.ext = kernels.extension()
        self.stream = 0
        if self.cuda:
            torch = sys.modules.get("torch")
            if torch is not None and torch.cuda.is_available():
                self.stream = int(torch.cuda.current_stream(device).cuda_stream)
        self.slots = [_Slot() for _ in range(slots)]
        self.free: queue.Queue[int] = queue.Queue()
        for i in range(slots):
            self.free.put(i)
        self._pre: tuple = ()
        self._pre_key: tuple = ()
        self.count = 0

    def out_size(self, h: int, w: int) -> tuple[int, int]:
        """The output size: 4:2:0 video needs even sizes (an odd last row/column is dropped)."""
        return (h - h % 2, w - w % 2) if self.encoding != "linear" else (h, w)

    def _alloc(self, shape: list[int], dtype: str, where: str) -> Any:
        if where == "device":
            return self.ext.empty(shape, dtype, self.device, self.stream)
        if self.cuda:
            return self.ext.empty(shape, dtype, "cpu", 0, True)  # pinned: async copies
        return np.empty(shape, dtype)

    def _prepare(self, slot: _Slot, h: int, w: int, in_dtype: str) -> None:
        key = (h, w, in_dtype)
        if slot.key == key:
            return
        oh, ow = self.out_size(h, w)
        if self.encoding == "linear":
            oshape, odtype = [1, oh, ow, 3], self.dtype
        else:
            oshape, odtype = [1, T.yuv420p_size(oh, ow)], "uint16"
        slot.host_out = self._alloc(oshape, odtype, "host")
        slot.host_stats = self._alloc([1, 2], "float32", "host")
        if self.cuda:
            slot.host_in = self._alloc([h, w, 3], in_dtype, "host")
            slot.dev_in = self._alloc([h, w, 3], in_dtype, "device")
            slot.dev_out = self._alloc(oshape, odtype, "device")
            slot.dev_stats = self._alloc([1, 2], "float32", "device")
            if slot.event is None:
                slot.event = self.ext.Event(self.dev_index)
        slot.key = key

    def _pre_buffers(self, h: int, w: int, channels: tuple[int, ...] = (3, 3, 3, 2)) -> tuple:
        """Padded whole-frame buffers with ``channels`` channels: the pre kernel's outputs (the default), or the
        network's that the tiles write (:meth:`_network_tiled`)."""
        s = self.backend.stride
        hp, wp = -(-h // s) * s, -(-w // s) * s
        key = (hp, wp, channels)
        if key != self._pre_key:
            where = "device" if self.cuda else "host"
            self._pre = tuple(self._alloc([1, c, hp, wp], self.backend.dtype, where) for c in channels)
            self._pre_key = key
        return self._pre

    def _network_tiled(self, x: Any, h: int, w: int) -> tuple:
        """(image, up, down, masks, coef) of the frame ``x`` from the network in tiles: the cores are written
        into whole-frame buffers, which the post kernel then reads as it reads the whole network's outputs."""
        from sitm_trt.runtime import tiling

        torch = self.backend._torch
        image, up, down, masks = (torch.from_dlpack(b) for b in self._pre_buffers(h, w, (3, 3, 3, 3)))

        def write(top: int, left: int, *core: Any) -> None:
            rows, cols = slice(top, top + core[0].shape[-2]), slice(left, left + core[0].shape[-1])
            for buf, v in zip((masks, image, up, down), core[:4]):
                buf[:, :, rows, cols] = v

        with self.backend._stream_ctx(self.stream):  # on CUDA: the stream of the pre/post kernels
            state = tiling.network_tiled(self.backend.model, torch.from_dlpack(x), write, tile=self.tile,
                                         overlap=self.overlap)
        return image, up, down, masks, state.coef.contiguous()

    def __call__(self, frame: np.ndarray, t: float, pts: int | None = None) -> _Done:
        """Enqueue one (H, W, 3) uint8/uint16 RGB frame shown at ``t`` seconds; the result's ``wait()``
        blocks until its host output is ready. Call :meth:`release` with the result's slot once done."""
        frame = np.ascontiguousarray(frame)
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype not in (np.uint8, np.uint16):
            raise ValueError(f"frame must be uint8/uint16 (H, W, 3), got {frame.dtype} {frame.shape}")
        h, w = frame.shape[:2]
        oh, ow = self.out_size(h, w)
        if oh == 0 or ow == 0:
            raise VideoError(f"frame of {w}x{h} is too small")
        cut = self.detector(frame)
        if cut:
            self.cuts.append(self.count)
        i = self.free.get()
        slot = self.slots[i]
        self._prepare(slot, h, w, str(frame.dtype))
        stream = self.stream
        if self.cuda:
            np.copyto(np.from_dlpack(slot.host_in), frame)
            self.ext.copy(kernels._capsule(slot.dev_in, "video", "frame", stream),
                          kernels._capsule(slot.host_in, "video", "frame", stream), stream)
            x = slot.dev_in
        else:
            x = frame
        if self.tile:
            image, up, down, masks, coef = self._network_tiled(x, h, w)
        else:
            pre = self._pre_buffers(h, w)
            kernels.pre(x, stride=self.backend.stride, dtype=self.backend.dtype, out=pre, stream=stream)
            up, down, masks, coef = self.backend.run(pre, stream)
            image = pre[0]
        coef = self.smoother(coef, t, cut, stream)
        out = slot.dev_out if self.cuda else slot.host_out
        stats = slot.dev_stats if self.cuda else slot.host_stats
        if self.encoding == "linear":
            kernels.post(masks, image, up, down, coef, height=oh, width=ow, layout="nhwc", dtype=self.dtype,
                         out=out, stats=stats, ref_white=self.ref_white, stream=stream, fusion=self.fusion)
        else:
            kernels.post(masks, image, up, down, coef, height=oh, width=ow, layout="yuv420p", dtype="uint16",
                         transfer=self.encoding, gamut="bt2020", ref_white=self.ref_white,
                         peak_nits=self.peak_nits, code_range="limited", bits=10, out=out, stats=stats,
                         stream=stream, fusion=self.fusion)
        event = None
        if self.cuda:
            for dst, src in ((slot.host_out, slot.dev_out), (slot.host_stats, slot.dev_stats)):
                self.ext.copy(kernels._capsule(dst, "video", "out", stream),
                              kernels._capsule(src, "video", "out", stream), stream)
            slot.event.record(stream)
            event = slot.event
        host_out = np.from_dlpack(slot.host_out) if self.cuda else slot.host_out
        host_stats = np.from_dlpack(slot.host_stats) if self.cuda else slot.host_stats
        done = _Done(i, host_out[0], host_stats[0], event, pts, t, self.count)
        self.count += 1
        return done

    def release(self, done: _Done) -> None:
        self.free.put(done.slot)
