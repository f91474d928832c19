"""`filter_jit`: `eqx.filter_jit`'s semantics at close to `jax.jit`'s per-call cost.

## Design

`eqx.filter_jit` flattens every argument with `jax.tree_util` on every call, splits the
leaves into arrays (traced) and the rest (static, hashed with the tree structure), and
rebuilds the outputs the same way. On a model of hundreds of modules that Python work
is most of a call. Here the same split is made (`_jit_parts.split`: same structure,
same static leaves, same retracing), but a call skips it for a tree met before:

- Each argument (and the wrapped function itself, and the keyword arguments) is a
    `Part`: its arrays, its key (structure + static leaves) and what its dicts and
    lists held. The parts of the last call, and the parts of its output, are kept.
- A call looks each argument up among them by identity. Modules and tuples cannot
    change, so an argument that *is* a kept tree, whose dicts and lists still hold
    the same objects (`Part.holds`), has the kept arrays and key. Any other argument
    is split, as `eqx.filter_jit` does. A training loop passes back what the last call
    returned (`params`, the optimiser state) and passes the same `rest`: nothing is
    flattened.
- The keys select a `jax.jit` of the function over the lists of arrays (one per
    structure, as `eqx.filter_jit`'s cache). Its output is rebuilt by code generated
    once per output structure (`_jit_build.Builder`), which also returns the dicts and
    lists it made: the output's parts are kept to be recognised when passed back.

The wrapper is an `eqx.Module` holding the function, so a jitted model is a pytree of
the model's leaves, as with `eqx.filter_jit`.
"""

import functools as ft
import inspect
import logging
import operator
import types
import warnings
import weakref
from collections.abc import Callable
from typing import Any, Literal

import equinox as eqx
import jax
import jax.core
import jax.numpy as jnp

from . import _fields
from ._jit_build import Builder
from ._jit_parts import Key, Part, split


Donate = Literal["all", "all-except-first", "warn", "warn-except-first", "none"]
_DONATE = {
    # (suppress the unusable-buffer warnings, donate the first argument, donate the
    # function's arrays and the other arguments)
    "all": (True, True, True),
    "all-except-first": (True, False, True),
    "warn": (False, True, True),
    "warn-except-first": (False, False, True),
    "none": (False, False, False),
}


class _Cache:
    """The compiled functions of one wrapped function (shared by all its wrappers, as
    in `eqx.filter_jit`), by argument keys; and the parts of its last call and
    output, by `id`. Hashed by identity: it is a static field of the wrapper."""

    __slots__ = ("entries", "kept", "watch", "keys", "last", "__weakref__")

    def __init__(self):
        self.entries: dict[tuple, Any] = {}
        self.kept: dict[int, Part] = {}
        self.watch: list = []  # weak references that drop a kept module's part
        self.keys: weakref.WeakValueDictionary[Key, Key] = weakref.WeakValueDictionary()
        self.last: tuple | None = None  # the last call's `(donate, keys, jax.jit)`


# Like `eqx.filter_jit`, compiled functions are shared by every wrapper of the same
# Python function (held weakly), and by every wrapper of a callable object of the same
# type name (its key, compared per call, keeps them apart).
_FUNCTION_CACHES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_OTHER_CACHES: dict[tuple[str, str], _Cache] = {}


def _cache_for(fn: Any) -> _Cache:
    if type(fn) is types.FunctionType:
        return _FUNCTION_CACHES.setdefault(fn, _Cache())
    cls = type(fn)
    return _OTHER_CACHES.setdefault((cls.__module__, cls.__qualname__), _Cache())


def clear_caches() -> None:
    """Empties the caches of [`eqx_collective.filter_jit`][]: its compiled functions
    and the trees it keeps from the last call of each function, so that the next call
    traces anew.

    `eqx.clear_caches()` does not reach these caches (Equinox offers no public hook);
    `jax.clear_caches()` drops the compiled programs behind them, so both retrace, but
    the last calls' trees that are not modules stay referenced until this is called.

    **Arguments:** none.

    **Returns:** `None`.
    """
    for cache in [*_FUNCTION_CACHES.values(), *_OTHER_CACHES.values()]:
        cache.entries.clear()
        cache.kept.clear()
        cache.watch = []
        cache.keys.clear()
        cache.last = None
    _FUNCTION_CACHES.clear()
    _OTHER_CACHES.clear()


def _positional_counts(signature: inspect.Signature) -> tuple[float, float]:
    """`(low, high)`: a call with between `low` and `high` positional arguments and no
    keyword arguments is bound as it is (`bound.args == args`, `bound.kwargs == {}`).
    `(1, 0)` when a keyword-only parameter is required (no call is bound as is)."""
    low, high = 0, 0
    for p in signature.parameters.values():
        if p.kind == p.VAR_POSITIONAL:
            high = float("inf")
        elif p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            high += 1
            low += p.default is p.empty
        elif p.kind == p.KEYWORD_ONLY and p.default is p.empty:
            return 1, 0
    return low, high


