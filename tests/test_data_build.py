"""The data set builder: splits by source, manifest and checksums, determinism, resuming, consistency, export."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("cv2")
pytest.importorskip("OpenEXR")

from sitm_trt.media import io  # noqa: E402
from sitm_training.data import sources as S  # noqa: E402
from sitm_training.data.build import BuildError, _recipe_hash, build, export_split, load_manifest, verify  # noqa: E402
from sitm_training.data.recipe import Recipe, make_plan  # noqa: E402
from sitm_training.data.samples import load_sample, load_sample_meta  # noqa: E402
from sitm_training.data.camera import Camera, CameraConfig  # noqa: E402

RECIPE = Recipe(
    seed=3, n=10, n_test=3, size=32, val_fraction=0.2, real_fraction=0.5, camera=CameraConfig(jpeg_prob=0.0)
)


@pytest.fixture(scope="module")
def hdr_sources(tmp_path_factory: pytest.TempPathFactory) -> list[S.HDRSource]:
    root = tmp_path_factory.mktemp("hdr")
    rng = np.random.default_rng(0)
    for name in ("train", "held"):
        (root / name).mkdir()
    y, x = np.mgrid[0:40, 0:60] / 40.0
    for k in range(2):
        img = np.exp(rng.normal(0, 1.5, (40, 60, 3))) * (1 + 50 * (x > 1.0))[..., None]
        io.write_exr(root / "train" / f"t{k}.exr", img.astype(np.float32), half=False)
    io.write_exr(
        root / "held" / "h0.exr",
        (np.exp(rng.normal(0, 2, (40, 60, 3))) * (1 + y)[..., None]).astype(np.float32),
        half=False,
    )
    train, _ = S.scan_hdr_dir(root / "train")
    held, _ = S.scan_hdr_dir(root / "held")
    return train + [dataclasses.replace(s, id="test/" + s.id) for s in held]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, hdr_sources: list[S.HDRSource]) -> Path:
    out = tmp_path_factory.mktemp("ds") / "a"
    build(out, RECIPE, hdr_sources, progress=False)
    return out


def _shas(root: Path) -> dict[str, str]:
    return {r["id"]: r["sha256"] for r in load_manifest(root)["samples"]}


def test_manifest_splits_by_source_and_checksums(built: Path, hdr_sources: list[S.HDRSource]) -> None:
    m = load_manifest(built)
    assert m["complete"] and m["test_is_real"] and m["train_has_real"]
    assert m["counts"] == {"train": 8, "val": 2, "test": 3}
    assert Recipe.from_dict(m["recipe"]) == RECIPE
    train_ids = {s.id for s in hdr_sources if not s.id.startswith("test/")}
    by_split: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for r in m["samples"]:
        by_split[r["split"]].append(r["source"])
        data = (built / r["file"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == r["sha256"] and len(data) == r["bytes"]
        assert r["file"] == f"{r['split']}/{r['id']}.npz"
        assert r["ev_up"] > 0 > r["ev_down"]
    assert all(s.startswith("test/") for s in by_split["test"])
    assert all(s.startswith("procedural/") for s in by_split["val"])
    assert all(s.startswith("procedural/") or s in train_ids for s in by_split["train"])
    assert sum(s in train_ids for s in by_split["train"]) == 4  # real_fraction 0.5 of 8, exactly
    assert verify(built) == []


def test_sample_contract_and_camera_consistency(built: Path) -> None:
    m = load_manifest(built)
    checked = 0
    for r in m["samples"]:
        s = load_sample(built / r["file"])
        for a in (s.ldr, s.up, s.down):
            assert a.dtype == np.uint8 and a.shape == (32, 32, 3)
        assert s.hdr.dtype == np.float32 and np.isfinite(s.hdr).all() and s.hdr.min() >= 0
        assert (s.ev_up, s.ev_down, s.source) == (r["ev_up"], r["ev_down"], r["source"])
        cam = Camera.from_dict(s.meta["camera"])
        # 1.0 = clipping at the input's exposure: well-exposed codes invert to the radiance, clipped ones are 255
        mid = (s.ldr > 80) & (s.ldr < 220)  # away from clipping, and bright enough that noise is small
        if mid.sum() > 50:
            lin = cam.response.inverse(s.ldr[mid] / 255.0)
            assert np.median(np.abs(lin - s.hdr[mid]) / s.hdr[mid]) < 0.05
            checked += 1
        bright = s.hdr >= 1.2
        if bright.any():
            assert np.mean(s.ldr[bright] == 255) > 0.99
        up_mid = (s.up > 80) & (s.up < 220)
        if up_mid.sum() > 50:
            lin = cam.response.inverse(s.up[up_mid] / 255.0)
            assert np.median(np.abs(lin - s.hdr[up_mid] * 2**s.ev_up) / (s.hdr[up_mid] * 2**s.ev_up)) < 0.05
    assert checked >= 5


def test_deterministic_for_a_seed_and_worker_count(tmp_path: Path, built: Path, hdr_sources: list[S.HDRSource]) -> None:
    build(tmp_path / "b", RECIPE, hdr_sources, progress=False, workers=2)
    assert _shas(tmp_path / "b") == _shas(built)
    other = dataclasses.replace(RECIPE, seed=4, n=4, n_test=1)
    build(tmp_path / "c", other, hdr_sources, progress=False)
    assert not set(_shas(tmp_path / "c").values()) & set(_shas(built).values())


def test_resume_regenerates_only_what_is_missing_or_corrupt(
    tmp_path: Path, built: Path, hdr_sources: list[S.HDRSource]
) -> None:
    out = tmp_path / "r"
    build(out, RECIPE, hdr_sources, progress=False)
    (out / "train" / "000001.npz").unlink()
    data = (out / "val" / "000008.npz").read_bytes()
    (out / "val" / "000008.npz").write_bytes(data[: len(data) // 2])
    redone: list[str] = []
    build(out, RECIPE, hdr_sources, progress=False, on_sample=lambda r: redone.append(r["id"]))
    assert sorted(redone) == ["000001", "000008"]
    assert _shas(out) == _shas(built)
    # a crash after writing files but before the manifest: complete files are kept, not regenerated
    (out / "manifest.json").unlink()
    redone.clear()
    build(out, RECIPE, hdr_sources, progress=False, on_sample=lambda r: redone.append(r["id"]))
    assert redone == [] and _shas(out) == _shas(built) and verify(out) == []


def test_refuses_another_recipe_in_the_same_folder(built: Path, hdr_sources: list[S.HDRSource]) -> None:
    with pytest.raises(BuildError, match="another recipe"):
        build(built, dataclasses.replace(RECIPE, size=48), hdr_sources, progress=False)


def test_verify_finds_tampering(tmp_path: Path, hdr_sources: list[S.HDRSource]) -> None:
    out = tmp_path / "v"
    build(out, dataclasses.replace(RECIPE, n=3, n_test=1), hdr_sources, progress=False)
    f = out / "train" / "000000.npz"
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0xFF
    f.write_bytes(bytes(data))
    (out / "test" / "000003.npz").unlink()
    problems = verify(out)
    assert any("000000.npz: checksum mismatch" in p for p in problems)
    assert any("000003.npz: missing" in p for p in problems)
    with pytest.raises(ValueError, match="000000.npz"):
        load_sample(f)


def test_procedural_only_build_is_loud(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        m = build(tmp_path / "p", dataclasses.replace(RECIPE, n=3, n_test=1), (), progress=False)
    assert "NO REAL HDR SOURCES" in caplog.text and "NO HELD-OUT REAL HDR SOURCES" in caplog.text
    assert not m["test_is_real"] and not m["train_has_real"]
    assert all(r["source"].startswith("procedural/") for r in m["samples"])


def test_plan_counts() -> None:
    src = [S.HDRSource("a", Path("a"), "image", weight=1.0), S.HDRSource("b", Path("b"), "image", weight=3.0)]
    held = [S.HDRSource("t1", Path("t1"), "image"), S.HDRSource("t2", Path("t2"), "image")]
    plan = make_plan(Recipe(n=400, n_test=5, real_fraction=0.25, val_fraction=0.1), src, held)
    train = [p for p in plan if p.split == "train"]
    assert len(train) == 360 and sum(p.source != "procedural" for p in train) == 90
    draws = [
        p.source
        for seed in range(10)
        for p in make_plan(Recipe(seed=seed, n=400, real_fraction=0.25, val_fraction=0.1), src, held)
    ]
    b_share = draws.count("b") / (draws.count("a") + draws.count("b"))
    assert 0.70 < b_share < 0.80  # weight 3 of 4 (900 draws: sigma 0.015)
    assert [p.source for p in plan if p.split == "test"] == ["t1", "t2", "t1", "t2", "t1"]
    assert [p.index for p in plan] == list(range(405))


def test_export_subset_real_scenes_per_exposure_mode(tmp_path: Path, built: Path) -> None:
    manifest = load_manifest(built)
    train = [r for r in manifest["samples"] if r["split"] == "train"]
    real = [r for r in train if not r["source"].startswith("procedural")]
    assert real and len(real) < len(train)  # the fixture has both kinds
    pairs = export_split(built, tmp_path / "real", "train", real_only=True)
    assert sorted(p["id"] for p in pairs) == sorted(r["id"] for r in real)
    modes = {r["id"]: load_sample_meta(built / r["file"])["exposure"]["mode"] for r in real}
    one = export_split(built, tmp_path / "one", "train", real_only=True, per_mode=1, seed=3)
    got = [modes[p["id"]] for p in one]
    assert sorted(got) == sorted(set(modes.values()))  # one of each mode present
    again = export_split(built, tmp_path / "again", "train", real_only=True, per_mode=1, seed=3)
    assert [p["id"] for p in again] == [p["id"] for p in one]  # the draw is the seed's
    assert json.loads((tmp_path / "one" / "pairs.json").read_text())["per_mode"] == 1
    with pytest.raises(ValueError, match="per_mode"):
        export_split(built, tmp_path / "bad", "train", per_mode=0)
    kinds = {r["id"]: load_sample_meta(built / r["file"])["camera"]["response"]["kind"] for r in train}
    family = sorted(kinds.values())[0]
    some = export_split(built, tmp_path / "fam", "train", families=(family,))
    assert sorted(p["id"] for p in some) == sorted(i for i, k in kinds.items() if k == family)
    assert len(some) < len(train) and json.loads((tmp_path / "fam" / "pairs.json").read_text())["families"] == [family]
    with pytest.raises(ValueError, match="no sample of the camera families"):
        export_split(built, tmp_path / "none", "train", families=("no-such-family",))


def test_export_split_as_pairs(tmp_path: Path, built: Path) -> None:
    out = tmp_path / "pairs"
    pairs = export_split(built, out, "test")
    assert len(pairs) == 3
    meta = json.loads((out / "pairs.json").read_text())
    assert meta["split"] == "test" and len(meta["pairs"]) == 3
    for p in pairs:
        s = load_sample(built / "test" / f"{p['id']}.npz")
        np.testing.assert_array_equal(io.read_ldr(out / p["ldr"]), s.ldr)
        np.testing.assert_array_equal(io.read_hdr(out / p["hdr"]), s.hdr)
        np.testing.assert_array_equal(io.read_ldr(out / p["up"]), s.up)
        assert p["ev_up"] == s.ev_up and p["source"].startswith("test/")
    # the same export again into its folder: the same pairs; another export there would mix two sets: refused
    assert export_split(built, out, "test") == pairs
    before = sorted(p.name for p in out.iterdir())
    with pytest.raises(ValueError, match="is not empty and holds no export of these pairs"):
        export_split(built, out, "val")
    assert sorted(p.name for p in out.iterdir()) == before
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="is not empty"):
        export_split(built, tmp_path / "other", "test")


# ------------------------------------------------------------------------- held-out response families

HOLDOUT = dataclasses.replace(RECIPE, n=16, n_val_real=6, holdout_responses=("filmic",))


@pytest.fixture(scope="module")
def val_sources(tmp_path_factory: pytest.TempPathFactory, hdr_sources: list[S.HDRSource]) -> list[S.HDRSource]:
    """The fixture's train and test sources plus two validation scenes (``val/...``)."""
    root = tmp_path_factory.mktemp("val")
    rng = np.random.default_rng(5)
    y = np.mgrid[0:40, 0:60][0] / 40.0
    for k in range(2):
        img = np.exp(rng.normal(0, 1.5, (40, 60, 3))) * (1 + 30 * (y > 0.5))[..., None]
        io.write_exr(root / f"v{k}.exr", img.astype(np.float32), half=False)
    found, _ = S.scan_hdr_dir(root)
    return hdr_sources + [dataclasses.replace(s, id="val/" + s.id) for s in found]


