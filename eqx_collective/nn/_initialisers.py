"""Unit-aware initialisers: `ZeroInit`, `Constant`, `Normal`, `Uniform`,
`TruncatedNormal`, the variance-scaling family and `Orthogonal`.

The random draws are `jax.nn.initializers`' own (variance scaling, truncated normal,
orthogonal) or `jax.random`'s; what this module adds is the checking of arguments, the
`brainunit` unit and a readable repr. Initialisers are hashable when their parameters
are numbers, so that layers can keep them in static fields (out of the model's
pytree: a collective call never visits them and they are never mistaken for
parameters).
"""

import abc
import math
import operator
from collections.abc import Sequence
from typing import Any, ClassVar, Literal, TypeGuard

import brainunit as u
import equinox as eqx
import jax
import jax.core
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, DTypeLike, PRNGKeyArray

from .._fields import method
from ._values import attach_unit, default_float_dtype


Shape = int | Sequence[int]
_MODES = ("fan_in", "fan_out", "fan_avg", "fan_geo_avg")
_DISTRIBUTIONS = ("truncated_normal", "normal", "uniform")


def as_shape(shape: Any, what: str = "shape") -> tuple[int, ...]:
    """Normalises an `int` or a sequence of `int`s to a tuple shape, refusing negative
    sizes."""
    if isinstance(shape, bool):
        raise TypeError(f"A {what} must be an int or a tuple of ints, not {shape!r}.")
    try:
        shape = (operator.index(shape),)
    except TypeError:
        try:
            shape = tuple(operator.index(s) for s in shape)
        except TypeError:
            raise TypeError(
                f"A {what} must be an int or a tuple of ints, but got "
                f"{type(shape).__name__} {shape!r}."
            ) from None
    if any(s < 0 for s in shape):
        raise ValueError(f"A {what} must have non-negative sizes, but got {shape}.")
    return shape


def _is_concrete_number(x: Any) -> TypeGuard[int | float | np.number]:
    return isinstance(x, (int, float, np.number)) and not isinstance(x, bool)


def _number(x: Any) -> Any:
    """A concrete real scalar (Python, NumPy or a 0-d concrete array) as a Python
    `float`, so that the initialiser stays hashable; anything else (a tracer, an
    array) as it is."""
    if isinstance(x, bool):
        return x
    if _is_concrete_number(x):
        return float(x)
    if isinstance(x, (np.ndarray, jax.Array)) and not isinstance(x, jax.core.Tracer):
        if np.ndim(x) == 0 and np.issubdtype(x.dtype, np.number):
            return float(x)
    return x


class Initialiser(eqx.Module):
    """Base class of the initialisers. An initialiser is an immutable `eqx.Module`
    called as `init(shape, *, key=None, dtype=None)`.

    Subclasses implement `_generate(shape, dtype, key) -> Array` (plain numbers) and
    set the class variable `is_random`; this base class normalises the shape, picks
    the default dtype, checks the key and attaches `unit`.

    **Arguments (common to every initialiser):**

    - `unit`: a `brainunit` unit (keyword-only, default unitless). With a unit that is
        not dimensionless, the result is a `brainunit.Quantity` in that unit; otherwise
        it is a plain JAX array. The distribution's parameters (`mean`, `scale`, ...)
        are numbers *in that unit*.
    """

    unit: u.Unit = eqx.field(default=u.UNITLESS, kw_only=True, static=True)
    is_random: ClassVar[bool] = False

    def __check_init__(self):
        if not isinstance(self.unit, u.Unit):
            raise TypeError(
                f"`{type(self).__name__}` takes a `brainunit` unit as `unit` (such as "
                f"`brainunit.mV`), but got {type(self.unit).__name__} {self.unit!r}."
            )

    def __call__(
        self,
        shape: Shape,
        *,
        key: PRNGKeyArray | None = None,
        dtype: DTypeLike | None = None,
    ) -> Array | u.Quantity:
        """Creates a value.

        **Arguments:**

        - `shape`: an `int` or a tuple of `int`s.
        - `key`: a JAX random key; required by the random initialisers, ignored by
            the deterministic ones. The same key always gives the same value.
        - `dtype`: the dtype of the numbers; default JAX's default float dtype.

        **Returns:** a JAX array of shape `shape`, or a `brainunit.Quantity` if `unit`
        has a physical dimension.
        """
        name = type(self).__name__
        shape = as_shape(shape, f"shape passed to `{name}`")
        dtype = default_float_dtype() if dtype is None else jnp.dtype(dtype)
        if self.is_random:
            if key is None:
                raise ValueError(
                    f"`{name}` is a random initialiser and needs a random `key`, but "
                    f"got `key=None`. Call it as `{name}(...)(shape, "
                    "key=jax.random.key(0))`, or pass `key=...` to the layer or to "
                    "`init_all_states` / `reset_all_states`."
                )
            if not jnp.issubdtype(dtype, jnp.floating):
                raise TypeError(
                    f"`{name}` draws random floating-point numbers, so its `dtype` "
                    f"must be a floating dtype, but got {dtype}."
                )
        return attach_unit(method(self, "_generate")(shape, dtype, key), self.unit)

    @abc.abstractmethod
    def _generate(self, shape: tuple[int, ...], dtype: Any, key: Any) -> Array:
        """The values as plain numbers. `key`: a JAX random key when `is_random`,
        else whatever the caller gave (possibly `None`)."""


