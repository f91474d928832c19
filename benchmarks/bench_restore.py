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
    from _common import interleaved_medians
except ImportError:  # imported as `benchmarks.bench_restore`
    from ._common import interleaved_medians


class _Layer(eqx.Module):
    weight: ec.ParamState


class _Model(eqx.Module):
    layers: list


def _make_model(n: int, size: int) -> _Model:
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


def _median_time(fn, repeats: int) -> float:
    return interleaved_medians([fn], repeats)[0]


def run(quick: bool = False) -> list[dict]:
    """Runs the benchmark.

    **Arguments:**

    - `quick`: tiny sizes and few repeats (a smoke run).

    **Returns:**

    A list of rows `{'name': str, 'seconds': float, 'ratio': float | None}`; `ratio` is
    brainstate's time over ours for the rows that have a brainstate counterpart (when
    brainstate is importable), else `None`.
    """
    n, size, repeats = (8, 2, 3) if quick else (400, 4, 25)
    model = _make_model(n, size)
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
    try:
        import brainstate
    except ImportError:
        brainstate = None
    if brainstate is not None:
        bs_model = _make_brainstate_model(n, size)
        bs_snapshot = {p: s.value for p, s in bs_model.states().items()}
        # Sanity: the same key set, and brainstate's call matches them all.
        unexpected, missing = brainstate.nn.assign_state_values(bs_model, bs_snapshot)
        assert not unexpected and not missing, (unexpected, missing)
        assert len(bs_snapshot) == len(by_state)
        fns.append(lambda: brainstate.nn.assign_state_values(bs_model, bs_snapshot))
    times = interleaved_medians(fns, repeats)
    ours_state, ours_leaf, ours_dotted = times[:3]
    bs_time = times[3] if brainstate is not None else None
    rows = []
    if bs_time is not None:
        rows.append(
            {"name": f"brainstate assign_state_values ({n} states)", "seconds": bs_time}
        )

    def ratio(t):
        return None if bs_time is None else bs_time / t

    rows.append(
        {
            "name": f"assign_state_values, state-level ({n} states)",
            "seconds": ours_state,
            "ratio": ratio(ours_state),
        }
    )
    rows.append(
        {
            "name": f"assign_state_values, leaf-level ({2 * n} leaves)",
            "seconds": ours_leaf,
            "ratio": ratio(ours_leaf),
        }
    )
    rows.append(
        {
            "name": f"assign_state_values, dotted leaf keys ({2 * n} leaves)",
            "seconds": ours_dotted,
            "ratio": ratio(ours_dotted),
        }
    )

    assign_jit = eqx.filter_jit(lambda m, s: ec.assign_state_values(m, s).model)

    def jitted(m, s):
        return jax.block_until_ready(assign_jit(m, s))

    jitted(model, by_state)
    rows.append(
        {
            "name": f"assign_state_values under eqx.filter_jit, cached ({n} states)",
            "seconds": _median_time(lambda: jitted(model, by_state), repeats),
            "ratio": None,
        }
    )

    for row in rows:
        row.setdefault("ratio", None)
    return rows


if __name__ == "__main__":
    from run import cli, normalise_restore

    cli(run, __doc__, normalise_restore)
