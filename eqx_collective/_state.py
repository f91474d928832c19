"""The state model: `State` and the brainstate-compatible subclasses."""

from typing import Any

import brainunit as u
import equinox as eqx
import jax.tree_util as jtu
import wadler_lindig as wl
from jaxtyping import PyTree

from ._fields import field


class _ShortQuantity:
    """Prints a `brainunit.Quantity` as `Quantity(f32[2,16], 'mV')`, its array
    abbreviated like any other by `eqx.tree_pformat`."""

    def __init__(self, quantity: u.Quantity):
        self.quantity = quantity

    def __pdoc__(self, **kwargs) -> wl.AbstractDoc:
        mantissa = wl.pdoc(self.quantity.mantissa, **kwargs)
        return (
            wl.TextDoc("Quantity(")
            + mantissa
            + wl.TextDoc(f", '{self.quantity.unit}')")
        )


class State(eqx.Module):
    """A leaf of the *state view*: a module field whose value collective operations
    initialise, reset, batch and restore.

    A `State` wraps one pytree `value` (an array, a dict of arrays, a
    `brainunit.Quantity`, ...). It is an immutable Equinox module, so replacing its value
    returns a new state: `eqx.tree_at(lambda m: m.h.value, model, new_h)`.

    **Arguments:**

    - `value`: the pytree held by this state.
    - `tag`: an optional string; a string filter (see [`eqx_collective.states`][]) selects
        the states with that tag.
    - `shared`: whether the vmap variants share this state between the members of an
        ensemble instead of giving it a leading ensemble axis. Usually set for you by
        [`eqx_collective.vmap_init_all_states`][] from its `state_to_exclude` filter.
        [`eqx_collective.NonBatchState`][] is always shared.
    - `ensemble_shape`: the sizes of the ensemble axes that lead every array of
        `value`, outermost first: `()` for a single model, `(8,)` in an ensemble of 8,
        `(4, 8)` in 4 ensembles of 8. Written by the operations that build ensembles
        ([`eqx_collective.make_ensemble`][], [`eqx_collective.stack`][],
        [`eqx_collective.vmap_init_all_states`][], [`eqx_collective.as_ensemble`][]),
        and read by every ensemble operation: an ensemble is never guessed from
        shapes. A shared state records nothing (it has no ensemble axis).
    - `member_ranks`: the rank (`ndim`) of each array leaf of `value` in **one
        member**, in leaf order; `None` for a single model. Filled in from `value`
        when a state is made with an `ensemble_shape` (the arrays then carry every
        ensemble axis). Static fields are not updated by JAX's transforms, so inside
        `eqx.filter_vmap`, `jax.vmap` or `jax.lax.scan` over the members the
        `ensemble_shape` still names the mapped axes; comparing the rank the arrays
        have there with the member's rank tells how many ensemble levels are still
        present (the innermost ones), so the operations answer for what the function
        actually sees. See [Ensembles](../concepts/ensembles.md).
    - `ensemble_sharding`: the `jax.sharding.NamedSharding` of the outermost ensemble
        axis, recorded by [`eqx_collective.shard_ensemble`][], so that every ensemble
        operation returns its arrays placed the same way, eagerly and under `jit`.

    !!! Example

        ```python
        import jax.numpy as jnp
        import eqx_collective as ec

        h = ec.HiddenState(jnp.zeros(16))
        print(h.value.shape)  # (16,)
        ```
    """

    value: PyTree[Any]
    tag: str | None = eqx.field(default=None, static=True, kw_only=True)
    shared: bool = eqx.field(default=False, static=True, kw_only=True)
    ensemble_shape: tuple[int, ...] = eqx.field(default=(), static=True, kw_only=True)
    member_ranks: tuple[int, ...] | None = eqx.field(
        default=None, static=True, kw_only=True
    )
    ensemble_sharding: Any = eqx.field(default=None, static=True, kw_only=True)

    def __post_init__(self):
        # A state made with an ensemble record holds every ensemble axis: the rank of
        # one member is what the record needs to read the arrays under a transform.
        if self.ensemble_shape and self.member_ranks is None:
            self.member_ranks = member_ranks(self.value, len(self.ensemble_shape))

    def __check_init__(self):
        if self.tag is not None and not isinstance(self.tag, str):
            raise TypeError(
                f"A state's `tag` must be a string or `None`, but got "
                f"{type(self.tag).__name__} {self.tag!r}."
            )
        if not isinstance(self.shared, bool):
            raise TypeError(
                f"A state's `shared` flag must be a bool, but got {self.shared!r}."
            )
        shape = self.ensemble_shape
        if not isinstance(shape, tuple) or not all(
            type(n) is int and n > 0 for n in shape
        ):
            raise TypeError(
                "A state's `ensemble_shape` must be a tuple of positive `int`s, but got "
                f"{shape!r}."
            )
        if self.shared and shape:
            raise ValueError(
                "A shared state has no ensemble axis, so its `ensemble_shape` must be "
                f"`()`, but got {shape!r}."
            )
        ranks = self.member_ranks
        if ranks is not None and not (
            shape
            and isinstance(ranks, tuple)
            and all(type(n) is int and n >= 0 for n in ranks)
        ):
            raise ValueError(
                "A state's `member_ranks` must be `None` for a single model, or a tuple "
                "of non-negative `int`s (one per array leaf of the value, in one member) "
                f"for a member of an ensemble, but got {ranks!r} with `ensemble_shape` "
                f"{shape!r}. Leave it out: it is filled in from the value."
            )

    def __pdoc__(self, **kwargs) -> wl.AbstractDoc:
        value = jtu.tree_map(
            lambda x: _ShortQuantity(x) if isinstance(x, u.Quantity) else x,
            self.value,
            is_leaf=lambda x: isinstance(x, u.Quantity),
        )
        fields = [("value", value)]
        fields += [("tag", self.tag)] if self.tag is not None else []
        fields += [("shared", True)] if self.shared else []
        if self.ensemble_shape:
            fields += [("ensemble_shape", self.ensemble_shape)]
        return wl.bracketed(
            begin=wl.TextDoc(f"{type(self).__name__}("),
            docs=wl.named_objs(fields, **kwargs),
            sep=wl.comma,
            end=wl.TextDoc(")"),
            indent=kwargs.get("indent", 2),
        )