class ZeroInit(Initialiser):
    """Fills with zeros.

    **Arguments:**

    - `unit`: the `brainunit` unit of the result (default unitless).

    !!! Example

        ```python
        import brainunit as u
        from eqx_collective.nn import ZeroInit

        ZeroInit()((2, 3))  # zeros, f32[2,3]
        ZeroInit(unit=u.mV)(4)  # a Quantity of zeros in mV
        ```
    """

    def _generate(self, shape, dtype, key):
        return jnp.zeros(shape, dtype)


def _frozen(value: Any) -> Any:
    """A concrete array as nested tuples of Python numbers (hashable), a scalar as a
    Python number; anything else (a tracer) as it is."""
    if isinstance(value, jax.core.Tracer):
        return value
    array = np.asarray(value)
    if array.ndim == 0:
        return array.item()
    return _tuples(array.tolist())


def _tuples(x: Any) -> Any:
    return tuple(_tuples(y) for y in x) if isinstance(x, list) else x


class Constant(Initialiser):
    """Fills with a constant, broadcast to the shape.

    **Arguments:**

    - `value`: a number or array broadcastable to the requested shape (default `1.0`).
        A `brainunit.Quantity` is converted to `unit` if `unit` is given, else keeps
        its own unit. A concrete array is kept as nested tuples of numbers, so that
        the initialiser stays hashable.
    - `unit`: the `brainunit` unit of the result (default unitless).

    **Raises:** `ValueError` if a `Quantity` value cannot be expressed in `unit`.

    !!! Example

        ```python
        Constant(0.5)((3,))  # [0.5, 0.5, 0.5]
        Constant(-65.0, unit=u.mV)(4)  # a Quantity in mV
        ```
    """

    value: ArrayLike = 1.0

    def __init__(
        self, value: ArrayLike | u.Quantity = 1.0, *, unit: u.Unit = u.UNITLESS
    ):
        if isinstance(value, u.Quantity):
            if isinstance(unit, u.Unit) and unit.is_unitless:
                unit = value.unit
            try:
                value = value.to_decimal(unit)
            except u.UnitMismatchError:
                raise ValueError(
                    f"`Constant`: the value {value} cannot be expressed in the unit "
                    f"{unit}; pass a `unit` of the same dimension."
                ) from None
        self.value = _frozen(value)
        self.unit = unit

    def _generate(self, shape, dtype, key):
        value = jnp.asarray(self.value, dtype)
        if not jnp.ndim(value) <= len(shape) or (
            np.broadcast_shapes(jnp.shape(value), shape) != shape
        ):
            raise ValueError(
                f"`Constant`: the value of shape {jnp.shape(value)} cannot be "
                f"broadcast to the requested shape {shape}."
            )
        return jnp.broadcast_to(value, shape)


