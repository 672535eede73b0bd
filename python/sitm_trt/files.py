"""Atomic file writes: how every part of this project (library, tools, trainer) writes a file a reader may see.

:func:`atomic_write` puts the content into a temporary file created by ``tempfile.mkstemp`` in the target's
folder (``O_EXCL`` and an unpredictable name, ``.NAME.XXXXXXXX.tmp``, so never a planted file or symlink),
gives it the mode a plain ``open()`` would give a new file (``mkstemp`` makes 0600), flushes and ``fsync``\\ s
it, and only then publishes it under the target name. A reader sees the old file or the whole new one, never a
partial file, even when the writer is killed; on any failure (a full disk, an exception of the writer,
Ctrl-C) the temporary is removed and the target is left as it was. docs/reliability.md, "Files".

Standard library only: ``sitm_trt.weights`` and ``sitm_trt.media.io`` use it without torch.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

__all__ = ["atomic_write"]

Content = bytes | bytearray | memoryview | Callable[[BinaryIO], object]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()  # what open() would give a new file (read once: os.umask is process-wide)


def atomic_write(path: str | os.PathLike[str], data_or_writer: Content, *, exclusive: bool = False) -> None:
    """Write ``path`` whole or not at all.

    ``data_or_writer``: the bytes to write, or a callable that writes the content into the binary file object
    it is given (the open temporary; e.g. ``lambda f: torch.save(obj, f)``), for content made while it is
    written.

    The temporary replaces ``path`` with ``os.replace`` (which replaces a symlink at ``path`` itself, never
    writing through it). ``exclusive=True`` publishes with a hard link instead, which fails with
    ``FileExistsError`` ("exists (written by another run meanwhile; not replaced)") when ``path`` exists, so
    two writers can never silently replace each other's file; on a filesystem without hard links (FAT, some
    network shares) it checks that ``path`` does not exist and then renames."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, _FILE_MODE)
        with os.fdopen(fd, "wb") as f:
            if callable(data_or_writer):
                data_or_writer(f)
            else:
                f.write(data_or_writer)
            f.flush()
            os.fsync(f.fileno())
        if exclusive:
            try:
                os.link(tmp, path)
                os.unlink(tmp)
            except FileExistsError:
                raise FileExistsError(f"{path}: exists (written by another run meanwhile; not replaced)") from None
            except OSError:  # no hard links here: check, then rename
                if os.path.lexists(path):
                    raise FileExistsError(f"{path}: exists (written by another run meanwhile; not replaced)") from None
                os.replace(tmp, path)
        else:
            os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def missing_folders(folder: str | os.PathLike[str]) -> list[Path]:
    """``folder`` and those of its parents that do not exist yet, deepest first: what a ``mkdir(parents=True)``
    is about to create, for :func:`remove_empty` to take back when nothing was written into them."""
    out, p = [], Path(folder)
    while not p.exists() and p != p.parent:
        out.append(p)
        p = p.parent
    return out


def remove_empty(folders: list[Path]) -> None:
    """Remove ``folders`` (deepest first, as :func:`missing_folders` lists them) while they are empty; the first
    that holds anything, or is gone, stops it."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            break
