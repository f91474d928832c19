"""Restoring values: `assign_state_values` and its `AssignResult`.

One mechanism for every key form: an index of the model's state view finds the place
each key names (a state, a sub-tree of its value, or a leaf), one set of checks
converts each given leaf against the leaf it replaces, and one walk writes the new
states back.
"""

import functools
from collections.abc import Mapping
from typing import Any, NamedTuple

import brainunit as u
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
from jaxtyping import PyTree

from ._checks import describe
from ._ensemble import place, recorded_sharding
from ._fields import field, rebuild
from ._paths import (
    ARRAY_TYPES,
    as_path,
    flatten_value,
    is_concrete_array,
    is_state,
    is_value_leaf,
    keypath_to_path,
    Path,
    path_repr,
    path_str,
    PyTreeDef,
)
from ._state import State
from ._walk import iter_states, map_states


_MAX_LISTED = 20
_UNSET = object()


class _Fields(NamedTuple):
    model: PyTree
    unexpected: list
    missing: list


class AssignResult(_Fields):
    """What [`eqx_collective.assign_state_values`][] returns: a named tuple `(model,
    unexpected, missing)`, so `model, unexpected, missing = assign_state_values(...)`
    works, with one more field by name, `converted`, which is not part of the tuple.
    [`eqx_collective.load_states`][] returns the same shape (its
    [`eqx_collective.LoadResult`][] is a subclass).

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
    - `converted` (by name only): the leaf-level tuple paths of the values that were
        converted to fit the model, in the model's order: a safe dtype cast
        (`float16` into a `float32` state), a unit conversion (`volt` into a `mV`
        state), or a Python scalar made an array.

    !!! Example

        ```python
        result = ec.assign_state_values(model, {"layers.0.weight.bias": jnp.zeros(8)})
        result.missing  # [('layers', 0, 'weight', 'weight'), ('layers', 2, 'weight')]
        model, unexpected, missing = result
        ```
    """

    # A tuple subclass without `__slots__` keeps instance attributes: `converted` lives
    # there, so that iterating and unpacking give the three fields only.
    converted: list[Path]

    def __new__(cls, model, unexpected, missing, converted=()):
        self = super().__new__(cls, model, unexpected, missing)
        self.converted = list(converted)
        return self

    def __repr__(self) -> str:
        return f"{super().__repr__()[:-1]}, converted={self.converted!r})"

    def __getnewargs__(self):  # (pickle and copy keep `converted`)
        return (*self, self.converted)

    def _replace(self, **changes):  # pyright: ignore[reportIncompatibleMethodOverride]
        converted = changes.pop("converted", self.converted)
        return type(self)(*super()._replace(**changes), converted)


class _Mismatch(Exception):
    """Raised internally by the per-leaf checks; collected into one `ValueError`."""


class _Slot:
    """One state of the model: its value's leaves, their structure, their paths
    relative to the state, and every place below the state (see `_places`)."""

    __slots__ = ("path", "state", "leaves", "treedef", "subpaths", "below")

    def __init__(self, path: Path, state: State):
        self.path, self.state = path, state
        value = field(state, "value")
        self.leaves, self.treedef, self.subpaths = flatten_value(value)
        below = _PLACES.get(self.treedef)
        if below is None:
            below = _PLACES[self.treedef] = _places(self.subpaths)
        self.below = below

    def targets(self, sub: Path) -> list[int]:
        """The indices of the leaves at or below `sub` (relative to the state)."""
        if not sub:
            return list(range(len(self.leaves)))
        n = len(sub)
        return [i for i, p in enumerate(self.subpaths) if p[:n] == sub]


def _places(subpaths: tuple[Path, ...]) -> tuple:
    """Every place strictly below a state whose leaves are at `subpaths`, as `(path,
    leaf index or None, dotted path)`."""
    places: dict[Path, int | None] = {}
    for j, sub in enumerate(subpaths):
        for k in range(1, len(sub)):
            places.setdefault(sub[:k], None)
        if sub:  # not an array-valued state's own path
            places[sub] = j
    return tuple((p, j, path_str(p)) for p, j in places.items())


_PLACES: dict[PyTreeDef, tuple] = {}  # per value structure: many states share one


