"""Atomic file writes: a temporary name in the target directory, then a rename.

A killed process never leaves half a file, and a write that fails (permissions, a full disk, a
path under a file) leaves the old file as it was and raises an OSError that names the target
path, which `reprokit.commands.common.cli_errors` turns into one sentence.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path

from reprokit.errors import ReprokitError


def make_dirs(path: str | os.PathLike) -> Path:
    """`path` and its parents as directories; one that cannot be made (under /proc, a read-only
    mount, below a file) is a sentence that says so, not a "file not found"."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        reason = (exc.strerror or str(exc) or type(exc).__name__).rstrip(".")
        raise ReprokitError(
            f"cannot create the directory {exc.filename or path} ({reason}); choose another --out"
        ) from None
    return path


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> None:
    """Call `write(tmp)` to fill a temporary file, then rename it onto `path`."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        make_dirs(path.parent)
        write(tmp)
        os.replace(tmp, path)
    except OSError as exc:
        if exc.filename is not None and exc.errno is not None and exc.filename != str(tmp):
            raise
        code = exc.errno
        reason = os.strerror(code) if code else (str(exc) or type(exc).__name__)
        if code == errno.ENOENT:  # the directory exists but takes no new files (/proc, ...)
            raise ReprokitError(
                f"cannot write {path} ({reason}): its directory takes no new files; choose "
                "another --out"
            ) from None
        raise OSError(code, reason, str(path)) from exc
    finally:
        try:
            tmp.unlink()
        except FileNotFoundError:
            pass
        except OSError:
            pass  # a read-only directory: nothing was created there


def atomic_write_bytes(path: str | os.PathLike, payload: bytes) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())

    atomic_write(path, write)