class ShortTermState(State):
    """A state that lives for one episode or sequence (hidden states, buffers). Reset
    between sequences by [`eqx_collective.reset_all_states`][]."""


class LongTermState(State):
    """A state that persists across episodes (parameters, running statistics)."""


class ParamState(LongTermState):
    """A trainable parameter. Select parameters for gradients with
    `eqx_collective.partition(model, ParamState)`."""


class HiddenState(ShortTermState):
    """The hidden state of a recurrent or dynamical layer."""


class NonBatchState(ShortTermState):
    """A state that the vmap variants never batch: an ensemble has one copy of it,
    shared by every member, whatever `state_to_exclude` says. (brainstate's
    `NonBatchState`.)"""


def array_leaves(value: Any) -> list:
    """The leaves of a state's value that have a shape (arrays, tracers, NumPy arrays,
    `jax.ShapeDtypeStruct`s), in leaf order: the ones an ensemble axis leads."""
    return [x for x in jtu.tree_leaves(value) if hasattr(x, "shape")]


def member_ranks(value: Any, levels: int) -> tuple[int, ...]:
    """The rank of each array leaf of `value` without its `levels` ensemble axes.

    **Raises:** `ValueError` if a leaf has fewer than `levels` axes."""
    ranks = tuple(len(x.shape) - levels for x in array_leaves(value))
    if any(n < 0 for n in ranks):
        raise ValueError(
            f"A state recording {levels} ensemble axes holds an array of rank "
            f"{min(ranks) + levels}, which cannot carry them. Build ensembles with "
            "`make_ensemble`, `stack` or `vmap_init_all_states`, or adopt one with "
            "`as_ensemble`, which keep the record and the arrays in step."
        )
    return ranks


def is_shared(state: State) -> bool:
    """Whether `state` is shared between the members of an ensemble (not batched)."""
    # (read without Equinox's `__getattribute__`: this runs per state of a walk)
    return bool(field(state, "shared")) or issubclass(type(state), NonBatchState)
