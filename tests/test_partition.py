import equinox as eqx
import jax
import jax.numpy as jnp
import pytest
from helpers import assert_trees_equal
from hypothesis import given

import eqx_collective as ec
from eqx_collective.testing import ensembles, module_trees


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
