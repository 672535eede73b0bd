"""Evaluation: metrics against hand-computed values and independent references, baselines, the CLI end to end
on tiny generated pairs (good, broken, failing methods), and PU21 / JOD against cvvdp when it is installed."""

from __future__ import annotations

import csv
import json
import math
import shlex
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from sitm_training import evaluate as E
from sitm_training import metrics as M
from sitm_training.baselines import banterle, linearize, rempel
from sitm_training.evaluate_sheets import _clip_window
from sitm_trt.media.io import read_ldr, srgb_oetf, write_exr, write_png

# ------------------------------------------------------------------------------------------------ PSNR


def test_psnr_of_a_known_error():
    a = np.zeros((4, 5, 3))
    assert M.psnr(a + 0.1, a, peak=1.0) == pytest.approx(20.0, abs=1e-12)  # MSE 0.01
    assert M.psnr(a + 2.56, a, peak=256.0) == pytest.approx(40.0, abs=1e-12)  # MSE 2.56^2, peak 256
    b = a.copy()
    b[0, 0, 0] = 1.0  # one value of 60 off by 1: MSE 1/60
    assert M.psnr(b, a, peak=1.0) == pytest.approx(10 * math.log10(60), abs=1e-12)


def test_psnr_identical_is_inf_and_empty_mask_is_nan():
    a = np.random.default_rng(0).random((6, 7, 3))
    assert M.psnr(a, a.copy(), peak=1.0) == math.inf
    assert math.isnan(M.psnr(a, a + 1, peak=1.0, mask=np.zeros((6, 7), bool)))


def test_psnr_with_a_mask_uses_only_those_pixels():
    a = np.zeros((3, 4, 3))
    b = a.copy()
    b[0, 0] = 0.5  # inside the mask: all three channels off by 0.5
    b[2, 3] = 9.0  # outside the mask: ignored
    mask = np.zeros((3, 4), bool)
    mask[0, :2] = True  # 2 pixels, 6 values, 3 of them off by 0.5: MSE = 0.125
    assert M.psnr(b, a, peak=1.0, mask=mask) == pytest.approx(10 * math.log10(1 / 0.125), abs=1e-12)


# ------------------------------------------------------------------------------------------------ SSIM


def _ssim_direct(x: np.ndarray, y: np.ndarray, r: float) -> float:
    """SSIM written out per pixel: a Gaussian-weighted 11x11 window over the edge-replicated image."""
    w1 = np.array([math.exp(-(i * i) / 4.5) for i in range(-5, 6)])
    w = np.outer(w1, w1)
    w /= w.sum()
    px, py = np.pad(x, 5, mode="edge"), np.pad(y, 5, mode="edge")
    c1, c2 = (0.01 * r) ** 2, (0.03 * r) ** 2
    vals = []
    for i in range(x.shape[0]):
        for j in range(x.shape[1]):
            wx, wy = px[i : i + 11, j : j + 11], py[i : i + 11, j : j + 11]
            mx, my = (w * wx).sum(), (w * wy).sum()
            vx, vy = (w * (wx - mx) ** 2).sum(), (w * (wy - my) ** 2).sum()
            cxy = (w * (wx - mx) * (wy - my)).sum()
            vals.append((2 * mx * my + c1) * (2 * cxy + c2) / ((mx * mx + my * my + c1) * (vx + vy + c2)))
    return float(np.mean(vals))


@pytest.mark.parametrize("shape", [(1, 1), (7, 13), (16, 9)])
def test_ssim_matches_a_per_pixel_reference(shape):
    rng = np.random.default_rng(1)
    x = rng.random(shape) * 200
    y = x + rng.normal(0, 20, shape)
    assert M.ssim(x, y, 256.0) == pytest.approx(_ssim_direct(x, y, 256.0), rel=1e-10, abs=1e-12)


def test_ssim_hand_values():
    x = np.random.default_rng(2).random((9, 10))
    assert M.ssim(x, x.copy(), 1.0) == pytest.approx(1.0, abs=1e-12)
    # constant images: no variance, SSIM = luminance term (2ab + C1) / (a^2 + b^2 + C1)
    a, b, c1 = 0.3, 0.6, 0.01**2
    assert M.ssim(np.full((8, 8), a), np.full((8, 8), b), 1.0) == pytest.approx((2 * a * b + c1) / (a * a + b * b + c1))
    # (H, W, C): the mean over channels
    img = np.stack([np.full((5, 5), a), np.full((5, 5), b)], axis=2)
    ref = np.stack([np.full((5, 5), a), np.full((5, 5), a)], axis=2)
    assert M.ssim(img, ref, 1.0) == pytest.approx(0.5 * (1 + (2 * a * b + c1) / (a * a + b * b + c1)))


