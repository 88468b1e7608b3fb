"""Typed run configuration: dataclasses, TOML files, CLI overrides and validation.

A config resolves in three layers: defaults < `--config FILE.toml` < explicit CLI options. The resolved
config is stored in the manifest, and a resumed run must resolve to the same one.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from reprokit.errors import ReprokitError
from reprokit.sources import parse_vary


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


@dataclass
class ModelConfig:
    embedding_dim: int = 8
    hidden: list[int] = field(default_factory=lambda: [64, 32])
    activation: str = "relu"
    dropout: float = 0.0
    batch_norm: bool = False  # BatchNorm1d after each hidden layer (FuxiCTR's `batch_norm` option)
    embedding: str = "table"  # pluggable: later hashed / collisionless / mixed-dimension


@dataclass
class OptimConfig:
    name: str = "adagrad"  # adagrad | adam | sgd (| clippy once available)
    lr: float = 0.05
    batch_size: int = 256
    epochs: int = 2
    weight_decay: float = 0.0


@dataclass
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
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
        """Check ranges and names; return self with `vary` canonicalised."""
        checks = [
            (self.replicas >= 1, "--replicas must be at least 1"),
            (self.optim.lr > 0, "the learning rate must be positive"),
            (self.optim.batch_size >= 1, "the batch size must be at least 1"),
            (self.optim.epochs >= 1, "epochs must be at least 1"),
            (0.0 <= self.model.dropout < 1.0, "dropout must be in [0, 1)"),
            (self.model.embedding_dim >= 1, "the embedding dimension must be at least 1"),
            (all(h >= 1 for h in self.model.hidden), "hidden layer widths must be positive"),
            (0.0 < self.data.eval_fraction < 1.0, "the evaluation fraction must be in (0, 1)"),
            (self.data.split in ("random", "temporal"), "split must be 'random' or 'temporal'"),
            (self.threads >= 1 and self.max_threads >= 1, "thread counts must be at least 1"),
            (self.async_staleness >= 0, "async staleness must be >= 0"),
            (
                self.optim.name in ("adagrad", "adam", "sgd", "clippy"),
                f"unknown optimizer {self.optim.name!r}; choose adagrad, adam, sgd or clippy",
            ),
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

        parse_spec(self.model.activation)  # an unknown activation fails before any work starts
        return self


def _merge(target: Any, values: dict[str, Any], where: str) -> None:
    """Set dataclass fields from a mapping, recursing into nested sections; unknown keys are errors."""
    names = {f.name: f for f in dataclasses.fields(target)}
    for key, value in values.items():
        key_norm = key.replace("-", "_")
        if key_norm not in names:
            raise ReprokitError(
                f"unknown key {key!r} in {where}; known keys: {', '.join(sorted(names))}"
            )
        current = getattr(target, key_norm)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ReprokitError(f"{where}.{key} must be a table, got {value!r}")
            _merge(current, value, f"{where}.{key}")
        else:
            if isinstance(value, str) and key_norm == "vary":
                value = [v for v in value.split(",") if v]
            if key_norm == "hidden" and isinstance(value, str):
                value = parse_widths(value)
            setattr(target, key_norm, value)


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
    for dotted, value in (overrides or {}).items():
        if value is None:
            continue
        *sections, key = dotted.split(".")
        nested: dict[str, Any] = {key: value}
        for section in reversed(sections):
            nested = {section: nested}
        _merge(config, nested, "command-line options")
    return config.validate()


def config_from_dict(doc: dict[str, Any]) -> RunConfig:
    """Rebuild a config stored in a manifest."""
    config = RunConfig()
    _merge(config, doc, "manifest")
    return config
