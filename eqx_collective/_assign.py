"""Restoring values: `assign_state_values` and its `AssignResult`."""

import functools
from collections.abc import Mapping
from typing import Any, NamedTuple

import brainunit as u
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
from jaxtyping import PyTree

from ._module import rebuild, replace_fields
from ._paths import (
    as_path,
    is_value_leaf,
    iter_states,
    keypath_to_path,
    map_states,
    Path,
    path_repr,
    path_str,
    walk,
)
from ._state import State


_MAX_LISTED = 20


class AssignResult(NamedTuple):
    """What [`eqx_collective.assign_state_values`][] (and
    [`eqx_collective.load_states`][]) return. A named tuple, so
    `model, unexpected, missing = assign_state_values(...)` works.

    **Fields:**

    - `model`: the new model, with the given values assigned. The input model is left
        untouched.
    - `unexpected`: the keys that match nothing in the model, as they were given (tuple
        or dotted string), in the order given.
    - `missing`: what the keys left unassigned, as tuple paths in the model's order. A
        state that no key touched is reported by its *state-level* path
        (`('layers', 0, 'weight')`); a structured state that was only partly covered
        reports its uncovered *leaf-level* paths (`('layers', 0, 'weight', 'bias')`).
        (For an array- or `Quantity`-valued state the two coincide.)

    !!! Example

        ```python
        result = ec.assign_state_values(model, {"layers.0.weight.bias": jnp.zeros(8)})
        result.missing  # [('layers', 0, 'weight', 'weight'), ('layers', 2, 'weight')]
        model = result.model
        ```
    """

    model: PyTree
    unexpected: list[Path | str]
    missing: list[Path]


class _Mismatch(Exception):
    """Raised internally by the per-leaf checks; collected into one `ValueError`."""


class _Ambiguous:
    """Marks a dotted string that names more than one place of the model."""

    def __init__(self, *paths: Path):
        self.paths = list(paths)


_get = object.__getattribute__  # bypasses the slow `eqx.Module.__getattribute__`


def _state_value(state: State) -> Any:
    try:
        return _get(state, "__dict__")["value"]
    except (AttributeError, KeyError):
        return state.value


class _StateSlot:
    """One state of the model; its value's leaves and their paths, computed when
    needed."""

    __slots__ = ("path", "state", "_leaves", "_treedef", "_subpaths")

    def __init__(self, path: Path, state: State):
        self.path = path
        self.state = state
        self._leaves = None
        self._treedef = None
        self._subpaths = None

    def flat(self) -> tuple[list, jtu.PyTreeDef]:
        if self._leaves is None:
            self._leaves, self._treedef = jtu.tree_flatten(
                _state_value(self.state), is_leaf=is_value_leaf
            )
        return self._leaves, self._treedef

    @property
    def subpaths(self) -> tuple[Path, ...]:
        """The leaves' paths relative to the state."""
        if self._subpaths is None:
            treedef = self.flat()[1]
            try:
                self._subpaths = _subpaths_of(treedef)[0]
            except Exception:  # a custom node that cannot be rebuilt from placeholders
                flat = jtu.tree_flatten_with_path(
                    _state_value(self.state), is_leaf=is_value_leaf
                )[0]
                self._subpaths = tuple(keypath_to_path(kp) for kp, _ in flat)
        return self._subpaths

    def below(self) -> tuple[tuple[Path, int | None], ...]:
        """`(path, leaf index or None)` for every path strictly below the state."""
        try:
            return _subpaths_of(self.flat()[1])[1]
        except Exception:
            return _places_below(self.subpaths)

    def below_dotted(self) -> tuple[tuple[Path, int | None, str], ...]:
        """`below()` with the dotted form of each path."""
        try:
            return _subpaths_of(self.flat()[1])[2]
        except Exception:
            return tuple((p, j, path_str(p)) for p, j in _places_below(self.subpaths))

    def leaf_indices(self, sub: Path) -> list[int]:
        """The indices of the leaves at or below `sub` (relative to the state)."""
        if not sub:
            return list(range(len(self.flat()[0])))
        n = len(sub)
        return [i for i, p in enumerate(self.subpaths) if p[:n] == sub]


