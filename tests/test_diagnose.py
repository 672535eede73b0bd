"""sitm_training.diagnose: the masks of Eq. 7 by input region, against hand-computed regions and means."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sitm_training import diagnose as D


def test_regions_follow_min_and_max_channel():
    px = torch.tensor([[0.01, 0.02, 0.03],  # dark (min < 0.05)
                       [0.3, 0.5, 0.7],    # well
                       [0.85, 0.1, 0.1],   # bright
                       [0.99, 0.5, 0.5],   # clipped
                       [0.1, 0.15, 0.18]]).T.reshape(3, 1, 5)  # none (max 0.18)
    r = {k: v.flatten().tolist() for k, v in D.region_masks(px).items()}
    assert r == {"dark": [True, False, False, False, False], "well": [False, True, False, False, False],
                 "bright": [False, False, True, False, False], "clipped": [False, False, False, True, False]}
    both = torch.tensor([0.01, 0.5, 0.5]).view(3, 1, 1)  # a dark channel in a well-exposed pixel: in both
    assert [k for k, v in D.region_masks(both).items() if v.item()] == ["dark", "well"]


def test_mask_stats_average_per_image_then_over_images():
    # two images: 60 dark pixels (value 0) and 60 well ones (value 128); the second also 60 clipped (255)
    a = np.concatenate([np.zeros((6, 10, 3)), np.full((6, 10, 3), 128)]).astype(np.uint8)
    b = np.concatenate([a, np.full((6, 10, 3), 255, np.uint8)])

    def masks_of(image):  # M_mid = the input's first channel, the rest split evenly
        mid = image[:, :1]
        return torch.cat([(1 - mid) / 2, mid, (1 - mid) / 2], dim=1)

    s = D.mask_stats(masks_of, [a, b], min_pixels=50)
    assert s["dark"][1] == 2 and s["well"][1] == 2 and s["clipped"][1] == 1 and s["bright"][1] == 0
    np.testing.assert_allclose(s["well"][0], [(1 - 128 / 255) / 2, 128 / 255, (1 - 128 / 255) / 2], rtol=1e-6)
    np.testing.assert_allclose(s["clipped"][0], [0, 1, 0], atol=1e-7)
    assert np.isnan(s["bright"][0]).all()
    assert D.mask_stats(masks_of, [a], min_pixels=61)["dark"][1] == 0  # too few pixels: not counted


def test_cli_on_weights(tmp_path, tiny_weights_path, capsys):
    from sitm_trt.media.io import write_png

    rng = np.random.default_rng(0)
    for i in range(2):
        write_png(tmp_path / f"{i}.png", rng.integers(0, 256, (40, 48, 3), dtype=np.uint8))
    out = tmp_path / "masks.md"
    assert D.main(["--images", str(tmp_path), "--weights", f"tiny={tiny_weights_path}", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "| tiny |" in text and out.read_text() == text
    row = [line for line in text.splitlines() if line.startswith("| tiny |")][0]
    for cell in row.split("|")[2:-1]:  # random pixels: every region is present in both images
        up, mid, down = (float(v) for v in cell.split("(")[0].split("/"))
        assert up + mid + down == pytest.approx(1.0, abs=2e-3) and cell.strip().endswith("(2)")
    assert D.main(["--images", str(tmp_path / "none"), "--weights", str(tiny_weights_path)]) == 2
    assert D.main(["--images", str(tmp_path), "--weights", str(tmp_path / "missing.safetensors")]) == 2


def test_cli_groups_images_by_the_samples_exposure_mode(tmp_path, tiny_weights_path, capsys):
    import json

    from sitm_trt.media.io import read_ldr, write_png

    images, samples = tmp_path / "images", tmp_path / "samples"
    images.mkdir(), samples.mkdir()
    rng = np.random.default_rng(1)
    modes = {"000": "under", "001": "clip", "002": "under"}
    for sid, mode in modes.items():
        write_png(images / f"{sid}.png", rng.integers(0, 256, (32, 40, 3), dtype=np.uint8))
        np.savez(samples / f"{sid}.npz", meta=np.array(json.dumps({"exposure": {"mode": mode}})))
    groups = D.exposure_groups(sorted(images.iterdir()), samples)
    assert list(groups) == ["clip", "under"] and [f.stem for f in groups["under"]] == ["000", "002"]
    assert D.main(["--images", str(images), "--weights", f"tiny={tiny_weights_path}", "--samples", str(samples)]) == 0
    rows = {line.split("|")[1].strip(): line for line in capsys.readouterr().out.splitlines() if line.startswith("| tiny")}
    assert set(rows) == {"tiny, clip inputs (1)", "tiny, under inputs (2)"}
    # each row is the statistics of its own images alone
    alone = D.mask_stats(D.network_masks(tiny_weights_path), [read_ldr(f) for f in groups["under"]])
    up, mid, down = (float(v) for v in rows["tiny, under inputs (2)"].split("|")[2].split("(")[0].split("/"))
    assert (up, mid, down) == pytest.approx(tuple(alone["dark"][0]), abs=1e-3)
    (samples / "001.npz").unlink()  # an image without its sample: a clear error
    assert D.main(["--images", str(images), "--weights", f"tiny={tiny_weights_path}", "--samples", str(samples)]) == 2
    assert "001.npz" in capsys.readouterr().err


def test_by_camera_groups_differences_to_the_baseline(tmp_path, capsys):
    import csv
    import json

    samples = tmp_path / "test"
    samples.mkdir()
    cams = {"a": ("clip", "srgb"), "b": ("under", "srgb"), "c": ("under", "gamma")}
    for sid, (mode, kind) in cams.items():
        meta = {"exposure": {"mode": mode}, "camera": {"response": {"kind": kind}}}
        scene = "s1" if sid in "ab" else "s2"
        np.savez(samples / f"{sid}.npz", meta=np.array(json.dumps(meta)), source=np.array(f"real/{scene}"))
    per_image = tmp_path / "per_image.csv"
    scores = {"a": (30.0, 31.0), "b": (20.0, 19.0), "c": (25.0, 24.0)}  # (linear, model) PU21-PSNR
    with open(per_image, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["id", "method", "status", *D.SCORES])
        w.writeheader()
        for sid, (lin, mod) in scores.items():
            for method, v in (("linear", lin), ("m", mod)):
                w.writerow({"id": sid, "method": method, "status": "ok", **{k: v for k in D.SCORES},
                            "clip_pu21_psnr": "" if sid == "c" else v})
        w.writerow({"id": "a", "method": "broken", "status": "error"})
    rows = {line.split("|")[1].strip(): line for line in D.by_camera(per_image, samples).splitlines()
            if line.startswith("| ") and "| m |" in line}
    cell = lambda key, i: rows[key].split("|")[4 + i].strip()  # noqa: E731
    assert cell("all", 0) == "-0.333"  # (+1 - 1 - 1) / 3
    assert cell("clip", 0) == "+1.000" and cell("under", 0) == "-1.000" and cell("under/gamma", 0) == "-1.000"
    assert cell("under", 6) == "-1.000"  # the clipped score: only b has it
    assert cell("scene/real/s1", 0) == "+0.000" and cell("scene/real/s2", 0) == "-1.000"  # by whole scene
    assert rows["all"].split("|")[3].strip() == "3" and "broken" not in D.by_camera(per_image, samples)
    assert D.main(["--per-image", str(per_image)]) == 2  # --samples missing
    other = tmp_path / "train"  # another split's folder: the evaluated ids are not there
    other.mkdir()
    np.savez(other / "a.npz", meta=np.array(json.dumps({"exposure": {"mode": "clip"}})), source=np.array("x"))
    assert D.main(["--per-image", str(per_image), "--samples", str(other)]) == 2
    assert "has no sample b.npz (2 of the 3 ids" in capsys.readouterr().err


def test_by_camera_means_per_camera_family_marking_the_held_out_one(tmp_path, capsys):
    import csv
    import json

    root = tmp_path / "ds"
    samples = root / "val"
    samples.mkdir(parents=True)
    (root / "manifest.json").write_text(json.dumps({"recipe": {"holdout_responses": ["filmic"]}}))
    # a pair of views per scene: one through the sRGB curve, one through the held-out filmic family
    cams = {"0": ("srgb", "s1"), "1": ("filmic", "s1"), "2": ("srgb", "s2"), "3": ("filmic", "s2")}
    for sid, (kind, scene) in cams.items():
        meta = {"exposure": {"mode": "clip"}, "camera": {"response": {"kind": kind}}}
        np.savez(samples / f"{sid}.npz", meta=np.array(json.dumps(meta)), source=np.array(f"val/{scene}"))
    diffs = {"0": 2.0, "1": -1.0, "2": 4.0, "3": -3.0}  # model - linear on every score
    per_image = tmp_path / "per_image.csv"
    with open(per_image, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["id", "method", "status", *D.SCORES, "clip_fraction"])
        w.writeheader()
        # bins 0-0.01, 0.01-0.03 (a lower edge belongs to its bin), 0.01-0.03, 0.1-1
        fractions = {"0": 0.005, "1": 0.01, "2": 0.02, "3": 0.5}
        for sid, d in diffs.items():
            w.writerow({"id": sid, "method": "linear", "status": "ok", **{k: 20.0 for k in D.SCORES},
                        "clip_fraction": fractions[sid]})
            w.writerow({"id": sid, "method": "m", "status": "ok", **{k: 20.0 + d for k in D.SCORES}})
    assert D.main(["--per-image", str(per_image), "--samples", str(samples)]) == 0
    text = capsys.readouterr().out
    assert "Response families the train split never drew: filmic." in text
    rows = {line.split("|")[1].strip(): line.split("|") for line in text.splitlines() if "| m |" in line}
    mean = lambda key: float(rows[key][4])  # noqa: E731
    assert mean("camera/srgb") == 3.0 and rows["camera/srgb"][3].strip() == "2"
    assert mean("camera/filmic (held out)") == -2.0 and rows["camera/filmic (held out)"][3].strip() == "2"
    assert mean("camera/filmic (held out)/val/s2") == -3.0 and mean("camera/srgb/val/s1") == 2.0
    assert mean("all") == 0.5 and mean("clip/filmic") == -2.0 and mean("scene/val/s1") == 0.5
    assert mean("clipped/srgb/0-0.01") == 2.0 and mean("clipped/srgb/0.01-0.03") == 4.0
    assert mean("clipped/filmic (held out)/0.01-0.03") == -1.0 and mean("clipped/filmic (held out)/0.1-1") == -3.0
    assert not any(key.startswith("clipped/srgb/0.1") for key in rows)
    (root / "manifest.json").unlink()  # samples outside a built data set: the families, unmarked
    assert "camera/filmic |" in D.by_camera(per_image, samples) and "held out" not in D.by_camera(per_image, samples)


def test_weakest_scores_t_statistics_merge_evaluations_by_image(tmp_path, capsys):
    import csv

    def write(path, rows):
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["id", "method", "status", *D.SCORES])
            w.writeheader()
            for r in rows:
                w.writerow(r)

    base = {k: 10.0 for k in D.SCORES}
    diffs = {"1": 1.0, "2": 2.0, "3": 4.0}  # m - linear on every score; the clipped score only on images 1 and 3
    write(tmp_path / "a.csv", [{"id": i, "method": "linear", "status": "ok", **base} for i in diffs])
    write(tmp_path / "b.csv", [{"id": i, "method": "m", "status": "ok", **{k: 10.0 + d for k in D.SCORES},
                                "clip_pu21_psnr": "" if i == "2" else 10.0 + d} for i, d in diffs.items()]
          + [{"id": "1", "method": "linear", "status": "ok", **{k: 99.0 for k in D.SCORES}}])  # a second copy: ignored
    text = D.weakest_scores([tmp_path / "a.csv", tmp_path / "b.csv"])
    row = [line for line in text.splitlines() if line.startswith("| m |")][0].split("|")
    d = np.array([1.0, 2.0, 4.0])
    t_all = d.mean() / (d.std(ddof=1) / np.sqrt(3))
    t_clip = 2.5 / (np.std([1.0, 4.0], ddof=1) / np.sqrt(2))  # 1.67 < t_all = 2.65: the weakest
    assert float(row[3]) == pytest.approx(t_all, abs=0.01) and float(row[9]) == pytest.approx(t_clip, abs=0.01)
    assert row[10].strip() == f"{min(t_all, t_clip):.2f} (clip_pu21_psnr)" and row[2].strip() == "3"
    assert D.main(["--weakest", str(tmp_path / "a.csv"), "--baseline", "nope"]) == 2
    assert D.main(["--weakest", str(tmp_path / "missing.csv")]) == 2
    assert D.main(["--weakest", str(tmp_path / "a.csv"), str(tmp_path / "b.csv")]) == 0
    assert "| m | 3 |" in capsys.readouterr().out


def test_clipped_stats_align_then_measure_the_clipped_pixels():
    ldr = np.full((10, 10, 3), 0.5)
    ldr[:, 5:] = 1.0  # 50 clipped pixels
    gt = np.ones((10, 10, 3)) * 0.2
    gt[:, 5:] = np.exp(np.linspace(0, 2, 50)).reshape(10, 5)[..., None]  # luminance of a grey pixel = its value
    pred = gt / 4  # right up to scale: alignment restores it
    std, med = D.clipped_stats(pred, gt, ldr, min_pixels=50)
    want = gt[:, 5:, 0].ravel()
    assert std == pytest.approx(np.std(np.log(want)), rel=1e-6) and med == pytest.approx(np.median(want), rel=1e-6)
    assert D.clipped_stats(pred, gt, ldr, min_pixels=51) is None  # too few clipped pixels


def test_highlights_cli_on_pairs(tmp_path, tiny_weights_path, capsys):
    from sitm_trt.media.io import write_exr, write_png

    rng = np.random.default_rng(1)
    for i in range(2):
        ldr = rng.integers(0, 200, (32, 32, 3), dtype=np.uint8)
        ldr[:8] = 255  # exactly these 256 pixels are clipped
        write_png(tmp_path / f"{i}.png", ldr)
        hdr = (ldr / 255.0) ** 2.2
        hdr[:8] = rng.uniform(1, 8, (8, 32, 1))
        write_exr(tmp_path / f"{i}.exr", hdr.astype(np.float32))
    assert D.main(["--highlights", "--images", str(tmp_path), "--weights", f"tiny={tiny_weights_path}"]) == 0
    text = capsys.readouterr().out
    rows = {line.split("|")[1].strip(): line.split("|")[2:-1] for line in text.splitlines() if line.startswith("| ")}
    assert rows["ground truth"][0].strip() == "2" and rows["tiny"][0].strip() == "2"
    assert float(rows["linear"][1]) == pytest.approx(0.0, abs=1e-6)  # a clipped input linearizes to one value
    assert float(rows["ground truth"][1]) > 0.3  # the hand-made highlights vary
    assert D.main(["--highlights", "--images", str(tmp_path), "--weights", str(tmp_path / "no.safetensors")]) == 2
    assert D.main(["--highlights", "--images", str(tmp_path / "0.png").replace("0.png", ""),
                   "--weights", str(tiny_weights_path), "--limit", "0"]) == 2  # no pairs left


def test_clip_log_ratio_is_the_aligned_mean_log2_ratio():
    rng = np.random.default_rng(3)
    ldr = rng.uniform(0.2, 0.8, (16, 16, 3))
    ldr[:4] = 1.0  # 64 clipped pixels
    gt = ldr ** 2.2
    gt[:4] = 4.0  # the truth is 2 EV above the clip there
    pred = 0.5 * ldr ** 2.2  # half the truth's scale where well exposed: alignment doubles it
    pred[:4] = 0.5  # -> 1.0 after alignment, 2 EV below the truth
    assert D.clip_log_ratio(pred, gt, ldr, min_pixels=64) == pytest.approx(-2.0, abs=1e-9)
    assert D.clip_log_ratio(pred, gt, ldr, min_pixels=65) is None


def test_clip_bias_cli_groups_samples_by_kind_camera_and_fraction(tmp_path, tiny_weights_path, capsys):
    import json

    rng = np.random.default_rng(4)
    for i, (source, kind, rows, mode) in enumerate([("procedural/indoor", "srgb", 1, "clip"),
                                                     ("pmndrs/bridge", "srgb", 8, "clip"),
                                                     ("pmndrs/bridge", "gamma", 8, "under")]):
        ldr = rng.integers(40, 200, (32, 32, 3), dtype=np.uint8)
        ldr[:rows] = 255  # 32 (3 %: bin 0.03-0.1) or 256 (25 %: bin 0.1-1) clipped pixels
        lin = np.where(ldr / 255 <= 0.04045, ldr / 255 / 12.92, ((ldr / 255 + 0.055) / 1.055) ** 2.4)
        hdr = lin.copy()
        hdr[:rows] = 8.0  # 3 EV above the clip level: the linearized input is -3 EV there
        meta = {"exposure": {"mode": mode}, "camera": {"response": {"kind": kind}}}
        np.savez(tmp_path / f"{i:06d}.npz", ldr=ldr, up=ldr, down=ldr, hdr=hdr.astype(np.float16),
                 ev_up=np.float32(2), ev_down=np.float32(-2), source=np.array(source), meta=np.array(json.dumps(meta)))
    args = ["--clip-bias", "--samples", str(tmp_path), "--weights", f"tiny={tiny_weights_path}", "--min-pixels", "20"]
    assert D.main(args) == 0
    rows = [line.split("|")[1:-1] for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    body = {(r[0].strip(), r[1].strip(), r[2].strip()): r[3:] for r in rows[2:]}  # after the header and rule
    # the under-exposed sample is left out
    assert set(body) == {("procedural", "srgb", "0.03-0.1"), ("real", "srgb", "0.1-1")}
    for key, values in body.items():
        assert values[0].strip() == "1"
        assert float(values[1]) == pytest.approx(-3.0, abs=0.01)  # linear: hand-computed
        assert np.isfinite(float(values[2]))  # the model's column
    assert D.main(args + ["--every", "0"]) == 2
    assert D.main(["--clip-bias", "--samples", str(tmp_path)]) == 2  # no weights
    assert D.main(["--clip-bias", "--samples", str(tmp_path / "nowhere"), "--weights", str(tiny_weights_path)]) == 2
    (tmp_path / "999999.npz").write_bytes(b"not a zip file")  # a corrupt sample: named, exit 2, no traceback
    assert D.main(args) == 2 and "999999.npz: corrupt sample file" in capsys.readouterr().err


def test_coefficients_cli_groups_the_whole_frame_coefficients(tmp_path, capsys):
    """``--coefficients``: per weights, scene kind and camera, the mean and spread of ``coef[:, :3]``, against the
    network run directly on each sample; an untrained residual network's curve exponent k2 is exactly 0."""
    import dataclasses
    import json

    from sitm_trt import reference as ops
    from sitm_trt.model import SITMNet, get_preset, save_weights

    torch.manual_seed(0)
    net = SITMNet(dataclasses.replace(get_preset("compact"), fusion="residual", boost="all")).eval()
    weights = tmp_path / "res.safetensors"
    save_weights(net, weights)
    rng = np.random.default_rng(5)
    samples, want = tmp_path / "s", {}
    samples.mkdir()
    for i, (source, kind) in enumerate([("pmndrs/bridge", "srgb"), ("pmndrs/hall", "srgb"),
                                        ("procedural/indoor", "gamma")]):
        ldr = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
        meta = {"exposure": {"mode": "clip"}, "camera": {"response": {"kind": kind}}}
        np.savez(samples / f"{i:06d}.npz", ldr=ldr, up=ldr, down=ldr, hdr=np.ones((32, 32, 3), np.float16),
                 ev_up=np.float32(2), ev_down=np.float32(-2), source=np.array(source), meta=np.array(json.dumps(meta)))
        with torch.no_grad():
            coef = net(*ops.pre(torch.from_numpy(ldr), stride=net.stride)).coef[0, :3].double().numpy()
        want.setdefault(("real" if i < 2 else "procedural", kind), []).append(coef)
    assert D.main(["--coefficients", "--samples", str(samples), "--weights", f"r={weights}"]) == 0
    rows = [line.split("|")[1:-1] for line in capsys.readouterr().out.splitlines() if line.startswith("| ")][2:]
    assert {(r[1].strip(), r[2].strip()) for r in rows} == set(want)
    for r in rows:
        a = np.array(want[(r[1].strip(), r[2].strip())])
        assert int(r[3]) == len(a)
        cells = [c.strip().split(" +- ") for c in r[4:7]]
        np.testing.assert_allclose([float(m) for m, _ in cells], a.mean(0), atol=6e-4)
        np.testing.assert_allclose([float(sd) for _, sd in cells], a.std(0), atol=6e-4)
        assert r[6].strip() == "+0.000 +- 0.000"  # k2 of an untrained residual network
    assert D.main(["--coefficients", "--samples", str(samples)]) == 2  # no weights


