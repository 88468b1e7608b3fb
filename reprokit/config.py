"""Typed run configuration: dataclasses, TOML files, CLI overrides and validation.

A config resolves in three layers: defaults < `--config FILE.toml` < explicit CLI options. The resolved
config is stored in the manifest, and a resumed run must resolve to the same one.
"""

from __future__ import annotations

import dataclasses
import math
import os
import tomllib
import types
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from reprokit.components.architectures import ARCHITECTURES
from reprokit.components.optimizers import OPTIMIZERS
from reprokit.components.tables import EMBEDDING_TABLES, check_table_shape, parse_table_spec
from reprokit.errors import ReprokitError
from reprokit.sources import parse_vary

#: Model architectures (`model.arch`), from the torch-free registry.
ARCHS = ARCHITECTURES.names
#: Embedding tables (`model.embedding`), from the torch-free registry.
EMBEDDINGS = EMBEDDING_TABLES.names


#: `data.storage` values (see `DataConfig.storage`).
STORAGES = ("auto", "memory", "mapped")


@dataclass
class DataConfig:
    """Where the data comes from and how it is split. `path=None` means built-in synthetic data."""

    path: str | None = None
    split: str = "random"  # random | temporal
    eval_fraction: float = 0.2
    split_seed: int = 0
    label: str | None = None  # which label column to train on (default: the schema's first)
    synth_rows: int = 20_000
    synth_fields: int = 8
    synth_cardinality: int = 1000
    synth_numeric: int = 4
    synth_seed: int = 0
    synth_tasks: int = 1  # label columns of the built-in synthetic dataset: label, label_1, ...
    # Label columns to train on together (a multitask model with one head each; the first is the
    # primary task, whose metrics fill the summary's top-level keys). Empty: `[label]`, i.e. one
    # task, the schema's first label unless `label` names another; ["all"]: every label column.
    labels: list[str] = field(default_factory=list)
    # Where the encoded split lives while training: memory (a DataFrame, then arrays), mapped
    # (encoded piece by piece into memory-mapped .npy files in a cache, for data larger than one
    # DataFrame; reprokit.data.mapped) or auto (mapped when the encoded arrays would pass 1 GiB).
    # The arrays are the same either way, so it is not part of what a resume compares.
    storage: str = "auto"


@dataclass
class ModelConfig:
    embedding_dim: int = 8
    hidden: list[int] = field(default_factory=lambda: [64, 32])
    activation: str = "relu"
    dropout: float = 0.0
    batch_norm: bool = False  # BatchNorm1d after each hidden layer (FuxiCTR's `batch_norm` option)
    embedding: str = "table"  # pluggable: later hashed / collisionless / mixed-dimension
    # Explicit per-field widths {field name: width} (TOML `[model.field_dims]` or an inline table,
    # `--field-dims user_id=16,item_id=8`): the table becomes mixed-dimension, each named field's
    # rows that wide and projected to `embedding_dim` (reprokit.nn.mde); fields not named keep
    # their kind's width. Only with the `table` and `mde` kinds; empty: no per-field widths.
    field_dims: dict[str, int] = field(default_factory=dict)
    # mlp: one MLP, one linear head with an output per task (CTRModel);
    # shared-bottom: the `hidden` MLP shared by all tasks, then one `tower` MLP + head per task;
    # mmoe: `experts` MLPs of widths `hidden`, one softmax gate per task mixing them, then towers.
    arch: str = "mlp"
    experts: int = 4
    tower: list[int] = field(default_factory=lambda: [16])
    # dcn-v2: full-rank cross layers beside the deep MLP (FuxiCTR's default 3)
    cross_layers: int = 3
    # The user's own model instead of `arch`: "path/to/file.py:build" or "package.module:build",
    # build(schema) -> nn.Module with forward(cat, num) -> logits (reprokit.nn.factory). Empty: none.
    factory: str = ""


@dataclass
class OptimConfig:
    name: str = "adagrad"  # any name of reprokit.optim.OPTIMIZER_NAMES (adagrad, clippy, ...)
    lr: float = 0.05
    batch_size: int = 256
    epochs: int = 2
    weight_decay: float = 0.0
    # Adagrad-family accumulator start A0 (adagrad, clippy*, adagrad+*). None: the optimizer's
    # default, declared once in reprokit.components.optimizers (`accumulator`).
    initial_accumulator_value: float | None = None


