"""The benchmark command runs and prints its table (no timing is asserted: speed lives in BENCHMARKS.md)."""

from __future__ import annotations

import json

from sitm_trt.tools import bench


def test_kernel_benchmark_prints_every_kernel(tmp_path, capsys):
    out = tmp_path / "k.json"
    assert bench.main(["kernels", "--device", "cpu", "--resolution", "512", "--repeats", "1", "--warmup", "0",
                       "--json", str(out)]) == 0
    text = capsys.readouterr().out
    for name in ("pre (uint8 HWC -> 4 inputs)", "fuse (Eq. 7)", "curve (Eq. 8)", "post (fuse + curve + crop)",
                 "post, residual fusion"):
        assert f"| {name} | cpu | 512 |" in text
    data = json.loads(out.read_text())
    assert len(data["rows"]) == 5 and data["header"]["cpu_triad_gbps"] > 0
    assert all(r["ms"] > 0 and r["torch_ms"] > 0 for r in data["rows"])


def test_pipeline_table_format():
    row = bench.PipeRow("torch", "cpu", "fp32", "compact", "512", "default", 1.0, 10.0, 1.0, 12.0, 11.0, 13.0,
                        83.3, 500.0)
    text = bench.format_pipeline([row], {"cpu": "x86_64", "torch": "2.13"})
    assert "| torch | cpu | fp32 | compact | 512 | default | 1.00 | 10.0 | 1.00 | 12.0 (11.0-13.0) | 83.30 | 500 (RSS) |" in text


def test_pipeline_benchmark_stages_add_up(tmp_path):
    """One real (CPU) row: pre + network + post make the end-to-end time of the same frames."""
    import torch

    from sitm_trt.model import SITMNet, save_weights

    torch.manual_seed(0)
    path = tmp_path / "w.safetensors"
    save_weights(SITMNet("compact"), path)
    rows, _ = bench.bench_pipeline(["torch:cpu:fp32"], ["compact"], ["512"], repeats=1, warmup=0,
                                   weights_path=str(path))
    (r,) = rows
    assert r.pre_ms > 0 and r.net_ms > 0 and r.post_ms > 0
    assert abs(r.pre_ms + r.net_ms + r.post_ms - r.total_ms) < 1e-6 * r.total_ms + 1e-9


def test_option_mistakes_are_usage_errors(capsys):
    """They were tracebacks (exit 1) from the middle of a run, or a misleading error (--frames 0)."""
    import pytest

    from sitm_trt.runtime.device import cuda_devices

    cases = [(["kernels", "--repeats", "0"], "--repeats must be >= 1"),
             (["pipeline", "--warmup", "-1"], "--warmup >= 0"),
             (["video", "--frames", "0"], "--frames must be >= 1"),
             (["video", "--weights", "/nope.safetensors"], "--weights: weights file not found"),
             (["batch", "--weights", "/nope.onnx"], "--weights: weights file not found")]
    if not cuda_devices()[0]:
        cases += [(["video", "--device", "cuda"], "--device cuda: no usable CUDA device"),
                  (["batch", "--backend", "tensorrt"], "--backend tensorrt runs on a GPU")]
    for argv, message in cases:
        with pytest.raises(SystemExit) as e:
            bench.main(argv)
        err = capsys.readouterr().err
        assert e.value.code == 2 and message in err and "Traceback" not in err, (argv, err)
