"""The README's Quickstart holds exactly two commands, and CI runs the second one verbatim."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def quickstart_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block, "README Quickstart has no bash block"
    return [line for line in block.group(1).splitlines() if line.strip()]


def test_quickstart_has_two_commands_and_ci_runs_the_test_one():
    cmds = quickstart_commands()
    assert len(cmds) == 2, cmds
    assert "pytest" in cmds[1]
    # the first command converts the sample without the torch extra (tests/test_onnxruntime.py runs that path
    # in a process where torch cannot be imported)
    assert cmds[0].startswith("python -m pip install . && sitm-trt infer --sample"), cmds[0]
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert cmds[1] in ci, f"{cmds[1]!r} is not a line of .ci/run"