class Normal(Initialiser):
    """Draws from a normal distribution `N(mean, scale**2)`.

    **Arguments:**

    - `mean`: the mean (default `0.0`).
    - `scale`: the standard deviation (default `1.0`), non-negative.
    - `unit`: the `brainunit` unit of the result (default unitless).

    !!! Example

        ```python
        w = Normal(scale=0.1)((8, 16), key=jax.random.key(0))
        ```
    """

    mean: ArrayLike = eqx.field(default=0.0, converter=_number)
    scale: ArrayLike = eqx.field(default=1.0, converter=_number)
    is_random: ClassVar[bool] = True

    def __check_init__(self):
        if _is_concrete_number(self.scale) and self.scale < 0:
            raise ValueError(
                f"`Normal` needs a non-negative `scale` (standard deviation), but got "
                f"{self.scale}."
            )

    def _generate(self, shape, dtype, key):
        sample = jax.random.normal(key, shape, dtype)
        return jnp.asarray(self.mean, dtype) + jnp.asarray(self.scale, dtype) * sample


class Uniform(Initialiser):
    """Draws from the uniform distribution on `[min_val, max_val)`.

    **Arguments:**

    - `min_val`: the lower bound (default `0.0`).
    - `max_val`: the upper bound (default `1.0`), at least `min_val`.
    - `unit`: the `brainunit` unit of the result (default unitless).

    !!! Example

        ```python
        b = Uniform(-0.1, 0.1)((16,), key=jax.random.key(0))
        ```
    """

    min_val: ArrayLike = eqx.field(default=0.0, converter=_number)
    max_val: ArrayLike = eqx.field(default=1.0, converter=_number)
    is_random: ClassVar[bool] = True

    def __check_init__(self):
        if (
            _is_concrete_number(self.min_val)
            and _is_concrete_number(self.max_val)
            and self.min_val > self.max_val
        ):
            raise ValueError(
                f"`Uniform` needs `min_val <= max_val`, but got min_val={self.min_val} "
                f"and max_val={self.max_val}."
            )

    def _generate(self, shape, dtype, key):
        return jax.random.uniform(
            key,
            shape,
            dtype,
            minval=jnp.asarray(self.min_val, dtype),
            maxval=jnp.asarray(self.max_val, dtype),
        )


class TruncatedNormal(Initialiser):
    """Draws from a normal distribution `N(loc, scale**2)` truncated to
    `[loc + lower * scale, loc + upper * scale]`.

    **Arguments:**

    - `loc`: the mean of the untruncated distribution (default `0.0`).
    - `scale`: its standard deviation (default `1.0`), non-negative.
    - `lower`, `upper`: the truncation bounds in standard deviations from `loc`
        (default `-2.0` and `2.0`), `lower < upper`.
    - `unit`: the `brainunit` unit of the result (default unitless).

    !!! Example

        ```python
        w = TruncatedNormal(scale=0.02)((8, 16), key=jax.random.key(0))
        ```
    """

    loc: ArrayLike = eqx.field(default=0.0, converter=_number)
    scale: ArrayLike = eqx.field(default=1.0, converter=_number)
    lower: ArrayLike = eqx.field(default=-2.0, converter=_number)
    upper: ArrayLike = eqx.field(default=2.0, converter=_number)
    is_random: ClassVar[bool] = True

    def __check_init__(self):
        if _is_concrete_number(self.scale) and self.scale < 0:
            raise ValueError(
                f"`TruncatedNormal` needs a non-negative `scale`, but got {self.scale}."
            )
        if (
            _is_concrete_number(self.lower)
            and _is_concrete_number(self.upper)
            and not self.lower < self.upper
        ):
            raise ValueError(
                f"`TruncatedNormal` needs `lower < upper`, but got lower={self.lower} "
                f"and upper={self.upper}."
            )

    def _generate(self, shape, dtype, key):
        init = jax.nn.initializers.truncated_normal(
            self.scale, dtype, self.lower, self.upper
        )
        return jnp.asarray(self.loc, dtype) + init(key, shape, dtype)


