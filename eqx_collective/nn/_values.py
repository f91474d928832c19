"""Making layer values: sizes (`as_size`), initial values (`make_value`) and units
(`attach_unit`, `strip_unit`)."""

from collections.abc import Callable
from typing import Any

import brainunit as u
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, DTypeLike, PRNGKeyArray

from .._checks import positive_int


def default_float_dtype() -> jnp.dtype:
    """JAX's default floating dtype: `float32`, or `float64` with `jax_enable_x64`."""
    return jax.dtypes.canonicalize_dtype(jnp.float64)


def as_size(size: Any, what: str, where: str) -> int:
    """A layer size given as a positive integer or a 1-tuple, as an `int`.

    **Raises:** `ValueError` for a sequence that is not of length 1; otherwise as
    `eqx_collective._checks.positive_int`.
    """
    value = size
    if isinstance(value, (tuple, list)):
        if len(value) != 1:
            raise ValueError(
                f"`{where}` takes `{what}` as an int or a 1-tuple such as `(16,)`, but "
                f"got {size!r}."
            )
        (value,) = value
    return positive_int(value, what, where)


def make_value(
    init: Callable | ArrayLike | u.Quantity,
    shape: tuple[int, ...],
    key: PRNGKeyArray | None,
    dtype: DTypeLike | None,
    what: str,
) -> Array | u.Quantity:
    """`init(shape, key=key, dtype=dtype)` for a callable `init`, else `init` itself as
    an array (or `Quantity`) of exactly `shape`.

    **Raises:** `ValueError` if the value does not have shape `shape` (`what` names it).
    """
    if callable(init):
        value = init(shape, key=key, dtype=dtype)
    elif isinstance(init, u.Quantity):
        value = init if dtype is None else init.astype(dtype)
    else:
        value = jnp.asarray(init, dtype)
    if tuple(jnp.shape(value)) != tuple(shape):
        raise ValueError(
            f"The {what} must have shape {tuple(shape)}, but the initialiser gave "
            f"shape {tuple(jnp.shape(value))}."
        )
    return value


def attach_unit(value: Array, unit: u.Unit) -> Array | u.Quantity:
    """`value` as a `brainunit.Quantity` in `unit`, or as a plain array when `unit` is
    dimensionless (a scaled dimensionless unit is folded into the numbers)."""
    if unit.is_unitless:
        return value
    return u.maybe_decimal(u.Quantity(value, unit=unit))


def strip_unit(value: Array | u.Quantity) -> tuple[Array, u.Unit]:
    """The numbers of `value` in its own unit, and that unit (the inverse of
    `attach_unit`)."""
    if isinstance(value, u.Quantity):
        return value.mantissa, value.unit
    return value, u.UNITLESS
