"""`attribute` (`reprokit attribute`): which nondeterminism source causes the PD.

A preset of the study engine whose arms differ only in ``vary``: the control (``none``: PD must be
exactly 0), every source that applies on the device alone, every source together (``all``), and
with ``leave_one_out`` every source but one (``all-but-<source>``). All arms share the per-replica
seeds (a source's seed stream does not depend on which other sources vary), so "init alone" and
"all" differ in exactly the other sources.

PD contributions are not additive: two sources together can give less PD than their sum (each
already moves the model to another basin) or more. So the document reports each source alone
*and* left out, side by side, and the verdict names the share of `all`'s PD that the largest
single source reaches alone, never a decomposition.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from reprokit.components.tables import parse_table_spec
from reprokit.config import RunConfig
from reprokit.errors import ReprokitError
from reprokit.jsonio import as_float
from reprokit.metrics.churn import ChurnGroups
from reprokit.metrics.paired import TEST_METHODS
from reprokit.runners.ensemble import StepProgress, default_run_dir
from reprokit.runners.executors import Executor
from reprokit.runners.study import (
    ArmResult,
    StudyDir,
    StudyProgress,
    make_arms,
    paired_document,
    run_study,
)
from reprokit.runschema import ATTRIBUTE
from reprokit.sources import CUDA_ONLY, SOURCES

KIND = ATTRIBUTE
DOCUMENT = "attribute.json"
CONTROL = "none"
ALL = "all"
LEAVE_OUT_PREFIX = "all-but-"


def applicable_sources(
    device: str, chosen: Sequence[str] | None = None, embedding: str = "table"
) -> list[str]:
    """The sources attribute measures: `chosen` (checked) or every source the device allows
    (by default `admission` only where the `embedding` table draws admissions at random)."""
    on_cuda = device.startswith("cuda")
    allowed = [s for s in SOURCES if on_cuda or s not in CUDA_ONLY]
    if not chosen:
        if not draws_admissions(embedding):
            return [s for s in allowed if s != "admission"]
        return allowed
    unknown = [s for s in chosen if s not in SOURCES]
    if unknown:
        raise ReprokitError(
            f"unknown nondeterminism source {unknown[0]!r}; choose from {', '.join(SOURCES)}"
        )
    refused = [s for s in chosen if s not in allowed]
    if refused:
        raise ReprokitError(
            f"source {refused[0]!r} needs a CUDA device (--device cuda); this run is on {device}"
        )
    return [s for s in SOURCES if s in chosen]  # canonical order, each once


def draws_admissions(embedding: str) -> bool:
    """Whether the `admission` source changes anything for this table spec."""
    spec = parse_table_spec(embedding)
    return spec.params.get("filter") == "probabilistic"


def attribution_arms(
    sources: Sequence[str], leave_one_out: bool
) -> list[tuple[str, str, list[str]]]:
    """(label, mode, vary) per arm: control, each source alone, all, and each source left out."""
    arms = [(CONTROL, "control", ["none"])]
    arms += [(s, "alone", [s]) for s in sources]
    if len(sources) > 1:  # with one source, `all` is that source alone
        arms.append((ALL, "all", list(sources)))
    # with two sources, leaving one out is the other alone: only three or more add arms
    if leave_one_out and len(sources) > 2:
        arms += [
            (f"{LEAVE_OUT_PREFIX}{s}", "leave-one-out", [o for o in sources if o != s])
            for s in sources
        ]
    return arms


def _source_entry(label: str, mode: str, vary: list[str], arm: dict[str, Any]) -> dict[str, Any]:
    source = label.removeprefix(LEAVE_OUT_PREFIX) if mode == "leave-one-out" else label
    return {
        "source": source,
        "mode": mode,
        "label": label,
        "vary": vary,
        **{k: arm.get(k) for k in ("pd", "pd_ci", "auc", "logloss", "diverged", "replicas")},
    }


def verdict(sources: list[dict[str, Any]]) -> str:
    """One sentence: the single source with the largest PD alone, as a share of `all`'s PD."""
    alone = [s for s in sources if s["mode"] == "alone"]
    everything = next((s for s in sources if s["mode"] == "all"), None)
    if everything is None and len(alone) == 1:  # one source: it is all there is
        everything = alone[0]
    total = as_float(((everything or {}).get("pd") or {}).get("rel"))
    ranked = sorted(
        (s for s in alone if math.isfinite(as_float((s.get("pd") or {}).get("rel")))),
        key=lambda s: -as_float(s["pd"]["rel"]),
    )
    if not ranked or not math.isfinite(total):
        return "PD could not be attributed: no source gave a finite PD"
    top = ranked[0]
    value = as_float(top["pd"]["rel"])
    if total == 0:
        return "no source changes the predictions: PD of all sources together is 0"
    share = 100.0 * value / total
    return (
        f"{top['source']} alone gives {share:.0f} % of the PD of all sources together "
        f"(PD rel {value:.4g} vs {total:.4g})"
    )


