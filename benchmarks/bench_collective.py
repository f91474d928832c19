"""Benchmark: eager collective operations on large `Sequential` models.

`init_all_states`, `reset_all_states`, `states` and `assign_state_values` on
`nn.Sequential` models of N nodes (N = 50, 200, 800), against brainstate's same
operations on the equivalent brainstate model (brainstate's mutate in place), in two
variants:

- `linear`: half `nn.Linear(8, 8)`, half `nn.ReLU()`. No layer defines `init_state`
  or `reset_state`, so init/reset are a traversal only (nearly no-ops, on both sides);
- `rnn`: half `nn.ValinaRNNCell(8, 8)`, half `nn.ReLU()`: every other node has an
  `init_state` / `reset_state` that builds its hidden state (batch 4).

Times are medians of interleaved repeats (ours and brainstate's round-robin). `ratio` is
brainstate's time over ours (> 1: we are faster). The growth factor is time(largest) /
time(second largest) (4 for linear cost with N 200 -> 800), from the times of each
function run alone, back to back (the best of its times): in the round-robin, every
call starts with caches that the other library has just filled, which costs more the
larger the model (on both sides) and would hide how the cost itself grows. The two
sizes are timed in turns, a few calls each, and the growth is the median of the
turns' ratios: a ratio of two times taken minutes apart on a shared machine measures
the change of its load as much as the growth.

Run as `python benchmarks/bench_collective.py [--quick]`, or call `run(quick)`.
"""

import statistics
from collections.abc import Callable

import jax

import eqx_collective as ec
from eqx_collective import nn


try:
    from _common import import_brainstate, interleaved_medians, interleaved_times, row
except ImportError:  # imported as `benchmarks.bench_collective`
    from ._common import (
        import_brainstate,
        interleaved_medians,
        interleaved_times,
        row,
    )

AREA = "collective"
BATCH = 4
MAX_GROWTH = 6.0  # "linear": within 1.5x of the ideal 4 for 4x the nodes


def make_model(n: int, rnn: bool):
    keys = jax.random.split(jax.random.key(0), n)
    layers = []
    for i in range(n):
        if i % 2:
            layers.append(nn.ReLU())
        elif rnn:
            layers.append(nn.ValinaRNNCell(8, 8, key=keys[i]))
        else:
            layers.append(nn.Linear(8, 8, key=keys[i]))
    return nn.Sequential(*layers)


def make_brainstate_model(bst, n: int, rnn: bool):
    layers = []
    for i in range(n):
        if i % 2:
            layers.append(bst.nn.ReLU())
        elif rnn:
            layers.append(bst.nn.ValinaRNNCell(8, 8))
        else:
            layers.append(bst.nn.Linear(8, 8))
    return bst.nn.Sequential(*layers)


def _ops(model, rnn: bool):
    """Our four operations on `model`, as zero-argument callables."""
    init_kw = {"batch_size": BATCH} if rnn else {}
    model = ec.init_all_states(model, **init_kw)
    snapshot = ec.state_values(model)

    def assign():
        result = ec.assign_state_values(model, snapshot)
        assert not result.unexpected and not result.missing
        return result.model

    return {
        "init_all_states": lambda: ec.init_all_states(model, **init_kw),
        "reset_all_states": lambda: ec.reset_all_states(model),
        "states": lambda: ec.states(model),
        "assign_state_values": assign,
    }, len(snapshot)


def _brainstate_ops(bst, model, rnn: bool, n_states: int):
    init_kw = {"batch_size": BATCH} if rnn else {}
    bst.nn.init_all_states(model, **init_kw)
    snapshot = {p: s.value for p, s in model.states().items()}
    assert len(snapshot) == n_states, (len(snapshot), n_states)
    unexpected, missing = bst.nn.assign_state_values(model, snapshot)
    assert not unexpected and not missing, (unexpected, missing)

    return {
        "init_all_states": lambda: bst.nn.init_all_states(model, **init_kw),
        # brainstate's reset without `batch_size` drops the batch axis: pass it.
        "reset_all_states": lambda: bst.nn.reset_all_states(model, **init_kw),
        "states": lambda: model.states(),
        "assign_state_values": lambda: bst.nn.assign_state_values(model, snapshot),
    }


def _growth(small: Callable[[], object], large: Callable[[], object], quick: bool):
    """time(`large`) / time(`small`), each run alone, back to back (its best time),
    the two in turns: the median of the turns' ratios."""
    turns, calls = (1, 2) if quick else (7, 10)
    ratios = []
    for _ in range(turns):
        best = [min(interleaved_times([fn], calls)[0]) for fn in (small, large)]
        ratios.append(best[1] / best[0])
    return statistics.median(ratios)


def run(quick: bool = False) -> list[dict]:
    """Runs the benchmark; returns rows in the format of `_common.row`."""
    bst = import_brainstate()
    sizes = (10, 40) if quick else (50, 200, 800)
    repeats = {10: 3, 40: 3, 50: 21, 200: 15, 800: 9}
    lo, hi = sizes[-2], sizes[-1]
    rows = []
    for variant, rnn in (("linear", False), ("rnn", True)):
        ours_t, ref_t = {}, {}  # (op, n) -> seconds, round-robin
        ours_growth, ref_growth = {}, {}  # op -> time(hi) / time(lo)
        by_size = {}  # n -> the functions timed
        for n in sizes:
            ours, n_states = _ops(make_model(n, rnn), rnn)
            names = list(ours)
            fns = list(ours.values())
            if bst is not None:
                theirs = _brainstate_ops(
                    bst, make_brainstate_model(bst, n, rnn), rnn, n_states
                )
                fns += [theirs[k] for k in names]
            times = interleaved_medians(fns, repeats[n])
            by_size[n] = fns
            for i, op in enumerate(names):
                ours_t[op, n] = times[i]
                ref_t[op, n] = times[len(names) + i] if bst is not None else None
        for i, op in enumerate(names):
            ours_growth[op] = _growth(by_size[lo][i], by_size[hi][i], quick)
            if bst is not None:
                j = len(names) + i
                ref_growth[op] = _growth(by_size[lo][j], by_size[hi][j], quick)
        del by_size
        for op in names:
            for n in sizes:
                note, target = "", None
                if n == hi:
                    growth = ours_growth[op]
                    note = f"growth {lo}->{hi}: {growth:.2f}"
                    met = growth <= MAX_GROWTH
                    desc = f"{variant} {op}: linear growth (<= {MAX_GROWTH:g})"
                    if bst is not None:
                        note += f" (brainstate {ref_growth[op]:.2f})"
                        met = met and all(ref_t[op, m] >= ours_t[op, m] for m in sizes)
                        desc = (
                            f"{variant} {op}: no slower than brainstate at every "
                            f"size, linear growth (<= {MAX_GROWTH:g})"
                        )
                    target = (desc, met)
                rows.append(
                    row(
                        AREA,
                        f"{op}, {variant}, {n} nodes",
                        ours_t[op, n],
                        "brainstate",
                        ref_t[op, n],
                        note,
                        target,
                    )
                )
    return rows


if __name__ == "__main__":
    from run import cli

    cli(run, __doc__)
