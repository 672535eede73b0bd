"""Shared test helpers. GPU tests carry the `gpu` marker and are skipped, at run time, without a CUDA device;
nothing here touches the GPU at import or collection."""

from __future__ import annotations

import functools

import pytest


@functools.lru_cache(maxsize=None)
def cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    if not torch.cuda.is_available():
        return False
    from sitm_trt import kernels

    return bool(kernels.build_info()["cuda"])


def cpu_and_cuda():
    """Parametrize values for a `device` argument; the CUDA case carries the `gpu` marker."""
    return ("cpu", pytest.param("cuda", marks=pytest.mark.gpu))


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("gpu") is not None and not cuda_available():
        pytest.skip("needs a CUDA device and a CUDA build of sitm-trt")


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
