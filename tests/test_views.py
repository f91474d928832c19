import brainunit as u
import equinox as eqx
import jax
import jax.numpy as jnp
import pytest
from hypothesis import given

import eqx_collective as ec
from eqx_collective.testing import stateful_pairs


class Block(eqx.Module):
    w: ec.ParamState
    h: ec.HiddenState
    extra: dict


class Model(eqx.Module):
    blocks: list
    v: ec.HiddenState
    mlp: eqx.nn.MLP


@pytest.fixture
def model(key):
    blocks = [
        Block(
            ec.ParamState({"weight": jnp.ones((2, 3)), "bias": jnp.zeros(3)}),
            ec.HiddenState(u.Quantity(jnp.zeros(3), u.mV)),
            {"z": ec.LongTermState(jnp.arange(2), tag="counter")},
        )
        for _ in range(2)
    ]
    return Model(blocks, ec.HiddenState(jnp.zeros(1)), eqx.nn.MLP(2, 2, 4, 1, key=key))


def test_states_in_declaration_order(model):
    assert list(ec.states(model)) == [
        ("blocks", 0, "w"),
        ("blocks", 0, "h"),
        ("blocks", 0, "extra", "z"),
        ("blocks", 1, "w"),
        ("blocks", 1, "h"),
        ("blocks", 1, "extra", "z"),
        ("v",),
        ("mlp", "layers", 0, "weight"),
        ("mlp", "layers", 0, "bias"),
        ("mlp", "layers", 1, "weight"),
        ("mlp", "layers", 1, "bias"),
    ]


def test_states_with_filters(model):
    assert list(ec.states(model, ec.All(ec.ParamState, ec.PathPrefix("blocks")))) == [
        ("blocks", 0, "w"),
        ("blocks", 1, "w"),
    ]
    assert list(ec.states(model, "counter", ec.PathPrefix("v"))) == [
        ("blocks", 0, "extra", "z"),
        ("blocks", 1, "extra", "z"),
        ("v",),
    ]
    assert ec.states(model, None) == {}


def test_state_values(model):
    values = ec.state_values(model, ec.HiddenState)
    assert set(values) == {("blocks", 0, "h"), ("blocks", 1, "h"), ("v",)}
    assert values[("v",)] is model.v.value


def test_leaf_values_go_into_dicts_but_not_quantities(model):
    leaves = ec.leaf_values(model, ec.PathPrefix("blocks.0"))
    assert list(leaves) == [
        ("blocks", 0, "w", "bias"),
        ("blocks", 0, "w", "weight"),
        ("blocks", 0, "h"),
        ("blocks", 0, "extra", "z"),
    ]
    assert isinstance(leaves[("blocks", 0, "h")], u.Quantity)
    assert leaves[("blocks", 0, "h")].unit == u.mV


def test_plain_equinox_modules_are_traversed(key):
    mlp = eqx.nn.MLP(3, 2, 8, 2, key=key)
    # every raw array counts: a floating one as a parameter
    views = ec.states(mlp)
    assert list(views) == [
        ("layers", i, n) for i in range(3) for n in ("weight", "bias")
    ]
    assert all(type(s) is ec.ParamState for s in views.values())
    assert views[("layers", 1, "bias")].value is mlp.layers[1].bias
    assert ec.states(mlp, ec.HiddenState) == {}
    nodes = [p for p, _ in ec._walk.iter_nodes(mlp)]
    assert nodes == [("layers", 0), ("layers", 1), ("layers", 2), ()]
    assert ec.init_all_states(mlp) is mlp
    assert ec.reset_all_states(mlp, key=key) is mlp
    outs = ec.collect_all_fns(
        mlp,
        "__call__",
        jnp.ones(3),
        node_to_exclude=ec.PathPrefix("layers.1", "layers.2"),
    )
    assert list(outs) == [("layers", 0), ()]
    assert outs[("layers", 0)].shape == (8,)
    assert jnp.array_equal(outs[()], mlp(jnp.ones(3)))


def test_views_work_under_jit(model):
    @eqx.filter_jit
    def f(m):
        return ec.leaf_values(m)

    with jax.checking_leaks():
        leaves = f(model)
    assert set(leaves) == set(ec.leaf_values(model))


@given(stateful_pairs())
def test_every_array_of_a_mixed_tree_is_in_the_state_view(pair):
    # our states, raw arrays and `eqx.nn.State` values: each array leaf is in
    # `leaf_values` exactly once (the `StateIndex` inits were deleted, as Equinox does)
    leaves = ec.leaf_values(pair)
    arrays = jax.tree_util.tree_leaves(eqx.filter(pair, eqx.is_array))
    assert len(leaves) == len(arrays)
    assert {id(x) for x in leaves.values() if not isinstance(x, u.Quantity)} <= {
        id(x) for x in arrays
    }
    kinds = ec.states(pair)
    for path, state in kinds.items():
        if path[0] == 1:  # the values of the `eqx.nn.State`, at their index's path
            assert type(state) is ec.LongTermState and path[-1] == "index"
        elif path[-2:-1] == ("raw",):
            inexact = jnp.issubdtype(state.value.dtype, jnp.inexact)
            assert type(state) is (ec.ParamState if inexact else ec.LongTermState)


def test_eqx_nn_state_values_have_the_path_of_their_index(key):
    model, state = eqx.nn.make_with_state(eqx.nn.BatchNorm)(3, "batch", mode="batch")
    net = {"net": [eqx.nn.Linear(3, 3, key=key), model], "state": state}
    paths = list(ec.leaf_values(net, ec.Not(ec.ParamState)))
    assert paths == [
        ("state", 1, "batch_counter"),
        ("state", 1, "batch_state_index", 0),
        ("state", 1, "batch_state_index", 1),
    ]
    with pytest.raises(ValueError, match="not in the same tree.*\\(model, state\\)"):
        ec.leaf_values(state)
