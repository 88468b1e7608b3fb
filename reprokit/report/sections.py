"""The report's sections and the registry that says which kind of run directory shows which.

A section is a function `ReportContext -> SectionOutput | None` (None: nothing to show for this
run) registered for one or more run kinds with an order and a Jinja template. Its `data` goes into
the JSON twin; its `view` (defaulting to `data`) and `figure` go to the template. A new kind of run
(for example `stability`) registers a context builder in `reprokit.report.context` and its own
sections here or in its own module:

    @register_section("stability", id="verdict", title="Verdict", order=0, template="verdict.j2")
    def _stability_verdict(ctx): ...
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from markupsafe import Markup

from reprokit.errors import ReprokitError
from reprokit.gate import undefined_pd_reason
from reprokit.metrics.pd import PD_KEYS
from reprokit.report import figures
from reprokit.report.context import PD, Arm, ReportContext
from reprokit.rundir import TRAIN_ENSEMBLE, as_float
from reprokit.runschema import ARM_STUDIES

#: The PD keys of the metrics contract, in display order.
BUCKETS = 10


@dataclass
class SectionOutput:
    data: dict[str, Any]
    view: dict[str, Any] | None = None
    figure: Markup | None = None
    notes: list[str] = field(default_factory=list)


SectionBuilder = Callable[[ReportContext], SectionOutput | None]


@dataclass(frozen=True)
class Section:
    id: str
    title: str
    order: int
    template: str
    build: SectionBuilder


_REGISTRY: dict[str, dict[str, Section]] = {}


def register_section(
    *kinds: str, id: str, title: str, order: int, template: str | None = None
) -> Callable[[SectionBuilder], SectionBuilder]:
    """Register a section builder for run kinds (registering an id again replaces it)."""

    def decorate(func: SectionBuilder) -> SectionBuilder:
        section = Section(
            id=id, title=title, order=order, template=template or f"{id}.j2", build=func
        )
        for kind in kinds:
            _REGISTRY.setdefault(kind, {})[id] = section
        return func

    return decorate


def sections_for(kind: str) -> list[Section]:
    if kind not in _REGISTRY:
        raise ReprokitError(
            f"reprokit report has no sections for {kind!r} runs; "
            f"it knows {', '.join(sorted(_REGISTRY))}"
        )
    return sorted(_REGISTRY[kind].values(), key=lambda s: (s.order, s.id))


def supported_kinds() -> list[str]:
    return sorted(_REGISTRY)


# ------------------------------------------------------------------------------------------ helpers
def fmt(value: Any, digits: int = 4) -> str:
    """A number for prose: 4 significant digits, NaN/None as 'n/a'."""
    v = as_float(value)
    if math.isnan(v):
        return "n/a"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    if v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e5):
        return f"{v:.{digits - 1}e}"
    return f"{v:.{digits}g}"


def _f(value: Any) -> float | None:
    v = as_float(value)
    return None if math.isnan(v) else v


def _both(kinds: Iterable[str] = (TRAIN_ENSEMBLE, *ARM_STUDIES)) -> tuple[str, ...]:
    return tuple(kinds)


def _flatten(doc: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    if isinstance(doc, dict):
        for key, value in doc.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    if isinstance(doc, list) and any(isinstance(v, dict | list) for v in doc):
        for i, value in enumerate(doc):
            out.update(_flatten(value, f"{prefix}{i}."))
        return out
    if isinstance(doc, list):
        doc = ", ".join(map(str, doc)) if doc else "(none)"
    out[prefix.rstrip(".")] = doc
    return out


def _quantiles(values: np.ndarray) -> dict[str, float]:
    if len(values) == 0:
        return {}
    q = np.quantile(values, [0.5, 0.9, 0.99])
    return {
        "mean": float(values.mean()),
        "median": float(q[0]),
        "p90": float(q[1]),
        "p99": float(q[2]),
        "max": float(values.max()),
    }


def _varied(arm: Arm) -> list[str] | None:
    manifest = arm.run.manifest or {}
    sources = manifest.get("sources") or {}
    varied = sources.get("varied")
    if varied is None:
        varied = (manifest.get("config") or {}).get("vary")
    return list(varied) if isinstance(varied, list) else None


def _undefined_pd(arm: Arm) -> str | None:
    """Why the arm's PD is undefined because replicas diverged (None when they did not)."""
    if isinstance(arm.summary.get("diverged"), dict) or arm.run.documents_only:
        return undefined_pd_reason(arm.summary)
    # A summary without its `diverged` block: count the replicas' metrics instead.
    flags = [bool(r.metrics.get("diverged")) for r in arm.run.replicas()]
    counts = {"replicas": flags.count(False), "diverged": {"count": flags.count(True)}}
    return undefined_pd_reason(counts)


