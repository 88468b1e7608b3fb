"""One module per command; `register_all` attaches them to the root app.

Modules that are missing (not yet written) are skipped, so commands can land independently.
"""

from __future__ import annotations

import importlib

import typer

#: (module, attribute) pairs: the attribute is either a Typer sub-app (`app`) or a `register(app)` hook.
_COMMAND_MODULES = (
    "data",
    "train",
    "pd",
    "compare",
    "attribute",
    "report",
    "gate",
    "stability",
    "online",
    "autodim",
)


def register_all(app: typer.Typer) -> None:
    for name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(f"reprokit.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"reprokit.commands.{name}":
                continue
            raise
        module.register(app)