# ------------------------------------------------------------------------------------------------ PU21


def test_pu21_formula_range_and_inverse():
    p = M.PU21_BANDING_GLARE
    y = 100.0
    by_hand = p[6] * (((p[0] + p[1] * y ** p[3]) / (1 + p[2] * y ** p[3])) ** p[4] - p[5])
    assert M.pu21_encode(100.0) == pytest.approx(by_hand, rel=1e-14)
    assert 255.0 < by_hand < 257.5  # PU21's design point: 100 cd/m^2 -> about 256
    ys = np.logspace(np.log10(0.005), 4, 200)
    v = M.pu21_encode(ys)
    assert np.all(np.diff(v) > 0)
    assert M.pu21_encode(1e-6) == M.pu21_encode(0.005) and M.pu21_encode(1e6) == M.pu21_encode(1e4)  # clamped
    np.testing.assert_allclose(M.pu21_decode(v), ys, rtol=1e-9)


def _need_cvvdp() -> None:
    ok, why = M.cvvdp_available()  # an ImportError, or torchvision failing to load with this torch
    if not ok:
        pytest.skip(f"cvvdp not usable here: {why}")


def test_pu21_matches_cvvdp():
    _need_cvvdp()
    import torch
    from pycvvdp.utils import PU

    ys = np.concatenate([np.logspace(-4, 5, 301), [0.005, 100.0, 4000.0, 10000.0]])
    theirs = PU().encode(torch.from_numpy(ys)).numpy()  # same clamp to [0.005, 10000]
    np.testing.assert_allclose(M.pu21_encode(ys), theirs, rtol=1e-12, atol=1e-12)


def test_display_maps_white_and_clips():
    d = M.Display(white=100.0, peak=4000.0)
    np.testing.assert_allclose(d(np.array([0.0, 0.5, 1.0, 40.0, 1e3, np.nan])), [0.005, 50, 100, 4000, 4000, 0.005])
    with pytest.raises(ValueError, match="black < white <= peak"):
        M.Display(white=100.0, peak=50.0)


# ------------------------------------------------------------------------------------- alignment, masks


def _ldr_codes(codes) -> np.ndarray:
    return np.asarray(codes, np.float64) / 255.0


def test_clipped_and_well_exposed_masks_on_a_constructed_image():
    ldr = _ldr_codes([[[255, 0, 0], [242, 242, 242], [243, 10, 10]],
                      [[25, 25, 25], [26, 0, 0], [229, 229, 229]],
                      [[230, 0, 0], [0, 0, 0], [128, 128, 255]]])
    # clipped: largest channel > 0.95, i.e. code >= 243
    assert M.clipped_mask(ldr).tolist() == [[True, False, True], [False, False, False], [False, False, True]]
    # well exposed: 0.1 <= largest channel <= 0.9, i.e. codes 26 .. 229
    assert M.well_exposed_mask(ldr).tolist() == [[False, False, False], [False, True, True], [False, False, False]]


def test_alignment_recovers_a_known_scale_exactly():
    rng = np.random.default_rng(3)
    h, w = 20, 30
    gt = rng.random((h, w, 1)) * 3 * rng.uniform(0.6, 1.0, (h, w, 3)) + 0.01
    ldr = np.clip(gt / 2, 0, 1)  # stand-in input: about the brightest third is clipped
    assert M.well_exposed_mask(ldr).sum() > 4 * M.MIN_ALIGN_PIXELS
    k = 3.7
    pred = gt / k
    bad = M.clipped_mask(ldr)
    pred[bad] = rng.random((int(bad.sum()), 3)) * 100  # garbage where the input is clipped: not used
    assert M.align_scale(pred, gt, ldr) == pytest.approx(k, rel=1e-12)
    # the median ignores up to half of the well-exposed pixels being wrong
    good = np.argwhere(M.well_exposed_mask(ldr))
    wrong = good[: int(0.4 * len(good))]
    pred[wrong[:, 0], wrong[:, 1]] *= rng.uniform(0.1, 10, (len(wrong), 1))
    assert M.align_scale(pred, gt, ldr) == pytest.approx(k, rel=1e-12)


