"""Recurrent cells: `ValinaRNNCell` (alias `VanillaRNNCell`), `GRUCell`, `LSTMCell`."""

import abc
from collections.abc import Callable
from typing import Any, Self

import brainunit as u
import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, DTypeLike, PRNGKeyArray, PyTree

from .._module import replace_fields
from .._state import HiddenState
from ._init import Orthogonal, XavierNormal, ZeroInit
from ._linear import as_size, Linear, make_value, positive_int
from ._sequential import StatefulLayer


# The default initialisers: immutable, so safe to share.
_ORTHOGONAL = Orthogonal()
_XAVIER_NORMAL = XavierNormal()
_ZERO_INIT = ZeroInit()


def _activation(activation: str | Callable, owner: str) -> Callable:
    if isinstance(activation, str):
        fn = getattr(jax.nn, activation, None)
        if fn is None or not callable(fn):
            raise ValueError(
                f"`{owner}`: unknown activation {activation!r}; pass the name of a "
                "function of `jax.nn` (such as 'relu' or 'tanh') or a callable."
            )
        return fn
    if not callable(activation):
        raise TypeError(
            f"`{owner}` takes a callable `activation` (or the name of a `jax.nn` "
            f"function), but got {type(activation).__name__} {activation!r}."
        )
    return activation


def _check_unitless_params(linear: Linear, owner: str) -> None:
    for leaf in jax.tree.leaves(
        linear.weight.value, is_leaf=lambda x: isinstance(x, u.Quantity)
    ):
        if isinstance(leaf, u.Quantity) and not leaf.is_unitless:
            raise ValueError(
                f"`{owner}` computes its step on plain numbers, so `w_init` and `b_init` "
                f"must be unitless, but a parameter has unit {leaf.unit}. Give the unit "
                "to the hidden state instead, with `state_init=ZeroInit(unit=...)`."
            )


def _strip(value: Array | u.Quantity) -> tuple[Array, u.Unit]:
    """A state's numbers in its own unit, and that unit."""
    if isinstance(value, u.Quantity):
        return value.mantissa, value.unit
    return value, u.UNITLESS


def _attach(value: Array, unit: u.Unit) -> Array | u.Quantity:
    return value if unit.is_unitless else u.Quantity(value, unit=unit)


class RNNCell(StatefulLayer):
    """Abstract base class of the recurrent cells (brainstate's `RNNCell`); use it as a
    type filter, e.g. `node_to_exclude=RNNCell`.

    A cell follows the **pure call protocol**: `init_state` and `reset_state` return the
    updated cell, and the forward call returns `(new_hidden, updated_cell)` (the
    stateful call convention of [`eqx_collective.nn.StatefulLayer`][]).

    **Units.** A hidden state may be a `brainunit.Quantity` (from
    `state_init=ZeroInit(unit=u.mV)`, say). The cell's step is computed on plain
    numbers: each hidden state is read in its own unit (its mantissa), the step is
    computed, and the state's unit is attached again to the new state, so the unit
    survives every step, `init_all_states`, `reset_all_states`, `eqx.filter_jit` and
    `eqx.filter_vmap`. The weights must be unitless. A `Quantity` input is first
    converted to the unit of the hidden state (an incompatible unit is a
    `ValueError`); a plain-array input is used as it is.
    """

    num_in: int = eqx.field(static=True)
    num_out: int = eqx.field(static=True)

    @property
    def in_size(self) -> tuple[int]:
        """`(num_in,)`, as in brainstate."""
        return (self.num_in,)

    @property
    def out_size(self) -> tuple[int]:
        """`(num_out,)`, as in brainstate."""
        return (self.num_out,)

    @abc.abstractmethod
    def init_state(
        self, batch_size: int | None = None, *, key: PRNGKeyArray | None = None
    ) -> Self:
        """Creates the hidden state(s) and returns the updated cell."""

    @abc.abstractmethod
    def reset_state(
        self, batch_size: int | None = None, *, key: PRNGKeyArray | None = None
    ) -> Self:
        """Restores the initial hidden state(s) and returns the updated cell."""


# Helpers shared by the concrete cells. Module-level functions rather than methods:
# reading a method of an Equinox module costs tens of µs (see `_module.py`).


