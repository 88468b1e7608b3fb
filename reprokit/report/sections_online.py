"""Report sections of an `online` run directory (reprokit.runners.online): Monolith's online
training over a stream, read from online.json.

Registered on import (reprokit.report imports this module). The context has no arms (an online run
has no replicas/ directory); each section reads the document: the sync-interval table (online vs
batch AUC, like Monolith's Table 2), AUC over shards with the batch line and the failure marker,
PD between the replicas' serving models over shards (with its CI band), the embedding table over
the stream (when the run's table kind reports counters), bytes synced, the failure experiment and
the configuration. A section with nothing to show (no PD with one replica, no table counters, no
failure run) is left out.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import matplotlib as mpl
from markupsafe import Markup
from matplotlib.ticker import FuncFormatter

from reprokit.gate import interval_text, read_online
from reprokit.jsonio import as_float
from reprokit.report import figures
from reprokit.report.context import ReportContext, register_context
from reprokit.report.sections import SectionOutput, _flatten, fmt, register_section
from reprokit.rundir import Run
from reprokit.runschema import ONLINE

#: The embedding-table counters drawn over the stream, with their labels.
TABLE_SERIES = {"rows_final": "rows in the table", "admitted": "admitted", "expired": "expired"}
#: Every counter of a shard's `table` block, in the order the table shows them.
TABLE_KEYS = ("rows_final", "admitted", "filtered", "rejected_full", "expired", "params", "bytes")
BATCH_COLOR = "#333333"
#: Not in the palette, so the marker never takes an interval's colour.
FAILURE_COLOR = "#6a3d9a"


@register_context(ONLINE)
def _online_context(run: Run) -> ReportContext:
    ctx = ReportContext(run=run, kind=ONLINE, title=run.name, arms=[], pareto=[])
    ctx.study = read_online(run)  # type: ignore[attr-defined]
    return ctx


def _doc(ctx: ReportContext) -> dict[str, Any]:
    return ctx.study  # type: ignore[attr-defined]


def _f(value: Any) -> float | None:
    v = as_float(value)
    return None if math.isnan(v) else v


def _label(entry: dict[str, Any]) -> str:
    return f"sync every {interval_text(entry)}"


def _pd_rel(shard: dict[str, Any]) -> float | None:
    return _f((shard.get("pd") or {}).get("rel"))


def _pd_ci(shard: dict[str, Any], key: str = "rel") -> list[float] | None:
    ci = (shard.get("pd_ci") or {}).get(key)
    if isinstance(ci, list | tuple) and len(ci) == 2 and all(_f(v) is not None for v in ci):
        return [float(ci[0]), float(ci[1])]
    return None


def _shards(doc: dict[str, Any]) -> list[int]:
    return [int(s["shard"]) for s in doc["intervals"][0]["shards"]]


def _xaxis(ax: Any, shards: Sequence[int]) -> None:
    ax.set_xticks(list(shards))
    ax.set_xlabel("shard (in time order)")


# ------------------------------------------------------------------------------- sync intervals
@register_section(
    ONLINE, id="online-intervals", title="Online vs batch", order=0, template="online-intervals.j2"
)
def _intervals(ctx: ReportContext) -> SectionOutput:
    doc = _doc(ctx)
    rows = []
    for entry in doc["intervals"]:
        final = entry["shards"][-1]
        rows.append(
            {
                "interval": entry["interval"],
                "unit": entry.get("unit"),
                "label": _label(entry),
                "mean_auc_online": _f(entry["mean_auc_online"]),
                "mean_auc_batch": _f(entry["mean_auc_batch"]),
                "mean_auc_gain": _f(entry["mean_auc_gain"]),
                "sparse_syncs": _f(entry.get("sparse_syncs")),
                "dense_syncs": _f(entry.get("dense_syncs")),
                "sparse_bytes_per_sync": _f(entry.get("sparse_bytes_per_sync")),
                "final_pd_rel": _pd_rel(final),
                "final_pd_ci": _pd_ci(final),
            }
        )
    known = [r for r in rows if r["mean_auc_gain"] is not None]
    best = max(known, key=lambda r: r["mean_auc_gain"]) if known else None
    if best is None:
        headline = "No AUC gain could be measured (online or batch AUC is missing)"
        status = "warning"
    else:
        gain = best["mean_auc_gain"]
        side = "above" if gain > 0 else "below" if gain < 0 else "level with"
        headline = (
            f"Online training is {fmt(abs(gain)) + ' AUC ' if gain else ''}{side} the batch "
            f"model at its best interval, {best['label']}"
            + (f" (of {len(rows)} intervals)" if len(rows) > 1 else "")
        )
        status = "ok" if gain >= 0 else "warning"
    facts = {
        "replicas": doc.get("replicas"),
        "varied": ", ".join(doc.get("vary") or []) or "(none)",
        "embedding": doc.get("embedding"),
        "batch rows": doc.get("batch_rows"),
        "stream rows": doc.get("stream_rows"),
        "shards": doc.get("shards"),
        "dense sync every (sparse syncs)": doc.get("dense_sync_every"),
    }
    notes = [
        "Per shard the serving copy evaluates the shard before the training copy trains on it; "
        "the batch model is the frozen starting model on the same shards. Gain: mean over shards "
        "of online AUC − batch AUC (replica means). Bytes per sync: sparse bytes pushed over the "
        "stream divided by the sparse syncs (per replica). PD: between the replicas' serving "
        "models on the final shard, with its bootstrap CI.",
    ]
    data = {"headline": headline, "status": status, "facts": facts, "intervals": rows}
    return SectionOutput(data=data, notes=notes)


# ------------------------------------------------------------------------------- AUC over shards
def _auc_figure(doc: dict[str, Any]) -> Markup:
    failure = doc.get("failure")
    with mpl.rc_context(figures._RC):
        fig = figures._figure(6.8, 3.6)
        ax = fig.add_subplot()
        shards = _shards(doc)
        for i, entry in enumerate(doc["intervals"]):
            ys = [_f(s["auc_online"]) for s in entry["shards"]]
            ax.plot(shards, ys, "o-", color=figures.color(i), label=_label(entry), markersize=4)
            if failure and as_float(failure.get("interval")) == as_float(entry["interval"]):
                fx = [int(s["shard"]) for s in failure["shards"]]
                fy = [_f(s["auc_failure"]) for s in failure["shards"]]
                ax.plot(
                    fx,
                    fy,
                    "x:",
                    color=figures.color(i),
                    label=f"{_label(entry)}, failure run",
                    markersize=6,
                )
        batch = [_f(s["auc_batch"]) for s in doc["intervals"][0]["shards"]]
        # Under the online lines, wide and grey: where an interval has not synced yet its line
        # lies on the batch line and both stay visible.
        ax.plot(
            shards,
            batch,
            "s--",
            color=BATCH_COLOR,
            alpha=0.55,
            linewidth=3,
            label="batch model",
            markersize=5,
            zorder=1.5,
        )
        if failure:
            k = int(failure["fail_at"])
            ax.axvline(k - 0.5, color=FAILURE_COLOR, linestyle="--", linewidth=1.2)
            ax.annotate(
                f"failure at shard {k}",
                xy=(k - 0.5, 0.0),
                xycoords=("data", "axes fraction"),
                xytext=(4, 4),
                textcoords="offset points",
                color=FAILURE_COLOR,
                fontsize=8,
            )
        _xaxis(ax, shards)
        ax.set_ylabel("AUC (mean over replicas)")
        ax.legend(fontsize=8, loc="best")
    return figures.to_svg(fig, "online-auc")


@register_section(
    ONLINE, id="online-auc", title="AUC over shards", order=10, template="online-auc.j2"
)
def _auc(ctx: ReportContext) -> SectionOutput:
    doc = _doc(ctx)
    labels = [_label(e) for e in doc["intervals"]]
    rows = []
    for j, shard in enumerate(doc["intervals"][0]["shards"]):
        rows.append(
            {
                "shard": int(shard["shard"]),
                "rows": shard.get("rows"),
                "auc_batch": _f(shard["auc_batch"]),
                "auc_online": [_f(e["shards"][j]["auc_online"]) for e in doc["intervals"]],
                "auc_gain": [_f(e["shards"][j]["auc_gain"]) for e in doc["intervals"]],
            }
        )
    failure = doc.get("failure")
    data = {
        "labels": labels,
        "shards": rows,
        "fail_at": int(failure["fail_at"]) if failure else None,
    }
    notes = []
    if failure:
        notes.append(
            f"The purple dashed line marks the failure at shard {failure['fail_at']} of the run that "
            f"syncs every {interval_text(failure)} (crosses: its failure run)."
        )
    return SectionOutput(data=data, figure=_auc_figure(doc), notes=notes)


# -------------------------------------------------------------------------------- PD over shards
def _pd_figure(doc: dict[str, Any]) -> Markup:
    with mpl.rc_context(figures._RC):
        fig = figures._figure(6.8, 3.4)
        ax = fig.add_subplot()
        shards = _shards(doc)
        for i, entry in enumerate(doc["intervals"]):
            xs = [int(s["shard"]) for s in entry["shards"] if _pd_rel(s) is not None]
            ys = [_pd_rel(s) for s in entry["shards"] if _pd_rel(s) is not None]
            ax.plot(xs, ys, "o-", color=figures.color(i), label=_label(entry), markersize=4)
            band = [(int(s["shard"]), _pd_ci(s)) for s in entry["shards"]]
            band = [(x, ci) for x, ci in band if ci is not None]
            if band:
                ax.fill_between(
                    [x for x, _ in band],
                    [ci[0] for _, ci in band],
                    [ci[1] for _, ci in band],
                    color=figures.color(i),
                    alpha=0.15,
                    linewidth=0,
                )
        _xaxis(ax, shards)
        ax.set_ylim(bottom=0)
        ax.set_ylabel("PD rel between replicas (band: CI)")
        ax.legend(fontsize=8, loc="best")
    return figures.to_svg(fig, "online-pd")


@register_section(ONLINE, id="online-pd", title="PD over shards", order=20, template="online-pd.j2")
def _pd(ctx: ReportContext) -> SectionOutput | None:
    doc = _doc(ctx)
    if not any(_pd_rel(s) is not None for e in doc["intervals"] for s in e["shards"]):
        return None  # one replica: no PD between replicas
    labels = [_label(e) for e in doc["intervals"]]
    rows = []
    for j, shard in enumerate(doc["intervals"][0]["shards"]):
        cells = [e["shards"][j] for e in doc["intervals"]]
        rows.append(
            {
                "shard": int(shard["shard"]),
                "pd_rel": [_pd_rel(c) for c in cells],
                "pd_ci": [_pd_ci(c) for c in cells],
                "churn": [_f((c.get("churn") or {}).get("value")) for c in cells],
            }
        )
    trend = []
    for label, entry in zip(labels, doc["intervals"], strict=True):
        values = [_pd_rel(s) for s in entry["shards"] if _pd_rel(s) is not None]
        if len(values) >= 2:
            first, last = values[0], values[-1]
            way = "grows" if last > first else "shrinks" if last < first else "stays"
            trend.append(f"{label}: PD rel {way} from {fmt(first)} to {fmt(last)}.")
    data = {
        "labels": labels,
        "shards": rows,
        "has_churn": any(v is not None for r in rows for v in r["churn"]),
        "trend": trend,
    }
    notes = [
        "PD rel between the replicas' serving models on each shard (evaluated before training "
        "on it); the band is its bootstrap CI over replicas.",
    ]
    return SectionOutput(data=data, figure=_pd_figure(doc), notes=notes)


# ------------------------------------------------------------------------- embedding table
def _table_figure(doc: dict[str, Any]) -> Markup:
    fig, axes = figures._grid(len(TABLE_SERIES), width_each=3.0, height_each=2.5)
    with mpl.rc_context(figures._RC):
        shards = _shards(doc)
        for ax, (key, name) in zip(axes, TABLE_SERIES.items(), strict=True):
            for i, entry in enumerate(doc["intervals"]):
                xs = [int(s["shard"]) for s in entry["shards"] if s.get("table")]
                ys = [_f(s["table"].get(key)) for s in entry["shards"] if s.get("table")]
                ax.plot(xs, ys, "o-", color=figures.color(i), label=_label(entry), markersize=3)
            ax.set_title(name, fontsize=9)
            _xaxis(ax, shards)
            ax.set_ylabel("rows (mean over replicas)")
        axes[0].legend(fontsize=7, loc="best")
    return figures.to_svg(fig, "online-table")


@register_section(
    ONLINE,
    id="online-table",
    title="Embedding table over the stream",
    order=30,
    template="online-table.j2",
)
def _table(ctx: ReportContext) -> SectionOutput | None:
    doc = _doc(ctx)
    if not any(isinstance(s.get("table"), dict) for e in doc["intervals"] for s in e["shards"]):
        return None  # a table kind without admission counters (hashed, qr, ...)
    intervals = []
    for entry in doc["intervals"]:
        intervals.append(
            {
                "label": _label(entry),
                "shards": [
                    {
                        "shard": int(s["shard"]),
                        **{k: _f((s.get("table") or {}).get(k)) for k in TABLE_KEYS},
                    }
                    for s in entry["shards"]
                ],
            }
        )
    data = {"embedding": doc.get("embedding"), "keys": list(TABLE_KEYS), "intervals": intervals}
    notes = [
        "The training copy's table after each shard, mean over replicas; counters are cumulative "
        "over the batch part and the stream so far."
    ]
    return SectionOutput(data=data, figure=_table_figure(doc), notes=notes)


# ------------------------------------------------------------------------------- bytes synced
def _bytes_figure(doc: dict[str, Any]) -> Markup:
    with mpl.rc_context(figures._RC):
        fig = figures._figure(6.8, 3.4)
        ax = fig.add_subplot()
        shards = _shards(doc)
        positive = False
        for i, entry in enumerate(doc["intervals"]):
            xs = [int(s["shard"]) for s in entry["shards"]]
            for key, style in (("sparse", "o-"), ("dense", "s--")):
                ys = [_f((s.get("synced_bytes") or {}).get(key)) for s in entry["shards"]]
                positive = positive or any(y and y > 0 for y in ys)
                ax.plot(
                    xs,
                    ys,
                    style,
                    color=figures.color(i),
                    label=f"{_label(entry)}: {key}",
                    markersize=4,
                )
        if positive:
            ax.set_yscale("symlog", linthresh=1024)
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: _bytes_text(v)))
        _xaxis(ax, shards)
        ax.set_ylabel("bytes pushed to serving (per replica)")
        ax.legend(fontsize=8, loc="best")
    return figures.to_svg(fig, "online-bytes")


def _bytes_text(v: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(v) < 1024 or unit == "GiB":
            return f"{v:.0f} {unit}" if unit == "B" else f"{v:.3g} {unit}"
        v /= 1024
    return ""


@register_section(
    ONLINE, id="online-bytes", title="Bytes synced", order=40, template="online-bytes.j2"
)
def _bytes(ctx: ReportContext) -> SectionOutput:
    doc = _doc(ctx)
    labels = [_label(e) for e in doc["intervals"]]
    rows = []
    for j, shard in enumerate(doc["intervals"][0]["shards"]):
        cells = [e["shards"][j] for e in doc["intervals"]]
        rows.append(
            {
                "shard": int(shard["shard"]),
                "sparse": [_f(c["synced_bytes"].get("sparse")) for c in cells],
                "dense": [_f(c["synced_bytes"].get("dense")) for c in cells],
                "rows_pushed": [_f(c.get("rows_pushed")) for c in cells],
            }
        )
    totals = [
        {
            "label": label,
            "sparse": sum(_f(s["synced_bytes"].get("sparse")) or 0.0 for s in e["shards"]),
            "dense": sum(_f(s["synced_bytes"].get("dense")) or 0.0 for s in e["shards"]),
        }
        for label, e in zip(labels, doc["intervals"], strict=True)
    ]
    notes = [
        "Sparse: the touched embedding rows pushed from the training to the serving copy; dense: "
        f"the dense weights, every {doc.get('dense_sync_every')} sparse syncs. Per shard, mean "
        "over replicas."
    ]
    data = {"labels": labels, "shards": rows, "totals": totals}
    return SectionOutput(data=data, figure=_bytes_figure(doc), notes=notes)


# ---------------------------------------------------------------------------------- failure
def _whole(value: Any) -> Any:
    """A mean over replicas that is a whole number shows as one (2, not 2.0)."""
    v = _f(value)
    return int(v) if v is not None and v.is_integer() else value


@register_section(
    ONLINE, id="online-failure", title="Failure experiment", order=50, template="online-failure.j2"
)
def _failure(ctx: ReportContext) -> SectionOutput | None:
    failure = _doc(ctx).get("failure")
    if not isinstance(failure, dict):
        return None
    restored = failure.get("restored_from_shard")
    catch_up = failure.get("catch_up_shards")
    facts = {
        "sync interval": f"every {interval_text(failure)}",
        "failure at shard": failure.get("fail_at"),
        "snapshot every (shards)": failure.get("snapshot_every"),
        "restored from": "the starting model (no snapshot yet)"
        if restored is None or restored < 0
        else f"the snapshot after shard {restored}",
        "lost updates (optimizer steps)": _whole(failure.get("lost_updates")),
        "lost examples": _whole(failure.get("lost_examples")),
        "shards until caught up": "not within the stream" if catch_up is None else catch_up,
        "catch-up tolerance (AUC)": failure.get("catch_up_tolerance"),
    }
    shards = [
        {
            "shard": int(s["shard"]),
            "auc_failure": _f(s.get("auc_failure")),
            "auc_no_failure": _f(s.get("auc_no_failure")),
            "delta": _f(s.get("delta")),
        }
        for s in failure.get("shards") or []
    ]
    notes = [
        "The training copy's state is dropped at the start of the failure shard and restored from "
        "the last snapshot; the updates since are lost. Δ: the failure run's AUC − the same "
        "interval's run without failure, mean over replicas. Caught up: the first shard after the "
        "failure whose AUC is within the tolerance of the run without failure."
    ]
    tolerance = _f(failure.get("catch_up_tolerance")) or 0.0
    view = {"facts": facts, "shards": shards, "tolerance": tolerance}
    data = {"facts": facts, "shards": shards, "failure": failure}
    return SectionOutput(data=data, view=view, notes=notes)


# ----------------------------------------------------------------------------- configuration
@register_section(
    ONLINE,
    id="configuration",
    title="Configuration and environment",
    order=90,
    template="configuration.j2",
)
def _configuration(ctx: ReportContext) -> SectionOutput:
    manifest = ctx.run.manifest or {}
    data_info = manifest.get("data") or {}
    run_info = {
        "kind": ONLINE,
        "run directory": str(ctx.run.path),
        "reprokit version": manifest.get("reprokit_version"),
        "created": manifest.get("created"),
        "timestamp column": data_info.get("timestamp"),
        "label column(s)": ", ".join(data_info.get("labels") or []) or None,
        "data fingerprint": data_info.get("fingerprint"),
        **{f"online.{k}": v for k, v in (manifest.get("online") or {}).items()},
    }
    data = {
        "run": {k: v for k, v in run_info.items() if v is not None or k.startswith("online.")},
        "environment": _flatten(manifest.get("environment") or {}),
        "config": _flatten(manifest.get("config") or {}),
    }
    view = dict(data, arm_labels=[], config_source="", differs_across_arms={}, replica_seeds={})
    return SectionOutput(data=data, view=view)
