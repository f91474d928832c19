"""Smoke test of the benchmark suite: every area runs at tiny sizes (`--quick`), each
in its own process as `python benchmarks/run.py --quick` runs them, and every row it
returns is a measurement: a positive time, and against its anchor a positive ratio that
is the anchor's time over ours. No timing is asserted."""

import math
import os
import sys


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import run  # noqa: E402


def _positive(x) -> bool:
    return isinstance(x, float | int) and math.isfinite(x) and x > 0


def test_every_area_runs_and_every_row_is_a_measurement():
    results = os.path.join(ROOT, "benchmarks", "RESULTS.md")
    before = os.stat(results).st_mtime_ns
    rows = run.collect(quick=True, verbose=False)
    assert {r["area"] for r in rows} == set(run.AREAS)
    for r in rows:
        where = f"{r['area']}: {r['name']}"
        if not r["seconds"] and r["ref"] is None:  # a measurement other than a time
            assert r["note"], where  # (a peak memory, say: the note gives it)
            continue
        assert _positive(r["seconds"]), where
        if r["ref"] is not None and r["ref_seconds"] is not None:
            assert _positive(r["ratio"]), where
            assert math.isclose(r["ratio"], r["ref_seconds"] / r["seconds"]), where
        if r["target"] is not None:
            text, met = r["target"]
            assert text and met in (True, False, None), where
    assert os.stat(results).st_mtime_ns == before  # a quick run writes nothing
