"""Paths: how a model's nodes, states and leaves are named and found."""

import dataclasses
import hashlib
from collections.abc import Callable, Container
from typing import Any, TypeAlias

import brainunit as u
import equinox as eqx
import jax.tree_util as jtu

from ._module import rebuild
from ._state import State


Path: TypeAlias = tuple[str | int, ...]
"""A path: attribute names and dict keys (`str`) and sequence indices (`int`), e.g.
`('layers', 0, 'weight')`. Wherever a path is taken, the dotted string
`'layers.0.weight'` is accepted too."""


def _entry(key: Any) -> Any:
    if isinstance(key, jtu.GetAttrKey):
        return key.name
    if isinstance(key, jtu.DictKey):
        return key.key
    if isinstance(key, jtu.SequenceKey):
        return key.idx
    if isinstance(key, jtu.FlattenedIndexKey):
        return key.key
    return str(key)


def keypath_to_path(keypath: tuple) -> Path:
    """Converts a `jax.tree_util` key path into a [`eqx_collective.Path`][]."""
    return tuple(_entry(k) for k in keypath)


def path_str(path: Path) -> str:
    """The dotted form of `path`: `('layers', 0, 'weight')` -> `'layers.0.weight'`."""
    return ".".join(str(p) for p in path)


def path_repr(path: Path) -> str:
    """A path as shown in messages: quoted dotted form, or `<root>`."""
    return repr(path_str(path)) if path else "<root>"


def as_path(path: Path | str | list) -> Path:
    """Normalises a tuple, list or dotted-string path to a tuple path.

    In a dotted string, all-digit parts become `int` indices: `'layers.0.weight'` ->
    `('layers', 0, 'weight')`. (Lookups into a model match dotted strings against the
    model's own paths, so a dict key that is a digit string is found too.)
    """
    if isinstance(path, str):
        if path == "":
            return ()
        return tuple(int(p) if p.isdigit() else p for p in path.split("."))
    if isinstance(path, (tuple, list)):
        for p in path:
            if not isinstance(p, (str, int)) or isinstance(p, bool):
                raise TypeError(
                    f"A path is a tuple of `str` and `int` entries (or a dotted string), "
                    f"but {path!r} contains {p!r} of type {type(p).__name__}."
                )
        return tuple(path)
    raise TypeError(
        f"A path must be a tuple path such as `('layers', 0, 'weight')` or a dotted "
        f"string such as `'layers.0.weight'`, but got {type(path).__name__} {path!r}."
    )


def path_hash(path: Path) -> int:
    """A stable 31-bit hash of `path` (the same in every process, unlike `hash`), used to
    derive per-node random keys with `jax.random.fold_in`."""
    text = "\x1f".join(f"{type(p).__name__}:{p}" for p in path)
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=4).digest()) >> 1


# These run on every node and leaf of every traversal, so the answer is cached per
# type: `isinstance` on an `eqx.Module` asks for its `__class__` through Equinox's slow
# `__getattribute__`, and even `issubclass` goes through `abc` for a `State`.
_KINDS: dict[type, tuple[bool, bool, bool]] = {}


def _kind(x: Any) -> tuple[bool, bool, bool]:
    """`(is a node, is a state, is a Quantity)` for the type of `x`."""
    cls = type(x)
    kind = _KINDS.get(cls)
    if kind is None:
        state = issubclass(cls, State)
        node = issubclass(cls, eqx.Module) and not state
        kind = _KINDS[cls] = (node, state, issubclass(cls, u.Quantity))
    return kind


def is_state(x: Any) -> bool:
    return _kind(x)[1]


def is_value_leaf(x: Any) -> bool:
    """Leaves of a state's value: a `brainunit.Quantity` is one leaf."""
    return _kind(x)[2]


def iter_nodes(tree: Any) -> list[tuple[Path, eqx.Module]]:
    """`(path, node)` for every module node of `tree`, root included, children before
    their parent, siblings in declaration order."""
    return _collect(tree, "node")


def iter_states(tree: Any) -> list[tuple[Path, State]]:
    """`(path, state)` for every [`eqx_collective.State`][] of `tree`, in pytree
    order."""
    return _collect(tree, "state")


def _collect(tree: Any, kind: str) -> list[tuple[Path, Any]]:
    found = []

    def record(path, x):
        found.append((path, x))
        return x

    walk(tree, **{kind: record})
    return found


def iter_value_leaves(path: Path, value: Any) -> list[tuple[Path, Any]]:
    """The leaf-level paths and leaves of one state's `value` below `path`."""
    leaves = jtu.tree_flatten_with_path(value, is_leaf=is_value_leaf)[0]
    # `eqx.partition` leaves `Quantity(None, unit)` behind where it removed one.
    return [
        (path + keypath_to_path(kp), x)
        for kp, x in leaves
        if not (isinstance(x, u.Quantity) and x.mantissa is None)
    ]


