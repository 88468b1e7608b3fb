"""`--backend ray`: replica batches as Ray tasks, records back to the driver.

A task is one batch (one replica for the process engine, a slice of replicas for the vectorized
engine: `replicas_per_task`). It returns the batch's `ReplicaRecord`s through Ray's object store,
and `train_ensemble` writes them through the run store, exactly as with `LocalExecutor`: workers
need no shared file system, resume is the driver's business (finished replicas are never sent out),
and a task whose worker dies is run again (`max_retries`) by Ray.

Ray reuses worker processes and sets `OMP_NUM_THREADS` per task, so every task sets torch's thread
count, the deterministic flags and the global seed itself before torch does any work: nothing is
inherited from an earlier task on the same worker. The vectorized engine pads its blocks so a
replica's bits never depend on its slot in the stack, so any slicing gives the local bytes.

`ray` is an optional dependency (`pip install "reprokit[ray]"`), imported only when a Ray
executor runs.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import logging
import math
import os
import socket
from collections.abc import Iterable, Iterator
from dataclasses import fields, is_dataclass, replace
from types import TracebackType
from typing import Any

from reprokit.errors import ReprokitError
from reprokit.runners.executors import BatchTask, ReplicaRecord

log = logging.getLogger("reprokit")

#: How often Ray runs a task again whose worker died (SIGKILL, OOM killer, a lost node).
DEFAULT_MAX_RETRIES = 3

#: Ray's own switch for a loopback-only node (named after the platforms where it is the default):
#: with it off, a node started here advertises and binds 127.0.0.1 instead of the machine's IP.
_CLUSTER_SWITCH = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"

#: The name Ray gives a worker process while it runs one of our tasks (`ray::reprokit_batch`).
TASK_NAME = "reprokit_batch"

RAY_MISSING = (
    "--backend ray needs Ray, which is not installed; install it with pip install 'reprokit[ray]'"
)


def ray_available() -> bool:
    """Whether `import ray` would work (without importing it: it costs a second)."""
    return importlib.util.find_spec("ray") is not None


def _import_ray() -> Any:
    if not ray_available():
        raise ReprokitError(RAY_MISSING)
    import ray

    return ray


def start_local_ray(num_cpus: int, verbose: bool = False) -> Any:
    """Start a Ray instance on this machine for this process only: `address="local"`, every
    server bound to the loopback interface, no dashboard, Ray's logs off the terminal unless
    `verbose`. Returns the `ray` module."""
    saved_env = os.environ.get(_CLUSTER_SWITCH)
    os.environ[_CLUSTER_SWITCH] = "0"  # read when ray is imported, and by the processes it starts
    ray = _import_ray()
    from ray._private import ray_constants

    saved_flag = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False  # in case ray was imported before
    try:
        ray.init(
            address="local",
            num_cpus=num_cpus,
            include_dashboard=False,
            _node_ip_address="127.0.0.1",
            **_quiet(verbose),
        )
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved_flag
        if saved_env is None:
            os.environ.pop(_CLUSTER_SWITCH, None)
        else:
            os.environ[_CLUSTER_SWITCH] = saved_env
    return ray


#: Whether Ray's printed output is shown in full (`--verbose`); read by `_route_ray_output`.
_ROUTING: dict[str, bool] = {"verbose": False}


def _route_ray_output(verbose: bool) -> None:
    """Ray's driver prints what its cluster reports (a worker that died, an infeasible task) and,
    with log_to_driver, the workers' output, on *stdout*, where `--json` puts its document. Send
    all of it to stderr with `--verbose`; without, turn the cluster's reports into one `note:`
    line each (the `reprokit` logger) and drop the rest."""
    _ROUTING["verbose"] = verbose
    try:
        from ray._private import worker as ray_worker
    except ImportError:  # pragma: no cover - a Ray without this module prints as it likes
        return
    original = getattr(ray_worker, "print_to_stdstream", None)
    if original is None or getattr(original, "_reprokit_route", False):
        return

    def route(data: dict[str, Any], ignore_prefix: bool) -> None:
        if _ROUTING["verbose"]:
            original({**data, "is_err": True}, ignore_prefix)
            return
        if data.get("pid") == "raylet":
            for line in data.get("lines") or []:
                sentences = " ".join(str(line).split()).split(". ")
                text = ". ".join(sentences[:2]).rstrip(". :")
                log.warning("Ray: %s", text[:240])

    route._reprokit_route = True  # type: ignore[attr-defined]
    ray_worker.print_to_stdstream = route


def _quiet(verbose: bool) -> dict[str, Any]:
    """ray.init arguments that keep Ray's log lines, its own and its workers', off the user's
    terminal unless `--verbose`; errors still reach the driver as exceptions. (Its C++ core is
    quiet by itself once connected; RAY_BACKEND_LOG_LEVEL would announce itself on stderr.)"""
    _route_ray_output(verbose)
    return {
        "logging_level": logging.INFO if verbose else logging.ERROR,
        "log_to_driver": verbose,
    }


def check_reachable(address: str, timeout: float = 5.0) -> None:
    """Fail in one sentence when the cluster's address does not answer: Ray itself would keep
    retrying for minutes, printing a warning every few seconds."""
    target: str | None = address
    if address.startswith("ray://"):
        target = address[len("ray://") :]
    elif address == "auto":
        try:
            from ray._private.services import canonicalize_bootstrap_address

            target = canonicalize_bootstrap_address("auto")
        except Exception:  # noqa: BLE001  (no cluster found: ray.init says so, quickly)
            return
    if not target:
        return
    host, _, port = target.rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdigit():
        raise ReprokitError(f"--ray-address {address}: expected HOST:PORT, ray://HOST:PORT or auto")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ReprokitError(
            f"cannot reach the Ray cluster at --ray-address {address} ({host}:{port}: {reason})"
        ) from None


def reprokit_batch(
    task: BatchTask, payload: Any, batch: list[int], driver: dict[str, str]
) -> list[ReplicaRecord]:
    """The Ray task: check the worker's versions, prepare torch, run `task` on `batch`."""
    import torch

    import reprokit

    mine = {"reprokit": reprokit.__version__, "torch": torch.__version__}
    if mine != driver:
        raise ReprokitError(
            f"the Ray worker on {socket.gethostname()} runs reprokit {mine['reprokit']} with "
            f"torch {mine['torch']} but the driver reprokit {driver['reprokit']} with torch "
            f"{driver['torch']}; install the same versions on every node (kernels round "
            "differently across versions)"
        )
    prepare_torch(getattr(payload, "config", None), batch)
    # Arrays from Ray's object store are read-only views of memory every task on the node shares;
    # the task gets its own copy, as a local worker process does, so no engine can write into it.
    return list(task(copy.deepcopy(payload), batch))


