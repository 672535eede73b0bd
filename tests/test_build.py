"""How the extension was built, and that sitm_trt imports without torch."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap

import pytest

import sitm_trt


def test_build_info_fields():
    info = sitm_trt.build_info()
    assert info["version"] == sitm_trt.__version__
    assert isinstance(info["cuda"], bool) and info["cpu_threads"] >= 1
    assert info["cxx_compiler"]


@pytest.mark.skipif(shutil.which("nvcc") is None and not os.environ.get("CUDACXX"), reason="no CUDA compiler here")
def test_cuda_kernels_compiled_when_nvcc_is_present():
    if os.environ.get("SITM_WITH_CUDA", "AUTO").upper() in ("OFF", "0", "FALSE"):
        pytest.skip("this build was asked to be CPU-only")
    info = sitm_trt.build_info()
    assert info["cuda"] is True, info
    archs = info["cuda_architectures"].split()
    for sm in ("80", "86", "89", "90", "100", "120"):
        assert f"{sm}-real" in archs, archs
    assert "120-virtual" in archs  # PTX for the newest
    assert info["cuda_runtime"].startswith(("12.", "13."))


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
