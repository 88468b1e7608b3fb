"""What every command shares: stderr console, JSON on stdout, and turning bad input into exit 2."""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import sys
import warnings
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import typer
from rich.console import Console

from reprokit.commands.clickcompat import get_current_context
from reprokit.errors import ReprokitError, ReprokitWarning
from reprokit.jsonio import as_float, to_json

F = TypeVar("F", bound=Callable[..., Any])

#: Tables, progress bars and messages go to stderr so that `--json` output on stdout stays parseable.
err_console = Console(
    stderr=True,
    # Piped or captured stderr (CI logs) has no terminal width; 80 columns would wrap wide tables.
    width=None if sys.stderr.isatty() or os.environ.get("COLUMNS") else 160,
)


def print_json(doc: Any) -> None:
    sys.stdout.write(to_json(doc) + "\n")
    sys.stdout.flush()


def fmt_significant(value: Any, digits: int) -> str:
    """A document number with `digits` significant digits for a table cell; 'n/a' when missing."""
    v = as_float(value)
    return "n/a" if not math.isfinite(v) else f"{v:.{digits}g}"


def fail(message: str, code: int = 2) -> None:
    """End the command with one line on stderr."""
    sys.stderr.write(f"error: {message}\n")
    sys.stderr.flush()
    raise typer.Exit(code)


def os_error_sentence(exc: OSError) -> str:
    """One sentence for an operating-system failure: what failed, on which path, and a hint."""
    import errno

    path = exc.filename if exc.filename is not None else ""
    reason = exc.strerror or str(exc) or type(exc).__name__
    hints = {
        errno.EACCES: "check the permissions or choose another --out",
        errno.EPERM: "check the permissions or choose another --out",
        errno.EROFS: "choose another --out",
        errno.ENOSPC: "free some space or choose another --out; files already written are intact",
        errno.EDQUOT: "free some space or choose another --out; files already written are intact",
        errno.ENOTDIR: "a part of the path is a file, not a directory",
        errno.EISDIR: "name a file, not a directory",
        errno.EEXIST: "a file of that name is in the way",
    }
    hint = hints.get(exc.errno or -1)
    where = f" ({path})" if path else ""
    return f"{reason.rstrip('.')}{where}" + (f"; {hint}" if hint else "")


class _NoteHandler(logging.Handler):
    """Library notes (logger "reprokit", e.g. a damaged replica trained again) as stderr lines."""

    def emit(self, record: logging.LogRecord) -> None:
        err_console.print(f"note: {record.getMessage()}", markup=False, highlight=False)


def show_library_notes() -> None:
    """Route the library's warnings-level log records to stderr (once per process)."""
    logger = logging.getLogger("reprokit")
    if not any(isinstance(h, _NoteHandler) for h in logger.handlers):
        logger.addHandler(_NoteHandler(level=logging.WARNING))
        logger.propagate = False


def cli_errors(func: F) -> F:
    """Turn ReprokitError (and the usual file errors) into one stderr line and exit 2."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        show_library_notes()
        try:
            return func(*args, **kwargs)
        except ReprokitError as exc:
            emit_json_error(kwargs, str(exc))
            fail(str(exc), exc.exit_code)
        except FileNotFoundError as exc:
            message = f"file not found: {exc.filename or exc}"
            emit_json_error(kwargs, message)
            fail(message)
        except OSError as exc:  # permissions, a full disk, a path under a file, ...
            message = os_error_sentence(exc)
            emit_json_error(kwargs, message)
            fail(message)
        except KeyboardInterrupt:
            fail("interrupted; finished work is kept and a re-run resumes it", 130)
        return None

    return wrapper  # type: ignore[return-value]


def json_requested(kwargs: dict[str, Any]) -> bool:
    """Whether the running command got `--json`, whatever its parameter is called (`json_out`,
    `as_json`): the command's options say which parameter declares the flag."""
    ctx = get_current_context(silent=True)
    params = ctx.command.params if ctx is not None else []
    names = [p.name for p in params if "--json" in getattr(p, "opts", ())]
    return any(bool(kwargs.get(name)) for name in names or ("json_out", "as_json"))


def emit_json_error(kwargs: dict[str, Any], message: str) -> None:
    """With `--json`, a failure also prints `{"schema_version": 1, "error": message}` on stdout, so a
    script that parses stdout gets a document either way (the sentence still goes to stderr)."""
    if json_requested(kwargs):
        print_json({"schema_version": 1, "error": message})


def _show_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: Any = None,
    line: str | None = None,
    *,
    fallback: Callable[..., None],
) -> None:
    if issubclass(category, ReprokitWarning):
        sys.stderr.write(f"warning: {message}\n")
        sys.stderr.flush()
    else:
        fallback(message, category, filename, lineno, file, line)


@contextlib.contextmanager
def cli_warnings(verbose: bool = False) -> Iterator[None]:
    """Python warnings during one CLI invocation.

    reprokit's own (`ReprokitWarning`, e.g. an undefined metric) are one `warning: ...` line each;
    those of dependencies (torch UserWarnings, pandas FutureWarnings, ...) are noise to a user and
    only shown with `--verbose`. Spawned worker processes inherit the choice (PYTHONWARNINGS).
    Filters the user set (`python -W`, PYTHONWARNINGS) are left alone. Filters, the display hook
    and the environment are restored afterwards.
    """
    saved_env = os.environ.get("PYTHONWARNINGS")
    with warnings.catch_warnings():
        if verbose:
            warnings.simplefilter("default")
        elif not sys.warnoptions:
            warnings.simplefilter("ignore")
            warnings.filterwarnings("default", category=ReprokitWarning)
            os.environ["PYTHONWARNINGS"] = "ignore"
        warnings.showwarning = functools.partial(_show_warning, fallback=warnings.showwarning)
        try:
            yield
        finally:
            if saved_env is None:
                os.environ.pop("PYTHONWARNINGS", None)
            else:
                os.environ["PYTHONWARNINGS"] = saved_env