def test_alignment_fallbacks():
    gt = np.full((4, 4, 3), 2.0)
    clipped = np.ones((4, 4, 3))  # no well-exposed pixel: all pixels are used
    assert M.align_scale(gt / 8, gt, clipped) == pytest.approx(8.0, rel=1e-12)
    assert M.align_scale(np.zeros_like(gt), gt, clipped) == 1.0  # nothing positive: no scaling


# ------------------------------------------------------------------------------------- mu-law, tone mapper


def test_mu_psnr_by_hand():
    gt = np.ones((4, 4, 3))  # 99th percentile 1
    t = lambda x: math.log1p(5000 * math.tanh(x)) / math.log1p(5000)  # noqa: E731
    want = 10 * math.log10(1 / (t(2.0) - t(1.0)) ** 2)
    assert M.mu_psnr(2 * gt, gt) == pytest.approx(want, rel=1e-12)
    assert M.mu_psnr(gt, gt) == math.inf


def test_tonemapper_maps_the_ground_truth_white_to_one_and_black_to_zero():
    gt = np.zeros((3, 3, 3))
    gt[0, 0] = 1000.0  # a lamp
    gt[1:, :] = 1.0
    tm = M.Tonemapper.fit(gt)
    out = tm(gt)
    assert np.isfinite(out).all()
    assert out[0, 0].tolist() == pytest.approx([1.0, 1.0, 1.0])
    assert out[0, 1].tolist() == [0.0, 0.0, 0.0]  # black stays black, no NaN
    # a grey pixel by hand: L_m = key / L_avg * Y, L_d = L_m (1 + L_m / L_w^2) / (1 + L_m), then sRGB
    y = np.full((3, 3), 1e-6 * 1000.0)
    y[0, 0], y[1:, :] = 1000.0 + 1e-3, 1.0 + 1e-3
    scale = 0.18 / math.exp(np.mean(np.log(y)))
    lw, lm = 1000.0 * scale, scale
    ld = lm * (1 + lm / lw**2) / (1 + lm)
    assert out[2, 2, 0] == pytest.approx(1.055 * ld ** (1 / 2.4) - 0.055, rel=1e-12)
    # the same mapping for another image, colour ratios kept before the encoding
    lin = tm.linear(np.array([[[0.5, 0.25, 0.0]]]))
    assert lin[0, 0, 1] / lin[0, 0, 0] == pytest.approx(0.5)


def test_score_image_of_a_perfect_prediction():
    rng = np.random.default_rng(4)
    gt = rng.random((12, 10, 3)) * 3
    ldr = np.clip(gt, 0, 1)
    s = M.score_image(gt.copy(), gt, ldr)
    assert s.pu21_psnr == s.mu_psnr == s.tm_psnr == s.clip_pu21_psnr == math.inf
    assert s.pu21_ssim == pytest.approx(1.0) and s.tm_ssim == pytest.approx(1.0)
    assert math.isnan(M.score_image(gt, gt, ldr * 0.5).clip_pu21_psnr)  # no clipped pixel: undefined


# ------------------------------------------------------------------------------------------- baselines


def test_linear_baseline_is_the_inverse_srgb_curve():
    ldr = np.array([[[0, 10, 128], [255, 64, 200]]], np.uint8)
    want = [[[0.0, 10 / 255 / 12.92, ((128 / 255 + 0.055) / 1.055) ** 2.4],
             [1.0, ((64 / 255 + 0.055) / 1.055) ** 2.4, ((200 / 255 + 0.055) / 1.055) ** 2.4]]]
    np.testing.assert_allclose(linearize(ldr), want, rtol=1e-6)
    np.testing.assert_allclose(linearize(ldr.astype(np.uint16) * 257), linearize(ldr), rtol=1e-6)  # 16-bit input


def test_banterle_by_hand():
    ldr = np.array([[[255, 255, 255], [0, 0, 0], [128, 128, 128], [200, 100, 50]]], np.uint8)
    out = banterle(ldr, l_max=40.0, l_white=40.0)
    assert out[0, 0].tolist() == pytest.approx([40.0] * 3, rel=1e-6)  # white -> L_max
    assert out[0, 1].tolist() == [0.0, 0.0, 0.0]
    g = ((128 / 255 + 0.055) / 1.055) ** 2.4  # grey: luminance = the channel value
    lw = 0.5 * 40 * 40 * (g - 1 + math.sqrt((1 - g) ** 2 + 4 * g / 40**2))
    assert out[0, 2].tolist() == pytest.approx([lw] * 3, rel=1e-6)
    assert lw == pytest.approx(g / (1 - g), rel=0.01)  # L_max = L_white: about the inverse of L / (1 + L)
    lin = linearize(ldr)[0, 3]
    assert out[0, 3, 1] / out[0, 3, 0] == pytest.approx(lin[1] / lin[0], rel=1e-6)  # colour by ratio


