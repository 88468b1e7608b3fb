"""Assertions every CLI test shares: a failure is one `error:` line on stderr and exit code 2."""

from __future__ import annotations

from typing import Any


def one_error_line(result: Any) -> str:
    """The single `error: ...` line of a failed CliRunner result or subprocess; asserts exit 2,
    exactly one stderr line and no traceback anywhere."""
    code = getattr(result, "exit_code", getattr(result, "returncode", None))
    output = getattr(result, "output", "") or ""
    assert code == 2, result.stderr or output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in output + result.stderr
    return lines[0]
