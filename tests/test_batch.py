"""sitm-trt batch on a local Ray (2 CPUs, started once for this module): the same bytes as `sitm-trt infer` /
`sitm-trt video`, a corrupt input recorded as failed while the rest finish, a second run that skips, a run
interrupted with SIGINT and rerun, and the message without Ray."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from sitm_trt.tools import batch, batch_plan
from sitm_trt.tools import cli
from sitm_trt.media import io
from sitm_trt.media.video import VideoOptions
from sitm_trt.weights import load

from conftest import CTRL_C_CLI
from test_cli import images
from test_video import make_clip, test_frames  # noqa: F401 - test_frames is a helper

cv2 = pytest.importorskip("cv2")

# The references run in child processes with one CPU thread, as a Ray worker of 1 CPU runs (Ray sets
# OMP_NUM_THREADS to the worker's CPUs): the torch backend's CPU convolutions round differently with other
# thread counts, and network batching changes the last bits too, so both sides use --batch 1.
ONE_THREAD = {"OMP_NUM_THREADS": "1"}
COMMON = ["--backend", "torch", "--batch", "1"]
VIDEO = ["--preset", "ultrafast", "--backend", "torch"]


def start_cli(args, env=None, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "sitm_trt.tools.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})}, **kw)


def finish(proc: subprocess.Popen) -> None:
    try:
        _, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err


def manifest(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def leftovers(folder: Path) -> list[Path]:
    """Anything a writer could leave behind: hidden files or folders other than the job lock."""
    return [p for p in folder.rglob(".*") if p.name != batch._LOCK_NAME]


def test_without_ray_the_command_says_what_to_install(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    monkeypatch.setitem(sys.modules, "ray.data", None)
    (tmp_path / "a.png").write_bytes(b"")
    assert cli.main(["batch", str(tmp_path / "a.png"), "-o", str(tmp_path / "out")]) == 2
    assert 'pip install "sitm-trt[ray]"' in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_plan_errors_before_ray_starts(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    for d in ("a", "b"):
        cv2.imwrite(str(tmp_path / d / "x.png"), np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(batch.BatchError, match="would both be written to"):
        batch.plan([str(tmp_path / "a" / "x.png"), str(tmp_path / "b" / "x.png")], tmp_path / "out")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(batch.BatchError, match="not an image"):
        batch.plan([str(tmp_path / "notes.txt")], tmp_path / "out")
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "readme.txt").write_text("x")
    with pytest.raises(batch.BatchError, match="no image or video"):
        batch.plan([str(tmp_path / "c")], tmp_path / "out")
    # a folder keeps its sub-folders; the output folder inside an input folder is not an input
    (tmp_path / "a" / "sub").mkdir()
    cv2.imwrite(str(tmp_path / "a" / "sub" / "y.jpg"), np.zeros((4, 4, 3), np.uint8))
    (tmp_path / "a" / "out").mkdir()
    cv2.imwrite(str(tmp_path / "a" / "out" / "old.png"), np.zeros((4, 4, 3), np.uint8))
    items = batch.plan([str(tmp_path / "a")], tmp_path / "a" / "out", video_format="exr")
    assert [(Path(i.input).name, os.path.relpath(i.output, tmp_path / "a" / "out")) for i in items] == [
        ("x.png", "x.exr"), ("y.jpg", os.path.join("sub", "y.exr"))]


def test_plan_refuses_outputs_that_replace_or_sweep_away_others(tmp_path):
    """Found by a review (2026-12-07): -o = the input folder overwrote its videos; a video's EXR sequence folder
    deleted the image outputs written into it; globs dropped sub-folders and took in earlier outputs."""
    lib = tmp_path / "lib"
    (lib / "shot").mkdir(parents=True)
    for rel in ("other.png", "shot/frame.png"):
        cv2.imwrite(str(lib / rel), np.zeros((4, 4, 3), np.uint8))
    (lib / "shot.mov").write_bytes(b"")
    (lib / "clip.mp4").write_bytes(b"")
    with pytest.raises(batch.BatchError, match="is the output folder"):
        batch.plan([str(lib)], lib)
    with pytest.raises(batch.BatchError, match=r"its output .*clip\.mp4 would replace the input"):
        batch.plan([str(lib / "clip.mp4")], lib)  # an SDR .mp4 would become its own HDR10 output
    with pytest.raises(batch.BatchError, match="inside the EXR sequence folder of"):
        batch.plan([str(lib)], tmp_path / "out", video_format="exr")
    assert len(batch.plan([str(lib)], tmp_path / "out", video_format="hdr10")) == 4  # shot.mp4 beside shot/
    # a glob keeps the folders below its fixed part, and skips what lies in the output folder
    (lib / "a").mkdir()
    (lib / "b").mkdir()
    for d in ("a", "b"):
        cv2.imwrite(str(lib / d / "x.png"), np.zeros((4, 4, 3), np.uint8))
    (lib / "hdr").mkdir()
    cv2.imwrite(str(lib / "hdr" / "x.preview.png"), np.zeros((4, 4, 3), np.uint8))
    items = batch.plan([str(lib / "**" / "x*.png")], lib / "hdr")
    assert sorted(os.path.relpath(i.output, lib / "hdr") for i in items) == [os.path.join("a", "x.exr"),
                                                                             os.path.join("b", "x.exr")]
    items = batch.plan([(lib / "hdr").parent.as_uri()], lib / "hdr", video_format="hdr10")  # file:// walk too
    assert not any("x.preview" in i.input for i in items)
    # a linked sub-folder is walked (once, even when a link loops back)
    real = tmp_path / "real"
    real.mkdir()
    cv2.imwrite(str(real / "r.png"), np.zeros((4, 4, 3), np.uint8))
    (real / "loop").symlink_to(real)
    col = tmp_path / "col"
    col.mkdir()
    (col / "linked").symlink_to(real)
    items = batch.plan([str(col)], tmp_path / "out2")
    assert [os.path.relpath(i.output, tmp_path / "out2") for i in items] == [os.path.join("linked", "r.exr")]


def test_usage_errors_before_ray_starts(tmp_path, capsys, monkeypatch):
    """Options that cannot run are one error line (exit 2), as for infer and video, not a failure per item (for a
    local job: on a cluster the workers judge the device)."""
    pytest.importorskip("ray")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((4, 4, 3), np.uint8))
    (tmp_path / "file").write_text("x")
    for extra, message in ((["--backend", "tensorrt", "--device", "cpu"], "--backend tensorrt runs on a GPU"),
                           (["--precision", "fp16", "--device", "cpu"], "--precision fp16 needs a GPU"),
                           (["-f", "hdr", "--float"], "--float: Radiance .hdr is RGBE"),
                           (["--video-format", "hlg", "--mastering-primaries", "p3"],
                            "--mastering-primaries: only HDR10 video")):
        assert cli.main(["batch", str(tmp_path / "a.png"), "-o", str(tmp_path / "out"), *extra]) == 2, extra
        assert "sitm-trt: error: " + message in capsys.readouterr().err, extra
    assert cli.main(["batch", str(tmp_path / "a.png"), "-o", str(tmp_path / "file")]) == 2
    assert "is a file; batch writes into a folder" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_worker_the_local_ray_cannot_place_is_refused():
    """It waited for ever (a Ray of 2 CPUs, --cpus-per-worker 4)."""
    class FakeRay:
        def cluster_resources(self):
            return {"CPU": 2.0}

    config = {"device": "auto", "batch": 4}
    with pytest.raises(batch.BatchError, match="asks for 4 CPUs and 0 GPUs, and this machine's Ray has 2 CPUs"):
        batch._execute(FakeRay(), [], config, None, None, 4.0, None, 0, False, started=True)


def test_help_and_bounded_retries_and_leftover_names(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["batch", "-h"])
    assert e.value.code == 0 and "--num-gpus-per-worker" in capsys.readouterr().out
    worker = object.__new__(batch.Worker)  # the retry logic alone, without a pipeline
    worker.config = {"retries": 2}
    calls = []

    def flaky():  # fails twice (a transient I/O error), then works
        calls.append(1)
        if len(calls) < 3:
            raise OSError("transient")
        return "ok"

    assert worker.attempt(flaky) == ("ok", "", 3)

    def broken():
        calls.append(1)
        raise OSError("disk gone")

    calls.clear()
    assert worker.attempt(broken) == (None, "OSError: disk gone", 3) and len(calls) == 3

    def corrupt():
        calls.append(1)
        raise io.ImageReadError("x.png", "cannot decode image")

    calls.clear()
    assert worker.attempt(corrupt) == (None, "ImageReadError: x.png: cannot decode image", 1) and len(calls) == 1
    # what a killed writer leaves for a.exr (sitm_trt.media.io, a video temporary and what sitm_trt.media.video adds to it, an
    # EXR sequence folder) is recognised; other files are not
    ours = [".a.exr.abcd1234.tmp", ".a.exr.abcd1234.tmp.mp4", "..a.exr.abcd1234.tmp.mp4.x9y8z7w6.partial.mp4",
            ".a.exr.abcd1234.old"]
    others = ["a.exr", ".a.exr", ".b.exr.abcd1234.tmp", ".a.exr.preview.png", ".a.exr.abc.tmp", "x.a.exr.abcd1234.tmp"]
    for name in ours + others:
        (tmp_path / name).write_bytes(b"")
    assert sorted(p.name for p in batch_plan.temporaries(tmp_path / "a.exr")) == sorted(ours)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, references):
    """A local Ray of 2 CPUs for the whole module (Ray is slow to start on a busy machine), shut down after;
    it starts while the reference conversions run."""
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.data")
    saved = {k: os.environ.get(k) for k in ("SITM_TRT_CACHE", "RAY_USAGE_STATS_ENABLED")}
    # workers inherit the environment of this process at start: engines/exports go to a temporary cache
    os.environ["SITM_TRT_CACHE"] = str(tmp_path_factory.mktemp("ray-cache"))
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    # One GPU declared (none is used: the workers' device "auto" resolves to the CPU here), so that the job takes
    # the GPU cluster's path, which Ray refused before (map_batches with num_gpus needs a batch size).
    ray.init(num_cpus=2, num_gpus=1, include_dashboard=False, object_store_memory=128 * 2**20,
             _node_ip_address="127.0.0.1", configure_logging=False)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="module")
def references(tmp_path_factory, tiny_weights_path):
    """Images (8/16-bit, gray, alpha, two sizes, one in a sub-folder, one corrupt), a clip, and the
    `sitm-trt infer` and `sitm-trt video` commands that convert them, started (see ``library``)."""
    root = tmp_path_factory.mktemp("library")
    src = root / "in"
    images(src)
    (src / "sub").mkdir()
    cv2.imwrite(str(src / "sub" / "c.png"), np.random.default_rng(1).integers(0, 256, (32, 24, 3), np.uint8))
    (src / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)  # a PNG signature, then garbage
    make_clip(src / "clip.mp4", test_frames(3))
    (src / "notes.txt").write_text("not an image")  # ignored inside a folder
    w = ["--weights", str(tiny_weights_path)]
    ref = root / "ref"
    ref.mkdir()
    files = [str(src / n) for n in ("a.png", "b.tif", "gray.png", "rgba.png", "sub/c.png")]
    procs = [start_cli(["infer", *files, "-o", str(ref), "--preview", *COMMON, *w], env=ONE_THREAD),
             start_cli(["video", str(src / "clip.mp4"), str(ref / "clip.mp4"), *VIDEO, *w], env=ONE_THREAD),
             start_cli(["video", str(src / "clip.mp4"), str(root / "frames"), *VIDEO, *w], env=ONE_THREAD)]
    try:
        yield {"src": src, "ref": ref, "frames": root / "frames", "weights": w}, procs
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()


@pytest.fixture(scope="module")
def library(references):
    """The inputs and what `sitm-trt infer` and `sitm-trt video` made of them."""
    lib, procs = references
    for p in procs:
        finish(p)
    return lib


def batch_args(library, out, *extra):
    return ["batch", str(library["src"]), "-o", str(out), "--preview", *COMMON, *VIDEO[:2], *library["weights"],
            "-q", *extra]


def test_same_bytes_as_infer_and_video_corrupt_recorded_and_second_run_skips(cluster, library, tmp_path, capsys):
    out = tmp_path / "out"
    assert cli.main(batch_args(library, out)) == 1  # one input failed
    assert "bad.png" in capsys.readouterr().err
    recs = {Path(r["input"]).relative_to(library["src"]).as_posix(): r for r in manifest(out / "manifest.jsonl")}
    assert set(recs) == {"a.png", "b.tif", "gray.png", "rgba.png", "sub/c.png", "bad.png", "clip.mp4"}
    bad = recs.pop("bad.png")
    assert bad["status"] == "failed" and "ImageReadError" in bad["error"] and bad["attempts"] == 1
    assert not (out / "bad.exr").exists()
    sha = load(library["weights"][1]).sha256
    for name, r in recs.items():
        assert r["status"] == "done" and r["error"] is None and r["attempts"] == 1, r
        assert r["backend"] == "torch" and r["weights_sha256"] == sha and r["seconds"] > 0
        assert set(r) == set(batch.MANIFEST_FIELDS)
    # bit for bit: HDR files, previews, the HDR10 video (the sub-folder kept)
    produced = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file() and p.name[0] != ".")
    expected = sorted(p.name for p in library["ref"].iterdir())
    assert produced == sorted(["manifest.jsonl", "sub/c.exr", "sub/c.preview.png"]
                              + [n for n in expected if not n.startswith("c.")])
    for name in expected:
        mine = out / ("sub/" + name if name.startswith("c.") else name)
        assert mine.read_bytes() == (library["ref"] / name).read_bytes(), name
    assert io.read_hdr(out / "rgba.exr").shape == (24, 32, 3)
    assert leftovers(out) == []

    # second run: everything complete is skipped (same files, untouched), the corrupt input fails again
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*.exr")}
    assert cli.main(batch_args(library, out)) == 1
    second = [r for r in manifest(out / "manifest.jsonl") if r["run"] != bad["run"]]
    assert len(second) == 7
    assert {r["status"] for r in second if not r["input"].endswith("bad.png")} == {"skipped"}
    skipped = next(r for r in second if r["input"].endswith("a.png"))
    assert skipped["weights_sha256"] == sha and skipped["seconds"] == 0  # what the kept output was made with
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.exr")} == stamps


def test_object_store_uri_and_exr_sequence(cluster, library, tmp_path):
    """A file:// URI (pyarrow's filesystem, as for s3:// or gs://) of a folder; videos as EXR sequences."""
    src = tmp_path / "bucket"
    src.mkdir()
    shutil.copy(library["src"] / "a.png", src / "a.png")
    shutil.copy(library["src"] / "clip.mp4", src / "clip.mp4")
    out = tmp_path / "out"
    r = batch.convert([src.as_uri()], out, video_options=VideoOptions(format="exr", preset="ultrafast"),
                      backend="torch", batch_size=1, weights=library["weights"][1], preview=True, progress=False,
                      gpus_per_worker=0)  # CPU workers (the other tests take the module's GPU)
    assert (r.done, r.skipped, r.failed) == (2, 0, 0)
    assert (out / "a.exr").read_bytes() == (library["ref"] / "a.exr").read_bytes()
    frames = sorted(p.name for p in library["frames"].iterdir())
    assert sorted(p.name for p in (out / "clip").iterdir()) == frames
    for name in frames:
        if name.endswith(".exr"):
            assert (out / "clip" / name).read_bytes() == (library["frames"] / name).read_bytes(), name
    meta = json.loads((out / "clip" / "sequence.json").read_text())
    assert len(meta["frames"]) == 3 and meta["source"] == (src / "clip.mp4").as_uri()
    assert leftovers(out) == []


