"""Stateless activation layers: `ReLU`, `GELU`."""

import brainunit as u
import equinox as eqx
import jax
from jaxtyping import Array, ArrayLike, PRNGKeyArray

from ._layer import Layer


class ReLU(Layer):
    """The rectified linear unit `max(x, 0)` as a layer (brainstate's `ReLU`).

    Stateless: its `init_state` / `reset_state` return it unchanged. A
    `brainunit.Quantity` input keeps its unit (the operation is unit-correct).

    **Arguments:** none.

    !!! Example

        ```python
        ReLU()(jnp.array([-1.0, 2.0]))  # [0., 2.]
        ```
    """

    def __call__(
        self, x: ArrayLike | u.Quantity, *, key: PRNGKeyArray | None = None
    ) -> Array | u.Quantity:
        """**Arguments:** `x`, an array or `Quantity`; `key` is ignored.

        **Returns:** `max(x, 0)`, elementwise, with the unit of `x`.
        """
        del key
        if isinstance(x, u.Quantity):
            return u.Quantity(jax.nn.relu(x.mantissa), unit=x.unit)
        return jax.nn.relu(x)


class GELU(Layer):
    """The Gaussian error linear unit as a layer (brainstate's `GELU`).

    Stateless: its `init_state` / `reset_state` return it unchanged. The input must be
    a plain array (or a dimensionless `Quantity`): GELU of a physical quantity has no
    meaning.

    **Arguments:**

    - `approximate`: use the tanh approximation instead of the exact erf form
        (default `False`, as in brainstate; `jax.nn.gelu` defaults to `True`).

    !!! Example

        ```python
        GELU()(jnp.array([-1.0, 0.0, 1.0]))
        ```
    """

    approximate: bool = eqx.field(default=False, static=True)

    def __check_init__(self):
        if not isinstance(self.approximate, bool):
            raise TypeError(
                f"`GELU` takes a bool `approximate`, but got {self.approximate!r}."
            )

    def __call__(
        self, x: ArrayLike | u.Quantity, *, key: PRNGKeyArray | None = None
    ) -> Array:
        """**Arguments:** `x`, an array; `key` is ignored.

        **Returns:** `gelu(x)`, elementwise.
        """
        del key
        if isinstance(x, u.Quantity):
            if not u.get_dim(x).is_dimensionless:
                raise ValueError(
                    f"`GELU` needs a plain array or a dimensionless quantity, but got a "
                    f"quantity in {x.unit}. Divide by a reference unit first, e.g. "
                    "`x / brainunit.mV`."
                )
            return jax.nn.gelu(u.maybe_decimal(x), approximate=self.approximate)
        return jax.nn.gelu(x, approximate=self.approximate)
