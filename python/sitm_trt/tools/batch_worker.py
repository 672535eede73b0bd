"""``sitm-trt batch``, the worker side: what one Ray actor does with its rows (:class:`Worker`).

Each actor holds one pipeline; a block of rows is either images (read, run through the network in groups of one
size, written) or one video (converted whole); each output is written under a temporary name and renamed into
place, and each row becomes a manifest record. Failures of the input are recorded at once, others retried.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from sitm_trt.tools.batch_plan import is_uri, remove, temporaries

__all__ = ["Worker", "notice"]


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


def notice(msg: str) -> None:
    """A notice on stderr, as the ``sitm-trt`` commands print them."""
    print(f"sitm-trt: {msg}", file=sys.stderr, flush=True)


class _Worker:
    """The pipeline (made once per worker), fetching inputs from URIs, bounded retries."""

    def __init__(self, config: dict):
        from sitm_trt.runtime.pipeline import Pipeline
        from sitm_trt.tools.cli_common import resolve_device

        self.config = config
        self.device = resolve_device(config["device"])
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
        if not is_uri(src):
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
    """The items of a batch: each row's ``block`` is a JSON list of items (input, output, kind)."""
    return [item for block in batch["block"] for item in json.loads(str(block))]


class Worker(_Worker):
    """Ray Data class UDF (one per actor, holding one pipeline): a block of items (input, output, kind) -> their
    manifest records. A block is either images (up to ``--batch`` of them) or one video."""

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

        from sitm_trt.tools import cli_infer

        cfg = self.config
        results: dict[int, dict] = {}
        read: list[tuple[int, Any, Any, bool, float]] = []  # (row, rgb, alpha, gray, seconds so far)
        for i, row in enumerate(rows):
            t0 = time.perf_counter()

            def load(src: str = row["input"], dst: Path = Path(row["output"])) -> Any:
                # the leftovers of an interrupted run first; an output place that cannot be used (a file where
                # its folder should be) fails this item only, not its block
                for t in temporaries(dst) + temporaries(dst.with_suffix(".preview.png")):
                    remove(t)
                dst.parent.mkdir(parents=True, exist_ok=True)
                with self.local(src) as path:
                    return cli_infer.read_image(path)

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
            hdr, err, n = self.attempt(lambda g=g: cli_infer.run_batch(self.pipe, np.stack([e[1] for e in g]),
                                                                       self.device))
            share = (time.perf_counter() - t0) / len(g)
            for k, (i, _, alpha, gray, sec) in enumerate(g):
                row = rows[i]
                if hdr is None:
                    results[i] = {**row, "status": "failed", "error": err, "attempts": n, "seconds": sec + share}
                    continue
                t1 = time.perf_counter()
                _, werr, wn = self.attempt(lambda h=np.ascontiguousarray(hdr[k]), row=row, alpha=alpha, gray=gray:
                                           cli_infer.write_image_outputs(Path(row["input"]), Path(row["output"]), h,
                                                                         alpha, gray, half=cfg["half"],
                                                                         preview=cfg["preview"], notice=notice))
                results[i] = {**row, "status": "failed" if werr else "done", "error": werr, "attempts": max(n, wn),
                              "seconds": sec + share + time.perf_counter() - t1}
        return [results[i] for i in range(len(rows))]

    def video(self, row: dict) -> dict:
        """One video, whole (never split: the smoothing runs across its frames)."""
        t0 = time.perf_counter()
        dst = Path(row["output"])

        def run() -> None:
            for t in temporaries(dst):
                remove(t)
            with self.local(row["input"]) as src:
                try:
                    self._convert(src, dst, row["input"])
                except Exception as err:
                    from sitm_trt.media.video import VideoError

                    if isinstance(err, VideoError) and str(src) != row["input"] and str(src) in str(err):
                        raise VideoError(str(err).replace(str(src), row["input"])) from err  # name the URI
                    raise

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
                          overwrite=True, log=notice)
            if opts.format == "exr":
                if name != str(src):  # a URI's local copy: sequence.json names the URI
                    from sitm_trt.files import atomic_write

                    meta = json.loads((tmp / "sequence.json").read_text())
                    meta["source"] = name
                    atomic_write(tmp / "sequence.json", json.dumps(meta, indent=1).encode())
                os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; a folder made by mkdir would not be
                if dst.exists() and not self.config.get("overwrite"):
                    # not this job's to replace: the plan skips finished sequences, so this is something else
                    raise video.VideoError(f"{dst} exists and is not a finished sequence of this job "
                                           "(--overwrite replaces it)")
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
            remove(tmp)
            for t in temporaries(dst):
                remove(t)
            raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
