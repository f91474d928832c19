"""Collective calls: `call_order`, `call_all_fns`, `collect_all_fns`, `init_all_states`,
`reset_all_states`."""

import inspect
import os
import sys
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, NamedTuple, TypeVar

import equinox as eqx
import jax
from jaxtyping import PRNGKeyArray, PyTree

from ._ensemble import rewrite, single_view
from ._fields import ClassCache, fields, method
from ._filters import Filter, to_predicate
from ._ordered_method import OrderedMethod
from ._paths import Path, path_hash, path_repr
from ._walk import holds_arrays, iter_nodes, iter_states, walk


T = TypeVar("T")

MAX_ORDER = 10
_FN_IF_NOT_EXIST = ("raise", "warn", "pass")


def call_order(level: int = 0, check_order_boundary: bool = True) -> Callable:
    """Decorator fixing when a method runs in a collective operation.

    Methods without `call_order` run first, in traversal order (children before parent,
    siblings in declaration order); decorated ones run after them by ascending `level`,
    ties in traversal order.

    **Arguments:**

    - `level`: an `int`; lower runs earlier. In `[0, 10)` unless
        `check_order_boundary=False`.
    - `check_order_boundary`: whether to check the range of `level`.

    **Returns:** the decorator. The decorated method behaves as before, and its level
    is readable as `call_order` from the class, from an instance (`module.method` is
    still a pytree bound method, usable with `jax.jit`) and from the function.

    **Raises:** `ValueError` for a `level` out of range; `TypeError` for a non-`int`.

    !!! Example

        ```python
        class EncoderDecoder(eqx.Module):
            ...
            @ec.call_order(1)
            def reset_state(self):  # runs after every undecorated `reset_state`
                return self
        ```
    """
    if not isinstance(level, int) or isinstance(level, bool):
        raise TypeError(
            f"`call_order` takes an integer `level`, but got {type(level).__name__} "
            f"{level!r}."
        )
    if check_order_boundary and not 0 <= level < MAX_ORDER:
        raise ValueError(
            f"`call_order` level must be an integer in [0, {MAX_ORDER}), but got "
            f"{level}. Pass `check_order_boundary=False` to allow any integer."
        )

    def decorator(fn):
        return OrderedMethod(fn, level)

    return decorator


_KEY_PARAMETERS = ClassCache()  # {id(cls): {fn_name: kind}}


def _key_parameter(cls: type, fn_name: str) -> Literal["none", "optional", "required"]:
    """Whether `cls.fn_name` takes a `key` argument, and whether it must be given."""
    known = _KEY_PARAMETERS.get(id(cls)) or _KEY_PARAMETERS.put(cls, {})
    kind = known.get(fn_name)
    if kind is None:
        kind = known[fn_name] = _read_key_parameter(getattr(cls, fn_name))
    return kind


def _read_key_parameter(fn: Any) -> Literal["none", "optional", "required"]:
    try:
        param = inspect.signature(fn).parameters.get("key")
    except (TypeError, ValueError):  # no signature to read (a builtin, say)
        return "none"
    if param is None or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
        return "none"
    return "required" if param.default is inspect.Parameter.empty else "optional"


def _level(node: Any, fn_name: str) -> int | None:
    return getattr(getattr(type(node), fn_name, None), "call_order", None)


def _check_arguments(fn_name, args, kwargs, fn_if_not_exist, op, key=None):
    if not isinstance(fn_name, str):
        raise TypeError(
            f"`{op}` takes the method name `fn_name` as a string, but got "
            f"{type(fn_name).__name__} {fn_name!r}."
        )
    if kwargs is None:
        kwargs = {}
    if not isinstance(kwargs, Mapping):
        raise TypeError(
            f"`{op}` takes `kwargs` as a mapping of keyword arguments (or `None`), but "
            f"got {type(kwargs).__name__} {kwargs!r}."
        )
    if "key" in kwargs:
        raise ValueError(
            f"`{op}`: pass the random key as `key=...`, not inside `kwargs`; each node "
            "then receives its own key derived from it."
        )
    check_key(key, op)
    if fn_if_not_exist not in _FN_IF_NOT_EXIST:
        raise ValueError(
            f"`{op}`: `fn_if_not_exist` must be one of 'raise', 'warn', 'pass', but got "
            f"{fn_if_not_exist!r}."
        )
    args = args if isinstance(args, tuple) else (args,)
    return args, dict(kwargs)


