"""The shipped weights (``default`` and ``filmic``): present in the package, checksummed, as good as their cards
say, and the default is what ``sitm_trt.infer`` / ``sitm-trt infer`` use on a CPU-only machine."""

from __future__ import annotations

import hashlib
import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch

import sitm_trt
from sitm_trt.model import predict_hdr
from sitm_trt.weights import WEIGHTS_DIR, load, shipped_names

# The weights ship (docs/training.md, "The shipped default weights"): every test here must run and pass, and a
# package without them fails here rather than skipping.


SHIPPED = ("default", "filmic")


@pytest.fixture(scope="module")
def default():
    return load("default")


@pytest.fixture(scope="module", params=SHIPPED)
def shipped(request):
    return load(request.param)


def test_the_shipped_sets_are_these():
    assert shipped_names() == sorted(SHIPPED)


def test_shipped_files_match_their_card(shipped):
    card, name = shipped.card, shipped.path.stem
    assert shipped.path == (WEIGHTS_DIR / f"{name}.safetensors").resolve()
    assert card["sha256"] == hashlib.sha256(shipped.path.read_bytes()).hexdigest() == shipped.sha256
    assert card["preset"]["name"] == shipped.preset_name == "compact"
    for precision in ("fp32", "fp16"):
        onnx = WEIGHTS_DIR / f"{name}-{precision}.onnx"
        assert hashlib.sha256(onnx.read_bytes()).hexdigest() == card["onnx"][precision], precision
    total = sum(p.stat().st_size for p in WEIGHTS_DIR.glob(f"{name}[.-]*"))
    assert total < 8 * 2**20, f"shipped weights take {total} bytes"
    assert card["data"]["recipe_hash"] and card["training"]["step"] > 0 and card["training"]["train_seconds"] > 0


def test_card_lists_every_data_source_with_license_and_checksum(shipped):
    """Issue 16: the card records every data source with its license and checksum; each real source's checksum is
    the one pinned in the fetch tables (an independent copy: the tables are what `data fetch` verifies against)."""
    from sitm_training.data.source_tables import DEBIAN_FILES, REGISTRY_FILES

    pinned = {f.id: f.sha256 for f in DEBIAN_FILES} | {f.id: f.pixels_sha256 for f in REGISTRY_FILES}
    sources = shipped.card["data"]["sources"]
    real = [s for s in sources if s["id"] != "procedural"]
    assert real and {s["split"] for s in real} >= {"train", "test"}
    for s in sources:
        assert s["license"] and s["origin"] and isinstance(s["license_known"], bool), s
    for s in real:
        assert s["sha256"] == pinned[s["id"]], s["id"]
    assert [s["id"] for s in sources].count("procedural") == 1  # the recipe's real_fraction is 0.5


def test_card_evaluation_beats_both_baselines_on_every_metric(shipped):
    """The shipping rule of the training issue, checked on the evaluation the card carries (summary.json of
    ``python -m sitm_training.evaluate`` on the held-out real test pairs): the whole test split for ``default``,
    its samples shot through an S-curve (``data export --families filmic,hable``) for ``filmic``."""
    ev = shipped.card["evaluation"]["summary"]
    methods = ev["methods"]
    models = [m for m, s in methods.items() if s["kind"] == "model"]
    baselines = [m for m, s in methods.items() if s["kind"] == "baseline"]
    assert len(models) == 1 and {"linear", "rempel", "banterle"} <= set(baselines)
    assert ev["jod"].startswith("ColorVideoVDP")  # JOD was computed, not skipped
    if shipped.path.stem == "default":
        assert ev["images"] >= 90 and ev["pairs"] == "data/sitm256-test"
    else:
        assert ev["images"] >= 20 and ev["pairs"] == "data/sitm256-test-scurve"
    model = methods[models[0]]
    assert shipped.sha256[:12] in model["description"]  # the evaluation scored this very file
    for metric in ev["metrics"]:
        assert model[metric] is not None and math.isfinite(model[metric]), metric
        for b in baselines:
            assert model[metric] > methods[b][metric], f"{metric}: {models[0]} {model[metric]} <= {b} {methods[b][metric]}"
    # the card's markdown table (the README's) is this evaluation: the model's row, cell by cell, at the table's precision
    row = next(line for line in shipped.card["evaluation"]["table"].splitlines() if line.startswith(f"| {models[0]} |"))
    cells = [c.strip() for c in row.strip("|").split("|")][1:1 + len(ev["metrics"])]
    assert len(cells) == len(ev["metrics"])
    for metric, cell in zip(ev["metrics"], cells):
        decimals = len(cell.split(".")[1]) if "." in cell else 0
        assert float(cell) == pytest.approx(model[metric], abs=0.51 * 10**-decimals), (metric, cell, model[metric])


@pytest.mark.parametrize("heading, name, model", [("## Quality of the shipped weights", "default", "compact"),
                                                   ("### Inputs through a filmic curve", "filmic", "filmic")])
