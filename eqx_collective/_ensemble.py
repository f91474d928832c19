"""Stacked ensembles: their recorded axes, and splitting, sizing, stacking, indexing,
selecting and sharding them.

An ensemble knows it is one: each batched state records the sizes of the ensemble axes
that lead its arrays (`State.ensemble_shape`), so shapes never decide. A tree without
any state (plain Equinox modules) has nowhere to hold a record; there the leading axis
is the ensemble axis, as in Equinox's own recipes.
"""

import operator
from collections.abc import Sequence
from typing import Any, NamedTuple, TypeVar

import equinox as eqx
import jax
import jax.core
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
from jax.extend.core import find_top_trace
from jaxtyping import ArrayLike, Bool, Int, PyTree

from ._checks import positive_int
from ._fields import field, replace_fields
from ._paths import is_state, iter_leaves, Path, path_repr
from ._state import array_leaves, is_shared, member_ranks, State
from ._walk import iter_states, map_states


T = TypeVar("T")

_BUILD = (
    "Build ensembles with `make_ensemble`, `stack` or `vmap_init_all_states(model, "
    "axis_size=...)`, or adopt one built by hand with `as_ensemble(tree, size)`."
)


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


# ------------------------------------------------------------------- the record
#
# A state records its ensemble axes (`ensemble_shape`, outermost first) and the rank of
# its array leaves in one member (`member_ranks`). Both are static, so JAX's transforms
# leave them as they were: inside `eqx.filter_vmap`, `jax.vmap` or `jax.lax.scan` over
# the members, the record still names the axes the transform mapped away. The rank an
# array has *there*, less the member's rank, is the number of levels still present: the
# innermost ones, since every transform maps the leading axis. The leading sizes are
# then checked against those levels. (A shape check alone could not tell: a batch of 4
# inside a 4-member vmap looks like the ensemble.)


class View(NamedTuple):
    """The ensemble levels of a tree, read from its record against the arrays the
    caller actually holds."""

    mapped: tuple[int, ...]  # outer levels a transform has mapped away
    present: tuple[int, ...]  # levels the arrays still carry, outermost first
    field: Any  # the recorded `ensemble_sharding` (of the outermost recorded level)

    @property
    def sharding(self) -> Any:
        """The placement of the outermost present level (none inside a transform)."""
        return None if self.mapped else self.field

    def kept(self, present: tuple[int, ...], sharding: Any = None) -> "View":
        """This view with other present levels: the recorded placement is kept inside
        a transform (it is the mapped level's), else `sharding` is the new one."""
        return View(self.mapped, present, self.field if self.mapped else sharding)


def _levels(path: Path, s: State) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
    """`(mapped, present)` for one batched state; `None` if it holds no array (a
    placeholder left by `partition`), which tells nothing."""
    shape = s.ensemble_shape
    if not shape:
        return (), ()
    leaves = array_leaves(s.value)
    if not leaves:
        return None
    ranks, n = s.member_ranks, len(shape)
    if ranks is None:  # made by a subclass's own `__init__`: it holds every level
        seen = n
    elif len(ranks) != len(leaves):
        raise ValueError(
            f"The state at path {path_repr(path)} records {len(ranks)} array leaves "
            f"per member but holds {len(leaves)}: its value was replaced by one of "
            "another structure, which its ensemble record does not describe. " + _BUILD
        )
    else:
        seen = {len(x.shape) - r for x, r in zip(leaves, ranks, strict=True)}
        seen = seen.pop() if len(seen) == 1 else -1
        if not 0 <= seen <= n:
            raise ValueError(_no_level(path, s, leaves, None))
        if seen < n and _at_top_level():  # no transform runs: none mapped an axis
            raise ValueError(_no_level(path, s, leaves, n))
    present = shape[n - seen :]
    for x in leaves:
        if tuple(x.shape[:seen]) != present:
            raise ValueError(_no_level(path, s, leaves, seen))
    return shape[: n - seen], present


def _at_top_level() -> bool:
    """Whether no JAX transform is running (JAX's current trace is its eval trace).
    Checked only when a state shows fewer levels than it records, with public APIs:
    arrays made inside `jax.vmap` from constants are concrete, so the arrays alone
    cannot tell."""
    with jax.core.eval_context():
        top = find_top_trace(())
    return find_top_trace(()) is top


