"""The C++/CUDA kernels against the PyTorch reference (sitm_trt.reference) and hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from sitm_trt import kernels as K
from sitm_trt import reference as ops

from conftest import cpu_and_cuda

FLOATS = {"float32": torch.float32, "float16": torch.float16}


def sym_rel_err(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Symmetric relative error |a - b| / max(|a|, |b|), 0 where both are 0 (HDR values span decades)."""
    a, b = a.double(), b.double()
    den = torch.maximum(a.abs(), b.abs())
    return torch.where(den > 0, (a - b).abs() / den.clamp_min(1e-300), torch.zeros_like(den))


def random_frame(kind: str, n: int, h: int, w: int, gen: torch.Generator, device: str = "cpu") -> torch.Tensor:
    """A frame as a decoder or a pipeline gives it; float frames include values outside [0, 1] and NaN."""
    if kind == "uint8":
        f = torch.randint(0, 256, (n, h, w, 3), generator=gen, dtype=torch.uint8)
    elif kind == "uint16":
        f = torch.randint(0, 65536, (n, h, w, 3), generator=gen, dtype=torch.int32).to(torch.uint16)
    else:
        f = torch.rand(n, 3, h, w, generator=gen) * 1.4 - 0.2  # some values below 0 and above 1
        if f.numel():
            f.view(-1)[0] = 0.0
            f.view(-1)[-1] = 1.0
        if f.numel() > 4:
            f.view(-1)[2] = float("nan")
        f = f.to(FLOATS[kind])
    return f.to(device)


# ---------------------------------------------------------------------------------------------------------
# pre
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("kind", ["float32", "float16", "uint8", "uint16"])
@pytest.mark.parametrize("out_dtype", ["float32", "float16"])
@pytest.mark.parametrize("n,h,w,stride", [(1, 1, 1, 1), (1, 1, 1, 16), (2, 5, 7, 4), (1, 17, 33, 16), (3, 3, 2, 16),
                                          (1, 32, 16, 16)])
def test_pre_matches_reference(device, kind, out_dtype, n, h, w, stride):
    gen = torch.Generator().manual_seed(n * 1000 + h * 10 + w)
    frame = random_frame(kind, n, h, w, gen, device)
    got = K.pre(frame, stride=stride, dtype=out_dtype)
    want = ops.pre(frame, stride=stride, dtype=FLOATS[out_dtype])
    hp, wp = -(-h // stride) * stride, -(-w // stride) * stride
    for name, g, r in zip(want._fields, got, want):
        assert g.device.type == device and g.dtype == FLOATS[out_dtype], name
        assert g.shape == (n, 2 if name == "guide" else 3, hp, wp), name
        # Same float32 operations in the same order, then one rounding to the output type: bit-exact.
        torch.testing.assert_close(g, r, rtol=0, atol=0, msg=name)


def test_pre_hand_computed_pixel():
    frame = np.array([[[255, 51, 0]]], dtype=np.uint8)  # one pixel: R=1, G=0.2, B=0
    out = K.pre(frame)
    r, g, b = 1.0, 51 / 255, 0.0
    np.testing.assert_allclose(out.image[0, :, 0, 0], [r, g, b], rtol=1e-7)
    np.testing.assert_allclose(out.guide[0, :, 0, 0], [1.0, 1.0], rtol=1e-7)  # max = 1, 1 - min = 1
    np.testing.assert_allclose(out.image_down[0, :, 0, 0], [r, g, b], rtol=1e-7)
    np.testing.assert_allclose(out.image_up[0, :, 0, 0], [r, g, b], rtol=1e-7)
    frame = np.array([[[128, 64, 32]]], dtype=np.uint8)
    out = K.pre(frame)
    mx, mn = 128 / 255, 32 / 255
    np.testing.assert_allclose(out.guide[0, :, 0, 0], [mx, 1 - mn], rtol=1e-6)
    np.testing.assert_allclose(out.image_down[0, :, 0, 0], np.array([128, 64, 32]) / 255 * mx, rtol=1e-6)
    np.testing.assert_allclose(out.image_up[0, :, 0, 0], np.array([128, 64, 32]) / 255 * (1 - mn), rtol=1e-6)


def test_pre_reflect_padding_matches_torch_pad():
    """Where torch can pad (pad < size), our reflect equals F.pad(mode='reflect') at the bottom/right."""
    x = torch.rand(2, 3, 13, 10)
    got = K.pre(x, stride=8).image
    torch.testing.assert_close(got, F.pad(x, (0, 6, 0, 3), mode="reflect"), rtol=0, atol=0)


def test_pre_wide_pad_keeps_reflecting():
    x = torch.tensor([0.0, 0.5, 1.0]).view(1, 1, 1, 3).expand(1, 3, 1, 3).contiguous()
    got = K.pre(x, stride=16).image[0, 0, 0]
    # period 2 * (3 - 1) = 4: 0, .5, 1, .5, 0, .5, 1, .5, ...
    want = torch.tensor([0.0, 0.5, 1.0, 0.5] * 4)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    one = torch.full((1, 3, 1, 1), 0.25)
    assert torch.all(K.pre(one, stride=16).image == 0.25)  # size 1: the only pixel repeats


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 3), h=st.integers(1, 40), w=st.integers(1, 40), stride=st.sampled_from([1, 2, 8, 16, 32]),
       kind=st.sampled_from(["float32", "uint8"]), seed=st.integers(0, 2**16))
