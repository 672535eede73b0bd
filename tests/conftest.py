"""Shared test helpers. GPU tests carry the `gpu` marker and are skipped, at run time, without a CUDA device;
nothing here touches the GPU at import or collection.

``SITM_REQUIRE_GPU=1`` (what tools/gpu_check.sh sets) turns every skip of a `gpu` test into a failure, whatever
skipped it (no device, a CPU-only build, TensorRT missing inside the test), and so does a test module holding
`gpu` tests that is skipped whole at collection (an ``importorskip`` at module level): a GPU run cannot pass by
skipping."""

from __future__ import annotations

import functools
import os
import sys

import pytest

# The `sitm-trt` command line in a child that takes Ctrl-C as a terminal's would, whatever this process holds:
# Python keeps SIGINT ignored when it starts with it ignored (under nohup, or as a background job of a
# non-interactive shell, which is how CI may run us), and a blocked signal stays blocked across exec. The child
# unblocks SIGINT and installs Python's KeyboardInterrupt handler before it imports the CLI.
CTRL_C_CLI = [sys.executable, "-c",
              "import signal, sys; signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT}); "
              "signal.signal(signal.SIGINT, signal.default_int_handler); "
              "from sitm_trt.tools import cli; sys.exit(cli.main(sys.argv[1:]))"]


def require_gpu() -> bool:
    return os.environ.get("SITM_REQUIRE_GPU", "") == "1"


@functools.lru_cache(maxsize=None)
def cuda_missing() -> str | None:
    """Why the CUDA tests cannot run here, or None when they can."""
    try:
        import torch
    except ImportError:
        return "torch is not installed"
    if not torch.cuda.is_available():
        return f"torch {torch.__version__} sees no CUDA device"
    from sitm_trt import kernels

    if not kernels.build_info()["cuda"]:
        return "the sitm-trt extension was built without CUDA"
    from sitm_trt.runtime import device as runtime_device

    count, why = runtime_device.cuda_devices()  # e.g. a driver too old for the static CUDA 13 runtime
    if not count:
        return f"torch sees a GPU but the sitm-trt extension cannot use it: {why}"
    return None


def cuda_available() -> bool:
    return cuda_missing() is None


def cpu_and_cuda():
    """Parametrize values for a `device` argument; the CUDA case carries the `gpu` marker."""
    return ("cpu", pytest.param("cuda", marks=pytest.mark.gpu))


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("gpu") is not None and not cuda_available():
        pytest.skip(f"needs a CUDA device and a CUDA build of sitm-trt ({cuda_missing()})")


def _skip_reason(longrepr) -> str:
    return longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call):
    outcome = yield
    rep = outcome.get_result()
    if (rep.skipped and not hasattr(rep, "wasxfail") and require_gpu()
            and item.get_closest_marker("gpu") is not None):
        rep.outcome = "failed"
        rep.longrepr = f"SITM_REQUIRE_GPU=1: this gpu test was skipped: {_skip_reason(rep.longrepr)}"


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector):
    outcome = yield
    rep = outcome.get_result()
    if rep.skipped and require_gpu() and isinstance(collector, pytest.Module):
        try:
            holds_gpu_tests = "mark.gpu" in collector.path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            holds_gpu_tests = False
        if holds_gpu_tests:
            rep.outcome = "failed"
            rep.longrepr = (f"SITM_REQUIRE_GPU=1: {collector.nodeid} holds gpu tests and was skipped whole at "
                            f"collection: {_skip_reason(rep.longrepr)}")


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    """Engines and ONNX exports made by tests go to a temporary cache, never the user's ~/.cache."""
    monkeypatch.setenv("SITM_TRT_CACHE", str(tmp_path_factory.getbasetemp() / "sitm-trt-cache"))


@pytest.fixture(scope="session")
def tiny_weights_path(tmp_path_factory):
    """Random-init `compact` weights (seed 0), saved once per session: for tests of the plumbing."""
    import torch

    from sitm_trt.model import SITMNet, save_weights

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("w") / "tiny.safetensors"
    save_weights(SITMNet("compact").eval(), path)
    return path
