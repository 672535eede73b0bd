"""Tiled inference (sitm_trt.runtime.tiling): tiles that share the whole frame's state reproduce whole-frame inference."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import cpu_and_cuda

from sitm_trt import reference as ops
from sitm_trt.runtime import tiling
from sitm_trt.model import Preset, SITMNet, predict_hdr
from sitm_trt.model.blocks import thumbnail
from sitm_trt.model.state import GlobalState
from sitm_trt.tools.tiling_probe import naive_tiles

# Every block present (a CMAB at every level, so every fine level has a whole-frame gate), 64-pixel thumbnail.
TINY = Preset(
    name="tiny",
    widths=(4, 4, 8, 8, 8),
    enc_convs=(1, 1, 1, 1, 2),
    dec_convs=(1, 1, 1, 2),
    eab_dim=8,
    eab_heads=2,
    eab_window=8,
    mefm_width=4,
    mefm_local=1,
    mefm_dilated=1,
    thumb_size=64,
)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """These tensors are tiny: one thread avoids OpenMP spin-waits on a busy machine (10-30x the CPU time)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def net() -> SITMNet:
    torch.manual_seed(0)
    return SITMNet(TINY).eval()


def make_frame(n: int = 2, h: int = 150, w: int = 203, seed: int = 3) -> torch.Tensor:
    """A float NCHW frame with some spatial structure (a blurred noise field)."""
    x = torch.rand(n, 3, h, w, generator=torch.Generator().manual_seed(seed))
    return F.avg_pool2d(x, 5, 1, 2, count_include_pad=False)


def full_frame(net: SITMNet, frame) -> torch.Tensor:
    with torch.inference_mode():
        return predict_hdr(net, frame)


def state_error(a: GlobalState, b: GlobalState) -> float:
    va, vb = a.values(), b.values()
    assert va.keys() == vb.keys()
    flat = lambda v: torch.cat([t.flatten().float() for t in (v if isinstance(v, list) else [v])])  # noqa: E731
    return max((flat(va[k]) - flat(vb[k])).abs().max().item() for k in va)


# --- the state API against forward ------------------------------------------------------------------------------


@pytest.mark.parametrize("preset", [TINY, "compact"])
def test_state_from_the_full_frame_reproduces_forward_exactly(preset):
    torch.manual_seed(1)
    model = SITMNet(preset).eval()
    pre = ops.pre(make_frame(2, 37, 50), stride=16)
    with torch.inference_mode():
        ref = model(*pre)
        state = model.global_state(*pre)
        out = model.forward_state(*pre, state)
    for a, b in zip(out, ref):
        assert torch.equal(a, b)


def test_a_tile_as_large_as_the_frame_is_the_full_frame_result(net):
    frame = make_frame(2, 70, 90)
    ref = full_frame(net, frame)
    for tile in (96, 512):  # the padded frame is 80x96: one window either way
        info = {}
        out, state = tiling.infer_tiled(net, frame, tile=tile, overlap=16, return_state=True, info=info)
        assert info["tiles"] == 1 and torch.equal(out, ref)
        with torch.inference_mode():
            assert state_error(state, net.global_state(*ops.pre(frame, stride=16))) == 0.0


# --- tiles against the full frame ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tile", "overlap", "coarse_level", "tol"),
    [
        (64, 16, None, 1e-5),  # level 0 tiled (its CMAB: dilation 13 px), levels 1-4 whole-frame; measured 9e-7
        (96, 32, 2, 1e-5),  # levels 0-1 tiled: two gates, two decoder means per model; measured 1.3e-6
    ],
)
def test_tiled_matches_the_full_frame(net, tile, overlap, coarse_level, tol):
    frame = make_frame()
    ref = full_frame(net, frame)
    info = {}
    out, state = tiling.infer_tiled(
        net, frame, tile=tile, overlap=overlap, coarse_level=coarse_level, return_state=True, info=info
    )
    assert info["tiles"] > 4
    err = (out - ref).abs()
    assert err.max() < tol, err.max()
    with torch.inference_mode():
        assert state_error(state, net.global_state(*ops.pre(frame, stride=16))) < 1e-5
    # the fine statistics were gathered in passes, one per dependent group
    level = coarse_level or tiling.default_coarse_level(TINY)
    gates = [[f"gate.up.{k}", f"gate.down.{k}"] for k in range(level)]
    means = [[f"mean.up.{j}", f"mean.down.{j}"] for j in range(TINY.levels - 1 - level, TINY.levels - 1)]
    assert info["statistics"] == gates + means + [["mefm_g"]]
    assert info["passes"] == len(info["statistics"]) + 2
    # the same tiles, each with its own state (plain forward per tile), are off by orders of magnitude more
    naive = torch.from_numpy(naive_tiles(net, frame, tile, overlap))
    assert (naive - ref).abs().max() > 100 * err.max()


