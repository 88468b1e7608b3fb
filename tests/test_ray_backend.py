"""`--backend ray`: the same bytes as the local backend, on a Ray instance bound to loopback.

One Ray instance serves the whole session (`ray_local` in conftest.py). Runs are tiny (2000
synthetic rows, one epoch), so what is measured is the backend, not training.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
from cli_checks import one_error_line
from proc_helpers import alive, process_tree
from typer.testing import CliRunner

from reprokit.cli import app
from reprokit.config import RunConfig, resolve_config
from reprokit.errors import ReprokitError
from reprokit.runners.ensemble import train_ensemble
from reprokit.runners.executors import LocalExecutor, make_executor

pytest.importorskip("ray")

from reprokit.runners.ray_backend import TASK_NAME, RayExecutor, split_batches  # noqa: E402

TINY = {"data.synth_rows": 2000, "optim.epochs": 1, "model.hidden": "8"}
PD_KEYS = ("abs", "rel", "abs_mean", "rel_mean", "l2", "rel_std", "flip")
runner = CliRunner()


def _config(engine: str, replicas: int = 4, vary: str = "init,data-order", **extra: Any):
    return resolve_config(
        None, {**TINY, **extra, "engine": engine, "replicas": replicas, "vary": vary}
    )


def _prediction_bytes(run: Path) -> dict[str, bytes]:
    return {
        p.parent.name: p.read_bytes() for p in sorted(run.glob("replicas/*/predictions.parquet"))
    }


@pytest.fixture(scope="module")
def local_runs(tmp_path_factory) -> dict[str, Path]:
    """The local backend's runs that every Ray run here must reproduce byte for byte."""
    root = tmp_path_factory.mktemp("local")
    runs = {}
    for engine in ("process", "vectorized"):
        runs[engine] = root / engine
        train_ensemble(_config(engine), out=runs[engine], executor=LocalExecutor(1))
    return runs


# --- the instance -------------------------------------------------------------------------------
def _listening_sockets(pids: set[int]) -> list[tuple[str, str]]:
    """(address, process name) of every TCP socket in LISTEN state that one of `pids` holds."""
    inodes: dict[str, int] = {}
    for pid in pids:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes[target[8:-1]] = pid
        except OSError:
            continue
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not os.path.exists(table):
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            cols = line.split()
            local, state, inode = cols[1], cols[3], cols[9]
            if state == "0A" and inode in inodes:
                name = Path(f"/proc/{inodes[inode]}/comm").read_text().strip()
                found.append((_address(local.split(":")[0]), name))
    return found


def _address(hex_ip: str) -> str:
    """/proc/net/tcp{,6} address (little-endian 32-bit words) as text."""
    words = [bytes.fromhex(hex_ip[i : i + 8])[::-1] for i in range(0, len(hex_ip), 8)]
    raw = b"".join(words)
    if len(raw) == 4:
        return ".".join(map(str, raw))
    if raw[:12] == b"\0" * 10 + b"\xff\xff":  # IPv4-mapped
        return "::ffff:" + ".".join(map(str, raw[12:]))
    import ipaddress

    return str(ipaddress.IPv6Address(raw))


def _is_loopback(address: str) -> bool:
    return address.startswith(("127.", "::ffff:127.")) or address == "::1"


def test_the_ray_instance_listens_on_loopback_only(ray_local):
    pids = process_tree(os.getpid())
    sockets = _listening_sockets(pids)
    names = {name for _, name in sockets}
    assert {"gcs_server", "raylet"} <= names, sockets  # we did look at Ray's servers
    assert all(_is_loopback(addr) for addr, _ in sockets), sockets
    assert ray_local.get_runtime_context().get_node_id()
    assert {n["NodeManagerAddress"] for n in ray_local.nodes()} == {"127.0.0.1"}


def test_address_decoding():
    assert _address("0100007F") == "127.0.0.1"
    assert _address("00000000") == "0.0.0.0"
    assert _address("0000000000000000FFFF00000100007F") == "::ffff:127.0.0.1"
    assert _address("00000000000000000000000001000000") == "::1"
    assert _address("00000000000000000000000000000000") == "::"
    assert not _is_loopback("0.0.0.0") and not _is_loopback("::")


