"""The vmap variants: collective operations run per member of a stacked ensemble."""

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, NamedTuple, TypeVar

import equinox as eqx
import jax
from jaxtyping import PRNGKeyArray

from ._checks import positive_int
from ._collective import Call, call_all, check_key
from ._ensemble import (
    as_ensemble,
    check_leading,
    ensemble_view,
    place,
    rewrite,
    split_members,
    View,
    view,
)
from ._fields import replace_fields
from ._filters import Filter, to_predicate
from ._paths import path_repr
from ._walk import map_states


T = TypeVar("T")


def _member_keys(key, axis_size):
    return None if key is None else jax.random.split(key, axis_size)


class _Level(NamedTuple):
    """One ensemble level to run a function over: its size, whether the members start
    from one model (`broadcast`, when a new level is made) or from the members of an
    ensemble, and the filter of states to share between them."""

    size: int
    broadcast: bool
    state_to_exclude: Filter
    op: str


def _over_members(fn, model, key, level: _Level):
    """Runs `fn(member, member_key)` for every member with `eqx.filter_vmap`, and
    records the level on the result.

    In the result, states selected by `state_to_exclude` are marked shared; shared
    states must come out the same for every member and keep no ensemble axis,
    everything else gains it (arrays the members did not change are broadcast: every
    parameter ends up with the leading axis). The placement the ensemble records is
    kept.

    The record is written inside the vmap, on each member's result, with the level
    being mapped among the mapped ones (see `_ensemble.view`): the same mechanism
    that keeps a member right inside a user's own `eqx.filter_vmap`, so nesting, and
    running inside a user's transform, need nothing else.
    """
    exclude = to_predicate(level.state_to_exclude)

    def mark_shared(path, state):
        if exclude(path, state) and not state.shared:
            if state.ensemble_shape:
                raise ValueError(
                    f"`{level.op}`: the state at path {path_repr(path)} carries the "
                    f"ensemble axes {state.ensemble_shape} of an inner ensemble, so it "
                    "cannot be shared between the members of the outer one."
                )
            return replace_fields(state, shared=True)
        return state

    at = (None if model is None else view(model)) or View((), (), None)
    sharding = None if level.broadcast else at.sharding
    if level.broadcast:
        batched, rest = None, model
    else:
        batched, rest = split_members(model)
        check_leading(batched, level.size, level.op)
    mapped = at.mapped + (level.size,)

    def per_member(batched, key):
        member = rest if batched is None else eqx.combine(batched, rest)
        out = map_states(mark_shared, fn(member, key), views=False)
        inner = view(out) or View((), (), None)
        field = sharding if not at.mapped else at.field
        return split_members(rewrite(out, View(mapped, inner.present, field)))

    out = _vmap(per_member, batched, _member_keys(key, level.size), level)
    return place(eqx.combine(*out), sharding)


def _vmap(per_member, batched, keys, level: _Level):
    """`eqx.filter_vmap` of `per_member(batched, key)`, whose second output (the
    shared part) must be the same for every member."""
    failed = []

    def run(batched, key):
        try:
            return per_member(batched, key)
        except Exception:
            failed.append(True)  # an error of the member's own code: passed on as is
            raise

    in_axes = (None if batched is None else 0, None if keys is None else 0)
    try:
        return eqx.filter_vmap(
            run, in_axes=in_axes, out_axes=(0, None), axis_size=level.size
        )(batched, keys)
    except ValueError as e:
        if failed:
            raise
        # The inputs' axes were checked, so what JAX refuses here is the output.
        raise ValueError(
            f"`{level.op}`: a shared state (marked by `state_to_exclude`, or a "
            "`NonBatchState`) was given a different value for each member. Shared "
            "states are one copy for the whole ensemble, so they must not depend on the "
            f"member's key or batched values. JAX reports: {e}"
        ) from None


def _run(model, call: Call, key, state_to_exclude):
    """`call` on every single model of `model`: directly on a single model, else
    member by member, level by level, as the ensemble's record says."""
    at = view(model)
    if at is None or not at.present:
        out = call_all(model, call, key)
        return rewrite(out, at) if at is not None and at.mapped else out
    level = _Level(at.present[0], False, state_to_exclude, call.op)
    return _over_members(
        lambda m, k: _run(m, call, k, state_to_exclude), model, key, level
    )


def _on_ensemble(target, call: Call, key, axis_size, state_to_exclude):
    """`call` on every member of the ensemble `target`, which its record names; a tree
    with states but no record is adopted with `axis_size`, a tree without states has
    its leading axis as the ensemble axis."""
    found = view(target)
    if found is not None and found == View((), (), None) and axis_size is not None:
        target = as_ensemble(target, axis_size)
    size = ensemble_view(target, call.op).present[0]
    if axis_size is not None and positive_int(axis_size, "axis_size", call.op) != size:
        raise ValueError(
            f"`{call.op}`: `axis_size={axis_size}` conflicts with the ensemble, whose "
            f"members number {size}. Leave `axis_size` out to use the ensemble's own."
        )
    level = _Level(size, False, state_to_exclude, call.op)
    if found is None:  # no states: the leading axis is the only level
        return _over_members(lambda m, k: call_all(m, call, k), target, key, level)
    return _run(target, call, key, state_to_exclude)


