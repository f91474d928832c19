"""Smoke test of the benchmark suite: `python benchmarks/run.py --quick` runs every
benchmark at tiny sizes and prints the table. No timing is asserted."""

import os
import subprocess
import sys


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN = os.path.join(ROOT, "benchmarks", "run.py")


def test_quick_benchmarks_run_and_print_the_table():
    results = os.path.join(ROOT, "benchmarks", "RESULTS.md")
    before = os.stat(results).st_mtime_ns if os.path.exists(results) else None
    proc = subprocess.run(
        [sys.executable, RUN, "--quick"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "| area" in out and "| benchmark" in out, out
    for area in ("collective", "rollout", "dispatch", "ensemble", "restore"):
        assert f"| {area}" in out, f"no {area} rows in:\n{out}"
    assert "Targets" in out, out
    # --quick prints only: RESULTS.md (the full run's) is left alone.
    after = os.stat(results).st_mtime_ns if os.path.exists(results) else None
    assert after == before
