"""Training progress on stderr: a Rich bar on a terminal, plain timestamped lines otherwise.

A CI job (`reprokit train-ensemble ... 2>log.txt`) has no terminal, where a Rich bar would render
once, at the end. There every finished replica gets one line, and the vectorized engine (which
finishes all replicas together) a line about its optimizer steps every `PROGRESS_INTERVAL` seconds.
Nothing is drawn until the runner reports its first progress, which it does after checking its
inputs: a bad option ends with its one `error:` line and no progress before it.
"""

from __future__ import annotations

import math
import os
import time
from types import TracebackType
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from reprokit.commands.common import err_console

#: Environment variable overriding `PROGRESS_INTERVAL` (seconds; 0 = a line after every step).
INTERVAL_ENV = "REPROKIT_PROGRESS_INTERVAL"
DEFAULT_INTERVAL = 10.0


def _interval_from_env() -> float:
    text = os.environ.get(INTERVAL_ENV, "").strip()
    try:
        value = float(text) if text else DEFAULT_INTERVAL
    except ValueError:
        return DEFAULT_INTERVAL
    return value if math.isfinite(value) and value >= 0 else DEFAULT_INTERVAL


#: Seconds between two step lines when stderr is not a terminal (tests set it to 0).
PROGRESS_INTERVAL: float = _interval_from_env()


def _duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def _replica_outcome(metrics: dict[str, Any]) -> str:
    """`(auc 0.7312)` from a replica's metrics.json, `(diverged)` or `(auc n/a)`."""
    if metrics.get("diverged"):
        return "(diverged)"
    auc = metrics.get("auc")
    try:
        value = float(auc) if auc is not None else math.nan
    except (TypeError, ValueError):
        value = math.nan
    return f"(auc {value:.4f})" if math.isfinite(value) else "(auc n/a)"


class TrainingProgress:
    """Replica- and step-level progress of a training command.

    `replicas` has the runner's `ProgressCallback` signature (done, total, metrics: empty when a
    run, arm or cell starts) and `steps` the vectorized engine's (done, total) step callback.
    """

    def __init__(self, description: str, total: int, console: Console | None = None) -> None:
        self.console = console or err_console
        self.description = description
        self.total = total
        self.terminal = self.console.is_terminal
        self._bar: Progress | None = None
        self._replica_task: TaskID | None = None
        self._step_task: TaskID | None = None
        self._label: str | None = None
        self._steps_done = 0
        self._steps_start = time.monotonic()
        self._last_line = -math.inf

    def __enter__(self) -> TrainingProgress:
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

    # --- output ------------------------------------------------------------------------------
    def _line(self, text: str) -> None:
        """One timestamped line, flushed at once so that a followed log file shows it."""
        stream = self.console.file
        stream.write(f"[{time.strftime('%H:%M:%S')}] {text}\n")
        stream.flush()

    def _prefix(self) -> str:
        return f"{self._label}: " if self._label else ""

    def _started_bar(self) -> Progress:
        if self._bar is None:
            self._bar = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=self.console,
                transient=False,
            )
            self._bar.start()
            self._replica_task = self._bar.add_task(self.description, total=self.total)
        return self._bar

    # --- callbacks ---------------------------------------------------------------------------
    def replicas(
        self, done: int, total: int, metrics: dict[str, Any], description: str | None = None
    ) -> None:
        """A run (arm, cell) started (`metrics` empty) or one of its replicas finished."""
        if description is not None:
            self._label = description
        if self.terminal:
            bar = self._started_bar()
            assert self._replica_task is not None
            bar.update(
                self._replica_task,
                completed=done,
                total=total,
                description=description or self.description,
            )
            return
        if not metrics:
            self._steps_done, self._steps_start = 0, time.monotonic()
            self._last_line = self._steps_start
            what = self._label or self.description
            self._line(f"{what}: started, {done}/{total} replicas done")
            return
        seconds = metrics.get("train_seconds")
        took = f" in {float(seconds):.1f} s" if isinstance(seconds, int | float) else ""
        self._line(f"{self._prefix()}replica {done}/{total} done{took} {_replica_outcome(metrics)}")

    def steps(self, done: int, total: int) -> None:
        """The vectorized engine finished step `done` of `total` (every replica at once)."""
        now = time.monotonic()
        restarted = done < self._steps_done  # the next arm or cell
        if restarted:
            self._steps_start = now
        self._steps_done = done
        if self.terminal:
            bar = self._started_bar()
            if self._step_task is None:
                self._step_task = bar.add_task("  optimizer steps", total=total)
            elif restarted:
                bar.reset(self._step_task, total=total)
            bar.update(self._step_task, completed=done, total=total)
            return
        if done < total and now - self._last_line < PROGRESS_INTERVAL:
            return
        self._last_line = now
        elapsed = now - self._steps_start
        eta = elapsed / done * (total - done) if done else math.nan
        eta_text = f", ETA {_duration(eta)}" if math.isfinite(eta) and done < total else ""
        self._line(
            f"{self._prefix()}step {done}/{total} ({100.0 * done / max(total, 1):.0f}%), "
            f"{_duration(elapsed)} elapsed{eta_text}"
        )
