"""``sitm-trt batch``: photo and video libraries converted on Ray Data, resumably (docs/batch.md).

Inputs are files, folders (walked recursively), globs, or URIs that pyarrow's filesystems open (``s3://``,
``gs://``, ``abfs://``, ``hdfs://``, ``file://``); a folder input keeps its sub-folders under the output folder.
Each image gives what ``sitm-trt infer`` writes (``NAME.exr`` or ``NAME.hdr``, optionally
``NAME.preview.png``), each video what ``sitm-trt video`` writes (``NAME.mp4`` HDR10/HLG, or an EXR sequence
in the folder ``NAME/``), with the same code (:func:`sitm_trt.tools.cli.write_image_outputs`,
:func:`sitm_trt.media.video.convert`), so the files are the same bytes.

How it runs:

* A Ray Dataset of (input, output, kind) rows goes through ``map_batches`` with :class:`Worker`, a class UDF
  that holds one :class:`~sitm_trt.runtime.pipeline.Pipeline` per worker (an actor; ``--num-gpus-per-worker`` /
  ``--cpus-per-worker``). Images come in blocks of at most ``--batch``, and images of one size run through
  the network together as ``sitm-trt infer`` does.
* Videos: one task per video (a block of one row): the frames of a video depend on each other through the
  temporal smoothing of the curve, which is reset only at scene cuts, so a video is not split (docs/batch.md
  says why and what splitting would cost).
* Every output is written to a temporary name in its target folder (``tempfile.mkstemp``/``mkdtemp``) and
  renamed into place (``os.replace``): an output that exists is complete, and is skipped by the next run.
  Temporaries left by a killed run are removed when the next run converts that item.
* ``OUTPUT_DIR/manifest.jsonl`` gets one JSON line per item and run (:data:`MANIFEST_FIELDS`): input, output,
  status (done, skipped, failed), error, seconds, backend, weights sha256, attempts.
* An item that fails because of its input (unreadable image or video) is recorded as failed at once; any other
  failure (an I/O error, out of memory) is retried ``retries`` more times, then recorded. A failing item
  never stops the job. A worker process that dies is restarted by Ray (``retries`` times); its items are
  recorded as failed if it keeps dying.
* Ctrl-C: Ray's workers stop, nothing partial is left under the final names, the manifest holds what
  finished; the next run continues with the rest.

Ray (``pip install "sitm-trt[ray]"``) is imported only here, and only when a job runs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

__all__ = ["convert", "BatchResult", "BatchError", "Worker", "plan", "Item", "MANIFEST_FIELDS",
           "VIDEO_EXTENSIONS", "RAY_MISSING"]

VIDEO_EXTENSIONS = (".mp4", ".mov", ".mkv", ".m4v", ".avi", ".webm", ".mts", ".m2ts", ".ts", ".mpg", ".mpeg",
                    ".wmv", ".flv", ".3gp")
MANIFEST_FIELDS = ("input", "output", "kind", "status", "error", "seconds", "backend", "weights_sha256", "attempts",
                   "run")
RAY_MISSING = 'sitm-trt batch needs Ray Data: pip install "sitm-trt[ray]" (or: pip install "ray[data]")'
_LOCK_NAME = ".sitm-batch.lock"
_OBJECT_STORE_BYTES = 256 * 2**20  # rows are paths and records; pixels never go through the object store


class BatchError(ValueError):
    """Bad inputs or options of a batch job (nothing was converted)."""


@dataclasses.dataclass
class Item:
    input: str  # absolute local path or URI
    output: str  # absolute path: a file, or the folder of an EXR sequence
    kind: str  # "image" or "video"

    def targets(self, preview: bool) -> list[Path]:
        out = Path(self.output)
        if self.kind == "image" and preview:
            return [out, out.with_suffix(".preview.png")]
        return [out]


@dataclasses.dataclass
class BatchResult:
    done: int
    skipped: int
    failed: int
    seconds: float
    manifest: Path
    records: list[dict]  # this run's manifest records, in the order they were written
    arrivals: list[float]  # when each record was written, seconds since the job started

    @property
    def items_per_second(self) -> float:
        """Converted items (done) per second of the whole job (Ray start-up and planning included)."""
        return self.done / self.seconds if self.seconds > 0 else 0.0


def _ray() -> Any:
    try:
        import ray
        import ray.data  # noqa: F401 - the extra, not only the core
    except ImportError as err:
        raise ImportError(RAY_MISSING) from err
    return ray


# ---------------------------------------------------------------------------------------------------------
# Planning (driver side): inputs -> items
# ---------------------------------------------------------------------------------------------------------


def _is_uri(s: str) -> bool:
    return re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", s) is not None


def _kind(name: str) -> str | None:
    from sitm_trt.media.io import LDR_EXTENSIONS

    ext = os.path.splitext(name)[1].lower()
    return "image" if ext in LDR_EXTENSIONS else "video" if ext in VIDEO_EXTENSIONS else None


def _expand(patterns: Sequence[str], output_dir: Path) -> list[tuple[str, str, str]]:
    """(input, its path relative to the output folder without extension, kind) for each input file, in order."""
    from sitm_trt.tools.cli import UsageError, expand_inputs

    found: list[tuple[str, str, str]] = []
    out_real = os.path.realpath(output_dir)

    def add(src: str, rel: str, explicit: bool) -> None:
        kind = _kind(src)
        if kind is None:
            if explicit:
                raise BatchError(f"{src}: not an image ({', '.join(_image_exts())}) or a video "
                                 f"({', '.join(VIDEO_EXTENSIONS)})")
            return
        found.append((src, os.path.splitext(rel)[0], kind))

    for pat in patterns:
        if _is_uri(pat):
            import pyarrow.fs as pafs

            try:
                fs, root = pafs.FileSystem.from_uri(pat)
                info = fs.get_file_info(root)
            except Exception as err:  # noqa: BLE001 - pyarrow raises several types
                raise BatchError(f"{pat}: cannot open ({err})") from err
            scheme = pat.split("://", 1)[0]
            if info.type == pafs.FileType.Directory:
                infos = fs.get_file_info(pafs.FileSelector(root, recursive=True))
                for f in sorted((f for f in infos if f.type == pafs.FileType.File), key=lambda f: f.path):
                    rel = os.path.relpath(f.path, root)
                    if not any(part.startswith(".") for part in Path(rel).parts):
                        add(_uri(scheme, f.path), rel, False)
            elif info.type == pafs.FileType.File:
                add(pat, os.path.basename(root), True)
            else:
                raise BatchError(f"{pat}: no such file or folder")
        elif Path(pat).is_dir():
            root = Path(pat)
            for dirpath, dirnames, filenames in os.walk(root):
                dirnames[:] = sorted(d for d in dirnames if not d.startswith(".")
                                     and os.path.realpath(os.path.join(dirpath, d)) != out_real)
                for name in sorted(filenames):
                    if not name.startswith("."):
                        path = os.path.join(dirpath, name)
                        add(os.path.abspath(path), os.path.relpath(path, root), False)
        else:
            try:
                files = expand_inputs([pat])
            except UsageError as err:
                raise BatchError(str(err)) from err
            explicit = not any(c in pat for c in "*?[")
            for f in files:
                add(os.path.abspath(f), f.name, explicit)
    return found


def _uri(scheme: str, path: str) -> str:
    return f"{scheme}://{path}" if scheme != "file" else f"file://{path if path.startswith('/') else '/' + path}"


def _image_exts() -> tuple[str, ...]:
    from sitm_trt.media.io import LDR_EXTENSIONS

    return LDR_EXTENSIONS


def plan(inputs: Sequence[str], output_dir: str | os.PathLike, *, format: str = "exr",
         video_format: str = "hdr10", video_container: str = "mp4") -> list[Item]:
    """The items of a job: each input file with the output it gets (raises :class:`BatchError` on collisions)."""
    if format not in ("exr", "hdr"):
        raise BatchError(f"format must be 'exr' or 'hdr', got {format!r}")
    if video_format not in ("hdr10", "hlg", "exr"):
        raise BatchError(f"video_format must be 'hdr10', 'hlg' or 'exr', got {video_format!r}")
    if video_container not in ("mp4", "mov", "mkv"):
        raise BatchError(f"video_container must be 'mp4', 'mov' or 'mkv', got {video_container!r}")
    out_dir = Path(output_dir).absolute()
    items: list[Item] = []
    seen: dict[str, str] = {}
    for src, rel, kind in _expand(inputs, out_dir):
        if kind == "image":
            dst = out_dir / (rel + "." + format)
        else:
            dst = out_dir / (rel if video_format == "exr" else rel + "." + video_container)
        key = os.path.realpath(dst)
        if key in seen:
            if seen[key] == src:
                continue  # the same file named twice
            raise BatchError(f"{seen[key]} and {src} would both be written to {dst}")
        seen[key] = src
        items.append(Item(src, str(dst), kind))
    if not items:
        raise BatchError("no image or video among the inputs")
    return items


def _complete(item: Item, preview: bool) -> bool:
    """An output that exists is complete: it only ever appears by a rename of a finished temporary."""
    return all(t.exists() for t in item.targets(preview))


def _temporaries(target: Path) -> list[Path]:
    """Leftovers of an interrupted write of ``target``: sitm_trt.media.io's ``.NAME.XXXXXXXX.tmp``, this module's
    ``.NAME.XXXXXXXX.tmp.EXT`` (a video), ``.NAME.XXXXXXXX.tmp/`` (an EXR sequence), ``.NAME.XXXXXXXX.old/``,
    and what sitm_trt.media.video writes beside the video temporary, ``..NAME.XXXXXXXX.tmp.EXT.*``."""
    pattern = re.compile(r"^\.\.?" + re.escape(target.name) + r"\.[A-Za-z0-9_]{8}\.(tmp|old)(\.|$)")
    try:
        return [p for p in target.parent.iterdir() if pattern.match(p.name)]
    except FileNotFoundError:
        return []


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


# ---------------------------------------------------------------------------------------------------------
# Workers (Ray actors)
# ---------------------------------------------------------------------------------------------------------


def _permanent(err: BaseException) -> bool:
    """The input itself is unusable (unreadable image or video): retrying cannot help."""
    from sitm_trt.media.io import ImageReadError

    if isinstance(err, ImageReadError):
        return True
    try:
        from sitm_trt.media.video import VideoError
    except ImportError:  # pragma: no cover
        return False
    return isinstance(err, VideoError)


def _notice(msg: str) -> None:
    print(f"sitm-trt: {msg}", file=sys.stderr, flush=True)


class _Worker:
    """The pipeline (made once per worker), fetching inputs from URIs, bounded retries."""

    def __init__(self, config: dict):
        from sitm_trt.tools import cli
        from sitm_trt.runtime.pipeline import Pipeline

        self.config = config
        self.device = cli._device(config["device"])
        threads = max(1, int(config["cpus_per_worker"])) if self.device == "cpu" else None  # the CPUs Ray gave it
        self.pipe = Pipeline(config["weights"], backend=config["backend"], precision=config["precision"],
                             threads=threads)
        self.sha256 = self.pipe.weights.sha256

    def backend_name(self) -> str:
        try:
            return str(self.pipe.backend_for(self.device).name)
        except Exception:  # noqa: BLE001 - recorded as unknown rather than failing the item
            return ""

    @contextlib.contextmanager
    def local(self, src: str):
        """A local path for ``src``: itself, or a copy of a URI's file in the temporary folder, removed after use."""
        if not _is_uri(src):
            yield Path(src)
            return
        import pyarrow.fs as pafs

        fs, path = pafs.FileSystem.from_uri(src)
        fd, tmp = tempfile.mkstemp(prefix="sitm-batch-in-", suffix=os.path.splitext(path)[1])
        try:
            with os.fdopen(fd, "wb") as f, fs.open_input_stream(path) as stream:
                while chunk := stream.read(8 << 20):
                    f.write(chunk)
            yield Path(tmp)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    def attempt(self, fn: Callable[[], Any]) -> tuple[Any, str, int]:
        """(result or None, error message or "", attempts) with at most 1 + retries attempts."""
        retries = int(self.config["retries"])
        for n in range(1, retries + 2):
            try:
                return fn(), "", n
            except Exception as err:  # noqa: BLE001 - recorded per item
                if _permanent(err) or n > retries:
                    return None, f"{type(err).__name__}: {err}", n
        raise AssertionError("unreachable")


