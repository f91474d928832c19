"""Reading and replacing the fields of Equinox modules cheaply, for the hot paths of
collective operations and layers; and `ClassCache`, for what is worked out per class.

Equinox answers attribute access through its own `__getattribute__`: reading a method
builds a bound-method module (tens of µs), and `eqx.tree_at` flattens the whole module
(around 100 µs). Over hundreds of nodes per operation that dominates, so these helpers
do the same things directly.
"""

import weakref
from typing import Any, TypeVar

import equinox as eqx


M = TypeVar("M", bound=eqx.Module)


def method(module: Any, name: str) -> Any:
    """`module.name` as a plain bound method (not Equinox's bound-method module)."""
    return object.__getattribute__(module, name)


def replace_fields(module: M, **fields: Any) -> M:
    """`module` with the given fields replaced, as `eqx.tree_at` would return it.

    Like Equinox's own unflattening, it makes a new instance without running
    `__init__` or `__check_init__`, holding the same field values but the replaced
    ones. It works for fields holding `None` too (where `eqx.tree_at` needs an
    `is_leaf`).
    """
    old = object.__getattribute__(module, "__dict__")
    for name in fields:
        if name not in old:
            raise AttributeError(f"`{type(module).__name__}` has no field `{name}`.")
    return rebuild(module, fields)


def rebuild(module: M, fields: dict[str, Any]) -> M:
    """`replace_fields(module, **fields)` without checking the names: for traversals,
    whose names come from the module's own fields."""
    new = object.__new__(type(module))
    new_fields = object.__getattribute__(new, "__dict__")
    new_fields.update(object.__getattribute__(module, "__dict__"))
    new_fields.update(fields)
    return new


class ClassCache(dict):
    """A dict from classes to what was worked out for them, keyed by `id` so that it
    keeps no class alive (as Equinox's own per-class caches are weak): an entry goes
    when its class does. Look up with `cache.get(id(cls))`."""

    def put(self, cls: type, value: Any) -> Any:
        if id(cls) not in self:
            weakref.finalize(cls, self.pop, id(cls), None)
        self[id(cls)] = value
        return value