def _new_value(
    cell: RNNCell,
    state_init: Callable | ArrayLike,
    batch_shape: tuple[int, ...],
    key: PRNGKeyArray | None,
    dtype: DTypeLike | None,
) -> Array | u.Quantity:
    return make_value(
        state_init,
        batch_shape + (cell.num_out,),
        key,
        dtype,
        f"initial hidden state of `{type(cell).__name__}`",
    )


def _initialised(cell: RNNCell, name: str, state: HiddenState | None, op: str) -> Any:
    if state is None:
        raise RuntimeError(
            f"The hidden state `{name}` of this `{type(cell).__name__}` was never "
            f"initialised, so it cannot {op}. Call "
            "`model = eqx_collective.init_all_states(model, batch_size=...)` (or "
            "`cell = cell.init_state(batch_size=...)`) first."
        )
    return state.value


def _input(
    cell: RNNCell, x: ArrayLike | u.Quantity, hidden: Array, unit: u.Unit
) -> Array:
    """The input as plain numbers, checked against the cell's sizes."""
    if isinstance(x, u.Quantity):
        try:
            x = x.to_decimal(unit)
        except u.UnitMismatchError:
            raise ValueError(
                f"`{type(cell).__name__}`: the input is in {x.unit}, which cannot "
                f"be converted to the unit of the hidden state ({unit}). Pass a "
                "plain array or a quantity of the hidden state's dimension."
            ) from None
    x = jnp.asarray(x)
    if x.ndim == 0 or x.shape[-1] != cell.num_in:
        raise ValueError(
            f"`{type(cell).__name__}` expects inputs whose last axis has size "
            f"{cell.num_in} (`num_in`), but got an input of shape {x.shape}."
        )
    if x.shape[:-1] != hidden.shape[:-1]:
        raise ValueError(
            f"`{type(cell).__name__}`: the input has batch shape {x.shape[:-1]} but "
            f"the hidden state has batch shape {hidden.shape[:-1]}. Initialise or "
            "reset the state with the input's batch size, e.g. "
            "`eqx_collective.init_all_states(model, batch_size=...)`."
        )
    return x


def _batch_shape(batch_size: int | None, owner: str) -> tuple[int, ...]:
    if batch_size is None:
        return ()
    return (
        positive_int(batch_size, "batch_size", owner, "or `None` for no batch axis"),
    )


def _reset_batch(value: Any, batch_size: int | None) -> tuple[int, ...]:
    """The batch shape for `reset_state`: the current one when `batch_size` is None."""
    if batch_size is None:
        return tuple(value.shape[:-1])
    return _batch_shape(batch_size, "reset_state")


def _set_state(cell: Any, name: str, value: PyTree) -> Any:
    """`cell` with its hidden state `name` holding `value`: a new `HiddenState` if there
    was none, else the existing state (tag and flags kept) with the new value."""
    state = getattr(cell, name)
    state = HiddenState(value) if state is None else replace_fields(state, value=value)
    return replace_fields(cell, **{name: state})