def _records(rows: list[dict]) -> dict[str, list]:
    return {k: [r.get(k) for r in rows] for k in ("input", "output", "kind", "status", "error", "seconds", "backend",
                                                   "weights_sha256", "attempts")}


def _rows(batch: dict) -> list[dict]:
    keys = list(batch)
    n = len(batch[keys[0]]) if keys else 0
    return [{k: (batch[k][i].item() if hasattr(batch[k][i], "item") else batch[k][i]) for k in keys} for i in range(n)]


class Worker(_Worker):
    """Ray Data class UDF (one per actor, holding one pipeline): a batch of rows (input, output, kind) -> their
    manifest records. A batch is either images (up to ``--batch`` of them) or one video."""

    def __call__(self, batch: dict) -> dict:
        rows = _rows(batch)
        images = [r for r in rows if r["kind"] == "image"]
        done = {r["output"]: r for r in self.images(images)} if images else {}
        for r in rows:
            if r["kind"] == "video":
                done[r["output"]] = self.video(r)
        backend = self.backend_name()
        out = []
        for r in rows:
            rec = done[r["output"]]
            rec.update(backend=backend, weights_sha256=self.sha256)
            out.append(rec)
        return _records(out)

    def images(self, rows: list[dict]) -> list[dict]:
        import numpy as np

        from sitm_trt.tools import cli

        cfg = self.config
        results: dict[int, dict] = {}
        read: list[tuple[int, Any, Any, bool, float]] = []  # (row, rgb, alpha, gray, seconds so far)
        for i, row in enumerate(rows):
            t0 = time.perf_counter()
            for t in _temporaries(Path(row["output"])) + _temporaries(Path(row["output"]).with_suffix(".preview.png")):
                _remove(t)

            def load(src: str = row["input"]) -> Any:
                with self.local(src) as path:
                    return cli.read_image(path)

            got, err, n = self.attempt(load)
            if got is None:
                results[i] = {**row, "status": "failed", "error": err, "attempts": n,
                              "seconds": time.perf_counter() - t0}
            else:
                read.append((i, *got, time.perf_counter() - t0))
        # images of one shape and dtype together, at most `batch` per network call (as sitm-trt infer does)
        groups: list[list[tuple]] = []
        for entry in read:
            g = groups[-1] if groups else None
            if g and g[0][1].shape == entry[1].shape and g[0][1].dtype == entry[1].dtype and len(g) < cfg["batch"]:
                g.append(entry)
            else:
                groups.append([entry])
        for g in groups:
            t0 = time.perf_counter()
            hdr, err, n = self.attempt(lambda g=g: cli._run_batch(self.pipe, np.stack([e[1] for e in g]), self.device))
            share = (time.perf_counter() - t0) / len(g)
            for k, (i, _, alpha, gray, sec) in enumerate(g):
                row = rows[i]
                if hdr is None:
                    results[i] = {**row, "status": "failed", "error": err, "attempts": n, "seconds": sec + share}
                    continue
                t1 = time.perf_counter()
                Path(row["output"]).parent.mkdir(parents=True, exist_ok=True)
                _, werr, wn = self.attempt(lambda h=np.ascontiguousarray(hdr[k]), row=row, alpha=alpha, gray=gray:
                                           cli.write_image_outputs(Path(row["input"]), Path(row["output"]), h, alpha,
                                                                   gray, half=cfg["half"], preview=cfg["preview"],
                                                                   notice=_notice))
                results[i] = {**row, "status": "failed" if werr else "done", "error": werr, "attempts": max(n, wn),
                              "seconds": sec + share + time.perf_counter() - t1}
        return [results[i] for i in range(len(rows))]

    def video(self, row: dict) -> dict:
        """One video, whole (never split: the smoothing runs across its frames)."""
        t0 = time.perf_counter()
        dst = Path(row["output"])
        for t in _temporaries(dst):
            _remove(t)

        def run() -> None:
            with self.local(row["input"]) as src:
                self._convert(src, dst, row["input"])

        _, err, n = self.attempt(run)
        return {**row, "status": "failed" if err else "done", "error": err, "attempts": n,
                "seconds": time.perf_counter() - t0}

    def _convert(self, src: Path, dst: Path, name: str) -> None:
        from sitm_trt.media import video

        opts = video.VideoOptions(**self.config["video"])
        dst.parent.mkdir(parents=True, exist_ok=True)
        if opts.format == "exr":
            tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent))
        else:
            fd, tmp_name = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".tmp" + dst.suffix, dir=dst.parent)
            os.close(fd)
            tmp = Path(tmp_name)
        try:
            video.convert(src, tmp, pipeline=self.pipe, options=opts, device=self.device, progress=False,
                          overwrite=True, log=_notice)
            if opts.format == "exr":
                if name != str(src):  # a URI's local copy: sequence.json names the URI
                    from sitm_trt.media.io import write_bytes_atomic

                    meta = json.loads((tmp / "sequence.json").read_text())
                    meta["source"] = name
                    write_bytes_atomic(tmp / "sequence.json", json.dumps(meta, indent=1).encode())
                os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; a folder made by mkdir would not be
                if dst.exists():  # --overwrite: move the old sequence out of the way, then drop it
                    old = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", suffix=".old", dir=dst.parent))
                    os.replace(dst, old / dst.name)
                    os.replace(tmp, dst)
                    shutil.rmtree(old, ignore_errors=True)
                else:
                    os.replace(tmp, dst)
            else:
                os.replace(tmp, dst)
        except BaseException:
            _remove(tmp)
            for t in _temporaries(dst):
                _remove(t)
            raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# ---------------------------------------------------------------------------------------------------------
