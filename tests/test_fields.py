import equinox as eqx
import jax.numpy as jnp
import jax.tree_util as jtu
import pytest

import eqx_collective as ec
from eqx_collective import _fields


class _Two(eqx.Module):
    a: jnp.ndarray
    b: jnp.ndarray
    name: str = eqx.field(static=True, default="x")


def test_dynamic_fields_are_the_ones_jax_flattens():
    m = _Two(jnp.ones(1), jnp.zeros(1))
    assert _fields.dynamic_fields(m) == ("a", "b")
    leaves = jtu.tree_leaves(m)
    assert [_fields.field(m, n) for n in _fields.dynamic_fields(m)] == leaves


def test_a_class_that_disagrees_with_jax_is_refused_naming_equinox(monkeypatch):
    class Odd(eqx.Module):
        a: jnp.ndarray
        b: jnp.ndarray

    real = jtu.tree_flatten_with_path

    def reversed_children(x, is_leaf=None):
        children, treedef = real(x, is_leaf=is_leaf)
        return children[::-1], treedef

    monkeypatch.setattr(_fields.jtu, "tree_flatten_with_path", reversed_children)
    with pytest.raises(_fields.EquinoxInternalsError, match=eqx.__version__):
        _fields.dynamic_fields(Odd(jnp.ones(1), jnp.zeros(1)))
    monkeypatch.undo()
    assert _fields.dynamic_fields(Odd(jnp.ones(1), jnp.zeros(1))) == ("a", "b")


def test_rebuild_equals_tree_at():
    m = _Two(jnp.ones(1), jnp.zeros(1))
    new = _fields.replace_fields(m, b=jnp.full(1, 3.0))
    expected = eqx.tree_at(lambda t: t.b, m, jnp.full(1, 3.0))
    assert jtu.tree_structure(new) == jtu.tree_structure(expected)
    assert all(
        jnp.array_equal(x, y)
        for x, y in zip(jtu.tree_leaves(new), jtu.tree_leaves(expected), strict=True)
    )
    assert m.b[0] == 0  # unchanged
    with pytest.raises(AttributeError, match="no field `c`"):
        _fields.replace_fields(m, c=1)


class _Counter(eqx.Module):
    index: eqx.nn.StateIndex

    def __init__(self):
        self.index = eqx.nn.StateIndex((jnp.zeros(2), jnp.ones(3)))


def test_eqx_state_values_round_trip_through_public_get():
    model, state = eqx.nn.make_with_state(_Counter)()
    values = _fields.state_values(state)
    rebuilt = _fields.state_with(
        {k: jtu.tree_map(lambda x: x + 1, v) for k, v in values.items()}
    )
    a, b = rebuilt.get(model.index)
    old_a, old_b = state.get(model.index)
    assert jnp.array_equal(a, old_a + 1) and jnp.array_equal(b, old_b + 1)


def test_a_used_eqx_state_is_refused_as_equinox_refuses_it():
    model, state = eqx.nn.make_with_state(_Counter)()
    state.set(model.index, state.get(model.index))
    with pytest.raises(ValueError, match="old state"):
        _fields.state_values(state)
    with pytest.raises(ValueError, match="old state"):
        ec.leaf_values((model, state))


def test_no_other_module_reads_equinox_internals():
    # The fence is the only module that reads a module's `__dict__`, builds a module
    # without `__init__` or reads `eqx.nn.State`'s private dict.
    import pathlib
    import re

    root = pathlib.Path(ec.__file__).parent
    pattern = re.compile(
        r"__dict__|object\.__(getattribute|new|setattr)__|\w\._state\b"
    )
    offenders = [
        f"{path.relative_to(root)}:{n}"
        for path in sorted(root.rglob("*.py"))
        if path.name != "_fields.py"
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if pattern.search(line.split("#")[0])
    ]
    assert offenders == []


def test_an_ordered_bound_method_is_a_pytree_like_equinox_s():
    class Cell(eqx.Module):
        w: jnp.ndarray

        @ec.call_order(1)
        def init_state(self):
            return self

    cell = Cell(jnp.ones(2))
    bound = cell.init_state
    assert jtu.tree_leaves(bound) == [cell.w]
    assert bound.__name__ == "init_state" and bound.call_order == 1
    assert bound() is cell
