import brainunit as u
import equinox as eqx
import jax
import jax.numpy as jnp
import pytest

import eqx_collective as ec
from eqx_collective import nn


def _layers(key):
    k1, k2, k3, k4 = jax.random.split(key, 4)
    cells = [
        nn.ValinaRNNCell(3, 4, state_init=nn.Normal(0.0, 0.1, unit=u.mV), key=k1),
        nn.GRUCell(3, 4, key=k2),
        nn.LSTMCell(3, 4, state_init=nn.Constant((1.0, 2.0, 3.0, 4.0)), key=k3),
    ]
    stateless = [
        nn.Linear(3, 4, key=k4),
        nn.Linear(3, 4, b_init=None, key=k4),
        nn.ReLU(),
        nn.GELU(approximate=True),
        nn.Dropout(0.25),
    ]
    return cells + stateless + [nn.Sequential(*stateless, *cells)]


def _names(layer):
    return type(layer).__name__


def _nodes(tree):
    return getattr(tree, "layers", (tree,))


LAYERS = _layers(jax.random.key(0))


@pytest.mark.parametrize("layer", LAYERS, ids=_names)
def test_every_layer_answers_init_state_and_reset_state(layer):
    assert isinstance(layer, nn.Layer)
    key = jax.random.key(1)
    ready = ec.call_all_fns(layer, "init_state", kwargs={"batch_size": 2}, key=key)
    assert type(ready) is type(layer)
    again = ec.call_all_fns(ready, "reset_state", key=key)
    assert jax.tree.structure(again) == jax.tree.structure(ready)


@pytest.mark.parametrize("layer", LAYERS, ids=_names)
def test_only_states_hold_arrays(layer):
    """Every array of a layer is inside an `ec.State`: a raw array would count as a
    parameter (snapshots, checkpoints, `partition`). The only other leaves are
    `Dropout`'s Python bool `inference` (for `eqx.nn.inference_mode`)."""
    ready = ec.init_all_states(layer, batch_size=2, key=jax.random.key(1))
    for tree in (layer, ready):
        leaves = jax.tree_util.tree_leaves(
            tree, is_leaf=lambda x: isinstance(x, ec.State)
        )
        others = [x for x in leaves if not isinstance(x, ec.State)]
        assert all(type(x) is bool for x in others), others
        assert len(others) == sum(isinstance(x, nn.Dropout) for x in _nodes(tree))


@pytest.mark.parametrize("layer", LAYERS, ids=_names)
def test_initialisers_are_not_nodes(layer):
    visited = ec.collect_all_fns(
        layer, "init_state", kwargs={"batch_size": 2}, key=jax.random.key(1)
    )
    for path in visited:
        node = layer
        for part in path:
            node = node[part] if isinstance(part, int) else getattr(node, part)
        assert not isinstance(node, nn.Initialiser), path


def test_no_op_methods_take_any_arguments():
    relu = nn.ReLU()
    assert relu.init_state(1, 2, batch_size=3, key=jax.random.key(0)) is relu
    assert relu.reset_state("anything", x=None) is relu


def test_a_user_layer_inherits_the_no_ops():
    class Scale(nn.Layer):
        factor: float

        def __call__(self, x, *, key=None):
            return self.factor * x

    model = nn.Sequential(Scale(2.0), nn.Linear(2, 2, key=jax.random.key(0)))
    assert eqx.tree_equal(ec.call_all_fns(model, "init_state", (4,)), model)
    assert not nn.is_stateful(Scale(1.0))
    assert nn.is_stateful(nn.GRUCell(1, 1, key=jax.random.key(0)))
    assert jnp.array_equal(model.layers[0](jnp.ones(2)), 2 * jnp.ones(2))
