"""Embedding table kinds (`model.embedding`): the registry, the spec grammar, and what engines need
to know about each kind (torch-free: `reprokit.config` canonicalises specs with it).

A spec is ``name`` or ``name:key=value,...`` like an activation's: ``table``,
``hashed:buckets=1000`` (= ``hashed:buckets=1000,seed=0``), ``qr:buckets=64,op=add``,
``mde:alpha=0.5`` (``base_dim`` left out: the embedding dimension), ``lma:memory=4096``. Names and
keys are case-insensitive; :func:`parse_table_spec` fills every default in, so two spellings of one
table have one canonical string (``str(spec)``, what a config stores). A parameter without a
default (``buckets``) must be given. Bad specs raise a ReprokitError that lists what exists.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from reprokit.components import ComponentInfo, Registry
from reprokit.errors import ReprokitError

__all__ = [
    "EMBEDDING_TABLES",
    "TABLE_PARAMS",
    "TableCapabilities",
    "TableParam",
    "TableSpec",
    "check_table_shape",
    "lma_geometry",
    "parse_table_spec",
]

#: The most MinHash functions an `lma` signature may have (its projection stays exact in int64).
LMA_MAX_SIGNATURES = 1024


@dataclass(frozen=True)
class TableCapabilities:
    """`stacked`: the vectorized engine can stack it (`EmbeddingTable.stacked_layout`).
    `sparse_gradients`: it can produce sparse gradients (the rows a batch used) for optimizers
    that update sparsely. `dynamic`: its rows come and go during training (admission, expiry), so
    an engine calls its `after_step` after every optimizer step and cannot map ids to rows once
    up front. `raw_eval_ids`: it reads an evaluation value unseen in training by its raw value
    (`EncodedData.eval_cat_raw`), not as the out-of-vocabulary index."""

    stacked: bool
    sparse_gradients: bool
    dynamic: bool = False
    raw_eval_ids: bool = False


@dataclass(frozen=True)
class TableParam:
    """One spec parameter: an integer of at least `minimum`, or one of `choices` (a string), or,
    with `real`, a finite number in [`minimum`, `maximum`]. `default` None: the parameter must be
    given, unless `optional` (then a spec without it omits it and the builder picks)."""

    name: str
    default: int | str | None
    minimum: int | None = None
    choices: tuple[str, ...] = ()
    real: bool = False
    maximum: float | None = None
    optional: bool = False
    placeholder: str = "N"  # how `usage` writes a value to fill in

    def parse(self, kind: str, raw: str) -> int | float | str:
        raw = raw.strip()
        if self.real:
            return self._parse_real(kind, raw)
        if self.choices:
            value = raw.lower()
            if value not in self.choices:
                raise ReprokitError(
                    f"{kind} parameter {self.name} must be one of {', '.join(self.choices)}, "
                    f"got {raw!r}"
                )
            return value
        try:
            number = int(raw)
        except ValueError:
            raise ReprokitError(
                f"{kind} parameter {self.name} must be an integer, got {raw!r}"
            ) from None
        if self.minimum is not None and number < self.minimum:
            raise ReprokitError(
                f"{kind} parameter {self.name} must be at least {self.minimum}, got {number}"
            )
        if self.maximum is not None and number > self.maximum:
            raise ReprokitError(
                f"{kind} parameter {self.name} must be at most {int(self.maximum)}, got {number}"
            )
        return number

    def _parse_real(self, kind: str, raw: str) -> float:
        try:
            number = float(raw)
        except ValueError:
            number = math.nan
        low, high = self.minimum, self.maximum
        if (
            not math.isfinite(number)
            or (low is not None and number < low)
            or (high is not None and number > high)
        ):
            raise ReprokitError(
                f"{kind} parameter {self.name} must be a number from {low} to {high}, got {raw!r}"
            )
        return number


class TableRegistry(Registry[TableCapabilities]):
    """The registry of table kinds; `get` also takes a whole spec (``hashed:buckets=8`` → the
    `hashed` entry), so engines read a config's capabilities from its stored spec."""

    def get(self, name: str) -> ComponentInfo[TableCapabilities]:
        return super().get(str(name).partition(":")[0].strip().lower())