def vmap_call_all_fns(
    target: T,
    fn_name: str,
    args: Sequence[Any] | Any = (),
    kwargs: Mapping[str, Any] | None = None,
    *,
    axis_size: int | None = None,
    key: PRNGKeyArray | None = None,
    node_to_exclude: Filter = None,
    state_to_exclude: Filter = None,
    fn_if_not_exist: Literal["raise", "warn", "pass"] = "raise",
) -> T:
    """[`eqx_collective.call_all_fns`][] on every member of a stacked ensemble, with
    `eqx.filter_vmap`; the ensemble axis is kept.

    **Arguments:**

    - `target`: a stacked ensemble (see [`eqx_collective.vmap_init_all_states`][]).
    - `fn_name`, `args`, `kwargs`, `node_to_exclude`, `fn_if_not_exist`: as for
        [`eqx_collective.call_all_fns`][].
    - `axis_size`: optional; checked against the ensemble's size.
    - `key`: member `i` is called with `jax.random.split(key, E)[i]` (and each of its
        nodes with a key derived from that).
    - `state_to_exclude`: a [`eqx_collective.Filter`][] of states to share between the
        members (for example ones created by this call); they must not depend on the
        member. States the ensemble already shares stay shared.

    **Returns:** the updated ensemble.

    **Raises:** `ValueError` if `target` is not a stacked ensemble or `axis_size`
    conflicts with it; otherwise as [`eqx_collective.call_all_fns`][].
    """
    call = Call.make("vmap_call_all_fns", fn_name, args, kwargs, key,
                     node_to_exclude, fn_if_not_exist)  # fmt: skip
    return _on_ensemble(target, call, key, axis_size, state_to_exclude)


def vmap_init_all_states(
    target: T,
    *args: Any,
    axis_size: int | None = None,
    key: PRNGKeyArray | None = None,
    node_to_exclude: Filter = None,
    state_to_exclude: Filter = None,
    **kwargs: Any,
) -> T:
    """Builds a stacked ensemble by initialising `axis_size` independent copies of a
    model, or re-initialises every member of an ensemble.

    With `axis_size=E`, `target` is one model and the result is an ensemble of the same
    type whose member `i` equals `init_all_states(target, *args, key=keys[i],
    **kwargs)` with `keys = jax.random.split(key, E)`. Every array gains the leading
    axis `E` (arrays `init_state` does not touch, such as parameters, are replicated),
    except the states selected by `state_to_exclude` and every
    [`eqx_collective.NonBatchState`][]: those keep their shape and value, are shared by
    all members, and are remembered as shared (`state.shared`), so later vmap calls and
    [`eqx_collective.ensemble_in_axes`][] need no filter again.

    Without `axis_size`, `target` must be a stacked ensemble; each member is
    re-initialised with its own key and the ensemble axis is kept.

    **Arguments:**

    - `target`: a model, or an ensemble when `axis_size` is left out.
    - `*args`, `**kwargs`: passed to every `init_state`.
    - `axis_size`: the number of members to create (a positive `int`).
    - `key`: the random key from which every member's key derives.
    - `node_to_exclude`: nodes whose `init_state` is not called.
    - `state_to_exclude`: states to share between members instead of batching them.

    **Returns:** the ensemble.

    **Raises:** `ValueError` for an `axis_size` that is not a positive integer, a
    `target` that is not an ensemble when `axis_size` is left out, or a shared state
    that would differ between members.

    !!! Example

        ```python
        policies = ec.vmap_init_all_states(policy, axis_size=8, key=jax.random.key(0))
        policies.layers[0].weight.value["weight"].shape  # (8, 4, 64)
        ```
    """
    call = Call.make("vmap_init_all_states", "init_state", args, kwargs, key,
                     node_to_exclude, "pass")  # fmt: skip
    if axis_size is None:
        return _on_ensemble(target, call, key, None, state_to_exclude)
    size = positive_int(axis_size, "axis_size", call.op)
    level = _Level(size, True, state_to_exclude, call.op)
    return _over_members(
        lambda m, k: _run(m, call, k, state_to_exclude), target, key, level
    )


def vmap_reset_all_states(
    target: T,
    *args: Any,
    axis_size: int | None = None,
    key: PRNGKeyArray | None = None,
    node_to_exclude: Filter = None,
    state_to_exclude: Filter = None,
    **kwargs: Any,
) -> T:
    """Resets every member of a stacked ensemble, each with its own key; the ensemble
    axis is kept and the result is concrete (no leaked tracers).

    **Arguments:** as for [`eqx_collective.vmap_call_all_fns`][], with `*args` and
    `**kwargs` passed to every `reset_state`.

    **Returns:** the reset ensemble.

    !!! Example

        ```python
        rnns = ec.vmap_reset_all_states(rnns)  # h keeps its shape (E, ...)
        ```
    """
    call = Call.make("vmap_reset_all_states", "reset_state", args, kwargs, key,
                     node_to_exclude, "pass")  # fmt: skip
    return _on_ensemble(target, call, key, axis_size, state_to_exclude)


def make_ensemble(
    factory: Callable[[PRNGKeyArray], T], key: PRNGKeyArray, size: int
) -> T:
    """An ensemble of `size` independently constructed models: member `i` is
    `factory(jax.random.split(key, size)[i])`, so members differ in their parameters
    too. `NonBatchState`s the factory creates must not depend on the key.

    **Arguments:**

    - `factory`: builds one model from a key, e.g.
        `lambda k: ec.nn.Linear(4, 2, key=k)`.
    - `key`: the random key.
    - `size`: the number of members.

    **Returns:** the stacked ensemble.
    """
    size = positive_int(size, "size", "make_ensemble")
    check_key(key, "make_ensemble")
    if key is None:
        raise TypeError(
            "`make_ensemble` needs `key`, from which each member's derives."
        )
    level = _Level(size, True, None, "make_ensemble")
    return _over_members(lambda _, k: factory(k), None, key, level)
