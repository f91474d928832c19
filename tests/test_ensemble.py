import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_member_matches, assert_trees_equal
from hypothesis import given, settings, strategies as st

import eqx_collective as ec
from eqx_collective.testing import assert_members_differ, ensembles, module_trees
from eqx_collective.testing._strategies import node_class


@given(ensembles())
def test_stack_unstack_round_trip(drawn):
    ensemble, _, _ = drawn
    members = ec.unstack(ensemble)
    assert len(members) == ec.ensemble_size(ensemble)
    assert_trees_equal(ec.stack(members), ensemble)
    for i, m in enumerate(members):
        assert_trees_equal(ec.member(ensemble, i), m)
    assert_trees_equal(ec.member(ensemble, -1), members[-1])


def test_make_ensemble_members_differ_in_parameters(key):
    ens = ec.make_ensemble(lambda k: ec.nn.Linear(3, 2, key=k), key, 5)
    w = ens.weight.value["weight"]
    assert w.shape == (5, 3, 2)
    assert not jnp.array_equal(w[0], w[1])
    # Member i is exactly the model built with key i.
    for i, k in enumerate(jax.random.split(key, 5)):
        assert_trees_equal(ec.member(ens, i), ec.nn.Linear(3, 2, key=k))


def test_ensemble_in_axes_for_filter_vmap(key):
    ens = ec.make_ensemble(lambda k: ec.nn.Linear(3, 2, key=k), key, 4)
    x = jnp.ones(3)
    out = eqx.filter_vmap(lambda m, x: m(x), in_axes=(ec.ensemble_in_axes(ens), None))(
        ens, x
    )
    expected = jnp.stack([m(x) for m in ec.unstack(ens)])
    assert jnp.allclose(out, expected, rtol=1e-6, atol=1e-6)


def test_shared_states_are_not_stacked(key):
    class M(eqx.Module):
        w: ec.ParamState
        s: ec.NonBatchState

    models = [
        M(ec.ParamState(jnp.full(2, float(i))), ec.NonBatchState(jnp.ones(3)))
        for i in range(3)
    ]
    ens = ec.stack(models)
    assert ens.w.value.shape == (3, 2) and ens.s.value.shape == (3,)
    assert_trees_equal(ec.member(ens, 2), models[2])


def test_unstacking_something_that_is_not_an_ensemble(key):
    single = ec.nn.Linear(3, 2, key=key)  # weight (3, 2), bias (2,)
    with pytest.raises(ValueError, match="`unstack`: this model is not an ensemble"):
        ec.unstack(single)
    with pytest.raises(ValueError, match="not an ensemble"):
        ec.unstack({"scalar": ec.ParamState(jnp.float32(1.0))})
    with pytest.raises(ValueError, match="no array"):
        ec.unstack({"nothing": 3})
    # plain Equinox modules: the leading axis is the ensemble axis, when there is one
    with pytest.raises(ValueError, match="'layers.0.weight' has leading axis 4"):
        ec.unstack(eqx.nn.MLP(2, 2, 4, 1, key=key))


def test_member_index_out_of_range(key):
    ens = ec.make_ensemble(lambda k: ec.nn.Linear(3, 2, key=k), key, 2)
    with pytest.raises(IndexError, match="out of range"):
        ec.member(ens, 2)
    with pytest.raises(IndexError, match="out of range"):
        ec.member(ens, -3)


def test_stack_refuses_mismatched_models(key):
    with pytest.raises(ValueError, match="at least one"):
        ec.stack([])
    with pytest.raises(ValueError, match="model 1"):
        ec.stack([ec.nn.Linear(3, 2, key=key), ec.nn.Linear(3, 4, key=key)])


@pytest.mark.parametrize(
    "bad, error", [(0, ValueError), (-1, ValueError), (1.5, TypeError)]
)
def test_make_ensemble_bad_size(key, bad, error):
    with pytest.raises(error, match="positive integer"):
        ec.make_ensemble(lambda k: ec.nn.Linear(3, 2, key=k), key, bad)


