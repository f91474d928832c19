"""Hypothesis strategies: random stateful module trees and ensembles."""

import contextlib
import functools
import itertools
import types
from collections.abc import Iterator
from typing import Any, NamedTuple

import brainunit as u
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np


try:
    from hypothesis import strategies as st
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "`eqx_collective.testing` needs hypothesis: `pip install eqx_collective[test]`."
    ) from e

from .._collective import call_order
from .._state import HiddenState, LongTermState, ParamState, ShortTermState
from .._vmap import vmap_init_all_states


_LOG: list | None = None


@contextlib.contextmanager
def record_calls() -> Iterator[list[tuple[str, str]]]:
    """Within the block, every `init_state` / `reset_state` of a
    [`eqx_collective.testing.TreeNode`][] appends `(method, node.name)` to the yielded
    list, at the moment it runs (once per trace under `jit`)."""
    global _LOG
    outer, _LOG = _LOG, []
    try:
        yield _LOG
    finally:
        _LOG = outer


class TreeNode(eqx.Module):
    """A node of a random module tree (see [`eqx_collective.testing.module_trees`][]):
    child nodes in `children`, states in `states`, a unique static `name`, and raw
    arrays (as a plain Equinox module holds them) and `eqx.nn.StateIndex`es in `raw`.

    Subclasses made by the strategy define `init_state(*, key)` (fresh random values
    for its short-term states), `reset_state()` (zeros for them), either, both or
    neither, each undecorated or with a `call_order` level.
    """

    children: tuple
    states: dict
    name: str = eqx.field(static=True)
    raw: dict = eqx.field(default_factory=dict)


def _short_term(node, fill):
    new = {
        k: eqx.tree_at(lambda s: s.value, s, fill(i, s.value))
        if isinstance(s, ShortTermState)
        else s
        for i, (k, s) in enumerate(sorted(node.states.items()))
    }
    return eqx.tree_at(lambda n: n.states, node, new)


def _init_state(self, *, key):
    if _LOG is not None:
        _LOG.append(("init_state", self.name))

    def fill(i, value):
        leaves, treedef = jtu.tree_flatten(value)
        keys = jax.random.split(jax.random.fold_in(key, i), len(leaves))
        return treedef.unflatten(
            [
                jax.random.normal(k, x.shape, x.dtype)
                for k, x in zip(keys, leaves, strict=True)
            ]
        )

    return _short_term(self, fill)


def _reset_state(self):
    if _LOG is not None:
        _LOG.append(("reset_state", self.name))
    return _short_term(self, lambda i, value: jtu.tree_map(jnp.zeros_like, value))


@functools.cache
def node_class(init: Any, reset: Any) -> type[TreeNode]:
    """The `TreeNode` subclass with `init_state` and `reset_state` as given: `None`
    (absent), `'plain'` (undecorated) or an `int` `call_order` level."""
    namespace = {}
    for name, impl, how in (
        ("init_state", _init_state, init),
        ("reset_state", _reset_state, reset),
    ):
        if how is None:
            continue
        # A fresh function object per class, so `call_order` marks only this class's.
        method = types.FunctionType(impl.__code__, impl.__globals__, name)
        method.__kwdefaults__ = impl.__kwdefaults__
        namespace[name] = method if how == "plain" else call_order(how)(method)
    return type(f"TreeNode_{init}_{reset}", (TreeNode,), namespace)


_STATE_TYPES = (ParamState, LongTermState, ShortTermState, HiddenState)
_SHAPES = st.sampled_from([(), (1,), (3,), (2, 3)])


@st.composite
def _state(draw, units: bool, dicts: bool):
    cls = draw(st.sampled_from(_STATE_TYPES))
    rng = np.random.default_rng(draw(st.integers(0, 2**31 - 1)))

    def array(shape, kind):
        if kind == "int":
            return jnp.asarray(rng.integers(-5, 5, shape), dtype=jnp.int32)
        return jnp.asarray(rng.standard_normal(shape), dtype=jnp.float32)

    kinds = ["float"] + (["mV"] if units else []) + (["dict"] if dicts else [])
    if not issubclass(cls, ShortTermState):
        kinds.append("int")
    kind = draw(st.sampled_from(kinds))
    if kind == "dict":
        names = draw(
            st.lists(st.sampled_from("abc"), min_size=1, max_size=3, unique=True)
        )
        value = {n: array(draw(_SHAPES), "float") for n in names}
    elif kind == "mV":
        value = u.Quantity(array(draw(_SHAPES), "float"), unit=u.mV)
    else:
        value = array(draw(_SHAPES), kind)
    return cls(value)