# The job (driver side)
# ---------------------------------------------------------------------------------------------------------


class _Manifest:
    """Append-only JSONL; each record is flushed as it arrives (a killed run loses at most the line it wrote)."""

    def __init__(self, path: Path, run: str, t0: float):
        self.path, self.run, self.t0 = path, run, t0
        self.arrivals: list[float] = []
        self.previous = self._previous()
        path.parent.mkdir(parents=True, exist_ok=True)
        self.file = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed by close()
        self.records: list[dict] = []

    def _previous(self) -> dict[str, dict]:
        """The last ``done`` record of each output in earlier runs (what a skipped output was made with)."""
        last: dict[str, dict] = {}
        if self.path.exists():
            for line in self.path.read_text(encoding="utf-8", errors="replace").splitlines():
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue  # a line cut by a killed run
                if isinstance(rec, dict) and rec.get("status") == "done" and "output" in rec:
                    last[rec["output"]] = rec
        return last

    def write(self, rec: dict) -> dict:
        rec = {k: rec.get(k) for k in MANIFEST_FIELDS} | {"run": self.run}
        for k in ("error", "backend"):
            rec[k] = rec[k] or None
        if rec["seconds"] is not None:
            rec["seconds"] = round(float(rec["seconds"]), 4)
        self.file.write(json.dumps(rec) + "\n")
        self.file.flush()
        self.records.append(rec)
        self.arrivals.append(time.perf_counter() - self.t0)
        return rec

    def close(self) -> None:
        self.file.close()


