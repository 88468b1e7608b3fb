"""`compare_activations`: the study engine's preset whose arms differ in ``model.activation`` only.

Flow (`reprokit.runners.study`): parse and check the arms → load the data once → per arm,
`train_ensemble` into ``RUN_DIR/arms/<slug>/`` with the same config except ``model.activation``
(so replica k of every arm shares every seed: a paired design) → paired tests of each arm against
the baseline, Holm-corrected across arms → Pareto front on (PD ``rel`` ↓, AUC ↑) → ``compare.json``
and the trade-off plot. What is specific here: activation specs as arms, sweeps, families.

Arms (``split_arms``): a comma or semicolon list of activation specs. A spec's own parameters
also use commas (``gsmelu:alpha=0.5,beta=1.5``), so a comma-separated piece that is a bare
``key=value`` (an ``=`` and no ``:``) continues the previous spec; any other piece starts a new
arm. ``;`` always separates arms.

Sweeps (``parse_sweep``): ``family:param=LO..HI:N`` (N evenly spaced values, ends included,
default N = 5) or ``family:param=V1|V2|V3``; other parameters stay fixed, e.g.
``gsmelu:alpha=0.5,beta=0.1..2:4``. Values are rounded to 6 significant digits, so a spec's label
is exactly what the model uses.

Paired statistics, per replica k (docs/methods.md §5: the replica is the unit):

* PD: replica k's contribution to ``rel``, ``c_k = mean_{j != k} rel(k, j)`` over the pairwise
  ``rel`` values of the summary; ``mean_k c_k`` is exactly the arm's ``rel``, so the test compares
  the quantity the table shows. Caveat: the c_k of one arm share pairs and are therefore not
  independent, so the p-value is approximate (indicative with few replicas; use N >= 10 for claims).
* AUC: replica k's own AUC (independent across k).

The test is a sign-flip permutation test of mean(arm − baseline) (default; exact for M ≤ 13) or a
Wilcoxon signed-rank test (``reprokit.metrics.stats.paired_test``). p-values are Holm-corrected
across the non-baseline arms, separately for each metric. The contract's ``test`` entry of each arm
is the PD one; ``tests`` holds both.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from reprokit.config import RunConfig
from reprokit.errors import ReprokitError
from reprokit.metrics.churn import ChurnGroups
from reprokit.metrics.paired import (  # re-exported: the study's statistics live in metrics/
    TEST_METHODS,
    TEST_METRICS,
    healthy_replicas,
    paired_tests,
    per_replica_metric,
    per_replica_pd,
    replicas_needed,
    smallest_p_holm,
)
from reprokit.nn.registry import create_activation, parse_spec
from reprokit.runners.ensemble import StepProgress, default_run_dir
from reprokit.runners.executors import Executor
from reprokit.runners.study import (
    ARMS_DIR,
    Arm,
    ArmResult,
    StudyDir,
    StudyProgress,
    compare_document,
    make_arms,
    paired_document,
    pareto_labels,
    run_study,
)
from reprokit.runschema import COMPARE

__all__ = [
    "DEFAULT_ARMS",
    "TEST_METHODS",
    "TEST_METRICS",
    "arm_slug",
    "build_compare_document",
    "check_inputs",
    "compare_activations",
    "families",
    "healthy_replicas",
    "paired_tests",
    "pareto_specs",
    "parse_sweep",
    "per_replica_metric",
    "per_replica_pd",
    "replicas_needed",
    "resolve_arms",
    "smallest_p_holm",
    "split_arms",
]

KIND = COMPARE
COMPARE_FILE = "compare.json"

#: Arms of a bare `reprokit compare-activations`: ReLU (baseline), two SmeLU widths, GELU, Swish.
DEFAULT_ARMS: tuple[str, ...] = ("relu", "smelu:beta=0.5", "smelu:beta=1", "gelu", "swish")

#: The arm a sweep is compared against when no --arms are given.
SWEEP_BASELINE = "relu"


#: progress(done, total, info): see `reprokit.runners.study.StudyProgress`.
CompareProgress = StudyProgress

_MAX_SWEEP_POINTS = 50


# ------------------------------------------------------------------------------------- arm parsing
def canonical_spec(spec: str) -> str:
    """The registry's canonical string of a spec; bad specs raise ReprokitError."""
    text = spec.strip()
    if not text:
        raise ReprokitError("an activation spec is empty")
    return str(parse_spec(text))


def split_arms(text: str) -> list[str]:
    """Split an arm list into specs (see the module docstring for the separator rule)."""
    specs: list[str] = []
    for group in text.split(";"):
        current: list[str] = []
        for piece in (p.strip() for p in group.split(",")):
            if not piece:
                continue
            continues = "=" in piece and ":" not in piece
            if continues:
                if not current:
                    raise ReprokitError(
                        f"arm list {text!r}: parameter {piece!r} does not follow an activation name"
                    )
                current.append(piece)
            else:
                if current:
                    specs.append(",".join(current))
                current = [piece]
        if current:
            specs.append(",".join(current))
    return specs