# --- same bytes ---------------------------------------------------------------------------------
@pytest.mark.parametrize("engine, per_task", [("process", None), ("vectorized", 3)])
def test_ray_gives_the_local_bytes_for_every_replica(
    ray_local, local_runs, tmp_path, engine, per_task
):
    with RayExecutor(replicas_per_task=per_task) as executor:
        train_ensemble(_config(engine), out=tmp_path / "ray", executor=executor)
    mine, theirs = _prediction_bytes(tmp_path / "ray"), _prediction_bytes(local_runs[engine])
    assert sorted(mine) == ["000", "001", "002", "003"]
    assert mine == theirs
    manifest = json.loads((tmp_path / "ray" / "manifest.json").read_text())
    assert manifest["engine"] == engine
    # and the replicas do differ: init and data-order were varied
    assert len(set(mine.values())) == 4


@pytest.mark.slow
def test_threads_as_a_varied_source_gives_the_local_bytes_on_ray(ray_local, tmp_path):
    """Replica r trains with 1 + r % 2 threads on either backend (each task asks Ray for them)."""
    config = _config("process", replicas=3, vary="threads", max_threads=2)
    train_ensemble(config, out=tmp_path / "local", executor=LocalExecutor(1))
    with RayExecutor() as executor:
        train_ensemble(config, out=tmp_path / "ray", executor=executor)
    assert _prediction_bytes(tmp_path / "ray") == _prediction_bytes(tmp_path / "local")
    threads = [
        json.loads((tmp_path / "ray" / "replicas" / f"{r:03d}" / "metrics.json").read_text())[
            "threads"
        ]
        for r in range(3)
    ]
    assert threads == [1, 2, 1]


def test_cuda_on_a_cluster_without_gpus_is_one_sentence(ray_local):
    config = resolve_config(None, TINY)
    config.device = "cuda"  # validation would refuse cuda on this machine before the executor
    with (
        RayExecutor() as executor,
        pytest.raises(ReprokitError, match="no node of the Ray cluster has a GPU"),
    ):
        list(executor.run(_refuse, _ThreadProbe(config), [[0]]))
    config.device = "cuda:1"
    with RayExecutor() as executor, pytest.raises(ReprokitError, match="use --device cuda$"):
        list(executor.run(_refuse, _ThreadProbe(config), [[0]]))


def test_vectorized_slices_give_the_whole_stack_bytes(ray_local, local_runs, tmp_path):
    """One replica per task is the extreme slicing; replicas 1 and 2 alone are a slice whose slot
    in the stack differs from the local run's."""
    with RayExecutor(replicas_per_task=1) as executor:
        train_ensemble(_config("vectorized"), out=tmp_path / "one", executor=executor)
    assert _prediction_bytes(tmp_path / "one") == _prediction_bytes(local_runs["vectorized"])


def test_split_batches():
    assert split_batches([[0, 1, 2, 3, 4]], 2, slots=8) == [[0, 1], [2, 3], [4]]
    assert split_batches([[0, 1, 2, 3, 4]], None, slots=2) == [[0, 1, 2], [3, 4]]
    assert split_batches([[0], [1], [2]], None, slots=1) == [[0], [1], [2]]
    assert split_batches([[0, 1], []], None, slots=1) == [[0, 1]]


# --- what a task starts from --------------------------------------------------------------------
@dataclass
class _ThreadProbe:
    config: RunConfig


def _probe_threads(payload: _ThreadProbe, batch: list[int]) -> list[tuple[int, int]]:
    """Report the thread count the task starts with, then leave a wrong one behind."""
    import torch

    seen = torch.get_num_threads()
    torch.set_num_threads(7)
    return [(batch[0], seen)]


