"""Splitting a model by state filters, for gradients and optimisers."""

from typing import Any

import equinox as eqx
import jax.tree_util as jtu
from jaxtyping import PyTree

from ._filters import Filter, to_predicate
from ._walk import map_states


_SELECTED = (
    object()
)  # marks what a filter selects, in the spec given to `eqx.partition`


def partition(model: PyTree, *filters: Filter) -> tuple[PyTree, ...]:
    """Splits `model` into the states each filter selects and the rest, with
    `eqx.partition`: `params, rest = partition(model, ParamState)`.

    Each part has the structure of `model`, with `None` where the leaves belong to
    another part; a state goes to the first filter that selects it; everything no
    filter selects goes to the last part. Every array counts, as in
    [`eqx_collective.states`][]: a raw floating array of a plain Equinox module (say
    the weights of an `eqx.nn.Linear` readout) is a `ParamState`, so
    `partition(model, ParamState)` trains it; the values of an `eqx.nn.State` are
    `LongTermState`s. [`eqx_collective.combine`][] (or `eqx.combine`) puts the parts
    back together. Works on stacked ensembles and on `(model, state)` pairs too.

    The views of a part show only what it holds: `states(params)` lists the
    parameters, not the placeholders `eqx.partition` leaves where the other parts'
    values were.

    **Arguments:**

    - `model`: the model.
    - `*filters`: one or more [`eqx_collective.Filter`][]s over states.

    **Returns:** a tuple of `len(filters) + 1` parts.

    !!! Example

        ```python
        params, rest = ec.partition(model, ec.ParamState)

        @eqx.filter_grad
        def grads(params, rest, x, y):
            model = ec.combine(params, rest)
            ...
        ```
    """
    if not filters:
        raise TypeError(
            "`partition` needs at least one filter, e.g. "
            "`partition(model, ParamState)`."
        )
    parts, rest = [], model
    for pred in map(to_predicate, filters):
        marked = map_states(lambda p, s: _SELECTED if pred(p, s) else s, rest)
        spec = jtu.tree_map(lambda x: x is _SELECTED, marked)
        selected, rest = eqx.partition(rest, spec)
        parts.append(selected)
    return (*parts, rest)


def combine(*parts: Any) -> PyTree:
    """Puts the parts made by [`eqx_collective.partition`][] back together (the same as
    `eqx.combine`)."""
    return eqx.combine(*parts)
