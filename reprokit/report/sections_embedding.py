"""Report section "Embedding table" of train-ensemble runs and compare studies: the summary's
`embedding` block (kind, parameters, bytes, collision rate overall and per field, per-field widths,
a dynamic table's admission counters) and, for dynamic tables, the table's size over training
from the replicas' `table_rows` train-log column.

Registered on import (reprokit.report imports this module). Run directories written before the
block existed have no `embedding` key: the section is left out; a dynamic run whose logs lack
`table_rows` shows the table without the figure.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from markupsafe import Markup

from reprokit.errors import ReprokitError
from reprokit.jsonio import as_float
from reprokit.report import figures
from reprokit.report.context import LOSS_POINTS, Arm, ReportContext, _downsample
from reprokit.report.sections import SectionOutput, register_section
from reprokit.rundir import TRAIN_ENSEMBLE
from reprokit.runschema import ARM_STUDIES

#: A dynamic table's counters in the summary's block, in display order, with their column names.
COUNTERS = {
    "admitted": "admitted",
    "filtered": "filtered",
    "rejected_full": "rejected (full)",
    "expired": "expired",
    "rows_final": "rows at end",
}
#: Which per-replica keys the replica table shows (counters plus the size they leave).
REPLICA_KEYS = (*COUNTERS, "params", "bytes")
ROWS_COLUMN = "table_rows"
LINESTYLES = ("-", "--", ":", "-.")

Curve = tuple[np.ndarray, np.ndarray]


def _block(arm: Arm) -> dict[str, Any] | None:
    """The arm's embedding block: from its summary (a compare entry carries a copy), else from
    its own run's summary.json; None for runs written before the block existed."""
    block = arm.summary.get("embedding")
    if not isinstance(block, dict) and not arm.run.documents_only:
        block = (arm.run.summary or {}).get("embedding")
    return block if isinstance(block, dict) else None


def _number(value: Any) -> float | None:
    v = as_float(value)
    return None if math.isnan(v) else v


def _row(block: dict[str, Any]) -> dict[str, Any]:
    """What the arms table shows of one block (numbers stay numbers for the JSON twin)."""
    row: dict[str, Any] = {
        "kind": str(block.get("kind") or "unknown"),
        "params": _number(block.get("params")),
        "bytes": _number(block.get("bytes")),
        "collision_rate": _number(block.get("collision_rate")),
    }
    for key in COUNTERS:
        if key in block:
            row[key] = _number(block.get(key))
    return row


