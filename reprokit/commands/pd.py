"""`reprokit pd FILE`: PD / AUC / log-loss of replica predictions produced anywhere.

With `--out DIR` the summary document is also stored as DIR/summary.json (kind "pd"), a run
directory of documents only that `reprokit report` renders and `reprokit gate` reads.

Also home of `render_summary_table`, the Rich table of a summary document that train-ensemble and
other commands print on stderr.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from reprokit.commands import options as opt
from reprokit.commands.common import cli_errors, err_console, fmt_significant, print_json
from reprokit.errors import ReprokitError
from reprokit.jsonio import as_float
from reprokit.metrics.churn import DEFAULT_TOP_K, check_top_k

__all__ = ["render_summary_table", "register", "run_pd", "write_pd_dir"]

KIND = "pd"


def _fmt_count(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) else str(value)


def _interval(bounds: Any, undefined: str = "n/a (< 3 replicas)") -> str:
    """A CI cell: "lo – hi", `undefined` when the bounds are null, "" without bounds."""
    if not (isinstance(bounds, list | tuple) and len(bounds) == 2):
        return ""
    lo, hi = as_float(bounds[0]), as_float(bounds[1])
    if math.isfinite(lo) and math.isfinite(hi):
        return f"{fmt_significant(lo, 4)} – {fmt_significant(hi, 4)}"
    return undefined


def render_summary_table(summary: dict[str, Any], title: str | None = None) -> Table:
    """A Rich table of a summary document (docs/contracts.md): PD keys with CIs, then accuracy.

    Works on the dict `summarize` returns and on one read back from JSON (nulls shown as n/a).
    """
    counts = f"{summary.get('replicas')} replicas x {_fmt_count(summary.get('examples'))} examples"
    ci = summary.get("pd_ci") or {}
    level = as_float(ci.get("level", 0.95))
    ci_head = f"{level * 100:g}% CI" if math.isfinite(level) else "CI"
    table = Table(
        title=title or "prediction difference",
        title_justify="left",
        caption=f"{counts}; CI: {ci.get('method', 'bootstrap over replicas')}",
    )
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_column(ci_head, justify="right")
    table.add_column("± std", justify="right")
    table.add_column("ensemble", justify="right")

    threshold = as_float(summary.get("flip_threshold", 0.5))
    for key, value in (summary.get("pd") or {}).items():
        name = f"flip (t={threshold:g})" if key == "flip" else key
        table.add_row(name, fmt_significant(value, 5), _interval(ci.get(key)), "", "")
    churn = summary.get("churn")
    if isinstance(churn, dict):
        k = churn.get("k")
        no_group = f"n/a (no group has more than {k} examples)"
        table.add_row(
            f"top-{k} churn ({_fmt_count(churn.get('groups'))} groups)",
            fmt_significant(churn.get("value"), 5),
            _interval(churn.get("ci"), "n/a (< 3 replicas)" if churn.get("groups") else no_group),
            "",
            "",
        )

    names = {"auc": "AUC", "logloss": "log-loss", "calibration": "calibration"}
    first = True
    for key, label in names.items():
        entry = summary.get(key)
        if not isinstance(entry, dict):
            continue
        if first:
            table.add_section()
            first = False
        std = as_float(entry.get("std"))
        spread = fmt_significant(std, 3) if math.isfinite(std) else ""
        table.add_row(
            label,
            fmt_significant(entry.get("mean"), 5),
            "",
            spread,
            fmt_significant(entry.get("ensemble"), 5),
        )
    return table


@contextmanager
def _progress_callback(show: bool, examples: int) -> Iterator[Callable[[int, int], Any] | None]:
    """`summarize`'s progress callback drawing a transient bar on stderr; None when hidden."""
    if not show:
        yield None
        return
    with Progress(
        TextColumn("computing PD"),
        BarColumn(),
        TextColumn("{task.completed:,}/{task.total:,} examples"),
        TimeElapsedColumn(),
        console=err_console,
        transient=True,
    ) as bar:
        task = bar.add_task("pd", total=examples)
        yield lambda done, total: bar.update(task, completed=done, total=total)


def run_pd(
    file: Path,
    *,
    threshold: float = 0.5,
    fmt: str = "auto",
    seed: int = 0,
    resamples: int = 9999,
    show_progress: bool = False,
    group_column: str | None = None,
    top_k: int = DEFAULT_TOP_K,
    label: str = "label",
) -> tuple[dict[str, Any], list[str]]:
    """Load FILE, summarise it; returns (summary document with kind "pd", warning messages: the
    loader's notes, then undefined metrics).

    `label` names the label column (``label`` may be absent; another name must exist). With
    `group_column` the document also holds top-k churn per group (e.g. per user). The document's
    ``data`` block records the file and a fingerprint of its example ids and labels, so a gate can
    tell whether two pd summaries measured the same examples."""
    from reprokit import __version__
    from reprokit.metrics.accuracy import UndefinedMetricWarning
    from reprokit.metrics.summary import summarize
    from reprokit.predictions import fingerprint, load_predictions_with_notes

    if not (math.isfinite(threshold) and 0.0 < threshold < 1.0):
        raise ReprokitError(f"--threshold must be strictly between 0 and 1, got {threshold:g}")
    if resamples < 1:
        raise ReprokitError(f"--resamples must be positive, got {resamples}")
    if seed < 0:  # numpy's SeedSequence refuses negative entropy with a traceback
        raise ReprokitError(f"--seed must be >= 0, got {seed}")
    check_top_k(top_k, "--top-k")
    if not label:
        raise ReprokitError("--label must name a column")
    data, groups, notes = load_predictions_with_notes(file, group_column, format=fmt, label=label)
    messages: list[str] = list(notes)  # columns left out, a label under another name
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UndefinedMetricWarning)
        with _progress_callback(show_progress, data.predictions.shape[1]) as progress:
            summary = summarize(
                data.predictions,
                data.labels,
                flip_threshold=threshold,
                n_resamples=resamples,
                seed=seed,
                kind=KIND,
                replica_names=data.replicas,
                progress=progress,
                groups=groups,
                top_k=top_k,
                group_name=group_column,
            )
    for w in caught:
        msg = str(w.message)
        if issubclass(w.category, UndefinedMetricWarning) and msg not in messages:
            messages.append(msg)
    summary["reprokit_version"] = __version__
    summary["data"] = {
        "path": str(file),
        "labels": [label] if data.labels is not None else [],
        "fingerprint": fingerprint(data),
    }
    return summary, messages