def test_sigint_mid_way_then_rerun_completes_without_partial_files(cluster, library, tmp_path):
    src = tmp_path / "many"
    src.mkdir()
    rng = np.random.default_rng(3)
    n = 16
    for i in range(n):
        cv2.imwrite(str(src / f"img_{i:02d}.png"), rng.integers(0, 256, (160, 192, 3), dtype=np.uint8))
    ref = tmp_path / "ref"
    reference = start_cli(["infer", str(src / "*.png"), "-o", str(ref), *COMMON, *library["weights"]], env=ONE_THREAD)
    out = tmp_path / "out"
    args = ["batch", str(src), "-o", str(out), *COMMON, *library["weights"], "--workers", "1", "-q"]
    # the child connects to this module's Ray; its own session, so the signal reaches it alone; it takes Ctrl-C
    # as from a terminal, whatever SIGINT disposition this process holds after the tests before it
    proc = subprocess.Popen([*CTRL_C_CLI, *args, "--address", cluster],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    book = out / "manifest.jsonl"
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and proc.poll() is None:
            if book.exists() and sum(r["status"] == "done" for r in manifest(book)) >= 2:
                proc.send_signal(signal.SIGINT)
                break
            time.sleep(0.02)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    try:
        check_interrupted_then_rerun(proc, err, out, src, n, library)
        finish(reference)
    finally:  # a failed check must not leak the reference's process into the next test
        if reference.poll() is None:
            reference.kill()
            reference.communicate()
    for i in range(n):
        name = f"img_{i:02d}.exr"
        assert (out / name).read_bytes() == (ref / name).read_bytes(), name


def check_interrupted_then_rerun(proc, err, out, src, n, library) -> None:
    """The interrupted batch's exit and files, then a rerun that completes it."""
    book = out / "manifest.jsonl"
    assert proc.returncode == 130, err
    assert "interrupted" in err
    assert sum(r["status"] == "done" for r in manifest(book)) >= 2
    existing = set(out.glob("*.exr"))
    assert len(existing) < n  # stopped mid-way
    for p in existing:
        io.read_hdr(p)  # every file under its final name is complete
    # what a worker killed while writing leaves (a temporary) is cleared when the rerun converts that item
    missing = next(f"img_{i:02d}.exr" for i in range(n) if out / f"img_{i:02d}.exr" not in existing)
    (out / f".{missing}.k1ll3d00.tmp").write_bytes(b"partial")

    r = batch.convert([str(src)], out, backend="torch", batch_size=1, weights=library["weights"][1], workers=1,
                      progress=False)
    assert (r.done, r.skipped, r.failed) == (n - len(existing), len(existing), 0)
    assert leftovers(out) == []


def test_an_unusable_output_place_fails_its_item_only(tmp_path, tiny_weights_path):
    """A file where an output's folder should be failed every image of the block ("no result from the worker")."""
    from sitm_trt.runtime.pipeline import Pipeline

    for name in ("a.png", "c.png"):
        cv2.imwrite(str(tmp_path / name), np.random.default_rng(0).integers(0, 256, (8, 8, 3), np.uint8))
    out = tmp_path / "out"
    out.mkdir()
    (out / "sub").write_text("a file, not a folder")
    worker = object.__new__(batch.Worker)
    worker.config = {"retries": 0, "batch": 4, "half": True, "preview": False}
    worker.pipe, worker.device = Pipeline(tiny_weights_path, backend="torch"), "cpu"
    rows = [{"input": str(tmp_path / "a.png"), "output": str(out / "a.exr"), "kind": "image"},
            {"input": str(tmp_path / "c.png"), "output": str(out / "sub" / "c.exr"), "kind": "image"}]
    a, c = worker.images(rows)
    assert a["status"] == "done" and (out / "a.exr").is_file()
    assert c["status"] == "failed" and c["attempts"] == 1 and "NotADirectoryError" in c["error"]