def _no_level(path: Path, s: State, leaves: list, seen: int | None) -> str:
    shapes = [tuple(x.shape) for x in leaves]
    shape = s.ensemble_shape
    lead = shape[len(shape) - seen] if seen else None
    return (
        f"The state at path {path_repr(path)} records ensemble axes {shape} over "
        f"members whose arrays have ranks {s.member_ranks}, but holds arrays of shapes "
        f"{shapes}"
        + (
            f", so it does not lead with an ensemble axis of {lead}"
            if lead is not None
            else ", which match no number of its ensemble levels"
        )
        + ". Its record and its arrays disagree: its value was changed outside the "
        "operations that keep them in step, or a transform mapped an axis other than "
        "the leading (ensemble) one. " + _BUILD
    )


def view(tree: PyTree, states: list | None = None) -> View | None:
    """The ensemble levels of `tree` as its batched states record them, or `None` if it
    holds no batched state. Refuses states whose records disagree. `states`: the
    tree's `iter_states(tree, views=False)`, when the caller has walked it already."""
    found, fresh, blind = None, None, None
    for path, s in iter_states(tree, views=False) if states is None else states:
        if not field(s, "ensemble_shape"):  # (most states: read without `getattr`)
            if fresh is None and not is_shared(s):
                fresh = path
            continue
        if is_shared(s):
            continue
        levels = _levels(path, s)
        if levels is None:
            blind = blind or View((), s.ensemble_shape, s.ensemble_sharding)
        elif found is None:
            found = (path, View(*levels, s.ensemble_sharding))
        elif levels != found[1][:2]:
            raise ValueError(_mixed(found[0], found[1], path, View(*levels, None)))
    if found is None:
        return View((), (), None) if fresh is not None else blind
    if fresh is not None and found[1].present:
        raise ValueError(_mixed(found[0], found[1], fresh, View((), (), None)))
    return found[1]


def _mixed(p0: Path, v0: View, p1: Path, v1: View) -> str:
    def say(v):
        seen = f"ensemble axes {v.present}" if v.present else "no ensemble axis"
        return seen + (f" (of {v.mapped + v.present})" if v.mapped else "")

    return (
        f"The state at path {path_repr(p0)} has {say(v0)} but the one at "
        f"{path_repr(p1)} has {say(v1)}: the tree mixes members of different "
        "ensembles, or a state was made without the ensemble's record. " + _BUILD
    )


def rewrite(tree: T, at: View) -> T:
    """`tree` with the record `at` written on its batched states: ensemble axes
    `at.mapped + at.present`, each member's ranks read from the arrays (which carry
    `at.present`), placement `at.field`. A state already so recorded is kept as is."""
    shape, n = at.mapped + at.present, len(at.present)

    def one(path, s):
        if is_shared(s):
            return s
        if not shape:
            ranks = None
        elif array_leaves(s.value):
            ranks = member_ranks(s.value, n)
        else:  # a placeholder: a member's ranks do not change with the levels
            ranks = s.member_ranks
        field = at.field if shape else None
        if (s.ensemble_shape, s.member_ranks, s.ensemble_sharding) == (
            shape, ranks, field):  # fmt: skip
            return s
        return replace_fields(
            s, ensemble_shape=shape, member_ranks=ranks, ensemble_sharding=field
        )

    return map_states(one, tree, views=False)


def single_view(
    tree: PyTree, op: str, instead: str, states: list | None = None
) -> View | None:
    """The view of a tree given to `op`, which runs on one model: refuses an ensemble,
    naming `instead`. Inside a transform over the members, a member is one model.
    `states` as for `view`."""
    at = view(tree, states)
    if at is not None and at.present:
        raise ValueError(
            f"`{op}` got {_an_ensemble(at)}, but it runs on one model. Use {instead}, "
            "or call it per member inside `eqx.filter_vmap` (with "
            "`in_axes=ec.ensemble_in_axes(ensemble)`)."
        )
    return at


