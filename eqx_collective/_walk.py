"""The one traversal of this library, `walk`, and the iterators built on it.

`walk` sees a model as Equinox does, with two additions. In the *state view*
(`views=True`), which every snapshot, restore, checkpoint and split uses, **every array
leaf counts**:

- a raw array of a plain Equinox module (outside any `State`) is shown to the `state`
    callback as a *view*: a floating (or complex) array as a `ParamState`, Equinox's
    `eqx.is_inexact_array` convention for parameters, any other array as a
    `LongTermState`. What the callback returns for a view is written back as a raw
    array, so the model keeps its own structure;
- the values of an `eqx.nn.State` are shown as `LongTermState` views, each at the model
    path of its `eqx.nn.StateIndex` (so the same in every process): in a pair
    `(model, state)`, the value of `model.bn.state_index` is at `(1, 'bn', 'state_index')`;
- a state that holds no array (the placeholder that `eqx.partition` leaves in the other
    part) is not shown.
"""

from collections.abc import Callable, Container
from typing import Any

import brainunit as u
import equinox as eqx
import jax
import jax.core
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np

from ._fields import (
    ClassCache,
    dynamic_fields,
    field,
    fields as module_fields,
    rebuild,
    state_values,
    state_with,
)
from ._paths import (
    _kind,
    ARRAY_TYPES,
    is_value_leaf,
    keypath_to_path,
    Path,
    path_repr,
)
from ._state import LongTermState, ParamState, State


def walk(
    tree: Any,
    *,
    state: Callable[[Path, State], Any] | None = None,
    node: Callable[[Path, eqx.Module], Any] | None = None,
    within: Container[Path] | None = None,
    views: bool = False,
) -> Any:
    """Rebuilds `tree` bottom-up, passing every state through `state(path, s)` and
    every module node, after its children, through `node(path, x)`. A missing callback
    keeps what it would have been given.

    - Only the nodes above a replaced object are rebuilt (a callback that returns what
        it was given leaves its branch untouched), so the result shares the rest with
        `tree`, and a walk that replaces nothing allocates nothing but paths.
    - With `within`, only the paths in it are entered (it must hold the ancestors of
        every path of interest, `()` included); the rest is kept as is.
    - With `views=True`, the state view of the module docstring: raw arrays and
        `eqx.nn.State` values are shown as states, empty states are not.
    - The order is `jax.tree_util`'s with states as leaves: fields in declaration
        order, sequences in order, dict keys sorted.

    It reads an `eqx.Module`'s fields and the entries of a list, tuple or dict directly:
    Equinox's flatten, called from `jax.tree_util` for every module, costs several
    times more. Any other pytree node is flattened one level by `jax.tree_util`.
    """
    return _Walk(tree, state, node, within, views).visit(tree, (), ParamState)


def iter_nodes(tree: Any) -> list[tuple[Path, eqx.Module]]:
    """`(path, node)` for every module node of `tree`, root included, children before
    their parent, siblings in declaration order."""
    found = []
    walk(tree, node=lambda path, x: found.append((path, x)) or x)
    return found


def iter_states(tree: Any, *, views: bool = True) -> list[tuple[Path, State]]:
    """`(path, state)` for every state of `tree` in pytree order: by default the state
    view (raw arrays and `eqx.nn.State` values included, empty states left out); with
    `views=False`, the `State` objects the tree holds, all of them."""
    found = []
    walk(tree, state=lambda path, s: found.append((path, s)) or s, views=views)
    return found


def map_states(
    fn: Callable[[Path, State], Any], tree: Any, *, views: bool = True
) -> Any:
    """Replaces every state of `tree` by `fn(path, state)`; everything else is kept.
    `views` as for `iter_states`."""
    return walk(tree, state=fn, views=views)


def holds_arrays(value: Any) -> bool:
    """Whether a state's value holds at least one leaf (a placeholder does not)."""
    if type(value) in ARRAY_TYPES:
        return True
    if type(value) is dict:
        for v in value.values():
            if type(v) in ARRAY_TYPES or holds_arrays(v):
                return True
        return False
    if value is None:
        return False
    return any(
        not (isinstance(x, u.Quantity) and x.mantissa is None)
        for x in jtu.tree_leaves(value, is_leaf=is_value_leaf)
    )


