"""sitm_trt.infer / Pipeline end to end on the CPU with the torch backend."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import sitm_trt
from sitm_trt.runtime import pipeline as P
from sitm_trt.model import SITMNet, predict_hdr, save_weights
from sitm_trt.weights import WeightsError, load


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    torch.manual_seed(0)
    net = SITMNet("compact").eval()
    path = tmp_path_factory.mktemp("w") / "tiny.safetensors"
    save_weights(net, path)
    return load(path), net


def reference(net, frame: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return predict_hdr(net, frame)


def test_every_input_form_gives_the_same_result(weights):
    w, net = weights
    pipe = P.Pipeline(w)
    rng = np.random.default_rng(0)
    u8 = rng.integers(0, 256, size=(2, 21, 35, 3), dtype=np.uint8)
    want = reference(net, torch.from_numpy(u8))  # (2, 3, 21, 35)
    f32 = np.ascontiguousarray(u8.transpose(0, 3, 1, 2).astype(np.float32) / 255)
    forms = {
        "numpy uint8 NHWC": (u8, "nchw"),
        "torch uint8 NHWC": (torch.from_numpy(u8), "nchw"),
        "numpy float32 NCHW": (f32, "nchw"),
        "torch float32 NCHW": (torch.from_numpy(f32), "nchw"),
        "torch float16 NCHW": (torch.from_numpy(f32).half(), None),
        "numpy uint16 NHWC": ((u8.astype(np.uint16) * 257), "nchw"),
    }
    for name, (x, layout) in forms.items():
        got = pipe(x, layout=layout or "nchw")
        assert type(got) is type(x), name
        got = torch.as_tensor(np.asarray(got)) if isinstance(got, np.ndarray) else got
        assert got.shape == want.shape and got.dtype == torch.float32, name
        if layout is None:  # fp16 input: uint8 levels are not exact in fp16; compare with its own reference
            torch.testing.assert_close(got, reference(net, x), rtol=1e-5, atol=1e-6, msg=name)
        else:
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6, msg=name)


def test_hwc_frame_and_layout(weights):
    w, net = weights
    frame = np.random.default_rng(1).integers(0, 256, size=(17, 30, 3), dtype=np.uint8)
    hdr = P.Pipeline(w)(frame, layout="hwc")
    assert isinstance(hdr, np.ndarray) and hdr.shape == (17, 30, 3)
    want = reference(net, torch.from_numpy(frame))[0].permute(1, 2, 0).numpy()
    np.testing.assert_allclose(hdr, want, rtol=1e-5, atol=1e-6)
    hdr16 = P.Pipeline(w)(frame, layout="hwc", dtype="float16")
    assert hdr16.dtype == np.float16
    np.testing.assert_allclose(hdr16, want, rtol=2e-3, atol=1e-3)


def test_out_is_honoured(weights):
    w, _ = weights
    pipe = P.Pipeline(w)
    x = torch.rand(1, 3, 20, 24)
    out = torch.empty(1, 3, 20, 24)
    ptr = out.data_ptr()
    res = pipe(x, out=out)
    assert res is out and out.data_ptr() == ptr
    torch.testing.assert_close(out, pipe(x))
    frame = np.zeros((20, 24, 3), np.uint8)
    out_hwc = np.empty((20, 24, 3), np.float32)
    assert pipe(frame, out=out_hwc, layout="hwc") is out_hwc
    np.testing.assert_allclose(out_hwc, pipe(frame, layout="hwc"))
    with pytest.raises(ValueError, match=r"post: out must be float32 \(1, 3, 20, 24\)"):
        pipe(x, out=torch.empty(1, 3, 20, 25))


def test_buffers_are_reused_for_same_or_smaller_frames(weights):
    w, _ = weights
    pipe = P.Pipeline(w)
    pipe(torch.rand(1, 3, 40, 40))
    bufs = pipe._pool.allocations()
    assert len(bufs) == 4
    pipe(torch.rand(1, 3, 40, 40))
    pipe(torch.rand(1, 3, 17, 33))
    assert pipe._pool.allocations() == bufs
    pipe(torch.rand(1, 3, 64, 64))  # larger: grows
    assert all(cap > bufs[k][1] for k, (_, cap) in pipe._pool.allocations().items())


def test_nan_and_out_of_range_are_sanitized_as_documented(weights):
    w, _ = weights
    pipe = P.Pipeline(w)
    x = torch.rand(1, 3, 16, 16)
    dirty = x.clone()
    dirty[0, 0, 0, 0] = float("nan")
    dirty[0, 1, 0, 0] = float("inf")
    dirty[0, 2, 0, 0] = -3.0
    clean = x.clone()
    clean[0, 0, 0, 0], clean[0, 1, 0, 0], clean[0, 2, 0, 0] = 0.0, 1.0, 0.0
    got = pipe(dirty)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, pipe(clean))


def test_empty_frames(weights):
    w, _ = weights
    pipe = P.Pipeline(w)
    assert pipe(torch.rand(0, 3, 8, 8)).shape == (0, 3, 8, 8)
    assert pipe(np.zeros((0, 5, 3), np.uint8), layout="hwc").shape == (0, 5, 3)


@pytest.mark.parametrize("x, match", [
    (torch.rand(3, 8, 8), r"infer: x must be .* got float32 \(3, 8, 8\)"),
    (torch.rand(1, 4, 8, 8), r"pre: frame must be float \(N, 3, H, W\)"),
    (np.zeros((8, 8, 3), np.int32), r"infer: x must be .* got int32"),
    (torch.zeros(1, 3, 8, 8, dtype=torch.float64), r"unsupported dtype float64"),
    ([[0.5]], r"must be an array that supports DLPack"),
])
def test_bad_input(weights, x, match):
    with pytest.raises((ValueError, TypeError), match=match):
        P.Pipeline(weights[0])(x)


def test_bad_options(weights):
    w, _ = weights
    with pytest.raises(ValueError, match="backend must be one of"):
        P.Pipeline(w, backend="onnx")
    with pytest.raises(ValueError, match="precision must be"):
        P.Pipeline(w, precision="int8")
    with pytest.raises(ValueError, match="needs the input on a CUDA device"):
        P.Pipeline(w, backend="tensorrt")(torch.rand(1, 3, 8, 8))
    for backend in ("auto", "torch", "onnxruntime"):  # one message naming the option, whichever backend
        with pytest.raises(ValueError, match="precision='fp16' runs on CUDA devices only"):
            P.Pipeline(w, precision="fp16", backend=backend)(torch.rand(1, 3, 8, 8))
    with pytest.raises(ValueError, match="layout must be"):
        P.Pipeline(w)(torch.rand(1, 3, 8, 8), layout="chw")


def test_infer_uses_a_cached_pipeline(weights):
    w, net = weights
    x = torch.rand(1, 3, 16, 16)
    a = sitm_trt.infer(x, weights=w.path)
    b = sitm_trt.infer(x, weights=str(w.path))
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a, reference(net, x), rtol=1e-5, atol=1e-6)
    assert len([k for k in P._DEFAULT if k[1] == str(w.path)]) == 1


def test_weights_checksum_is_verified(tmp_path, weights):
    w, net = weights
    path = tmp_path / "w.safetensors"
    save_weights(net, path)
    (tmp_path / "w.json").write_text(json.dumps({"sha256": "0" * 64}))
    with pytest.raises(WeightsError, match="does not match its card"):
        load(path)
    with pytest.raises(WeightsError, match="no shipped weights named 'nope'"):
        load("nope")
    (tmp_path / "x.safetensors").write_bytes(b"\x01\x00\x00\x00\x00\x00\x00\x00{")
    with pytest.raises(WeightsError, match="cannot read a safetensors header"):
        load(tmp_path / "x.safetensors")


def test_concurrent_calls_on_one_pipeline_are_correct(weights):
    """infer() shares one Pipeline between threads: its buffers must not be used by two calls at once."""
    import concurrent.futures

    w, net = weights
    pipe = P.Pipeline(w)
    frames = [torch.rand(1, 3, 32, 48, generator=torch.Generator().manual_seed(i)) for i in range(6)]
    want = [pipe(f) for f in frames]
    with concurrent.futures.ThreadPoolExecutor(3) as ex:
        got = list(ex.map(lambda f: pipe(f), frames * 3))
    for i, g in enumerate(got):
        torch.testing.assert_close(g, want[i % len(frames)], rtol=0, atol=0)


def test_infer_does_not_rehash_the_weights_per_call(weights, monkeypatch):
    w, _ = weights
    x = torch.rand(1, 3, 16, 16)
    sitm_trt.infer(x, weights=w.path)
    calls = []
    import sitm_trt.weights as W

    monkeypatch.setattr(W, "sha256_file", lambda p: calls.append(p) or "x")
    sitm_trt.infer(x, weights=w.path)
    assert calls == []


def test_info_reports_the_auto_choice():
    info = sitm_trt.info()
    assert "extension" in info and "auto" in info
    if not info["cuda_devices"]:
        assert "no CUDA device" in info["auto_reason"]


@pytest.mark.gpu
def test_cuda_torch_backend_matches_cpu(weights):
    w, _ = weights
    x = torch.rand(1, 3, 64, 96)
    cpu = P.Pipeline(w, backend="torch")(x)
    gpu = P.Pipeline(w, backend="torch")(x.cuda())
    assert gpu.device.type == "cuda"
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-3, atol=1e-4)


def test_tiled_pipeline_matches_the_whole_frame(weights):
    w, _ = weights
    x = torch.rand(1, 3, 110, 130)  # several 48-pixel tiles
    whole = P.Pipeline(w)(x)
    tiled = P.Pipeline(w, tile=48)(x)
    torch.testing.assert_close(tiled, whole, rtol=1e-4, atol=1e-5)
    frame = np.random.default_rng(3).integers(0, 256, size=(100, 120, 3), dtype=np.uint8)
    np.testing.assert_allclose(P.Pipeline(w, tile=48)(frame, layout="hwc"), P.Pipeline(w)(frame, layout="hwc"),
                               rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="tile must be a positive"):
        P.Pipeline(w, tile=0)


def test_a_local_file_or_folder_does_not_shadow_a_shipped_name(tmp_path, monkeypatch):
    """An output folder called "default" (or a file "filmic") in the working directory used to break
    infer(x) and load("filmic"); "./NAME" still names the local file."""
    from sitm_trt.weights import WEIGHTS_DIR

    monkeypatch.chdir(tmp_path)
    (tmp_path / "default").mkdir()
    (tmp_path / "filmic").write_text("abc")
    assert load("default").path == (WEIGHTS_DIR / "default.safetensors").resolve()
    assert load("filmic").path == (WEIGHTS_DIR / "filmic.safetensors").resolve()
    assert P.Pipeline(None).weights.path == load("default").path  # None means "default", as in infer
    with pytest.raises(WeightsError, match="not a safetensors file"):
        load("./filmic")
    for bad in (None, 123):
        with pytest.raises(TypeError, match="weights must be a shipped name"):
            load(bad)
    with pytest.raises(TypeError, match="tile must be an integer"):
        P.Pipeline(tile="512")


def test_infer_replaces_a_rewritten_file_and_keeps_few_pipelines(weights, tmp_path, monkeypatch):
    """infer() kept every pipeline it made (about 28 MiB each with ONNX Runtime), also one per rewrite of a file."""
    w, net = weights
    monkeypatch.setattr(P, "_DEFAULT", type(P._DEFAULT)())
    path = tmp_path / "w.safetensors"
    path.write_bytes(w.path.read_bytes())
    x = torch.rand(1, 3, 16, 16)
    a = sitm_trt.infer(x, weights=path, backend="torch")
    first = next(iter(P._DEFAULT.values()))[1]
    torch.manual_seed(1)
    other = SITMNet("compact").eval()
    save_weights(other, path)  # rewritten in place: a new pipeline for the new weights, the old one dropped
    b = sitm_trt.infer(x, weights=path, backend="torch")
    assert len(P._DEFAULT) == 1 and next(iter(P._DEFAULT.values()))[1] is not first
    torch.testing.assert_close(a, reference(net, x), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(b, reference(other, x), rtol=1e-5, atol=1e-6)
    for i in range(P._DEFAULT_MAX + 2):  # many checkpoints: only the last few pipelines stay
        copy = tmp_path / f"c{i}.safetensors"
        copy.write_bytes(w.path.read_bytes())
        sitm_trt.infer(x, weights=copy, backend="torch")
    assert len(P._DEFAULT) == P._DEFAULT_MAX
    assert str((tmp_path / f"c{P._DEFAULT_MAX + 1}.safetensors").resolve()) in {k[1] for k in P._DEFAULT}


class _DLPackOnly:
    """A producer that speaks DLPack and nothing else (no shape, no dtype)."""

    def __init__(self, a):
        self._a = a

    def __dlpack__(self, **kwargs):
        return self._a.__dlpack__(**kwargs)

    def __dlpack_device__(self):
        return self._a.__dlpack_device__()


def test_inputs_that_needed_a_conversion(weights):
    """A DLPack-only producer, big-endian uint16 and a tensor that requires grad give the plain input's result."""
    w, net = weights
    pipe = P.Pipeline(w)
    u8 = np.random.default_rng(3).integers(0, 256, size=(19, 26, 3), dtype=np.uint8)
    want = pipe(u8)
    want_hwc = pipe(u8, layout="hwc")
    got = pipe(_DLPackOnly(u8))
    np.testing.assert_array_equal(np.from_dlpack(got), want)
    got = pipe(_DLPackOnly(u8), layout="hwc")  # the unbatched (H, W, 3) result of a Buffer (was `[0]` on it)
    assert tuple(got.shape) == (19, 26, 3)
    np.testing.assert_array_equal(np.from_dlpack(got), want_hwc)
    np.testing.assert_array_equal(pipe((u8.astype(np.uint16) * 257).astype(">u2")), pipe(u8.astype(np.uint16) * 257))
    f = torch.from_numpy(u8).permute(2, 0, 1)[None].float().div(255).requires_grad_()
    torch.testing.assert_close(pipe(f), reference(net, f.detach()), rtol=1e-5, atol=1e-6)


def test_empty_frames_check_out(weights):
    w, _ = weights
    empty = np.zeros((0, 32, 3), np.uint8)
    read_only = np.zeros((1, 3, 0, 32), np.float32)
    read_only.flags.writeable = False
    for out, exc, match in ((read_only, ValueError, "out is read-only"),
                            (np.full((5, 5), 7.0), ValueError, r"out must be float32 \(1, 3, 0, 32\)"),
                            ([1, 2], TypeError, "out must be an array"),
                            (np.zeros((1, 3, 0, 32), np.float16), ValueError, "out must be float32")):
        with pytest.raises(exc, match=match):
            P.Pipeline(w)(empty, out=out)
    ok = np.zeros((0, 32, 3), np.float32)
    assert P.Pipeline(w)(empty, out=ok, layout="hwc") is ok