def _an_ensemble(at: View) -> str:
    if len(at.present) == 1:
        return f"an ensemble of {at.present[0]} members"
    return f"an ensemble of ensembles with axes {at.present}"


def check_single_call(state: State | None, layer: str) -> None:
    """Refuses to call a layer whose `state` carries ensemble axes: a layer's call runs
    one model. Cheap enough for every forward call (it reads one state)."""
    if state is None or not state.ensemble_shape:
        return
    levels = _levels((), state)
    if levels is not None and levels[1]:
        raise ValueError(
            f"`{layer}` was called on {_an_ensemble(View((), levels[1], None))}, but a "
            "layer's call runs one model. Call it per member with `eqx.filter_vmap` "
            "(with `in_axes=ec.ensemble_in_axes(ensemble)`), or take one member with "
            "`ec.member`."
        )


def ensemble_shape(tree: PyTree) -> tuple[int, ...]:
    """The sizes of the ensemble axes of `tree`, outermost first: `()` for a single
    model, `(8,)` for an ensemble of 8, `(4, 8)` for 4 ensembles of 8 members.

    A tree holding states reads the record its states keep (see
    [`eqx_collective.State`][]); a tree without any state (plain Equinox modules) has
    one ensemble axis if all its arrays share a leading size, and none otherwise.

    Inside `eqx.filter_vmap`, `jax.vmap` or `jax.lax.scan` over the members, the answer
    is about what the function sees: `()` for a member, the inner axes for a member of
    an ensemble of ensembles.

    **Raises:** `ValueError` if the states' records disagree.
    """
    at = view(tree)
    if at is not None:
        return at.present
    if iter_states(tree, views=False):  # only shared states: nothing is batched
        return ()
    try:
        return (_leading_size(split_members(tree)[0]),)
    except ValueError:
        return ()


def ensemble_size(ensemble: PyTree) -> int:
    """The number of members of a stacked ensemble (its outermost ensemble axis).

    **Raises:** `ValueError` if `ensemble` is not one: its states record no ensemble
    axis (shapes never decide, so a single `nn.Linear(4, 4)` is not an ensemble of 4),
    or, for a tree without states, its arrays do not share a leading size.
    """
    return ensemble_view(ensemble, "ensemble_size").present[0]


def ensemble_view(tree: PyTree, op: str) -> View:
    """The view of a tree given to `op`, which needs an ensemble: refuses a single
    model (a member seen inside a transform over the members is one)."""
    at = view(tree)
    if at is None:
        if iter_states(tree, views=False):
            raise ValueError(
                f"`{op}`: this model holds only shared states, so it has no ensemble "
                "axis."
            )
        return View((), (_leading_size(split_members(tree)[0]),), None)
    if at.present:
        return at
    if at.mapped:
        raise ValueError(
            f"`{op}`: this is one member of an ensemble with axes {at.mapped}, seen "
            "inside a transform that maps the ensemble axis (`eqx.filter_vmap`, "
            "`jax.vmap`, `jax.lax.scan`): here its arrays carry no ensemble axis, so it "
            f"is a single model. Call `{op}` on the ensemble outside the transform."
        )
    raise ValueError(
        f"`{op}`: this model is not an ensemble: its states record no ensemble "
        "axis (shapes never decide, so a single model whose arrays happen to "
        "share a leading size is not taken for one). " + _BUILD
    )


def _leading_size(batched: PyTree) -> int:
    """The common leading size of the arrays of a tree without states."""
    shapes = [(p, jnp.shape(x)) for p, x in iter_leaves(batched)]
    if not shapes:
        raise ValueError(
            "This is not a stacked ensemble: it holds no array outside shared states, "
            "so it has no ensemble axis. " + _BUILD
        )
    p0, s0 = shapes[0]
    for p, s in shapes:
        if not s:
            raise ValueError(
                f"This is not a stacked ensemble: the array at path {path_repr(p)} is a "
                "scalar, so it has no leading ensemble axis. " + _BUILD
            )
        if s[0] != s0[0]:
            raise ValueError(
                f"This is not a stacked ensemble: the array at path {path_repr(p0)} "
                f"has leading axis {s0[0]} but the one at {path_repr(p)} has {s[0]}. "
                + _BUILD
            )
    return s0[0]