def test_network_tiled_cores_cover_the_padded_frame_with_the_whole_networks_outputs(net):
    """network_tiled (the video frame loop's entry) hands each padded-frame pixel to ``write`` exactly once,
    with the whole network's masks, exposure images and pre-kernel image, and the frame's own coefficients."""
    frame = make_frame(1, 150, 203)
    pre = ops.pre(frame, stride=16)
    with torch.inference_mode():
        ref = net(*pre)
    got = {k: torch.full_like(v, float("nan")) for k, v in
           (("masks", ref.masks), ("image", pre.image), ("up", ref.image_up), ("down", ref.image_down))}
    hits = torch.zeros(pre.image.shape[-2:], dtype=torch.int64)
    coefs = []

    def write(top, left, masks, image, up, down, coef):
        h, w = masks.shape[-2:]
        for key, v in zip(got, (masks, image, up, down)):
            got[key][:, :, top : top + h, left : left + w] = v
        hits[top : top + h, left : left + w] += 1
        coefs.append(coef.clone())

    info = {}
    state = tiling.network_tiled(net, frame, write, tile=64, overlap=16, info=info)
    assert info["tiles"] > 4 and len(coefs) == info["tiles"]
    assert bool((hits == 1).all())  # the cores tile the padded frame once
    assert torch.equal(got["image"], pre.image)
    for key, want in (("masks", ref.masks), ("up", ref.image_up), ("down", ref.image_down)):
        assert (got[key] - want).abs().max() < 1e-5, key
    for c in coefs:
        torch.testing.assert_close(c, state.coef, rtol=0, atol=0)
    torch.testing.assert_close(state.coef, ref.coef, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="empty"):
        tiling.network_tiled(net, torch.zeros(1, 3, 0, 5), write, tile=64)


def test_error_comes_from_context_not_from_the_state(net):
    """Without context (overlap 0) tiles differ near their borders, but a gathered state stays close."""
    frame = make_frame(1)
    ref = full_frame(net, frame)
    out = tiling.infer_tiled(net, frame, tile=64, overlap=0)
    assert (out - ref).abs().max() > 1e-3
    good = tiling.infer_tiled(net, frame, tile=64, overlap=16)
    assert (good - ref).abs().max() < 1e-5


def test_global_state_tiled_matches_the_whole_frame_state(net):
    frame = make_frame(1, 130, 170)
    info = {}
    state = tiling.global_state_tiled(net, frame, tile=64, overlap=16, info=info)
    with torch.inference_mode():
        ref = net.global_state(*ops.pre(frame, stride=16))
    assert state_error(state, ref) < 1e-5
    assert info["passes"] == len(info["statistics"]) + 1  # all but the final pass


@pytest.mark.parametrize("size", [(1, 1), (17, 31), (33, 16), (97, 131), (130, 45)])
def test_odd_sizes(net, size):
    frame = make_frame(1, *size, seed=sum(size))
    ref = full_frame(net, frame)
    out = tiling.infer_tiled(net, frame, tile=48, overlap=16)
    assert out.shape == (1, 3, *size)
    assert (out - ref).abs().max() < 1e-5