class ValinaRNNCell(RNNCell):
    r"""The vanilla (Elman) recurrent cell, spelled as brainstate spells it (alias
    [`eqx_collective.nn.VanillaRNNCell`][]):

    $$h_t = \phi(W [x_t, h_{t-1}] + b)$$

    It holds `W`, a [`eqx_collective.nn.Linear`][] of size `num_in + num_out` to
    `num_out`, and `h`, a [`eqx_collective.HiddenState`][] (`None` until `init_state`).
    Units: see [`eqx_collective.nn.RNNCell`][].

    **Arguments:**

    - `num_in`: the number of input features.
    - `num_out`: the number of hidden units.
    - `state_init`: the hidden state's initialiser (default
        [`eqx_collective.nn.ZeroInit`][]); its unit becomes the state's unit.
    - `w_init`, `b_init`: the initialisers of `W` (default
        [`eqx_collective.nn.XavierNormal`][] and [`eqx_collective.nn.ZeroInit`][]).
    - `activation`: $\phi$, a callable or the name of a `jax.nn` function (default
        `jax.nn.relu`).
    - `key`: a JAX random key (keyword-only) for `W`.

    !!! Example

        ```python
        import jax, jax.numpy as jnp
        import eqx_collective as ec
        from eqx_collective.nn import ValinaRNNCell

        cell = ValinaRNNCell(8, 16, key=jax.random.key(0))
        cell = ec.init_all_states(cell, batch_size=2)  # cell.h.value: (2, 16)
        h, cell = cell(jnp.ones((2, 8)))
        cell = ec.reset_all_states(cell)  # zeros, still (2, 16)
        ```
    """

    W: Linear
    h: HiddenState | None
    state_init: Callable | ArrayLike = _ZERO_INIT
    activation: Callable = eqx.field(static=True, default=jax.nn.relu)

    def __init__(
        self,
        num_in: int,
        num_out: int,
        state_init: Callable | ArrayLike = _ZERO_INIT,
        w_init: Callable | ArrayLike = _XAVIER_NORMAL,
        b_init: Callable | ArrayLike | None = _ZERO_INIT,
        activation: str | Callable = jax.nn.relu,
        *,
        key: PRNGKeyArray | None,
    ):
        name = type(self).__name__
        self.num_in = as_size(num_in, "num_in", name)[0]
        self.num_out = as_size(num_out, "num_out", name)[0]
        self.W = Linear(
            self.num_in + self.num_out, self.num_out, w_init, b_init, key=key
        )
        _check_unitless_params(self.W, name)
        self.h = None
        self.state_init = state_init
        self.activation = _activation(activation, name)

    def init_state(
        self, batch_size: int | None = None, *, key: PRNGKeyArray | None = None
    ) -> Self:
        """Creates the hidden state `h` of shape `(num_out,)`, or
        `(batch_size, num_out)`, from `state_init`.

        **Arguments:**

        - `batch_size`: the size of a leading batch axis, or `None` for none.
        - `key`: a JAX random key, needed only if `state_init` is random.

        **Returns:** the updated cell.
        """
        batch = _batch_shape(batch_size, "init_state")
        return _set_state(
            self, "h", _new_value(self, self.state_init, batch, key, None)
        )

    def reset_state(
        self, batch_size: int | None = None, *, key: PRNGKeyArray | None = None
    ) -> Self:
        """Sets `h` back to its initial value. With `batch_size=None` the current
        batch shape (and dtype) is **kept** (brainstate drops the batch axis here).

        **Arguments:** as for `init_state`.

        **Returns:** the updated cell.

        **Raises:** `RuntimeError` if the state was never initialised.
        """
        h = _initialised(self, "h", self.h, "be reset")
        batch = _reset_batch(h, batch_size)
        value = _new_value(self, self.state_init, batch, key, u.math.get_dtype(h))
        return _set_state(self, "h", value)

    def __call__(
        self, x: ArrayLike | u.Quantity, *, key: PRNGKeyArray | None = None
    ) -> tuple[Array | u.Quantity, Self]:
        """One step.

        **Arguments:**

        - `x`: the input, of shape `(num_in,)` or `(batch, num_in)` matching the
            state's batch shape.
        - `key`: ignored.

        **Returns:** `(h_new, updated_cell)`; `h_new` has the unit of the state.

        **Raises:** `RuntimeError` if the state was never initialised; `ValueError` for
        an input of the wrong size or batch shape.
        """
        del key
        h, unit = _strip(_initialised(self, "h", self.h, "be stepped"))
        x = _input(self, x, h, unit)
        new_h = _attach(self.activation(self.W(jnp.concatenate([x, h], -1))), unit)
        return new_h, _set_state(self, "h", new_h)


VanillaRNNCell = ValinaRNNCell
"""The correctly spelled alias of [`eqx_collective.nn.ValinaRNNCell`][]."""


