"""Report sections of a `stability` run directory (reprokit.runners.stability).

Registered on import (reprokit.report imports this module): a context whose arms are the study's
cells, and four sections — verdict, configuration (with the Adagrad-family accumulator start A0,
which moves AUC as much as clipping does), divergence table, loss curves with events marked.
"""

from __future__ import annotations

from typing import Any

import matplotlib as mpl
from matplotlib.figure import Figure

from reprokit.errors import ReprokitError
from reprokit.report import figures
from reprokit.report.context import Arm, ReportContext, register_context
from reprokit.report.sections import SectionOutput, _flatten, fmt, register_section
from reprokit.rundir import MANIFEST, Run, as_float, read_json

KIND = "stability"


def _document(run: Run) -> dict[str, Any]:
    doc = read_json(run.path / "stability.json", "stability.json")
    cells = doc.get("cells")
    if not isinstance(cells, list) or not cells:
        raise ReprokitError(f"{run.path / 'stability.json'} lists no cells")
    for i, cell in enumerate(cells):
        for key in ("name", "optimizer", "lr_multiplier", "replicas", "diverged", "run_dir"):
            if not isinstance(cell, dict) or key not in cell:
                raise ReprokitError(f"{run.path / 'stability.json'}: cell #{i} lacks {key!r}")
    return doc


@register_context(KIND)
def _stability_context(run: Run) -> ReportContext:
    doc = _document(run)
    arms = [
        Arm(name=c["name"], label=f"{c['optimizer']} ×{c['lr_multiplier']:g}", summary=c, run=run)
        for c in doc["cells"]
    ]
    ctx = ReportContext(run=run, kind=KIND, title=run.name, arms=arms, pareto=[])
    ctx.study = doc  # type: ignore[attr-defined]
    return ctx


def _study(ctx: ReportContext) -> dict[str, Any]:
    return ctx.study  # type: ignore[attr-defined]


@register_section(KIND, id="verdict", title="Verdict", order=0, template="verdict.j2")
def _verdict(ctx: ReportContext) -> SectionOutput:
    doc = _study(ctx)
    notes = []
    worst: dict[str, float] = {}
    for cell in doc["cells"]:
        ratio = as_float(cell["diverged"].get("ratio"))
        worst[cell["optimizer"]] = max(worst.get(cell["optimizer"], 0.0), ratio)
    for opt in doc["optimizers"]:
        tolerated = [
            c["lr_multiplier"]
            for c in doc["cells"]
            if c["optimizer"] == opt and c["diverged"]["count"] == 0
        ]
        diverged = sum(c["diverged"]["count"] for c in doc["cells"] if c["optimizer"] == opt)
        tried = sum(c["replicas"] for c in doc["cells"] if c["optimizer"] == opt)
        top = f"up to ×{max(tolerated):g}" if tolerated else "at none of the multipliers"
        notes.append(f"{opt}: {diverged}/{tried} replicas diverged; no divergence {top}.")
    total = sum(c["diverged"]["count"] for c in doc["cells"])
    tried = sum(c["replicas"] for c in doc["cells"])
    status = "warning" if total else "ok"
    headline = (
        f"{total} of {tried} replicas diverged over {len(doc['cells'])} cells "
        f"({len(doc['optimizers'])} optimizers × {len(doc['lr_multipliers'])} learning rates)"
    )
    return SectionOutput(data={"headline": headline, "notes": notes, "status": status})


def _cell_manifest(ctx: ReportContext, cell: dict[str, Any]) -> dict[str, Any]:
    """A cell's train-ensemble manifest, or {} when the cell directory is gone (the document
    alone still describes the study)."""
    path = ctx.run.path / str(cell["run_dir"]) / MANIFEST
    return read_json(path, f"manifest of cell {cell['name']}") if path.is_file() else {}