_INTERNAL = tuple(
    os.path.dirname(file) + os.sep for file in (__file__, jax.__file__, eqx.__file__)
)


def warn_at_caller(message: str) -> None:
    """Warns at the user's line: the first frame outside this package, JAX and Equinox
    (a public operation may reach here through `eqx.filter_vmap` and JAX's tracing)."""
    frame, level = sys._getframe(0), 1
    while frame is not None and frame.f_code.co_filename.startswith(_INTERNAL):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, stacklevel=level)


def check_key(key: Any, op: str) -> None:
    """A `TypeError` naming `key` and `op` unless `key` is `None` or a JAX key."""
    if key is None or isinstance(key, jax.Array):
        return
    raise TypeError(
        f"`{op}` takes `key=` a JAX random key such as `jax.random.key(0)` (or `None`), "
        f"but got {type(key).__name__} {key!r:.60}."
    )


def _check_not_a_field(path: Path, node: Any, fn_name: str, op: str) -> None:
    """Refuses a node whose attribute `fn_name` is a field or not callable: it is
    neither a method to call nor a method that is missing, whatever `fn_if_not_exist`
    says."""
    attr = getattr(type(node), fn_name, None)
    if fn_name in fields(node) or not (attr is None or callable(attr)):
        raise TypeError(
            f"`{op}`: `{fn_name}` of the node at path {path_repr(path)} "
            f"({type(node).__name__}) is a field or a non-callable attribute, not a "
            "method, so it cannot be called. Call a method name, or rename the field."
        )


def returns_self(fn: Callable) -> Callable:
    """Marks a method that returns its module unchanged (`return self`): the
    collective operations that rebuild the tree know its result and skip the call
    (`collect_all_fns`, which returns the results, still calls it). For the no-op
    `init_state` / `reset_state` every layer answers."""
    # (pyright: a function's type declares no such attribute)
    fn.returns_self = True  # pyright: ignore[reportFunctionMemberAccess]
    return fn


def _plan(
    target, call: "Call", skip_returns_self: bool = False, nodes: list | None = None
) -> list[list]:
    """The calls to make, as passes of `(path, node)`: the undecorated methods first,
    then one pass per `call_order` level, ascending; each pass in traversal order.
    `nodes`: `iter_nodes(target)`, when the caller has it."""
    op, fn_name, fn_if_not_exist = call.op, call.fn_name, call.fn_if_not_exist
    exclude = to_predicate(call.node_to_exclude)
    undecorated, by_level, missing = [], {}, []
    for path, node in iter_nodes(target) if nodes is None else nodes:
        if exclude(path, node):
            continue
        _check_not_a_field(path, node, fn_name, op)
        fn = getattr(type(node), fn_name, None)
        if fn is None:
            missing.append((path, node))
            continue
        if skip_returns_self and getattr(fn, "returns_self", False):
            continue
        level = _level(node, fn_name)
        calls = undecorated if level is None else by_level.setdefault(level, [])
        calls.append((path, node))
    if missing and fn_if_not_exist != "pass":
        where = ", ".join(f"{path_repr(p)} ({type(n).__name__})" for p, n in missing)
        message = (
            f"`{op}`: no method `{fn_name}` on the node(s) at {where}. Define it, leave "
            "those nodes out with `node_to_exclude`, or pass `fn_if_not_exist='pass'` to "
            "skip nodes without it."
        )
        if fn_if_not_exist == "raise":
            raise AttributeError(message)
        warn_at_caller(message)
    return [undecorated] + [by_level[k] for k in sorted(by_level)]


def _invoke(node, path, fn_name, args, kwargs, key, op):
    """Calls `node.fn_name(*args, **kwargs)`, with the node's own key if it takes one."""
    kind = _key_parameter(type(node), fn_name)
    if kind != "none":
        if key is not None:
            kwargs = {**kwargs, "key": jax.random.fold_in(key, path_hash(path))}
        elif kind == "required":
            raise TypeError(
                f"`{op}`: `{fn_name}` of the node at path {path_repr(path)} "
                f"({type(node).__name__}) needs a random `key`, but `key=None` was "
                f"given. Pass `key=jax.random.key(...)` to `{op}`; each node then gets "
                "its own key derived from it and its path."
            )
    try:
        return method(node, fn_name)(*args, **kwargs)
    except Exception as e:
        e.add_note(
            f"(raised by `{fn_name}` of the node at path {path_repr(path)} "
            f"({type(node).__name__}) during `{op}`)"
        )
        empty = [
            p for p, s in iter_states(node, views=False) if not holds_arrays(s.value)
        ]
        if empty:
            e.add_note(
                f"(The node's state at {path_repr(path + empty[0])} holds no array: "
                "this looks like a part made by `partition`, which has placeholders "
                "where the other parts' values are. Put the parts back together with "
                "`combine(*parts)` first.)"
            )
        raise


