"""Fault injection (issue 22): hostile sizes at the kernel boundary, malformed weights and images, symlink plants,
interrupted and failing writes, the memory guard. Every case that could crash the interpreter runs in its own
process, so a SIGSEGV/SIGABRT or an out-of-memory kill fails the test instead of the test run; the property
tests (hypothesis) run in a subprocess too. docs/reliability.md lists the guarantees these tests keep."""

from __future__ import annotations

import json
import os
import re
import signal
import struct
import subprocess
import sys
import textwrap
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest

from sitm_trt import weights as W

HERE = Path(__file__).resolve().parent


def run_py(code: str, *, cwd: Path | None = None, env: dict | None = None,
           timeout: float = 120) -> subprocess.CompletedProcess:
    """Runs ``code`` in a fresh interpreter; a death by signal fails the calling test with the output."""
    full_env = {**os.environ, **(env or {})}
    full_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE), full_env.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=cwd, env=full_env, capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode >= 0, f"killed by signal {-proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    return proc


def cli(*args: str, cwd: Path | None = None, env: dict | None = None,
        timeout: float = 180) -> subprocess.CompletedProcess:
    code = "import sys; from sitm_trt.tools import cli; sys.exit(cli.main(sys.argv[1:]))"
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, env=full_env, capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode >= 0, f"killed by signal {-proc.returncode}:\n{proc.stderr}"
    return proc


def clean_error(proc: subprocess.CompletedProcess, rc: int, pattern: str) -> None:
    """Exit status ``rc``, no traceback, and ``pattern`` (a regex) in the message."""
    assert proc.returncode == rc, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    assert re.search(pattern, proc.stderr), proc.stderr


# ---------------------------------------------------------------------------------------------------------
# Sizes at the kernel boundary (the reproductions crashed the interpreter)
# ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("code, pattern", [
    ("import numpy as np; from sitm_trt import kernels\n"
     "kernels.pre(np.zeros((4, 4, 3), np.uint8), stride=2**31)", r"ValueError: pre: stride must be <= 65536"),
    ("from sitm_trt import _C\n_C.empty([2**31, 2**31, 3], 'uint8')",
     r"ValueError: empty: shape \(2147483648, 2147483648, 3\) is too large"),
    ("import torch; from sitm_trt import _C\nb = _C.empty([4], 'float32')\ntorch.from_dlpack(b.view([2**62, 4]))",
     r"ValueError: Buffer.view: shape \(4611686018427387904, 4\) is too large"),
    ("from sitm_trt import _C\n_C.empty([2**40, 0, 2**40], 'uint8')",  # zero elements, but h * w overflows
     r"ValueError: empty: shape .* is too large"),
    ("from sitm_trt import _C\n_C.empty([1] * 17, 'uint8')", r"ValueError: empty: shape .* has 17 dimensions"),
    ("from sitm_trt import _C\n_C.empty([-1, 3], 'uint8')", r"ValueError: empty: shape .* negative dimension"),
    ("import numpy as np; from sitm_trt import kernels\n"
     "kernels.pre(np.zeros((1,) * 17 + (3,), np.uint8))", r"ValueError: pre: frame has 18 dimensions \(at most 16\)"),
])
def test_hostile_sizes_raise_value_errors(code, pattern):
    proc = run_py(code)
    assert proc.returncode == 1 and re.search(pattern, proc.stderr), proc.stderr


