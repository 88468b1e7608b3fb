"""`reprokit stability`: optimizers × learning-rate multipliers × replicas, divergence and PD."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from reprokit.commands import options as opt
from reprokit.commands.common import cli_errors, err_console, print_json
from reprokit.commands.progress import TrainingProgress


def _pm(entry: dict[str, Any] | None, digits: int = 4) -> str:
    entry = entry or {}
    mean, std = entry.get("mean"), entry.get("std")
    if mean is None or not math.isfinite(float(mean)):
        return "n/a"
    text = f"{float(mean):.{digits}f}"
    if std is not None and math.isfinite(float(std)):
        text += f"±{float(std):.{digits}f}"
    return text


def _num(value: Any, digits: int = 4) -> str:
    if value is None or not math.isfinite(float(value)):
        return "n/a"
    return f"{float(value):.{digits}g}"


def _accumulator(cell: dict[str, Any]) -> str:
    """The cell's A0; '—' for optimizers without an accumulator (adam, sgd)."""
    value = cell.get("initial_accumulator_value")
    return "—" if value is None else f"{float(value):g}"


def render_stability_table(doc: dict[str, Any]) -> Table:
    """One row per cell: divergence, spikes, accuracy per task, PD, σ."""
    labels = doc.get("labels") or ["label"]
    table = Table(
        title=f"stability: {doc.get('run_dir', '')}",
        title_justify="left",
        caption=(
            f"{doc.get('replicas')} replicas per cell, base lr {doc.get('base_lr')}, "
            f"Adagrad-family accumulator start A0 {_num(doc.get('initial_accumulator_value'))}; "
            "AUC / log-loss mean ± std and PD over the replicas that did not diverge"
        ),
    )
    table.add_column("optimizer", overflow="fold")
    for name in ("lr×", "A0", "diverged", "why", "spikes/rec"):
        table.add_column(name, justify="right", overflow="fold")
    for label in labels:
        table.add_column(f"AUC {label}", justify="right", overflow="fold")
    table.add_column("log-loss", justify="right", overflow="fold")
    table.add_column("PD rel", justify="right", overflow="fold")
    table.add_column("σ mean/clip", justify="right", overflow="fold")
    for cell in doc["cells"]:
        div = cell["diverged"]
        reasons = " ".join(f"{k}:{v}" for k, v in sorted(div.get("reasons", {}).items()))
        diverged = f"{div['count']}/{cell['replicas']}"
        spikes = cell["spikes"]
        sigma = cell.get("sigma")
        sig = f"{sigma['mean']:.3f}/{sigma['clipped_fraction'] * 100:.0f}%" if sigma else "—"
        aucs = [_pm((cell["tasks"].get(label) or {}).get("auc"), 3) for label in labels]
        style = "yellow" if div["count"] else None
        table.add_row(
            cell["optimizer"],
            f"{cell['lr_multiplier']:g}",
            _accumulator(cell),
            diverged,
            reasons or "—",
            f"{spikes['total']}/{spikes['recovered']}",
            *aucs,
            _pm(cell.get("logloss"), 3),
            _num((cell.get("pd") or {}).get("rel"), 3),
            sig,
            style=style,
        )
    return table


def register(app: typer.Typer) -> None:
    @app.command("stability")
    @cli_errors
    def stability_command(
        ctx: typer.Context,
        optimizers: Annotated[
            str,
            typer.Option(
                "--optimizers",
                help="Comma-separated optimizers (names of train-ensemble --optimizer).",
            ),
        ] = "adagrad,clippy,adagrad+gradclip",
        lr_multipliers: Annotated[
            str,
            typer.Option("--lr-multipliers", help="Comma-separated multiples of the base --lr."),
        ] = "1,2,4,8",
        data: opt.DataPath = None,
        config: opt.ConfigFile = None,
        replicas: Annotated[
            int | None,
            typer.Option(
                "--replicas", "-n", help=opt.config_help("replicas", "Replicas per cell.")
            ),
        ] = None,
        vary: opt.Vary = None,
        model: opt.Model = None,
        tasks: opt.Tasks = None,
        experts: opt.Experts = None,
        tower: opt.Tower = None,
        activation: Annotated[
            str | None,
            typer.Option("--activation", help=opt.config_help("activation", "Activation spec.")),
        ] = None,
        embedding_dim: opt.EmbeddingDim = None,
        hidden: opt.Hidden = None,
        dropout: opt.Dropout = None,
        batch_norm: opt.BatchNorm = None,
        lr: Annotated[
            float | None,
            typer.Option("--lr", help=opt.config_help("lr", "Base learning rate (multiplied).")),
        ] = None,
        initial_accumulator: Annotated[
            float | None,
            typer.Option(
                "--initial-accumulator",
                help="Accumulator start A0 shared by every Adagrad-family cell (adagrad, "
                "clippy*, adagrad+*), so their AUCs compare clipping, not A0 (default: the "
                "config's optim.initial_accumulator_value, else 0.1, the Clippy paper's).",
            ),
        ] = None,
        batch_size: opt.BatchSize = None,
        epochs: opt.Epochs = None,
        synth_rows: opt.SynthRows = None,
        seed: opt.Seed = None,
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
                    "Run directory (re-running resumes it, cell by cell).", "stability"
                ),
            ),
        ] = None,
        force: Annotated[
            bool, typer.Option("--force", help="Overwrite a run of another study.")
        ] = False,
        json_out: Annotated[
            bool, typer.Option("--json", help="Print stability.json on stdout.")
        ] = False,
    ) -> None:
        """Training stability: how often each optimizer diverges as the learning rate grows.

        Every (optimizer, lr multiplier) cell trains --replicas replicas (a train-ensemble run in
        RUN_DIR/cells/); the table shows the divergence ratio, loss spikes (and how many
        recovered), final AUC / log-loss per task and PD over the replicas that did not diverge,
        and Clippy's clipping factor σ. RUN_DIR/loss_curves.png marks the events;
        `reprokit report RUN_DIR` renders the study.

        Example: reprokit stability --optimizers adagrad,clippy --lr-multipliers 1,4,16
        --tasks 3 --model mmoe --replicas 4 --out runs/stability
        """
        from reprokit.config import resolve_config
        from reprokit.data.encoding import load_encoded
        from reprokit.runners.stability import (
            check_study,
            parse_multipliers,
            parse_optimizers,
            run_stability,
        )

        opts = parse_optimizers(optimizers)
        mults = parse_multipliers(lr_multipliers)
        cfg = resolve_config(config, opt.run_overrides(**ctx.params))
        check_study(cfg, opts, mults, initial_accumulator)
        executor = opt.executor_option(ctx)
        encoded = load_encoded(cfg.data)  # bad data fails before any progress output
        total = len(opts) * len(mults) * cfg.replicas
        with TrainingProgress("stability", total) as progress:

            def on_replica(done: int, total_: int, info: dict[str, Any]) -> None:
                metrics = {k: v for k, v in info.items() if k != "cell"}
                progress.replicas(done, total_, metrics, description=f"stability: {info['cell']}")

            doc = run_stability(
                cfg,
                opts,
                mults,
                out=out,
                workers=workers,
                executor=executor,
                force=force,
                encoded=encoded,
                initial_accumulator=initial_accumulator,
                replica_progress=on_replica,
                step_progress=progress.steps,
            )
        err_console.print(render_stability_table(doc))
        err_console.print(f"loss curves: {Path(doc['run_dir']) / doc['plots'][0]}")
        if json_out:
            print_json(doc)
