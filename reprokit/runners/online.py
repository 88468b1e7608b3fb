"""`reprokit online`: Monolith's online-training protocol over the user's stream, with train and
serve copies, sync intervals, a batch baseline, PD between replicas through time, and faults.

The data, in timestamp order, is split into a batch part (the first `batch_fraction` of rows) and
`shards` chronological shards of the rest. Per replica, the batch part trains the starting model
(one pass; Monolith's batch stage), and the vocabulary and numeric scaling are fitted on it. Then
per sync interval, from that same starting model, the paper's Algorithm 1 over the shards: the
serving copy evaluates shard i, then the training copy trains on it, pushing its touched rows to
the serving copy every `interval` optimizer steps (or time units of the timestamp with
`sync_unit="time"`) and its dense weights every `dense_sync_every` sparse syncs. The frozen batch
model evaluated on the same shards is the baseline. PD (with its bootstrap CI over replicas) is
measured between the replicas' serving models on every shard.

Faults: with `snapshot_every=S` the training copy (and, for resuming, the serving copy and the
results so far) is snapshotted atomically after every S-th shard; `fail_at=K` runs the first
interval once more with the training copy's state dropped at the start of shard K and restored
from the last snapshot (the starting model if none was taken yet): the updates since are lost.
A killed run resumes: finished (interval, replica) units are kept, an unfinished unit continues
from its last snapshot, and the result equals an uninterrupted run bit for bit.

Run directory: `manifest.json` (kind `online`), `batch/<replica>.pt` (the starting models),
`units/<unit>.npz` + `.json` (finished units), `snapshots/<unit>.pt`, `online.json`.
"""

from __future__ import annotations

import io
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from reprokit.config import RunConfig
from reprokit.errors import ReprokitError
from reprokit.fsio import atomic_write_bytes
from reprokit.jsonio import to_json
from reprokit.runschema import LOCK, MANIFEST
from reprokit.runschema import ONLINE as KIND
from reprokit.sources import replica_seeds
from reprokit.store import atomic_write_json, read_json, run_lock

__all__ = ["OnlineOptions", "OnlineStream", "load_stream", "run_online"]

DOCUMENT = "online.json"
SCHEMA_VERSION = 1
SYNC_UNITS = ("batches", "time")
#: sources that make no sense for one stream replayed in order
REFUSED_SOURCES = ("async",)


@dataclass(frozen=True)
class OnlineOptions:
    """The stream protocol's settings (what `reprokit online` takes besides a run config)."""

    batch_fraction: float = 0.5
    shards: int = 10
    sync_intervals: tuple[float, ...] = (1, 4, 16)
    sync_unit: str = "batches"
    dense_sync_every: int = 8
    snapshot_every: int | None = None
    fail_at: int | None = None
    churn_by: str | None = None
    top_k: int = 10
    catch_up_tolerance: float = 0.0005

    def validate(self) -> OnlineOptions:
        checks = [
            (
                math.isfinite(self.batch_fraction) and 0 < self.batch_fraction < 1,
                f"--batch-fraction must be between 0 and 1, got {self.batch_fraction}",
            ),
            (self.shards >= 1, f"--shards must be at least 1, got {self.shards}"),
            (bool(self.sync_intervals), "--sync-intervals needs at least one interval"),
            (
                all(math.isfinite(i) and i > 0 for i in self.sync_intervals),
                f"--sync-intervals must be positive numbers, got {list(self.sync_intervals)}",
            ),
            (
                self.sync_unit == "time" or all(float(i).is_integer() for i in self.sync_intervals),
                "--sync-intervals counts batches: give whole numbers (or --sync-unit time)",
            ),
            (
                self.sync_unit in SYNC_UNITS,
                f"--sync-unit must be one of {', '.join(SYNC_UNITS)}, got {self.sync_unit!r}",
            ),
            (
                self.dense_sync_every >= 1,
                f"--dense-sync-every must be at least 1, got {self.dense_sync_every}",
            ),
            (
                self.snapshot_every is None or self.snapshot_every >= 1,
                f"--snapshot-every must be at least 1 shard, got {self.snapshot_every}",
            ),
            (
                self.fail_at is None or 1 <= self.fail_at < self.shards,
                f"--fail-at must name a shard from 1 to {self.shards - 1}, got {self.fail_at}",
            ),
            (self.top_k >= 1, f"--top-k must be at least 1, got {self.top_k}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ReprokitError(message)
        if len(set(self.sync_intervals)) != len(self.sync_intervals):
            raise ReprokitError(f"--sync-intervals repeats a value: {list(self.sync_intervals)}")
        return self


@dataclass
class OnlineStream:
    """The batch part and the stream, encoded for training (vocabulary fitted on the batch part)."""

    encoded: Any  # EncodedData: train = the batch part, eval = the stream
    stream_cat: np.ndarray  # the ids the table kind reads (raw values past the vocabulary)
    stream_time: np.ndarray
    batch_time: np.ndarray
    bounds: list[tuple[int, int]]  # each shard's rows of the stream
    groups: np.ndarray | None = None  # the churn column of the stream, when asked
    time_column: str = "timestamp"

    @property
    def fingerprint(self) -> str:
        import hashlib

        h = hashlib.sha256()
        enc = self.encoded
        for arr in (enc.train_cat, enc.train_num, enc.train_y, self.stream_cat, enc.eval_y):
            h.update(np.ascontiguousarray(arr).tobytes())
        h.update(repr(self.bounds).encode())
        return h.hexdigest()[:16]


def load_stream(config: RunConfig, options: OnlineOptions) -> OnlineStream:
    """The user's data in time order, split into the batch part and the shards, encoded."""
    from reprokit.components.tables import EMBEDDING_TABLES
    from reprokit.data.encoding import encode, timestamp_seconds
    from reprokit.data.layout import Dataset
    from reprokit.data.splits import load_dataset, select_labels

    dataset = select_labels(load_dataset(config.data), config.data.labels or config.data.label)
    column = dataset.schema.timestamp
    if not column:
        raise ReprokitError(
            f"online training needs the data's time: dataset {dataset.schema.name!r} has no "
            "timestamp column (import it with `reprokit data import ... --timestamp COL`)"
        )
    frame = dataset.frame
    times = timestamp_seconds(frame[column])
    order = np.argsort(times, kind="stable")
    n = len(order)
    n_batch = int(n * options.batch_fraction)
    n_stream = n - n_batch
    if n_batch < config.optim.batch_size or n_stream < options.shards * 2:
        raise ReprokitError(
            f"{n} rows are too few for a batch part of {options.batch_fraction:g} and "
            f"{options.shards} shards; use more data, a larger --batch-fraction or fewer --shards"
        )
    part = lambda rows: Dataset(  # noqa: E731
        frame.iloc[rows].reset_index(drop=True), dataset.schema
    )
    batch_rows, stream_rows = order[:n_batch], order[n_batch:]
    encoded = encode(part(batch_rows), part(stream_rows))
    raw = EMBEDDING_TABLES[config.model.embedding].capabilities.raw_eval_ids
    edges = np.linspace(0, n_stream, options.shards + 1).round().astype(int)
    groups = None
    if options.churn_by is not None:
        if options.churn_by not in frame.columns:
            raise ReprokitError(
                f"--churn-by column {options.churn_by!r} is not in the data; it has "
                f"{', '.join(map(repr, frame.columns))}"
            )
        groups = frame[options.churn_by].to_numpy()[stream_rows]
    return OnlineStream(
        encoded=encoded,
        stream_cat=encoded.eval_ids(raw),
        stream_time=times[stream_rows],
        batch_time=times[batch_rows],
        bounds=[(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:], strict=True)],
        groups=groups,
        time_column=column,
    )


# ---- one unit: one replica's pass over the stream at one sync interval -----------------------
@dataclass
class Schedule:
    """When the serving copy is synced: every `interval` steps (or time units), dense weights
    every `dense_every` sparse syncs. Its counters are part of a snapshot."""

    interval: float
    unit: str
    dense_every: int
    since: int = 0  # steps since the last sparse sync
    last_time: float | None = None  # the time of the last sparse sync (time unit)
    sparse_count: int = 0

    def due(self, batch_times: np.ndarray | None) -> bool:
        self.since += 1
        if self.unit == "batches":
            return self.since >= self.interval
        now = float(np.max(batch_times)) if batch_times is not None else float(self.since)
        if self.last_time is None:
            self.last_time = now
        return now - self.last_time >= self.interval

    def synced(self, batch_times: np.ndarray | None) -> bool:
        """Record a sparse sync; whether the dense weights go too."""
        self.since = 0
        if batch_times is not None:
            self.last_time = float(np.max(batch_times))
        self.sparse_count += 1
        return self.sparse_count % self.dense_every == 0


@dataclass
class UnitResult:
    """What a unit leaves: serving predictions over the whole stream and a record per shard."""

    predictions: np.ndarray  # [n_stream] (first task)
    shards: list[dict[str, Any]] = field(default_factory=list)
    failure: dict[str, Any] | None = None


def _unit_name(variant: str, interval: float, replica: int) -> str:
    return f"{variant}-i{interval:g}-r{replica:03d}"


def _save_torch(path: Path, obj: Any) -> None:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def _load_torch(path: Path) -> Any:
    return torch.load(path, weights_only=False)


def train_batch_model(
    stream: OnlineStream, config: RunConfig, replica: int, seeds: dict[str, int]
) -> tuple[dict[str, Any], np.ndarray]:
    """The starting model of one replica (one pass over the batch part) and its predictions on
    the whole stream (the frozen baseline)."""
    from reprokit.training.online import OnlineReplica, pass_order

    enc = stream.encoded
    trainer = OnlineReplica(
        config, enc.vocab_sizes, enc.train_num.shape[1], enc.train_y.shape[1], replica, seeds
    )
    order = pass_order(seeds["data-order"], 0, len(enc.train_y))
    trainer.train_pass(enc.train_cat, enc.train_num, enc.train_y, stream.batch_time, order)
    baseline = trainer.predict(stream.stream_cat, enc.eval_num)[:, 0]
    return trainer.state(), baseline


def run_unit(
    stream: OnlineStream,
    config: RunConfig,
    options: OnlineOptions,
    interval: float,
    replica: int,
    seeds: dict[str, int],
    batch_state: dict[str, Any],
    snapshot_path: Path | None,
    fail_at: int | None = None,
) -> UnitResult:
    """One replica over the stream at one sync interval (`fail_at`: the failure variant)."""
    from reprokit.training.online import OnlineReplica, ServingCopy, pass_order

    enc = stream.encoded
    trainer = OnlineReplica(
        config, enc.vocab_sizes, enc.train_num.shape[1], enc.train_y.shape[1], replica, seeds
    )
    trainer.load_state(batch_state)
    serve = ServingCopy(trainer)
    schedule = Schedule(interval, options.sync_unit, options.dense_sync_every)
    predictions = np.zeros(len(enc.eval_y), dtype=np.float64)
    records: list[dict[str, Any]] = []
    last = {"shard": -1, "train": trainer.state()}  # the last snapshot (the start: none yet)
    failure: dict[str, Any] | None = None
    start = 0
    if snapshot_path is not None and snapshot_path.exists():  # a killed run: resume
        snap = _load_torch(snapshot_path)
        trainer.load_state(snap["train"])
        serve.load_state(snap["serve"])
        schedule = Schedule(**snap["schedule"])
        predictions, records, failure = snap["predictions"], snap["records"], snap["failure"]
        last = {"shard": snap["shard"], "train": snap["train"]}
        start = snap["shard"] + 1

    def on_step(batch_times: np.ndarray | None) -> None:
        if schedule.due(batch_times):
            serve.sync_sparse()
            if schedule.synced(batch_times):
                serve.sync_dense()

    for i in range(start, len(stream.bounds)):
        lo, hi = stream.bounds[i]
        if fail_at is not None and i == fail_at and failure is None:
            lost = trainer.steps - int(last["train"]["steps"])
            trainer.load_state(last["train"])  # the training copy's state is gone: restore
            failure = {
                "fail_at": i,
                "restored_from_shard": last["shard"],
                "lost_updates": lost,
                "lost_examples": lost * config.optim.batch_size,
            }
        predictions[lo:hi] = serve.predict(stream.stream_cat[lo:hi], enc.eval_num[lo:hi])[:, 0]
        order = lo + pass_order(seeds["data-order"], i + 1, hi - lo)
        steps = trainer.train_pass(
            stream.stream_cat, enc.eval_num, enc.eval_y, stream.stream_time, order, on_step
        )
        records.append(
            {
                "shard": i,
                "steps": steps,
                "synced": serve.counter.take(),
                "sparse_syncs": serve.counter.sparse_syncs,
                "dense_syncs": serve.counter.dense_syncs,
                "table": trainer.table_stats(),
            }
        )
        if options.snapshot_every and (i + 1) % options.snapshot_every == 0:
            last = {"shard": i, "train": trainer.state()}
            if snapshot_path is not None:
                _save_torch(
                    snapshot_path,
                    {
                        "shard": i,
                        "train": last["train"],
                        "serve": serve.state(),
                        "schedule": asdict(schedule),
                        "predictions": predictions,
                        "records": records,
                        "failure": failure,
                    },
                )
    return UnitResult(predictions, records, failure)


# ---- the driver ------------------------------------------------------------------------------
def build_manifest(config: RunConfig, options: OnlineOptions, stream: OnlineStream) -> dict:
    from reprokit import __version__

    return {
        "schema_version": 1,
        "kind": KIND,
        "reprokit_version": __version__,
        "config": config.to_dict(),
        "online": {k: v for k, v in asdict(options).items() if k not in ("churn_by", "top_k")},
        "data": {
            "path": config.data.path,
            "batch_rows": int(len(stream.encoded.train_y)),
            "stream_rows": int(len(stream.encoded.eval_y)),
            "timestamp": stream.time_column,
            "labels": list(stream.encoded.label_names),
            "fingerprint": stream.fingerprint,
        },
    }


def _comparable(manifest: dict[str, Any]) -> str:
    doc = json.loads(to_json(manifest))
    doc.pop("reprokit_version", None)
    (doc.get("config") or {}).get("data", {}).pop("path", None)
    (doc.get("data") or {}).pop("path", None)
    return json.dumps(doc, sort_keys=True)


def _prepare_dir(out: Path, manifest: dict[str, Any], force: bool) -> None:
    import shutil

    path = out / MANIFEST
    if path.exists():
        old = read_json(path, "the run's manifest")
        if old.get("kind") != KIND or _comparable(old) != _comparable(manifest):
            if not force:
                raise ReprokitError(
                    f"{out} holds a run of another {'kind' if old.get('kind') != KIND else 'config'}"
                    "; use another --out or --force to replace it"
                )
            for sub in ("batch", "units", "snapshots"):
                shutil.rmtree(out / sub, ignore_errors=True)
            (out / DOCUMENT).unlink(missing_ok=True)
    elif out.exists() and any(p.name != LOCK for p in out.iterdir()) and not force:
        raise ReprokitError(f"{out} is not empty and holds no online run; use another --out")
    for sub in ("batch", "units", "snapshots"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, manifest)


def run_online(
    config: RunConfig,
    options: OnlineOptions,
    out: Path,
    *,
    force: bool = False,
    stream: OnlineStream | None = None,
    progress: Any = None,
) -> dict[str, Any]:
    """Run (or resume) the online study in `out`; returns the `online.json` document."""
    config.validate()
    options.validate()
    refused = [s for s in config.vary if s in REFUSED_SOURCES]
    if refused:
        raise ReprokitError(
            f"the {refused[0]!r} source is not available in online training (one stream, "
            "replayed in order)"
        )
    if config.engine == "vectorized":
        raise ReprokitError(
            "online training runs on the process engine (one replica at a time); drop "
            "--engine vectorized"
        )
    stream = stream or load_stream(config, options)
    out = Path(out)
    with run_lock(out):
        _prepare_dir(out, build_manifest(config, options, stream), force)
        units = [("sync", i) for i in options.sync_intervals]
        if options.fail_at is not None:
            units.append(("failure", options.sync_intervals[0]))
        total = len(units) * config.replicas
        done = 0
        results: dict[tuple[str, float], list[UnitResult]] = {}
        baselines: list[np.ndarray] = []
        for r in range(config.replicas):
            seeds = replica_seeds(config.seed, config.vary, r)
            batch_file = out / "batch" / f"{r:03d}.pt"
            if batch_file.exists():
                saved = _load_torch(batch_file)
            else:
                state, baseline = train_batch_model(stream, config, r, seeds)
                saved = {"state": state, "baseline": baseline}
                _save_torch(batch_file, saved)
            baselines.append(saved["baseline"])
            for variant, interval in units:
                name = _unit_name(variant, interval, r)
                result = _load_unit(out, name)
                started = time.perf_counter()
                if result is None:
                    result = run_unit(
                        stream,
                        config,
                        options,
                        interval,
                        r,
                        seeds,
                        saved["state"],
                        out / "snapshots" / f"{name}.pt",
                        options.fail_at if variant == "failure" else None,
                    )
                    _save_unit(out, name, result)
                    (out / "snapshots" / f"{name}.pt").unlink(missing_ok=True)
                results.setdefault((variant, interval), []).append(result)
                done += 1
                if progress is not None:
                    label = f"sync every {interval:g}, replica {r}" + (
                        " (failure run)" if variant == "failure" else ""
                    )
                    outcome = {
                        "auc": _stream_auc(stream, result.predictions),
                        "train_seconds": time.perf_counter() - started,
                    }
                    progress(done, total, outcome, label)
        doc = online_document(stream, config, options, results, np.stack(baselines))
        atomic_write_json(out / DOCUMENT, doc)
    return doc


def shard_aucs(stream: OnlineStream, predictions: np.ndarray) -> np.ndarray:
    """AUC per shard [replicas, shards] of stream predictions [replicas, n_stream] (or [shards]
    of one replica's [n_stream])."""
    from reprokit.metrics.accuracy import auc

    y = stream.encoded.eval_y[:, 0]
    p = np.atleast_2d(predictions)
    out = np.array([[auc(y[lo:hi], q[lo:hi]) for lo, hi in stream.bounds] for q in p])
    return out if predictions.ndim == 2 else out[0]


def _stream_auc(stream: OnlineStream, predictions: np.ndarray) -> float:
    """The serving model's mean AUC over the shards (for the progress line)."""
    return float(np.mean(shard_aucs(stream, predictions)))


def _save_unit(out: Path, name: str, result: UnitResult) -> None:
    buffer = io.BytesIO()
    np.save(buffer, result.predictions)
    atomic_write_bytes(out / "units" / f"{name}.npy", buffer.getvalue())
    atomic_write_json(
        out / "units" / f"{name}.json", {"shards": result.shards, "failure": result.failure}
    )


def _load_unit(out: Path, name: str) -> UnitResult | None:
    pred, meta = out / "units" / f"{name}.npy", out / "units" / f"{name}.json"
    if not (pred.exists() and meta.exists()):
        return None
    try:
        doc = read_json(meta, "an online unit")
        return UnitResult(np.load(pred), doc["shards"], doc.get("failure"))
    except (ValueError, KeyError, OSError, ReprokitError):
        return None  # damaged: train it again


# ---- the document ----------------------------------------------------------------------------
def _mean_dicts(items: list[dict[str, Any] | None]) -> dict[str, float] | None:
    items = [i for i in items if i]
    if not items:
        return None
    return {k: float(np.mean([i[k] for i in items])) for k in items[0]}


def _shard_metrics(
    stream: OnlineStream, predictions: np.ndarray, lo: int, hi: int, top_k: int
) -> dict[str, Any]:
    from reprokit.metrics.accuracy import auc, calibration, log_loss
    from reprokit.metrics.summary import summarize

    y = stream.encoded.eval_y[lo:hi, 0]
    p = predictions[:, lo:hi]
    out: dict[str, Any] = {
        "auc_online": float(np.mean([auc(y, q) for q in p])),
        "auc_online_per_replica": [auc(y, q) for q in p],
        "logloss_online": float(np.mean([log_loss(y, q) for q in p])),
        "calibration_online": float(np.mean([calibration(y, q) for q in p])),
    }
    if len(p) >= 2:
        groups = None if stream.groups is None else stream.groups[lo:hi]
        summary = summarize(p, n_resamples=999, groups=groups, top_k=top_k)
        out["pd"], out["pd_ci"] = summary["pd"], summary["pd_ci"]
        if "churn" in summary:
            out["churn"] = summary["churn"]
    else:
        out["pd"] = out["pd_ci"] = None
    return out


def online_document(
    stream: OnlineStream,
    config: RunConfig,
    options: OnlineOptions,
    results: dict[tuple[str, float], list[UnitResult]],
    baselines: np.ndarray,
) -> dict[str, Any]:
    """`online.json` (schema in docs/contracts.md)."""
    y = stream.encoded.eval_y[:, 0]
    batch_auc = [float(a) for a in shard_aucs(stream, baselines).mean(axis=0)]
    intervals = []
    for interval in options.sync_intervals:
        units = results[("sync", interval)]
        preds = np.stack([u.predictions for u in units])
        shards = []
        for i, (lo, hi) in enumerate(stream.bounds):
            entry = {
                "shard": i,
                "rows": hi - lo,
                **_shard_metrics(stream, preds, lo, hi, options.top_k),
            }
            entry["auc_batch"] = batch_auc[i]
            entry["auc_gain"] = entry["auc_online"] - batch_auc[i]
            synced = [u.shards[i]["synced"] for u in units]
            entry["synced_bytes"] = {
                "sparse": float(np.mean([s["sparse"] for s in synced])),
                "dense": float(np.mean([s["dense"] for s in synced])),
            }
            entry["rows_pushed"] = float(np.mean([s["rows"] for s in synced]))
            entry["steps"] = int(units[0].shards[i]["steps"])
            entry["table"] = _mean_dicts([u.shards[i]["table"] for u in units])
            shards.append(entry)
        syncs = np.mean([u.shards[-1]["sparse_syncs"] for u in units])
        sparse_total = sum(s["synced_bytes"]["sparse"] for s in shards)
        intervals.append(
            {
                "interval": interval,
                "unit": options.sync_unit,
                "shards": shards,
                "mean_auc_online": float(np.mean([s["auc_online"] for s in shards])),
                "mean_auc_batch": float(np.mean(batch_auc)),
                "mean_auc_gain": float(np.mean([s["auc_gain"] for s in shards])),
                "sparse_syncs": float(syncs),
                "dense_syncs": float(np.mean([u.shards[-1]["dense_syncs"] for u in units])),
                "sparse_bytes_per_sync": float(sparse_total / syncs) if syncs else 0.0,
            }
        )
    doc: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "kind": KIND,
        "replicas": config.replicas,
        "vary": list(config.vary),
        "embedding": config.model.embedding,
        "batch_rows": int(len(stream.encoded.train_y)),
        "stream_rows": int(len(y)),
        "shards": len(stream.bounds),
        "dense_sync_every": options.dense_sync_every,
        "intervals": intervals,
        "failure": None,
    }
    if ("failure", options.sync_intervals[0]) in results:
        doc["failure"] = _failure_block(
            stream, options, results[("failure", options.sync_intervals[0])], intervals[0]
        )
    return doc


