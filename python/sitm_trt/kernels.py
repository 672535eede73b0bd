"""The C++/CUDA kernels around the network, callable on any DLPack array (torch, NumPy, CuPy, ...).

Arrays cross into the extension without copies through DLPack; results are allocated on the input's device
and returned as the input's array type (``torch.Tensor`` for torch, ``numpy.ndarray`` for NumPy, the
producer's ``from_dlpack`` where it has one, else an ``sitm_trt._C.Buffer``), or written into ``out=``.

CUDA work runs on ``stream`` (a ``torch.cuda.Stream``, a CuPy stream, or a raw ``cudaStream_t`` integer); by
default on the caller's current torch (or CuPy) stream, so calls are ordered like torch ops and never
synchronize the host. The math is ``sitm_trt.reference`` (the PyTorch reference); see ``docs/kernels.md``.
"""

from __future__ import annotations

import sys
from typing import Any, NamedTuple

__all__ = ["PreOutputs", "pre", "fuse", "curve", "ema", "post", "extension", "build_info", "set_num_threads",
           "get_num_threads", "BufferPool"]

_DL_CPU, _DL_CUDA, _DL_CUDA_HOST, _DL_CUDA_MANAGED = 1, 2, 3, 13
_FLOAT_DTYPES = ("float32", "float16")


class PreOutputs(NamedTuple):
    """Network inputs from :func:`pre`, each padded to a multiple of the stride."""

    image: Any  # (N, 3, Hp, Wp)  I
    image_down: Any  # (N, 3, Hp, Wp)  I * max(R, G, B)
    image_up: Any  # (N, 3, Hp, Wp)  I * (1 - min(R, G, B))
    guide: Any  # (N, 2, Hp, Wp)  max(R, G, B), 1 - min(R, G, B)


_EXT = None


def extension():
    """The compiled module ``sitm_trt._C``; raises ImportError saying how to build it (cause attached)."""
    global _EXT
    if _EXT is None:
        try:
            from sitm_trt import _C
        except ImportError as err:
            raise ImportError(
                "sitm_trt's compiled kernels (sitm_trt._C) are not available: install the package with "
                "`pip install .` from a source checkout (a C++17 compiler and CMake >= 3.24 are needed; nvcc "
                "is optional). If you run from the source tree, import it from an installed copy instead."
            ) from err
        _EXT = _C
    return _EXT


def build_info() -> dict:
    """How the extension was built: CUDA on/off, architectures, compilers, version, CPU threads."""
    return dict(extension().build_info())


def set_num_threads(n: int) -> None:
    """Threads of the CPU kernels (0 = all hardware threads, the default)."""
    extension().set_num_threads(int(n))


def get_num_threads() -> int:
    return int(extension().get_num_threads())


_ITEMSIZE = {"float32": 4, "float16": 2, "uint16": 2, "uint8": 1}


class BufferPool:
    """Reusable extension buffers by role: a request that fits the role's allocation gets a view of it (on
    the caller's stream); a larger one grows the allocation. Not thread-safe: one per user (a Pipeline holds
    its lock while it uses its pool)."""

    def __init__(self) -> None:
        self._buffers: dict[tuple[str, str], Any] = {}

    def get(self, role: str, shape: list[int], dtype: str, device: str, stream: int) -> Any:
        need = _ITEMSIZE[dtype]
        for s in shape:
            need *= int(s)
        key = (role, device)
        buf = self._buffers.get(key)
        if buf is None or buf.capacity < need:
            buf = extension().empty(list(shape), dtype, device, stream)
            self._buffers[key] = buf
        return buf.view(list(shape), dtype, stream)

    def allocations(self) -> dict[tuple[str, str], tuple[int, int]]:
        """(data pointer, capacity) per role and device: for tests of reuse."""
        return {k: (b.data_ptr, b.capacity) for k, b in self._buffers.items()}


# ---------------------------------------------------------------------------------------------------------
# DLPack plumbing
# ---------------------------------------------------------------------------------------------------------


def _device(x: Any, op: str, arg: str) -> tuple[int, int]:
    if not hasattr(x, "__dlpack__") or not hasattr(x, "__dlpack_device__"):
        raise TypeError(
            f"{op}: {arg} must be an array that supports DLPack (torch.Tensor, numpy.ndarray, CuPy, ...), "
            f"got {type(x).__name__}"
        )
    dev_type, dev_id = x.__dlpack_device__()
    return int(dev_type), int(dev_id)


def _is_cuda(dev: tuple[int, int]) -> bool:
    return dev[0] in (_DL_CUDA, _DL_CUDA_MANAGED)


def _device_name(dev: tuple[int, int]) -> str:
    """A DLPack ``(device_type, id)`` as "cpu" or "cuda:N" (pinned host memory counts as the CPU)."""
    return "cpu" if dev[0] in (_DL_CPU, _DL_CUDA_HOST) else f"cuda:{dev[1]}"


