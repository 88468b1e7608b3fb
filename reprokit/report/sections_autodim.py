"""Report sections of an `autodim` run (reprokit.runners.autodim): the search (α per field over
the search steps, per seed; the widths each seed chose and the majority; the agreement across
seeds) and the methods (widths, embedding parameters, AUC, log-loss, PD with its CI, and a plot
of table parameters against AUC and PD).

Registered on import (reprokit.report imports this module); every other section of a paired
study (configuration, PD table, paired tests against `full`, ...) applies to autodim runs
unchanged.
"""

from __future__ import annotations

import math
from typing import Any

from reprokit.jsonio import as_float
from reprokit.report import figures
from reprokit.report.context import ReportContext
from reprokit.report.sections import SectionOutput, register_section
from reprokit.runschema import AUTODIM


def _doc(ctx: ReportContext) -> dict[str, Any]:
    return ctx.run.compare or {}


def _trajectories(doc: dict[str, Any]) -> Any:
    """One panel per field: softmax(α) of every candidate over the search steps, one line style
    per search seed (bilevel searches)."""
    import matplotlib as mpl

    searches = (doc.get("search") or {}).get("bilevel") or []
    fields = list(doc.get("dims") or {})
    candidates = list(doc.get("candidates") or [])
    if not searches or not fields:
        return None
    styles = ["-", "--", ":", "-."]
    with mpl.rc_context(figures._RC):
        fig, axes = figures._grid(len(fields), 3.0, 2.2)
        for f, (field, ax) in enumerate(zip(fields, axes, strict=True)):
            for s, search in enumerate(searches):
                traj = search.get("trajectory") or {}
                steps = traj.get("step") or []
                probs = traj.get("probabilities") or []
                for n, width in enumerate(candidates):
                    ys = [row[f][n] for row in probs]
                    ax.plot(
                        steps,
                        ys,
                        styles[s % len(styles)],
                        color=figures.color(n),
                        linewidth=1.0,
                        label=f"d={width}" if s == 0 else None,
                    )
            warmup = as_float((searches[0] or {}).get("warmup_steps"))
            if math.isfinite(warmup) and warmup > 0:
                ax.axvline(warmup, color="#999", linewidth=0.8)
            ax.set_title(figures.text(f"{field} → {doc['dims'][field]}"), fontsize=9)
            ax.set_ylim(0, 1)
            if f == 0:
                ax.legend(fontsize=7, frameon=False)
        for ax in axes[-min(3, len(axes)) :]:
            ax.set_xlabel("search step")
    return figures.to_svg(fig, "autodim-alpha")


@register_section(AUTODIM, id="autodim-search", title="Width search (AutoDim)", order=5)
def _search(ctx: ReportContext) -> SectionOutput | None:
    doc = _doc(ctx)
    per_seed = doc.get("dims_per_seed") or []
    if not per_seed:
        return None
    fields = list(doc.get("dims") or {})
    rows = [
        {"field": f, "seeds": [d.get(f) for d in per_seed], "final": doc["dims"][f]} for f in fields
    ]
    agree = doc.get("search_agreement") or {}
    agree_s = doc.get("search_agreement_s") or {}
    searches = (doc.get("search") or {}).get("bilevel") or []
    first = searches[0] if searches else {}
    notes = [
        f"{len(per_seed)} search seeds; every seed agrees on "
        f"{as_float(agree.get('all_agree')) * 100:.0f} % of the fields; mean pairwise Pearson "
        f"correlation of the chosen widths {_num(agree.get('pearson'))} (the paper reports about "
        "0.85 across seeds). AutoDim-s (α on the training batch): all agree "
        f"{as_float(agree_s.get('all_agree')) * 100:.0f} %, Pearson {_num(agree_s.get('pearson'))}.",
        f"Each search: {first.get('steps')} weight steps, {first.get('warmup_steps')} of them "
        f"with uniform α (grey line), then one α step on a validation batch every "
        f"{first.get('alpha_every')} weight steps; τ ends at {_num(first.get('final_temperature'))}. "
        "Lines: softmax(α) per candidate width; line style: search seed. A field's width is the "
        "majority of the seeds' argmax (ties to the smaller width).",
    ]
    return SectionOutput(
        data={"rows": rows, "seeds": len(per_seed)},
        figure=_trajectories(doc),
        notes=notes,
    )