class _Index:
    """Finds the place a key names: `(state index, path inside the value, leaf index
    if that path is a leaf's)`.

    State-level paths are indexed eagerly; leaf-level and intermediate paths, and the
    dotted strings of all of them, only when a key needs them. Every index is built in
    one pass over the states, so the cost stays linear in the model's size.
    """

    def __init__(self, found: list[tuple[Path, State]]):
        self.found = found
        self._slots: list[_StateSlot | None] = [None] * len(found)
        # state-level paths, and the paths below them (built when needed)
        self.exact: dict[Path, tuple[int, Path, int | None]] = {
            path: (i, (), None) for i, (path, _) in enumerate(found)
        }
        self.deep: dict[Path, tuple[int, Path, int | None]] | None = None
        self._dotted: dict[str, Any] | None = None

    def slot(self, i: int) -> _StateSlot:
        """The `i`-th state's `_StateSlot`, made when first needed."""
        slot = self._slots[i]
        if slot is None:
            slot = self._slots[i] = _StateSlot(*self.found[i])
        return slot

    def _build_deep(self):
        deep = self.deep = {}
        for i in range(len(self.found)):
            slot = self.slot(i)
            base = slot.path
            for sub, j in slot.below():
                deep[base + sub] = (i, sub, j)

    def _build_dotted(self):
        dotted: dict[str, Any] = {}

        def add(text, where, path):
            other = dotted.get(text)
            if other is None:
                dotted[text] = (where, path)
            elif isinstance(other, _Ambiguous):
                other.paths.append(path)
            elif other[0] != where:
                dotted[text] = _Ambiguous(other[1], path)

        for i in range(len(self.found)):
            slot = self.slot(i)
            base = path_str(slot.path)
            add(base, (i, (), None), slot.path)
            prefix = base + "." if slot.path else ""
            for sub, j, text in slot.below_dotted():
                add(prefix + text, (i, sub, j), slot.path + sub)
        self._dotted = dotted

    def lookup(self, key: Any) -> tuple[int, Path, int | None] | None:
        if type(key) is tuple:
            where = self.exact.get(key)
            if where is not None:
                return where
            if self.deep is None:
                self._build_deep()
            where = self.deep.get(key)
            if where is not None:
                return where
            as_path(key)  # a `TypeError` for entries that are not `str` or `int`
            text = path_str(key)
        elif isinstance(key, str):
            text = key
        elif isinstance(key, (tuple, list)):
            return self.lookup(tuple(key))
        else:
            as_path(key)  # a `TypeError`: not a path at all
            raise AssertionError("unreachable")
        if self._dotted is None:
            self._build_dotted()
        found = self._dotted.get(text)
        if found is None:
            return None
        if isinstance(found, _Ambiguous):
            raise ValueError(
                f"The key {key!r} given to `assign_state_values` is ambiguous: as a "
                f"dotted string it names each of {found.paths}. Pass the exact tuple "
                f"path instead."
            )
        return found[0]


def _places_below(subpaths: tuple[Path, ...]) -> tuple[tuple[Path, int | None], ...]:
    """The paths strictly below a state (leaves and intermediate nodes) with the leaf
    index of each leaf (`None` for an intermediate node)."""
    places: dict[Path, int | None] = {}
    for j, sub in enumerate(subpaths):
        for k in range(1, len(sub)):
            places.setdefault(sub[:k], None)
        if sub:  # not an array- or Quantity-valued state's own path
            places[sub] = j
    return tuple(places.items())


