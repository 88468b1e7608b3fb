"""The accuracy–reproducibility trade-off plot of a paired study (compare-activations, compare).

x: mean AUC across replicas (error bar ± std), y: PD ``rel`` (error bar: its bootstrap CI over
replicas). Better is down and to the right. Pareto-optimal arms are ringed and joined by a
dashed line; the arms of one family that differ in one parameter (a sweep, or several SmeLU β) are
joined by a solid curve in parameter order. No pyplot: a plain `Figure`, so no global state changes.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

import matplotlib as mpl
from matplotlib.figure import Figure

from reprokit.nn.registry import parse_spec
from reprokit.plotstyle import PALETTE
from reprokit.store import atomic_write_bytes

_RC = {"svg.fonttype": "none", "font.size": 9, "axes.grid": True, "grid.alpha": 0.3}


def _num(value: Any) -> float:
    return math.nan if value is None else float(value)


def _point(arm: dict[str, Any]) -> tuple[float, float, float, float, float]:
    """(auc, auc_std, pd_rel, ci_lo, ci_hi) of one arm; NaN where absent."""
    auc = arm.get("auc") or {}
    ci = (arm.get("pd_ci") or {}).get("rel") or [None, None]
    return (
        _num(auc.get("mean")),
        _num(auc.get("std")),
        _num((arm.get("pd") or {}).get("rel")),
        _num(ci[0]),
        _num(ci[1]),
    )


def _label(text: str) -> str:
    return str(text).replace("$", r"\$")  # literal text, never mathtext


def _arm_label(arm: dict[str, Any]) -> str:
    return str(arm.get("label") or arm["activation"])


def _color_group(arm: dict[str, Any]) -> str:
    """Arms of one activation family share a colour; arms of other studies each get their own."""
    return parse_spec(arm["activation"]).name if arm.get("activation") else _arm_label(arm)


def _family_members(doc: dict[str, Any]) -> dict[str, str]:
    """spec → short label (``beta=0.371``) for the arms of a family with more than 3 members."""
    short = {}
    for family in (doc.get("families") or {}).values():
        if len(family["specs"]) > 3:
            for spec in family["specs"]:
                short[spec] = f"{family['param']}={parse_spec(spec).params[family['param']]:.3g}"
    return short


def _tradeoff_panel(ax: Any, doc: dict[str, Any], points: dict, colors: dict) -> None:
    pareto = set(doc.get("pareto") or [])
    short = _family_members(doc)
    for spec, (auc, auc_std, pd_rel, lo, hi) in points.items():
        if math.isnan(auc) or math.isnan(pd_rel):
            continue
        c = colors[spec]
        yerr = None
        if not (math.isnan(lo) or math.isnan(hi)):
            yerr = [[max(pd_rel - lo, 0.0)], [max(hi - pd_rel, 0.0)]]
        ax.errorbar(
            [auc],
            [pd_rel],
            xerr=None if math.isnan(auc_std) else [auc_std],
            yerr=yerr,
            fmt="s" if spec == doc.get("baseline") else "o",
            color=c,
            ecolor=c,
            elinewidth=0.7,
            capsize=2.5,
            markersize=6,
            alpha=0.9,
            zorder=3,
        )
        if spec in pareto:
            ax.plot(
                [auc],
                [pd_rel],
                "o",
                markersize=13,
                markerfacecolor="none",
                markeredgecolor="black",
                markeredgewidth=0.9,
                zorder=4,
            )
        suffix = " (baseline)" if spec == doc.get("baseline") else ""
        ax.annotate(
            _label(short.get(spec, spec) + suffix),
            (auc, pd_rel),
            textcoords="offset points",
            xytext=(6, 5),
            fontsize=8,
            color=c,
        )
    for name, family in (doc.get("families") or {}).items():
        xy = [(points[s][0], points[s][2]) for s in family["specs"] if s in points]
        xy = [(x, y) for x, y in xy if not (math.isnan(x) or math.isnan(y))]
        if len(xy) >= 2:
            ax.plot(
                [x for x, _ in xy],
                [y for _, y in xy],
                "-",
                color=colors.get(name, "grey"),
                linewidth=1.2,
                alpha=0.8,
                zorder=2,
                label=_label(f"{name}, by {family['param']}"),
            )
    front = sorted(
        (points[s][0], points[s][2])
        for s in pareto
        if s in points and not (math.isnan(points[s][0]) or math.isnan(points[s][2]))
    )
    if len(front) >= 2:
        ax.plot(
            [x for x, _ in front],
            [y for _, y in front],
            "--",
            color="black",
            linewidth=0.8,
            alpha=0.6,
            zorder=1,
            label="Pareto front (ringed)",
        )
    ax.set_xlabel("AUC (mean ± std over replicas; higher is better)")
    ax.set_ylabel("PD rel (95% CI over replicas; lower is better)")
    vary = ",".join(doc.get("vary") or []) or "none"
    ax.set_title(
        _label(f"accuracy vs reproducibility ({doc.get('replicas', '?')} replicas, vary {vary})")
    )
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="best", fontsize=8)


def _family_panel(
    ax: Any, doc: dict[str, Any], name: str, family: dict, points: dict, color: str
) -> None:
    """PD rel (left axis) and AUC (right axis) against the family's parameter."""
    param = family["param"]
    specs = [s for s in family["specs"] if s in points]
    xs = [float(parse_spec(s).params[param]) for s in specs]
    pd_rel = [points[s][2] for s in specs]
    lo = [max(points[s][2] - points[s][3], 0.0) for s in specs]
    hi = [max(points[s][4] - points[s][2], 0.0) for s in specs]
    ax.errorbar(
        xs, pd_rel, yerr=[lo, hi], fmt="o-", color=color, capsize=2.5, markersize=5,
        label="PD rel",
    )  # fmt: skip
    ax.set_xlabel(_label(f"{name} {param}"))
    ax.set_ylabel("PD rel", color=color)
    twin = ax.twinx()
    aucs = [points[s][0] for s in specs]
    stds = [0.0 if math.isnan(points[s][1]) else points[s][1] for s in specs]
    twin.errorbar(
        xs, aucs, yerr=stds, fmt="s--", color="#555555", capsize=2.5, markersize=4, label="AUC"
    )
    twin.set_ylabel("AUC", color="#555555")
    twin.grid(False)
    base = doc.get("baseline")
    if base in points and base not in specs:
        ax.axhline(points[base][2], color=color, linestyle=":", linewidth=1.0)
        twin.axhline(points[base][0], color="#555555", linestyle=":", linewidth=1.0)
        ax.annotate(
            _label(f"{base}: dotted"), (0.01, 0.98), xycoords="axes fraction", va="top",
            fontsize=7, color="#555555",
        )  # fmt: skip
    ax.set_title(_label(f"{name}: PD rel and AUC by {param}"))


