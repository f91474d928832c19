"""Every model of the collective-operations tutorial
(`reference/collective_operations.txt`), as the tour defines it
(`eqx_collective.tour`), run through the collective operations the tutorial applies
to it."""

import brainunit as u
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import eqx_collective as ec
from eqx_collective import nn
from eqx_collective.testing import assert_trees_equal
from eqx_collective.tour import (
    EncoderDecoder,
    LoggingLayer,
    make_autoencoder,
    make_policy,
    snapshot_of,
)


# Ordering calls with `call_order` ----------------------------------------------------


def test_encoder_decoder_with_call_order(key, getkey):
    model = EncoderDecoder(key=key)
    assert EncoderDecoder.init_state.call_order == 0
    assert EncoderDecoder.reset_state.call_order == 1
    # The children's undecorated `init_state` first, then the model's own.
    order = ec.collect_all_fns(model, "init_state", kwargs={"batch_size": 4})
    assert list(order) == [("encoder",), ("decoder",), ()]
    assert model.h is None  # collect_all_fns changed nothing
    model = ec.init_all_states(model, batch_size=4)
    assert model.h is not None and model.h.value.shape == (4, 32)
    assert_trees_equal(model, order[()])
    x = jax.random.normal(getkey(), (4, 16))
    y, model = model(x)
    assert y.shape == (4, 16)
    assert model.h is not None
    np.testing.assert_allclose(model.h.value, model.encoder(x), rtol=1e-6)
    reset = ec.reset_all_states(model)
    assert reset.h is not None
    assert reset.h.value.shape == (4, 32) and not np.any(np.asarray(reset.h.value))
    assert_trees_equal(reset.encoder, model.encoder)  # parameters untouched
    assert list(ec.states(model)) == [
        ("encoder", "weight"),
        ("decoder", "weight"),
        ("h",),
    ]
    unbatched = ec.init_all_states(EncoderDecoder(key=key))
    assert unbatched.h is not None and unbatched.h.value.shape == (32,)


def test_encoder_decoder_reset_before_init(key):
    with pytest.raises(ValueError, match="call `init_state` first"):
        EncoderDecoder(key=key).reset_state()


# Initialising every module ---------------------------------------------------------


def test_linear_gelu_dropout_stack(key, getkey):
    model = nn.Sequential(
        nn.Linear((10,), (32,), key=key), nn.GELU(), nn.Dropout(prob=0.1)
    )
    initialised = ec.init_all_states(model, batch_size=4, key=getkey())
    assert_trees_equal(initialised, model)  # no layer has a hidden state
    excluded = ec.init_all_states(model, node_to_exclude=nn.Dropout)
    assert_trees_equal(excluded, model)
    model = ec.init_all_states(ec.init_all_states(model))  # chainable
    x = jax.random.normal(getkey(), (4, 10))
    y = model(x, key=getkey())
    assert y.shape == (4, 32)
    dense = jax.nn.gelu(model[0](x), approximate=False)
    kept = np.asarray(y) != 0
    np.testing.assert_allclose(
        np.asarray(y)[kept], np.asarray(dense)[kept] / 0.9, rtol=1e-5
    )
    np.testing.assert_allclose(eqx.nn.inference_mode(model)(x), dense, rtol=1e-6)


# Resetting state between sequences -------------------------------------------------


def test_valina_rnn_cell_init_and_reset(key, getkey):
    rnn = nn.ValinaRNNCell(num_in=8, num_out=16, key=key)
    rnn = ec.init_all_states(rnn, batch_size=2)
    assert rnn.h.value.shape == (2, 16)
    for _ in range(3):
        _, rnn = rnn(jax.random.normal(getkey(), (2, 8)))
    assert np.any(np.asarray(rnn.h.value))
    reset = ec.reset_all_states(rnn)
    assert reset.h.value.shape == (2, 16)  # brainstate would drop the batch axis
    assert not np.any(np.asarray(reset.h.value))
    assert_trees_equal(reset.W, rnn.W)
    text = eqx.tree_pformat(reset)
    assert "in_size=(24,)" in text and "h=HiddenState(value=f32[2,16])" in text


def test_valina_rnn_cell_with_units(key):
    rnn = nn.ValinaRNNCell(8, 16, state_init=nn.ZeroInit(unit=u.mV), key=key)
    rnn = ec.init_all_states(rnn, batch_size=2)
    _, rnn = rnn(jnp.ones((2, 8)))
    reset = ec.reset_all_states(rnn)
    assert reset.h.value.unit == u.mV and reset.h.value.shape == (2, 16)
    snapshot = ec.leaf_values(rnn)
    assert snapshot[("h",)].unit == u.mV