@dataclass
class DivergenceConfig:
    """Loss-divergence detection (reprokit.training.divergence; docs/methods.md §4).

    A *spike* is a step whose loss has a robust z-score (loss − median) / (1.4826·MAD) above
    `threshold` against the trailing `window` of normal steps (at least `min_history` of them;
    before that, a loss above `warmup_factor` × the median of the steps so far). It *recovers*
    when the loss comes back under median + `recover_z`·scale of the pre-spike window within
    `recovery_steps` steps; otherwise the replica *diverged* (full divergence), as it does on a
    non-finite loss or gradient, or when it *collapsed*: after a spike (or with constant
    predictions) every task's evaluation AUC ends within max(`collapse_auc`, 3σ₀) of 0.5, σ₀ the
    standard deviation of a random ranking's AUC on the evaluation labels (the paper's "AUC drops
    to 0.5").
    """

    window: int = 50
    threshold: float = 6.0
    min_history: int = 20
    recovery_steps: int = 50
    recover_z: float = 3.0
    warmup_factor: float = 3.0
    collapse_auc: float = 0.01


@dataclass
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    divergence: DivergenceConfig = field(default_factory=DivergenceConfig)
    replicas: int = 4
    vary: list[str] = field(default_factory=lambda: ["init"])
    seed: int = 0
    device: str = "cpu"
    threads: int = 1  # intra-op threads per replica when `threads` is not varied
    max_threads: int = 4  # thread counts drawn from 1..max_threads when `threads` is varied
    async_staleness: int = 2  # k of the `async` source: staleness drawn from 0..k steps
    engine: str = "auto"  # auto | process | vectorized

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def validate(self) -> RunConfig:
        """Check types, ranges and names; return self with its specs in canonical form.

        The one validation path: the CLI, TOML files and the Python API all come here, so each
        refuses the same things with the same sentence. Canonical forms (`vary` as an ordered list
        of sources, the activation as `smelu:beta=1`, the optimizer name in lower case) make a
        resumed run accept equivalent spellings.
        """
        check_types(self)  # also splits a comma-separated `vary` string into its sources
        self.optim.name = self.optim.name.strip().lower()
        self.device = self.device.strip().lower()
        non_finite = [
            key
            for key, value in _leaves(self)
            if isinstance(value, float) and not math.isfinite(value)
        ]
        if non_finite:
            raise ReprokitError(f"{non_finite[0]} must be a finite number")
        checks = [
            (self.replicas >= 1, "--replicas must be at least 1"),
            (self.seed >= 0, f"--seed must be >= 0, got {self.seed}"),
            (self.optim.lr > 0, "the learning rate must be positive"),
            (self.optim.batch_size >= 1, "the batch size must be at least 1"),
            (self.optim.epochs >= 1, "epochs must be at least 1"),
            (0.0 <= self.model.dropout < 1.0, "dropout must be in [0, 1)"),
            (self.model.embedding_dim >= 1, "the embedding dimension must be at least 1"),
            (all(h >= 1 for h in self.model.hidden), "hidden layer widths must be positive"),
            (0.0 < self.data.eval_fraction < 1.0, "the evaluation fraction must be in (0, 1)"),
            (self.data.split in ("random", "temporal"), "split must be 'random' or 'temporal'"),
            (
                self.data.storage in STORAGES,
                f"unknown storage {self.data.storage!r}; choose {', '.join(STORAGES)}",
            ),
            (self.threads >= 1 and self.max_threads >= 1, "thread counts must be at least 1"),
            (self.async_staleness >= 0, "async staleness must be >= 0"),
            (
                self.optim.name in OPTIMIZERS,
                f"unknown optimizer {self.optim.name!r}; choose one of "
                + ", ".join(OPTIMIZERS.names),
            ),
            (
                self.optim.initial_accumulator_value is None
                or self.optim.initial_accumulator_value >= 0,
                "the initial accumulator value must be >= 0",
            ),
            (self.optim.weight_decay >= 0, "weight decay must be >= 0"),
            (
                self.model.arch in ARCHS,
                f"unknown model {self.model.arch!r}; choose {', '.join(ARCHS)}",
            ),
            (self.model.experts >= 1, "the number of experts must be at least 1"),
            (all(h >= 1 for h in self.model.tower), "tower layer widths must be positive"),
            (self.model.cross_layers >= 1, "the number of cross layers must be at least 1"),
            (1 <= self.data.synth_tasks <= 16, "the synthetic dataset needs 1 to 16 tasks"),
            (
                len(set(self.data.labels)) == len(self.data.labels)
                and ("all" not in self.data.labels or self.data.labels == ["all"]),
                "label columns must be distinct, or just 'all'",
            ),
            (self.divergence.window >= 3, "the divergence window must be at least 3 steps"),
            (
                3 <= self.divergence.min_history <= self.divergence.window,
                "the divergence min_history must be between 3 and the window",
            ),
            (self.divergence.threshold > 0, "the spike threshold must be positive"),
            (
                0 <= self.divergence.recover_z <= self.divergence.threshold,
                "recover_z must be between 0 and the spike threshold",
            ),
            (self.divergence.recovery_steps >= 1, "recovery_steps must be at least 1"),
            (0 <= self.divergence.collapse_auc < 0.5, "collapse_auc must be in [0, 0.5)"),
            (self.divergence.warmup_factor > 1, "the warm-up spike factor must be above 1"),
            (
                self.engine in ("auto", "process", "vectorized"),
                f"unknown engine {self.engine!r}; choose auto, process or vectorized",
            ),
            (
                self.device == "cpu" or self.device.startswith("cuda"),
                f"unknown device {self.device!r}; use cpu or cuda[:N]",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ReprokitError(message)
        self.vary = list(parse_vary(self.vary, self.device))
        from reprokit.nn.registry import parse_spec

        # an unknown activation fails before any work starts; the stored form is canonical
        self.model.activation = str(parse_spec(self.model.activation))
        self.model.embedding = str(parse_table_spec(self.model.embedding))
        check_table_shape(self.model.embedding, self.model.embedding_dim)
        check_field_dims(self.model.field_dims, self.model.embedding)
        check_model_choice(self.model)
        check_device(self.device)
        return self


def check_model_choice(model: ModelConfig) -> None:
    """Refuse an embedding kind the architecture's per-id linear part cannot use, and a model
    factory combined with options only reprokit's own models read (one sentence each)."""
    from reprokit.components.architectures import linear_table

    model.factory = model.factory.strip()
    if not model.factory:
        linear_table(model.arch, model.embedding)
        return
    from reprokit.components.architectures import parse_factory_spec

    parse_factory_spec(model.factory)
    defaults = ModelConfig()
    if model.arch != defaults.arch:
        raise ReprokitError(
            f"model.factory builds the model, so model.arch ({model.arch!r}) does not apply; "
            "leave it at its default"
        )
    if model.embedding != defaults.embedding or model.field_dims:
        raise ReprokitError(
            "model.factory builds the model with its own embeddings, so model.embedding and "
            "model.field_dims do not apply; leave them at their defaults"
        )
    if model.dropout or model.batch_norm:
        raise ReprokitError(
            "model.factory builds the model, so model.dropout and model.batch_norm do not apply "
            "(its nn.Dropout modules keep their p, on the dropout source); leave them at their "
            "defaults"
        )


#: The embedding kinds `model.field_dims` applies to (both end up as reprokit.nn.mde's table).
FIELD_DIMS_KINDS = ("table", "mde")


def check_field_dims(
    field_dims: dict[str, int], embedding: str, field_names: list[str] | None = None
) -> None:
    """Refuse per-field widths that are not positive, that come with a kind other than `table` or
    `mde`, or (given the data's `field_names`, known at train time) that name fields the data
    does not have; one sentence each, the same from the CLI, a TOML file and the Python API."""
    if not field_dims:
        return
    for name, width in field_dims.items():
        if width < 1:
            raise ReprokitError(
                f"model.field_dims.{name} must be a positive width (at least 1), got {width}"
            )
    kind = EMBEDDING_TABLES.get(embedding).name
    if kind not in FIELD_DIMS_KINDS:
        raise ReprokitError(
            f"model.field_dims (per-field widths) works with the {' and '.join(FIELD_DIMS_KINDS)} "
            f"embeddings, not {embedding!r}"
        )
    if field_names is not None:
        unknown = [name for name in field_dims if name not in field_names]
        if unknown:
            raise ReprokitError(
                f"model.field_dims names {', '.join(map(repr, unknown))}, which the data does not "
                f"have; its categorical fields: {', '.join(field_names) or '(none)'}"
            )


def check_device(device: str) -> None:
    """Refuse a CUDA device this torch cannot use (a CPU build, or no such GPU)."""
    if not device.startswith("cuda"):
        return
    import torch

    if not torch.cuda.is_available():
        build = "a CPU build of torch" if torch.version.cuda is None else "no CUDA device"
        raise ReprokitError(
            f"--device {device} needs a CUDA GPU, but this machine has {build} "
            f"(torch {torch.__version__}); use --device cpu"
        )
    index = device.partition(":")[2]
    if index and (not index.isdigit() or int(index) >= torch.cuda.device_count()):
        raise ReprokitError(
            f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)"
        )


# ---- types ----------------------------------------------------------------------------------------
_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}


