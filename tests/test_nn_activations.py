import brainunit as u
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import eqx_collective as ec
from eqx_collective import nn


def test_relu():
    x = jnp.array([-2.0, -0.0, 0.5, 3.0])
    np.testing.assert_array_equal(nn.ReLU()(x), [0.0, 0.0, 0.5, 3.0])


def test_relu_keeps_the_unit():
    y = nn.ReLU()(u.Quantity(jnp.array([-1.0, 2.0]), unit=u.mV))
    assert isinstance(y, u.Quantity) and y.unit == u.mV
    np.testing.assert_array_equal(y.mantissa, [0.0, 2.0])


def test_gelu_exact_and_approximate():
    x = jnp.linspace(-3.0, 3.0, 13)
    exact, approx = nn.GELU()(x), nn.GELU(approximate=True)(x)
    np.testing.assert_allclose(exact, jax.nn.gelu(x, approximate=False), rtol=1e-6)
    np.testing.assert_allclose(approx, jax.nn.gelu(x, approximate=True), rtol=1e-6)
    assert not np.array_equal(exact, approx)


def test_gelu_refuses_physical_units():
    with pytest.raises(ValueError, match="dimensionless"):
        nn.GELU()(u.Quantity(jnp.ones(2), unit=u.mV))
    ratio = u.Quantity(jnp.array([1000.0]), unit=u.mV) / u.Quantity(1.0, unit=u.volt)
    np.testing.assert_allclose(nn.GELU()(ratio), jax.nn.gelu(jnp.ones(1), False))
    with pytest.raises(TypeError, match="bool `approximate`"):
        nn.GELU(approximate="yes")


def test_stateless_printing_and_key_argument():
    assert repr(nn.GELU()) == "GELU()"
    assert repr(nn.GELU(approximate=True)) == "GELU(approximate=True)"
    assert repr(nn.ReLU()) == "ReLU()"
    for layer in (nn.ReLU(), nn.GELU()):
        assert layer.init_state(batch_size=2) is layer
        assert layer.reset_state() is layer
        assert ec.init_all_states(layer, batch_size=2) == layer
        np.testing.assert_array_equal(
            layer(jnp.ones(3), key=jax.random.key(0)), layer(jnp.ones(3))
        )


def test_under_jit():
    x = jnp.array([-1.0, 1.0])
    with jax.checking_leaks():
        y = eqx.filter_jit(lambda m, x: m(x))(nn.GELU(approximate=True), x)
    np.testing.assert_allclose(y, jax.nn.gelu(x, approximate=True), rtol=1e-6)
