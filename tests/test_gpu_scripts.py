"""The one-call GPU scripts (tools/gpu_check.sh, tools/gpu_train.sh; docs/gpu.md) run on the CPU, so that they
cannot rot before a session is lent a GPU: argument handling, CPU mode, the report, and a tiny training run
whose exported weights load. Also ``SITM_REQUIRE_GPU=1`` (tests/conftest.py): a GPU run cannot pass by skipping."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TOOLS = REPO / "tools"

pytestmark = pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None,
                                reason="the scripts need bash and coreutils")


def script(name: str, *args: str, tmp_path: Path, timeout: float = 60, env: dict | None = None):
    e = {k: v for k, v in os.environ.items() if k not in ("OUT", "SITM_GPU_SCRIPT_CPU", "SITM_REQUIRE_GPU")}
    e.update({"PYTHON": sys.executable, "TMPDIR": str(tmp_path), **(env or {})})
    return subprocess.run(["bash", str(TOOLS / name), *args], capture_output=True, text=True, timeout=timeout,
                          env=e, cwd=tmp_path)


# ------------------------------------------------------------------------------------------ gpu_check.sh


@pytest.mark.parametrize("args, message", [
    (["--budget", "5"], "--budget must be a whole number of seconds >= 30"),
    (["--budget", "x"], "--budget must be"),
    (["--skip", "nosuch"], "unknown stage 'nosuch'"),
    (["--wheels", "/nonexistent-sitm"], "no such folder"),
    (["--arch", "sm90"], "--arch must look like 90"),
    (["--out"], "--out needs a folder"),
    (["--frobnicate"], "unknown argument '--frobnicate'"),
])
def test_gpu_check_refuses_bad_arguments_before_writing_anything(tmp_path, args, message):
    out = tmp_path / "out"
    r = script("gpu_check.sh", "--cpu", "--out", str(out), *args, tmp_path=tmp_path)
    assert r.returncode == 2 and message in r.stderr and "usage:" in r.stderr
    assert not out.exists()


def test_gpu_check_cpu_mode_writes_the_report_with_every_gpu_stage_skipped(tmp_path):
    out = tmp_path / "out"
    r = script("gpu_check.sh", "--out", str(out), "--skip", "wheels", "--skip", "trt", tmp_path=tmp_path,
               env={"SITM_GPU_SCRIPT_CPU": "1"})
    assert r.returncode == 0, r.stdout + r.stderr
    report = json.loads((out / "report.json").read_text())
    status = {s["stage"]: s for s in report["stages"]}
    assert list(status) == ["env", "wheels", "build", "tests", "trt", "bench-kernels", "bench-pipeline", "bench-video"]
    assert status["env"]["status"] == "passed"
    assert status["wheels"]["note"] == status["trt"]["note"] == "skipped with --skip"
    for stage in ("build", "tests", "bench-kernels", "bench-pipeline", "bench-video"):
        assert status[stage]["status"] == "skipped" and "CPU mode" in status[stage]["note"]
    assert report["cpu_mode"] is True and report["passed"] is True and report["tests"] is None
    assert sorted(p.name for p in out.iterdir()) == ["log.txt", "nvidia-smi.txt", "report.json", "versions.txt"]
    versions = (out / "versions.txt").read_text()
    assert f"python: {sys.version.split()[0]}" in versions and "torch: " in versions
    log = (out / "log.txt").read_text()
    assert "| build | skipped |" in log and "PASSED: every stage that ran passed" in log
    assert not list(tmp_path.glob("sitm-gpu-check.*"))  # its work folder is removed


def test_gpu_check_a_failed_stage_fails_the_run_but_not_the_later_stages(tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "broken-1.0-py3-none-any.whl").write_bytes(b"not a zip file")
    out = tmp_path / "out"
    r = script("gpu_check.sh", "--cpu", "--out", str(out), "--wheels", str(wheels), "--skip", "trt", tmp_path=tmp_path)
    assert r.returncode == 1
    report = json.loads((out / "report.json").read_text())
    status = {s["stage"]: s["status"] for s in report["stages"]}
    assert status["wheels"] == "failed" and status["env"] == "passed"
    assert status["build"] == status["bench-video"] == "skipped"  # recorded after the failure
    assert report["passed"] is False
    assert "FAILED: wheels failed" in (out / "log.txt").read_text()


def test_gpu_check_reassembles_split_wheels_and_refuses_an_incomplete_set(tmp_path):
    """The TensorRT-RTX libs wheel (91 MiB) travels as parts in separate calls (tools/gpu_prepare.sh --trt): the
    parts of all folders are joined in name order and checked against the recorded sha256. The stage is a record:
    its failure shows in the report but does not fail the run."""
    import hashlib

    name = "fake_trt-1.0-py3-none-any.whl"
    whole = bytes(range(256)) * 40
    a, b = tmp_path / "stash", tmp_path / "carried"
    a.mkdir(), b.mkdir()
    (a / f"{name}.part-01").write_bytes(whole[4000:])  # the second part staged first, in another folder
    (b / f"{name}.part-00").write_bytes(whole[:4000])
    (b / f"{name}.sha256").write_text(f"{hashlib.sha256(whole).hexdigest()}  {name}\n")
    out = tmp_path / "out"

    def trt_stage(*dirs):
        args = [x for d in dirs for x in ("--trt", str(d))]
        r = script("gpu_check.sh", "--cpu", "--out", str(out), "--skip", "env", "--skip", "wheels", *args,
                   tmp_path=tmp_path)
        assert r.returncode == 0, r.stdout + r.stderr  # a record, not counted
        return next(s for s in json.loads((out / "report.json").read_text())["stages"] if s["stage"] == "trt")

    complete = trt_stage(a, b)  # joined right: the checksum holds and pip gets the whole (not a real) wheel
    assert complete["status"] == "failed" and f"wheels: {name}" in complete["note"]
    assert "checksum differs" not in complete["note"] and "pip could not install" in complete["note"]
    incomplete = trt_stage(b)
    assert incomplete["status"] == "failed" and "checksum differs" in incomplete["note"]


# ------------------------------------------------------------------------------------------ gpu_train.sh


@pytest.mark.parametrize("args, message", [
    (["--preset", "paper"], "exceed what the device tool brings back"),
    (["--fusion", "other"], "--fusion must be paper or residual"),
    (["--n", "many"], "--n must be a whole number"),
    (["--name", "a/b"], "--name may hold"),
    (["--init", "/nonexistent.safetensors"], "no such file"),
    (["--cache", "/nonexistent-sitm"], "no such folder"),
    (["--responses", "srgb,hable"], "--responses takes one quoted list"),
])
def test_gpu_train_refuses_bad_arguments(tmp_path, args, message):
    (tmp_path / "cache" / "hdr").mkdir(parents=True)
    r = script("gpu_train.sh", "--cpu", "--cache", str(tmp_path / "cache"), "--allow-procedural",
               "--out", str(tmp_path / "out"), *args, tmp_path=tmp_path)
    assert r.returncode == 2 and message in r.stderr
    assert not (tmp_path / "out").exists()


def test_gpu_train_wants_real_sources_unless_told_otherwise(tmp_path):
    (tmp_path / "cache" / "hdr").mkdir(parents=True)
    r = script("gpu_train.sh", "--cpu", "--cache", str(tmp_path / "cache"), "--out", str(tmp_path / "out"),
               tmp_path=tmp_path)
    assert r.returncode == 2 and "holds no HDR sources" in r.stderr and "--allow-procedural" in r.stderr


@pytest.mark.slow
def test_gpu_train_cpu_mode_builds_trains_and_exports_weights_that_load(tmp_path):
    from sitm_trt.model.serialization import load_weights
    from sitm_trt.weights import load, sha256_file

    (tmp_path / "cache" / "hdr").mkdir(parents=True)
    out, work = tmp_path / "out", tmp_path / "work"
    r = script("gpu_train.sh", "--cpu", "--cache", str(tmp_path / "cache"), "--allow-procedural", "--out", str(out),
               "--work", str(work), "--name", "tiny", "--responses", "srgb hable", "--", "--lr", "1e-4",
               tmp_path=tmp_path, timeout=170)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["log.txt", "run.tar", "summary.json", "tiny-fp16.onnx",
                                                     "tiny-fp32.onnx", "tiny.json", "tiny.safetensors"]
    card = json.loads((out / "tiny.json").read_text())
    assert card["sha256"] == sha256_file(out / "tiny.safetensors")  # the card names exactly this file
    w = load(str(out / "tiny.safetensors"))
    assert w.preset_name == "compact" and w.sha256 == card["sha256"]
    cfg = card["training"]["config"]
    assert cfg["device"] == "cpu" and cfg["lr"] == 1e-4 and cfg["max_seconds"] > 0  # options after -- arrived
    summary = json.loads((out / "summary.json").read_text())
    assert summary["ok"] and [s["status"] for s in summary["stages"]] == ["passed"] * 3
    assert summary["data"]["counts"] == {"train": 8, "val": 2, "test": 0}
    recipe = json.loads((work / "data" / "manifest.json").read_text())["recipe"]
    assert recipe["camera"]["responses"] == ["srgb", "hable"]  # --responses reached the data build
    assert summary["train"]["step"] == card["training"]["step"] >= 1
    with tarfile.open(out / "run.tar") as tar:
        names = set(tar.getnames())
        assert {"card.json", "log.csv", "ckpt/model.safetensors", "ckpt/state.json"} <= names
        if hasattr(tarfile, "data_filter"):  # Python >= 3.10.12 / 3.11.4 / 3.12
            tar.extractall(tmp_path / "run", filter="data")
        else:
            tar.extractall(tmp_path / "run")
    exported = load_weights(out / "tiny.safetensors").state_dict()
    trained = load_weights(tmp_path / "run" / "ckpt" / "model.safetensors").state_dict()
    assert exported.keys() == trained.keys() and all((exported[k] == trained[k]).all() for k in exported)
    log = (out / "log.txt").read_text()
    assert "python -m sitm_training.train" in log and "gpu_train.sh: PASSED" in log


# ------------------------------------------------------------------------------------------ SITM_REQUIRE_GPU


def test_require_gpu_turns_every_gpu_skip_into_a_failure(tmp_path):
    (tmp_path / "test_a.py").write_text(
        "import pytest\n\n"
        "def test_cpu():\n    pass\n\n"
        "@pytest.mark.gpu\ndef test_gpu_body():\n    pass\n\n"
        "@pytest.mark.gpu\ndef test_gpu_skips_inside():\n    pytest.skip('TensorRT cannot run here')\n\n"
        "def test_plain_skip():\n    pytest.skip('not a gpu test')\n")
    (tmp_path / "test_b.py").write_text(  # a module of gpu tests skipped whole at collection
        "import pytest\n\nmissing = pytest.importorskip('sitm_no_such_module')\n\n"
        "@pytest.mark.gpu\ndef test_never_collected():\n    pass\n")

    def run(require: bool, pretend_gpu: bool = False):
        text = (REPO / "tests" / "conftest.py").read_text()
        # pretend either way (and spare the subprocess importing torch): with a GPU, so that the skip inside a
        # gpu test's body is reached, or without one
        text += f"\n\ndef cuda_missing():\n    return {None if pretend_gpu else 'no CUDA device (pretended)'!r}\n"
        (tmp_path / "conftest.py").write_text(text)
        env = {k: v for k, v in os.environ.items() if k != "SITM_REQUIRE_GPU"}
        env["CUDA_VISIBLE_DEVICES"] = ""  # this test is about the CPU case even where a GPU is present
        if require:
            env["SITM_REQUIRE_GPU"] = "1"
        xml = tmp_path / f"junit-{require}-{pretend_gpu}.xml"
        subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-W", "ignore",
                        "--continue-on-collection-errors", f"--junitxml={xml}", str(tmp_path)],
                       capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
        outcome = {}
        for case in ET.parse(xml).getroot().iter("testcase"):
            kind = next((c.tag for c in case if c.tag in ("failure", "error", "skipped")), "passed")
            msg = next(((c.get("message") or "") + "\n" + (c.text or "") for c in case
                        if c.tag in ("failure", "error", "skipped")), "")
            outcome[case.get("name") or case.get("classname")] = (kind, msg)
        return outcome

    relaxed = run(False)
    assert relaxed["test_cpu"][0] == "passed" and relaxed["test_plain_skip"][0] == "skipped"
    assert relaxed["test_gpu_body"][0] == relaxed["test_gpu_skips_inside"][0] == "skipped"
    strict = run(True)
    assert strict["test_cpu"][0] == "passed" and strict["test_plain_skip"][0] == "skipped"  # only gpu tests
    assert strict["test_gpu_body"][0] in ("failure", "error") and "SITM_REQUIRE_GPU=1" in strict["test_gpu_body"][1]
    assert strict["test_gpu_skips_inside"][0] in ("failure", "error")
    collected = [v for k, v in strict.items() if "test_b" in k]
    assert collected and collected[0][0] == "error" and "skipped whole at collection" in collected[0][1]
    gpu_here = run(True, pretend_gpu=True)  # a skip for another reason inside a gpu test fails too
    assert gpu_here["test_gpu_body"][0] == "passed" and gpu_here["test_plain_skip"][0] == "skipped"
    assert gpu_here["test_gpu_skips_inside"][0] == "failure"
    assert "SITM_REQUIRE_GPU=1" in gpu_here["test_gpu_skips_inside"][1]
    assert "TensorRT cannot run here" in gpu_here["test_gpu_skips_inside"][1]