PROPERTIES = '''
import numpy as np
from hypothesis import assume, given, settings, strategies as st
from sitm_trt import _C, kernels

LIMIT, ITEM = 1 << 48, {"uint8": 1, "uint16": 2, "float16": 2, "float32": 4}
dims = st.one_of(st.integers(0, 9), st.integers(1 << 20, 1 << 62))

def nonzero_bytes(shape, item):  # the reference: Python integers cannot overflow
    n = item
    for s in shape:
        n *= s if s else 1
    return n

@settings(max_examples=300, deadline=None)
@given(st.lists(dims, max_size=18), st.sampled_from(sorted(ITEM)))
def empty(shape, dtype):
    refuse = len(shape) > 16 or nonzero_bytes(shape, ITEM[dtype]) > LIMIT
    total = nonzero_bytes(shape, ITEM[dtype]) if all(shape) else 0
    assume(refuse or total <= 1 << 20)  # never allocate much for real
    try:
        b = _C.empty(shape, dtype)
    except ValueError as err:
        assert refuse, (shape, dtype, err)
        return
    assert not refuse and b.nbytes == total and b.capacity == total and list(b.shape) == shape

@settings(max_examples=300, deadline=None)
@given(st.lists(dims, max_size=18), st.sampled_from(sorted(ITEM)), st.integers(0, 4096))
def view(shape, dtype, capacity):
    base = _C.empty([capacity], "uint8")
    need = nonzero_bytes(shape, ITEM[dtype]) if all(shape) else 0
    refuse = len(shape) > 16 or nonzero_bytes(shape, ITEM[dtype]) > LIMIT or need > capacity
    try:
        v = base.view(shape, dtype)
    except ValueError:
        assert refuse, (shape, dtype, capacity)
        return
    assert not refuse and v.nbytes == need and v.data_ptr == base.data_ptr

@settings(max_examples=150, deadline=None)
@given(st.integers(1, 3), st.integers(1, 40), st.integers(1, 40),
       st.one_of(st.integers(1, 64), st.integers(1 << 16, 1 << 62)))
def pre(n, h, w, stride):
    frame = np.random.default_rng(h * w).integers(0, 255, (n, h, w, 3), np.uint8)
    hp, wp = -(-h // stride) * stride, -(-w // stride) * stride
    if stride > 1 << 16 or n * 5 * hp * wp * 4 > LIMIT:
        try:
            kernels.pre(frame, stride=stride)
        except ValueError:
            return
        raise AssertionError(("accepted", n, h, w, stride))
    assume(n * 11 * hp * wp * 4 <= 1 << 24)
    out = kernels.pre(frame, stride=stride)
    assert out.image.shape == (n, 3, hp, wp) and out.guide.shape == (n, 2, hp, wp)
    x = frame.astype(np.float32).transpose(0, 3, 1, 2) / 255
    assert np.allclose(out.image[:, :, :h, :w], x, atol=1e-6)  # the unpadded part is the frame itself

empty(); view(); pre()
print("properties ok")
'''


def test_size_properties_at_the_kernel_boundary():
    """hypothesis: Buffer sizes, views and pre's padding agree with a Python-integer reference, and every shape
    the reference says overflows (or exceeds 2**48 bytes or 16 dimensions) is a ValueError, never a crash."""
    proc = run_py(PROPERTIES, timeout=300)
    assert proc.returncode == 0 and "properties ok" in proc.stdout, proc.stdout + proc.stderr


def test_presets_are_validated():
    from sitm_trt.model.config import Preset

    with pytest.raises(ValueError, match="at most 12 levels"):
        Preset(name="d", widths=(2,) * 32, enc_convs=(1,) * 32, dec_convs=(1,) * 31, cmab_levels=(False,) * 32,
               eab_dim=8, eab_heads=1, eab_depth=1, mefm_width=2, mefm_local=1, mefm_dilated=1)
    with pytest.raises(ValueError, match="widths must be a list of integers"):
        Preset.from_dict({"name": "x", "widths": "abcde"})
    with pytest.raises(ValueError, match=r"mefm_width must be an integer in \[1, 4096\]"):
        Preset(name="x", mefm_width=10**9)
    with pytest.raises(ValueError, match="expected a JSON object"):
        Preset.from_json("[1, 2]")
    assert Preset.from_json(Preset(name="ok").to_json()) == Preset(name="ok")  # valid presets round-trip


# ---------------------------------------------------------------------------------------------------------
# Malformed weights: one error type, exit 2
# ---------------------------------------------------------------------------------------------------------

def _default_parts() -> tuple[bytes, dict, bytes]:
    blob = W.load("default").path.read_bytes()
    (n,) = struct.unpack("<Q", blob[:8])
    return blob, json.loads(blob[8:8 + n]), blob[8 + n:]


def _with_header(header, data: bytes) -> bytes:
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + data


