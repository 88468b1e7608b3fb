"""JSON as reprokit writes it everywhere: numpy scalars allowed, NaN/Inf written as null.

`as_float` reads such a number back, null as NaN.
"""

from __future__ import annotations

import json
import math
from typing import Any


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):  # numpy / torch scalars
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _finite(value: Any) -> Any:
    """NaN/Inf are not JSON; write them as null so every consumer can parse the document."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    if hasattr(value, "dtype") and hasattr(value, "tolist"):
        return _finite(value.tolist())
    return value


def to_json(doc: Any) -> str:
    """Serialise a result document the same way for stdout and for files."""
    return json.dumps(_finite(doc), indent=2, default=_json_default, allow_nan=False)


def as_float(value: Any) -> float:
    """A document number (null → NaN) as float; non-numbers are NaN too, so tables show n/a."""
    if value is None:
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan
