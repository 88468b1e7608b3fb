"""The run directory: manifest, per-replica files, summary; atomic writes; resume and refusal.

Layout (a contract, see docs/contracts.md; names and column roles live in `reprokit.runschema`):
    RUN_DIR/manifest.json
    RUN_DIR/replicas/NNN/{predictions.parquet, metrics.json, train_log.parquet}
    RUN_DIR/summary.json
A replica counts as finished when all its files are there and readable: metrics.json is written
last, and a replica whose files are missing, truncated or corrupt is trained again on resume.
While a run writes, RUN_DIR/.reprokit.lock names its process, so a second live run is refused.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from reprokit.data.layout import atomic_write_table
from reprokit.errors import ReprokitError
from reprokit.fsio import atomic_write_bytes, make_dirs
from reprokit.jsonio import to_json
from reprokit.runschema import (
    LOCK,
    MANIFEST,
    METRICS,
    PREDICTIONS,
    REPLICA_FILES,
    REPLICAS,
    SUMMARY,
    TRAIN_LOG,
    ReplicaColumns,
)

__all__ = [
    "MANIFEST",
    "REPLICAS",
    "RESUME_KEYS",
    "SUMMARY",
    "SUPPORTED_SCHEMA",
    "RunStore",
    "atomic_write_bytes",
    "atomic_write_frame",
    "atomic_write_json",
    "comparable_manifest",
    "first_difference",
    "read_json",
    "run_lock",
]

log = logging.getLogger("reprokit")

#: The newest run-directory schema this version reads (and the one it writes).
SUPPORTED_SCHEMA = 1

#: Manifest keys that must agree for a run directory to be resumed (the rest is informational).
#: The replica count may grow (a resumed run is extended), so it is compared apart.
RESUME_KEYS = ("kind", "config", "replica_seeds", "data")


def atomic_write_json(path: str | os.PathLike, doc: Any) -> None:
    atomic_write_bytes(path, (to_json(doc) + "\n").encode())


def atomic_write_frame(path: str | os.PathLike, frame: pd.DataFrame) -> None:
    atomic_write_table(pa.Table.from_pandas(frame, preserve_index=False), path)


def read_json(path: str | os.PathLike, what: str | None = None) -> dict[str, Any]:
    """Read a JSON object of a run directory; a missing, unreadable, corrupt or too-new file is a
    one-sentence error (every reader of run directories, report and gate included, comes here)."""
    path = Path(path)
    what = what or path.name
    if not path.is_file():
        raise ReprokitError(f"{what} not found: {path}")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ReprokitError(f"{what} is corrupt ({path} is not valid JSON: {exc})") from None
    except OSError as exc:
        raise ReprokitError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    if not isinstance(doc, dict):
        raise ReprokitError(f"{what} is corrupt ({path}: expected a JSON object)")
    version = doc.get("schema_version")
    if version is not None and (not isinstance(version, int) or version > SUPPORTED_SCHEMA):
        raise ReprokitError(
            f"{path} has schema_version {version!r}; this reprokit reads up to {SUPPORTED_SCHEMA}, "
            "upgrade reprokit"
        )
    return doc


def comparable_manifest(doc: dict[str, Any]) -> dict[str, Any]:
    """The manifest keys a resume must agree on, without the replica count (a run may be extended
    with more replicas) and the data file's path (the same data named from another directory; the
    data fingerprint must still agree)."""
    # Round-trip through JSON so tuples/lists and numpy scalars compare the way they are stored.
    out = json.loads(to_json({k: doc.get(k) for k in RESUME_KEYS}))
    if isinstance(out.get("config"), dict):
        out["config"].pop("replicas", None)
        # where the data file is named from does not matter: its fingerprint must agree
        if isinstance(out["config"].get("data"), dict):
            out["config"]["data"].pop("path", None)
            out["config"]["data"].pop("storage", None)  # the same arrays either way
    if isinstance(out.get("data"), dict):
        out["data"].pop("path", None)
    return out


def with_current_defaults(config: Any) -> Any:
    """A stored config with the settings added since it was written filled in at their defaults,
    so a run made by an older reprokit resumes (settings it has keep their values)."""
    if not isinstance(config, dict):
        return config
    from reprokit.config import config_from_dict

    try:
        return config_from_dict(config).to_dict()
    except ReprokitError:  # a key this version does not know: compare it as stored
        return config


def _common_seeds(old: dict[str, Any], new: dict[str, Any]) -> tuple[dict, dict]:
    """Both manifests' comparable parts, with replica seeds restricted to the shared replicas."""
    old = {**old, "config": with_current_defaults(old.get("config"))}
    new = {**new, "config": with_current_defaults(new.get("config"))}
    a, b = comparable_manifest(old), comparable_manifest(new)
    seeds_a, seeds_b = a.get("replica_seeds"), b.get("replica_seeds")
    if isinstance(seeds_a, dict) and isinstance(seeds_b, dict):
        shared = set(seeds_a) & set(seeds_b)
        a["replica_seeds"] = {k: v for k, v in seeds_a.items() if k in shared}
        b["replica_seeds"] = {k: v for k, v in seeds_b.items() if k in shared}
    return a, b


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


