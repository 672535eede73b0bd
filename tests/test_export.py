"""ONNX export of the network: PyTorch parity on onnxruntime, the FP16 graph, and a TensorRT-RTX engine build."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sitm_trt.model import SITMNet, export_onnx
from sitm_trt.model.export import INPUT_NAMES, OUTPUT_NAMES, example_inputs

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

PRESETS = ("compact", "fast", "paper")
FLOAT, FLOAT16 = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """One float32 and one float16 export per preset (built lazily, shared by the tests)."""
    cache: dict[tuple[str, bool], tuple[SITMNet, str]] = {}
    root = tmp_path_factory.mktemp("onnx")

    def get(name: str, fp16: bool = False) -> tuple[SITMNet, str]:
        if (name, fp16) not in cache:
            torch.manual_seed(0)
            net = SITMNet(name).eval()
            path = root / f"{name}{'_fp16' if fp16 else ''}.onnx"
            export_onnx(net, path, fp16=fp16)
            cache[(name, fp16)] = (net, str(path))
        return cache[(name, fp16)]

    return get


def _run(path: str, args: tuple[torch.Tensor, ...]) -> list[np.ndarray]:
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    return sess.run(None, {n: t.numpy() for n, t in zip(INPUT_NAMES, args)})


@pytest.mark.parametrize("name", PRESETS)
def test_onnx_matches_pytorch_at_two_resolutions(exported, name):
    net, path = exported(name)
    model = onnx.load(path)
    assert [i.name for i in model.graph.input] == list(INPUT_NAMES)
    assert [o.name for o in model.graph.output] == list(OUTPUT_NAMES)
    assert model.opset_import[0].version >= 17
    for value in list(model.graph.input) + list(model.graph.output)[:3]:
        dims = value.type.tensor_type.shape.dim
        assert [d.dim_param for d in dims] == ["batch", "", "height", "width"]
    for batch, h, w in ((1, 64, 96), (2, 112, 48)):
        args = example_inputs(batch, h, w, seed=h)
        with torch.no_grad():
            ref = net(*args)
        outs = _run(path, args)
        for o, r, field in zip(outs, ref, OUTPUT_NAMES):
            assert o.shape == tuple(r.shape), field
            np.testing.assert_allclose(o, r.numpy(), rtol=1e-4, atol=1e-4, err_msg=f"{name} {field} {h}x{w}")


def _input_types(model) -> dict[str, int]:
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type.tensor_type.elem_type for v in inferred.graph.value_info}
    types.update({v.name: v.type.tensor_type.elem_type for v in inferred.graph.input})
    types.update({i.name: i.data_type for i in inferred.graph.initializer})
    return types


def test_fp16_graph_types_and_fp32_islands(exported):
    net, path = exported("compact", fp16=True)
    model = onnx.load(path)
    io = {v.name: v.type.tensor_type.elem_type for v in list(model.graph.input) + list(model.graph.output)}
    assert io == {**{n: FLOAT16 for n in INPUT_NAMES}, **{n: FLOAT16 for n in OUTPUT_NAMES[:3]}, "coef": FLOAT}
    types = _input_types(model)
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    assert convs and all(types[n.input[0]] == FLOAT16 and types[n.input[1]] == FLOAT16 for n in convs)
    guarded = {"LayerNormalization", "Softmax", "ReduceMean", "ReduceMax", "Softplus"}
    nodes = [n for n in model.graph.node if n.op_type in guarded]
    assert {n.op_type for n in nodes} == guarded
    wrong = [(n.op_type, n.name) for n in nodes if types.get(n.input[0]) != FLOAT]
    assert not wrong, f"normalization-like steps not in float32: {wrong}"
    # the thumbnail resize (the EAB's and the MEFM's fixed 256x256 input) runs in float32 too
    resizes = [n for n in model.graph.node if n.op_type == "Resize"]
    assert sum(types.get(n.input[0]) == FLOAT for n in resizes) == 2


def test_fp16_onnx_tracks_float32_pytorch(exported):
    """FP16 graph on onnxruntime vs the float32 model: within a small multiple of the error of the same model
    run in float16 by PyTorch (the rule for reduced precision in docs), plus FP16 rounding of the outputs."""
    net, path = exported("compact", fp16=True)
    args = example_inputs(1, 96, 64, seed=7)
    with torch.no_grad():
        ref = net(*args)
        net16 = SITMNet("compact").eval()
        net16.load_state_dict(net.state_dict())
        half = net16.half()(*(t.half() for t in args))
    outs = _run(path, tuple(t.half() for t in args))
    for o, r, h, field in zip(outs, ref, half, OUTPUT_NAMES):
        err = np.abs(o.astype(np.float32) - r.numpy()).max()
        err_torch = (h.float() - r).abs().max().item()
        assert err <= 4 * err_torch + 1e-3, f"{field}: onnx fp16 error {err:.2e}, torch fp16 error {err_torch:.2e}"


@pytest.mark.slow
@pytest.mark.parametrize("name,fp16", [("compact", False), ("compact", True), ("fast", True), ("paper", True)])
def test_tensorrt_rtx_engine_builds_for_256_to_4k(exported, name, fp16):
    _, path = exported(name, fp16)
    assert_rtx_engine_builds(path, fp16)


def assert_rtx_engine_builds(path: str, fp16: bool) -> None:
    """Parse the ONNX file and build a serialized TensorRT-RTX engine (ahead of time: no GPU needed) for a
    dynamic profile from 256x256 to 3840x2160. FP16 graphs are built as strongly typed networks. (Also used by
    test_clip_prior.py and test_ring_maps.py.)"""
    trt = pytest.importorskip(
        "tensorrt_rtx_bindings",
        reason="TensorRT-RTX is not installed (pip install tensorrt-rtx-cu13-bindings tensorrt-rtx-cu13-libs)",
    )
    logger = trt.Logger(trt.Logger.ERROR)
    builder = trt.Builder(logger)
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if fp16 else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    ok = parser.parse_from_file(path)
    assert ok, [parser.get_error(i).desc() for i in range(parser.num_errors)]
    assert [network.get_input(i).name for i in range(network.num_inputs)] == list(INPUT_NAMES)
    assert [network.get_output(i).name for i in range(network.num_outputs)] == list(OUTPUT_NAMES)
    want = trt.DataType.HALF if fp16 else trt.DataType.FLOAT
    assert all(network.get_input(i).dtype == want for i in range(network.num_inputs))
    assert network.get_output(3).dtype == trt.DataType.FLOAT  # coef
    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    for i, n in enumerate(INPUT_NAMES):
        c = 2 if n == "guide" else 3
        profile.set_shape(n, (1, c, 256, 256), (1, c, 1088, 1920), (1, c, 2160, 3840))
    config.add_optimization_profile(profile)
    engine = builder.build_serialized_network(network, config)
    assert engine is not None and engine.nbytes > 100_000