_STATE, _MODULE, _INDEX, _SEQUENCE, _DICT, _LEAF, _OTHER, _ARRAY, _EQX_STATE = range(9)
_HOW = ClassCache()
_INEXACT: dict[Any, bool] = {}
_ABSENT = object()


def _how(x: Any) -> tuple[int, tuple[str, ...]]:
    """How to traverse `x`, and for a module its dynamic fields; cached per type."""
    cls = type(x)
    node, state, quantity = _kind(x)
    if x is None:
        how = (_LEAF, ())
    elif state:
        how = (_STATE, ())
    elif cls is eqx.nn.State:
        how = (_EQX_STATE, ())
    elif node:
        how = (_INDEX if cls is eqx.nn.StateIndex else _MODULE, dynamic_fields(x))
    elif cls is list or cls is tuple:
        how = (_SEQUENCE, ())
    elif cls is dict:
        how = (_DICT, ())
    elif quantity or issubclass(
        cls, (jax.Array, jax.core.Tracer, np.ndarray, np.generic)
    ):
        how = (_ARRAY, ())
    else:  # a registered pytree node, or a leaf: flatten one level to tell
        treedef = jtu.tree_structure(x, is_leaf=lambda y: y is not x)
        leaf = treedef.num_nodes == 1 and treedef.num_leaves == 1
        how = (_LEAF if leaf else _OTHER, ())
    return _HOW.put(cls, how)


def _is_inexact(x: Any) -> bool:
    dtype = x.mantissa.dtype if isinstance(x, u.Quantity) else x.dtype
    inexact = _INEXACT.get(dtype)
    if inexact is None:
        inexact = _INEXACT[dtype] = bool(jnp.issubdtype(dtype, jnp.inexact))
    return inexact


_PROTOTYPES = ClassCache()


def _view(cls: type[State], value: Any) -> State:
    """A `cls` holding `value`, made without `__init__` (this runs per raw array)."""
    proto = _PROTOTYPES.get(id(cls))
    if proto is None:
        proto = _PROTOTYPES.put(cls, cls(None))
    return rebuild(proto, {"value": value})


def _unview(out: Any, view: State, path: Path) -> Any:
    """What to write back where the view of a raw array was shown."""
    if not isinstance(out, State):
        return out
    if (
        type(out) is type(view)
        and out.tag is None
        and not out.shared
        and not out.ensemble_shape
        and out.ensemble_sharding is None
    ):
        return field(out, "value")
    raise TypeError(
        f"The array at path {path_repr(path)} is a raw array of a plain Equinox module, "
        f"so it can hold only a value, but it was given {out!r}. To give it a tag, a "
        "shared flag or an ensemble record, hold it in an `eqx_collective.State` in the "
        "model."
    )


