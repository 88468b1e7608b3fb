"""Paths that cannot be written: one sentence on stderr, exit 2, and earlier files unchanged.

Root ignores permission bits, so a read-only directory is a read-only tmpfs mount where this
machine allows mounting (CI runs as root), and chmod 555 otherwise; the full disk is a tiny tmpfs.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_checks import one_error_line

TINY = ["--synth-rows", "4000", "--epochs", "1", "--hidden", "8", "--engine", "process"]


def _reprokit(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "reprokit.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
    )


def _assert_one_sentence(
    proc: subprocess.CompletedProcess, fragment: str, only_line: bool = True
) -> str:
    """Exit 2 and an `error:` sentence holding `fragment`: the only stderr line, or (a failure in
    the middle of training, after progress lines) the last one."""
    if only_line:
        line = one_error_line(proc)
    else:
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        line = proc.stderr.strip().splitlines()[-1]
        assert line.startswith("error: "), proc.stderr
    assert fragment in line, proc.stderr
    return line


def _digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _mount(target: Path, options: str) -> bool:
    if os.geteuid() != 0:
        return False
    target.mkdir(parents=True, exist_ok=True)
    cmd = ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(target)]
    return subprocess.run(cmd, capture_output=True).returncode == 0


def _umount(target: Path) -> None:
    subprocess.run(["umount", str(target)], capture_output=True)


@pytest.fixture
def small_disk(tmp_path) -> Iterator[Path]:
    disk = tmp_path / "disk"
    if not _mount(disk, "size=48k"):
        pytest.skip("cannot mount a tmpfs here (needs root and mount rights)")
    try:
        yield disk
    finally:
        _umount(disk)


def test_out_under_a_file(tmp_path):
    (tmp_path / "afile").write_text("mine")
    proc = _reprokit("train-ensemble", *TINY, "--out", str(tmp_path / "afile" / "run"))
    _assert_one_sentence(proc, "Not a directory")
    assert (tmp_path / "afile").read_text() == "mine"


@pytest.mark.skipif(not Path("/proc/self").exists(), reason="needs /proc")
def test_out_where_nothing_can_be_created():
    proc = _reprokit("train-ensemble", *TINY, "--out", "/proc/reprokit-no-such-dir/run")
    _assert_one_sentence(proc, "cannot create the directory /proc/reprokit-no-such-dir")
    from reprokit.errors import ReprokitError
    from reprokit.fsio import atomic_write_bytes

    with pytest.raises(ReprokitError, match=r"cannot write /proc/reprokit\.json .*takes no new"):
        atomic_write_bytes("/proc/reprokit.json", b"{}")  # /proc exists, but takes no files


def test_full_disk_keeps_finished_replicas_and_resumes(small_disk):
    run = small_disk / "run"
    proc = _reprokit("train-ensemble", *TINY, "--replicas", "3", "--out", str(run))
    _assert_one_sentence(proc, "No space left on device", only_line=False)
    finished = [d for d in sorted((run / "replicas").iterdir()) if (d / "metrics.json").exists()]
    assert finished, "the disk was expected to hold at least one replica"
    for d in finished:  # what was written before the disk filled is whole
        json.loads((d / "metrics.json").read_text())
    before = {d.name: _digest(d) for d in finished}
    assert not list(run.rglob(".*.tmp-*")), "a temporary file was left behind"
    subprocess.run(["mount", "-o", "remount,size=4m", str(small_disk)], check=True)
    proc = _reprokit("train-ensemble", *TINY, "--replicas", "3", "--out", str(run))
    assert proc.returncode == 0, proc.stderr
    assert {d.name: _digest(run / "replicas" / d.name) for d in finished} == before
    assert json.loads((run / "summary.json").read_text())["replicas"] == 3


def test_read_only_run_directory_is_left_unchanged(tmp_path):
    run = tmp_path / "ro" / "run"
    mounted = _mount(tmp_path / "ro", "size=4m")
    if not mounted and os.geteuid() == 0:
        pytest.skip("root without mount rights cannot make a read-only directory")
    try:
        proc = _reprokit("train-ensemble", *TINY, "--replicas", "2", "--out", str(run))
        assert proc.returncode == 0, proc.stderr
        before = _digest(run)
        if mounted:
            subprocess.run(["mount", "-o", "remount,ro", str(tmp_path / "ro")], check=True)
        else:
            for p in [run, *run.rglob("*")]:
                p.chmod(0o555 if p.is_dir() else 0o444)
        # more replicas: the extended manifest cannot be written
        proc = _reprokit("train-ensemble", *TINY, "--replicas", "3", "--out", str(run))
        _assert_one_sentence(proc, str(run))
        proc = _reprokit("report", str(run))
        _assert_one_sentence(proc, "report")
        assert _digest(run) == before
    finally:
        if mounted:
            _umount(tmp_path / "ro")
        else:
            for p in [run, *run.rglob("*")]:
                p.chmod(0o755)


def test_junit_naming_a_directory(tmp_path):
    run = tmp_path / "run"
    assert _reprokit("train-ensemble", *TINY, "--replicas", "2", "--out", str(run)).returncode == 0
    (tmp_path / "junit").mkdir()
    proc = _reprokit("gate", str(run), "--max-pd", "10", "--junit", str(tmp_path / "junit"))
    _assert_one_sentence(proc, "junit")
    assert list((tmp_path / "junit").iterdir()) == []