def test_shard_ensemble_on_one_device(key):
    ens = ec.make_ensemble(lambda k: ec.nn.Linear(3, 2, key=k), key, 4)
    sharded = ec.shard_ensemble(ens)
    assert jnp.array_equal(sharded.weight.value["weight"], ens.weight.value["weight"])
    assert sharded.weight.ensemble_shape == (4,)
    assert isinstance(sharded.weight.ensemble_sharding, jax.sharding.NamedSharding)
    with pytest.raises(ValueError, match="not 'members'"):
        ec.shard_ensemble(
            ens, axis_name="members", mesh=jax.sharding.Mesh(jax.devices(), ("x",))
        )


# ------------------------------------------------- recorded axes (never guessed)


@given(module_trees())
def test_a_single_model_holding_states_is_never_an_ensemble(model):
    if not ec._walk.iter_states(model, views=False):
        return  # plain arrays only: the leading axis is the ensemble axis
    assert ec.ensemble_shape(model) == ()
    for op in (ec.ensemble_size, ec.unstack, lambda m: ec.member(m, 0)):
        with pytest.raises(ValueError, match="not an ensemble"):
            op(model)
    with pytest.raises(ValueError, match="not an ensemble"):
        ec.vmap_reset_all_states(model)


def test_a_square_layer_is_not_four_members(key):
    square = ec.nn.Linear(4, 4, key=key)  # weight (4, 4), bias (4,)
    assert ec.ensemble_shape(square) == ()
    with pytest.raises(ValueError, match="not an ensemble"):
        ec.member(square, 0)
    with pytest.raises(ValueError, match="not an ensemble"):
        ec.vmap_call_all_fns(square, "reset_state", fn_if_not_exist="pass")


def _keys(key, *sizes):
    """The member keys of nested levels: `keys[i][j]` for member `(i, j)`."""
    outer = jax.random.split(key, sizes[0])
    return [jax.random.split(k, sizes[1]) for k in outer]


@settings(max_examples=10)
@given(
    module_trees(max_depth=2), st.integers(1, 3), st.integers(1, 3), st.integers(0, 9)
)
def test_nested_ensembles_keep_both_axes(model, n_in, n_out, seed):
    k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
    inner = ec.vmap_init_all_states(model, axis_size=n_in, key=k1)
    nested = ec.vmap_init_all_states(inner, axis_size=n_out, key=k2)
    if not ec._walk.iter_states(model, views=False):
        return  # nothing holds the record; the leading axis is the only one
    assert ec.ensemble_shape(nested) == (n_out, n_in)
    inner_keys = jax.random.split(k1, n_in)
    for i, row in enumerate(_keys(k2, n_out, n_in)):
        outer_member = ec.member(nested, np.int64(i))
        assert ec.ensemble_shape(outer_member) == (n_in,)
        for j, k in enumerate(row):
            single = ec.init_all_states(model, key=inner_keys[j])
            assert_member_matches(outer_member, j, ec.init_all_states(single, key=k))
    reset = ec.vmap_reset_all_states(nested, key=k3)
    assert ec.ensemble_shape(reset) == (n_out, n_in)
    for i, row in enumerate(_keys(k3, n_out, n_in)):
        for j, k in enumerate(row):
            expected = ec.reset_all_states(ec.member(ec.member(nested, i), j), key=k)
            assert_member_matches(ec.member(reset, i), j, expected)
    again = ec.vmap_init_all_states(nested, key=k3)
    assert ec.ensemble_shape(again) == (n_out, n_in)
    assert [ec.ensemble_shape(m) for m in ec.unstack(nested)] == [(n_in,)] * n_out


def test_ensembles_of_ensembles_from_make_ensemble_and_stack(key):
    factory = lambda k: ec.nn.GRUCell(2, 3, key=k)
    nested = ec.make_ensemble(lambda k: ec.make_ensemble(factory, k, 3), key, 2)
    assert ec.ensemble_shape(nested) == (2, 3)
    nested = ec.vmap_init_all_states(nested, batch_size=4, key=key)
    assert nested.h.value.shape == (2, 3, 4, 3)  # members, members, batch, features
    assert ec.ensemble_shape(ec.stack(ec.unstack(nested))) == (2, 3)
    assert_trees_equal(ec.stack(ec.unstack(nested)), nested)


