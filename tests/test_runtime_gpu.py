"""GPU runtime: TensorRT against the torch reference, stream ordering, buffer reuse. Marked `gpu` (skipped
without a CUDA device); the TensorRT cases also need a TensorRT flavour that supports the GPU."""

from __future__ import annotations

import pytest
import torch

from sitm_trt.runtime import pipeline as P
from sitm_trt.weights import load

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def weights(tiny_weights_path):
    return load(tiny_weights_path)


def _trt_pipeline(weights, precision):
    try:
        pipe = P.Pipeline(weights, backend="tensorrt", precision=precision)
        pipe.backend_for("cuda:0")
    except (ImportError, RuntimeError) as err:
        pytest.skip(f"TensorRT cannot run here: {err}")
    return pipe


def frame(h=272, w=480, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (1, h, w, 3), generator=g, dtype=torch.uint8).cuda()


def test_tensorrt_fp16_within_derived_tolerance(weights):
    """STYLE.md: the fast path's error against fp32 may be a small multiple of plain fp16 torch's error."""
    x = frame()
    ref = P.Pipeline(weights, backend="torch", precision="fp32")(x)
    torch16 = P.Pipeline(weights, backend="torch", precision="fp16")(x)
    trt16 = _trt_pipeline(weights, "fp16")(x)
    base = (torch16 - ref).abs()
    err = (trt16 - ref).abs()
    assert err.max() <= 4 * base.max() + 1e-3, (err.max().item(), base.max().item())
    assert err.mean() <= 4 * base.mean() + 1e-4


def test_tensorrt_fp32_matches_torch(weights):
    x = frame(seed=1)
    ref = P.Pipeline(weights, backend="torch", precision="fp32")(x)
    got = _trt_pipeline(weights, "fp32")(x)
    torch.testing.assert_close(got, ref, rtol=1e-3, atol=1e-3)


def test_call_does_not_synchronize_the_host(weights):
    pipe = _trt_pipeline(weights, "fp16")
    x = frame()
    out = torch.empty(1, 3, 272, 480, device="cuda")
    pipe(x, out=out)  # warm up: engine, buffers
    torch.cuda.synchronize()
    s = torch.cuda.current_stream()
    torch.cuda._sleep(200_000_000)  # keep the stream busy for a while
    pipe(x, out=out)
    assert not s.query(), "infer waited for the stream: it synchronized the host"
    torch.cuda.synchronize()


def test_no_allocation_per_call_in_steady_state(weights):
    pipe = _trt_pipeline(weights, "fp16")
    x = frame()
    out = torch.empty(1, 3, 272, 480, device="cuda")
    pipe(x, out=out)
    be = pipe.backend_for("cuda:0")
    before = (pipe._pool.allocations(), be._outputs.allocations())
    for _ in range(3):
        pipe(x, out=out)
        pipe(frame(128, 256), out=torch.empty(1, 3, 128, 256, device="cuda"))  # smaller frames reuse memory
    after = (pipe._pool.allocations(), be._outputs.allocations())
    assert before == after


def test_frame_outside_the_profile(weights):
    """backend="tensorrt": a clear error; backend="auto": the frame runs on the torch backend instead."""
    pipe = _trt_pipeline(weights, "fp16")
    with pytest.raises(ValueError, match="outside the engine's profile"):
        pipe(frame(32, 32))
    auto = P.Pipeline(weights, backend="auto", precision="fp16")
    if auto.backend_for("cuda:0").name != "tensorrt":
        pytest.skip("auto does not pick TensorRT here")
    small = frame(32, 32)
    torch.testing.assert_close(auto(small), P.Pipeline(weights, backend="torch", precision="fp16")(small),
                               rtol=1e-3, atol=1e-3)


def test_cuda_graphs_give_the_same_frames(weights):
    """cuda_graphs=True (RTX: native; classic: stream capture) against plain execution, over frames of one
    size (replayed) and a size change (re-captured), each frame's result checked."""
    plain = _trt_pipeline(weights, "fp16")
    try:
        graphs = P.Pipeline(weights, backend="tensorrt", precision="fp16", cuda_graphs=True)
        be = graphs.backend_for("cuda:0")
    except (ImportError, RuntimeError) as err:
        pytest.skip(f"TensorRT cannot run here: {err}")
    assert "CUDA graphs" in be.describe()
    for i, (h, w) in enumerate([(272, 480)] * 4 + [(128, 256)] * 3):
        x = frame(h, w, seed=10 + i)
        torch.testing.assert_close(graphs(x), plain(x), rtol=1e-3, atol=1e-3)  # RTX may pick other kernels
    if be.graphs == "capture":
        assert be._replay.enabled, be._replay.reason
        assert be._replay.launches == 5 and be._replay.captures == 2
