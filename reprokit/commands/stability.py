"""`reprokit stability`: optimizers × learning-rate multipliers × replicas, divergence and PD."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from reprokit.commands.common import cli_errors, err_console, print_json
from reprokit.commands.train import (
    MODEL_HELP,
    TASKS_HELP,
    VARY_HELP,
    make_progress,
    run_overrides,
)


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


def render_stability_table(doc: dict[str, Any]) -> Table:
    """One row per cell: divergence, spikes, accuracy per task, PD, σ."""
    labels = doc.get("labels") or ["label"]
    table = Table(
        title=f"stability: {doc.get('run_dir', '')}",
        title_justify="left",
        caption=(
            f"{doc.get('replicas')} replicas per cell, base lr {doc.get('base_lr')}; AUC / log-loss "
            "mean ± std and PD over the replicas that did not diverge"
        ),
    )
    table.add_column("optimizer", overflow="fold")
    for name in ("lr×", "diverged", "why", "spikes/rec"):
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
        optimizers: str = typer.Option(
            "adagrad,clippy,adagrad+gradclip",
            "--optimizers",
            help="Comma-separated optimizers (names of train-ensemble --optimizer).",
        ),
        lr_multipliers: str = typer.Option(
            "1,2,4,8", "--lr-multipliers", help="Comma-separated multiples of the base --lr."
        ),
        data: Path | None = typer.Option(
            None,
            "--data",
            help="Dataset in reprokit's parquet layout (default: built-in synthetic).",
        ),
        config: Path | None = typer.Option(
            None, "--config", help="TOML config; options override it."
        ),
        replicas: int | None = typer.Option(None, "--replicas", "-n", help="Replicas per cell."),
        vary: str | None = typer.Option(None, "--vary", help=VARY_HELP),
        model: str | None = typer.Option(None, "--model", help=MODEL_HELP),
        tasks: str | None = typer.Option(None, "--tasks", help=TASKS_HELP),
        experts: int | None = typer.Option(None, "--experts", help="MMoE experts."),
        tower: str | None = typer.Option(None, "--tower", help="Per-task tower widths, e.g. 16-8."),
        activation: str | None = typer.Option(None, "--activation", help="Activation spec."),
        embedding_dim: int | None = typer.Option(None, "--embedding-dim", help="Embedding width."),
        hidden: str | None = typer.Option(None, "--hidden", help="MLP widths, e.g. 256-128-64."),
        dropout: float | None = typer.Option(None, "--dropout", help="Dropout probability."),
        batch_norm: bool | None = typer.Option(
            None, "--batch-norm/--no-batch-norm", help="BatchNorm after each hidden layer."
        ),
        lr: float | None = typer.Option(None, "--lr", help="Base learning rate (multiplied)."),
        initial_accumulator: float | None = typer.Option(
            None,
            "--initial-accumulator",
            help="Accumulator start of every Adagrad-family optimizer (default: 0 for adagrad, "
            "0.1 for clippy and adagrad+*).",
        ),
        batch_size: int | None = typer.Option(None, "--batch-size", help="Training batch size."),
        epochs: int | None = typer.Option(None, "--epochs", help="Training epochs."),
        synth_rows: int | None = typer.Option(
            None, "--synth-rows", help="Rows of the built-in synthetic dataset."
        ),
        seed: int | None = typer.Option(None, "--seed", help="Base seed of every source."),
        engine: str | None = typer.Option(None, "--engine", help="auto, process or vectorized."),
        threads: int | None = typer.Option(None, "--threads", help="Intra-op threads per replica."),
        workers: int = typer.Option(1, "--workers", "-j", help="Parallel worker processes."),
        out: Path | None = typer.Option(
            None, "--out", "-o", help="Run directory (re-running resumes it, cell by cell)."
        ),
        force: bool = typer.Option(False, "--force", help="Overwrite a run of another study."),
        json_out: bool = typer.Option(False, "--json", help="Print stability.json on stdout."),
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
        cfg = resolve_config(
            config,
            run_overrides(
                data=str(data) if data else None,
                replicas=replicas,
                vary=vary,
                model=model,
                tasks=tasks,
                experts=experts,
                tower=tower,
                activation=activation,
                embedding_dim=embedding_dim,
                hidden=hidden,
                dropout=dropout,
                batch_norm=batch_norm,
                lr=lr,
                initial_accumulator=initial_accumulator,
                batch_size=batch_size,
                epochs=epochs,
                synth_rows=synth_rows,
                seed=seed,
                engine=engine,
                threads=threads,
            ),
        )
        check_study(cfg, opts, mults)
        encoded = load_encoded(cfg.data)  # bad data fails before any progress output
        total = len(opts) * len(mults) * cfg.replicas
        with make_progress() as bar:
            task = bar.add_task("stability", total=total)

            def on_progress(done: int, total_: int, cell: str) -> None:
                bar.update(task, completed=done, total=total_, description=f"stability: {cell}")

            doc = run_stability(
                cfg,
                opts,
                mults,
                out=out,
                workers=workers,
                force=force,
                progress=on_progress,
                encoded=encoded,
            )
        err_console.print(render_stability_table(doc))
        err_console.print(f"loss curves: {Path(doc['run_dir']) / doc['plots'][0]}")
        if json_out:
            print_json(doc)