def test_pre_property(n, h, w, stride, kind, seed):
    frame = random_frame(kind, n, h, w, torch.Generator().manual_seed(seed))
    got = K.pre(frame, stride=stride)
    want = ops.pre(frame, stride=stride)
    for g, r in zip(got, want):
        torch.testing.assert_close(g, r, rtol=0, atol=0)
    # Properties of the equations themselves: guides in [0, 1], I*L <= I.
    assert got.guide.min() >= 0 and got.guide.max() <= 1
    assert torch.all(got.image_down <= got.image) and torch.all(got.image_up <= got.image)


def test_pre_numpy_and_torch_agree():
    f = np.random.default_rng(0).integers(0, 65536, size=(2, 9, 11, 3), dtype=np.uint16)
    a = K.pre(f, stride=8)
    b = K.pre(torch.from_numpy(f), stride=8)
    assert isinstance(a.image, np.ndarray) and isinstance(b.image, torch.Tensor)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y.numpy())


def test_pre_hwc_single_frame_equals_batch_of_one():
    f = np.random.default_rng(1).integers(0, 256, size=(6, 5, 3), dtype=np.uint8)
    a = K.pre(f, stride=4)
    b = K.pre(f[None], stride=4)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


# ---------------------------------------------------------------------------------------------------------
# fuse, curve, post
# ---------------------------------------------------------------------------------------------------------


def network_outputs(n, h, w, dtype, gen, device="cpu", per_channel=False):
    masks = torch.softmax(torch.randn(n, 3, h, w, generator=gen) * 2, dim=1)
    images = [torch.rand(n, 3, h, w, generator=gen) for _ in range(3)]
    images[0].view(-1)[:1] = 1.0  # values at 0, 1 and a saturated exposure-up image beyond 1
    images[1].view(-1)[:1] = 0.0
    images[1] *= 1.5
    shape = (n, 3, 4) if per_channel else (n, 4)
    # Coefficients spanning decades, as a trained curve does: HDR from ~1e-3 to ~1e4.
    coef = torch.randn(shape, generator=gen) * 10.0 ** torch.randint(-3, 4, shape, generator=gen)
    ts = [t.to(FLOATS[dtype]).to(device) for t in (masks, *images)]
    return (*ts, coef.to(FLOATS[dtype]).to(device))


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("in_dtype", ["float32", "float16"])
@pytest.mark.parametrize("out_dtype", ["float32", "float16"])
@pytest.mark.parametrize("n,h,w", [(1, 1, 1), (2, 7, 5), (1, 16, 33)])
def test_fuse_matches_reference(device, in_dtype, out_dtype, n, h, w):
    masks, image, up, down, _ = network_outputs(n, h, w, in_dtype, torch.Generator().manual_seed(h * w), device)
    got = K.fuse(masks, image, up, down, dtype=out_dtype)
    want = ops.fuse(*(t.float() for t in (masks, image, up, down))).to(FLOATS[out_dtype])
    assert got.dtype == FLOATS[out_dtype] and got.device.type == device
    tol = 1e-6 if out_dtype == "float32" else 1e-3
    torch.testing.assert_close(got, want, rtol=tol, atol=tol)


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("in_dtype", ["float32", "float16"])
@pytest.mark.parametrize("per_channel", [False, True])
def test_curve_matches_reference(device, in_dtype, per_channel):
    gen = torch.Generator().manual_seed(3)
    _, x, _, _, coef = network_outputs(2, 9, 13, in_dtype, gen, device, per_channel)
    got = K.curve(x, coef)
    want = ops.curve(x.double(), coef.double())
    err = sym_rel_err(got, want)
    # float32 evaluation of a cubic: a few ulp relative to the largest term; compare where |H| is not tiny
    # next to the terms that cancelled.
    scale = sum((coef.double().abs()[..., i].reshape(2, -1, 1, 1)) for i in range(4))
    assert ((got.double() - want).abs() <= 1e-6 * scale + 1e-30).all()
    assert err[want.abs() > 1e-3 * scale].max() < 1e-3


