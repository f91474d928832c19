"""Equinox layers inside batched models: `PerExample` and `WithState`.

Equinox's layers take one example (`eqx.nn.Linear(3, 2)` maps a `(3,)` input to `(2,)`;
a batch goes through `jax.vmap`), while the layers of `eqx_collective.nn` take a batch,
as brainstate's do. These two wrappers put an Equinox layer where a batch flows.
"""

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
from jaxtyping import PRNGKeyArray, PyTree

from ._sequential import StatefulLayer


def _batch_keys(key: PRNGKeyArray | None, x: Any) -> Any:
    return (
        None if key is None else jax.random.split(key, jax.tree.leaves(x)[0].shape[0])
    )


class PerExample(eqx.Module):
    """A per-example layer (Equinox's convention) applied to every example of a batch,
    with `jax.vmap` over the leading axis: `PerExample(eqx.nn.MLP(...))` takes
    `(batch, in)` and gives `(batch, out)`. The wrapped layer's arrays are the
    wrapper's (a raw floating array is a parameter, see `eqx_collective.partition`).

    **Arguments:**

    - `layer`: a callable taking one example, `layer(x)` or `layer(x, key=...)`.

    !!! Example

        ```python
        net = nn.Sequential(
            nn.GRUCell(3, 16, key=k1),
            nn.PerExample(eqx.nn.MLP(16, 2, 32, 2, key=k2)),
        )
        ```
    """

    layer: Callable

    def __call__(self, x: PyTree, *, key: PRNGKeyArray | None = None) -> PyTree:
        """**Arguments:** `x`, a batch (its leaves lead with the batch axis); `key`,
        split into one key per example for layers that take one.

        **Returns:** the batch of outputs.
        """
        keys = _batch_keys(key, x)
        if keys is None:
            return jax.vmap(self.layer)(x)
        return jax.vmap(lambda x, k: self.layer(x, key=k))(x, keys)


class WithState(StatefulLayer):
    """An Equinox stateful layer (one called as `layer(x, state)`, such as
    `eqx.nn.BatchNorm`) together with its `eqx.nn.State`, as one of our stateful
    layers: called on a batch, it returns `(output, updated_wrapper)`.

    The example axis is mapped with `jax.vmap(..., axis_name=axis_name)`, which is how
    `eqx.nn.BatchNorm` computes its batch statistics. The state's values are part of
    the model: snapshots, checkpoints and restores address them by the path of their
    `eqx.nn.StateIndex` (`('state', 'state_index')`, below this wrapper's path).

    **Arguments:**

    - `layer`: the Equinox layer.
    - `state`: its `eqx.nn.State` (from `eqx.nn.make_with_state`).
    - `axis_name`: the name of the batch axis the layer expects (`"batch"` for
        `eqx.nn.BatchNorm(..., axis_name="batch")`).

    !!! Example

        ```python
        bn = nn.WithState(*eqx.nn.make_with_state(eqx.nn.BatchNorm)(16, "batch"))
        y, bn = bn(jnp.ones((8, 16)))
        ```
    """

    layer: Callable
    state: eqx.nn.State
    axis_name: str = eqx.field(default="batch", static=True)

    def __call__(self, x: PyTree, *, key: PRNGKeyArray | None = None) -> Any:
        """**Returns:** `(output, updated_wrapper)`; the wrapper holds the new state."""
        keys = _batch_keys(key, x)

        def one(x, state, key):
            kwargs = {} if key is None else {"key": key}
            return self.layer(x, state, **kwargs)

        y, state = jax.vmap(
            one, in_axes=(0, None, None if keys is None else 0),
            out_axes=(0, None), axis_name=self.axis_name,
        )(x, self.state, keys)  # fmt: skip
        return y, eqx.tree_at(lambda w: w.state, self, state)