EMBEDDING_TABLES = TableRegistry(
    "embedding table",
    (
        ComponentInfo(
            "table",
            "table",
            "one table per field: the training split's vocabulary plus an out-of-vocabulary row 0",
            TableCapabilities(stacked=True, sparse_gradients=True),
            "reprokit.nn.embeddings:FieldEmbeddings",
        ),
        ComponentInfo(
            "hashed",
            "hashed",
            "the hashing trick: per field, a fixed 64-bit hash of the raw value mod `buckets` rows",
            TableCapabilities(stacked=True, sparse_gradients=True, raw_eval_ids=True),
            "reprokit.nn.hashed:HashedEmbeddings",
        ),
        ComponentInfo(
            "qr",
            "qr",
            "quotient-remainder (Shi et al.): rows ⌊i/buckets⌋ and i mod buckets of two tables, "
            "combined by op",
            TableCapabilities(stacked=True, sparse_gradients=True),
            "reprokit.nn.qr:QREmbeddings",
        ),
        ComponentInfo(
            "mde",
            "mde",
            "mixed dimensions (Ginart et al.): field f's width base_dim·(n_0/n_f)^alpha by its row "
            "count n_f, rounded to a power of 2, projected to the embedding dimension",
            TableCapabilities(stacked=True, sparse_gradients=True),
            "reprokit.nn.mde:MixedDimEmbeddings",
        ),
        ComponentInfo(
            "collisionless",
            "collisionless",
            "Monolith's table: a row per raw 64-bit id, created at update time once the admission "
            "filter passes (min_count occurrences, or with probability 1 − 0.05^(1/min_count) per "
            "occurrence), evicted after `expire` idle time units; a lookup miss reads zeros",
            TableCapabilities(stacked=True, sparse_gradients=True, dynamic=True, raw_eval_ids=True),
            "reprokit.nn.collisionless:CollisionlessEmbeddings",
        ),
        ComponentInfo(
            "lma",
            "lma",
            "LMA (Desai et al.): one shared memory of `memory` floats; a value's embedding is "
            "dim/chunk chunks whose slots come from LSH of the MinHash of the training examples "
            "it occurs in, so values that occur together share memory",
            TableCapabilities(stacked=True, sparse_gradients=True),
            "reprokit.nn.lma:LMAEmbeddings",
        ),
    ),
)

#: The spec parameters of each kind, in canonical order.
TABLE_PARAMS: dict[str, tuple[TableParam, ...]] = {
    "table": (),
    "hashed": (TableParam("buckets", None, minimum=1), TableParam("seed", 0, minimum=0)),
    "qr": (
        TableParam("buckets", None, minimum=1),
        TableParam("op", "mult", choices=("mult", "add", "concat")),
    ),
    "mde": (
        TableParam("alpha", None, minimum=0, real=True, maximum=1, placeholder="A"),
        TableParam("base_dim", None, minimum=1, optional=True, placeholder="D"),
    ),
    "collisionless": (
        TableParam("min_count", 1, minimum=1),
        TableParam("filter", "count", choices=("count", "probabilistic")),
        TableParam("expire", None, minimum=1, optional=True, placeholder="T"),
        TableParam("capacity", None, minimum=1, optional=True, placeholder="C"),
    ),
    "lma": (
        TableParam("memory", None, minimum=1, placeholder="M"),
        TableParam("chunk", None, minimum=1, optional=True, placeholder="C"),
        TableParam("bits", None, minimum=1, maximum=64, optional=True, placeholder="B"),
        TableParam("signatures", 32, minimum=1, maximum=LMA_MAX_SIGNATURES),
        TableParam("seed", 0, minimum=0),
    ),
}


def lma_geometry(
    dim: int, memory: int, chunk: int | None = None, bits: int | None = None
) -> tuple[int, int, int]:
    """(chunk, slots, bits) of an `lma` table `dim` wide, defaults filled in: chunk gcd(dim, 4),
    bits ceil(log2(memory / chunk)) + 4, 16 codes per slot, so that the code → slot hash reaches
    nearly every slot (with one code per slot it would reach only 1 − 1/e). The one place that refuses
    a chunk that does not divide `dim` or a memory that is not a whole number of chunks (the
    config's validation calls it through :func:`check_table_shape`, the table's builder too)."""
    chunk = math.gcd(dim, 4) if chunk is None else int(chunk)
    if dim % chunk:
        raise ReprokitError(
            f"lma chunk {chunk} must divide the embedding dimension {dim} (a value's embedding "
            "is dim/chunk whole chunks)"
        )
    if memory % chunk:
        raise ReprokitError(
            f"lma memory {memory} must be a multiple of chunk {chunk} (the memory is read in whole "
            "chunks)"
        )
    slots = memory // chunk
    bits = min(64, (slots - 1).bit_length() + 4) if bits is None else int(bits)
    return chunk, slots, bits