def iter_leaves(tree: Any) -> list[tuple[Path, Any]]:
    """`(path, leaf)` for every leaf of `tree`, named as everywhere in this library: the
    leaves inside a state continue its state-level path without a `value` entry, and a
    `brainunit.Quantity` is one leaf."""
    out = []
    for path, x in (
        (keypath_to_path(kp), x)
        for kp, x in jtu.tree_flatten_with_path(tree, is_leaf=is_state)[0]
    ):
        if isinstance(x, State):
            out += iter_value_leaves(path, x.value)
        else:
            out += iter_value_leaves(path, x)
    return out


def map_states(fn: Callable[[Path, State], Any], tree: Any) -> Any:
    """Replaces every state of `tree` by `fn(path, state)`; everything else is kept."""
    return walk(tree, state=fn)


def walk(
    tree: Any,
    *,
    state: Callable[[Path, State], Any] | None = None,
    node: Callable[[Path, eqx.Module], Any] | None = None,
    within: Container[Path] | None = None,
) -> Any:
    """The one traversal of this library: rebuilds `tree` bottom-up, passing every state
    through `state(path, s)` and every module node, after its children, through
    `node(path, x)`. A missing callback keeps what it would have been given.

    - Only the nodes above a replaced object are rebuilt (a callback that returns what
        it was given leaves its branch untouched), so the result shares the rest with
        `tree`, and a walk that replaces nothing allocates nothing but paths.
    - With `within`, only the paths in it are entered (it must hold the ancestors of
        every path of interest, `()` included); the rest is kept as is.
    - The order is `jax.tree_util`'s with states as leaves: fields in declaration
        order, sequences in order, dict keys sorted.

    It reads an `eqx.Module`'s fields and the entries of a list, tuple or dict directly:
    Equinox's flatten, called from `jax.tree_util` for every module, costs several
    times more. Any other pytree node is flattened one level by `jax.tree_util`.
    """
    return _walk(tree, (), state, node, within)


_STATE, _MODULE, _SEQUENCE, _DICT, _LEAF, _OTHER = range(6)
_HOW: dict[type, tuple[int, tuple[str, ...]]] = {type(None): (_LEAF, ())}
_get = object.__getattribute__
_ABSENT = object()


def _how(x: Any) -> tuple[int, tuple[str, ...]]:
    """How to traverse `x`, and for a module its dynamic fields; cached per type."""
    cls = type(x)
    node, state, quantity = _kind(x)
    if state:
        how = (_STATE, ())
    elif node and cls.__dictoffset__:
        fields = tuple(
            f.name for f in dataclasses.fields(cls) if not f.metadata.get("static")
        )
        how = (_MODULE, fields)
    elif cls is list or cls is tuple:
        how = (_SEQUENCE, ())
    elif cls is dict:
        how = (_DICT, ())
    elif quantity:  # a pytree node, but it never holds a module
        how = (_LEAF, ())
    else:  # a registered pytree node, or a leaf: flatten one level to tell
        treedef = jtu.tree_structure(x, is_leaf=lambda y: y is not x)
        leaf = treedef.num_nodes == 1 and treedef.num_leaves == 1
        how = (_LEAF if leaf else _OTHER, ())
    _HOW[cls] = how
    return how


def _walk(x, path, on_state, on_node, within):
    if within is not None and path not in within:
        return x
    how, fields = _HOW.get(type(x)) or _how(x)
    if how == _LEAF:
        return x
    if how == _STATE:
        return x if on_state is None else on_state(path, x)
    if how == _MODULE:
        old = _get(x, "__dict__")
        changed = None
        for name in fields:
            child = old.get(name, _ABSENT)
            if child is _ABSENT:
                continue
            out = _walk(child, path + (name,), on_state, on_node, within)
            if out is not child:
                if changed is None:
                    changed = {}
                changed[name] = out
        if changed is not None:
            x = rebuild(x, changed)
        return x if on_node is None else on_node(path, x)
    if how == _SEQUENCE:
        items = None
        for i, child in enumerate(x):
            out = _walk(child, path + (i,), on_state, on_node, within)
            if out is not child:
                if items is None:
                    items = list(x)
                items[i] = out
        return x if items is None else type(x)(items)
    if how == _DICT:
        try:
            keys = sorted(x)
        except TypeError:  # keys that do not sort: `jax.tree_util` decides (below)
            keys = None
        if keys is not None:
            entries = None
            for k in keys:
                child = x[k]
                out = _walk(child, path + (k,), on_state, on_node, within)
                if out is not child:
                    if entries is None:
                        entries = dict(x)
                    entries[k] = out
            return x if entries is None else entries
    children, treedef = jtu.tree_flatten_with_path(x, is_leaf=lambda y: y is not x)
    outs = [
        _walk(c, path + keypath_to_path(kp), on_state, on_node, within)
        for kp, c in children
    ]
    if all(o is c for o, (_, c) in zip(outs, children, strict=True)):
        return x
    return jtu.tree_unflatten(treedef, outs)