def _weights_cases() -> dict[str, bytes]:
    blob, hdr, data = _default_parts()
    meta = hdr["__metadata__"]
    first = min((k for k in hdr if k != "__metadata__"), key=lambda k: hdr[k]["data_offsets"][0])
    shifted = {**hdr, first: {**hdr[first], "data_offsets": [4, hdr[first]["data_offsets"][1] + 4]}}
    deep = {"name": "d", "widths": [2] * 32, "enc_convs": [1] * 32, "dec_convs": [1] * 31, "cmab_levels": [False] * 32,
            "eab_dim": 8, "eab_heads": 1, "eab_depth": 1, "mefm_width": 2, "mefm_local": 1, "mefm_dilated": 1}
    flipped = bytearray(blob)
    flipped[12] ^= 0x40  # inside the JSON header
    return {
        "header a list": _with_header([1, 2], data),
        "metadata a string": _with_header({**hdr, "__metadata__": "x"}, data),
        "preset not JSON": _with_header({**hdr, "__metadata__": {**meta, "sitm_trt.preset": "{nope"}}, data),
        "preset missing keys": _with_header({**hdr, "__metadata__": {**meta, "sitm_trt.preset": '{"widths": [4, 4]}'}},
                                            data),
        "32-level preset": _with_header({**hdr, "__metadata__": {**meta, "sitm_trt.preset": json.dumps(deep)}}, data),
        "bad offsets": _with_header(shifted, data),
        "truncated": blob[: len(blob) // 2],
        "header length lies": struct.pack("<Q", 1 << 40) + blob[8:],
        "bit flip in the header": bytes(flipped),
        "empty": b"",
    }


@pytest.mark.parametrize("case", list(_weights_cases()))
def test_malformed_weights_raise_weights_error(tmp_path, case):
    path = tmp_path / "w.safetensors"
    path.write_bytes(_weights_cases()[case])
    proc = run_py(f"""
        from sitm_trt import weights
        try:
            weights.load({str(path)!r})
        except weights.WeightsError as err:
            print("WeightsError:", err)
        """)
    assert proc.returncode == 0 and proc.stdout.startswith("WeightsError: " + str(path)), proc.stdout + proc.stderr


def test_weights_that_fail_their_card_or_their_network(tmp_path):
    """A flipped bit in the tensor data with the card beside: checksum error. A preset that parses but does not
    match the stored tensors (only the name given: the 'paper' sizes): WeightsError when the network is built.
    Both end the command line with exit status 2 and one message."""
    src = W.load("default").path
    blob = bytearray(src.read_bytes())
    blob[-5] ^= 0x01
    (tmp_path / "flip.safetensors").write_bytes(bytes(blob))
    (tmp_path / "flip.json").write_text(src.with_suffix(".json").read_text())
    _, hdr, data = _default_parts()
    (tmp_path / "paper.safetensors").write_bytes(_with_header(
        {**hdr, "__metadata__": {**hdr["__metadata__"], "sitm_trt.preset": '{"name": "paper"}'}}, data))
    import cv2

    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((16, 16, 3), np.uint8))
    for name, pattern in (("flip", "does not match its card"), ("paper", "cannot load the weights")):
        proc = cli("infer", str(tmp_path / "a.png"), "-o", str(tmp_path / name), "--weights",
                   str(tmp_path / f"{name}.safetensors"), "--backend", "torch", "-q")
        clean_error(proc, 2, "sitm-trt: error: .*" + pattern)
        assert not (tmp_path / name).exists()  # the output folder it would have made is not left behind


# ---------------------------------------------------------------------------------------------------------
# Images: truncations, bit flips, lying headers, the decompression bomb
# ---------------------------------------------------------------------------------------------------------

def _png(w: int, h: int, rows: int) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    raw = zlib.compress(b"".join(b"\x00" + b"\x00" * (w * 3) for _ in range(rows)))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)) + chunk(b"IDAT", raw)
            + chunk(b"IEND", b""))


