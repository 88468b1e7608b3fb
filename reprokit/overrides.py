"""The text form of study arms: ``key=value[,key=value...]`` with dotted config keys.

Torch-free (report and gate use it too): parsing an ``--arm`` text into overrides, the label an
arm's overrides read as, and whether two texts name the same arm (``model.dropout=0.0`` and
``model.dropout=0`` do).
"""

from __future__ import annotations

import re
import tomllib
from typing import Any

from reprokit.errors import ReprokitError


def parse_value(text: str) -> Any:
    """An override's value: a TOML value when it parses as one (``0.1``, ``[128, 64]``, ``true``,
    ``"x"``), else the text itself (``smelu:beta=1``, ``gelu``)."""
    text = text.strip()
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


_KEY = re.compile(r"\s*([A-Za-z_][\w-]*(?:\.[A-Za-z_][\w-]*)*)\s*=")


def _split_pairs(text: str) -> list[str]:
    """Split ``a.b=1,c=[1,2],d=smelu:beta=1,alpha=2`` into ``key=value`` pieces: a comma starts a
    new pair only outside brackets and quotes, only when what follows is ``<known key>=``, and
    after a spec value (one with ``:``) only when that key is dotted, so a spec's parameter named
    like a top-level setting (``seed``) stays in the spec."""
    from reprokit.config import is_config_key

    pieces, depth, quote, start = [], 0, "", 0
    for i, ch in enumerate(text):
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth -= 1
        elif ch == "," and depth == 0:
            match = _KEY.match(text, i + 1)
            key = match.group(1) if match else ""
            # inside a spec value (`hashed:buckets=100,seed=3`) a bare name is the spec's own
            # parameter; only a dotted key (`optim.lr=`) starts the next pair there
            in_spec = ":" in text[start:i].partition("=")[2]
            if match and is_config_key(key) and ("." in key or not in_spec):
                pieces.append(text[start:i])
                start = i + 1
    pieces.append(text[start:])
    return [p.strip() for p in pieces if p.strip()]


def parse_arm(text: str) -> dict[str, Any]:
    """``--arm`` text → {dotted key: value}, in the order given."""
    overrides: dict[str, Any] = {}
    for piece in _split_pairs(text):
        key, eq, value = piece.partition("=")
        key = key.strip()
        if not eq or not key or not value.strip():
            raise ReprokitError(
                f"--arm {text!r}: {piece!r} must look like key=value, e.g. model.activation=gelu"
            )
        if key in overrides:
            raise ReprokitError(f"--arm {text!r} sets {key} twice")
        overrides[key] = parse_value(value)
    if not overrides:
        raise ReprokitError("--arm is empty; give key=value pairs, e.g. model.activation=gelu")
    return overrides


def format_value(value: Any) -> str:
    """How an override value reads in a label: strings bare, lists and numbers as TOML writes them."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return "[" + ",".join(format_value(v) for v in value) + "]"
    if isinstance(value, dict):  # an inline table, as TOML writes it: {user_id=16,item_id=8}
        return "{" + ",".join(f"{k}={format_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def overrides_label(overrides: dict[str, Any]) -> str:
    return ",".join(f"{k}={format_value(v)}" for k, v in overrides.items())


def same_arm(text: str, overrides: dict[str, Any] | None) -> bool:
    """Whether an arm written as `text` is the arm with these (stored) overrides."""
    if not overrides or "=" not in text:
        return False
    try:
        parsed = parse_arm(text)
    except ReprokitError:
        return False
    norm = {k.replace("-", "_"): v for k, v in parsed.items()}
    return norm == {k.replace("-", "_"): v for k, v in overrides.items()}