def attribution_document(
    results: list[ArmResult],
    specs: list[tuple[str, str, list[str]]],
    root: Path,
    test: str = "permutation",
    plot: bool = True,
) -> dict[str, Any]:
    """The paired document with the control as the reference (every other arm's PD test is
    against PD = 0), plus the per-source entries, the verdict and the control check."""
    doc = paired_document(KIND, results, 0, root, test=test, plot=plot)
    for entry, (_, mode, _vary) in zip(doc["arms"], specs, strict=True):
        entry["mode"] = mode
    sources = [
        _source_entry(label, mode, vary, entry)
        for entry, (label, mode, vary) in zip(doc["arms"], specs, strict=True)
    ]
    doc["sources"] = sorted(
        sources,
        key=lambda s: (
            {"control": 0, "all": 1, "alone": 2, "leave-one-out": 3}[s["mode"]],
            -as_float((s.get("pd") or {}).get("rel")),
        ),
    )
    doc["verdict"] = verdict(sources)
    doc["control_pd_is_zero"] = all(
        as_float(v) == 0.0 for v in ((doc["arms"][0].get("pd") or {}).values())
    )
    doc["note"] = (
        "PD contributions are not additive: compare each source alone with all sources but it "
        "(leave-one-out) rather than summing."
    )
    config = results[0].arm.config
    if any(s["source"] == "dropout" for s in sources) and not config.model.dropout:
        doc["notes"].append(
            "the model has no dropout (model.dropout is 0), so the dropout source varies "
            "nothing; set --dropout to measure it"
        )
    doc["vary"] = sorted({v for _, mode, vary in specs if mode != "control" for v in vary})
    return doc


def check_attribute(
    config: RunConfig,
    sources: Sequence[str] | None = None,
    leave_one_out: bool = False,
    out: str | Path | None = None,
    force: bool = False,
    test: str = "permutation",
) -> tuple[list, list[tuple[str, str, list[str]]], StudyDir]:
    """Every arm's config validated and the run directory checked, before any training."""
    if config.replicas < 2:
        raise ReprokitError("reprokit attribute needs at least 2 replicas per arm")
    if test not in TEST_METHODS:
        raise ReprokitError(f"unknown paired test {test!r}; choose {' or '.join(TEST_METHODS)}")
    chosen = applicable_sources(config.device, sources, config.model.embedding)
    if not chosen:
        raise ReprokitError("reprokit attribute needs at least one nondeterminism source")
    specs = attribution_arms(chosen, leave_one_out)
    study_arms = make_arms(
        config,
        [{"vary": vary} for _, _, vary in specs],
        labels=[label for label, _, _ in specs],
        slugs=[label for label, _, _ in specs],
        fields=[{"mode": mode} for _, mode, _ in specs],
    )
    root = Path(out) if out is not None else default_run_dir(KIND)
    study = StudyDir(root=root, kind=KIND, document=DOCUMENT)
    study.check(study_arms, force)
    return study_arms, specs, study


def attribute(
    config: RunConfig,
    sources: Sequence[str] | None = None,
    leave_one_out: bool = False,
    out: str | Path | None = None,
    *,
    workers: int = 1,
    force: bool = False,
    test: str = "permutation",
    plot: bool = True,
    progress: StudyProgress | None = None,
    encoded: Any = None,
    churn: ChurnGroups | None = None,
    step_progress: StepProgress | None = None,
    executor: Executor | None = None,
) -> dict[str, Any]:
    """Train one arm per source (alone, and with `leave_one_out` left out), the control and all;
    write and return attribute.json."""
    study_arms, specs, study = check_attribute(config, sources, leave_one_out, out, force, test)

    def finish(results: list[ArmResult]) -> dict[str, Any]:
        return attribution_document(results, specs, study.root, test, plot)

    return run_study(
        study,
        study_arms,
        finish,
        workers=workers,
        force=force,
        encoded=encoded,
        churn=churn,
        progress=progress,
        step_progress=step_progress,
        executor=executor,
    )
