"""`PlainPrivateMethods`: the base of the layers and initialisers, under which a
private method (`self._step`) is read as a plain Python bound method."""

from typing import Any

import equinox as eqx


class PlainPrivateMethods(eqx.Module):
    """A module whose private attributes (names starting with `_`) are read as by
    `object`: a private method is a plain Python bound method.

    Equinox turns every method read from an instance into a pytree bound method (an
    `eqx.Module`, so that `jax.jit(module.method)` works), which costs tens of µs per
    read: more than a layer's own work in an eager `init_state`. A private method is
    never handed to a transform, so this base reads it plainly, and layers call their
    helpers as ordinary methods (`self._step(x, h)`). Public methods keep Equinox's
    behaviour.
    """

    def __getattribute__(self, name: str) -> Any:
        if name[0] == "_":
            return object.__getattribute__(self, name)
        return super().__getattribute__(name)