@st.composite
def module_trees(
    draw,
    max_depth: int = 3,
    max_width: int = 3,
    max_states: int = 2,
    levels: tuple[int, ...] = (0, 1, 2),
    units: bool = True,
    dicts: bool = True,
    raw_arrays: bool = False,
) -> TreeNode:
    """A random tree of [`eqx_collective.testing.TreeNode`][]s holding states.

    **Arguments:**

    - `max_depth`, `max_width`: bounds on the tree's shape (the root is depth 0).
    - `max_states`: at most this many states per node, of random types
        (`ParamState`, `LongTermState`, `ShortTermState`, `HiddenState`), shapes and
        value kinds (`float32` array, `int32` array, `dict` of arrays, `Quantity` in mV).
    - `levels`: the `call_order` levels to draw from; each node's `init_state` and
        `reset_state` are independently absent, undecorated, or at one of these levels.
    - `units`, `dicts`: whether to draw unit-carrying and dict-valued states.
    - `raw_arrays`: whether nodes also hold raw arrays outside states (`float32`,
        `int32`, `bool`), as plain Equinox modules do.
    """
    names = itertools.count()
    how = st.one_of(st.none(), st.just("plain"), st.sampled_from(levels))

    def node(depth):
        width = draw(st.integers(0, max_width if depth < max_depth else 0))
        children = tuple(node(depth + 1) for _ in range(width))
        states = {
            f"s{i}": draw(_state(units, dicts))
            for i in range(draw(st.integers(0, max_states)))
        }
        cls = node_class(draw(how), draw(how))
        raw = draw(_raw_arrays()) if raw_arrays else {}
        return cls(children, states, name=f"n{next(names)}", raw=raw)

    return node(0)


@st.composite
def _raw_arrays(draw) -> dict:
    rng = np.random.default_rng(draw(st.integers(0, 2**31 - 1)))
    out = {}
    for i, kind in enumerate(
        draw(st.lists(st.sampled_from(["f", "i", "b"]), max_size=2))
    ):
        shape = draw(_SHAPES)
        if kind == "f":
            out[f"r{i}"] = jnp.asarray(rng.standard_normal(shape), jnp.float32)
        elif kind == "i":
            out[f"r{i}"] = jnp.asarray(rng.integers(-5, 5, shape), jnp.int32)
        else:
            out[f"r{i}"] = jnp.asarray(rng.integers(0, 2, shape) > 0)
    return out


@st.composite
def stateful_pairs(draw, trees=None) -> tuple[TreeNode, eqx.nn.State]:
    """A `(model, state)` pair as `eqx.nn.make_with_state` makes them: a random tree
    from `trees` (by default [`eqx_collective.testing.module_trees`][] with raw
    arrays) in which some nodes hold an `eqx.nn.StateIndex` (in `raw['index']`), and
    the `eqx.nn.State` holding their values."""
    trees = module_trees(raw_arrays=True) if trees is None else trees
    model = draw(trees)
    rng = np.random.default_rng(draw(st.integers(0, 2**31 - 1)))

    def add_index(node):
        children = tuple(add_index(c) for c in node.children)
        raw = dict(node.raw)
        if draw(st.booleans()):
            init = (
                jnp.asarray(rng.standard_normal(3), jnp.float32),
                jnp.zeros((), jnp.int32),
            )
            raw["index"] = eqx.nn.StateIndex(init)
        return type(node)(children, node.states, name=node.name, raw=raw)

    model = add_index(model)
    state = eqx.nn.State(model)
    return eqx.nn.delete_init_state(model), state


