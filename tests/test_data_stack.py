"""Label choice on constructed scenes where the right EV is known by hand."""

from __future__ import annotations

import numpy as np
import pytest

from sitm_training.data.camera import Camera, Response
from sitm_training.data.stack import (
    DEFAULT_EVS,
    LabelCriterion,
    choose_labels,
    exposure_classes,
    render_stack,
    stack_evs,
)

LINEAR = Camera(Response("linear"))


def _scene(values: list[tuple[float, int]]) -> np.ndarray:
    """A gray (1, N, 3) radiance image: ``count`` pixels of each value."""
    flat = np.concatenate([np.full(n, v, np.float32) for v, n in values])
    return np.repeat(flat[None, :, None], 3, axis=2)


def test_known_ev_linear_camera() -> None:
    # defaults: under < 0.1, over > 0.95, well exposed in [0.2, 0.8], coverage 0.5
    hdr = _scene([(0.03, 30), (0.5, 40), (3.0, 30)])
    choice = choose_labels(render_stack(hdr, LINEAR))
    # dark 0.03: 0.03 * 2**e >= 0.2 first at e = 3 (0.24); bright 3.0: 3 * 2**-e <= 0.8 first at e = 2 (0.75)
    assert (choice.ev_up, choice.ev_down) == (3.0, -2.0)
    assert choice.up_coverage == {1.0: 0.0, 2.0: 0.0, 3.0: 1.0, 4.0: 1.0}
    assert choice.down_coverage == {-1.0: 0.0, -2.0: 1.0, -3.0: 1.0, -4.0: 0.0}  # 3 / 16 = 0.19 < 0.2: too dark
    assert choice.under_fraction == pytest.approx(0.3) and choice.over_fraction == pytest.approx(0.3)


def test_known_ev_srgb_camera() -> None:
    # sRGB code 0.2 <-> linear ((0.2 + 0.055) / 1.055) ** 2.4 = 0.03310; 0.003 * 2**e >= 0.0331 -> e = 4
    # sRGB code 0.8 <-> linear 0.6038; 1.1 * 2**-e <= 0.6038 -> e = 1 (0.55)
    hdr = _scene([(0.003, 10), (0.2, 10), (1.1, 10)])
    choice = choose_labels(render_stack(hdr, Camera(Response("srgb"))))
    assert (choice.ev_up, choice.ev_down) == (4.0, -1.0)


def test_coverage_threshold_and_fallback_to_the_best_step() -> None:
    # 40% of the dark pixels reachable at +3 (0.24), 60% never (0.001 * 16 = 0.016): coverage 0.4 at +3 and +4
    hdr = _scene([(0.03, 40), (0.001, 60), (0.5, 100)])
    choice = choose_labels(render_stack(hdr, LINEAR))
    assert choice.up_coverage[3.0] == pytest.approx(0.4) and choice.up_coverage[4.0] == pytest.approx(0.4)
    assert choice.ev_up == 3.0  # the best coverage, smallest step on ties
    # with coverage 0.3 the same scene qualifies at +3 directly
    assert choose_labels(render_stack(hdr, LINEAR), LabelCriterion(coverage=0.3)).ev_up == 3.0
    # a sun that no step brings down: the fallback is the step with the best coverage (here all zero -> -1)
    sun = _scene([(1000.0, 10), (0.5, 90)])
    assert choose_labels(render_stack(sun, LINEAR)).ev_down == -1.0


def test_larger_ev_when_the_shadows_are_deeper() -> None:
    evs = []
    for dark in (0.15, 0.06, 0.03, 0.015):  # needs e >= log2(0.2 / dark): 0.4, 1.7, 2.7, 3.7
        evs.append(choose_labels(render_stack(_scene([(dark, 50), (0.5, 50)]), LINEAR)).ev_up)
    assert evs == [1.0, 2.0, 3.0, 4.0]


def test_nothing_to_recover_gives_the_smallest_step() -> None:
    hdr = _scene([(0.5, 1000), (0.05, 4)])  # 0.4% dark pixels, below min_fraction 0.5%
    choice = choose_labels(render_stack(hdr, LINEAR))
    assert choice.ev_up == 1.0 and choice.up_coverage == {}
    assert choice.ev_down == -1.0 and choice.down_coverage == {}


def test_ranks_and_uint8_images_work_like_evs() -> None:
    hdr = _scene([(0.03, 30), (0.5, 40), (3.0, 30)])
    codes = render_stack(hdr, LINEAR)
    ranked = {float(k): np.rint(codes[e] * 255).astype(np.uint8) for k, e in zip(range(-4, 5), DEFAULT_EVS)}
    choice = choose_labels(ranked)
    assert (choice.ev_up, choice.ev_down) == (3.0, -2.0)
    # a coarser stack (step 2) picks from what exists: +4 for the shadows, -2 for the highlights
    coarse = {e: codes[e] for e in (-4.0, -2.0, 0.0, 2.0, 4.0)}
    assert (choose_labels(coarse).ev_up, choose_labels(coarse).ev_down) == (4.0, -2.0)


def test_exposure_classes_use_the_max_channel() -> None:
    code = np.array([[[0.05, 0.05, 0.2], [0.05, 0.05, 0.05], [0.5, 0.96, 0.1]]], np.float32)
    under, over = exposure_classes(code)
    assert under.tolist() == [[False, True, False]] and over.tolist() == [[False, False, True]]


def test_errors_and_stack_evs() -> None:
    with pytest.raises(ValueError, match="EV 0"):
        choose_labels({1.0: np.zeros((2, 2)), -1.0: np.zeros((2, 2))})
    with pytest.raises(ValueError, match="both sides"):
        choose_labels({0.0: np.zeros((2, 2)), 1.0: np.zeros((2, 2))})
    with pytest.raises(ValueError):
        LabelCriterion(under=0.5, over=0.4)
    assert stack_evs(4, 1) == DEFAULT_EVS
    assert stack_evs(2, 0.5) == (-2.0, -1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 2.0)
    with pytest.raises(ValueError):
        stack_evs(3, 2)
    assert LabelCriterion.from_dict(LabelCriterion().to_dict()) == LabelCriterion()