def _no_pd_reason(arm: Arm) -> str:
    return _undefined_pd(arm) or "fewer than 2 replicas predicted finite values"


# ------------------------------------------------------------------------------------------ verdict
def _headline_ensemble(arm: Arm) -> str:
    rel, ci = arm.pd("rel"), arm.ci("rel")
    why = _undefined_pd(arm) if math.isnan(rel) else None
    if why is not None:
        return f"PD rel = n/a: {why}, so prediction difference is undefined"
    text = f"PD rel = {fmt(rel)}"
    if ci is not None and not any(math.isnan(v) for v in ci):
        text += f" [{fmt(ci[0])}, {fmt(ci[1])}]"
    text += f" over {arm.summary.get('replicas', '?')} replicas"
    auc = arm.metric("auc")
    if not math.isnan(auc):
        text += f"; AUC {auc:.3f}"
        std = arm.metric("auc", "std")
        if not math.isnan(std):
            text += f" ± {std:.3f}"
    return text


def _ensemble_notes(arm: Arm) -> tuple[list[str], str]:
    notes: list[str] = []
    status = "ok"
    varied = _varied(arm)
    if varied is not None and not varied:
        if arm.pd("abs") == 0:
            notes.append(
                "Control arm (--vary none): the replicas are bitwise identical, as they must be."
            )
        else:
            status = "warning"
            notes.append(
                f"Control arm (--vary none) but PD abs = {fmt(arm.pd('abs'))}: a nondeterminism "
                "source that was not named leaks into training."
            )
    elif varied:
        notes.append(f"Varied sources: {', '.join(varied)}.")
    diverged = [r.name for r in arm.run.replicas() if r.metrics.get("diverged")]
    if diverged:
        status = "warning"
        notes.append(f"Diverged replicas: {', '.join(diverged)}.")
    return notes, status


@register_section(TRAIN_ENSEMBLE, id="verdict", title="Verdict", order=0)
def _verdict_ensemble(ctx: ReportContext) -> SectionOutput:
    arm = ctx.arms[0]
    notes, status = _ensemble_notes(arm)
    return SectionOutput(
        data={"headline": _headline_ensemble(arm), "notes": notes, "status": status}
    )


