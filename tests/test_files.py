"""sitm_trt.files.atomic_write: whole or nothing, through an exclusively created temporary, replace or exclusive."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest

from sitm_trt import files
from sitm_trt.files import atomic_write


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_bytes_and_writers_make_the_file_with_the_mode_open_gives(tmp_path: Path) -> None:
    atomic_write(tmp_path / "a.bin", b"\x00abc")
    atomic_write(tmp_path / "b.bin", bytearray(b"def"))
    atomic_write(tmp_path / "c.bin", memoryview(b"ghi"))
    atomic_write(tmp_path / "d.bin", lambda f: (f.write(b"made "), f.write(b"while written")))
    assert [(tmp_path / n).read_bytes() for n in ("a.bin", "b.bin", "c.bin", "d.bin")] == [
        b"\x00abc", b"def", b"ghi", b"made while written"]
    with open(tmp_path / "plain.bin", "wb"):
        pass
    want = stat.S_IMODE((tmp_path / "plain.bin").stat().st_mode)
    assert want == 0o666 & ~_umask()  # what open() gives (mkstemp alone would make 0600)
    assert {stat.S_IMODE((tmp_path / n).stat().st_mode) for n in ("a.bin", "d.bin")} == {want}
    atomic_write(tmp_path / "a.bin", b"replaced")  # the default replaces
    assert (tmp_path / "a.bin").read_bytes() == b"replaced"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin", "b.bin", "c.bin", "d.bin", "plain.bin"]


def test_the_temporary_is_fresh_beside_the_target_and_synced_before_it_is_published(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The content goes to ``.NAME.XXXXXXXX.tmp`` in the target's folder (the name tools/batch.py's cleanup knows),
    is fsynced, and only then renamed onto the target."""
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(files.os, "fsync", lambda fd: (events.append("fsync"), real_fsync(fd))[1])

    def replace(src, dst):
        events.append(("replace", Path(src), Path(dst), Path(src).read_bytes()))
        real_replace(src, dst)

    monkeypatch.setattr(files.os, "replace", replace)
    (tmp_path / ".out.json.planted.tmp").symlink_to(tmp_path / "victim")  # a planted name is never used
    atomic_write(tmp_path / "out.json", b"{}")
    assert events[0] == "fsync" and events[1][0] == "replace" and len(events) == 2
    src, dst, content = events[1][1:]
    assert src.parent == tmp_path and src.name.startswith(".out.json.") and src.name.endswith(".tmp")
    assert len(src.name) == len(".out.json..tmp") + 8 and src.name != ".out.json.planted.tmp"
    assert dst == tmp_path / "out.json" and content == b"{}"
    assert not (tmp_path / "victim").exists()


def test_a_failure_leaves_the_target_as_it_was_and_no_temporary(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "keep.txt"
    target.write_bytes(b"old")

    def half_then_fail(f):
        f.write(b"half")
        raise RuntimeError("the writer failed")

    with pytest.raises(RuntimeError, match="the writer failed"):
        atomic_write(target, half_then_fail)

    def interrupted(f):
        f.write(b"half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, interrupted)

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with monkeypatch.context() as m:
        m.setattr(files.os, "fsync", full)
        with pytest.raises(OSError, match="No space left"):
            atomic_write(target, b"new")
        with pytest.raises(OSError, match="No space left"):
            atomic_write(tmp_path / "fresh.txt", b"new")
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]
    with pytest.raises(FileNotFoundError):  # no folder: nothing to write into
        atomic_write(tmp_path / "missing" / "x.txt", b"x")


def test_a_symlink_at_the_target_is_replaced_not_written_through(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    (tmp_path / "out.txt").symlink_to(victim)
    atomic_write(tmp_path / "out.txt", b"result")
    assert victim.read_bytes() == b"precious"
    assert not (tmp_path / "out.txt").is_symlink() and (tmp_path / "out.txt").read_bytes() == b"result"


@pytest.mark.parametrize("links", [True, False], ids=["hard-links", "no-hard-links"])
def test_exclusive_never_replaces_a_file_that_exists(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     links: bool) -> None:
    """``exclusive=True`` publishes with a hard link (or, on a filesystem without them, checks and renames): a file
    that appeared meanwhile, or a dangling symlink, stays as it was, and no temporary is left."""
    if not links:
        def no_links(src, dst):
            raise OSError(errno.EPERM, "Operation not permitted")

        monkeypatch.setattr(files.os, "link", no_links)
    other = tmp_path / "a.exr"
    other.write_bytes(b"the other run's result")
    with pytest.raises(FileExistsError, match=r"a.exr: exists \(written by another run meanwhile; not replaced\)"):
        atomic_write(other, b"mine", exclusive=True)
    assert other.read_bytes() == b"the other run's result"
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    with pytest.raises(FileExistsError):
        atomic_write(tmp_path / "dangling", b"mine", exclusive=True)
    assert not (tmp_path / "nowhere").exists()
    atomic_write(tmp_path / "new.exr", lambda f: f.write(b"mine"), exclusive=True)
    assert (tmp_path / "new.exr").read_bytes() == b"mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.exr", "dangling", "new.exr"]