def test_member_index_types(key):
    ens = ec.make_ensemble(lambda k: ec.nn.Linear(3, 2, key=k), key, 4)
    want = ec.unstack(ens)[3]
    for index in (
        3,
        -1,
        np.int64(3),
        np.int32(-1),
        jnp.asarray(3),
        np.argmin([5, 4, 3, 1]),
    ):
        assert_trees_equal(ec.member(ens, index), want)
    at = eqx.filter_jit(ec.member)
    with jax.checking_leaks():
        assert_trees_equal(at(ens, jnp.asarray(3)), want)
    for bad in (True, np.bool_(False), jnp.asarray(True), 1.0, "1", jnp.zeros(2, int)):
        with pytest.raises(TypeError, match="integer"):
            ec.member(ens, bad)
    with pytest.raises(IndexError, match="out of range"):
        ec.member(ens, np.int64(4))


def test_take_and_where_members_keep_the_record_under_jit(key):
    ens = ec.make_ensemble(lambda k: ec.nn.Linear(3, 2, key=k), key, 5)
    members = ec.unstack(ens)
    take = eqx.filter_jit(ec.take_members)
    with jax.checking_leaks():
        picked = take(ens, jnp.asarray([4, 0, 4]))
    assert ec.ensemble_shape(picked) == (3,)
    assert_trees_equal(picked, ec.stack([members[4], members[0], members[4]]))
    other = ec.make_ensemble(lambda k: ec.nn.Linear(3, 2, key=k), jax.random.key(9), 5)
    mask = jnp.asarray([True, False, True, False, False])
    chosen = eqx.filter_jit(ec.where_members)(mask, ens, other)
    expected = [
        m if c else o for m, o, c in zip(members, ec.unstack(other), mask, strict=True)
    ]
    assert_trees_equal(chosen, ec.stack(expected))
    with pytest.raises(IndexError, match="out of range"):
        ec.take_members(ens, [5])
    with pytest.raises(ValueError, match="boolean mask of shape \\(5,\\)"):
        ec.where_members(jnp.ones(4, bool), ens, other)


def test_an_ensemble_built_by_hand_is_adopted_explicitly(key):
    keys = jax.random.split(key, 4)
    make = lambda k: ec.init_all_states(ec.nn.GRUCell(2, 3, key=k), batch_size=2)
    cells = eqx.filter_vmap(make)(keys)
    with pytest.raises(ValueError, match="as_ensemble"):
        ec.ensemble_size(cells)
    adopted = ec.as_ensemble(cells, 4)
    assert ec.ensemble_size(adopted) == 4
    assert_trees_equal(ec.member(adopted, 1), make(keys[1]))
    reset = ec.vmap_reset_all_states(cells, axis_size=4)  # `axis_size` adopts it too
    assert ec.ensemble_shape(reset) == (4,)
    with pytest.raises(ValueError, match="does not lead with an ensemble axis of 5"):
        ec.as_ensemble(cells, 5)
    # plain Equinox ensembles have nowhere to record: the leading axis is the axis
    mlps = eqx.filter_vmap(lambda k: eqx.nn.MLP(2, 2, 4, 1, key=k))(keys)
    assert ec.ensemble_size(mlps) == 4


def test_members_differ(key):
    ens = ec.make_ensemble(lambda k: ec.nn.Linear(3, 2, key=k), key, 4)
    assert_members_differ(ens)
    replicated = ec.vmap_init_all_states(ec.nn.Linear(3, 2, key=key), axis_size=4)
    with pytest.raises(AssertionError, match="Members 0 and 1 .* equal values"):
        assert_members_differ(replicated)
    # a random `init_state` draws per member; the replicated parameters do not
    model = node_class("plain", None)((), {"h": ec.HiddenState(jnp.zeros(3))}, name="n")
    ens = ec.vmap_init_all_states(model, axis_size=3, key=key)
    assert_members_differ(ens, ec.HiddenState)
