"""Benchmark: per-call dispatch overhead of a jitted training step on a large model.

The model is the 800-node `nn.Sequential` of `bench_collective` (400 `nn.Linear(8, 8)`
and 400 `nn.ReLU()`, so 800 parameter arrays). One training step: the mean squared
error of the model on a batch of 1, its gradient with respect to the parameters, and
an SGD update; it returns the loss and the new parameters. The compute is tiny, so the
differences between the variants are the per-call cost of getting the arguments in and
the results out:

- `ec.filter_jit, params/rest`: `params, rest = ec.partition(model, ec.ParamState)`
  and `ec.filter_jit(step)(params, rest, x, y)` returning the new `params` tree: the
  pattern of the README and the examples. This row carries the target: within 1.2x
  of the reference;
- `eqx.filter_jit, params/rest`: the same with `eqx.filter_jit`;
- `jax.jit, params/rest pytrees`: `jax.jit(step)(params, rest, x, y)` directly on the
  module pytrees (`rest` holds no arrays here, only structure);
- `jax.jit on flat leaves`: the parameters flattened **once**, outside the loop, with
  `jax.tree_util.tree_flatten`, `jax.jit` on the list of arrays, the model rebuilt
  inside the step with `tree_unflatten` + `ec.combine`, and the new parameters
  returned as a list of arrays; a training loop then carries the list from step to
  step and rebuilds the model (`tree_unflatten` + `ec.combine`) only when it needs
  it (e.g. for a checkpoint). This hand-flattening pattern pays Python-level pytree
  flattening of the Equinox modules once, not on every call (both `eqx.filter_jit`
  and `jax.jit` on module pytrees flatten every module node in Python on every call,
  arguments and results); `ec.filter_jit` makes it unnecessary;
- the reference: the same step hand-written in plain JAX on a flat list of
  `[W0, b0, W1, b1, ...]`, under `jax.jit`.

Every variant is called as a training loop calls it: each call gets the parameters
(tree, list of leaves, or flat list) that the previous call returned.

Reported: µs per call (median of interleaved repeats, `jax.block_until_ready`), the
reference time over ours, and ours minus the reference (the overhead per call).

Run as `python benchmarks/bench_dispatch.py [--quick]`, or call `run(quick)`.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np

import eqx_collective as ec


try:
    from _common import interleaved_medians, row
    from bench_collective import make_model
except ImportError:  # imported as `benchmarks.bench_dispatch`
    from ._common import interleaved_medians, row
    from .bench_collective import make_model

AREA = "dispatch"
LR = 1e-3
TARGET = 1.2


def _loss(model, x, y):
    return jnp.mean((model(x) - y) ** 2)


def _sgd(params, grads):
    return jtu.tree_map(lambda p, g: p - LR * g, params, grads)


def step_params_rest(params, rest, x, y):
    """The training step on `(params, rest)` module trees."""
    loss, grads = jax.value_and_grad(lambda p: _loss(ec.combine(p, rest), x, y))(params)
    return loss, _sgd(params, grads)


def make_leaves_step(params, rest):
    """The flat-leaves pattern: returns `(step, leaves, rest_leaves)`,
    `step(leaves, rest_leaves, x, y) -> (loss, new_leaves)`. Everything is flattened
    once, here; the non-array parts of `rest` are closed over (static)."""
    leaves, treedef = jtu.tree_flatten(params)
    rest_arrays, rest_static = eqx.partition(rest, eqx.is_array)
    rest_leaves, rest_treedef = jtu.tree_flatten(rest_arrays)

    @jax.jit
    def step(leaves, rest_leaves, x, y):
        params = jtu.tree_unflatten(treedef, leaves)
        rest = eqx.combine(jtu.tree_unflatten(rest_treedef, rest_leaves), rest_static)
        loss, new = step_params_rest(params, rest, x, y)
        return loss, jtu.tree_leaves(new)

    return step, leaves, rest_leaves


def reference_step(flat, x, y):
    """The same maths by hand on `[W0, b0, W1, b1, ...]` (ours stores each layer's
    `{'bias', 'weight'}` dict, whose leaves come bias first)."""

    def loss_fn(flat):
        h = x
        for i in range(0, len(flat), 2):
            b, W = flat[i], flat[i + 1]
            h = jax.nn.relu(h @ W + b)
        return jnp.mean((h - y) ** 2)

    loss, grads = jax.value_and_grad(loss_fn)(flat)
    return loss, [p - LR * g for p, g in zip(flat, grads, strict=True)]


def _carried(step, carry, *args):
    """A zero-argument timing function calling `step(carry, *args) -> (loss, carry)` as
    a training loop does: each call gets the `carry` the previous one returned."""
    box = [carry]

    def call():
        loss, box[0] = step(box[0], *args)
        # (One computation's outputs are ready together; blocking on the tree would
        # add a flatten of it to the module-tree variants.)
        return jax.block_until_ready(loss)

    return call


def run(quick: bool = False) -> list[dict]:
    """Runs the benchmark; returns rows in the format of `_common.row`."""
    n, repeats = (20, 5) if quick else (800, 101)
    model = make_model(n, rnn=False)
    params, rest = ec.partition(model, ec.ParamState)
    x = jax.random.normal(jax.random.key(1), (1, 8))
    y = jax.random.normal(jax.random.key(2), (1, 8))

    ours_step = ec.filter_jit(step_params_rest)
    filter_step = eqx.filter_jit(step_params_rest)
    jax_step = jax.jit(step_params_rest)
    leaves_step, leaves, rest_leaves = make_leaves_step(params, rest)
    ref_step = jax.jit(reference_step)
    flat = list(leaves)  # the same arrays, [b0, W0, b1, W1, ...]
    assert len(flat) == n  # n / 2 layers, 2 arrays each

    # The five compute the same thing.
    ref_loss, ref_new = ref_step(flat, x, y)
    for step in (ours_step, filter_step, jax_step):
        loss, new = step(params, rest, x, y)
        np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
        for a, b in zip(jtu.tree_leaves(new), ref_new, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    loss, new = leaves_step(leaves, rest_leaves, x, y)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)

    fns = {
        "ec.filter_jit, params/rest": _carried(ours_step, params, rest, x, y),
        "eqx.filter_jit, params/rest": _carried(filter_step, params, rest, x, y),
        "jax.jit, params/rest pytrees": _carried(jax_step, params, rest, x, y),
        "jax.jit on flat leaves": _carried(leaves_step, leaves, rest_leaves, x, y),
        "reference": _carried(ref_step, flat, x, y),
    }

    times = dict(
        zip(fns, interleaved_medians(list(fns.values()), repeats, 3), strict=True)
    )
    ref = times.pop("reference")
    rows = []
    for name, t in times.items():
        target = None
        if name.startswith("ec.filter_jit"):
            target = (
                f"dispatch: a training step through `ec.filter_jit` within {TARGET:g}x "
                f"of `jax.jit` on a flat list (ratio >= {1 / TARGET:.3f})",
                ref / t >= 1 / TARGET,
            )
        rows.append(
            row(
                AREA,
                f"training step, {name} ({n} nodes, {len(flat)} arrays)",
                t,
                "jax.jit, flat list",
                ref,
                f"overhead {1e6 * (t - ref):+.0f} µs/call",
                target,
            )
        )
    return rows


if __name__ == "__main__":
    from run import cli

    cli(run, __doc__)
