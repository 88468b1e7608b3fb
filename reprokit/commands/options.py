"""The training options that train-ensemble, compare-activations and stability declare alike.

Each option is a `typing.Annotated` alias (Typer reads the option from the annotation), so the
commands declare it as `epochs: Epochs = None` and its flag and help text live here once. Options
whose help differs per command stay in that command. `CONFIG_KEYS` maps every training option to its
config key and `run_overrides` applies it to a command's parsed parameters (`ctx.params`), so adding
a training option means one alias and one row here, plus the parameter in each command that takes it.
Those options default to None (the value comes from the config), so their help states the config's
default itself (`config_help`, read from the dataclasses in `reprokit.config`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape

from reprokit.components.tables import EMBEDDING_TABLES
from reprokit.config import RunConfig
from reprokit.errors import ReprokitError
from reprokit.sources import SOURCE_HELP

if TYPE_CHECKING:
    from reprokit.runners.executors import Executor

VARY_HELP = (
    "Comma-separated sources to vary: "
    + "; ".join(f"{name} ({text})" for name, text in SOURCE_HELP.items())
    + "; all; none (control arm: replicas must be bitwise identical)."
)
TASKS_HELP = (
    "Multitask training: N (built-in synthetic data with N label columns, all trained), 'all' "
    "(every label column of the dataset) or label names, e.g. label,label_5star. One head per task; "
    "the loss is the mean of the tasks' BCE."
)
OPTIMIZER_HELP = (
    "Optimizer: adagrad, adam, sgd, clippy (Adagrad + Clippy, paper preset), clippy-tfrs, "
    "adagrad+gradclip, adagrad+gradclip-layer, adagrad+agc, adagrad+agc-unitwise, adagrad+lamb."
)
MODEL_HELP = (
    "Architecture: mlp, shared-bottom or mmoe (experts, per-task gates and towers), deepfm, "
    "dcn-v2, wide-deep or dlrm."
)

#: Command parameter → dotted config key, for every training option a command may declare.
#: `tasks` is not here: one `--tasks` value sets several keys (`tasks_overrides`).
CONFIG_KEYS: dict[str, str] = {
    "data": "data.path",
    "split": "data.split",
    "eval_fraction": "data.eval_fraction",
    "storage": "data.storage",
    "label": "data.label",
    "synth_rows": "data.synth_rows",
    "replicas": "replicas",
    "vary": "vary",
    "seed": "seed",
    "device": "device",
    "engine": "engine",
    "threads": "threads",
    "activation": "model.activation",
    "embedding": "model.embedding",
    "embedding_dim": "model.embedding_dim",
    "field_dims": "model.field_dims",
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
    "model_factory": "model.factory",
    "initial_accumulator": "optim.initial_accumulator_value",
}


#: What a config key whose dataclass default is None means, for the help text.
NONE_DEFAULTS: dict[str, str] = {
    "data.path": "built-in synthetic",
    "data.label": "the dataset's first label column",
}


def config_default(key: str) -> Any:
    """The default of dotted config `key`, read from the config dataclasses (never restated)."""
    value: Any = RunConfig()
    for part in key.split("."):
        value = getattr(value, part)
    return value


def _default_text(param: str) -> str:
    """A config default as the option's syntax writes it: 64-32 for widths, init,dropout for
    sources, no-batch-norm for a flag that is off."""
    key = CONFIG_KEYS[param]
    value = config_default(key)
    if value is None:
        return NONE_DEFAULTS.get(key, "")
    if isinstance(value, bool):
        return ("" if value else "no-") + param.replace("_", "-")
    if isinstance(value, list):
        sep = "-" if all(isinstance(v, int) for v in value) else ","
        return sep.join(map(str, value)) or "none"
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in value.items()) or "none"
    return str(value)


def with_default(text: str, default: str) -> str:
    """`text` ending with Typer's `[default: ...]` (escaped: the help is Rich markup)."""
    return f"{text} {escape(f'[default: {default}]')}" if default else text


