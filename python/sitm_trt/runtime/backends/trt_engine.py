"""TensorRT engines: the flavour (classic TensorRT or TensorRT-RTX), the build from ONNX, the on-disk cache.

Classic TensorRT (``import tensorrt``) is used when importable, otherwise TensorRT-RTX (``tensorrt_rtx``, or
``tensorrt_rtx_bindings`` as the PyPI wheels ``tensorrt-rtx-cu13-bindings`` + ``-libs`` name it). Both build
a strongly typed network from the ONNX graph, so the graph's dtypes decide the precision: an FP16 engine
comes from the FP16 export (normalization kept in FP32 by explicit casts), an FP32 engine from the FP32
export. TensorRT-RTX builds ahead of time without a GPU; its engines run on Ampere and later *RTX-class*
GPUs (compute capability 7.5, 8.6, 8.9, 12.x) and not on A100 (sm_80), Hopper (sm_90: H100/H200) or B200 (sm_100), which need classic
TensorRT.

Engines are cached under ``$SITM_TRT_CACHE/engines`` (default ``~/.cache/sitm-trt/engines``), keyed by
everything that makes an engine differ (weights and ONNX sha256, preset, flavour and version, precision,
shape profile, target GPU). Files are written atomically, a lock file serializes builders of the same key across processes, and a
file whose checksum or deserialization fails is rebuilt.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib
import json
import os
import time
from pathlib import Path
from types import ModuleType
from typing import Callable, Iterator

from sitm_trt.files import atomic_write

__all__ = ["Flavour", "find_flavour", "Profile", "EngineKey", "build_serialized", "EngineCache", "default_cache_dir", "cache_root",
           "TensorRTUnavailable"]

INPUTS = ("image", "image_down", "image_up", "guide")
OUTPUTS = ("exposure_up", "exposure_down", "masks", "coef")  # sitm_trt.model.export.OUTPUT_NAMES
INPUT_CHANNELS = {"image": 3, "image_down": 3, "image_up": 3, "guide": 2}


class TensorRTUnavailable(ImportError):
    """No TensorRT flavour can be imported."""


@dataclasses.dataclass(frozen=True)
class Flavour:
    name: str  # "tensorrt" or "tensorrt-rtx"
    module: ModuleType
    version: str

    @property
    def is_rtx(self) -> bool:
        return self.name == "tensorrt-rtx"

    def supports_compute_capability(self, major: int, minor: int) -> bool:
        """Whether engines of this flavour can run on a GPU of that compute capability."""
        if not self.is_rtx:
            return (major, minor) >= (7, 5)
        return rtx_supports(major, minor)


RTX_COMPUTE_CAPABILITIES = ((7, 5), (8, 6), (8, 9))
"""TensorRT-RTX's support matrix: Turing (7.5), RTX Ampere (8.6), Ada (8.9) and RTX Blackwell (12.x). The 1.7
wheel's ``ComputeCapability`` enum also lists SM80, but the support matrix does not include the A100, so it is
not used there; Hopper (9.0) and datacenter Blackwell (10.x) are in neither."""


def rtx_supports(major: int, minor: int) -> bool:
    """Whether TensorRT-RTX engines run on a GPU of compute capability ``major.minor``."""
    return (major, minor) in RTX_COMPUTE_CAPABILITIES or major == 12


def gpu_plan(major: int, minor: int) -> str:
    """What a GPU of compute capability ``major.minor`` gets from ``backend="auto"``, in words (``info()``)."""
    cc = f"sm_{major}{minor}"
    if (major, minor) < (7, 5):
        return f"{cc}: below TensorRT's minimum (7.5): ONNX Runtime's CUDA provider if installed, else torch"
    if rtx_supports(major, minor):
        return f"{cc}: classic TensorRT if installed, else TensorRT-RTX (pip install 'sitm-trt[tensorrt-rtx]')"
    return (f"{cc}: classic TensorRT only (pip install tensorrt-cu13; TensorRT-RTX does not support it); without it "
            "ONNX Runtime's CUDA provider if installed, else torch")


_FLAVOURS = (("tensorrt", "tensorrt"), ("tensorrt-rtx", "tensorrt_rtx"), ("tensorrt-rtx", "tensorrt_rtx_bindings"))


def find_flavour(prefer: str | None = None) -> Flavour:
    """Classic TensorRT first, then TensorRT-RTX; ``prefer`` ("tensorrt" / "tensorrt-rtx") restricts the search."""
    errors = []
    for name, mod in _FLAVOURS:
        if prefer is not None and name != prefer:
            continue
        try:
            m = importlib.import_module(mod)
        except Exception as err:  # ImportError, or a broken install raising something else at import
            errors.append(f"{mod}: {err}")
            continue
        return Flavour(name, m, str(getattr(m, "__version__", "unknown")))
    raise TensorRTUnavailable(
        "no TensorRT is importable (" + "; ".join(errors) + "). Install classic TensorRT for datacenter GPUs "
        "(pip install tensorrt-cu13) or TensorRT-RTX for RTX GPUs (pip install tensorrt-rtx-cu13-bindings "
        "tensorrt-rtx-cu13-libs)"
    )


@dataclasses.dataclass(frozen=True)
class Profile:
    """The dynamic shape range of one optimization profile (frame sizes before padding are fine: they are
    rounded up to the stride). Defaults: 64x64 to 3840x2160, optimum 1920x1080, batch 1."""

    min_hw: tuple[int, int] = (64, 64)
    opt_hw: tuple[int, int] = (1080, 1920)
    max_hw: tuple[int, int] = (2160, 3840)
    min_batch: int = 1
    opt_batch: int = 1
    max_batch: int = 1

    def padded(self, stride: int) -> "Profile":
        up = lambda hw: tuple(-(-v // stride) * stride for v in hw)  # noqa: E731
        return dataclasses.replace(self, min_hw=up(self.min_hw), opt_hw=up(self.opt_hw), max_hw=up(self.max_hw))

    def contains(self, n: int, h: int, w: int) -> bool:
        return (self.min_batch <= n <= self.max_batch and self.min_hw[0] <= h <= self.max_hw[0]
                and self.min_hw[1] <= w <= self.max_hw[1])

    def describe(self) -> str:
        return (f"batch {self.min_batch}..{self.max_batch}, {self.min_hw[1]}x{self.min_hw[0]} .. "
                f"{self.max_hw[1]}x{self.max_hw[0]} (opt {self.opt_hw[1]}x{self.opt_hw[0]})")


@dataclasses.dataclass(frozen=True)
class EngineKey:
    weights_sha256: str
    onnx_sha256: str  # the exported graph the engine is built from (a changed export means a new engine)
    preset: str
    flavour: str
    flavour_version: str
    precision: str  # "fp16" | "fp32"
    profile: Profile
    target: str  # classic TensorRT: the GPU ("NVIDIA H100 80GB HBM3 sm_90"); TensorRT-RTX: "rtx-portable (...)"

    def digest(self) -> str:
        blob = json.dumps(dataclasses.asdict(self), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:32]


def build_serialized(flavour: Flavour, onnx_path: str | Path, profile: Profile, *, log: Callable[[str], None] | None = None) -> bytes:
    """Parse the ONNX graph and build a serialized engine (strongly typed; AOT, no GPU needed for RTX)."""
    trt = flavour.module
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if not flavour.is_rtx and hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    data = Path(onnx_path).read_bytes()
    if not parser.parse(data):
        errs = "; ".join(str(parser.get_error(i).desc()) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT ({flavour.name} {flavour.version}) cannot parse {onnx_path}: {errs}")
    names = {network.get_input(i).name for i in range(network.num_inputs)}
    if names != set(INPUTS):
        raise RuntimeError(f"{onnx_path}: expected network inputs {sorted(INPUTS)}, found {sorted(names)}")
    config = builder.create_builder_config()
    prof = builder.create_optimization_profile()
    for name in INPUTS:
        c = INPUT_CHANNELS[name]
        prof.set_shape(name, (profile.min_batch, c, *profile.min_hw), (profile.opt_batch, c, *profile.opt_hw),
                       (profile.max_batch, c, *profile.max_hw))
    config.add_optimization_profile(prof)
    t0 = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT ({flavour.name} {flavour.version}) failed to build an engine from {onnx_path}")
    if log:
        log(f"built {flavour.name} engine from {Path(onnx_path).name} in {time.perf_counter() - t0:.1f} s "
            f"({profile.describe()})")
    return bytes(memoryview(serialized))


def cache_root() -> Path:
    """``$SITM_TRT_CACHE``, else ``$XDG_CACHE_HOME/sitm-trt`` or ``~/.cache/sitm-trt`` (engines, ONNX exports,
    the training data sources each have a folder below it)."""
    env = os.environ.get("SITM_TRT_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "sitm-trt"


def default_cache_dir() -> Path:
    """Where engines are cached: ``cache_root() / "engines"``."""
    return cache_root() / "engines"


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock (fcntl) held across processes; a no-op where fcntl does not exist."""
    try:
        import fcntl
    except ImportError:  # Windows: atomic replace still keeps files whole
        yield
        return
    with open(path, "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _jsonable(key: EngineKey) -> dict:
    return json.loads(json.dumps(dataclasses.asdict(key)))


class EngineCache:
    """Serialized engines on disk: ``<digest>.engine`` with a ``<digest>.json`` sidecar (key, sha256, size)."""

    def __init__(self, root: str | Path | None = None):
        self.root = Path(root) if root is not None else default_cache_dir()

    def paths(self, key: EngineKey) -> tuple[Path, Path, Path]:
        d = key.digest()
        return self.root / f"{d}.engine", self.root / f"{d}.json", self.root / f"{d}.lock"

    def load(self, key: EngineKey) -> bytes | None:
        """The cached engine, or None when it is missing or fails its checksum (then it is removed)."""
        engine, meta, _ = self.paths(key)
        try:
            info = json.loads(meta.read_text())
            data = engine.read_bytes()
        except (FileNotFoundError, json.JSONDecodeError, OSError):
            return None
        if info.get("sha256") != hashlib.sha256(data).hexdigest() or info.get("key") != _jsonable(key):
            self.invalidate(key)
            return None
        return data

    def store(self, key: EngineKey, data: bytes) -> Path:
        engine, meta, _ = self.paths(key)
        info = {"key": _jsonable(key), "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data),
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            atomic_write(engine, data)
            atomic_write(meta, json.dumps(info, indent=2).encode())
        except OSError as err:  # a read-only or full cache
            from sitm_trt.errors import EngineError

            raise EngineError(f"cannot store the engine in the cache {self.root} ({err.strerror or err}); "
                              "set SITM_TRT_CACHE or --cache-dir to a writable folder") from err
        return engine

    def invalidate(self, key: EngineKey) -> None:
        for p in self.paths(key)[:2]:
            with contextlib.suppress(OSError):  # a read-only cache: store() then says so
                p.unlink()

    def get_or_build(self, key: EngineKey, build: Callable[[], bytes],
                     validate: Callable[[bytes], bool] | None = None) -> tuple[bytes, bool]:
        """(engine bytes, built?) - built only when no valid cached file exists; builders of the same key in
        other processes wait on the lock and then reuse the file. ``validate`` (e.g. a deserialization on
        the GPU) rejects an incompatible file, which is then rebuilt."""
        data = self.load(key)
        if data is not None and (validate is None or validate(data)):
            return data, False
        rejected = None if data is None else hashlib.sha256(data).digest()
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            lock = _file_lock(self.paths(key)[2])
            lock.__enter__()
        except OSError as err:
            from sitm_trt.errors import EngineError

            raise EngineError(f"cannot use the engine cache {self.root} ({err.strerror or err}); "
                              "set SITM_TRT_CACHE or --cache-dir to a writable folder") from err
        try:
            data = self.load(key)  # another process may have built it while we waited
            if (data is not None and hashlib.sha256(data).digest() != rejected
                    and (validate is None or validate(data))):
                return data, False
            data = build()
            if validate is not None and not validate(data):
                from sitm_trt.errors import EngineError

                raise EngineError(f"a freshly built engine for {key.preset} ({key.flavour} {key.flavour_version}, "
                                  f"{key.precision}) does not load here")
            self.store(key, data)
            return data, True
        finally:
            lock.__exit__(None, None, None)