def test_rempel_by_hand():
    """A uniform grey frame has no clipped pixel: the linearized input unchanged. A clipped square is boosted by
    the full factor at its centre (the blurred mask's maximum), its boost falls off smoothly outside it, and
    pixels far from it stay linear."""
    grey = np.full((48, 64, 3), 128, np.uint8)
    np.testing.assert_array_equal(rempel(grey), linearize(grey))
    x = grey.copy()
    x[16:32, 24:40] = 255
    out, lin = rempel(x, boost=4.0, sigma=1 / 16).astype(np.float64), linearize(x).astype(np.float64)
    ratio = out[..., 1] / lin[..., 1]
    assert ratio[24, 32] == pytest.approx(4.0, rel=1e-6)  # the centre of the square: the blurred mask's peak
    assert 1.0 < ratio[24, 42] < ratio[24, 39] < 4.0  # just outside the square: boosted less, decreasing
    assert ratio[0, 0] == pytest.approx(1.0, abs=1e-3)  # far away: unchanged
    np.testing.assert_allclose(out[..., 0] / lin[..., 0], ratio, rtol=1e-6)  # one gain for all channels
    with pytest.raises(ValueError, match="rempel: need boost >= 1"):
        rempel(x, boost=0.5)


# ----------------------------------------------------------------------------------------- end to end


