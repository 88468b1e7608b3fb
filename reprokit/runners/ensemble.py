"""`train_ensemble`: N replicas of one configuration, varying exactly the named sources.

Flow: resolve data → encode once → prepare (or resume) the run directory → train the missing replicas
with an executor → load every replica's predictions → summarise → write summary.json.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from reprokit.config import RunConfig, check_field_dims
from reprokit.data.mapped_array import release
from reprokit.environment import environment_fingerprint
from reprokit.errors import ReprokitError
from reprokit.metrics.churn import DEFAULT_TOP_K, ChurnGroups, check_top_k
from reprokit.runners.executors import Executor, LocalExecutor, ReplicaRecord
from reprokit.runschema import TRAIN_ENSEMBLE, check_label_names, prediction_column_names
from reprokit.sources import SOURCES, replica_seeds
from reprokit.store import RunStore, atomic_write_json, run_lock

KIND = TRAIN_ENSEMBLE

ProgressCallback = Callable[[int, int, dict[str, Any]], None]
#: step_progress(done, total): optimizer steps of the vectorized engine, which trains every replica
#: at once (replica-level progress then only moves at the end).
StepProgress = Callable[[int, int], None]


@dataclass
class ReplicaPayload:
    """What a task needs to train any replica: the encoded data and the config (and, in this
    process only, the vectorized engine's step callback)."""

    encoded: Any
    config: RunConfig
    on_step: StepProgress | None = None
    model_factory: Callable[..., Any] | None = None  # the Python API's `model_factory`


def default_run_dir(kind: str = KIND) -> Path:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{kind}-{stamp}"


_HASH_BYTES = 64 << 20


def data_fingerprint(encoded: Any) -> str:
    """A hash of what the replicas see, so a resumed run cannot silently mix two datasets."""
    h = hashlib.sha256()
    for arr in (encoded.eval_example_id, encoded.train_cat, encoded.train_num, encoded.train_y):
        data = np.ascontiguousarray(arr).reshape(-1).view(np.uint8)  # no copy of mapped data
        for lo in range(0, len(data), _HASH_BYTES):
            h.update(data[lo : lo + _HASH_BYTES])
            release(arr)  # a memory-mapped file never becomes resident as a whole
    h.update(repr(encoded.vocab_sizes).encode())
    return h.hexdigest()[:16]


def build_manifest(
    config: RunConfig, encoded: Any, data_name: str, engine: str = "process"
) -> dict[str, Any]:
    from reprokit import __version__
    from reprokit.training.loop import configure_determinism

    configure_determinism(config)  # so the fingerprint records the flags training runs under
    return {
        "schema_version": 1,
        "kind": KIND,
        "reprokit_version": __version__,
        "config": config.to_dict(),
        "sources": {"varied": list(config.vary), "available": list(SOURCES)},
        "replica_seeds": {
            f"{r:03d}": replica_seeds(config.seed, config.vary, r) for r in range(config.replicas)
        },
        "environment": environment_fingerprint(config.device),
        "engine": engine,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "data": {
            "name": data_name,
            "path": config.data.path,
            "train_rows": int(encoded.train_cat.shape[0]),
            "eval_rows": int(encoded.eval_cat.shape[0]),
            "labels": list(encoded.label_names),
            "fingerprint": data_fingerprint(encoded),
        },
    }


def _train_one_by_one(payload: ReplicaPayload, replicas: list[int]) -> Iterator[ReplicaRecord]:
    """The reference loop, one replica after the other (a batch of one in a worker process)."""
    from reprokit.training.loop import train_replica

    config = payload.config
    for replica in replicas:
        seeds = replica_seeds(config.seed, config.vary, replica)
        out = train_replica(payload.encoded, config, replica, seeds, payload.model_factory)
        yield replica_record(payload, replica, seeds, out)


def _train_stacked(payload: ReplicaPayload, replicas: list[int]) -> Iterator[ReplicaRecord]:
    """The vectorized engine: the batch's replicas together (stacked parameters)."""
    from reprokit.training.vectorized import train_replicas

    config = payload.config
    seeds = [replica_seeds(config.seed, config.vary, r) for r in replicas]
    outs = train_replicas(
        payload.encoded, config, replicas, seeds, payload.on_step, payload.model_factory
    )
    for replica, s, out in zip(replicas, seeds, outs, strict=True):
        yield replica_record(payload, replica, s, out)


# --- engine selection ---------------------------------------------------------------------------
#: Sources that the vectorized engine trains correctly but whose PD depends on last-bit rounding
#: of the first updates (a one-ULP flip is absorbed or amplified), so `auto` keeps the reference loop.
ROUNDING_SENSITIVE_SOURCES = frozenset({"bitflip"})
#: `auto` trains a --model-factory model stacked (torch.func, `training.func_stack`) only where
#: benchmarks/factory_vmap_speed.py measured that faster than one replica after the other in
#: every configuration it tried: from 8 replicas, and from batch_size / 64 replicas (16 at 1024
#: rows; README, "Your own model"). Stacking saves per-operation overhead, which larger batches
#: amortise on their own; at 4 replicas it ranged from 0.9x (large tables) to 1.3x.
FACTORY_STACK_MIN_REPLICAS = 8
FACTORY_STACK_ROWS_PER_REPLICA = 64


def factory_stack_pays(config: RunConfig) -> bool:
    """Whether the measured rule says stacking the config's factory model is the faster engine."""
    if config.replicas < FACTORY_STACK_MIN_REPLICAS:
        return False
    return config.replicas * FACTORY_STACK_ROWS_PER_REPLICA >= config.optim.batch_size


def choose_engine(config: RunConfig, encoded: Any = None, model_factory: Any = None) -> str:
    """`process` or `vectorized` for `config.engine`: auto = vectorized unless it cannot run, or
    unless a rounding-sensitive source makes its PD incomparable with the reference loop. The
    engine's support comes from the components' declared capabilities (no model is built); a
    factory model is tried on `encoded`'s first rows (`capability.factory_reason`), and under
    `auto` only where `factory_stack_pays`."""
    from reprokit.training.stacked.capability import unsupported_reason

    if config.engine == "process":
        return "process"
    if config.engine == "auto" and config.model.factory and not factory_stack_pays(config):
        return "process"
    reason = unsupported_reason(config, encoded, model_factory)
    if config.engine == "vectorized":
        if reason is not None:
            raise ReprokitError(f"--engine vectorized cannot train this configuration: {reason}")
        return "vectorized"
    if reason is not None or ROUNDING_SENSITIVE_SOURCES & set(config.vary):
        return "process"
    return "vectorized"


def _resume_engine(store: RunStore, config: RunConfig, engine: str, finished: list[int]) -> str:
    """Finish a resumed run with the engine that trained its replicas, so the two engines' rounding
    differences never mix into one ensemble (it would break the control arm's PD = 0)."""
    recorded = store.manifest().get("engine")
    if recorded == engine:
        return engine
    if finished and recorded in ("process", "vectorized"):
        if config.engine == "auto" and (recorded == "process" or choose_engine(config) == engine):
            return str(recorded)
        raise ReprokitError(
            f"{store.path} was trained with the {recorded} engine; resume it with that engine "
            "or pass --force to start over"
        )
    manifest = store.manifest()
    manifest["engine"] = engine  # nothing trained yet: record the engine that will run
    atomic_write_json(store.manifest_path, manifest)
    return engine


def replica_record(
    payload: ReplicaPayload, replica: int, seeds: dict[str, int], out: Any
) -> ReplicaRecord:
    """A trained replica's predictions, metrics and log, ready for the store (pure: the driver
    writes it, so a worker needs no access to the run directory)."""
    from reprokit.training.divergence import replica_divergence

    enc = payload.encoded
    frame = pd.DataFrame({"example_id": enc.eval_example_id.astype(np.int64)})
    for t, name in enumerate(enc.label_names):
        frame[name] = enc.eval_y[:, t].astype(np.float64)
    for t, name in enumerate(prediction_column_names(enc.label_names)):
        frame[name] = out.predictions[:, t]
    # Divergence events (non-finite, spikes, recovery, collapse) and per-task accuracy.
    diverged, accuracy, extra, log = replica_divergence(out, enc, payload.config)
    metrics = {
        "replica": replica,
        **accuracy,
        **extra,
        "train_seconds": out.train_seconds,
        "diverged": diverged,
        "seeds": seeds,
        "threads": out.threads,
        "steps": out.steps,
    }
    if getattr(out, "table", None) is not None:
        metrics["table"] = out.table  # a dynamic table's counters (collisionless)
    return ReplicaRecord(replica, frame, metrics, log)


def embedding_block(
    config: RunConfig, encoded: Any, replica_metrics: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """The summary's `embedding` block: the table kind, its parameters and bytes, and how many
    distinct training ids share a row (per field and overall). A dynamic table's size is what
    training left (`replica_metrics`' `table` counters): `params`, `bytes` and the counters
    (`admitted`, `filtered`, `rejected_full`, `expired`, `rows_final`) are means over the
    replicas, `per_replica` lists each."""
    from reprokit.nn.embeddings import embedding_account
    from reprokit.nn.mde import MixedDimEmbeddings, build_embeddings

    table = build_embeddings(
        config.model.embedding,
        encoded.vocab_sizes,
        config.model.embedding_dim,
        sparse=False,
        field_dims=config.model.field_dims,
    )
    block = embedding_account(table, list(encoded.field_names), encoded.train_cat)
    if isinstance(table, MixedDimEmbeddings):  # mixed widths: what each field got
        block["field_dims"] = table.field_widths(list(encoded.field_names))
    counters = [m["table"] for m in replica_metrics or [] if m.get("table")]
    if counters:
        for key in counters[0]:
            block[key] = float(np.mean([c[key] for c in counters]))
        block["per_replica"] = counters
        if block["admitted"] and block["expired"] > 0.5 * block["admitted"]:
            block["note"] = (
                f"expiry evicted {block['expired']:,.0f} of {block['admitted']:,.0f} admitted rows "
                f"per replica ({block['rows_final']:,.0f} left at the end): with shuffled batches "
                "the table's clock runs ahead of most examples, so ids expire between their "
                "updates; expire is meant for data in time order (reprokit online)"
            )
    return block


def provenance(manifest: dict[str, Any]) -> dict[str, Any]:
    """What a summary must carry so that a baseline can be checked against it: the reprokit
    version, the resolved config and the data block (with its fingerprint) of the manifest."""
    return {
        "reprokit_version": manifest.get("reprokit_version"),
        "config": manifest.get("config"),
        "data": manifest.get("data"),
    }


def summarize_run(
    store: RunStore, config: RunConfig, churn: ChurnGroups | None = None
) -> dict[str, Any]:
    """Summary document of a finished run directory; diverged replicas are excluded from PD.

    With `churn` every task's summary also holds top-k churn per group. The document ends with
    the run's provenance (version, config, data fingerprint) from its manifest."""
    from reprokit.metrics.summary import summarize
    from reprokit.training.divergence import summary_without_pd

    metrics = [store.replica_metrics(r) for r in range(config.replicas)]
    healthy = [m["replica"] for m in metrics if not m.get("diverged")]
    diverged = [m["replica"] for m in metrics if m.get("diverged")]
    # PD needs 2 replicas that did not diverge; with fewer the summary has null PD (never a crash).
    _, labels, preds = store.load_predictions(healthy or list(range(config.replicas)))
    churn_args = {}
    if churn is not None:
        churn_args = {"groups": churn.groups, "top_k": churn.k, "group_name": churn.by}
    per_task = []
    for t in range(preds.shape[2]):
        y = labels.iloc[:, t].to_numpy(dtype=np.float64)
        if len(healthy) >= 2:
            per_task.append(summarize(preds[:, :, t], y, **churn_args))
        else:
            per_task.append(summary_without_pd(preds, t, y, len(healthy)))
    summary = per_task[0]
    if len(per_task) > 1:  # multitask: the top-level keys are the first task's
        summary["tasks"] = {
            str(name): {k: v for k, v in doc.items() if k != "schema_version"}
            for name, doc in zip(labels.columns, per_task, strict=True)
        }
    return {
        "schema_version": 1,
        "kind": KIND,
        **{k: v for k, v in summary.items() if k != "schema_version"},
        "vary": list(config.vary),
        "activation": config.model.activation,
        "diverged": {"count": len(diverged), "replicas": diverged},
        "train_seconds": {
            "mean": float(np.mean([m["train_seconds"] for m in metrics])),
            "total": float(np.sum([m["train_seconds"] for m in metrics])),
        },
        **provenance(store.manifest()),
    }


def load_run_data(
    config: RunConfig, churn_by: str | None = None, top_k: int = DEFAULT_TOP_K
) -> tuple[Any, ChurnGroups | None]:
    """The encoded data of a run and, with `churn_by`, the groups of its evaluation examples for
    top-k churn: bad data, a missing column or a bad k fail here, before any training."""
    from reprokit.data.encoding import encode, load_encoded
    from reprokit.data.mapped import eval_column, use_mapped
    from reprokit.data.splits import eval_groups, load_training_data

    k = check_top_k(top_k, "--top-k")
    if use_mapped(config.data):
        churn = ChurnGroups(churn_by, eval_column(config.data, churn_by), k) if churn_by else None
        return load_encoded(config.data), churn
    train, eval_ = load_training_data(config.data)
    churn = ChurnGroups(churn_by, eval_groups(eval_, churn_by), k) if churn_by else None
    return encode(train, eval_), churn


def train_ensemble(
    config: RunConfig,
    out: str | Path | None = None,
    workers: int = 1,
    force: bool = False,
    progress: ProgressCallback | None = None,
    encoded: Any = None,
    churn: ChurnGroups | None = None,
    step_progress: StepProgress | None = None,
    executor: Executor | None = None,
    model_factory: Callable[..., Any] | None = None,
) -> dict[str, Any]:
    """Train `config.replicas` replicas into run directory `out` (resuming it) and return the summary.

    `model_factory` (`build(schema) -> nn.Module`, see `reprokit.nn.factory`) trains the user's
    own model instead of `config.model.arch`; the config records it as `model.factory`.

    `executor` runs the replica batches (default: `LocalExecutor(workers)`); their records come
    back here and are written through the run store.

    `churn` (groups of the evaluation examples, see `reprokit.data.splits.eval_groups`) adds top-k
    churn per group to the summary; it does not change training, so a run resumes either way.
    `step_progress` follows the vectorized engine's optimizer steps (the process engine has no
    shared steps and never calls it).
    The config is validated first, exactly as the CLI validates it."""
    if model_factory is not None:
        from reprokit.nn.factory import factory_label

        config.model.factory = config.model.factory or factory_label(model_factory)
    config.validate()
    if encoded is None:
        from reprokit.data.encoding import load_encoded

        encoded = load_encoded(config.data)
    check_label_names(encoded.label_names)
    check_field_dims(config.model.field_dims, config.model.embedding, list(encoded.field_names))
    if config.model.factory:  # build it once and check its output before any replica trains
        from reprokit.nn.factory import validate_factory

        validate_factory(config, encoded, model_factory)
    data_name = Path(config.data.path).stem if config.data.path else "synthetic"
    store = RunStore(out if out is not None else default_run_dir())
    engine = choose_engine(config, encoded, model_factory)
    with run_lock(store.path):
        finished = store.prepare(build_manifest(config, encoded, data_name, engine), force=force)
        engine = _resume_engine(store, config, engine, finished)
        todo = [r for r in range(config.replicas) if r not in finished]
        done = len(finished)
        if progress:
            progress(done, config.replicas, {})
        executor = executor or LocalExecutor(workers)
        if engine == "vectorized":  # one batch: every replica stacked in one task
            payload = ReplicaPayload(encoded, config, step_progress, model_factory)
            task, batches = _train_stacked, [todo] if todo else []
        else:  # one replica per task
            payload = ReplicaPayload(encoded, config, model_factory=model_factory)
            task, batches = _train_one_by_one, [[r] for r in todo]
        for record in executor.run(task, payload, batches):
            store.write_replica(
                record.replica, record.predictions, record.metrics, record.train_log
            )
            done += 1
            if progress:
                progress(done, config.replicas, record.metrics)
        summary = summarize_run(store, config, churn)
        metrics = [store.replica_metrics(r) for r in range(config.replicas)]
        if not config.model.factory:  # a factory's module has embeddings of its own
            summary["embedding"] = embedding_block(config, encoded, metrics)
        summary["run_dir"] = str(store.path)
        store.write_summary(summary)
    return summary