def _leaves(config: Any, prefix: str = "") -> typing.Iterator[tuple[str, Any]]:
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            yield from _leaves(value, f"{key}.")
        else:
            yield key, value


def _expected(hint: Any) -> str:
    """'an integer', 'a list of integers', 'a number or nothing' for a field's type hint."""
    origin = typing.get_origin(hint)
    if origin in (types.UnionType, typing.Union):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return " or ".join(_expected(a) for a in args)
    if origin is list:
        (item,) = typing.get_args(hint)
        return f"a list of {_expected(item).removeprefix('an ').removeprefix('a ')}s"
    if origin is dict:
        _, item = typing.get_args(hint)
        return (
            f"a table of names = {_expected(item).removeprefix('an ').removeprefix('a ')}s, "
            "e.g. {user_id = 16, item_id = 8}"
        )
    return _NAMES.get(hint, str(hint))


def _parse_pairs(text: str, key: str) -> dict[str, str]:
    """'user_id=16,item_id=8' (the command line's form of a table) → {'user_id': '16', ...}."""
    out: dict[str, str] = {}
    for piece in (p.strip() for p in text.split(",")):
        name, eq, value = piece.partition("=")
        if not piece:
            continue
        if not eq or not name.strip() or not value.strip():
            raise ReprokitError(
                f"{key} must look like name=width[,name=width...], e.g. user_id=16,item_id=8; "
                f"got {text!r}"
            )
        out[name.strip()] = value.strip()
    return out


