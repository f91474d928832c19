"""The one fence around Equinox internals: every read of a module's fields, of a field's
static flag, every rebuild of a module, every read or write of an `eqx.nn.State`'s
values and every plain bound method goes through this module. No other module of the
library touches `__dict__` or `object.__getattribute__`.

Why not the public API: Equinox answers attribute access through its own
`__getattribute__` (reading a method builds a bound-method module, tens of µs), and
`eqx.tree_at` flattens the whole module (around 100 µs). Over hundreds of nodes per
operation that dominates, so these helpers read and rebuild modules directly, as
Equinox's own flatten and unflatten do.

Each assumption is checked against public behaviour (`jax.tree_util`,
`dataclasses.fields`, `eqx.nn.State.get`/`set`) the first time a class is met; a
failed check raises `EquinoxInternalsError` naming the Equinox version, never gives a
wrong answer. The version cap in `pyproject.toml` rests on what is listed in
`ARCHITECTURE.md` ("What the Equinox cap rests on").

`ClassCache` is the one idiom for what is worked out per class.
"""

import dataclasses
import weakref
from typing import Any, TypeVar

import equinox as eqx
import jax.tree_util as jtu


M = TypeVar("M", bound=eqx.Module)
_get = object.__getattribute__


class EquinoxInternalsError(RuntimeError):
    """An assumption this library makes about Equinox's modules does not hold for the
    installed Equinox."""


class ClassCache(dict):
    """A dict from classes to what was worked out for them, keyed by `id` so that it
    keeps no class alive (as Equinox's own per-class caches are weak): an entry goes
    when its class does. Look up with `cache.get(id(cls))`, store with `put`."""

    def put(self, cls: type, value: Any) -> Any:
        if id(cls) not in self:
            weakref.finalize(cls, self.pop, id(cls), None)
        self[id(cls)] = value
        return value


def _broken(what: str) -> EquinoxInternalsError:
    return EquinoxInternalsError(
        f"{what} with Equinox {eqx.__version__}. eqx_collective reads Equinox modules "
        "directly for speed and checks each assumption once per class; this one does "
        "not hold for the installed Equinox. Install a version within the bounds in "
        "eqx_collective's `pyproject.toml`, or report it."
    )


# -- fields ---------------------------------------------------------------------------

_DYNAMIC = ClassCache()


def dynamic_fields(module: eqx.Module) -> tuple[str, ...]:
    """The names of `module`'s dynamic (not `eqx.field(static=True)`) fields, in
    declaration order, checked once per class: reading them from the instance and
    rebuilding it with `rebuild` agree with `jax.tree_util`'s flatten and unflatten."""
    cls = type(module)
    names = _DYNAMIC.get(id(cls))
    if names is None:
        names = _DYNAMIC.put(cls, _check_class(module))
    return names


def _check_class(x: eqx.Module) -> tuple[str, ...]:
    cls = type(x)
    if not cls.__dictoffset__:
        raise _broken(f"`{cls.__qualname__}` instances have no `__dict__`")
    names = [f.name for f in dataclasses.fields(x)]
    dynamic = tuple(
        f.name for f in dataclasses.fields(x) if not f.metadata.get("static", False)
    )
    old = _get(x, "__dict__")
    children, treedef = jtu.tree_flatten_with_path(x, is_leaf=lambda y: y is not x)
    flattened = [getattr(kp[0], "name", None) for kp, _ in children]
    if flattened != [n for n in dynamic if n in old]:
        raise _broken(
            f"`{cls.__qualname__}`'s dynamic fields {list(dynamic)} are not what "
            f"`jax.tree_util` flattens ({flattened})"
        )
    # (Fields only: a module may keep other attributes in its `__dict__`, as Equinox's
    # own bound methods keep `__name__`; `rebuild` copies those too.)
    new = _get(jtu.tree_unflatten(treedef, [c for _, c in children]), "__dict__")
    if any(k in old and (k not in new or new[k] is not old[k]) for k in names):
        raise _broken(f"Unflattening a `{cls.__qualname__}` does not keep its fields")
    return dynamic