class _Out:
    """The static part of a traced function's output: a builder and a key for each
    part (the elements of a returned tuple, or the whole output). The auxiliary data
    of a childless pytree node, so `jax.jit` hands it back with the output arrays."""

    __slots__ = ("split", "parts")

    def __init__(self, out: Any, parts: list[Part], name: str):
        self.split = type(out) is tuple
        # (builder, key, own key, whether kept: a tree `Part.holds` can vouch for)
        self.parts = [
            (Builder(p.root, name), p.key, p.own_key, p.verifiable and p.is_tree)
            for p in parts
        ]

    def build(self, arrays: list) -> tuple[Any, list[Part]]:
        """The output from its arrays, and its trees to keep (none under an outer
        transformation: tracers are never kept)."""
        keep = not (arrays and isinstance(arrays[0], jax.core.Tracer))
        trees, parts, i = [], [], 0
        for builder, key, own_key, kept in self.parts:
            own = arrays[i : i + builder.num_arrays]
            i += builder.num_arrays
            tree, dicts, lists, values, items = builder.build(own)
            trees.append(tree)
            if keep and kept:
                held = (builder.lens, builder.keys, values, items)
                part = Part(tree, own, key, dicts, lists, True, True, held, own_key)
                parts.append(part)
        return (tuple(trees) if self.split else trees[0]), parts


jax.tree_util.register_pytree_node(_Out, lambda o: ((), o), lambda o, _: o)


_NO_KWARGS: dict = {}  # (never mutated: the keyword arguments of a positional call)
# JAX logs a failed callback here; hidden during our calls (`_Call.run`).
_CALLBACK_LOGGER = logging.getLogger("jax._src.callback")


class _Call:
    """How a wrapper calls: its function's signature and cache, and its donation. A
    plain object, so that a call reads it once instead of each static field of the
    wrapper; equal for equal signatures, caches and donations (so that wrappers of one
    function are equal pytrees)."""

    __slots__ = ("signature", "low", "high", "cache", "donate", "quiet", "flags", "any")

    def __init__(self, fn: Callable, cache: _Cache, donate: str):
        self.signature = inspect.signature(fn)
        self.low, self.high = _positional_counts(self.signature)
        self.cache, self.donate = cache, donate
        self.quiet, first, rest = _DONATE[donate]
        # Whether each part is donated, by number of parts (function, arguments,
        # keyword arguments).
        self.flags = lambda n: (
            (rest, first, *[rest] * (n - 2)) if n > 2 else (rest,) * n
        )
        self.any = first or rest  # (whether anything is donated)

    def __eq__(self, other: object) -> bool:
        return type(other) is _Call and (
            (self.cache, self.donate, self.signature)
            == (other.cache, other.donate, other.signature)
        )

    def __hash__(self) -> int:
        return hash((id(self.cache), self.donate))

    def parts(self, fn: Callable, args: tuple, kwargs: dict) -> list[Part]:
        """The parts of a call: the function, each positional argument (as bound by
        the signature), the keyword arguments. A tree kept from the last call that
        still holds what it held is not split again."""
        if kwargs or not self.low <= len(args) <= self.high:
            bound = self.signature.bind(*args, **kwargs)
            args, kwargs = bound.args, bound.kwargs
        else:
            kwargs = _NO_KWARGS  # (what `Signature.bind` would give)
        kept, known, parts = self.cache.kept, self.cache.keys, []
        for x in (fn, *args, kwargs):
            part = kept.get(id(x))
            if (
                part is None
                or part.ref() is not x
                or (part.mutable and not part.holds())
            ):
                part = split(x, known)
            parts.append(part)
        return parts

    def arrays(self, parts: list[Part]) -> tuple[list, list]:
        """The parts' lists of arrays: `(donated, kept)`."""
        if not self.any:
            return [], [p.arrays for p in parts]
        donated, kept = [], []
        for part, flag in zip(parts, self.flags(len(parts)), strict=True):
            (donated if flag else kept).append(part.arrays)
        return donated, kept

    def entry(self, wrapper: "_JitWrapper", parts: list[Part]) -> Any:
        """The `jax.jit` for the parts' keys (made on first sight; the last call's
        compared first, by identity: equal keys are one object)."""
        keys, cache = [p.key for p in parts], self.cache
        last = cache.last
        if last is not None and last[0] == self.donate and len(keys) == len(last[1]):
            if all(map(operator.is_, keys, last[1])):
                return last[2]
        entries = cache.entries
        entry = entries.get((self.donate, *keys))
        if entry is None:
            own_keys = tuple(p.own_key for p in parts)
            entry = _make_entry(wrapper.fn, self.flags(len(keys)), own_keys, cache)
            entries[(self.donate, *keys)] = entry
        cache.last = (self.donate, keys, entry)
        return entry

    def run(self, compiled: Callable, parts: list[Part], keep: bool) -> Any:
        """Calls `compiled` on the parts' arrays and waits for it, as `eqx.filter_jit`
        does (so that an `eqx.error_if` raises here); returns the output, built while
        the computation runs. If `keep`, this call's trees are then kept, letting go of
        the last call's."""
        donated, kept = self.arrays(parts)
        _CALLBACK_LOGGER.addFilter(_QUIET_CALLBACKS)
        try:
            if self.quiet:
                with warnings.catch_warnings():
                    warnings.filterwarnings(
                        "ignore", message="Some donated buffers were not usable"
                    )
                    marker, arrays, out = compiled(donated, kept)
            else:
                marker, arrays, out = compiled(donated, kept)
            result, out_parts = out.build(arrays)
            if not isinstance(marker, jax.core.Tracer):
                marker.block_until_ready()
            if keep:
                # This call's arguments and its output's trees (not bare arrays,
                # whose buffers would be held for nothing). Replaced once the
                # computation is done: freeing the last call's arrays while it runs
                # costs three times as much (measured; PjRt's CPU client).
                kept = {id(p.root): p for p in out_parts}
                for p in parts:
                    if p.checkable:
                        kept[id(p.root)] = p
                self.cache.kept, self.cache.watch = kept, _watch(kept)
        except (jax.errors.JaxRuntimeError, ValueError) as e:  # (as `eqx.filter_jit`)
            _raise_runtime_error(e)
            raise
        finally:
            _CALLBACK_LOGGER.removeFilter(_QUIET_CALLBACKS)
        return result