class GRUCell(RNNCell):
    r"""The gated recurrent unit (Cho et al., 2014), with brainstate's maths:

    $$\begin{aligned}
    r, z &= \sigma(W_{rz} [x, h]) \\
    \tilde h &= \phi(W_h [x, r \odot h]) \\
    h' &= (1 - z) \odot h + z \odot \tilde h
    \end{aligned}$$

    It holds `Wrz` (`num_in + num_out` to `2 * num_out`), `Wh` (`num_in + num_out` to
    `num_out`) and the [`eqx_collective.HiddenState`][] `h` (`None` until
    `init_state`). Units: see [`eqx_collective.nn.RNNCell`][].

    **Arguments:**

    - `num_in`, `num_out`: the numbers of input features and hidden units.
    - `w_init`, `b_init`: the weight and bias initialisers (default
        [`eqx_collective.nn.Orthogonal`][] and [`eqx_collective.nn.ZeroInit`][]).
    - `state_init`: the hidden state's initialiser (default `ZeroInit()`).
    - `activation`: $\phi$ (default `jax.nn.tanh`).
    - `key`: a JAX random key (keyword-only).

    !!! Example

        ```python
        cell = ec.init_all_states(GRUCell(8, 16, key=key), batch_size=2)
        h, cell = cell(jnp.ones((2, 8)))
        ```
    """

    Wrz: Linear
    Wh: Linear
    h: HiddenState | None
    state_init: Callable | ArrayLike = _ZERO_INIT
    activation: Callable = eqx.field(static=True, default=jax.nn.tanh)

    def __init__(
        self,
        num_in: int,
        num_out: int,
        w_init: Callable | ArrayLike = _ORTHOGONAL,
        b_init: Callable | ArrayLike | None = _ZERO_INIT,
        state_init: Callable | ArrayLike = _ZERO_INIT,
        activation: str | Callable = jax.nn.tanh,
        *,
        key: PRNGKeyArray | None,
    ):
        name = type(self).__name__
        self.num_in = as_size(num_in, "num_in", name)[0]
        self.num_out = as_size(num_out, "num_out", name)[0]
        k1, k2 = (None, None) if key is None else jax.random.split(key)
        n = self.num_in + self.num_out
        self.Wrz = Linear(n, 2 * self.num_out, w_init, b_init, key=k1)
        self.Wh = Linear(n, self.num_out, w_init, b_init, key=k2)
        _check_unitless_params(self.Wrz, name)
        _check_unitless_params(self.Wh, name)
        self.h = None
        self.state_init = state_init
        self.activation = _activation(activation, name)

    def init_state(
        self, batch_size: int | None = None, *, key: PRNGKeyArray | None = None
    ) -> Self:
        """Creates `h`, of shape `(num_out,)` or `(batch_size, num_out)`.

        **Arguments:** `batch_size` (or `None`); `key`, needed only by a random
        `state_init`.

        **Returns:** the updated cell.
        """
        batch = _batch_shape(batch_size, "init_state")
        return _set_state(
            self, "h", _new_value(self, self.state_init, batch, key, None)
        )

    def reset_state(
        self, batch_size: int | None = None, *, key: PRNGKeyArray | None = None
    ) -> Self:
        """Sets `h` back to its initial value, keeping the current batch shape when
        `batch_size` is `None`.

        **Returns:** the updated cell.
        """
        h = _initialised(self, "h", self.h, "be reset")
        batch = _reset_batch(h, batch_size)
        value = _new_value(self, self.state_init, batch, key, u.math.get_dtype(h))
        return _set_state(self, "h", value)

    def __call__(
        self, x: ArrayLike | u.Quantity, *, key: PRNGKeyArray | None = None
    ) -> tuple[Array | u.Quantity, Self]:
        """One step. **Returns:** `(h_new, updated_cell)`. Errors as for
        [`eqx_collective.nn.ValinaRNNCell`][]."""
        del key
        h, unit = _strip(_initialised(self, "h", self.h, "be stepped"))
        x = _input(self, x, h, unit)
        gates = jax.nn.sigmoid(self.Wrz(jnp.concatenate([x, h], -1)))
        r, z = jnp.split(gates, 2, axis=-1)
        candidate = self.activation(self.Wh(jnp.concatenate([x, r * h], -1)))
        new_h = _attach((1 - z) * h + z * candidate, unit)
        return new_h, _set_state(self, "h", new_h)


