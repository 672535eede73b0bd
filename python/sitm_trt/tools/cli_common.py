"""What the ``sitm-trt`` sub-commands share: the usage error, the ``sitm-trt:`` line on stderr, and ``--device``.

Standard library only at import time, as the rest of the command line: ``sitm-trt --help`` stays fast.
"""

from __future__ import annotations

import sys

__all__ = ["UsageError", "resolve_device", "say"]


class UsageError(Exception):
    """Bad arguments: reported as ``sitm-trt: error: ...`` with exit status 2."""


def say(msg: str) -> None:
    """``sitm-trt: msg`` on stderr (notices, errors, the summary of ``infer``)."""
    print(f"sitm-trt: {msg}", file=sys.stderr)


def resolve_device(name: str) -> str:
    """``--device`` -> a device string: ``auto`` is the first GPU (``cuda:0``) when the extension sees one, else
    ``cpu``; ``cuda`` is ``cuda:0``; anything else is passed on as given."""
    if name != "auto":
        return name if name != "cuda" else "cuda:0"
    from sitm_trt import kernels

    try:
        count, _ = kernels.extension().cuda_devices()
    except ImportError:
        return "cpu"
    return "cuda:0" if count else "cpu"
