"""The SITM network (Sec. 3): each equation against an independent computation, on tiny tensors."""

from __future__ import annotations

import copy
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sitm_trt import reference as ops
from sitm_trt.model import PRESETS, Preset, SITMNet, get_preset, load_weights, predict_hdr, read_preset, save_weights
from sitm_trt.model.blocks import CMAB, SwinBlock, remap, thumbnail
from sitm_trt.model.mefm import COEF_INIT
from sitm_trt.model.summary import count_costs, main as summary_main

# A tiny preset: every block present (CMAB at every level), 64-pixel thumbnail, a few thousand parameters.
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
    """The tensors here are tiny: one thread avoids OpenMP spin-waits on a busy machine (several times the
    CPU time on a loaded 2-core box)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_net(seed: int = 0, preset: Preset = TINY) -> SITMNet:
    torch.manual_seed(seed)
    return SITMNet(preset).eval()


def inputs(n: int = 1, h: int = 32, w: int = 48, seed: int = 1) -> ops.PreOutputs:
    g = torch.Generator().manual_seed(seed)
    return ops.pre(torch.rand(n, 3, h, w, generator=g))


def area_down(x: torch.Tensor, f: int) -> torch.Tensor:
    """Independent area downsample (block means by reshape)."""
    n, c, h, w = x.shape
    return x.reshape(n, c, h // f, f, w // f, f).mean(dim=(3, 5))


def block_max(x: torch.Tensor, f: int) -> torch.Tensor:
    n, c, h, w = x.shape
    return x.reshape(n, c, h // f, f, w // f, f).amax(dim=(3, 5))


# --- presets ------------------------------------------------------------------------------------------------


def test_presets_json_round_trip_and_validation():
    for name in ("paper", "compact", "fast"):
        p = get_preset(name)
        assert Preset.from_json(p.to_json()) == p
        assert Preset.from_dict(json.loads(p.to_json())) == p
        assert p.stride == 16 and p.levels == 5
    assert get_preset(TINY) is TINY
    with pytest.raises(ValueError, match="unknown preset"):
        get_preset("huge")
    with pytest.raises(ValueError, match="enc_convs"):
        Preset(name="bad", enc_convs=(2, 2))
    with pytest.raises(ValueError, match="unknown keys"):
        Preset.from_dict({"name": "x", "colour": 1})


def test_preset_costs_and_summary_command(capsys):
    rows = {r.subnet: r for r in count_costs("compact", 256, 256)}
    net = SITMNet("compact")
    assert rows["total"].params == sum(p.numel() for p in net.parameters())
    assert sum(rows[k].params for k in ("eab", "auem", "adem", "mefm")) == rows["total"].params
    assert rows["total"].params < 1_000_000  # trainable on CPU, a few MB of weights
    # the four sub-networks hold every counted FLOP
    assert sum(rows[k].gflops_per_frame for k in ("eab", "auem", "adem", "mefm")) == pytest.approx(
        rows["total"].gflops_per_frame, rel=1e-9
    )
    # a 3x3 conv of the MEFM local branch alone costs 2 * 9 * 9 * width FLOPs per pixel: a lower bound
    p = get_preset("compact")
    assert rows["mefm"].gflops_per_mp > 2 * 9 * 9 * p.mefm_width / 1e3
    paper = {r.subnet: r for r in count_costs("paper")}
    fast = {r.subnet: r for r in count_costs("fast")}
    assert fast["total"].gflops_per_mp < paper["total"].gflops_per_mp / 10
    assert fast["total"].gflops_per_mp < {r.subnet: r for r in count_costs("compact")}["total"].gflops_per_mp
    assert summary_main(["--preset", "fast", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert {r["subnet"] for r in out} == {"eab", "auem", "adem", "mefm", "total"}


# --- LGC (Sec. 3.2) -----------------------------------------------------------------------------------------


def test_lgc_uses_max_for_adem_and_one_minus_min_for_auem():
    net = make_net()
    x = inputs()
    seen: dict[tuple[str, str, int], torch.Tensor] = {}
    hooks = []
    for role in ("auem", "adem"):
        model = getattr(net, role)
        for k in range(model.levels):
            first_conv = model.enc[k][0][0]
            key_in, key_out = (role, "in", k), (role, "out", k)
            hooks.append(first_conv.register_forward_pre_hook(lambda m, a, key=key_in: seen.__setitem__(key, a[0])))
            hooks.append(model.cmab[k].register_forward_hook(lambda m, a, o, key=key_out: seen.__setitem__(key, o)))
    with torch.no_grad():
        net(*x)
    for h in hooks:
        h.remove()
    image = x.image
    l_down = image.amax(dim=1, keepdim=True)  # ADEM
    l_up = 1.0 - image.amin(dim=1, keepdim=True)  # AUEM
    assert torch.equal(seen[("adem", "in", 0)], image * l_down)
    assert torch.equal(seen[("auem", "in", 0)], image * l_up)
    for k in range(1, TINY.levels):
        for role, lum in (("adem", l_down), ("auem", l_up)):
            expected = block_max(seen[(role, "out", k - 1)], 2) * area_down(lum, 2**k)
            torch.testing.assert_close(seen[(role, "in", k)], expected, rtol=1e-5, atol=1e-6)
        # and the two guides really differ (the test would catch a swap)
        assert not torch.allclose(area_down(l_down, 2**k), area_down(l_up, 2**k))


# --- CMAB (Sec. 3.3, Eq. 1-3) -------------------------------------------------------------------------------


def _cmab_reference(m: CMAB, cur: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Eq. 1-3 written out with functional ops and the module's weights, in float64."""
    d = {k: v.double() for k, v in m.state_dict().items()}
    cur, ref = cur.double(), ref.double()
    f_cur = F.conv2d(cur, d["reduce_cur.weight"], d["reduce_cur.bias"])
    f_ref = F.conv2d(ref, d["reduce_ref.weight"], d["reduce_ref.bias"])
    cat = torch.cat([f_cur, f_ref], 1)
    m_cur = torch.sigmoid(F.conv2d(cat, d["att_cur.weight"], d["att_cur.bias"]))
    m_ref = torch.sigmoid(F.conv2d(cat, d["att_ref.weight"], d["att_ref.bias"]))
    x = torch.cat([m_cur * f_cur, m_ref * f_ref], 1)
    branches = []
    for i, dil in enumerate((1, 5, 9, 13)):
        y = F.conv2d(x, d[f"dilated.{i}.weight"], d[f"dilated.{i}.bias"], padding=dil, dilation=dil)
        branches.append(F.leaky_relu(y, 0.2))
    y = torch.cat(branches, 1)

    def mlp(v):
        h = F.leaky_relu(v @ d["ca.fc1.weight"].T + d["ca.fc1.bias"], 0.2)
        return h @ d["ca.fc2.weight"].T + d["ca.fc2.bias"]

    gate = torch.sigmoid(mlp(y.mean(dim=(2, 3))) + mlp(y.amax(dim=(2, 3))))
    y = y * gate[:, :, None, None]
    return F.conv2d(y, d["out.weight"], d["out.bias"]) + cur