def _stream_handle(x: Any, dev: tuple[int, int], stream: Any) -> int:
    """The cudaStream_t (as int) to run on: ``stream`` if given, else the producer's current stream."""
    if not _is_cuda(dev):
        return 0
    if stream is not None:
        for attr in ("cuda_stream", "ptr"):  # torch.cuda.Stream, cupy.cuda.Stream
            if hasattr(stream, attr):
                return int(getattr(stream, attr))
        return int(stream)
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(x, torch.Tensor):
        return int(torch.cuda.current_stream(x.device).cuda_stream)
    cupy = sys.modules.get("cupy")
    if cupy is not None and isinstance(x, cupy.ndarray):
        return int(cupy.cuda.get_current_stream().ptr)
    return 0


def _capsule(x: Any, op: str, arg: str, stream: int) -> Any:
    """``x.__dlpack__`` for our stream: DLPack 1.x when the producer speaks it (read-only flag), else legacy.

    A device mismatch is not judged here: the extension reports it with both devices named."""
    kwargs = {}
    if _is_cuda(_device(x, op, arg)):
        kwargs["stream"] = stream if stream != 0 else 1  # DLPack: 1 = the legacy default stream
    try:
        return x.__dlpack__(max_version=(1, 0), **kwargs)
    except TypeError:
        return x.__dlpack__(**kwargs)
    except BufferError as err:
        raise ValueError(f"{op}: {arg} cannot be exported through DLPack: {err}") from err


def _wrap(buf: Any, like: Any) -> Any:
    """An extension Buffer as the array type of ``like`` (zero-copy)."""
    if buf is None:
        return None
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(like, torch.Tensor):
        return torch.from_dlpack(buf)
    np = sys.modules.get("numpy")
    if np is not None and isinstance(like, np.ndarray):
        return np.from_dlpack(buf)
    mod = sys.modules.get(type(like).__module__.split(".")[0])
    from_dlpack = getattr(mod, "from_dlpack", None)
    return from_dlpack(buf) if callable(from_dlpack) else buf


def _dtype_name(op: str, dtype: Any) -> str:
    name = str(dtype).replace("torch.", "").replace("numpy.", "")
    if name not in _FLOAT_DTYPES:
        np = sys.modules.get("numpy")
        try:
            name = np.dtype(dtype).name if np is not None else name  # np.float16, np.dtype("float32"), ...
        except TypeError:
            pass
    if name not in _FLOAT_DTYPES:
        raise ValueError(f"{op}: dtype must be float32 or float16, got {dtype!r}")
    return name


class _Call:
    """Collects the capsules of one kernel call; all arrays must share the first one's device."""

    def __init__(self, op: str, first: Any, first_arg: str, stream: Any):
        self.op = op
        self.dev = _device(first, op, first_arg)
        self.stream = _stream_handle(first, self.dev, stream)

    def cap(self, x: Any, arg: str) -> Any:
        return _capsule(x, self.op, arg, self.stream)

    def out(self, x: Any, arg: str) -> Any:
        return None if x is None else self.cap(x, arg)


# ---------------------------------------------------------------------------------------------------------
# The ops
# ---------------------------------------------------------------------------------------------------------


def pre(frame: Any, *, stride: int = 1, dtype: Any = "float32", out: tuple | None = None, stream: Any = None) -> PreOutputs:
    """Frame -> network inputs in one pass (Sec. 3.2): normalize, NCHW, reflect-pad to ``stride``, guide maps.

    ``frame``: float32/float16 ``(N, 3, H, W)`` in [0, 1] (clamped; NaN -> 0), or uint8/uint16 ``(H, W, 3)`` /
    ``(N, H, W, 3)`` as decoders give them. Returns :class:`PreOutputs` in ``dtype``; ``out`` is a tuple of 4
    arrays to write into instead.
    """
    call = _Call("pre", frame, "frame", stream)
    if out is not None and (not isinstance(out, (tuple, list)) or len(out) != 4):
        raise ValueError("pre: out must be a tuple of 4 arrays (image, image_down, image_up, guide)")
    outs = None if out is None else tuple(call.cap(o, f"out[{i}]") for i, o in enumerate(out))
    res = extension().pre(call.cap(frame, "frame"), int(stride), _dtype_name("pre", dtype), outs, call.stream)
    if out is not None:
        return PreOutputs(*out)
    return PreOutputs(*(_wrap(b, frame) for b in res))


def fuse(masks: Any, image: Any, image_up: Any, image_down: Any, *, dtype: Any = "float32", out: Any = None,
         stream: Any = None) -> Any:
    """Eq. 7: ``M_up * I_up + M_mid * I + M_down * I_down``; masks ``(N, 3, H, W)``, images ``(N, 3, H, W)``."""
    c = _Call("fuse", masks, "masks", stream)
    res = extension().fuse(c.cap(masks, "masks"), c.cap(image, "image"), c.cap(image_up, "image_up"),
                           c.cap(image_down, "image_down"), _dtype_name("fuse", dtype), c.out(out, "out"), c.stream)
    return out if out is not None else _wrap(res, masks)