@st.composite
def ensembles(draw, trees=None, max_size: int = 4, max_levels: int = 1):
    """A stacked ensemble: a tree from `trees` (by default
    [`eqx_collective.testing.module_trees`][]) initialised with
    [`eqx_collective.vmap_init_all_states`][] for 1 to `max_size` members, on 1 to
    `max_levels` nested levels (an ensemble of ensembles for 2). Returns
    `(ensemble, model, key)`: the single model it was made from and the key used; for
    nested levels, member `(i, j)` is the model initialised with
    `jax.random.split(jax.random.split(key, outer)[i], inner)[j]`. Models without any
    array (which have no ensemble axis) are not drawn."""
    trees = module_trees() if trees is None else trees
    model = draw(trees.filter(lambda m: jtu.tree_leaves(eqx.filter(m, eqx.is_array))))
    sizes = draw(st.lists(st.integers(1, max_size), min_size=1, max_size=max_levels))
    key = jax.random.key(draw(st.integers(0, 2**31 - 1)))
    ensemble = model
    for size in reversed(sizes):  # innermost first: each call adds an outer level
        ensemble = vmap_init_all_states(ensemble, axis_size=size, key=key)
    return ensemble, model, key


class Snapshot(NamedTuple):
    """A snapshot drawn by [`eqx_collective.testing.snapshots`][].

    - `values`: `{path: value}` to pass to [`eqx_collective.assign_state_values`][];
        each state appears at state level or leaf by leaf, at random.
    - `missing`: the state-level paths of the states left out (partial snapshots).
    - `wrong`: the path of the one value made wrong, or `None`.
    """

    values: dict
    missing: list
    wrong: tuple | None


def _wrong_like(kind: str, x: Any) -> Any:
    """A value that `assign_state_values` must refuse in place of the leaf `x`."""
    if kind == "shape":
        return jnp.zeros((*jnp.shape(x), 2), getattr(x, "dtype", jnp.float32))
    if kind == "unit":
        if isinstance(x, u.Quantity):
            return u.Quantity(x.mantissa, unit=u.second)  # another dimension
        return u.Quantity(x, unit=u.mV)  # a unit where there is none
    if kind == "dtype":  # no safe cast to the leaf's dtype
        mantissa = x.mantissa if isinstance(x, u.Quantity) else x
        if jnp.issubdtype(mantissa.dtype, jnp.floating):
            wrong = mantissa.astype(jnp.complex64)
        else:
            wrong = mantissa.astype(jnp.float32)
        return u.Quantity(wrong, unit=x.unit) if isinstance(x, u.Quantity) else wrong
    return {"not": x, "the": x, "structure": x}  # kind == "structure"


@st.composite
def snapshots(draw, model: Any, kind: str = "complete") -> Snapshot:
    """Snapshots of `model`'s state values, for testing restores.

    **Arguments:**

    - `model`: the model whose states are snapshotted (it must hold at least one state
        for `kind="wrong"`).
    - `kind`: `"complete"` (every state, so a restore reports nothing missing),
        `"partial"` (a random subset of the states), or `"wrong"` (complete, but one
        value has a wrong shape, dtype, unit or structure, so a restore must refuse it
        and name its path).

    **Returns:** a [`eqx_collective.testing.Snapshot`][].
    """
    from .._paths import iter_value_leaves
    from .._views import states

    if kind not in ("complete", "partial", "wrong"):
        raise ValueError(
            f"`snapshots` takes kind='complete', 'partial' or 'wrong', not {kind!r}."
        )
    values, missing = {}, []
    for path, state in states(model).items():
        if kind == "partial" and draw(st.booleans()):
            missing.append(path)
        elif draw(st.booleans()):
            values[path] = state.value
        else:
            values.update(iter_value_leaves(path, state.value))
    wrong = None
    if kind == "wrong":
        wrong = draw(st.sampled_from(sorted(values, key=str)))
        how = draw(st.sampled_from(["shape", "dtype", "unit", "structure"]))
        leaves = iter_value_leaves(wrong, values[wrong])
        if how != "structure" and len(leaves) == 1:
            values[wrong] = _wrong_like(how, leaves[0][1])
        else:
            values[wrong] = _wrong_like("structure", values[wrong])
    return Snapshot(values, missing, wrong)
