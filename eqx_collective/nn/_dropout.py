"""`Dropout`, with the random key given at call time."""

from typing import Any

import brainunit as u
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import ArrayLike, PRNGKeyArray

from .._checks import describe
from ._layer import Layer


def _probability(prob: Any) -> float:
    """`prob` as a Python `float` in `[0, 1)`."""
    if isinstance(prob, (bool, np.bool_)):
        number = None
    else:
        try:
            number = float(np.asarray(prob)) if np.ndim(prob) == 0 else None
        except (TypeError, ValueError, jax.errors.ConcretizationTypeError):
            number = None
    if number is None:
        raise TypeError(
            f"`Dropout` takes a number `prob`, but got {describe(prob)}. (It is a "
            "static field, as in `eqx.nn.Dropout`, so it cannot be traced.)"
        )
    if not 0.0 <= number < 1.0:
        raise ValueError(
            f"`Dropout` needs a drop probability `prob` in [0, 1), but got {prob!r}. "
            "(`prob` is the probability of zeroing an element; use `prob=0.0` or "
            "`inference=True` to disable dropout.)"
        )
    return number


class Dropout(Layer):
    """Zeroes each element with probability `prob` and scales the others by
    `1 / (1 - prob)`, so the expected output equals the input.

    `prob` is the probability of **dropping** an element, as in `eqx.nn.Dropout(p)`
    and PyTorch, and as the tutorial's `Dropout(prob=0.1)` means; brainstate's own
    `Dropout` takes the probability of *keeping* it.

    Stateless: its `init_state` / `reset_state` return it unchanged; the randomness
    comes from the `key` passed at call time. `prob` is a static field (a Python
    `float`, as `eqx.nn.Dropout.p`), so it is never mistaken for a parameter.
    `inference` is an ordinary field, so `eqx.nn.inference_mode(model)` switches every
    `Dropout` of a model off.

    **Arguments:**

    - `prob`: the drop probability, a number in `[0, 1)` (default `0.5`).
    - `inference`: if `True`, the layer is the identity (default `False`).

    **Raises:** `TypeError` for a `prob` that is not a number; `ValueError` for one
    outside `[0, 1)`.

    !!! Example

        ```python
        drop = Dropout(prob=0.1)
        y = drop(x, key=jax.random.key(0))  # training
        y = Dropout(prob=0.1, inference=True)(x)  # identity
        ```
    """

    prob: float = eqx.field(default=0.5, static=True, converter=_probability)
    inference: bool = False

    def __call__(
        self, x: ArrayLike | u.Quantity, *, key: PRNGKeyArray | None = None
    ) -> ArrayLike | u.Quantity:
        """**Arguments:**

        - `x`: an array or `Quantity` (its unit is kept).
        - `key`: a JAX random key; required in training mode (`inference=False`) when
            `prob > 0`.

        **Returns:** `x` with dropped elements zeroed and the others rescaled, or `x`
        itself in inference mode.

        **Raises:** `ValueError` for a missing `key` in training mode.
        """
        if isinstance(self.inference, bool) and self.inference:
            return x
        if self.prob == 0:
            return x
        if key is None:
            raise ValueError(
                "`Dropout` in training mode needs a random `key`: call it as "
                "`dropout(x, key=jax.random.key(...))` (a `Sequential` splits its "
                "`key` among its layers), or switch it off with `inference=True` / "
                "`eqx.nn.inference_mode(model)`."
            )
        keep = 1.0 - self.prob
        mask = jax.random.bernoulli(key, keep, jnp.shape(x))
        scale = jnp.where(mask, 1.0 / keep, 0.0).astype(u.math.get_dtype(x))
        if isinstance(self.inference, bool):
            return x * scale
        return u.math.where(self.inference, x, x * scale)