def prepare_torch(config: Any, batch: list[int]) -> None:
    """Before torch works in a task: the batch's first thread count (an engine sets each
    replica's own), one inter-op thread, the deterministic flags and a fixed global seed, so that
    nothing carries over from an earlier task on a reused worker."""
    import torch

    with contextlib.suppress(RuntimeError):  # only allowed before the first parallel work
        torch.set_num_interop_threads(1)
    if config is None:
        return
    from reprokit.training.loop import configure_determinism, threads_for_replica

    torch.set_num_threads(threads_for_replica(config, batch[0]) if batch else config.threads)
    configure_determinism(config)
    torch.manual_seed(config.seed)  # engines draw from their own generators; this is a floor


def _detached(payload: Any) -> Any:
    """The payload without its in-process step callback (a driver-side progress bar cannot travel
    to a worker; replica progress follows task completions instead)."""
    is_instance = is_dataclass(payload) and not isinstance(payload, type)
    if is_instance and "on_step" in {f.name for f in fields(payload)} and payload.on_step:
        return replace(payload, on_step=None)
    return payload


def _task_cpus(config: Any, batches: Iterable[list[int]]) -> int:
    """CPUs a task asks Ray for: the most intra-op threads one of its replicas uses."""
    if config is None:
        return 1
    from reprokit.training.loop import threads_for_replica

    return max((threads_for_replica(config, r) for b in batches for r in b), default=1)


def _task_gpus(config: Any) -> int:
    """GPUs a task asks Ray for: one for a CUDA run. Ray gives each task its own device, which
    the task sees as cuda:0, so a device index would point at a GPU the task does not have."""
    device = str(getattr(config, "device", "cpu") or "cpu")
    if not device.startswith("cuda"):
        return 0
    if device not in ("cuda", "cuda:0"):
        raise ReprokitError(
            f"--device {device} with --backend ray: Ray assigns each task its GPU; use --device cuda"
        )
    return 1


def split_batches(batches: list[list[int]], size: int | None, slots: int) -> list[list[int]]:
    """Cut every batch into tasks of at most `size` replicas; with no size, into as many tasks as
    the cluster runs at once (`slots`), so a vectorized stack spreads over the workers."""
    out: list[list[int]] = []
    for batch in batches:
        step = size if size else max(1, math.ceil(len(batch) / max(slots, 1)))
        out.extend(batch[i : i + step] for i in range(0, len(batch), step))
    return [b for b in out if b]