def test_cmab_matches_equations_and_is_residual():
    torch.manual_seed(0)
    m = CMAB(channels=6, reduced=3, ca_reduction=2, slope=0.2).eval()
    cur, ref = torch.randn(2, 6, 20, 17), torch.randn(2, 6, 20, 17)
    with torch.no_grad():
        out = m(cur, ref)
        torch.testing.assert_close(out - cur, m.residual(cur, ref), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(out.double(), _cmab_reference(m, cur, ref), rtol=1e-5, atol=1e-5)
        # the reference feature matters (cross-model link), and the maps are in (0, 1)
        assert not torch.allclose(m(cur, ref + 1.0), out)
        _, _, m_cur, m_ref = m.attention(cur, ref)
        assert m_cur.shape == (2, 1, 20, 17) and 0 < m_cur.min() and m_ref.max() < 1


def test_cmab_links_the_encoders_level_by_level():
    """ADEM's CMAB at level k gets AUEM's same-level feature as reference, and the reverse."""
    net = make_net()
    seen = {}
    hooks = []
    for role in ("auem", "adem"):
        model = getattr(net, role)
        for k in range(model.levels):
            hooks.append(model.cmab[k].register_forward_hook(lambda m, a, o, key=(role, k): seen.__setitem__(key, a)))
    with torch.no_grad():
        net(*inputs())
    for h in hooks:
        h.remove()
    for k in range(TINY.levels):
        up_cur, up_ref = seen[("auem", k)]
        down_cur, down_ref = seen[("adem", k)]
        assert up_ref is down_cur and down_ref is up_cur


# --- EAB (Sec. 3.4, Eq. 4-6) and the progressive outputs (Eq. 11) ---------------------------------------------


def test_remap_sets_every_channel_mean_to_its_code():
    g = torch.Generator().manual_seed(0)
    feat = torch.randn(2, 5, 9, 7, generator=g) * 3 + 10
    code = torch.randn(2, 5, generator=g)
    out = remap(feat, code)
    torch.testing.assert_close(out.double().mean(dim=(2, 3)), code.double(), rtol=0, atol=1e-5)
    # the shape of each channel is kept: only the mean moves
    torch.testing.assert_close(out - out.mean(dim=(2, 3), keepdim=True), feat - feat.mean(dim=(2, 3), keepdim=True))


def test_decoder_features_are_remapped_and_images_progressive():
    """In the network: each decoder feature's channel means equal S_j (Eq. 6, with S_1 = f(cat(pool F_glo,
    pool F_enc)) and S_j = f(LReLU(S_{j-1})), Eq. 4-5), and I_gj = g(F_Dj) + up(I_g(j-1)) (Eq. 11)."""
    net = make_net()
    model = net.auem
    seen: dict = {}
    hooks = [model.codes.register_forward_hook(lambda m, a, o: seen.__setitem__("codes", (a, o)))]
    for k in range(model.levels):
        hook = model.to_rgb[k].register_forward_hook(lambda m, a, o, k=k: seen.__setitem__(("rgb", k), (a[0], o)))
        hooks.append(hook)
    with torch.no_grad():
        pyr_up, _ = net.forward_exposure(*inputs())
    for h in hooks:
        h.remove()
    (f_glo, f_enc), codes = seen["codes"]
    lin = model.codes.linears
    s = torch.cat([f_glo.mean(dim=(2, 3)), f_enc.mean(dim=(2, 3))], 1) @ lin[0].weight.T + lin[0].bias
    torch.testing.assert_close(codes[0], s, rtol=1e-5, atol=1e-6)
    for j in range(1, len(codes)):
        s = F.leaky_relu(s, 0.2) @ lin[j].weight.T + lin[j].bias
        torch.testing.assert_close(codes[j], s, rtol=1e-5, atol=1e-6)
    n = model.levels
    assert len(pyr_up) == n
    torch.testing.assert_close(pyr_up[0], seen[("rgb", n - 1)][1])
    for j, k in enumerate(reversed(range(n - 1)), start=1):
        feat, residual = seen[("rgb", k)]
        torch.testing.assert_close(feat.mean(dim=(2, 3)), codes[j - 1], rtol=1e-4, atol=1e-5)
        up = F.interpolate(pyr_up[j - 1], scale_factor=2, mode="bilinear", align_corners=False)
        torch.testing.assert_close(pyr_up[j], up + residual)
        assert pyr_up[j].shape[-1] == 2 * pyr_up[j - 1].shape[-1]


def test_thumbnail_has_fixed_size_and_keeps_constants():
    for h, w in ((16, 48), (100, 37), (300, 520)):
        x = torch.full((1, 3, h, w), 0.25)
        t = thumbnail(x, 64)
        assert t.shape == (1, 3, 64, 64)
        torch.testing.assert_close(t, torch.full_like(t, 0.25))


def test_shifted_window_attention_masks_tokens_from_other_regions():
    """SW-MSA: after the cyclic shift, tokens that share a window but not a region must not interact."""
    torch.manual_seed(0)
    blk = SwinBlock(dim=8, heads=2, window=8, grid=16, shift=4, mlp_ratio=2.0).eval()
    x = torch.randn(1, 16, 16, 8)
    x2 = x.clone()
    x2[0, 0, 0] += 3.0 * torch.randn(8)  # rolled to (12, 12): bottom-right window, region "rows 0-3 / cols 0-3"
    with torch.no_grad():
        y, y2 = blk(x), blk(x2)
    assert torch.equal(y[0, 15, 15], y2[0, 15, 15])  # same window, other region: untouched
    assert not torch.allclose(y[0, 1, 1], y2[0, 1, 1])  # same region: attends to it
    plain = SwinBlock(dim=8, heads=2, window=8, grid=16, shift=0, mlp_ratio=2.0).eval()
    plain.load_state_dict(blk.state_dict())
    with torch.no_grad():  # without the shift, (0, 0) and (7, 7) share a window
        assert not torch.allclose(plain(x)[0, 7, 7], plain(x2)[0, 7, 7])
        assert torch.equal(plain(x)[0, 8, 8], plain(x2)[0, 8, 8])


# --- MEFM (Sec. 3.5, Eq. 7-8) and the whole network ---------------------------------------------------------


def test_hdr_is_fuse_and_curve_of_the_networks_own_masks_and_coefficients():
    net = make_net()
    frame = torch.rand(2, 3, 21, 35, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        hdr = predict_hdr(net, frame)
        pre = ops.pre(frame, stride=net.stride)
        out = net(*pre)
    m, i, u, d = (t.double().numpy() for t in (out.masks, pre.image, out.image_up, out.image_down))
    fused = m[:, 0:1] * u + m[:, 1:2] * i + m[:, 2:3] * d
    a = out.coef.double().numpy()[:, :, None, None, None]
    expected = a[:, 3] * fused**3 + a[:, 2] * fused**2 + a[:, 1] * fused + a[:, 0]
    assert hdr.shape == (2, 3, 21, 35)
    np.testing.assert_allclose(hdr.double().numpy(), expected[..., :21, :35], rtol=1e-5, atol=1e-6)
    # masks: positive, sum to 1; coefficients >= 0 and near their documented start
    torch.testing.assert_close(out.masks.sum(dim=1), torch.ones_like(out.masks[:, 0]))
    assert out.masks.min() > 0 and out.coef.min() >= 0
    torch.testing.assert_close(out.coef, torch.tensor([COEF_INIT] * 2), rtol=0.1, atol=0.01)


def test_hdr_is_nonnegative_and_monotone_in_the_fused_value():
    net = make_net(seed=5)
    with torch.no_grad():
        out = net(*inputs(n=2))
    x = torch.linspace(0, 1, 257).view(1, 1, 1, -1).expand(2, 3, 1, -1)
    h = ops.curve(x, out.coef)
    assert h.min() >= 0
    assert (h.diff(dim=-1) >= 0).all()
    assert out.image_up.min() >= 0 and out.image_up.max() <= 1 and out.image_down.min() >= 0


def test_outputs_shapes_and_train_pyramids():
    net = make_net()
    x = inputs(n=2, h=32, w=64)
    out = net.forward_train(*x)
    assert out.image_up.shape == out.image_down.shape == out.masks.shape == (2, 3, 32, 64)
    assert out.coef.shape == (2, 4) and out.coef.dtype == torch.float32
    for pyr in (out.pyramid_up, out.pyramid_down):
        assert [p.shape[-2:] for p in pyr] == [(2, 4), (4, 8), (8, 16), (16, 32), (32, 64)]
    torch.testing.assert_close(out.image_up, out.pyramid_up[-1].clamp(0, 1))
    inference = net(*x)
    assert inference._fields == ("image_up", "image_down", "masks", "coef")
    torch.testing.assert_close(inference.masks, out.masks)


def test_gradients_reach_every_parameter():
    net = make_net().train()
    out = net.forward_train(*inputs(n=2))
    loss = sum(p.square().mean() for p in out.pyramid_up + out.pyramid_down)
    loss = loss + out.masks[:, 0].mean() + out.coef.square().sum()
    loss.backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, f"no gradient for {missing}"
    stage1 = {id(p) for p in net.exposure_parameters()}
    assert stage1.isdisjoint(id(p) for p in net.fusion_parameters())
    assert len(stage1) + len(list(net.fusion_parameters())) == len(list(net.parameters()))


def test_eval_is_deterministic_and_batch_independent():
    net = make_net()
    x = inputs(n=2)
    with torch.no_grad():
        a, b = net(*x), net(*x)
        single = net(*(t[1:2] for t in x))
    for ta, tb, ts in zip(a, b, single):
        assert torch.equal(ta, tb)
        torch.testing.assert_close(ta[1:2], ts, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("size", [(1, 1), (17, 31), (33, 16), (50, 23)])
def test_odd_sizes_round_trip(size):
    net = make_net()
    frame = torch.rand(1, 3, *size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        hdr = predict_hdr(net, frame)
    assert hdr.shape == (1, 3, *size) and torch.isfinite(hdr).all()
    # uint8 HWC frames take the same path
    u8 = (frame[0].permute(1, 2, 0) * 255).round().to(torch.uint8)
    with torch.no_grad():
        assert predict_hdr(net, u8).shape == (1, 3, *size)


def test_rejects_sizes_that_are_not_stride_multiples():
    net = make_net()
    x = inputs(h=32, w=40)
    with pytest.raises(ValueError, match="multiples of stride 16"):
        net(*x)
    x = inputs()
    with pytest.raises(ValueError, match="guide"):
        net(x.image, x.image_down, x.image_up, x.guide[:, :1])


def test_float16_model_tracks_float32():
    """The FP32 islands (means, LayerNorm, softmax) keep a float16 model within FP16 rounding of float32."""
    net = make_net(seed=2, preset=TINY)
    x = inputs(n=1, h=64, w=48)
    with torch.no_grad():
        ref = net(*x)
        half = net.half()(*(t.half() for t in x))
    assert [t.dtype for t in half] == [torch.float16] * 3 + [torch.float32]
    for r, h in zip(ref, half):
        torch.testing.assert_close(h.float(), r, rtol=1e-2, atol=5e-3)


# --- weights ----------------------------------------------------------------------------------------------


def test_weights_round_trip(tmp_path):
    net = make_net(seed=4)
    path = tmp_path / "w.safetensors"
    save_weights(net, path, metadata={"recipe": "unit-test"})
    assert read_preset(path) == TINY
    loaded = load_weights(path)
    assert not loaded.training and loaded.preset == TINY
    x = inputs()
    with torch.no_grad():
        for a, b in zip(net(*x), loaded(*x)):
            assert torch.equal(a, b)
    with open(path, "rb") as f:  # safetensors: an 8-byte header length then JSON, no pickle
        header_len = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(header_len))
    assert header["__metadata__"]["recipe"] == "unit-test"
    assert Preset.from_json(header["__metadata__"]["sitm_trt.preset"]) == TINY
    # the same weights give the same bytes, in any process (safetensors' own header order varies per process)
    meta = {f"k{i}": str(i) for i in range(12)}
    blobs = set()
    for i in range(3):
        save_weights(net, tmp_path / f"same{i}.safetensors", metadata=meta)
        blobs.add((tmp_path / f"same{i}.safetensors").read_bytes())
    code = ("import sys, torch; from sitm_trt.model import load_weights, save_weights; "
            "save_weights(load_weights(sys.argv[1]), sys.argv[2], metadata={f'k{i}': str(i) for i in range(12)})")
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "same0.safetensors"), str(tmp_path / "other.safetensors")],
                   check=True, timeout=120)
    blobs.add((tmp_path / "other.safetensors").read_bytes())
    assert len(blobs) == 1
    n = int.from_bytes(next(iter(blobs))[:8], "little")
    keys = list(json.loads(next(iter(blobs))[8 : 8 + n])["__metadata__"])
    assert keys == sorted(keys)
    half = tmp_path / "h.safetensors"
    save_weights(net, half, dtype=torch.float16)
    assert half.stat().st_size < path.stat().st_size
    with pytest.raises(ValueError, match="reserved"):
        save_weights(net, path, metadata={"sitm_trt.preset": "x"})


