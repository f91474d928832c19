"""The arguments of a `filter_jit` call, each split into its arrays and its structure
(`Part`), and the check that lets a tree met before skip being split again.

An argument's *key* is what `eqx.filter_jit` hashes: its `jax.tree_util` structure and
its non-array leaves, the arrays (`eqx.is_array` leaves) marked by position. A `Part`
holds a tree, its arrays and its key, and what the tree's dicts and lists held when it
was split. Equinox modules and tuples cannot change, so the same tree object whose
dicts and lists still hold the same objects (`Part.holds`, a few C-level passes) has
the same arrays and key: no need to flatten it again. A tree holding another mutable
pytree node (an `OrderedDict`, an `eqx.nn.State`, a registered class) is split anew on
every call, as `eqx.filter_jit` does.
"""

import itertools
import operator
import weakref
from typing import Any

import equinox as eqx
import jax
import jax.core
import jax.tree_util as jtu
import numpy as np

from ._fields import ClassCache


ARRAYS = (jax.Array, np.ndarray, np.generic)  # what `eqx.is_array` traces
_chain = itertools.chain.from_iterable

_DICT, _LIST, _IMMUTABLE, _OTHER = range(4)
_KINDS = ClassCache()


def _kind(x: Any) -> int:
    """How a node or leaf counts for `Part.holds` (cached per type: `jax.tree_util`'s
    registry is per type)."""
    cls = type(x)
    kind = _KINDS.get(id(cls))
    if kind is None:
        if cls is dict or cls is list:
            kind = _DICT if cls is dict else _LIST
        elif isinstance(x, ARRAYS + (eqx.Module, tuple)) or x is None:
            kind = _IMMUTABLE  # (a namedtuple is a tuple)
        else:  # a leaf (unregistered type) is immutable to the tree structure
            node = jtu.tree_structure(x, is_leaf=lambda y: y is not x)
            kind = _IMMUTABLE if jtu.treedef_is_leaf(node) else _OTHER
        _KINDS.put(cls, kind)
    return kind


def is_verifiable_node(x: Any) -> bool:
    """Whether `x`, a pytree node, is one `Part.holds` can vouch for."""
    return _kind(x) != _OTHER


class Key:
    """An argument's structure: its treedef and its static leaves (`None` where an
    array is: `None` is never a leaf). Equal keys if and only if `eqx.filter_jit`
    would see equal static parts. The hash is computed once."""

    __slots__ = ("treedef", "statics", "hash", "__weakref__")

    def __init__(self, treedef: Any, statics: tuple):
        self.treedef, self.statics = treedef, statics
        try:
            self.hash = hash((treedef, statics))
        except TypeError as e:
            raise _unhashable(statics, e) from e

    def __hash__(self) -> int:
        return self.hash

    def __eq__(self, other: object) -> bool:
        return self is other or (
            type(other) is Key
            and self.hash == other.hash
            and self.treedef == other.treedef
            and self.statics == other.statics
        )

    def rebuild(self, arrays: list) -> Any:
        """A tree of this structure holding `arrays`."""
        it = iter(arrays)
        return self.treedef.unflatten(
            [next(it) if s is None else s for s in self.statics]
        )


def _unhashable(statics: tuple, error: TypeError) -> TypeError:
    for leaf in statics:
        try:
            hash(leaf)
        except TypeError:
            return TypeError(
                f"`filter_jit` holds every non-array leaf of the arguments static, and "
                f"compares it between calls by hash and `==`, like `eqx.filter_jit`; "
                f"but a leaf of type `{type(leaf).__name__}` ({leaf!r:.80}) is not "
                f"hashable. Pass it as an array (`jnp.asarray`), make its type "
                f"hashable, or close over it."
            )
    return error


class _Strong:
    """A strong reference, called like a `weakref.ref`."""

    __slots__ = ("x",)

    def __init__(self, x: Any):
        self.x = x

    def __call__(self) -> Any:
        return self.x


class Part:
    """A tree, its arrays and key, and (if `checkable`) what its dicts and lists held."""

    __slots__ = (
        *("ref", "arrays", "key", "own_key", "verifiable", "checkable", "is_tree"),
        "mutable",
        *("_dicts", "_lists", "_held"),
    )

    def __init__(
        self,
        root: Any,
        arrays: list,
        key: Key,
        dicts: list,
        lists: list,
        verifiable: bool,
        concrete: bool | None = None,
        held: tuple | None = None,
        own_key: Key | None = None,
    ):
        # A module is held weakly: a tree the caller drops is freed at once, while its
        # memory is warm, not when the next call lets go of it (see `_jit._Call.run`).
        self.ref = weakref.ref(root) if isinstance(root, eqx.Module) else _Strong(root)
        self.arrays, self.key = arrays, key
        # `key` may be an equal key met first (`split`); `own_key` holds this tree's
        # own static leaves (`0` and `False` are equal keys, but not the same leaf).
        self.own_key = key if own_key is None else own_key
        self._dicts, self._lists = dicts, lists
        self.mutable = bool(dicts or lists)  # (else `holds` is always true)
        self.verifiable = verifiable  # only dicts, lists and immutable nodes inside
        if concrete is None:
            concrete = not any(isinstance(a, jax.core.Tracer) for a in arrays)
        self.checkable = verifiable and concrete  # (tracers are never kept)
        self.is_tree = key.treedef.num_nodes > 1  # (not a bare leaf)
        if self.checkable:
            self._held = self._contents() if held is None else held

    @property
    def root(self) -> Any:
        """The tree (`None` if it was a module, since freed)."""
        return self.ref()

    def _contents(self) -> tuple:
        """`(lengths, keys, values, items)`: the lengths of the dicts then the lists,
        the dicts' keys and values, the lists' items (as `Builder` gives them)."""
        dicts, lists = self._dicts, self._lists
        return (
            [*map(len, dicts), *map(len, lists)],
            list(_chain(dicts)),
            list(_chain(map(dict.values, dicts))),
            list(_chain(lists)),
        )

    def holds(self) -> bool:
        """Whether the tree's dicts and lists still hold the same keys and objects."""
        lens, keys, values, items = self._held
        dicts, lists = self._dicts, self._lists
        return (
            [*map(len, dicts), *map(len, lists)] == lens
            and list(_chain(dicts)) == keys
            and all(map(operator.is_, _chain(map(dict.values, dicts)), values))
            and all(map(operator.is_, _chain(lists), items))
        )


def split(x: Any, known: "weakref.WeakValueDictionary[Key, Key]") -> Part:
    """`x` split into its arrays and its key, with its dicts and lists noted. A key
    equal to one in `known` (one function's keys) is that very object, so that keys
    met before compare by identity."""
    dicts, lists, other = [], [], []

    def note(y: Any) -> bool:
        kind = _kind(y)
        if kind == _DICT:
            dicts.append(y)
        elif kind == _LIST:
            lists.append(y)
        elif kind == _OTHER:
            other.append(y)
        return False

    leaves, treedef = jtu.tree_flatten(x, is_leaf=note)
    arrays, statics = [], []
    for leaf in leaves:
        if isinstance(leaf, ARRAYS):
            arrays.append(leaf)
            statics.append(None)
        else:
            statics.append(leaf)
    own = Key(treedef, tuple(statics))
    key = known.setdefault(own, own)
    return Part(x, arrays, key, dicts, lists, not other, own_key=own)
