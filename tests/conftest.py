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
        started = process_tree(os.getpid())
        ray.shutdown()
        deadline = time.monotonic() + 20
        while alive(started) and time.monotonic() < deadline:
            time.sleep(0.2)
        left = alive(started)
        names = {pid: Path(f"/proc/{pid}/comm").read_text().strip() for pid in left}
        assert not left, f"Ray processes left behind after ray.shutdown(): {names}"
