"""The vmap variants: collective operations run per member of a stacked ensemble."""

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, TypeVar

import equinox as eqx
import jax
from jaxtyping import PRNGKeyArray

from ._collective import _call_all, _check_arguments
from ._ensemble import check_axis_size, ensemble_size, split_members
from ._filters import Filter, to_predicate
from ._module import replace_fields
from ._walk import map_states


T = TypeVar("T")


def _member_keys(key, axis_size):
    return None if key is None else jax.random.split(key, axis_size)


def _vmap_members(fn, batched, rest, keys, axis_size, state_to_exclude, op):
    """Runs `fn(member, member_key)` for every member with `eqx.filter_vmap`.

    `batched` carries the ensemble axis (or is `None` for a single model, which every
    member then starts from). In the result, states selected by `state_to_exclude` are
    marked shared; shared states must come out the same for every member and keep no
    ensemble axis, everything else gains it (arrays the members did not change are
    broadcast: every parameter ends up with the leading axis).
    """
    exclude = to_predicate(state_to_exclude)

    def mark_shared(path, state):
        if exclude(path, state) and not state.shared:
            return replace_fields(state, shared=True)
        return state

    def per_member(batched, key):
        out = fn(eqx.combine(batched, rest), key)
        return split_members(map_states(mark_shared, out))

    in_axes = (None if batched is None else 0, None if keys is None else 0)
    try:
        out = eqx.filter_vmap(
            per_member, in_axes=in_axes, out_axes=(0, None), axis_size=axis_size
        )(batched, keys)
    except ValueError as e:
        if "out_axes" not in str(e):
            raise
        raise ValueError(
            f"`{op}`: a shared state (marked by `state_to_exclude`, or a "
            "`NonBatchState`) was given a different value for each member. Shared "
            "states are one copy for the whole ensemble, so they must not depend on the "
            f"member's key or batched values. JAX reports: {e}"
        ) from None
    return eqx.combine(*out)


def _ensemble_axis_size(target, axis_size, op):
    size = ensemble_size(target)
    if axis_size is not None and check_axis_size(axis_size, op=op) != size:
        raise ValueError(
            f"`{op}`: `axis_size={axis_size}` conflicts with the ensemble, whose "
            f"members number {size}. Leave `axis_size` out to use the ensemble's own."
        )
    return size


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
    op = "vmap_call_all_fns"
    args, kwargs = _check_arguments(fn_name, args, kwargs, fn_if_not_exist, op)
    size = _ensemble_axis_size(target, axis_size, op)
    return _vmap_op(
        target, fn_name, args, kwargs, key, node_to_exclude, fn_if_not_exist, op, size,
        state_to_exclude, stacked=True,
    )  # fmt: skip


def _vmap_op(
    target, fn_name, args, kwargs, key, node_to_exclude, fn_if_not_exist, op, size,
    state_to_exclude, *, stacked,
):  # fmt: skip
    def fn(model, member_key):
        return _call_all(
            model,
            fn_name,
            args,
            kwargs,
            member_key,
            node_to_exclude,
            fn_if_not_exist,
            op,
        )

    if stacked:
        batched, rest = split_members(target)
    else:
        batched, rest = None, target
    keys = _member_keys(key, size)
    return _vmap_members(fn, batched, rest, keys, size, state_to_exclude, op)


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
    op = "vmap_init_all_states"
    args, kwargs = _check_arguments("init_state", args, kwargs, "pass", op)
    if axis_size is None:
        size, stacked = _ensemble_axis_size(target, None, op), True
    else:
        size, stacked = check_axis_size(axis_size, op=op), False
    return _vmap_op(
        target, "init_state", args, kwargs, key, node_to_exclude, "pass", op, size,
        state_to_exclude, stacked=stacked,
    )  # fmt: skip


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
    op = "vmap_reset_all_states"
    args, kwargs = _check_arguments("reset_state", args, kwargs, "pass", op)
    size = _ensemble_axis_size(target, axis_size, op)
    return _vmap_op(
        target, "reset_state", args, kwargs, key, node_to_exclude, "pass", op, size,
        state_to_exclude, stacked=True,
    )  # fmt: skip


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
    size = check_axis_size(size, op="make_ensemble")
    keys = jax.random.split(key, size)
    return _vmap_members(
        lambda _, k: factory(k), None, None, keys, size, None, "make_ensemble"
    )
