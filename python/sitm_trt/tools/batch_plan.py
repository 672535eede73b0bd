"""``sitm-trt batch``, planning (driver side): inputs -> items, and the outputs of an item on disk.

:func:`plan` walks the inputs (files, folders, globs, URIs) and names each one's output; :func:`complete` says
whether an item's outputs exist (then it is skipped); :func:`temporaries` finds what an interrupted write of an
output left behind. No Ray here: a bad input is reported before a job starts (:class:`BatchError`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import os
import re
import shutil
from pathlib import Path
from typing import Sequence

__all__ = ["VIDEO_EXTENSIONS", "BatchError", "Item", "plan", "complete", "temporaries", "remove", "is_uri"]

VIDEO_EXTENSIONS = (".mp4", ".mov", ".mkv", ".m4v", ".avi", ".webm", ".mts", ".m2ts", ".ts", ".mpg", ".mpeg",
                    ".wmv", ".flv", ".3gp")


class BatchError(ValueError):
    """Bad inputs or options of a batch job (nothing was converted)."""


@dataclasses.dataclass
class Item:
    input: str  # absolute local path or URI
    output: str  # absolute path: a file, or the folder of an EXR sequence
    kind: str  # "image" or "video"

    def targets(self, preview: bool) -> list[Path]:
        out = Path(self.output)
        if self.kind == "image" and preview:
            return [out, out.with_suffix(".preview.png")]
        return [out]


def is_uri(s: str) -> bool:
    """``s`` is a URI (``scheme://...``, opened with pyarrow's filesystems), not a local path."""
    return re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", s) is not None


def _kind(name: str) -> str | None:
    from sitm_trt.media.io import LDR_EXTENSIONS

    ext = os.path.splitext(name)[1].lower()
    return "image" if ext in LDR_EXTENSIONS else "video" if ext in VIDEO_EXTENSIONS else None


def _expand(patterns: Sequence[str], output_dir: Path) -> list[tuple[str, str, str]]:
    """(input, its path relative to the output folder without extension, kind) for each input file, in order."""
    from sitm_trt.tools.cli_common import UsageError
    from sitm_trt.tools.cli_infer import expand_inputs

    found: list[tuple[str, str, str]] = []
    out_real = os.path.realpath(output_dir)

    def in_output(local: str) -> bool:
        """A file under the output folder: this or an earlier run's output, never an input of a walk or a glob."""
        return (os.path.realpath(local) + os.sep).startswith(out_real + os.sep)

    def add(src: str, rel: str, explicit: bool) -> None:
        kind = _kind(src)
        if kind is None:
            if explicit:
                raise BatchError(f"{src}: not an image ({', '.join(_image_exts())}) or a video "
                                 f"({', '.join(VIDEO_EXTENSIONS)})")
            return
        found.append((src, os.path.splitext(rel)[0], kind))

    for pat in patterns:
        if is_uri(pat):
            import pyarrow.fs as pafs

            try:
                fs, root = pafs.FileSystem.from_uri(pat)
                info = fs.get_file_info(root)
            except Exception as err:  # noqa: BLE001 - pyarrow raises several types
                raise BatchError(f"{pat}: cannot open ({err})") from err
            scheme = pat.split("://", 1)[0]
            if info.type == pafs.FileType.Directory:
                infos = fs.get_file_info(pafs.FileSelector(root, recursive=True))
                for f in sorted((f for f in infos if f.type == pafs.FileType.File), key=lambda f: f.path):
                    rel = os.path.relpath(f.path, root)
                    ours = scheme == "file" and in_output("/" + f.path.lstrip("/"))  # a file:// walk is local
                    if not ours and not any(part.startswith(".") for part in Path(rel).parts):
                        add(_uri(scheme, f.path), rel, False)
            elif info.type == pafs.FileType.File:
                add(pat, os.path.basename(root), True)
            else:
                raise BatchError(f"{pat}: no such file or folder")
        elif Path(pat).is_dir():
            root = Path(pat)
            if os.path.realpath(root) == out_real:
                raise BatchError(f"{pat}: is the output folder; pick an -o outside it or below it (e.g. {pat}/hdr)")
            seen_dirs = {os.path.realpath(root)}
            for dirpath, dirnames, filenames in os.walk(root, followlinks=True):  # linked sub-folders too
                kept = []
                for d in sorted(dirnames):
                    real = os.path.realpath(os.path.join(dirpath, d))
                    if not d.startswith(".") and real != out_real and real not in seen_dirs:  # no loops
                        seen_dirs.add(real)
                        kept.append(d)
                dirnames[:] = kept
                for name in sorted(filenames):
                    if not name.startswith("."):
                        path = os.path.join(dirpath, name)
                        add(os.path.abspath(path), os.path.relpath(path, root), False)
        else:
            try:
                files = expand_inputs([pat])
            except UsageError as err:
                raise BatchError(str(err)) from err
            explicit = not any(c in pat for c in "*?[")
            # a glob keeps the sub-folders below its last folder without a wildcard ('scans/**/*.tif': the
            # folders below scans/), so that files of one name in two folders do not collide
            base = Path(*[p for p in itertools.takewhile(lambda p: not any(c in p for c in "*?["),
                                                            Path(pat).parent.parts)] or ["."])
            for f in files:
                if not explicit and in_output(str(f)):
                    continue
                rel = f.name if explicit else os.path.relpath(os.path.abspath(f), os.path.abspath(base))
                add(os.path.abspath(f), rel, explicit)
    return found


def _uri(scheme: str, path: str) -> str:
    return f"{scheme}://{path}" if scheme != "file" else f"file://{path if path.startswith('/') else '/' + path}"


def _image_exts() -> tuple[str, ...]:
    from sitm_trt.media.io import LDR_EXTENSIONS

    return LDR_EXTENSIONS


def plan(inputs: Sequence[str], output_dir: str | os.PathLike, *, format: str = "exr",
         video_format: str = "hdr10", video_container: str = "mp4") -> list[Item]:
    """The items of a job: each input file with the output it gets (raises :class:`BatchError` on collisions)."""
    if format not in ("exr", "hdr"):
        raise BatchError(f"format must be 'exr' or 'hdr', got {format!r}")
    if video_format not in ("hdr10", "hlg", "exr"):
        raise BatchError(f"video_format must be 'hdr10', 'hlg' or 'exr', got {video_format!r}")
    if video_container not in ("mp4", "mov", "mkv"):
        raise BatchError(f"video_container must be 'mp4', 'mov' or 'mkv', got {video_container!r}")
    out_dir = Path(output_dir).absolute()
    items: list[Item] = []
    seen: dict[str, str] = {}
    found = _expand(inputs, out_dir)
    local_inputs = {os.path.realpath(src): src for src, _, _ in found if not is_uri(src)}
    for src, rel, kind in found:
        if kind == "image":
            dst = out_dir / (rel + "." + format)
        else:
            dst = out_dir / (rel if video_format == "exr" else rel + "." + video_container)
        for target in (dst, dst.with_suffix(".preview.png")) if kind == "image" else (dst,):
            if os.path.realpath(target) in local_inputs:  # as `sitm-trt infer`: an output never replaces an input
                raise BatchError(f"{src}: its output {target} would replace the input "
                                 f"{local_inputs[os.path.realpath(target)]}; pick another -o")
        key = os.path.realpath(dst)
        if key in seen:
            if seen[key] == src:
                continue  # the same file named twice
            raise BatchError(f"{seen[key]} and {src} would both be written to {dst}")
        seen[key] = src
        items.append(Item(src, str(dst), kind))
    if not items:
        raise BatchError("no image or video among the inputs")
    # An EXR sequence's folder is the video's alone: another output inside it would be swept away when the
    # sequence is written (or mixed into it)
    folders = {os.path.realpath(it.output): it for it in items if it.kind == "video" and video_format == "exr"}
    for it in items:
        for parent in Path(os.path.realpath(it.output)).parents:
            if str(parent) in folders:
                raise BatchError(f"{it.input}: its output {it.output} would lie inside the EXR sequence folder of "
                                 f"{folders[str(parent)].input}; rename one of them or pick another -o layout")
    return items


def complete(item: Item, preview: bool) -> bool:
    """An output that exists is complete: it only ever appears by a rename of a finished temporary."""
    return all(t.exists() for t in item.targets(preview))


def temporaries(target: Path) -> list[Path]:
    """Leftovers of an interrupted write of ``target``: sitm_trt.media.io's ``.NAME.XXXXXXXX.tmp``, the batch
    worker's ``.NAME.XXXXXXXX.tmp.EXT`` (a video), ``.NAME.XXXXXXXX.tmp/`` (an EXR sequence), ``.NAME.XXXXXXXX.old/``,
    and what sitm_trt.media.video writes beside the video temporary, ``..NAME.XXXXXXXX.tmp.EXT.*``."""
    pattern = re.compile(r"^\.\.?" + re.escape(target.name) + r"\.[A-Za-z0-9_]{8}\.(tmp|old)(\.|$)")
    try:
        return [p for p in target.parent.iterdir() if pattern.match(p.name)]
    except FileNotFoundError:
        return []


def remove(path: Path) -> None:
    """Delete a file or a folder tree (a temporary), if it is still there."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
