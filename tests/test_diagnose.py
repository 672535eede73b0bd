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
    from sitm_trt.io import write_png

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