def _run_pass(tree, paths: list[Path], update: Callable[[Path, Any], Any]):
    """One post-order pass calling `update(path, node)` on the nodes at `paths`. Each
    node is rebuilt at most once, from its already-updated children: linear cost."""
    wanted = set(paths)
    return walk(
        tree,
        node=lambda path, x: update(path, x) if path in wanted else x,
        within={p[:i] for p in paths for i in range(len(p) + 1)},
    )


def call_all_fns(
    target: T,
    fn_name: str,
    args: Sequence[Any] | Any = (),
    kwargs: Mapping[str, Any] | None = None,
    *,
    key: PRNGKeyArray | None = None,
    node_to_exclude: Filter = None,
    fn_if_not_exist: Literal["raise", "warn", "pass"] = "raise",
) -> T:
    """Calls the method `fn_name` on every module node of `target` and returns the
    updated tree. `target` itself is left unchanged.

    Nodes are visited children before parent, siblings in declaration order; methods
    without [`eqx_collective.call_order`][] run first, then decorated ones by ascending
    level. Each method runs exactly once per node, and each sees the results of the calls
    before it (a parent sees its updated children).

    **Pure call protocol:** a collectively called method returns the updated node,
    `def init_state(self, ...) -> Self`; `return self` if nothing changes.

    **Arguments:**

    - `target`: the model (any pytree of `eqx.Module`s).
    - `fn_name`: the method name.
    - `args`: positional arguments for every call; a non-tuple is one argument.
    - `kwargs`: keyword arguments for every call.
    - `key`: a JAX random key. A node whose method has a `key` parameter receives
        `jax.random.fold_in(key, h)`, with `h` a stable hash of the node's path, so adding
        a node leaves the other nodes' keys unchanged. A method whose `key` parameter has
        no default needs `key` to be given.
    - `node_to_exclude`: a [`eqx_collective.Filter`][] of nodes not to call (their
        children are still visited).
    - `fn_if_not_exist`: what to do with nodes that lack the method: `'raise'`
        (`AttributeError`), `'warn'` (warn and skip) or `'pass'` (skip).

    **Returns:** the updated tree, of the same type as `target`.

    **Raises:** `TypeError` for a non-string `fn_name`, non-mapping `kwargs`, a missing
    `key`, or a method that does not return a module of its own type; `ValueError` for a
    bad `fn_if_not_exist`; `AttributeError` for a missing method under `'raise'`. Errors
    raised by a method carry a note naming the node's path.
    """
    call = Call.make("call_all_fns", fn_name, args, kwargs, key, node_to_exclude,
                     fn_if_not_exist)  # fmt: skip
    return _on_one_model(target, call, key, "`vmap_call_all_fns`")


class Call(NamedTuple):
    """One collective call, its arguments checked: what every node is called with."""

    op: str  # the public operation, for messages
    fn_name: str
    args: tuple
    kwargs: dict
    node_to_exclude: Filter
    fn_if_not_exist: str

    @classmethod
    def make(cls, op, fn_name, args, kwargs, key, node_to_exclude, fn_if_not_exist):
        """Checks the arguments of the public operation `op` (see `call_all_fns`)."""
        args, kwargs = _check_arguments(fn_name, args, kwargs, fn_if_not_exist, op, key)
        return cls(op, fn_name, args, kwargs, node_to_exclude, fn_if_not_exist)


def _on_one_model(target: T, call: Call, key: PRNGKeyArray | None, instead: str) -> T:
    """`call_all` for a public operation on one model: an ensemble is refused, naming
    `instead`. A member seen inside a transform over the members is one model; its
    result is recorded as such, so that the transform's output is an ensemble whose
    record matches its arrays (a member's `init_state` may change its ranks, say by a
    batch axis, or create states)."""
    nodes, states = [], []  # (one walk finds both)
    walk(
        target,
        node=lambda path, x: nodes.append((path, x)) or x,
        state=lambda path, s: states.append((path, s)) or s,
    )
    at = single_view(target, call.op, instead, states)
    out = call_all(target, call, key, nodes)
    return rewrite(out, at) if at is not None and at.mapped else out