@functools.lru_cache(maxsize=512)
def _subpaths_of(treedef: jtu.PyTreeDef) -> tuple[tuple, tuple, tuple]:
    """The leaf paths of a value of structure `treedef` (flattened with `Quantity`s as
    leaves), `_places_below` of them, and the same with dotted strings. Cached: many
    states share a structure."""
    skeleton = jtu.tree_unflatten(treedef, [0] * treedef.num_leaves)
    flat = jtu.tree_flatten_with_path(skeleton)[0]
    if len(flat) != treedef.num_leaves:
        raise ValueError("the structure does not round-trip through placeholders")
    subpaths = tuple(keypath_to_path(kp) for kp, _ in flat)
    below = _places_below(subpaths)
    return subpaths, below, tuple((p, j, path_str(p)) for p, j in below)


@functools.cache
def _safe_cast(given: np.dtype, expected: np.dtype) -> bool:
    return bool(jnp.can_cast(given, expected, casting="safe"))


def _describe(x: Any) -> str:
    """A short description of a leaf for error messages: `float32[4,3] (unit mV)`."""
    if isinstance(x, u.Quantity):
        return f"{_describe(x.mantissa)} with unit {x.unit}"
    if type(x) in _SCALAR_KINDS:
        return f"Python {type(x).__name__} {x!r}"
    shape = getattr(x, "shape", None)
    dtype = getattr(x, "dtype", None)
    if shape is not None and dtype is not None:
        return f"{np.dtype(dtype).name}[{','.join(map(str, shape))}]"
    return f"{type(x).__name__} {x!r}"[:80]


_SCALAR_KINDS = {
    bool: (jnp.bool_, jnp.integer, jnp.floating, jnp.complexfloating),
    int: (jnp.integer, jnp.floating, jnp.complexfloating),
    float: (jnp.floating, jnp.complexfloating),
    complex: (jnp.complexfloating,),
}


def _python_scalar(dtype: np.dtype, given: bool | int | float | complex):
    """Converts a Python scalar to a 0-d array of `dtype` if that is safe: `dtype` is
    of the same or a wider kind, and holds the value (exactly for an `int`; without
    overflow for a `float` or `complex`)."""
    if not any(jnp.issubdtype(dtype, k) for k in _SCALAR_KINDS[type(given)]):
        raise _Mismatch
    with np.errstate(all="ignore"):
        try:
            arr = np.asarray(given, dtype=dtype)
        except OverflowError:
            raise _Mismatch from None
    back = arr.item()
    if type(given) is int and back != given:
        raise _Mismatch
    if type(given) in (float, complex) and np.isfinite(given) and not np.isfinite(back):
        raise _Mismatch
    return jnp.asarray(arr)


def _convert_array(expected: Any, given: Any) -> Any:
    """Checks `given` against the array `expected` and returns it as a JAX array of
    the expected dtype. Raises `_Mismatch(expected description)` otherwise."""
    e_shape = expected.shape
    e_dtype = expected.dtype
    if type(given) in _SCALAR_KINDS:
        if e_shape != ():
            raise _Mismatch(_describe(expected))
        try:
            return _python_scalar(np.dtype(e_dtype), given)
        except _Mismatch:
            raise _Mismatch(_describe(expected)) from None
    g_shape = getattr(given, "shape", None)
    g_dtype = getattr(given, "dtype", None)
    if g_shape is None or g_dtype is None:
        raise _Mismatch(_describe(expected))
    if tuple(g_shape) != tuple(e_shape):
        raise _Mismatch(_describe(expected))
    if g_dtype == e_dtype:
        if isinstance(given, jax.Array):
            return given
        return jnp.asarray(given)
    if not _safe_cast(np.dtype(g_dtype), np.dtype(e_dtype)):
        raise _Mismatch(f"{_describe(expected)} (or a dtype that casts to it safely)")
    return jnp.asarray(given, dtype=e_dtype)


def _is_plain_unit(unit: u.Unit) -> bool:
    return unit.is_unitless and unit.scale == 0 and unit.factor == 1