def test_shipped_presets_build():
    for name in PRESETS:
        with torch.device("meta"):
            net = SITMNet(name)
        assert net.stride == 16


# --- the whole-frame state (tiles, video) -----------------------------------------------------------------


def test_global_state_shapes_are_per_image_and_independent_of_size():
    net = make_net()
    with torch.no_grad():
        a = net.global_state(*inputs(n=2, h=32, w=48))
        b = net.global_state(*inputs(n=2, h=64, w=16, seed=7))
    for x, y in zip(a.values().values(), b.values().values()):
        for s, t in zip(x if isinstance(x, list) else [x], y if isinstance(y, list) else [y]):
            assert s.shape == t.shape and s.shape[0] == 2
    assert a.f_glo.shape == (2, TINY.eab_dim, 16, 16)
    widths = [TINY.widths[k] for k in reversed(range(TINY.levels - 1))]  # decoder levels, coarsest first
    for codes, means in ((a.codes_up, a.means_up), (a.codes_down, a.means_down)):
        assert [c.shape[1] for c in codes] == widths and [m.shape[1] for m in means] == widths
        assert all(c.dtype == torch.float32 for c in codes + means)
    assert [g.shape[1] for g in a.gates_up] == [4 * max(4, w // 4) for w in TINY.widths]  # the CA of cat(F_di)
    assert a.mefm_g.shape == (2, TINY.mefm_width) and a.coef.shape == (2, 4)
    # levels without a CMAB have no gate
    p = get_preset("compact")
    with torch.device("meta"):
        compact = SITMNet(p)
        s = compact.global_state(*(torch.empty(1, c, 32, 32) for c in (3, 3, 3, 2)))
    assert [g is None for g in s.gates_up] == [not c for c in p.cmab_levels]


def test_global_state_fields_are_the_whole_frame_quantities():
    """Each field against an independent computation from the features the network computed."""
    net = make_net(seed=3)
    x = inputs(n=2, h=48, w=64, seed=4)
    seen: dict = {}
    hooks = [
        net.eab.register_forward_hook(lambda m, a, o: seen.__setitem__("f_glo", o)),
        net.auem.codes.register_forward_hook(lambda m, a, o: seen.__setitem__("codes", o)),
        net.mefm.glob.register_forward_hook(lambda m, a, o: seen.__setitem__("glob", o)),
    ]
    for k in range(TINY.levels):
        ca = net.adem.cmab[k].ca
        hooks.append(ca.register_forward_hook(lambda m, a, o, k=k: seen.__setitem__(("d", k), a[0])))
    for k in range(TINY.levels - 1):
        hooks.append(net.auem.dec[k].register_forward_hook(lambda m, a, o, k=k: seen.__setitem__(("dec", k), o)))
    with torch.no_grad():
        state = net.global_state(*x)
        out = net(*x)
    for h in hooks:
        h.remove()
    assert torch.equal(state.f_glo, seen["f_glo"])
    for c, s in zip(state.codes_up, seen["codes"]):
        assert torch.equal(c, s)
    for k in range(TINY.levels):  # CBAM gate: sigmoid(MLP(avg) + MLP(max)), in float64
        d, ca = seen[("d", k)].double(), net.adem.cmab[k].ca

        def mlp(v, ca=ca):
            h = F.leaky_relu(v @ ca.fc1.weight.double().T + ca.fc1.bias.double(), 0.2)
            return h @ ca.fc2.weight.double().T + ca.fc2.bias.double()

        ref = torch.sigmoid(mlp(d.mean(dim=(2, 3))) + mlp(d.amax(dim=(2, 3))))
        torch.testing.assert_close(state.gates_down[k].double(), ref, rtol=1e-5, atol=1e-6)
    for k in range(TINY.levels - 1):  # mu_j: channel means of the decoder feature before the remap
        j = TINY.levels - 2 - k
        torch.testing.assert_close(state.means_up[j].double(), seen[("dec", k)].double().mean(dim=(2, 3)))
    g = seen["glob"].double().mean(dim=(2, 3)) @ net.mefm.glob_fc.weight.double().T + net.mefm.glob_fc.bias.double()
    torch.testing.assert_close(state.mefm_g.double(), F.leaky_relu(g, 0.2), rtol=1e-5, atol=1e-6)
    assert torch.equal(state.coef, out.coef)


def test_forward_state_with_the_frames_own_state_is_forward_exactly():
    net = make_net(seed=1)
    for n, h, w in ((1, 32, 48), (2, 64, 32)):
        x = inputs(n=n, h=h, w=w, seed=h)
        with torch.no_grad():
            ref = net(*x)
            state = net.global_state(*x)
            out = net.forward_state(*x, state)
            whole = net.forward_state(*x, state, region=(0, 0, h, w))
        for a, b, c in zip(out, ref, whole):
            assert torch.equal(a, b) and torch.equal(c, b)
    half = copy.deepcopy(net).half()  # float16 model: the float32 state fields stay float32
    xh = [t.half() for t in x]
    with torch.no_grad():
        for a, b in zip(half.forward_state(*xh, half.global_state(*xh)), half(*xh)):
            assert torch.equal(a, b)


def test_forward_state_uses_the_given_state():
    net = make_net(seed=2)
    x, y = inputs(n=1, seed=1), inputs(n=1, seed=2)
    with torch.no_grad():
        sx, sy = net.global_state(*x), net.global_state(*y)
        own = net(*x)
        other = net.forward_state(*x, sy)
        # Eq. 6 uses only S_j - mu_j: shifting both by the same vector changes nothing
        shift = tuple(c + 0.5 for c in sx.codes_up), tuple(m + 0.5 for m in sx.means_up)
        shifted = net.forward_state(*x, sx._replace(codes_up=shift[0], means_up=shift[1]))
        # a larger code S_j shifts the channel means of the decoder feature after the remap
        bumped = net.forward_state(*x, sx._replace(codes_up=tuple(c + 0.5 for c in sx.codes_up)))
    assert torch.equal(other.coef, sy.coef) and not torch.equal(other.image_up, own.image_up)
    for a, b in zip(shifted, own):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(bumped.image_up, own.image_up)
    torch.testing.assert_close(bumped.image_down, own.image_down)  # ADEM has its own codes
    with pytest.raises(KeyError, match="mefm_g"):
        from sitm_trt.model.state import StatSource

        values = sx.values()
        del values["mefm_g"]
        net._run(*x, StatSource(values, strict=True))


def test_region_crops_the_whole_frames_gffb_map():
    from sitm_trt.model.state import StatSource

    f_glo = torch.randn(1, 8, 16, 16, generator=torch.Generator().manual_seed(0))
    full = F.interpolate(f_glo, size=(6, 10), mode="bilinear", align_corners=False)
    crop = StatSource(region=(32, 48, 96, 160)).glo_map(f_glo, (2, 4), 16)
    assert torch.equal(crop, full[:, :, 2:4, 3:7])
    with pytest.raises(ValueError, match="multiples of the stride 16"):
        StatSource(region=(8, 0, 96, 160)).glo_map(f_glo, (2, 4), 16)
    with pytest.raises(ValueError, match="does not fit"):
        StatSource(region=(64, 0, 96, 160)).glo_map(f_glo, (4, 4), 16)


def test_state_lerp_smooths_field_by_field():
    net = make_net()
    with torch.no_grad():
        a, b = net.global_state(*inputs(seed=1)), net.global_state(*inputs(seed=2))
    mid = a.lerp(b, 0.25)
    for x, y, m in zip(a.values().values(), b.values().values(), mid.values().values()):
        for s, t, u in zip(*(v if isinstance(v, list) else [v] for v in (x, y, m))):
            torch.testing.assert_close(u, s + 0.25 * (t - s))
    assert all(torch.equal(s, t) for s, t in zip(a.lerp(b, 0.0).coef, a.coef))
    assert mid.coef.min() >= 0 and all(0 < g.min() and g.max() < 1 for g in mid.gates_up)
    back = type(a).from_values(a.values(), TINY.levels)
    assert all(torch.equal(s, t) for s, t in zip(back.values()["coef"], a.coef))
    with pytest.raises(ValueError, match=r"weight must be in \[0, 1\]"):
        a.lerp(b, 1.5)
    with torch.device("meta"):
        c = SITMNet("compact").global_state(*(torch.empty(1, k, 32, 32) for k in (3, 3, 3, 2)))
    with pytest.raises(ValueError, match="different presets|shapes differ"):
        a.to("meta").lerp(c, 0.5)