def test_state_injection(net):
    """A given state replaces the frame's own: its coefficients are used as they are, and the whole frame's
    state reproduces the tiled result of the frame's own state."""
    frame = make_frame(1, 120, 140)
    with torch.inference_mode():
        state = net.global_state(*ops.pre(frame, stride=16))
    own = tiling.infer_tiled(net, frame, tile=64, overlap=16)
    injected = tiling.infer_tiled(net, frame, tile=64, overlap=16, state=state)
    assert (own - injected).abs().max() < 1e-5
    # identity curve: H' = I_fuse, so H = curve(H') with the state's own coefficients
    linear = state._replace(coef=torch.tensor([[0.0, 1.0, 0.0, 0.0]]))
    fused = tiling.infer_tiled(net, frame, tile=64, overlap=16, state=linear)
    torch.testing.assert_close(ops.curve(fused, state.coef), injected, rtol=1e-5, atol=1e-6)
    # another frame's state: the tiles follow it as the whole frame does (forward_state)
    pre = ops.pre(frame, stride=16)
    with torch.inference_mode():
        other = net.global_state(*ops.pre(1.0 - frame, stride=16))
        res = net.forward_state(*pre, other)
        full_other = ops.post(res.masks, pre.image, res.image_up, res.image_down, res.coef, 120, 140)
    tiled_other = tiling.infer_tiled(net, frame, tile=64, overlap=16, state=other)
    err = (tiled_other - full_other).abs().max()
    assert err < 1e-5
    assert (tiled_other - own).abs().max() > 100 * err
    # smoothing: a state halfway between the two is a valid state, and lerp's end points are the states
    half = state.lerp(other, 0.5)
    assert state_error(state.lerp(other, 0.0), state) == 0.0 and state_error(state.lerp(other, 1.0), other) == 0.0
    out = tiling.infer_tiled(net, frame, tile=64, overlap=16, state=half)
    assert torch.isfinite(out).all() and out.min() >= 0


# --- inputs and outputs -------------------------------------------------------------------------------------


def test_uint8_hwc_numpy_and_float_torch_give_the_same_result(net):
    g = torch.Generator().manual_seed(5)
    u8 = torch.randint(0, 256, (90, 110, 3), dtype=torch.uint8, generator=g)
    as_float = (u8.permute(2, 0, 1)[None].float() / 255.0).contiguous()
    ref = full_frame(net, as_float)
    a = tiling.infer_tiled(net, u8.numpy(), tile=64, overlap=16)
    assert isinstance(a, np.ndarray) and a.shape == (1, 3, 90, 110) and a.dtype == np.float32
    b = tiling.infer_tiled(net, as_float, tile=64, overlap=16)
    assert isinstance(b, torch.Tensor)
    np.testing.assert_allclose(a, b.numpy(), rtol=0, atol=1e-6)
    assert np.abs(a - ref.numpy()).max() < 1e-5
    hwc = tiling.infer_tiled(net, u8.numpy(), tile=64, overlap=16, layout="hwc")
    assert hwc.shape == (90, 110, 3)
    np.testing.assert_array_equal(hwc, a[0].transpose(1, 2, 0))
    half = tiling.infer_tiled(net, u8, tile=64, overlap=16, dtype="float16")
    assert half.dtype == torch.float16
    torch.testing.assert_close(half.float(), b, rtol=1e-3, atol=1e-3)
    out = np.zeros((1, 3, 90, 110), np.float32)
    assert tiling.infer_tiled(net, u8.numpy(), tile=64, overlap=16, out=out) is out
    np.testing.assert_array_equal(out, a)
    u16 = (u8.to(torch.int32) * 257).to(torch.uint16)  # the same image at 16 bits
    np.testing.assert_allclose(tiling.infer_tiled(net, u16, tile=64, overlap=16).numpy(), a, rtol=0, atol=1e-5)


