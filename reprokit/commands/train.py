"""`reprokit train-ensemble`: N replicas of one config, `--vary` picks the nondeterminism sources."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from reprokit.commands.common import cli_errors, err_console, print_json
from reprokit.errors import ReprokitError
from reprokit.sources import SOURCE_HELP

VARY_HELP = (
    "Comma-separated sources to vary: "
    + "; ".join(f"{name} ({text})" for name, text in SOURCE_HELP.items())
    + "; all; none (control arm: replicas must be bitwise identical)."
)


def run_overrides(**options: Any) -> dict[str, Any]:
    """Map CLI option values (None = not given) to dotted config keys."""
    mapping = {
        "data": "data.path",
        "split": "data.split",
        "label": "data.label",
        "synth_rows": "data.synth_rows",
        "replicas": "replicas",
        "vary": "vary",
        "seed": "seed",
        "device": "device",
        "engine": "engine",
        "threads": "threads",
        "activation": "model.activation",
        "embedding_dim": "model.embedding_dim",
        "hidden": "model.hidden",
        "dropout": "model.dropout",
        "batch_norm": "model.batch_norm",
        "optimizer": "optim.name",
        "lr": "optim.lr",
        "batch_size": "optim.batch_size",
        "epochs": "optim.epochs",
        "model": "model.arch",
        "experts": "model.experts",
        "tower": "model.tower",
        "initial_accumulator": "optim.initial_accumulator_value",
    }
    out = {mapping[k]: v for k, v in options.items() if k in mapping and v is not None}
    out.update(tasks_overrides(options.get("tasks"), options.get("data") is not None))
    return out


OPTIMIZER_HELP = (
    "Optimizer: adagrad, adam, sgd, clippy (Adagrad + Clippy, paper preset), clippy-tfrs, "
    "adagrad+gradclip, adagrad+gradclip-layer, adagrad+agc, adagrad+agc-unitwise, adagrad+lamb."
)
TASKS_HELP = (
    "Multitask training: N (built-in synthetic data with N label columns, all trained), 'all' "
    "(every label column of the dataset) or label names, e.g. label,label_5star. One head per task; "
    "the loss is the mean of the tasks' BCE."
)
MODEL_HELP = "Architecture: mlp, shared-bottom or mmoe (experts, per-task gates and towers)."


def tasks_overrides(tasks: str | None, has_data: bool) -> dict[str, Any]:
    """`--tasks` → config overrides (`data.synth_tasks`, `data.labels`)."""
    if tasks is None:
        return {}
    text = tasks.strip()
    if text.isdigit():
        n = int(text)
        if not 1 <= n <= 16:
            raise ReprokitError(f"--tasks {text}: the synthetic dataset has 1 to 16 tasks")
        if has_data:
            raise ReprokitError(
                "--tasks N sets the number of synthetic tasks; with --data name the label "
                "columns (e.g. --tasks label,label_1) or use --tasks all"
            )
        return {"data.synth_tasks": n, "data.labels": ["all"] if n > 1 else []}
    names = [t.strip() for t in text.split(",") if t.strip()]
    if not names:
        raise ReprokitError("--tasks names no label column")
    return {"data.labels": names}


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


def make_progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err_console,
        transient=False,
    )


def register(app: typer.Typer) -> None:
    @app.command("train-ensemble")
    @cli_errors
    def train_ensemble_command(
        data: Path | None = typer.Option(
            None,
            "--data",
            help="Dataset in reprokit's parquet layout (default: built-in synthetic).",
        ),
        config: Path | None = typer.Option(
            None, "--config", help="TOML config; options override it."
        ),
        replicas: int | None = typer.Option(None, "--replicas", "-n", help="Number of replicas."),
        vary: str | None = typer.Option(None, "--vary", help=VARY_HELP),
        activation: str | None = typer.Option(
            None, "--activation", help="Activation spec, e.g. relu, smelu:beta=0.5, gelu."
        ),
        embedding_dim: int | None = typer.Option(None, "--embedding-dim", help="Embedding width."),
        hidden: str | None = typer.Option(None, "--hidden", help="MLP widths, e.g. 256-128-64."),
        dropout: float | None = typer.Option(None, "--dropout", help="Dropout probability."),
        batch_norm: bool | None = typer.Option(
            None, "--batch-norm/--no-batch-norm", help="BatchNorm after each hidden layer."
        ),
        optimizer: str | None = typer.Option(None, "--optimizer", help=OPTIMIZER_HELP),
        initial_accumulator: float | None = typer.Option(
            None,
            "--initial-accumulator",
            help="Adagrad-family accumulator start (default: 0 for adagrad, 0.1 for the others).",
        ),
        model: str | None = typer.Option(None, "--model", help=MODEL_HELP),
        experts: int | None = typer.Option(None, "--experts", help="MMoE experts."),
        tower: str | None = typer.Option(None, "--tower", help="Per-task tower widths, e.g. 16-8."),
        tasks: str | None = typer.Option(None, "--tasks", help=TASKS_HELP),
        lr: float | None = typer.Option(None, "--lr", help="Learning rate."),
        batch_size: int | None = typer.Option(None, "--batch-size", help="Training batch size."),
        epochs: int | None = typer.Option(None, "--epochs", help="Training epochs."),
        split: str | None = typer.Option(None, "--split", help="random or temporal."),
        label: str | None = typer.Option(None, "--label", help="Label column to train on."),
        synth_rows: int | None = typer.Option(
            None, "--synth-rows", help="Rows of the built-in synthetic dataset."
        ),
        seed: int | None = typer.Option(None, "--seed", help="Base seed of every source."),
        device: str | None = typer.Option(None, "--device", help="cpu or cuda[:N]."),
        engine: str | None = typer.Option(None, "--engine", help="auto, process or vectorized."),
        threads: int | None = typer.Option(None, "--threads", help="Intra-op threads per replica."),
        workers: int = typer.Option(1, "--workers", "-j", help="Parallel worker processes."),
        out: Path | None = typer.Option(
            None, "--out", "-o", help="Run directory (re-running resumes it)."
        ),
        force: bool = typer.Option(False, "--force", help="Overwrite a run of another config."),
        json_out: bool = typer.Option(False, "--json", help="Print the summary JSON on stdout."),
    ) -> None:
        """Train N replicas of one configuration and measure how differently they predict.

        Example: reprokit train-ensemble --replicas 4 --vary init,data-order --out runs/base

        Multitask: reprokit train-ensemble --tasks 3 --model mmoe --optimizer clippy
        """
        from reprokit.config import resolve_config
        from reprokit.runners.ensemble import train_ensemble

        cfg = resolve_config(
            config,
            run_overrides(
                data=str(data) if data else None,
                replicas=replicas,
                vary=vary,
                activation=activation,
                embedding_dim=embedding_dim,
                hidden=hidden,
                dropout=dropout,
                batch_norm=batch_norm,
                optimizer=optimizer,
                initial_accumulator=initial_accumulator,
                model=model,
                experts=experts,
                tower=tower,
                tasks=tasks,
                lr=lr,
                batch_size=batch_size,
                epochs=epochs,
                split=split,
                label=label,
                synth_rows=synth_rows,
                seed=seed,
                device=device,
                engine=engine,
                threads=threads,
            ),
        )
        from reprokit.data.encoding import load_encoded

        encoded = load_encoded(cfg.data)  # bad data fails here, before any progress output
        with make_progress() as bar:
            task = bar.add_task(
                f"training (vary: {','.join(cfg.vary) or 'none'})", total=cfg.replicas
            )

            def on_progress(done: int, total: int, _metrics: dict[str, Any]) -> None:
                bar.update(task, completed=done, total=total)

            summary = train_ensemble(
                cfg, out=out, workers=workers, force=force, progress=on_progress, encoded=encoded
            )
        err_console.print(summary_table(summary, title=f"train-ensemble: {summary['run_dir']}"))
        if json_out:
            print_json(summary)
