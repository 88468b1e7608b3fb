"""Matplotlib figures rendered to inline SVG strings that reference nothing outside themselves.

Text stays text (`svg.fonttype: none`, escaped by matplotlib's SVG writer), the XML prolog,
DOCTYPE and metadata (which carry http URLs) are stripped, and ids are prefixed per figure so
several figures can live in one HTML page. No pyplot: figures are plain `Figure` objects, so nothing
global changes.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Sequence

import matplotlib as mpl
import numpy as np
from markupsafe import Markup
from matplotlib.axis import Axis
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

from reprokit.plotstyle import PALETTE
from reprokit.report.context import Arm, ArmStats

_RC = {
    "svg.fonttype": "none",
    "font.family": "sans-serif",
    "font.size": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
}

_STRIP = [
    re.compile(r"<\?xml[^>]*\?>\s*", re.S),
    re.compile(r"<!DOCTYPE[^>]*>\s*", re.S),
    re.compile(r"<metadata>.*?</metadata>\s*", re.S),
    re.compile(r"<!--.*?-->\s*", re.S),
]


def text(value: str) -> str:
    """A user string as literal matplotlib text (no mathtext from `$`)."""
    return str(value).replace("$", r"\$")


def color(i: int) -> str:
    return PALETTE[i % len(PALETTE)]


def to_svg(fig: Figure, name: str) -> Markup:
    """Serialise a figure to an inline <svg> element (safe: matplotlib escapes the text)."""
    buf = io.StringIO()
    with mpl.rc_context({**_RC, "svg.hashsalt": f"reprokit-{name}"}):
        fig.savefig(buf, format="svg", metadata={"Date": None})
    svg = buf.getvalue()
    for pattern in _STRIP:
        svg = pattern.sub("", svg)
    # Ids are hashes of content and salt; prefix them with the figure name to be unique on the page.
    svg = re.sub(r'(id=")', rf"\1{name}-", svg)
    svg = re.sub(r"(url\(#)", rf"\1{name}-", svg)
    svg = re.sub(r'(href="#)', rf"\1{name}-", svg)
    svg = svg.replace("<svg ", f'<svg role="img" aria-label="{name}" class="figure" ', 1)
    if re.search(r"<\s*script|\son\w+\s*=|javascript:", svg, re.I):  # defence in depth
        raise RuntimeError("refusing to embed an SVG that contains script")
    return Markup(svg)  # noqa: S704 - generated above from escaped text


def _figure(width: float = 6.4, height: float = 3.6) -> Figure:
    with mpl.rc_context(_RC):
        return Figure(figsize=(width, height), layout="constrained")


def _grid(n: int, width_each: float = 3.2, height_each: float = 2.6):
    cols = min(3, n)
    rows = math.ceil(n / cols)
    with mpl.rc_context(_RC):
        fig = Figure(figsize=(width_each * cols, height_each * rows), layout="constrained")
        axes = fig.subplots(rows, cols, squeeze=False)
    flat = list(axes.ravel())
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def _plain_log_ticks(axis: Axis, values: Sequence[float]) -> None:
    """Label a log axis with a few plain numbers (0.02, 0.05, 0.1) instead of matplotlib's
    mathtext labels on every minor tick (2×10⁻², 3×10⁻², ...), which run into each other when the
    data spans about one decade. Fewer in-decade ticks the more decades the data spans."""
    finite = [v for v in values if v > 0 and math.isfinite(v)]
    decades = math.log10(max(finite) / min(finite)) if finite else 1.0
    if decades <= 0.5:  # within half a decade log is nearly linear: evenly spaced round numbers
        axis.set_major_locator(MaxNLocator(nbins=5))
    else:
        subs = (
            (1.0, 2.0, 3.0, 5.0)
            if decades <= 1.2
            else (1.0, 2.0, 5.0)
            if decades <= 2.5
            else (1.0,)
        )
        axis.set_major_locator(LogLocator(base=10.0, subs=subs, numticks=12))
    axis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:.3g}"))
    axis.set_minor_locator(LogLocator(base=10.0, subs=tuple(range(2, 10)), numticks=12))
    axis.set_minor_formatter(NullFormatter())


def pd_vs_auc(arms: Sequence[Arm], pareto: Sequence[str]) -> Markup:
    with mpl.rc_context(_RC):
        fig = _figure(6.4, 4.0)
        ax = fig.add_subplot()
        points = []
        for i, arm in enumerate(arms):
            x, y = arm.metric("auc"), arm.pd("rel")
            if math.isnan(x) or math.isnan(y):
                continue
            xerr = arm.metric("auc", "std")
            ci = arm.ci("rel")
            yerr = None
            if ci and not any(math.isnan(v) for v in ci):
                yerr = [[max(0.0, y - ci[0])], [max(0.0, ci[1] - y)]]
            ax.errorbar(
                [x],
                [y],
                xerr=None if math.isnan(xerr) else [xerr],
                yerr=yerr,
                fmt="*" if arm.is_baseline else "o",
                markersize=12 if arm.is_baseline else 7,
                color=color(i),
                capsize=3,
                label=text(arm.label + (" (baseline)" if arm.is_baseline else "")),
            )
            points.append((x, y, arm.name))
        front = sorted((p for p in points if p[2] in pareto), key=lambda p: p[0])
        if len(front) > 1:
            ax.plot(
                [p[0] for p in front],
                [p[1] for p in front],
                "--",
                color="#555",
                linewidth=1,
                label="Pareto front",
            )
        for x, y, _name in front:
            ax.scatter([x], [y], s=180, facecolors="none", edgecolors="#555", linewidths=1)
        ax.set_xlabel("AUC (mean over replicas; bar = ±1 std)")
        ax.set_ylabel("PD rel (bar = CI)")
        if not points:
            ax.text(0.5, 0.5, "no AUC/PD values", ha="center", transform=ax.transAxes)
        else:
            ax.legend(fontsize=8, loc="best")
    return to_svg(fig, "pd-vs-auc")


def pd_histogram(arms: Sequence[Arm], stats: Sequence[ArmStats], edges: np.ndarray) -> Markup:
    with mpl.rc_context(_RC):
        fig = _figure(6.4, 3.4)
        ax = fig.add_subplot()
        for i, (arm, st) in enumerate(zip(arms, stats, strict=True)):
            counts, _ = np.histogram(np.clip(st.per_example_abs, edges[0], edges[-1]), edges)
            ax.stairs(counts, edges, color=color(i), label=text(arm.label), linewidth=1.4)
        ax.set_yscale("log", nonpositive="clip")
        ax.set_ylim(bottom=0.7)
        ax.set_xlabel("per-example PD: mean over replicas of |p_m − p̄|")
        ax.set_ylabel("examples")
        ax.legend(fontsize=8)
    return to_svg(fig, "pd-distribution")


def pd_by_bucket(arms: Sequence[Arm], buckets: Sequence[list[dict]]) -> Markup:
    with mpl.rc_context(_RC):
        fig = _figure(6.4, 3.4)
        ax = fig.add_subplot()
        # Log-spaced buckets (lo > 0 everywhere) read better on a log axis.
        log_x = all((r.get("lo") or 0) > 0 for rows in buckets for r in rows) and any(buckets)
        centres: list[float] = []
        for i, (arm, rows) in enumerate(zip(arms, buckets, strict=True)):
            rows = [r for r in rows if r.get("abs_mean") is not None]
            if log_x:
                xs = [math.sqrt(r["lo"] * r["hi"]) for r in rows]
            else:
                xs = [(r["lo"] + r["hi"]) / 2 for r in rows]
            ys = [r["abs_mean"] for r in rows]
            centres += xs
            ax.plot(xs, ys, "o-", color=color(i), label=text(arm.label), markersize=4)
        if log_x:
            ax.set_xscale("log")
            _plain_log_ticks(ax.xaxis, centres)
        ax.set_xlabel("ensemble-mean prediction p̄ (bucket centre)")
        ax.set_ylabel("mean |p_m − p̄| in bucket")
        ax.legend(fontsize=8)
    return to_svg(fig, "pd-by-bucket")


def calibration(arms: Sequence[Arm], stats: Sequence[ArmStats]) -> Markup:
    fig, axes = _grid(len(arms))
    with mpl.rc_context(_RC):
        for i, (ax, arm, st) in enumerate(zip(axes, arms, stats, strict=True)):
            hi = 0.0
            for rep in st.replicas:
                rel = rep.reliability or {}
                xs, ys = rel.get("mean_prediction", []), rel.get("observed_rate", [])
                ax.plot(xs, ys, "-", color=color(i), alpha=0.35, linewidth=0.8)
                hi = max([hi, *[v for v in xs + ys if v == v]])
            ens = st.ensemble_reliability or {}
            xs, ys = ens.get("mean_prediction", []), ens.get("observed_rate", [])
            ax.plot(xs, ys, "o-", color="black", markersize=3, linewidth=1.2, label="ensemble")
            hi = max([hi, *[v for v in xs + ys if v == v]]) * 1.05 or 1.0
            ax.plot([0, hi], [0, hi], ":", color="#888", linewidth=1, label="perfect")
            ax.set_title(text(arm.label), fontsize=9)
            ax.set_xlabel("mean prediction")
            ax.set_ylabel("observed rate")
            ax.legend(fontsize=7, loc="upper left")
    return to_svg(fig, "calibration")


def loss_curves(arms: Sequence[Arm], stats: Sequence[ArmStats]) -> Markup:
    fig, axes = _grid(len(arms))
    with mpl.rc_context(_RC):
        for i, (ax, arm, st) in enumerate(zip(axes, arms, stats, strict=True)):
            for rep in st.replicas:
                ax.plot(rep.loss_steps, rep.loss, linewidth=0.9, alpha=0.8, label=rep.name)
            ax.set_title(text(arm.label), fontsize=9, color=color(i))
            ax.xaxis.set_major_locator(
                MaxNLocator(nbins="auto", steps=[1, 2, 5, 10], integer=True)
            )  # whole steps
            ax.set_xlabel("step")
            ax.set_ylabel("training loss")
            if len(st.replicas) <= 8:
                ax.legend(fontsize=7, title="replica", title_fontsize=7)
    return to_svg(fig, "training-loss")