def test_batched_hwc_and_strided_inputs(net):
    frame = make_frame(2, 80, 100)
    ref = full_frame(net, frame)
    nhwc = (frame.permute(0, 2, 3, 1) * 255).round().to(torch.uint8)
    out = tiling.infer_tiled(net, nhwc, tile=64, overlap=16)
    assert out.shape == (2, 3, 80, 100)
    strided = frame.numpy()[:, :, ::-1, :]  # negative strides: copied once
    flipped = tiling.infer_tiled(net, strided.copy(), tile=64, overlap=16)
    np.testing.assert_allclose(tiling.infer_tiled(net, strided, tile=64, overlap=16), flipped, rtol=0, atol=0)
    assert (tiling.infer_tiled(net, frame, tile=64, overlap=16) - ref).abs().max() < 1e-5


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_runs_where_the_frame_is(net, device):
    frame = make_frame(1, 70, 100).to(device)
    out = tiling.infer_tiled(net, frame, tile=64, overlap=16)
    assert out.device == frame.device
    assert (out.cpu() - full_frame(net, frame.cpu())).abs().max() < 1e-4
    assert next(net.parameters()).device.type == "cpu"  # the caller's module did not move


def test_weights_file_and_handle(tmp_path, net):
    from sitm_trt.model import save_weights
    from sitm_trt.weights import load

    path = tmp_path / "tiny.safetensors"
    save_weights(net, path)
    frame = make_frame(1, 70, 90)
    ref = tiling.infer_tiled(net, frame, tile=48, overlap=16)
    assert torch.equal(tiling.infer_tiled(str(path), frame, tile=48, overlap=16), ref)
    assert torch.equal(tiling.infer_tiled(load(path), frame, tile=48, overlap=16), ref)


# --- geometry and thumbnails ---------------------------------------------------------------------------------


def test_tile_grid_partitions_the_frame():
    for h, w in ((16, 16), (48, 800), (1024, 768), (3072, 4096), (272, 336)):
        for tile, overlap in ((64, 16), (256, 32), (512, 32), (512, 0), (96, 32)):
            grid = tiling.tile_grid(h, w, tile=tile, overlap=overlap)
            cover = torch.zeros(h, w, dtype=torch.int32)
            for t in grid:
                assert 0 <= t.top and t.top + t.height <= h and 0 <= t.left and t.left + t.width <= w
                assert t.height == min(tile, h) and t.width == min(tile, w)
                assert all(v % 16 == 0 for v in (t.top, t.left, t.core_top, t.core_left, t.core_height, t.core_width))
                assert t.top <= t.core_top and t.core_top + t.core_height <= t.top + t.height
                # context on every side that faces another tile
                if t.core_top > 0:
                    assert t.core_top - t.top >= overlap
                if t.core_top + t.core_height < h:
                    assert t.top + t.height - t.core_top - t.core_height >= overlap
                if t.core_left > 0:
                    assert t.core_left - t.left >= overlap
                if t.core_left + t.core_width < w:
                    assert t.left + t.width - t.core_left - t.core_width >= overlap
                cover[t.core_top : t.core_top + t.core_height, t.core_left : t.core_left + t.core_width] += 1
            assert bool((cover == 1).all())


def test_frame_thumbnail_is_the_thumbnail_of_the_padded_frame():
    for h, w, size in ((150, 203, 64), (37, 50, 64), (700, 1000, 256), (16, 16, 64)):
        frame = torch.rand(2, 3, h, w, generator=torch.Generator().manual_seed(h))
        ref = thumbnail(ops.pre(frame, stride=16).image, size)
        torch.testing.assert_close(tiling.frame_thumbnail(frame, size), ref, rtol=0, atol=1e-6)
        u8 = (frame[0].permute(1, 2, 0) * 255).round().to(torch.uint8)
        ref8 = thumbnail(ops.pre(u8, stride=16).image, size)
        torch.testing.assert_close(tiling.frame_thumbnail(u8.numpy(), size), ref8, rtol=0, atol=1e-6)


def test_default_coarse_level_and_overlap():
    from sitm_trt.model import get_preset

    presets = [get_preset(p) for p in ("compact", "fast", "paper")]
    assert [tiling.default_coarse_level(p) for p in presets] == [2, 2, 4]  # at most one value per pixel
    assert [tiling.default_coarse_level(p, 512) for p in presets] == [2, 2, 2]  # context <= tile / 4
    assert [tiling.default_overlap(p, 2) for p in presets] == [48, 16, 64]
    assert tiling.default_coarse_level(TINY) == 1 and tiling.context_radius(TINY, 1) == 18
    # more whole-frame levels, less context; every radius is covered by its default overlap
    for p in presets + [TINY]:
        radii = [tiling.context_radius(p, level) for level in range(1, p.levels)]
        assert radii == sorted(radii) and all(r <= tiling.default_overlap(p, i + 1) for i, r in enumerate(radii))


