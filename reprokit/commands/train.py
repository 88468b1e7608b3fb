"""`reprokit train-ensemble`: N replicas of one config, `--vary` picks the nondeterminism sources."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from reprokit.commands import options as opt
from reprokit.commands.common import cli_errors, err_console, print_json
from reprokit.commands.progress import TrainingProgress
from reprokit.metrics.churn import DEFAULT_TOP_K


def summary_table(summary: dict[str, Any], title: str) -> Any:
    """The PD / accuracy table of a train-ensemble summary, plus the diverged count and, for a
    multitask run, each task's AUC and log-loss."""
    from reprokit.commands.pd import render_summary_table

    table = render_summary_table(summary, title=title)
    div = summary.get("diverged") or {}
    count = int(div.get("count") or 0)
    total = count + int(summary.get("replicas") or 0)
    table.add_section()
    which = (
        f" ({', '.join(map(str, div.get('replicas') or []))}; excluded from PD)" if count else ""
    )
    table.add_row("diverged", f"{count} of {total}{which}", "", "", "")
    for label, doc in (summary.get("tasks") or {}).items():
        for key, name in (("auc", "AUC"), ("logloss", "log-loss")):
            entry = doc.get(key) or {}
            mean, std = entry.get("mean"), entry.get("std")
            table.add_row(
                f"{label} {name}",
                "n/a" if mean is None else f"{mean:.5f}",
                "",
                "" if std is None else f"{std:.3f}",
                "",
            )
    return table


def register(app: typer.Typer) -> None:
    @app.command("train-ensemble")
    @cli_errors
    def train_ensemble_command(
        ctx: typer.Context,
        data: opt.DataPath = None,
        config: opt.ConfigFile = None,
        replicas: Annotated[
            int | None,
            typer.Option(
                "--replicas", "-n", help=opt.config_help("replicas", "Number of replicas.")
            ),
        ] = None,
        vary: opt.Vary = None,
        activation: Annotated[
            str | None,
            typer.Option(
                "--activation",
                help=opt.config_help(
                    "activation", "Activation spec, e.g. relu, smelu:beta=0.5, gelu."
                ),
            ),
        ] = None,
        embedding: opt.Embedding = None,
        field_dims: opt.FieldDims = None,
        embedding_dim: opt.EmbeddingDim = None,
        hidden: opt.Hidden = None,
        dropout: opt.Dropout = None,
        batch_norm: opt.BatchNorm = None,
        optimizer: opt.Optimizer = None,
        initial_accumulator: Annotated[
            float | None,
            typer.Option(
                "--initial-accumulator",
                help=opt.with_default(
                    "Adagrad-family accumulator start.", "0 for adagrad, 0.1 for the others"
                ),
            ),
        ] = None,
        model: opt.Model = None,
        model_factory: opt.ModelFactory = None,
        experts: opt.Experts = None,
        tower: opt.Tower = None,
        tasks: opt.Tasks = None,
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
                help=opt.out_help("Run directory (re-running resumes it).", "train-ensemble"),
            ),
        ] = None,
        force: Annotated[
            bool, typer.Option("--force", help="Overwrite a run of another config.")
        ] = False,
        json_out: Annotated[
            bool, typer.Option("--json", help="Print the summary JSON on stdout.")
        ] = False,
        churn_by: opt.ChurnBy = None,
        top_k: opt.TopK = DEFAULT_TOP_K,
    ) -> None:
        """Train N replicas of one configuration and measure how differently they predict.

        Example: reprokit train-ensemble --replicas 4 --vary init,data-order --out runs/base

        Multitask: reprokit train-ensemble --tasks 3 --model mmoe --optimizer clippy

        Ranking churn: reprokit train-ensemble --data ml100k.parquet --churn-by user_id
        """
        from reprokit.config import resolve_config
        from reprokit.runners.ensemble import load_run_data, train_ensemble

        cfg = resolve_config(config, opt.run_overrides(**ctx.params))
        # bad data (and a bad --churn-by column) fails here, before any progress output
        executor = opt.executor_option(ctx)
        encoded, churn = load_run_data(cfg, churn_by, top_k)
        description = f"training (vary: {','.join(cfg.vary) or 'none'})"
        with TrainingProgress(description, cfg.replicas) as progress:
            summary = train_ensemble(
                cfg,
                out=out,
                workers=workers,
                executor=executor,
                force=force,
                progress=progress.replicas,
                encoded=encoded,
                churn=churn,
                step_progress=progress.steps,
            )
        err_console.print(summary_table(summary, title=f"train-ensemble: {summary['run_dir']}"))
        note = (summary.get("embedding") or {}).get("note")
        if note:
            err_console.print(f"note: {note}", markup=False, highlight=False)
        if json_out:
            print_json(summary)