def test_curve_hand_computed():
    x = np.array([0.0, 0.5, 1.0, 2.0], dtype=np.float32).reshape(1, 1, 1, 4).repeat(3, axis=1)
    coef = np.array([[1.0, 2.0, 3.0, 4.0]], dtype=np.float32)  # H = 1 + 2x + 3x^2 + 4x^3
    np.testing.assert_allclose(K.curve(np.ascontiguousarray(x), coef)[0, 0, 0], [1.0, 3.25, 10.0, 49.0], rtol=1e-7)
    per = np.array([[[0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1]]], dtype=np.float32)  # x, 1, x^3 per channel
    got = K.curve(np.ascontiguousarray(x), per)[0, :, 0]
    np.testing.assert_allclose(got, [[0, 0.5, 1, 2], [1, 1, 1, 1], [0, 0.125, 1, 8]], rtol=1e-7)


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("in_dtype", ["float32", "float16"])
@pytest.mark.parametrize("out_dtype", ["float32", "float16"])
@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
@pytest.mark.parametrize("per_channel", [False, True])
def test_post_matches_reference(device, in_dtype, out_dtype, layout, per_channel):
    gen = torch.Generator().manual_seed(7)
    n, hp, wp, h, w = 2, 16, 32, 13, 29
    masks, image, up, down, coef = network_outputs(n, hp, wp, in_dtype, gen, device, per_channel)
    got = K.post(masks, image, up, down, coef, height=h, width=w, layout=layout, dtype=out_dtype)
    want = ops.post(masks, image, up, down, coef, h, w, layout=layout, dtype=torch.float64)
    assert got.shape == want.shape and got.dtype == FLOATS[out_dtype] and got.is_contiguous()
    # The fused pass must equal fuse then curve (the reference) up to float32 / float16 rounding.
    fused = ops.fuse(*(t.double() for t in (masks, image, up, down)))[..., :h, :w]
    a = coef.double().abs()
    a = a[:, None, None, None, :] if a.dim() == 2 else a[:, :, None, None, :]
    bound = (a[..., 0] + a[..., 1] * fused.abs() + a[..., 2] * fused**2 + a[..., 3] * fused.abs() ** 3)
    if layout == "nhwc":
        bound = bound.permute(0, 2, 3, 1)
    eps = 2e-6 if out_dtype == "float32" else 1e-3
    assert ((got.double() - want).abs() <= eps * bound + 1e-6).all()


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 2), h=st.integers(1, 24), w=st.integers(1, 24), stride=st.sampled_from([1, 4, 16]),
       seed=st.integers(0, 2**16))
def test_pre_then_post_crops_back(n, h, w, stride, seed):
    """Round trip: a frame padded by pre and cropped by post keeps its size; identity masks and curve
    (M_mid = 1, H = x) give the normalized frame back exactly."""
    frame = random_frame("uint8", n, h, w, torch.Generator().manual_seed(seed))
    p = K.pre(frame, stride=stride)
    masks = torch.zeros_like(p.image)
    masks[:, 1] = 1.0
    coef = torch.tensor([[0.0, 1.0, 0.0, 0.0]]).repeat(n, 1)
    hdr = K.post(masks, p.image, p.image_up, p.image_down, coef, height=h, width=w, layout="nhwc")
    torch.testing.assert_close(hdr, frame.float() / 255, rtol=0, atol=0)