def as_ensemble(tree: T, size: int) -> T:
    """Adopts an ensemble built by hand (for example with `eqx.filter_vmap` over a
    constructor): checks that every batched array leads with an axis of `size`, and
    records that axis on its states, so that the ensemble operations take it for one.

    **Arguments:**

    - `tree`: the stacked models.
    - `size`: the number of members.

    **Returns:** `tree`, its states recording the new outer ensemble axis.

    **Raises:** `ValueError` naming the first array without that leading axis.

    !!! Example

        ```python
        keys = jax.random.split(jax.random.key(0), 8)
        cells = eqx.filter_vmap(lambda k: nn.GRUCell(2, 4, key=k))(keys)
        cells = ec.as_ensemble(cells, 8)
        ```
    """
    size = positive_int(size, "size", "as_ensemble")
    at = view(tree) or View((), (), None)
    check_leading(split_members(tree)[0], size, "as_ensemble")
    return rewrite(tree, at.kept((size, *at.present)))


def check_leading(batched: PyTree, size: int, op: str) -> None:
    """Refuses batched arrays that do not lead with an ensemble axis of `size`."""
    for path, x in iter_leaves(batched):
        if jnp.ndim(x) == 0 or jnp.shape(x)[0] != size:
            raise ValueError(
                f"`{op}`: the array at path {path_repr(path)} has shape "
                f"{jnp.shape(x)}, so it does not lead with an ensemble axis of {size}, "
                "as every array outside shared states must. Build ensembles with "
                "`make_ensemble`, `stack` or `vmap_init_all_states`, which keep the "
                "record and the arrays in step."
            )


# ------------------------------------------------------------------ members


def _index(index: Any, size: int, op: str) -> Any:
    """A checked member index: an `int` in range, or a traced integer scalar."""
    if isinstance(index, (bool, np.bool_)) or (
        isinstance(index, jax.Array) and index.dtype == jnp.bool_
    ):
        raise TypeError(
            f"`{op}` takes an integer index, but got the boolean {index!r}."
        )
    if isinstance(index, jax.core.Tracer):
        if index.ndim != 0 or not jnp.issubdtype(index.dtype, jnp.integer):
            raise TypeError(
                f"`{op}` takes an integer scalar index, but got a traced {index.dtype} "
                f"array of shape {index.shape}."
            )
        return index
    try:
        number = operator.index(index)
    except TypeError:
        raise TypeError(
            f"`{op}` takes an integer index (Python, NumPy or JAX), but got "
            f"{type(index).__name__} {index!r:.60}."
        ) from None
    if not -size <= number < size:
        raise IndexError(
            f"`{op}`: index {number} is out of range for an ensemble of {size} members."
        )
    return number % size


def member(ensemble: T, index: int | Int[ArrayLike, ""]) -> T:
    """Member `index` of a stacked ensemble, as a single model (shared states are
    kept as they are; a nested ensemble gives an ensemble of its inner level).
    Negative indices count from the end.

    **Arguments:**

    - `ensemble`: a stacked ensemble.
    - `index`: a Python, NumPy or JAX integer (`np.argmin(losses)` works), or a traced
        integer scalar under `jax.jit`.

    **Returns:** the member.

    **Raises:** `TypeError` for an index that is not an integer (`True` is not);
    `IndexError` for one out of range; `ValueError` if `ensemble` is not an ensemble.
    """
    at = ensemble_view(ensemble, "member")
    index = _index(index, at.present[0], "member")
    batched, rest = split_members(ensemble)
    one = eqx.combine(jtu.tree_map(lambda x: x[index], batched), rest)
    return rewrite(one, at.kept(at.present[1:]))


def unstack(ensemble: T) -> list[T]:
    """The members of a stacked ensemble, as a list of single models (of ensembles
    of the inner level, for a nested one). The inverse of [`eqx_collective.stack`][].

    **Raises:** `ValueError` if `ensemble` is not an ensemble.
    """
    at = ensemble_view(ensemble, "unstack")
    batched, rest = split_members(ensemble)
    inner = at.kept(at.present[1:])
    return [
        rewrite(eqx.combine(jtu.tree_map(lambda x: x[i], batched), rest), inner)
        for i in range(at.present[0])
    ]


