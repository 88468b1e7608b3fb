"""`reprokit compare-activations`: the same ensemble per activation arm, compared.

Trade-off table, Pareto plot, paired tests. The workflow lives in `reprokit.runners.compare`; this
module parses options and prints.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich import box
from rich.console import Console
from rich.table import Table

from reprokit.commands import options as opt
from reprokit.commands.common import cli_errors, err_console, fmt_significant, print_json
from reprokit.commands.progress import TrainingProgress
from reprokit.jsonio import as_float
from reprokit.metrics.churn import DEFAULT_TOP_K

#: Replicas per arm when neither --replicas nor the config file says: 8 is the smallest N for which
#: a paired test on 4 non-baseline arms can reach p(Holm) < 0.05 (exact sign-flip: 2/2^8 × 4).
DEFAULT_REPLICAS = 8

#: Table width when stderr is not a terminal (Rich would otherwise assume 80 columns).
WIDE = 200

ARMS_HELP = (
    "Activation specs, one per arm, separated by commas or ';' (repeatable). A comma followed by a "
    "bare key=value continues the previous spec, so 'relu,gsmelu:alpha=0.5,beta=1.5,gelu' is three "
    "arms. Default: relu,smelu:beta=0.5,smelu:beta=1,gelu,swish (relu alone when only --sweep is "
    "given)."
)
ARM_HELP = (
    "One arm: comma-separated dotted config keys with values, e.g. 'model.activation=smelu:beta=1'"
    " or 'model.dropout=0.1,model.hidden=[128,64]' (values read as TOML when they parse, else as "
    "text). Repeat for each arm; at least two."
)
SWEEP_HELP = (
    "One activation family over one parameter, expanded to arms: 'smelu:beta=0.1..2.0:8' (8 evenly "
    "spaced values, ends included) or 'smelu:beta=0.25|0.5|1' (a list). Repeatable."
)


def _fix(value: Any, decimals: int = 4) -> str:
    v = as_float(value)
    return "n/a" if not math.isfinite(v) else f"{v:.{decimals}f}"


def _fmt_p(value: Any) -> str:
    v = as_float(value)
    if not math.isfinite(v):
        return "n/a"
    return "<0.001" if v < 0.001 else f"{v:.3f}"


def _power_note(doc: dict[str, Any]) -> str:
    test = doc.get("test") or {}
    smallest = as_float(test.get("smallest_p_holm"))
    if not (math.isfinite(smallest) and smallest > 0.05):
        return ""
    return (
        f"\nnote: with {doc.get('replicas')} replicas no arm can reach p(Holm) < 0.05 "
        f"(smallest possible {smallest:.3g}); use --replicas {test.get('replicas_needed_for_0.05')}"
        " or more"
    )


def _table_cells(arm: dict[str, Any]) -> list[str]:
    """Embedding parameters (a dynamic table's: the mean over replicas at the end) and the share
    of training ids that share a row, of one arm."""
    block = arm.get("embedding") or {}
    params = as_float(block.get("params"))
    return [
        f"{params:,.0f}" if math.isfinite(params) else "n/a",
        fmt_significant(block.get("collision_rate"), 3),
    ]


def render_compare_table(doc: dict[str, Any]) -> Table:
    """One row per arm: spec, PD rel [CI], PD abs, AUC mean±std, ensemble AUC, log-loss, top-k
    churn (when measured), time, p (Holm) of the paired PD and AUC tests against the baseline,
    Pareto membership."""
    pareto = set(doc.get("pareto") or [])
    level = 0.95
    for arm in doc["arms"]:
        level = as_float((arm.get("pd_ci") or {}).get("level", level))
        break
    table = Table(
        title=f"{doc.get('kind', 'compare-activations')}: {doc.get('run_dir', '')}",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        caption_justify="left",
        caption=(
            f"{doc.get('replicas', '?')} replicas per arm, vary "
            f"{','.join(doc.get('vary') or []) or 'none'}; paired "
            f"{(doc.get('test') or {}).get('method', '')} test vs baseline "
            f"{doc.get('baseline')} on per-replica PD rel / AUC, Holm across arms; "
            "↑/↓ before a p: the arm's mean is above/below the baseline's" + _power_note(doc)
        ),
    )
    # long arm labels (several overrides) wrap; the numbers never do
    table.add_column("arm", overflow="fold", min_width=24, max_width=44)
    table.add_column(f"PD rel [{level * 100:g}% CI]", justify="right", no_wrap=True)
    table.add_column("PD abs", justify="right", no_wrap=True)
    table.add_column("AUC mean±std", justify="right", no_wrap=True)
    table.add_column("ens AUC", justify="right", no_wrap=True)
    table.add_column("logloss", justify="right", no_wrap=True)
    churn_k = next(
        (a["churn"].get("k") for a in doc["arms"] if isinstance(a.get("churn"), dict)), None
    )
    if churn_k is not None:
        table.add_column(f"top-{churn_k} churn", justify="right", no_wrap=True)
    kinds = {(a.get("embedding") or {}).get("kind") for a in doc["arms"]}
    show_tables = len(kinds - {None}) > 1  # the arms differ in their embedding table
    if show_tables:
        table.add_column("emb params", justify="right", no_wrap=True)
        table.add_column("collision", justify="right", no_wrap=True)
    table.add_column("time s", justify="right", no_wrap=True)
    table.add_column("p PD (Holm)", justify="right", no_wrap=True)
    table.add_column("p AUC (Holm)", justify="right", no_wrap=True)
    table.add_column("Pareto", justify="center", no_wrap=True)
    for arm in doc["arms"]:
        pd = arm.get("pd") or {}
        ci = (arm.get("pd_ci") or {}).get("rel") or [None, None]
        auc = arm.get("auc") or {}
        logloss = arm.get("logloss") or {}
        tests = arm.get("tests") or {}
        spec = arm.get("label") or arm["activation"]
        is_base = spec == doc.get("baseline")

        def p_cell(metric: str, tests: dict[str, Any] = tests, is_base: bool = is_base) -> str:
            if is_base:
                return "baseline"
            test = tests.get(metric) or {}
            stat = as_float(test.get("statistic"))
            # an arrow, not a sign: "− 0.500" reads as a negative p-value
            sign = "" if not math.isfinite(stat) or stat == 0 else ("↓" if stat < 0 else "↑")
            return f"{sign} {_fmt_p(test.get('p_holm'))}".strip()

        churn = [fmt_significant((arm.get("churn") or {}).get("value"), 3)] if churn_k else []
        table.add_row(
            spec,
            f"{fmt_significant(pd.get('rel'), 3)} [{fmt_significant(ci[0], 3)}, {fmt_significant(ci[1], 3)}]",
            fmt_significant(pd.get("abs"), 3),
            f"{_fix(auc.get('mean'))}±{_fix(auc.get('std'))}",
            _fix(auc.get("ensemble")),
            _fix(logloss.get("mean")),
            *churn,
            *(_table_cells(arm) if show_tables else []),
            f"{as_float(arm.get('train_seconds')):.1f}",
            p_cell("rel"),
            p_cell("auc"),
            "✓" if spec in pareto else "",
        )
    return table


def _replicas_in_file(config: Path | None) -> bool:
    if config is None:
        return False
    from reprokit.config import load_toml

    return "replicas" in load_toml(config)


def register(app: typer.Typer) -> None:
    @app.command("compare-activations")
    @cli_errors
    def compare_activations_command(
        ctx: typer.Context,
        arms: Annotated[list[str] | None, typer.Option("--arms", "--arm", help=ARMS_HELP)] = None,
        baseline: Annotated[
            str | None,
            typer.Option(
                "--baseline", help="Reference arm (default: the first arm); added if not listed."
            ),
        ] = None,
        sweep: Annotated[list[str] | None, typer.Option("--sweep", help=SWEEP_HELP)] = None,
        test: Annotated[
            str,
            typer.Option(
                "--test",
                help="Paired test: permutation (sign-flip, exact for <= 13 replicas) or wilcoxon.",
            ),
        ] = "permutation",
        data: opt.DataPath = None,
        config: opt.ConfigFile = None,
        replicas: Annotated[
            int | None,
            typer.Option(
                "--replicas",
                "-n",
                help=opt.with_default("Replicas per arm.", str(DEFAULT_REPLICAS)),
            ),
        ] = None,
        vary: opt.Vary = None,
        embedding_dim: opt.EmbeddingDim = None,
        hidden: opt.Hidden = None,
        dropout: opt.Dropout = None,
        batch_norm: opt.BatchNorm = None,
        optimizer: opt.Optimizer = None,
        lr: opt.LearningRate = None,
        batch_size: opt.BatchSize = None,
        epochs: opt.Epochs = None,
        split: opt.Split = None,
        eval_fraction: opt.EvalFraction = None,
        storage: opt.Storage = None,
        label: opt.Label = None,
        synth_rows: opt.SynthRows = None,
        seed: opt.Seed = None,
        device: opt.Device = None,
        engine: opt.Engine = None,
        threads: opt.Threads = None,
        workers: opt.Workers = 1,
        backend: opt.Backend = "local",
        ray_address: opt.RayAddress = None,
        replicas_per_task: opt.ReplicasPerTask = None,
        out: Annotated[
            Path | None,
            typer.Option(
                "--out",
                "-o",
                help=opt.out_help(
                    "Run directory (re-running resumes every arm).", "compare-activations"
                ),
            ),
        ] = None,
        force: Annotated[
            bool, typer.Option("--force", help="Overwrite arms of another config.")
        ] = False,
        json_out: Annotated[
            bool, typer.Option("--json", help="Print compare.json on stdout.")
        ] = False,
        churn_by: opt.ChurnBy = None,
        top_k: opt.TopK = DEFAULT_TOP_K,
    ) -> None:
        """Train the same ensemble once per activation and compare PD against AUC.

        Replica k of every arm shares all seeds (only the activation differs), so arms are compared
        with paired tests against the baseline, Holm-corrected. Writes RUN_DIR/arms/<slug>/ (a
        train-ensemble run per arm), RUN_DIR/compare.json and RUN_DIR/pareto.png / pareto.svg.

        Examples:
          reprokit compare-activations
          reprokit compare-activations --arms 'relu;smelu:beta=1;gelu' --vary init,data-order
          reprokit compare-activations --sweep smelu:beta=0.1..2.0:8 --out runs/smelu-sweep
        """
        from reprokit.config import resolve_config
        from reprokit.runners.compare import check_inputs, compare_activations
        from reprokit.runners.ensemble import load_run_data

        if replicas is None and not _replicas_in_file(config):
            replicas = DEFAULT_REPLICAS
        cfg = resolve_config(config, opt.run_overrides(**{**ctx.params, "replicas": replicas}))
        # Fail on bad arms, sweeps, test or --out before the progress bar starts.
        specs, _, out = check_inputs(
            cfg, arms or None, baseline, out, sweep=sweep or None, force=force, test=test
        )
        executor = opt.executor_option(ctx)
        encoded, churn = load_run_data(cfg, churn_by, top_k)
        run_paired_study(
            lambda **kw: compare_activations(
                cfg,
                arms=arms or None,
                baseline=baseline,
                out=out,
                sweep=sweep or None,
                workers=workers,
                executor=executor,
                force=force,
                test=test,
                encoded=encoded,
                churn=churn,
                **kw,
            ),
            len(specs) * cfg.replicas,
            json_out,
        )

    @app.command("compare")
    @cli_errors
    def compare_command(
        ctx: typer.Context,
        arm: Annotated[
            list[str] | None, typer.Option("--arm", help=ARM_HELP, show_default=False)
        ] = None,
        baseline: Annotated[
            str | None,
            typer.Option(
                "--baseline",
                help="Reference arm: an arm's label, or one more arm's key=value pairs "
                "(default: the first arm).",
                show_default=False,
            ),
        ] = None,
        test: Annotated[
            str,
            typer.Option(
                "--test",
                help="Paired test: permutation (sign-flip, exact for <= 13 replicas) or wilcoxon.",
            ),
        ] = "permutation",
        data: opt.DataPath = None,
        config: opt.ConfigFile = None,
        replicas: Annotated[
            int | None,
            typer.Option(
                "--replicas",
                "-n",
                help=opt.with_default("Replicas per arm.", str(DEFAULT_REPLICAS)),
            ),
        ] = None,
        vary: opt.Vary = None,
        epochs: opt.Epochs = None,
        storage: opt.Storage = None,
        synth_rows: opt.SynthRows = None,
        seed: opt.Seed = None,
        engine: opt.Engine = None,
        workers: opt.Workers = 1,
        backend: opt.Backend = "local",
        ray_address: opt.RayAddress = None,
        replicas_per_task: opt.ReplicasPerTask = None,
        out: Annotated[
            Path | None,
            typer.Option(
                "--out",
                "-o",
                help=opt.out_help("Run directory (re-running resumes every arm).", "compare"),
            ),
        ] = None,
        force: Annotated[
            bool, typer.Option("--force", help="Overwrite arms of another config.")
        ] = False,
        json_out: Annotated[
            bool, typer.Option("--json", help="Print compare.json on stdout.")
        ] = False,
        churn_by: opt.ChurnBy = None,
        top_k: opt.TopK = DEFAULT_TOP_K,
    ) -> None:
        """Train the same ensemble once per arm, an arm being any set of config overrides.

        Every arm shares the per-replica seeds of the base config (--config and the options
        below), so arms are compared with paired tests against the baseline, Holm-corrected,
        exactly like compare-activations. Writes RUN_DIR/arms/<slug>/, RUN_DIR/compare.json and
        RUN_DIR/pareto.png / pareto.svg; `reprokit report` and `reprokit gate --arm LABEL` read it.

        Examples:
          reprokit compare --arm model.activation=relu --arm model.activation=smelu:beta=1
          reprokit compare --arm optim.name=adagrad --arm optim.name=clippy --arm 'model.hidden=[128,64]'
          reprokit compare --arm 'model.dropout=0.1,model.activation=gelu' --arm model.dropout=0
        """
        from reprokit.config import resolve_config
        from reprokit.runners.config_compare import check_compare, compare_configs
        from reprokit.runners.ensemble import load_run_data

        if replicas is None and not _replicas_in_file(config):
            replicas = DEFAULT_REPLICAS
        cfg = resolve_config(config, opt.run_overrides(**{**ctx.params, "replicas": replicas}))
        study_arms, _, _ = check_compare(cfg, arm or [], baseline, out, force=force, test=test)
        executor = opt.executor_option(ctx)
        encoded, churn = load_run_data(cfg, churn_by, top_k)
        run_paired_study(
            lambda **kw: compare_configs(
                cfg,
                arm or [],
                baseline,
                out,
                workers=workers,
                executor=executor,
                force=force,
                test=test,
                encoded=encoded,
                churn=churn,
                **kw,
            ),
            sum(a.config.replicas for a in study_arms),
            json_out,
        )


def run_paired_study(
    run: Callable[..., dict[str, Any]],
    total: int,
    json_out: bool,
    render: Callable[[dict[str, Any]], Table] | None = None,
) -> None:
    """Run a paired study with the progress display, then print its table (and JSON)."""
    with TrainingProgress("training", total) as progress:

        def on_progress(done: int, total: int, info: dict[str, Any]) -> None:
            index = info.get("arm_index", 0) + 1
            progress.replicas(
                done,
                total,
                info.get("metrics") or {},
                description=f"arm {index}/{info.get('arms', '?')} {info.get('arm', '')}",
            )

        doc = run(progress=on_progress, step_progress=progress.steps)
    table = (render or render_compare_table)(doc)
    if err_console.is_terminal:
        err_console.print(table)
    else:  # a log file or pipe: wide enough for one line per arm
        Console(file=err_console.file, width=WIDE, color_system=None).print(table)
    if json_out:
        print_json(doc)