@pytest.fixture(scope="module")
def held_out(tmp_path_factory: pytest.TempPathFactory, val_sources: list[S.HDRSource]) -> tuple[Path, Path]:
    """The same recipe built with ``holdout_responses=("filmic",)`` and without."""
    root = tmp_path_factory.mktemp("holdout")
    build(root / "with", HOLDOUT, val_sources, progress=False)
    build(root / "without", dataclasses.replace(HOLDOUT, holdout_responses=()), val_sources, progress=False)
    return root / "with", root / "without"


def _kinds(root: Path, split: str, real: bool | None = None) -> list[str]:
    """The response kind of every sample of ``split`` (real ones only, procedural ones only, or all)."""
    recs = [r for r in load_manifest(root)["samples"] if r["split"] == split
            and (real is None or real != r["source"].startswith("procedural/"))]
    return [load_sample_meta(root / r["file"])["camera"]["response"]["kind"] for r in recs]


def test_holdout_response_never_reaches_the_train_split(held_out: tuple[Path, Path]) -> None:
    with_, without = held_out
    assert "filmic" in _kinds(without, "train")  # the same seed draws it when it is not held out
    train = _kinds(with_, "train")
    assert len(train) == 13 and "filmic" not in train and set(train) == {"srgb", "gamma", "emor"}
    assert "filmic" not in _kinds(with_, "val", real=False)  # the procedural val samples: the training families
    assert Recipe.from_dict(load_manifest(with_)["recipe"]) == HOLDOUT


