"""Loaders for the real layouts (SICE stacks, pair folders, HDR-only folders) on fixtures generated here."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("cv2")
pytest.importorskip("OpenEXR")
torch = pytest.importorskip("torch")

from sitm_trt.media import io  # noqa: E402
from sitm_trt.media.io import ImageReadError  # noqa: E402
from sitm_training.data import HDRFolderDataset, PairFolderDataset, SampleDataset, SICEDataset, verify  # noqa: E402
from sitm_training.data.camera import Camera, Response, capture  # noqa: E402
from sitm_training.data.real import (  # noqa: E402
    debevec_response,
    estimate_exposures,
    find_pairs,
    find_sice_stacks,
    import_sice,
    load_stack,
    merge_debevec,
    scan_hdr_files,
    stack_sample,
)
from sitm_training.data.stack import choose_labels  # noqa: E402

SRGB = Camera(Response("srgb"))


def _radiance(seed: int = 0, h: int = 40, w: int = 48) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w] / np.array([h, w])[:, None, None]
    base = np.exp(-6.0 + 8.0 * x + 0.3 * rng.standard_normal((h, w)))  # e^-6 .. e^2: 3.5 decades
    tint = np.array([1.0, 0.8, 0.6]) + 0.2 * y[..., None]
    return (base[..., None] * tint).astype(np.float32)


@pytest.fixture()
def sice(tmp_path: Path) -> tuple[Path, np.ndarray, list[np.ndarray]]:
    """Dataset_Part1 with scene 1 (5 exposures, 1 EV apart, file names shuffled) and scene 2 (one broken file)."""
    part = tmp_path / "Dataset_Part1"
    rad = _radiance()
    shots = [capture(rad * np.float32(2.0**j / 16), SRGB, 0.0, None) for j in range(5)]  # darkest first
    names = [3, 1, 5, 2, 4]  # file k holds shot names.index(k)
    (part / "1").mkdir(parents=True)
    for j, name in enumerate(names):
        io.write_png(part / "1" / f"{name}.png", shots[j])
    (part / "Label").mkdir()
    io.write_png(part / "Label" / "1.png", shots[2])
    (part / "2").mkdir()
    for j in range(5):
        io.write_png(part / "2" / f"{j + 1}.png", shots[j])
    data = (part / "2" / "4.png").read_bytes()
    (part / "2" / "4.png").write_bytes(data[: len(data) // 3])
    return tmp_path, rad, shots


def test_find_and_load_sice_stacks(sice: tuple[Path, np.ndarray, list[np.ndarray]]) -> None:
    root, _, shots = sice
    stacks = find_sice_stacks(root)
    assert [s.name for s in stacks] == ["Dataset_Part1/1", "Dataset_Part1/2"]
    assert [p.name for p in stacks[0].images] == ["1.png", "2.png", "3.png", "4.png", "5.png"]
    assert stacks[0].label is not None and stacks[0].label.name == "1.png"
    images, paths = load_stack(stacks[0])
    assert [p.name for p in paths] == ["3.png", "1.png", "5.png", "2.png", "4.png"]  # ordered dark to bright
    for a, b in zip(images, shots):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ImageReadError, match=r"2/4\.png"):
        load_stack(stacks[1])


def test_exposure_estimate_and_debevec_merge(sice: tuple[Path, np.ndarray, list[np.ndarray]]) -> None:
    _, rad, shots = sice
    ev = estimate_exposures(shots)
    np.testing.assert_allclose(ev, [0, 1, 2, 3, 4], atol=0.05)
    log_t = np.arange(5) * math.log(2.0)
    g = debevec_response(shots, log_t)
    assert g.shape == (256, 3) and np.all(np.diff(g, axis=0) >= 0) and np.allclose(g[128], 0.0)
    merged = merge_debevec(shots, log_t, g)
    usable = (np.stack(shots) > 10).any(0) & (np.stack(shots) < 245).any(0)
    truth = rad / 16  # the darkest shot's exposure
    ratio = merged[usable] / truth[usable]
    scale = np.median(ratio)
    rel = np.abs(ratio / scale - 1)
    assert np.median(rel) < 0.03 and np.percentile(rel, 90) < 0.12
    # the recovered response is sRGB up to the free scale: g(z) - g(128) = ln(f^-1(z) / f^-1(128))
    z = np.array([40, 80, 200])
    expected = np.log(SRGB.response.inverse(z / 255.0) / SRGB.response.inverse(np.array([128 / 255.0])))
    np.testing.assert_allclose(g[z, 1], expected, atol=0.08)


def test_stack_sample_labels_and_hdr_scale(sice: tuple[Path, np.ndarray, list[np.ndarray]]) -> None:
    _, rad, shots = sice
    log2_t = np.arange(5.0)
    g = debevec_response(shots, log2_t * math.log(2.0))
    merged = merge_debevec(shots, log2_t * math.log(2.0), g)
    s = stack_sample(shots, log2_t, 2, merged, g, source="sice/x")
    expected = choose_labels({float(e - 2): img for e, img in enumerate(shots)})
    assert (s.ev_up, s.ev_down) == (expected.ev_up, expected.ev_down)
    np.testing.assert_array_equal(s.up, shots[2 + int(s.ev_up)])
    np.testing.assert_array_equal(s.down, shots[2 + int(s.ev_down)])
    np.testing.assert_array_equal(s.ldr, shots[2])
    # 1.0 = clipping at the input's exposure: well-exposed input pixels invert to hdr through the response
    mid = (s.ldr > 40) & (s.ldr < 220)
    lin = SRGB.response.inverse(s.ldr[mid] / 255.0)
    assert np.median(np.abs(s.hdr[mid] / lin - 1)) < 0.08
    with pytest.raises(ValueError, match="darker and brighter"):
        stack_sample(shots, log2_t, 0, merged, g)


def test_import_sice_into_a_built_data_set(
    sice: tuple[Path, np.ndarray, list[np.ndarray]], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root, _, _ = sice
    out = tmp_path / "imported"
    with caplog.at_level(logging.ERROR):
        m = import_sice(root, out, size=32, test_fraction=0.0, val_fraction=0.0, progress=False)
    assert "4.png" in caplog.text and len(m["rejected"]) == 1 and m["rejected"][0][0].endswith("4.png")
    assert m["counts"] == {"train": 3, "val": 0, "test": 0}
    assert [r["id"] for r in m["samples"]] == ["0000_01", "0000_02", "0000_03"]
    assert verify(out) == []
    ds = SampleDataset(out, "train", crop=16, seed=0, check=True)
    assert len(ds) == 3 and ds[0]["hdr"].shape == (3, 16, 16) and ds[0]["source"] == "sice/Dataset_Part1/1"
    before = (out / "train" / "0000_02.npz").stat().st_mtime_ns
    import_sice(root, out, size=32, test_fraction=0.0, val_fraction=0.0, progress=False)  # resume: nothing redone
    assert (out / "train" / "0000_02.npz").stat().st_mtime_ns == before
    (out / "train" / "0000_02.npz").write_bytes(b"junk")
    with pytest.raises(ValueError, match="0000_02.npz: checksum mismatch"):
        SampleDataset(out, "train", crop=16, check=True)


def test_sice_dataset_items_and_broken_stack(
    sice: tuple[Path, np.ndarray, list[np.ndarray]], caplog: pytest.LogCaptureFixture
) -> None:
    root, _, _ = sice
    (root / "Dataset_Part1" / "1" / "exposures.json").write_text(
        json.dumps({f"{n}.png": 2.0**j / 100 for j, n in enumerate([3, 1, 5, 2, 4])})
    )
    ds = SICEDataset(root, size=32, crop=24, augment=True, seed=0)
    assert len(ds) == 6  # inputs 1..3 of each 5-image stack
    item = ds[1]
    assert item["ldr"].shape == (3, 24, 24) and item["hdr"].shape == (3, 24, 24)
    assert float(item["ev_up"]) > 0 > float(item["ev_down"]) and item["id"] == "Dataset_Part1/1/2"
    assert float(item["ev_up"]) == round(float(item["ev_up"]))  # exact EVs from exposures.json
    with caplog.at_level(logging.ERROR), pytest.raises(ImageReadError, match=r"4\.png.*unusable"):
        ds[4]
    assert "4.png" in caplog.text


def test_pair_folders(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    rng = np.random.default_rng(1)
    flat = tmp_path / "flat"
    flat.mkdir()
    ldr = rng.integers(0, 256, (6, 7, 3), dtype=np.uint8)
    hdr = rng.random((6, 7, 3)).astype(np.float32) * 10
    io.write_png(flat / "a.png", ldr)
    io.write_exr(flat / "a.exr", hdr, half=False)
    io.write_png(flat / "b.png", ldr)
    io.write_hdr(flat / "b.hdr", hdr)
    io.write_png(flat / "c.png", ldr)  # no HDR: skipped
    with caplog.at_level(logging.WARNING):
        pairs = find_pairs(flat)
    assert [(p.name, q.name) for p, q in pairs] == [("a.png", "a.exr"), ("b.png", "b.hdr")]
    assert "c has no HDR" in caplog.text
    ds = PairFolderDataset(flat)
    item = ds[0]
    np.testing.assert_allclose(item["ldr"].numpy(), ldr.transpose(2, 0, 1) / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(item["hdr"].numpy(), hdr.transpose(2, 0, 1))
    assert "up" not in item and item["id"] == "a"

    split = tmp_path / "split"
    (split / "LDR").mkdir(parents=True)
    (split / "HDR").mkdir()
    io.write_png(split / "LDR" / "x.png", ldr)
    bad = hdr.copy()
    bad[0, 0, 0] = np.inf
    io.write_exr(split / "HDR" / "x.exr", bad, half=False)
    io.write_png(split / "LDR" / "y.png", ldr)
    io.write_exr(split / "HDR" / "y.exr", hdr[:5], half=False)
    io.write_png(split / "LDR" / "z.png", ldr)
    io.write_exr(split / "HDR" / "z.exr", hdr, half=False)
    ds = PairFolderDataset(split)
    assert [p[0].name for p in ds.pairs] == ["z.png"]
    assert sorted((Path(p).name, r.split(" ")[0]) for p, r in ds.rejected) == [("x.exr", "radiance"), ("y.exr", "size")]
    lazy = PairFolderDataset(split, skip_invalid=False)
    assert len(lazy) == 3
    with pytest.raises(ImageReadError, match=r"x\.exr.*NaN/Inf"):
        lazy[0]
    with pytest.raises(ImageReadError, match=r"y\.exr.*differs"):
        lazy[1]


def test_hdr_folder_dataset_skips_broken_files(tmp_path: Path) -> None:
    io.write_exr(tmp_path / "good1.exr", _radiance(1, 30, 50), half=False)
    io.write_hdr(tmp_path / "good2.hdr", _radiance(2, 40, 40))
    nan = _radiance(3)
    nan[1, 1] = np.nan
    io.write_exr(tmp_path / "nan.exr", nan, half=False)
    data = (tmp_path / "good1.exr").read_bytes()
    (tmp_path / "cut.exr").write_bytes(data[:100])
    paths, rejected = scan_hdr_files(tmp_path)
    assert [p.name for p in paths] == ["good1.exr", "good2.hdr"]
    assert sorted(Path(p).name for p, _ in rejected) == ["cut.exr", "nan.exr"]
    ds = HDRFolderDataset(tmp_path, size=32, seed=0)
    assert len(ds) == 2 and sorted(Path(p).name for p, _ in ds.rejected) == ["cut.exr", "nan.exr"]
    a, b = ds[0], HDRFolderDataset(tmp_path, size=32, seed=0)[0]
    assert a["ldr"].shape == (3, 32, 32) and torch.equal(a["ldr"], b["ldr"]) and torch.equal(a["hdr"], b["hdr"])
    assert a["source"] == "hdr/good1.exr"
