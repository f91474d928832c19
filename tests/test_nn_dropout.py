import brainunit as u
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import eqx_collective as ec
from eqx_collective import nn


def test_inference_and_zero_probability_are_the_identity():
    x = jnp.arange(6.0)
    assert nn.Dropout(0.3, inference=True)(x) is x
    assert nn.Dropout(0.0)(x) is x


def test_training_needs_a_key():
    with pytest.raises(ValueError, match="needs a random `key`"):
        nn.Dropout(0.3)(jnp.ones(4))


def test_drop_rate_and_rescaling():
    x = jnp.ones((200, 500))
    y = np.asarray(nn.Dropout(prob=0.1)(x, key=jax.random.key(0)))
    dropped = y == 0
    assert dropped.mean() == pytest.approx(0.1, abs=0.005)
    np.testing.assert_allclose(y[~dropped], 1 / 0.9, rtol=1e-6)
    assert y.mean() == pytest.approx(1.0, abs=0.01)


def test_deterministic_per_key():
    x = jnp.ones(100)
    d = nn.Dropout(0.5)
    np.testing.assert_array_equal(
        d(x, key=jax.random.key(1)), d(x, key=jax.random.key(1))
    )
    assert not np.array_equal(d(x, key=jax.random.key(1)), d(x, key=jax.random.key(2)))


@pytest.mark.parametrize("prob", [1.0, -0.1, 1.5])
def test_probability_outside_zero_one(prob):
    with pytest.raises(ValueError, match=r"in \[0, 1\)"):
        nn.Dropout(prob)


def test_probability_of_the_wrong_type():
    with pytest.raises(TypeError, match="number `prob`"):
        nn.Dropout("half")


def test_inference_mode_switches_it_off():
    model = nn.Sequential(nn.Dropout(0.5), nn.ReLU(), nn.Dropout(0.2))
    frozen = eqx.nn.inference_mode(model)
    assert frozen.layers[0].inference and frozen.layers[2].inference
    x = jnp.arange(5.0)
    np.testing.assert_array_equal(frozen(x), x)


def test_keeps_the_unit_and_works_under_jit():
    x = u.Quantity(jnp.ones(50), unit=u.mV)
    with jax.checking_leaks():
        y = eqx.filter_jit(lambda d, x, k: d(x, key=k))(
            nn.Dropout(0.5), x, jax.random.key(0)
        )
    assert y.unit == u.mV
    assert set(np.unique(np.asarray(y.mantissa))) == {0.0, 2.0}


def test_no_hidden_state():
    d = nn.Dropout(0.5)
    assert d.init_state(batch_size=3) is d and d.reset_state() is d
    assert ec.init_all_states(d, batch_size=3) == d
    assert repr(nn.Dropout(prob=0.1)) == "Dropout(prob=0.1)"


def test_probability_is_a_static_python_float():
    d = nn.Dropout(np.float32(0.25))
    assert type(d.prob) is float and d.prob == 0.25
    assert nn.Dropout(jnp.asarray(0.5)).prob == 0.5
    assert jax.tree_util.tree_leaves(d) == [False]  # only `inference`, no array
    with pytest.raises(TypeError, match="number `prob`"):
        nn.Dropout(True)
    with pytest.raises(TypeError, match="number `prob`"):
        nn.Dropout(jnp.asarray([0.1, 0.2]))