class _Walk:
    """One traversal: the callbacks and options, and the paths of the
    `eqx.nn.StateIndex`es of the tree (found when an `eqx.nn.State` needs them)."""

    def __init__(self, root, on_state, on_node, within, views):
        self.root, self.within, self.views = root, within, views
        self.on_state, self.on_node = on_state, on_node
        self._index_paths: dict[Any, Path] | None = None

    def visit(self, x: Any, path: Path, raw: type[State]) -> Any:
        within = self.within
        if within is not None and path not in within:
            return x
        how, fields = _HOW.get(id(type(x))) or _how(x)
        if how == _LEAF:
            return x
        if how == _STATE:
            on_state = self.on_state
            if on_state is None:
                return x
            if self.views and not holds_arrays(field(x, "value")):
                return x
            return on_state(path, x)
        if how == _MODULE or how == _INDEX:
            return self._module(
                x, path, fields, LongTermState if how == _INDEX else raw
            )
        if how == _SEQUENCE:
            items = None
            for i, child in enumerate(x):
                out = self.visit(child, path + (i,), raw)
                if out is not child:
                    if items is None:
                        items = list(x)
                    items[i] = out
            return x if items is None else type(x)(items)
        if how == _ARRAY:
            if self.on_state is None or not self.views:
                return x
            return self._raw_array(x, path, raw)
        if how == _EQX_STATE:
            if self.on_state is None or not self.views:
                return x
            return self._eqx_state(x, path)
        if how == _DICT:
            try:
                keys = sorted(x)
            except TypeError:  # keys that do not sort: `jax.tree_util` decides (below)
                keys = None
            if keys is not None:
                return self._dict(x, path, keys, raw)
        return self._other(x, path, raw)

    def _module(self, x, path, fields, raw):
        old = module_fields(x)
        changed = None
        for name in fields:
            child = old.get(name, _ABSENT)
            if child is _ABSENT:
                continue
            out = self.visit(child, path + (name,), raw)
            if out is not child:
                if changed is None:
                    changed = {}
                changed[name] = out
        if changed is not None:
            x = rebuild(x, changed)
        return x if self.on_node is None else self.on_node(path, x)

    def _dict(self, x, path, keys, raw):
        entries = None
        for k in keys:
            child = x[k]
            out = self.visit(child, path + (k,), raw)
            if out is not child:
                if entries is None:
                    entries = dict(x)
                entries[k] = out
        return x if entries is None else entries

    def _other(self, x, path, raw):
        children, treedef = jtu.tree_flatten_with_path(x, is_leaf=lambda y: y is not x)
        outs = [self.visit(c, path + keypath_to_path(kp), raw) for kp, c in children]
        if all(o is c for o, (_, c) in zip(outs, children, strict=True)):
            return x
        return jtu.tree_unflatten(treedef, outs)

    def _raw_array(self, x, path, raw):
        if isinstance(x, u.Quantity) and not eqx.is_array(x.mantissa):
            return x  # a placeholder `Quantity(None)`, or a Python number with a unit
        view = _view(raw if _is_inexact(x) else LongTermState, x)
        out = self.on_state(path, view)
        return x if out is view else _unview(out, view, path)

    def _eqx_state(self, x, path):
        entries = state_values(x)
        changed, seen = None, {}
        for marker, value in entries.items():
            sub = path + self._relative(path, marker)
            assert self._index_paths is not None  # (made by `_relative`)
            if sub in seen:
                raise ValueError(
                    f"The `eqx.nn.State` at path {path_repr(path)} holds the values of "
                    f"two `eqx.nn.StateIndex`es that would share the path "
                    f"{path_repr(sub)}: those at {path_repr(seen[sub])} and "
                    f"{path_repr(self._index_paths[marker])}. Keep each model beside "
                    "its own state, as `(model, state)`."
                )
            seen[sub] = self._index_paths[marker]
            if not holds_arrays(value):
                continue
            view = _view(LongTermState, value)
            out = self.on_state(sub, view)
            if out is not view:
                changed = dict(entries) if changed is None else changed
                changed[marker] = _unview(out, view, sub)
        if changed is None:
            return x
        return state_with(changed)

    def _relative(self, path: Path, marker: Any) -> Path:
        """The path of the `StateIndex` with `marker`, below the branch that holds it
        beside the `eqx.nn.State` at `path`: `(model, state)` -> `('bn', ...)`."""
        if self._index_paths is None:
            self._index_paths = {}
            for p, n in iter_nodes(self.root):
                if type(n) is eqx.nn.StateIndex:
                    self._index_paths.setdefault(field(n, "marker"), p)
        where = self._index_paths.get(marker)
        if where is None:
            raise ValueError(
                f"The `eqx.nn.State` at path {path_repr(path)} holds a value whose "
                "`eqx.nn.StateIndex` is not in the same tree, so the value has no "
                "stable path. Pass the model together with its state, as `(model, "
                "state)` from `eqx.nn.make_with_state`."
            )
        common = 0
        while common < min(len(path), len(where)) and path[common] == where[common]:
            common += 1
        return where[common + 1 :]
