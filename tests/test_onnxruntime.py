"""The ONNX Runtime backend (the CPU default), the torch-free inference path, and the CPU pre kernel's fast path.

Tolerance between ONNX Runtime and the torch backend (both fp32, same weights, same pre/post kernels): the
only difference is the order of the fp32 sums inside the convolutions and normalizations. Measured with the
shipped weights on four frames (random 64x96, 200x300, 333x517 and the 400x600 sample photo; HDR values up
to 1.04): max |ORT - torch| = 9e-7 (8 ulp of 1.0), max relative 7e-6. The tests allow
``atol = 1e-5 + rtol 1e-5`` (about 10x the measured difference); a wrong binding or input order gives errors
of 1e-2 and more.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from sitm_trt import kernels as K
from sitm_trt.runtime import pipeline as P

ATOL, RTOL = 1e-5, 1e-5


def _frame(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def pipes():
    return P.Pipeline("default"), P.Pipeline("default", backend="torch")


def test_auto_runs_onnxruntime_on_the_cpu_and_matches_torch(pipes):
    ort_pipe, torch_pipe = pipes
    x = _frame(45, 70)  # not a multiple of the stride: padding and crop around the network
    got, want = ort_pipe(x), torch_pipe(x)
    assert ort_pipe.backend_for("cpu").name == "onnxruntime"
    assert torch_pipe.backend_for("cpu").name == "torch"
    assert isinstance(got, np.ndarray) and got.shape == (1, 3, 45, 70) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)
    hwc = ort_pipe(x, layout="hwc")
    np.testing.assert_array_equal(hwc, got[0].transpose(1, 2, 0))


def test_iobinding_reads_and_writes_our_buffers(pipes):
    """The backend binds the pipeline's pre buffers and its own output buffers by address: its results equal a
    plain session.run on copies, and the output buffers are the same memory on every call."""
    ort_pipe, _ = pipes
    be = ort_pipe.backend_for("cpu")
    pre = tuple(np.ascontiguousarray(a) for a in K.pre(_frame(32, 48, seed=3), stride=be.stride))
    bufs = tuple(K.extension().empty(list(a.shape), "float32", "cpu", 0) for a in pre)
    for b, a in zip(bufs, pre):
        np.from_dlpack(b)[...] = a
    outs = be.run(bufs, 0)
    ptrs = [o.data_ptr for o in outs]
    want = be.session.run(list(be.session.get_outputs()[i].name for i in range(4)),
                          dict(zip(("image", "image_down", "image_up", "guide"), pre)))
    by_name = dict(zip((o.name for o in be.session.get_outputs()), want))
    for name, o in zip(("exposure_up", "exposure_down", "masks", "coef"), outs):
        np.testing.assert_array_equal(np.from_dlpack(o), by_name[name])
    # the inputs are read in place: changing our buffer changes the result
    np.from_dlpack(bufs[0])[...] = 0.5
    outs2 = be.run(bufs, 0)
    assert [o.data_ptr for o in outs2] == ptrs
    assert not np.array_equal(np.from_dlpack(outs2[0]), by_name["exposure_up"])


def test_threads_option():
    pipe = P.Pipeline("default", threads=1)
    be = pipe.backend_for("cpu")
    assert be.session.get_session_options().intra_op_num_threads == 1 and "1 intra-op threads" in be.describe()
    for bad in (0, -2, 1.5, True, "2"):
        with pytest.raises(ValueError, match="threads must be a positive integer"):
            P.Pipeline("default", threads=bad)


def test_onnxruntime_rejects_what_it_cannot_run(tmp_path):
    with pytest.raises(ValueError, match="precision='fp16' runs on CUDA devices only"):
        P.Pipeline("default", backend="onnxruntime", precision="fp16")(_frame(16, 16))
    from sitm_trt.runtime.backends.onnxruntime_backend import OnnxRuntimeBackend

    w = P.load("default")
    with pytest.raises(ValueError, match="fp16 needs a CUDA device"):  # the backend's own check, used alone
        OnnxRuntimeBackend(w, device="cpu", precision="fp16")
    with pytest.raises(ValueError, match="not a sitm-trt network export"):
        OnnxRuntimeBackend(w, onnx_path=_tiny_other_onnx(tmp_path))


def _tiny_other_onnx(folder) -> str:
    """A valid ONNX model that is not our network (Identity x -> y), written into ``folder``."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    path = os.path.join(folder, "other.onnx")
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def test_weights_without_shipped_onnx_are_exported_once_and_match_torch(tiny_weights_path):
    """Other weights: the ONNX export is made on first use into the (test-private) cache, then reused."""
    from sitm_trt.weights import load

    w = load(tiny_weights_path)
    pipe = P.Pipeline(w, backend="onnxruntime")
    x = _frame(40, 56, seed=5)
    got = pipe(x)
    path = pipe.backend_for("cpu").onnx_path
    assert os.path.dirname(path).startswith(os.environ["SITM_TRT_CACHE"])
    mtime = os.stat(path).st_mtime_ns
    np.testing.assert_allclose(got, P.Pipeline(w, backend="torch")(x), rtol=RTOL, atol=ATOL)
    assert P.Pipeline(w, backend="onnxruntime").backend_for("cpu").onnx_path == path
    assert os.stat(path).st_mtime_ns == mtime


