"""`Sequential`: layers applied one after the other."""

import inspect
from collections.abc import Callable, Iterator
from typing import Any

import equinox as eqx
import jax
from jaxtyping import PRNGKeyArray

from ._layer import is_stateful, StatefulLayer


def _call(i: int, layer: Callable, x: Any, kwargs: dict) -> Any:
    """`layer(x, **kwargs)`; an error raised by a layer from outside this package gets
    a note on the batch convention, the usual cause at that seam."""
    try:
        return layer(x, **kwargs)
    except Exception as e:
        if not type(layer).__module__.startswith("eqx_collective."):
            e.add_note(
                f"(raised by layer {i} of `Sequential`, a {type(layer).__name__}. The "
                "layers of `eqx_collective.nn` take a batch, as brainstate's do, and "
                "`Sequential` passes the batch on; Equinox's layers take one example. "
                "Wrap such a layer as `nn.PerExample(layer)`, or `nn.WithState(layer, "
                "state)` for one called with an `eqx.nn.State`.)"
            )
        raise


def _takes_key(layer: Callable) -> bool:
    """Whether `layer(x, key=...)` is accepted."""
    try:
        params = inspect.signature(layer).parameters
    except (TypeError, ValueError):
        return False
    return "key" in params or any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()
    )


class Sequential(StatefulLayer):
    """Applies layers one after the other (brainstate's and Equinox's `Sequential`).

    The layers are kept in the tuple field `layers`, so their paths are
    `('layers', 0)`, `('layers', 1)`, ...; `seq[i]`, `len(seq)` and iteration work,
    and `seq[i:j]` is a `Sequential` of those layers. `Sequential` has no hidden state
    of its own (its `init_state` / `reset_state` return it unchanged); collective
    operations reach its layers.

    **Calling convention** (that of `eqx.nn.Sequential`): a layer is *stateful* if it
    is an [`eqx_collective.nn.StatefulLayer`][] whose `is_stateful()` is true; it is
    called as `output, layer = layer(x, key=...)`. Other layers are called as
    `output = layer(x, key=...)`. Then `Sequential(...)(x, key=key)` returns

    - `(output, updated_sequential)` if **any** of its layers is stateful (the
        updated sequential holds the updated layers), else
    - just `output`.

    Which of the two is decided by the layers' types, never by values, so it is fixed
    under `jax.jit`. The `key` is split among the layers whose `__call__` takes a `key`
    argument (all of this library's layers do); with `key=None` they get `key=None`.

    **Not Equinox's `eqx.nn.Sequential`**, though the name and the indexing are the
    same: Equinox's takes its stateful layers' state as an argument
    (`y, state = seq(x, state, key=key)`, with an `eqx.nn.State`) and splits `key`
    among *all* layers; this one keeps the state inside the layers, returns the
    updated `Sequential` (only when a layer is stateful) and splits `key` among the
    layers that take one. Unlike brainstate's, calling it changes nothing in place.

    **Arguments:**

    - `*layers`: the layers: modules or any callables. (A module without `__call__`
        may be held too, for collective operations, but calling the `Sequential`
        then fails.)

    !!! Example

        ```python
        from eqx_collective.nn import Dropout, GELU, Linear, Sequential

        k1, k2 = jax.random.split(jax.random.key(0))
        model = Sequential(Linear(10, 32, key=k1), GELU(), Dropout(prob=0.1))
        y = model(jnp.ones((4, 10)), key=k2)  # no stateful layer: just the output

        rnn = Sequential(Linear(4, 8, key=k1), ValinaRNNCell(8, 16, key=k2))
        rnn = ec.init_all_states(rnn, batch_size=4)
        y, rnn = rnn(jnp.ones((4, 4)))  # stateful: (output, updated sequential)
        ```
    """

    layers: tuple[Any, ...]

    def __init__(self, *layers: Callable | eqx.Module):
        for i, layer in enumerate(layers):
            if not (callable(layer) or isinstance(layer, eqx.Module)):
                raise TypeError(
                    f"`Sequential` takes layers that are modules or callables, but "
                    f"layer {i} is a {type(layer).__name__}."
                )
        self.layers = tuple(layers)

    def __getitem__(self, i: int | slice) -> Any:
        if isinstance(i, slice):
            return Sequential(*self.layers[i])
        return self.layers[i]

    def __len__(self) -> int:
        return len(self.layers)

    def __iter__(self) -> Iterator[Any]:
        yield from self.layers

    def is_stateful(self) -> bool:
        """Whether any layer is stateful, i.e. whether calling this `Sequential`
        returns `(output, updated_sequential)`."""
        return any(is_stateful(layer) for layer in self.layers)

    def __call__(self, x: Any, *, key: PRNGKeyArray | None = None) -> Any:
        """Applies the layers in order.

        **Arguments:**

        - `x`: the input of the first layer.
        - `key`: a JAX random key, split among the layers that take one (needed by
            e.g. [`eqx_collective.nn.Dropout`][] in training mode).

        **Returns:** `(output, updated_sequential)` if `self.is_stateful()`, else the
        output.
        """
        takes_key = [_takes_key(layer) for layer in self.layers]
        n_keys = sum(takes_key)
        if key is None or n_keys == 0:
            keys = iter([None] * n_keys)
        else:
            keys = iter(jax.random.split(key, n_keys))
        new_layers = []
        for i, (layer, wants_key) in enumerate(
            zip(self.layers, takes_key, strict=True)
        ):
            kwargs = {"key": next(keys)} if wants_key else {}
            if is_stateful(layer):
                result = _call(i, layer, x, kwargs)
                if not (
                    isinstance(result, tuple)
                    and len(result) == 2
                    and type(result[1]) is type(layer)
                ):
                    raise TypeError(
                        f"`Sequential`: layer {i} ({type(layer).__name__}) is a "
                        "`StatefulLayer`, so its call must return `(output, "
                        f"updated_layer)` with `updated_layer` a {type(layer).__name__}"
                        f", but it returned {type(result).__name__}."
                    )
                x, layer = result
            else:
                x = _call(i, layer, x, kwargs)
            new_layers.append(layer)
        if not self.is_stateful():
            return x
        return x, eqx.tree_at(lambda s: s.layers, self, tuple(new_layers))