def fields(module: eqx.Module) -> dict[str, Any]:
    """`module`'s fields by name, read without Equinox's `__getattribute__`. The dict is
    the module's own: read it, never change it."""
    return _get(module, "__dict__")


def field(module: eqx.Module, name: str, default: Any = None) -> Any:
    """One field of `module` (`default` when it is not set)."""
    return _get(module, "__dict__").get(name, default)


def rebuild(module: M, changes: dict[str, Any]) -> M:
    """`module` with the fields in `changes` replaced, made as Equinox's unflatten
    makes it (a new instance, no `__init__` or `__check_init__`); names unchecked: for
    traversals, whose names come from the module's own fields."""
    new = object.__new__(type(module))
    new_fields = _get(new, "__dict__")
    new_fields.update(_get(module, "__dict__"))
    new_fields.update(changes)
    return new


def make(cls: type[M], values: dict[str, Any]) -> M:
    """A `cls` whose `__dict__` is `values` (that very dict, which the caller gives
    up): its fields, and any attributes it keeps beside them, as Equinox's bound
    methods keep `__name__`. Made as Equinox's unflatten makes a module: no
    `__init__`, no `__check_init__`. For modules built on a hot path (bound methods,
    `filter_jit`'s generated output builder) of classes whose layout `dynamic_fields`
    has checked."""
    new = object.__new__(cls)
    object.__setattr__(new, "__dict__", values)
    return new


# `make` as two builtin calls, for generated code that builds hundreds of modules per
# call (`_jit_build`): `new, set, name = MAKE_STEPS`, then `set(m := new(cls), name,
# values)`. It saves a Python frame per module, about a third of the cost.
MAKE_STEPS = (object.__new__, object.__setattr__, "__dict__")


def replace_fields(module: M, **changes: Any) -> M:
    """`module` with the given fields replaced, as `eqx.tree_at` would return it. It
    works for fields holding `None` too (where `eqx.tree_at` needs an `is_leaf`)."""
    old = _get(module, "__dict__")
    for name in changes:
        if name not in old:
            raise AttributeError(f"`{type(module).__name__}` has no field `{name}`.")
    return rebuild(module, changes)


# -- methods --------------------------------------------------------------------------


def method(module: Any, name: str) -> Any:
    """`module.name` as a plain Python bound method (not Equinox's bound-method module):
    for calling it at once, never for handing it to a transform."""
    return _get(module, name)


# -- eqx.nn.State ---------------------------------------------------------------------

_STATE_CHECKED: list[bool] = []


def state_values(state: eqx.nn.State) -> dict[Any, Any]:
    """The values of an `eqx.nn.State` by the marker of their `eqx.nn.StateIndex`. The
    dict is the state's own: read it, never change it. Equinox's own error for a state
    used after `set` is raised first."""
    state.tree_flatten()
    if not _STATE_CHECKED:
        _check_state()
    return _get(state, "_state")


def state_with(values: dict[Any, Any]) -> eqx.nn.State:
    """A new `eqx.nn.State` holding `values` (by marker), as `eqx.nn.State.set` makes it
    without checking shapes (the callers check them)."""
    new = object.__new__(eqx.nn.State)
    new._state = values  # (its own `__setattr__`: Equinox's `State` is not frozen)
    return new


def _check_state() -> None:
    """Checks once that `eqx.nn.State` keeps its values in `_state` by marker, as
    `get` and `set` read and write them."""
    index, state = eqx.nn.make_with_state(eqx.nn.StateIndex)(0.0)
    values = _get(state, "_state") if hasattr(state, "_state") else None
    marker = _get(index, "__dict__").get("marker")
    if not isinstance(values, dict) or values.get(marker) != state.get(index):
        raise _broken("`eqx.nn.State` does not hold its values in `_state` by marker")
    if state_with({marker: 1.0}).get(index) != 1.0:
        raise _broken("An `eqx.nn.State` cannot be rebuilt from its values")
    _STATE_CHECKED.append(True)