def call_all(target: T, call: Call, key: PRNGKeyArray | None, nodes=None) -> T:
    """Runs `call` on every node of `target`, pass by pass (see `_plan`); `nodes`:
    `iter_nodes(target)`, when the caller has walked it already."""
    op, fn_name, args, kwargs = call.op, call.fn_name, call.args, call.kwargs

    def update(path, node):
        result = _invoke(node, path, fn_name, args, kwargs, key, op)
        if type(result) is not type(node):
            got = "None" if result is None else f"a {type(result).__name__}"
            raise TypeError(
                f"`{fn_name}` of the node at path {path_repr(path)} "
                f"({type(node).__name__}) returned {got}. Under the pure call protocol a "
                f"collectively called method must return the updated module: `return "
                f"self` if nothing changed, else a new {type(node).__name__}, for "
                "example built with `eqx.tree_at`."
            )
        return result

    for calls in _plan(target, call, skip_returns_self=True, nodes=nodes):
        if calls:
            target = _run_pass(target, [path for path, _ in calls], update)
    return target


def collect_all_fns(
    target: PyTree,
    fn_name: str,
    args: Sequence[Any] | Any = (),
    kwargs: Mapping[str, Any] | None = None,
    *,
    key: PRNGKeyArray | None = None,
    node_to_exclude: Filter = None,
    fn_if_not_exist: Literal["raise", "warn", "pass"] = "raise",
) -> dict[Path, Any]:
    """The read-only counterpart of [`eqx_collective.call_all_fns`][]: calls `fn_name`
    on every module node and returns what each call returned, keyed by the node's path,
    in call order. Nothing is rebuilt; the methods may return anything.

    **Arguments:** as for [`eqx_collective.call_all_fns`][].

    **Returns:** `{path: result}`.

    !!! Example

        ```python
        means = ec.collect_all_fns(net, "log_stats", fn_if_not_exist="pass")
        # {('layers', 0): Array(0.05, dtype=float32), ('layers', 1): ...}
        ```
    """
    call = Call.make("collect_all_fns", fn_name, args, kwargs, key, node_to_exclude,
                     fn_if_not_exist)  # fmt: skip
    single_view(target, call.op, "`collect_all_fns(ec.member(ensemble, i), ...)`")
    return {
        path: _invoke(node, path, fn_name, call.args, call.kwargs, key, call.op)
        for calls in _plan(target, call)
        for path, node in calls
    }


def init_all_states(
    target: T,
    *args: Any,
    key: PRNGKeyArray | None = None,
    node_to_exclude: Filter = None,
    **kwargs: Any,
) -> T:
    """Calls `init_state(*args, **kwargs)` on every node that defines it and returns the
    new tree (so it chains: `model = init_all_states(Model(...), key=key)`).

    **Arguments:** `*args`/`**kwargs` are passed to every `init_state`; `key` and
    `node_to_exclude` are as for [`eqx_collective.call_all_fns`][]. Nodes without
    `init_state` are skipped.

    **Returns:** the initialised tree.

    !!! Example

        ```python
        model = ec.init_all_states(model, batch_size=4, key=jax.random.key(0))
        ```
    """
    call = Call.make("init_all_states", "init_state", args, kwargs, key,
                     node_to_exclude, "pass")  # fmt: skip
    instead = "`vmap_init_all_states` (every member, each with its own key)"
    return _on_one_model(target, call, key, instead)


def reset_all_states(
    target: T,
    *args: Any,
    key: PRNGKeyArray | None = None,
    node_to_exclude: Filter = None,
    **kwargs: Any,
) -> T:
    """Calls `reset_state(*args, **kwargs)` on every node that defines it and returns
    the new tree. Typically run between sequences, inside a jitted step or not.

    **Arguments:** as for [`eqx_collective.init_all_states`][].

    **Returns:** the reset tree.
    """
    call = Call.make("reset_all_states", "reset_state", args, kwargs, key,
                     node_to_exclude, "pass")  # fmt: skip
    return _on_one_model(target, call, key, "`vmap_reset_all_states`")