@contextlib.contextmanager
def _lock(output_dir: Path):
    """One job per output folder at a time (the sweep of temporaries relies on it)."""
    import fcntl

    output_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(output_dir / _LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as err:
            raise BatchError(f"{output_dir}: another sitm-trt batch job is writing here") from err
        yield
    finally:
        os.close(fd)


@contextlib.contextmanager
def _ray_session(address: str | None, num_cpus: int | None, object_store_memory: int | None):
    """Use the Ray already initialised in this process, else connect to ``address`` / ``$RAY_ADDRESS``, else
    start a local Ray for the job (no dashboard, no usage statistics, bound to 127.0.0.1); shut down what we
    started."""
    ray = _ray()
    started = False
    if not ray.is_initialized():
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        address = address or os.environ.get("RAY_ADDRESS") or None
        if address:
            ray.init(address=address, log_to_driver=True)
        else:
            ray.init(num_cpus=num_cpus or os.cpu_count() or 1, include_dashboard=False,
                     object_store_memory=object_store_memory or _OBJECT_STORE_BYTES, _node_ip_address="127.0.0.1",
                     configure_logging=False)
        started = True
    try:
        yield ray
    finally:
        if started:
            ray.shutdown()


def convert(inputs: str | os.PathLike | Iterable[str | os.PathLike], output_dir: str | os.PathLike, *,
            format: str = "exr", half: bool = True, preview: bool = False, batch_size: int = 4,
            video_options: Any = None, video_container: str = "mp4", weights: Any = "default",
            backend: str = "auto", precision: str | None = None, device: str = "auto", overwrite: bool = False,
            address: str | None = None, workers: int | None = None, cpus_per_worker: float = 1.0,
            gpus_per_worker: float | None = None, retries: int = 2, manifest: str | os.PathLike | None = None,
            progress: bool = True, num_cpus: int | None = None, object_store_memory: int | None = None,
            log: Callable[[str], None] | None = None) -> BatchResult:
    """Convert images and videos into ``output_dir`` on Ray Data (module docstring, docs/batch.md).

    ``format``/``half``/``preview``/``batch_size``: the image outputs, as ``sitm-trt infer`` (``-f``,
    ``--float``, ``--preview``, ``--batch``). ``video_options``: a :class:`sitm_trt.media.video.VideoOptions`
    (``format`` hdr10, hlg or exr; default hdr10) and ``video_container`` (mp4, mov, mkv). ``weights``,
    ``backend``, ``precision``, ``device``: as the other commands, per worker. ``address``: a Ray cluster
    (default ``$RAY_ADDRESS``, else a local Ray of ``num_cpus`` CPUs, default all, started and stopped here;
    a Ray already initialised in this process is used as it is). ``workers``: model replicas (default one
    per GPU, else one per ``cpus_per_worker`` CPUs). ``retries``: extra attempts for failures that are not
    the input's fault. Returns the counts and this run's manifest records; Ctrl-C (KeyboardInterrupt) is
    re-raised after the manifest is flushed and the workers are stopped.
    """
    from sitm_trt.media import video as V
    from sitm_trt.weights import load

    t_start = time.perf_counter()
    log = log or _notice
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    inputs = [os.fspath(i) for i in inputs]
    if batch_size < 1:
        raise BatchError(f"batch_size must be >= 1, got {batch_size}")
    if retries < 0:
        raise BatchError(f"retries must be >= 0, got {retries}")
    if workers is not None and workers < 1:
        raise BatchError(f"workers must be >= 1, got {workers}")
    if cpus_per_worker <= 0 or (gpus_per_worker is not None and gpus_per_worker < 0):
        raise BatchError("cpus_per_worker must be > 0 and gpus_per_worker >= 0")
    vopts = dataclasses.replace(video_options) if video_options is not None else V.VideoOptions()
    if vopts.format is None:
        vopts.format = "hdr10"
    vopts.check()
    output_dir = Path(output_dir).absolute()
    items = plan(inputs, output_dir, format=format, video_format=vopts.format, video_container=video_container)
    w = load(weights)  # fails here, before Ray starts, for a bad weights file
    config = {"weights": str(w.path), "backend": backend, "precision": precision, "device": device,
              "retries": retries, "half": half, "preview": preview, "batch": batch_size,
              "cpus_per_worker": cpus_per_worker,
              "video": dataclasses.asdict(vopts)}
    manifest_path = Path(manifest).absolute() if manifest is not None else output_dir / "manifest.jsonl"
    with _lock(output_dir):
        book = _Manifest(manifest_path, time.strftime("%Y-%m-%dT%H:%M:%S%z-") + os.urandom(3).hex(),
                         t_start)
        try:
            todo: list[Item] = []
            other_weights = 0
            for it in items:
                if not overwrite and _complete(it, preview):
                    prev = book.previous.get(it.output, {})
                    other_weights += bool(prev) and prev.get("weights_sha256") != w.sha256
                    book.write({**dataclasses.asdict(it), "status": "skipped", "seconds": 0.0, "attempts": 0,
                                "backend": prev.get("backend"), "weights_sha256": prev.get("weights_sha256")})
                else:
                    todo.append(it)
            if other_weights:
                log(f"{other_weights} existing outputs were made with other weights and are kept "
                    "(--overwrite to convert them again)")
            if todo:
                with _ray_session(address, num_cpus, object_store_memory) as ray:
                    _execute(ray, todo, config, book, workers, cpus_per_worker, gpus_per_worker, retries, progress)
        finally:
            book.close()
    recs = book.records
    count = {s: sum(r["status"] == s for r in recs) for s in ("done", "skipped", "failed")}
    result = BatchResult(count["done"], count["skipped"], count["failed"], time.perf_counter() - t_start,
                         manifest_path, recs, book.arrivals)
    return result


def _execute(ray: Any, todo: list[Item], config: dict, book: _Manifest, workers: int | None, cpus_per_worker: float,
             gpus_per_worker: float | None, retries: int, progress: bool) -> None:
    from ray.data import ActorPoolStrategy, DataContext

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = progress
    if not progress:
        import logging

        logging.getLogger("ray.data").setLevel(logging.WARNING)
    ctx.max_errored_blocks = -1  # a block whose worker keeps dying is reported per item below, not fatal
    resources = ray.cluster_resources()
    gpus = float(resources.get("GPU", 0))
    if gpus_per_worker is None:
        gpus_per_worker = 1.0 if gpus else 0.0
    if not gpus_per_worker and config["device"] == "auto":
        config = {**config, "device": "cpu"}  # a CPU worker on a GPU node must not take a GPU it was not given
    if workers is None:
        if gpus_per_worker > 0:
            workers = max(1, int(gpus // gpus_per_worker))
        else:
            workers = max(1, int(float(resources.get("CPU", 1)) // cpus_per_worker))
    # Bounded restarts of a dying worker (Ray Data's default is unbounded: an input that crashes the process
    # would be retried forever). Passed as remote args, which Ray 2.51+ deprecates without a named
    # replacement; without them (a Ray that no longer takes them) the default applies.
    remote = {"num_cpus": cpus_per_worker, "num_gpus": gpus_per_worker or None}
    restarts = {"max_restarts": retries, "max_task_retries": retries}

    def mapped(method: Callable, *args: Any, **kwargs: Any) -> Any:
        import warnings

        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*ray_remote_args.*deprecated", category=Warning)
            try:
                return method(*args, **kwargs, **restarts)
            except TypeError as err:  # only a Ray that no longer takes the restart arguments
                if not any(k in str(err) for k in restarts):
                    raise
                return method(*args, **kwargs)
    pending = {it.output: it for it in todo}
    # One dataset: the images in blocks of at most --batch rows, then each video in a block of its own; each
    # block is one call of a worker (batch_size=None), so a video is one task, and one pool of workers (one
    # pipeline each) serves both.
    images = [dataclasses.asdict(it) for it in todo if it.kind == "image"]
    videos = [dataclasses.asdict(it) for it in todo if it.kind == "video"]
    parts = []
    if images:
        parts.append(ray.data.from_items(images, override_num_blocks=math.ceil(len(images) / config["batch"])))
    if videos:
        parts.append(ray.data.from_items(videos, override_num_blocks=len(videos)))
    ds = parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0]
    blocks = math.ceil(len(images) / config["batch"]) + len(videos)
    ds = mapped(ds.map_batches, Worker, fn_constructor_kwargs={"config": config}, batch_size=None,
                batch_format="numpy", compute=ActorPoolStrategy(size=min(workers, blocks)), **remote)
    for rec in ds.iter_rows():
        pending.pop(rec["output"], None)
        book.write(rec)
    for it in pending.values():  # the worker died (retries times) or its block was dropped
        book.write({**dataclasses.asdict(it), "status": "failed", "attempts": retries + 1,
                    "error": "no result from the worker: it died or was lost (see Ray's logs)"})


def summary(result: BatchResult) -> str:
    return (f"{result.done} done, {result.skipped} skipped, {result.failed} failed in {result.seconds:.1f} s "
            f"({result.items_per_second:.2f} items/s); manifest: {result.manifest}")


def run_cli(args: Any) -> int:
    """``sitm-trt batch`` (parsed by :func:`sitm_trt.tools.cli.build_parser`)."""
    from sitm_trt.tools import cli

    _ray()  # say what to install before anything else
    vopts = cli.video_options(args, args.video_format)
    try:
        result = convert(args.inputs, args.output, format=args.format, half=not args.float, preview=args.preview,
                         batch_size=args.batch, video_options=vopts, video_container=args.video_container,
                         weights=args.weights, backend=args.backend, precision=args.precision, device=args.device,
                         overwrite=args.overwrite, address=args.address, workers=args.workers,
                         cpus_per_worker=args.cpus_per_worker, gpus_per_worker=args.num_gpus_per_worker,
                         retries=args.retries, manifest=args.manifest, progress=not args.quiet, log=cli._err)
    except BatchError as err:
        raise cli.UsageError(str(err)) from err
    except KeyboardInterrupt:
        cli._err("stopped: the finished outputs are in place and in the manifest; run the same command again to "
                 "continue")
        raise
    for rec in result.records:
        if rec["status"] == "failed":
            cli._err(f"{rec['input']}: {rec['error']}")
    if not args.quiet:
        print(f"sitm-trt batch: {summary(result)}", file=sys.stderr)
    return 1 if result.failed else 0
