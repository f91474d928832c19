"""Benchmark: restoring the states of a model with many states (checkpoint files are
in `bench_checkpoint.py`).

Times `eqx_collective.assign_state_values` (state-level and leaf-level snapshots) on a
model holding `N` `ParamState`s with `{'weight', 'bias'}` values (N = 400 by default),
and, when
brainstate is importable, brainstate's `assign_state_values` on an equivalent
brainstate model in the same run. Times are medians of several repeats of
`time.perf_counter`; `ratio` is brainstate's time divided by ours (higher is better
for us) where there is a brainstate counterpart.

Run as `python benchmarks/bench_restore.py [--quick]` (`--quick`: tiny sizes, a smoke
run for CI), or call `run(quick)` to get the rows.
"""

import equinox as eqx
import jax
import jax.numpy as jnp

import eqx_collective as ec


try:
    from _common import import_brainstate, interleaved_medians, many_states, row
except ImportError:  # imported as `benchmarks.bench_restore`
    from ._common import import_brainstate, interleaved_medians, many_states, row

AREA = "restore"
TARGET = 5.0


def _make_brainstate_model(n: int, size: int):
    import brainstate

    class Layer(brainstate.nn.Module):
        def __init__(self, i):
            super().__init__()
            self.weight = brainstate.ParamState(
                {"weight": jnp.full((size, size), float(i)), "bias": jnp.zeros(size)}
            )

    class Model(brainstate.nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = brainstate.nn.Sequential(*[Layer(i) for i in range(n)])

    return Model()


def run(quick: bool = False) -> list[dict]:
    """Runs the benchmark; returns rows in the format of `_common.row`, each eager
    restore compared with brainstate's `assign_state_values` (when importable)."""
    n, size, repeats = (8, 2, 3) if quick else (400, 4, 25)
    model = many_states(n, size)
    by_state = ec.state_values(model)
    by_leaf = ec.leaf_values(model)
    by_dotted = {ec.path_str(k): v for k, v in by_leaf.items()}

    def check(result):
        assert not result.unexpected and not result.missing
        return result.model

    fns = [
        lambda: check(ec.assign_state_values(model, by_state)),
        lambda: check(ec.assign_state_values(model, by_leaf)),
        lambda: check(ec.assign_state_values(model, by_dotted)),
    ]
    bst = import_brainstate()
    if bst is not None:
        bs_model = _make_brainstate_model(n, size)
        bs_snapshot = {p: s.value for p, s in bs_model.states().items()}
        # Sanity: the same key set, and brainstate's call matches them all.
        unexpected, missing = bst.nn.assign_state_values(bs_model, bs_snapshot)
        assert not unexpected and not missing, (unexpected, missing)
        assert len(bs_snapshot) == len(by_state)
        fns.append(lambda: bst.nn.assign_state_values(bs_model, bs_snapshot))
    times = interleaved_medians(fns, repeats)
    ref = "brainstate" if bst is not None else None
    bs_time = times[3] if bst is not None else None
    target = (
        f"restore (assign_state_values, state-level): >= {TARGET:g}x faster than "
        "brainstate",
        None if bs_time is None else bs_time / times[0] >= TARGET,
    )
    rows = [
        row(AREA, f"assign_state_values, {what}", t, ref, bs_time, "", goal)
        for what, t, goal in (
            (f"state-level ({n} states)", times[0], target),
            (f"leaf-level ({2 * n} leaves)", times[1], None),
            (f"dotted leaf keys ({2 * n} leaves)", times[2], None),
        )
    ]
    assign_jit = eqx.filter_jit(lambda m, s: ec.assign_state_values(m, s).model)

    def jitted():
        return jax.block_until_ready(assign_jit(model, by_state))

    jitted()
    name = f"assign_state_values under eqx.filter_jit, cached ({n} states)"
    rows.append(row(AREA, name, interleaved_medians([jitted], repeats)[0]))
    return rows


if __name__ == "__main__":
    from run import cli

    cli(run, __doc__)