def _image_cases(tmp_path: Path) -> dict[str, Path]:
    import cv2

    img = np.random.default_rng(0).integers(0, 255, (40, 56, 3), np.uint8)
    good_png = cv2.imencode(".png", img)[1].tobytes()
    good_jpg = cv2.imencode(".jpg", img)[1].tobytes()
    good_tif = cv2.imencode(".tif", img)[1].tobytes()
    flipped = bytearray(good_png)
    flipped[len(flipped) // 2] ^= 0xFF
    tif_lie = bytearray(good_tif)  # the first IFD's width tag made to say 60000 x 60000
    cases = {
        "bomb.png": _png(20000, 20000, 100),  # 1 MB file declaring 400 MP
        "truncated.png": good_png[: len(good_png) // 2],
        "flipped.png": bytes(flipped),
        "empty.png": b"",
        "cut.jpg": good_jpg[:200],
        "header-only.png": good_png[:33],
        "not-an-image.tif": b"II*\x00" + np.random.default_rng(1).integers(0, 255, 64, np.uint8).tobytes(),
    }
    e = "<"
    (ifd,) = struct.unpack(e + "I", tif_lie[4:8])
    (count,) = struct.unpack(e + "H", tif_lie[ifd:ifd + 2])
    for i in range(count):
        at = ifd + 2 + 12 * i
        tag, typ = struct.unpack(e + "HH", tif_lie[at:at + 4])
        if tag in (256, 257):
            tif_lie[at + 2:at + 12] = struct.pack(e + "HII", 4, 1, 60000)
    cases["lying.tif"] = bytes(tif_lie)
    paths = {}
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        paths[name] = tmp_path / name
    return paths


def test_image_headers_are_read_without_decoding():
    import cv2

    from sitm_trt.runtime import memory

    img = np.zeros((37, 91, 3), np.uint8)
    for ext in (".png", ".jpg", ".tif"):
        assert memory.image_size(cv2.imencode(ext, img)[1].tobytes()) == (37, 91), ext
    assert memory.image_size(_png(20000, 30000, 1)) == (30000, 20000)
    assert memory.image_size(b"\xff\xd8\xff") is None and memory.image_size(b"") is None


def test_malformed_images_are_reported_per_file(tmp_path):
    """One CLI run over every malformed file plus a good one (own process: a crash or an OOM kill fails the
    test): each bad file gets one line, the good one is converted, exit status 1, no traceback, and the bomb is
    refused from its header (a process converting only the bomb stays far below its 1.2 GB of pixels)."""
    import cv2

    paths = _image_cases(tmp_path)
    cv2.imwrite(str(tmp_path / "good.png"), np.full((24, 32, 3), 128, np.uint8))
    out = tmp_path / "out"
    # The peak is VmHWM of the child's own memory map: ru_maxrss would include the parent's (pytest's) peak,
    # which Linux carries over the fork/vfork + exec into the child's rusage (1.5 GB in a whole-suite run).
    code = ("import sys; from sitm_trt.tools import cli; rc = cli.main(sys.argv[1:]); "
            "print('maxrss_kb', next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM:'))); "
            "sys.exit(rc)")
    proc = subprocess.run([sys.executable, "-c", code, "infer", *map(str, paths.values()), str(tmp_path / "good.png"),
                           "-o", str(out), "--backend", "torch", "-q"], capture_output=True, text=True, timeout=180,
                          env={**os.environ, "SITM_TRT_MEMORY_LIMIT": "2G"})
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for name in paths:
        assert re.search(rf"sitm-trt: .*{re.escape(name)}: ", proc.stderr), (name, proc.stderr)
    assert re.search(r"bomb.png: declares 20000x20000 pixels \(400 MP\), more than the 89 MP", proc.stderr)
    assert re.search(r"lying.tif: declares 60000x60000", proc.stderr)
    assert f"{len(paths)} of {len(paths) + 1} inputs failed" in proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ["good.exr"]
    # the bomb alone: decoding it would take 1.2 GB (400 MP x 3 bytes) before anything else
    proc = subprocess.run([sys.executable, "-c", code, "infer", str(paths["bomb.png"]), "-o", str(out), "-q"],
                          capture_output=True, text=True, timeout=180, env={**os.environ, "SITM_TRT_MEMORY_LIMIT": "2G"})
    assert proc.returncode == 1 and "bomb.png: declares 20000x20000" in proc.stderr, proc.stderr
    assert int(proc.stdout.split()[-1]) < 600_000  # peak RSS in KB: nothing of 400 MP was ever allocated


# ---------------------------------------------------------------------------------------------------------
# infer: inputs never overwritten, output folders checked first, a failing write costs one file
# ---------------------------------------------------------------------------------------------------------

def test_infer_never_overwrites_an_input(tmp_path):
    import cv2

    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((16, 16, 3), np.uint8))
    cv2.imwrite(str(tmp_path / "a.preview.png"), np.full((16, 16, 3), 7, np.uint8))
    before = (tmp_path / "a.preview.png").read_bytes()
    proc = cli("infer", "a.png", "a.preview.png", "--preview", "--overwrite", "-q", cwd=tmp_path)
    clean_error(proc, 2, r"a.preview.png: is an output of a.png and also an input")
    assert (tmp_path / "a.preview.png").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "a.preview.png"]


def test_infer_checks_output_folders_before_work(tmp_path):
    import cv2

    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((16, 16, 3), np.uint8))
    (tmp_path / "file").write_text("x")
    clean_error(cli("infer", "a.png", "-o", "missing/x.exr", "-q", cwd=tmp_path), 2, r"missing: no such folder")
    clean_error(cli("infer", "a.png", "-o", "file/sub", "-q", cwd=tmp_path), 2, r"cannot create the output folder")


