"""PyTorch Datasets over built and on-the-fly samples: contract, augmentation, determinism."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("cv2")
torch = pytest.importorskip("torch")

from sitm_training.data import ProceduralDataset, SampleDataset  # noqa: E402
from sitm_training.data.build import build, load_manifest  # noqa: E402
from sitm_training.data.recipe import PlanItem, Recipe  # noqa: E402
from sitm_training.data.samples import Sample, generate_item, load_sample, relabel_up  # noqa: E402
from sitm_training.data.camera import Camera, CameraConfig, jpeg_roundtrip  # noqa: E402
from sitm_training.data.dataset import augment  # noqa: E402

RECIPE = Recipe(seed=1, n=6, n_test=2, size=24, val_fraction=0.2, camera=CameraConfig(jpeg_prob=0.5))


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ds") / "d"
    build(out, RECIPE, (), progress=False)
    return out


def _stored(root: Path, split: str, i: int) -> dict[str, np.ndarray]:
    rec = [r for r in load_manifest(root)["samples"] if r["split"] == split][i]
    s = load_sample(root / rec["file"])
    return {"ldr": s.ldr / 255.0, "up": s.up / 255.0, "down": s.down / 255.0, "hdr": s.hdr}


def _chw(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a.transpose(2, 0, 1))


def test_items_follow_the_contract(root: Path) -> None:
    ds = SampleDataset(root, "train", crop=16, augment=True, seed=0)
    assert (
        len(ds) == 5
        and len(SampleDataset(root, "val", crop=None)) == 1
        and len(SampleDataset(root, "test", crop=None)) == 2
    )
    item = ds[0]
    for k in ("ldr", "up", "down", "hdr"):
        assert item[k].dtype == torch.float32 and item[k].shape == (3, 16, 16)
    for k in ("ldr", "up", "down"):
        assert 0.0 <= float(item[k].min()) and float(item[k].max()) <= 1.0
    assert torch.isfinite(item["hdr"]).all() and float(item["hdr"].min()) >= 0.0
    assert (
        item["ev_up"].dtype == torch.float32
        and item["ev_up"].ndim == 0
        and float(item["ev_up"]) > 0 > float(item["ev_down"])
    )
    assert isinstance(item["source"], str) and item["id"] == "000000"
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=3)))
    assert batch["ldr"].shape == (3, 3, 16, 16) and batch["ev_down"].shape == (3,) and len(batch["source"]) == 3


def test_no_augmentation_is_a_centred_crop(root: Path) -> None:
    stored = _stored(root, "test", 1)
    item = SampleDataset(root, "test", crop=10, augment=False)[1]
    for k, a in stored.items():
        np.testing.assert_allclose(item[k].numpy(), _chw(a[7:17, 7:17]), rtol=1e-6)


def test_augmentation_moves_all_images_alike(root: Path) -> None:
    stored = _stored(root, "train", 2)
    ds = SampleDataset(root, "train", crop=None, augment=True, seed=5)
    seen = set()
    for epoch in range(6):
        ds.set_epoch(epoch)
        item = ds[2]
        matches = []
        for flip in (False, True):
            for k in range(4):
                t = {n: np.rot90(a[:, ::-1] if flip else a, k) for n, a in stored.items()}
                if all(np.allclose(item[n].numpy(), _chw(t[n]), rtol=1e-6) for n in t):
                    matches.append((flip, k))
        assert matches, "the four images were not transformed by one common flip/rotation"
        seen.add(matches[0])
    assert len(seen) > 1  # the transform changes with the epoch


def test_seeded_augmentation_is_deterministic(root: Path) -> None:
    a = SampleDataset(root, "train", crop=12, seed=3)[4]
    b = SampleDataset(root, "train", crop=12, seed=3)[4]
    c = SampleDataset(root, "train", crop=12, seed=4)[4]
    assert torch.equal(a["hdr"], b["hdr"]) and torch.equal(a["ldr"], b["ldr"])
    assert not all(torch.equal(a[k], c[k]) for k in ("ldr", "hdr"))
    torch.manual_seed(0)
    d = SampleDataset(root, "train", crop=12)[4]
    torch.manual_seed(0)
    e = SampleDataset(root, "train", crop=12)[4]
    assert torch.equal(d["ldr"], e["ldr"])  # unseeded: follows torch's generator


def test_set_epoch_reaches_persistent_workers(root: Path) -> None:
    ds = SampleDataset(root, "train", crop=8, seed=11)
    loader = torch.utils.data.DataLoader(ds, batch_size=5, num_workers=1, persistent_workers=True)
    first = next(iter(loader))["ldr"]
    ds.set_epoch(1)
    second = next(iter(loader))["ldr"]
    ref = SampleDataset(root, "train", crop=8, seed=11)
    ref.set_epoch(1)
    assert not torch.equal(first, second)
    assert torch.equal(second, torch.stack([ref[i]["ldr"] for i in range(5)]))


def test_bad_arguments(root: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="crop 32 is larger"):
        SampleDataset(root, "train", crop=32)
    with pytest.raises(ValueError, match="split"):
        SampleDataset(root, "training")
    with pytest.raises(FileNotFoundError, match="build the data set first"):
        SampleDataset(tmp_path)
    with pytest.raises(ValueError, match="larger than the images"):
        augment({"a": np.zeros((4, 4, 3))}, np.random.default_rng(0), 5)


def test_procedural_dataset_matches_a_build() -> None:
    ds = ProceduralDataset(3, size=24, seed=1, recipe=RECIPE)
    item = ds[1]
    ref = generate_item(PlanItem(1, "train", "procedural"), Recipe(**{**RECIPE.__dict__, "n": 3, "n_test": 0}))
    np.testing.assert_allclose(item["ldr"].numpy(), _chw(ref.ldr / 255.0), rtol=1e-6)
    np.testing.assert_array_equal(item["hdr"].numpy(), _chw(ref.hdr))
    assert float(item["ev_up"]) == ref.ev_up and item["source"] == ref.source
    again = ProceduralDataset(3, size=24, seed=1, recipe=RECIPE)[1]
    assert torch.equal(again["hdr"], item["hdr"])
    assert not torch.equal(ds[0]["hdr"], item["hdr"])
    with pytest.raises(IndexError):
        ds[3]
    crops = ProceduralDataset(2, size=24, seed=0, crop=16, augment=True)
    assert crops[0]["ldr"].shape == (3, 16, 16)


def _samples(root: Path, split: str) -> list:
    return [load_sample(root / r["file"]) for r in load_manifest(root)["samples"] if r["split"] == split]


def test_relabel_up_reshoots_the_label_at_another_ev(root: Path) -> None:
    samples = _samples(root, "train")
    assert {Camera.from_dict(s.meta["camera"]).jpeg_quality is None for s in samples} == {True, False}  # both paths
    for s in samples:
        cam = Camera.from_dict(s.meta["camera"])
        for ev in (0.5, 2.5):
            got = relabel_up(s, ev, None)
            # the reference, by hand: exposure, clip, response, 8 bits (and the camera's JPEG, when it has one)
            want = np.rint(cam.response(s.hdr.astype(np.float32) * np.float32(2.0**ev)) * 255.0).astype(np.uint8)
            if cam.jpeg_quality is not None:
                want = jpeg_roundtrip(want, cam.jpeg_quality)
            assert got.up.dtype == np.uint8 and np.array_equal(got.up, want)
            assert got.ev_up == ev and got.ev_down == s.ev_down
            assert got.ldr is s.ldr and got.down is s.down and got.hdr is s.hdr
            assert got.meta["labels"]["ev_up"] == ev and got.meta["labels"]["ev_up_stored"] == s.ev_up
            assert s.meta["labels"]["ev_up"] == s.ev_up  # the sample it came from is left as it was
        # shot again at the build's own EV with noise, it is the stored label up to the noise draw: about as far from
        # it as the noise-free shot, and nearer than a shot one EV brighter with the same noise
        def dist(ev: float, rng: np.random.Generator | None) -> float:
            return float(np.abs(relabel_up(s, ev, rng).up.astype(np.float64) - s.up).mean())

        again = dist(s.ev_up, np.random.default_rng(3))
        assert again <= 2 * dist(s.ev_up, None) + 1.0 and again < dist(s.ev_up + 1.0, np.random.default_rng(3))
        assert relabel_up(s, 1.0, None).up.astype(np.float64).mean() < relabel_up(s, 2.0, None).up.mean()


def test_relabel_up_refuses_what_it_cannot_do(root: Path) -> None:
    s = _samples(root, "train")[0]
    with pytest.raises(ValueError, match="ev > 0"):
        relabel_up(s, 0.0, None)
    bare = Sample(s.ldr, s.up, s.down, s.hdr, s.ev_up, s.ev_down, "sice/x", {})
    with pytest.raises(ValueError, match="no simulated camera"):
        relabel_up(bare, 1.0, None)
    with pytest.raises(ValueError, match="up_ev_max"):
        SampleDataset(root, "train", up_ev_max=-1.0)


def test_up_ev_max_refuses_a_data_set_without_cameras_up_front(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sitm_training.data.dataset as D

    monkeypatch.setattr(D, "load_sample_meta", lambda path: {"labels": {}})  # as a real bracketed stack records
    with pytest.raises(ValueError, match="simulated camera"):
        SampleDataset(root, "train", crop=None, up_ev_max=0.5)
    SampleDataset(root, "train", crop=None, up_ev_max=99.0)  # no label above the cap: nothing to shoot again, accepted


def test_up_ev_max_caps_only_the_labels_above_it(root: Path) -> None:
    stored = _samples(root, "train")
    evs = sorted({s.ev_up for s in stored})
    assert len(evs) >= 2
    # a cap below every label (all shot again), one between labels (some), one at the largest (a label at the cap is kept)
    for cap in (evs[0] - 0.5, (evs[0] + evs[-1]) / 2, evs[-1]):
        ds = SampleDataset(root, "train", crop=None, augment=False, up_ev_max=cap)
        for i, s in enumerate(stored):
            item = ds[i]
            assert float(item["ev_up"]) == min(s.ev_up, cap)
            if s.ev_up > cap:
                assert not np.allclose(item["up"].numpy(), _chw(s.up / 255.0))
                assert torch.equal(item["up"], ds[i]["up"])  # the same noise draw every time it is read
                assert item["up"].mean() < torch.from_numpy(_chw(s.up / 255.0)).mean()  # fewer EV: darker
            else:
                np.testing.assert_allclose(item["up"].numpy(), _chw(s.up / 255.0), atol=1e-6)
            np.testing.assert_allclose(item["ldr"].numpy(), _chw(s.ldr / 255.0), atol=1e-6)