def test_fix_curve_writes_copies_whose_curve_exponent_is_fixed(tmp_path, capsys):
    """``--fix-curve``: each copy's curve log-exponent ``k2`` is the given value for any picture; its gains and
    masks are the original's; weights of the paper fusion are refused with the reason."""
    import dataclasses

    from sitm_trt import reference as ops
    from sitm_trt.model import SITMNet, get_preset, load_weights, save_weights

    torch.manual_seed(0)
    net = SITMNet(dataclasses.replace(get_preset("compact"), fusion="residual", boost="all")).eval()
    with torch.no_grad():
        net.mefm.coef_head.weight.normal_(0, 0.3)  # k2 depends on the picture before the fix
        net.mefm.mask_head.weight.normal_(0, 0.2)
    weights = tmp_path / "res.safetensors"
    save_weights(net, weights)
    out = tmp_path / "variants"
    assert D.main(["--fix-curve", "-0.1", "0.05", "--weights", f"r={weights}", "--variants", str(out)]) == 0
    assert "r-k2=-0.1.safetensors" in capsys.readouterr().out
    frames = [torch.from_numpy(np.random.default_rng(i).integers(0, 256, (32, 48, 3), dtype=np.uint8)) for i in (1, 2)]
    for k in (-0.1, 0.05):
        fixed = load_weights(out / f"r-k2={k:g}.safetensors").eval()
        for frame in frames:
            pre = ops.pre(frame, stride=net.stride)
            with torch.no_grad():
                a, b = net(*pre), fixed(*pre)
            assert b.coef[0, 2].item() == pytest.approx(k, abs=1e-7) and a.coef[0, 2].item() != pytest.approx(k)
            assert torch.equal(a.coef[:, :2], b.coef[:, :2]) and torch.equal(a.masks, b.masks)
    paper = tmp_path / "paper.safetensors"
    save_weights(SITMNet("compact"), paper)
    assert D.main(["--fix-curve", "0", "--weights", str(paper), "--variants", str(out)]) == 2
    assert "needs residual-fusion weights" in capsys.readouterr().err
    assert D.main(["--fix-curve", "nan", "--weights", str(weights), "--variants", str(out)]) == 2