def test_infer_full_disk_fails_one_file_and_continues(tmp_path):
    """A writer that runs out of space (patched: ENOSPC for the first EXR) costs that file only: a message
    naming it, exit status 1, the other input converted, no temporary left behind."""
    import cv2

    for name in ("a", "b"):
        cv2.imwrite(str(tmp_path / f"{name}.png"), np.full((16, 16, 3), 100, np.uint8))
    proc = run_py("""
        import errno, sys, tempfile, os
        from sitm_trt.tools import cli
        from sitm_trt import files
        real = files.atomic_write
        def full(path, data, *, exclusive=False):
            if str(path).endswith("a.exr"):  # a real temporary, then the disk is full
                fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".")
                os.close(fd); os.unlink(tmp)
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
            real(path, data, exclusive=exclusive)
        files.atomic_write = full
        sys.exit(cli.main(["infer", "a.png", "b.png", "-o", "out", "--backend", "torch", "-q"]))
        """, cwd=tmp_path)
    clean_error(proc, 1, r"a.png: cannot write .*a.exr: No space left on device")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["b.exr"]


def test_two_infer_runs_cannot_both_write_one_output(tmp_path):
    """Another run writes a.exr after this run's up-front check and before its write (patched in): this run
    does not replace it (exit 1, the file named), and the other input is still converted."""
    import cv2

    for name in ("a", "b"):
        cv2.imwrite(str(tmp_path / f"{name}.png"), np.full((16, 16, 3), 100, np.uint8))
    race = """
        import os, sys
        from sitm_trt.tools import cli
        from sitm_trt import files
        real = files.atomic_write
        def racing(path, data, *, exclusive=False):
            if str(path).endswith("a.exr") and not os.path.exists(path):
                with open(path, "wb") as f:
                    f.write(b"the other run")
            real(path, data, exclusive=exclusive)
        files.atomic_write = racing
        sys.exit(cli.main(["infer", "a.png", "b.png", "-o", "out", "--backend", "torch", "-q"] + sys.argv[1:]))
        """
    (tmp_path / "out").mkdir()
    proc = run_py(race, cwd=tmp_path)
    clean_error(proc, 1, r"a.png: .*a.exr: exists \(written by another run meanwhile; not replaced\)")
    assert (tmp_path / "out" / "a.exr").read_bytes() == b"the other run"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.exr", "b.exr"]


def test_tiled_inference_refuses_read_only_out():
    proc = run_py("""
        import numpy as np, sitm_trt
        out = np.frombuffer(bytes(40 * 48 * 3 * 4), np.float32).reshape(40, 48, 3)
        try:
            pipe = sitm_trt.Pipeline("default", backend="torch", tile=128)  # >= the default weights' context
            pipe(np.zeros((40, 48, 3), np.uint8), layout="hwc", out=out)
        except ValueError as err:
            print("refused:", err)
        """)
    assert "refused: infer_tiled: out is read-only" in proc.stdout, proc.stderr


# ---------------------------------------------------------------------------------------------------------
# The memory guard
# ---------------------------------------------------------------------------------------------------------

def test_memory_estimate_and_budget(monkeypatch):
    from sitm_trt.runtime import memory
    from sitm_trt.model.config import PRESETS

    # 400 + 6 * (2 * sum(w_l / 4**l) + 3 * mefm_width), by hand for compact: 2 * 12.5 + 24 = 49 -> 694
    assert memory.bytes_per_pixel(PRESETS["compact"]) == 694
    assert memory.bytes_per_pixel(W.load("default")) == 694
    assert memory.bytes_per_pixel(PRESETS["paper"]) == 400 + 6 * (2 * 62 + 192)
    monkeypatch.setenv("SITM_TRT_MEMORY_LIMIT", "1G")
    assert memory.budget() == 1 << 30
    assert memory.fits(PRESETS["compact"], 1, 1000, 1000) == (True, 694_000_000, 1 << 30)
    assert not memory.fits(PRESETS["compact"], 2, 1000, 1000)[0]
    ok, need, _ = memory.fits(PRESETS["compact"], 1, 4000, 4000, tiled=512)
    assert ok and need == 4000 * 4000 * 24 + 640 * 640 * 694
    monkeypatch.setenv("SITM_TRT_MEMORY_LIMIT", "0")
    assert memory.budget() is None and memory.fits(PRESETS["paper"], 64, 10**5, 10**5)[0]
    for bad in ("lots", "inf", "nan", "-1G"):
        monkeypatch.setenv("SITM_TRT_MEMORY_LIMIT", bad)
        with pytest.raises(ValueError, match="SITM_TRT_MEMORY_LIMIT"):
            memory.budget()
    # the command line reports a malformed limit as a usage error (exit 2, one line), before any work
    clean_error(cli("info", env={"SITM_TRT_MEMORY_LIMIT": "lots"}), 2,
                "sitm-trt: error: SITM_TRT_MEMORY_LIMIT must be a number of bytes such as 8G, got 'lots'")


