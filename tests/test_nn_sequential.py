import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import eqx_collective as ec
from eqx_collective import nn
from eqx_collective.testing import assert_trees_equal


def _stack(key):
    k1, k2 = jax.random.split(key)
    return nn.Sequential(
        nn.Linear(10, 32, key=k1), nn.GELU(), nn.Dropout(0.1), nn.Linear(32, 2, key=k2)
    )


def test_indexing_length_iteration_and_slices(key):
    seq = _stack(key)
    assert len(seq) == 4
    assert isinstance(seq[1], nn.GELU) and seq[-1] is seq.layers[3]
    assert list(seq) == list(seq.layers)
    head = seq[:2]
    assert isinstance(head, nn.Sequential) and len(head) == 2
    assert head.layers[0] is seq.layers[0]
    assert list(ec.states(seq)) == [("layers", 0, "weight"), ("layers", 3, "weight")]


def test_stateless_call_returns_only_the_output(key, getkey):
    seq = _stack(key)
    assert not seq.is_stateful()
    x = jax.random.normal(getkey(), (4, 10))
    out = eqx.nn.inference_mode(seq)(x)
    assert isinstance(out, jax.Array)
    manual = seq[3](jax.nn.gelu(seq[0](x), approximate=False))
    np.testing.assert_allclose(out, manual, rtol=1e-6)


def test_key_is_split_among_the_layers_that_take_one(getkey):
    calls = []

    def no_key(x):  # a plain function without `key`: gets none
        calls.append("no_key")
        return x

    seq = nn.Sequential(nn.Dropout(0.5), no_key, nn.Dropout(0.5))
    x, key = jnp.ones(64), getkey()
    k0, k1 = jax.random.split(key)
    expected = nn.Dropout(0.5)(nn.Dropout(0.5)(x, key=k0), key=k1)
    np.testing.assert_array_equal(seq(x, key=key), expected)
    assert calls == ["no_key"]
    with pytest.raises(ValueError, match="needs a random `key`"):
        seq(x)  # the dropouts get `key=None`


def test_stateful_layers_make_it_return_the_updated_sequential(key, getkey):
    k1, k2 = jax.random.split(key)
    seq = nn.Sequential(nn.Linear(4, 8, key=k1), nn.ValinaRNNCell(8, 16, key=k2))
    assert seq.is_stateful() and nn.is_stateful(seq)
    seq = ec.init_all_states(seq, batch_size=3)
    assert seq[1].h.value.shape == (3, 16)
    x = jax.random.normal(getkey(), (3, 4))
    out, new = seq(x)
    h, cell = seq[1](seq[0](x))
    np.testing.assert_allclose(out, h, rtol=1e-6)
    assert_trees_equal(new.layers[1], cell)
    assert_trees_equal(new.layers[0], seq.layers[0])
    assert not np.any(np.asarray(seq[1].h.value))  # the input is untouched
    out2, _ = new(x)  # the next step starts from the new hidden state
    h2, _ = cell(seq[0](x))
    np.testing.assert_allclose(out2, h2, rtol=1e-6)


def test_nested_sequentials(key, getkey):
    inner = nn.Sequential(nn.ValinaRNNCell(2, 3, key=key))
    outer = ec.init_all_states(nn.Sequential(nn.ReLU(), inner), batch_size=2)
    assert outer.is_stateful()
    x = jax.random.normal(getkey(), (2, 2))
    out, new = outer(x)
    assert isinstance(new, nn.Sequential) and isinstance(new[1], nn.Sequential)
    np.testing.assert_array_equal(new[1][0].h.value, out)


def test_a_stateful_layer_breaking_the_convention(key):
    class Broken(nn.StatefulLayer):
        def __call__(self, x, *, key=None):
            return x  # should be (x, self)

    with pytest.raises(TypeError, match=r"must return `\(output, updated_layer\)`"):
        nn.Sequential(Broken())(jnp.ones(2))


def test_custom_stateful_layer(key):
    class Counter(nn.StatefulLayer):
        count: jax.Array

        def __call__(self, x, *, key=None):
            return x + 1, eqx.tree_at(lambda c: c.count, self, self.count + 1)

    seq = nn.Sequential(Counter(jnp.array(0)), nn.ReLU(), Counter(jnp.array(5)))
    out, seq = seq(jnp.zeros(2))
    np.testing.assert_array_equal(out, [2.0, 2.0])
    assert int(seq[0].count) == 1 and int(seq[2].count) == 6


def test_layers_must_be_callable():
    with pytest.raises(TypeError, match="layer 1 is a int"):
        nn.Sequential(nn.ReLU(), 3)


def test_empty_sequential_is_the_identity():
    x = jnp.ones(3)
    assert nn.Sequential()(x) is x


def test_no_hidden_state_and_printing(key):
    seq = _stack(key)
    assert seq.init_state(batch_size=2) is seq and seq.reset_state() is seq
    text = eqx.tree_pformat(seq)
    assert text.startswith("Sequential(\n  layers=(")
    assert "ParamState(value={'bias': f32[32], 'weight': f32[10,32]})" in text
    assert "Dropout(prob=0.1)" in text and "GELU()" in text


def test_under_jit_with_a_stateful_layer(key, getkey):
    seq = ec.init_all_states(nn.Sequential(nn.GRUCell(3, 5, key=key)), batch_size=2)
    x = jax.random.normal(getkey(), (2, 3))
    with jax.checking_leaks():
        out, new = eqx.filter_jit(lambda s, x: s(x))(seq, x)
    eager_out, eager_new = seq(x)
    np.testing.assert_allclose(out, eager_out, rtol=1e-6)
    assert_trees_equal(new, eager_new, rtol=1e-6)
