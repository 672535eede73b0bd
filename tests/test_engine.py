"""TensorRT engines built ahead of time with TensorRT-RTX (no GPU needed), and the on-disk engine cache."""

from __future__ import annotations

import json
import multiprocessing as mp
from pathlib import Path

import pytest

from sitm_trt.runtime.backends.trt_engine import EngineCache, EngineKey, Profile, find_flavour
from sitm_trt.weights import load

pytestmark = pytest.mark.slow

SMALL = Profile(min_hw=(64, 64), opt_hw=(128, 128), max_hw=(256, 256))


@pytest.fixture(scope="module")
def rtx():
    pytest.importorskip("tensorrt_rtx_bindings", reason="TensorRT-RTX is not installed (pip install '.[test]')")
    return find_flavour("tensorrt-rtx")


@pytest.fixture(scope="module")
def weights(tiny_weights_path):
    return load(tiny_weights_path)


def test_build_cache_reuse_and_rebuild_after_corruption(rtx, weights, tmp_path):
    from sitm_trt.runtime.backends.tensorrt_backend import prepare_engine

    cache = EngineCache(tmp_path / "engines")
    kw = dict(precision="fp16", profile=SMALL, flavour=rtx, cache=cache)
    data, built, key = prepare_engine(weights, **kw)
    assert built and len(data) > 10_000
    engine, meta, _ = cache.paths(key)
    assert engine.read_bytes() == data
    info = json.loads(meta.read_text())
    assert info["key"]["weights_sha256"] == weights.sha256 and info["key"]["precision"] == "fp16"
    assert info["key"]["flavour"] == "tensorrt-rtx" and info["key"]["target"].startswith("rtx-portable")
    # the padded profile is in the key
    assert info["key"]["profile"]["max_hw"] == [256, 256]

    data2, built2, _ = prepare_engine(weights, **kw)
    assert not built2 and data2 == data

    # corrupt the cached engine: detected by its checksum, rebuilt
    raw = bytearray(engine.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    engine.write_bytes(bytes(raw))
    data3, built3, _ = prepare_engine(weights, **kw)
    assert built3 and engine.read_bytes() == data3

    # a truncated sidecar is also a miss
    meta.write_text("{")
    assert prepare_engine(weights, **kw)[1]

    # a different precision or profile is a different engine
    _, built4, key4 = prepare_engine(weights, precision="fp32", profile=SMALL, flavour=rtx, cache=cache)
    assert built4 and key4.digest() != key.digest()


def test_validate_rejects_incompatible_file(rtx, weights, tmp_path):
    from sitm_trt.runtime.backends.tensorrt_backend import prepare_engine

    cache = EngineCache(tmp_path)
    prepare_engine(weights, profile=SMALL, flavour=rtx, cache=cache)
    calls = []

    def validate(data):  # e.g. deserialization fails on this GPU / TensorRT version
        calls.append(len(data))
        return len(calls) > 1

    _, built, _ = prepare_engine(weights, profile=SMALL, flavour=rtx, cache=cache, validate=validate)
    assert built and len(calls) == 2  # the cached file was refused, the fresh build accepted


def _build_in_process(args):
    root, path = args
    from sitm_trt.runtime.backends.tensorrt_backend import prepare_engine

    data, built, _ = prepare_engine(load(path), profile=SMALL, flavour=find_flavour("tensorrt-rtx"),
                                    cache=EngineCache(root))
    return built, len(data)


def test_two_processes_building_the_same_engine(rtx, weights, tmp_path):
    ctx = mp.get_context("spawn")
    with ctx.Pool(2) as pool:
        results = pool.map(_build_in_process, [(str(tmp_path), str(weights.path))] * 2)
    assert sorted(b for b, _ in results) == [False, True]  # one built, the other waited and reused it
    assert len({n for _, n in results}) == 1
    assert not [p for p in Path(tmp_path).iterdir() if p.name.endswith(".tmp")]  # no temporary file left


def test_engine_key_digest_changes_with_every_field():
    base = EngineKey("a" * 64, "c" * 64, "compact", "tensorrt-rtx", "1.7", "fp16", Profile(), "t")
    fields = {"weights_sha256": "b" * 64, "onnx_sha256": "d" * 64, "preset": "fast", "flavour": "tensorrt", "flavour_version": "1.8",
              "precision": "fp32", "profile": Profile(max_hw=(1080, 1920)), "target": "u"}
    import dataclasses

    digests = {dataclasses.replace(base, **{k: v}).digest() for k, v in fields.items()}
    assert len(digests | {base.digest()}) == len(fields) + 1


def test_engine_for_the_shipped_weights(rtx, tmp_path):
    """The shipped default weights come with their ONNX exports (checksummed in the card) and build into a
    real TensorRT-RTX engine for the default profile (64x64 .. 3840x2160) without a GPU."""
    from sitm_trt.runtime.backends.tensorrt_backend import prepare_engine

    w = load("default")  # shipped since the fifth training round (docs/training.md): missing is a packaging bug
    for precision in ("fp16", "fp32"):
        path = w.onnx(precision)
        assert path.parent == w.path.parent, "the shipped export must be used, not a fresh one"
    data, built, key = prepare_engine(w, precision="fp16", flavour=rtx, cache=EngineCache(tmp_path))
    assert built and key.profile.max_hw == (2160, 3840) and key.weights_sha256 == w.sha256
    assert not prepare_engine(w, precision="fp16", flavour=rtx, cache=EngineCache(tmp_path))[1]


def test_what_each_gpu_gets_from_tensorrt():
    """TensorRT-RTX's support matrix (7.5, 8.6, 8.9, 12.x) against classic TensorRT (7.5 and newer): A100, H100/H200
    and B200 need classic TensorRT; the words of info()'s gpu_plan say so."""
    from sitm_trt.runtime.backends.trt_engine import Flavour, gpu_plan, rtx_supports

    rtx, classic = Flavour("tensorrt-rtx", None, "1.7"), Flavour("tensorrt", None, "10")
    for cc, ok in {(7, 5): True, (8, 0): False, (8, 6): True, (8, 9): True, (9, 0): False, (10, 0): False,
                   (12, 0): True, (12, 1): True, (7, 0): False}.items():
        assert rtx_supports(*cc) is ok and rtx.supports_compute_capability(*cc) is ok, cc
        assert classic.supports_compute_capability(*cc) is (cc >= (7, 5)), cc
    assert "classic TensorRT only" in gpu_plan(9, 0) and "TensorRT-RTX does not support" in gpu_plan(8, 0)
    assert "else TensorRT-RTX" in gpu_plan(8, 9) and "below TensorRT's minimum" in gpu_plan(7, 0)


def test_build_engine_says_what_it_verified(rtx, tiny_weights_path, tmp_path, capsys):
    """`sitm-trt build-engine` run twice: built, then found. Without a usable GPU the second report says the file
    matched its sidecar but was not deserialized (a garbage file with a matching sidecar is not called an engine)."""
    from sitm_trt import kernels
    from sitm_trt.tools import build_engine

    args = ["--weights", str(tiny_weights_path), "--flavour", "tensorrt-rtx", "--min", "64x64", "--opt", "128x128",
            "--max", "256x256", "--cache-dir", str(tmp_path)]
    assert build_engine.main(args) == 0
    assert " engine built: " in capsys.readouterr().out
    assert build_engine.main(args) == 0
    out = capsys.readouterr().out
    ext = kernels.extension()
    usable = ext.cuda_devices()[0] > 0 and rtx.supports_compute_capability(*ext.device_properties(0)["compute_capability"])
    if usable:
        assert "found in the cache (deserialized on this GPU)" in out
    else:
        assert "found in the cache (checksum matches its sidecar; not deserialized here" in out
