"""Recurrent cells: `ValinaRNNCell` (alias `VanillaRNNCell`), `GRUCell`, `LSTMCell`.

`RNNCell` is the abstract base of every cell; `_SingleStateCell` the abstract base of
the cells with one hidden state `h` (it implements `init_state`, `reset_state` and the
forward call; a concrete cell adds its weights and its `_step`). Every concrete cell is
final, following Equinox's abstract/final pattern. The cells take `num_in` and
`num_out` positionally and everything else by keyword.
"""

import abc
from collections.abc import Callable
from typing import Any, Self, TypeVar

import brainunit as u
import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, DTypeLike, PRNGKeyArray, PyTree

from .._checks import positive_int
from .._ensemble import check_single_call
from .._fields import method, replace_fields
from .._state import HiddenState
from ._initialisers import Constant, Orthogonal, XavierNormal, ZERO_INIT
from ._layer import StatefulLayer
from ._linear import Linear
from ._values import as_size, attach_unit, make_value, strip_unit


# The default initialisers: immutable, so safe to share.
_ORTHOGONAL = Orthogonal()
_XAVIER_NORMAL = XavierNormal()


def _activation(activation: str | Callable, where: str) -> Callable:
    if isinstance(activation, str):
        fn = getattr(jax.nn, activation, None)
        if fn is None or not callable(fn):
            raise ValueError(
                f"`{where}`: unknown activation {activation!r}; pass the name of a "
                "function of `jax.nn` (such as 'relu' or 'tanh') or a callable."
            )
        return fn
    if not callable(activation):
        raise TypeError(
            f"`{where}` takes a callable `activation` (or the name of a `jax.nn` "
            f"function), but got {type(activation).__name__} {activation!r}."
        )
    return activation


def _state_initialiser(state_init: Callable | ArrayLike, where: str) -> Callable:
    """`state_init` as a hashable callable, to be kept in a static field (so that
    collective calls do not visit it and it is never taken for a parameter)."""
    if not callable(state_init):
        state_init = Constant(state_init)
    try:
        hash(state_init)
    except TypeError:
        raise TypeError(
            f"`{where}` keeps `state_init` in a static field, so it must be hashable, "
            f"but {state_init!r} is not (an initialiser with array parameters?). Give "
            "the initialiser number parameters, or a value as nested tuples."
        ) from None
    return state_init


def _weights(
    where: str, n_in: int, n_out: int, w_init: Any, b_init: Any, key: Any
) -> Linear:
    """A unitless `Linear(n_in, n_out)` for a cell's step."""
    linear = Linear(n_in, n_out, w_init, b_init, key=key)
    for leaf in jax.tree.leaves(
        linear.weight.value, is_leaf=lambda x: isinstance(x, u.Quantity)
    ):
        if isinstance(leaf, u.Quantity) and not leaf.is_unitless:
            raise ValueError(
                f"`{where}` computes its step on plain numbers, so `w_init` and `b_init` "
                f"must be unitless, but a parameter has unit {leaf.unit}. Give the unit "
                "to the hidden state instead, with `state_init=ZeroInit(unit=...)`."
            )
    return linear


def _numbers(y: Array | u.Quantity) -> Array:
    """The output of a cell's `Linear` as plain numbers: the parameters are unitless
    (see `_weights`), but a user's initialiser may give unitless `Quantity`s."""
    return y.mantissa if isinstance(y, u.Quantity) else y


def _batch_shape(batch_size: Any, where: str) -> tuple[int, ...]:
    if batch_size is None:
        return ()
    return (positive_int(batch_size, "batch_size", where),)


def _reset_batch(value: Any, batch_size: Any, where: str) -> tuple[int, ...]:
    """The batch shape for `reset_state`: the current one when `batch_size` is None."""
    if batch_size is None:
        return tuple(value.shape[:-1])
    return _batch_shape(batch_size, where)


