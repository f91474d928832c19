"""Splitting a model by state filters, for gradients and optimisers."""

from typing import Any

import equinox as eqx
import jax.tree_util as jtu
from jaxtyping import PyTree

from ._filters import Filter, to_predicate
from ._paths import is_state, keypath_to_path


def partition(model: PyTree, *filters: Filter) -> tuple[PyTree, ...]:
    """Splits `model` into the states each filter selects and the rest, with
    `eqx.partition`: `params, rest = partition(model, ParamState)`.

    Each part has the structure of `model`, with `None` where the leaves belong to
    another part; a state goes to the first filter that selects it; everything that is
    not a selected state (other states, raw arrays of plain Equinox modules, static
    fields) goes to the last part. [`eqx_collective.combine`][] (or `eqx.combine`)
    puts the parts back together. Works on stacked ensembles too.

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
    preds = [to_predicate(f) for f in filters]
    parts, rest = [], model
    for pred in preds:
        spec = jtu.tree_map_with_path(
            lambda kp, x: is_state(x) and pred(keypath_to_path(kp), x),
            rest,
            is_leaf=is_state,
        )
        selected, rest = eqx.partition(rest, spec)
        parts.append(selected)
    return (*parts, rest)


def combine(*parts: Any) -> PyTree:
    """Puts the parts made by [`eqx_collective.partition`][] back together (the same as
    `eqx.combine`)."""
    return eqx.combine(*parts)