def test_default_overlap_reaches_float_rounding(net):
    frame = make_frame(1, 130, 200)
    info = {}
    out = tiling.infer_tiled(net, frame, tile=96, info=info)
    assert info["overlap"] == 32 and info["coarse_level"] == 1 and info["tiles"] > 4
    assert (out - full_frame(net, frame)).abs().max() < 1e-6
    with pytest.raises(ValueError, match="tile 64 is too small for the 32-pixel context"):
        tiling.infer_tiled(net, frame, tile=64)


# --- errors -----------------------------------------------------------------------------------------------------


def test_bad_arguments_are_reported(net):
    frame = make_frame(1, 40, 40)
    cases = [
        (dict(tile=100), ValueError, "tile must be a positive multiple of the network stride 16"),
        (dict(tile=0), ValueError, "tile must be a positive multiple"),
        (dict(overlap=8), ValueError, "overlap must be a non-negative multiple"),
        (dict(overlap=-16), ValueError, "overlap must be a non-negative multiple"),
        (dict(tile=64, overlap=32), ValueError, r"tile \(64\) must exceed 2 \* overlap \(64\)"),
        (dict(tile=64.0), TypeError, "tile must be an int"),
        (dict(coarse_level=0), ValueError, r"coarse_level must be an int in \[1, 4\]"),
        (dict(coarse_level=5), ValueError, "coarse_level"),
        (dict(layout="chw"), ValueError, "layout must be 'nchw' or 'hwc'"),
        (dict(dtype="float64"), ValueError, "dtype must be 'float32' or 'float16'"),
        (dict(state="x"), TypeError, "state must be a GlobalState"),
        (dict(out=torch.zeros(1, 3, 40, 41)), ValueError, r"out must be float32 \(1, 3, 40, 40\)"),
        # out= must hold the dtype asked for, as the untiled path requires (it wrote float16 for dtype="float32")
        (dict(out=torch.zeros(1, 3, 40, 40, dtype=torch.float16)), ValueError, r"out must be float32 \(1, 3, 40, 40\)"),
        (dict(out=torch.zeros(1, 3, 40, 40), dtype="float16"), ValueError, r"out must be float16 \(1, 3, 40, 40\)"),
    ]
    for kwargs, exc, msg in cases:
        args = {"tile": 32, "overlap": 0, **kwargs}
        with pytest.raises(exc, match=msg):
            tiling.infer_tiled(net, frame, **args)
    for bad, msg in (
        (torch.rand(1, 4, 40, 40), r"float32/float16 \(N, 3, H, W\) or uint8/uint16"),
        (torch.rand(1, 3, 40, 40, dtype=torch.float64), r"got float64"),  # refused untiled too (the pre kernel)
        (torch.zeros(40, 40, 3, dtype=torch.int32), "got int32"),
        (torch.rand(40, 40, 3), r"got float32 \(40, 40, 3\)"),
    ):
        with pytest.raises(ValueError, match=msg):
            tiling.infer_tiled(net, bad, tile=32, overlap=0)
    with pytest.raises(TypeError, match="frame must be a torch.Tensor"):
        tiling.infer_tiled(net, [[0.5]], tile=32, overlap=0)
    # A tensor that requires grad is read as inference input (detached), tiled or not
    want = tiling.infer_tiled(net, frame, tile=32, overlap=0)
    assert torch.equal(tiling.infer_tiled(net, frame.clone().requires_grad_(), tile=32, overlap=0), want)
    with pytest.raises(TypeError, match="net_or_weights must be an SITMNet"):
        tiling.infer_tiled(42, frame)
    with torch.inference_mode():
        state = net.global_state(*ops.pre(make_frame(2, 32, 32), stride=16))
    with pytest.raises(ValueError, match="the state is for 2 images, the frame has 1"):
        tiling.infer_tiled(net, frame, tile=32, overlap=0, state=state)