def _new_value(
    cell: "RNNCell", batch: tuple[int, ...], key: Any, dtype: DTypeLike | None
) -> Array | u.Quantity:
    return make_value(
        cell.state_init,
        batch + (cell.num_out,),
        key,
        dtype,
        f"initial hidden state of `{type(cell).__name__}`",
    )


def _state_value(cell: "RNNCell", name: str, op: str) -> Any:
    """The value of the hidden state `name`, which must have been initialised."""
    state = getattr(cell, name)
    if state is None:
        raise RuntimeError(
            f"The hidden state `{name}` of this `{type(cell).__name__}` was never "
            f"initialised, so it cannot {op}. Call "
            "`model = eqx_collective.init_all_states(model, batch_size=...)` (or "
            "`cell = cell.init_state(batch_size=...)`) first."
        )
    return state.value


def _input(
    cell: "RNNCell", x: ArrayLike | u.Quantity, hidden: Array, unit: u.Unit
) -> Array:
    """The input as plain numbers, checked against the cell's sizes."""
    where = type(cell).__name__
    if isinstance(x, u.Quantity):
        try:
            x = x.to_decimal(unit)
        except u.UnitMismatchError:
            raise ValueError(
                f"`{where}`: the input is in {x.unit}, which cannot be converted to "
                f"the unit of the hidden state ({unit}). Pass a plain array or a "
                "quantity of the hidden state's dimension."
            ) from None
    x = jnp.asarray(x)
    if x.ndim == 0 or x.shape[-1] != cell.num_in:
        raise ValueError(
            f"`{where}` expects inputs whose last axis has size {cell.num_in} "
            f"(`num_in`), but got an input of shape {x.shape}."
        )
    if x.shape[:-1] != hidden.shape[:-1]:
        check_single_call(getattr(cell, "h", None), where)  # an ensemble: say so
        raise ValueError(
            f"`{where}`: the input has batch shape {x.shape[:-1]} but the hidden state "
            f"has batch shape {hidden.shape[:-1]}. Initialise or reset the state with "
            "the input's batch size, e.g. "
            "`eqx_collective.init_all_states(model, batch_size=...)`."
        )
    return x


def _set_state(cell: Any, name: str, value: PyTree) -> Any:
    """`cell` with its hidden state `name` holding `value`: a new `HiddenState` if there
    was none, else the existing state (tag and flags kept) with the new value."""
    state = getattr(cell, name)
    state = HiddenState(value) if state is None else replace_fields(state, value=value)
    return replace_fields(cell, **{name: state})


