"""Benchmark: a jitted recurrent rollout.

`reset_all_states` followed by `jax.lax.scan` over T = 100 steps of an
`nn.ValinaRNNCell(16, 64)` on a batch of 32, all inside one `eqx.filter_jit`, against

- the same computation hand-written in plain JAX on arrays only
  (`h = relu(concat([x, h]) @ W + b)`, `h0 = 0`, the same weights), under `jax.jit`;
- brainstate's jitted loop (`brainstate.transform.jit` around
  `brainstate.nn.reset_all_states` and `brainstate.transform.for_loop` of
  `ValinaRNNCell.update`), with the same weights.

Both functions return the final hidden state and the stacked hidden states; ours also
returns the updated cell (what a user keeps). We report the steady-state time (median
of many calls after warm-up, `jax.block_until_ready`, interleaved) and the first-call
time (trace + compile + run) of a freshly built function. The outputs are checked to be
equal (ours and plain JAX bit-for-bit up to float tolerance; brainstate too).

Ours is timed three times: as a user writes it, with `ec.filter_jit(rollout)(cell,
xs)`; the same under `eqx.filter_jit`; and with the hand-flattening pattern of
`docs/concepts/training.md` (`jax.jit` on the arrays of the cell's parameters and of
the rest, each flattened once into a list; only the rest, the hidden state, is
returned). The compiled programs of the latter and of the plain JAX are the same, so
that row shows that the collective operations compile away; the `ec.filter_jit` row
adds only its dispatch, and carries the target: within 1.05x of the hand-written JAX
under `jax.jit`. The `eqx.filter_jit` row adds Equinox's per-call cost of flattening
the arguments in and the results out; it is shown against the hand-written JAX under
`jax.jit` and under `eqx.filter_jit` (the same dispatcher on both sides), so that the
dispatcher's share can be read off.

Run as `python benchmarks/bench_rollout.py [--quick]`, or call `run(quick)`.
"""

import statistics

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

import eqx_collective as ec
from eqx_collective import nn


try:
    from _common import import_brainstate, interleaved_medians, row, timed
except ImportError:  # imported as `benchmarks.bench_rollout`
    from ._common import import_brainstate, interleaved_medians, row, timed

AREA = "rollout"
TARGET = 1.05


def make_ours(num_in, num_out, batch):
    cell = nn.ValinaRNNCell(num_in, num_out, key=jax.random.key(0))
    return ec.init_all_states(cell, batch_size=batch)


def _rollout(cell, xs):
    cell = ec.reset_all_states(cell)

    def step(cell, x):
        h, cell = cell(x)
        return cell, h

    cell, hs = jax.lax.scan(step, cell, xs)
    return cell.h.value, hs, cell


def make_ours_fn(jit=ec.filter_jit):
    """The rollout as a user writes it: `ec.filter_jit` (or `jit`) over the cell. (A
    new function object each time, so that the first call really compiles.)"""

    def rollout(cell, xs):
        return _rollout(cell, xs)

    return jit(rollout)


def make_ours_leaves_fn(cell):
    """The same rollout with the low-overhead dispatch pattern of
    `docs/concepts/training.md` (and `bench_dispatch.py`): the cell partitioned into
    its parameters and the rest, each part's arrays flattened once, outside, into a
    list; `jax.jit` on the lists; the cell rebuilt inside. Only the rest (the hidden
    state) changes, so only its arrays come back. Returns `(fn, param_leaves,
    rest_leaves)`; `fn(param_leaves, rest_leaves, xs)` returns `(h, hs,
    new_rest_leaves)`."""
    params, rest = ec.partition(cell, ec.ParamState)
    param_leaves, param_def = jax.tree_util.tree_flatten(params)
    rest_arrays, rest_static = eqx.partition(rest, eqx.is_array)
    rest_leaves, rest_def = jax.tree_util.tree_flatten(rest_arrays)

    @jax.jit
    def rollout(param_leaves, rest_leaves, xs):
        params = jax.tree_util.tree_unflatten(param_def, param_leaves)
        rest = eqx.combine(
            jax.tree_util.tree_unflatten(rest_def, rest_leaves), rest_static
        )
        h, hs, cell = _rollout(ec.combine(params, rest), xs)
        new_rest = ec.partition(cell, ec.ParamState)[1]
        return h, hs, jax.tree_util.tree_leaves(eqx.filter(new_rest, eqx.is_array))

    return rollout, param_leaves, rest_leaves


def make_jax_fn(batch, num_out, jit=jax.jit):
    """The hand-written rollout, under `jit` (`jax.jit`, or `eqx.filter_jit` to
    compare dispatchers like for like)."""

    @jit
    def rollout(W, b, xs):
        def step(h, x):
            h = jax.nn.relu(jnp.concatenate([x, h], -1) @ W + b)
            return h, h

        return jax.lax.scan(step, jnp.zeros((batch, num_out), xs.dtype), xs)

    return rollout


def make_brainstate(bst, num_in, num_out, batch, W, b):
    cell = bst.nn.ValinaRNNCell(num_in, num_out)
    cell.W.weight.value = {"weight": W, "bias": b}
    bst.nn.init_all_states(cell, batch_size=batch)

    def make_fn():
        @bst.transform.jit
        def rollout(xs):
            # brainstate's reset without `batch_size` drops the batch axis.
            bst.nn.reset_all_states(cell, batch_size=batch)
            hs = bst.transform.for_loop(cell.update, xs)
            return cell.h.value, hs

        return rollout

    return make_fn