@register_section(*ARM_STUDIES, id="verdict", title="Verdict", order=0)
def _verdict_compare(ctx: ReportContext) -> SectionOutput:
    base = ctx.baseline
    front = [a for a in ctx.arms if a.name in ctx.pareto and a is not base]
    front = [a for a in front if not math.isnan(a.pd("rel"))]
    best = min(front, key=lambda a: a.pd("rel"), default=None)
    notes: list[str] = []
    status = "ok"
    data: dict[str, Any] = {"baseline": base.label if base else None, "best": None}
    if base is None:
        headline = "No baseline arm in this comparison."
        if best is not None:
            headline += f" Lowest PD rel on the Pareto front: {best.label} ({fmt(best.pd('rel'))})."
            data["best"] = best.label
    elif best is None or not best.pd("rel") < base.pd("rel"):
        headline = (
            f"No arm on the Pareto front lowers PD rel below the baseline {base.label} "
            f"({fmt(base.pd('rel'))}, AUC {fmt(base.metric('auc'), 3)})."
        )
        status = "warning"
    else:
        change = (best.pd("rel") - base.pd("rel")) / base.pd("rel") * 100
        d_auc = best.metric("auc") - base.metric("auc")
        headline = (
            f"Best on the Pareto front: {best.label} — PD rel {fmt(best.pd('rel'))} vs "
            f"{fmt(base.pd('rel'))} for {base.label} ({change:+.0f} %)"
        )
        if not math.isnan(d_auc):
            headline += f", AUC {best.metric('auc'):.4f} vs {base.metric('auc'):.4f} ({d_auc:+.4f})"
        if best.test and best.test.get("p_holm") is not None:
            headline += f"; paired test p (Holm) = {fmt(best.test['p_holm'], 2)}"
        data.update(best=best.label, pd_change_percent=change, auc_change=_f(d_auc), test=best.test)
    for arm in ctx.arms:
        notes.append(f"{arm.label}: {_headline_ensemble(arm)}.")
    for note in (ctx.run.compare or {}).get("notes") or []:
        notes.append(f"Note: {note}.")
        status = "warning"
    data.update(headline=headline, notes=notes, status=status)
    return SectionOutput(data=data)


@register_section(PD, id="verdict", title="Verdict", order=0)
def _verdict_pd(ctx: ReportContext) -> SectionOutput:
    arm = ctx.arms[0]
    info = arm.summary.get("data") or {}
    notes = []
    if info.get("path"):
        notes.append(
            f"Measured by reprokit pd from {info['path']} "
            f"(data fingerprint {info.get('fingerprint') or 'not recorded'})."
        )
    notes.append(
        "This directory holds only the summary, no replica files, so the report has no "
        "per-example PD, calibration diagram, training curves or replica table."
    )
    return SectionOutput(data={"headline": _headline_ensemble(arm), "notes": notes, "status": "ok"})


@register_section(PD, id="configuration", title="Source", order=10)
def _configuration_pd(ctx: ReportContext) -> SectionOutput:
    summary = ctx.arms[0].summary
    info = summary.get("data") or {}
    labels = info.get("labels")
    run_info = {
        "kind": ctx.kind,
        "run directory": str(ctx.run.path),
        "reprokit version": summary.get("reprokit_version"),
        "predictions file": info.get("path"),
        "label column": (", ".join(map(str, labels)) or "none")
        if isinstance(labels, list)
        else None,
        "data fingerprint": info.get("fingerprint"),
        "replicas": summary.get("replicas"),
        "examples": summary.get("examples"),
        "flip threshold": summary.get("flip_threshold"),
    }
    data = {
        "run": {k: v for k, v in run_info.items() if v is not None},
        "environment": {},
        "config": {},
        "differs_across_arms": {},
        "replica_seeds": {},
    }
    return SectionOutput(data=data, view=dict(data, arm_labels=[ctx.arms[0].label]))


# ------------------------------------------------------------------------------------ configuration
def _shown_config(config: dict[str, Any]) -> dict[str, Any]:
    """A run's flattened config as the report lists it: the built-in synthetic dataset's
    ``data.synth_*`` settings are left out when the run read a file (``data.path`` set), where they
    played no part and would read as if they had."""
    data = config.get("data")
    if not (isinstance(data, dict) and data.get("path")):
        return _flatten(config)
    return {k: v for k, v in _flatten(config).items() if not k.startswith("data.synth_")}