def test_pipeline_raises_memory_error_with_the_numbers():
    proc = run_py("""
        import numpy as np, sitm_trt
        try:
            sitm_trt.infer(np.zeros((512, 512, 3), np.uint8), backend="torch")
        except MemoryError as err:
            print("MemoryError:", err)
        """, env={"SITM_TRT_MEMORY_LIMIT": "100M"})
    assert ("MemoryError: infer: 1 x 512x512 needs about 174 MiB (694 bytes per pixel at this preset) but 100 MiB "
            "is available") in proc.stdout, proc.stderr


def test_infer_refuses_what_does_not_fit_even_in_tiles(tmp_path):
    import cv2

    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((600, 800, 3), np.uint8))
    proc = cli("infer", "a.png", "-o", "out", "-q", "--backend", "torch", cwd=tmp_path,
               env={"SITM_TRT_MEMORY_LIMIT": "40M"})
    clean_error(proc, 1, r"a.png: 800x600 needs about .* even in 128-pixel tiles, 40 MiB available")
    assert not (tmp_path / "out").exists()  # made for the outputs, removed again: nothing was written


# ---------------------------------------------------------------------------------------------------------
# video: secure temporaries, leftovers, SIGTERM, failing writes, EXR sequences
# ---------------------------------------------------------------------------------------------------------

def make_clip(path: Path, frames: int, h: int = 48, w: int = 64) -> None:
    import av

    with av.open(str(path), "w") as c:
        s = c.add_stream("mpeg4", rate=24)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        for i in range(frames):
            y, x = np.mgrid[0:h, 0:w]
            img = np.stack([(x * 4 + i * 3) % 256, (y * 5) % 256, np.full_like(x, 90 + i % 50)], -1).astype(np.uint8)
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in s.encode(None):
            c.mux(p)


def count_frames(path: Path) -> int:
    import av

    with av.open(str(path)) as c:
        return sum(1 for _ in c.decode(video=0))


VIDEO = ("--device", "cpu", "--backend", "torch", "--preset", "ultrafast", "-q")