def _per_field(blocks: dict[str, dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """field -> arm label -> {collision_rate, width}: every field any arm's block names."""
    fields: dict[str, dict[str, dict[str, Any]]] = {}
    for label, block in blocks.items():
        rates = block.get("field_collision_rate")
        widths = block.get("field_dims")
        for name in list(rates or {}) + [f for f in widths or {} if f not in (rates or {})]:
            cell = fields.setdefault(str(name), {}).setdefault(label, {})
            if isinstance(rates, dict) and name in rates:
                cell["collision_rate"] = _number(rates[name])
            if isinstance(widths, dict) and name in widths:
                cell["width"] = widths[name]
    return fields


def _replica_counters(arm: Arm, block: dict[str, Any]) -> list[dict[str, Any]]:
    """The block's `per_replica` counters, each named by its replica directory (000, 001, ...)
    when there is one entry per replica, else by its position."""
    entries = [r for r in block.get("per_replica") or [] if isinstance(r, dict)]
    names = [f"#{i}" for i in range(len(entries))]
    if entries and not arm.run.documents_only:
        try:
            replicas = [r.name for r in arm.run.replicas()]
        except ReprokitError:
            replicas = []
        if len(replicas) == len(entries):
            names = replicas
    return [
        {"replica": name, **{k: _number(r.get(k)) for k in REPLICA_KEYS if k in r}}
        for name, r in zip(names, entries, strict=True)
    ]


def _table_rows(arm: Arm) -> dict[str, Curve]:
    """Replica name -> (steps, rows in the table after each step), for replicas whose train log
    has the `table_rows` column (only dynamic tables write it)."""
    if arm.run.documents_only:
        return {}
    curves: dict[str, Curve] = {}
    for rep in arm.run.replicas():
        try:
            log = rep.train_log
        except ReprokitError:  # a replica without its log: the loss section says so already
            continue
        if ROWS_COLUMN not in log.columns:
            continue
        steps = log["step"].to_numpy(dtype=np.float64)
        rows = log[ROWS_COLUMN].to_numpy(dtype=np.float64)
        curves[rep.name] = (steps, rows)
    return curves


def _mean_curve(curves: dict[str, Curve]) -> Curve:
    """Mean over replicas of the rows at each step (a replica that stopped early, e.g. diverged,
    counts only at the steps it logged)."""
    steps = np.unique(np.concatenate([s for s, _ in curves.values()]))
    total = np.zeros_like(steps)
    count = np.zeros_like(steps)
    for s, r in curves.values():
        idx = np.searchsorted(steps, s)
        np.add.at(total, idx, r)
        np.add.at(count, idx, 1.0)
    return steps, total / count


def _curve_summary(steps: np.ndarray, rows: np.ndarray) -> dict[str, Any]:
    return {
        "steps": len(steps),
        "first": _number(rows[0]) if len(rows) else None,
        "max": _number(rows.max()) if len(rows) else None,
        "final": _number(rows[-1]) if len(rows) else None,
    }


def _all_equal(curves: list[Curve]) -> bool:
    first_steps, first_rows = curves[0]
    return all(
        np.array_equal(steps, first_steps) and np.array_equal(rows, first_rows)
        for steps, rows in curves[1:]
    )


def table_size_figure(series: dict[str, Curve], legend_title: str) -> Markup:
    """Rows in the table vs step, one line per series (a replica, or an arm's replica mean)."""
    import matplotlib as mpl
    from matplotlib.ticker import MaxNLocator

    with mpl.rc_context(figures._RC):
        long_names = any(len(name) > 30 for name in series)
        legend_rows = (len(series) if long_names else 1) if len(series) <= 8 else 0
        fig = figures._figure(6.4, 3.2 + 0.35 + 0.16 * legend_rows)
        ax = fig.add_subplot()
        for i, (name, (steps, rows)) in enumerate(series.items()):
            xs, ys = _downsample(steps, rows, LOSS_POINTS)
            # Replicas that differ only in init admit the same ids: their curves coincide, so
            # each line gets its own dash pattern and the later ones are thinner.
            ax.plot(
                xs,
                ys,
                color=figures.color(i),
                linestyle=LINESTYLES[i % len(LINESTYLES)],
                linewidth=max(2.2 - 0.5 * i, 0.9),
                marker="o" if len(xs) <= 20 else None,
                markersize=3,
                label=figures.text(name),
            )
        ax.xaxis.set_major_locator(MaxNLocator(nbins="auto", steps=[1, 2, 5, 10], integer=True))
        ax.yaxis.set_major_locator(MaxNLocator(nbins="auto", integer=True))
        ax.set_ylim(bottom=0)
        ax.set_xlabel("step")
        ax.set_ylabel("rows in the table")
        ax.set_title("Table size over training", fontsize=9)
        if len(series) <= 8:  # below the axes: arm labels are long and would hide the lines
            fig.legend(fontsize=7, title=legend_title, title_fontsize=7, loc="outside lower center",
                       ncols=1 if long_names else len(series))  # fmt: skip
    return figures.to_svg(fig, "table-size")


@register_section(TRAIN_ENSEMBLE, *ARM_STUDIES, id="embedding", title="Embedding table", order=85)
def _embedding(ctx: ReportContext) -> SectionOutput | None:
    blocks = {a.label: b for a in ctx.arms if (b := _block(a)) is not None}
    if not blocks:
        return None  # written before the summary had an embedding block
    arms = {label: _row(block) for label, block in blocks.items()}
    fields = _per_field(blocks)
    counters = [k for k in COUNTERS if any(k in row for row in arms.values())]
    counted = {
        a.label: _replica_counters(a, blocks[a.label]) for a in ctx.arms if a.label in blocks
    }
    per_replica = {label: rows for label, rows in counted.items() if rows}
    notes = [
        "Collision rate: the share of distinct training ids that share a row with another id. "
        + (
            "A dynamic table's parameters, bytes and counters are what training left, means "
            "over the replicas."
            if counters
            else "Parameters and bytes count the embedding rows only."
        )
    ]
    missing = [label for label in (a.label for a in ctx.arms) if label not in blocks]
    if missing:
        notes.append(f"No embedding block in the summary of {', '.join(missing)} (an older run).")

    growth: dict[str, Any] = {}
    series: dict[str, Curve] = {}
    for arm in ctx.arms:
        curves = _table_rows(arm)
        if not curves:
            if arm.label in blocks and any(k in blocks[arm.label] for k in COUNTERS):
                notes.append(
                    f"The train logs of {arm.label} have no {ROWS_COLUMN} column, so its table "
                    "size over training is not shown."
                )
            continue
        if ctx.is_compare:
            series[arm.label] = _mean_curve(curves)
            growth[arm.label] = {"mean": _curve_summary(*series[arm.label])}
        else:
            series.update(curves)
            growth[arm.label] = {name: _curve_summary(*c) for name, c in curves.items()}
    figure = None
    if series:
        legend = "arm (mean over replicas)" if ctx.is_compare else "replica"
        figure = table_size_figure(series, legend)
        notes.append(
            "Table size over training: rows in the table after each step"
            + (", the mean over each arm's replicas" if ctx.is_compare else ", per replica")
            + "; only dynamic tables grow and shrink (admission adds rows, expiry evicts them)."
            + (f" Logs longer than {LOSS_POINTS} points are averaged over consecutive steps.")
        )
    if len(series) > 1 and _all_equal(list(series.values())):
        what = "arms" if ctx.is_compare else "replicas"
        notes.append(f"All {what} grow their tables identically: their curves coincide.")
    data = {"arms": arms, "fields": fields, "per_replica": per_replica, "table_rows": growth}
    view = dict(
        data,
        counters=[(k, COUNTERS[k]) for k in counters],
        labels=list(blocks),
        show_widths=any("width" in c for f in fields.values() for c in f.values()),
        show_arm=len(ctx.arms) > 1,
    )
    return SectionOutput(data=data, view=view, figure=figure, notes=notes)