@register_section(
    KIND,
    id="configuration",
    title="Configuration and environment",
    order=5,
    template="stability-configuration.j2",
)
def _configuration(ctx: ReportContext) -> SectionOutput:
    doc = _study(ctx)
    manifest = ctx.run.manifest or {}
    cells = []
    engines: list[str] = []
    data_info: dict[str, Any] = {}
    for cell in doc["cells"]:
        sub = _cell_manifest(ctx, cell)
        data_info = data_info or sub.get("data") or {}
        engine = sub.get("engine")
        if engine and engine not in engines:
            engines.append(engine)
        cells.append(
            {
                "name": cell["name"],
                "optimizer": cell["optimizer"],
                "lr_multiplier": cell["lr_multiplier"],
                "lr": cell.get("lr"),
                # From the cell's own manifest: what its training actually got.
                "initial_accumulator_value": ((sub.get("config") or {}).get("optim") or {}).get(
                    "initial_accumulator_value", cell.get("initial_accumulator_value")
                ),
                "engine": engine,
            }
        )
    run_info = {
        "kind": KIND,
        "run directory": str(ctx.run.path),
        "reprokit version": manifest.get("reprokit_version", doc.get("reprokit_version")),
        "created": manifest.get("created"),
        "optimizers": ", ".join(doc["optimizers"]),
        "learning-rate multipliers": ", ".join(f"{m:g}" for m in doc["lr_multipliers"]),
        "base learning rate": doc.get("base_lr"),
        "replicas per cell": doc.get("replicas"),
        "accumulator start A0 (Adagrad family)": doc.get("initial_accumulator_value"),
        "engines": ", ".join(engines) or None,
        "dataset": data_info.get("name"),
        "label column(s)": ", ".join(data_info.get("labels") or []) or None,
        "train rows": data_info.get("train_rows"),
        "eval rows": data_info.get("eval_rows"),
        "data fingerprint": data_info.get("fingerprint"),
    }
    data = {
        "run": {k: v for k, v in run_info.items() if v is not None or k.startswith("accumulator")},
        "environment": _flatten(manifest.get("environment") or {}),
        "config": _flatten(manifest.get("config") or {}),
        "cells": cells,
    }
    # configuration.j2 (included by the template) also reads these; the per-cell table replaces
    # its "differ across arms" table.
    view = dict(data, arm_labels=[], config_source="", differs_across_arms={}, replica_seeds={})
    notes = [
        "Every Adagrad-family cell (adagrad, clippy*, adagrad+*) starts its accumulator at the "
        "same A0, so AUC differences between them come from clipping, not from A0; '—': the "
        "optimizer has no accumulator."
    ]
    return SectionOutput(data=data, view=view, notes=notes)


@register_section(
    KIND, id="divergence", title="Divergence", order=10, template="stability-divergence.j2"
)
def _divergence(ctx: ReportContext) -> SectionOutput:
    doc = _study(ctx)
    labels = doc.get("labels") or ["label"]
    rows = []
    for cell in doc["cells"]:
        sigma = cell.get("sigma") or {}
        tasks = cell.get("tasks") or {}
        reasons = cell["diverged"].get("reasons") or {}
        rows.append(
            {
                "name": cell["name"],
                "optimizer": cell["optimizer"],
                "lr_multiplier": cell["lr_multiplier"],
                "lr": cell.get("lr"),
                "initial_accumulator_value": cell.get("initial_accumulator_value"),
                "replicas": cell["replicas"],
                "diverged": cell["diverged"]["count"],
                "why": ", ".join(f"{k} {v}" for k, v in sorted(reasons.items())) or "",
                "spikes": (cell.get("spikes") or {}).get("total"),
                "recovered": (cell.get("spikes") or {}).get("recovered"),
                "aucs": [(tasks.get(lab) or {}).get("auc") for lab in labels],
                "logloss": cell.get("logloss"),
                "pd_rel": (cell.get("pd") or {}).get("rel"),
                "sigma_mean": sigma.get("mean"),
                "sigma_min": sigma.get("min"),
                "clipped": sigma.get("clipped_fraction"),
            }
        )
    rule = doc.get("divergence_rule") or {}
    notes = [
        "AUC and log-loss: mean ± std over the replicas that did not diverge; PD among them "
        "(n/a when fewer than 2 are left).",
        "A spike is a loss with robust z-score > "
        f"{fmt(rule.get('threshold'))} against the trailing {rule.get('window')} steps; it "
        f"recovers when the loss returns within {rule.get('recovery_steps')} steps. Diverged: "
        "non-finite loss/gradient, an unrecovered spike, or a collapse (AUC at chance after a "
        "blow-up).",
        "σ: the clipping factor (Clippy) or gradient-clipping scale per step, over dense "
        "tensors; 'steps clipped' is the fraction of steps with some σ < 1.",
    ]
    return SectionOutput(data={"labels": labels, "rows": rows}, notes=notes)


@register_section(
    KIND, id="loss-curves", title="Loss curves and events", order=20, template="stability-loss.j2"
)
def _loss_curves(ctx: ReportContext) -> SectionOutput:
    from reprokit.runners.stability import draw_loss_grid

    doc = _study(ctx)
    rows, cols = len(doc["optimizers"]), len(doc["lr_multipliers"])
    with mpl.rc_context(figures._RC):
        fig = Figure(figsize=(2.8 * cols + 0.6, 2.2 * rows + 0.8), layout="constrained")
        draw_loss_grid(fig, ctx.run.path, doc)
    events: dict[str, int] = {}
    for cell in doc["cells"]:
        for kind, n in (cell["diverged"].get("reasons") or {}).items():
            events[kind] = events.get(kind, 0) + int(n)
    data = {
        "cells": [c["name"] for c in doc["cells"]],
        "diverged_by_reason": events,
        "spikes": sum(int((c.get("spikes") or {}).get("total", 0)) for c in doc["cells"]),
    }
    return SectionOutput(data=data, figure=figures.to_svg(fig, "stability-loss"))
