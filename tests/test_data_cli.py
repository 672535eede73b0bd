"""``python -m sitm_training.data``: build, verify, export, fetch errors, sources, on tiny inputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("cv2")
pytest.importorskip("OpenEXR")

from sitm_trt.media import io  # noqa: E402
from sitm_trt.weights import sha256_file  # noqa: E402
from sitm_training.data import fetch as F  # noqa: E402
from sitm_training.data import source_tables as T  # noqa: E402
from sitm_training.data.__main__ import main  # noqa: E402
from sitm_training.data.samples import load_sample_meta  # noqa: E402


def test_build_verify_export(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    user = tmp_path / "mine"
    user.mkdir()
    io.write_exr(
        user / "ok.exr", np.exp(np.random.default_rng(0).normal(0, 2, (30, 40, 3))).astype(np.float32), half=False
    )
    (user / "broken.exr").write_bytes(b"\x76\x2f\x31\x01garbage")
    out = tmp_path / "ds"
    args = [
        "build",
        "--out",
        str(out),
        "--n",
        "4",
        "--n-test",
        "1",
        "--size",
        "24",
        "--no-debian",
        "--no-registry",
        "--no-progress",
        "--hdr-dir",
        str(user),
    ]
    assert main(args) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["counts"] == {"train": 4, "val": 0, "test": 1} and report["test_is_real"] is False
    assert "broken.exr" in caplog.text and "NO HELD-OUT REAL HDR SOURCES" in caplog.text
    manifest = json.loads((out / "manifest.json").read_text())
    assert {r["source"] for r in manifest["samples"] if r["split"] == "train"} & {"user/mine/ok.exr"}
    assert main(["build", *args[1:]]) == 0  # resuming a finished build generates nothing
    resumed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])  # strict JSON: no NaN rate
    assert resumed["generated"] == 0 and resumed["samples_per_s"] is None
    for cmd in (["verify", "--root", str(tmp_path / "missing")],
                ["export", "--root", str(tmp_path / "missing"), "--out", str(tmp_path / "p0")]):
        assert main(cmd) == 2, cmd
        err = capsys.readouterr().err
        assert err.startswith("error: ") and "manifest.json not found" in err, err
    assert not (tmp_path / "p0").exists()

    assert main(["verify", "--root", str(out)]) == 0
    assert capsys.readouterr().out.strip().endswith("ok")
    assert main(["export", "--root", str(out), "--out", str(tmp_path / "pairs")]) == 0
    assert sorted(p.name for p in (tmp_path / "pairs").iterdir()) == [
        "000004.exr",
        "000004.png",
        "labels",
        "pairs.json",
    ]

    other = ["build", "--out", str(out), "--n", "5", "--n-test", "1", "--size", "24", "--no-debian", "--no-registry",
             "--no-progress"]
    assert main(other) == 1  # another recipe in the same folder
    assert "another recipe" in caplog.text


def test_fetch_error_and_sources_listing(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(F.shutil, "which", lambda name: None)
    assert main(["fetch", "--cache", str(tmp_path), "--no-npm", "--no-pypi"]) == 1  # no network in tests
    assert "apt-get not found" in caplog.text
    assert main(["sources", "--cache", str(tmp_path)]) == 0
    assert "missing: blender/city" in capsys.readouterr().out


def test_exclude_drops_debian_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "cache"
    rng = np.random.default_rng(3)
    fakes = []
    for sid in ("blender/city", "qtcreator/preview_studio"):
        path = cache / "hdr" / f"{sid}.exr"
        path.parent.mkdir(parents=True, exist_ok=True)
        io.write_exr(path, np.exp(rng.normal(0, 1, (20, 40, 3))).astype(np.float32), half=False)
        digest = sha256_file(path)
        fakes.append(T.DebianFile(sid, "pkg", f"./x/{sid}.exr", digest, "panorama", "test"))
    monkeypatch.setattr(F, "DEBIAN_FILES", tuple(fakes))
    out = tmp_path / "ds"
    args = ["build", "--out", str(out), "--n", "6", "--n-test", "0", "--size", "16", "--real-fraction", "1"]
    assert main([*args, "--cache", str(cache), "--exclude", "qtcreator/", "--no-progress"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert [s["id"] for s in manifest["sources"]] == ["blender/city"]
    assert {r["source"] for r in manifest["samples"] if r["split"] == "train"} == {"blender/city"}


def _tiny_build_args(tmp_path: Path, out: Path, *, seed: int, n: int, n_val_real: int) -> list[str]:
    """``build`` arguments for a 16-pixel set from one random EXR for train ("mine") and one for val ("held")."""
    rng = np.random.default_rng(seed)
    for folder in ("mine", "held"):
        (tmp_path / folder).mkdir()
        io.write_exr(tmp_path / folder / "a.exr", np.exp(rng.normal(0, 2, (30, 40, 3))).astype(np.float32), half=False)
    return ["build", "--out", str(out), "--n", str(n), "--n-test", "0", "--n-val-real", str(n_val_real),
            "--val-fraction", "0", "--size", "16", "--no-debian", "--no-registry", "--no-progress",
            "--hdr-dir", str(tmp_path / "mine"), "--val-dir", str(tmp_path / "held")]


def test_build_with_a_held_out_response_family(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    out = tmp_path / "ds"
    args = _tiny_build_args(tmp_path, out, seed=4, n=16, n_val_real=4) + ["--holdout-response", "filmic"]
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["holdout_responses"] == ["filmic"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["recipe"]["holdout_responses"] == ["filmic"]

    def kinds(split: str) -> list[str]:
        return [load_sample_meta(out / r["file"])["camera"]["response"]["kind"]
                for r in manifest["samples"] if r["split"] == split]

    train = kinds("train")
    assert len(train) == 16 and "filmic" not in train  # every train sample's camera
    assert kinds("val") == ["srgb", "filmic", "srgb", "filmic"]
    with pytest.raises(SystemExit) as info:  # the sRGB curve is the validation's reference, never held out
        main([*args, "srgb"])
    assert info.value.code == 2
    assert main([*args[:-1], "filmic", "filmic"]) == 1 and "holdout_responses" in caplog.text


def test_build_with_chosen_response_families(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``--responses`` sets the families the cameras draw from (recorded in the recipe); with
    ``--holdout-response`` the held-out one still never reaches the train split."""
    out = tmp_path / "ds"
    args = _tiny_build_args(tmp_path, out, seed=5, n=24, n_val_real=2) + [
        "--holdout-response", "aces", "--responses", "srgb", "hable", "hable"]
    assert main(args) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["recipe"]["camera"]["responses"] == ["srgb", "hable"]  # repeats dropped, order kept
    train = [load_sample_meta(out / r["file"])["camera"]["response"]
             for r in manifest["samples"] if r["split"] == "train"]
    assert {r["kind"] for r in train} == {"srgb", "hable"}
    assert all(4.0 <= r["params"][0] <= 32.0 for r in train if r["kind"] == "hable")
    val = [load_sample_meta(out / r["file"])["camera"]["response"]["kind"]
           for r in manifest["samples"] if r["split"] == "val"]
    assert val == ["srgb", "aces"]
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:  # an unknown family is refused by the parser
        main([*args[:-1], "cubic"])
    assert info.value.code == 2


def test_help_lists_the_commands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    assert all(cmd in text for cmd in ("fetch", "build", "export", "verify", "sources"))


def test_import_sice_command_errors_and_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "empty").mkdir()
    assert main(["import-sice", "--root", str(tmp_path / "empty"), "--out", str(tmp_path / "o"), "--no-progress"]) == 1
    assert "no stacks" in caplog.text
    stack = tmp_path / "sice" / "Dataset_Part2" / "7"
    stack.mkdir(parents=True)
    ramp = np.linspace(0.02, 1.0, 24 * 24, dtype=np.float32).reshape(24, 24, 1).repeat(3, axis=2)
    for j in range(3):
        io.write_png(stack / f"{j + 1}.png", io.srgb_oetf(ramp * 2.0 ** (j - 1)))
    assert (
        main(
            [
                "import-sice",
                "--root",
                str(tmp_path / "sice"),
                "--out",
                str(tmp_path / "o"),
                "--size",
                "16",
                "--test-fraction",
                "0",
                "--no-progress",
            ]
        )
        == 0
    )
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["counts"] == {"train": 1, "val": 0, "test": 0} and report["rejected"] == 0