class PlaceIndex:
    """Finds the place a key names, as `(state number, path inside the value, leaf
    index or None)`.

    State-level tuple paths are indexed at once; the paths below them, and the dotted
    strings of all of them, when a key first needs them. Each is one pass over the
    states, so the cost stays linear in the model's size."""

    def __init__(self, found: list[tuple[Path, State]]):
        self.found = found
        self.slots: list[_Slot | None] = [None] * len(found)
        self.exact = {path: (i, (), None) for i, (path, _) in enumerate(found)}
        self._deep: dict[Path, tuple] | None = None
        self._dotted: dict[str, list] | None = None

    def slot(self, i: int) -> _Slot:
        slot = self.slots[i]
        if slot is None:
            slot = self.slots[i] = _Slot(*self.found[i])
        return slot

    def _build_deep(self) -> dict[Path, tuple]:
        """Every place strictly below a state, by tuple path."""
        return {
            path + sub: (i, sub, j)
            for i, (path, _) in enumerate(self.found)
            for sub, j, _ in self.slot(i).below
        }

    def _build_dotted(self) -> dict[str, list]:
        """Every state and every place below it, by dotted path (a list: a dotted
        path can name several places)."""
        dotted: dict[str, list] = {}
        for i, (path, _) in enumerate(self.found):
            text = path_str(path)
            dotted.setdefault(text, []).append((path, (i, (), None)))
            prefix = text + "." if path else ""
            for sub, j, sub_text in self.slot(i).below:
                place = (path + sub, (i, sub, j))
                dotted.setdefault(prefix + sub_text, []).append(place)
        return dotted

    def lookup(self, key: Any) -> tuple[int, Path, int | None] | None:
        if isinstance(key, str):
            return self._lookup_dotted(key)
        path = key if type(key) is tuple else as_path(key)
        where = self.exact.get(path)
        if where is None:
            if self._deep is None:
                self._deep = self._build_deep()
            where = self._deep.get(path)
        if where is not None:
            return where
        as_path(key)  # a `TypeError` for entries that are neither `str` nor `int`
        return self._lookup_dotted(path_str(path))

    def _lookup_dotted(self, text: str) -> tuple[int, Path, int | None] | None:
        if self._dotted is None:
            self._dotted = self._build_dotted()
        found = self._dotted.get(text)
        if found is None:
            return None
        if len(found) > 1:
            raise ValueError(
                f"The key {text!r} given to `assign_state_values` is ambiguous: as a "
                f"dotted string it names each of {[p for p, _ in found]}. Pass the "
                "exact tuple path instead."
            )
        return found[0][1]


@functools.cache
def _safe_cast(given: np.dtype, expected: np.dtype) -> bool:
    return bool(jnp.can_cast(given, expected, casting="safe"))


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
    return _Host(arr)


def _convert_array(expected: Any, given: Any) -> Any:
    """Checks `given` against the array `expected` and returns it as a JAX array of
    the expected dtype. Raises `_Mismatch(expected description)` otherwise."""
    e_shape = expected.shape
    e_dtype = expected.dtype
    if type(given) in _SCALAR_KINDS:
        if e_shape != ():
            raise _Mismatch(describe(expected))
        try:
            return _python_scalar(np.dtype(e_dtype), given)
        except _Mismatch:
            raise _Mismatch(describe(expected)) from None
    g_shape = getattr(given, "shape", None)
    g_dtype = getattr(given, "dtype", None)
    if g_shape is None or g_dtype is None:
        raise _Mismatch(describe(expected))
    if tuple(g_shape) != tuple(e_shape):
        raise _Mismatch(describe(expected))
    if g_dtype == e_dtype:
        return given if isinstance(given, jax.Array) else _Host(given)
    if _is_key(g_dtype) or _is_key(e_dtype):  # typed PRNG keys: same impl only
        raise _Mismatch(
            f"{describe(expected)} (turn raw key data into keys with "
            "`jax.random.wrap_key_data`)"
        )
    if not _safe_cast(np.dtype(g_dtype), np.dtype(e_dtype)):
        raise _Mismatch(f"{describe(expected)} (or a dtype that casts to it safely)")
    if isinstance(given, jax.Array):
        return jnp.asarray(given, dtype=e_dtype)
    return _Host(given, np.dtype(e_dtype))


def _is_key(dtype: Any) -> bool:
    return jnp.issubdtype(dtype, jax.dtypes.prng_key)


def _is_plain_unit(unit: u.Unit) -> bool:
    return unit.is_unitless and unit.scale == 0 and unit.factor == 1