def _block(fn):
    # (Ours return `(h, hs)` here, not the updated cell: the outputs of one computation
    # are ready together, and blocking on the cell would add a flatten of it.)
    return lambda: jax.block_until_ready(fn())


def run(quick: bool = False) -> list[dict]:
    """Runs the benchmark; returns rows in the format of `_common.row`."""
    bst = import_brainstate()
    if quick:
        steps, num_in, num_out, batch, repeats, compiles = 10, 4, 8, 2, 5, 1
    else:
        steps, num_in, num_out, batch, repeats, compiles = 100, 16, 64, 32, 301, 3
    xs = jax.random.normal(jax.random.key(1), (steps, batch, num_in))
    cell = make_ours(num_in, num_out, batch)
    W, b = cell.W.weight.value["weight"], cell.W.weight.value["bias"]

    ours, plain = make_ours_fn(), make_jax_fn(batch, num_out)
    ours_eqx = make_ours_fn(eqx.filter_jit)
    plain_eqx = make_jax_fn(batch, num_out, eqx.filter_jit)
    ours_leaves, param_leaves, rest_leaves = make_ours_leaves_fn(cell)
    fns = {
        "ours_ec": _block(lambda: ours(cell, xs)[:2]),
        "ours": _block(lambda: ours_eqx(cell, xs)[:2]),
        "ours_leaves": _block(lambda: ours_leaves(param_leaves, rest_leaves, xs)[:2]),
        "jax": _block(lambda: plain(W, b, xs)),
        "jax_eqx": _block(lambda: plain_eqx(W, b, xs)),
    }
    h_jax, hs_jax = plain(W, b, xs)
    for h_ours, hs_ours, _ in (
        ours(cell, xs),
        ours_eqx(cell, xs),
        ours_leaves(param_leaves, rest_leaves, xs),
    ):
        np.testing.assert_allclose(hs_ours, hs_jax, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(h_ours, h_jax, rtol=1e-6, atol=1e-6)
    if bst is not None:
        make_bs = make_brainstate(bst, num_in, num_out, batch, W, b)
        bs_fn = make_bs()
        fns["brainstate"] = _block(lambda: bs_fn(xs))
        h_bs, hs_bs = bs_fn(xs)
        np.testing.assert_allclose(hs_bs, hs_jax, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(h_bs, h_jax, rtol=1e-5, atol=1e-5)

    # First call of a freshly built function: trace + compile + one run.
    first = {k: [] for k in fns if k not in ("ours_leaves", "jax_eqx", "ours_ec")}
    for _ in range(compiles):
        first["ours"].append(
            timed(lambda: jax.block_until_ready(make_ours_fn()(cell, xs)))[0]
        )
        first["jax"].append(
            timed(lambda: jax.block_until_ready(make_jax_fn(batch, num_out)(W, b, xs)))[
                0
            ]
        )
        if bst is not None:
            first["brainstate"].append(
                timed(lambda: jax.block_until_ready(make_bs()(xs)))[0]
            )
    first = {k: statistics.median(v) for k, v in first.items()}

    steady = dict(
        zip(fns, interleaved_medians(list(fns.values()), repeats, 5), strict=True)
    )
    what = f"{steps} steps, RNN {num_in}->{num_out}, batch {batch}"

    ratio = steady["jax"] / steady["ours_ec"]
    target = (
        f"rollout: through `ec.filter_jit` within {TARGET:g}x of hand-written JAX under "
        f"`jax.jit` (ratio >= {1 / TARGET:.3f})",
        ratio >= 1 / TARGET,
    )

    rows = [
        row(
            AREA,
            f"jitted rollout, ec.filter_jit, steady state ({what})",
            steady["ours_ec"],
            "plain JAX",
            steady["jax"],
            "outputs equal",
            target,
        ),
        row(
            AREA,
            "jitted rollout, eqx.filter_jit, steady state",
            steady["ours"],
            "plain JAX, eqx.filter_jit",
            steady["jax_eqx"],
            "outputs equal; the same dispatcher on both sides (ours also returns the "
            "updated cell)",
        ),
        row(
            AREA,
            "jitted rollout, eqx.filter_jit, steady state",
            steady["ours"],
            "plain JAX",
            steady["jax"],
            "Equinox's per-call flattening included",
        ),
        row(
            AREA,
            "jitted rollout, jax.jit on flat leaves, steady state",
            steady["ours_leaves"],
            "plain JAX",
            steady["jax"],
            "outputs equal",
        ),
        row(
            AREA,
            "jitted rollout, ec.filter_jit, steady state",
            steady["ours_ec"],
            "brainstate",
            steady.get("brainstate"),
        ),
        row(
            AREA,
            "jitted rollout, ec.filter_jit, first call (trace + compile)",
            first["ours"],
            "plain JAX",
            first["jax"],
            f"median of {compiles} fresh functions",
        ),
        row(
            AREA,
            "jitted rollout, ec.filter_jit, first call (trace + compile)",
            first["ours"],
            "brainstate",
            first.get("brainstate"),
        ),
    ]
    return rows


if __name__ == "__main__":
    from run import cli

    cli(run, __doc__)
