"""reprokit: measure, explain and reduce the irreproducibility of deep recommendation models."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("reprokit")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+local"

from reprokit.config import RunConfig, resolve_config
from reprokit.errors import ReprokitError

__all__ = ["ReprokitError", "RunConfig", "__version__", "resolve_config", "train_ensemble"]


#: Subpackages reachable as attributes (`reprokit.nn.SmeLU`) without importing them first.
_SUBPACKAGES = ("nn", "optim", "metrics", "data", "report", "rundir", "gate")


def __getattr__(name: str):
    # Lazy so that `import reprokit` stays cheap (no torch import) for the metrics-only paths.
    if name == "train_ensemble":
        from reprokit.runners.ensemble import train_ensemble

        return train_ensemble
    if name in _SUBPACKAGES:
        import importlib

        return importlib.import_module(f"reprokit.{name}")
    raise AttributeError(f"module 'reprokit' has no attribute {name!r}")
