"""Stacked ensembles: splitting, sizing, stacking, indexing and sharding them."""

from collections.abc import Sequence
from typing import Any, TypeVar

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
from jaxtyping import PyTree

from ._paths import is_state, iter_leaves, path_repr
from ._state import is_shared, State


T = TypeVar("T")


def _is_shared_state(x: Any) -> bool:
    return isinstance(x, State) and is_shared(x)


def _batched_spec(tree: PyTree) -> PyTree:
    """`eqx.partition` filter: arrays outside shared states carry the ensemble axis."""
    return jtu.tree_map(
        lambda x: False if _is_shared_state(x) else eqx.is_array, tree, is_leaf=is_state
    )


def split_members(tree: PyTree) -> tuple[PyTree, PyTree]:
    """Splits an ensemble (or a model) into `(batched, rest)` with `eqx.partition`:
    `batched` holds the arrays that carry the ensemble axis (every array outside a
    shared state), `rest` the shared states and everything static.
    `eqx.combine(batched, rest)` rebuilds it."""
    return eqx.partition(tree, _batched_spec(tree))


def ensemble_in_axes(ensemble: PyTree) -> PyTree:
    """The `in_axes` to give `eqx.filter_vmap` for `ensemble`: axis 0 for its arrays,
    `None` for its shared states (see [`eqx_collective.State`][]). When the vmapped
    function returns an updated ensemble, pass the same spec as its `out_axes`, so the
    shared states come back without an ensemble axis.

    **Arguments:**

    - `ensemble`: a stacked ensemble, e.g. from
        [`eqx_collective.vmap_init_all_states`][].

    **Returns:** a pytree prefix of `ensemble`.

    !!! Example

        ```python
        @eqx.filter_vmap(in_axes=(ec.ensemble_in_axes(policies), None))
        def forward(policy, x):
            return policy(x)

        y = forward(policies, x)  # one output per member
        ```
    """
    return jtu.tree_map(
        lambda x: None if _is_shared_state(x) else eqx.if_array(0),
        ensemble,
        is_leaf=is_state,
    )


def ensemble_size(ensemble: PyTree) -> int:
    """The number of members of a stacked ensemble: the common leading axis of every
    array outside its shared states.

    **Raises:** `ValueError` if `ensemble` has no such array or their leading axes
    differ (it is then not a stacked ensemble).
    """
    return _members_size(split_members(ensemble)[0])


def _members_size(batched: PyTree) -> int:
    """`ensemble_size` of an ensemble already split by `split_members`."""
    shapes = [(p, jnp.shape(x)) for p, x in iter_leaves(batched)]
    if not shapes:
        raise ValueError(
            "This is not a stacked ensemble: it holds no array outside shared states, so "
            "it has no ensemble axis. Build ensembles with `vmap_init_all_states(model, "
            "axis_size=...)`, `make_ensemble` or `stack`."
        )
    scalar = next(((p, s) for p, s in shapes if not s), None)
    if scalar is not None:
        raise ValueError(
            f"This is not a stacked ensemble: the array at path {path_repr(scalar[0])} "
            "is a scalar, so it has no leading ensemble axis. Build ensembles with "
            "`vmap_init_all_states(model, axis_size=...)`, `make_ensemble` or `stack`."
        )
    (p0, s0), *others = shapes
    for p, s in others:
        if s[0] != s0[0]:
            raise ValueError(
                f"This is not a stacked ensemble: the array at path {path_repr(p0)} has "
                f"leading axis {s0[0]} but the one at {path_repr(p)} has {s[0]}. In an "
                "ensemble every array outside shared states carries the same leading "
                "axis. Build ensembles with `vmap_init_all_states(model, "
                "axis_size=...)`, `make_ensemble` or `stack`."
            )
    return s0[0]


def check_axis_size(axis_size: Any, *, op: str) -> int:
    if not isinstance(axis_size, int) or isinstance(axis_size, bool) or axis_size <= 0:
        raise ValueError(
            f"`{op}`: `axis_size` must be a positive integer, but got {axis_size!r}."
        )
    return axis_size


def member(ensemble: T, index: int) -> T:
    """Member `index` of a stacked ensemble, as a single model (shared states are
    kept as they are). Negative indices count from the end.

    **Raises:** `IndexError` for an index out of range, `ValueError` if `ensemble` is
    not a stacked ensemble.
    """
    batched, rest = split_members(ensemble)
    size = _members_size(batched)
    if not isinstance(index, int) or not -size <= index < size:
        raise IndexError(
            f"`member`: index {index!r} is out of range for an ensemble of {size} "
            "members."
        )
    return eqx.combine(jtu.tree_map(lambda x: x[index], batched), rest)