def test_readme_quality_table_is_the_cards(heading, name, model):
    """The README's table of each shipped set (its section's first table) holds that card's evaluation: each
    method's row, at the README's precision."""
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split(heading, 1)[1].split("\n## ", 1)[0]
    table = section[section.index("\n| method"):].split("\n\n", 1)[0]  # the section's first table: the card's
    rows = [r for r in table.splitlines() if r.startswith("| ") and not r.startswith("| method") and "---" not in r]
    ev = load(name).card["evaluation"]["summary"]
    names = {"linear": "linearized input", "rempel": "Rempel", "banterle": "Banterle", model: f"`{model}`"}
    assert len(rows) == len(names) and set(ev["methods"]) == set(names)
    for method, label in names.items():
        row = next(r for r in rows if label in r)
        cells = [c.strip().strip("*") for c in row.strip("|").split("|")][1:]
        assert len(cells) == len(ev["metrics"]), row
        for metric, cell in zip(ev["metrics"], cells):
            decimals = len(cell.split(".")[1]) if "." in cell else 0
            assert float(cell) == pytest.approx(ev["methods"][method][metric], abs=0.51 * 10**-decimals), (method, metric)


def test_infer_filmic_by_name_is_the_filmic_network():
    """``weights="filmic"`` reaches the filmic set (not the default) through the public API."""
    rng = np.random.default_rng(4)
    frame = rng.integers(0, 256, size=(32, 48, 3), dtype=np.uint8)
    frame[:8] = 255
    got = sitm_trt.infer(frame, backend="torch", weights="filmic")
    with torch.no_grad():
        want = predict_hdr(load("filmic").model().eval(), torch.from_numpy(frame))
        other = predict_hdr(load("default").model().eval(), torch.from_numpy(frame))
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-5, atol=1e-6)
    assert float((want - other).abs().max()) > 1e-2  # the two sets differ, so the check above can tell them apart


def test_infer_numpy_on_cpu_uses_the_default_weights(default):
    rng = np.random.default_rng(3)
    frame = rng.integers(0, 256, size=(40, 56, 3), dtype=np.uint8)
    frame[:10] = 255  # a clipped band: the expansion must go above the clip level there
    got = sitm_trt.infer(frame, backend="torch")
    assert isinstance(got, np.ndarray) and got.shape == (1, 3, 40, 56) and got.dtype == np.float32
    with torch.no_grad():
        want = predict_hdr(default.model().eval(), torch.from_numpy(frame))
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-5, atol=1e-6)
    assert np.isfinite(got).all() and got.min() >= 0
    assert got[..., :10, :].mean() > 1.0 > got[..., 10:, :].mean()


def test_quickstart_main_job(tmp_path):
    """The README Quickstart's first command after the install: the shipped sample through the default weights."""
    from sitm_trt.media.io import read_hdr, read_ldr

    exr = tmp_path / "coffee.exr"
    run = subprocess.run([sys.executable, "-m", "sitm_trt.tools.cli", "infer", "--sample", "-o", str(exr), "--preview"],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    hdr = read_hdr(exr)
    from sitm_trt.samples import SAMPLE

    sample = read_ldr(SAMPLE)
    assert hdr.shape == sample.shape and np.isfinite(hdr).all() and hdr.max() > 1.0
    preview = read_ldr(exr.with_suffix(".preview.png"))
    assert preview.shape == sample.shape and preview.std() > 10


def test_shipped_onnx_graphs_compute_the_shipped_weights(shipped):
    """The ONNX files TensorRT builds from (no torch at run time) are the shipped weights' network: float32 on
    onnxruntime matches PyTorch, float16 stays within a small multiple of PyTorch's own float16 error."""
    ort = pytest.importorskip("onnxruntime")
    from sitm_trt.model.export import INPUT_NAMES, OUTPUT_NAMES, example_inputs

    net = shipped.model().eval()
    args = example_inputs(1, 96, 160, seed=11)
    with torch.no_grad():
        ref = net(*args)
        half = shipped.model().eval().half()(*(t.half() for t in args))
    for precision, feed in (("fp32", args), ("fp16", tuple(t.half() for t in args))):
        onnx = shipped.onnx(precision)
        assert onnx.parent == WEIGHTS_DIR, onnx  # the shipped export, not one made now into the cache
        sess = ort.InferenceSession(str(onnx), providers=["CPUExecutionProvider"])
        outs = sess.run(None, {n: t.numpy() for n, t in zip(INPUT_NAMES, feed)})
        for o, r, h, field in zip(outs, ref, half, OUTPUT_NAMES):
            assert o.shape == tuple(r.shape), (precision, field)
            if precision == "fp32":
                np.testing.assert_allclose(o, r.numpy(), rtol=1e-4, atol=1e-4, err_msg=field)
            else:
                err, err_torch = np.abs(o.astype(np.float32) - r.numpy()).max(), (h.float() - r).abs().max().item()
                assert err <= 4 * err_torch + 1e-3, f"{field}: onnx fp16 error {err:.2e}, torch fp16 {err_torch:.2e}"
