"""Paths: how a model's nodes, states and leaves are named and found."""

import hashlib
from typing import Any, TypeAlias

import brainunit as u
import equinox as eqx
import jax
import jax.core
import jax.tree_util as jtu

from ._fields import ClassCache
from ._state import State


Path: TypeAlias = tuple[str | int, ...]
"""A path: attribute names and dict keys (`str`) and sequence indices (`int`), e.g.
`('layers', 0, 'weight')`. Wherever a path is taken, the dotted string
`'layers.0.weight'` is accepted too."""

# `jax.tree_util.PyTreeDef` comes from jaxlib's C++ extension, which has no type stubs:
# pyright sees a variable, not a class.
PyTreeDef: TypeAlias = jtu.PyTreeDef  # pyright: ignore[reportInvalidTypeForm]


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
_KINDS = ClassCache()


def _kind(x: Any) -> tuple[bool, bool, bool]:
    """`(is a node, is a state, is a Quantity)` for the type of `x`."""
    cls = type(x)
    kind = _KINDS.get(id(cls))
    if kind is None:
        state = issubclass(cls, State)
        node = issubclass(cls, eqx.Module) and not state
        kind = _KINDS.put(cls, (node, state, issubclass(cls, u.Quantity)))
    return kind


def is_state(x: Any) -> bool:
    return _kind(x)[1]


# The concrete JAX array types JAX defines, read from `jax.Array`'s subclasses (so
# that importing makes no array): hot loops test `type(x) in ARRAY_TYPES`, whose miss
# only takes a slower general path; `is_concrete_array` is the exact answer.
ARRAY_TYPES = frozenset(
    c for c in jax.Array.__subclasses__() if not issubclass(c, jax.core.Tracer)
)
_CONCRETE = ClassCache()


def is_concrete_array(x: Any) -> bool:
    """Whether `x` is a concrete JAX array (a `jax.Array`, not a tracer); cached per
    type, so that importing the library makes no array to learn the type."""
    cls = type(x)
    concrete = _CONCRETE.get(id(cls))
    if concrete is None:
        concrete = _CONCRETE.put(
            cls, issubclass(cls, jax.Array) and not issubclass(cls, jax.core.Tracer)
        )
    return concrete


def is_value_leaf(x: Any) -> bool:
    """Leaves of a state's value: a `brainunit.Quantity` is one leaf."""
    return _kind(x)[2]


def flatten_value(value: Any) -> tuple[list, PyTreeDef, tuple[Path, ...]]:
    """The leaves of a state's `value`, its structure, and the leaves' paths relative
    to the state: `jax.tree_util.tree_flatten_with_path(value, is_leaf=is_value_leaf)`.

    Written by hand for speed, as every snapshot, checkpoint and restore flattens each
    state: an array and a dict of arrays (the common values) are read directly, since
    `is_leaf` is a Python call per node; and the paths are computed once per structure,
    since many states share one and `tree_flatten_with_path` costs several times more
    than `tree_flatten`."""
    kind = type(value)
    if kind in ARRAY_TYPES:
        return [value], _LEAF_TREEDEF, ((),)
    if kind is dict and all(
        type(k) is str and type(v) in ARRAY_TYPES for k, v in value.items()
    ):
        keys = tuple(sorted(value))
        layout = _DICT_LAYOUTS.get(keys)
        if layout is None:
            treedef = jtu.tree_structure(dict.fromkeys(keys, 0))
            layout = _DICT_LAYOUTS[keys] = (treedef, tuple((k,) for k in keys))
        return [value[k] for k in keys], layout[0], layout[1]
    leaves, treedef = jtu.tree_flatten(value, is_leaf=is_value_leaf)
    # (Keyed by the text too: treedefs compare dict keys with `==`, so `{False: x}`
    # and `{0: x}` are equal structures whose paths differ.)
    cached = (treedef, str(treedef))
    subpaths = _SUBPATHS.get(cached)
    if subpaths is None:
        flat = jtu.tree_flatten_with_path(value, is_leaf=is_value_leaf)[0]
        subpaths = _SUBPATHS[cached] = tuple(keypath_to_path(kp) for kp, _ in flat)
    return leaves, treedef, subpaths


_LEAF_TREEDEF = jtu.tree_structure(0)
_DICT_LAYOUTS: dict[tuple, tuple[PyTreeDef, tuple[Path, ...]]] = {}
_SUBPATHS: dict[tuple[PyTreeDef, str], tuple[Path, ...]] = {}


def iter_value_leaves(path: Path, value: Any) -> list[tuple[Path, Any]]:
    """The leaf-level paths and leaves of one state's `value` below `path`."""
    leaves, _, subpaths = flatten_value(value)
    # `eqx.partition` leaves `Quantity(None, unit)` behind where it removed one.
    return [
        (path + sub, x)
        for sub, x in zip(subpaths, leaves, strict=True)
        if type(x) in ARRAY_TYPES
        or not (isinstance(x, u.Quantity) and x.mantissa is None)
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
