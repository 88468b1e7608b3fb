"""Component registries: what every kind of component declares, torch-free.

Every kind of component (optimizers in :mod:`reprokit.components.optimizers`, architectures in
:mod:`~reprokit.components.architectures`, embedding tables in :mod:`~reprokit.components.tables`)
has one :class:`Registry` of the same shape: name → :class:`ComponentInfo` with the
canonical spec a config stores, a one-line description and the kind's capabilities, the facts an
engine decides on (``choose_engine`` reads them; it never builds a model to find out). The
torch code that builds a component is named by ``builder`` (``"module:attribute"``) and imported
only when :meth:`ComponentInfo.load` is called, so this package, and ``reprokit.config`` that
takes its lists of valid names from here, never import torch (nor ``reprokit.nn`` /
``reprokit.optim``: report and gate read configs without them).

Activations keep their own registry (:mod:`reprokit.nn.registry`, spec strings with parameters);
their entries carry an :class:`~reprokit.components.activations.ActivationCapabilities` too.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from reprokit.errors import ReprokitError

__all__ = ["ComponentInfo", "Registry"]

C = TypeVar("C")


@dataclass(frozen=True)
class ComponentInfo(Generic[C]):
    """One registry entry: `spec` is the canonical string a config stores (the name, for
    components without parameters), `builder` the ``module:attribute`` that builds it."""

    name: str
    spec: str
    description: str
    capabilities: C
    builder: str

    def load(self) -> Any:
        """The builder (a class or function), imported now: this is where torch gets loaded."""
        module, _, attribute = self.builder.partition(":")
        return getattr(importlib.import_module(module), attribute)


class Registry(Generic[C]):
    """Name → :class:`ComponentInfo` of one kind, in declaration order (the order of help text)."""

    def __init__(self, kind: str, entries: tuple[ComponentInfo[C], ...]) -> None:
        self.kind = kind
        self._entries = {info.name: info for info in entries}
        if len(self._entries) != len(entries):
            raise ValueError(f"duplicate {kind} names in the registry")

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[ComponentInfo[C]]:
        return iter(self._entries.values())

    def __len__(self) -> int:
        return len(self._entries)

    def unknown(self, name: object) -> str:
        """The sentence for a name this registry does not have (it lists the known ones)."""
        return f"unknown {self.kind} {name!r}; choose one of: {', '.join(self.names)}"

    def get(self, name: str) -> ComponentInfo[C]:
        """The entry called `name`; an unknown name is a ReprokitError listing the known ones."""
        info = self._entries.get(name)
        if info is None:
            raise ReprokitError(self.unknown(name))
        return info

    def __getitem__(self, name: str) -> ComponentInfo[C]:
        return self.get(name)

    def describe(self) -> dict[str, str]:
        """``{name: one-line description}`` (help text, docs)."""
        return {info.name: info.description for info in self}

    def having(self, capability: str) -> tuple[str, ...]:
        """Names whose capability `capability` is set (true, or not None), in registry order."""
        return tuple(
            info.name
            for info in self
            if getattr(info.capabilities, capability) not in (False, None)
        )