def coerce(value: Any, hint: Any, key: str, where: str = "") -> Any:
    """`value` checked against a config field's type hint (ints are accepted for floats, a
    comma-separated string for a list of strings); a wrong type is one sentence naming the key."""
    origin = typing.get_origin(hint)
    if origin in (types.UnionType, typing.Union):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return coerce(value, arg, key, where)
            except ReprokitError:
                continue
    elif origin is list:
        (item,) = typing.get_args(hint)
        if isinstance(value, str) and item is str:
            value = [v.strip() for v in value.split(",") if v.strip()]
        if isinstance(value, list | tuple):
            return [coerce(v, item, key, where) for v in value]
    elif origin is dict:
        key_hint, item = typing.get_args(hint)
        if isinstance(value, str):
            value = _parse_pairs(value, key)
            if item is int:  # the command line's values are text: "16" is the integer 16
                value = {k: _int_text(v) for k, v in value.items()}
        if isinstance(value, dict):
            return {
                coerce(k, key_hint, key, where): coerce(v, item, f"{key}.{k}", where)
                for k, v in value.items()
            }
    elif hint is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    elif hint is str and isinstance(value, os.PathLike):  # RunConfig(data=DataConfig(path=Path()))
        return os.fspath(value)
    elif hint in (int, str, bool) and isinstance(value, hint):
        if hint is int and isinstance(value, bool):
            pass
        else:
            return value
    place = f" in {where}" if where else ""
    raise ReprokitError(f"{key}{place} must be {_expected(hint)}, got {value!r}")


