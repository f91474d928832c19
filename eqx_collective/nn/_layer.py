"""`Layer` (the base of this library's layers: every layer answers `init_state` and
`reset_state`) and `StatefulLayer` (layers whose forward call updates them)."""

from typing import Any, Self

import equinox as eqx

from .._collective import returns_self


class Layer(eqx.Module):
    """Base class of the layers of [`eqx_collective.nn`][]: the counterpart of
    brainstate's `brainstate.nn.Module`.

    As in brainstate, **every layer answers `init_state` and `reset_state`**: here they
    do nothing and return the layer itself (`return self`, the pure call protocol), and
    a layer with state overrides them. They are marked `returns_self`, so the
    operations that rebuild the tree skip these calls, whose result they know. So `call_all_fns(model, 'init_state', ...)` works
    on any model built of these layers, as brainstate's tutorial promises ("provided
    that each child module implements it"), with no `fn_if_not_exist='pass'`.

    The methods take and ignore any arguments, so that one call
    (`init_all_states(model, batch_size=4)`) can reach layers with and without state.
    Its methods, private ones included, bind as Equinox's do (a bound method is a
    pytree holding the layer, so `eqx.filter_jit(cell._step)` traces once for every
    cell of one shape).

    !!! Example

        ```python
        class Scale(nn.Layer):
            factor: float

            def __call__(self, x, *, key=None):
                return self.factor * x

        assert Scale(2.0).init_state(batch_size=4) == Scale(2.0)
        ```
    """

    @returns_self
    def init_state(self, *args: Any, **kwargs: Any) -> Self:
        """Creates the layer's state: nothing here. Returns the layer unchanged."""
        del args, kwargs
        return self

    @returns_self
    def reset_state(self, *args: Any, **kwargs: Any) -> Self:
        """Resets the layer's state: nothing here. Returns the layer unchanged."""
        del args, kwargs
        return self


class StatefulLayer(Layer):
    """Base class of the layers whose forward call updates the layer itself
    (recurrent cells, layers holding buffers).

    **The stateful call convention.** Modules are immutable, so a stateful layer
    cannot change its hidden state in place. Instead its forward call returns the
    output *and* the updated layer:

    ```python
    output, layer = layer(x)  # `layer.h` now holds the new hidden state
    ```

    **Not Equinox's `eqx.nn.StatefulLayer`**, though it plays the same part for
    [`eqx_collective.nn.Sequential`][]: Equinox's stateful layers keep their state
    outside the model, in an `eqx.nn.State`, and are called as
    `output, state = layer(x, state, key=key)`; here the state lives inside the layer
    (in [`eqx_collective.HiddenState`][] fields, where collective operations find it)
    and the call returns the updated layer. An `eqx.nn.StatefulLayer` is not an
    instance of this class, so [`eqx_collective.nn.Sequential`][] calls it as a plain
    layer.

    A subclass may override `is_stateful()` to decide per instance (as
    [`eqx_collective.nn.Sequential`][] does: it is stateful iff one of its layers is).
    It inherits the no-op `init_state` / `reset_state` of
    [`eqx_collective.nn.Layer`][]; a layer with state overrides them.

    !!! Example

        ```python
        class Counter(StatefulLayer):
            count: jax.Array

            def __call__(self, x, *, key=None):
                return x, eqx.tree_at(lambda c: c.count, self, self.count + 1)
        ```
    """

    def is_stateful(self) -> bool:
        """Whether the forward call returns `(output, updated_layer)`; `True` here."""
        return True


def is_stateful(layer: Any) -> bool:
    """Whether `layer` follows the stateful call convention (see
    [`eqx_collective.nn.StatefulLayer`][])."""
    return isinstance(layer, StatefulLayer) and layer.is_stateful()
