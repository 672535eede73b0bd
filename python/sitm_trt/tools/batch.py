"""``sitm-trt batch``: photo and video libraries converted on Ray Data, resumably (docs/batch.md).

Inputs are files, folders (walked recursively), globs, or URIs that pyarrow's filesystems open (``s3://``,
``gs://``, ``abfs://``, ``hdfs://``, ``file://``); a folder input keeps its sub-folders under the output folder.
Each image gives what ``sitm-trt infer`` writes (``NAME.exr`` or ``NAME.hdr``, optionally
``NAME.preview.png``), each video what ``sitm-trt video`` writes (``NAME.mp4`` HDR10/HLG, or an EXR sequence
in the folder ``NAME/``), with the same code (:func:`sitm_trt.tools.cli_infer.write_image_outputs`,
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

The parts: :mod:`sitm_trt.tools.batch_plan` (inputs -> items, and an item's outputs on disk),
:mod:`sitm_trt.tools.batch_worker` (what a worker does with its rows); this module runs the job: the lock, the
manifest, the Ray session and dataset, the command.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable

from sitm_trt.tools.batch_plan import BatchError, Item, complete, plan
from sitm_trt.tools.batch_worker import Worker, notice

__all__ = ["convert", "BatchResult", "BatchError", "Worker", "plan", "Item", "MANIFEST_FIELDS", "RAY_MISSING"]

MANIFEST_FIELDS = ("input", "output", "kind", "status", "error", "seconds", "backend", "weights_sha256", "attempts",
                   "run")
RAY_MISSING = 'sitm-trt batch needs Ray Data: pip install "sitm-trt[ray]" (or: pip install "ray[data]")'
_LOCK_NAME = ".sitm-batch.lock"
_OBJECT_STORE_BYTES = 256 * 2**20  # rows are paths and records; pixels never go through the object store


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
            try:
                ray.init(address=address, log_to_driver=True)
            except ConnectionError as err:
                raise BatchError(f"cannot reach the Ray cluster at {address}: {err}") from err
        else:
            ray.init(num_cpus=num_cpus or os.cpu_count() or 1, include_dashboard=False,
                     object_store_memory=object_store_memory or _OBJECT_STORE_BYTES, _node_ip_address="127.0.0.1",
                     configure_logging=False)
        started = True
    try:
        yield ray, started
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
    log = log or notice
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
              "retries": retries, "half": half, "preview": preview, "batch": batch_size, "overwrite": overwrite,
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
                if not overwrite and complete(it, preview):
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
                from sitm_trt.media.video.conversion import _SigtermAsInterrupt

                # SIGTERM (how cluster schedulers stop a job) ends the run as Ctrl-C does: the manifest is flushed
                # and the workers stopped, then sitm_trt.errors.Terminated is raised (exit 143 on the command line)
                with _ray_session(address, num_cpus, object_store_memory) as (ray, started), _SigtermAsInterrupt():
                    _execute(ray, todo, config, book, workers, cpus_per_worker, gpus_per_worker, retries, progress,
                             started)
        finally:
            book.close()
    recs = book.records
    count = {s: sum(r["status"] == s for r in recs) for s in ("done", "skipped", "failed")}
    result = BatchResult(count["done"], count["skipped"], count["failed"], time.perf_counter() - t_start,
                         manifest_path, recs, book.arrivals)
    return result


def _execute(ray: Any, todo: list[Item], config: dict, book: _Manifest, workers: int | None, cpus_per_worker: float,
             gpus_per_worker: float | None, retries: int, progress: bool, started: bool = False) -> None:
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
    cpus = float(resources.get("CPU", 0))
    if started and (cpus_per_worker > cpus or gpus_per_worker > gpus):
        # a worker this Ray cannot place would wait for ever (a cluster's autoscaler may add nodes: not refused)
        raise BatchError(f"a worker asks for {cpus_per_worker:g} CPUs and {gpus_per_worker:g} GPUs, and this "
                         f"machine's Ray has {cpus:g} CPUs and {gpus:g} GPUs: lower --cpus-per-worker / "
                         "--num-gpus-per-worker")
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
    # One dataset of blocks: the images in groups of at most --batch, then each video alone. A row is one block
    # (its items as JSON) and each call of a worker takes one row (batch_size=1: Ray needs a batch size when the
    # workers ask for GPUs), so a video is one task, and one pool of workers (one pipeline each) serves both.
    images = [dataclasses.asdict(it) for it in todo if it.kind == "image"]
    videos = [dataclasses.asdict(it) for it in todo if it.kind == "video"]
    blocks = [images[i:i + config["batch"]] for i in range(0, len(images), config["batch"])] + [[v] for v in videos]
    ds = ray.data.from_items([{"block": json.dumps(b)} for b in blocks], override_num_blocks=len(blocks))
    ds = mapped(ds.map_batches, Worker, fn_constructor_kwargs={"config": config}, batch_size=1,
                batch_format="numpy", compute=ActorPoolStrategy(size=min(workers, len(blocks))), **remote)
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
    from sitm_trt.tools.cli_common import UsageError, check_outputs, check_runtime, say
    from sitm_trt.tools.cli_video import video_options

    _ray()  # say what to install before anything else
    vopts = video_options(args, args.video_format)
    if not (args.address or os.environ.get("RAY_ADDRESS")):
        # a local job runs on this machine: --device / --backend / --precision are refused here, not per item on
        # every worker (a cluster's driver may have no GPU while its workers do: there the workers judge them)
        check_runtime(args)
    check_outputs(image_format=args.format, want_float=args.float)  # --float: the images' (and an EXR video's)
    check_outputs(video_kind=args.video_format, mastering_primaries=args.mastering_primaries)
    out = Path(args.output)
    if out.exists() and not out.is_dir():
        raise UsageError(f"-o {args.output}: is a file; batch writes into a folder")
    try:
        result = convert(args.inputs, args.output, format=args.format, half=not args.float, preview=args.preview,
                         batch_size=args.batch, video_options=vopts, video_container=args.video_container,
                         weights=args.weights, backend=args.backend, precision=args.precision, device=args.device,
                         overwrite=args.overwrite, address=args.address, workers=args.workers,
                         cpus_per_worker=args.cpus_per_worker, gpus_per_worker=args.num_gpus_per_worker,
                         retries=args.retries, manifest=args.manifest, progress=not args.quiet, log=say)
    except BatchError as err:
        raise UsageError(str(err)) from err
    except KeyboardInterrupt:
        say("stopped: the finished outputs are in place and in the manifest; run the same command again to "
            "continue")
        raise
    for rec in result.records:
        if rec["status"] == "failed":
            say(f"{rec['input']}: {rec['error']}")
    if not args.quiet:
        print(f"sitm-trt batch: {summary(result)}", file=sys.stderr)
    return 1 if result.failed else 0
