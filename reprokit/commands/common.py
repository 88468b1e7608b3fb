"""What every command shares: stderr console, JSON on stdout, and turning bad input into exit 2."""

from __future__ import annotations

import functools
import json
import math
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import typer
from rich.console import Console

from reprokit.errors import ReprokitError

F = TypeVar("F", bound=Callable[..., Any])

#: Tables, progress bars and messages go to stderr so that `--json` output on stdout stays parseable.
err_console = Console(stderr=True)


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):  # numpy / torch scalars
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _finite(value: Any) -> Any:
    """NaN/Inf are not JSON; write them as null so every consumer can parse the document."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def to_json(doc: Any) -> str:
    """Serialise a result document the same way for stdout and for files."""
    return json.dumps(_finite(doc), indent=2, default=_json_default, allow_nan=False)


def print_json(doc: Any) -> None:
    sys.stdout.write(to_json(doc) + "\n")
    sys.stdout.flush()


def fail(message: str, code: int = 2) -> None:
    """End the command with one line on stderr."""
    sys.stderr.write(f"error: {message}\n")
    sys.stderr.flush()
    raise typer.Exit(code)


def cli_errors(func: F) -> F:
    """Turn ReprokitError (and the usual file errors) into one stderr line and exit 2."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except ReprokitError as exc:
            fail(str(exc), exc.exit_code)
        except FileNotFoundError as exc:
            fail(f"file not found: {exc.filename or exc}")
        except KeyboardInterrupt:
            fail("interrupted; finished work is kept and a re-run resumes it", 130)
        return None

    return wrapper  # type: ignore[return-value]
