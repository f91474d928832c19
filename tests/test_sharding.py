"""Sharding the ensemble axis over several simulated CPU devices (`conftest.py` starts
JAX with four: importing the library starts no backend, so the setting holds)."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import eqx_collective as ec


def test_sharding_over_eight_simulated_devices():
    assert jax.device_count() == 4, jax.devices()
    key = jax.random.key(0)
    cell = ec.nn.ValinaRNNCell(4, 16, key=key)
    ens = ec.vmap_init_all_states(cell, axis_size=16, key=key)

    mesh = jax.sharding.Mesh(jax.devices(), ("ensemble",))
    sharded = ec.shard_ensemble(ens, mesh)
    w = sharded.W.weight.value["weight"]
    assert w.sharding.spec == jax.sharding.PartitionSpec("ensemble"), w.sharding
    assert len(w.addressable_shards) == 4
    assert {s.data.shape for s in w.addressable_shards} == {(4, 20, 16)}

    @eqx.filter_jit
    def step(ens, x):
        return eqx.filter_vmap(
            lambda c, x: c(x), in_axes=(ec.ensemble_in_axes(ens), None)
        )(ens, x)

    x = jnp.ones(4)
    y_sharded, new = step(sharded, x)
    y_single, _ = step(ens, x)
    np.testing.assert_allclose(y_sharded, y_single, rtol=1e-6, atol=1e-6)
    assert len(y_sharded.sharding.device_set) == 4

    reset = ec.vmap_reset_all_states(new)
    assert reset.h.value.shape == (16, 16)

    with pytest.raises(ValueError, match="6 members cannot be split evenly over 4 dev"):
        ec.shard_ensemble(ec.vmap_init_all_states(cell, axis_size=6, key=key), mesh)
    # A 2-D mesh: members over one axis, replicated over the other.
    mesh2 = jax.sharding.Mesh(
        np.array(jax.devices()).reshape(2, 2), ("ensemble", "data")
    )
    w2 = ec.shard_ensemble(ens, mesh2).W.weight.value["weight"]
    assert {s.data.shape for s in w2.addressable_shards} == {(8, 20, 16)}
    with pytest.raises(ValueError, match="3 members cannot be split evenly over 2 dev"):
        ec.shard_ensemble(ec.vmap_init_all_states(cell, axis_size=3, key=key), mesh2)


def test_every_ensemble_operation_keeps_the_sharding():
    key = jax.random.key(0)
    mesh = jax.sharding.Mesh(jax.devices(), ("ensemble",))
    split = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("ensemble"))
    cells = ec.make_ensemble(lambda k: ec.nn.GRUCell(3, 4, key=k), key, 16)
    cells = ec.shard_ensemble(ec.vmap_init_all_states(cells, batch_size=2, key=key))

    def check(tree, what):
        for path, x in ec.leaf_values(tree).items():
            assert x.sharding.is_equivalent_to(split, x.ndim), (what, path, x.sharding)
        assert ec.ensemble_shape(tree) == (ec.ensemble_size(tree),), what

    ops = {
        "reset": lambda e: ec.vmap_reset_all_states(e),
        "init": lambda e: ec.vmap_init_all_states(e, batch_size=2, key=key),
        "call": lambda e: ec.vmap_call_all_fns(
            e, "reset_state", fn_if_not_exist="pass"
        ),
        "assign": lambda e: (
            ec.assign_state_values(
                e,
                {k: jnp.zeros(v.shape, v.dtype) for k, v in ec.leaf_values(e).items()},
            ).model
        ),
        "take": lambda e: ec.take_members(e, jnp.arange(8)),
        "where": lambda e: ec.where_members(jnp.arange(16) % 2 == 0, e, e),
    }
    for name, op in ops.items():
        check(op(cells), name + " eagerly")
        check(eqx.filter_jit(op)(cells), name + " under jit")