def _scene(rng, h, w) -> tuple[np.ndarray, np.ndarray]:
    gt = (rng.random((h, w, 3)) ** 2 * 0.9 + 0.02).astype(np.float32)
    gt[: h // 3, : w // 2] *= 6.0  # a bright patch that clips
    ldr = np.rint(srgb_oetf(np.clip(gt, 0, 1)) * 255).astype(np.uint8)
    return ldr, gt


@pytest.fixture()
def pairs(tmp_path) -> Path:
    root = tmp_path / "pairs"
    root.mkdir()
    rng = np.random.default_rng(5)
    for name in ("a", "b", "c"):
        ldr, gt = _scene(rng, 18, 22)
        write_png(root / f"{name}.png", ldr)
        write_exr(root / f"{name}.exr", gt, half=False)
    ldr, gt = _scene(rng, 18, 22)
    write_png(root / "small.png", ldr)
    write_exr(root / "small.exr", gt[:10], half=False)  # size mismatch
    write_png(root / "broken.png", ldr)
    (root / "broken.exr").write_bytes(b"not an exr")  # unreadable
    write_png(root / "orphan.png", ldr)  # no HDR side
    (root / "junk.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")  # unreadable LDR
    write_exr(root / "junk.exr", gt, half=False)
    return root


ORACLE = textwrap.dedent("""
    import sys
    from pathlib import Path
    from sitm_trt.media.io import read_hdr, write_exr
    src, dst = Path(sys.argv[1]), sys.argv[2]
    if src.stem == {fail!r}:
        sys.exit("cannot do " + src.stem)
    write_exr(dst, read_hdr(src.with_suffix(".exr")) / 2, half=False)  # the truth at half scale
""")


def _script(tmp_path: Path, fail: str = "") -> str:
    path = tmp_path / "oracle.py"
    path.write_text(ORACLE.format(fail=fail))
    return f"{shlex.quote(sys.executable)} {shlex.quote(str(path))} {{input}} {{output}}"


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_cli_scores_baselines_and_a_command(pairs, tmp_path):
    out = tmp_path / "out"
    rc = E.main(["--pairs", str(pairs), "--out", str(out), "--jod", "off", "--no-progress", "--sheet-tile", "32",
                 "--method", f"oracle={_script(tmp_path)}"])
    assert rc == 0
    assert sorted(p.name for p in out.iterdir()) == ["clipped_sheet.png", "contact_sheet.png", "per_image.csv",
                                                     "summary.json", "table.md"]
    rows = _read_csv(out / "per_image.csv")
    summary = json.loads((out / "summary.json").read_text(), parse_constant=lambda c: pytest.fail(f"non-JSON {c}"))
    assert summary["images"] == 3 and summary["methods"]["oracle"]["kind"] == "command"
    assert summary["methods"]["linear"]["kind"] == "baseline" and summary["methods"]["oracle"]["pu21_psnr"] == "inf"
    assert summary["methods"]["linear"]["jod"] is None  # --jod off
    lin_rows = [float(r["tm_ssim"]) for r in rows if r["method"] == "linear"]
    assert summary["methods"]["linear"]["tm_ssim"] == pytest.approx(np.mean(lin_rows), rel=1e-5)
    assert {(r["id"], r["method"]) for r in rows} == {(i, m) for i in "abc" for m in ("linear", "banterle", "rempel", "oracle")}
    for r in rows:
        assert r["status"] == "ok"
        if r["method"] == "oracle":  # the truth at half scale: alignment finds x2, every score is perfect
            assert float(r["log2_scale"]) == pytest.approx(1.0, abs=1e-9)
            assert r["pu21_psnr"] == r["mu_psnr"] == r["tm_psnr"] == r["clip_pu21_psnr"] == "inf"
            assert float(r["pu21_ssim"]) == pytest.approx(1.0)
    # the linear baseline's numbers are the metrics module's on the same data
    ldr = read_ldr(pairs / "a.png")
    from sitm_trt.media.io import read_hdr

    gt = read_hdr(pairs / "a.exr").astype(np.float64)
    lin = linearize(ldr).astype(np.float64)
    ldr01 = ldr / 255.0
    s = M.align_scale(lin, gt, ldr01)
    want = M.score_image(lin * s, gt, ldr01)
    got = next(r for r in rows if r["id"] == "a" and r["method"] == "linear")
    assert float(got["pu21_psnr"]) == pytest.approx(want.pu21_psnr, rel=1e-5)
    assert float(got["tm_ssim"]) == pytest.approx(want.tm_ssim, rel=1e-5)
    table = (out / "table.md").read_text()
    assert "7 found, 3 scored by every method, 4 skipped" in table
    assert "`junk`: " in table and "junk.png: cannot decode image" in table
    assert "`small`" in table and "differs from the LDR" in table
    assert "`broken`" in table and "`orphan`: no HDR" in table
    assert table.count("| oracle | inf |") == 1
    sheet = read_ldr(out / "contact_sheet.png")
    # rows: header, input, banterle, rempel, oracle, ground truth (linear is the input row); columns: label + 3 images
    assert sheet.shape == (18 + 5 * (32 + 2), 96 + 3 * (32 + 2), 3)


def test_cli_records_a_failing_method_and_exits_1(pairs, tmp_path):
    out = tmp_path / "out"
    rc = E.main(["--pairs", str(pairs), "--out", str(out), "--jod", "off", "--no-progress", "--baselines", "linear",
                 "--method", f"oracle={_script(tmp_path, fail='b')}"])
    assert rc == 1
    rows = _read_csv(out / "per_image.csv")
    bad = [r for r in rows if r["status"] == "failed"]
    assert [(r["id"], r["method"]) for r in bad] == [("b", "oracle")]
    assert "exit status 1" in bad[0]["error"] and "cannot do b" in bad[0]["error"]
    table = (out / "table.md").read_text()
    assert "2 scored by every method" in table and "1 left out" in table
    assert "| linear |" in table and "`oracle` on `b`" in table


@pytest.mark.parametrize("spec, message", [
    ("x=definitely-not-a-program-xyz {input} {output}", "not found"),
    ("x={python} -c pass {input}", "must contain"),
    ("x={python} -c pass {input} {output} {colour}", "bad placeholder"),
    ("noequals", "NAME=COMMAND"),
])
def test_cli_rejects_bad_methods_before_writing(pairs, tmp_path, spec, message, caplog):
    out = tmp_path / "out"
    rc = E.main(["--pairs", str(pairs), "--out", str(out), "--no-progress",
                 "--method", spec.replace("{python}", sys.executable)])
    assert rc == 2 and not out.exists()
    assert message in caplog.text


def test_cli_without_pairs_writes_nothing(tmp_path, caplog):
    (tmp_path / "empty").mkdir()
    out = tmp_path / "out"
    assert E.main(["--pairs", str(tmp_path / "empty"), "--out", str(out), "--no-progress"]) == 2
    assert not out.exists() and "no (LDR, HDR) pairs" in caplog.text
    assert E.main(["--pairs", str(tmp_path / "missing"), "--out", str(out), "--no-progress"]) == 2
    assert "does not exist" in caplog.text


def test_model_method_runs_the_pipeline(pairs, tmp_path, monkeypatch):
    torch = pytest.importorskip("torch")
    pytest.importorskip("safetensors")
    from sitm_trt.model import SITMNet, predict_hdr, save_weights

    torch.manual_seed(0)
    net = SITMNet("compact").eval()
    weights = tmp_path / "tiny.safetensors"
    save_weights(net, weights)
    elsewhere = tmp_path / "elsewhere"  # a working directory that does not contain the weights, wherever pytest runs
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    method = E.ModelMethod(weights, "tiny")
    assert f"`{weights.resolve()}`" in method.description  # outside the working directory: the whole path
    monkeypatch.chdir(tmp_path)
    assert "`tiny.safetensors`" in E.ModelMethod(weights, "tiny").description  # inside it: relative, no home directory
    ldr = read_ldr(pairs / "a.png")
    got = method(ldr, E.Pair("a", pairs / "a.png", pairs / "a.exr"))
    with torch.no_grad():
        want = predict_hdr(net, torch.from_numpy(ldr)[None])[0].permute(1, 2, 0).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    out = tmp_path / "out"
    assert E.main(["--pairs", str(pairs), "--out", str(out), "--jod", "off", "--no-progress", "--baselines", "none",
                   "--weights", f"tiny={weights}", "--save-results"]) == 0
    assert {r["method"] for r in _read_csv(out / "per_image.csv")} == {"tiny"}
    assert sorted(p.name for p in (out / "results" / "tiny").iterdir()) == ["a.exr", "b.exr", "c.exr"]


def test_jod_with_cvvdp(pairs, tmp_path):
    _need_cvvdp()
    jod = M.JOD()
    yy, xx = np.mgrid[0:64, 0:64]
    ref = np.repeat((50 + 40 * np.sin(xx / 3.0) * np.cos(yy / 5.0))[..., None], 3, axis=2)
    assert jod(ref, ref) == pytest.approx(10.0, abs=1e-4)  # 10 JOD: no visible difference
    assert jod(np.full_like(ref, 50.0), ref) < 9.0  # the texture is gone
    out = tmp_path / "out"
    assert E.main(["--pairs", str(pairs), "--out", str(out), "--jod", "on", "--no-progress",
                   "--method", f"oracle={_script(tmp_path)}"]) == 0
    rows = _read_csv(out / "per_image.csv")
    assert all(float(r["jod"]) == pytest.approx(10.0, abs=1e-4) for r in rows if r["method"] == "oracle")
    assert all(float(r["jod"]) < 10.0 for r in rows if r["method"] == "linear")  # clipped highlights show
    assert "| JOD |" in (out / "table.md").read_text()


def test_jod_on_without_cvvdp_is_a_clear_error(pairs, tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(M, "cvvdp_available", lambda: (False, "ModuleNotFoundError: No module named 'pycvvdp'"))
    assert E.main(["--pairs", str(pairs), "--out", str(tmp_path / "out"), "--jod", "on", "--no-progress"]) == 2
    assert "pip install cvvdp" in caplog.text and not (tmp_path / "out").exists()


def test_module_runs_as_a_command():
    import os
    import subprocess

    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    proc = subprocess.run([sys.executable, "-m", "sitm_training.evaluate", "--help"], capture_output=True, text=True,
                          env=env, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    for flag in ("--pairs", "--weights", "--method", "--baselines", "--jod", "--out"):
        assert flag in proc.stdout


def test_api_records_exceptions_wrong_shapes_and_nan(pairs, tmp_path):
    def explode(ldr):
        raise RuntimeError("boom")

    def nan(ldr):
        out = linearize(ldr)
        out[0, 0, 0] = np.nan
        return out

    methods = [E.BaselineMethod("linear"), E.BaselineMethod("explode", explode, "raises"),
               E.BaselineMethod("small", lambda ldr: linearize(ldr)[:5], "wrong size"),
               E.BaselineMethod("nan", nan, "a NaN")]
    res = E.evaluate(pairs, methods, tmp_path / "out", jod=False, progress=False, sheet_tile=24)
    errors = {(i, m): why for i, m, why in res.failures}
    assert errors[("a", "explode")] == "RuntimeError: boom"
    assert errors[("a", "small")] == "result has shape (5, 22, 3), expected (18, 22, 3)"
    assert errors[("a", "nan")] == "result has 1 NaN/Inf values"
    assert len(res.failures) == 9 and res.common == []  # every image has a failure: nothing in common
    assert res.summary["linear"]["n"] == 0 and math.isnan(res.summary["linear"]["pu21_psnr"])
    assert "| linear | - |" in (tmp_path / "out" / "table.md").read_text()
    assert read_ldr(tmp_path / "out" / "contact_sheet.png").shape[0] == 18 + 5 * (24 + 2)
    assert res.clipped and all(math.isnan(v) for r in res.clipped for v in r.methods_log2.values())  # all failed
    assert all(r.linearized_log2 < 0 for r in res.clipped)  # the linearized input stays at the clip level
    with pytest.raises(ValueError, match="unique"):
        E.evaluate(pairs, [E.BaselineMethod("linear")] * 2, tmp_path / "o2", jod=False, progress=False)
    with pytest.raises(ValueError, match="bad method name"):
        E.evaluate(pairs, [E.BaselineMethod("gt", linearize)], tmp_path / "o2", jod=False, progress=False)
    assert not (tmp_path / "o2").exists()


# --------------------------------------------------------------------------------------- clipped sheet


def _disc(h, w, cy, cx, r) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def _bbox(mask) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(mask)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def test_clip_window_frames_the_largest_region():
    mask = _disc(80, 120, 20, 90, 6) | _disc(80, 120, 60, 20, 2)  # a disc of 13 px across and a smaller one
    (x0, y0, x1, y1), region = _clip_window(mask)
    np.testing.assert_array_equal(region, _disc(80, 120, 20, 90, 6))
    bx0, by0, bx1, by1 = _bbox(region)
    assert x0 <= bx0 and y0 <= by0 and bx1 <= x1 and by1 <= y1
    assert (x1 - x0, y1 - y0) == (48, 48)  # 2 x 13 < 48: the minimum
    assert y0 == 0 and 0 <= x0 and x1 <= 120  # near the top edge: moved inside the image
    big = np.zeros((80, 120), bool)
    big[30:60, 10:50] = True  # 40 x 30: a square of 80 centred at (30, 45), moved right, as high as the image
    assert _clip_window(big)[0] == (0, 0, 80, 80)


def _blob_pair(tmp_path: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    """One pair: a textured background that does not clip, a bright disc with a radial gradient (3 to 12 x the clip
    level) that does, and a small clipped speck elsewhere."""
    rng = np.random.default_rng(7)
    h, w = 80, 120
    gt = (rng.random((h, w, 3)) * 0.55 + 0.05).astype(np.float32)
    blob = _disc(h, w, 20, 90, 6)
    yy, xx = np.mgrid[0:h, 0:w]
    radial = 12.0 - 1.5 * np.sqrt((yy - 20) ** 2 + (xx - 90) ** 2)
    gt[blob] = (radial[blob, None] * np.array([1.0, 0.9, 0.7])).astype(np.float32)
    gt[_disc(h, w, 60, 20, 1)] = 2.0
    ldr = np.rint(srgb_oetf(np.clip(gt, 0, 1)) * 255).astype(np.uint8)
    root = tmp_path / "blob"
    root.mkdir()
    write_png(root / "p.png", ldr)
    write_exr(root / "p.exr", gt, half=False)
    return root, gt.astype(np.float64), blob


def test_clipped_sheet_zooms_on_the_blob_with_one_tone_mapper(tmp_path):
    root, gt, blob = _blob_pair(tmp_path)
    doubled = gt.copy()
    doubled[blob] *= 2.0  # one stop too bright in the blob, exact elsewhere: alignment leaves it alone
    methods = [E.BaselineMethod("oracle", lambda ldr: gt.astype(np.float32), "the truth"),
               E.BaselineMethod("double", lambda ldr: doubled.astype(np.float32), "the truth, blob x2")]
    tile = 96
    res = E.evaluate(root, methods, tmp_path / "out", jod=False, progress=False, sheet_tile=tile)
    path = tmp_path / "out" / "clipped_sheet.png"
    assert res.files["clipped_sheet"] == path and path.is_file()
    [row] = res.clipped
    assert (row.id, row.scene, row.region_pixels) == ("p", None, int(blob.sum()))
    assert row.clipped_pixels == int(M.clipped_mask(read_ldr(root / "p.png") / 255.0).sum()) > row.region_pixels
    x0, y0, x1, y1 = row.box
    bx0, by0, bx1, by1 = _bbox(blob)
    assert x0 <= bx0 and y0 <= by0 and bx1 <= x1 and by1 <= y1 and (x1 - x0, y1 - y0) == (48, 48)
    assert row.methods_log2["oracle"] == 0.0
    assert row.methods_log2["double"] == pytest.approx(1.0, abs=1e-12)
    ldr01 = read_ldr(root / "p.png") / 255.0
    lin = linearize(read_ldr(root / "p.png")).astype(np.float64)
    lin *= M.align_scale(lin, gt, ldr01)
    want = np.mean(np.log2(M.luminance(lin)[blob] / M.luminance(gt)[blob]))
    assert row.linearized_log2 == pytest.approx(want, rel=1e-9) and want < -2  # stuck at the clip level

    # the sheet: header 18 px, then the row's tiles, a 16 px caption line and a 2 px gap; columns after 150 px of labels
    sheet = read_ldr(path)
    assert sheet.shape == (18 + tile + 16 + 2, 150 + 5 * (tile + 2), 3)
    tiles = [sheet[18:18 + tile, 150 + c * (tile + 2): 150 + c * (tile + 2) + tile] for c in range(5)]
    srgb, linearized, oracle, double, truth = tiles
    crop = (slice(y0, y1), slice(x0, x1))
    up = lambda img: np.repeat(np.repeat(img, 2, axis=0), 2, axis=1)  # noqa: E731  48 -> 96, nearest neighbour
    np.testing.assert_array_equal(srgb, up(read_ldr(root / "p.png")[crop]))  # the input as it is
    # one tone mapper for the row: the truth's log-average luminance over the blob -> 1, white = the crop's maximum
    level = math.exp(np.mean(np.log(M.luminance(gt)[blob])))
    tm = M.Tonemapper(1.0 / level, float(M.luminance(gt[crop]).max()) / level)
    np.testing.assert_array_equal(truth, up(tm.to_uint8(gt[crop])))
    np.testing.assert_array_equal(oracle, truth)
    np.testing.assert_array_equal(linearized, up(tm.to_uint8(lin[crop])))
    inside = up(blob[crop])
    assert np.mean(np.all(truth[inside] == 255, axis=1)) < 0.1  # the truth's highlight is not all white ...
    assert np.ptp(truth[inside][:, 1].astype(int)) > 60  # ... its gradient shows
    assert linearized[inside].mean() < truth[inside].mean() - 60 < double[inside].mean() - 60


def test_clipped_sheet_picks_the_most_clipped_pairs_per_scene(tmp_path):
    """Scene A: pairs clipping 10, 50 and 30 px; scene B: 5 px and none. Two rows: the most clipped of each scene;
    three: then A's second; shown grouped by scene. Without pairs.json: the most clipped overall, in the pairs'
    order."""
    root = tmp_path / "pairs"
    root.mkdir()
    rng = np.random.default_rng(8)
    entries = []
    for i, (scene, clipped) in enumerate([("A", 10), ("B", 5), ("A", 50), ("B", 0), ("A", 30)]):
        gt = (rng.random((16, 20, 3)) * 0.5 + 0.05).astype(np.float32)
        gt.reshape(-1, 3)[:clipped] = 4.0
        write_png(root / f"{i}.png", np.rint(srgb_oetf(np.clip(gt, 0, 1)) * 255).astype(np.uint8))
        write_exr(root / f"{i}.exr", gt, half=False)
        entries.append({"id": str(i), "source": scene})
    (root / "pairs.json").write_text(json.dumps({"pairs": entries}))
    run = lambda rows: E.evaluate(root, [E.BaselineMethod("linear")], tmp_path / f"o{rows}", jod=False,  # noqa: E731
                                  progress=False, sheet_tile=16, clip_rows=rows).clipped
    assert [(r.id, r.scene, r.clipped_pixels) for r in run(2)] == [("2", "A", 50), ("1", "B", 5)]
    assert [r.id for r in run(3)] == ["2", "4", "1"]
    assert [r.id for r in run(9)] == ["2", "4", "1"]  # at most two per scene
    assert run(0) == [] and (tmp_path / "o0" / "clipped_sheet.png").is_file()
    (root / "pairs.json").unlink()
    assert [(r.id, r.scene) for r in run(3)] == [("0", None), ("2", None), ("4", None)]  # each its own scene
    assert [r.id for r in run(2)] == ["2", "4"]