def compute_fans(
    shape: tuple[int, ...], in_axis: int = -2, out_axis: int = -1
) -> tuple[float, float]:
    """`(fan_in, fan_out)` of a weight of shape `shape`, as
    `jax.nn.initializers.variance_scaling` computes them: `shape[in_axis]` and
    `shape[out_axis]`, each times the *receptive field size* (the product of the other
    axes). For a Linear weight of shape `(in, out)` that is `(in, out)`."""
    ndim = len(shape)
    if ndim < 2:
        raise ValueError(
            f"Variance-scaling initialisers compute fan-in and fan-out from a weight of "
            f"at least 2 dimensions, but got shape {shape}. Use them for weights "
            "(`w_init`), and e.g. `ZeroInit()` or `Normal(...)` for biases and states."
        )
    axes = []
    for name, axis in (("in_axis", in_axis), ("out_axis", out_axis)):
        if not -ndim <= axis < ndim:
            raise ValueError(
                f"`{name}={axis}` is out of range for a weight of shape {shape}."
            )
        axes.append(axis % ndim)
    if axes[0] == axes[1]:
        raise ValueError(
            f"`in_axis` and `out_axis` must be different axes, but both are {axes[0]}."
        )
    receptive = math.prod(s for i, s in enumerate(shape) if i not in axes)
    return float(shape[axes[0]] * receptive), float(shape[axes[1]] * receptive)


class VarianceScaling(Initialiser):
    """Draws with a variance of `scale / n`, where `n` is the fan-in, the fan-out, their
    mean or their geometric mean (`mode`), as `jax.nn.initializers.variance_scaling`
    does; with the same key it gives the same numbers.

    **Arguments:**

    - `scale`: a positive scaling factor (default `1.0`).
    - `mode`: `'fan_in'`, `'fan_out'`, `'fan_avg'` or `'fan_geo_avg'`.
    - `distribution`: `'truncated_normal'` (a normal truncated to two standard
        deviations, rescaled to the target variance), `'normal'` or `'uniform'`.
    - `in_axis`, `out_axis`: the axes of the input and output sizes (default `-2`,
        `-1`: a `(in, out)` weight, the layout of [`eqx_collective.nn.Linear`][]).
    - `unit`: the `brainunit` unit of the result (default unitless).

    The weight must have at least two dimensions (else `ValueError`).

    !!! Example

        ```python
        init = VarianceScaling(2.0, "fan_in", "normal")  # He / Kaiming normal
        w = init((64, 32), key=jax.random.key(0))  # var(w) ~ 2 / 64
        ```
    """

    scale: float = 1.0
    mode: Literal["fan_in", "fan_out", "fan_avg", "fan_geo_avg"] = "fan_in"
    distribution: Literal["truncated_normal", "normal", "uniform"] = "truncated_normal"
    in_axis: int = -2
    out_axis: int = -1
    is_random: ClassVar[bool] = True

    def __check_init__(self):
        name = type(self).__name__
        if _is_concrete_number(self.scale) and not self.scale > 0:
            raise ValueError(
                f"`{name}` needs a positive `scale`, but got {self.scale}."
            )
        if self.mode not in _MODES:
            raise ValueError(
                f"`{name}`: `mode` must be one of {', '.join(map(repr, _MODES))}, but "
                f"got {self.mode!r}."
            )
        if self.distribution not in _DISTRIBUTIONS:
            raise ValueError(
                f"`{name}`: `distribution` must be one of "
                f"{', '.join(map(repr, _DISTRIBUTIONS))}, but got "
                f"{self.distribution!r}."
            )

    def _generate(self, shape, dtype, key):
        compute_fans(shape, self.in_axis, self.out_axis)  # checks the shape and axes
        if math.prod(shape) == 0:
            return jnp.zeros(shape, dtype)
        init = jax.nn.initializers.variance_scaling(
            self.scale, self.mode, self.distribution, self.in_axis, self.out_axis
        )
        return init(key, shape, dtype)


class KaimingUniform(VarianceScaling):
    """He / Kaiming uniform: `VarianceScaling(2.0, 'fan_in', 'uniform')`, i.e.
    `U(-b, b)` with `b = sqrt(6 / fan_in)`.

    **Arguments:** `scale=2.0`, `mode='fan_in'`, `distribution='uniform'`,
    `in_axis=-2`, `out_axis=-1`, `unit`; as for
    [`eqx_collective.nn.VarianceScaling`][].

    !!! Example

        ```python
        w = KaimingUniform()((64, 32), key=jax.random.key(0))
        ```
    """

    scale: float = 2.0
    mode: Literal["fan_in", "fan_out", "fan_avg", "fan_geo_avg"] = "fan_in"
    distribution: Literal["truncated_normal", "normal", "uniform"] = "uniform"