def _convert_leaf(expected: Any, given: Any) -> Any:
    """Checks one leaf and returns the value to store in place of `expected`."""
    if _same_arrays(expected, given):
        return given  # the common case, without the general checks below
    if isinstance(expected, u.Quantity):
        unit = expected.unit
        if isinstance(given, u.Quantity):
            g_unit = given.unit
            if g_unit is unit or g_unit == unit:
                mantissa = given.mantissa
            elif not g_unit.has_same_dim(unit):
                raise _Mismatch(
                    f"{_describe(expected)} (or a unit of the same dimension, "
                    f"{unit.dim})"
                )
            else:
                m = given.mantissa
                if jnp.issubdtype(expected.mantissa.dtype, jnp.integer):
                    raise _Mismatch(
                        f"{_describe(expected)} (an integer state is only assigned "
                        f"in its own unit, {unit})"
                    )
                m_dtype = getattr(m, "dtype", None)
                if m_dtype is not None and not _safe_cast(
                    np.dtype(m_dtype), np.dtype(expected.mantissa.dtype)
                ):
                    raise _Mismatch(_describe(expected))
                mantissa = u.Quantity(
                    jnp.asarray(m, dtype=expected.mantissa.dtype), unit=g_unit
                ).to_decimal(unit)
        elif _is_plain_unit(unit):
            mantissa = given
        else:
            raise _Mismatch(
                f"{_describe(expected)} (a `brainunit.Quantity`; multiply the value by "
                f"`{unit}`)"
            )
        try:
            new = _convert_array(expected.mantissa, mantissa)
        except _Mismatch as e:
            raise _Mismatch(f"{e.args[0]} with unit {unit}") from None
        return u.Quantity(new, unit=unit)
    if isinstance(given, u.Quantity):
        if not _is_plain_unit(given.unit):
            if given.unit.is_unitless:
                given = given.to_decimal()
            else:
                raise _Mismatch(
                    f"{_describe(expected)} without a unit (strip the unit with "
                    f"`.to_decimal(unit)` or `.mantissa` if that is what you mean)"
                )
        else:
            given = given.mantissa
    if not hasattr(expected, "shape") or not hasattr(expected, "dtype"):
        # A non-array leaf (a Python scalar or object) is replaced by a value of the
        # same type; there is no shape or dtype to check.
        if type(given) is not type(expected):
            raise _Mismatch(f"a {type(expected).__name__}")
        return given
    return _convert_array(expected, given)


def _same_arrays(old: Any, new: Any) -> bool:
    """Both JAX arrays, of the same shape and dtype: nothing to check or cast."""
    return type(new) is _ArrayImpl and type(old) is _ArrayImpl and new.aval == old.aval


def _fast_state_level(state: State, value: Any) -> State | None:
    """The new state for the common case of a whole new value with the very structure
    of the old one (units included: they are part of a `Quantity`'s tree structure).
    Returns `None` for anything else, left to the per-leaf checks (which also report
    errors).

    This runs once per state of a restore, so it avoids function calls where it can:
    the first two cases are an array and a dict of arrays whose shapes and dtypes
    match, with nothing to check or cast."""
    old = _get(state, "__dict__").get("value")
    kind = type(value)
    if kind is _ArrayImpl:
        if type(old) is not _ArrayImpl or old.aval != value.aval:
            return _fast_general(state, old, value)
    elif kind is dict and type(old) is dict and len(old) == len(value):
        for k, leaf in old.items():
            new = value.get(k, _UNSET)
            if (
                type(new) is not _ArrayImpl
                or type(leaf) is not _ArrayImpl
                or leaf.aval != new.aval
            ):
                return _fast_general(state, old, value)
        value = dict(value)  # the caller's dict stays theirs
    else:
        return _fast_general(state, old, value)
    return rebuild(state, {"value": value})


