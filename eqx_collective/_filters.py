"""Filters: one normalisation from the accepted filter forms to a predicate."""

import typing
from collections.abc import Callable
from types import EllipsisType
from typing import TypeAlias

import equinox as eqx
from equinox import is_array

from ._paths import as_path, Path


Predicate: TypeAlias = Callable[[Path, typing.Any], bool]

Filter: TypeAlias = (
    type | str | Callable[[Path, typing.Any], bool] | tuple | list | bool | EllipsisType
    | None
)  # fmt: skip
"""What selects nodes or states. One of:

- a type: selects instances (`ParamState`, `eqx_collective.nn.Dropout`);
- a `str`: selects objects whose `tag` equals it (see [`eqx_collective.State`][]);
- a callable `(path, obj) -> bool`;
- a tuple or list of filters: selects what any of them selects;
- `True` or `...`: selects everything; `None` or `False`: selects nothing;
- a combinator: [`eqx_collective.Not`][], [`eqx_collective.All`][],
  [`eqx_collective.Any`][], or a path filter [`eqx_collective.PathPrefix`][],
  [`eqx_collective.PathContains`][].
"""


class _Combinator:
    _args: tuple

    def __repr__(self):
        return f"{type(self).__name__}({', '.join(map(repr, self._args))})"

    def __eq__(self, other):
        return type(self) is type(other) and self._args == other._args

    def __hash__(self):
        return hash((type(self), self._args))


class Not(_Combinator):
    """Selects what `filter` does not select: `Not(ParamState)`."""

    def __init__(self, filter: Filter):
        self._args = (filter,)
        self._pred = to_predicate(filter)

    def __call__(self, path: Path, obj: typing.Any) -> bool:
        return not self._pred(path, obj)


class All(_Combinator):
    """Selects what every one of `filters` selects: `All(HiddenState, 'rnn')`."""

    def __init__(self, *filters: Filter):
        self._args = filters
        self._preds = tuple(map(to_predicate, filters))

    def __call__(self, path: Path, obj: typing.Any) -> bool:
        return all(p(path, obj) for p in self._preds)


class Any(_Combinator):  # noqa: A001 - mirrors brainstate/flax filter names
    """Selects what at least one of `filters` selects (the same as a tuple of them)."""

    def __init__(self, *filters: Filter):
        self._args = filters
        self._preds = tuple(map(to_predicate, filters))

    def __call__(self, path: Path, obj: typing.Any) -> bool:
        return any(p(path, obj) for p in self._preds)


class PathPrefix(_Combinator):
    """Selects what lies at or below one of `paths`:
    `PathPrefix('layers.0')` selects `layers.0` itself, `layers.0.weight`, ... but not
    `layers.10`. Paths are tuples or dotted strings."""

    def __init__(self, *paths: Path | str):
        if not paths:
            raise TypeError("`PathPrefix` needs at least one path.")
        self._args = tuple(as_path(p) for p in paths)
        self._strs = tuple(tuple(map(str, p)) for p in self._args)

    def __call__(self, path: Path, obj: typing.Any) -> bool:
        keys = tuple(map(str, path))
        return any(keys[: len(p)] == p for p in self._strs)


class PathContains(_Combinator):
    """Selects what has `entry` somewhere in its path: `PathContains('encoder')`."""

    def __init__(self, entry: str | int):
        if not isinstance(entry, (str, int)) or isinstance(entry, bool):
            raise TypeError(
                f"`PathContains` takes one path entry (a `str` or `int`), but got "
                f"{entry!r}."
            )
        self._args = (entry,)

    def __call__(self, path: Path, obj: typing.Any) -> bool:
        return str(self._args[0]) in map(str, path)


def _everything(path, obj):
    return True


def _nothing(path, obj):
    return False


def to_predicate(filter: Filter) -> Predicate:
    """Normalises any accepted filter form to a predicate `(path, obj) -> bool`.

    **Raises:** `TypeError` for a filter of an unsupported kind.
    """
    if filter is True or filter is ...:
        return _everything
    if filter is None or filter is False:
        return _nothing
    if isinstance(filter, type):
        return lambda path, obj: isinstance(obj, filter)
    if isinstance(filter, str):
        return lambda path, obj: getattr(obj, "tag", None) == filter
    if isinstance(filter, (tuple, list)):
        return Any(*filter)
    if isinstance(filter, (eqx.Module, dict)) or is_array(filter):
        raise TypeError(
            f"A filter is a type, a tag string, a callable `(path, obj) -> bool` or a "
            f"combinator, but got a {type(filter).__name__}, which looks like a model "
            "or a snapshot. The model comes first: `states(model, *filters)`, "
            "`partition(model, *filters)`."
        )
    if callable(filter):
        return filter
    raise TypeError(
        f"Unsupported filter {filter!r} of type {type(filter).__name__}. A filter is a "
        "type, a tag string, a callable `(path, obj) -> bool`, a tuple/list of filters, "
        "`True`/`...` (everything), `None`/`False` (nothing), or one of `Not`, `All`, "
        "`Any`, `PathPrefix`, `PathContains`."
    )