def check_table_shape(spec: str | TableSpec, dim: int) -> None:
    """Refuse, at config time and for both engines, a table spec that cannot be `dim` wide."""
    table = parse_table_spec(spec)
    if table.name == "lma":
        p = table.params
        lma_geometry(dim, int(p["memory"]), p.get("chunk"), p.get("bits"))  # type: ignore[arg-type]


@dataclass(frozen=True)
class TableSpec:
    """A resolved table spec: the kind's `name` and every parameter (defaults filled in)."""

    name: str
    params: Mapping[str, int | float | str] = field(default_factory=dict)

    def __str__(self) -> str:
        if not self.params:
            return self.name
        return self.name + ":" + ",".join(f"{k}={v}" for k, v in self.params.items())

    def __hash__(self) -> int:
        return hash(str(self))

    @property
    def info(self) -> ComponentInfo[TableCapabilities]:
        return EMBEDDING_TABLES.get(self.name)


def usage(name: str) -> str:
    """``hashed:buckets=N[,seed=0]``, ``qr:buckets=N[,op=mult|add|concat]``: how to write a kind's spec (help text, errors)."""
    params = TABLE_PARAMS[name]
    required = [f"{p.name}={p.placeholder}" for p in params if p.default is None and not p.optional]
    optional = [
        f"{p.name}={'|'.join(p.choices) if p.choices else p.placeholder if p.default is None else p.default}"
        for p in params
        if p.default is not None or p.optional
    ]
    text = name + (":" + ",".join(required) if required else "")
    if optional:
        text += ("[," if required else "[:") + ",".join(optional) + "]"
    return text


def _accepts(name: str) -> str:
    params = TABLE_PARAMS[name]
    if not params:
        return f"embedding table {name!r} takes no parameters"
    return f"embedding table {name!r} accepts: " + ", ".join(p.name for p in params)


def parse_table_spec(spec: str | TableSpec) -> TableSpec:
    """Resolve ``name[:key=value,...]`` into a validated :class:`TableSpec`."""
    if isinstance(spec, TableSpec):
        return spec
    if not isinstance(spec, str):
        raise ReprokitError(
            f"an embedding table spec must be a string like 'hashed:buckets=1000', got {spec!r}"
        )
    head, sep, rest = spec.strip().partition(":")
    name = head.strip().lower()
    if name not in EMBEDDING_TABLES:
        shown = name or "(empty)"
        known = "; ".join(usage(n) for n in EMBEDDING_TABLES.names)
        raise ReprokitError(f"unknown embedding table {shown!r}; choose one of: {known}")
    known_params = {p.name: p for p in TABLE_PARAMS[name]}
    given: dict[str, int | float | str] = {}
    for item in [item.strip() for item in rest.split(",")] if sep else []:
        key, eq, raw = item.partition("=")
        key = key.strip().lower()
        if not item or not eq:
            raise ReprokitError(
                f"embedding table parameter {item!r} in {spec!r} must look like key=value; "
                f"write {usage(name)}"
            )
        if key not in known_params:
            raise ReprokitError(f"unknown parameter {key!r} in {spec!r}; {_accepts(name)}")
        if key in given:
            raise ReprokitError(f"parameter {key!r} is given twice in embedding spec {spec!r}")
        given[key] = known_params[key].parse(name, raw)
    params: dict[str, int | float | str] = {}
    for p in TABLE_PARAMS[name]:
        if p.name in given:
            params[p.name] = given[p.name]
        elif p.optional:
            continue
        elif p.default is None:
            raise ReprokitError(f"embedding table {name!r} needs {p.name}: write {usage(name)}")
        else:
            params[p.name] = p.default
    return TableSpec(name, params)
