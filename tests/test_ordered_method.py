import equinox as eqx
import jax
import jax.numpy as jnp
import pytest

import eqx_collective as ec
from eqx_collective._ordered_method import OrderedBoundMethod, OrderedMethod


class Cell(eqx.Module):
    h: ec.HiddenState = ec.HiddenState(jnp.zeros(3))

    @ec.call_order(2)
    def init_state(self, scale=1.0, *, key):
        """Docstring kept."""
        value = scale * jax.random.normal(key, (3,))
        return eqx.tree_at(lambda c: c.h.value, self, value)

    def other(self):
        return self


def test_level_readable_from_class_instance_and_function():
    cell = Cell()
    assert isinstance(Cell.init_state, OrderedMethod)
    assert Cell.init_state.call_order == cell.init_state.call_order == 2
    assert Cell.init_state.__wrapped__.call_order == 2
    assert isinstance(cell.init_state, OrderedBoundMethod)
    assert cell.init_state.__name__ == "init_state"
    assert cell.init_state.__doc__ == "Docstring kept."
    assert not hasattr(cell.other, "call_order")


def test_still_a_method_and_a_pytree():
    cell = Cell()
    key = jax.random.key(0)
    direct = cell.init_state(2.0, key=key)
    unbound = Cell.init_state(cell, 2.0, key=key)
    assert eqx.tree_equal(direct, unbound)
    jitted = jax.jit(lambda f, k: f(2.0, key=k))(cell.init_state, key)
    assert jnp.allclose(jitted.h.value, direct.h.value)


def test_collective_calls_see_the_level_and_the_key():
    cell = ec.init_all_states(Cell(), key=jax.random.key(1))
    assert not jnp.allclose(cell.h.value, 0.0)
    with pytest.raises(TypeError, match="needs a random `key`"):
        ec.init_all_states(Cell())


def test_decorated_twice_the_outer_level_wins():
    @ec.call_order(5)
    @ec.call_order(1)
    def f():
        return 3

    assert f.call_order == 5 and f() == 3


def test_plain_classes_bind_too():
    class Plain:
        @ec.call_order(4)
        def method(self):
            return self

    p = Plain()
    assert p.method() is p and p.method.call_order == 4