def test_holdout_val_pairs_one_view_through_srgb_and_the_held_out_family(
    held_out: tuple[Path, Path], val_sources: list[S.HDRSource]
) -> None:
    root = held_out[0]
    v0, v1 = [s.id for s in val_sources if s.id.startswith("val/")]
    recs = [r for r in load_manifest(root)["samples"] if r["split"] == "val" and r["source"].startswith("val/")]
    assert len(recs) == 6
    samples = [load_sample(root / r["file"]) for r in recs]
    assert [s.meta["camera_family"] for s in samples] == ["srgb", "held-out"] * 3
    assert [s.meta["camera"]["response"]["kind"] for s in samples] == ["srgb", "filmic"] * 3
    assert [s.source for s in samples] == [v0, v0, v1, v1, v0, v0]  # views round-robin over the scenes
    for first, a, b in zip(recs[::2], samples[::2], samples[1::2]):
        assert a.meta["view_seed"] == b.meta["view_seed"] == int(first["id"])  # both from the first one's seed
        np.testing.assert_array_equal(a.hdr, b.hdr)  # the same view, colour and exposure
        assert a.meta["exposure"] == b.meta["exposure"] and a.meta["view"] == b.meta["view"]
        ca, cb = Camera.from_dict(a.meta["camera"]), Camera.from_dict(b.meta["camera"])
        assert dataclasses.replace(ca, response=cb.response) == cb  # they differ in the curve alone
        assert not np.array_equal(a.ldr, b.ldr)
        # each input is its own curve applied to one noisy exposure: inverted, they agree up to 8-bit rounding
        mid = (a.ldr > 80) & (a.ldr < 220) & (b.ldr > 80) & (b.ldr < 220)
        lin_a, lin_b = ca.response.inverse(a.ldr[mid] / 255.0), cb.response.inverse(b.ldr[mid] / 255.0)
        assert mid.sum() > 50 and np.median(np.abs(lin_a - lin_b) / lin_a) < 0.01
    assert verify(root) == []