def stack(models: Sequence[T]) -> T:
    """Stacks models of one structure into an ensemble: every array gains a leading
    axis `len(models)`, except those in shared states, which are taken from the first
    model; the new axis is recorded. Stacking ensembles gives a nested ensemble. The
    inverse of [`eqx_collective.unstack`][].

    **Raises:** `ValueError` for an empty sequence or models of different structure
    (naming the first model that differs).
    """
    models = list(models)
    if not models:
        raise ValueError("`stack` needs at least one model.")
    parts = [split_members(m) for m in models]
    batched0, rest0 = parts[0]
    signature = _signature(batched0, rest0)
    for i, (b, r) in enumerate(parts[1:], start=1):
        if _signature(b, r) != signature:
            raise ValueError(
                f"`stack`: model {i} does not have the structure, shapes, dtypes and "
                "ensemble record of model 0; only models of one structure can be "
                "stacked."
            )
    at = view(models[0]) or View((), (), None)
    batched = jtu.tree_map(lambda *xs: jnp.stack(xs), *(b for b, _ in parts))
    return rewrite(eqx.combine(batched, rest0), at.kept((len(models), *at.present)))


def _signature(batched: PyTree, rest: PyTree) -> tuple:
    leaves, treedef = jtu.tree_flatten(batched)
    arrays = [(jnp.shape(x), jnp.result_type(x)) for x in leaves]
    return treedef, jtu.tree_structure(rest), arrays


def take_members(ensemble: T, indices: Int[ArrayLike, " k"]) -> T:
    """The ensemble of the members at `indices`, in that order (repeats allowed):
    `take_members(ens, jnp.argsort(losses)[:4])` keeps the four best. Works under
    `jax.jit` with traced indices (their number is static).

    **Arguments:**

    - `ensemble`: a stacked ensemble.
    - `indices`: a 1-D integer array or sequence; negative entries count from the end.

    **Returns:** an ensemble of `len(indices)` members, recorded as such.
    """
    at = ensemble_view(ensemble, "take_members")
    size = at.present[0]
    indices = jnp.asarray(indices)
    if indices.ndim != 1 or not jnp.issubdtype(indices.dtype, jnp.integer):
        raise TypeError(
            "`take_members` takes a 1-D array of integer indices, but got a "
            f"{indices.dtype} array of shape {indices.shape}."
        )
    if not isinstance(indices, jax.core.Tracer) and indices.size:
        if int(indices.min()) < -size or int(indices.max()) >= size:
            raise IndexError(
                f"`take_members`: indices {np.asarray(indices).tolist()} are out of "
                f"range for an ensemble of {size} members."
            )
    batched, rest = split_members(ensemble)
    picked = eqx.combine(jtu.tree_map(lambda x: x[indices], batched), rest)
    picked = rewrite(picked, at.kept((len(indices), *at.present[1:]), at.field))
    return place(picked, at.sharding)


def where_members(mask: Bool[ArrayLike, " members"], on_true: T, on_false: T) -> T:
    """Chooses member by member between two ensembles of one structure: member `i` of
    the result is member `i` of `on_true` where `mask[i]`, else of `on_false`.
    Jittable; shared states are taken from `on_true`. For example, keep the members
    whose new loss improved: `where_members(new_loss < loss, new, old)`.

    **Raises:** `ValueError` if the two are not ensembles of one structure and size, or
    `mask` is not a boolean vector of that size.
    """
    size = ensemble_view(on_true, "where_members").present[0]
    mask = jnp.asarray(mask)
    if mask.shape != (size,) or mask.dtype != jnp.bool_:
        raise ValueError(
            f"`where_members` takes a boolean mask of shape ({size},), one entry per "
            f"member, but got a {mask.dtype} array of shape {mask.shape}."
        )
    (b_true, rest), (b_false, rest_false) = map(split_members, (on_true, on_false))
    if _signature(b_true, rest) != _signature(b_false, rest_false):
        raise ValueError(
            "`where_members`: `on_true` and `on_false` must be ensembles of one "
            "structure, shapes, dtypes and ensemble record."
        )

    def choose(a, b):
        return jnp.where(mask.reshape((size,) + (1,) * (a.ndim - 1)), a, b)

    return eqx.combine(jtu.tree_map(choose, b_true, b_false), rest)


