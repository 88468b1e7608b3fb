"""Progress of a streamed import (`reprokit data criteo / avazu`) on stderr: rows and rows/s.

As in `reprokit.commands.progress`: a Rich bar on a terminal, and plain timestamped lines
otherwise (a CI log), one every `PROGRESS_INTERVAL` seconds and one at the end of each pass.
The row total is unknown until pass 1 ends (a gzip file's size says little), so pass 1 shows a
count and pass 2 a bar against the rows pass 1 found.
"""

from __future__ import annotations

import time
from types import TracebackType

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from reprokit.commands import progress as training_progress
from reprokit.commands.common import err_console

PASSES = {1: "pass 1/2 (count values)", 2: "pass 2/2 (write ids)"}


class IngestProgress:
    """A `(pass_number, rows_done)` callback for `reprokit.data.ctr_logs.import_log`."""

    def __init__(self, description: str, limit: int | None = None, console: Console | None = None):
        self.console = console or err_console
        self.description = description
        self.limit = limit
        self.terminal = self.console.is_terminal
        self._bar: Progress | None = None
        self._task: TaskID | None = None
        self._pass = 0
        self._rows = 0
        self._pass_rows = 0
        self._start = time.monotonic()
        self._last_line = -float("inf")

    def __enter__(self) -> IngestProgress:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
        elif exc_type is None and self._pass:
            self._line()

    def _rate(self) -> float:
        elapsed = time.monotonic() - self._start
        return self._rows / elapsed if elapsed > 0 else 0.0

    def _line(self) -> None:
        stream = self.console.file
        stream.write(
            f"[{time.strftime('%H:%M:%S')}] {self.description} {PASSES[self._pass]}: "
            f"{self._rows:,} rows, {self._rate():,.0f} rows/s\n"
        )
        stream.flush()

    def __call__(self, pass_number: int, rows: int) -> None:
        now = time.monotonic()
        if pass_number != self._pass:
            if self._pass and not self.terminal:
                self._line()  # the finished pass's last line
            self._pass_rows = self._rows
            self._pass, self._start, self._last_line = pass_number, now, now
        self._rows = rows
        if self.terminal:
            self._draw(pass_number, rows)
            return
        if now - self._last_line >= training_progress.PROGRESS_INTERVAL:
            self._last_line = now
            self._line()

    def _draw(self, pass_number: int, rows: int) -> None:
        total = self._pass_rows if pass_number == 2 else self.limit
        if self._bar is None:
            self._bar = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                TextColumn("{task.completed:,} rows"),
                TextColumn("{task.fields[rate]}"),
                TimeElapsedColumn(),
                console=self.console,
                transient=False,
            )
            self._bar.start()
        description = f"{self.description} {PASSES[pass_number]}"
        rate = f"{self._rate():,.0f} rows/s"
        if (
            self._task is None
            or pass_number == 2
            and self._bar.tasks[-1].description != description
        ):
            self._task = self._bar.add_task(description, total=total, rate=rate)
        self._bar.update(self._task, completed=rows, total=total, rate=rate)