class _JitWrapper(eqx.Module):
    """What [`eqx_collective.filter_jit`][] returns: a module holding the function, so
    that a jitted model is a pytree of the model's leaves (as with `eqx.filter_jit`)."""

    fn: Callable
    donate: str = eqx.field(static=True)
    _call: _Call = eqx.field(static=True, repr=False)

    @property
    def __wrapped__(self) -> Callable:
        return self.fn

    def __call__(self, /, *args: Any, **kwargs: Any) -> Any:
        fields = _fields.fields(self)  # (`self._call` and `self.fn`, read faster)
        call = fields["_call"]
        parts = call.parts(fields["fn"], args, kwargs)
        return call.run(call.entry(self, parts), parts, keep=True)

    def lower(self, /, *args: Any, **kwargs: Any) -> "Lowered":
        """Lowers the function for these arguments (ahead-of-time compilation, as
        `eqx.filter_jit(fn).lower`): `.as_text()`, `.compile(compiler_options=...)`."""
        call = self._call
        parts = call.parts(self.fn, args, kwargs)
        return Lowered(call.entry(self, parts).lower(*call.arrays(parts)), self)

    def __get__(self, instance: Any, owner: Any = None) -> Any:
        if instance is None:
            return self
        return eqx.Partial(self, instance)  # a pytree, as Equinox binds methods


class Lowered(eqx.Module):
    """A lowered `filter_jit` function (`jax.stages.Lowered` with our calling
    convention)."""

    lowered: Any
    wrapper: _JitWrapper

    def as_text(self) -> str:
        return self.lowered.as_text()

    def compile(self, /, compiler_options: dict[str, Any] | None = None) -> "Compiled":
        compiled = self.lowered.compile(compiler_options=compiler_options)
        return Compiled(compiled, self.wrapper)


class Compiled(eqx.Module):
    """A compiled `filter_jit` function, called like the function."""

    compiled: Any
    wrapper: _JitWrapper

    def __call__(self, /, *args: Any, **kwargs: Any) -> Any:
        call = self.wrapper._call
        parts = call.parts(self.wrapper.fn, args, kwargs)
        return call.run(self.compiled, parts, keep=False)


def _watch(kept: dict[int, Part]) -> list:
    """Weak references to the kept modules whose death drops their part from `kept`
    (its arrays with it). (Held beside `kept`, not in its parts: no cycle.)"""
    return [
        weakref.ref(p.root, ft.partial(_forget, kept, key))
        for key, p in kept.items()
        if type(p.ref) is weakref.ref
    ]


def _forget(kept: dict, key: int, _: Any) -> None:
    kept.pop(key, None)