def plot_tradeoff(doc: dict[str, Any], out_dir: str | Path, stem: str = "pareto") -> list[str]:
    """Write ``<stem>.png`` and ``<stem>.svg`` under `out_dir`; return their names (relative).

    One panel of PD rel against AUC for every arm; plus, per family with 3 or more parameter values
    (a sweep; at most two families), a panel of PD rel and AUC against that parameter.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    points = {_arm_label(arm): _point(arm) for arm in doc["arms"]}
    groups = {_arm_label(arm): _color_group(arm) for arm in doc["arms"]}
    names = sorted(set(groups.values()))
    by_group = {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(names)}
    # one colour per activation family (compare-activations) or per arm (other studies), looked
    # up by arm label and by family name (the family panels)
    colors = {label: by_group[group] for label, group in groups.items()} | by_group
    fams = [(n, f) for n, f in (doc.get("families") or {}).items() if len(f["specs"]) >= 3][:2]
    with mpl.rc_context(_RC):
        fig = Figure(figsize=(7.0 + 5.0 * len(fams), 4.6), layout="constrained")
        axes = fig.subplots(1, 1 + len(fams), squeeze=False, width_ratios=[7.0] + [5.0] * len(fams))
        _tradeoff_panel(axes[0][0], doc, points, colors)
        for ax, (name, family) in zip(axes[0][1:], fams, strict=True):
            _family_panel(ax, doc, name, family, points, colors.get(name, "grey"))
        files = []
        for ext in ("png", "svg"):
            name = f"{stem}.{ext}"
            buf = io.BytesIO()
            metadata = {"Date": None} if ext == "svg" else None
            fig.savefig(buf, format=ext, dpi=150, metadata=metadata)
            atomic_write_bytes(out_dir / name, buf.getvalue())  # a killed run leaves no half file
            files.append(name)
    return files