class LSTMCell(RNNCell):
    r"""The long short-term memory cell (Hochreiter & Schmidhuber, 1997), with
    brainstate's maths (forget-gate bias of `+1`):

    $$\begin{aligned}
    i, g, f, o &= W [x, h] \\
    c' &= \sigma(f + 1) \odot c + \sigma(i) \odot \phi(g) \\
    h' &= \sigma(o) \odot \phi(c')
    \end{aligned}$$

    It holds `W` (`num_in + num_out` to `4 * num_out`) and two
    [`eqx_collective.HiddenState`][]s, `h` and `c` (`None` until `init_state`), both
    initialised by `state_init`. Units: see [`eqx_collective.nn.RNNCell`][]; `h` and
    `c` keep their own units.

    **Arguments:**

    - `num_in`, `num_out`: the numbers of input features and hidden units.
    - `w_init`, `b_init`: the initialisers of `W` (default
        [`eqx_collective.nn.XavierNormal`][] and [`eqx_collective.nn.ZeroInit`][]).
    - `state_init`: the initialiser of `h` and `c` (default `ZeroInit()`).
    - `activation`: $\phi$ (default `jax.nn.tanh`).
    - `key`: a JAX random key (keyword-only).

    !!! Example

        ```python
        cell = ec.init_all_states(LSTMCell(8, 16, key=key), batch_size=2)
        h, cell = cell(jnp.ones((2, 8)))  # cell.c.value is the new cell state
        ```
    """

    W: Linear
    h: HiddenState | None
    c: HiddenState | None
    state_init: Callable | ArrayLike = _ZERO_INIT
    activation: Callable = eqx.field(static=True, default=jax.nn.tanh)

    def __init__(
        self,
        num_in: int,
        num_out: int,
        w_init: Callable | ArrayLike = _XAVIER_NORMAL,
        b_init: Callable | ArrayLike | None = _ZERO_INIT,
        state_init: Callable | ArrayLike = _ZERO_INIT,
        activation: str | Callable = jax.nn.tanh,
        *,
        key: PRNGKeyArray | None,
    ):
        name = type(self).__name__
        self.num_in = as_size(num_in, "num_in", name)[0]
        self.num_out = as_size(num_out, "num_out", name)[0]
        self.W = Linear(
            self.num_in + self.num_out, 4 * self.num_out, w_init, b_init, key=key
        )
        _check_unitless_params(self.W, name)
        self.h = None
        self.c = None
        self.state_init = state_init
        self.activation = _activation(activation, name)

    def init_state(
        self, batch_size: int | None = None, *, key: PRNGKeyArray | None = None
    ) -> Self:
        """Creates `h` and `c`, each of shape `(num_out,)` or
        `(batch_size, num_out)`.

        **Arguments:** `batch_size` (or `None`); `key`, needed only by a random
        `state_init` (split between `h` and `c`).

        **Returns:** the updated cell.
        """
        batch = _batch_shape(batch_size, "init_state")
        h, c = _lstm_states(self, batch, key, (None, None))
        return _set_state(_set_state(self, "h", h), "c", c)

    def reset_state(
        self, batch_size: int | None = None, *, key: PRNGKeyArray | None = None
    ) -> Self:
        """Sets `h` and `c` back to their initial values, keeping the current batch
        shape when `batch_size` is `None`.

        **Returns:** the updated cell.
        """
        h = _initialised(self, "h", self.h, "be reset")
        c = _initialised(self, "c", self.c, "be reset")
        batch = _reset_batch(h, batch_size)
        dtypes = (u.math.get_dtype(h), u.math.get_dtype(c))
        h, c = _lstm_states(self, batch, key, dtypes)
        return _set_state(_set_state(self, "h", h), "c", c)

    def __call__(
        self, x: ArrayLike | u.Quantity, *, key: PRNGKeyArray | None = None
    ) -> tuple[Array | u.Quantity, Self]:
        """One step. **Returns:** `(h_new, updated_cell)`; the updated cell also holds
        the new `c`. Errors as for [`eqx_collective.nn.ValinaRNNCell`][]."""
        del key
        h, h_unit = _strip(_initialised(self, "h", self.h, "be stepped"))
        c, c_unit = _strip(_initialised(self, "c", self.c, "be stepped"))
        x = _input(self, x, h, h_unit)
        i, g, f, o = jnp.split(self.W(jnp.concatenate([x, h], -1)), 4, axis=-1)
        c = jax.nn.sigmoid(f + 1.0) * c + jax.nn.sigmoid(i) * self.activation(g)
        h = jax.nn.sigmoid(o) * self.activation(c)
        new_h, new_c = _attach(h, h_unit), _attach(c, c_unit)
        return new_h, _set_state(_set_state(self, "h", new_h), "c", new_c)


def _lstm_states(cell: LSTMCell, batch, key, dtypes) -> tuple[Any, Any]:
    kh, kc = (None, None) if key is None else jax.random.split(key)
    h = _new_value(cell, cell.state_init, batch, kh, dtypes[0])
    c = _new_value(cell, cell.state_init, batch, kc, dtypes[1])
    return h, c