# ----------------------------------------------------------------- sharding


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
    ensemble_view(ensemble, "ensemble_in_axes")
    return jtu.tree_map(
        lambda x: None if _is_shared_state(x) else eqx.if_array(0),
        ensemble,
        is_leaf=is_state,
    )


def present_axes(path: Path, s: State) -> tuple[int, ...]:
    """The ensemble axes of `s` that its arrays hold where the function runs: all its
    record's outside a transform, the inner ones inside a transform over members."""
    levels = _levels(path, s)
    return tuple(s.ensemble_shape) if levels is None else levels[1]


def recorded_sharding(path: Path, s: State) -> Any:
    """The sharding a restore places `s`'s new value by: the one its record holds,
    unless a transform mapped ensemble levels away (the function sees members, which
    that sharding does not describe: placement is then the transform's)."""
    sharding = field(s, "ensemble_sharding")  # (per restored state: read directly)
    if sharding is None:
        return None
    levels = _levels(path, s)
    return sharding if levels is None or not levels[0] else None


def place(tree: T, sharding: Any) -> T:
    """`tree` with its batched arrays placed by `sharding` (a no-op for `None`):
    `jax.device_put` eagerly, `jax.lax.with_sharding_constraint` under tracing."""
    if sharding is None:
        return tree

    def one(x):
        if isinstance(x, jax.core.Tracer):
            return jax.lax.with_sharding_constraint(x, sharding)
        return jax.device_put(x, sharding)

    batched, rest = split_members(tree)
    return eqx.combine(jtu.tree_map(one, batched), rest)


def _placed_as(tree: T, sharding: Any) -> T:
    """`tree` placed by `sharding`, which its batched states record (`None`: as is)."""
    if sharding is None:
        return tree
    tree = map_states(
        lambda p, s: (
            s if is_shared(s) else replace_fields(s, ensemble_sharding=sharding)
        ),
        tree,
        views=False,
    )
    return place(tree, sharding)


def shard_ensemble(
    ensemble: T,
    mesh: jax.sharding.Mesh | None = None,
    *,
    axis_name: str = "ensemble",
) -> T:
    """Places the ensemble axis across devices with `jax.sharding`: every batched array
    is split along its leading axis over the mesh axis `axis_name`; shared states are
    replicated on every device. The placement is recorded on the states, so every
    ensemble operation ([`eqx_collective.vmap_reset_all_states`][] and the other vmap
    variants, [`eqx_collective.assign_state_values`][], `load_states`,
    [`eqx_collective.take_members`][]) returns its arrays placed the same way, eagerly
    and under `jit`. Computations on the result (`eqx.filter_vmap` under
    `eqx.filter_jit`) run each device's members there.

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
    at = ensemble_view(ensemble, "shard_ensemble")
    if at.mapped:
        raise ValueError(
            "`shard_ensemble` places an ensemble's arrays on devices, so it runs "
            "outside the transforms that map its members (`eqx.filter_vmap`, "
            "`jax.vmap`, `jax.lax.scan`); call it on the whole ensemble."
        )
    size, devices = at.present[0], mesh.shape[axis_name]
    if size % devices:
        raise ValueError(
            f"`shard_ensemble`: an ensemble of {size} members cannot be split evenly "
            f"over {devices} devices. Use an ensemble size that is a multiple of "
            f"{devices}, or a mesh with a number of devices that divides {size}."
        )
    P = jax.sharding.PartitionSpec
    split = jax.sharding.NamedSharding(mesh, P(axis_name))
    replicated = jax.sharding.NamedSharding(mesh, P())
    batched, rest = split_members(ensemble)
    rest = jtu.tree_map(
        lambda x: jax.device_put(x, replicated) if eqx.is_array(x) else x, rest
    )
    return _placed_as(eqx.combine(batched, rest), split)