def config_help(param: str, text: str) -> str:
    """Help of a training option whose default (None on the command line) comes from the config:
    `text` plus the config's default, e.g. "Learning rate. [default: 0.05]"."""
    return with_default(text, _default_text(param))


def out_help(text: str, kind: str) -> str:
    """Help of `--out`: the run directory made when none is given (see `default_run_dir`)."""
    return with_default(text, f"runs/{kind}-YYYYmmdd-HHMMSS")


DataPath = Annotated[
    Path | None,
    typer.Option("--data", help=config_help("data", "Dataset in reprokit's parquet layout.")),
]
ConfigFile = Annotated[
    Path | None, typer.Option("--config", help="TOML config; options override it.")
]
Vary = Annotated[str | None, typer.Option("--vary", help=config_help("vary", VARY_HELP))]
Embedding = Annotated[
    str | None,
    typer.Option(
        "--embedding",
        help=config_help(
            "embedding",
            "Embedding table spec: one of "
            + ", ".join(EMBEDDING_TABLES.names)
            + " with its parameters, e.g. hashed:buckets=1000, qr:buckets=32, mde:alpha=0.5, "
            "collisionless:min_count=3,expire=86400, lma:memory=4096 (a spec with an unknown "
            "kind or parameter is refused with every kind's grammar).",
        ),
    ),
]
FieldDims = Annotated[
    str | None,
    typer.Option(
        "--field-dims",
        help=config_help(
            "field_dims",
            "Per-field embedding widths, e.g. user_id=16,item_id=8: those fields' rows that wide, "
            "projected to the embedding width (mixed dimensions; with table or mde only).",
        ),
    ),
]
EmbeddingDim = Annotated[
    int | None,
    typer.Option("--embedding-dim", help=config_help("embedding_dim", "Embedding width.")),
]
Hidden = Annotated[
    str | None, typer.Option("--hidden", help=config_help("hidden", "MLP widths, e.g. 256-128-64."))
]
Dropout = Annotated[
    float | None, typer.Option("--dropout", help=config_help("dropout", "Dropout probability."))
]
BatchNorm = Annotated[
    bool | None,
    typer.Option(
        "--batch-norm/--no-batch-norm",
        help=config_help("batch_norm", "BatchNorm after each hidden layer."),
    ),
]
Optimizer = Annotated[
    str | None, typer.Option("--optimizer", help=config_help("optimizer", OPTIMIZER_HELP))
]
Model = Annotated[str | None, typer.Option("--model", help=config_help("model", MODEL_HELP))]
ModelFactory = Annotated[
    str | None,
    typer.Option(
        "--model-factory",
        help=with_default(
            "Your own model instead of --model: path/to/file.py:build or package.module:build; "
            "build(schema) returns an nn.Module whose forward(cat, num) gives logits [batch] or "
            "[batch, tasks]. reprokit seeds its initialisation and dropout.",
            "none (the --model architecture)",
        ),
    ),
]
Experts = Annotated[
    int | None, typer.Option("--experts", help=config_help("experts", "MMoE experts."))
]
Tower = Annotated[
    str | None,
    typer.Option("--tower", help=config_help("tower", "Per-task tower widths, e.g. 16-8.")),
]
Tasks = Annotated[
    str | None, typer.Option("--tasks", help=with_default(TASKS_HELP, "1, the --label column"))
]
LearningRate = Annotated[
    float | None, typer.Option("--lr", help=config_help("lr", "Learning rate."))
]
BatchSize = Annotated[
    int | None, typer.Option("--batch-size", help=config_help("batch_size", "Training batch size."))
]
Epochs = Annotated[
    int | None, typer.Option("--epochs", help=config_help("epochs", "Training epochs."))
]
Split = Annotated[
    str | None, typer.Option("--split", help=config_help("split", "random or temporal."))
]
EvalFraction = Annotated[
    float | None,
    typer.Option(
        "--eval-fraction",
        help=config_help("eval_fraction", "Share of the rows held out for evaluation."),
    ),
]
Storage = Annotated[
    str | None,
    typer.Option(
        "--storage",
        help=config_help(
            "storage",
            "Where the encoded data lives while training: memory, mapped (memory-mapped files "
            "built piece by piece in a cache, for data larger than memory; REPROKIT_CACHE_DIR) "
            "or auto (mapped above 1 GiB of encoded arrays).",
        ),
    ),
]
Label = Annotated[
    str | None, typer.Option("--label", help=config_help("label", "Label column to train on."))
]
SynthRows = Annotated[
    int | None,
    typer.Option(
        "--synth-rows", help=config_help("synth_rows", "Rows of the built-in synthetic dataset.")
    ),
]
Seed = Annotated[
    int | None, typer.Option("--seed", help=config_help("seed", "Base seed of every source."))
]
Device = Annotated[
    str | None, typer.Option("--device", help=config_help("device", "cpu or cuda[:N]."))
]
Engine = Annotated[
    str | None, typer.Option("--engine", help=config_help("engine", "auto, process or vectorized."))
]
Threads = Annotated[
    int | None,
    typer.Option("--threads", help=config_help("threads", "Intra-op threads per replica.")),
]
Workers = Annotated[int, typer.Option("--workers", "-j", help="Parallel worker processes.")]
Backend = Annotated[
    str,
    typer.Option(
        "--backend",
        help="Where replica tasks run: local (this machine, --workers processes) or ray (Ray "
        "tasks, on this machine or a cluster: --ray-address; pip install 'reprokit[ray]'). "
        "Both give the same bytes; Ray's own logs show with reprokit --verbose.",
    ),
]
RayAddress = Annotated[
    str | None,
    typer.Option(
        "--ray-address",
        help="With --backend ray: the cluster, HOST:PORT, ray://HOST:PORT or auto (the one this "
        "machine belongs to). Default: a Ray instance started here for this command, bound to "
        "127.0.0.1, running --workers tasks at once.",
        show_default=False,
    ),
]
ReplicasPerTask = Annotated[
    int | None,
    typer.Option(
        "--replicas-per-task",
        min=1,
        help="With --backend ray and the vectorized engine: replicas stacked in one task "
        "(default: the stack split evenly over the tasks the cluster runs at once). The process "
        "engine trains one replica per task.",
        show_default=False,
    ),
]
ChurnBy = Annotated[
    str | None,
    typer.Option(
        "--churn-by",
        help="Column naming each example's group (e.g. user_id): adds top-k churn per group.",
        show_default=False,
    ),
]
TopK = Annotated[int, typer.Option("--top-k", help="k of the top-k churn (with --churn-by).")]


