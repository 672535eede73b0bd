"""Procedural HDR scenes: exact, finite, deterministic, with the asked dynamic range."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("cv2")

from sitm_training.data.procedural import SCENE_KINDS, fractal_noise, generate_scene  # noqa: E402

LUMA = np.array([0.2126, 0.7152, 0.0722])


@pytest.mark.parametrize("kind", SCENE_KINDS)
def test_scene_is_finite_positive_and_has_the_target_range(kind: str) -> None:
    for seed in range(3):
        img, info = generate_scene(np.random.default_rng(seed), (48, 64), kind=kind)
        assert img.shape == (48, 64, 3) and img.dtype == np.float32
        assert np.isfinite(img).all() and img.min() >= 0.0
        lum = img.astype(np.float64) @ LUMA
        measured = lum.max() / np.percentile(lum, 1.0)
        assert info["kind"] == kind
        assert info["dynamic_range"] == pytest.approx(measured, rel=1e-3)
        assert 1e2 <= measured <= 1e8  # emitters are scaled to a 10^3..10^7 target; glare can narrow it


def test_dynamic_range_follows_the_target() -> None:
    low = [
        generate_scene(np.random.default_rng(s), 48, kind="day", dynamic_range=(1e3, 1e3))[1]["dynamic_range"]
        for s in range(4)
    ]
    high = [
        generate_scene(np.random.default_rng(s), 48, kind="day", dynamic_range=(1e7, 1e7))[1]["dynamic_range"]
        for s in range(4)
    ]
    assert np.median(high) > 100 * np.median(low)


def test_deterministic_for_a_seed() -> None:
    a, ia = generate_scene(np.random.default_rng(7), 40)
    b, ib = generate_scene(np.random.default_rng(7), 40)
    c, _ = generate_scene(np.random.default_rng(8), 40)
    np.testing.assert_array_equal(a, b)
    assert ia == ib
    assert not np.array_equal(a, c)


def test_kinds_are_drawn_and_validated() -> None:
    kinds = {generate_scene(np.random.default_rng(s), 24)[1]["kind"] for s in range(24)}
    assert kinds == set(SCENE_KINDS)
    with pytest.raises(ValueError, match="kind"):
        generate_scene(np.random.default_rng(0), 24, kind="underwater")
    with pytest.raises(ValueError, match="8x8"):
        generate_scene(np.random.default_rng(0), 4)


def test_fractal_noise_range() -> None:
    n = fractal_noise(np.random.default_rng(0), 33, 17)
    assert n.shape == (33, 17) and n.min() == pytest.approx(0.0) and n.max() == pytest.approx(1.0)
