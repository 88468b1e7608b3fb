"""`.ci/run` must run exactly the README quick start's commands, so the README never drifts from CI."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _quick_start_commands() -> list[str]:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", section, flags=re.S)
    return [line for block in blocks for line in block.splitlines() if line.strip()]


def test_ci_runs_the_readme_quick_start_verbatim():
    commands = _quick_start_commands()
    assert any(c.startswith("pip install") for c in commands), commands
    assert "python -m pytest -q" in commands
    ci_lines = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    for command in commands:
        assert command in ci_lines, f"{command!r} is in the README quick start but not in .ci/run"


def test_ci_lints_and_installs_chromium_only_when_missing():
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    lines = ci.splitlines()
    assert "ruff check ." in lines and "ruff format --check ." in lines
    guard = ci.index("if ! command -v chromium")
    assert guard < ci.index("apt-get install -y chromium") < ci.index("python -m pytest -q")