def unstack(ensemble: T) -> list[T]:
    """The members of a stacked ensemble, as a list of single models.

    **Raises:** `ValueError` if `ensemble` is not a stacked ensemble (its arrays do not
    share a leading axis).
    """
    batched, rest = split_members(ensemble)
    size = _members_size(batched)
    return [
        eqx.combine(jtu.tree_map(lambda x: x[i], batched), rest) for i in range(size)
    ]


def stack(models: Sequence[T]) -> T:
    """Stacks models of one structure into an ensemble: every array gains a leading
    axis `len(models)`, except those in shared states, which are taken from the first
    model. The inverse of [`eqx_collective.unstack`][].

    **Raises:** `ValueError` for an empty sequence or models of different structure
    (naming the first model that differs).
    """
    models = list(models)
    if not models:
        raise ValueError("`stack` needs at least one model.")
    parts = [split_members(m) for m in models]
    batched0, rest0 = parts[0]
    for i, (b, r) in enumerate(parts[1:], start=1):
        same = jtu.tree_structure(b) == jtu.tree_structure(batched0)
        same = same and jtu.tree_structure(r) == jtu.tree_structure(rest0)
        shapes = [(jnp.shape(x), jnp.result_type(x)) for x in jtu.tree_leaves(b)]
        shapes0 = [
            (jnp.shape(x), jnp.result_type(x)) for x in jtu.tree_leaves(batched0)
        ]
        if not same or shapes != shapes0:
            raise ValueError(
                f"`stack`: model {i} does not have the structure, shapes and dtypes of "
                "model 0; only models of one structure can be stacked."
            )
    batched = jtu.tree_map(lambda *xs: jnp.stack(xs), *(b for b, _ in parts))
    return eqx.combine(batched, rest0)


def shard_ensemble(
    ensemble: T,
    mesh: jax.sharding.Mesh | None = None,
    *,
    axis_name: str = "ensemble",
) -> T:
    """Places the ensemble axis across devices with `jax.sharding`: every batched array
    is split along its leading axis over the mesh axis `axis_name`; shared states are
    replicated on every device. Computations on the result (`eqx.filter_vmap` under
    `eqx.filter_jit`) then run each device's members there.

    **Arguments:**

    - `ensemble`: a stacked ensemble.
    - `mesh`: a `jax.sharding.Mesh` with an axis `axis_name`; by default a 1-D mesh
        over all of `jax.devices()`. Use automatic mesh axes (the default of
        `jax.sharding.Mesh`): with explicit axes (the default of `jax.make_mesh` in
        recent JAX) every operation under `eqx.filter_vmap` must support JAX's
        explicit-sharding mode, and some (such as `jnp.concatenate`) do not yet.
    - `axis_name`: the mesh axis to shard the members over.

    **Returns:** the same ensemble, its arrays placed with `NamedSharding`s.

    **Raises:** `ValueError` if the ensemble size is not divisible by the number of
    devices on `axis_name`, or the mesh has no such axis.

    !!! Example

        ```python
        mesh = jax.sharding.Mesh(jax.devices(), ("ensemble",))
        policies = ec.shard_ensemble(policies, mesh)
        ```
    """
    if mesh is None:
        mesh = jax.sharding.Mesh(jax.devices(), (axis_name,))
    if axis_name not in mesh.shape:
        raise ValueError(
            f"`shard_ensemble`: the mesh has axes {tuple(mesh.shape)}, not "
            f"{axis_name!r}. Pass `axis_name=` naming the mesh axis to shard over."
        )
    batched, rest = split_members(ensemble)
    size, devices = _members_size(batched), mesh.shape[axis_name]
    if size % devices:
        raise ValueError(
            f"`shard_ensemble`: an ensemble of {size} members cannot be split evenly "
            f"over {devices} devices. Use an ensemble size that is a multiple of "
            f"{devices}, or a mesh with a number of devices that divides {size}."
        )
    P = jax.sharding.PartitionSpec
    split = jax.sharding.NamedSharding(mesh, P(axis_name))
    replicated = jax.sharding.NamedSharding(mesh, P())
    batched = jtu.tree_map(lambda x: jax.device_put(x, split), batched)
    rest = jtu.tree_map(
        lambda x: jax.device_put(x, replicated) if eqx.is_array(x) else x, rest
    )
    return eqx.combine(batched, rest)