class RNNCell(StatefulLayer):
    """Abstract base class of the recurrent cells (brainstate's `RNNCell`); use it as a
    type filter, e.g. `node_to_exclude=RNNCell`. The concrete cells are final.

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

    num_in: eqx.AbstractVar[int]
    num_out: eqx.AbstractVar[int]
    state_init: eqx.AbstractVar[Callable]

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


class _SingleStateCell(RNNCell):
    """Abstract base of the cells with one hidden state `h`: it creates, resets and
    steps `h`; a concrete cell holds its weights and computes `_step`."""

    h: eqx.AbstractVar[HiddenState | None]

    def _configure(self, num_in, num_out, state_init, activation) -> str:
        """Sets what every such cell's `__init__` sets alike (its sizes, an
        uninitialised `h`, `state_init` and `activation`); returns the cell's name,
        for messages."""
        where = type(self).__name__
        self.num_in = as_size(num_in, "num_in", where)
        self.num_out = as_size(num_out, "num_out", where)
        self.h = None
        self.state_init = _state_initialiser(state_init, where)
        self.activation = _activation(activation, where)
        return where

    def init_state(
        self, batch_size: int | None = None, *, key: PRNGKeyArray | None = None
    ) -> Self:
        """Creates the hidden state `h` of shape `(num_out,)`, or
        `(batch_size, num_out)`, from `state_init`.

        **Arguments:**

        - `batch_size`: the size of a leading batch axis, or `None` for none.
        - `key`: a JAX random key, needed only if `state_init` is random.

        **Returns:** the updated cell.

        **Raises:** `TypeError` / `ValueError` for a `batch_size` that is not a
        positive integer.
        """
        batch = _batch_shape(batch_size, f"{type(self).__name__}.init_state")
        return _set_state(self, "h", _new_value(self, batch, key, None))

    def reset_state(
        self, batch_size: int | None = None, *, key: PRNGKeyArray | None = None
    ) -> Self:
        """Sets `h` back to its initial value. With `batch_size=None` the current
        batch shape (and dtype) is **kept** (brainstate drops the batch axis here).

        **Arguments:** as for `init_state`.

        **Returns:** the updated cell.

        **Raises:** `RuntimeError` if the state was never initialised.
        """
        h = _state_value(self, "h", "be reset")
        batch = _reset_batch(h, batch_size, f"{type(self).__name__}.reset_state")
        return _set_state(self, "h", _new_value(self, batch, key, u.math.get_dtype(h)))

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
        h, unit = strip_unit(_state_value(self, "h", "be stepped"))
        x = _input(self, x, h, unit)
        new_h = attach_unit(method(self, "_step")(x, h), unit)
        return new_h, _set_state(self, "h", new_h)

    @abc.abstractmethod
    def _step(self, x: Array, h: Array) -> Array:
        """The new hidden state, as plain numbers, from the input and the state."""


class ValinaRNNCell(_SingleStateCell):
    r"""The vanilla (Elman) recurrent cell, spelled as brainstate spells it (alias
    [`eqx_collective.nn.VanillaRNNCell`][]):

    ```text
    h' = φ(W [x, h] + b)
    ```

    It holds `W`, a [`eqx_collective.nn.Linear`][] of size `num_in + num_out` to
    `num_out`, and `h`, a [`eqx_collective.HiddenState`][] (`None` until `init_state`).
    Units: see [`eqx_collective.nn.RNNCell`][].

    **Arguments:**

    - `num_in`: the number of input features (positional, like `num_out`).
    - `num_out`: the number of hidden units.
    - `w_init`, `b_init`: the initialisers of `W` (keyword-only, as every argument
        below; default [`eqx_collective.nn.XavierNormal`][] and
        [`eqx_collective.nn.ZeroInit`][]).
    - `state_init`: the hidden state's initialiser (default
        [`eqx_collective.nn.ZeroInit`][]); its unit becomes the state's unit. It is kept
        in a static field (a collective call never visits it), so it must be hashable;
        an array is taken as `Constant(array)`.
    - `activation`: $\phi$, a callable or the name of a `jax.nn` function (default
        `jax.nn.relu`).
    - `key`: a JAX random key for `W`.

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

    num_in: int = eqx.field(static=True)
    num_out: int = eqx.field(static=True)
    W: Linear
    h: HiddenState | None
    state_init: Callable = eqx.field(static=True)
    activation: Callable = eqx.field(static=True)

    def __init__(
        self,
        num_in: int,
        num_out: int,
        *,
        w_init: Callable | ArrayLike = _XAVIER_NORMAL,
        b_init: Callable | ArrayLike | None = ZERO_INIT,
        state_init: Callable | ArrayLike = ZERO_INIT,
        activation: str | Callable = jax.nn.relu,
        key: PRNGKeyArray | None,
    ):
        where = self._configure(num_in, num_out, state_init, activation)
        n = self.num_in + self.num_out
        self.W = _weights(where, n, self.num_out, w_init, b_init, key)

    def _step(self, x: Array, h: Array) -> Array:
        return self.activation(_numbers(self.W(jnp.concatenate([x, h], -1))))


VanillaRNNCell = ValinaRNNCell
"""The correctly spelled alias of [`eqx_collective.nn.ValinaRNNCell`][]."""