def _int_text(text: str) -> int | str:
    """An integer written as text ("16"); anything else stays text for `coerce` to refuse."""
    try:
        return int(text)
    except ValueError:
        return text


def check_types(config: Any, prefix: str = "", where: str = "") -> None:
    """Check (and coerce) every field of a config dataclass against its type hint."""
    hints = typing.get_type_hints(type(config))
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(hints[f.name]):
            if not isinstance(value, hints[f.name]):
                raise ReprokitError(f"{key} must be a table of settings, got {value!r}")
            check_types(value, f"{key}.", where)
            continue
        if f.name in ("hidden", "tower") and isinstance(value, str):
            value = parse_widths(value)
        setattr(config, f.name, coerce(value, hints[f.name], key, where))


def _merge(target: Any, values: dict[str, Any], where: str, prefix: str = "") -> None:
    """Set dataclass fields from a mapping, recursing into nested sections; unknown keys and
    wrong types are errors naming the dotted key and `where` the value came from."""
    names = {f.name: f for f in dataclasses.fields(target)}
    where_file = where.split(" [", 1)[0]
    for key, value in values.items():
        key_norm = key.replace("-", "_")
        if key_norm not in names:
            section = f" [{prefix.rstrip('.')}]" if prefix else ""
            raise ReprokitError(
                f"unknown key {key!r} in {where_file}{section}; known keys: "
                f"{', '.join(sorted(names))}"
            )
        current = getattr(target, key_norm)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ReprokitError(
                    f"{prefix}{key_norm} in {where_file} must be a table of settings "
                    f"([{prefix}{key_norm}]), got {value!r}"
                )
            _merge(current, value, where, f"{prefix}{key_norm}.")
        else:
            if key_norm in ("hidden", "tower") and isinstance(value, str):
                value = parse_widths(value)
            hint = typing.get_type_hints(type(target))[key_norm]
            dotted = f"{prefix}{key_norm}"
            setattr(target, key_norm, coerce(value, hint, dotted, where_file))


def parse_widths(text: str) -> list[int]:
    """'256-128-64' or '256,128,64' → [256, 128, 64]."""
    try:
        return [int(p) for p in text.replace(",", "-").split("-") if p.strip()]
    except ValueError:
        raise ReprokitError(f"hidden widths must look like 256-128-64, got {text!r}") from None


def load_toml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise ReprokitError(f"config file not found: {path}")
    try:
        return tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ReprokitError(f"config file {path} is not valid TOML: {exc}") from None


def resolve_config(
    config_file: str | Path | None = None, overrides: dict[str, Any] | None = None
) -> RunConfig:
    """Defaults, then the TOML file, then CLI overrides (dotted keys like 'model.activation')."""
    config = RunConfig()
    if config_file is not None:
        _merge(config, load_toml(config_file), str(config_file))
        # a relative data path in a config file means relative to that file, wherever it runs
        if config.data.path and not Path(config.data.path).is_absolute():
            config.data.path = str(Path(config_file).parent / config.data.path)
    merge_dotted(
        config,
        {k: v for k, v in (overrides or {}).items() if v is not None},
        "command-line options",
    )
    return config.validate()


def merge_dotted(config: RunConfig, overrides: dict[str, Any], where: str) -> None:
    """Set dotted keys (``model.activation``) on `config`, with the checks of a TOML file:
    unknown keys and wrong types are one sentence naming the key and `where`."""
    for dotted, value in overrides.items():
        *sections, key = dotted.split(".")
        nested: dict[str, Any] = {key: value}
        for section in reversed(sections):
            nested = {section: nested}
        _merge(config, nested, where)


def is_config_key(dotted: str) -> bool:
    """Whether `dotted` (``optim.lr``, ``replicas``) names a setting of RunConfig."""
    target: Any = RunConfig()
    for part in dotted.replace("-", "_").split("."):
        if not dataclasses.is_dataclass(target):
            return False
        names = {f.name for f in dataclasses.fields(target)}
        if part not in names:
            return False
        target = getattr(target, part)
    return not dataclasses.is_dataclass(target)


def config_from_dict(doc: dict[str, Any]) -> RunConfig:
    """Rebuild a config stored in a manifest."""
    config = RunConfig()
    _merge(config, doc, "manifest")
    return config
