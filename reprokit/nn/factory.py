"""The user's own model: `--model-factory FILE.py:build` / `package.module:build` (`model.factory`)
or `reprokit.train_ensemble(config, model_factory=build)`.

`build(schema)` receives a :class:`ModelSchema` (vocabulary sizes, numeric count, field, numeric
and label names) and returns an `nn.Module` whose `forward(cat, num)` gives logits [batch] or
[batch, tasks]. reprokit wraps it in :class:`FactoryModel`, which owns its randomness exactly as
reprokit's own models do:

- **init**: if the module has a `reset_parameters(generator)` method taking a generator, it is
  called with the replica's `init` generator. Otherwise `build(schema)` is called again with
  torch's global generator seeded from the `init` generator (inside `torch.random.fork_rng`, so the
  caller's global state is restored) and that module's parameters and buffers are loaded: every
  value the module draws while it is built (torch's default initialisers, `torch.randn` in
  `__init__`) comes from the `init` source.
- **dropout**: every `nn.Dropout` module (exactly that type) is replaced by reprokit's
  `SeededDropout` with the same p, fed by the `dropout` generator; torch's global generator is
  also seeded from the `dropout` seed before training, so randomness the forward draws from it
  (`F.dropout`) follows that source too.
- activation: `model.activation` other than `relu` replaces the module's ReLU-like activation
  modules (`reprokit.nn.swap_activations`), so activation arms apply to users' models too;
  `model.dropout` and `model.batch_norm` are refused (the module's own layers decide).
- data order, asynchrony, bit flips, threads: the loop's own, as for every model.

`check_factory_model` builds the model once and runs a forward on a few training rows before any
replica trains, so a missing file or function, a return value that is not a module, a module
without parameters or a wrong output shape is one sentence.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from reprokit.components.architectures import parse_factory_spec
from reprokit.errors import ReprokitError
from reprokit.nn.models import SeededDropout

__all__ = ["FactoryModel", "ModelSchema", "check_factory_model", "load_factory", "swap_dropout"]

Factory = Callable[["ModelSchema"], nn.Module]


@dataclass(frozen=True)
class ModelSchema:
    """What `build(schema)` knows about the data: ids of field f lie in 0..vocab_sizes[f]−1
    (0 is out-of-vocabulary; table kinds that read raw values are reprokit's own only)."""

    vocab_sizes: list[int]
    n_numeric: int
    field_names: list[str]
    numeric_names: list[str] = field(default_factory=list)
    label_names: list[str] = field(default_factory=list)
    embedding_dim: int = 8  # the config's model.embedding_dim, for factories that want it

    @property
    def n_tasks(self) -> int:
        return len(self.label_names)


def schema_of(encoded: Any, embedding_dim: int = 8) -> ModelSchema:
    """The schema of encoded data (`reprokit.data.encoding.EncodedData`)."""
    return ModelSchema(
        vocab_sizes=[int(v) for v in encoded.vocab_sizes],
        n_numeric=int(encoded.train_num.shape[1]),
        field_names=list(encoded.field_names),
        numeric_names=list(getattr(encoded, "numeric_names", [])),
        label_names=list(encoded.label_names),
        embedding_dim=int(embedding_dim),
    )


def load_factory(spec: str) -> Factory:
    """The function a spec names: "path/to/file.py:build" is loaded from that file,
    "package.module:build" imported; a missing file, module or function is one sentence."""
    source, name = parse_factory_spec(spec)
    if source.endswith(".py") or "/" in source or "\\" in source:
        path = Path(source)
        if not path.is_file():
            raise ReprokitError(f"model factory file {source} does not exist")
        module_name = f"_reprokit_factory_{abs(hash(str(path.resolve())))}"
        module = sys.modules.get(module_name)
        if module is None:
            loader = importlib.util.spec_from_file_location(module_name, path)
            if loader is None or loader.loader is None:
                raise ReprokitError(f"model factory file {source} is not a Python file")
            module = importlib.util.module_from_spec(loader)
            try:
                loader.loader.exec_module(module)
            except Exception as exc:  # the user's file: any error is theirs, in one sentence
                raise ReprokitError(
                    f"loading {source} failed: {type(exc).__name__}: {exc}"
                ) from exc
            sys.modules[module_name] = module
    else:
        try:
            module = importlib.import_module(source)
        except ImportError as exc:
            raise ReprokitError(
                f"model factory module {source!r} cannot be imported: {exc}"
            ) from exc
    fn = getattr(module, name, None)
    if not callable(fn):
        raise ReprokitError(f"model factory {source} has no function {name!r}")
    return fn


def factory_label(fn: Factory) -> str:
    """The `model.factory` a config records for a callable passed to the Python API."""
    name = getattr(fn, "__name__", "")
    return f"{getattr(fn, '__module__', None) or 'python'}:{name if name.isidentifier() else 'factory'}"


def swap_dropout(model: nn.Module) -> list[str]:
    """Replace every `nn.Dropout` (that exact type) by a `SeededDropout` of the same p, in place;
    returns the qualified names replaced (a module shared by several parents is replaced once per
    position, each with its own instance)."""
    swapped: list[str] = []

    def walk(module: nn.Module, prefix: str, seen: set[int]) -> None:
        if id(module) in seen:
            return
        seen.add(id(module))
        for attr, child in list(module._modules.items()):
            if child is None:
                continue
            name = f"{prefix}.{attr}" if prefix else attr
            if type(child) is nn.Dropout:
                setattr(module, attr, SeededDropout(child.p))
                swapped.append(name)
            else:
                walk(child, name, seen)

    walk(model, "", set())
    return swapped


def _takes_generator(module: nn.Module) -> bool:
    method = getattr(module, "reset_parameters", None)
    if method is None:
        return False
    try:
        params = list(inspect.signature(method).parameters.values())
    except (TypeError, ValueError):
        return False
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return bool(params) and params[0].kind in positional


def _build(factory: Factory, schema: ModelSchema, seed: int) -> nn.Module:
    """`factory(schema)` with torch's global generator seeded by `seed` (and restored after)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            module = factory(schema)
        except ReprokitError:
            raise
        except Exception as exc:  # the user's code: its error, in one sentence
            raise ReprokitError(
                f"the model factory raised {type(exc).__name__}: {exc}".rstrip(": ")
            ) from exc
    if not isinstance(module, nn.Module):
        raise ReprokitError(
            f"the model factory must return a torch nn.Module, got {type(module).__name__}"
        )
    return module


class FactoryModel(nn.Module):
    """A user's module with reprokit's seeding (see the module docstring): logits [batch, tasks]."""

    def __init__(self, factory: Factory, schema: ModelSchema, activation: str = "relu") -> None:
        super().__init__()
        self.factory, self.schema, self.activation = factory, schema, activation
        self.inner = _build(factory, schema, 0)
        if not any(True for _ in self.inner.parameters()):
            raise ReprokitError("the model factory's module has no parameters to train")
        self.n_tasks = max(schema.n_tasks, 1)
        self.dropouts = swap_dropout(self.inner)
        self.activations = self._swap_activations(self.inner)

    def _swap_activations(self, module: nn.Module) -> list[str]:
        """`model.activation` other than relu replaces the module's ReLU-like activation modules
        (`swap_activations`); relu (the default) leaves the module's own activations alone."""
        if self.activation == "relu":
            return []
        from reprokit.nn.swap import swap_activations

        return [name for name, _ in swap_activations(module, self.activation)]

    def reset_parameters(self, generator: torch.Generator) -> None:
        """The module's own `reset_parameters(generator)`, or a rebuild from the generator."""
        if _takes_generator(self.inner):
            self.inner.reset_parameters(generator)
            return
        seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        fresh = _build(self.factory, self.schema, seed)
        swap_dropout(fresh)  # same module tree as self.inner
        self._swap_activations(fresh)
        self.inner.load_state_dict(fresh.state_dict())

    def set_dropout_generator(self, generator: torch.Generator) -> None:
        for module in self.inner.modules():
            if isinstance(module, SeededDropout):
                module.generator = generator
        torch.manual_seed(generator.initial_seed())  # randomness drawn in forward (F.dropout)

    def forward(self, cat: torch.Tensor, num: torch.Tensor) -> torch.Tensor:
        out = self.inner(cat, num)
        return out.unsqueeze(1) if out.dim() == 1 else out


def check_factory_model(model: FactoryModel, cat: torch.Tensor, num: torch.Tensor) -> None:
    """Run the module on a few rows in evaluation mode: it must return finite-shaped logits
    [batch] (one task) or [batch, tasks]; anything else is one sentence."""
    model.eval()
    with torch.no_grad():
        try:
            out = model.inner(cat, num)
        except Exception as exc:
            raise ReprokitError(
                f"the model factory's module failed on a batch of {cat.shape[0]} rows "
                f"(cat {tuple(cat.shape)} int64, num {tuple(num.shape)} float32): "
                f"{type(exc).__name__}: {exc}"
            ) from exc
    batch, tasks = cat.shape[0], model.n_tasks
    want = [(batch, tasks)] + ([(batch,)] if tasks == 1 else [])
    got = tuple(out.shape) if isinstance(out, torch.Tensor) else None
    if got not in want:
        what = f"shape {list(got)}" if got is not None else type(out).__name__
        expected = " or ".join(str(list(w)) for w in want)
        raise ReprokitError(
            f"the model factory's module must return logits of shape {expected} for a batch of "
            f"{batch} rows and {tasks} task(s), got {what}"
        )
    if not out.is_floating_point():
        raise ReprokitError(f"the model factory's module must return float logits, got {out.dtype}")
    model.train()


def build_factory_model(config: Any, encoded: Any, factory: Factory | None = None) -> FactoryModel:
    """The wrapped module of `factory` (or of the config's `model.factory` spec) for `encoded`."""
    fn = factory if factory is not None else load_factory(config.model.factory)
    schema = schema_of(encoded, config.model.embedding_dim)
    return FactoryModel(fn, schema, config.model.activation)


def validate_factory(config: Any, encoded: Any, factory: Factory | None = None) -> None:
    """Build the model once and check its output on the first training rows (before training);
    a note if two init seeds give the same parameters (a build() that seeds torch itself)."""
    model = build_factory_model(config, encoded, factory)
    rows = min(8, int(encoded.train_cat.shape[0]))
    cat = torch.as_tensor(encoded.train_cat[:rows])
    num = torch.as_tensor(encoded.train_num[:rows])
    check_factory_model(model, cat, num)
    if "init" in config.vary:
        model.reset_parameters(torch.Generator().manual_seed(1))
        first = [p.detach().clone() for p in model.parameters()]
        model.reset_parameters(torch.Generator().manual_seed(2))
        if all(torch.equal(a, b) for a, b in zip(first, model.parameters(), strict=True)):
            logging.getLogger("reprokit").warning(
                "the model factory draws the same initial parameters from every init seed "
                "(does build() seed torch itself, or reset_parameters ignore its generator?); "
                "--vary init cannot vary them"
            )