_NO_TORCH_CHILD = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    try:
        import torch  # noqa: F401
        raise SystemExit("the shim did not hide torch")
    except ImportError:
        pass
    import sitm_trt
    from sitm_trt.tools import cli
    from sitm_trt.runtime import pipeline
    frame = np.load(sys.argv[1])
    hdr = sitm_trt.infer(frame)
    np.save(sys.argv[2], hdr)
    pipe = next(iter(pipeline._DEFAULT.values()))[1]
    rc = cli.main(["infer", sys.argv[3], "-o", sys.argv[4], "-q"])
    try:  # weights that ship no ONNX export, with an empty cache: a clear error instead of a torch traceback
        sitm_trt.Pipeline(sys.argv[5])(frame)
        export_error = ""
    except ImportError as err:
        export_error = str(err)
    missing = {}  # what needs torch says so, instead of a bare ModuleNotFoundError from a constructor
    for what, kwargs in (("torch", {"backend": "torch"}), ("tile", {"tile": 96})):
        try:
            sitm_trt.Pipeline("default", **kwargs)(frame)
            missing[what] = ""
        except ImportError as err:
            missing[what] = f"{type(err).__name__}: {err}"
    print(json.dumps({"backend": pipe.backend_for("cpu").describe(), "rc": rc, "export_error": export_error,
                      "missing": missing,
                      "torch_modules": sorted(m for m, mod in sys.modules.items()
                                            if mod is not None and (m == "torch" or m.startswith("torch.")))}))
    """
)


def test_infer_and_cli_run_without_torch(tmp_path, pipes, tiny_weights_path):
    """In a process where torch cannot be imported, sitm_trt.infer and `sitm-trt infer` run ONNX Runtime with the
    shipped weights; the result matches the torch backend (this process) within the stated tolerance."""
    from sitm_trt.media import io

    frame = _frame(72, 100, seed=7)
    np.save(tmp_path / "in.npy", frame)
    io.write_png(tmp_path / "in.png", frame)
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text("import sys\nsys.modules['torch'] = None  # import torch -> ImportError\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(shim), *filter(None, [os.environ.get("PYTHONPATH")])]),
               SITM_TRT_CACHE=str(tmp_path / "empty-cache"))
    proc = subprocess.run([sys.executable, "-c", _NO_TORCH_CHILD, str(tmp_path / "in.npy"), str(tmp_path / "out.npy"),
                           str(tmp_path / "in.png"), str(tmp_path / "out.exr"), str(tiny_weights_path)],
                          env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["backend"].startswith("onnxruntime") and report["torch_modules"] == [] and report["rc"] == 0
    assert "ships no fp32 ONNX export" in report["export_error"] and "sitm-trt[torch]" in report["export_error"]
    hint = "needs PyTorch: pip install 'sitm-trt[torch]'"
    assert report["missing"]["torch"] == f"ImportError: the torch backend {hint}"
    assert report["missing"]["tile"] == f"ImportError: tiling (tile=) {hint}"
    got = np.load(tmp_path / "out.npy")
    np.testing.assert_allclose(got, pipes[1](frame), rtol=RTOL, atol=ATOL)
    exr = io.read_image(tmp_path / "out.exr")  # the CLI wrote the same HDR, as half floats
    np.testing.assert_allclose(exr[..., :3], got[0].transpose(1, 2, 0), rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("h,w", [(540, 1000), (21, 35)])
def test_pre_fast_path_is_exact(h, w):
    """The chunked uint8/uint16 path (non-temporal stores from 16 MiB of outputs: the 540x1000 case) equals the
    PyTorch reference bit for bit, padding included; fp16 outputs too."""
    torch = pytest.importorskip("torch")
    from sitm_trt import reference as ops

    rng = np.random.default_rng(h)
    for frame in (rng.integers(0, 256, (1, h, w, 3), dtype=np.uint8),
                  rng.integers(0, 65536, (1, h, w, 3), dtype=np.uint16)):
        ref_in = torch.from_numpy(frame.astype(np.float32) / (255.0 if frame.dtype == np.uint8 else 65535.0))
        for dtype in ("float32", "float16"):
            got = K.pre(frame, stride=16, dtype=dtype)
            want = ops.pre(ref_in.permute(0, 3, 1, 2).contiguous(), stride=16,
                           dtype=torch.float16 if dtype == "float16" else torch.float32)
            for g, wnt in zip(got, want):
                assert g.shape == tuple(wnt.shape)
                np.testing.assert_array_equal(g.astype(np.float32), wnt.float().numpy())


def test_info_names_onnxruntime_for_cpu_inputs():
    info = P.info()
    assert info["onnxruntime"]["version"] and "CPUExecutionProvider" in info["onnxruntime"]["providers"]
    assert "onnxruntime on the CPU for CPU inputs" in info["auto"]


def test_bench_runs_backends_side_by_side():
    from sitm_trt.tools import bench

    assert bench.backend_spec("onnxruntime") == ("onnxruntime", "cpu", "fp32")
    assert bench.backend_spec("tensorrt") == ("tensorrt", "cuda", "fp16")
    with pytest.raises(ValueError, match="BACKEND"):
        bench.backend_spec("onnx")
    rows, header = bench.bench_pipeline(["torch", "onnxruntime"], ["compact"], ["512"], repeats=1, warmup=0,
                                        configs=[{"threads": 1}])
    assert [r.backend for r in rows] == ["torch", "onnxruntime"] and header["onnxruntime"]
    assert all(r.config == "threads=1" and r.net_ms > 0 for r in rows)
    text = bench.format_pipeline(rows, header)
    ratio = rows[0].net_ms / rows[1].net_ms
    assert f"| onnxruntime | cpu | compact | 512 | threads=1 | {ratio:.2f}x |" in text


def test_cuda_execution_provider_matches_torch_on_the_gpu():
    # Not marked `gpu`: onnxruntime-gpu is optional (not in any extra), and under SITM_REQUIRE_GPU=1 a skipped
    # `gpu` test is a failure, so a GPU check without onnxruntime-gpu would fail here by design.
    from conftest import cuda_available, cuda_missing
    from sitm_trt.runtime.backends.onnxruntime_backend import cuda_provider_available

    if not cuda_available():
        pytest.skip(f"needs a CUDA device and a CUDA build of sitm-trt ({cuda_missing()})")
    if not cuda_provider_available():
        pytest.skip("onnxruntime-gpu (CUDAExecutionProvider) is not installed")
    torch = pytest.importorskip("torch")
    x = torch.from_numpy(_frame(96, 160, seed=11)).cuda()
    got = P.Pipeline("default", backend="onnxruntime")(x)
    want = P.Pipeline("default", backend="torch")(x)
    assert got.device.type == "cuda"
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_an_unwritable_onnx_cache_is_named(tiny_weights_path, tmp_path):
    """A cache path that cannot hold the export (here: below a file) raises EngineError naming the folder and
    SITM_TRT_CACHE, as the engine cache does (it was a bare NotADirectoryError from pathlib)."""
    from sitm_trt.errors import EngineError
    from sitm_trt.weights import load

    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(EngineError, match=r"into the cache .*a-file/onnx: .*set SITM_TRT_CACHE"):
        load(tiny_weights_path).onnx("fp32", cache_dir=blocker / "onnx")
    assert blocker.read_text() == "x"
