"""Shared helpers of the benchmarks: interleaved median timing, the optional brainstate
import, and the row format that `run.py` prints.

A row is a dict:

- `area`: the benchmark module (`'collective'`, `'rollout'`, ...);
- `name`: what was measured;
- `seconds`: our median time;
- `ref`: the name of what we compare against (or `None`);
- `ref_seconds`: its median time in the same run (or `None`: not available);
- `ratio`: `ref_seconds / seconds` (> 1 means we are faster), or `None`;
- `note`: free text (growth factors, memory, ...), may be empty;
- `target`: optional `(description, met)` listed by `run.py`; `met` is `True`,
  `False`, or `None` when there is nothing to compare with (brainstate missing).
"""

import gc
import statistics
import time
import warnings
from collections.abc import Callable

import equinox as eqx
import jax.numpy as jnp

import eqx_collective as ec


def import_brainstate():
    """brainstate, or `None` if it is not importable (the `bench` extra installs it)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import brainstate
    except ImportError:
        return None
    return brainstate


def interleaved_medians(
    fns: list[Callable[[], object]], repeats: int, warmup: int = 1
) -> list[float]:
    """The median of each function's times from `interleaved_times`."""
    return [statistics.median(ts) for ts in interleaved_times(fns, repeats, warmup)]


def interleaved_times(
    fns: list[Callable[[], object]], repeats: int, warmup: int = 1
) -> list[list[float]]:
    """Wall times (`time.perf_counter`) of `repeats` calls of each of `fns`, run
    round-robin so that all of them see the same machine load. Each `fn` must block
    until its result is ready (call `jax.block_until_ready` inside).

    The order rotates from one round to the next. As `timeit` does, the garbage
    collector is off during the timed calls: otherwise a full collection, whose cost
    grows with everything the process holds (JAX's caches, the other benchmarks'
    models), lands in whichever call happens to trigger it. A full collection runs
    (untimed) before the first round, and a young-generation one before each round.
    """
    for _ in range(warmup):
        for fn in fns:
            fn()
    times = [[] for _ in fns]
    order = list(range(len(fns)))
    gc.collect()
    enabled = gc.isenabled()
    gc.disable()  # (`gc.collect` still works)
    try:
        for r in range(repeats):
            gc.collect(1)
            shift = r % len(fns)
            for i in order[shift:] + order[:shift]:
                t0 = time.perf_counter()
                fns[i]()
                times[i].append(time.perf_counter() - t0)
    finally:
        if enabled:
            gc.enable()
    return times


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    """`(seconds, result)` of one call of `fn`."""
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def row(
    area: str,
    name: str,
    seconds: float,
    ref: str | None = None,
    ref_seconds: float | None = None,
    note: str = "",
    target: tuple[str, bool | None] | None = None,
) -> dict:
    ratio = None if ref_seconds is None or not seconds else ref_seconds / seconds
    return {
        "area": area,
        "name": name,
        "seconds": seconds,
        "ref": ref,
        "ref_seconds": ref_seconds,
        "ratio": ratio,
        "note": note,
        "target": target,
    }


class _Layer(eqx.Module):
    weight: ec.ParamState


class _Model(eqx.Module):
    layers: list


def many_states(n: int, size: int) -> eqx.Module:
    """The model of the restore and checkpoint benchmarks: `n` layers, each holding
    one `ParamState` `{'weight': (size, size), 'bias': (size,)}`."""
    return _Model(
        [
            _Layer(
                ec.ParamState(
                    {
                        "weight": jnp.full((size, size), float(i)),
                        "bias": jnp.zeros(size),
                    }
                )
            )
            for i in range(n)
        ]
    )
