"""`nn.PerExample` and `nn.WithState`: Equinox's per-example layers in batched models."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import eqx_collective as ec
from eqx_collective import nn


def _bn():
    return eqx.nn.make_with_state(eqx.nn.BatchNorm)(4, "batch", mode="batch")


def test_per_example_maps_over_the_batch(getkey):
    mlp = eqx.nn.MLP(3, 2, 8, 1, key=getkey())
    x = jax.random.normal(getkey(), (5, 3))
    out = nn.PerExample(mlp)(x)
    # The same computation as Equinox's per-example idiom, bit for bit; and each row
    # is the MLP of that example (float32: a batched product may round differently).
    np.testing.assert_array_equal(out, eqx.filter_vmap(mlp)(x))
    np.testing.assert_allclose(
        out, jnp.stack([mlp(r) for r in x]), rtol=1e-5, atol=1e-6
    )
    drop = nn.PerExample(eqx.nn.Dropout(0.5))
    a, b = (
        drop(jnp.ones((4, 100)), key=getkey()),
        drop(jnp.ones((4, 100)), key=getkey()),
    )
    assert not jnp.array_equal(a, b)  # a key per example, a new key a new mask
    assert not jnp.array_equal(a[0], a[1])


def test_with_state_updates_its_state_and_is_addressed_by_path(getkey):
    bn = nn.WithState(*_bn())
    x = jax.random.normal(getkey(), (16, 4)) * 3 + 1
    y, new = bn(x)
    np.testing.assert_allclose(y.mean(0), 0, atol=1e-5)
    assert type(new) is nn.WithState
    paths = list(ec.leaf_values(new, ec.Not(ec.ParamState)))
    assert paths == [
        ("state", "batch_counter"),
        ("state", "batch_state_index", 0),
        ("state", "batch_state_index", 1),
    ]
    before, after = ec.leaf_values(bn), ec.leaf_values(new)
    assert not jnp.array_equal(before[paths[1]], after[paths[1]])  # running mean moved
    restored = ec.assign_state_values(bn, after, strict=True).model
    assert all(
        jnp.array_equal(v, ec.leaf_values(restored)[k]) for k, v in after.items()
    )


def test_a_model_of_ours_topped_by_equinox_layers_runs_and_trains(getkey):
    net = nn.Sequential(
        nn.GRUCell(3, 4, key=getkey()),
        nn.WithState(*_bn()),
        nn.PerExample(eqx.nn.Linear(4, 2, key=getkey())),
    )
    net = ec.init_all_states(net, batch_size=8)
    y, net = net(jnp.ones((8, 3)))
    assert y.shape == (8, 2)
    params, rest = ec.partition(net, ec.ParamState)
    assert {("layers", 2, "layer", "weight"), ("layers", 2, "layer", "bias")} <= set(
        ec.leaf_values(params)
    )
    assert ("layers", 1, "state", "batch_counter") in ec.leaf_values(rest)


def test_an_equinox_layer_at_a_batched_seam_gets_a_note(getkey):
    net = nn.Sequential(
        nn.GRUCell(3, 16, key=getkey()), eqx.nn.MLP(16, 2, 8, 1, key=getkey())
    )
    net = ec.init_all_states(net, batch_size=8)
    with pytest.raises(TypeError) as info:
        net(jnp.ones((8, 3)))
    notes = "\n".join(getattr(info.value, "__notes__", []))
    assert "layer 1 of `Sequential`, a MLP" in notes
    assert "nn.PerExample(layer)" in notes