def _make_entry(fn: Any, flags: tuple, keys: tuple[Key, ...], cache: _Cache) -> Any:
    """A `jax.jit` of the function over the parts' arrays. (It holds the keys, never
    the wrapper or `fn`: the cache outlives them, and must not hold a jitted model's
    arrays.)"""
    known = cache.keys
    name = getattr(fn, "__name__", None)
    name = name if isinstance(name, str) else type(fn).__name__

    def traced(donated: list, kept: list) -> tuple:
        d, k = iter(donated), iter(kept)
        trees = [
            key.rebuild(next(d) if flag else next(k))
            for key, flag in zip(keys, flags, strict=True)
        ]
        fn, *args, kwargs = trees
        out = fn(*args, **kwargs)
        out_parts = [split(p, known) for p in (out if type(out) is tuple else (out,))]
        arrays = [a for p in out_parts for a in p.arrays]
        # (`marker`: an output to wait on, as `eqx.filter_jit` waits, for its errors)
        return jnp.zeros((), jnp.int8), arrays, _Out(out, out_parts, name)

    traced.__name__ = traced.__qualname__ = name
    return jax.jit(traced, donate_argnums=0 if any(flags) else ())


class _QuietCallbacks(logging.Filter):
    """Hides JAX's log line for a failed callback, as `eqx.filter_jit` does (the error
    is raised as an `eqx.EquinoxRuntimeError`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (
            record.name == "jax._src.callback"
            and record.getMessage() == "jax.pure_callback failed"
        )


_QUIET_CALLBACKS = _QuietCallbacks()
_ERROR = """Above is the stack outside of JIT. (`ec.filter_jit` does not show the stack \
inside JIT.)

equinox.EquinoxRuntimeError: {msg}

-------------------

An error occurred during the runtime of your JAX program. Setting the environment
variable `EQX_ON_ERROR=breakpoint` is usually the most useful way to debug it; see
`https://docs.kidger.site/equinox/api/debug/` for more.
"""


def _raise_runtime_error(error: Exception) -> None:
    """Raises an `eqx.error_if` failure as an `eqx.EquinoxRuntimeError`, as
    `eqx.filter_jit` does; returns for any other error."""
    text = str(error)
    if "_EquinoxRuntimeError: " in text:
        msg = text.split("_EquinoxRuntimeError: ", 1)[1].split("\n\n", 1)[0].strip()
        raise eqx.EquinoxRuntimeError(_ERROR.format(msg=msg)) from None


def filter_jit(fn: Callable | None = None, *, donate: Donate = "none") -> Any:
    """`eqx.filter_jit` with a per-call cost close to `jax.jit` on a flat list of
    arrays, however many modules the arguments hold.

    The semantics are `eqx.filter_jit`'s: every JAX or NumPy array (`eqx.is_array`) in
    the arguments, and in `fn` itself if it is a module, is traced; everything else
    (Python scalars, static fields, `None`s, functions, ...) is static, and a call whose
    static parts differ (by hash and `==`) from every earlier call's traces anew. The
    output's arrays come back as JAX arrays and its other leaves as the Python objects
    the trace returned. A call waits for its result, so that an `eqx.error_if` raises
    an `eqx.EquinoxRuntimeError` there. The wrapper is a module whose leaves are
    `fn`'s; it binds as a method (`eqx.Partial(wrapper, instance)`), and has `.lower`.

    What differs is the cost of a call: `eqx.filter_jit` flattens every argument
    through `jax.tree_util` on every call; `filter_jit` keeps the trees of the last
    call and of its output, and does not flatten again a tree passed back unchanged
    (same object, its dicts and lists holding the same objects: modules and tuples
    cannot change). Modules are kept weakly: a model the caller drops is freed at
    once; other trees (a tuple, list or dict passed as an argument) stay referenced
    until the next call, or [`eqx_collective.clear_caches`][]. See
    [Training loops](../concepts/training.md#keeping-dispatch-cheap-on-big-models).

    **Arguments:**

    - `fn`: the pure function to compile (or a callable module, whose arrays are traced).
        Without it, returns a decorator: `@filter_jit(donate="all")`.
    - `donate`: as for `eqx.filter_jit`: `'all'` donates the buffers of every argument
        array (and of `fn`'s), `'all-except-first'` of all but the first argument's,
        both without warning about unusable buffers; `'warn'` and
        `'warn-except-first'` do the same but keep the warnings; `'none'` (the default)
        donates nothing. A donated array cannot be used again.

    **Returns:** the compiled function, called like `fn`.

    !!! Example

        ```python
        @ec.filter_jit
        def train_step(params, rest, opt_state, x, y):
            ...
            return params, opt_state, loss

        for x, y in batches:
            params, opt_state, loss = train_step(params, rest, opt_state, x, y)
        ```
    """
    if fn is None:
        return ft.partial(filter_jit, donate=donate)
    if donate not in _DONATE:
        raise ValueError(
            f"`filter_jit(..., donate=...)` must be one of 'all', 'all-except-first', "
            f"'warn', 'warn-except-first' or 'none', but got {donate!r}."
        )
    wrapper = _JitWrapper(fn, donate, _Call(fn, _cache_for(fn), donate))
    return eqx.module_update_wrapper(wrapper)
