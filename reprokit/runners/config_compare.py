"""`compare_configs` (`reprokit compare`): the study engine with arms over any config keys.

An arm is one ``--arm 'key=value[,key=value...]'`` (`reprokit.overrides.parse_arm`): any dotted
config key, values read as TOML when they parse as TOML. The first arm (or ``--baseline``) is the
reference; every arm shares the per-replica seeds of the base config, so the comparison is paired
exactly as in compare-activations (whose document, report and gate this one shares).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from reprokit.config import RunConfig
from reprokit.errors import ReprokitError
from reprokit.metrics.churn import ChurnGroups
from reprokit.metrics.paired import TEST_METHODS
from reprokit.overrides import parse_arm, same_arm
from reprokit.runners.ensemble import StepProgress, default_run_dir
from reprokit.runners.executors import Executor
from reprokit.runners.study import (
    Arm,
    ArmResult,
    StudyDir,
    StudyProgress,
    baseline_index,
    make_arms,
    paired_document,
    run_study,
)
from reprokit.runschema import COMPARE_CONFIGS

KIND = COMPARE_CONFIGS
DOCUMENT = "compare.json"


def resolve_config_arms(
    config: RunConfig, arms: Sequence[str], baseline: str | None = None
) -> tuple[list[Arm], int]:
    """Arms from ``--arm`` texts, validated; (arms, index of the reference arm). A `baseline`
    that is not one of the arms is parsed as one more arm and put first."""
    if not arms:
        raise ReprokitError(
            "reprokit compare needs --arm at least twice, e.g. --arm model.activation=relu --arm model.activation=gelu"
        )
    specs = [parse_arm(text) for text in arms]
    built = make_arms(config, specs)
    named = {a.label for a in built} | {a.slug for a in built}
    if (
        baseline is not None
        and baseline not in named
        and not any(same_arm(baseline, a.given) or same_arm(baseline, a.overrides) for a in built)
    ):
        built = make_arms(config, [parse_arm(baseline), *specs])
        return built, 0
    if len(built) < 2:
        raise ReprokitError(f"reprokit compare needs at least 2 arms, got only {built[0].label!r}")
    return built, baseline_index(built, baseline)


def check_compare(
    config: RunConfig,
    arms: Sequence[str],
    baseline: str | None = None,
    out: str | Path | None = None,
    *,
    force: bool = False,
    test: str = "permutation",
) -> tuple[list[Arm], int, StudyDir]:
    """Everything that can be checked before training; creates nothing."""
    if test not in TEST_METHODS:
        raise ReprokitError(f"unknown paired test {test!r}; choose {' or '.join(TEST_METHODS)}")
    if config.replicas < 2:
        raise ReprokitError("reprokit compare needs at least 2 replicas per arm")
    study_arms, base = resolve_config_arms(config, arms, baseline)
    root = Path(out) if out is not None else default_run_dir(KIND)
    study = StudyDir(root=root, kind=KIND, document=DOCUMENT)
    study.check(study_arms, force)
    return study_arms, base, study


def compare_configs(
    config: RunConfig,
    arms: Sequence[str],
    baseline: str | None = None,
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
    """Train `config` once per arm into ``out/arms/<slug>/`` and compare the arms (compare.json)."""
    study_arms, base, study = check_compare(config, arms, baseline, out, force=force, test=test)

    def finish(results: list[ArmResult]) -> dict[str, Any]:
        return paired_document(KIND, results, base, study.root, test=test, plot=plot)

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