def _num(value: Any) -> str:
    v = as_float(value)
    return "n/a" if not math.isfinite(v) else f"{v:.3g}"


def _methods_plot(methods: list[dict[str, Any]]) -> Any:
    """Table parameters against AUC (left) and PD rel with its CI (right), one point per method."""
    import matplotlib as mpl

    with mpl.rc_context(figures._RC):
        fig = figures._figure(7.0, 2.8)
        left, right = fig.subplots(1, 2)
        for i, m in enumerate(methods):
            x = as_float(m.get("table_params"))
            auc = as_float((m.get("auc") or {}).get("mean"))
            auc_sd = as_float((m.get("auc") or {}).get("std"))
            pd = as_float((m.get("pd") or {}).get("rel"))
            ci = (m.get("pd_ci") or {}).get("rel") or [None, None]
            lo, hi = as_float(ci[0]), as_float(ci[1])
            c = figures.color(i)
            left.errorbar(
                [x],
                [auc],
                yerr=[[auc_sd if math.isfinite(auc_sd) else 0.0]],
                fmt="o",
                color=c,
                capsize=3,
                label=figures.text(m["method"]),
            )
            ok = math.isfinite(lo) and math.isfinite(hi) and math.isfinite(pd)
            err = [[max(pd - lo, 0.0)], [max(hi - pd, 0.0)]] if ok else None
            right.errorbar([x], [pd], yerr=err, fmt="o", color=c, capsize=3)
        left.set_xlabel("embedding table parameters")
        left.set_ylabel("AUC (mean ± std)")
        right.set_xlabel("embedding table parameters")
        right.set_ylabel("PD rel (95 % CI)")
        left.legend(fontsize=7, frameon=False)
    return figures.to_svg(fig, "autodim-methods")


@register_section(AUTODIM, id="autodim-methods", title="Methods: widths, memory, AUC, PD", order=6)
def _methods(ctx: ReportContext) -> SectionOutput | None:
    doc = _doc(ctx)
    methods = list(doc.get("methods") or [])
    if not methods:
        return None
    rows = [
        {
            "method": m["method"],
            "dims": " ".join(f"{k}={v}" for k, v in (m.get("dims") or {}).items()),
            "table_params": m.get("table_params"),
            "params": m.get("params"),
            "auc": as_float((m.get("auc") or {}).get("mean")),
            "logloss": as_float((m.get("logloss") or {}).get("mean")),
            "pd_rel": as_float((m.get("pd") or {}).get("rel")),
            "ci": (m.get("pd_ci") or {}).get("rel"),
        }
        for m in methods
    ]
    notes = [
        "Every method retrains the same paired ensemble with its widths, each field projected to "
        "the largest candidate; table parameters are Σ rows × width (the paper's Params), "
        "embedding parameters add the projections. Paired tests against full are in the paired "
        "tests section.",
    ]
    mde = next((m for m in methods if m["method"] == "mde"), None)
    if mde is not None and "mde_alpha" in mde:
        notes.append(f"MDE: α = {mde['mde_alpha']:g}, {mde.get('why', '')}.")
    objective = doc.get("objective")
    if objective:
        gain = objective.get("vs_autodim") or {}
        notes.append(
            f"--objective auc-pd: {len(objective.get('candidates') or [])} width sets from the "
            f"search, {objective.get('quick_replicas')} quick replicas each; rule: "
            f"{objective.get('rule')}. Picked "
            + " ".join(f"{k}={v}" for k, v in (objective.get("picked") or {}).items())
            + f" (ΔAUC {_num(gain.get('auc'))}, ΔPD rel {_num(gain.get('pd_rel'))}, Δtable "
            f"params {gain.get('table_params')} against autodim; cost "
            f"{(objective.get('cost') or {}).get('trainings')} quick trainings)."
        )
    return SectionOutput(data={"rows": rows}, figure=_methods_plot(methods), notes=notes)
