"""The output's temporaries: each one is created exclusively (``mkstemp``: never a planted file or symlink)
with an unpredictable name beside the output, ``.NAME.<random>.partial.EXT`` or ``.NAME.<random>.remux.EXT``,
and locked (``flock``) while its process lives. The lock tells a leftover of a killed run, which the next run
for the same output removes, from the temporary of a conversion writing that output right now, which is
refused (docs/reliability.md).
"""

from __future__ import annotations

import os
import re
import stat
import tempfile
from pathlib import Path
from typing import Any, Callable

from sitm_trt.media.video.options import VideoError


def _file_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def _temp_re(target: Path) -> re.Pattern:
    """Names of the temporaries of ``target``: ``.NAME.<random>.partial.EXT`` / ``.NAME.<random>.remux.EXT``."""
    return re.compile(re.escape(f".{target.name}.") + r"[A-Za-z0-9_]+\.(partial|remux)" + re.escape(target.suffix))


def _claim_temp(target: Path, tag: str) -> tuple[Any, Path]:
    """A new, exclusively created file with an unpredictable name beside ``target`` (``mkstemp``: O_EXCL, so
    never a planted file or symlink), open for writing and locked (``flock``) while this process lives, so
    another run can tell it from a leftover. Returns (file object, path)."""
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=f".{tag}{target.suffix}", dir=target.parent)
    try:
        os.fchmod(fd, _file_mode())  # what a plain open() would give (mkstemp makes 0600)
        _try_lock(fd)
        return os.fdopen(fd, "w+b"), Path(name)
    except BaseException:
        os.close(fd)
        os.unlink(name)
        raise


def _try_lock(fd: int) -> bool:
    """An exclusive, non-blocking flock on ``fd``; False when another process holds it (True without fcntl)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _clean_leftovers(target: Path, log: Callable[[str], None]) -> None:
    """Removes the temporaries of earlier runs writing ``target`` that were killed (SIGKILL, power loss): regular
    files of ours matching :func:`_temp_re` that no live process holds locked. A locked one means another
    conversion is writing ``target`` right now: refused, so two runs never silently clobber one output."""
    pattern = _temp_re(target)
    try:
        names = os.listdir(target.parent)
    except OSError:
        return
    for name in names:
        if not pattern.fullmatch(name):
            continue
        p = target.parent / name
        try:
            st = os.lstat(p)
            if not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid():
                continue  # never follow or remove what is not a plain file of ours
            fd = os.open(p, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except OSError:
            continue
        try:
            if not _try_lock(fd):
                raise VideoError(f"{target}: another conversion is writing it now (its temporary {name} is in use)")
            os.unlink(p)
            log(f"removed {p}, left by an interrupted earlier run")
        except FileNotFoundError:
            pass
        finally:
            os.close(fd)
