"""Report sections of an `attribute` run (reprokit.runners.attribute): the verdict sentence and the
attribution chart, PD rel with its CI per source alone and left out, the control at 0 and all
sources together as a reference line.

Registered on import (reprokit.report imports this module); every other section of a paired
study (configuration, PD table, paired tests, ...) applies to attribute runs unchanged.
"""

from __future__ import annotations

import math
from typing import Any

from reprokit.jsonio import as_float
from reprokit.report import figures
from reprokit.report.context import ReportContext
from reprokit.report.sections import SectionOutput, register_section
from reprokit.runschema import ATTRIBUTE

MODE_NAMES = {"control": "control", "alone": "alone", "all": "all", "leave-one-out": "left out"}


def _sources(ctx: ReportContext) -> list[dict[str, Any]]:
    return list((ctx.run.compare or {}).get("sources") or [])


@register_section(ATTRIBUTE, id="verdict", title="Verdict", order=0, template="verdict.j2")
def _verdict(ctx: ReportContext) -> SectionOutput:
    doc = ctx.run.compare or {}
    control = next((s for s in _sources(ctx) if s["mode"] == "control"), None)
    notes = []
    if control is not None:
        zero = doc.get("control_pd_is_zero")
        notes.append(
            "Control arm (vary none): every PD key is exactly 0, as it must be."
            if zero
            else "Control arm (vary none) is NOT 0: an unnamed source of nondeterminism leaks in."
        )
    notes.append(str(doc.get("note") or ""))
    headline = str(doc.get("verdict") or "no attribution")
    headline = headline[0].upper() + headline[1:]
    return SectionOutput(data={"headline": headline, "notes": notes}, view=None)


def _bars(sources: list[dict[str, Any]]) -> Any:
    """Horizontal bars of PD rel with CI, alone and left out side by side, `all` as a line."""
    import matplotlib as mpl

    rows = [s for s in sources if s["mode"] in ("control", "alone", "leave-one-out")]
    everything = next((s for s in sources if s["mode"] == "all"), None)
    with mpl.rc_context(figures._RC):
        fig = figures._figure(6.8, 0.9 + 0.32 * max(len(rows), 1))
        ax = fig.add_subplot()
        labels, values, errs, colors = [], [], [[], []], []
        for s in rows:
            value = as_float((s.get("pd") or {}).get("rel"))
            ci = (s.get("pd_ci") or {}).get("rel") or [None, None]
            lo, hi = as_float(ci[0]), as_float(ci[1])
            labels.append(figures.text(f"{s['source']} ({MODE_NAMES[s['mode']]})"))
            values.append(0.0 if math.isnan(value) else value)
            ok = math.isfinite(lo) and math.isfinite(hi) and math.isfinite(value)
            errs[0].append(max(value - lo, 0.0) if ok else 0.0)
            errs[1].append(max(hi - value, 0.0) if ok else 0.0)
            colors.append(figures.color({"control": 7, "alone": 0, "leave-one-out": 1}[s["mode"]]))
        ys = list(range(len(rows)))[::-1]
        ax.barh(ys, values, xerr=errs, color=colors, capsize=3, height=0.6)
        ax.set_yticks(ys, labels)
        total = as_float(((everything or {}).get("pd") or {}).get("rel"))
        if math.isfinite(total):
            ax.axvline(total, color="#333", linestyle="--", linewidth=1)
            ax.text(total, len(rows) - 0.4, f" all sources: {total:.3g}", fontsize=8, va="bottom")
        ax.set_xlabel("PD rel (bar: 95 % CI over replicas)")
    return figures.to_svg(fig, "attribution")


@register_section(ATTRIBUTE, id="attribution", title="Which source causes the PD", order=5)
def _attribution(ctx: ReportContext) -> SectionOutput | None:
    sources = _sources(ctx)
    if not sources:
        return None
    rows = [
        {
            "source": s["source"],
            "mode": MODE_NAMES[s["mode"]],
            "pd_rel": as_float((s.get("pd") or {}).get("rel")),
            "ci": (s.get("pd_ci") or {}).get("rel"),
            "flip": as_float((s.get("pd") or {}).get("flip")),
            "auc": as_float((s.get("auc") or {}).get("mean")),
        }
        for s in sources
    ]
    return SectionOutput(
        data={"rows": rows},
        figure=_bars(sources),
        notes=[
            "Each source alone varies only that source; 'left out' varies every source but it. "
            "Contributions are not additive (two sources can move a model to the same other "
            "basin), so read a source alone next to all-but-that-source instead of summing.",
        ],
    )