class RayExecutor:
    """Replica batches as Ray tasks.

    `address`: None starts a Ray instance on this machine (loopback only, `workers` tasks at
    once) and stops it on `close()`; "auto" joins the cluster this machine belongs to; "HOST:PORT"
    or "ray://HOST:PORT" a given one. A Ray already initialised in this process is used as it is.
    `replicas_per_task` cuts the vectorized engine's stack into slices (default: one slice per
    free slot of the cluster). Use it as a context manager, or call `close()`, so that a Ray
    instance it started stops with the work.
    """

    def __init__(
        self,
        address: str | None = None,
        workers: int = 1,
        replicas_per_task: int | None = None,
        max_retries: int = DEFAULT_MAX_RETRIES,
        verbose: bool = False,
    ) -> None:
        if replicas_per_task is not None and replicas_per_task < 1:
            raise ReprokitError("--replicas-per-task must be at least 1")
        if workers < 1:
            raise ReprokitError("--workers must be at least 1")
        if max_retries < 0:
            raise ReprokitError("max_retries must be 0 or more")
        if not ray_available():
            raise ReprokitError(RAY_MISSING)
        if address is not None:
            check_reachable(address)  # before any work: a wrong address is one sentence
        self.address = address
        self.workers = workers
        self.replicas_per_task = replicas_per_task
        self.max_retries = max_retries
        self.verbose = verbose
        self._ray: Any = None
        self._started = False
        self._remote: Any = None

    # --- lifecycle -----------------------------------------------------------------------------
    def __enter__(self) -> RayExecutor:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Stop the Ray instance this executor started (a joined cluster keeps running)."""
        if self._started and self._ray is not None:
            self._ray.shutdown()
        self._started = False
        self._ray = None
        self._remote = None

    def _connect(self, task_cpus: int) -> Any:
        if self._ray is not None:
            return self._ray
        ray = _import_ray()
        if ray.is_initialized():
            self._ray = ray
            return ray
        if self.address is None:
            start_local_ray(self.workers * task_cpus, self.verbose)
            self._started = True
        else:
            try:
                ray.init(address=self.address, **_quiet(self.verbose))
            except (ConnectionError, RuntimeError, ValueError) as exc:
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise ReprokitError(
                    f"cannot join the Ray cluster at --ray-address {self.address}: {first}"
                ) from None
            self._started = True  # this process's connection; the cluster keeps running
        self._ray = ray
        return ray

    def _slots(self, ray: Any, task_cpus: int) -> tuple[int, int]:
        """(tasks the cluster runs at once, the most CPUs one of its nodes has)."""
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        per_node = [int(n.get("Resources", {}).get("CPU", 0)) for n in nodes] or [1]
        biggest = max(max(per_node), 1)
        cpus = min(task_cpus, biggest)
        return max(1, sum(c // cpus for c in per_node)), biggest

    # --- the executor interface ----------------------------------------------------------------
    def run(
        self, task: BatchTask, payload: Any, batches: list[list[int]]
    ) -> Iterator[ReplicaRecord]:
        """Submit every batch as a task, yield each batch's records as its task completes."""
        batches = [b for b in batches if b]
        if not batches:
            return
        config = getattr(payload, "config", None)
        cpus = _task_cpus(config, batches)
        gpus = _task_gpus(config)
        ray = self._connect(cpus)
        slots, biggest = self._slots(ray, cpus)
        if gpus and not ray.cluster_resources().get("GPU"):
            raise ReprokitError(
                f"--device {config.device} with --backend ray: no node of the Ray cluster has a GPU"
            )
        pieces = split_batches(batches, self.replicas_per_task, slots)
        if self._remote is None:
            self._remote = ray.remote(reprokit_batch)
        fn = self._remote.options(
            num_cpus=min(cpus, biggest),
            num_gpus=gpus,
            max_retries=self.max_retries,
            retry_exceptions=False,
            name=TASK_NAME,
        )
        import torch

        import reprokit

        driver = {"reprokit": reprokit.__version__, "torch": torch.__version__}
        shared = ray.put(_detached(payload))  # once per run: every task reads the same copy
        pending = {fn.remote(task, shared, piece, driver): piece for piece in pieces}
        try:
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                for ref in ready:
                    piece = pending.pop(ref)
                    yield from self._result(ray, ref, piece)
        finally:  # an error or an interrupted driver: nothing keeps training for nobody
            for ref in pending:
                with contextlib.suppress(Exception):
                    ray.cancel(ref, force=True)

    def _result(self, ray: Any, ref: Any, piece: list[int]) -> list[ReplicaRecord]:
        """A task's records; a task error raises the worker's own exception, a worker that died
        more than `max_retries` times one sentence."""
        try:
            return list(ray.get(ref))
        except ray.exceptions.RayTaskError as exc:
            cause = exc.cause if isinstance(exc.cause, BaseException) else None
            if cause is not None:
                raise cause from None
            raise
        except ray.exceptions.RayError as exc:
            which = ", ".join(map(str, piece))
            raise ReprokitError(
                f"the Ray task training replica(s) {which} failed {self.max_retries + 1} times "
                f"({type(exc).__name__}); finished replicas are kept and a re-run resumes"
            ) from None
