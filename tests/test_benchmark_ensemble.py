"""benchmarks/ensemble_speed.py end to end on a small problem: its JSON parses, both engines
agree, and the GEMM floor it reports is consistent with the timings beside it."""

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "ensemble_speed.py"


def test_ensemble_speed_reports_speedups_and_the_gemm_floor():
    cmd = [sys.executable, str(SCRIPT), "--rows", "3000", "--replicas", "2", "--repeats", "1"]
    cmd += ["--hidden", "32-16", "--threads", "1"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=300)
    doc = json.loads(out.stdout)
    (res,) = doc["results"]
    assert res["replicas"] == 2 and doc["data"]["train_rows"] > 0
    seq, plain, vec = res["sequential"], res["plain"], res["vectorized"]
    for run in (seq, plain, vec):
        assert run["train_seconds"] > 0 and run["peak_memory_mb"] > 0
    # a short run: replica k of the two engines agrees to float32 rounding
    assert res["max_abs_dp_vs_sequential"] < 1e-5
    assert res["speedup_train"] == seq["train_seconds"] / vec["train_seconds"]
    floor = res["gemm_floor_seconds"]
    assert floor > 0
    assert res["speedup_ceiling_vs_plain"] == plain["train_seconds"] / floor
    assert res["vectorized_gemm_share"] == floor / vec["train_seconds"]