@register_section(*_both(), id="configuration", title="Configuration and environment", order=10)
def _configuration(ctx: ReportContext) -> SectionOutput:
    main = ctx.manifest_arm()
    manifest = main.run.manifest or {}
    data_info = manifest.get("data") or {}
    run_info = {
        "kind": ctx.kind,
        "run directory": str(ctx.run.path),
        "reprokit version": manifest.get("reprokit_version"),
        "created": manifest.get("created"),
        "engine": manifest.get("engine"),
        "varied sources": ", ".join(_varied(main) or []) or "none (control arm)",
        "dataset": data_info.get("name"),
        "dataset path": data_info.get("path"),
        "label column(s)": ", ".join(data_info.get("labels") or []) or None,
        "train rows": data_info.get("train_rows"),
        "eval rows": data_info.get("eval_rows"),
        "data fingerprint": data_info.get("fingerprint"),
    }
    if ctx.is_compare:
        run_info["baseline arm"] = ctx.baseline.label if ctx.baseline else None
        run_info["arms"] = ", ".join(a.label for a in ctx.arms)
    run_info = {k: v for k, v in run_info.items() if v is not None}
    config = _shown_config(manifest.get("config") or {})
    differs: dict[str, dict[str, Any]] = {}
    if len(ctx.arms) > 1:
        flat = {a.name: _shown_config((a.run.manifest or {}).get("config") or {}) for a in ctx.arms}
        keys = sorted({k for f in flat.values() for k in f})
        for key in keys:
            values = {a.label: flat[a.name].get(key) for a in ctx.arms}
            if len({repr(v) for v in values.values()}) > 1:
                differs[key] = values
    seeds = manifest.get("replica_seeds") or {}
    data = {
        "run": run_info,
        "environment": _flatten(manifest.get("environment") or {}),
        "config": config,
        "differs_across_arms": differs,
        "replica_seeds": seeds,
    }
    view = dict(data, arm_labels=[a.label for a in ctx.arms], config_source=main.label)
    return SectionOutput(data=data, view=view)


# ----------------------------------------------------------------------------------------- PD table
def _add_churn_rows(ctx: ReportContext, arms: dict[str, Any]) -> str | None:
    """Add each arm's top-k churn cell to `arms` when any arm's summary has one; returns the row
    name ("top-10 churn by user_id"), or None."""
    entries = {a.label: a.summary.get("churn") for a in ctx.arms}
    known = [e for e in entries.values() if isinstance(e, dict)]
    if not known:
        return None
    by = f" by {known[0]['by']}" if known[0].get("by") else ""
    key = f"top-{known[0].get('k')} churn{by}"
    for label, entry in entries.items():
        entry = entry if isinstance(entry, dict) else {}
        ci = entry.get("ci")
        ci = [as_float(v) for v in ci] if isinstance(ci, list) and len(ci) == 2 else None
        arms[label][key] = {"value": _f(entry.get("value")), "ci": ci}
    return key


@register_section(*_both(), PD, id="pd-table", title="Prediction difference", order=20)
def _pd_table(ctx: ReportContext) -> SectionOutput:
    keys = list(PD_KEYS)
    for arm in ctx.arms:
        keys += [k for k in (arm.summary.get("pd") or {}) if k not in keys]
    arms: dict[str, Any] = {}
    for arm in ctx.arms:
        arms[arm.label] = {
            key: {"value": _f(arm.pd(key)), "ci": list(arm.ci(key)) if arm.ci(key) else None}
            for key in keys
        }
    churn_key = _add_churn_rows(ctx, arms)
    if churn_key:
        keys.append(churn_key)
    first = ctx.arms[0].summary
    pd_ci = first.get("pd_ci") or {}
    data = {
        "keys": keys,
        "arms": arms,
        "ci_level": pd_ci.get("level"),
        "ci_method": pd_ci.get("method"),
        "flip_threshold": first.get("flip_threshold"),
    }
    return SectionOutput(data=data, view=dict(data, labels=[a.label for a in ctx.arms]))