def _fast_general(state: State, old: Any, value: Any) -> State | None:
    """`_fast_state_level` for any value whose structure is the old one's."""
    e_leaves, e_treedef = jtu.tree_flatten(old)
    g_leaves, g_treedef = jtu.tree_flatten(value)
    if g_treedef != e_treedef:
        return None
    try:
        new = [_convert_leaf(e, g) for e, g in zip(e_leaves, g_leaves, strict=True)]
    except _Mismatch:
        return None
    return replace_fields(state, value=jtu.tree_unflatten(e_treedef, new))


_UNSET = object()
_ArrayImpl = type(jnp.zeros(()))
# Types that are one leaf of a value (what a leaf-level key usually carries).
_LEAF_TYPES = frozenset(
    {_ArrayImpl, np.ndarray, u.Quantity, bool, int, float, complex}
    | {type(np.dtype(c).type(0)) for c in "?bhilqBHILQefdgFDG"}
)


def assign_state_values(
    target: PyTree, *state_dicts: Mapping[Path | str, Any], strict: bool = False
) -> AssignResult:
    """Returns `target` with state values taken from `state_dicts` (for example a
    snapshot made by [`eqx_collective.state_values`][] or
    [`eqx_collective.leaf_values`][]), and reports the keys that did not match.

    The counterpart of brainstate's `assign_state_values`, but pure: `target` is not
    modified; the new model is returned. It also works inside `jax.jit` /
    `eqx.filter_jit` (all checks use static shapes and dtypes).

    **Keys** are paths, as tuples (`('layers', 0, 'weight')`) or dotted strings
    (`'layers.0.weight'`, matched against the model's own paths), at any level:

    - *state-level*: the path of a [`eqx_collective.State`][]; the key's value replaces
        the whole `state.value`, and must have the same structure;
    - *leaf-level*: a path into a structured value, `('layers', 0, 'weight', 'bias')`;
        replaces one leaf (a `brainunit.Quantity` is one leaf);
    - a path to a sub-tree of a nested value replaces that sub-tree.

    When several dicts (or several keys) name the same leaf, the later one wins.

    **Checks**, against the value each one replaces; a failure assigns nothing:

    - structure: the same leaves at the same paths;
    - shape: equal;
    - dtype: equal or a safe cast (`jnp.can_cast(..., casting='safe')`); the value is
        cast to the state's dtype. NumPy arrays are accepted under the same rule (so a
        `float64` array does not go into a `float32` state: cast it first); Python
        scalars go into a dtype of the same or a wider kind that holds them (`int` into
        an integer or floating state, `float` into a floating one);
    - unit: a `brainunit.Quantity` in a compatible unit is converted to the state's
        unit (`volt` into a `mV` state); another dimension, a plain value for a state
        with a unit, or a value with a unit for a state without one is refused.

    Assigned values are stored as JAX arrays (or `Quantity`s of JAX arrays) of the
    state's dtype and unit.

    **Arguments:**

    - `target`: the model, any pytree holding states.
    - `*state_dicts`: mappings from keys (see above) to values.
    - `strict`: if `True`, unexpected or missing keys are an error too.

    **Returns:**

    An [`eqx_collective.AssignResult`][] `(model, unexpected, missing)`. `unexpected`
    lists the keys that match nothing, as given. `missing` lists what was left
    unassigned: the state-level path of a state that no key touched, or the leaf-level
    paths of the leaves left out of a partly covered structured state.

    **Raises:**

    - `ValueError` naming the path, what was expected and what was given, if any value
        fails a check; nothing is assigned.
    - `ValueError` listing them, if `strict=True` and there are unexpected or missing
        keys; or if a dotted key is ambiguous.
    - `TypeError` for a key that is neither a tuple path nor a dotted string.

    !!! Example

        ```python
        snapshot = ec.leaf_values(model)  # or ec.state_values(model)
        model = train(model)
        model, unexpected, missing = ec.assign_state_values(model, snapshot)
        assert unexpected == [] and missing == []
        ```
    """
    if not isinstance(strict, bool):
        raise TypeError(
            f"`assign_state_values` takes `strict=True` or `strict=False`, but got "
            f"{strict!r}."
        )
    for d in state_dicts:
        if not isinstance(d, Mapping):
            raise TypeError(
                f"`assign_state_values(target, *state_dicts)` takes dicts from paths to "
                f"values, but got {type(d).__name__}. Pass the target first, then one "
                f"or more dicts."
            )

    result = _assign_in_one_walk(target, state_dicts)
    if result is None:
        result = _assign_general(target, state_dicts)
    unexpected, missing = result.unexpected, result.missing
    if strict and (unexpected or missing):
        parts = []
        if unexpected:
            parts.append(
                f"{len(unexpected)} unexpected key(s) (matching nothing in the model): "
                f"{_listing(unexpected)}"
            )
        if missing:
            parts.append(
                f"{len(missing)} missing key(s) (left unassigned): {_listing(missing)}"
            )
        raise ValueError(
            "`assign_state_values(..., strict=True)` found "
            + " and ".join(parts)
            + ". Fix the keys, or pass `strict=False` to assign what matches and get "
            "the mismatches back in the result."
        )
    return result


