"""`Linear`: a dense layer holding one `ParamState` with `{'weight', 'bias'}`."""

from collections.abc import Callable

import brainunit as u
import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, DTypeLike, PRNGKeyArray

from .._ensemble import check_single_call
from .._state import ParamState
from ._initialisers import KaimingNormal, ZERO_INIT
from ._layer import Layer
from ._values import as_size, make_value


_KAIMING_NORMAL = KaimingNormal()  # immutable, so safe to share


class Linear(Layer):
    """A dense layer `y = x @ W + b` (brainstate's `Linear`).

    Its parameters live in **one** [`eqx_collective.ParamState`][] `weight`, whose
    value is the dict `{'bias': (out,), 'weight': (in, out)}` (no `'bias'` key when
    `b_init=None`), so the leaf-level paths are `(..., 'weight', 'weight')` and
    `(..., 'weight', 'bias')` as in brainstate. The layer has no hidden state: its
    `init_state` / `reset_state` return it unchanged (see
    [`eqx_collective.nn.Layer`][]).

    The maths is unit-correct: with `brainunit` initialisers (`w_init=Normal(unit=...)`)
    or a `Quantity` input, the units multiply through `brainunit.math.matmul`, and the
    bias must have the unit of `x @ W`.

    **Arguments:**

    - `in_size`: the number of input features, an `int` or a 1-tuple.
    - `out_size`: the number of output features, an `int` or a 1-tuple.
    - `w_init`: the weight initialiser, called as `w_init((in, out), key=..., dtype=...)`
        (any [`eqx_collective.nn.Initialiser`][] or callable with that signature), or
        an array of that shape (default [`eqx_collective.nn.KaimingNormal`][]).
    - `b_init`: the bias initialiser, called with shape `(out,)`, an array, or `None`
        for no bias (default [`eqx_collective.nn.ZeroInit`][]).
    - `key`: a JAX random key (keyword-only) for the random initialisers.
    - `dtype`: the parameters' dtype (default JAX's default float dtype).

    The sizes are kept as 1-tuples in the static fields `in_size` and `out_size`.

    **Raises:** `TypeError` for a size that is not an integer; `ValueError` for one that
    is not positive or a sequence that is not a 1-tuple.

    !!! Example

        ```python
        import jax, jax.numpy as jnp
        from eqx_collective.nn import Linear

        layer = Linear(24, 16, key=jax.random.key(0))
        print(layer.weight)  # ParamState(value={'bias': f32[16], 'weight': f32[24,16]})
        y = layer(jnp.ones((4, 24)))  # shape (4, 16)
        ```
    """

    in_size: tuple[int] = eqx.field(static=True)
    out_size: tuple[int] = eqx.field(static=True)
    weight: ParamState

    def __init__(
        self,
        in_size: int | tuple[int],
        out_size: int | tuple[int],
        w_init: Callable | ArrayLike | None = _KAIMING_NORMAL,
        b_init: Callable | ArrayLike | None = ZERO_INIT,
        *,
        key: PRNGKeyArray | None,
        dtype: DTypeLike | None = None,
    ):
        self.in_size = (as_size(in_size, "in_size", "Linear"),)
        self.out_size = (as_size(out_size, "out_size", "Linear"),)
        if w_init is None:
            raise ValueError(
                "`Linear` needs a weight initialiser `w_init` (only `b_init` may be "
                "`None`)."
            )
        wkey, bkey = (None, None) if key is None else jax.random.split(key)
        shape = (self.in_size[0], self.out_size[0])
        params = {}
        if b_init is not None:
            params["bias"] = make_value(b_init, self.out_size, bkey, dtype, "bias")
        params["weight"] = make_value(w_init, shape, wkey, dtype, "weight")
        self.weight = ParamState(params)

    def __call__(
        self, x: ArrayLike | u.Quantity, *, key: PRNGKeyArray | None = None
    ) -> Array | u.Quantity:
        """Applies the layer to the last axis of `x`.

        **Arguments:**

        - `x`: an array (or `Quantity`) of shape `(..., in)`; leading axes are batch
            axes.
        - `key`: ignored; accepted so that every layer can be called alike.

        **Returns:** `x @ W + b`, of shape `(..., out)`.

        **Raises:** `ValueError` if the last axis of `x` is not `in_size`.
        """
        del key
        shape = jnp.shape(x)
        if len(shape) == 0 or shape[-1] != self.in_size[0]:
            raise ValueError(
                f"`Linear` expects inputs whose last axis has size {self.in_size[0]} "
                f"(`in_size={self.in_size}`), but got an input of shape {shape}. "
                "Reshape the input, or build the layer with the right `in_size`."
            )
        check_single_call(self.weight, "Linear")
        params = self.weight.value
        # (pyright takes saiunit's `Array` for its stand-in class used without JAX)
        y: Array | u.Quantity = u.math.matmul(x, params["weight"])  # pyright: ignore[reportAssignmentType]
        if "bias" in params:
            bias = params["bias"]
            # Checked on the units alone, so that `jit` and eager agree (brainunit
            # lets a unitless zero through eagerly, but not a traced one).
            if u.get_unit(y).dim != u.get_unit(bias).dim:
                raise ValueError(
                    f"`Linear`: `x @ weight` has unit {u.get_unit(y)} but the bias has "
                    f"unit {u.get_unit(bias)}, so they cannot be added. Give the bias "
                    "that unit (e.g. `b_init=ZeroInit(unit=...)`), or build the layer "
                    "with `b_init=None`."
                )
            y = y + u.math.broadcast_to(bias, jnp.shape(y))
        return y