# ----------------------------------------------------------------------------------------- accuracy
@register_section(*_both(), PD, id="accuracy", title="AUC, log-loss and calibration", order=30)
def _accuracy(ctx: ReportContext) -> SectionOutput:
    rows = {}
    for arm in ctx.arms:
        rows[arm.label] = {
            name: {f: _f(arm.metric(name, f)) for f in ("mean", "std", "ensemble")}
            for name in ("auc", "logloss", "calibration")
        }
    has = any(v["auc"]["mean"] is not None for v in rows.values())
    # No replica left to score (every one diverged) is not the same as data without labels.
    unscored = [a for a in ctx.arms if a.summary.get("replicas") == 0 and _undefined_pd(a)]
    notes = [f"No AUC or log-loss for {a.label}: {_undefined_pd(a)}." for a in unscored]
    if not has and not unscored:
        notes = ["The evaluation data has no labels, so there is no AUC or log-loss."]
    return SectionOutput(data={"arms": rows}, notes=notes)


# ---------------------------------------------------------------------------------------- PD vs AUC
@register_section(*_both(), id="pd-vs-auc", title="PD versus AUC", order=40)
def _pd_vs_auc(ctx: ReportContext) -> SectionOutput:
    points = {
        a.label: {
            "auc": _f(a.metric("auc")),
            "auc_std": _f(a.metric("auc", "std")),
            "pd_rel": _f(a.pd("rel")),
            "pd_rel_ci": list(a.ci("rel")) if a.ci("rel") else None,
            "pareto": a.name in ctx.pareto,
            "baseline": a.is_baseline,
        }
        for a in ctx.arms
    }
    notes = []
    if not ctx.is_compare:
        notes.append("One ensemble, so one point; compare-activations runs show one point per arm.")
    return SectionOutput(
        data={"points": points, "pareto": [a.label for a in ctx.arms if a.name in ctx.pareto]},
        figure=figures.pd_vs_auc(ctx.arms, ctx.pareto),
        notes=notes,
    )


# ------------------------------------------------------------------------- per-example PD histogram
@register_section(*_both(), id="pd-distribution", title="Per-example PD", order=50)
def _pd_distribution(ctx: ReportContext) -> SectionOutput:
    all_stats = [a.stats for a in ctx.arms]
    shown = [(a, s) for a, s in zip(ctx.arms, all_stats, strict=True) if s.has_pd]
    unknown = dict.fromkeys(("mean", "median", "p90", "p99", "max"))
    arms: dict[str, Any] = {}
    no_pd: list[str] = []
    for arm, st in zip(ctx.arms, all_stats, strict=True):
        if not st.has_pd:  # every replica (or all but one) diverged
            arms[arm.label] = {
                "examples": st.examples,
                "abs": unknown,
                "rel": unknown,
                "counts": [],
            }
            no_pd.append(f"No per-example PD for {arm.label}: {_no_pd_reason(arm)}.")
    if not shown:
        return SectionOutput(data={"edges": [], "arms": arms}, notes=no_pd)
    top = max(float(np.quantile(s.per_example_abs, 0.999)) for _, s in shown) or 1e-12
    edges = np.linspace(0.0, top, 41)
    for arm, st in shown:
        counts, _ = np.histogram(np.clip(st.per_example_abs, 0, top), edges)
        with np.errstate(divide="ignore", invalid="ignore"):
            rel = st.per_example_abs / st.per_example_mean
        arms[arm.label] = {
            "examples": st.examples,
            "abs": _quantiles(st.per_example_abs),
            "rel": _quantiles(rel[np.isfinite(rel)]),
            "counts": counts.tolist(),
        }
    data = {"edges": edges.tolist(), "arms": {a.label: arms[a.label] for a in ctx.arms}}
    notes = [
        "Per example: the mean over replicas of |p_m − p̄|, from the replicas' prediction files "
        "(diverged replicas left out, as in the PD table). The last bin also holds the top 0.1 %.",
        *no_pd,
    ]
    figure = figures.pd_histogram([a for a, _ in shown], [s for _, s in shown], edges)
    return SectionOutput(data=data, figure=figure, notes=notes)


