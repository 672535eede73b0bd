"""GraphReplay (CUDA graph replay of a classic TensorRT engine) with a fake engine and fake graphs: when it
captures, when it replays, when it re-captures, and how a failed capture falls back. The real thing runs in
tests/test_runtime_gpu.py (GPU) and test_kernels.py's Graph test."""

from __future__ import annotations

import pytest

from sitm_trt.runtime.backends.tensorrt_backend import GraphReplay


class FakeGraph:
    def __init__(self, log, fail_end=False):
        self.log, self.fail_end, self.open, self.ready = log, fail_end, False, False

    def begin(self):
        self.open = True
        self.log.append("begin")
        return 99  # the private capture stream

    def end(self):
        self.open = False
        if self.fail_end:
            raise RuntimeError("cudaStreamEndCapture: operation not permitted when stream is capturing")
        self.ready = True
        self.log.append("end")

    def abort(self):
        self.open = False
        self.log.append("abort")

    def launch(self, stream):
        assert self.ready
        self.log.append(("launch", stream))


def make(log, **kw):
    graphs = []

    def new():
        graphs.append(FakeGraph(log, **kw))
        return graphs[-1]

    return GraphReplay(new), graphs


def enqueue(log, ok=True):
    def execute(stream):
        log.append(("execute", stream))
        return ok
    return execute


def test_first_call_runs_then_captures_later_calls_replay():
    log = []
    replay, graphs = make(log)
    key = (1, 64, 64, 10, 20)
    replay.run(key, enqueue(log), stream=7)
    # ran for real on the caller's stream, then the same enqueue captured on the private stream
    assert log == [("execute", 7), "begin", ("execute", 99), "end"]
    log.clear()
    replay.run(key, enqueue(log), stream=7)
    replay.run(key, enqueue(log), stream=8)
    assert log == [("launch", 7), ("launch", 8)]  # no enqueue: the graph replays on whichever stream is given
    assert (replay.captures, replay.launches) == (1, 2)


def test_new_shape_or_address_runs_and_recaptures():
    log = []
    replay, graphs = make(log)
    replay.run((1, 64, 64, 10), enqueue(log), 0)
    log.clear()
    replay.run((1, 128, 64, 10), enqueue(log), 0)  # new shape
    assert log == [("execute", 0), "begin", ("execute", 99), "end"]
    log.clear()
    replay.run((1, 128, 64, 11), enqueue(log), 0)  # same shape, new buffer address
    assert log[0] == ("execute", 0) and replay.captures == 3
    log.clear()
    replay.run((1, 64, 64, 10), enqueue(log), 0)  # back to the first: only the latest graph is kept
    assert log[0] == ("execute", 0)


def test_failed_capture_warns_and_falls_back_to_plain_execution():
    log = []
    replay, graphs = make(log, fail_end=True)
    with pytest.warns(RuntimeWarning, match="CUDA graph capture of the engine failed"):
        replay.run((1,), enqueue(log), 5)
    assert not replay.enabled and "not permitted" in replay.reason
    log.clear()
    replay.run((1,), enqueue(log), 5)
    replay.run((1,), enqueue(log), 5)
    assert log == [("execute", 5), ("execute", 5)]  # plain execution from now on, no capture attempts


def test_enqueue_failing_under_capture_aborts_the_capture():
    log = []
    replay, graphs = make(log)
    calls = []

    def execute(stream):
        calls.append(stream)
        if stream == 99:
            raise RuntimeError("enqueue needs to allocate")
        return True

    with pytest.warns(RuntimeWarning, match="enqueue needs to allocate"):
        replay.run((1,), execute, 3)
    assert log == ["begin", "abort"] and not graphs[0].open and not replay.enabled


def test_failed_plain_execution_raises():
    replay, _ = make([])
    with pytest.raises(RuntimeError, match="execute_async_v3 failed"):
        replay.run((1,), enqueue([], ok=False), 0)


def test_context_creation_per_flavour():
    """How TensorRTBackend makes its execution context: RTX gets the native whole-graph strategy through a
    runtime config (the attribute names are checked against the installed TensorRT-RTX bindings when there
    are some), classic TensorRT a plain context and stream capture."""
    from types import SimpleNamespace

    from sitm_trt.runtime.backends.tensorrt_backend import TensorRTBackend

    try:
        import tensorrt_rtx_bindings as rtx_module
        strategy = rtx_module.CudaGraphStrategy
        assert hasattr(rtx_module.IRuntimeConfig, "cuda_graph_strategy")
        assert hasattr(rtx_module.ICudaEngine, "create_runtime_config")
    except ImportError:
        rtx_module = SimpleNamespace(CudaGraphStrategy=SimpleNamespace(WHOLE_GRAPH_CAPTURE="whole"))
        strategy = rtx_module.CudaGraphStrategy

    class Engine:
        def __init__(self):
            self.config = SimpleNamespace(cuda_graph_strategy=None)
            self.made_with = []

        def create_runtime_config(self):
            return self.config

        def create_execution_context(self, config=None):
            self.made_with.append(config)
            return "context"

    for is_rtx, graphs, want in ((True, True, "rtx"), (False, True, "capture"), (True, False, None), (False, False, None)):
        engine = Engine()
        fake = SimpleNamespace(_engine=engine, flavour=SimpleNamespace(is_rtx=is_rtx, module=rtx_module))
        assert TensorRTBackend._create_context(fake, graphs) == ("context", want)
        if want == "rtx":
            assert engine.made_with == [engine.config]
            assert engine.config.cuda_graph_strategy == strategy.WHOLE_GRAPH_CAPTURE
        else:
            assert engine.made_with == [None] and engine.config.cuda_graph_strategy is None


def test_graph_needs_a_cuda_device():
    from sitm_trt.kernels import extension

    if extension().cuda_devices()[0]:
        pytest.skip("a CUDA device is present (the GPU tests cover Graph)")
    with pytest.raises(RuntimeError):
        extension().Graph(0)