class _NotOneWalk(Exception):
    """Stops `_assign_in_one_walk`: the general path takes over."""


def _assign_in_one_walk(
    target: PyTree, state_dicts: tuple[Mapping, ...]
) -> AssignResult | None:
    """`assign_state_values` in a single walk over `target`, for the common cases:
    every key is the tuple path of a state or of a leaf of a state's value, and every
    value passes the checks (at most with a safe cast or a unit conversion). Returns
    `None` for anything else; the general path then starts over, and reports what is
    wrong."""
    if len(state_dicts) == 1:
        given = state_dicts[0]
    else:
        given = {}
        for d in state_dicts:
            given.update(d)  # later dicts win
    if given and type(next(iter(given))) is not tuple:
        return None  # dotted keys: never matched here
    missing = []
    used = 0

    def assign(path, state):
        nonlocal used
        value = given.get(path, _UNSET)
        if value is not _UNSET:
            new = _fast_state_level(state, value)
            if new is None:
                raise _NotOneWalk
            used += 1
            return new
        # leaf-level keys, or none: one lookup per leaf of the value
        leaves, treedef = jtu.tree_flatten(_state_value(state), is_leaf=is_value_leaf)
        try:
            subpaths = _subpaths_of(treedef)[0]
        except Exception:  # a custom node that cannot be rebuilt from placeholders
            raise _NotOneWalk from None
        new_leaves, unset = [], []
        for sub, leaf in zip(subpaths, leaves, strict=True):
            value = given.get(path + sub, _UNSET) if sub else _UNSET
            if value is _UNSET:
                new_leaves.append(leaf)
                unset.append(path + sub)
                continue
            try:
                new_leaves.append(_convert_leaf(leaf, value))
            except _Mismatch:
                raise _NotOneWalk from None
        if len(unset) == len(leaves):  # untouched: reported by its state-level path
            missing.append(path)
            return state
        missing.extend(unset)
        used += len(leaves) - len(unset)
        return replace_fields(state, value=jtu.tree_unflatten(treedef, new_leaves))

    try:
        model = walk(target, state=assign)
    except _NotOneWalk:
        return None
    if used != len(given):  # some keys name no state or leaf
        return None
    return AssignResult(model, [], missing)