def curve(x: Any, coef: Any, *, dtype: Any = "float32", out: Any = None, stream: Any = None) -> Any:
    """Eq. 8: ``a3 x^3 + a2 x^2 + a1 x + a0``; ``coef`` ``(N, 4)`` or ``(N, 3, 4)`` holding a0..a3."""
    c = _Call("curve", x, "x", stream)
    res = extension().curve(c.cap(x, "x"), c.cap(coef, "coef"), _dtype_name("curve", dtype), c.out(out, "out"),
                            c.stream)
    return out if out is not None else _wrap(res, x)


def ema(state: Any, x: Any, a: float, *, stream: Any = None) -> Any:
    """In place: ``state = a * state + (1 - a) * x`` (``a`` in [0, 1]; ``a == 0`` copies ``x``, whatever
    ``state`` held). ``state`` is float32 shaped like ``x`` (float32 or float16), on its device; returns
    ``state``. The curve-coefficient smoothing of video (``sitm_trt.media.video.CoefSmoother``), torch-free."""
    c = _Call("ema", x, "x", stream)
    extension().ema(c.cap(state, "state"), c.cap(x, "x"), float(a), c.stream)
    return state


def post(masks: Any, image: Any, image_up: Any, image_down: Any, coef: Any, *, height: int | None = None,
         width: int | None = None, layout: str = "nchw", dtype: Any = "float32", out: Any = None,
         stream: Any = None, transfer: str = "linear", gamut: str = "bt709", ref_white: float = 203.0,
         peak_nits: float = 1000.0, code_range: str = "limited", bits: int = 10, stats: Any = None,
         fusion: str = "paper") -> Any:
    """Fuse (Eq. 7) and curve (Eq. 8) in one pass, cropped to ``height x width`` (default: no crop), then
    optionally encoded for a display or a video encoder, still in the same pass.

    ``fusion`` is the network's (``Preset.fusion``): ``"paper"`` (Eq. 7 then the cubic of Eq. 8, ``coef`` =
    a0..a3) or ``"residual"`` (the three images merged in linear light, ``coef`` = log2 gain of I_up, log2 gain
    of I_down, log gamma, 0; reference :func:`sitm_trt.reference.post`, docs/model.md).

    Inputs are the padded ``(N, 3, Hp, Wp)`` network outputs; the result is ``(N, 3, h, w)`` or, with
    ``layout="nhwc"``, ``(N, h, w, 3)``, in ``dtype``. The defaults give linear BT.709 HDR (1.0 = the input's
    clipping level); the options below change what is written (reference: :mod:`sitm_trt.media.transfer`):

    * ``gamut="bt2020"``: convert the linear BT.709 result to BT.2020 primaries.
    * ``transfer="pq"`` (SMPTE ST 2084) or ``"hlg"`` (BT.2100): display light = linear * ``ref_white``
      cd/m2, clipped per channel to ``[0, peak_nits]``; PQ encodes light / 10000, HLG the inverse OOTF of a
      ``peak_nits`` display then the OETF. The result is the signal R'G'B' in [0, 1].
    * ``dtype="uint16"`` (PQ/HLG only): integer code values of ``bits`` bits in ``code_range`` ("limited":
      BT.2100 narrow range, 64..940 for 10-bit luma; "full"). With ``layout="yuv420p"`` the result is planar
      4:2:0 Y'CbCr (BT.2020/BT.709 non-constant luminance, chroma sited left), ``(N, h*w + 2*ch*cw)`` with
      ``ch, cw = (h+1)//2, (w+1)//2``: what an encoder's ``yuv420p10le`` frame holds
      (:func:`sitm_trt.media.transfer.split_yuv420p` gives the planes).
    * ``stats``: a float32 ``(N, 2)`` array on the same device, overwritten with the max and the mean over the
      pixels of max(R, G, B) display light in cd/m2 (the per-frame terms of MaxCLL and MaxFALL).
    """
    from sitm_trt.media import transfer as T

    c = _Call("post", masks, "masks", stream)
    name = str(dtype).replace("torch.", "").replace("numpy.", "")
    if name != "uint16":
        name = _dtype_name("post", dtype)
    if transfer not in T.TRANSFERS:
        raise ValueError(f"post: transfer must be one of {T.TRANSFERS}, got {transfer!r}")
    if gamut not in T.GAMUTS:
        raise ValueError(f"post: gamut must be one of {T.GAMUTS}, got {gamut!r}")
    matrix = None if gamut == "bt709" else [float(v) for v in T.gamut_matrix("bt709", gamut).ravel()]
    res = extension().post(c.cap(masks, "masks"), c.cap(image, "image"), c.cap(image_up, "image_up"),
                           c.cap(image_down, "image_down"), c.cap(coef, "coef"),
                           -1 if height is None else int(height), -1 if width is None else int(width), layout,
                           name, c.out(out, "out"), c.stream, transfer=transfer, matrix=matrix,
                           luma=list(T.luma_coefficients(gamut)), ref_white=float(ref_white),
                           peak=float(peak_nits), code_range=code_range, bits=int(bits),
                           stats=c.out(stats, "stats"), fusion=fusion)
    return out if out is not None else _wrap(res, masks)
