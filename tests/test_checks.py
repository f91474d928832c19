import brainunit as u
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, strategies as st

from eqx_collective._checks import describe, positive_int


@given(st.integers(1, 2**62))
def test_positive_int_accepts_python_and_numpy_integers(n):
    assert positive_int(n, "n", "f") == n
    assert type(positive_int(np.int64(n), "n", "f")) is int
    assert positive_int(np.int64(n), "n", "f") == n


@given(st.integers(-(2**62), 0))
def test_positive_int_refuses_zero_and_negatives_with_value_error(n):
    with pytest.raises(ValueError, match="`where` takes a positive integer `what`"):
        positive_int(n, "what", "where")
    with pytest.raises(ValueError):
        positive_int(np.int32(max(n, -(2**31))), "what", "where")


@pytest.mark.parametrize(
    "value", [True, False, np.bool_(True), 1.0, 2.5, "3", None, np.ones(2), [1]]
)
def test_positive_int_refuses_non_integers_with_type_error(value):
    with pytest.raises(TypeError, match="`f` takes a positive integer `n`, but got"):
        positive_int(value, "n", "f")


def test_describe():
    assert describe(jnp.ones((4, 3))) == "float32[4,3]"
    assert describe(u.Quantity(jnp.ones(2), unit=u.mV)) == "float32[2] with unit mV"
    assert describe(3) == "Python int 3"
    assert describe(np.int64(3)) == "int64[]"
    assert describe(jax.random.key(0)) == "key<fry>[]"
    assert len(describe("x" * 500)) <= 80