class KaimingNormal(VarianceScaling):
    """He / Kaiming normal: `VarianceScaling(2.0, 'fan_in', 'truncated_normal')`, i.e.
    variance `2 / fan_in` (the default weight initialiser of
    [`eqx_collective.nn.Linear`][], as in brainstate and `jax.nn.initializers.he_normal`).

    **Arguments:** `scale=2.0`, `mode='fan_in'`, `distribution='truncated_normal'`,
    `in_axis=-2`, `out_axis=-1`, `unit`; as for
    [`eqx_collective.nn.VarianceScaling`][].

    !!! Example

        ```python
        w = KaimingNormal()((64, 32), key=jax.random.key(0))  # var ~ 2 / 64
        ```
    """

    scale: float = 2.0
    mode: Literal["fan_in", "fan_out", "fan_avg", "fan_geo_avg"] = "fan_in"
    distribution: Literal["truncated_normal", "normal", "uniform"] = "truncated_normal"


class XavierUniform(VarianceScaling):
    """Glorot / Xavier uniform: `VarianceScaling(1.0, 'fan_avg', 'uniform')`, i.e.
    `U(-b, b)` with `b = sqrt(6 / (fan_in + fan_out))`.

    **Arguments:** `scale=1.0`, `mode='fan_avg'`, `distribution='uniform'`,
    `in_axis=-2`, `out_axis=-1`, `unit`; as for
    [`eqx_collective.nn.VarianceScaling`][].

    !!! Example

        ```python
        w = XavierUniform()((64, 32), key=jax.random.key(0))
        ```
    """

    scale: float = 1.0
    mode: Literal["fan_in", "fan_out", "fan_avg", "fan_geo_avg"] = "fan_avg"
    distribution: Literal["truncated_normal", "normal", "uniform"] = "uniform"


class XavierNormal(VarianceScaling):
    """Glorot / Xavier normal: `VarianceScaling(1.0, 'fan_avg', 'truncated_normal')`,
    i.e. variance `2 / (fan_in + fan_out)` (the default weight initialiser of
    [`eqx_collective.nn.ValinaRNNCell`][] and [`eqx_collective.nn.LSTMCell`][]).

    **Arguments:** `scale=1.0`, `mode='fan_avg'`, `distribution='truncated_normal'`,
    `in_axis=-2`, `out_axis=-1`, `unit`; as for
    [`eqx_collective.nn.VarianceScaling`][].

    !!! Example

        ```python
        w = XavierNormal()((64, 32), key=jax.random.key(0))  # var ~ 2 / 96
        ```
    """

    scale: float = 1.0
    mode: Literal["fan_in", "fan_out", "fan_avg", "fan_geo_avg"] = "fan_avg"
    distribution: Literal["truncated_normal", "normal", "uniform"] = "truncated_normal"


class Orthogonal(Initialiser):
    """A uniformly distributed (Haar) orthogonal matrix times `scale`, as
    `jax.nn.initializers.orthogonal`: the weight, reshaped to a matrix whose columns are
    `column_axis`, has orthonormal columns (if it has at least as many rows as columns)
    or orthonormal rows.

    **Arguments:**

    - `scale`: the gain (default `1.0`).
    - `column_axis`: the axis holding the columns (default `-1`).
    - `unit`: the `brainunit` unit of the result (default unitless).

    The weight must have at least two dimensions (else `ValueError`).

    !!! Example

        ```python
        w = Orthogonal()((32, 16), key=jax.random.key(0))  # w.T @ w == I(16)
        ```
    """

    scale: ArrayLike = eqx.field(default=1.0, converter=_number)
    column_axis: int = -1
    is_random: ClassVar[bool] = True

    def _generate(self, shape, dtype, key):
        if len(shape) < 2:
            raise ValueError(
                f"`Orthogonal` needs a shape of at least 2 dimensions, but got {shape}."
            )
        if not -len(shape) <= self.column_axis < len(shape):
            raise ValueError(
                f"`Orthogonal`: `column_axis={self.column_axis}` is out of range for "
                f"shape {shape}."
            )
        init = jax.nn.initializers.orthogonal(
            jnp.asarray(self.scale, dtype), self.column_axis
        )
        return init(key, shape, dtype)


ZERO_INIT = ZeroInit()
"""The shared default `ZeroInit()` of the layers (initialisers are immutable)."""