@contextlib.contextmanager
def run_lock(path: str | os.PathLike) -> Iterator[None]:
    """Hold `path`/.reprokit.lock while a run writes there; refuse a second live run.

    The lock file holds the owner's host and pid. A lock left by a process that no longer runs
    (killed with SIGKILL, say) on this host is taken over; one of another host is respected.
    """
    directory = make_dirs(path)
    lock = directory / LOCK
    me = f"{socket.gethostname()} {os.getpid()}"
    for _ in range(3):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                host, pid_text = lock.read_text().split()
                pid = int(pid_text)
            except (OSError, ValueError):
                host, pid = socket.gethostname(), -1  # unreadable or half-written: stale
            if host == socket.gethostname() and (pid < 0 or not _pid_alive(pid)):
                with contextlib.suppress(FileNotFoundError):
                    lock.unlink()
                continue
            where = f"pid {pid}" if host == socket.gethostname() else f"pid {pid} on {host}"
            raise ReprokitError(
                f"another reprokit run ({where}) is writing to {directory}; wait for it to "
                f"finish or choose another --out (delete {lock} if that run is gone)"
            ) from None
        with os.fdopen(fd, "w") as fh:
            fh.write(me + "\n")
        break
    else:
        raise ReprokitError(f"cannot take the lock {lock}; delete it if no run is writing there")
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            if lock.read_text().strip() == me:
                lock.unlink()


def replica_problem(directory: Path) -> str | None:
    """Why a replica directory does not hold a finished, readable replica (None when it does)."""
    missing = [name for name in REPLICA_FILES if not (directory / name).is_file()]
    if missing:
        return f"{missing[0]} is missing"
    try:
        doc = json.loads((directory / METRICS).read_text(encoding="utf-8"))
        if not isinstance(doc, dict):
            return f"{METRICS} is not a JSON object"
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return f"{METRICS} is unreadable or truncated"
    for name in (PREDICTIONS, TRAIN_LOG):
        try:
            pq.read_metadata(directory / name)
        except (OSError, pa.ArrowException):
            return f"{name} is unreadable or truncated"
    return None


def first_difference(old: Any, new: Any, where: str = "") -> str:
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new)):
            if old.get(key) != new.get(key):
                return first_difference(
                    old.get(key), new.get(key), f"{where}.{key}" if where else key
                )
    return f"{where} is {old!r} there but {new!r} now"


