"""HDR signal encoding: sitm_trt.media.transfer against colour-science and hand values from the standards, and the
post kernel's encoding (PQ, HLG, BT.2020, code values, 4:2:0, light statistics) against sitm_trt.media.transfer."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from sitm_trt import kernels as K
from sitm_trt.media import transfer as T

from conftest import cpu_and_cuda


def _colour():
    """colour-science, imported by the tests that compare with it: the GPU machine runs this module's gpu tests
    (the kernels against sitm_trt.media.transfer) without it (docs/gpu.md: no room to carry its wheel)."""
    with warnings.catch_warnings():  # colour warns at import about optional packages (SciPy, Matplotlib)
        warnings.simplefilter("ignore")
        colour = pytest.importorskip("colour")
        import colour.models  # noqa: F401
    return colour


GAMUT_NAMES = {"bt709": "ITU-R BT.709", "bt2020": "ITU-R BT.2020"}


def quiet():
    """colour evaluates both branches of its np.where: silence the log/power warnings of the unused one."""
    return np.errstate(divide="ignore", invalid="ignore")


# ---------------------------------------------------------------------------------------------------------
# The reference against colour-science and the standards
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("src,dst", [("bt709", "bt2020"), ("bt2020", "bt709"), ("bt709", "bt709")])
def test_gamut_matrix_matches_colour(src, dst):
    colour = _colour()
    want = colour.matrix_RGB_to_RGB(GAMUT_NAMES[src], GAMUT_NAMES[dst], chromatic_adaptation_transform=None)
    np.testing.assert_allclose(T.gamut_matrix(src, dst), want, atol=1e-9)
    np.testing.assert_allclose(T.gamut_matrix(src, dst).sum(axis=1), 1.0, atol=1e-12)  # white stays white


@pytest.mark.parametrize("gamut", ["bt709", "bt2020"])
def test_luma_coefficients_are_the_y_row_rounded(gamut):
    colour = _colour()
    y_row = T.rgb_to_xyz_matrix(gamut)[1]
    np.testing.assert_allclose(T.luma_coefficients(gamut), y_row, atol=5e-5)
    want = colour.RGB_COLOURSPACES[GAMUT_NAMES[gamut]].matrix_RGB_to_XYZ
    np.testing.assert_allclose(T.rgb_to_xyz_matrix(gamut), want, atol=1e-6)
    kr, _, kb = T.luma_coefficients(gamut)
    np.testing.assert_allclose([kr, kb], colour.WEIGHTS_YCBCR[GAMUT_NAMES[gamut]], atol=0)


def test_pq_matches_colour_and_st2084():
    colour = _colour()
    nits = np.concatenate([[0.0], np.geomspace(1e-4, 10000, 200)])
    sig = np.linspace(0, 1, 101)
    with quiet():
        want_sig, want_nits = colour.models.eotf_inverse_ST2084(nits), colour.models.eotf_ST2084(sig)
    np.testing.assert_allclose(T.pq_inverse_eotf(nits), want_sig, atol=1e-12)
    np.testing.assert_allclose(T.pq_eotf(sig), want_nits, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(T.pq_eotf(T.pq_inverse_eotf(nits)), nits, rtol=1e-9, atol=1e-12)
    # ST 2084 / BT.2408 hand values: 10000 cd/m2 is 1.0, 100 cd/m2 is 0.508, 203 cd/m2 is 58 %.
    assert T.pq_inverse_eotf(10000.0) == pytest.approx(1.0, abs=1e-12)
    assert T.pq_inverse_eotf(100.0) == pytest.approx(0.5081, abs=1e-4)
    assert T.pq_inverse_eotf(203.0) == pytest.approx(0.58, abs=0.005)


@pytest.mark.parametrize("peak", [400.0, 1000.0, 2000.0])
def test_hlg_matches_colour(peak):
    colour = _colour()
    e = np.linspace(0, 1, 257)
    with quiet():
        np.testing.assert_allclose(T.hlg_oetf(e), colour.models.oetf_BT2100_HLG(e), atol=1e-12)
    np.testing.assert_allclose(T.hlg_inverse_oetf(T.hlg_oetf(e)), e, atol=1e-12)
    assert T.hlg_system_gamma(peak) == pytest.approx(1.2 + 0.42 * np.log10(peak / 1000))
    rng = np.random.default_rng(int(peak))
    display = rng.random((500, 3)) ** 3 * peak  # display light in cd/m2, mostly dark, within [0, peak]
    with quiet():
        want = colour.models.eotf_inverse_BT2100_HLG(display, L_B=0, L_W=peak)
    # A saturated colour near the peak has scene light above 1 (outside what HLG can carry): clipped to 1.
    assert (want > 1).any()
    np.testing.assert_allclose(T.hlg_oetf(T.hlg_inverse_ootf(display, peak)), np.minimum(want, 1.0), atol=1e-9)
    scene = T.hlg_inverse_ootf(display, peak)
    with quiet():
        want = colour.models.ootf_BT2100_HLG(scene, L_B=0, L_W=peak)
    np.testing.assert_allclose(T.hlg_ootf(scene, peak), want, rtol=1e-9, atol=1e-9)


def test_bt2408_reference_white():
    """BT.2408: 203 cd/m2 is PQ 58 % and, on a 1000 cd/m2 HLG display, HLG 75 %."""
    white = np.ones((1, 3))  # linear 1.0 = the reference white
    assert T.encode(white, "hlg", "bt2020", 203.0, 1000.0)[0, 0] == pytest.approx(0.75, abs=1e-3)
    assert T.encode(white, "pq", "bt2020", 203.0, 1000.0)[0, 0] == pytest.approx(0.58, abs=0.005)


@pytest.mark.parametrize("gamut", ["bt709", "bt2020"])
@pytest.mark.parametrize("legal", [True, False])
@pytest.mark.parametrize("bits", [10, 12])
def test_ycbcr_codes_match_colour(gamut, legal, bits):
    colour = _colour()
    rgb = np.random.default_rng(bits).random((1000, 3))
    code_range = "limited" if legal else "full"
    ycc = T.rgb_to_ycbcr(rgb, gamut)
    got = np.stack([T.quantize(ycc[:, 0], code_range, bits), T.quantize(ycc[:, 1], code_range, bits, chroma=True),
                    T.quantize(ycc[:, 2], code_range, bits, chroma=True)], axis=-1)
    want = colour.RGB_to_YCbCr(rgb, K=colour.WEIGHTS_YCBCR[GAMUT_NAMES[gamut]], in_bits=bits, out_bits=bits,
                               out_legal=legal, out_int=True)
    np.testing.assert_array_equal(got, want)  # no exact .5 ties in random data: round-half-up == half-even
    np.testing.assert_allclose(T.ycbcr_to_rgb(ycc, gamut), rgb, atol=1e-12)
    if legal and bits == 10:  # BT.2100 narrow range: black 64, white 940, chroma 64..960
        assert T.quantize(np.array([0.0, 1.0]), "limited", 10).tolist() == [64, 940]
        assert T.quantize(np.array([-0.5, 0.0, 0.5]), "limited", 10, chroma=True).tolist() == [64, 512, 960]


@pytest.mark.parametrize("transfer", ["pq", "hlg", "linear"])
@pytest.mark.parametrize("gamut", ["bt709", "bt2020"])
def test_encode_decode_round_trip(transfer, gamut):
    rgb = np.random.default_rng(5).random((300, 3)) * (1000 / 203)  # up to the peak
    for ref_white, peak in [(203.0, 1000.0), (100.0, 600.0)]:
        x = np.minimum(rgb, peak / ref_white * 0.999)
        if gamut == "bt2020":  # keep the BT.2020 values under the peak too
            x = x / max(1.0, (x @ T.gamut_matrix("bt709", "bt2020").T).max() * ref_white / peak * 1.001)
        back = T.decode(T.encode(x, transfer, gamut, ref_white, peak), transfer, gamut, ref_white, peak)
        keep = np.ones(len(x), bool)
        if transfer == "hlg":  # saturated colours near the peak need scene light > 1: HLG clips those
            f = T.display_light(x, gamut, ref_white, peak)
            gam = T.hlg_system_gamma(peak)
            y = f @ np.array(T.luma_coefficients(gamut))
            keep = (f / peak * ((y / peak) ** ((1 - gam) / gam))[:, None]).max(axis=1) < 1
            assert keep.mean() > 0.5
        np.testing.assert_allclose(back[keep], x[keep], rtol=1e-7, atol=1e-9)


def test_split_yuv420p_layout():
    flat = np.arange(T.yuv420p_size(5, 3))
    y, cb, cr = T.split_yuv420p(flat, 5, 3)
    assert y.shape == (5, 3) and cb.shape == (3, 2) and cr.shape == (3, 2)
    assert y[0, 0] == 0 and cb[0, 0] == 15 and cr[0, 0] == 21 and cr[-1, -1] == flat[-1]
    with pytest.raises(ValueError, match="has 27 values"):
        T.split_yuv420p(flat[:-1], 5, 3)


def test_yuv420p_chroma_siting_by_hand():
    """Left siting: chroma j uses columns 2j-1, 2j, 2j+1 weighted 1, 2, 1 (clamped), rows 2i and 2i+1."""
    sig = np.zeros((2, 4, 3))
    sig[:, :, 2] = [[0.0, 0.8, 0.4, 0.0], [0.0, 0.0, 0.4, 0.4]]  # B' only, so Cb = B' (1 - Kb) / (2 (1 - Kb))
    _, cb, _ = T.split_yuv420p(T.yuv420p(sig, "bt2020", "full", 10), 2, 4)
    kb = T.luma_coefficients("bt2020")[2]
    # j = 0: columns 0, 0, 1 -> (0 + 0 + 0.8 + 0 + 0 + 0) / 8
    # j = 1: columns 1, 2, 3 -> (0.8 + 0.8 + 0 + 0 + 0.8 + 0.4) / 8
    b_avg = np.array([0.8 / 8, 2.8 / 8])
    want = np.floor((b_avg - kb * b_avg) / (2 * (1 - kb)) * 1023 + 512 + 0.5)
    np.testing.assert_array_equal(cb[0], want)


# ---------------------------------------------------------------------------------------------------------
# The post kernel's encoding against the reference
# ---------------------------------------------------------------------------------------------------------


def network_outputs(n, hp, wp, dtype, seed, device, per_channel=False, bright=4.0):
    """Padded network outputs whose HDR result spans black to beyond the peak, with a few NaN pixels."""
    g = torch.Generator().manual_seed(seed)
    masks = torch.softmax(torch.randn(n, 3, hp, wp, generator=g) * 2, dim=1)
    image = torch.rand(n, 3, hp, wp, generator=g)
    up = (image * (1 + torch.rand(n, 3, hp, wp, generator=g) * bright)).clamp_max(bright)
    down = image * torch.rand(n, 3, hp, wp, generator=g)
    coef = torch.rand(n, 3, 4, generator=g) * 0.5 if per_channel else torch.rand(n, 4, generator=g) * 0.5
    if hp * wp > 4:
        image[0, 1, 0, 1] = float("nan")  # a NaN network output must give code values, not garbage
    ft = {"float32": torch.float32, "float16": torch.float16}[dtype]
    return tuple(t.to(ft).to(device) for t in (masks, image, up, down)) + (coef.to(device),)


def linear_result(outs, h, w):
    """The kernel's own linear HDR (N, h, w, 3) in float64: the input of the encoding stage."""
    return K.post(*outs, height=h, width=w, layout="nhwc").double().cpu().numpy()


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("transfer", ["pq", "hlg", "linear"])
@pytest.mark.parametrize("gamut", ["bt709", "bt2020"])
@pytest.mark.parametrize("in_dtype,layout,per_channel", [("float32", "nhwc", False), ("float16", "nchw", True)])
def test_post_encoding_matches_reference(device, transfer, gamut, in_dtype, layout, per_channel):
    n, hp, wp, h, w = 2, 16, 24, 13, 21
    outs = network_outputs(n, hp, wp, in_dtype, 11, device, per_channel)
    lin = linear_result(outs, h, w)
    for ref_white, peak in [(203.0, 1000.0), (100.0, 4000.0)]:
        stats = torch.full((n, 2), -1.0, device=device)
        got = K.post(*outs, height=h, width=w, layout=layout, transfer=transfer, gamut=gamut, ref_white=ref_white,
                     peak_nits=peak, stats=stats)
        got = got.double().cpu().numpy()
        if layout == "nchw":
            got = got.transpose(0, 2, 3, 1)
        want = T.encode(lin, transfer, gamut, ref_white, peak)
        if transfer == "linear":  # NaN stays NaN, like the plain post
            np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
        else:
            assert np.isfinite(got).all() and got.min() >= 0 and got.max() <= 1
            # float32 powf against float64: PQ's exponent 78.8 amplifies the rounding of its base
            np.testing.assert_allclose(got, want, atol=2e-5)
        for i in range(n):
            mx, mean = T.light_stats(lin[i], transfer, gamut, ref_white, peak)
            np.testing.assert_allclose(stats[i].cpu().numpy(), [mx, mean], rtol=2e-5)


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("transfer", ["pq", "hlg"])
@pytest.mark.parametrize("code_range,bits", [("limited", 10), ("full", 10), ("limited", 12)])
def test_post_code_values_match_reference(device, transfer, code_range, bits):
    n, hp, wp, h, w = 1, 32, 32, 29, 31
    outs = network_outputs(n, hp, wp, "float32", 3, device)
    lin = linear_result(outs, h, w)
    got = K.post(*outs, height=h, width=w, layout="nhwc", dtype="uint16", transfer=transfer, gamut="bt2020",
                 code_range=code_range, bits=bits)
    assert got.dtype == torch.uint16 and got.shape == (n, h, w, 3)
    want = T.quantize(T.encode(lin, transfer, "bt2020"), code_range, bits)
    diff = np.abs(got.cpu().numpy().astype(np.int64) - want)
    assert diff.max() <= 1 and (diff == 0).mean() > 0.99  # float32 vs float64 at rounding boundaries only


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("h,w", [(1, 1), (2, 2), (7, 5), (12, 16), (9, 32)])
@pytest.mark.parametrize("transfer,code_range", [("pq", "limited"), ("hlg", "full")])
def test_post_yuv420p_matches_reference(device, h, w, transfer, code_range):
    n = 2
    outs = network_outputs(n, -(-h // 8) * 8, -(-w // 8) * 8, "float16", h * 100 + w, device)
    lin = linear_result(outs, h, w)
    stats = torch.zeros(n, 2, device=device)
    got = K.post(*outs, height=h, width=w, layout="yuv420p", dtype="uint16", transfer=transfer, gamut="bt2020",
                 code_range=code_range, stats=stats)
    assert got.dtype == torch.uint16 and got.shape == (n, T.yuv420p_size(h, w))
    for i in range(n):
        sig = T.encode(lin[i], transfer, "bt2020")
        want = T.yuv420p(sig, "bt2020", code_range)
        diff = np.abs(got[i].cpu().numpy().astype(np.int64) - want)
        assert diff.max() <= 1 and (diff == 0).mean() > 0.98
        np.testing.assert_allclose(stats[i].cpu().numpy(), T.light_stats(lin[i], transfer), rtol=2e-5)


def test_post_defaults_are_unchanged_and_stats_do_not_change_the_output():
    outs = network_outputs(2, 8, 16, "float32", 1, "cpu")
    plain = K.post(*outs, height=7, width=13)
    stats = torch.zeros(2, 2)
    same = K.post(*outs, height=7, width=13, transfer="linear", gamut="bt709", stats=stats)
    torch.testing.assert_close(same, plain, rtol=0, atol=0, equal_nan=True)
    lin = plain.double().numpy().transpose(0, 2, 3, 1)
    np.testing.assert_allclose(stats.numpy(), [T.light_stats(x, "linear", "bt709") for x in lin], rtol=1e-6)


def test_post_black_and_white_code_values():
    """Hand values: black is code 64 in narrow range; reference white (1.0) is HLG 0.75 -> luma
    round(876 * 0.75 + 64) = 721 on a 1000 cd/m2 display; a white of 10000 cd/m2 clips at the peak."""
    h = w = 2
    masks = torch.zeros(1, 3, h, w)
    masks[:, 1] = 1  # I_fuse = I
    image = torch.zeros(1, 3, h, w)
    image[..., 0, :] = 1.0  # top row white, bottom row black
    coef = torch.tensor([[0.0, 1.0, 0.0, 0.0]])  # H = I
    y = K.post(masks, image, image, image, coef, layout="yuv420p", dtype="uint16", transfer="hlg", gamut="bt2020")
    luma, cb, cr = T.split_yuv420p(y[0].numpy(), h, w)
    assert luma.tolist() == [[round(876 * 0.749877 + 64)] * 2, [64, 64]]
    assert cb.tolist() == [[512]] and cr.tolist() == [[512]]  # grey has no chroma
    pq = K.post(masks, image * 1000, image, image, coef, layout="nhwc", dtype="uint16", transfer="pq")
    assert pq[0, 0, 0].tolist() == [round(876 * T.pq_inverse_eotf(1000.0) + 64)] * 3  # clipped to the 1000 peak


@pytest.mark.parametrize("kwargs, match", [
    (dict(dtype="uint16"), r"post: dtype uint16 \(integer code values\) needs transfer 'pq' or 'hlg'"),
    (dict(layout="yuv420p", transfer="pq"), r"layout 'yuv420p' needs dtype uint16"),
    (dict(transfer="gamma"), r"transfer must be one of \('linear', 'pq', 'hlg'\)"),
    (dict(gamut="p3"), r"gamut must be one of \('bt709', 'bt2020'\)"),
    (dict(transfer="pq", peak_nits=20000), r"peak must be in \(0, 10000\]"),
    (dict(transfer="pq", ref_white=0), r"ref_white must be a positive number"),
    (dict(transfer="pq", dtype="uint16", bits=20), r"bits must be 8..16"),
    (dict(transfer="pq", dtype="uint16", code_range="tv"), r"code_range must be 'limited' or 'full'"),
    (dict(stats=torch.zeros(2, 2)), r"post: stats must be float32 \(1, 2\).*got float32 \(2, 2\)"),
    (dict(stats=torch.zeros(1, 2, dtype=torch.float16)), r"stats must be float32"),
    (dict(transfer="pq", dtype="uint16", out=torch.zeros(1, 3, 4, 4)), r"out must be uint16 \(1, 3, 4, 4\)"),
])
def test_post_encoding_errors(kwargs, match):
    outs = network_outputs(1, 4, 4, "float32", 0, "cpu")
    with pytest.raises(ValueError, match=match):
        K.post(*outs, **kwargs)


def test_post_encoding_empty_inputs():
    outs = network_outputs(1, 0, 4, "float32", 0, "cpu")
    stats = torch.full((1, 2), 7.0)
    y = K.post(*outs, layout="yuv420p", dtype="uint16", transfer="pq", stats=stats)
    assert y.shape == (1, 0) and stats.tolist() == [[0.0, 0.0]]


@pytest.mark.parametrize("peak", [1000.0, 10000.0])
def test_hlg_keeps_a_subnormal_light_black(peak):
    """A linear light so small that y / peak rounds to 0 in float32 (a subnormal channel next to zeros): the
    kernel made it peak white (code 940) through powf(0, negative) = inf; the float64 reference says black."""
    from sitm_trt import kernels as K

    z = np.zeros((1, 3, 1, 1), np.float32)
    for light in ([0, 0, 1e-44], [1e-43, 0, 0], [1e-42, 1e-42, 1e-42]):
        coef = np.zeros((1, 3, 4), np.float32)
        coef[0, :, 0] = light  # the paper fusion's a0: the pixel's linear value
        got = np.asarray(K.post(z, z, z, z, coef, layout="nhwc", dtype="uint16", transfer="hlg", peak_nits=peak))
        want = T.quantize(T.encode(np.array([light], np.float64), "hlg", "bt2020", peak=peak))
        np.testing.assert_array_equal(got.reshape(-1), np.asarray(want).reshape(-1))
        assert got.max() == 64  # narrow-range black
