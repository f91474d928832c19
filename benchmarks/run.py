"""Runs every benchmark of eqx_collective, each in its own process, and prints one table.

    python benchmarks/run.py            # full run; rewrites benchmarks/RESULTS.md
    python benchmarks/run.py --quick    # tiny sizes, a smoke run (< 60 s); prints only
    python benchmarks/run.py --quick --write   # ... and rewrites RESULTS.md anyway
    python benchmarks/run.py --only rollout,dispatch   # a subset (never writes RESULTS.md)

Areas (one module each, every one exposing `run(quick) -> list[dict]`):
`collective` (eager collective operations vs brainstate), `rollout` (a jitted RNN
rollout vs hand-written JAX and brainstate), `dispatch` (per-call overhead of a jitted
training step), `ensemble` (vmap_init_all_states and a vmapped ensemble forward vs a
Python loop), `restore` (assign_state_values vs brainstate), `checkpoint`
(save_states/load_states vs Equinox's tree_serialise_leaves, orbax sharded save/load).

Every ratio is *reference time / our time*, measured in the same run with interleaved
repeats: > 1 means we are faster. brainstate is optional: without it, its columns say
"n/a".
"""

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
import warnings


HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

AREAS = ("collective", "rollout", "dispatch", "ensemble", "restore", "checkpoint")
RESULTS = os.path.join(HERE, "RESULTS.md")
ROOT = os.path.dirname(HERE)


def _fmt_time(seconds: float | None) -> str:
    if seconds is None:
        return "n/a"
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds * 1e6:.1f} µs"


def _fmt_ratio(ratio: float | None, ref: str | None) -> str:
    if ref is None:
        return "n/a"
    if ratio is None:
        return "n/a"
    return f"{ratio:.2f}x"


def collect(quick: bool, only: tuple[str, ...] = AREAS, verbose: bool = True):
    """The rows of the areas in `only`, each area run in a fresh Python process
    (`python bench_<area>.py --json`), so that no benchmark runs in a process that the
    ones before it have filled (JAX's caches, the other models, a fragmented heap)."""
    rows = []
    for area in only:
        t0 = time.perf_counter()
        command = [sys.executable, os.path.join(HERE, f"bench_{area}.py"), "--json"]
        # The checkout this file lives in is measured, whichever copy is installed.
        path = os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))
        proc = subprocess.run(
            command + (["--quick"] if quick else []),
            capture_output=True,
            text=True,
            cwd=HERE,
            env={**os.environ, "PYTHONPATH": path},
        )
        if proc.returncode != 0:
            raise RuntimeError(
                f"benchmark {area!r} failed (exit {proc.returncode}):\n{proc.stderr}"
            )
        for r in json.loads(proc.stdout):
            if r.get("target") is not None:
                r["target"] = tuple(r["target"])
            rows.append(r)
        if verbose:
            print(
                f"[{area}: {time.perf_counter() - t0:.1f} s]",
                file=sys.stderr,
                flush=True,
            )
    return rows


def table_lines(rows: list[dict]) -> list[str]:
    """The table as Markdown lines (also readable as plain text)."""
    header = ["area", "benchmark", "ours", "reference", "ref. time", "ratio", "note"]
    body = [
        [
            r["area"],
            r["name"],
            _fmt_time(r["seconds"]),
            r["ref"] or "",
            _fmt_time(r["ref_seconds"]) if r["ref"] else "",
            _fmt_ratio(r["ratio"], r["ref"]) if r["ref"] else "",
            r["note"],
        ]
        for r in rows
    ]
    widths = [max(len(x[i]) for x in [header, *body]) for i in range(len(header))]

    def line(cells):
        return (
            "| "
            + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True))
            + " |"
        )

    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return [line(header), sep, *(line(b) for b in body)]


def target_lines(rows: list[dict]) -> list[str]:
    """One line per target: met, MISSED, or n/a (no reference to compare with)."""
    verdict = {True: "met", False: "MISSED", None: "n/a"}
    return [
        f"- {verdict[met]}: {desc}"
        for desc, met in (r["target"] for r in rows if r.get("target"))
    ]


def print_table(rows: list[dict], quick: bool = False) -> None:
    print("\n".join(table_lines(rows)))
    targets = target_lines(rows)
    if targets:
        print(
            "\nTargets (quick mode: smoke sizes and few repeats, not meaningful):"
            if quick
            else "\nTargets (ratios measured in this run):"
        )
        print("\n".join(targets))


def cli(run_fn, doc: str) -> None:
    """The command line of one benchmark module: `python benchmarks/bench_x.py
    [--quick] [--json]` runs it alone and prints its table (or, with `--json`, its rows
    as JSON, which is how `run.py` collects them)."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (smoke run)")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = parser.parse_args()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rows = run_fn(args.quick)
    if args.json:
        print(json.dumps(rows))
    else:
        print_table(rows, args.quick)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_lines() -> list[str]:
    import equinox
    import jax
    from _common import import_brainstate

    bst = import_brainstate()
    return [
        f"- date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"- machine: {platform.platform()}",
        f"- CPU: {_cpu_model()}, {os.cpu_count()} cores",
        f"- Python {platform.python_version()}, jax {jax.__version__} "
        f"({jax.default_backend()}), equinox {equinox.__version__}, brainstate "
        f"{bst.__version__ if bst is not None else 'n/a (not installed)'}",
    ]


def write_results(rows: list[dict], quick: bool, elapsed: float) -> None:
    lines = [
        "# Benchmark results",
        "",
        "Generated by `python benchmarks/run.py"
        + (" --quick --write" if quick else "")
        + "`; do not edit by hand. "
        "Times are medians of interleaved repeats, each area in a fresh process "
        "(`time.perf_counter`, "
        "`jax.block_until_ready`, the garbage collector off during timed calls as in "
        "`timeit`); **ratio = reference time / our time** (> 1: we are faster), "
        "measured in the same run. Growth factors come from each function's best time "
        "run alone, the two sizes timed in turns (see `bench_collective.py`).",
        "",
        *machine_lines(),
        f"- mode: {'quick (smoke sizes)' if quick else 'full'}, {elapsed:.0f} s",
        "",
        "## Targets",
        "",
        *target_lines(rows),
        "",
        "## Results",
        "",
        *table_lines(rows),
        "",
        "See each `benchmarks/bench_*.py` docstring for what exactly is measured.",
        "",
    ]
    with open(RESULTS, "w") as f:
        f.write("\n".join(lines))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (smoke run)")
    parser.add_argument(
        "--write", action="store_true", help="rewrite RESULTS.md even with --quick"
    )
    parser.add_argument(
        "--only", default=",".join(AREAS), help=f"comma-separated subset of {AREAS}"
    )
    args = parser.parse_args(argv)
    only = tuple(a.strip() for a in args.only.split(",") if a.strip())
    unknown = set(only) - set(AREAS)
    if unknown:
        parser.error(f"unknown areas {sorted(unknown)}; choose from {AREAS}")
    t0 = time.perf_counter()
    rows = collect(args.quick, only)
    elapsed = time.perf_counter() - t0
    print("\n".join(machine_lines()))
    print()
    print_table(rows, args.quick)
    if (not args.quick or args.write) and only == AREAS:
        write_results(rows, args.quick, elapsed)
        print(f"\nwrote {os.path.relpath(RESULTS)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
