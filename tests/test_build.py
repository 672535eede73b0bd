"""How the extension was built (which CUDA architectures, if any: cmake/SitmCudaArchs.cmake), and that sitm_trt
imports without torch."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import sitm_trt


def test_build_info_fields():
    info = sitm_trt.build_info()
    assert info["version"] == sitm_trt.__version__
    assert isinstance(info["cuda"], bool) and info["cpu_threads"] >= 1
    assert info["cxx_compiler"]


ARCHS_SCRIPT = Path(__file__).resolve().parents[1] / "cmake" / "SitmCudaArchs.cmake"


def _archs_script(*defines: str) -> str:
    """What cmake/SitmCudaArchs.cmake prints in script mode (its message() goes to stderr)."""
    r = subprocess.run(["cmake", *(f"-D{d}" for d in defines), "-P", str(ARCHS_SCRIPT)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stderr.strip()


def _fake_nvidia_smi(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "nvidia-smi"
    path.write_text(f"#!/bin/sh\necho called >> {tmp_path / 'calls'}\n{body}\n")
    path.chmod(0o755)
    return path


@pytest.mark.parametrize("body, want, caps", [
    (None, "OFF", ""),  # no nvidia-smi: nvcc on PATH alone must not cost minutes of CUDA compiles
    ("echo \"NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.\"; exit 9", "OFF", ""),
    ("echo 7.0", "OFF", ""),  # older than sm_80, the oldest architecture built unless named
    ("echo 9.0; echo 8.6; echo 9.0", "IF_FOUND", "9.0;8.6"),  # each GPU model once
])
def test_auto_builds_cuda_only_for_a_gpu_it_finds(tmp_path, body, want, caps):
    smi = tmp_path / "missing" if body is None else _fake_nvidia_smi(tmp_path, body)
    got_want, got_caps, why = _archs_script("SITM_PLAN=AUTO", f"SITM_NVIDIA_SMI={smi}").split("|", 2)
    assert (got_want, got_caps) == (want, caps), why
    assert "SITM_WITH_CUDA=ON builds" in why  # the build log says how to get every architecture


@pytest.mark.parametrize("mode, user_archs, want", [
    ("OFF", "", "OFF"), ("ON", "", "REQUIRED"), ("ON", "90-real", "REQUIRED"), ("AUTO", "89-real", "IF_FOUND"),
])
def test_named_modes_and_architectures_do_not_look_for_a_gpu(tmp_path, mode, user_archs, want):
    smi = _fake_nvidia_smi(tmp_path, "echo 9.0")
    got_want, got_caps, _ = _archs_script(f"SITM_PLAN={mode}", f"SITM_USER_ARCHS={user_archs}",
                                          f"SITM_NVIDIA_SMI={smi}").split("|", 2)
    assert (got_want, got_caps) == (want, "")
    assert not (tmp_path / "calls").exists()


@pytest.mark.parametrize("caps, nvcc_archs, archs", [
    ("9.0", "75;80;86;87;89;90;100;110;103;120;121", "90-real"),  # nvcc 13.0's --list-gpu-code, unsorted
    ("9.0;8.6;9.0", "", "86-real;90-real"),  # an nvcc without --list-gpu-code: the GPUs' own architectures
    ("12.1", "80;86;89;90;100;120", "120-virtual"),  # newer than nvcc: PTX that the driver compiles
    ("10.3;8.9", "80;86;90;100;101;120", "86-virtual;101-virtual"),
    ("7.5", "75;80;86", ""),
    ("8.0;7.0;12.0", "75;80;86;89;90;100;120", "80-real;120-real"),
])
def test_auto_architectures_for_the_local_gpus(caps, nvcc_archs, archs):
    assert _archs_script(f"SITM_GPU_CAPS={caps}", f"SITM_NVCC_ARCHS={nvcc_archs}") == archs


def _local_gpu_caps() -> list[str]:
    """The compute capabilities nvidia-smi reports here ([] without a GPU or a driver)."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    r = subprocess.run([smi, "--query-gpu=compute_cap", "--format=csv,noheader"], capture_output=True, text=True,
                       timeout=60)
    lines = {line.strip() for line in r.stdout.splitlines()} if r.returncode == 0 else set()
    return sorted(c for c in lines if re.fullmatch(r"\d+\.\d+", c))


def test_installed_extension_follows_the_cuda_rule():
    """The installed extension was built as the rule says for this machine, with the build's settings in the
    environment (CI: `pip install` then `pytest`, both with the defaults): AUTO compiles CUDA only with nvcc and
    a GPU, and then for that GPU alone; ON for every supported GPU."""
    mode = os.environ.get("SITM_WITH_CUDA", "AUTO").upper()
    if mode in ("OFF", "0", "FALSE"):
        pytest.skip("this build was asked to be CPU-only")
    if "CMAKE_CUDA_ARCHITECTURES" in os.environ.get("CMAKE_ARGS", "") or os.environ.get("CUDAARCHS"):
        pytest.skip("architectures named by hand")
    info = sitm_trt.build_info()
    archs = info["cuda_architectures"].split()
    nvcc = shutil.which("nvcc") or os.environ.get("CUDACXX")
    if mode in ("ON", "1", "TRUE"):
        assert info["cuda"] is True, info
        for sm in ("80", "86", "89", "90", "100", "120"):
            assert f"{sm}-real" in archs, archs
        assert "120-virtual" in archs  # PTX for the newest
        assert info["cuda_runtime"].startswith(("12.", "13."))
        return
    sms = [int(c.replace(".", "")) for c in _local_gpu_caps()]
    sms = [sm for sm in sms if sm >= 80]
    if nvcc is None or not sms:
        assert info["cuda"] is False, f"AUTO compiled CUDA without {'nvcc' if nvcc is None else 'a GPU'}: {info}"
        assert archs == []
        return
    assert info["cuda"] is True, info
    for sm in sms:  # machine code for each GPU, or PTX it can run
        assert f"{sm}-real" in archs or any(a.endswith("-virtual") and int(a.split("-")[0]) <= sm for a in archs)
    assert {a for a in archs if a.endswith("-real")} <= {f"{sm}-real" for sm in sms}, archs  # for no other GPU


def test_import_without_torch():
    code = textwrap.dedent(
        """
        import sys
        sys.modules["torch"] = None  # make `import torch` fail as if it were not installed
        import numpy as np
        import sitm_trt
        from sitm_trt import kernels
        out = kernels.pre(np.full((2, 3, 3), 255, np.uint8), stride=4)
        assert isinstance(out.image, np.ndarray) and out.image.shape == (1, 3, 4, 4), out.image.shape
        assert float(out.image.min()) == 1.0
        try:
            sitm_trt.reference
        except ImportError as err:
            assert "pip install" in str(err) and err.__cause__ is not None, err
            print("OK")
        """
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "OK"