def _assign_general(target: PyTree, state_dicts: tuple[Mapping, ...]) -> AssignResult:
    """`assign_state_values` for keys at any level and values that need checks and
    casts: index the model's states and the paths below them, match every key, then
    check and convert each state's new leaves. Raises the `ValueError` listing every
    refused value."""
    found = iter_states(target)
    index = _Index(found)

    # For each state, the keys naming it, in order: later keys overwrite earlier ones.
    plans: dict[int, list[tuple[Path, int | None, Any]]] = {}
    unexpected: list = []
    seen_unexpected: set = set()
    for d in state_dicts:
        for key, value in d.items():
            where = index.lookup(key)
            if where is None:
                hkey = tuple(key) if isinstance(key, list) else key
                if hkey not in seen_unexpected:
                    seen_unexpected.add(hkey)
                    unexpected.append(hkey)
                continue
            i, sub, j = where
            plan = plans.get(i)
            if plan is None:
                plans[i] = [(sub, j, value)]
            else:
                plan.append((sub, j, value))

    errors: list[str] = []
    updates: dict[Path, State] = {}  # the new states
    missing: list[Path] = []
    for i, (path, state) in enumerate(found):
        plan = plans.get(i)
        if plan is None:
            missing.append(path)
            continue
        if len(plan) == 1 and not plan[0][0]:
            new_state = _fast_state_level(state, plan[0][2])
            if new_state is not None:
                updates[path] = new_state
                continue
        slot = index.slot(i)
        leaves, v_treedef = slot.flat()
        new_leaves = [_UNSET] * len(leaves)
        for sub, j, value in plan:
            if j is not None and type(value) in _LEAF_TYPES:
                # a leaf-level key and a single array (the common case)
                targets, g_leaves = (j,), (value,)
            else:
                g_leaves, g_treedef = jtu.tree_flatten(value, is_leaf=is_value_leaf)
                if not sub and g_treedef == v_treedef:
                    targets = range(len(leaves))
                else:
                    targets = slot.leaf_indices(sub)
                    g_sub = [
                        sub + keypath_to_path(kp)
                        for kp, _ in jtu.tree_flatten_with_path(
                            value, is_leaf=is_value_leaf
                        )[0]
                    ]
                    e_sub = [slot.subpaths[t] for t in targets]
                    if list(map(path_str, g_sub)) != list(map(path_str, e_sub)):
                        n = len(sub)
                        expected = [path_str(p[n:]) or "<leaf>" for p in e_sub]
                        given = [path_str(p[n:]) or "<leaf>" for p in g_sub]
                        errors.append(
                            f"at {path_repr(slot.path + sub)}: expected a value with "
                            f"leaves {expected}, but got one with leaves {given} "
                            f"(structure {g_treedef})."
                        )
                        continue
            for t, leaf in zip(targets, g_leaves, strict=True):
                try:
                    new_leaves[t] = _convert_leaf(leaves[t], leaf)
                except _Mismatch as e:
                    errors.append(
                        f"at {path_repr(slot.path + slot.subpaths[t])}: "
                        f"expected {e.args[0]}, but got {_describe(leaf)}."
                    )
        unset = [t for t, x in enumerate(new_leaves) if x is _UNSET]
        if unset:
            missing.extend(slot.path + slot.subpaths[t] for t in unset)
            new_leaves = [
                leaves[t] if x is _UNSET else x for t, x in enumerate(new_leaves)
            ]
        updates[path] = replace_fields(
            state, value=jtu.tree_unflatten(v_treedef, new_leaves)
        )

    if errors:
        shown = errors[:_MAX_LISTED]
        more = len(errors) - len(shown)
        raise ValueError(
            f"`assign_state_values` refused {len(errors)} value(s), so nothing was "
            f"assigned:\n"
            + "\n".join(f"  - {e}" for e in shown)
            + (f"\n  ... and {more} more." if more else "")
            + "\nGive each value the structure, shape, dtype (or one that casts to it "
            "safely) and unit of the state it replaces."
        )
    if updates:
        model = map_states(lambda path, state: updates.get(path, state), target)
    else:
        model = target
    return AssignResult(model, unexpected, missing)


def _listing(keys: list) -> str:
    shown = ", ".join(repr(k) for k in keys[:_MAX_LISTED])
    more = len(keys) - _MAX_LISTED
    return f"[{shown}{f', ... and {more} more' if more > 0 else ''}]"
