"""`OrderedMethod`: what `call_order` turns a method into, so that its level can be
read from the class, from an instance and from the function alike."""

import functools
import types
from collections.abc import Callable
from typing import Any

import equinox as eqx

from ._fields import make


_WRAPPER_NAMES = (
    "__module__",
    "__name__",
    "__qualname__",
    "__doc__",
    "__annotations__",
)


class OrderedMethod:
    """A function tagged with a `call_order` level; it behaves as the function.

    Equinox hands out a module's methods as `eqx.Module` bound methods (pytrees), which
    do not show the function's own attributes, so `module.init_state.call_order` would
    be unreadable. An `OrderedMethod` binds instead to an
    `OrderedBoundMethod`: the same pytree bound
    method (usable with `jax.jit`), that also shows `call_order`, and costs a plain
    attribute read (no `eqx.Module` construction).
    """

    __wrapped__: Callable  # set by `functools.update_wrapper`
    call_order: int

    def __init__(self, fn: Callable, level: int):
        if isinstance(fn, OrderedMethod):  # decorated twice: the outer level wins
            fn = fn.__wrapped__
        functools.update_wrapper(self, fn)
        # also readable from the function (brainstate does so; pyright: a function's
        # type declares no such attribute)
        fn.call_order = level  # pyright: ignore[reportFunctionMemberAccess]
        self.call_order = level

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.__wrapped__(*args, **kwargs)

    def __get__(self, obj: Any, objtype: type | None = None) -> Any:
        if obj is None:
            return self
        if not isinstance(obj, eqx.Module):
            return types.MethodType(self, obj)
        fn = self.__wrapped__
        values = {"__func__": fn, "__self__": obj}
        for name in _WRAPPER_NAMES:
            if hasattr(fn, name):
                values[name] = getattr(fn, name)
        return make(OrderedBoundMethod, values)

    def __repr__(self) -> str:
        return f"<call_order({self.call_order}) {self.__wrapped__!r}>"


class OrderedBoundMethod(eqx.Module):
    """The bound method of a method tagged by `call_order`, showing its level as
    `call_order`. Like Equinox's own bound methods, it is a pytree holding `__self__`,
    so it can be passed through `jax.jit` and the filtered transformations. (Ours, not
    a subclass of Equinox's, which is private.)"""

    __func__: Callable = eqx.field(static=True)
    __self__: eqx.Module

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.__func__(self.__self__, *args, **kwargs)

    @property
    def __wrapped__(self) -> Callable:
        return self.__func__.__get__(self.__self__, type(self.__self__))

    @property
    def call_order(self) -> int:
        """The method's `call_order` level."""
        # (set by `OrderedMethod`; pyright: a function's type declares no such attribute)
        return self.__func__.call_order  # pyright: ignore[reportFunctionMemberAccess]
