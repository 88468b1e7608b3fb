"""Fixtures shared across test modules.

`ray_local`: one Ray instance for the whole test session (starting and stopping one costs seconds),
started the way `--backend ray` starts one on a user's machine (`address="local"`, loopback only),
and stopped at the end with a check that none of its processes is left behind.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from proc_helpers import alive, process_tree


@pytest.fixture(scope="session")
def ray_local() -> Iterator[Any]:
    """The `ray` module, initialised with a local loopback-only instance of 2 CPUs."""
    pytest.importorskip("ray")
    if not Path("/proc/net/tcp").exists():
        pytest.skip("the Ray backend tests read /proc (Linux)")
    from reprokit.runners.ray_backend import start_local_ray

    ray = start_local_ray(num_cpus=2)
    try:
        yield ray
    finally:
        # Ray's processes only: other children of this session (multiprocessing's resource
        # tracker, a test's subprocess) are not Ray's to stop
        started = {pid for pid in process_tree(os.getpid()) if _is_ray(pid)}
        ray.shutdown()
        deadline = time.monotonic() + 20
        while alive(started) and time.monotonic() < deadline:
            time.sleep(0.2)
        left = alive(started)
        names = {pid: Path(f"/proc/{pid}/comm").read_text().strip() for pid in left}
        assert not left, f"Ray processes left behind after ray.shutdown(): {names}"


def _is_ray(pid: int) -> bool:
    """Whether process `pid` is one of Ray's (its command line names ray)."""
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
    except OSError:
        return False
    return b"ray" in command.lower()
