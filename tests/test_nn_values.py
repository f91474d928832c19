import brainunit as u
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, strategies as st

from eqx_collective import nn
from eqx_collective.nn._values import as_size, attach_unit, make_value, strip_unit


@given(st.integers(1, 10_000))
def test_as_size(n):
    assert (
        as_size(n, "n", "f")
        == as_size((n,), "n", "f")
        == as_size([np.int64(n)], "n", "f")
        == n
    )


def test_as_size_errors():
    with pytest.raises(ValueError, match="1-tuple"):
        as_size((2, 3), "in_size", "Linear")
    with pytest.raises(ValueError, match="positive integer `in_size`"):
        as_size(0, "in_size", "Linear")
    with pytest.raises(TypeError, match="positive integer `in_size`"):
        as_size(2.0, "in_size", "Linear")


def test_make_value():
    key = jax.random.key(0)
    assert make_value(nn.Normal(), (2, 3), key, None, "w").shape == (2, 3)
    assert make_value(np.ones(3), (3,), None, jnp.float16, "b").dtype == jnp.float16
    q = make_value(u.Quantity(jnp.ones(3), unit=u.mV), (3,), None, None, "b")
    assert q.unit == u.mV
    with pytest.raises(ValueError, match=r"The b must have shape \(4,\)"):
        make_value(np.ones(3), (4,), None, None, "b")


def test_attach_and_strip_unit_are_inverse():
    x = jnp.arange(3.0)
    q = attach_unit(x, u.mV)
    assert isinstance(q, u.Quantity) and q.unit == u.mV
    numbers, unit = strip_unit(q)
    np.testing.assert_array_equal(numbers, x)
    assert unit == u.mV
    assert attach_unit(x, u.UNITLESS) is x
    assert strip_unit(x) == (x, u.UNITLESS)
