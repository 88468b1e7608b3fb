"""The click that Typer runs on: recent Typer releases vendor it as `typer._click`, older ones
depend on click itself. Everything reprokit needs from it comes through here, so that neither
release nor a missing `click` package breaks the CLI."""

from __future__ import annotations

try:  # Typer >= 0.17 vendors click
    from typer._click import exceptions
    from typer._click.globals import get_current_context
except ImportError:  # pragma: no cover - Typer releases that use click itself
    from click import exceptions, get_current_context

__all__ = ["exceptions", "get_current_context"]