def test_no_task_inherits_a_thread_count_from_an_earlier_one(ray_local):
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    config = resolve_config(None, {**TINY, "vary": "threads", "max_threads": 3})
    batches = [[r] for r in range(8)]  # 8 tasks on 2 CPUs: workers are reused
    with RayExecutor() as executor:
        seen = dict(executor.run(_probe_threads, _ThreadProbe(config), batches))
    assert seen == {r: 1 + r % 3 for r in range(8)}  # threads_for_replica, never the 7 left behind


# --- control arm, end to end ------------------------------------------------------------------
class _TaskKiller:
    """SIGKILLs the first worker process of `root`'s tree seen running one of our tasks (Ray
    names the process after the task while it runs), and records every process of the tree."""

    def __init__(self, root: int, kill: bool = True) -> None:
        self.root = root
        self.kill = kill
        self.killed: list[int] = []
        self.seen: dict[int, str] = {}  # every process of the tree, to check none outlives it
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        title = f"ray::{TASK_NAME}".encode()
        while not self._stop.is_set():
            tree = alive(process_tree(self.root))
            for pid in tree:  # names settle after exec; a process on its way out reads "?"
                name = _name(pid)
                if name != "?" or pid not in self.seen:
                    self.seen[pid] = name
            if self.killed or not self.kill:
                time.sleep(0.01)
                continue
            for pid in tree:
                try:
                    running = Path(f"/proc/{pid}/cmdline").read_bytes().startswith(title)
                except OSError:
                    continue
                if running:
                    os.kill(pid, signal.SIGKILL)
                    self.killed.append(pid)
                    break
            time.sleep(0.002)

    def __enter__(self) -> _TaskKiller:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@pytest.mark.parametrize("kill", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_control_arm_is_exactly_zero_on_ray_end_to_end(tmp_path, kill):
    """A real `reprokit train-ensemble --backend ray --json` (its own Ray instance; with `kill`,
    its first task's worker is SIGKILLed and the task runs again): PD is exactly 0, stdout holds
    only the JSON document, Ray's reports are `note:` lines, and no Ray process is left."""
    out = tmp_path / "control"
    proc = subprocess.Popen(
        [sys.executable, "-m", "reprokit.cli", "train-ensemble", "--backend", "ray",
         "--workers", "2", "--replicas", "3", "--vary", "none", "--synth-rows", "6000",
         "--epochs", "1", "--hidden", "8", "--out", str(out), "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "REPROKIT_PROGRESS_INTERVAL": "0"},
    )  # fmt: skip
    with _TaskKiller(proc.pid, kill) as killer:
        stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    assert bool(killer.killed) == kill, "no task was running to be killed"
    if kill:
        assert any(line.startswith("note: Ray: ") for line in stderr.splitlines()), stderr
    doc = json.loads(stdout)  # nothing but the document on stdout
    assert {k: doc["pd"][k] for k in PD_KEYS} == dict.fromkeys(PD_KEYS, 0.0)
    preds = list(_prediction_bytes(out).values())
    assert len(preds) == 3 and len(set(preds)) == 1
    lines = stderr.splitlines()
    noise = [line for line in lines if "ray" in line.lower() and not line.startswith("note: Ray: ")]
    assert not [line for line in noise if "/tmp" not in line], lines
    done = [line for line in lines if re.search(r"replica [1-3]/3 done", line)]
    assert len(done) == 3, lines  # one line per task completion
    assert set(killer.seen.values()) >= {"gcs_server", "raylet"}
    deadline = time.monotonic() + 30
    while alive(set(killer.seen)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not alive(set(killer.seen)), {pid: killer.seen[pid] for pid in alive(set(killer.seen))}


def _name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "?"


# --- a worker dies ------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_killed_worker_is_retried_and_the_result_is_unchanged(ray_local, local_runs, tmp_path):
    with _TaskKiller(os.getpid()) as killer, RayExecutor(max_retries=3) as executor:
        train_ensemble(_config("process"), out=tmp_path / "run", executor=executor)
    assert killer.killed, "no task was running to be killed"
    assert _prediction_bytes(tmp_path / "run") == _prediction_bytes(local_runs["process"])


def test_a_worker_dying_more_often_than_retried_is_one_sentence(ray_local, tmp_path):
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    config = resolve_config(None, TINY)
    with RayExecutor(max_retries=0) as executor, pytest.raises(ReprokitError) as info:
        list(executor.run(_die, _ThreadProbe(config), [[5]]))
    assert str(info.value).startswith("the Ray task training replica(s) 5 failed 1 times")
    assert "\n" not in str(info.value)


def _die(payload: Any, batch: list[int]) -> list[Any]:
    os.kill(os.getpid(), signal.SIGKILL)
    return []


def test_an_error_inside_a_task_is_the_task_s_own_sentence(ray_local):
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    config = resolve_config(None, TINY)
    with RayExecutor() as executor, pytest.raises(ReprokitError, match="^bad replica 3$"):
        list(executor.run(_refuse, _ThreadProbe(config), [[3]]))


def _refuse(payload: Any, batch: list[int]) -> list[Any]:
    raise ReprokitError(f"bad replica {batch[0]}")


# --- resume -------------------------------------------------------------------------------------
class _Interrupt:
    """A progress callback that interrupts the driver once `after` replicas are stored."""

    def __init__(self, after: int) -> None:
        self.after = after

    def __call__(self, done: int, total: int, metrics: dict[str, Any]) -> None:
        if metrics and done >= self.after:
            raise KeyboardInterrupt


def _executor(backend: str) -> Any:
    """The backend's executor as a context manager (a Ray executor closes what it started)."""
    return RayExecutor() if backend == "ray" else contextlib.nullcontext(LocalExecutor(1))


@pytest.mark.slow
@pytest.mark.parametrize("first, then", [("ray", "local"), ("local", "ray")])
def test_an_interrupted_run_resumes_with_either_backend(
    ray_local, local_runs, tmp_path, first, then
):
    run = tmp_path / "run"
    config = _config("process")
    with pytest.raises(KeyboardInterrupt), _executor(first) as executor:
        train_ensemble(config, out=run, executor=executor, progress=_Interrupt(2))
    kept = {p.parent.name: p.stat().st_mtime_ns for p in run.glob("replicas/*/metrics.json")}
    assert 2 <= len(kept) < 4
    with _executor(then) as executor:
        summary = train_ensemble(config, out=run, executor=executor)
    assert summary["replicas"] == 4
    assert {
        name: (run / "replicas" / name / "metrics.json").stat().st_mtime_ns for name in kept
    } == kept
    assert _prediction_bytes(run) == _prediction_bytes(local_runs["process"])


# --- the command line ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "command", ["train-ensemble", "compare", "compare-activations", "attribute", "stability"]
)
def test_every_training_command_has_the_backend_options(command):
    result = runner.invoke(app, [command, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for flag in ("--backend", "--ray-address", "--replicas-per-task"):
        assert flag in result.output, (command, flag)


@pytest.mark.parametrize(
    "args, sentence",
    [
        (["--backend", "spark"], "unknown --backend 'spark'; choose one of local, ray"),
        (["--ray-address", "auto"], "--ray-address applies to --backend ray only"),
        (["--replicas-per-task", "2"], "--replicas-per-task applies to --backend ray only"),
        (["--backend", "ray", "--ray-address", " "], "--ray-address is empty"),
        (["--backend", "ray", "--ray-address", "nonsense"], "--ray-address nonsense: expected"),
        (
            ["--backend", "ray", "--ray-address", "ray://127.0.0.1:1"],
            "cannot reach the Ray cluster at --ray-address ray://127.0.0.1:1 (127.0.0.1:1: ",
        ),
    ],
)
def test_bad_backend_options_are_one_line(tmp_path, args, sentence):
    result = runner.invoke(app, ["train-ensemble", *args, "--out", str(tmp_path / "r")])
    assert one_error_line(result).startswith(f"error: {sentence}")
    assert not (tmp_path / "r").exists()


def test_backend_ray_without_ray_installed_is_one_line(tmp_path, monkeypatch):
    import reprokit.runners.ray_backend as backend

    monkeypatch.setattr(backend, "ray_available", lambda: False)
    result = runner.invoke(app, ["attribute", "--backend", "ray", "--out", str(tmp_path / "r")])
    line = one_error_line(result)
    assert line == (
        "error: --backend ray needs Ray, which is not installed; install it with "
        "pip install 'reprokit[ray]'"
    )
    with pytest.raises(ReprokitError, match="needs Ray"):
        make_executor("ray")


@pytest.mark.slow
def test_a_study_on_ray_matches_the_local_study(ray_local, tmp_path):
    """`reprokit compare --backend ray` (in this process, on the session's instance): every
    arm's replicas have the local bytes."""
    common = ["compare", "--arm", "model.dropout=0", "--arm", "model.dropout=0.2", "--replicas",
              "2", "--synth-rows", "2000", "--epochs", "1", "--engine", "process", "--json"]  # fmt: skip
    local = runner.invoke(app, [*common, "--out", str(tmp_path / "local")])
    assert local.exit_code == 0, local.stderr
    on_ray = runner.invoke(app, [*common, "--backend", "ray", "--out", str(tmp_path / "ray")])
    assert on_ray.exit_code == 0, on_ray.stderr
    arms = sorted(p.name for p in (tmp_path / "local" / "arms").iterdir())
    assert len(arms) == 2
    for arm in arms:
        mine = _prediction_bytes(tmp_path / "ray" / "arms" / arm)
        assert mine and mine == _prediction_bytes(tmp_path / "local" / "arms" / arm)
    assert json.loads(on_ray.stdout)["arms"][1]["pd"] == json.loads(local.stdout)["arms"][1]["pd"]
    assert ray_local.is_initialized()  # a Ray it did not start is left running


def test_prediction_columns_are_read_back(local_runs):
    """Sanity check of the reference runs themselves: 4 replicas of 400 predictions each."""
    tables = [
        pq.read_table(p)
        for p in sorted(local_runs["process"].glob("replicas/*/predictions.parquet"))
    ]
    assert len(tables) == 4 and all(t.num_rows == 400 for t in tables)
    assert not np.array_equal(tables[0].column("prediction"), tables[1].column("prediction"))


# --- the cluster example and the benchmark ------------------------------------------------------
ROOT = Path(__file__).resolve().parents[1]


def test_the_cluster_example_is_a_valid_ray_up_config():
    import copy

    yaml = pytest.importorskip("yaml")
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((ROOT / "examples" / "ray-cluster.yaml").read_text())
    validate_config(prepare_config(copy.deepcopy(config)))
    assert config["provider"]["type"] == "local"
    setup = " ".join(config["setup_commands"])
    assert "reprokit[ray]" in setup and "ray==" in setup  # the same versions on every node


@pytest.mark.slow
def test_the_backend_benchmark_reports_identical_runs_and_a_model():
    cmd = [sys.executable, str(ROOT / "benchmarks" / "backend_scaling.py"), "--replicas", "2",
           "--rows", "2000", "--hidden", "8", "--ray-workers", "1", "--engines", "process"]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=True)
    doc = json.loads(out.stdout)
    ray1 = doc["results"]["process"]["ray-1"]
    assert ray1["cold"]["identical"] and ray1["warm"]["identical"]
    assert ray1["task_overhead_seconds"] > 0 and ray1["startup_seconds"] > 0
    model = doc["model"]
    assert model["N"] == 2 and set(model["predicted"]) >= {"1", "2", "4"}
    one = model["predicted"]["1"]
    assert one["waves"] == math.ceil(2 / model["C"])
    expected = (
        model["startup_seconds"]
        + model["driver_fixed_seconds"]
        + max(
            one["waves"] * (model["t_replica_seconds"] + model["task_overhead_seconds"]),
            2 * model["driver_write_seconds_per_replica"],
        )
    )
    assert one["seconds"] == pytest.approx(expected)