def test_video_symlink_plants_and_leftovers(tmp_path):
    """Symlinks planted at the old predictable temporary names and at names like ours are never followed nor
    removed; a leftover of a killed run (a plain unlocked temporary) is removed; the output is a regular file."""
    make_clip(tmp_path / "in.mp4", 6)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    plants = [".out.mp4.partial.mp4", ".out.mp4.remux.mp4", ".out.mp4.abc123.partial.mp4", ".out.mp4.xyz.remux.mp4"]
    for name in plants:
        (tmp_path / name).symlink_to(victim)
    (tmp_path / ".out.mp4.k1ll3d.partial.mp4").write_bytes(b"half a file")
    proc = cli("video", "in.mp4", "out.mp4", "-f", "hlg", *VIDEO, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "removed " in proc.stderr and "k1ll3d" in proc.stderr
    assert victim.read_text() == "precious"
    out = tmp_path / "out.mp4"
    assert out.is_file() and not out.is_symlink() and count_frames(out) == 6
    hidden = sorted(p.name for p in tmp_path.glob(".*"))
    assert hidden == sorted(plants)  # the plants untouched, the leftover gone, nothing of ours left


def test_video_refuses_a_second_writer_and_garbage_input(tmp_path):
    """A temporary locked by a live process means another run is writing the output: refused (exit 2), its
    file untouched. A garbage input is refused before any work, leaving nothing."""
    make_clip(tmp_path / "in.mp4", 4)
    busy = tmp_path / ".out.mp4.busy0001.partial.mp4"
    busy.write_bytes(b"in progress")
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, sys, time; f = open(sys.argv[1], 'rb'); "
                               "fcntl.flock(f, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(60)", str(busy)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        clean_error(cli("video", "in.mp4", "out.mp4", *VIDEO, cwd=tmp_path), 2, r"another conversion is writing it")
        assert busy.read_bytes() == b"in progress" and not (tmp_path / "out.mp4").exists()
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()
    busy.unlink()
    (tmp_path / "garbage.mp4").write_bytes(np.random.default_rng(2).integers(0, 255, 4096, np.uint8).tobytes())
    clean_error(cli("video", "garbage.mp4", "g.mp4", *VIDEO, cwd=tmp_path), 2, r"cannot open as a video")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["garbage.mp4", "in.mp4"]


def test_video_full_disk_during_the_remux_leaves_nothing(tmp_path):
    make_clip(tmp_path / "in.mp4", 3)
    proc = run_py("""
        import errno, os, sys
        from sitm_trt.tools import cli
        from sitm_trt.media.video import conversion, temporaries
        def full(partial, target, sei):
            fh, tmp = temporaries._claim_temp(target, "remux")  # the real temporary, then the disk is full
            fh.close(); tmp.unlink()
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        conversion._finalize_hdr10 = full
        sys.exit(cli.main(["video", "in.mp4", "out.mp4", "--device", "cpu", "--backend", "torch",
                           "--preset", "ultrafast", "-q"]))
        """, cwd=tmp_path)
    clean_error(proc, 2, r"out.mp4: cannot write the output \(.*No space left on device\); nothing was written")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.mp4"]


def test_video_sigterm_leaves_a_playable_file(tmp_path):
    """SIGTERM is handled like Ctrl-C: exit status 143, a closed, playable file with the frames done so far,
    no temporary left."""
    make_clip(tmp_path / "in.mp4", 400)
    cmd = [sys.executable, "-c", "import sys; from sitm_trt.tools import cli; sys.exit(cli.main(sys.argv[1:]))",
           "video", "in.mp4", "out.mp4", "--device", "cpu", "--backend", "torch", "--preset", "ultrafast"]
    err: list[str] = []
    with subprocess.Popen(cmd, cwd=tmp_path, stderr=subprocess.PIPE, text=True) as proc:
        reader = threading.Thread(target=lambda: err.extend(iter(lambda: proc.stderr.read(1), "")), daemon=True)
        reader.start()
        deadline = time.monotonic() + 120

        def converted() -> int:
            counts = re.findall(r"(\d+)/400", "".join(err))
            return int(counts[-1]) if counts else 0

        while converted() < 2 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, "".join(err)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 143, "".join(err)
        reader.join(timeout=10)
    text = "".join(err)
    assert "terminated" in text and "holds the" in text and "Traceback" not in text
    assert 2 <= count_frames(tmp_path / "out.mp4") < 400
    assert not list(tmp_path.glob(".*"))


def test_exr_sequence_overwrite_removes_stale_frames(tmp_path):
    make_clip(tmp_path / "in.mp4", 4)
    assert cli("video", "in.mp4", "seq", "--max-frames", "4", *VIDEO, cwd=tmp_path).returncode == 0
    (tmp_path / "seq" / "notes.txt").write_text("mine")
    proc = cli("video", "in.mp4", "seq", "--max-frames", "2", "--overwrite", *VIDEO, cwd=tmp_path)
    assert proc.returncode == 0 and "removed 2 frame files of an earlier run" in proc.stderr, proc.stderr
    meta = json.loads((tmp_path / "seq" / "sequence.json").read_text())
    listed = [f["file"] for f in meta["frames"]]
    assert listed == ["frame_000000.exr", "frame_000001.exr"]
    assert sorted(p.name for p in (tmp_path / "seq").iterdir()) == sorted([*listed, "sequence.json", "notes.txt"])


def test_video_output_folder_checked_before_work(tmp_path):
    make_clip(tmp_path / "in.mp4", 2)
    clean_error(cli("video", "in.mp4", "missing/out.mp4", *VIDEO, cwd=tmp_path), 2, r"missing: no such folder")
    clean_error(cli("video", "in.mp4", "in.mp4", "--overwrite", *VIDEO, cwd=tmp_path), 2, r"is the input itself")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.mp4"]


def _damaged_clip(path: Path, frames: int, bad: range, faststart: bool = False) -> None:
    """An MPEG-4 part 2 clip whose packets in ``bad`` are replaced by noise (same size and timestamps): the
    decoder rejects each of them (checked below with PyAV itself)."""
    import av

    options = {"movflags": "faststart"} if faststart else {}
    with av.open(str(path), "w", options=options) as c:
        s = c.add_stream("mpeg4", rate=24)
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        count = 0

        def mux(p):
            nonlocal count
            if p.size and count in bad:
                q = av.Packet(np.random.default_rng(count).integers(0, 255, p.size, np.uint8).tobytes())
                q.pts, q.dts, q.time_base, q.stream, q.is_keyframe = p.pts, p.dts, p.time_base, p.stream, p.is_keyframe
                p = q
            c.mux(p)
            count += 1

        y, x = np.mgrid[0:48, 0:64]
        for k in range(frames):
            img = np.stack([(x * 4 + k * 9) % 256, (y * 5) % 256, np.full_like(x, 90)], -1).astype(np.uint8)
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                mux(p)
        for p in s.encode(None):
            mux(p)


def test_video_damaged_packets_and_truncation(tmp_path):
    """Damaged packets mid-stream are skipped with a count and filled with the previous frame: the output keeps
    the input's length and exact timestamps. A fast-start mp4 cut in half converts what it holds and says
    that the header announced more frames."""
    import av

    _damaged_clip(tmp_path / "bad.mkv", 24, range(10, 14))
    with av.open(str(tmp_path / "bad.mkv")) as c:
        source_pts = [p.pts for p in c.demux(video=0) if p.size]
    errors = 0
    with av.open(str(tmp_path / "bad.mkv")) as c:
        for p in c.demux(video=0):
            try:
                p.decode()
            except av.error.InvalidDataError:
                errors += 1
    assert errors == 4  # the corpus really is damaged for FFmpeg's decoder
    proc = cli("video", "bad.mkv", "out.mkv", *VIDEO, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "4 damaged video packets skipped, 4 of them replaced by the previous frame" in proc.stderr
    with av.open(str(tmp_path / "out.mkv")) as c:
        out_pts = [f.pts for f in c.decode(video=0)]
    assert out_pts == source_pts and len(out_pts) == 24

    _damaged_clip(tmp_path / "full.mp4", 24, range(0), faststart=True)
    data = (tmp_path / "full.mp4").read_bytes()
    (tmp_path / "cut.mp4").write_bytes(data[: len(data) // 2])
    proc = cli("video", "cut.mp4", "cut-out.mp4", *VIDEO, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    m = re.search(r"cut.mp4: truncated\? its header announces 24 frames, the data ended after (\d+)", proc.stderr)
    assert m and 0 < int(m.group(1)) < 24 and count_frames(tmp_path / "cut-out.mp4") == int(m.group(1))


def test_gray_alpha_png_stays_gray_and_multipage_tiff_is_announced(tmp_path):
    import cv2

    from sitm_trt.media import io

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    h, w = 24, 32
    y, x = np.mgrid[0:h, 0:w]
    ga = np.stack([(x * 8) % 256, np.full_like(x, 200)], -1).astype(np.uint8)  # gray ramp, alpha 200
    raw = zlib.compress(b"".join(b"\x00" + ga[r].tobytes() for r in range(h)))
    ihdr = chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 4, 0, 0, 0))  # colour type 4: gray + alpha
    (tmp_path / "ga.png").write_bytes(b"\x89PNG\r\n\x1a\n" + ihdr + chunk(b"IDAT", raw) + chunk(b"IEND", b""))
    assert cv2.imwritemulti(str(tmp_path / "pages.tif"), [np.full((16, 16, 3), v, np.uint8) for v in (40, 90, 140)])
    proc = cli("infer", "ga.png", "pages.tif", "-o", "out", "--backend", "torch", "-q", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "pages.tif: has 3 pages (images); converting the first only" in proc.stderr
    hdr = io.read_hdr(tmp_path / "out" / "ga.exr")
    assert np.array_equal(hdr[..., 0], hdr[..., 1]) and np.array_equal(hdr[..., 1], hdr[..., 2])
    assert hdr.std() > 0  # a real image, not a blank one


def test_video_rotation_is_carried_and_interlaced_input_refused(tmp_path):
    """A display matrix (a phone video's rotation) is written to the output's stream, so players show it
    upright like the input; interlaced input is refused with a message (sitm-trt does not deinterlace)."""
    import av

    with av.open(str(tmp_path / "rot.mp4"), "w") as c:
        s = c.add_stream("mpeg4", rate=24)
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        s.set_display_rotation(90)
        for k in range(3):
            for p in s.encode(av.VideoFrame.from_ndarray(np.full((48, 64, 3), 60 * k, np.uint8), format="rgb24")):
                c.mux(p)
        for p in s.encode(None):
            c.mux(p)
    with av.open(str(tmp_path / "il.mkv"), "w") as c:
        s = c.add_stream("mpeg4", rate=25)
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        s.options = {"flags": "+ildct+ilme"}  # interlaced coding: decoded frames carry the interlaced flag
        for k in range(3):
            for p in s.encode(av.VideoFrame.from_ndarray(np.zeros((48, 64, 3), np.uint8), format="rgb24")):
                c.mux(p)
        for p in s.encode(None):
            c.mux(p)
    with av.open(str(tmp_path / "il.mkv")) as c:
        assert next(c.decode(video=0)).interlaced_frame
    proc = cli("video", "rot.mp4", "out.mp4", *VIDEO, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "display rotation 90 degrees (counter-clockwise) carried" in proc.stderr
    with av.open(str(tmp_path / "out.mp4")) as c:
        frame = next(c.decode(video=0))
        assert frame.rotation == 90 and (frame.width, frame.height) == (64, 48)
    clean_error(cli("video", "il.mkv", "il-out.mkv", *VIDEO, cwd=tmp_path), 2, r"il.mkv: is interlaced; .*bwdif")
    assert not (tmp_path / "il-out.mkv").exists() and not list(tmp_path.glob(".*"))