def _convert_leaf(expected: Any, given: Any) -> Any:
    """Checks one leaf and returns the value to store in place of `expected`."""
    if type(expected) in ARRAY_TYPES:  # the common cases: nothing to check or cast
        kind, aval = type(given), expected.aval
        if type(given) in ARRAY_TYPES and given.aval == aval:
            return given
        if (
            kind is np.ndarray
            and given.dtype == aval.dtype
            and given.shape == aval.shape
        ):
            return _Host(given)
    if isinstance(expected, u.Quantity):
        return _convert_quantity(expected, given)
    if isinstance(given, u.Quantity):
        if not _is_plain_unit(given.unit):
            if given.unit.is_unitless:
                given = given.to_decimal()
            else:
                raise _Mismatch(
                    f"{describe(expected)} without a unit (strip the unit with "
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


def _convert_quantity(expected: u.Quantity, given: Any) -> Any:
    """`_convert_leaf` for a leaf with a unit: `given` converted to its unit."""
    unit = expected.unit
    if isinstance(given, u.Quantity):
        g_unit = given.unit
        if g_unit is unit or g_unit == unit:
            mantissa = given.mantissa
        elif not g_unit.has_same_dim(unit):
            raise _Mismatch(
                f"{describe(expected)} (or a unit of the same dimension, {unit.dim})"
            )
        else:
            m = given.mantissa
            if jnp.issubdtype(expected.mantissa.dtype, jnp.integer):
                raise _Mismatch(
                    f"{describe(expected)} (an integer state is only assigned in its "
                    f"own unit, {unit})"
                )
            m_dtype = getattr(m, "dtype", None)
            if m_dtype is not None and not _safe_cast(
                np.dtype(m_dtype), np.dtype(expected.mantissa.dtype)
            ):
                raise _Mismatch(describe(expected))
            mantissa = u.Quantity(
                jnp.asarray(m, dtype=expected.mantissa.dtype), unit=g_unit
            ).to_decimal(unit)
    elif _is_plain_unit(unit):
        mantissa = given
    else:
        raise _Mismatch(
            f"{describe(expected)} (a `brainunit.Quantity`; multiply the value by "
            f"`{unit}`)"
        )
    try:
        new = _convert_array(expected.mantissa, mantissa)
    except _Mismatch as e:
        raise _Mismatch(f"{e.args[0]} with unit {unit}") from None
    if type(new) is _Host:
        new.unit = unit
        return new
    return u.Quantity(new, unit=unit)


def assign_state_values(
    target: PyTree,
    # A union, not `Mapping[Path | str, Any]`: a mapping's key type is invariant, so
    # that would refuse the `dict[Path, Any]` of `ec.leaf_values` / `ec.state_values`.
    *state_dicts: Mapping[Path, Any] | Mapping[str, Any] | Mapping[Path | str, Any],
    strict: bool = False,
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
    return assign(target, PlaceIndex(iter_states(target)), state_dicts, strict)


def assign(
    target: PyTree,
    index: PlaceIndex,
    state_dicts: tuple,
    strict: bool,
    op: str = "assign_state_values",
    source: str = "",
    places: dict | None = None,
) -> AssignResult:
    """`assign_state_values` with `target`'s `index` (`PlaceIndex(iter_states(target))`)
    built, which `load_states` shares (with the `places` of its keys, if known);
    messages name `op` and the file `source`."""
    where = f" in {source}" if source else ""
    plans, unexpected = _match_keys(index, state_dicts, places or {})
    values, missing, errors, hosts, converted = {}, [], [], [], []
    for i, (path, _) in enumerate(index.found):
        plan = plans.get(i)
        if plan is None:
            missing.append(path)
        else:
            values[i] = _new_value(index, i, plan, (missing, errors, hosts, converted))
    if errors:
        raise ValueError(
            f"`{op}` refused {len(errors)} value(s){where}"
            + (" (is it the file of another model?)" if source else "")
            + ", so nothing was assigned:\n"
            + "\n".join(f"  - {e}" for e in errors[:_MAX_LISTED])
            + (f"\n  ... and {len(errors) - _MAX_LISTED} more." if errors[20:] else "")
            + "\nGive each value the structure, shape, dtype (or one that casts to it "
            "safely) and unit of the state it replaces."
        )
    if strict and (unexpected or missing):
        _refuse_mismatched_keys(op, where, unexpected, missing)
    _to_devices(hosts)
    updates = {}
    for i, (treedef, leaves) in values.items():
        path, state = index.found[i]
        value = leaves if treedef is None else jtu.tree_unflatten(treedef, leaves)
        updates[path] = _placed(path, state, value)
    model = map_states(lambda p, s: updates.get(p, s), target) if updates else target
    return AssignResult(model, unexpected, missing, converted)


def _match_keys(
    index: PlaceIndex, state_dicts, places: dict
) -> tuple[dict[int, list], list]:
    """For each state, the `(path inside the value, leaf index or None, value)` the
    keys name, in order (later keys overwrite earlier ones); and the keys that name
    nothing. `places` holds the places of keys already looked up."""
    plans: dict[int, list[tuple[Path, int | None, Any]]] = {}
    unexpected: list = []
    for d in state_dicts:
        for key, value in d.items():
            where = places[key] if key in places else index.lookup(key)
            if where is None:
                key = tuple(key) if isinstance(key, list) else key
                if key not in unexpected:
                    unexpected.append(key)
            else:
                plans.setdefault(where[0], []).append((where[1], where[2], value))
    return plans, unexpected


def _new_value(
    index: PlaceIndex, i: int, plan: list, report: tuple[list, list, list, list]
) -> tuple[Any, Any]:
    """The new value of state `i` from the values its keys give, each leaf checked, as
    `(None, value)` or `(treedef, leaves)`; records in `report` the leaves left
    unassigned (`missing`), what was refused (`errors`), the values to move to the
    device (`hosts`) and the leaves converted (`converted`)."""
    missing, errors, hosts, converted = report
    path, state = index.found[i]
    if len(plan) == 1 and not plan[0][0]:
        value = plan[0][2]
        if _same_avals(field(state, "value"), value):
            # the common case, a value like the old: nothing to check or cast
            return None, (dict(value) if type(value) is dict else value)
    slot = index.slot(i)
    new: list[Any] = [_UNSET] * len(slot.leaves)
    changed: dict[int, bool] = {}  # (the last value given for a leaf counts)
    for sub, j, value in plan:
        if j is not None and type(value) in ARRAY_TYPES:
            old = slot.leaves[j]
            if (
                type(old) in ARRAY_TYPES
                and old.dtype == value.dtype
                and old.shape == value.shape
            ):  # (the common case: stored as given, a weak type too, as `eqx.tree_at`)
                new[j], changed[j] = value, False
                continue
        if j is not None and (
            type(value) in ARRAY_TYPES or type(value) in _ONE_LEAF
        ):  # a leaf for a leaf's place
            targets, given = (j,), (value,)
        else:
            targets = slot.targets(sub)
            given, treedef = jtu.tree_flatten(value, is_leaf=is_value_leaf)
            if not _fits(slot, sub, targets, value, treedef):
                expected = [slot.subpaths[t] for t in targets]
                errors.append(
                    _state_given(path + sub, value)
                    or _structure_error(path + sub, sub, expected, value)
                )
                continue
        for t, leaf in zip(targets, given, strict=True):
            try:
                new[t] = _convert_leaf(slot.leaves[t], leaf)
            except _Mismatch as e:
                where = path + slot.subpaths[t]
                errors.append(
                    _state_given(where, leaf)
                    or f"at {path_repr(where)}: expected {e.args[0]}, but got "
                    f"{describe(leaf)}."
                )
                continue
            # (a leaf stored as given was not converted: most leaves, checked cheaply)
            changed[t] = new[t] is not leaf and _converted(slot.leaves[t], leaf)
    converted += [path + slot.subpaths[t] for t in sorted(changed) if changed[t]]
    for t, x in enumerate(new):
        if x is _UNSET:
            missing.append(path + slot.subpaths[t])
            new[t] = slot.leaves[t]
        elif type(x) is _Host:  # (the last value given for the leaf)
            hosts.append(x.to(new, t, slot.leaves[t]))
    return slot.treedef, new


def _converted(old: Any, new: Any) -> bool:
    """Whether assigning `new` in place of `old` converts it (dtype, unit, kind)."""
    if isinstance(old, u.Quantity) or isinstance(new, u.Quantity):
        if not (isinstance(old, u.Quantity) and isinstance(new, u.Quantity)):
            return True
        if old.unit != new.unit:
            return True
        old, new = old.mantissa, new.mantissa
    if type(new) in _SCALAR_KINDS:
        return type(old) is not type(new)
    return getattr(old, "dtype", None) != getattr(new, "dtype", None)


def _is_state_object(x: Any) -> bool:
    """Whether `x` is a state object (ours, or brainstate's: a class named `State`
    with a `value`) rather than a value."""
    return is_state(x) or (
        any(c.__name__ == "State" for c in type(x).__mro__) and hasattr(x, "value")
    )


def _state_given(where: Path, value: Any) -> str | None:
    """The message for a state object given where its value belongs, if `value` is or
    holds one."""
    found = [x for x in jtu.tree_leaves(value, is_leaf=_is_state_object)]
    state = next((x for x in found if _is_state_object(x)), None)
    if state is None:
        return None
    return (
        f"at {path_repr(where)}: got a `{type(state).__name__}` object where its value "
        f"belongs; pass its `.value` (`ec.state_values(model)` makes a snapshot of "
        f"values)."
    )


def put_like(arrays: list, olds: list) -> list:
    """`arrays` on the device in one `jax.device_put` (for 800 small arrays, about the
    time of one `jnp.asarray` each: 0.9-1.1x on JAX 0.10 and 0.12): each on the
    devices of the array (or `Quantity`) of `olds` it replaces, if that one is
    committed (a sharded model stays sharded), else placed by default as JAX places a
    new array."""
    shardings = []
    for old in olds:
        old = old.mantissa if isinstance(old, u.Quantity) else old
        shardings.append(
            old.sharding if is_concrete_array(old) and old.committed else None
        )
    placed = any(s is not None for s in shardings)
    return jax.device_put(arrays, shardings if placed else None)


class _Host:
    """A checked host value (a NumPy array), to be moved to the device in
    `_to_devices` with the others of the restore (cast to `dtype` if given) and stored
    at `leaves[t]` (with `unit`, if any)."""

    __slots__ = ("value", "dtype", "unit", "leaves", "t", "old")
    unit: u.Unit | None

    def __init__(self, value: Any, dtype: np.dtype | None = None):
        self.value, self.dtype, self.unit = value, dtype, None

    def to(self, leaves: list, t: int, old: Any) -> "_Host":
        self.leaves, self.t, self.old = leaves, t, old
        return self

    def array(self) -> np.ndarray:
        return np.asarray(self.value, dtype=self.dtype)


def _to_devices(hosts: list[_Host]) -> None:
    """Moves the host values of a restore to the device (`put_like`)."""
    if not hosts:
        return
    moved = put_like([h.array() for h in hosts], [h.old for h in hosts])
    for h, array in zip(hosts, moved, strict=True):
        h.leaves[h.t] = array if h.unit is None else u.Quantity(array, unit=h.unit)


def _same_avals(old: Any, new: Any) -> bool:
    """Whether `new` is a JAX array, or a dict of them, like `old` in structure,
    shapes and dtypes."""
    if type(new) in ARRAY_TYPES:
        return type(old) in ARRAY_TYPES and old.aval == new.aval
    if type(new) is dict and type(old) is dict and len(new) == len(old):
        for k, v in new.items():
            o: Any = old.get(k)  # (pyright would keep `.get`'s `None` below)
            if type(v) in ARRAY_TYPES and type(o) in ARRAY_TYPES:
                if o.aval != v.aval:
                    return False
            elif not _same_avals(o, v):
                return False
        return True
    return False


# Types that are one leaf of a value (what a leaf-level key usually carries).
_ONE_LEAF = frozenset({np.ndarray, u.Quantity, bool, int, float, complex})


def _fits(slot: _Slot, sub: Path, targets: list[int], value: Any, treedef) -> bool:
    """Whether `value`, of structure `treedef`, given for the place `sub` of a state
    has leaves at the very paths of the leaves there."""
    if not sub and treedef == slot.treedef:
        return True
    flat = jtu.tree_flatten_with_path(value, is_leaf=is_value_leaf)[0]
    given = [path_str(sub + keypath_to_path(kp)) for kp, _ in flat]
    return given == [path_str(slot.subpaths[t]) for t in targets]


def _placed(path: Path, state: State, value: Any) -> State:
    """`state` holding `value`, placed as the state's ensemble records (see
    `shard_ensemble`), so that a restore keeps a sharded ensemble sharded."""
    sharding = recorded_sharding(path, state)
    if sharding is not None:
        value = place({"v": value}, sharding)["v"]
    return rebuild(state, {"value": value})


def _structure_error(where: Path, sub: Path, expected: list, value: Any) -> str:
    n = len(sub)
    flat = jtu.tree_flatten_with_path(value, is_leaf=is_value_leaf)[0]
    given = [path_str(keypath_to_path(kp)) or "<leaf>" for kp, _ in flat]
    expected = [path_str(p[n:]) or "<leaf>" for p in expected]
    return (
        f"at {path_repr(where)}: expected a value with leaves {expected}, but got one "
        f"with leaves {given} (structure {jtu.tree_structure(value)})."
    )


def _refuse_mismatched_keys(op: str, source: str, unexpected: list, missing: list):
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
        f"`{op}(..., strict=True)` found{source} "
        + " and ".join(parts)
        + ". Fix the keys, or pass `strict=False` to assign what matches and get "
        "the mismatches back in the result."
    )


def _listing(keys: list) -> str:
    shown = ", ".join(repr(k) for k in keys[:_MAX_LISTED])
    more = len(keys) - _MAX_LISTED
    return f"[{shown}{f', ... and {more} more' if more > 0 else ''}]"