class RunStore:
    """Reads and writes one run directory."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        #: Replicas whose files were unreadable when the run was reopened: (replica, why).
        self.repaired: list[tuple[int, str]] = []

    # --- layout -------------------------------------------------------------------------------
    @property
    def manifest_path(self) -> Path:
        return self.path / MANIFEST

    @property
    def summary_path(self) -> Path:
        return self.path / SUMMARY

    def replica_dir(self, replica: int) -> Path:
        return self.path / REPLICAS / f"{replica:03d}"

    def is_finished(self, replica: int) -> bool:
        return replica_problem(self.replica_dir(replica)) is None

    # --- manifest and resume ------------------------------------------------------------------
    def prepare(self, manifest: dict[str, Any], force: bool = False) -> list[int]:
        """Create or reopen the run directory; return the replicas already finished.

        A directory whose manifest disagrees with `manifest` is refused unless `force`, in which case
        its old replicas and summary are removed first. A larger replica count extends the run
        (finished replicas are kept); a replica whose files are unreadable is removed, so that it
        is trained again, and listed in `self.repaired`.
        """
        if self.path.exists() and not self.path.is_dir():
            raise ReprokitError(f"{self.path} exists and is not a directory")
        new_n = int(manifest["config"]["replicas"])
        if self.manifest_path.exists():
            old = read_json(self.manifest_path, "manifest")
            a, b = _common_seeds(old, manifest)
            if old.get("kind") != manifest.get("kind") and not force:
                raise ReprokitError(
                    f"{self.path} holds a {old.get('kind') or 'different'} run, not a "
                    f"{manifest.get('kind')} run; choose another --out or pass --force to "
                    "overwrite it"
                )
            if a != b:
                if not force:
                    raise ReprokitError(
                        f"{self.path} holds a run of another configuration "
                        f"({first_difference(a, b)}); choose another --out or pass --force to "
                        "overwrite it"
                    )
                self._clear()
            else:
                old_n = int((old.get("config") or {}).get("replicas") or 0)
                kept = [r for r in range(new_n, old_n) if self.replica_dir(r).exists()]
                if kept and not force:
                    which = (
                        f"replica {kept[0]:03d}"
                        if len(kept) == 1
                        else f"replicas {kept[0]:03d}..{kept[-1]:03d}"
                    )
                    raise ReprokitError(
                        f"{self.path} holds {old_n} replicas; --replicas {new_n} would leave "
                        f"{which} out of its summary; use --replicas {old_n} or more, or pass "
                        "--force to start over"
                    )
                if kept:
                    self._clear()
                elif old_n != new_n:  # more replicas: extend the run, keep the finished ones
                    atomic_write_json(self.manifest_path, self._extended(old, manifest, new_n))
        elif self.path.exists() and any(p.name != LOCK for p in self.path.iterdir()):
            if not force:
                raise ReprokitError(
                    f"{self.path} exists, is not empty and is not a reprokit run directory; "
                    "choose another --out or pass --force"
                )
            self._clear()
        self.path.mkdir(parents=True, exist_ok=True)
        if not self.manifest_path.exists():
            atomic_write_json(self.manifest_path, manifest)
        return self._finished_or_repaired(new_n)

    @staticmethod
    def _extended(old: dict[str, Any], new: dict[str, Any], n: int) -> dict[str, Any]:
        """The old manifest with the replica count and seeds of the new one (more replicas)."""
        return {
            **old,
            "config": {**old["config"], "replicas": n},
            "replica_seeds": {**(old.get("replica_seeds") or {}), **new["replica_seeds"]},
        }

    def _finished_or_repaired(self, n: int) -> list[int]:
        finished = []
        self.repaired = []
        for r in range(n):
            d = self.replica_dir(r)
            if not d.exists():
                continue
            problem = replica_problem(d)
            if problem is None:
                finished.append(r)
                continue
            if (d / METRICS).exists():  # it had finished, and a file was damaged since
                self.repaired.append((r, problem))
                log.warning("replica %03d: %s; training it again", r, problem)
            shutil.rmtree(d)
        # a finished run that gains or repairs replicas needs a new summary
        if len(finished) < n and self.summary_path.exists():
            self.summary_path.unlink()
        return finished

    def _clear(self) -> None:
        for child in (self.path / REPLICAS, self.summary_path, self.manifest_path):
            if child.is_dir():
                shutil.rmtree(child)
            elif child.exists():
                child.unlink()

    def manifest(self) -> dict[str, Any]:
        return read_json(self.manifest_path, "manifest")

    def columns(self) -> ReplicaColumns | None:
        """The label and prediction columns the manifest declares (None for older manifests)."""
        return ReplicaColumns.from_manifest(self.manifest())

    # --- replicas -----------------------------------------------------------------------------
    def write_replica(
        self,
        replica: int,
        predictions: pd.DataFrame,
        metrics: dict[str, Any],
        train_log: pd.DataFrame,
    ) -> None:
        d = self.replica_dir(replica)
        atomic_write_frame(d / PREDICTIONS, predictions)
        atomic_write_frame(d / TRAIN_LOG, train_log)
        atomic_write_json(d / METRICS, metrics)  # last: marks the replica finished

    def replica_metrics(self, replica: int) -> dict[str, Any]:
        return read_json(self.replica_dir(replica) / METRICS, "replica metrics")

    def load_predictions(
        self, replicas: list[int] | None = None
    ) -> tuple[np.ndarray, pd.DataFrame, np.ndarray]:
        """(example ids [N], labels frame [N, T], predictions [M, N, T] float64) of finished replicas.

        The label and prediction columns are the manifest's. Refuses replicas whose example ids
        differ: PD is only defined on identical evaluation sets.
        """
        manifest = self.manifest()
        if replicas is None:
            replicas = list(range(int(manifest["config"]["replicas"])))
        ids: np.ndarray | None = None
        labels: pd.DataFrame | None = None
        preds = []
        for r in replicas:
            path = self.replica_dir(r) / PREDICTIONS
            try:
                frame = pq.read_table(path).to_pandas()
            except (OSError, pa.ArrowException) as exc:
                raise ReprokitError(f"cannot read {path} ({exc.__class__.__name__})") from None
            try:
                cols = ReplicaColumns.resolve(manifest, frame.columns)
            except ReprokitError as exc:
                raise ReprokitError(f"{path}: {exc}") from None
            if ids is None:
                ids = frame["example_id"].to_numpy()
                labels = frame[list(cols.labels)]
            elif not np.array_equal(ids, frame["example_id"].to_numpy()):
                raise ReprokitError(f"replica {r} was evaluated on other examples than replica 0")
            preds.append(frame[list(cols.predictions)].to_numpy(dtype=np.float64))
        if ids is None or labels is None:
            raise ReprokitError(f"{self.path} has no finished replicas")
        return ids, labels, np.stack(preds)

    def write_summary(self, summary: dict[str, Any]) -> None:
        atomic_write_json(self.summary_path, summary)

    def summary(self) -> dict[str, Any]:
        return read_json(self.summary_path, "summary")
