import equinox as eqx
import jax
import jax.numpy as jnp
import optax
import pytest
from helpers import assert_trees_equal
from hypothesis import given, strategies as st

import eqx_collective as ec
from eqx_collective.testing import ensembles, module_trees, stateful_pairs


@given(module_trees())
def test_partition_combine_round_trip(model):
    params, rest = ec.partition(model, ec.ParamState)
    assert_trees_equal(ec.combine(params, rest), model)
    assert (
        dict(ec._paths.iter_leaves(params)).keys()
        == ec.leaf_values(model, ec.ParamState).keys()
    )


@given(module_trees())
def test_each_state_goes_to_the_first_filter_that_selects_it(model):
    hidden, params, rest = ec.partition(model, ec.HiddenState, ec.LongTermState)
    assert_trees_equal(ec.combine(hidden, params, rest), model)
    leaves = lambda t: {p for p, x in ec._paths.iter_leaves(t)}
    assert leaves(hidden) == set(ec.leaf_values(model, ec.HiddenState))
    assert leaves(params) == set(ec.leaf_values(model, ec.LongTermState))
    assert not leaves(hidden) & leaves(params) and not leaves(params) & leaves(rest)


@given(ensembles(max_size=2))
def test_partition_works_on_ensembles(drawn):
    ensemble, _, _ = drawn
    params, rest = ec.partition(ensemble, ec.ParamState)
    assert_trees_equal(ec.combine(params, rest), ensemble)


def test_gradients_see_only_parameters(key):
    rnn = ec.init_all_states(ec.nn.ValinaRNNCell(3, 4, key=key), batch_size=2)
    params, rest = ec.partition(rnn, ec.ParamState)

    @eqx.filter_grad
    def grads(params, rest, x):
        out, _ = ec.combine(params, rest)(x)
        return jnp.sum(out**2)

    g = grads(params, rest, jnp.ones((2, 3)))
    assert set(ec.leaf_values(g)) == {
        ("W", "weight", "bias"),
        ("W", "weight", "weight"),
    }
    assert g.h.value is None


def test_partition_needs_a_filter(key):
    with pytest.raises(TypeError, match="at least one filter"):
        ec.partition({"a": ec.ParamState(jnp.zeros(1))})
    with pytest.raises(TypeError, match="Unsupported filter"):
        ec.partition({"a": ec.ParamState(jnp.zeros(1))}, 3)


def test_partition_under_jit(key):
    model = {"p": ec.ParamState(jnp.ones(2)), "h": ec.HiddenState(jnp.zeros(2))}

    @eqx.filter_jit
    def f(m):
        p, r = ec.partition(m, ec.ParamState)
        return ec.combine(jax.tree_util.tree_map(lambda x: x * 2, p), r)

    with jax.checking_leaks():
        out = f(model)
    assert jnp.array_equal(out["p"].value, jnp.full(2, 2.0))
    assert jnp.array_equal(out["h"].value, jnp.zeros(2))


@given(stateful_pairs(), st.sampled_from(["params", "hidden", "long"]))
def test_parts_of_mixed_trees_show_what_they_hold(pair, which):
    # our states, raw arrays and `eqx.nn.State` values alike
    filters = {
        "params": (ec.ParamState,),
        "hidden": (ec.ShortTermState, ec.ParamState),
        "long": (ec.Not(ec.ParamState),),
    }[which]
    parts = ec.partition(pair, *filters)
    assert_trees_equal(ec.combine(*parts), pair)
    taken = set()
    for part, f in zip(parts, filters, strict=False):
        expected = {p: v for p, v in ec.leaf_values(pair, f).items() if p not in taken}
        assert ec.leaf_values(part).keys() == expected.keys()
        assert_trees_equal(ec.leaf_values(part), expected)
        taken |= expected.keys()
    rest = ec.leaf_values(parts[-1])
    assert rest.keys() == ec.leaf_values(pair).keys() - taken
    # restoring into a part reports truthfully: a snapshot of the part restores
    # strictly; the whole model's snapshot adds only the other parts' keys
    for part in parts:
        snap = ec.leaf_values(part)
        assert_trees_equal(ec.assign_state_values(part, snap, strict=True).model, part)
        result = ec.assign_state_values(part, ec.leaf_values(pair))
        assert result.missing == []
        assert set(result.unexpected) == ec.leaf_values(pair).keys() - snap.keys()


def test_a_stock_equinox_readout_is_trained(key):
    k1, k2, k3 = jax.random.split(key, 3)
    net = (
        ec.init_all_states(ec.nn.GRUCell(3, 8, key=k1), batch_size=4),
        eqx.nn.Linear(8, 2, key=k2),
    )
    params, rest = ec.partition(net, ec.ParamState)
    assert ("1", "weight") not in ec.leaf_values(rest)
    assert {(1, "weight"), (1, "bias")} <= ec.leaf_values(params).keys()
    opt = optax.sgd(
        1e-1, momentum=0.9
    )  # adam counts in int32, which strict promotion refuses
    state = opt.init(params)
    x, y = jax.random.normal(k3, (4, 3)), jnp.ones((4, 2))

    @eqx.filter_jit
    def step(params, state):
        def loss(params):
            cell, readout = ec.combine(params, rest)
            h, _ = cell(x)
            return jnp.mean((jax.vmap(readout)(h) - y) ** 2)

        grads = eqx.filter_grad(loss)(params)
        updates, state = opt.update(grads, state)
        return eqx.apply_updates(params, updates), state

    new = params
    for _ in range(3):
        new, state = step(new, state)
    before, after = ec.leaf_values(params), ec.leaf_values(new)
    float_paths = [p for p, v in before.items() if jnp.issubdtype(v.dtype, jnp.inexact)]
    assert float_paths and len(float_paths) == len(before)
    for p in float_paths:
        assert not jnp.array_equal(before[p], after[p]), p


def test_collective_operations_on_parts(key):
    rnn = ec.init_all_states(ec.nn.ValinaRNNCell(3, 4, key=key), batch_size=2)
    params, rest = ec.partition(rnn, ec.ParamState)
    # the part holding what `reset_state` touches resets, as a training loop does
    reset = ec.reset_all_states(rest)
    assert jnp.array_equal(reset.h.value, jnp.zeros((2, 4)))
    # on a part without it, the error says to combine first
    with pytest.raises(Exception) as info:
        ec.reset_all_states(params)
    assert "`combine(*parts)` first" in "\n".join(info.value.__notes__)