def check_pd_dir(out: Path) -> Path:
    """OUT/summary.json, refused when OUT is a file or holds a run of another kind (checked before
    any work so a long PD computation never ends in a refusal)."""
    from reprokit.store import MANIFEST, SUMMARY, read_json

    if out.exists() and not out.is_dir():
        raise ReprokitError(f"--out {out} is a file; give a directory for the pd summary")
    for name in (MANIFEST, "compare.json", "stability.json"):
        if (out / name).exists():
            raise ReprokitError(
                f"--out {out} holds another reprokit run ({name}); choose another directory"
            )
    target = out / SUMMARY
    if target.exists():
        kind = read_json(target, "summary.json").get("kind")
        if kind != KIND:
            raise ReprokitError(
                f"--out {out} holds the summary.json of a {kind or 'non-pd'} run; "
                "choose another directory"
            )
    return target


def write_pd_dir(out: Path, summary: dict[str, Any]) -> Path:
    """Store a pd summary as OUT/summary.json (atomically); refuse to overwrite another run."""
    from reprokit.store import atomic_write_json

    target = check_pd_dir(out)
    atomic_write_json(target, summary)
    return target


def register(app: typer.Typer) -> None:
    @app.command("pd")
    @cli_errors
    def pd_command(
        file: Path = typer.Argument(
            ...,
            help="Predictions file (parquet or CSV), long (example_id, replica, prediction"
            "[, label]) or wide (example_id[, label], one column per replica).",
            show_default=False,
        ),
        threshold: float = typer.Option(
            0.5, "--threshold", "-t", help="Decision threshold t of the flip key."
        ),
        json_out: bool = typer.Option(
            False, "--json", help="Print the summary document (JSON, kind 'pd') on stdout."
        ),
        fmt: str = typer.Option(
            "auto",
            "--format",
            help="File layout: auto, long or wide (auto: long if the file "
            "has 'replica' and 'prediction' columns).",
        ),
        seed: int = typer.Option(0, "--seed", help="Seed of the bootstrap over replicas (>= 0)."),
        resamples: int = typer.Option(9999, "--resamples", help="Bootstrap resamples."),
        group_column: opt.ChurnBy = None,
        top_k: opt.TopK = DEFAULT_TOP_K,
        label: str = typer.Option(
            "label",
            "--label",
            help="Label column (AUC, log-loss, calibration); 'label' may be absent, another "
            "name must exist. In the wide layout every other 0/1 integer column (and 0.0/1.0 float "
            "column named like a label: click, target, y, ...) is refused.",
        ),
        out: Path | None = typer.Option(
            None,
            "--out",
            help="Also store the summary as DIR/summary.json, for `reprokit report DIR` and "
            "`reprokit gate`.",
        ),
    ) -> None:
        """PD / AUC / log-loss of replica predictions produced anywhere.

        Every PD key, with a bootstrap CI over replicas for abs and rel.
        With a label column also AUC, log-loss and calibration (replica mean ± std, ensemble).
        With --churn-by also top-k churn per group: the mean share of a group's top k that
        two replicas do not share (groups with more than k examples).

        Examples:

          reprokit pd preds.parquet

          reprokit pd preds.csv --format wide --threshold 0.3 --json > pd.json

          reprokit pd preds.parquet --churn-by user_id --top-k 5

          reprokit pd wide.parquet --label click --out runs/pd-click
        """
        if fmt not in ("auto", "long", "wide"):
            raise ReprokitError(f"--format must be auto, long or wide, got {fmt!r}")
        if out is not None:
            check_pd_dir(out)
        summary, messages = run_pd(
            file,
            threshold=threshold,
            fmt=fmt,
            seed=seed,
            resamples=resamples,
            show_progress=err_console.is_terminal,
            group_column=group_column,
            top_k=top_k,
            label=label,
        )
        written = write_pd_dir(out, summary) if out is not None else None
        for msg in messages:
            err_console.print(f"warning: {msg}", markup=False, highlight=False)
        err_console.print(render_summary_table(summary, title=f"reprokit pd: {file}"))
        if written is not None:
            err_console.print(f"wrote {written}", markup=False, highlight=False)
        if json_out:
            print_json(summary)