class GRUCell(_SingleStateCell):
    r"""The gated recurrent unit (Cho et al., 2014), with brainstate's maths:

    ```text
    r, z = σ(W_rz [x, h])
    h̃    = φ(W_h [x, r ⊙ h])
    h'   = (1 − z) ⊙ h + z ⊙ h̃
    ```

    It holds `Wrz` (`num_in + num_out` to `2 * num_out`), `Wh` (`num_in + num_out` to
    `num_out`) and the [`eqx_collective.HiddenState`][] `h` (`None` until
    `init_state`). Units: see [`eqx_collective.nn.RNNCell`][].

    **Arguments:**

    - `num_in`, `num_out`: the numbers of input features and hidden units
        (positional).
    - `w_init`, `b_init`: the weight and bias initialisers (keyword-only, as every
        argument below; default [`eqx_collective.nn.Orthogonal`][] and
        [`eqx_collective.nn.ZeroInit`][]).
    - `state_init`: the hidden state's initialiser (default `ZeroInit()`), as for
        [`eqx_collective.nn.ValinaRNNCell`][].
    - `activation`: $\phi$ (default `jax.nn.tanh`).
    - `key`: a JAX random key.

    !!! Example

        ```python
        cell = ec.init_all_states(GRUCell(8, 16, key=key), batch_size=2)
        h, cell = cell(jnp.ones((2, 8)))
        ```
    """

    num_in: int = eqx.field(static=True)
    num_out: int = eqx.field(static=True)
    Wrz: Linear
    Wh: Linear
    h: HiddenState | None
    state_init: Callable = eqx.field(static=True)
    activation: Callable = eqx.field(static=True)

    def __init__(
        self,
        num_in: int,
        num_out: int,
        *,
        w_init: Callable | ArrayLike = _ORTHOGONAL,
        b_init: Callable | ArrayLike | None = ZERO_INIT,
        state_init: Callable | ArrayLike = ZERO_INIT,
        activation: str | Callable = jax.nn.tanh,
        key: PRNGKeyArray | None,
    ):
        where = self._configure(num_in, num_out, state_init, activation)
        k1, k2 = (None, None) if key is None else jax.random.split(key)
        n = self.num_in + self.num_out
        self.Wrz = _weights(where, n, 2 * self.num_out, w_init, b_init, k1)
        self.Wh = _weights(where, n, self.num_out, w_init, b_init, k2)

    def _step(self, x: Array, h: Array) -> Array:
        gates = jax.nn.sigmoid(_numbers(self.Wrz(jnp.concatenate([x, h], -1))))
        r, z = jnp.split(gates, 2, axis=-1)
        candidate = self.activation(_numbers(self.Wh(jnp.concatenate([x, r * h], -1))))
        return (1 - z) * h + z * candidate