def test_post_default_is_uncropped():
    masks, image, up, down, coef = network_outputs(1, 8, 8, "float32", torch.Generator().manual_seed(0))
    assert K.post(masks, image, up, down, coef).shape == (1, 3, 8, 8)


# ---------------------------------------------------------------------------------------------------------
# float16 conversions of the CPU twin (software, round to nearest even) against NumPy
# ---------------------------------------------------------------------------------------------------------


def test_half_to_float_is_exact_for_every_finite_half():
    bits = np.arange(65536, dtype=np.uint16).view(np.float16)
    bits = bits[np.isfinite(bits)]
    x = np.ascontiguousarray(np.resize(bits, (3, 1, bits.size // 3 + 1)).reshape(1, 3, 1, -1))
    coef = np.array([[0.0, 1.0, 0.0, 0.0]], dtype=np.float32)  # identity curve
    got = K.curve(x, coef, dtype="float32")
    np.testing.assert_array_equal(got, x.astype(np.float32))


def test_float_to_half_rounds_like_numpy():
    rng = np.random.default_rng(0)
    vals = np.concatenate([
        rng.standard_normal(20000) * 10.0 ** rng.integers(-9, 6, 20000),  # normals, subnormals, overflow
        np.array([65504, 65519.99, 65520, 65536, 1e9, 6.1e-5, 5.96e-8, 2.98e-8, 2.99e-8, 0.0]),
        # ties: halfway between two halfs in the normal and subnormal range
        (np.arange(1024, 1100) + 0.5) * 2.0**-10, (np.arange(0, 64) + 0.5) * 2.0**-24,
    ]).astype(np.float32)
    vals = np.resize(vals, 3 * (vals.size // 3 + 1)).reshape(1, 3, 1, -1)
    coef = np.array([[0.0, 1.0, 0.0, 0.0]], dtype=np.float32)
    got = K.curve(np.ascontiguousarray(vals), coef, dtype="float16")  # x + a0 turns -0.0 into +0.0: none here
    with np.errstate(over="ignore"):
        want = vals.astype(np.float16)
    np.testing.assert_array_equal(got.view(np.uint16), want.view(np.uint16))


# ---------------------------------------------------------------------------------------------------------
# out=, empty inputs, threads, errors
# ---------------------------------------------------------------------------------------------------------


def test_out_is_written_in_place():
    masks, image, up, down, coef = network_outputs(1, 8, 8, "float32", torch.Generator().manual_seed(0))
    out = torch.empty(1, 5, 7, 3)
    res = K.post(masks, image, up, down, coef, height=5, width=7, layout="nhwc", out=out)
    assert res is out
    torch.testing.assert_close(out, K.post(masks, image, up, down, coef, height=5, width=7, layout="nhwc"))
    frame = torch.rand(1, 3, 5, 7)
    outs = tuple(torch.empty(1, c, 8, 8) for c in (3, 3, 3, 2))
    ptrs = [o.data_ptr() for o in outs]
    res = K.pre(frame, stride=8, out=outs)
    assert [o.data_ptr() for o in res] == ptrs
    for g, r in zip(res, ops.pre(frame, stride=8)):
        torch.testing.assert_close(g, r)


def test_out_errors():
    masks, image, up, down, coef = network_outputs(1, 8, 8, "float32", torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match=r"post: out must be float32 \(1, 3, 8, 8\), got float32 \(1, 3, 8, 7\)"):
        K.post(masks, image, up, down, coef, out=torch.empty(1, 3, 8, 7))
    with pytest.raises(ValueError, match=r"post: out must be float16"):
        K.post(masks, image, up, down, coef, dtype="float16", out=torch.empty(1, 3, 8, 8))
    ro = np.empty((1, 3, 8, 8), np.float32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        K.post(masks.numpy(), image.numpy(), up.numpy(), down.numpy(), coef.numpy(), out=ro)
    with pytest.raises(ValueError, match="tuple of 4"):
        K.pre(torch.rand(1, 3, 4, 4), out=(torch.empty(1, 3, 4, 4),))


@pytest.mark.parametrize("shape", [(0, 3, 4, 4), (2, 3, 0, 5), (2, 3, 5, 0)])
def test_empty_inputs(shape):
    x = torch.rand(shape)
    p = K.pre(x, stride=4)
    assert p.image.shape == (shape[0], 3, -(-shape[2] // 4) * 4, -(-shape[3] // 4) * 4)
    coef = torch.zeros(shape[0], 4)
    assert K.post(x, x, x, x, coef).shape == shape
    assert K.curve(x, coef).shape == shape
    assert K.fuse(x, x, x, x).shape == shape
    assert K.pre(np.zeros((0, 5, 3), np.uint8)).image.shape == (1, 3, 0, 5)


def test_threads_do_not_change_results():
    frame = random_frame("uint8", 2, 67, 45, torch.Generator().manual_seed(0))
    before = K.get_num_threads()
    try:
        K.set_num_threads(1)
        a = K.pre(frame, stride=16)
        K.set_num_threads(3)
        assert K.get_num_threads() == 3
        b = K.pre(frame, stride=16)
    finally:
        K.set_num_threads(0)
    assert K.get_num_threads() == before
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=0, atol=0)
    with pytest.raises(ValueError, match=">= 0"):
        K.set_num_threads(-1)


@pytest.mark.parametrize("call, match", [
    (lambda: K.pre(torch.rand(3, 5, 5)), r"pre: frame must be float \(N, 3, H, W\).*got float32 \(3, 5, 5\) on cpu"),
    (lambda: K.pre(torch.rand(1, 4, 5, 5)), r"got float32 \(1, 4, 5, 5\)"),
    (lambda: K.pre(np.zeros((5, 5, 4), np.uint8)), r"got uint8 \(5, 5, 4\)"),
    (lambda: K.pre(torch.zeros(1, 3, 5, 5, dtype=torch.float64)), r"pre: frame has unsupported dtype float64"),
    (lambda: K.pre(torch.zeros(5, 5, 3, dtype=torch.int32)), r"unsupported dtype int32"),
    (lambda: K.pre(torch.rand(1, 3, 5, 5)[..., ::2]), r"pre: frame must be C-contiguous"),
    (lambda: K.pre(torch.rand(1, 3, 5, 5), stride=0), r"stride must be >= 1, got 0"),
    (lambda: K.pre(torch.rand(1, 3, 5, 5), dtype="float64"), r"dtype must be float32 or float16"),
    (lambda: K.fuse(torch.rand(1, 3, 4, 4), torch.rand(1, 3, 4, 4), torch.rand(1, 3, 4, 5), torch.rand(1, 3, 4, 4)),
     r"fuse: image_up must be float32 or float16 with shape \(1, 3, 4, 4\).*got float32 \(1, 3, 4, 5\)"),
    (lambda: K.fuse(torch.rand(1, 3, 4, 4), torch.rand(1, 3, 4, 4).half(), torch.rand(1, 3, 4, 4), torch.rand(1, 3, 4, 4)),
     r"fuse: image is float16 but masks is float32"),
    (lambda: K.curve(torch.rand(2, 3, 4, 4), torch.rand(2, 3)), r"curve: coef must be .* \(2, 4\) or \(2, 3, 4\)"),
    (lambda: K.curve(torch.rand(2, 3, 4, 4), torch.rand(1, 4)), r"got float32 \(1, 4\)"),
    (lambda: K.post(*[torch.rand(1, 3, 4, 4)] * 4, torch.rand(1, 4), height=5), r"crop 5x4 is larger than"),
    (lambda: K.post(*[torch.rand(1, 3, 4, 4)] * 4, torch.rand(1, 4), layout="hwc"), r"layout must be 'nchw' or 'nhwc'"),
    (lambda: K.post([1.0], *[torch.rand(1, 3, 4, 4)] * 3, torch.rand(1, 4)), r"post: masks must be an array that supports DLPack"),
])
def test_bad_input_raises_clear_error(call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call()


@pytest.mark.gpu
def test_mixed_devices_rejected():
    x = torch.rand(1, 3, 4, 4, device="cuda")
    with pytest.raises(ValueError, match=r"fuse: image is on cpu but masks is on cuda:0"):
        K.fuse(x, x.cpu(), x, x)


# ---------------------------------------------------------------------------------------------------------
# ema (the video curve smoothing)
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("x_dtype", ["float32", "float16"])
def test_ema_matches_reference(device, x_dtype):
    gen = torch.Generator().manual_seed(21)
    x = (torch.randn(2, 3, 4, generator=gen) * 100).to(FLOATS[x_dtype]).to(device)
    state = torch.full((2, 3, 4), float("nan"), device=device)  # uninitialized memory: a == 0 must not read it
    assert K.ema(state, x, 0.0) is state
    torch.testing.assert_close(state, x.float(), rtol=0, atol=0)
    y = (torch.randn(2, 3, 4, generator=gen)).to(FLOATS[x_dtype]).to(device)
    K.ema(state, y, 0.8)
    torch.testing.assert_close(state, 0.8 * x.float() + 0.2 * y.float(), rtol=1e-6, atol=1e-5)
    K.ema(state, y, 1.0)  # a == 1 keeps the state
    torch.testing.assert_close(state, 0.8 * x.float() + 0.2 * y.float(), rtol=1e-6, atol=1e-5)


def test_ema_hand_computed_and_errors():
    state = np.array([[2.0, -4.0, 0.0, 1.0]], np.float32)
    K.ema(state, np.array([[4.0, 4.0, 1.0, 1.0]], np.float32), 0.75)
    np.testing.assert_array_equal(state, [[2.5, -2.0, 0.25, 1.0]])
    with pytest.raises(ValueError, match="a must be in"):
        K.ema(state, state.copy(), -0.1)
    with pytest.raises(ValueError, match="state must be float32"):
        K.ema(state.astype(np.float16), state, 0.5)
    with pytest.raises(ValueError, match=r"state must be float32 \(1, 4\)"):
        K.ema(np.zeros((4,), np.float32), state, 0.5)
    with pytest.raises(ValueError, match="x must be float"):
        K.ema(state, state.astype(np.uint8), 0.5)


# ---------------------------------------------------------------------------------------------------------
# CUDA specifics
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.gpu
def test_cuda_runs_on_the_callers_stream():
    s = torch.cuda.Stream()
    frame = torch.randint(0, 256, (1, 1080, 1920, 3), dtype=torch.uint8, device="cuda")
    s.wait_stream(torch.cuda.current_stream())  # the frame was made on the default stream
    with torch.cuda.stream(s):
        out = K.pre(frame, stride=16)
        want = ops.pre(frame, stride=16)
        for g, r in zip(out, want):
            torch.testing.assert_close(g, r)
    s.synchronize()


@pytest.mark.gpu
def test_cuda_matches_cpu_twin():
    gen = torch.Generator().manual_seed(11)
    masks, image, up, down, coef = network_outputs(2, 64, 96, "float16", gen)
    cpu = K.post(masks, image, up, down, coef, height=60, width=90, dtype="float32")
    gpu = K.post(*(t.cuda() for t in (masks, image, up, down, coef)), height=60, width=90, dtype="float32")
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-5, atol=1e-5)


@pytest.mark.gpu
def test_cuda_graph_replays_the_captured_kernel_on_the_callers_stream():
    """Graph (the extension's stream capture): a captured post kernel, launched on the caller's stream, writes
    what a direct call writes, and reads its inputs at launch time (new data in the same buffers)."""
    from sitm_trt.kernels import extension

    gen = torch.Generator().manual_seed(12)
    args = [t.cuda() for t in network_outputs(1, 64, 96, "float32", gen)]
    out = torch.empty(1, 3, 64, 96, device="cuda")
    graph = extension().Graph(0)
    assert not graph.ready
    torch.cuda.synchronize()
    capture_stream = graph.begin()
    # the capture stream made torch's current one, so DLPack hands over without a cross-stream event wait
    with torch.cuda.stream(torch.cuda.ExternalStream(capture_stream)):
        K.post(*args, dtype="float32", out=out)
    graph.end()
    assert graph.ready
    s = torch.cuda.Stream()
    for seed in (13, 14):
        fresh = network_outputs(1, 64, 96, "float32", torch.Generator().manual_seed(seed))
        for dst, src in zip(args, fresh):
            dst.copy_(src)
        with torch.cuda.stream(s):
            graph.launch(s.cuda_stream)
            want = K.post(*args, dtype="float32")
        s.synchronize()
        torch.testing.assert_close(out, want)
