import collections
from typing import Any, NamedTuple

import brainunit as u
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import pytest
from hypothesis import given

import eqx_collective as ec
from eqx_collective._fields import replace_fields
from eqx_collective._paths import is_state, keypath_to_path
from eqx_collective._walk import iter_nodes, iter_states, map_states
from eqx_collective.testing import module_trees


# `walk` (behind `iter_states`, `map_states`, `iter_nodes` and the collective passes)
# reads modules and containers directly; it must agree with `jax.tree_util`.


def _reference_states(tree):
    flat = jtu.tree_flatten_with_path(tree, is_leaf=is_state)[0]
    return [(keypath_to_path(kp), x) for kp, x in flat if is_state(x)]


def _reference_nodes(tree):
    """Module nodes, children before parent, from `jax.tree_util` alone."""
    out = []

    def visit(x, path):
        flat = jtu.tree_flatten_with_path(
            x, is_leaf=lambda y: y is not x and isinstance(y, eqx.Module)
        )[0]
        for kp, leaf in flat:
            if isinstance(leaf, eqx.Module) and not is_state(leaf):
                visit(leaf, path + keypath_to_path(kp))
        if isinstance(x, eqx.Module) and not is_state(x):
            out.append((path, x))

    visit(tree, ())
    return out


def _same_pairs(a, b):
    assert [p for p, _ in a] == [p for p, _ in b]
    assert all(x is y for (_, x), (_, y) in zip(a, b, strict=True))


@given(module_trees(dicts=True))
def test_walk_visits_what_jax_tree_util_visits(tree):
    _same_pairs(iter_states(tree, views=False), _reference_states(tree))
    _same_pairs(iter_nodes(tree), _reference_nodes(tree))
    assert (
        map_states(lambda p, s: s, tree, views=False) is tree
    )  # nothing replaced, nothing built


class _Pair(NamedTuple):
    left: Any
    right: Any


@jtu.register_pytree_with_keys_class
class _Box:
    """A custom pytree node, not an `eqx.Module`."""

    def __init__(self, items):
        self.items = items

    def tree_flatten_with_keys(self):
        return [(jtu.GetAttrKey(f"item{i}"), x) for i, x in enumerate(self.items)], None

    @classmethod
    def tree_unflatten(cls, aux, children):
        return cls(list(children))


class _Holder(eqx.Module):
    pair: _Pair
    ordered: collections.OrderedDict
    box: _Box
    partial: jtu.Partial
    by_int: dict
    nothing: None
    volts: u.Quantity
    hidden: ec.ParamState = eqx.field(static=True)  # static: not part of the pytree


def _holder():
    def s(x):
        return ec.ParamState(jnp.full(2, float(x)))

    return _Holder(
        pair=_Pair(s(1), [s(2), None]),
        ordered=collections.OrderedDict([("z", s(3)), ("a", s(4))]),
        box=_Box([s(5), (s(6),)]),
        partial=jtu.Partial(jnp.add, s(7)),
        by_int={10: s(8), 2: s(9)},
        nothing=None,
        volts=u.Quantity(jnp.ones(2), u.mV),
        hidden=ec.ParamState(99.0),
    )


def test_walk_agrees_with_jax_on_other_pytree_nodes():
    tree = _holder()
    found = iter_states(tree, views=False)
    _same_pairs(found, _reference_states(tree))
    assert [float(s.value[0]) for _, s in found] == [1, 2, 3, 4, 5, 6, 7, 9, 8]
    assert ("hidden",) not in dict(found)
    assert ("pair", "left") in dict(found) and ("box", "item1", 0) in dict(found)


def test_map_states_rebuilds_only_the_branches_it_changes():
    tree = _holder()
    out = map_states(
        lambda p, s: ec.ParamState(-s.value) if p[0] in ("pair", "box") else s, tree
    )
    assert jtu.tree_structure(out) == jtu.tree_structure(tree)
    for (p, new), (_, old) in zip(
        iter_states(out, views=False), iter_states(tree, views=False), strict=True
    ):
        if p[0] in ("pair", "box"):
            assert jnp.array_equal(new.value, -old.value)
        else:
            assert new is old
    # untouched branches are shared, and the input is unchanged
    assert out.ordered is tree.ordered and out.by_int is tree.by_int
    assert out.partial is tree.partial and out.volts is tree.volts
    assert out.hidden is tree.hidden
    assert type(out.pair) is _Pair and type(out.box) is _Box
    assert float(tree.pair.left.value[0]) == 1


def test_walk_keeps_the_order_of_sorted_dict_keys_like_jax():
    tree = {"b": ec.ParamState(jnp.zeros(1)), "a": ec.ParamState(jnp.ones(1))}
    assert [p for p, _ in iter_states(tree, views=False)] == [("a",), ("b",)]
    out = map_states(lambda p, s: ec.ParamState(s.value + 1), tree)
    assert list(out) == ["b", "a"]  # a rebuilt dict keeps the caller's order
    assert float(out["a"].value[0]) == 2


def test_walk_refuses_unsortable_dict_keys_as_jax_does():
    tree = {1: ec.ParamState(jnp.zeros(1)), "x": ec.ParamState(jnp.zeros(1))}
    with pytest.raises(ValueError, match="sorting"):
        iter_states(tree, views=False)


def test_per_class_caches_keep_no_class_alive():
    import gc

    from eqx_collective import _walk

    class Plain:
        pass

    _walk._how(Plain())
    assert id(Plain) in _walk._HOW
    ident = id(Plain)
    del Plain
    gc.collect()
    assert ident not in _walk._HOW


def test_an_ensemble_whose_record_disagrees_with_its_arrays_is_refused():
    ens = ec.make_ensemble(lambda k: ec.nn.Linear(2, 2, key=k), jax.random.key(0), 3)
    # (an outer axis of 5 recorded over arrays that carry only the 3 members)
    five = replace_fields(ens.weight, ensemble_shape=(5, *ens.weight.ensemble_shape))
    wrong = eqx.tree_at(lambda m: m.weight, ens, five)
    with pytest.raises(ValueError, match="does not lead with an ensemble axis of 5"):
        ec.vmap_reset_all_states(wrong)


class _Lazy(eqx.Module):
    w: ec.ParamState
    h: ec.HiddenState | None = None
    decay: float = eqx.field(default=0.9, static=True)

    def __init__(self):
        self.w = ec.ParamState(jnp.ones(2))
        self.h = None

    def init_state(self):
        return eqx.tree_at(
            lambda m: m.h,
            self,
            ec.HiddenState(jnp.zeros(2)),
            is_leaf=lambda x: x is None,
        )


def test_a_module_with_a_default_none_field_is_a_node():
    model = {"a": _Lazy()}
    out = ec.init_all_states(model)
    assert [p for p, _ in iter_nodes(model)] == [("a",)]
    assert list(ec.states(out)) == [("a", "w"), ("a", "h")]