# ------------------------------------------------------------------------------------- PD by bucket
def _computed_buckets(arm: Arm) -> list[dict[str, Any]]:
    st = arm.stats
    edges = np.linspace(0.0, 1.0, BUCKETS + 1)
    idx = np.clip(np.searchsorted(edges, st.per_example_mean, side="right") - 1, 0, BUCKETS - 1)
    rows = []
    for b in range(BUCKETS):
        sel = idx == b
        rows.append(
            {
                "lo": float(edges[b]),
                "hi": float(edges[b + 1]),
                "count": int(sel.sum()),
                "abs_mean": float(st.per_example_abs[sel].mean()) if sel.any() else None,
                "rel_mean": float((st.per_example_abs[sel] / st.per_example_mean[sel]).mean())
                if sel.any()
                else None,
            }
        )
    return rows


@register_section(*_both(), PD, id="pd-by-bucket", title="PD by prediction bucket", order=60)
def _pd_by_bucket(ctx: ReportContext) -> SectionOutput:
    per_arm = []
    for arm in ctx.arms:
        stored = arm.summary.get("pd_by_bucket")
        if isinstance(stored, list) and stored:
            rows = stored
        elif not arm.run.documents_only and arm.stats.has_pd:
            rows = _computed_buckets(arm)
        else:  # every replica diverged (PD undefined), or a bare summary without buckets
            rows = []
        rows = [
            {k: (_f(r.get(k)) if k != "count" else r.get("count")) for k in
             ("lo", "hi", "count", "abs_mean", "rel_mean")}
            for r in rows
        ]  # fmt: skip
        per_arm.append(rows)
    data = {"arms": {a.label: rows for a, rows in zip(ctx.arms, per_arm, strict=True)}}
    view = dict(data, show_arm=len(ctx.arms) > 1)
    shown = [[r for r in rows if r["count"]] for rows in per_arm]
    notes = ["Buckets of the ensemble-mean prediction p̄; empty buckets are not shown."]
    notes += [
        f"No PD buckets for {a.label}: {_no_pd_reason(a)}."
        for a, rows in zip(ctx.arms, shown, strict=True)
        if not rows
    ]
    return SectionOutput(
        data=data,
        view=dict(view, arms={a.label: s for a, s in zip(ctx.arms, shown, strict=True)}),
        figure=figures.pd_by_bucket(ctx.arms, shown) if any(shown) else None,
        notes=notes,
    )


# -------------------------------------------------------------------------------------- calibration
@register_section(*_both(), id="calibration", title="Calibration", order=70)
def _calibration(ctx: ReportContext) -> SectionOutput:
    stats = [a.stats for a in ctx.arms]
    if not any(s.has_labels for s in stats):
        return SectionOutput(
            data={"arms": {}}, notes=["The prediction files hold no labels; nothing to calibrate."]
        )
    arms = {}
    for arm, st in zip(ctx.arms, stats, strict=True):
        arms[arm.label] = {
            "ratio": {f: _f(arm.metric("calibration", f)) for f in ("mean", "std", "ensemble")},
            "ensemble_bins": st.ensemble_reliability,
            "replica_bins": {r.name: r.reliability for r in st.replicas},
        }
    drawn = [(a, s) for a, s in zip(ctx.arms, stats, strict=True) if s.has_predictions]
    notes = [
        f"Nothing to calibrate for {a.label}: {_undefined_pd(a) or 'no finite predictions'}."
        for a, s in zip(ctx.arms, stats, strict=True)
        if not s.has_predictions
    ]
    if not drawn:
        return SectionOutput(data={"arms": arms}, notes=notes)
    return SectionOutput(
        data={"arms": arms},
        figure=figures.calibration([a for a, _ in drawn], [s for _, s in drawn]),
        notes=[
            "Reliability diagram: examples binned by deciles of the ensemble-mean prediction; thin "
            "lines are replicas, black the ensemble mean (diverged replicas left out). "
            "Calibration ratio = mean prediction / mean label.",
            *notes,
        ],
    )


