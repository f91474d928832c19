"""`Dropout`, with the random key given at call time."""

import brainunit as u
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, PRNGKeyArray


class Dropout(eqx.Module):
    """Zeroes each element with probability `prob` and scales the others by
    `1 / (1 - prob)`, so the expected output equals the input.

    `prob` is the probability of **dropping** an element, as in `eqx.nn.Dropout(p)`
    and PyTorch, and as the tutorial's `Dropout(prob=0.1)` means; brainstate's own
    `Dropout` takes the probability of *keeping* it.

    Stateless: no `init_state` / `reset_state`; the randomness comes from the `key`
    passed at call time. `inference` is an ordinary field, so
    `eqx.nn.inference_mode(model)` switches every `Dropout` of a model off.

    **Arguments:**

    - `prob`: the drop probability, in `[0, 1)` (default `0.5`).
    - `inference`: if `True`, the layer is the identity (default `False`).

    **Raises:** `ValueError` for `prob` outside `[0, 1)`.

    !!! Example

        ```python
        drop = Dropout(prob=0.1)
        y = drop(x, key=jax.random.key(0))  # training
        y = Dropout(prob=0.1, inference=True)(x)  # identity
        ```
    """

    prob: float = 0.5
    inference: bool = False

    def __check_init__(self):
        if isinstance(self.prob, jax.core.Tracer):
            return  # a traced probability (inside a transform): nothing to check
        try:
            prob = float(np.asarray(self.prob))
        except (TypeError, ValueError):
            raise TypeError(
                f"`Dropout` takes a number `prob`, but got {type(self.prob).__name__} "
                f"{self.prob!r}."
            ) from None
        if not 0.0 <= prob < 1.0:
            raise ValueError(
                f"`Dropout` needs a drop probability `prob` in [0, 1), but got "
                f"{self.prob!r}. (`prob` is the probability of zeroing an element; "
                "use `prob=0.0` or `inference=True` to disable dropout.)"
            )

    def __call__(
        self, x: ArrayLike | u.Quantity, *, key: PRNGKeyArray | None = None
    ) -> Array | u.Quantity:
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
        if isinstance(self.prob, (int, float)) and self.prob == 0:
            return x
        if key is None:
            raise ValueError(
                "`Dropout` in training mode needs a random `key`: call it as "
                "`dropout(x, key=jax.random.key(...))` (a `Sequential` splits its "
                "`key` among its layers), or switch it off with `inference=True` / "
                "`eqx.nn.inference_mode(model)`."
            )
        keep = 1.0 - jnp.asarray(self.prob, u.math.get_dtype(x))
        mask = jax.random.bernoulli(key, keep, jnp.shape(x))
        scale = jnp.where(mask, 1.0 / keep, 0.0).astype(u.math.get_dtype(x))
        if isinstance(self.inference, bool):
            return x * scale
        return u.math.where(self.inference, x, x * scale)