# Batched initialisation with vmap --------------------------------------------------


def test_policy(key, getkey):
    policy = make_policy(key)
    assert_trees_equal(ec.init_all_states(policy), policy)
    obs = jax.random.normal(getkey(), (5, 4))
    assert policy(obs).shape == (5, 2)
    policies = ec.vmap_init_all_states(policy, axis_size=8, key=getkey())
    weights = policies.layers[0].weight.value
    assert weights["weight"].shape == (8, 4, 64)  # parameters gain the axis
    actions = eqx.filter_vmap(lambda p: p(obs))(policies)
    assert actions.shape == (8, 5, 2)
    np.testing.assert_allclose(actions[3], policy(obs), rtol=1e-5, atol=1e-6)
    reset = ec.vmap_reset_all_states(policies, axis_size=8)
    assert reset.layers[2].weight.value["weight"].shape == (8, 64, 2)
    # Independent members: build them from their own keys.
    members = eqx.filter_vmap(make_policy)(jax.random.split(getkey(), 8))
    w = members.layers[0].weight.value["weight"]
    assert w.shape == (8, 4, 64) and not np.array_equal(w[0], w[1])


# Calling arbitrary methods collectively ---------------------------------------------


def test_logging_layers(key):
    k1, k2 = jax.random.split(key)
    net = nn.Sequential(LoggingLayer(8, key=k1), LoggingLayer(8, key=k2))
    net = ec.init_all_states(net)
    stats = ec.collect_all_fns(net, "log_stats", fn_if_not_exist="pass")
    assert list(stats) == [("layers", 0), ("layers", 1)]
    for i in range(2):
        expected = np.mean(np.asarray(net.layers[i].linear.weight.value["weight"]))
        np.testing.assert_allclose(stats[("layers", i)], expected, rtol=1e-5, atol=1e-8)
    assert stats[("layers", 0)] != stats[("layers", 1)]


# Restoring states with assign_state_values -----------------------------------------


def test_autoencoder(key, getkey):
    autoencoder = ec.init_all_states(make_autoencoder(key))
    snapshot = ec.leaf_values(autoencoder)
    assert set(snapshot) == {
        ("layers", 0, "weight", "bias"),
        ("layers", 0, "weight", "weight"),
        ("layers", 2, "weight", "bias"),
        ("layers", 2, "weight", "weight"),
    }
    # The tutorial's own snapshot loop makes the same snapshot.
    assert list(snapshot_of(autoencoder)) == list(snapshot)
    assert_trees_equal(snapshot_of(autoencoder), snapshot)
    x = jax.random.normal(getkey(), (3, 16))
    assert autoencoder(x).shape == (3, 16)
    other = make_autoencoder(getkey())  # "modify weights"
    restored, unexpected, missing = ec.assign_state_values(other, snapshot)
    assert unexpected == [] and missing == []
    assert_trees_equal(restored, autoencoder)
    np.testing.assert_array_equal(restored(x), autoencoder(x))


# Putting it all together -------------------------------------------------------------


def test_batched_recurrent_lifecycle(key, getkey):
    rnn = nn.ValinaRNNCell(num_in=4, num_out=8, key=key)
    rnn = ec.vmap_init_all_states(rnn, axis_size=4, batch_size=3, key=getkey())
    snapshot = ec.leaf_values(rnn)
    inputs = jax.random.normal(getkey(), (12, 4, 3, 4))

    @eqx.filter_jit
    def rollout(rnn, inputs):
        step = eqx.filter_vmap(lambda cell, x: cell(x))
        for t in range(inputs.shape[0]):
            _, rnn = step(rnn, inputs[t])
        return rnn

    with jax.checking_leaks():
        rnn = rollout(rnn, inputs)
    assert rnn.h.value.shape == (4, 3, 8) and np.any(np.asarray(rnn.h.value))
    rnn = ec.vmap_reset_all_states(rnn, axis_size=4)
    assert rnn.h.value.shape == (4, 3, 8) and not np.any(np.asarray(rnn.h.value))
    restored, unexpected, missing = ec.assign_state_values(rnn, snapshot)
    assert unexpected == [] and missing == []
    np.testing.assert_array_equal(
        restored.W.weight.value["weight"], snapshot[("W", "weight", "weight")]
    )