def test_holdout_keeps_the_test_split_and_the_hash_without_it(held_out: tuple[Path, Path]) -> None:
    with_, without = held_out
    test = {r["id"]: r["sha256"] for r in load_manifest(without)["samples"] if r["split"] == "test"}
    assert len(test) == 3
    assert {i: s for i, s in _shas(with_).items() if i in test} == test  # byte-identical test samples
    assert len(set(_kinds(without, "test"))) > 1  # the test cameras still draw from every family
    assert "holdout_responses" not in load_manifest(without)["recipe"]
    assert load_manifest(with_)["recipe"]["holdout_responses"] == ["filmic"]
    # the recipe hashes of the builder before the option existed (computed with that code)
    assert _recipe_hash(RECIPE.to_dict(), []) == "772183781d200ae3"
    assert _recipe_hash(Recipe().to_dict(), []) == "07865ab873bc9c94"
    assert _recipe_hash(HOLDOUT.to_dict(), []) != _recipe_hash(dataclasses.replace(HOLDOUT, holdout_responses=())
                                                               .to_dict(), [])


def test_holdout_plan_and_recipe_checks() -> None:
    val = [S.HDRSource("val/a", Path("a"), "image"), S.HDRSource("val/b", Path("b"), "image")]
    plan = make_plan(dataclasses.replace(HOLDOUT, n_val_real=5), [], [], val)
    real = [p for p in plan if p.source.startswith("val/")]
    assert [(p.source, p.cameras, p.seed_index) for p in real] == [
        ("val/a", "srgb", 19), ("val/a", "held-out", 19), ("val/b", "srgb", 21), ("val/b", "held-out", 21),
        ("val/a", "srgb", 23)]  # an odd count: the last view has its sRGB shot alone
    assert [p.index for p in real] == [19, 20, 21, 22, 23]
    assert {p.cameras for p in plan if p.split == "test"} == {"all"}
    assert {p.cameras for p in plan if p.split == "train" or p.split == "val" and p.source == "procedural"} == {"train"}
    plain = make_plan(dataclasses.replace(HOLDOUT, holdout_responses=()), [], [], val)
    assert [(p.cameras, p.seed_index) for p in plain if p.source.startswith("val/")] == [("all", None)] * 6
    for bad in (("srgb",), ("filmic", "filmic"), ("sepia",), ("gamma", "filmic", "emor", "linear")):
        cams = CameraConfig(responses=("gamma", "filmic", "emor")) if "linear" in bad else CameraConfig()
        with pytest.raises(ValueError, match="holdout_responses"):
            Recipe(holdout_responses=bad, camera=cams)
    assert Recipe(holdout_responses=("linear",)).train_responses == CameraConfig().responses