def _number(text: str, where: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ReprokitError(f"sweep {where!r}: {text!r} is not a number") from None
    if not math.isfinite(value):
        raise ReprokitError(f"sweep {where!r}: {text!r} is not a finite number")
    return value


def _round6(value: float) -> float:
    return float(f"{value:.6g}")


def parse_sweep(text: str) -> list[str]:
    """Expand ``family:param=LO..HI:N`` or ``family:param=V1|V2|..`` into canonical arm specs."""
    name, colon, rest = text.strip().partition(":")
    if not colon or not rest.strip():
        raise ReprokitError(
            f"sweep {text!r} must look like smelu:beta=0.1..2.0:8 or smelu:beta=0.25|0.5|1"
        )
    items = [p.strip() for p in rest.split(",") if p.strip()]
    swept = [i for i, item in enumerate(items) if ".." in item or "|" in item]
    if len(swept) != 1:
        raise ReprokitError(
            f"sweep {text!r} must vary exactly one parameter (LO..HI:N or V1|V2|..), "
            f"found {len(swept)}"
        )
    key, eq, value = items[swept[0]].partition("=")
    key = key.strip()
    if not eq or not key:
        raise ReprokitError(f"sweep {text!r}: {items[swept[0]]!r} must look like param=LO..HI:N")
    value = value.strip()
    if ".." in value:
        lo_text, _, hi_part = value.partition("..")
        hi_text, colon_n, n_text = hi_part.partition(":")
        lo, hi = _number(lo_text, text), _number(hi_text, text)
        if colon_n:
            try:
                count = int(n_text)
            except ValueError:
                raise ReprokitError(
                    f"sweep {text!r}: the number of points {n_text!r} is not an integer"
                ) from None
        else:
            count = 5
        if not 2 <= count <= _MAX_SWEEP_POINTS:
            raise ReprokitError(
                f"sweep {text!r}: the number of points must be between 2 and {_MAX_SWEEP_POINTS}"
            )
        if lo == hi:
            raise ReprokitError(f"sweep {text!r}: the range {lo:g}..{hi:g} is empty")
        values = [_round6(v) for v in np.linspace(lo, hi, count)]
    else:
        values = [_round6(_number(v.strip(), text)) for v in value.split("|") if v.strip()]
        if len(values) < 2:
            raise ReprokitError(f"sweep {text!r} lists fewer than 2 values")
    specs = []
    for v in values:
        params = list(items)
        params[swept[0]] = f"{key}={v!r}"
        specs.append(canonical_spec(f"{name}:{','.join(params)}"))
    if len(set(specs)) != len(specs):
        raise ReprokitError(f"sweep {text!r} gives the same value twice after rounding")
    return specs


def arm_slug(spec: str) -> str:
    """Directory name of an arm under ``arms/``: the registry's slug (``smelu_beta-0.5``)."""
    return parse_spec(spec).slug


def resolve_arms(
    arms: str | Sequence[str] | None = None,
    baseline: str | None = None,
    sweeps: str | Sequence[str] | None = None,
) -> tuple[list[str], str]:
    """Canonical arm specs (baseline first if it was not listed) and the baseline spec.

    ``arms``: a list of specs or one string in the `split_arms` syntax; None means DEFAULT_ARMS, or
    only the sweep plus ReLU when a sweep is given. Every spec is built once here, so a bad name or
    parameter fails before any training.
    """
    if isinstance(arms, str):
        listed = split_arms(arms)
        if not listed:
            raise ReprokitError("--arms is empty; give at least one activation spec")
    elif arms is not None:
        listed = [s for a in arms for s in split_arms(a)]
        if not listed:
            raise ReprokitError("no arms given; give at least one activation spec")
    else:
        listed = []
    sweep_list = [sweeps] if isinstance(sweeps, str) else list(sweeps or [])
    swept = [s for text in sweep_list for s in parse_sweep(text)]
    if arms is None:
        listed = [SWEEP_BASELINE] if swept else list(DEFAULT_ARMS)
    specs = [canonical_spec(s) for s in listed] + swept
    base = canonical_spec(baseline) if baseline is not None else specs[0]
    if base not in specs:
        specs.insert(0, base)
    seen: dict[str, str] = {}
    for spec in specs:
        if spec in seen:
            raise ReprokitError(f"arm {spec!r} is given twice")
        slug = arm_slug(spec)
        if slug in seen.values():
            raise ReprokitError(f"arms {spec!r} and another arm map to the same directory {slug!r}")
        seen[spec] = slug
        create_activation(spec)  # parameters are checked by the activation itself
    if len(specs) < 2:
        raise ReprokitError(
            f"compare-activations needs at least 2 arms, got only {specs[0]!r}; add --arms"
        )
    return specs, base


def pareto_specs(arms: Sequence[dict[str, Any]]) -> list[str]:
    """Activation specs on the Pareto front of (PD rel: lower is better, AUC: higher is better)."""
    return pareto_labels([{**a, "label": a["activation"]} for a in arms])


def families(specs: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Families with several arms that differ in exactly one parameter: the curves of the plot.

    {family name: {"param": name, "specs": [...] sorted by that parameter's value}}.
    """
    groups: dict[str, list[Any]] = {}
    for spec in specs:
        parsed = parse_spec(spec)
        groups.setdefault(parsed.name, []).append(parsed)
    out: dict[str, dict[str, Any]] = {}
    for name, members in groups.items():
        if len(members) < 2:
            continue
        keys = set().union(*(m.params for m in members))
        varying = [k for k in sorted(keys) if len({m.params.get(k) for m in members}) > 1]
        if len(varying) != 1 or not all(
            isinstance(m.params.get(varying[0]), float) for m in members
        ):
            continue
        param = varying[0]
        members = sorted(members, key=lambda m: m.params[param])
        out[name] = {"param": param, "specs": [str(m) for m in members]}
    return out


def activation_arms(config: RunConfig, specs: Sequence[str]) -> list[Arm]:
    """One study arm per activation spec: label and document field ``activation`` the spec."""
    return make_arms(
        config,
        [{"model.activation": spec} for spec in specs],
        labels=list(specs),
        slugs=[arm_slug(spec) for spec in specs],
        fields=[{"activation": spec} for spec in specs],
    )


def build_compare_document(
    summaries: Sequence[dict[str, Any]],
    specs: Sequence[str],
    baseline: str,
    *,
    wall_seconds: Sequence[float] | None = None,
    test_method: str = "permutation",
    seed: int = 0,
    config: RunConfig | None = None,
) -> dict[str, Any]:
    """The compare.json document (docs/contracts.md) from each arm's train-ensemble summary."""
    if len(summaries) != len(specs):
        raise ReprokitError("one summary per arm is needed")
    arms = activation_arms(config or RunConfig(), specs)
    doc = compare_document(
        KIND,
        summaries,
        arms,
        list(specs).index(baseline),
        wall_seconds=wall_seconds,
        test_method=test_method,
        seed=seed,
    )
    doc["families"] = families(specs)
    return doc


def _study_dir(root: Path) -> StudyDir:
    return StudyDir(root=root, kind=KIND, document=COMPARE_FILE, arms_dir=ARMS_DIR)


def check_inputs(
    config: RunConfig,
    arms: str | Sequence[str] | None = None,
    baseline: str | None = None,
    out: str | Path | None = None,
    *,
    sweep: str | Sequence[str] | None = None,
    force: bool = False,
    test: str = "permutation",
) -> tuple[list[str], str, Path]:
    """Check everything that can be checked before training; (arm specs, baseline, run dir).

    Creates nothing, so a command can call it before it starts a progress bar.
    """
    if test not in TEST_METHODS:
        raise ReprokitError(f"unknown paired test {test!r}; choose {' or '.join(TEST_METHODS)}")
    specs, base = resolve_arms(arms, baseline, sweep)
    if config.replicas < 2:
        raise ReprokitError("compare-activations needs at least 2 replicas per arm")
    root = Path(out) if out is not None else default_run_dir(KIND)
    _study_dir(root).check(activation_arms(config, specs), force)
    return specs, base, root


def compare_activations(
    config: RunConfig,
    arms: str | Sequence[str] | None = None,
    baseline: str | None = None,
    out: str | Path | None = None,
    *,
    sweep: str | Sequence[str] | None = None,
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
    """Train `config` once per activation arm into ``out/arms/<slug>/`` and compare the arms.

    `churn` (see `reprokit.runners.ensemble.load_run_data`) adds top-k churn per group to every
    arm's summary. `step_progress` follows each arm's optimizer steps (vectorized engine).

    Every arm uses `config` with only ``model.activation`` replaced, so replica k of every arm has
    the same seeds. Re-running on the same `out` resumes every arm. Returns the compare.json
    document (also written to ``out/compare.json``), with the plot files under ``out/``.
    """
    specs, base, root = check_inputs(
        config, arms, baseline, out, sweep=sweep, force=force, test=test
    )
    study_arms = activation_arms(config, specs)

    def finish(results: list[ArmResult]) -> dict[str, Any]:
        return paired_document(
            KIND,
            results,
            specs.index(base),
            root,
            test=test,
            plot=plot,
            extra={"families": families(specs)},
        )

    return run_study(
        _study_dir(root),
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