# ------------------------------------------------------------------------------------ training loss
@register_section(*_both(), id="training-loss", title="Training loss", order=80)
def _training_loss(ctx: ReportContext) -> SectionOutput:
    stats = [a.stats for a in ctx.arms]
    arms = {}
    for arm, st in zip(ctx.arms, stats, strict=True):
        reps = {}
        for r in st.replicas:
            finite = r.loss[np.isfinite(r.loss)]
            reps[r.name] = {
                "points": len(r.loss),
                "first": _f(finite[0]) if len(finite) else None,
                "final": _f(r.loss[-1]) if len(r.loss) else None,
                "min": _f(finite.min()) if len(finite) else None,
                "non_finite": int((~np.isfinite(r.loss)).sum()),
            }
        arms[arm.label] = reps
    return SectionOutput(
        data={"arms": arms},
        figure=figures.loss_curves(ctx.arms, stats),
        notes=["Logs longer than 300 points are averaged over consecutive steps."],
    )


# ----------------------------------------------------------------------------------------- replicas
@register_section(*_both(), id="replicas", title="Replicas", order=90)
def _replicas(ctx: ReportContext) -> SectionOutput:
    rows = []
    for arm in ctx.arms:
        varied = _varied(arm) or []
        for rep in arm.stats.replicas:
            m = rep.metrics
            seeds = m.get("seeds") or {}
            finite = rep.loss[np.isfinite(rep.loss)]
            rows.append(
                {
                    "arm": arm.label,
                    "replica": rep.name,
                    "auc": _f(m.get("auc")),
                    "logloss": _f(m.get("logloss")),
                    "calibration": _f(m.get("calibration")),
                    "train_seconds": _f(m.get("train_seconds")),
                    "steps": m.get("steps"),
                    "threads": m.get("threads"),
                    "diverged": bool(m.get("diverged")),
                    "final_loss": _f(finite[-1]) if len(finite) else None,
                    "seeds": {k: v for k, v in seeds.items() if k in varied},
                }
            )
    return SectionOutput(data={"rows": rows}, view={"rows": rows, "show_arm": len(ctx.arms) > 1})


# ------------------------------------------------------------------------------------- paired tests
@register_section(
    *ARM_STUDIES, id="paired-tests", title="Paired tests against the baseline", order=45
)
def _paired_tests(ctx: ReportContext) -> SectionOutput | None:
    rows = []
    for arm in ctx.arms:
        tests = arm.summary.get("tests")
        if not isinstance(tests, dict) or not tests:
            tests = {"": arm.test} if arm.test else {}
        for key, test in tests.items():
            if not isinstance(test, dict):
                continue
            rows.append(
                {
                    "arm": arm.label,
                    "metric": test.get("metric") or key,
                    "method": test.get("method"),
                    "n": test.get("n"),
                    "statistic": _f(test.get("statistic")),
                    "p_value": _f(test.get("p_value")),
                    "p_holm": _f(test.get("p_holm")),
                    "reason": test.get("reason"),
                }
            )
    notes = [
        "Replica i of every arm shares its seeds, so arms are compared pairwise by seed; "
        "statistic = arm − baseline; p-values are Holm-corrected across arms."
    ]
    design = (ctx.run.compare or {}).get("test")
    if isinstance(design, dict) and design.get("statistic"):
        notes.append(f"Statistic: {design['statistic']}; correction: {design.get('correction')}.")
    if not rows:
        notes = ["compare.json holds no paired tests."]
    return SectionOutput(
        data={"baseline": ctx.baseline.label if ctx.baseline else None, "rows": rows}, notes=notes
    )
