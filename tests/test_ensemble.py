import equinox as eqx
import jax
import jax.numpy as jnp
import pytest
from helpers import assert_trees_equal
from hypothesis import given

import eqx_collective as ec
from eqx_collective.testing import ensembles


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