def executor_option(ctx: typer.Context) -> Executor:
    """The executor of a training command's `--backend`, `--ray-address`, `--replicas-per-task`
    and `--workers` (bad combinations fail here, before any data is read); a Ray instance it
    starts stops when the command ends. `reprokit --verbose` lets Ray's own logs through."""
    from reprokit.runners.executors import make_executor

    params = ctx.params
    executor = make_executor(
        params.get("backend") or "local",
        workers=params.get("workers") or 1,
        ray_address=params.get("ray_address"),
        replicas_per_task=params.get("replicas_per_task"),
        verbose=bool(ctx.find_root().params.get("verbose")),
    )
    close = getattr(executor, "close", None)
    if callable(close):
        ctx.call_on_close(close)
    return executor


def run_overrides(**options: Any) -> dict[str, Any]:
    """Map CLI option values (None = not given) to dotted config keys.

    Other parameters (`--out`, `--workers`, ...) are ignored, so a command passes all of
    `ctx.params`. Paths become strings, as a TOML config would hold them.
    """
    out = {
        CONFIG_KEYS[k]: os.fspath(v) if isinstance(v, os.PathLike) else v
        for k, v in options.items()
        if k in CONFIG_KEYS and v is not None
    }
    out.update(tasks_overrides(options.get("tasks"), options.get("data") is not None))
    return out


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