def _failure_block(
    stream: OnlineStream,
    options: OnlineOptions,
    units: list[UnitResult],
    reference: dict[str, Any],
) -> dict[str, Any]:
    """The failure run against the no-failure run of the same interval, shard by shard."""
    k = int(options.fail_at or 0)
    failed_auc = shard_aucs(stream, np.stack([u.predictions for u in units])).mean(axis=0)
    shards = []
    for i in range(k, len(stream.bounds)):
        failed = float(failed_auc[i])
        base = reference["shards"][i]["auc_online"]
        shards.append(
            {"shard": i, "auc_failure": failed, "auc_no_failure": base, "delta": failed - base}
        )
    # caught up: from this many shards after the failure on, never again below the no-failure
    # run by more than the tolerance (None: still behind on the last shard)
    catch_up = None
    for j in range(len(shards) - 1, 0, -1):
        if shards[j]["delta"] < -options.catch_up_tolerance:
            break
        catch_up = j
    first = units[0].failure or {}
    return {
        "interval": options.sync_intervals[0],
        "fail_at": k,
        "snapshot_every": options.snapshot_every,
        "restored_from_shard": first.get("restored_from_shard"),
        "lost_updates": float(np.mean([(u.failure or {}).get("lost_updates", 0) for u in units])),
        "lost_examples": float(np.mean([(u.failure or {}).get("lost_examples", 0) for u in units])),
        "shards": shards,
        "catch_up_shards": catch_up,
        "note": (
            f"the failure at shard {k} follows the snapshot after shard {k - 1}: no update was "
            "lost, so the failure run equals the no-failure run (fail between two snapshots, "
            "e.g. --fail-at with --snapshot-every 2 and an odd shard)"
            if first.get("lost_updates", 0) == 0
            else None
        ),
        "catch_up_tolerance": options.catch_up_tolerance,
    }
