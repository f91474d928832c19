"""Read-only views of a model's states: `states`, `state_values`, `leaf_values`."""

from typing import Any

from jaxtyping import PyTree

from ._filters import Filter, to_predicate
from ._paths import iter_value_leaves, Path, path_str
from ._state import State
from ._walk import iter_states


def states(model: PyTree, *filters: Filter) -> dict[Path, State]:
    """Every [`eqx_collective.State`][] of `model`, keyed by its state-level path, in
    the pytree's own order (field declaration order; dict keys sorted).

    **Every array counts**: a raw array of a plain Equinox module is listed too, as
    the state it stands for (a floating array as a `ParamState`, Equinox's
    `eqx.is_inexact_array` convention; any other as a `LongTermState`), and so is each
    value of an `eqx.nn.State` (a `LongTermState`), at the model path of its
    `eqx.nn.StateIndex`; pass the pair `(model, state)`. What `states` lists is what
    snapshots, checkpoints, restores and [`eqx_collective.partition`][] cover. A state
    holding no array (the placeholder `eqx.partition` leaves in the other part) is not
    listed. See the "Equinox models" page of the docs.

    **Arguments:**

    - `model`: any pytree holding states, usually an `eqx.Module`.
    - `*filters`: keep only the states that at least one filter selects (see
        [`eqx_collective.Filter`][]). With none, every state is kept.

    **Returns:**

    A `dict` mapping paths such as `('layers', 0, 'weight')` to states.

    !!! Example

        ```python
        params = ec.states(model, ec.ParamState)
        hidden = ec.states(model, ec.HiddenState, "rnn")  # hidden states or tag 'rnn'
        ```
    """
    if isinstance(model, type):
        raise TypeError(
            f"`states(model, *filters)` takes the model first, but got the type "
            f"{model.__name__}: pass the model, then the filters."
        )
    pred = to_predicate(filters if filters else True)
    found = iter_states(model)
    selected = {p: s for p, s in found if pred(p, s)}
    if not selected:
        _check_tag_filters(filters, found)
    return selected


def _check_tag_filters(filters: tuple, found: list) -> None:
    """A tag filter that names a path instead is a mix-up worth an error: string
    filters select tags, and paths go through `PathPrefix`."""
    paths = {path_str(p[:i]) for p, _ in found for i in range(1, len(p) + 1)}
    for f in filters:
        if isinstance(f, str) and f in paths:
            raise ValueError(
                f"The filter {f!r} is a tag filter (a string selects the states whose "
                f"`tag` equals it), and no state has that tag; but {f!r} is a path of "
                f"the model. To select by path, use `PathPrefix({f!r})`."
            )


def state_values(model: PyTree, *filters: Filter) -> dict[Path, PyTree]:
    """`{path: state.value}` for the states of `model` that `filters` select: a
    *state-level* snapshot, accepted back by [`eqx_collective.assign_state_values`][].

    **Arguments:** as for [`eqx_collective.states`][].

    **Returns:** a `dict` from state-level paths to values.
    """
    return {p: s.value for p, s in states(model, *filters).items()}


def leaf_values(model: PyTree, *filters: Filter) -> dict[Path, Any]:
    """`{leaf_path: array}` for the states of `model` that `filters` select: a flat
    *leaf-level* snapshot. A dict-valued state at `('W', 'weight')` contributes
    `('W', 'weight', 'bias')` and `('W', 'weight', 'weight')`; an array- or
    `brainunit.Quantity`-valued state contributes its own path.

    **Arguments:** as for [`eqx_collective.states`][].

    **Returns:** a `dict` from leaf-level paths to arrays (or `Quantity`s).
    """
    out = {}
    for p, s in states(model, *filters).items():
        out.update(iter_value_leaves(p, s.value))
    return out