class LSTMCell(RNNCell):
    r"""The long short-term memory cell (Hochreiter & Schmidhuber, 1997), with
    brainstate's maths (forget-gate bias of `+1`):

    ```text
    i, g, f, o = W [x, h]
    c'         = σ(f + 1) ⊙ c + σ(i) ⊙ φ(g)
    h'         = σ(o) ⊙ φ(c')
    ```

    It holds `W` (`num_in + num_out` to `4 * num_out`) and two
    [`eqx_collective.HiddenState`][]s, `h` and `c` (`None` until `init_state`), both
    initialised by `state_init`. Units: see [`eqx_collective.nn.RNNCell`][]; `h` and
    `c` keep their own units.

    **Arguments:**

    - `num_in`, `num_out`: the numbers of input features and hidden units
        (positional).
    - `w_init`, `b_init`: the initialisers of `W` (keyword-only, as every argument
        below; default [`eqx_collective.nn.XavierNormal`][] and
        [`eqx_collective.nn.ZeroInit`][]).
    - `state_init`: the initialiser of `h` and `c` (default `ZeroInit()`), as for
        [`eqx_collective.nn.ValinaRNNCell`][].
    - `activation`: $\phi$ (default `jax.nn.tanh`).
    - `key`: a JAX random key.

    !!! Example

        ```python
        cell = ec.init_all_states(LSTMCell(8, 16, key=key), batch_size=2)
        h, cell = cell(jnp.ones((2, 8)))  # cell.c.value is the new cell state
        ```
    """

    num_in: int = eqx.field(static=True)
    num_out: int = eqx.field(static=True)
    W: Linear
    h: HiddenState | None
    c: HiddenState | None
    state_init: Callable = eqx.field(static=True)
    activation: Callable = eqx.field(static=True)

    def __init__(
        self,
        num_in: int,
        num_out: int,
        *,
        w_init: Callable | ArrayLike = _XAVIER_NORMAL,
        b_init: Callable | ArrayLike | None = ZERO_INIT,
        state_init: Callable | ArrayLike = ZERO_INIT,
        activation: str | Callable = jax.nn.tanh,
        key: PRNGKeyArray | None,
    ):
        where = type(self).__name__
        self.num_in = as_size(num_in, "num_in", where)
        self.num_out = as_size(num_out, "num_out", where)
        n = self.num_in + self.num_out
        self.W = _weights(where, n, 4 * self.num_out, w_init, b_init, key)
        self.h = None
        self.c = None
        self.state_init = _state_initialiser(state_init, where)
        self.activation = _activation(activation, where)

    def init_state(
        self, batch_size: int | None = None, *, key: PRNGKeyArray | None = None
    ) -> Self:
        """Creates `h` and `c`, each of shape `(num_out,)` or
        `(batch_size, num_out)`.

        **Arguments:** `batch_size` (or `None`); `key`, needed only by a random
        `state_init` (split between `h` and `c`).

        **Returns:** the updated cell.
        """
        batch = _batch_shape(batch_size, f"{type(self).__name__}.init_state")
        return _set_lstm_states(self, batch, key, (None, None))

    def reset_state(
        self, batch_size: int | None = None, *, key: PRNGKeyArray | None = None
    ) -> Self:
        """Sets `h` and `c` back to their initial values, keeping the current batch
        shape when `batch_size` is `None`.

        **Returns:** the updated cell.
        """
        h = _state_value(self, "h", "be reset")
        c = _state_value(self, "c", "be reset")
        batch = _reset_batch(h, batch_size, f"{type(self).__name__}.reset_state")
        dtypes = (u.math.get_dtype(h), u.math.get_dtype(c))
        return _set_lstm_states(self, batch, key, dtypes)

    def __call__(
        self, x: ArrayLike | u.Quantity, *, key: PRNGKeyArray | None = None
    ) -> tuple[Array | u.Quantity, Self]:
        """One step. **Returns:** `(h_new, updated_cell)`; the updated cell also holds
        the new `c`. Errors as for [`eqx_collective.nn.ValinaRNNCell`][]."""
        del key
        h, h_unit = strip_unit(_state_value(self, "h", "be stepped"))
        c, c_unit = strip_unit(_state_value(self, "c", "be stepped"))
        x = _input(self, x, h, h_unit)
        gates = _numbers(self.W(jnp.concatenate([x, h], -1)))
        i, g, f, o = jnp.split(gates, 4, axis=-1)
        c = jax.nn.sigmoid(f + 1.0) * c + jax.nn.sigmoid(i) * self.activation(g)
        h = jax.nn.sigmoid(o) * self.activation(c)
        new_h, new_c = attach_unit(h, h_unit), attach_unit(c, c_unit)
        return new_h, _set_state(_set_state(self, "h", new_h), "c", new_c)


_LSTM = TypeVar("_LSTM", bound=LSTMCell)


def _set_lstm_states(cell: _LSTM, batch, key, dtypes) -> _LSTM:
    kh, kc = (None, None) if key is None else jax.random.split(key)
    h = _new_value(cell, batch, kh, dtypes[0])
    c = _new_value(cell, batch, kc, dtypes[1])
    return _set_state(_set_state(cell, "h", h), "c", c)
